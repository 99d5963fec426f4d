"""compare/xyz.py: LoRA families, the X/Y/Z plot's prompt, axes and run() arguments."""
import ast
import json
import os
import random
from pathlib import Path

import pytest
import torch

from lora_trainer.compare import xyz
from lora_trainer.compare.xyz import (
    AXIS_CHECKPOINT, AXIS_NOTHING, AXIS_PROMPT_SR, AXIS_SEED, XYZ_RUN_PARAMETERS, ComparisonError, EpochFile,
    LoraFamily, build_comparison, discover_family, find_families, from_csv, to_csv,
)
from lora_trainer.networks.io import save_network

A1111_REF = Path(os.environ.get("A1111_REF", "/work/ref/a1111"))
XYZ_SOURCE = A1111_REF / "scripts" / "xyz_grid.py"
needs_ref = pytest.mark.skipif(not XYZ_SOURCE.is_file(), reason=f"no AUTOMATIC1111 source at {A1111_REF}")

TAG_FREQ = {"10_sks": {"sks": 10, "1girl": 9, "red hair": 7, "hat (object)": 3, "smile": 7},
            "1_reg": {"1girl": 100}, "2_more": {"smile": 2, "outdoors": 1}}


def _write_lora(path: Path, session="1", epoch=None, extra=None):
    meta = {"ss_session_id": session, "ss_output_name": "x", "ss_tag_frequency": json.dumps(TAG_FREQ),
            "ss_reg_dataset_dirs": json.dumps({"1_reg": {"n_repeats": 1, "img_count": 1}})}
    if epoch is not None:
        meta["ss_epoch"] = str(epoch)
    meta.update(extra or {})
    save_network(path, {"lora_unet_a.lora_down.weight": torch.ones(2, 3)}, meta)


def _family(name="char", count=3):
    epochs = [EpochFile(f"{name}-{i:06d}", Path(f"/x/{name}-{i:06d}.safetensors"), i) for i in range(1, count)]
    epochs.append(EpochFile(name, Path(f"/x/{name}.safetensors"), count, final=True))
    meta = {"ss_tag_frequency": json.dumps(TAG_FREQ), "ss_reg_dataset_dirs": json.dumps({"1_reg": {}})}
    return LoraFamily(name, Path("/x"), epochs, meta, {"activation text": "sks"})


# ------------------------------------------------------------------------------- reference


def _reference_run_parameters() -> list[str]:
    tree = ast.parse(XYZ_SOURCE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Script":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "run":
                    return [a.arg for a in item.args.args]
    raise AssertionError("no Script.run in the reference xyz_grid.py")


def _reference_csv_reader():
    """The reference script's own text-field reader, taken from its source (test only)."""
    import csv
    from io import StringIO
    from itertools import chain

    tree = ast.parse(XYZ_SOURCE.read_text(encoding="utf-8"))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "csv_string_to_list_strip")
    namespace = {"csv": csv, "StringIO": StringIO, "chain": chain}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(XYZ_SOURCE), "exec"), namespace)
    return namespace["csv_string_to_list_strip"]


