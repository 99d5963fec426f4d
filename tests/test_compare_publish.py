"""compare/publish.py: the chosen epoch under its release name, tensors byte for byte."""
import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lora_trainer.compare.publish import PublishError, crop_cell, publish, split_safetensors, with_metadata
from lora_trainer.networks.io import save_network
from lora_trainer.networks.metadata import addnet_hash_safetensors


def _epoch_file(tmp_path, big=False):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "lora_unet_down_blocks_0_attn.lora_down.weight": torch.randn(4, 320, generator=gen).to(torch.bfloat16),
        "lora_unet_down_blocks_0_attn.lora_up.weight": torch.randn(320, 4, generator=gen).to(torch.bfloat16),
        "lora_unet_down_blocks_0_attn.alpha": torch.tensor(4.0),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 77, generator=gen),
    }
    if big:  # over 1 MiB: the legacy hash reads real bytes
        tensors["lora_unet_big.lora_down.weight"] = torch.randn(1024, 512, generator=gen)
    meta = {"ss_output_name": "char", "ss_epoch": "3", "ss_tag_frequency": json.dumps({"5_char": {"é, ü": 2}}),
            "modelspec.title": "char", "modelspec.architecture": "stable-diffusion-v1/lora", "ss_base_model_version": "sd_v1"}
    path = tmp_path / "char-000003.safetensors"
    save_network(path, tensors, meta)
    (tmp_path / "char-000003.json").write_text(json.dumps({"activation text": "sks", "preferred weight": 0.8}), "utf-8")
    return path, tensors


@pytest.mark.parametrize("big", [False, True])
def test_the_release_is_the_epoch_with_only_its_output_name_changed(tmp_path, big):
    source, tensors = _epoch_file(tmp_path, big)
    old = source.read_bytes()
    old_header, old_body = split_safetensors(old)
    preview = Image.new("RGB", (32, 32), (10, 200, 30))
    result = publish(source, "char_v1", preview=preview)
    assert result.path == tmp_path / "char_v1.safetensors"
    new = result.path.read_bytes()
    new_header, new_body = split_safetensors(new)
    assert new_body == old_body  # tensor data byte for byte
    assert len(new[:8 + int.from_bytes(new[:8], "little")]) % 8 == 0  # header padded as safetensors pads
    old_meta, new_meta = old_header.pop("__metadata__"), new_header.pop("__metadata__")
    assert new_header == old_header  # every tensor's dtype, shape and offsets
    assert new_meta == {**old_meta, "ss_output_name": "char_v1"}
    assert list(new_meta) == list(old_meta)  # same keys, same order
    # the WebUI's LoRA hash (sha256 of the data after the header) is the stored one, unchanged
    assert addnet_hash_safetensors(new) == addnet_hash_safetensors(old) == new_meta["sshs_model_hash"]
    assert new_meta["sshs_legacy_hash"] == old_meta["sshs_legacy_hash"]
    with safe_open(str(result.path), "pt") as f:  # safetensors itself reads it
        assert f.metadata()["ss_output_name"] == "char_v1"
        for key, value in tensors.items():
            assert torch.equal(f.get_tensor(key), value.contiguous()) and f.get_tensor(key).dtype == value.dtype
    assert source.read_bytes() == old  # the epoch file is untouched
    assert json.loads((tmp_path / "char_v1.json").read_text("utf-8"))["activation text"] == "sks"
    with Image.open(tmp_path / "char_v1.preview.png") as image:
        assert image.size == (32, 32) and image.getpixel((3, 3)) == (10, 200, 30)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_an_existing_release_is_kept_unless_asked(tmp_path):
    source, _ = _epoch_file(tmp_path)
    publish(source, "rel")
    before = (tmp_path / "rel.safetensors").read_bytes()
    with pytest.raises(PublishError, match="exists"):
        publish(source, "rel")
    assert (tmp_path / "rel.safetensors").read_bytes() == before
    publish(source, "rel", overwrite=True, trigger_word="new trigger")
    assert json.loads((tmp_path / "rel.json").read_text("utf-8"))["activation text"] == "new trigger"
    for bad in ("a/b", "", "x:y", "char-000003"):
        with pytest.raises(PublishError):
            publish(source, bad)


def _family_files(tmp_path):
    """``char-000001`` ... ``char-000003`` and the final ``char``, each with its own bytes."""
    source, tensors = _epoch_file(tmp_path)  # char-000003
    for stem in ("char-000001", "char-000002", "char", "char-000002-interrupted", "char-step00000050"):
        save_network(tmp_path / f"{stem}.safetensors", {k: v + 1 for k, v in tensors.items()},
                     {"ss_output_name": "char", "ss_epoch": stem})
    return source


@pytest.mark.parametrize("release", ["char", "char-000001", "char-000002", "CHAR", "Char-000001",
                                     "char-000002-interrupted", "char-step00000050", "char-000003", "char-000009"])
