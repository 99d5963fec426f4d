"""The "LoRA Trainer" tab as a Gradio Blocks, the same in every host.

:func:`build_tab` takes a job manager (:class:`lora_trainer.jobs.JobManager`)
and a host and returns a ``gr.Blocks``. The WebUIs render it as one of their
tabs (AUTOMATIC1111 on Gradio 3.41, Forge on Gradio 4.40); the standalone app
(``python -m lora_trainer ui``) launches it. Only components and event APIs
that both Gradio 3.41 and 4.x have are used; the one difference handled here
is the progress polling: a ``gr.Timer`` on Gradio 4, ``load(..., every=)`` on
Gradio 3 (which needs the queue, as both WebUIs enable it). A Refresh button
does the same by hand.

Every control has a stable ``elem_id``: ``lora_trainer_<option>`` for the
options (kohya's names), and ``lora_trainer_train``, ``lora_trainer_queue_add``,
``lora_trainer_interrupt``, ``lora_trainer_interrupt_save``,
``lora_trainer_progress``, ``lora_trainer_files``, ``lora_trainer_queue``,
``lora_trainer_estimate``, ``lora_trainer_message``, ``lora_trainer_preset``,
``lora_trainer_toml_path`` / ``_toml_save`` / ``_toml_load`` / ``_toml_upload`` / ``_toml_file``
(the saved file, to download), ``lora_trainer_import_path`` / ``_import`` / ``_import_upload``,
``lora_trainer_cancel_job`` / ``_cancel``, ``lora_trainer_refresh_button`` (what the WebUI's
``javascript/lora_trainer.js`` clicks), ``lora_trainer_log``, ``lora_trainer_samples`` (the
training's sample images), ``lora_trainer_compare_epochs`` (after a training: open its family in
the Compare tab). The three top-level tabs: ``lora_trainer_tab_train`` / ``_compare`` /
``_dataset`` (Gradio ids ``train`` / ``compare`` / ``dataset``); the Compare tab's own ids are
listed in :mod:`lora_trainer.ui.compare_panel`.
"""
from __future__ import annotations

import re
from typing import Any

from . import compare_panel, dataset_panel, render
from .logic import TabLogic, comparable_training
from .values import CONTROL_NAMES, CONTROLS, Control, form_list, section_names

POLL_SECONDS = 1.0
# options the live estimate depends on (estimate.py's _RELEVANT plus the checkpoint for the arch)
ESTIMATE_KEYS = (
    "train_data_dir", "reg_data_dir", "caption_extension", "resolution", "enable_bucket", "min_bucket_reso",
    "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale", "train_batch_size", "gradient_accumulation_steps",
    "max_train_steps", "max_train_epochs", "cache_latents", "random_crop", "prior_loss_weight",
    "pretrained_model_name_or_path",
)


def gradio_major() -> int:
    import gradio as gr

    match = re.match(r"(\d+)", getattr(gr, "__version__", "0"))
    return int(match.group(1)) if match else 0


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _component(gr, control: Control, value: Any, extra: dict[str, Any] | None = None):
    common: dict[str, Any] = {"label": control.label, "elem_id": control.elem_id}
    if control.info:
        common["info"] = control.info
    if control.kind == "checkbox":
        return gr.Checkbox(value=bool(value), **common)
    if control.kind == "number":
        return gr.Number(value=value, precision=0 if control.integer else None, **common)
    if control.kind == "dropdown":
        return gr.Dropdown(choices=list(control.choices), value=value, allow_custom_value=control.custom, **common)
    placeholder = "not set (kohya's default)" if control.optional else None
    if control.is_list:
        placeholder = "key=value key=value"
    common.update(extra or {})
    common.setdefault("placeholder", placeholder)
    return gr.Textbox(value=value, lines=1, max_lines=1, **common)


def _layout_section(gr, controls: list[Control], form: dict[str, Any], components: dict[str, Any],
                    extras: dict[str, dict[str, Any]]) -> None:
    """Two inputs a row; the section's checkboxes together in rows of three."""
    inputs = [c for c in controls if c.kind != "checkbox"]
    boxes = [c for c in controls if c.kind == "checkbox"]
    for start in range(0, len(inputs), 2):
        with gr.Row():
            for control in inputs[start:start + 2]:
                components[control.name] = _component(gr, control, form[control.name], extras.get(control.name))
    for start in range(0, len(boxes), 3):
        with gr.Row():
            for control in boxes[start:start + 3]:
                components[control.name] = _component(gr, control, form[control.name])


