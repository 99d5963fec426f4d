"""The Compare tab without a browser: families, the Comparison it builds, refusals, the grid and
suggestion it shows, Publish, the Send-to-txt2img payload, and training samples in the Train tab.

The host is a stub whose ``run_comparison`` draws a grid of flat colours (one colour per
column, chosen so the change between epochs settles at a known epoch). The LoRA files are
real kohya-format files written by :func:`lora_trainer.networks.io.save_network`.
Tests named ``test_gradio_*`` build the real Blocks; when this interpreter has no Gradio they
run in each UI venv through ``test_gradio_tests_in_ui_pythons`` (as in test_ui_tab.py).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import threading
from pathlib import Path

import pytest
from ui_pythons import gradio_tests_test
import torch
from PIL import Image

from lora_trainer.compare.publish import split_safetensors
from lora_trainer.compare.result import ComparisonResult, latest_result
from lora_trainer.compare.xyz import (
    AXIS_NOTHING, AXIS_PROMPT_SR, SCRIPT_TITLE, XYZ_RUN_PARAMETERS, default_prompt, discover_family, from_csv,
)
from lora_trainer.networks.io import save_network
from lora_trainer.ui import render
from lora_trainer.ui.compare_logic import FORM_FIELDS, CompareForm, CompareLogic
from lora_trainer.ui.logic import TabLogic

REPO = Path(__file__).resolve().parent.parent
HAS_GRADIO = importlib.util.find_spec("gradio") is not None
TAGS = {"4_char": {"sks": 8, "1girl": 8, "red hair": 6, "hat (object)": 2, "smile": 5}}
# grey level of each column (no LoRA, epochs 1..4): changes 120, 50, 10, 5 -> settles after epoch 2
# (threshold 0.3 x 50, the largest change between epochs), so epoch 3 is suggested ("one after")
LEVELS = (0, 120, 170, 180, 185)
SUGGESTED_FILE = "char-000003"


# ----------------------------------------------------------------------------------- stubs


def _write_epoch(path: Path, epoch: int, *, session="s1", name="char"):
    gen = torch.Generator().manual_seed(epoch)
    tensors = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 32, generator=gen),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(32, 4, generator=gen),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(2.0),
    }
    meta = {"ss_session_id": session, "ss_output_name": name, "ss_epoch": str(epoch),
            "ss_tag_frequency": json.dumps(TAGS), "ss_resolution": "(64, 96)", "ss_base_model_version": "sd_v1",
            "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.title": name}
    save_network(path, tensors, meta)


@pytest.fixture
def lora_dir(tmp_path):
    """``char``: epochs 1-3 numbered and the final ``char`` (epoch 4) with user metadata;
    ``other``: one file; plus files that are not epochs."""
    folder = tmp_path / "Lora"
    folder.mkdir()
    for epoch in (1, 2, 3):
        _write_epoch(folder / f"char-{epoch:06d}.safetensors", epoch)
    _write_epoch(folder / "char.safetensors", 4)
    (folder / "char.json").write_text(json.dumps({"activation text": "sks", "preferred weight": 0.8}), "utf-8")
    _write_epoch(folder / "other.safetensors", 1, session="s2", name="other")
    _write_epoch(folder / "char-000002-interrupted.safetensors", 2)  # not an epoch
    (folder / "notes.txt").write_text("not a LoRA", "utf-8")
    return folder


class StubHost:
    """A host with ``run_comparison``: cells of flat grey (LEVELS per column, row-tinted), a grid
    with a legend margin on the left and on top, saved as a PNG like the WebUI saves grids."""

    name = "stub"

    def __init__(self, folder: Path, grid_dir: Path, *, gate: threading.Event | None = None, fail: Exception | None = None):
        self.folder = folder
        self.grid_dir = grid_dir
        self.gate = gate
        self.fail = fail
        self.calls = []
        self.refreshed = 0

    def lora_dir(self):
        return self.folder

    def refresh_loras(self):
        self.refreshed += 1

    def run_comparison(self, comparison, *, save_grid=True):
        self.calls.append(comparison)
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        if self.fail is not None:
            raise self.fail
        w, h = comparison.width, comparison.height
        cells = [Image.new("RGB", (w, h), (LEVELS[c.ix], LEVELS[c.ix], (LEVELS[c.ix] + 7 * c.iy) % 256))
                 for c in comparison.cells]
        left, top = 30, 20
        grid = Image.new("RGB", (left + comparison.columns * w, top + comparison.rows * h), (255, 255, 255))
        for c, image in zip(comparison.cells, cells):
            grid.paste(image, (left + c.ix * w, top + c.iy * h))
        self.grid_dir.mkdir(parents=True, exist_ok=True)
        path = self.grid_dir / f"xyz_grid-{len(self.calls):04d}.png"
        grid.save(path)
        return ComparisonResult(comparison, grid, cells, str(path), "infotext")


class Manager:
    """The job manager's status(): the running job, else the last one."""

    def __init__(self, *jobs):
        self._jobs = [dict(j) for j in jobs]

    def status(self, job_id=None):
        for job in self._jobs:
            if job["state"] == "running":
                return copy.deepcopy(job)
        return copy.deepcopy(self._jobs[-1]) if self._jobs else {}

    def jobs(self):
        return copy.deepcopy(self._jobs)


