"""The tab's Dataset section: WD14 tagging, the tag editor, batch edits, the dataset doctor.

:func:`build` lays the section out inside the current Blocks context and wires
it to a :class:`~lora_trainer.ui.dataset_logic.DatasetLogic`, which does the
work without Gradio. Only components and event APIs that Gradio 3.41 and 4.x
both have are used; the one difference handled here is the keyword of a
browser-side function (``_js=`` on Gradio 3, ``js=`` on Gradio 4), used by
"Use as prompt" to call ``lora_trainer_send_to_txt2img`` of ``javascript/lora_trainer.js``.

The tagging progress is streamed by the Tag button's own event while the run
lasts (no page-wide timer, so a host that polls by itself is not doubled); the
Refresh button shows it again after a page reload.

The folder box starts with the Train tab's ``train_data_dir`` and, when
:func:`build` is given that component, follows its changes (typed, or set by
Load config / Import) as long as the box is empty or still holds what it last
took from there; a folder typed into the box stays until the box is cleared
(:func:`~lora_trainer.ui.dataset_logic.follow_train_folder`).

WD14 models go to the "Local model folder" when one is typed, else under the
host's models folder (``<WebUI models>/wd14_tagger``), or
``~/.cache/lora_trainer/models/wd14_tagger`` outside a WebUI
(:func:`lora_trainer.tagging.wd14.models_root`).

Every control has an ``elem_id`` starting ``lora_trainer_ds_``: ``folder``, ``caption_extension``,
``open``, ``check``, ``message``, ``doctor``; tagging: ``tag_model``, ``tag_model_dir``,
``tag_download``, ``tag_general_threshold``, ``tag_character_threshold``, ``tag_mode``,
``tag_confirm_overwrite``, ``tag_trigger``, ``tag_additional``, ``tag_exclude``, ``tag_escape``,
``tag_exclude_rating``, ``tag_keep_underscores``, ``tag_start``, ``tag_stop``, ``tag_refresh``,
``tag_message``, ``tag_status``; editor: ``filter``, ``filter_mode``, ``filter_apply``, ``gallery``,
``preview``, ``selected``, ``caption``, ``save``, ``caption_message``, ``lora_name``, ``use_prompt``,
``prompt``, ``frequency``; batch: ``op``, ``op_tags``, ``op_position``, ``op_find``, ``op_replace``,
``op_regex``, ``op_trigger``, ``op_keep_first``, ``prune_folder``, ``prune_threshold``,
``prune_find``, ``prune_tags``, ``batch_preview``, ``batch_apply``, ``batch_undo``,
``batch_message``, ``batch_diff``.
"""
# no `from __future__ import annotations`: Gradio reads the gr.SelectData annotation of the
# gallery's select handler as an object

from typing import Any, Optional

from . import dataset_render
from .dataset_logic import (
    CAPTION_EXTENSIONS,
    FILTER_MODES,
    OPERATION_LABELS,
    POSITIONS,
    TAG_MODE_LABELS,
    BatchRequest,
    DatasetLogic,
    TagRequest,
    follow_train_folder,
)

# a guard, so the standalone app (which has no txt2img tab nor the WebUI's script) does nothing
SEND_TO_TXT2IMG_JS = ("(prompt) => { if (typeof lora_trainer_send_to_txt2img === 'function') "
                      "{ lora_trainer_send_to_txt2img(prompt); } return []; }")
# which operations show which settings
_GROUPS = {
    "tags": ("Add tags", "Remove tags"),
    "position": ("Add tags",),
    "replace": ("Replace",),
    "sort": ("Sort",),
    "trigger": ("Trigger word first", "Consolidate"),
    "prune": ("Prune subject traits",),
}
_OP_HELP = {
    "Add tags": "Adds the tags to every filtered caption that lacks them (a missing caption is created).",
    "Remove tags": "Removes the tags from every filtered caption.",
    "Replace": "Replaces a whole tag by another (or several, or none); with Regex, re.sub on each tag's text.",
    "Remove duplicates": "Drops repeated tags (Long_Hair = long hair), keeping the first.",
    "Sort": "Sorts the tags alphabetically after the first N.",
    "Trigger word first": "Moves the trigger word(s) to the front, adding them where missing.",
    "Consolidate": "Keeps the most specific of overlapping tags: boots, red footwear, red boots -> red boots.",
    "Prune subject traits": "Tags in most of a concept folder's images (hair colour, eye colour...) describe the "
                            "subject: removing them lets the trigger word absorb them.",
}