def build_tab(manager, host=None, *, poll_seconds: float | None = POLL_SECONDS):
    """The LoRA Trainer tab for ``manager`` / ``host``; returns the ``gr.Blocks``.

    ``poll_seconds``: how often the page refreshes the progress by itself (Gradio 4: a
    Timer; Gradio 3: ``load(every=)``, which needs the queue). ``0`` / ``None`` turns
    that off, for a host whose own JavaScript clicks ``#lora_trainer_refresh_button``.

    The Blocks carries ``lora_trainer_components`` (option name -> component) and
    ``lora_trainer_logic`` (the :class:`~lora_trainer.ui.logic.TabLogic` its events call).
    """
    import gradio as gr

    from ..presets import PRESETS

    logic = TabLogic(manager, host)
    form = logic.initial_form()
    lora_dir = logic.lora_dir()
    major = gradio_major()
    components: dict[str, Any] = {}
    extras = {"output_dir": {"placeholder": f"the host's LoRA folder: {lora_dir}" if lora_dir else
                                "the host's LoRA folder"}}

    with gr.Blocks(analytics_enabled=False, title="LoRA Trainer") as tab:
        with gr.Tabs(elem_id="lora_trainer_main_tabs") as main_tabs:
            with gr.Tab("Train", id="train", elem_id="lora_trainer_tab_train"):
                with gr.Row():
                    # ---- settings ----------------------------------------------------------------
                    with gr.Column(scale=3):
                        with gr.Row():
                            preset = gr.Dropdown(choices=[""] + list(PRESETS), value="", label="Preset",
                                                 info="fills the training recipe from a guide; the dataset stays yours",
                                                 elem_id="lora_trainer_preset")
                        with gr.Tabs(elem_id="lora_trainer_sections"):
                            for section in section_names():
                                with gr.Tab(section, elem_id=f"lora_trainer_tab_{_slug(section)}"):
                                    controls = [c for c in CONTROLS if c.section == section]
                                    if section == "Advanced":
                                        gr.Markdown("Every other kohya option, by its kohya name. An empty box means "
                                                    "kohya's default.")
                                    _layout_section(gr, controls, form, components, extras)
                                    if section == "Dataset":
                                        estimate = gr.HTML(render.estimate_html({}), label="Estimate",
                                                           elem_id="lora_trainer_estimate")
                                        estimate_button = gr.Button("Recount", size="sm",
                                                                    elem_id="lora_trainer_estimate_refresh")
                        with gr.Accordion("Config file (TOML) and import", open=False, elem_id="lora_trainer_config_file"):
                            with gr.Row():
                                toml_path = gr.Textbox(label="TOML path", lines=1, max_lines=1,
                                                       placeholder="/path/to/config.toml (empty on Save: a download)",
                                                       elem_id="lora_trainer_toml_path")
                            with gr.Row():
                                toml_save = gr.Button("Save config", elem_id="lora_trainer_toml_save")
                                toml_load = gr.Button("Load config", elem_id="lora_trainer_toml_load")
                            with gr.Row():
                                toml_upload = gr.UploadButton("Load a TOML from this computer", file_types=[".toml"],
                                                              file_count="single", elem_id="lora_trainer_toml_upload")
                            toml_file = gr.File(label="Saved config (download)", interactive=False, visible=False,
                                                elem_id="lora_trainer_toml_file")
                            with gr.Row():
                                import_path = gr.Textbox(label="Import from kohya_ss GUI (.json) or "
                                                               "LoRA_Easy_Training_Scripts (.toml)",
                                                         lines=1, max_lines=1, placeholder="/path/to/config.json",
                                                         elem_id="lora_trainer_import_path")
                            with gr.Row():
                                import_button = gr.Button("Import", elem_id="lora_trainer_import")
                                import_upload = gr.UploadButton("Import a file from this computer",
                                                                file_types=[".json", ".toml"], file_count="single",
                                                                elem_id="lora_trainer_import_upload")

                    # ---- run ---------------------------------------------------------------------
                    with gr.Column(scale=2):
                        with gr.Row():
                            train = gr.Button("Train", variant="primary", elem_id="lora_trainer_train")
                            queue_add = gr.Button("Add to queue", elem_id="lora_trainer_queue_add")
                            interrupt = gr.Button("Interrupt", variant="stop", elem_id="lora_trainer_interrupt")
                        interrupt_save = gr.Checkbox(value=True, label="Save the current weights when interrupting",
                                                     elem_id="lora_trainer_interrupt_save")
                        message = gr.Markdown("", elem_id="lora_trainer_message")
                        progress = gr.HTML(render.progress_html({}), elem_id="lora_trainer_progress")
                        gr.Markdown("**Files**")
                        files = gr.HTML(render.files_html({}), elem_id="lora_trainer_files")
                        compare_epochs = gr.Button("Compare epochs", visible=False, size="sm",
                                                   elem_id="lora_trainer_compare_epochs")
                        samples = gr.Gallery(value=[], label="Samples", visible=False, columns=4, height="auto",
                                             object_fit="contain", elem_id="lora_trainer_samples")
                        gr.Markdown("**Queue**")
                        queue = gr.HTML(render.queue_html([]), elem_id="lora_trainer_queue")
                        with gr.Row():
                            cancel_job = gr.Dropdown(choices=[], value=None, label="Queued job",
                                                     elem_id="lora_trainer_cancel_job")
                            with gr.Column(min_width=120):
                                cancel = gr.Button("Cancel queued job", size="sm", elem_id="lora_trainer_cancel")
                                refresh = gr.Button("Refresh", size="sm", elem_id="lora_trainer_refresh_button")
                        with gr.Accordion("Log", open=False, elem_id="lora_trainer_log_accordion"):
                            log = gr.Textbox(label="Trainer log", lines=10, max_lines=20, interactive=False,
                                             elem_id="lora_trainer_log")
                        signature = gr.State(None)
                        seen = gr.State(None)
            with gr.Tab("Compare", id="compare", elem_id="lora_trainer_tab_compare"):
                compare = compare_panel.build(gr, logic, major=major)
            with gr.Tab("Dataset", id="dataset", elem_id="lora_trainer_tab_dataset"):
                # the Dataset tab's folder box follows the Train tab's train_data_dir (see dataset_panel)
                dataset_panel.build(gr, logic, major=major, train_data_dir=components["train_data_dir"])

        inputs = [components[name] for name in CONTROL_NAMES]
        assert len(inputs) == len(CONTROLS)

        # ---- events ----------------------------------------------------------------------
        def poll(sig, seen_value, compare_version):
            out = logic.poll(sig, seen_value)
            choices = out["queued_choices"]
            dropdown = gr.update() if choices is None else gr.update(choices=choices, value=None)
            gallery = (gr.update() if out["samples"] is None else
                       gr.update(value=out["samples"], visible=bool(out["samples"])))
            name = out["compare_name"]
            button = (gr.update() if name is None else
                      gr.update(visible=bool(name), value=f"Compare epochs of {name}" if name else "Compare epochs"))
            return [out["progress"], out["files"], out["queue"], out["log"], dropdown, out["signature"], gallery,
                    button, out["seen"]] + compare.poll_updates(compare_version)

        poll_inputs = [signature, seen, compare.poll_state]
        poll_outputs = [progress, files, queue, log, cancel_job, signature, samples, compare_epochs,
                        seen] + compare.poll_outputs
        estimate_event = dict(fn=logic.estimate, inputs=inputs, outputs=[estimate], show_progress="hidden")

        for name in ESTIMATE_KEYS:
            comp = components[name]
            if isinstance(comp, gr.Textbox):
                comp.blur(**estimate_event)
                comp.submit(**estimate_event)
            else:
                comp.change(**estimate_event)
        estimate_button.click(**estimate_event)

        preset.change(logic.apply_preset, [preset] + inputs, inputs + [message]).then(**estimate_event)
        def save(path, *values):
            text, written = logic.save_toml(path, *values)
            return text, (gr.update(value=written, visible=True) if written else gr.update())

        toml_save.click(save, [toml_path] + inputs, [message, toml_file])
        toml_load.click(logic.load_toml, [toml_path] + inputs, inputs + [message]).then(**estimate_event)
        toml_upload.upload(logic.load_toml, [toml_upload] + inputs, inputs + [message]).then(**estimate_event)
        import_button.click(logic.import_config, [import_path] + inputs, inputs + [message]).then(**estimate_event)
        import_upload.upload(logic.import_config, [import_upload] + inputs, inputs + [message]).then(**estimate_event)

        for button in (train, queue_add):
            button.click(logic.submit, inputs, [message]).then(poll, poll_inputs, poll_outputs,
                                                               show_progress="hidden")
        interrupt.click(logic.interrupt, [interrupt_save], [message])
        cancel.click(logic.cancel, [cancel_job], [message]).then(poll, poll_inputs, poll_outputs,
                                                                 show_progress="hidden")
        refresh.click(poll, poll_inputs, poll_outputs, show_progress="hidden")

        def open_compare():
            name = comparable_training(logic.manager.status() or {})
            return [gr.update(selected="compare")] + compare.open_family(name)

        compare_epochs.click(open_compare, None, [main_tabs] + compare.open_outputs)

        # the queue is the manager's (persisted): read it on every page load, then poll
        tab.load(poll, poll_inputs, poll_outputs, show_progress="hidden")
        tab.load(**estimate_event)
        tab.load(show_progress="hidden", **compare.load)
        if poll_seconds and major >= 4:
            timer = gr.Timer(float(poll_seconds))
            timer.tick(poll, poll_inputs, poll_outputs, show_progress="hidden")
        elif poll_seconds:
            tab.load(poll, poll_inputs, poll_outputs, show_progress="hidden", every=float(poll_seconds))

    tab.lora_trainer_components = components
    tab.lora_trainer_logic = logic
    return tab


def initial_values(logic: TabLogic) -> list[Any]:
    """The form's initial values in component order (for tests)."""
    return form_list(logic.initial_form())


__all__ = ["build_tab", "gradio_major", "POLL_SECONDS", "ESTIMATE_KEYS", "initial_values"]