def _form(**values) -> list:
    form = CompareForm(family="char", prompt="sks, 1girl, red hair", negative_prompt="lowres", seed=42,
                       strength=0.8)
    for key, value in values.items():
        setattr(form, key, value)
    return [getattr(form, name) for name in FORM_FIELDS]


def _logic(lora_dir, tmp_path, manager=None, **host_options):
    host = StubHost(lora_dir, tmp_path / "grids", **host_options)
    return CompareLogic(manager or Manager(), host, log=lambda line: None), host


def _run(logic, **values) -> dict:
    message = logic.start(*_form(**values))
    assert message.startswith("Comparing **char**"), message
    assert logic.wait(30) in ("done", "failed", "interrupted")
    return logic.poll(None)


# ------------------------------------------------------------------------------- families


def test_families_in_the_lora_folder_and_the_default_prompt(lora_dir, tmp_path):
    logic, _ = _logic(lora_dir, tmp_path, Manager({"id": "j1", "name": "char", "state": "done", "files": []}))
    names, chosen = logic.family_choices()
    assert names == ["char", "other"] and chosen == "char"  # the last training's output_name
    info = logic.family_info("char")
    assert info["epochs"] == ["char-000001", "char-000002", "char-000003", "char"]
    assert info["epoch"] == "char"  # no comparison yet: the last epoch
    assert info["prompt"] == default_prompt(discover_family(lora_dir, "char"))
    assert info["prompt"].startswith("sks, 1girl, red hair, smile, hat \\(object\\)")  # trigger, then by frequency
    assert "64×96" in info["summary"] and "sks" in info["summary"]
    assert info["release"] == "char_v1"

    # no training named a family: the family written last
    os.utime(lora_dir / "other.safetensors", (2e9, 2e9))
    logic, _ = _logic(lora_dir, tmp_path, Manager({"id": "j1", "name": "gone", "state": "done", "files": []}))
    assert logic.family_choices() == (["char", "other"], "other")
    assert logic.family_choices("char") == (["char", "other"], "char")  # the user's choice is kept
    # while the next training runs, the one that finished last
    logic, _ = _logic(lora_dir, tmp_path, Manager(
        {"id": "j1", "name": "char", "state": "done", "finished_at": 5.0, "files": []},
        {"id": "j2", "name": "other", "state": "running", "files": []}))
    assert logic.family_choices() == (["char", "other"], "char")
    missing = logic.family_info("nope")
    assert not missing["ok"] and "no LoRA family 'nope'" in missing["summary"]


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_a_partial_download_does_not_break_the_tab(lora_dir, tmp_path):
    _write_epoch(lora_dir / "broken.safetensors", 1, name="broken")
    _cut(lora_dir / "broken.safetensors", 0.01)  # stopped inside the header
    (lora_dir / "page.safetensors").write_text("<html>404 Not Found</html>", "utf-8")
    _cut(lora_dir / "char-000002.safetensors")  # an epoch of the family stopped half-way
    logic, host = _logic(lora_dir, tmp_path, Manager({"id": "j1", "name": "char", "state": "done", "files": []}))
    assert logic.family_choices() == (["char", "other"], "char")
    assert len(logic.skipped) == 2 and all("re-download or delete it" in why for why in logic.skipped)
    info = logic.family_info("char")
    assert info["ok"] and info["epochs"] == ["char-000001", "char-000003", "char"]
    summary = info["summary"]
    for name in ("broken.safetensors", "page.safetensors", "char-000002.safetensors"):
        assert name in summary, summary
    assert "skipped: " in summary and "left out of the comparison" in summary
    # every event on a family whose files are all bad answers a message
    bad = logic.family_info("broken")
    assert not bad["ok"] and "broken.safetensors" in bad["summary"] and "re-download or delete it" in bad["summary"]
    message = logic.start(*_form(family="broken"))
    assert message.startswith("**Not started:**") and "re-download or delete it" in message
    text, message = logic.send_payload(*_form(family="page"))
    assert text == "" and message.startswith("**Not sent:**") and "page.safetensors" in message
    message = logic.publish("broken", "broken", "broken_v1", False)
    assert message.startswith("**Not published:**") and "broken.safetensors" in message
    assert host.calls == []
    # the family itself still compares, without the bad epoch
    out = _run(logic)
    assert out["state"] == "done" and out["epochs"] == ["char-000001", "char-000003", "char"]
    # the folder gone: a message, no exception
    empty = CompareLogic(Manager(), StubHost(tmp_path / "gone", tmp_path / "grids"))
    assert empty.family_choices() == ([], None)
    gone = empty.family_info("char")
    assert not gone["ok"] and f"{tmp_path / 'gone'} is not a folder" in gone["summary"]