def test_a_file_of_the_same_training_is_never_the_release(tmp_path, release):
    source = _family_files(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(PublishError) as caught:
        publish(source, release, overwrite=True, preview=Image.new("RGB", (8, 8)))
    assert "choose another release name" in str(caught.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing replaced
    # into another folder too: the WebUI finds a LoRA by its name in every subfolder
    with pytest.raises(PublishError):
        publish(source, release, folder=tmp_path / "released", overwrite=True)
    assert not (tmp_path / "released").exists()


def test_names_that_only_look_alike_are_releases(tmp_path):
    source = _family_files(tmp_path)
    for release in ("char_v1", "char-v2", "char-final", "characters", "char-00001"):
        assert publish(source, release).path == tmp_path / f"{release}.safetensors"


@pytest.mark.parametrize("stray", ["rel.json", "rel.preview.png", "rel.safetensors"])
def test_every_target_is_checked_before_anything_is_written(tmp_path, stray):
    source, _ = _epoch_file(tmp_path)
    (tmp_path / stray).write_bytes(b"the user's own file")
    targets = [tmp_path / n for n in ("rel.safetensors", "rel.json", "rel.preview.png")]
    with pytest.raises(PublishError, match=f"exists already .*[(]{stray}[)]; choose another release name or overwrite"):
        publish(source, "rel", preview=Image.new("RGB", (8, 8)))
    assert [p.name for p in targets if p.exists()] == [stray]  # the others were not written
    assert (tmp_path / stray).read_bytes() == b"the user's own file"
    # overwrite replaces all three
    result = publish(source, "rel", preview=Image.new("RGB", (8, 8), (1, 2, 3)), overwrite=True)
    assert all(p.is_file() for p in targets) and result.removed == []
    assert split_safetensors(targets[0].read_bytes())[0]["__metadata__"]["ss_output_name"] == "rel"
    assert json.loads(targets[1].read_text("utf-8"))["activation text"] == "sks"
    with Image.open(targets[2]) as image:
        assert image.getpixel((0, 0)) == (1, 2, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overwriting_without_a_preview_removes_the_replaced_releases_preview(tmp_path):
    source, _ = _epoch_file(tmp_path)
    publish(source, "rel", preview=Image.new("RGB", (8, 8)))
    result = publish(source, "rel", overwrite=True)  # no comparison this time: no preview
    assert result.preview_path is None and result.removed == [tmp_path / "rel.preview.png"]
    assert not (tmp_path / "rel.preview.png").exists()  # it showed the epoch that was replaced


def test_a_bad_source_writes_nothing(tmp_path):
    source, _ = _epoch_file(tmp_path)
    data = source.read_bytes()
    source.write_bytes(data[:9] + b"\xff" + data[10:])  # a header that does not parse (not UTF-8)
    with pytest.raises(PublishError, match="header does not parse"):
        publish(source, "rel")
    source.write_bytes(data[:-10])  # a partial download: the header whole, the tensors cut short
    with pytest.raises(PublishError, match="cut short"):
        publish(source, "rel")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["char-000003.json", "char-000003.safetensors"]


def test_without_user_metadata_one_is_made(tmp_path):
    source, _ = _epoch_file(tmp_path)
    (tmp_path / "char-000003.json").unlink()
    out = tmp_path / "release"
    result = publish(source, "rel", folder=out, trigger_word="sks")
    user = json.loads(result.user_metadata_path.read_text("utf-8"))
    assert user["activation text"] == "sks" and user["sd version"] == "SD1" and user["preferred weight"] == 0.8
    assert result.path.parent == out


def test_metadata_edit_keeps_unicode_and_other_keys():
    import safetensors.torch

    data = safetensors.torch.save({"a": torch.arange(3)}, {"x": "ü", "ss_output_name": "old"})
    new = with_metadata(data, {"ss_output_name": "néw"})
    assert safetensors.torch.load(new)["a"].tolist() == [0, 1, 2]
    header, _ = split_safetensors(new)
    assert header["__metadata__"] == {"x": "ü", "ss_output_name": "néw"}


def test_crop_cell_finds_a_column_in_an_annotated_grid():
    columns, rows, w, h, pad_left, pad_top = 3, 2, 16, 12, 30, 20
    grid = Image.new("RGB", (pad_left + columns * w, pad_top + rows * h), (255, 255, 255))
    for iy in range(rows):
        for ix in range(columns):
            grid.paste(Image.new("RGB", (w, h), (ix * 80, iy * 100, 7)), (pad_left + ix * w, pad_top + iy * h))
    cell = crop_cell(grid, columns, rows, 2, 1, cell_size=(w, h))
    assert cell.size == (w, h) and cell.getcolors() == [(w * h, (160, 100, 7))]
    bare = Image.new("RGB", (columns * w, rows * h))
    bare.paste(Image.new("RGB", (w, h), (1, 2, 3)), (w, 0))
    assert crop_cell(bare, columns, rows, 1).getcolors() == [(w * h, (1, 2, 3))]
    with pytest.raises(PublishError):
        crop_cell(grid, columns, rows, 3, 0, cell_size=(w, h))
