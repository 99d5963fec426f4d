"""The CLI's run of a config, for host adapter tests: a host must write the very same file.

``make_config`` is the small run every adapter test uses; ``reference`` trains it once per
(arch, overrides) through :func:`lora_trainer.runner.run_training` (what ``python -m lora_trainer
train`` runs, on the standalone model) and keeps the final file's tensors and the result.
"""
from __future__ import annotations

from safetensors import safe_open

from lora_trainer.config import from_dict
from lora_trainer.runner import run_training

_REFERENCES: dict = {}


def make_config(checkpoint, dataset, out, **overrides):
    options = {
        "pretrained_model_name_or_path": str(checkpoint),
        "train_data_dir": str(dataset),
        "output_dir": str(out),
        "output_name": "t",
        "resolution": "64",
        "train_batch_size": 2,
        "network_dim": 4,
        "network_alpha": 2,
        "learning_rate": 5e-3,
        "max_train_epochs": 1,
        "seed": 1,
        "device": "cpu",
    }
    options.update(overrides)
    return from_dict(options)[0]


def reference(tiny_checkpoints, dataset, tmp_path_factory, arch, **overrides):
    """(tensors of the CLI's final file, its TrainResult) for the same config."""
    key = (arch, tuple(sorted(overrides.items())))
    if key not in _REFERENCES:
        out = tmp_path_factory.mktemp(f"cli_ref_{arch}")
        outcome = run_training(make_config(tiny_checkpoints(arch), dataset, out, **overrides), log=lambda _m: None)
        assert outcome.ok, outcome.message
        _REFERENCES[key] = read_tensors(out / "t.safetensors"), outcome.result
    return _REFERENCES[key]


def read_tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def read_metadata(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()
