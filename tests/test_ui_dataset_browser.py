"""The Dataset tab in a real browser, under each UI Python (Gradio 3.41 and 4.40): open a
dataset, click an image, edit and save its caption, run a batch Replace with Preview then
Apply (and Undo), send a caption to txt2img, check the dataset; the files on disk are
compared byte for byte.

The harness is tests/test_ui_browser.py's (its Server, Chromium fixture and venv list):
``python -m lora_trainer ui`` in a subprocess, headless Debian Chromium through Playwright.
No model is loaded: the checkpoint is only named (the standalone host loads it on the
first training job, and the Dataset tab never starts one).
"""
from __future__ import annotations

import time

import pytest
from PIL import Image

from test_ui_browser import PYTHONS, Server, playwright_browser  # noqa: F401  (a fixture)

CAPTIONS = {"x1": "thing, red, smile", "x2": "thing, blue, smile", "x3": "thing, green"}
# what the page's stand-in for the WebUI's javascript/lora_trainer.js function records
SEND_STUB = "window.lora_trainer_send_to_txt2img = (p) => { window.__lt_sent = p; return [p]; };"


@pytest.fixture
def ui_dataset(tmp_path):
    root = tmp_path / "work"
    folder = root / "dataset" / "2_thing"
    folder.mkdir(parents=True)
    for i, (stem, text) in enumerate(CAPTIONS.items()):
        Image.new("RGB", (64, 48), (60 + 60 * i, 120, 200 - 60 * i)).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_bytes(text.encode("utf-8"))
    checkpoint = root / "models" / "unused.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"never loaded")
    return {"root": root, "checkpoint": checkpoint, "dataset": root / "dataset", "folder": folder}


def _box(page, elem_id: str):
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first


def _wait_js(page, script: str, arg=None, timeout: float = 30_000):
    page.wait_for_function(script, arg=arg, timeout=timeout)


def _caption_files(folder) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(folder.glob("*.txt"))}


