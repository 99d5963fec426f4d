"""The standalone UI in a real browser: fill the dataset, Train, watch progress, Interrupt.

``python -m lora_trainer ui`` runs in a subprocess on a tiny SD1 checkpoint and a
64x64 dataset (8 steps an epoch, 200 epochs: it runs until interrupted), once per
Python that has Gradio:

* ``LORA_TRAINER_UI_PYTHONS`` (paths joined by ``os.pathsep``) when set;
* else ``.venv-gradio3/bin/python`` (AUTOMATIC1111's Gradio 3.41.2 and pins) and
  ``.venv-gradio4/bin/python`` (Forge's Gradio 4.40.0 and pins) where they exist,
  and this interpreter when it has Gradio.

Headless Chromium (Debian's ``/usr/bin/chromium``, or ``LORA_TRAINER_CHROMIUM``)
is driven by Playwright; no browser is downloaded. The test skips only when
Playwright or Chromium is missing, or when no Python with Gradio is found.
Screenshots land in the test's tmp folder, and the last one is copied to
``/tmp/lora_trainer_ui.png``.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("LORA_TRAINER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
SHOT_COPY = Path("/tmp/lora_trainer_ui.png")
EPOCH_STEPS = 8  # 4 images x 2 repeats, batch 1
START_TIMEOUT = 240  # torch + gradio imports on a busy 2-core machine
RUN_TIMEOUT = 240


def ui_pythons() -> list[tuple[str, str]]:
    """(id, python) for each Python that can serve the UI."""
    env = os.environ.get("LORA_TRAINER_UI_PYTHONS")
    if env:
        paths = [p for p in env.split(os.pathsep) if p.strip()]
        return [(Path(p).parent.parent.name.lstrip(".").replace("venv-", "") or p, p) for p in paths]
    found = []
    for name in (".venv-gradio3", ".venv-gradio4"):
        python = REPO / name / "bin" / "python"
        if python.exists():
            found.append((name.replace(".venv-", ""), str(python)))
    if importlib.util.find_spec("gradio") is not None:
        found.append(("this-python", sys.executable))
    return found


PYTHONS = ui_pythons()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def playwright_browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; no `playwright install` needed)")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def ui_files(tmp_path_factory):
    """Tiny checkpoint, a 64x64 dataset and a TOML with the run's settings."""
    from PIL import Image

    from lora_trainer.models.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("ui_browser")
    checkpoint = write_tiny_checkpoint("sd1", root / "models" / "tiny.safetensors", seed=0)["checkpoint"]
    folder = root / "dataset" / "2_shape"
    folder.mkdir(parents=True)
    for i in range(4):
        image = Image.new("RGB", (64, 64), (40 + 50 * i, 120, 200 - 40 * i))
        for x in range(16 + 4 * i, 40 + 4 * i):
            for y in range(20, 44):
                image.putpixel((x, y), (250, 250, 250))
        image.save(folder / f"img_{i}.png")
        (folder / f"img_{i}.txt").write_text("uitest, white square, blue background", encoding="utf-8")
    toml = root / "settings.toml"
    toml.write_text(
        'resolution = "64"\nmax_train_epochs = 200\nsave_every_n_epochs = 1\nnetwork_dim = 4\n'
        'network_alpha = 2\nlearning_rate = 0.0001\nseed = 1\n',
        encoding="utf-8",
    )
    return {"root": root, "checkpoint": Path(checkpoint), "dataset": root / "dataset", "toml": toml}