def test_a_page_load_reads_no_unchanged_header_and_one_family_is_read_alone(lora_dir, tmp_path, monkeypatch):
    from lora_trainer.compare import xyz

    reads = []
    real = xyz.read_metadata
    monkeypatch.setattr(xyz, "read_metadata", lambda path: reads.append(Path(path).name) or real(path))
    logic, _ = _logic(lora_dir, tmp_path)
    # choosing a family reads that family's files, not the whole folder
    assert logic.family_info("char")["ok"]
    assert sorted(reads) == ["char-000001.safetensors", "char-000002.safetensors", "char-000003.safetensors",
                             "char.safetensors"]
    reads.clear()
    logic.family_choices()  # the first listing reads the rest once
    assert sorted(reads) == ["char-000002-interrupted.safetensors", "other.safetensors"]
    reads.clear()
    # a page load (the listing, then the chosen family's summary) and a click read nothing again
    names, chosen = logic.family_choices()
    logic.family_info(chosen)
    logic.build(CompareForm.from_values(_form()))
    assert reads == []


def test_the_comparison_has_a_no_lora_column_then_every_epoch(lora_dir, tmp_path):
    logic, _ = _logic(lora_dir, tmp_path)
    comparison = logic.build(CompareForm.from_values(_form()))
    assert comparison.columns == 5 and comparison.rows == 1 and len(comparison.cells) == 5
    first = comparison.cell(0)
    assert first.epoch is None and "<lora:" not in first.prompt and first.prompt.startswith("sks, 1girl, red hair")
    assert [c.epoch.name for c in comparison.cells[1:]] == ["char-000001", "char-000002", "char-000003", "char"]
    assert [c.prompt.split()[-1] for c in comparison.cells[1:]] == [
        "<lora:char-000001:0.8>", "<lora:char-000002:0.8>", "<lora:char-000003:0.8>", "<lora:char:0.8>"]
    assert (comparison.width, comparison.height) == (64, 96)  # the training resolution (ss_resolution)
    assert (comparison.seed, comparison.negative_prompt) == (42, "lowres")

    strengths = logic.build(CompareForm.from_values(_form(y_axis="Strengths", y_values="0.5, 1.0, 1.2")))
    assert strengths.rows == 3 and len(strengths.cells) == 15
    assert [strengths.cell(4, iy).prompt.split()[-1] for iy in range(3)] == [
        "<lora:char:0.5>", "<lora:char:1>", "<lora:char:1.2>"]
    seeds = logic.build(CompareForm.from_values(_form(y_axis="Seeds", y_values="")))
    assert seeds.y.values == ["42", "43", "44"]
    split = logic.build(CompareForm.from_values(_form(y_axis="Text encoder / UNet split", strength=1)))
    assert [split.cell(1, iy).prompt.split()[-1] for iy in range(3)] == [
        "<lora:char-000001:1.0:0>", "<lora:char-000001:0:1>", "<lora:char-000001:1>"]
    sized = logic.build(CompareForm.from_values(_form(width="128", height=" ", steps="30", cfg_scale="5.5",
                                                      sampler_name="DDIM")))
    assert (sized.width, sized.height, sized.steps, sized.cfg_scale, sized.sampler_name) == (128, 96, 30, 5.5, "DDIM")


