"""kohya's LoRA module (and its LoCon / C3Lier form for 3x3 convs).

``output = host(x) + up(down(x)) * multiplier * alpha / dim``, with ``down``
shaped like the host (a Linear, or a Conv2d with the host's kernel, stride and
padding) and ``up`` a Linear / 1x1 Conv2d starting at zero, so a fresh LoRA
changes nothing.

The module attaches by replacing the host's ``forward`` on the instance, as
kohya's ``apply_to`` does: the host keeps its class, parameters, buffers and
children (a WebUI's model is lent, not given), and :meth:`LoRAModule.restore`
puts back exactly what was there before.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .naming import is_conv2d

_MISSING = object()


def host_shape(host: nn.Module) -> tuple[int, int]:
    """(in, out) features of a Linear or channels of a Conv2d, also for non-torch classes."""
    if is_conv2d(host):
        return int(host.in_channels), int(host.out_channels)
    if hasattr(host, "in_features"):
        return int(host.in_features), int(host.out_features)
    out_features, in_features = host.weight.shape[:2]
    return int(in_features), int(out_features)


def weight_delta(up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """``up @ down`` shaped as the host's weight (without alpha / dim), as kohya merges it."""
    if down.ndim == 2:
        return up @ down
    if down.shape[2:] == (1, 1):
        return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], down.shape[1], 1, 1)
    # a kxk down followed by a 1x1 up is one kxk conv with kernel up[o, r] * down[r, i]
    return torch.einsum("or,rihw->oihw", up.flatten(1), down)


class LoRAModule(nn.Module):
    """One LoRA for one Linear / Conv2d host.

    State-dict keys are kohya's: ``lora_down.weight``, ``lora_up.weight`` and
    ``alpha`` (a float scalar). ``alpha`` 0 or None means ``alpha = dim``
    (scale 1), as in kohya.
    """

    def __init__(
        self,
        lora_name: str,
        host: nn.Module,
        dim: int = 4,
        alpha: Optional[float] = 1.0,
        multiplier: float = 1.0,
        dropout: Optional[float] = None,
        rank_dropout: Optional[float] = None,
        module_dropout: Optional[float] = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ):
        super().__init__()
        if dim <= 0:
            raise ValueError(f"{lora_name}: LoRA dim must be positive, got {dim}")
        self.lora_name = lora_name
        self.lora_dim = int(dim)
        in_dim, out_dim = host_shape(host)

        # built in float32 on the CPU so the init draws the same numbers whatever
        # dtype / device the caller asks for
        if is_conv2d(host):
            self.lora_down = nn.Conv2d(
                in_dim, self.lora_dim, host.kernel_size, host.stride, host.padding, bias=False
            )
            self.lora_up = nn.Conv2d(self.lora_dim, out_dim, (1, 1), (1, 1), bias=False)
        else:
            self.lora_down = nn.Linear(in_dim, self.lora_dim, bias=False)
            self.lora_up = nn.Linear(self.lora_dim, out_dim, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)

        if isinstance(alpha, torch.Tensor):
            alpha = float(alpha.detach().float().item())
        if alpha is None or alpha == 0:
            alpha = float(self.lora_dim)
        self.register_buffer("alpha", torch.tensor(float(alpha), dtype=torch.float32))
        self.scale = float(alpha) / self.lora_dim
        # a loaded file may carry another alpha: keep the cached scale in step
        self.register_load_state_dict_post_hook(LoRAModule._refresh_scale)

        self.multiplier = multiplier
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self.enabled = True

        self.lora_down.to(device=device, dtype=dtype)
        self.lora_up.to(device=device, dtype=dtype)
        if device is not None:
            self.alpha = self.alpha.to(device)

        # a tuple, so nn.Module does not adopt the host as a child
        self._host = (host,)
        self._org_forward = None
        self._saved_forward = _MISSING

    @staticmethod
    def _refresh_scale(module: "LoRAModule", incompatible_keys) -> None:
        module.scale = float(module.alpha.detach().float().item()) / module.lora_dim

    @property
    def host(self) -> nn.Module:
        return self._host[0]

    @property
    def is_conv(self) -> bool:
        return isinstance(self.lora_down, nn.Conv2d)

    @property
    def is_applied(self) -> bool:
        return self._org_forward is not None

    # --- attach / detach ---------------------------------------------------

    def apply(self) -> None:
        """Route the host's calls through this LoRA."""
        if self.is_applied:
            return
        host = self.host
        self._saved_forward = host.__dict__.get("forward", _MISSING)
        self._org_forward = host.forward
        host.forward = self.forward

    def restore(self) -> None:
        """Give the host back its own forward, exactly as it was before :meth:`apply`."""
        if not self.is_applied:
            return
        host = self.host
        current = host.__dict__.get("forward", _MISSING)
        if current is _MISSING or getattr(current, "__self__", None) is not self:
            raise RuntimeError(
                f"{self.lora_name}: the host's forward was replaced after the LoRA was applied; "
                "restore the later wrapper first"
            )
        if self._saved_forward is _MISSING:
            del host.__dict__["forward"]
        else:
            host.__dict__["forward"] = self._saved_forward
        self._org_forward = None
        self._saved_forward = _MISSING

    # --- math ----------------------------------------------------------------

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self._org_forward is None:
            raise RuntimeError(f"{self.lora_name} is not applied to its host")
        out = self._org_forward(x, *args, **kwargs)
        if not self.enabled or self.multiplier == 0:
            return out
        if self.module_dropout is not None and self.training and torch.rand(1) < self.module_dropout:
            return out
        return out + self.delta(x).to(out.dtype)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``up(down(x)) * multiplier * scale``, the LoRA's addition to the host's output."""
        weight_dtype = self.lora_down.weight.dtype
        # under autocast the layers pick the compute dtype; without it the input
        # (e.g. an fp16 host's activations) meets the LoRA weights in their dtype
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(weight_dtype)
        lx = self.lora_down(x)

        if self.dropout is not None and self.training:
            lx = F.dropout(lx, p=self.dropout)

        scale = self.scale
        if self.rank_dropout is not None and self.training:
            mask = torch.rand((lx.size(0), self.lora_dim), device=lx.device) > self.rank_dropout
            if lx.dim() == 3:
                mask = mask.unsqueeze(1)  # (B, tokens, rank): text encoder / transformer Linear
            elif lx.dim() == 4:
                mask = mask[:, :, None, None]  # (B, rank, H, W): conv
            lx = lx * mask
            # as if the rank were reduced: keep the expected magnitude
            scale = scale / (1.0 - self.rank_dropout)

        return self.lora_up(lx) * (self.multiplier * scale)

    def weight_delta(self) -> torch.Tensor:
        """The change to the host's weight this LoRA stands for (``multiplier`` and scale included)."""
        up = self.lora_up.weight.float()
        down = self.lora_down.weight.float()
        return weight_delta(up, down) * (self.multiplier * self.scale)

    def extra_repr(self) -> str:
        return f"{self.lora_name}, dim={self.lora_dim}, alpha={float(self.alpha):g}"