@pytest.mark.parametrize("ui_python", [p for _, p in PYTHONS] or ["none"], ids=[i for i, _ in PYTHONS] or ["none"])
def test_dataset_tab_edits_captions_in_browser(ui_python, playwright_browser, ui_dataset, tmp_path):  # noqa: F811
    if ui_python == "none":
        pytest.skip("no Python with gradio: create .venv-gradio3 / .venv-gradio4 from requirements-ui-gradio3.txt / "
                    "requirements-ui-gradio4.txt, or set LORA_TRAINER_UI_PYTHONS")
    folder = ui_dataset["folder"]
    server = Server(ui_python, ui_dataset, tmp_path / "lora", tmp_path / "server.log")
    context = None
    started = time.monotonic()
    try:
        server.wait_ready()
        context = playwright_browser.new_context(viewport={"width": 1400, "height": 1000})
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
            ("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:")) else route.abort())
        context.add_init_script(SEND_STUB)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(server.url, wait_until="domcontentloaded")
        page.locator("#lora_trainer_main_tabs > .tab-nav button", has_text="Dataset").first.click(timeout=120_000)

        # open the dataset: one thumbnail per image, the frequency table of all of them
        _box(page, "lora_trainer_ds_folder").fill(str(ui_dataset["dataset"]))
        page.click("#lora_trainer_ds_open")
        thumbs = page.locator("#lora_trainer_ds_gallery .thumbnail-item")
        _wait_js(page, "() => document.querySelectorAll('#lora_trainer_ds_gallery .thumbnail-item').length === 3")
        page.wait_for_selector("#lora_trainer_ds_frequency .lora-trainer-ds-frequency[data-images='3']",
                               state="attached")
        assert page.get_attribute("#lora_trainer_ds_frequency tr[data-tag='smile']", "data-count") == "2"

        # click the second image: its path, caption and a large preview show beside the gallery
        thumbs.nth(1).click()
        x2 = str(folder / "x2.png")
        _wait_js(page, "(p) => document.querySelector('#lora_trainer_ds_selected textarea, "
                       "#lora_trainer_ds_selected input').value === p", x2)
        assert _box(page, "lora_trainer_ds_caption").input_value() == CAPTIONS["x2"]
        page.wait_for_selector("#lora_trainer_ds_preview img", state="attached")

        # edit and save: the file holds exactly the text typed
        edited = "thing, blue, smile, edited"
        _box(page, "lora_trainer_ds_caption").fill(edited)
        page.click("#lora_trainer_ds_save")
        _wait_js(page, "() => (document.querySelector('#lora_trainer_ds_caption_message')||{}).innerText"
                       "?.includes('Saved')")
        assert (folder / "x2.txt").read_bytes() == edited.encode("utf-8")

        # batch Replace on every image: Preview lists 2 files and writes nothing; Apply writes them
        page.locator("#lora_trainer_ds_op label", has_text="Replace").first.click()
        _box(page, "lora_trainer_ds_op_find").wait_for(state="visible")
        _box(page, "lora_trainer_ds_op_find").fill("smile")
        _box(page, "lora_trainer_ds_op_replace").fill("grin")
        before = _caption_files(folder)
        page.click("#lora_trainer_ds_batch_preview")
        page.wait_for_selector("#lora_trainer_ds_batch_diff .lora-trainer-ds-diff[data-files-changed='2']",
                               state="attached")
        changed = {page.get_attribute(f"#lora_trainer_ds_batch_diff tr[data-file] >> nth={i}", "data-file")
                   for i in range(2)}
        assert changed == {"2_thing/x1.txt", "2_thing/x2.txt"}
        assert _caption_files(folder) == before
        page.click("#lora_trainer_ds_batch_apply")
        page.wait_for_selector("#lora_trainer_ds_batch_diff .lora-trainer-ds-diff[data-applied='true']",
                               state="attached")
        assert _caption_files(folder) == {"x1": b"thing, red, grin", "x2": b"thing, blue, grin, edited",
                                          "x3": b"thing, green"}
        # the open caption follows the file (a later Save must not write the old text back)
        _wait_js(page, "() => document.querySelector('#lora_trainer_ds_caption textarea').value === "
                       "'thing, blue, grin, edited'")
        _wait_js(page, "() => !!document.querySelector(\"#lora_trainer_ds_frequency tr[data-tag='grin']\")")

        # Undo puts the batch back, byte for byte
        page.click("#lora_trainer_ds_batch_undo")
        _wait_js(page, "() => (document.querySelector('#lora_trainer_ds_batch_message')||{}).innerText"
                       "?.includes('Undid')")
        assert _caption_files(folder) == before

        # Use as prompt: the caption and <lora:NAME:0.8> go to the WebUI's function
        _box(page, "lora_trainer_ds_lora_name").fill("thing")
        page.click("#lora_trainer_ds_use_prompt")
        _wait_js(page, "() => window.__lt_sent === '<lora:thing:0.8> thing, blue, smile, edited'")
        assert _box(page, "lora_trainer_ds_prompt").input_value() == "<lora:thing:0.8> thing, blue, smile, edited"

        # tagging runs in the background and its status streams to the page; here the model
        # folder is empty and downloads are off, so the run ends at once naming what to put where
        page.locator("#lora_trainer_ds_tagging").get_by_text("Tagging (WD14)").first.click()
        _box(page, "lora_trainer_ds_tag_model_dir").fill(str(tmp_path / "no-models"))
        page.locator("#lora_trainer_ds_tag_download input").uncheck()
        page.click("#lora_trainer_ds_tag_start")
        page.wait_for_selector("#lora_trainer_ds_tag_status .lora-trainer-ds-tag-status[data-state='failed']",
                               state="attached")
        assert "selected_tags.csv" in page.inner_text("#lora_trainer_ds_tag_status")
        assert _caption_files(folder) == before

        # the dataset doctor's report
        page.click("#lora_trainer_ds_check")
        page.wait_for_selector("#lora_trainer_ds_doctor .lora-trainer-ds-doctor", state="attached")
        assert "2_thing" in page.inner_text("#lora_trainer_ds_doctor")
        page.screenshot(path=str(tmp_path / "dataset_tab.png"), full_page=True)
    except Exception:
        if context is not None and context.pages:
            context.pages[0].screenshot(path=str(tmp_path / "dataset_tab_failed.png"), full_page=True)
        print(server.output())
        raise
    finally:
        if context is not None:
            context.close()
        server.stop()
    print(f"{ui_python}: {time.monotonic() - started:.1f} s")
