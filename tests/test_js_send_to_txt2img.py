"""javascript/lora_trainer.js in a real browser against real Gradio: Send to txt2img.

Each UI venv (Gradio 3.41 as in AUTOMATIC1111, Gradio 4.40 as in Forge) serves a page built
like the WebUI's: top-level ``#tabs`` with txt2img first, txt2img's prompt / negative prompt /
seed / size sliders / sampler dropdown, its ``#txt2img_script_container`` holding
``#script_list`` (``type="index"``, as the WebUI's ScriptRunner makes it) and the X/Y/Z plot
controls with the elem_ids, component kinds and server-side events of the WebUI's
``scripts/xyz_grid.py`` (AUTOMATIC1111 v1.10.1; Forge keeps them): the script group appears
only after the server answers the script choice, and a type change sends its values box to
the server and writes the answer back, so filling in the wrong order loses the values. The
script is titled "X/Y/Z plot" under Gradio 3 and "X/Y/Z Plot" (Forge classic) under Gradio 4.
img2img has its own ``#script_list`` too. The LoRA Trainer tab is the real one
(:func:`lora_trainer.ui.tab.build_tab`) over a LoRA folder written by the test.

The test uses the Compare tab as a user does, presses Send to txt2img, and then asks the
*server* what the txt2img components hold (an echo button), comparing it with the payload
:mod:`lora_trainer.ui.compare_logic` computes for the same form. The page gets the
extension's JavaScript the way the WebUI adds it (a script tag); the WebUI's own helpers
(``gradioApp``, ``updateInput``, ``switch_to_txt2img``) are left out, so the script's
fallbacks are what runs.

Run as ``python tests/test_js_send_to_txt2img.py PORT LORA_DIR SCRIPT_TITLE`` it serves
that page (what the test does under each UI venv).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JS = REPO / "javascript" / "lora_trainer.js"
# txt2img's axis labels, a subset in the WebUI's order (the indices differ between WebUIs anyway)
AXIS_LABELS = ["Nothing", "Seed", "Var. seed", "Steps", "CFG Scale", "Prompt S/R", "Prompt order", "Sampler",
               "Checkpoint name", "Clip skip"]
AXIS_CHOICES = {"Sampler": ["Euler a", "DDIM", "DPM++ 2M"], "Checkpoint name": ["a.safetensors", "b.safetensors"]}
SAMPLERS = ["Euler a", "DDIM", "DPM++ 2M"]
SERVER_DELAY = 0.3  # seconds each script/axis event takes on the server: answers come back late
START_TIMEOUT = 240


# ------------------------------------------------------------------------ the fake WebUI page


def serve(port: int, lora_dir: str, script_title: str) -> None:
    import gradio as gr

    from lora_trainer.ui.tab import build_tab, gradio_major

    class Host:
        name = "a1111"  # a WebUI host: the tab shows Send to txt2img

        def lora_dir(self):
            return Path(lora_dir)

        def refresh_loras(self):
            pass

    class Manager:
        def status(self, job_id=None):
            return {}

        def jobs(self):
            return []

    major = gradio_major()
    trainer_tab = build_tab(Manager(), Host(), poll_seconds=0)

    def script_ui(tabname: str) -> dict:
        """The script list and the X/Y/Z plot's controls, as the WebUI builds them for one tab."""
        out = {}
        with gr.Group(elem_id=f"{tabname}_script_container"):
            out["script"] = gr.Dropdown(label="Script", elem_id="script_list", type="index",
                                        choices=["None", "Prompt matrix", script_title], value="None")
            with gr.Group(visible=False) as matrix:
                gr.Checkbox(label="Put variable parts at start of prompt")
            with gr.Group(visible=False) as xyz:
                prefix = f"script_{tabname}_xyz_plot_"
                for axis, default, values in (("x", "Seed", "1, 2, 3"), ("y", "Steps", "10, 20"),
                                              ("z", "CFG Scale", "5, 7")):
                    with gr.Row():
                        out[f"{axis}_type"] = gr.Dropdown(label=f"{axis.upper()} type", choices=AXIS_LABELS,
                                                          value=default, type="index", elem_id=prefix + f"{axis}_type")
                        out[f"{axis}_values"] = gr.Textbox(label=f"{axis.upper()} values", lines=1, value=values,
                                                           elem_id=prefix + f"{axis}_values")
                        out[f"{axis}_dropdown"] = gr.Dropdown(label=f"{axis.upper()} values", visible=False,
                                                              multiselect=True, interactive=True)
                out["csv_mode"] = gr.Checkbox(label="Use text inputs instead of dropdowns", value=False,
                                              elem_id=prefix + "csv_mode")

        def select_script(index):
            time.sleep(SERVER_DELAY)
            return gr.update(visible=index == 1), gr.update(visible=index == 2)

        out["script"].change(select_script, [out["script"]], [matrix, xyz])

        def select_axis(axis_type, axis_values, axis_dropdown, csv_mode):
            # what the WebUI's select_axis does with the box it was sent
            time.sleep(SERVER_DELAY)
            choices = AXIS_CHOICES.get(AXIS_LABELS[axis_type or 0])
            if choices is not None:
                if csv_mode:
                    if axis_dropdown:
                        axis_values = ",".join(v for v in axis_dropdown if v in choices)
                        axis_dropdown = []
                elif axis_values:
                    axis_dropdown = [v.strip() for v in axis_values.split(",") if v.strip() in choices]
                    axis_values = ""
            return (gr.update(visible=choices is None or csv_mode, value=axis_values),
                    gr.update(choices=choices or [], visible=choices is not None and not csv_mode, value=axis_dropdown))

        for axis in "xyz":
            fields = [out[f"{axis}_type"], out[f"{axis}_values"], out[f"{axis}_dropdown"], out["csv_mode"]]
            out[f"{axis}_type"].change(select_axis, fields, [out[f"{axis}_values"], out[f"{axis}_dropdown"]])

        def change_csv_mode(csv_mode, *axes):
            updates = []
            for i in range(3):
                updates.extend(select_axis(axes[3 * i], axes[3 * i + 1], axes[3 * i + 2], csv_mode))
            return updates

        axes = [out[f"{a}_{k}"] for a in "xyz" for k in ("type", "values", "dropdown")]
        out["csv_mode"].change(change_csv_mode, [out["csv_mode"]] + axes,
                               [out[f"{a}_{k}"] for a in "xyz" for k in ("values", "dropdown")])
        return out

    with gr.Blocks(analytics_enabled=False, title="fake WebUI") as demo:
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt")
                negative = gr.Textbox(label="Negative prompt", lines=3, elem_id="txt2img_neg_prompt")
                with gr.Row():
                    sampler = gr.Dropdown(label="Sampling method", choices=SAMPLERS, value=SAMPLERS[0],
                                          elem_id="txt2img_sampling")
                    steps = gr.Slider(minimum=1, maximum=150, step=1, value=20, label="Sampling steps",
                                      elem_id="txt2img_steps")
                with gr.Row():
                    width = gr.Slider(minimum=64, maximum=2048, step=8, value=512, label="Width",
                                      elem_id="txt2img_width")
                    height = gr.Slider(minimum=64, maximum=2048, step=8, value=512, label="Height",
                                       elem_id="txt2img_height")
                cfg = gr.Slider(minimum=1.0, maximum=30.0, step=0.5, value=7.0, label="CFG Scale",
                                elem_id="txt2img_cfg_scale")
                seed = gr.Number(label="Seed", value=-1, precision=0, elem_id="txt2img_seed")
                script = script_ui("txt2img")
                echo = gr.Button("Echo", elem_id="echo")
                echoed = gr.Textbox(label="What the server holds", elem_id="echoed")
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                gr.Textbox(label="Prompt", lines=3, elem_id="img2img_prompt")
                script_ui("img2img")
            with gr.Tab("LoRA Trainer", id="lora_trainer", elem_id="tab_lora_trainer"):
                trainer_tab.render()

        names = ["prompt", "negative_prompt", "seed", "sampler", "steps", "width", "height", "cfg_scale", "script",
                 "csv_mode"] + [f"{a}_{k}" for a in "xyz" for k in ("type", "values", "dropdown")]
        components = [prompt, negative, seed, sampler, steps, width, height, cfg, script["script"],
                      script["csv_mode"]] + [script[f"{a}_{k}"] for a in "xyz" for k in ("type", "values", "dropdown")]

        def echo_values(*values):
            return json.dumps(dict(zip(names, values)))

        echo.click(echo_values, components, [echoed])

    if major >= 4:
        demo.queue(default_concurrency_limit=4)
    else:
        demo.queue(concurrency_count=4)
    print(f"serving on {port}", flush=True)
    demo.launch(server_name="127.0.0.1", server_port=port, share=False, inbrowser=False, show_api=False,
                prevent_thread_lock=False, quiet=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])
    sys.exit(0)


