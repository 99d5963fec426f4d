"""LoRA Trainer inside a real AUTOMATIC1111 WebUI (v1.10.1), end to end. Opt-in.

Skipped unless ``WEBUI_DIR`` names a WebUI checkout whose Python environment is
ready (see docs/webui_test.md for an offline CPU set-up). Run with::

    WEBUI_DIR=/work/webui python -m pytest -m webui tests/test_webui_real.py -v

What it does, against the real WebUI process (nothing is faked):

* starts ``launch.py`` from ``WEBUI_DIR`` with ``--api`` on a free 127.0.0.1 port,
  with a fresh ``--data-dir`` in pytest's temp folder: this repository is
  symlinked as ``<data dir>/extensions/lora_trainer`` and a tiny random SD1 or
  SDXL checkpoint (``lora_trainer.models.tiny``; every test runs once per
  architecture, one WebUI start each) is written into
  ``<data dir>/models/Stable-diffusion`` and selected with ``--ckpt`` (for SDXL a
  test-only extension's preload.py registers the tiny OpenCLIP arch). The
  WebUI checkout itself is not modified (its settings, extensions and models
  stay as they are);
* checks the extension loaded: our API route answers, the "LoRA Trainer" tab
  is in the page's config, and the console shows no error from our script;
* trains 2 epochs on a small generated dataset through ``POST /lora_trainer/v1/train``
  (output_dir left out: the WebUI's Lora folder), polling ``/status`` until the job ends;
* checks both files are listed by ``GET /sdapi/v1/loras`` after ``POST /sdapi/v1/refresh-loras``;
* generates with ``<lora:NAME:0.8>`` (``POST /sdapi/v1/txt2img``, 2 steps, 64x64):
  an image comes back, its infotext names the LoRA's hash (the Lora extension
  loaded it), and it differs from the same seed without the LoRA; the UNet and
  each text encoder's keys alone change it too (every part maps onto the
  WebUI's modules); without a LoRA the image is the pre-training one (the model
  was handed back);
* stops a long training with the WebUI's own Interrupt (``/sdapi/v1/interrupt``);
* stops the WebUI.

Environment:

``WEBUI_DIR``        the WebUI checkout (required; unset: the module is skipped)
``WEBUI_PYTHON``     its Python (default ``WEBUI_DIR/venv/bin/python``, ``venv\\Scripts\\python.exe`` on Windows)
``WEBUI_ARGS``       replaces the default device flags (CPU: ``--skip-torch-cuda-test --use-cpu all
                     --no-half --precision full``); ``--api``, ``--port``, ``--data-dir``, ``--ckpt``
                     and the offline flags are always given
``WEBUI_START_TIMEOUT``  seconds to wait for the WebUI to answer (default 900)
``WEBUI_KEEP``       1: print the data dir and keep it (pytest's temp folder) for a look afterwards
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.webui

WEBUI_DIR = os.environ.get("WEBUI_DIR", "").strip()
if not WEBUI_DIR:
    pytest.skip("WEBUI_DIR is not set: the real-WebUI test is opt-in (docs/webui_test.md)", allow_module_level=True)
if (Path(WEBUI_DIR).expanduser() / "modules_forge").is_dir():
    pytest.skip("WEBUI_DIR is a Forge checkout: tests/test_forge_real.py tests it", allow_module_level=True)

from webui_process import WebUIProcess, running_webui  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NAME = "lt_webui_test"
CPU_ARGS = "--skip-torch-cuda-test --use-cpu all --no-half --precision full"
TRAIN_TIMEOUT = 900.0
FINISHED = ("done", "failed", "interrupted", "cancelled")


def _webui_python(webui: Path) -> Path:
    configured = os.environ.get("WEBUI_PYTHON", "").strip()
    if configured:
        return Path(configured)
    if os.name == "nt":
        return webui / "venv" / "Scripts" / "python.exe"
    return webui / "venv" / "bin" / "python"


WebUI = WebUIProcess  # the annotations below name it


def _link_extension(extensions: Path) -> Path:
    extensions.mkdir(parents=True, exist_ok=True)
    target = extensions / "lora_trainer"
    try:
        target.symlink_to(REPO, target_is_directory=True)
    except (OSError, NotImplementedError):  # no symlinks (Windows without the privilege): copy the code
        ignore = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.pyc", ".pytest_cache", "out", "demo_out")
        shutil.copytree(REPO, target, ignore=ignore)
    return target


OPEN_CLIP_PRELOAD = """# written by tests/test_webui_real.py: the tiny checkpoint's OpenCLIP text tower is no
# registered open_clip arch; register its config before the WebUI builds the model
import glob, os