@pytest.mark.parametrize("values, words", [
    ({"seed": "abc"}, "Seed: 'abc' is not a number"),
    ({"width": "100.5"}, "Width: '100.5' is not a whole number"),
    ({"y_axis": "Checkpoints", "y_values": ""}, "Y values: list the checkpoints"),
    ({"y_axis": "Strengths", "y_values": "0.5, lots"}, "Y values (strengths): 'lots' is not a number"),
    ({"family": "nope"}, "no LoRA family 'nope'"),
    ({"width": "inf"}, "Width: 'inf' is not a finite number"),
    ({"height": "-inf"}, "Height: '-inf' is not a finite number"),
    ({"seed": "nan"}, "Seed: 'nan' is not a finite number"),
    ({"seed": float("inf")}, "Seed: inf is not a finite number"),
    ({"steps": "1e999"}, "Steps: '1e999' is not a finite number"),
    ({"cfg_scale": "nan"}, "CFG scale: 'nan' is not a finite number"),
    ({"strength": "NaN"}, "Strength: 'NaN' is not a finite number"),
    ({"y_axis": "Strengths", "y_values": "0.5, inf"}, "Y values (strengths): 'inf' is not a finite number"),
    ({"y_axis": "Seeds", "y_values": "1, nan"}, "Y values (seeds): 'nan' is not a finite number"),
    ({"prompt": "<no_lora:char:0.8> <no_lora1:char:0.8>"}, None),  # builds: a third placeholder is free
])
def test_bad_boxes_are_named(lora_dir, tmp_path, values, words):
    logic, host = _logic(lora_dir, tmp_path)
    message = logic.start(*_form(**values))
    if words is None:
        assert message.startswith("Comparing"), message
        logic.wait(30)
        return
    assert message.startswith("**Not started:**") and words in message, message
    assert host.calls == []


# ------------------------------------------------------------------------------ running


def test_refused_while_a_training_runs_and_without_the_capability(lora_dir, tmp_path):
    running = Manager({"id": "j9", "name": "next", "state": "running", "files": []})
    logic, host = _logic(lora_dir, tmp_path, running)
    message = logic.start(*_form())
    assert "Not started" in message and "next" in message and "is running" in message and "j9" in message
    assert host.calls == [] and logic.status()["state"] == "idle"

    class NoRunner:
        name = "forge-without-xyz"

        def lora_dir(self):
            return lora_dir

    message = CompareLogic(Manager(), NoRunner()).start(*_form())
    assert "cannot draw comparison grids" in message and "forge-without-xyz" in message and "Send to txt2img" in message


def test_the_grid_the_suggestion_and_where_the_grid_is(lora_dir, tmp_path):
    gate = threading.Event()
    logic, host = _logic(lora_dir, tmp_path, gate=gate)
    assert logic.start(*_form()).startswith("Comparing **char**: 4 epochs and a no-LoRA column × 1 row (5 images)")
    running = logic.poll(None)
    assert running["state"] == "running" and "**Running**" in running["status"] and running["grid"] is None
    # one comparison at a time
    assert "still running" in logic.start(*_form())
    gate.set()
    assert logic.wait(30) == "done"
    out = logic.poll(running["version"])
    assert out["changed"] and len(host.calls) == 1
    grid_path = str(tmp_path / "grids" / "xyz_grid-0001.png")
    assert out["grid_path"] == grid_path and out["grid"] == grid_path and f"`{grid_path}`" in out["status"]
    assert "**Done**" in out["status"]
    html = out["suggestion"]
    assert 'data-verdict="settled"' in html and f'data-file="{SUGGESTED_FILE}"' in html and 'data-epoch="3"' in html
    assert "settles after epoch 2" in html and 'id="lora_trainer_change_chart"' in html
    assert 'data-points="4"' in html and html.count('data-chosen="true"') == 1
    assert out["epochs"] == ["char-000001", "char-000002", "char-000003", "char"] and out["epoch"] == SUGGESTED_FILE
    assert logic.family_info("char")["epoch"] == SUGGESTED_FILE  # Publish defaults to the suggestion
    assert latest_result(lora_dir, "char") is not None
    again = logic.poll(out["version"])
    assert not again["changed"] and "grid" not in again  # the page keeps the image it shows