# ------------------------------------------------------------------------------------ the test

import pytest  # noqa: E402  (the page above is served by UI venvs that only need gradio)

from test_ui_browser import _free_port, playwright_browser, ui_pythons  # noqa: E402,F401 (a fixture)

PYTHONS = ui_pythons()
TITLES = {"gradio3": "X/Y/Z plot", "gradio4": "X/Y/Z Plot"}  # A1111 on Gradio 3, Forge classic on Gradio 4


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory):
    from test_ui_compare import _write_epoch

    folder = tmp_path_factory.mktemp("js_lora") / "Lora"
    folder.mkdir()
    for epoch in (1, 2):
        _write_epoch(folder / f"char-{epoch:06d}.safetensors", epoch)
    _write_epoch(folder / "char.safetensors", 3)
    (folder / "char.json").write_text(json.dumps({"activation text": "sks"}), "utf-8")
    return folder


def _start(python: str, lora_dir: Path, title: str, log_path: Path):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    log = open(log_path, "wb")
    proc = subprocess.Popen([python, str(Path(__file__)), str(port), str(lora_dir), title], cwd=str(REPO), env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return proc, log, url
        except OSError:
            time.sleep(1.0)
    proc.kill()
    log.close()
    pytest.fail(f"the fake WebUI did not start:\n{log_path.read_text(errors='replace')[-4000:]}")


def _box(page, elem_id: str):
    """A textbox's field (a one-line box is an <input> in Gradio 3, a <textarea> in 4)."""
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first


def _dropdown_pick(page, elem_id: str, choice: str) -> None:
    """As a user does: click the box, click the choice."""
    page.click(f"#{elem_id} input")
    page.click(f"#{elem_id} li[aria-label='{choice}']")
    page.wait_for_function("([id, v]) => document.querySelector('#' + id + ' input').value === v", arg=[elem_id, choice])


def _echo(page) -> dict:
    page.evaluate("() => { const t = document.querySelector('#echoed textarea'); t.value = ''; }")
    page.click("#echo")
    page.wait_for_function("() => document.querySelector('#echoed textarea').value !== ''", timeout=30_000)
    return json.loads(page.input_value("#echoed textarea"))


@pytest.mark.parametrize("ui", PYTHONS or [("none", "")], ids=[i for i, _ in PYTHONS] or ["none"])
def test_send_to_txt2img_fills_the_xyz_plot(ui, playwright_browser, lora_folder, tmp_path):
    browser = playwright_browser
    venv, ui_python = ui
    if not ui_python:
        pytest.skip("no UI venv: create .venv-gradio3 / .venv-gradio4 or set LORA_TRAINER_UI_PYTHONS")
    from test_ui_compare import Manager, StubHost

    from lora_trainer.ui.compare_logic import FORM_FIELDS, CompareForm, CompareLogic

    title = TITLES.get(venv, "X/Y/Z plot")
    proc, log, url = _start(ui_python, lora_folder, title, tmp_path / "server.log")
    context = None
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
            ("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:")) else route.abort())
        page = context.new_page()
        page.set_default_timeout(60_000)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#txt2img_prompt textarea", timeout=120_000)
        page.add_script_tag(path=str(JS))  # as the WebUI adds javascript/*.js

        before = _echo(page)
        assert before["x_type"] == AXIS_LABELS.index("Seed") and before["y_values"] == "10, 20"

        # the Compare tab, filled as a user does
        page.locator("#tabs > .tab-nav button", has_text="LoRA Trainer").click()
        page.locator("#lora_trainer_main_tabs > .tab-nav button", has_text="Compare").click()
        page.wait_for_function("() => document.querySelector('#lora_trainer_compare_family input').value === 'char'")
        prompt = 'sks, 1girl, "quoted", hat \\(object\\)'
        page.fill("#lora_trainer_compare_prompt textarea", prompt)
        page.fill("#lora_trainer_compare_negative_prompt textarea", "lowres, bad hands")
        page.fill("#lora_trainer_compare_seed input", "777")
        _dropdown_pick(page, "lora_trainer_compare_y_axis", "Strengths")
        page.wait_for_function(
            "() => document.querySelector('#lora_trainer_compare_y_values textarea').value === '0.5, 0.8, 1, 1.2'")
        page.fill("#lora_trainer_compare_y_values textarea", "0.5, 1.2")
        page.locator("#lora_trainer_compare_settings").get_by_text("Generation settings").first.click()
        _box(page, "lora_trainer_compare_steps").fill("28")
        _dropdown_pick(page, "lora_trainer_compare_sampler_name", "DDIM")
        page.click("#lora_trainer_compare_send")
        page.wait_for_function("() => window.lora_trainer_send_xyz_to_txt2img && lora_trainer_send_xyz_to_txt2img.last",
                               timeout=60_000)
        outcome = page.evaluate("async () => await lora_trainer_send_xyz_to_txt2img.last")
        assert outcome == {"ok": True, "problems": []}, outcome
        assert "Sent char to txt2img" in page.inner_text("#lora_trainer_compare_message")
        assert page.locator("#tab_txt2img").is_visible()  # switched to txt2img

        # what the server now holds is what compare_logic computed for the same form
        form = CompareForm(family="char", prompt=prompt, negative_prompt="lowres, bad hands", seed=777,
                           strength=0.8, y_axis="Strengths", y_values="0.5, 1.2", steps="28", sampler_name="DDIM")
        logic = CompareLogic(Manager(), StubHost(lora_folder, tmp_path / "grids"))
        text, _ = logic.send_payload(*[getattr(form, name) for name in FORM_FIELDS])
        payload = json.loads(text)
        x, y, z = payload["axes"]
        got = _echo(page)
        assert got["prompt"] == payload["prompt"] and got["prompt"].startswith(prompt + " <no_lora:char:")
        assert got["negative_prompt"] == "lowres, bad hands" and got["seed"] == 777
        assert got["script"] == 2  # the index of the X/Y/Z plot in the script list
        assert AXIS_LABELS[got["x_type"]] == x["type"] == "Prompt S/R" and got["x_values"] == x["values"]
        assert AXIS_LABELS[got["y_type"]] == y["type"] == "Prompt S/R" and got["y_values"] == y["values"]
        assert AXIS_LABELS[got["z_type"]] == "Nothing" and got["z_values"] == ""
        assert got["csv_mode"] is True
        assert x["values"].startswith("<no_lora:char:0.5>,<lora:char-000001:0.5>,")
        assert (got["width"], got["height"], got["steps"], got["sampler"]) == (64, 96, 28, "DDIM")
        assert got["cfg_scale"] == 7.0  # not overridden: left as the user had it

        # img2img's own script list was left alone
        assert page.evaluate("() => document.querySelector('#img2img_script_container #script_list input').value") \
            == "None"

        # a script this WebUI lacks is reported, not guessed
        page.evaluate("(p) => lora_trainer_send_xyz_to_txt2img(JSON.stringify(p))",
                      {"prompt": "kept", "script": "No Such Script", "axes": []})
        missing = page.evaluate("async () => await lora_trainer_send_xyz_to_txt2img.last")
        assert missing["ok"] is False and 'no "No Such Script"' in missing["problems"][0]

        # the Dataset tab's "Use as prompt" helper still works
        page.evaluate("() => lora_trainer_send_to_txt2img('<lora:char:0.8> sks')")
        assert _echo(page)["prompt"] == "<lora:char:0.8> sks"
        assert errors == [], errors
        page.screenshot(path=str(tmp_path / "txt2img_filled.png"), full_page=True)
    finally:
        if context is not None:
            context.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
