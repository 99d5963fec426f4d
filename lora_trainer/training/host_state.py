"""Give the lent model back exactly as it was lent.

Training flips flags on the host's modules (requires_grad, train/eval,
gradient checkpointing, hooks libraries register). :func:`preserved_host_state`
records them on entry and puts every one back on exit — normal end, interrupt, exception or
out-of-memory alike. Weights themselves are never written by the trainer
(the LoRA wraps forwards), so they need no copy; :func:`state_fingerprint`
lets tests and hosts check that.
"""
from __future__ import annotations

import hashlib
import random
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


_MISSING = object()


def _rng_states() -> dict:
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        states["numpy"] = numpy.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    return states


def _set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        import numpy

        numpy.random.set_state(states["numpy"])


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@contextmanager
def preserved_host_state(model: DiffusionModel) -> Iterator[None]:
    """Flags, hooks, instance attributes and the global RNGs, as lent; restored on any exit.

    Libraries add more than flags when training switches are flipped (transformers'
    gradient checkpointing registers an input-grad hook and instance attributes), so the
    module's own ``__dict__`` keys and hook tables are recorded too and anything added is
    removed. The seed a training sets must not steer the host's later generations either.
    """
    roots = _roots(model)
    params = {p: (p.requires_grad, p.grad) for root in roots for p in root.parameters()}
    modules = [m for root in roots for m in root.modules()]
    attributes = {m: dict(m.__dict__) for m in modules}
    hooks = {m: {name: dict(getattr(m, name)) for name in _HOOK_DICTS if hasattr(m, name)} for m in modules}
    rng = _rng_states()
    try:
        yield
    finally:
        for param, (flag, grad) in params.items():
            param.grad = grad
            param.requires_grad_(flag)
        for module in modules:
            # instance attributes as they were: added ones removed, rebound ones (training,
            # gradient_checkpointing, forward, ...) put back; hook tables emptied of new hooks
            saved, current = attributes[module], module.__dict__
            for key in [k for k in current if k not in saved]:
                del current[key]
            for key, value in saved.items():
                if current.get(key, _MISSING) is not value:
                    current[key] = value
            for name, table in hooks[module].items():
                live = getattr(module, name)
                for key in [k for k in live if k not in table]:
                    del live[key]
        _set_rng_states(rng)


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
            hook_counts = tuple(len(getattr(module, h, {})) for h in _HOOK_DICTS)
            flags.append((index, name, type(module).__name__, module.training, tuple(sorted(module.__dict__)),
                          hook_counts, getattr(module, "gradient_checkpointing", None)))
    return {"tensors": digest.hexdigest(), "flags": flags}