def test_rows_other_than_seeds_get_no_suggestion(lora_dir, tmp_path):
    logic, _ = _logic(lora_dir, tmp_path)
    out = _run(logic, y_axis="Strengths", y_values="0.5, 1")
    assert 'data-verdict="none"' in out["suggestion"] and "pick by eye" in out["suggestion"]
    assert out["epoch"] == "char"
    out = _run(logic, y_axis="Seeds", y_values="1, 2")
    assert f'data-file="{SUGGESTED_FILE}"' in out["suggestion"]


def test_a_failing_comparison_is_one_line_of_markdown(lora_dir, tmp_path):
    lines = []
    host = StubHost(lora_dir, tmp_path / "grids", fail=RuntimeError("CUDA error: device-side assert"))
    logic = CompareLogic(Manager(), host, log=lines.append)
    out = _run(logic)
    assert out["state"] == "failed"
    assert out["status"] == "**The comparison of char failed:** RuntimeError: CUDA error: device-side assert"
    assert "Traceback" in lines[0]  # the traceback goes to the console only
    assert out["grid"] is None and out["suggestion"] == ""


# ------------------------------------------------------------------------------ publish


def test_publish_copies_the_epoch_with_the_preview_cut_from_the_grid(lora_dir, tmp_path):
    logic, host = _logic(lora_dir, tmp_path)
    _run(logic)
    source = lora_dir / f"{SUGGESTED_FILE}.safetensors"
    before = source.read_bytes()
    message = logic.publish("char", SUGGESTED_FILE, "char_release", False)
    target = lora_dir / "char_release.safetensors"
    assert message.startswith(f"Published **{SUGGESTED_FILE}** as **char_release**"), message
    for path in (target, lora_dir / "char_release.json", lora_dir / "char_release.preview.png"):
        assert f"`{path}`" in message and path.is_file()
    old_header, old_body = split_safetensors(before)
    new_header, new_body = split_safetensors(target.read_bytes())
    assert new_body == old_body  # the tensors byte for byte
    old_meta, new_meta = old_header.pop("__metadata__"), new_header.pop("__metadata__")
    assert new_header == old_header and new_meta == {**old_meta, "ss_output_name": "char_release"}
    assert list(new_meta) == list(old_meta)
    assert source.read_bytes() == before
    assert json.loads((lora_dir / "char_release.json").read_text("utf-8"))["activation text"] == "sks"
    with Image.open(lora_dir / "char_release.preview.png") as preview:  # epoch 3's column of the grid
        assert preview.size == (64, 96) and preview.convert("RGB").getcolors() == [(64 * 96, (LEVELS[3],) * 3)]
    assert host.refreshed == 1

    refused = logic.publish("char", SUGGESTED_FILE, "char_release", False)
    assert refused.startswith("**Not published:**") and "exists" in refused
    assert "Published" in logic.publish("char", "char-000001", "char_release", True)
    with Image.open(lora_dir / "char_release.preview.png") as preview:
        assert preview.convert("RGB").getpixel((0, 0)) == (LEVELS[1],) * 3
    assert "Not published" in logic.publish("char", "char-000009", "x", False)
    assert "Not published" in logic.publish("char", "char-000001", "a/b", False)


@pytest.mark.parametrize("values, row", [
    ({"y_axis": "Strengths", "y_values": "0.5, 0.8, 1.2"}, 1),  # the row at the comparison's strength (0.8)
    ({"y_axis": "Strengths", "y_values": "0.4, 1.0, 1.2", "strength": 0.9}, 1),  # not among them: the nearest
    ({"y_axis": "Text encoder / UNet split"}, 2),  # TE only, UNet only, both: the whole LoRA
    ({"y_axis": "Seeds", "y_values": "1, 2, 3"}, 0),
    ({}, 0),
])
def test_the_preview_is_the_row_that_shows_the_lora_as_used(lora_dir, tmp_path, values, row):
    from lora_trainer.compare.result import preview_row

    logic, _ = _logic(lora_dir, tmp_path)
    out = _run(logic, **values)
    assert out["state"] == "done"
    comparison = latest_result(lora_dir, "char").comparison
    assert preview_row(comparison) == row
    tag = comparison.cell(3, row).prompt.split()[-1]
    strength = values.get("strength", 0.8)
    if values.get("y_axis", "").startswith("Text encoder"):
        assert tag == f"<lora:{SUGGESTED_FILE}:{strength}>"  # both halves at the strength
    elif values.get("y_axis") == "Strengths":
        assert tag in (f"<lora:{SUGGESTED_FILE}:0.8>", f"<lora:{SUGGESTED_FILE}:1>")
    assert "Published" in logic.publish("char", SUGGESTED_FILE, "char_release", False)
    with Image.open(lora_dir / "char_release.preview.png") as preview:  # the stub tints each row's blue
        assert preview.convert("RGB").getpixel((0, 0)) == (LEVELS[3], LEVELS[3], (LEVELS[3] + 7 * row) % 256)