def preload(parser):
    import open_clip

    for path in glob.glob(os.path.join({models!r}, "*_open_clip", "*.json")):
        open_clip.add_model_config(path)
"""


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def webui(request, tmp_path_factory):
    arch = request.param
    webui_dir = Path(WEBUI_DIR).expanduser().resolve()
    if not (webui_dir / "launch.py").is_file():
        pytest.fail(f"WEBUI_DIR={WEBUI_DIR!r} holds no launch.py: point it at an AUTOMATIC1111 WebUI checkout")
    python = _webui_python(webui_dir)
    if not python.exists():
        pytest.fail(f"no WebUI Python at {python}: create its venv (docs/webui_test.md) or set WEBUI_PYTHON")

    from lora_trainer.models.tiny import write_tiny_checkpoint

    data_dir = tmp_path_factory.mktemp(f"webui_data_{arch}")
    _link_extension(data_dir / "extensions")
    models = data_dir / "models" / "Stable-diffusion"
    written = write_tiny_checkpoint(arch, models / f"lt-tiny-{arch}.safetensors")
    ckpt = written["checkpoint"]
    if "open_clip_config" in written:  # SDXL: a test-only extension registers the tiny OpenCLIP arch
        helper = data_dir / "extensions" / "lt_test_open_clip"
        helper.mkdir(parents=True)
        (helper / "preload.py").write_text(OPEN_CLIP_PRELOAD.format(models=str(models)), encoding="utf-8")

    with running_webui(python, webui_dir, data_dir, ckpt, cpu_args=CPU_ARGS) as ui:
        ui.arch = arch
        yield ui


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from conftest import make_images

    root = tmp_path_factory.mktemp("webui_dataset")
    make_images(root / "2_sks", 4, size=(64, 64))
    make_images(root / "1_circle", 2, size=(96, 64), seed=1, prefix="wide")
    return root


def test_extension_loaded(webui):
    assert webui.ok("GET", "/lora_trainer/v1/jobs") == {"jobs": []}
    status, payload = webui.request("GET", "/lora_trainer/v1/status")
    assert status == 200 and payload == {}
    config = webui.ok("GET", "/config")  # gradio's page config: the tab was built, not its error stand-in
    text = json.dumps(config)
    assert "LoRA Trainer" in text
    assert "LoRA Trainer could not start" not in text
    log = webui.log_tail(10**7)
    assert "Error loading script: lora_trainer.py" not in log, log
    assert "[LoRA Trainer] the tab could not be built" not in log, log
    options = webui.ok("GET", "/sdapi/v1/options")
    assert "lora_trainer_output_dir" in options  # our settings section was registered


def _png(b64: str):
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1])))
    image.load()
    return image


def _txt2img(webui: WebUI, prompt: str):
    payload = webui.ok("POST", "/sdapi/v1/txt2img", {
        "prompt": prompt, "negative_prompt": "", "steps": 2, "width": 64, "height": 64,
        "sampler_name": "Euler", "scheduler": "Automatic", "cfg_scale": 5, "seed": 1234, "batch_size": 1, "n_iter": 1,
    })
    assert payload["images"], payload
    return _png(payload["images"][0]), json.loads(payload["info"])


def _wait_job(webui: WebUI, job_id: str, on_running=None) -> dict:
    deadline = time.monotonic() + TRAIN_TIMEOUT
    status = {}
    while time.monotonic() < deadline:
        status = webui.ok("GET", f"/lora_trainer/v1/status?job_id={job_id}")
        if status["state"] in FINISHED:
            return status
        assert webui.process.poll() is None, f"the WebUI died during the training\n{webui.log_tail()}"
        if on_running is not None and status["state"] == "running":
            on_running(status)
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not finish within {TRAIN_TIMEOUT:.0f} s: {status}")


def _describe(status: dict, webui: WebUI) -> str:
    return (f"job ended {status.get('state')!r}: {status.get('message')}\n" + "\n".join(status.get("log", []))
            + f"\n--- WebUI log ---\n{webui.log_tail()}")


TRAIN_BODY = {
    "output_name": NAME,
    "resolution": "64",
    "enable_bucket": True,
    "min_bucket_reso": 64,
    "max_bucket_reso": 128,
    "train_batch_size": 2,
    "network_dim": 4,
    "network_alpha": 4,
    "learning_rate": 1e-2,
    "max_train_epochs": 2,
    "save_every_n_epochs": 1,
    "seed": 1,
}


def test_a_bad_request_is_refused(webui, dataset):
    status, payload = webui.request("POST", "/lora_trainer/v1/train", {**TRAIN_BODY, "train_data_dir": str(dataset),
                                                                        "network_dimm": 4})
    assert status == 422 and "network_dim" in payload["detail"], payload
    status, payload = webui.request("GET", "/lora_trainer/v1/status?job_id=nosuchjob")
    assert status == 404, payload


def test_train_then_generate_with_the_lora(webui, dataset):
    before, _ = _txt2img(webui, "sks, circle")  # the checkpoint as loaded, before any training

    job_id = webui.ok("POST", "/lora_trainer/v1/train", {**TRAIN_BODY, "train_data_dir": str(dataset)})["job_id"]
    status = _wait_job(webui, job_id)
    assert status.get("state") == "done", _describe(status, webui)
    assert status["epoch"] == 2 and status["step"] == status["total_steps"] > 0
    files = [Path(f) for f in status["files"]]
    assert sorted(f.name for f in files) == [f"{NAME}-000001.safetensors", f"{NAME}.safetensors"]
    lora_dir = (webui.data_dir / "models" / "Lora").resolve()
    assert all(f.resolve().parent == lora_dir and f.is_file() for f in files), files  # the WebUI's Lora folder
    assert job_id in [j["id"] for j in webui.ok("GET", "/lora_trainer/v1/jobs")["jobs"]]

    webui.ok("POST", "/sdapi/v1/refresh-loras")
    loras = {entry["name"]: entry for entry in webui.ok("GET", "/sdapi/v1/loras")}
    assert {NAME, f"{NAME}-000001"} <= set(loras), sorted(loras)
    assert Path(loras[NAME]["path"]).resolve() == lora_dir / f"{NAME}.safetensors"
    assert loras[NAME]["metadata"].get("ss_output_name") == NAME  # kohya metadata, as the WebUI reads it

    # the trainer gave the model back: the same seed without a LoRA gives the same image as before
    after, _ = _txt2img(webui, "sks, circle")
    assert after.tobytes() == before.tobytes(), "the checkpoint changed: the training did not hand the model back"

    with_lora, info = _txt2img(webui, f"sks, circle <lora:{NAME}:0.8>")
    assert with_lora.size == (64, 64)
    infotext = info["infotexts"][0]
    assert "Lora hashes:" in infotext and f"{NAME}:" in infotext, infotext  # the Lora extension applied it
    assert with_lora.tobytes() != before.tobytes(), "the LoRA changed nothing: its keys did not match the model"

    # each part's keys alone (lora_unet_*, lora_te_* / lora_te1_* / lora_te2_*) change the image: the WebUI's
    # Lora extension maps every part of the file onto its own modules
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(lora_dir / f"{NAME}.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = {k: v for k, v in f.metadata().items() if not k.startswith("sshs_")}

    def part_of(key: str) -> str:
        return next(p for p in ("lora_unet", "lora_te1", "lora_te2", "lora_te") if key.startswith(p + "_"))

    parts = sorted({part_of(k) for k in tensors})
    expected = ["lora_te1", "lora_te2", "lora_unet"] if webui.arch == "sdxl" else ["lora_te", "lora_unet"]
    assert parts == expected, parts
    for part in parts:
        only = {k: v for k, v in tensors.items() if part_of(k) == part}
        save_file(only, str(lora_dir / f"{NAME}_{part}.safetensors"), metadata=metadata)
    webui.ok("POST", "/sdapi/v1/refresh-loras")
    for part in parts:
        image, info = _txt2img(webui, f"sks, circle <lora:{NAME}_{part}:0.8>")
        assert f"{NAME}_{part}:" in info["infotexts"][0], info["infotexts"][0]
        assert image.tobytes() != before.tobytes(), f"the {part}_* keys alone changed nothing in the WebUI"


def test_samples_during_training_use_the_webuis_sampler(webui, dataset, tmp_path):
    """kohya's sample_every_n_epochs, drawn by the WebUI's own txt2img inside the training job; the
    model is handed back and generation works right after."""
    before, _ = _txt2img(webui, "sks, circle")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks, circle --n lowres --w 64 --h 64 --d 7 --s 4 --l 5\n", encoding="utf-8")
    body = {**TRAIN_BODY, "train_data_dir": str(dataset), "output_name": NAME + "_samples",
            "sample_every_n_epochs": 1, "sample_prompts": str(prompts), "sample_sampler": "euler_a"}
    job_id = webui.ok("POST", "/lora_trainer/v1/train", body)["job_id"]
    status = _wait_job(webui, job_id)
    assert status.get("state") == "done", _describe(status, webui)
    samples = status.get("samples") or []
    assert [s["epoch"] for s in samples] == [1, 2], samples
    from PIL import Image

    for entry in samples:
        path = Path(entry["path"])
        assert path.is_file() and path.parent.name == "sample", path
        assert Image.open(path).size == (64, 64)
        assert entry["prompt"].startswith("sks, circle")
    after, _ = _txt2img(webui, "sks, circle")
    assert after.tobytes() == before.tobytes(), "sampling inside the training changed the WebUI's model"


def test_the_webui_interrupt_button_stops_the_training(webui, dataset):
    """/sdapi/v1/interrupt is what the WebUI's Interrupt button does (shared.state.interrupt()):
    the job stops after its current step and saves the weights it has."""
    # and the "Default output folder" setting (Settings > LoRA Trainer) is where a request without output_dir saves
    out_dir = webui.data_dir / "lt_setting_out"
    webui.ok("POST", "/sdapi/v1/options", {"lora_trainer_output_dir": str(out_dir)})
    body = {**TRAIN_BODY, "train_data_dir": str(dataset), "output_name": NAME + "_int",
            "max_train_epochs": 200, "save_every_n_epochs": 1000}
    try:
        job_id = webui.ok("POST", "/lora_trainer/v1/train", body)["job_id"]
    finally:
        webui.ok("POST", "/sdapi/v1/options", {"lora_trainer_output_dir": ""})
    sent = []

    def interrupt_once(status):
        if not sent and status["step"] >= 1:
            webui.ok("POST", "/sdapi/v1/interrupt")
            sent.append(status["step"])

    status = _wait_job(webui, job_id, on_running=interrupt_once)
    assert sent, _describe(status, webui)
    assert status["state"] == "interrupted", _describe(status, webui)
    assert status["step"] < status["total_steps"]
    # the current weights, kohya-named with the epoch it was in: NAME-00000E-interrupted.safetensors
    names = [Path(f).name for f in status["files"]]
    assert len(names) == 1 and names[0].startswith(f"{NAME}_int-0") and names[0].endswith("-interrupted.safetensors"), names
    assert Path(status["files"][0]).is_file() and Path(status["files"][0]).parent.resolve() == out_dir.resolve()
    # the WebUI is free again: a generation runs (the queue lock was released)
    image, _ = _txt2img(webui, "sks, circle")
    assert image.size == (64, 64)


# --- epoch comparison through the WebUI's X/Y/Z plot (lora_trainer.hosts.a1111_compare) --------------------------

COMPARE_EXTENSION = """# written by tests/test_webui_real.py: registers LoRA Trainer's comparison routes
# (lora_trainer.hosts.a1111_compare.register_routes). scripts/lora_trainer.py registers them too (with --api);
# register_routes adds a prefix once per app, so whichever app_started callback runs first serves them
from modules import script_callbacks