def _reference_axis_labels() -> list[str]:
    """txt2img's axis labels in the reference's order (what current_axis_options holds on txt2img)."""
    tree = ast.parse(XYZ_SOURCE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "axis_options":
            labels = []
            for call in node.value.elts:
                kind = call.func.id
                if kind in ("AxisOption", "AxisOptionTxt2Img"):
                    labels.append(call.args[0].value)
            return labels
    raise AssertionError("no axis_options in the reference")


@needs_ref
def test_run_parameters_are_the_reference_order():
    params = _reference_run_parameters()
    assert params[:2] == ["self", "p"]
    assert tuple(params[2:]) == XYZ_RUN_PARAMETERS


@needs_ref
def test_script_args_follow_the_reference_order_and_labels():
    labels = _reference_axis_labels()
    comparison = build_comparison(_family(), y="seed", seeds=[1, 2, 3])
    args = comparison.script_args(lambda label: xyz.axis_index(labels, label))
    named = dict(zip(_reference_run_parameters()[2:], args))
    assert labels[named["x_type"]] == AXIS_PROMPT_SR
    assert labels[named["y_type"]] == AXIS_SEED
    assert labels[named["z_type"]] == AXIS_NOTHING
    assert named["csv_mode"] is True and named["include_lone_images"] is True and named["no_fixed_seeds"] is False
    assert named["margin_size"] == 0 and named["include_sub_grids"] is False
    reader = _reference_csv_reader()
    assert reader(named["x_values"]) == comparison.x.values
    assert reader(named["y_values"]) == ["1", "2", "3"]
    # a live script with another signature is refused, not guessed
    with pytest.raises(ComparisonError):
        comparison.script_args(lambda label: 0, parameters=XYZ_RUN_PARAMETERS[:-1] + ("new_flag",))
    # the checkpoint axis is there too
    assert labels[xyz.axis_index(labels, AXIS_CHECKPOINT)] == AXIS_CHECKPOINT
    with pytest.raises(ComparisonError, match="no 'Lora weight' axis"):
        xyz.axis_index(labels, "Lora weight")


@needs_ref
def test_values_with_commas_and_quotes_survive_the_scripts_csv_reading():
    reader = _reference_csv_reader()
    values = ['<lora:a, b "c":0.8>', "<lora:x:0.8>", "plain", 'q"uote', "o,ne"]
    assert reader(to_csv(values)) == values
    assert from_csv(to_csv(values)) == values


# --------------------------------------------------------------------------------- family


def test_discover_family_in_epoch_order_with_the_final_file_last(tmp_path):
    for i in (2, 1, 10):
        _write_lora(tmp_path / f"char-{i:06d}.safetensors", epoch=i)
    _write_lora(tmp_path / "char.safetensors", epoch=11)
    (tmp_path / "char.json").write_text(json.dumps({"activation text": "sks"}), encoding="utf-8")
    _write_lora(tmp_path / "char-step00000050.safetensors")  # step save: not an epoch
    _write_lora(tmp_path / "char-000003-interrupted.safetensors")  # not an epoch either
    _write_lora(tmp_path / "char_v2-000001.safetensors")  # another family whose name starts the same
    _write_lora(tmp_path / "ch-000001.safetensors")  # a family whose name is a prefix of this one
    family = discover_family(tmp_path, "char")
    assert [e.name for e in family.epochs] == ["char-000001", "char-000002", "char-000010", "char"]
    assert [e.epoch for e in family.epochs] == [1, 2, 10, 11] and family.epochs[-1].final
    assert family.trigger_word == "sks" and family.warnings == []
    assert set(find_families(tmp_path)) >= {"char", "char_v2", "ch"}
    assert [e.name for e in discover_family(tmp_path, "ch").epochs] == ["ch-000001"]


def test_files_from_another_run_are_named(tmp_path):
    _write_lora(tmp_path / "c-000001.safetensors", session="old")
    _write_lora(tmp_path / "c.safetensors", session="new")
    family = discover_family(tmp_path, "c")
    assert len(family.warnings) == 1 and "c-000001.safetensors" in family.warnings[0]


def test_final_without_ss_epoch_comes_after_the_last_numbered(tmp_path):
    _write_lora(tmp_path / "c-000004.safetensors")
    _write_lora(tmp_path / "c.safetensors")
    assert [e.epoch for e in discover_family(tmp_path, "c").epochs] == [4, 5]


def test_missing_family_and_bad_names_are_refused(tmp_path):
    with pytest.raises(ComparisonError):
        discover_family(tmp_path, "nothing")
    with pytest.raises(ComparisonError, match="cannot carry"):
        build_comparison(_family("a:b"))


def _bad_files(folder: Path) -> dict[str, bytes]:
    """What a LoRA folder holds after interrupted downloads and misnamed files, by file name."""
    _write_lora(folder / "whole.safetensors")
    data = (folder / "whole.safetensors").read_bytes()
    (folder / "whole.safetensors").unlink()
    size = int.from_bytes(data[:8], "little")
    return {
        "cut_in_header.safetensors": data[:8 + size // 2],  # the download stopped inside the JSON header
        "cut_in_data.safetensors": data[:8 + size + 4],  # whole header, tensors cut short
        "page.safetensors": b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>" * 4,  # a login page
        "tiny.safetensors": b"\x01\x02",
        "latin1.safetensors": (12).to_bytes(8, "little") + '{"é": "ü"}  '.encode("latin-1"),
        "array.safetensors": (8).to_bytes(8, "little") + b"[1, 2]  ",
        "empty.safetensors": b"",
    }


def test_a_file_that_is_not_a_whole_safetensors_is_refused_by_name(tmp_path):
    for name, data in _bad_files(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ComparisonError) as caught:
            xyz.read_metadata(path)
        message = str(caught.value)
        assert str(path) in message and "re-download or delete it" in message, message
    _write_lora(tmp_path / "good.safetensors", extra={"k": "v"})
    assert xyz.read_metadata(tmp_path / "good.safetensors")["k"] == "v"


def test_a_bad_file_is_skipped_and_named_not_raised(tmp_path):
    for i in (1, 2, 3):
        _write_lora(tmp_path / f"char-{i:06d}.safetensors", epoch=i)
    _write_lora(tmp_path / "char.safetensors", epoch=4)
    for name, data in _bad_files(tmp_path).items():
        (tmp_path / name).write_bytes(data)
    # an epoch of a family cut short: the family stays, without it, and says why
    whole = (tmp_path / "char-000002.safetensors").read_bytes()
    (tmp_path / "char-000002.safetensors").write_bytes(whole[:len(whole) // 2])
    skipped: list[str] = []
    found = find_families(tmp_path, skipped)
    assert set(found) == {"char"}
    assert [e.name for e in found["char"].epochs] == ["char-000001", "char-000003", "char"]
    assert len(found["char"].warnings) == 1 and "char-000002.safetensors" in found["char"].warnings[0]
    assert "re-download or delete it" in found["char"].warnings[0]
    assert sorted(Path(line.split(" is not a readable")[0]).name for line in skipped) == sorted(_bad_files(tmp_path))
    assert all("re-download or delete it" in line for line in skipped)
    assert find_families(tmp_path) == found  # without a list to fill, still no exception
    # the final file cut short: the newest whole epoch speaks for the family
    (tmp_path / "char.safetensors").write_bytes(b"\x00" * 7)
    family = discover_family(tmp_path, "char")
    assert [e.name for e in family.epochs] == ["char-000001", "char-000003"] and family.metadata["ss_epoch"] == "3"
    # a family whose every file is bad is refused, naming them
    with pytest.raises(ComparisonError, match="page.safetensors .*re-download or delete it"):
        discover_family(tmp_path, "page")


def test_unchanged_headers_are_not_read_again(tmp_path, monkeypatch):
    for i in (1, 2):
        _write_lora(tmp_path / f"char-{i:06d}.safetensors", epoch=i)
    _write_lora(tmp_path / "char.safetensors", epoch=3)
    _write_lora(tmp_path / "other.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 3)
    reads = []
    real = xyz.read_metadata
    monkeypatch.setattr(xyz, "read_metadata", lambda path: reads.append(Path(path).name) or real(path))
    first = find_families(tmp_path, [])
    assert sorted(reads) == ["bad.safetensors", "char-000001.safetensors", "char-000002.safetensors",
                             "char.safetensors", "other.safetensors"]
    reads.clear()
    skipped: list[str] = []
    assert find_families(tmp_path, skipped) == first and reads == []  # nothing read again, errors included
    assert len(skipped) == 1 and "bad.safetensors" in skipped[0]
    assert discover_family(tmp_path, "char") == first["char"] and reads == []
    first["char"].metadata["ss_epoch"] = "changed by a caller"  # a caller's copy, not the cache
    assert discover_family(tmp_path, "char").metadata["ss_epoch"] == "3"
    # a file rewritten (other mtime, size or inode) is read again, and only that one
    _write_lora(tmp_path / "char-000002.safetensors", epoch=2, extra={"note": "retrained"})
    os.utime(tmp_path / "char-000002.safetensors", ns=(1, 1))
    assert [e.name for e in discover_family(tmp_path, "char").epochs] == ["char-000001", "char-000002", "char"]
    assert reads == ["char-000002.safetensors"]


# --------------------------------------------------------------------------------- prompt


def test_default_prompt_is_the_trigger_then_the_most_frequent_training_tags():
    family = _family()
    # reg folder left out ("1girl" counts 9, not 109), sks (the trigger) not repeated, brackets escaped
    assert xyz.default_prompt(family, 4) == r"sks, 1girl, smile, red hair, hat \(object\)"  # 9, 9 (first seen first), 7, 3
    assert xyz.tag_counts(family.metadata)[0] == ("sks", 10)


def test_the_x_axis_is_no_lora_then_every_epoch_in_order():
    c = build_comparison(_family(), seed=77, negative_prompt="bad")
    assert c.x.label == AXIS_PROMPT_SR and c.y.label == AXIS_NOTHING
    assert c.x.values == ["<no_lora:char:0.8>", "<lora:char-000001:0.8>", "<lora:char-000002:0.8>", "<lora:char:0.8>"]
    assert c.x.titles[0] == "no LoRA" and c.prompt.endswith(" <no_lora:char:0.8>")
    assert c.prompt.startswith("sks, 1girl, smile") and c.seed == 77 and c.negative_prompt == "bad"
    assert [cell.prompt.rsplit(" ", 1)[1] for cell in c.cells] == c.x.values
    assert c.cells[0].epoch is None and c.cells[-1].epoch.final
    assert c.column_of(2) == 2 and c.column_of("char") == 3


def test_a_grid_has_epochs_times_rows_cells_in_the_scripts_order():
    family = _family(count=4)
    for kind, rows in (("strength", 4), ("seed", 3), ("te_unet", 3), ("checkpoint", 2), (None, 1)):
        c = build_comparison(family, y=kind, checkpoints=["a.safetensors", "b, c.ckpt"])
        assert c.columns == 5 and c.rows == rows and len(c.cells) == 5 * rows
        for cell in c.cells:
            assert cell.index == cell.ix + cell.iy * c.columns and c.cell(cell.ix, cell.iy) is cell
    c = build_comparison(family, y="strength")
    assert c.y.titles == ["strength 0.5", "strength 0.8", "strength 1", "strength 1.2"]
    assert c.cell(2, 3).prompt.endswith("<lora:char-000002:1.2>")
    assert c.cell(0, 3).prompt.endswith("<no_lora:char:1.2>")  # still an unknown (stripped) tag
    c = build_comparison(family, y="te_unet")
    assert [c.cell(1, r).prompt.rsplit(" ", 1)[1] for r in range(3)] == [
        "<lora:char-000001:0.8:0>", "<lora:char-000001:0:0.8>", "<lora:char-000001:0.8>"]
    c = build_comparison(family, y="checkpoint", checkpoints=["a.safetensors", "b, c.ckpt"])
    assert c.y.label == AXIS_CHECKPOINT and from_csv(c.y.text) == ["a.safetensors", "b, c.ckpt"]


def test_user_text_that_would_collide_gets_other_spellings():
    family = _family()
    prompt = "sks <no_lora:char:0.5> <lora:style:0.5>, (red:0.5)"
    c = build_comparison(family, prompt=prompt, y="strength")
    assert c.y.values[0] == ":0.50>"  # ":0.5>" is in the user's text
    assert c.x.values[0] == "<no_lora:char:0.50>"
    for cell in c.cells:
        assert cell.prompt.startswith(prompt + " ")
    prompt = "sks <no_lora:char:0.8>"  # the placeholder itself: another one is used
    c = build_comparison(family, prompt=prompt)
    assert c.x.values[0] == "<no_lora1:char:0.8>" and c.cells[0].prompt == prompt + " <no_lora1:char:0.8>"
    assert c.cells[1].prompt == prompt + " <lora:char-000001:0.8>"


# ------------------------------------------------------------------------ property: no collision


def _random_name(rng: random.Random) -> str:
    alphabet = "abcXYZ_-. ,'\"()[]0123456789é漢"
    name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))).strip() or "n"
    return name


def _expected(user: str, tag: str) -> str:
    return f"{user} {tag}" if user else tag


def test_prompt_sr_never_collides_over_random_names_and_prompts():
    rng = random.Random(1234)
    checked = refused = 0
    for _ in range(600):
        name = _random_name(rng)
        if rng.random() < 0.3:  # names that are prefixes of each other: name-000001 also holds name, name-0000...
            name = rng.choice(["a", "a-1", "a-000001", "0.8", "8", "lora", "no_lora", "0"])
        count = rng.randint(1, 4)
        epochs = [EpochFile(f"{name}-{i:06d}", Path("x"), i) for i in range(1, count)]
        epochs.append(EpochFile(name, Path("x"), count, final=True))
        family = LoraFamily(name, Path("."), epochs, {}, {"activation text": rng.choice(["", name, "trg"])})
        # user text drawn from pieces that look like our tags, names and weights
        pieces = [name, f"<lora:{name}:0.8>", f"<lora:{name}-000001:0.5>", "0.8", ":0.8>", ":0.5>", "<no_lora:",
                  f"<no_lora:{name}:0.8>", f"<no_lora:{name}:0.5>", "smile", "(red:1.2)", ",", " ", ">", "<"]
        user = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))).strip()
        negative = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 3)))
        kind = rng.choice([None, "strength", "te_unet", "seed"])
        strengths = rng.sample([0.5, 0.8, 1.0, 1.2, 0.25], k=rng.randint(1, 4))
        strength = rng.choice([0.8, 0.5, 1.0])
        try:
            c = build_comparison(family, prompt=user, negative_prompt=negative, y=kind, strengths=strengths,
                                 strength=strength)
        except ComparisonError:
            refused += 1
            continue
        checked += 1
        # replay the script ourselves, independently of xyz._replay
        for cell in c.cells:
            p, n = c.prompt, c.negative_prompt
            assert c.x.values[0] in p
            p, n = p.replace(c.x.values[0], c.x.values[cell.ix]), n.replace(c.x.values[0], c.x.values[cell.ix])
            if kind in ("strength", "te_unet"):
                assert c.y.values[0] in p
                p, n = p.replace(c.y.values[0], c.y.values[cell.iy]), n.replace(c.y.values[0], c.y.values[cell.iy])
            assert n == negative
            weight = {None: xyz.format_weight(strength), "seed": xyz.format_weight(strength)}.get(kind)
            if kind == "strength":
                weight = xyz.format_weight(strengths[cell.iy])
            elif kind == "te_unet":
                w = xyz.format_weight(strength)
                weight = [f"{w}:0", f"0:{w}", w][cell.iy]
            if kind in ("strength", "te_unet") and cell.iy == 0:  # the searched value: maybe respelt (0.50)
                spelt = c.y.values[0][1:-1]
                assert [float(v) for v in spelt.split(":")] == [float(v) for v in weight.split(":")]
                weight = spelt
            if cell.epoch is None:
                assert p.startswith(_expected(user, "<no_lora"))
                tag = p[len(user) + 1:] if user else p
                assert tag == f"{tag.split(':', 1)[0]}:{name}:{weight}>", (tag, weight)
            else:
                assert p == _expected(user, f"<lora:{cell.epoch.name}:{weight}>"), (p, weight)
            # every tag value reads back from the script's CSV text
        assert from_csv(c.x.text) == c.x.values
    # names never make it refuse: only user text that holds our exact tags could (and then rarely)
    assert checked > 500, (checked, refused)


def test_plain_prompts_are_never_refused():
    rng = random.Random(7)
    for _ in range(300):
        name = _random_name(rng)
        family = _family(name, count=rng.randint(1, 5))
        for kind in (None, "strength", "te_unet", "seed"):
            build_comparison(family, prompt="sks, 1girl, smile", y=kind)
