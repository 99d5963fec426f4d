"""Reading and writing LoRA files, and kohya's epoch / step file names.

Files are written whole to a temporary name beside the destination and moved
over it only once they are on disk, so a run killed mid-save leaves either the
old file or the new one, never a truncated ``.safetensors`` that a WebUI would
list and fail to load.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import torch
from ..fileio import write_atomic  # re-exported: savers import it from here
from safetensors import safe_open
from safetensors.torch import save as serialize

from .metadata import add_hashes

PathLike = Union[str, os.PathLike]

# kohya's names for unnamed outputs
DEFAULT_EPOCH_NAME = "epoch"
DEFAULT_STEP_NAME = "at"
DEFAULT_LAST_NAME = "last"


def cast_tensors(tensors: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies; floating tensors cast to ``dtype`` (kohya's save_precision)."""
    out = {}
    for key, value in tensors.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous()
    return out


def save_network(
    path: PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Optional[Mapping[str, str]] = None,
    dtype: Optional[torch.dtype] = None,
    *,
    hashes: bool = True,
) -> dict[str, str]:
    """Save a LoRA state dict as safetensors, atomically.

    Like kohya's ``save_weights``: tensors are cast to ``dtype`` first, then
    ``sshs_model_hash`` / ``sshs_legacy_hash`` are computed on what is written
    (unless ``hashes`` is False). Returns the metadata as written.
    """
    cast = cast_tensors(tensors, dtype)
    meta = dict(metadata or {})
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must be str -> str, got {key!r}: {type(value).__name__}")
    if hashes:
        meta = add_hashes(cast, meta)
    write_atomic(path, serialize(cast, meta or None))
    return meta


def load_network(path: PathLike, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; metadata is ``{}`` when there is none."""
    with safe_open(os.fspath(path), framework="pt", device=device) as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    return tensors, dict(metadata)


# --- kohya file names ---------------------------------------------------------


def _ext(ext: str) -> str:
    return ext if ext.startswith(".") else "." + ext


def epoch_file_name(output_name: Optional[str], epoch: int, ext: str = ".safetensors") -> str:
    """``NAME-000004.safetensors``."""
    return f"{output_name or DEFAULT_EPOCH_NAME}-{epoch:06d}{_ext(ext)}"


def step_file_name(output_name: Optional[str], step: int, ext: str = ".safetensors") -> str:
    """``NAME-step00000500.safetensors``."""
    return f"{output_name or DEFAULT_STEP_NAME}-step{step:08d}{_ext(ext)}"


def last_file_name(output_name: Optional[str], ext: str = ".safetensors") -> str:
    """``NAME.safetensors``, the final save."""
    return f"{output_name or DEFAULT_LAST_NAME}{_ext(ext)}"


def epoch_to_remove(epoch: int, save_every_n_epochs: int, save_last_n_epochs: Optional[int]) -> Optional[int]:
    """The epoch whose file falls out of the ``save_last_n_epochs`` window once ``epoch`` is saved."""
    if save_last_n_epochs is None:
        return None
    old = epoch - save_every_n_epochs * save_last_n_epochs
    return old if old >= 0 else None


def step_to_remove(step: int, save_every_n_steps: int, save_last_n_steps: Optional[int]) -> Optional[int]:
    """kohya's ``save_last_n_steps``: the newest saved step more than ``save_last_n_steps`` ago."""
    if save_last_n_steps is None:
        return None
    old = step - save_last_n_steps - 1
    old -= old % save_every_n_steps
    return old if old >= 0 else None


def _remove(path: str) -> Optional[str]:
    if os.path.exists(path):
        os.remove(path)
        return path
    return None


def prune_old_epochs(
    output_dir: PathLike,
    output_name: Optional[str],
    epoch: int,
    save_every_n_epochs: int,
    save_last_n_epochs: Optional[int],
    ext: str = ".safetensors",
) -> Optional[str]:
    """After saving ``epoch``, delete the epoch file that left the last-n window, as kohya
    does. Returns the removed path, or None."""
    old = epoch_to_remove(epoch, save_every_n_epochs, save_last_n_epochs)
    if old is None:
        return None
    return _remove(os.path.join(os.fspath(output_dir), epoch_file_name(output_name, old, ext)))


def prune_old_steps(
    output_dir: PathLike,
    output_name: Optional[str],
    step: int,
    save_every_n_steps: int,
    save_last_n_steps: Optional[int],
    ext: str = ".safetensors",
) -> Optional[str]:
    """Step-wise counterpart of :func:`prune_old_epochs`."""
    old = step_to_remove(step, save_every_n_steps, save_last_n_steps)
    if old is None:
        return None
    return _remove(os.path.join(os.fspath(output_dir), step_file_name(output_name, old, ext)))