def _started(demo, app):
    import sys

    if {repo!r} not in sys.path:
        sys.path.append({repo!r})
    import lora_trainer
    from lora_trainer.hosts.a1111 import A1111Host
    from lora_trainer.hosts.a1111_compare import register_routes

    state = vars(lora_trainer).setdefault("_webui_state", {{}})
    register_routes(app, get_host=lambda: state.get("host") or A1111Host(), get_manager=lambda: state.get("manager"))


script_callbacks.on_app_started(_started)
"""


@pytest.fixture(scope="module")
def webui_compare(tmp_path_factory):
    """A WebUI (tiny SD1) with a test extension that registers the comparison routes."""
    webui_dir = Path(WEBUI_DIR).expanduser().resolve()
    python = _webui_python(webui_dir)
    if not python.exists():
        pytest.fail(f"no WebUI Python at {python}: create its venv (docs/webui_test.md) or set WEBUI_PYTHON")
    from lora_trainer.models.tiny import write_tiny_checkpoint

    data_dir = tmp_path_factory.mktemp("webui_data_compare")
    _link_extension(data_dir / "extensions")
    helper = data_dir / "extensions" / "lt_test_compare" / "scripts"
    helper.mkdir(parents=True)
    (helper / "lt_test_compare.py").write_text(COMPARE_EXTENSION.format(repo=str(REPO)), encoding="utf-8")
    ckpt = write_tiny_checkpoint("sd1", data_dir / "models" / "Stable-diffusion" / "lt-tiny-sd1.safetensors")["checkpoint"]
    with running_webui(python, webui_dir, data_dir, ckpt, cpu_args=CPU_ARGS) as ui:
        ui.arch = "sd1"
        yield ui


def test_compare_epochs_with_the_xyz_plot_then_publish(webui_compare, dataset):
    webui = webui_compare
    name = NAME + "_cmp"
    job_id = webui.ok("POST", "/lora_trainer/v1/train", {**TRAIN_BODY, "train_data_dir": str(dataset),
                                                          "output_name": name, "trigger_word": "sks"})["job_id"]
    status = _wait_job(webui, job_id)
    assert status.get("state") == "done", _describe(status, webui)
    webui.ok("POST", "/sdapi/v1/refresh-loras")

    # the same generation settings as _txt2img, so cells can be checked against plain generations
    body = {"name": name, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "scheduler": "Automatic",
            "cfg_scale": 5, "seed": 1234, "negative_prompt": "", "images": True}
    result = webui.ok("POST", "/lora_trainer/v1/compare", body)
    assert (result["columns"], result["rows"]) == (3, 1), result
    assert [c["file"] for c in result["cells"]] == [None, f"{name}-000001", name]
    assert result["x"]["label"] == "Prompt S/R" and result["prompt"].startswith("sks, ")
    assert "Script: X/Y/Z plot" in result["infotext"] and "X Type: Prompt S/R" in result["infotext"], result["infotext"]
    # the grid was saved where the WebUI saves txt2img grids
    grid_path = Path(result["grid_path"])
    grids_dir = (webui.data_dir / "outputs" / "txt2img-grids").resolve()
    assert grid_path.is_file() and grids_dir in grid_path.resolve().parents, grid_path  # (a dated sub-folder)
    assert [f.resolve() for f in grids_dir.rglob("*.png")] == [grid_path.resolve()]  # saved once
    grid = _png(result["grid"])
    assert grid.width >= 3 * 64 and grid.height >= 64
    cells = [_png(c["image"]) for c in result["cells"]]
    assert all(c.size == (64, 64) for c in cells)

    # the no-LoRA cell is the checkpoint alone; each epoch cell is that epoch at 0.8, bit for bit
    user_text = result["prompt"].rsplit(" ", 1)[0]
    plain, _ = _txt2img(webui, user_text)
    assert cells[0].tobytes() == plain.tobytes(), "the no-LoRA cell is not the checkpoint without a LoRA"
    for cell, image in zip(result["cells"][1:], cells[1:]):
        assert cell["prompt"] == f"{user_text} <lora:{cell['file']}:0.8>"
        reference, info = _txt2img(webui, cell["prompt"])
        assert f"{cell['file']}:" in info["infotexts"][0]
        assert image.tobytes() == reference.tobytes(), f"the {cell['file']} cell differs from a plain generation"
        assert image.tobytes() != cells[0].tobytes()
    assert result["suggestion"] and result["suggestion"]["verdict"] and len(result["suggestion"]["curve"]) == 2

    # a refused request: an unknown family
    status, payload = webui.request("POST", "/lora_trainer/v1/compare", {"name": "no_such_lora"})
    assert status == 422, payload

    # publish epoch 1 under a release name; the WebUI loads it as the same LoRA
    release = name + "_v1"
    published = webui.ok("POST", "/lora_trainer/v1/publish", {"name": name, "epoch": 1, "release_name": release})
    lora_dir = (webui.data_dir / "models" / "Lora").resolve()
    assert Path(published["path"]).resolve() == lora_dir / f"{release}.safetensors"
    preview = Path(published["preview"])
    assert preview.name == f"{release}.preview.png"
    from PIL import Image

    with Image.open(preview) as p:
        assert p.convert("RGB").tobytes() == cells[1].convert("RGB").tobytes()
    webui.ok("POST", "/sdapi/v1/refresh-loras")
    loras = {entry["name"]: entry for entry in webui.ok("GET", "/sdapi/v1/loras")}
    assert loras[release]["metadata"]["ss_output_name"] == release
    assert loras[release]["metadata"]["sshs_model_hash"] == loras[f"{name}-000001"]["metadata"]["sshs_model_hash"]
    released, info = _txt2img(webui, f"{user_text} <lora:{release}:0.8>")
    assert f"{release}:" in info["infotexts"][0]
    assert released.tobytes() == cells[1].tobytes(), "the released file does not generate as its epoch did"
