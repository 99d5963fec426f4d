"""The noise schedule (``alphas_cumprod``) of an SD checkpoint."""
from __future__ import annotations

from typing import Optional

import torch

# LDM's defaults (v1/v2 yaml linear_start/linear_end; SGM's LegacyDDPMDiscretization)
LINEAR_START = 0.00085
LINEAR_END = 0.012
NUM_TIMESTEPS = 1000


def scaled_linear_alphas_cumprod(
    linear_start: float = LINEAR_START, linear_end: float = LINEAR_END, num_timesteps: int = NUM_TIMESTEPS
) -> torch.Tensor:
    """LDM's "linear" schedule, which is linear in sqrt(beta) (diffusers' scaled_linear)."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def alphas_cumprod_from_state_dict(
    state_dict: dict, linear_start: Optional[float] = None, linear_end: Optional[float] = None
) -> torch.Tensor:
    """The checkpoint's own ``alphas_cumprod`` (SD1/SD2 files carry one) as float64,
    else the schedule rebuilt from the yaml's ``linear_start``/``linear_end`` or LDM's defaults.

    A stored schedule wins because some fine-tunes (zero-terminal-SNR ones) ship a
    modified one; the WebUI samples with it too.
    """
    stored = state_dict.get("alphas_cumprod")
    if stored is not None and stored.numel() == NUM_TIMESTEPS:
        return stored.detach().to(device="cpu", dtype=torch.float64).clone()
    return scaled_linear_alphas_cumprod(
        LINEAR_START if linear_start is None else linear_start,
        LINEAR_END if linear_end is None else linear_end,
    )