class Server:
    def __init__(self, python: str, files: dict, lora_dir: Path, log_path: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False",
                   PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [python, "-m", "lora_trainer", "ui", "--ckpt", str(files["checkpoint"]), "--lora-dir", str(lora_dir),
             "--port", str(self.port)],
            cwd=str(files["root"]), env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-6000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the UI exited with {self.proc.returncode} before serving:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1.0)
        pytest.fail(f"the UI did not answer on {self.url} within {START_TIMEOUT} s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def _wait(predicate, timeout: float, what: str, server: Server, page=None, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        if server.proc.poll() is not None:
            break
        time.sleep(interval)
    detail = ""
    if page is not None:
        try:
            detail = page.inner_text("#lora_trainer_progress") + "\n" + page.inner_text("#lora_trainer_message")
        except Exception as exc:  # pragma: no cover - diagnostics only
            detail = repr(exc)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})\npage: {detail}\nserver log:\n{server.output()}")


def _input(page, elem_id: str):
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first


def _progress(page) -> dict:
    node = page.locator("#lora_trainer_progress .lora-trainer-progress").first
    return {k: node.get_attribute(f"data-{k}") for k in ("state", "step", "total", "epoch", "files")}


@pytest.mark.parametrize("ui_python", [p for _, p in PYTHONS] or ["none"], ids=[i for i, _ in PYTHONS] or ["none"])
def test_train_progress_interrupt_in_browser(ui_python, playwright_browser, ui_files, tmp_path):
    if ui_python == "none":
        pytest.skip("no Python with gradio: create .venv-gradio3 / .venv-gradio4 from requirements-ui-gradio3.txt / "
                    "requirements-ui-gradio4.txt, or set LORA_TRAINER_UI_PYTHONS")
    lora_dir = tmp_path / "lora"
    server = Server(ui_python, ui_files, lora_dir, tmp_path / "server.log")
    context = None
    try:
        server.wait_ready()
        context = playwright_browser.new_context(viewport={"width": 1400, "height": 1000})
        # the page may only talk to our server (Gradio's themes link web fonts: those are refused here)
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
            ("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:")) else route.abort())
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(server.url, wait_until="domcontentloaded")
        _input(page, "lora_trainer_train_data_dir").wait_for(state="visible", timeout=120_000)
        # initial poll rendered the (empty) queue read from the manager
        page.wait_for_selector("#lora_trainer_queue .lora-trainer-queue", state="attached")
        # the three tabs are there; the Compare tab has its LoRA picker (the folder is empty yet)
        for name in ("Train", "Compare", "Dataset"):
            assert page.locator("#lora_trainer_main_tabs > .tab-nav button", has_text=name).count() == 1, name
        page.wait_for_selector("#lora_trainer_compare_family input", state="attached")
        assert not page.locator("#lora_trainer_compare_epochs").is_visible()

        # load the run's settings from a TOML file (the path box and the Load button)
        page.locator("#lora_trainer_config_file").get_by_text("Config file (TOML) and import").first.click()
        _input(page, "lora_trainer_toml_path").fill(str(ui_files["toml"]))
        page.click("#lora_trainer_toml_load")
        page.wait_for_function(
            "() => (document.querySelector('#lora_trainer_message')||{}).innerText?.includes('Loaded')")

        # dataset and name; leaving the box updates the live estimate
        dataset_box = _input(page, "lora_trainer_train_data_dir")
        dataset_box.fill(str(ui_files["dataset"]))
        dataset_box.press("Tab")
        _input(page, "lora_trainer_output_name").fill("uitest")
        page.wait_for_selector("#lora_trainer_estimate .lora-trainer-estimate[data-ok='true']", state="attached")
        total = page.get_attribute("#lora_trainer_estimate .lora-trainer-estimate", "data-total")
        assert int(total) == EPOCH_STEPS * 200
        assert "2_shape" in page.inner_text("#lora_trainer_estimate")

        page.click("#lora_trainer_train")
        page.wait_for_function(
            "() => /started|queued/.test((document.querySelector('#lora_trainer_message')||{}).innerText||'')")
        assert "Not queued" not in page.inner_text("#lora_trainer_message")

        # progress advances (polled by the page itself: Timer on Gradio 4, every= on Gradio 3)
        first = _wait(lambda: (lambda p: p if p["state"] == "running" and int(p["step"] or 0) > 0 else None)(
            _progress(page)), RUN_TIMEOUT, "the progress to show a running step", server, page)
        later = _wait(lambda: (lambda p: p if int(p["step"] or 0) > int(first["step"]) else None)(_progress(page)),
                      RUN_TIMEOUT, "the step to advance", server, page)
        assert int(later["total"]) == EPOCH_STEPS * 200
        # an epoch file is listed as it lands
        _wait(lambda: "uitest-000001.safetensors" in page.inner_text("#lora_trainer_files"), RUN_TIMEOUT,
              "the first epoch file in the files list", server, page)
        assert page.locator("#lora_trainer_loss_chart polyline").count() == 2
        assert (lora_dir / "uitest-000001.safetensors").is_file()
        shot_running = tmp_path / "ui_running.png"
        page.screenshot(path=str(shot_running), full_page=True)

        # Interrupt (saving the current weights): the job stops before its end
        assert page.locator("#lora_trainer_interrupt_save input").is_checked()
        page.click("#lora_trainer_interrupt")
        stopped = _wait(lambda: (lambda p: p if p["state"] == "interrupted" else None)(_progress(page)),
                        RUN_TIMEOUT, "the job to stop after Interrupt", server, page)
        assert int(stopped["step"]) < EPOCH_STEPS * 200
        step_at_stop = int(stopped["step"])
        time.sleep(2 * 1.0 + 0.5)  # a couple of polls later nothing moves
        assert int(_progress(page)["step"]) == step_at_stop
        assert _progress(page)["state"] == "interrupted"
        files_text = page.inner_text("#lora_trainer_files")
        assert "uitest-000001.safetensors" in files_text
        saved = sorted(p.name for p in lora_dir.glob("*.safetensors"))
        assert "uitest-000001.safetensors" in saved and len(saved) >= 2, saved  # + the interrupted weights

        # the queue survives a page reload: it is the manager's persisted queue
        page.reload(wait_until="domcontentloaded")
        page.wait_for_selector("#lora_trainer_queue tr[data-state='interrupted']", state="attached",
                               timeout=120_000)
        assert "uitest" in page.inner_text("#lora_trainer_queue")
        assert (lora_dir / ".lora_trainer_queue.json").is_file()

        # after the training, "Compare epochs" opens the Compare tab on its family
        compare_button = page.locator("#lora_trainer_compare_epochs")
        compare_button.wait_for(state="visible", timeout=60_000)
        assert "uitest" in compare_button.inner_text()
        assert not page.locator("#lora_trainer_compare_family").is_visible()
        compare_button.click()
        page.locator("#lora_trainer_compare_family").wait_for(state="visible", timeout=30_000)
        page.wait_for_function(
            "() => (document.querySelector('#lora_trainer_compare_family input')||{}).value === 'uitest'")
        assert page.locator("#lora_trainer_compare_run").is_visible()
        page.wait_for_function("() => (document.querySelector('#lora_trainer_compare_prompt textarea')||{}).value"
                               "?.startsWith('uitest, white square')")
        assert "uitest-000001" in page.inner_text("#lora_trainer_compare_family_info")
        assert not page.locator("#lora_trainer_compare_send").is_visible()  # no txt2img outside the WebUI
        page.screenshot(path=str(tmp_path / "ui_compare.png"), full_page=True)
        shot = tmp_path / "ui_after_interrupt.png"
        page.screenshot(path=str(shot), full_page=True)
        try:
            shutil.copyfile(shot_running, SHOT_COPY)
            venv = Path(ui_python).parent.parent.name.lstrip(".").replace("venv-", "")
            shutil.copyfile(shot_running, SHOT_COPY.with_name(f"lora_trainer_ui_{venv}.png"))
        except OSError:
            pass
    finally:
        if context is not None:
            context.close()
        server.stop()
