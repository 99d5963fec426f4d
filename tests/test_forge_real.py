"""LoRA Trainer inside a real Forge (lllyasviel/stable-diffusion-webui-forge), end to end. Opt-in.

Skipped unless ``WEBUI_DIR`` names a Forge checkout (it has ``modules_forge/`` and
``backend/``) whose Python environment is ready (docs/forge_test.md: an offline CPU set-up).
Run with::

    WEBUI_DIR=/work/forge .venv/bin/python -m pytest -m webui tests/test_forge_real.py -v

Against the real Forge process (nothing is faked): ``launch.py`` from ``WEBUI_DIR``
with ``--api --always-cpu`` on a free 127.0.0.1 port and a fresh ``--data-dir`` in
pytest's temp folder, this repository symlinked as ``<data dir>/extensions/lora_trainer``
and the Forge-size tiny SD1 checkpoint (``tiny-checkpoint --forge``: the smallest one
Forge's model detection accepts) selected with ``--ckpt``. Then:

* the extension is loaded: our route answers and the tab is in the page's config;
* a first training before any generation (Forge has loaded nothing yet: the adapter loads it);
* a txt2img baseline, and an image with that LoRA, which Forge merges into its weights;
* a 2-epoch training through ``POST /lora_trainer/v1/train`` (Forge's Lora folder),
  polled until done; both files are listed by ``/sdapi/v1/loras``; the same seed gives the
  baseline image without a LoRA and the merged LoRA's image with it, bit for bit (the model
  and Forge's merged weights were handed back), and the new LoRA changes the image;
* the two epochs side by side through ``POST /lora_trainer/v1/compare`` (Forge's X/Y/Z
  plot, run as a job on its main thread): a grid file, a no-LoRA cell and one cell per epoch.

Environment: ``WEBUI_DIR`` (required), ``WEBUI_PYTHON`` (default ``WEBUI_DIR/venv/bin/python``),
``WEBUI_ARGS`` (replaces the CPU flags ``--always-cpu --skip-torch-cuda-test``),
``WEBUI_START_TIMEOUT`` (default 900 s), ``WEBUI_KEEP=1`` (print and keep the data dir).
"""
from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.webui

WEBUI_DIR = os.environ.get("WEBUI_DIR", "").strip()
if not WEBUI_DIR:
    pytest.skip("WEBUI_DIR is not set: the real-Forge test is opt-in (docs/forge_test.md)", allow_module_level=True)
if not (Path(WEBUI_DIR).expanduser() / "modules_forge").is_dir():
    pytest.skip(f"WEBUI_DIR={WEBUI_DIR} is not a Forge checkout (no modules_forge/)", allow_module_level=True)

from webui_process import WebUIProcess, running_webui  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CPU_ARGS = "--always-cpu --skip-torch-cuda-test"
TRAIN_TIMEOUT = 1800.0
FINISHED = ("done", "failed", "interrupted", "cancelled")
NAME = "lt_forge_test"


Forge = WebUIProcess  # the annotations below name it


@pytest.fixture(scope="module")
def forge(tmp_path_factory):
    forge_dir = Path(WEBUI_DIR).expanduser().resolve()
    python = Path(os.environ.get("WEBUI_PYTHON", "").strip() or forge_dir / "venv" / "bin" / "python")
    if not python.exists():
        pytest.fail(f"no Forge Python at {python}: create its venv (docs/forge_test.md) or set WEBUI_PYTHON")
    from lora_trainer.models.tiny import write_tiny_checkpoint

    data_dir = tmp_path_factory.mktemp("forge_data")
    (data_dir / "extensions").mkdir()
    (data_dir / "extensions" / "lora_trainer").symlink_to(REPO, target_is_directory=True)
    ckpt = write_tiny_checkpoint("sd1", data_dir / "models" / "Stable-diffusion" / "lt-forge-sd1.safetensors",
                                 size="forge")["checkpoint"]
    with running_webui(python, forge_dir, data_dir, ckpt, cpu_args=CPU_ARGS, name="Forge", log_name="forge.log",
                       request_timeout=1200.0) as running:
        yield running


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from conftest import make_images

    root = tmp_path_factory.mktemp("forge_dataset")
    make_images(root / "4_sks", 4, size=(64, 64), seed=3)
    return root


