"""LoRA files: round trip, atomic writes, kohya's hashes and file names."""
import hashlib
import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file

from lora_trainer.networks import io as lora_io
from lora_trainer.networks.io import (
    epoch_file_name,
    last_file_name,
    load_network,
    prune_old_epochs,
    prune_old_steps,
    save_network,
    step_file_name,
)
from lora_trainer.networks.metadata import add_hashes


def sample_tensors(big: bool = False):
    gen = torch.Generator().manual_seed(0)
    n = 150_000 if big else 8  # big: past the 1 MiB the legacy hash reads
    return {
        "lora_unet_a.lora_down.weight": torch.randn(4, n, generator=gen),
        "lora_unet_a.lora_up.weight": torch.randn(n, 4, generator=gen),
        "lora_unet_a.alpha": torch.tensor(2.0),
        "lora_te_b.lora_down.weight": torch.randn(4, 3, 3, 3, generator=gen),
        "lora_te_b.lora_up.weight": torch.randn(5, 4, 1, 1, generator=gen),
        "lora_te_b.alpha": torch.tensor(4.0),
    }


def read_header(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data, n


def test_round_trip_with_precision(tmp_path):
    tensors = sample_tensors()
    meta = {"ss_network_dim": "4", "ss_network_alpha": "2.0", "modelspec.title": "x"}
    path = tmp_path / "out.safetensors"
    written = save_network(path, tensors, meta, dtype=torch.float16)
    got, got_meta = load_network(path)
    assert got.keys() == tensors.keys()
    for k, v in tensors.items():
        assert got[k].dtype == torch.float16
        assert torch.equal(got[k], v.half())
    assert got_meta == written
    assert {k: got_meta[k] for k in meta} == meta
    assert {"sshs_model_hash", "sshs_legacy_hash"} <= got_meta.keys()
    # no stray temp files next to it
    assert os.listdir(tmp_path) == ["out.safetensors"]
    # the standard reader agrees
    assert load_file(path).keys() == tensors.keys()


def test_metadata_must_be_strings(tmp_path):
    with pytest.raises(TypeError):
        save_network(tmp_path / "x.safetensors", sample_tensors(), {"ss_network_dim": 4})


def test_no_metadata_file_loads_with_empty_dict(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_network(path, sample_tensors(), None, hashes=False)
    _, meta = load_network(path)
    assert meta == {}


@pytest.mark.parametrize("big", [False, True])
def test_hashes_are_kohyas(tmp_path, big):
    tensors = sample_tensors(big)
    meta = {"ss_output_name": "x", "ss_seed": "1", "modelspec.title": "a long title " * 50}
    path = tmp_path / "h.safetensors"
    written = save_network(path, tensors, meta, dtype=torch.bfloat16)

    header, data, n = read_header(path)
    # sshs_model_hash: sha256 of everything after the header, i.e. of the tensor bytes
    # alone, so it can be checked on the file itself
    assert written["sshs_model_hash"] == hashlib.sha256(data[8 + n :]).hexdigest()
    # sshs_legacy_hash: sha256 of the 64 KiB at 1 MiB of the file as serialized with
    # the ss_ keys only (kohya leaves other metadata out so editing it keeps the hash)
    from safetensors.torch import save

    cast = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    ss_only = save(cast, {k: v for k, v in meta.items() if k.startswith("ss_")})
    assert written["sshs_legacy_hash"] == hashlib.sha256(ss_only[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    if big:
        assert len(data) > 0x110000
        assert written["sshs_legacy_hash"] != hashlib.sha256(b"").hexdigest()[:8]
    # editing non-ss metadata does not change them
    again = add_hashes(cast, {**meta, "modelspec.title": "other"})
    assert again["sshs_model_hash"] == written["sshs_model_hash"]
    assert again["sshs_legacy_hash"] == written["sshs_legacy_hash"]
    assert header["__metadata__"]["sshs_model_hash"] == written["sshs_model_hash"]


def test_failed_write_leaves_destination_untouched(tmp_path, monkeypatch):
    path = tmp_path / "keep.safetensors"
    save_network(path, sample_tensors(), {"ss_epoch": "1"})
    before = path.read_bytes()

    def boom(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(lora_io.os, "fsync", boom)
    with pytest.raises(OSError, match="disk gone"):
        save_network(path, {k: v * 2 for k, v in sample_tensors().items()}, {"ss_epoch": "2"})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.safetensors"]

    # and a failure before anything exists leaves nothing at all
    with pytest.raises(OSError):
        save_network(tmp_path / "new.safetensors", sample_tensors(), {})
    assert os.listdir(tmp_path) == ["keep.safetensors"]


def test_interrupted_write_never_exposes_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "p.safetensors"
    real_replace = os.replace
    seen = []

    def spy(src, dst):
        # at the moment of the rename the temp file is complete and hidden
        seen.append(os.path.basename(src))
        assert not os.path.exists(dst)
        assert os.path.getsize(src) > 0
        real_replace(src, dst)

    monkeypatch.setattr(lora_io.os, "replace", spy)
    save_network(path, sample_tensors(), {})
    assert seen and seen[0].startswith(".p.safetensors.") and seen[0].endswith(".tmp")
    assert load_network(path)[0].keys() == sample_tensors().keys()


def test_kohya_file_names():
    assert epoch_file_name("my_lora", 4, ".safetensors") == "my_lora-000004.safetensors"
    assert epoch_file_name("my_lora", 12, "safetensors") == "my_lora-000012.safetensors"
    assert epoch_file_name(None, 1) == "epoch-000001.safetensors"
    assert step_file_name("my_lora", 500) == "my_lora-step00000500.safetensors"
    assert step_file_name(None, 5) == "at-step00000005.safetensors"
    assert last_file_name("my_lora") == "my_lora.safetensors"
    assert last_file_name(None) == "last.safetensors"


def test_prune_old_epochs(tmp_path):
    # save every 2 epochs, keep the last 2: saving epoch 6 removes epoch 2
    for e in (2, 4, 6):
        (tmp_path / epoch_file_name("n", e)).write_bytes(b"x")
    assert prune_old_epochs(tmp_path, "n", 6, 2, 2) == str(tmp_path / epoch_file_name("n", 2))
    assert sorted(os.listdir(tmp_path)) == ["n-000004.safetensors", "n-000006.safetensors"]
    assert prune_old_epochs(tmp_path, "n", 2, 2, 2) is None  # nothing falls out yet
    assert prune_old_epochs(tmp_path, "n", 6, 2, None) is None  # keep everything
    assert prune_old_epochs(tmp_path, "n", 6, 2, 2) is None  # already gone


def test_prune_old_steps(tmp_path):
    # kohya: every 10 steps, keep last 30 -> saving step 50 removes step 10
    for s in (10, 20, 30, 40, 50):
        (tmp_path / step_file_name("n", s)).write_bytes(b"x")
    assert prune_old_steps(tmp_path, "n", 50, 10, 30) == str(tmp_path / step_file_name("n", 10))
    assert prune_old_steps(tmp_path, "n", 30, 10, 30) is None
