"""Give the lent model back exactly as it was lent.

Training flips flags on the host's modules (requires_grad, train/eval,
gradient checkpointing). :func:`preserved_host_state` records them on entry
and puts every one back on exit — normal end, interrupt, exception or
out-of-memory alike. Weights themselves are never written by the trainer
(the LoRA wraps forwards), so they need no copy; :func:`state_fingerprint`
lets tests and hosts check that.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..models.base import DiffusionModel


def _roots(model: DiffusionModel) -> list[nn.Module]:
    roots = [model.unet] + [te.model for te in model.text_encoders]
    if model.vae is not None:
        roots.append(model.vae)
    return roots


def _checkpointing_flags(root: nn.Module) -> dict[nn.Module, bool]:
    # Our UNet and transformers' encoders both keep a `gradient_checkpointing` attribute on the modules it affects.
    return {m: m.gradient_checkpointing for m in root.modules()
            if isinstance(getattr(m, "gradient_checkpointing", None), bool)}


@contextmanager
def preserved_host_state(model: DiffusionModel) -> Iterator[None]:
    roots = _roots(model)
    requires_grad = {p: p.requires_grad for root in roots for p in root.parameters()}
    training = {m: m.training for root in roots for m in root.modules()}
    checkpointing: dict[nn.Module, bool] = {}
    for root in roots:
        checkpointing.update(_checkpointing_flags(root))
    own_forwards = {m: m.__dict__.get("forward") for root in roots for m in root.modules()}
    try:
        yield
    finally:
        for param, flag in requires_grad.items():
            param.grad = None
            param.requires_grad_(flag)
        for module, flag in training.items():
            module.training = flag
        for module, flag in checkpointing.items():
            module.gradient_checkpointing = flag
        for module, forward in own_forwards.items():
            if forward is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = forward


def state_fingerprint(model: DiffusionModel) -> dict:
    """Everything the host would notice: tensors bit-for-bit, dtypes, devices, flags, module tree."""
    digest = hashlib.sha256()
    flags = []
    for index, root in enumerate(_roots(model)):
        for name, tensor in root.state_dict(keep_vars=True).items():
            data = tensor.detach()
            digest.update(f"{index}.{name}:{data.dtype}:{data.device}:{tuple(data.shape)}".encode())
            digest.update(data.contiguous().view(torch.uint8).cpu().numpy().tobytes() if data.numel() else b"")
            if isinstance(tensor, nn.Parameter):
                flags.append((index, name, tensor.requires_grad, tensor.grad is None))
        for name, module in root.named_modules():
            flags.append((index, name, type(module).__name__, module.training,
                          "forward" in module.__dict__, getattr(module, "gradient_checkpointing", None)))
    return {"tensors": digest.hexdigest(), "flags": flags}