def _txt2img(forge: Forge, prompt: str) -> tuple[bytes, str]:
    """(the image's pixels, its infotext) for ``prompt`` at a fixed seed, 2 steps, 64x64."""
    import io

    from PIL import Image

    body = {"prompt": prompt, "negative_prompt": "", "seed": 1234, "steps": 2, "width": 64, "height": 64,
            "cfg_scale": 5, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1}
    out = forge.ok("POST", "/sdapi/v1/txt2img", body)
    image = Image.open(io.BytesIO(base64.b64decode(out["images"][0])))
    return image.convert("RGB").tobytes(), json.loads(out["info"]).get("infotexts", [""])[0]


def _train(forge: Forge, dataset: Path, name: str, epochs: int, **extra) -> dict:
    body = {"train_data_dir": str(dataset), "output_name": name, "resolution": "64", "min_bucket_reso": 64,
            "train_batch_size": 2, "network_dim": 4, "network_alpha": 2, "learning_rate": 1e-3,
            "max_train_epochs": epochs, "save_every_n_epochs": 1, "seed": 1, "trigger_word": "sks", **extra}
    job_id = forge.ok("POST", "/lora_trainer/v1/train", body)["job_id"]
    deadline = time.monotonic() + TRAIN_TIMEOUT
    while time.monotonic() < deadline:
        status = forge.ok("GET", f"/lora_trainer/v1/status?job_id={job_id}")
        if status.get("state") in FINISHED:
            assert status["state"] == "done", f"{status}\n--- Forge log ---\n{forge.log_tail()}"
            return status
        time.sleep(2)
    pytest.fail(f"training {job_id} did not end within {TRAIN_TIMEOUT:.0f} s\n{forge.log_tail()}")


def test_extension_loaded(forge):
    assert forge.ok("GET", "/lora_trainer/v1/jobs") == {"jobs": []}
    config = json.dumps(forge.ok("GET", "/config"))
    assert "LoRA Trainer" in config and "could not start" not in config
    assert "[LoRA Trainer] the tab could not be built" not in forge.log_tail(10**7)


def test_train_in_forge_then_compare_the_epochs(forge, dataset, tmp_path):
    # the first job of a fresh Forge: nothing is loaded yet (FakeInitialModel); the training loads it
    _train(forge, dataset, "lt_style", epochs=1)
    assert "Forge had not loaded it yet" in forge.log_tail(10**7)
    baseline, _ = _txt2img(forge, "sks, circle")
    # a LoRA Forge merges into its weights before the next training
    forge.ok("POST", "/sdapi/v1/refresh-loras")
    styled, info = _txt2img(forge, "sks, circle <lora:lt_style:1>")
    assert styled != baseline and "lt_style" in info

    # samples every epoch, drawn by the core's sampler over Forge's lent model
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks, circle --w 64 --h 64 --s 2 --d 7\n", encoding="utf-8")
    status = _train(forge, dataset, NAME, epochs=2, sample_every_n_epochs=1, sample_prompts=str(prompts),
                    sample_sampler="euler_a")
    assert [s["epoch"] for s in status.get("samples") or []] == [1, 2], status.get("samples")
    assert all(Path(s["path"]).is_file() for s in status["samples"])
    names = sorted(Path(p).name for p in status["files"])
    assert names == [f"{NAME}-000001.safetensors", f"{NAME}.safetensors"]
    forge.ok("POST", "/sdapi/v1/refresh-loras")
    listed = {item["name"] for item in forge.ok("GET", "/sdapi/v1/loras")}
    assert {f"{NAME}-000001", NAME} <= listed
    # handed back: Forge's own weights and its merged LoRA give the same images, bit for bit
    assert _txt2img(forge, "sks, circle <lora:lt_style:1>")[0] == styled
    assert _txt2img(forge, "sks, circle")[0] == baseline
    trained, info = _txt2img(forge, f"sks, circle <lora:{NAME}:0.8>")
    assert trained != baseline and NAME in info

    result = forge.ok("POST", "/lora_trainer/v1/compare", {"name": NAME, "steps": 2, "width": 64, "height": 64,
                                                          "seed": 1234, "sampler_name": "Euler"})
    assert result["grid_path"] and Path(result["grid_path"]).is_file(), result
    assert [cell["file"] for cell in result["cells"]] == [None, f"{NAME}-000001", NAME], result  # no LoRA first
    assert result["suggestion"] and result["suggestion"]["file"] in (f"{NAME}-000001", NAME), result
