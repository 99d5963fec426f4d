"""``python -m lora_trainer tag`` (tag_main) with a tiny ONNX tagger built in the test."""
import os

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from test_tagging_wd14 import make_dataset, snapshot, solid, write_tiny_tagger  # noqa: E402

from lora_trainer.cli_dataset import tag_main  # noqa: E402


@pytest.fixture
def setup(tmp_path):
    model = write_tiny_tagger(tmp_path / "model", flavour="v3")
    root = tmp_path / "train"
    make_dataset(root)
    return model, root


def test_tag_if_empty_then_overwrite_with_yes_then_undo(setup, capsys):
    model, root = setup
    original = snapshot(root)
    folder = root / "10_char"
    assert tag_main([str(root), "--model-dir", model, "--trigger", "sks", "--exclude", "white_background", "^_^",
                     "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 image(s): 3 caption(s) written, 1 skipped" in out and "undo: python -m lora_trainer tag --undo" in out
    assert (folder / "red.txt").read_bytes() == original[os.path.join("10_char", "red.txt")]
    white = (folder / "white.txt").read_text(encoding="utf-8")
    assert white.startswith("sks, ") and "white background" not in white and "^_^" not in white

    after_first = snapshot(root)
    assert tag_main([str(root), "--model-dir", model, "--mode", "overwrite"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert snapshot(root) == after_first

    assert tag_main([str(root), "--model-dir", model, "--mode", "overwrite", "--yes", "--escape", "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    backup = out.split("undo: python -m lora_trainer tag --undo ")[1].strip()
    assert "ganyu \\(genshin impact\\)" in (folder / "blue.txt").read_text(encoding="utf-8")
    assert tag_main(["--undo", backup]) == 0
    assert snapshot(root) == after_first


def test_tag_errors_are_messages_not_tracebacks(setup, tmp_path, capsys):
    model, root = setup
    assert tag_main([str(tmp_path / "nowhere"), "--model-dir", model]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert tag_main([str(root), "--model-dir", str(tmp_path / "empty"), "--no-download"]) == 2
    assert "allow the download" in capsys.readouterr().err
    assert tag_main([str(root), "--model", "nope", "--model-dir", str(tmp_path / "empty")]) == 2
    assert "unknown tagger model" in capsys.readouterr().err
    assert tag_main([]) == 2
    assert tag_main(["--list-models"]) == 0
    assert "wd-eva02-large-tagger-v3" in capsys.readouterr().out


def test_single_image_and_rating(tmp_path, capsys):
    model = write_tiny_tagger(tmp_path / "m", flavour="v2")
    img = solid(tmp_path / "one.png", (0, 255, 0))
    assert tag_main([img, "--model-dir", model, "--rating", "--keep-underscores"]) == 0
    text = (tmp_path / "one.txt").read_text(encoding="utf-8")
    assert text.startswith("general, hatsune_miku") and "green_theme" in text


def test_a_threshold_outside_0_1_is_a_message(setup, capsys):
    model, root = setup
    before = snapshot(root)
    assert tag_main([str(root), "--model-dir", model, "--general-threshold", "5"]) == 2
    assert "general threshold must be a score between 0 and 1" in capsys.readouterr().err
    assert snapshot(root) == before
