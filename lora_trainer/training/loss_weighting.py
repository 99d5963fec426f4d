"""kohya's per-sample loss and its timestep weightings.

kohya reduces the element loss to one value per sample (mean over every
non-batch dim), multiplies it by the sample's ``loss_weight`` (prior-loss
weight for regularisation images), then applies, in this order, min-SNR
weighting, v-pred-like-noise-pred scaling, the v-pred-like loss and the
debiased estimation, and finally takes the batch mean. SNR is read from a
table built as kohya builds ``noise_scheduler.all_snr``:
``(sqrt(ᾱ) / sqrt(1-ᾱ))**2`` in float32.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

# kohya caps SNR where t=0 makes it (nearly) infinite
SNR_CAP = 1000.0


def snr_table(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    ac = alphas_cumprod.float()
    return (torch.sqrt(ac) / torch.sqrt(1.0 - ac)) ** 2


def snr_at(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    table = snr_table(alphas_cumprod).to(timesteps.device)
    return table[timesteps.long()]


def min_snr_weight(snr: torch.Tensor, gamma: float, v_prediction: bool = False) -> torch.Tensor:
    """min(SNR, γ)/SNR for ε-prediction, min(SNR, γ)/(SNR+1) for v-prediction."""
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return (clipped / (snr + 1) if v_prediction else clipped / snr).float()


def _capped_snr(timesteps, alphas_cumprod):
    snr = snr_at(timesteps, alphas_cumprod)
    return torch.minimum(snr, torch.full_like(snr, SNR_CAP))


def apply_snr_weight(loss, timesteps, alphas_cumprod, gamma: float, v_prediction: bool = False) -> torch.Tensor:
    return loss * min_snr_weight(snr_at(timesteps, alphas_cumprod), gamma, v_prediction).to(loss.device)


def v_pred_scale(timesteps, alphas_cumprod) -> torch.Tensor:
    """SNR/(SNR+1) with SNR capped at 1000: the factor that turns a v loss
    into the equivalent ε loss."""
    snr = _capped_snr(timesteps, alphas_cumprod)
    return snr / (snr + 1)


def scale_v_pred_loss_like_noise_pred(loss, timesteps, alphas_cumprod) -> torch.Tensor:
    return loss * v_pred_scale(timesteps, alphas_cumprod).to(loss.device)


def add_v_pred_like_loss(loss, timesteps, alphas_cumprod, multiplier: float) -> torch.Tensor:
    """ε loss plus ``multiplier`` times the same loss seen as a v loss."""
    scale = v_pred_scale(timesteps, alphas_cumprod).to(loss.device)
    return loss + loss / scale * multiplier


def debiased_weight(timesteps, alphas_cumprod, v_prediction: bool = False) -> torch.Tensor:
    """1/sqrt(SNR) (ε) or 1/(SNR+1) (v), SNR capped at 1000."""
    snr = _capped_snr(timesteps, alphas_cumprod)
    return 1 / (snr + 1) if v_prediction else 1 / torch.sqrt(snr)


def apply_debiased_estimation(loss, timesteps, alphas_cumprod, v_prediction: bool = False) -> torch.Tensor:
    return debiased_weight(timesteps, alphas_cumprod, v_prediction).to(loss.device) * loss


def check_loss_options(
    v_prediction: bool, scale_v_pred_loss_like_noise_pred: bool = False, v_pred_like_loss: Optional[float] = None
) -> None:
    """kohya's argument checks for the v-prediction loss options."""
    if scale_v_pred_loss_like_noise_pred and not v_prediction:
        raise ValueError("scale_v_pred_loss_like_noise_pred can be enabled only with v_parameterization")
    if v_pred_like_loss and v_prediction:
        raise ValueError("v_pred_like_loss cannot be enabled with v_parameterization")


def apply_all(
    loss: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    v_prediction: bool = False,
    min_snr_gamma: Optional[float] = None,
    scale_v_pred_loss_like_noise_pred: bool = False,
    v_pred_like_loss: Optional[float] = None,
    debiased_estimation_loss: bool = False,
) -> torch.Tensor:
    """kohya's ``post_process_loss`` on a per-sample loss (B,), in kohya's order."""
    if min_snr_gamma:
        loss = apply_snr_weight(loss, timesteps, alphas_cumprod, min_snr_gamma, v_prediction)
    if scale_v_pred_loss_like_noise_pred:  # the flag shadows the function of the same name
        loss = loss * v_pred_scale(timesteps, alphas_cumprod).to(loss.device)
    if v_pred_like_loss:
        loss = add_v_pred_like_loss(loss, timesteps, alphas_cumprod, v_pred_like_loss)
    if debiased_estimation_loss:
        loss = apply_debiased_estimation(loss, timesteps, alphas_cumprod, v_prediction)
    return loss


def huber_c(
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    schedule: str = "snr",
    c: float = 0.1,
    scale: float = 1.0,
) -> torch.Tensor:
    """kohya's per-sample Huber threshold for ``huber_schedule`` constant / exponential / snr."""
    if schedule == "exponential":
        alpha = -math.log(c) / len(alphas_cumprod)
        return torch.exp(-alpha * timesteps) * scale
    if schedule == "snr":
        ac = alphas_cumprod.to(timesteps.device)[timesteps.long()]
        sigmas = ((1.0 - ac) / ac) ** 0.5
        return (1 - c) / (1 + sigmas) ** 2 + c
    if schedule == "constant":
        return torch.full((timesteps.shape[0],), c * scale, device=timesteps.device)
    raise ValueError(f"unknown huber_schedule {schedule!r}; expected constant, exponential or snr")


def per_sample_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    loss_type: str = "l2",
    huber_threshold: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    loss_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Element loss reduced to one value per sample, as kohya's ``process_batch``.

    Computed in float32. ``mask`` (B,1,H,W in [0,1], image resolution) is
    area-resized to the latent grid and multiplies the element loss before the
    mean (kohya's masked loss); ``loss_weights`` (B,) multiply after it.
    """
    pred, tgt = model_pred.float(), target.float()
    if loss_type == "l2":
        loss = F.mse_loss(pred, tgt, reduction="none")
    elif loss_type == "l1":
        loss = F.l1_loss(pred, tgt, reduction="none")
    elif loss_type in ("huber", "smooth_l1"):
        if huber_threshold is None:
            raise ValueError(f"loss_type {loss_type} needs huber_threshold (see huber_c)")
        c = huber_threshold.view(-1, *([1] * (pred.ndim - 1))).to(pred.device, pred.dtype)
        if loss_type == "huber":
            loss = 2 * c * (torch.sqrt((pred - tgt) ** 2 + c**2) - c)
        else:
            loss = 2 * (torch.sqrt((pred - tgt) ** 2 + c**2) - c)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected l2, l1, huber or smooth_l1")
    if mask is not None:
        mask = F.interpolate(mask.to(loss.dtype), size=loss.shape[2:], mode="area")
        loss = loss * mask
    loss = loss.mean(dim=list(range(1, loss.ndim)))
    if loss_weights is not None:
        loss = loss * loss_weights.to(loss.device, loss.dtype)
    return loss
