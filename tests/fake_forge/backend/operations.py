"""Forge's layer classes (``backend/operations.py``: ``ForgeOperations``), re-written for tests.

Forge builds its models while these replace ``torch.nn.Linear`` / ``Conv2d``
(:func:`using_forge_operations`). What matters to a trainer:

* :class:`Linear` is a plain ``nn.Module``, **not** a ``torch.nn.Linear`` subclass
  (``isinstance(m, nn.Linear)`` finds none of Forge's Linears); it has
  ``in_features`` / ``out_features`` / ``weight`` / ``bias`` and computes
  ``F.linear`` on the weight it fetches through :func:`get_weight_and_bias`;
* :class:`Conv2d` *does* subclass ``torch.nn.Conv2d`` (as Forge's), but computes
  on the fetched weight the same way and skips the random init;
* with ``parameters_manual_cast`` the weight is cast to the input's dtype and
  device on every call (Forge's text encoders always, a UNet whose storage and
  compute dtypes differ).
"""
import contextlib

import torch
import torch.nn.functional as F

current_device = None
current_dtype = None
current_manual_cast_enabled = False


def get_weight_and_bias(layer, dtype=None, device=None):
    weight, bias = layer.weight, layer.bias
    if dtype is not None or device is not None:
        weight = weight.to(device=device, dtype=dtype)
        bias = None if bias is None else bias.to(device=device, dtype=dtype)
    return weight, bias


class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        factory = dict(device=device or current_device, dtype=dtype or current_dtype)
        self.weight = torch.nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = torch.nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.parameters_manual_cast = current_manual_cast_enabled

    def forward(self, x):
        if self.parameters_manual_cast:
            weight, bias = get_weight_and_bias(self, dtype=x.dtype, device=x.device)
        else:
            weight, bias = get_weight_and_bias(self)
        return F.linear(x, weight, bias)


class Conv2d(torch.nn.Conv2d):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("device", current_device)
        kwargs.setdefault("dtype", current_dtype)
        super().__init__(*args, **kwargs)
        self.parameters_manual_cast = current_manual_cast_enabled

    def reset_parameters(self):
        return None  # weights are always loaded right after

    def forward(self, x):
        if self.parameters_manual_cast:
            weight, bias = get_weight_and_bias(self, dtype=x.dtype, device=x.device)
        else:
            weight, bias = get_weight_and_bias(self)
        return self._conv_forward(x, weight, bias)


@contextlib.contextmanager
def using_forge_operations(device=None, dtype=None, manual_cast_enabled=False):
    """``torch.nn.Linear`` / ``Conv2d`` are Forge's classes while models are built inside."""
    global current_device, current_dtype, current_manual_cast_enabled
    saved = {name: getattr(torch.nn, name) for name in ("Linear", "Conv2d")}
    current_device, current_dtype, current_manual_cast_enabled = device, dtype, manual_cast_enabled
    try:
        torch.nn.Linear, torch.nn.Conv2d = Linear, Conv2d
        yield
    finally:
        for name, cls in saved.items():
            setattr(torch.nn, name, cls)
        current_device, current_dtype, current_manual_cast_enabled = None, None, False