def test_publishing_over_a_file_of_the_family_is_refused(lora_dir, tmp_path):
    logic, host = _logic(lora_dir, tmp_path)
    _run(logic)
    before = {p.name: p.read_bytes() for p in lora_dir.iterdir()}
    for release in ("char", "char-000003", "char-000002-interrupted"):
        message = logic.publish("char", "char-000001", release, True)
        assert message.startswith("**Not published:**") and "choose another release name" in message, message
    assert {p.name: p.read_bytes() for p in lora_dir.iterdir()} == before and host.refreshed == 0


def test_publish_before_any_comparison_has_no_preview(lora_dir, tmp_path):
    folder = tmp_path / "fresh"
    folder.mkdir()
    _write_epoch(folder / "solo-000001.safetensors", 1, name="solo")
    logic = CompareLogic(Manager(), StubHost(folder, tmp_path / "grids"))
    message = logic.publish("solo", "solo-000001", "solo_v1", False)
    assert "Published" in message and "no preview: compare the epochs first" in message
    assert (folder / "solo_v1.safetensors").is_file() and not (folder / "solo_v1.preview.png").exists()


# ------------------------------------------------------------------------- send to txt2img


def _reference_axis_labels() -> list[str]:
    from test_compare_xyz import XYZ_SOURCE, _reference_axis_labels as labels

    if not XYZ_SOURCE.is_file():
        pytest.skip("no AUTOMATIC1111 source")
    return labels()


@pytest.mark.parametrize("y_axis, y_values, y_label", [
    ("No Y axis", "", AXIS_NOTHING),
    ("Strengths", "0.5, 0.8, 1.2", AXIS_PROMPT_SR),
    ("Checkpoints", "a.safetensors, sub/b.ckpt", "Checkpoint name"),
])
def test_the_payload_holds_the_script_arguments_values(lora_dir, tmp_path, y_axis, y_values, y_label):
    from lora_trainer.compare.xyz import axis_index

    logic, _ = _logic(lora_dir, tmp_path)
    values = _form(y_axis=y_axis, y_values=y_values, prompt='sks, "quoted", a,b')
    text, message = logic.send_payload(*values)
    assert "Sent **char** to txt2img" in message
    payload = json.loads(text)
    comparison = logic.build(CompareForm.from_values(values))
    labels = _reference_axis_labels()
    args = dict(zip(XYZ_RUN_PARAMETERS, comparison.script_args(lambda label: axis_index(labels, label))))
    x, y, z = payload["axes"]
    assert (x["axis"], y["axis"], z["axis"]) == ("x", "y", "z")
    assert x["values"] == args["x_values"] and y["values"] == args["y_values"] and z["values"] == args["z_values"]
    assert labels[args["x_type"]] == x["type"] == AXIS_PROMPT_SR
    assert labels[args["y_type"]] == y["type"] == y_label and labels[args["z_type"]] == z["type"] == AXIS_NOTHING
    assert from_csv(x["values"]) == comparison.x.values  # the script reads back the very tags
    assert payload["csv_mode"] is args["csv_mode"] is True
    assert (payload["prompt"], payload["negative_prompt"], payload["seed"]) == (comparison.prompt, "lowres", 42)
    assert payload["prompt"].endswith(comparison.x.values[0])  # the placeholder the S/R values replace
    assert payload["script"] == SCRIPT_TITLE
    assert {s["elem_id"]: s["value"] for s in payload["settings"]} == {"txt2img_width": 64, "txt2img_height": 96}


