"""The tab's Compare section: epoch grid through the host's comparison runner, suggestion,
Publish, Send to txt2img.

:func:`build` lays the components out and wires their events to
:class:`~lora_trainer.ui.compare_logic.CompareLogic` (``logic.compare``); it returns a
:class:`ComparePanel` through which :mod:`lora_trainer.ui.tab` adds the result area
to its own polling (one poll event per tick for the whole tab) and lets the Train
tab's "Compare epochs" button open a family here (and re-reads the LoRA folder on page load:
the tab is built once, when the WebUI starts).

Stable ``elem_id`` s: ``lora_trainer_compare_family`` / ``_family_refresh`` / ``_family_info``,
``lora_trainer_compare_prompt`` / ``_negative_prompt`` / ``_seed`` / ``_strength`` /
``_y_axis`` / ``_y_values`` / ``_steps`` / ``_width`` / ``_height`` / ``_cfg_scale`` /
``_sampler_name``, ``lora_trainer_compare_run``, ``lora_trainer_compare_send`` (and the hidden
``lora_trainer_compare_payload``), ``lora_trainer_compare_message``, ``lora_trainer_compare_status``,
``lora_trainer_compare_grid``, ``lora_trainer_compare_suggestion``, ``lora_trainer_compare_poll``,
``lora_trainer_publish_epoch`` / ``_name`` / ``_overwrite``, ``lora_trainer_publish``,
``lora_trainer_publish_message``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..compare.xyz import DEFAULT_NEGATIVE, DEFAULT_STRENGTH
from . import render
from .compare_logic import DEFAULT_SEED, SAMPLERS, Y_CHOICES, Y_NONE, default_y_values

SEND_JS = "lora_trainer_send_xyz_to_txt2img"  # javascript/lora_trainer.js


@dataclass
class ComparePanel:
    family: Any  # the family dropdown
    poll_outputs: list  # what poll_updates fills, in order
    poll_state: Any  # gr.State: the result version the page shows
    poll_updates: Callable[[Optional[int]], list]  # version -> updates for poll_outputs + [new version]
    open_outputs: list  # what open_family fills, in order
    open_family: Callable[[str], list]  # a family name -> updates for open_outputs
    load: dict  # an event (fn, inputs, outputs) for page load: the LoRA folder read again


def _js_kwargs(major: int, name: str) -> dict[str, str]:
    return {"js": name} if major >= 4 else {"_js": name}


def build(gr, logic, *, major: Optional[int] = None) -> ComparePanel:
    """Lay the Compare section out inside the current Blocks context and wire its events."""
    if major is None:
        from .tab import gradio_major

        major = gradio_major()
    compare = logic.compare
    names, chosen = compare.family_choices()
    info = compare.family_info(chosen) if chosen else {"prompt": "", "epochs": [], "epoch": None, "release": "",
                                                       "summary": _no_family_text(compare)}
    in_webui = getattr(logic.host, "name", "") not in ("standalone", "")

    with gr.Row():
        # ---- what to compare ------------------------------------------------------------------
        with gr.Column(scale=2):
            with gr.Row():
                family = gr.Dropdown(choices=names, value=chosen, label="LoRA",
                                     info="a family NAME-000001 … NAME in the LoRA folder",
                                     elem_id="lora_trainer_compare_family")
                with gr.Column(min_width=100, scale=0):
                    family_refresh = gr.Button("Refresh", size="sm", elem_id="lora_trainer_compare_family_refresh")
            family_info = gr.Markdown(info["summary"], elem_id="lora_trainer_compare_family_info")
            prompt = gr.Textbox(value=info["prompt"], label="Prompt", lines=3,
                                info="trigger word and the dataset's most frequent tags; the LoRA tag is added "
                                     "by the comparison", elem_id="lora_trainer_compare_prompt")
            negative = gr.Textbox(value=DEFAULT_NEGATIVE, label="Negative prompt", lines=2,
                                  elem_id="lora_trainer_compare_negative_prompt")
            with gr.Row():
                seed = gr.Number(value=DEFAULT_SEED, precision=0, label="Seed (the same in every cell)",
                                 elem_id="lora_trainer_compare_seed")
                strength = gr.Number(value=DEFAULT_STRENGTH, label="Strength", elem_id="lora_trainer_compare_strength")
            with gr.Row():
                y_axis = gr.Dropdown(choices=list(Y_CHOICES), value=Y_NONE, label="Y axis (optional)",
                                     elem_id="lora_trainer_compare_y_axis")
                y_values = gr.Textbox(value="", label="Y values", lines=1, placeholder="e.g. 0.5, 0.8, 1, 1.2",
                                      info="separated by commas; the TE/UNet split takes none",
                                      elem_id="lora_trainer_compare_y_values")
            with gr.Accordion("Generation settings (empty: defaults)", open=False,
                              elem_id="lora_trainer_compare_settings"):
                with gr.Row():
                    steps = gr.Textbox(value="", label="Steps", placeholder="20", lines=1, max_lines=1,
                                       elem_id="lora_trainer_compare_steps")
                    cfg_scale = gr.Textbox(value="", label="CFG scale", placeholder="7", lines=1, max_lines=1,
                                           elem_id="lora_trainer_compare_cfg_scale")
                    sampler = gr.Dropdown(choices=[""] + list(SAMPLERS), value="", label="Sampler",
                                          allow_custom_value=True, elem_id="lora_trainer_compare_sampler_name")
                with gr.Row():
                    width = gr.Textbox(value="", label="Width", placeholder="the training resolution", lines=1,
                                       max_lines=1, elem_id="lora_trainer_compare_width")
                    height = gr.Textbox(value="", label="Height", placeholder="the training resolution", lines=1,
                                        max_lines=1, elem_id="lora_trainer_compare_height")
            with gr.Row():
                run = gr.Button("Compare", variant="primary", elem_id="lora_trainer_compare_run")
                send = gr.Button("Send to txt2img", visible=in_webui, elem_id="lora_trainer_compare_send")
            message = gr.Markdown("", elem_id="lora_trainer_compare_message")
            payload = gr.Textbox(value="", visible=False, elem_id="lora_trainer_compare_payload")

        # ---- the result -----------------------------------------------------------------------
        with gr.Column(scale=3):
            with gr.Row():
                status = gr.Markdown(compare.poll(None)["status"], elem_id="lora_trainer_compare_status")
                poll_button = gr.Button("Refresh", size="sm", scale=0, min_width=100,
                                        elem_id="lora_trainer_compare_poll")
            grid = gr.Image(value=None, type="pil", label="Grid", interactive=False,
                            elem_id="lora_trainer_compare_grid")
            suggestion = gr.HTML("", elem_id="lora_trainer_compare_suggestion")
            with gr.Accordion("Publish", open=True, elem_id="lora_trainer_publish_box"):
                with gr.Row():
                    publish_epoch = gr.Dropdown(choices=info["epochs"], value=info["epoch"], label="Epoch",
                                                info="the suggested one after a comparison",
                                                elem_id="lora_trainer_publish_epoch")
                    release = gr.Textbox(value=info["release"], label="Release name", lines=1, max_lines=1,
                                         elem_id="lora_trainer_publish_name")
                overwrite = gr.Checkbox(value=False, label="Overwrite an existing release",
                                        elem_id="lora_trainer_publish_overwrite")
                publish = gr.Button("Publish", elem_id="lora_trainer_publish")
                publish_message = gr.Markdown("", elem_id="lora_trainer_publish_message")
    version = gr.State(None)

    form = [family, prompt, negative, seed, strength, y_axis, y_values, steps, width, height, cfg_scale, sampler]

    # ---- events ---------------------------------------------------------------------------
    def choose_family(name):
        out = compare.family_info(name)
        return (out["prompt"] if out["ok"] else gr.update(), out["summary"],
                gr.update(choices=out["epochs"], value=out["epoch"]), out["release"] if out["ok"] else gr.update())

    family_outputs = [prompt, family_info, publish_epoch, release]
    family.change(choose_family, [family], family_outputs)

    def refresh_families(current):
        names, chosen = compare.family_choices(current)
        if not names:
            return gr.update(choices=[], value=None), _no_family_text(compare)
        # the summary again: it names the files this listing skipped (a partial download)
        return gr.update(choices=names, value=chosen), compare.family_info(chosen)["summary"]

    family_refresh.click(refresh_families, [family], [family, family_info])

    def choose_y(axis, seed_value):
        return default_y_values(axis, seed_value)

    y_axis.change(choose_y, [y_axis, seed], [y_values])

    def poll_updates(seen_version):
        out = compare.poll(seen_version)
        if not out["changed"]:
            keep = gr.update()
            running = out["state"] == "running"
            return [out["status"] if running else keep, keep, keep, keep, out["version"]]
        epochs = gr.update(choices=out["epochs"], value=out["epoch"]) if out["epochs"] else gr.update()
        return [out["status"], out["grid"], out["suggestion"], epochs, out["version"]]

    poll_outputs = [status, grid, suggestion, publish_epoch, version]
    run.click(compare.start, form, [message]).then(poll_updates, [version], poll_outputs, show_progress="hidden")
    poll_button.click(poll_updates, [version], poll_outputs, show_progress="hidden")

    # Gradio 3 passes a JavaScript function the outputs' values after the inputs and writes what it
    # returns into the outputs: the script returns [payload], which the payload box gets back
    send.click(compare.send_payload, form, [payload, message]).then(
        None, [payload], [payload], **_js_kwargs(major, SEND_JS))
    publish.click(compare.publish, [family, publish_epoch, release, overwrite], [publish_message])

    def open_family(name):
        """From the Train tab: list the folder again and choose ``name`` (its info follows by
        the dropdown's change event)."""
        names, chosen = compare.family_choices(name)
        return [gr.update(choices=names, value=chosen)]

    return ComparePanel(family=family, poll_outputs=poll_outputs, poll_state=version, poll_updates=poll_updates,
                        open_outputs=[family], open_family=open_family,
                        load=dict(fn=refresh_families, inputs=[family], outputs=[family, family_info]))


def _no_family_text(compare) -> str:
    folder = compare.lora_dir()
    text = (f"No LoRA in `{folder}` yet: train one, or put `NAME-000001.safetensors` … `NAME.safetensors` there, "
            "then press Refresh." if folder else "This host names no LoRA folder.")
    skipped = [f"skipped: {why}" for why in getattr(compare, "skipped", [])]
    return text + ("\n\n" + render.notes_markdown(skipped) if skipped else "")


__all__ = ["build", "ComparePanel", "SEND_JS"]