def _js_kwargs(major: int, source: str) -> dict[str, Any]:
    return {"js": source} if major >= 4 else {"_js": source}


def build(gr, logic, major: Optional[int] = None, *, train_data_dir=None) -> DatasetLogic:
    """Lay the Dataset section out inside the current Blocks context and wire its events.

    ``logic``: the tab's :class:`~lora_trainer.ui.logic.TabLogic` (its host and manager; the
    folder box starts with its form's ``train_data_dir``). Returns the :class:`DatasetLogic`
    (also set as ``logic.dataset_logic``). ``major``: Gradio's major version (default: the
    installed one). ``train_data_dir``: the Train tab's component, which the folder box then
    follows (see the module doc).
    """
    from ..tagging.wd14 import DEFAULT_MODEL, MODELS
    from .tab import gradio_major

    major = gradio_major() if major is None else int(major)
    try:
        form = logic.initial_form()
    except Exception:  # a bare logic object (tests): no defaults
        form = {}
    ds = DatasetLogic(getattr(logic, "host", None), getattr(logic, "manager", None),
                      default_folder=form.get("train_data_dir") or "")
    try:
        logic.dataset_logic = ds
    except AttributeError:
        pass
    default_ext = form.get("caption_extension") or ".txt"

    # ---- layout -------------------------------------------------------------------------------
    with gr.Row():
        folder = gr.Textbox(value=ds.default_folder, label="Dataset folder", lines=1, max_lines=1, scale=5,
                            placeholder="train_data_dir (holding 10_name folders) or one folder of images",
                            elem_id="lora_trainer_ds_folder")
        ext = gr.Dropdown(choices=list(CAPTION_EXTENSIONS), value=default_ext, allow_custom_value=True,
                          label="Caption extension", scale=1, elem_id="lora_trainer_ds_caption_extension")
        with gr.Column(scale=1, min_width=120):
            open_button = gr.Button("Open", variant="primary", elem_id="lora_trainer_ds_open")
            check_button = gr.Button("Check dataset", size="sm", elem_id="lora_trainer_ds_check")
    followed = gr.State(ds.default_folder)  # what the folder box last took from the Train tab
    message = gr.Markdown("", elem_id="lora_trainer_ds_message")
    doctor = gr.HTML("", elem_id="lora_trainer_ds_doctor")

    with gr.Accordion("Tagging (WD14)", open=False, elem_id="lora_trainer_ds_tagging"):
        with gr.Row():
            tag_model = gr.Dropdown(choices=list(MODELS), value=DEFAULT_MODEL, label="Model",
                                    elem_id="lora_trainer_ds_tag_model")
            tag_model_dir = gr.Textbox(label="Local model folder (optional)", lines=1, max_lines=1,
                                       placeholder="a folder with model.onnx + selected_tags.csv (offline), "
                                                   f"or where models are downloaded to (default {ds.tagger_models_root})",
                                       elem_id="lora_trainer_ds_tag_model_dir")
            tag_download = gr.Checkbox(value=True, label="Download the model when missing",
                                       elem_id="lora_trainer_ds_tag_download")
        with gr.Row():
            tag_general = gr.Slider(0.0, 1.0, value=0.35, step=0.01, label="General tag threshold",
                                    elem_id="lora_trainer_ds_tag_general_threshold")
            tag_character = gr.Slider(0.0, 1.0, value=0.85, step=0.01, label="Character tag threshold",
                                      elem_id="lora_trainer_ds_tag_character_threshold")
        with gr.Row():
            tag_mode = gr.Radio(choices=list(TAG_MODE_LABELS), value=TAG_MODE_LABELS[0], label="Mode",
                                info="If empty: only images without a caption. Append: new tags after the caption's "
                                     "own. Overwrite: replaces captions (backed up first).",
                                elem_id="lora_trainer_ds_tag_mode")
            tag_confirm = gr.Checkbox(value=False, label="Yes, overwrite existing captions",
                                      elem_id="lora_trainer_ds_tag_confirm_overwrite")
        with gr.Row():
            tag_trigger = gr.Textbox(value=form.get("trigger_word") or "", label="Trigger word(s)", lines=1,
                                     max_lines=1, placeholder="put first in every caption written",
                                     elem_id="lora_trainer_ds_tag_trigger")
            tag_additional = gr.Textbox(label="Additional tags", lines=1, max_lines=1,
                                        placeholder="added after the trigger word",
                                        elem_id="lora_trainer_ds_tag_additional")
            tag_exclude = gr.Textbox(label="Exclude tags", lines=1, max_lines=1, placeholder="never written",
                                     elem_id="lora_trainer_ds_tag_exclude")
        with gr.Row():
            tag_escape = gr.Checkbox(value=False, label="Escape parentheses: name \\(series\\)",
                                     elem_id="lora_trainer_ds_tag_escape")
            tag_exclude_rating = gr.Checkbox(value=True, label="Leave out rating tags (general, sensitive...)",
                                             elem_id="lora_trainer_ds_tag_exclude_rating")
            tag_keep_underscores = gr.Checkbox(value=False, label="Keep underscores (long_hair)",
                                               elem_id="lora_trainer_ds_tag_keep_underscores")
        with gr.Row():
            tag_start = gr.Button("Tag", variant="primary", elem_id="lora_trainer_ds_tag_start")
            tag_stop = gr.Button("Stop", variant="stop", elem_id="lora_trainer_ds_tag_stop")
            tag_refresh = gr.Button("Refresh", elem_id="lora_trainer_ds_tag_refresh")
        tag_message = gr.Markdown("", elem_id="lora_trainer_ds_tag_message")
        tag_status = gr.HTML(ds.tag_status_html(), elem_id="lora_trainer_ds_tag_status")

    gr.Markdown("**Tag editor**")
    with gr.Row():
        filter_text = gr.Textbox(label="Filter by tags", lines=1, max_lines=1, scale=4,
                                 placeholder="tags, comma-separated (empty: every image)",
                                 elem_id="lora_trainer_ds_filter")
        filter_mode = gr.Radio(choices=list(FILTER_MODES), value=FILTER_MODES[0], label="Match", scale=1,
                               elem_id="lora_trainer_ds_filter_mode")
        filter_apply = gr.Button("Filter", scale=1, elem_id="lora_trainer_ds_filter_apply")
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(value=[], label="Images (click one to edit its caption)", columns=5, height=560,
                                 allow_preview=False, preview=False, object_fit="contain",
                                 show_download_button=False, elem_id="lora_trainer_ds_gallery")
        with gr.Column(scale=2):
            preview_image = gr.Image(value=None, label="Selected image", interactive=False, height=360,
                                     show_download_button=False, elem_id="lora_trainer_ds_preview")
            selected = gr.Textbox(label="Selected image", lines=1, max_lines=1, interactive=False,
                                  elem_id="lora_trainer_ds_selected")
            caption = gr.Textbox(label="Caption", lines=4, max_lines=12, elem_id="lora_trainer_ds_caption")
            save = gr.Button("Save caption", variant="primary", elem_id="lora_trainer_ds_save")
            caption_message = gr.Markdown("", elem_id="lora_trainer_ds_caption_message")
            with gr.Row():
                lora_name = gr.Textbox(value=form.get("output_name") or "", label="LoRA name (optional)", lines=1,
                                       max_lines=1, placeholder="adds <lora:NAME:0.8>",
                                       elem_id="lora_trainer_ds_lora_name")
                use_prompt = gr.Button("Use as prompt", elem_id="lora_trainer_ds_use_prompt")
            prompt = gr.Textbox(label="Prompt sent to txt2img", lines=2, interactive=False,
                                elem_id="lora_trainer_ds_prompt")
    paths = gr.State([])

    with gr.Accordion("Tag frequency (filtered images)", open=True, elem_id="lora_trainer_ds_frequency_accordion"):
        frequency = gr.HTML(dataset_render.frequency_html([], 0, 0), elem_id="lora_trainer_ds_frequency")

    with gr.Accordion("Batch edit (the filtered images)", open=True, elem_id="lora_trainer_ds_batch"):
        operation = gr.Radio(choices=list(OPERATION_LABELS), value=OPERATION_LABELS[0], label="Operation",
                             elem_id="lora_trainer_ds_op")
        op_help = gr.Markdown(_OP_HELP[OPERATION_LABELS[0]], elem_id="lora_trainer_ds_op_help")
        groups = {}
        with gr.Row(visible=True) as groups["tags"]:
            op_tags = gr.Textbox(label="Tags", lines=1, max_lines=1, placeholder="tag, tag",
                                 elem_id="lora_trainer_ds_op_tags")
        with gr.Row(visible=True) as groups["position"]:
            op_position = gr.Radio(choices=list(POSITIONS), value=POSITIONS[0], label="Where",
                                   elem_id="lora_trainer_ds_op_position")
        with gr.Row(visible=False) as groups["replace"]:
            op_find = gr.Textbox(label="Find (tag, or pattern)", lines=1, max_lines=1, elem_id="lora_trainer_ds_op_find")
            op_replace = gr.Textbox(label="Replace with (empty removes)", lines=1, max_lines=1,
                                    elem_id="lora_trainer_ds_op_replace")
            op_regex = gr.Checkbox(value=False, label="Regex", elem_id="lora_trainer_ds_op_regex")
        with gr.Row(visible=False) as groups["sort"]:
            op_keep_first = gr.Number(value=0, precision=0, label="Keep the first N tags in place",
                                      elem_id="lora_trainer_ds_op_keep_first")
        with gr.Row(visible=False) as groups["trigger"]:
            op_trigger = gr.Textbox(value=form.get("trigger_word") or "", label="Trigger word(s) (never dropped)",
                                    lines=1, max_lines=1, elem_id="lora_trainer_ds_op_trigger")
        with gr.Column(visible=False) as groups["prune"]:
            with gr.Row():
                prune_folder = gr.Dropdown(choices=[], value=None, label="Concept folder",
                                           elem_id="lora_trainer_ds_prune_folder")
                prune_threshold = gr.Slider(10, 100, value=80, step=5, label="In at least this % of its images",
                                            elem_id="lora_trainer_ds_prune_threshold")
                prune_find = gr.Button("Find traits", elem_id="lora_trainer_ds_prune_find")
            prune_tags = gr.CheckboxGroup(choices=[], value=[], label="Traits to remove",
                                          elem_id="lora_trainer_ds_prune_tags")
        with gr.Row():
            batch_preview = gr.Button("Preview", elem_id="lora_trainer_ds_batch_preview")
            batch_apply = gr.Button("Apply", variant="primary", elem_id="lora_trainer_ds_batch_apply")
            batch_undo = gr.Button("Undo last change", elem_id="lora_trainer_ds_batch_undo")
        batch_message = gr.Markdown("", elem_id="lora_trainer_ds_batch_message")
        batch_diff = gr.HTML("", elem_id="lora_trainer_ds_batch_diff")

    # ---- events -------------------------------------------------------------------------------
    view_inputs = [folder, ext, filter_text, filter_mode, prune_folder]
    view_outputs = [gallery, paths, frequency, message, prune_folder]

    def view_values(folder_value, ext_value, ftext, fmode, concept):
        out = ds.view(folder_value, ext_value, ftext, fmode)
        concepts = out["concepts"]
        value = concept if concept in concepts else (concepts[0] if concepts else None)
        return [out["gallery"], out["paths"], out["frequency"], out["message"],
                gr.update(choices=concepts, value=value)]

    def open_dataset(folder_value, ext_value, ftext, fmode, concept):
        return view_values(folder_value, ext_value, ftext, fmode, concept) + ["", "", None, ""]

    def reload_values(folder_value, ext_value, ftext, fmode, concept, path):
        """The view again, and the selected image's caption as it is now on disk."""
        loaded = ds.load_caption(path, ext_value) if path else {"caption": ""}
        return view_values(folder_value, ext_value, ftext, fmode, concept) + [loaded["caption"]]

    reload_event = dict(fn=reload_values, inputs=view_inputs + [selected], outputs=view_outputs + [caption],
                        show_progress="hidden")

    open_outputs = view_outputs + [selected, caption, preview_image, caption_message]
    open_button.click(open_dataset, view_inputs, open_outputs)
    folder.submit(open_dataset, view_inputs, open_outputs)

    if train_data_dir is not None:
        def follow(train_value, box_value, followed_value):
            box, new_followed = follow_train_folder(train_value, box_value, followed_value)
            return (gr.update() if box == box_value else box), new_followed

        train_data_dir.change(follow, [train_data_dir, folder, followed], [folder, followed], show_progress="hidden")
    check_button.click(ds.check, [folder, ext, tag_trigger], [doctor])

    for trigger in (filter_apply.click, filter_text.submit):
        trigger(view_values, view_inputs, view_outputs)

    def on_select(path_list, ext_value, evt: gr.SelectData):
        out = ds.select(path_list, evt.index, ext_value)
        return out["path"], out["caption"], out["preview"], out["message"]

    gallery.select(on_select, [paths, ext], [selected, caption, preview_image, caption_message])
    save.click(ds.save_caption, [folder, selected, caption, ext], [caption_message]).then(**reload_event)
    use_prompt.click(ds.prompt, [caption, lora_name], [prompt]).then(
        None, [prompt], None, **_js_kwargs(major, SEND_TO_TXT2IMG_JS))

    # tagging: start, stream the status while it runs, then show the new captions
    tag_inputs = [tag_model, tag_model_dir, tag_download, tag_general, tag_character, tag_mode, tag_confirm,
                  tag_trigger, tag_additional, tag_exclude, tag_escape, tag_exclude_rating, tag_keep_underscores]
    assert len(tag_inputs) == len(TagRequest.names())

    def watch():
        yield from ds.watch_tagging(interval=1.0)

    tag_start.click(ds.start_tagging, [folder, ext] + tag_inputs, [tag_message]).then(
        watch, None, [tag_status], show_progress="hidden").then(**reload_event)
    tag_stop.click(ds.stop_tagging, None, [tag_message])
    tag_refresh.click(ds.tag_status_html, None, [tag_status], show_progress="hidden")

    # batch edits
    batch_inputs = [operation, op_tags, op_position, op_find, op_replace, op_regex, op_trigger, op_keep_first,
                    prune_folder, prune_tags]
    assert len(batch_inputs) == len(BatchRequest.names())
    group_names = list(groups)

    def show_operation(label):
        return [_OP_HELP.get(label, "")] + [gr.update(visible=label in _GROUPS[name]) for name in group_names]

    operation.change(show_operation, [operation], [op_help] + [groups[name] for name in group_names])

    def find_traits(folder_value, ext_value, concept, percent, trigger_value):
        out = ds.find_traits(folder_value, ext_value, concept, percent, trigger_value)
        return gr.update(choices=out["choices"], value=[]), out["message"]

    prune_find.click(find_traits, [folder, ext, prune_folder, prune_threshold, op_trigger], [prune_tags, batch_message])

    def preview_batch(*values):
        out = ds.preview_batch(*values)
        return out["message"], out["html"]

    def apply_batch(*values):
        out = ds.apply_batch(*values)
        return out["message"], out["html"]

    batch_event_inputs = [folder, ext, filter_text, filter_mode] + batch_inputs
    batch_preview.click(preview_batch, batch_event_inputs, [batch_message, batch_diff])
    batch_apply.click(apply_batch, batch_event_inputs, [batch_message, batch_diff]).then(**reload_event)
    batch_undo.click(lambda folder_value: (ds.undo_last(folder_value), ""), [folder],
                     [batch_message, batch_diff]).then(**reload_event)
    return ds


__all__ = ["build", "SEND_TO_TXT2IMG_JS"]