def test_the_payload_carries_overridden_settings_and_refuses_bad_input(lora_dir, tmp_path):
    logic, _ = _logic(lora_dir, tmp_path)
    payload = json.loads(logic.send_payload(*_form(steps="28", cfg_scale="6", sampler_name="DPM++ 2M"))[0])
    assert {s["elem_id"]: (s["kind"], s["value"]) for s in payload["settings"]} == {
        "txt2img_width": ("number", 64), "txt2img_height": ("number", 96), "txt2img_steps": ("number", 28),
        "txt2img_cfg_scale": ("number", 6.0), "txt2img_sampling": ("choice", "DPM++ 2M")}
    text, message = logic.send_payload(*_form(seed="x"))
    assert text == "" and message.startswith("**Not sent:**") and "Seed" in message


# ------------------------------------------------------------------------ training samples


def test_the_train_tab_polls_samples_and_the_compare_button(tmp_path):
    first, second = tmp_path / "s1.png", tmp_path / "s2.png"
    Image.new("RGB", (8, 8)).save(first)
    job = {"id": "j1", "name": "char", "state": "running", "files": [], "log": [], "samples": [
        {"path": str(first), "epoch": 1, "step": 8, "prompt": "sks, 1girl"},
        {"path": str(tmp_path / "missing.png"), "epoch": 1, "step": 8, "prompt": "gone"},
    ]}
    manager = Manager(job)
    logic = TabLogic(manager)
    out = logic.poll(None, None)
    assert out["samples"] == [(str(first), "epoch 1: sks, 1girl")] and out["compare_name"] == ""
    again = logic.poll(out["signature"], out["seen"])
    assert again["samples"] is None and again["compare_name"] is None  # unchanged: nothing re-sent
    Image.new("RGB", (8, 8)).save(second)
    manager._jobs[0]["samples"].append({"path": str(second), "epoch": 2, "step": 16, "prompt": "sks, smile"})
    manager._jobs[0].update(state="done", files=[str(tmp_path / "char.safetensors")])
    later = logic.poll(out["signature"], again["seen"])
    assert [caption for _, caption in later["samples"]] == ["epoch 1: sks, 1girl", "epoch 2: sks, smile"]
    assert later["compare_name"] == "char"
    assert TabLogic(Manager({"id": "j2", "name": "x", "state": "done", "files": []})).poll()["samples"] == []
    assert render.sample_caption({"step": 5, "prompt": "p"}) == "step 5: p"


# --------------------------------------------------------------------- the real Gradio Blocks


test_gradio_tests_in_ui_pythons = gradio_tests_test(__file__)


needs_gradio = pytest.mark.skipif(not HAS_GRADIO, reason="gradio is not installed here (see test_gradio_tests_in_ui_pythons)")


def _config(blocks) -> dict:
    return blocks.get_config_file() if hasattr(blocks, "get_config_file") else blocks.config


def _fn(blocks, name: str):
    fns = blocks.fns if isinstance(blocks.fns, list) else list(blocks.fns.values())
    found = [f for f in fns if getattr(f.fn, "__name__", "") == name]
    assert found, f"no event function {name}"
    return found[0]


@needs_gradio
def test_gradio_compare_tab_has_its_controls(lora_dir, tmp_path):
    from lora_trainer.ui.tab import build_tab

    manager = Manager({"id": "j1", "name": "char", "state": "done", "files": ["x"], "log": []})
    tab = build_tab(manager, StubHost(lora_dir, tmp_path / "grids"))
    config = _config(tab)
    by_id = {c.get("props", {}).get("elem_id"): c for c in config["components"]}
    for elem_id in ("lora_trainer_compare_family", "lora_trainer_compare_family_refresh", "lora_trainer_compare_prompt",
                    "lora_trainer_compare_negative_prompt", "lora_trainer_compare_seed", "lora_trainer_compare_strength",
                    "lora_trainer_compare_y_axis", "lora_trainer_compare_y_values", "lora_trainer_compare_steps",
                    "lora_trainer_compare_width", "lora_trainer_compare_height", "lora_trainer_compare_cfg_scale",
                    "lora_trainer_compare_sampler_name", "lora_trainer_compare_run", "lora_trainer_compare_send",
                    "lora_trainer_compare_payload", "lora_trainer_compare_status", "lora_trainer_compare_grid",
                    "lora_trainer_compare_suggestion", "lora_trainer_publish_epoch", "lora_trainer_publish_name",
                    "lora_trainer_publish_overwrite", "lora_trainer_publish", "lora_trainer_samples",
                    "lora_trainer_compare_epochs", "lora_trainer_tab_compare"):
        assert elem_id in by_id, elem_id
    family = by_id["lora_trainer_compare_family"]
    assert family["type"] == "dropdown" and family["props"]["value"] == "char"
    choices = [c[0] if isinstance(c, (list, tuple)) else c for c in family["props"]["choices"]]
    assert choices == ["char", "other"]
    assert by_id["lora_trainer_compare_prompt"]["props"]["value"].startswith("sks, 1girl")
    assert by_id["lora_trainer_samples"]["type"] == "gallery"
    assert by_id["lora_trainer_compare_grid"]["type"] == "image"
    # Send to txt2img runs the page's JavaScript with the payload the server computed
    js = [d for d in config["dependencies"] if (d.get("js") or "").strip() == "lora_trainer_send_xyz_to_txt2img"]
    assert len(js) == 1 and js[0]["inputs"] == [by_id["lora_trainer_compare_payload"]["id"]]


