"""The CLI's ``grid`` verb and the demo's closing grid, run as a user runs them."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from conftest import make_images  # noqa: E402
from lora_trainer.config import from_dict  # noqa: E402
from lora_trainer.models.standalone import load_checkpoint  # noqa: E402
from lora_trainer.training.loop import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def family(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_grid")
    make_images(root / "data" / "2_sks", 4)
    checkpoint = tiny_checkpoints("sd1")
    config, _ = from_dict({
        "pretrained_model_name_or_path": checkpoint, "train_data_dir": str(root / "data"),
        "output_dir": str(root / "Lora"), "output_name": "t", "resolution": "64", "train_batch_size": 2,
        "network_dim": 4, "network_alpha": 2, "learning_rate": 5e-2, "max_train_epochs": 3,
        "save_every_n_epochs": 1, "cache_latents": True, "seed": 1, "device": "cpu",
    })
    train(config, load_checkpoint(checkpoint), log=lambda _m: None)
    return checkpoint, root / "Lora"


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lora_trainer", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=600)


def test_grid_verb_prints_the_grid_the_curve_and_the_suggestion(family, tmp_path):
    checkpoint, lora_dir = family
    out = cli("grid", "--ckpt", checkpoint, "--lora-dir", str(lora_dir), "--name", "t", "--prompt", "sks, circle",
              "--steps", "4", "--width", "64", "--height", "64", "--seed", "3", "--out", str(tmp_path / "g"),
              "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    grid = re.search(r"^grid: (.+\.png)$", text, re.MULTILINE)
    assert grid and Path(grid.group(1)).parent == tmp_path / "g" and Path(grid.group(1)).is_file()
    for label in ("no LoRA -> 1", "1 -> 2", "2 -> 3"):
        assert re.search(rf"^  {re.escape(label)}\s+0\.\d{{4}}", text, re.MULTILINE), text
    suggestion = re.search(r"^suggestion: epoch (\d) \((t-00000\d|t)\) \[(\w+)\]$", text, re.MULTILINE)
    assert suggestion, text
    assert re.search(r"^why: .+", text, re.MULTILINE)
    assert "Traceback" not in out.stderr


def test_grid_verb_with_rows_says_why_there_is_no_suggestion(family, tmp_path):
    checkpoint, lora_dir = family
    out = cli("grid", "--ckpt", checkpoint, "--lora-dir", str(lora_dir), "--name", "t", "--prompt", "sks",
              "--steps", "2", "--width", "64", "--height", "64", "--y", "te_unet", "--epochs", "1,t",
              "--out", str(tmp_path), "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "over 2 epoch(s) x 3 row(s)" in out.stdout
    assert "no suggestion: the rows change the LoRA's weights" in out.stdout


def test_grid_verb_problems_are_one_line(family, tmp_path):
    checkpoint, lora_dir = family
    out = cli("grid", "--ckpt", checkpoint, "--lora-dir", str(lora_dir), "--name", "nobody", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error: no nobody.safetensors nor nobody-000001.safetensors")
    assert "Traceback" not in out.stderr
    out = cli("grid", "--ckpt", checkpoint, "--lora-dir", str(lora_dir), "--name", "t", "--sampler", "Wobbly",
              cwd=tmp_path)
    assert out.returncode == 1 and "error: the headless grid has no sampler 'Wobbly'" in out.stderr


def test_demo_ends_with_a_grid_and_a_suggestion(tmp_path, capsys):
    from lora_trainer.__main__ import main

    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "2"]) == 0
    text = capsys.readouterr().out
    grid = re.search(r"^grid: (.+\.png)$", text, re.MULTILINE)
    assert grid and Path(grid.group(1)).is_file()
    assert Path(grid.group(1)).parent == tmp_path / "demo" / "grids"
    assert re.search(r"^suggestion: epoch [12] \(demo(-000001)?\) \[\w+\]$", text, re.MULTILINE), text
    assert re.search(r"^why: .+", text, re.MULTILINE)