@needs_gradio
def test_gradio_one_poll_fills_train_and_compare_outputs(lora_dir, tmp_path):
    from lora_trainer.ui.tab import build_tab

    first = tmp_path / "sample.png"
    Image.new("RGB", (8, 8)).save(first)
    manager = Manager({"id": "j1", "name": "char", "state": "done", "files": [str(lora_dir / "char.safetensors")],
                       "log": [], "samples": [{"path": str(first), "epoch": 1, "step": 4, "prompt": "sks"}]})
    host = StubHost(lora_dir, tmp_path / "grids")
    tab = build_tab(manager, host)
    poll = _fn(tab, "poll")
    out = poll.fn(None, None, None)
    wired = [d for d in _config(tab)["dependencies"] if len(d["outputs"]) == len(out) and len(d["inputs"]) == 3]
    assert wired, "no event fills the poll's outputs"
    gallery, button = out[6], out[7]
    assert gallery["value"] == [(str(first), "epoch 1: sks")] and gallery["visible"] is True
    assert button["visible"] is True and button["value"] == "Compare epochs of char"
    # a comparison's result reaches the compare outputs of the same poll
    tab.lora_trainer_logic.compare.start(*_form())
    tab.lora_trainer_logic.compare.wait(30)
    out = poll.fn(None, None, None)
    status, grid, suggestion = out[9], out[10], out[11]
    assert "**Done**" in status and grid == str(tmp_path / "grids" / "xyz_grid-0001.png")
    assert f'data-file="{SUGGESTED_FILE}"' in suggestion
    # the Train tab's "Compare epochs" opens the Compare tab on that family
    opened = _fn(tab, "open_compare").fn()
    assert opened[0]["selected"] == "compare" and opened[1]["value"] == "char"


@needs_gradio
def test_gradio_a_partial_download_is_named_in_the_family_summary(lora_dir, tmp_path):
    from lora_trainer.ui.tab import build_tab

    _write_epoch(lora_dir / "broken.safetensors", 1, name="broken")
    _cut(lora_dir / "broken.safetensors", 0.01)
    manager = Manager({"id": "j1", "name": "char", "state": "done", "files": ["x"], "log": []})
    tab = build_tab(manager, StubHost(lora_dir, tmp_path / "grids"))  # raised while the tab was built
    by_id = {c.get("props", {}).get("elem_id"): c for c in _config(tab)["components"]}
    assert by_id["lora_trainer_compare_family"]["props"]["value"] == "char"
    summary = by_id["lora_trainer_compare_family_info"]["props"]["value"]
    assert "broken.safetensors" in summary and "re-download or delete it" in summary, summary
    # Refresh and page load list the folder again and show the note with the summary
    refresh = _fn(tab, "refresh_families")
    family, summary = refresh.fn("char")
    assert family["value"] == "char" and "broken.safetensors" in summary
    (lora_dir / "broken.safetensors").unlink()
    family, summary = refresh.fn("char")
    assert "broken" not in summary and summary.startswith("**char**")
    # only bad files: the "no LoRA" text names them
    for path in lora_dir.glob("*.safetensors"):
        _cut(path, 0.01)
    family, summary = refresh.fn("char")
    assert family["choices"] == [] and "No LoRA in" in summary and "char.safetensors" in summary
