"""Forward diffusion for training: timesteps, noise and its kohya variants.

Follows sd-scripts' ``get_noise_noisy_latents_and_timesteps`` (including the
order in which it draws random numbers) with ``apply_noise_offset`` and
``pyramid_noise_like``; ``add_noise`` / ``v_target`` are DDPM's
``add_noise`` / ``get_velocity`` written against a bare ``alphas_cumprod``.

Every random draw can come from a ``torch.Generator`` so a run is
reproducible from its seed; without one the global RNGs are used, as kohya
does (python's ``random`` for the multires scale factor).
"""
from __future__ import annotations

import random
from typing import Optional

import torch
import torch.nn.functional as F

NUM_TRAIN_TIMESTEPS = 1000


def _randn(shape, like: torch.Tensor, generator: Optional[torch.Generator], dtype=None) -> torch.Tensor:
    dtype = dtype or like.dtype
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=dtype)
    # draw where the generator lives (usually the CPU) so the stream does not
    # depend on the training device
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(like.device)


def _rand_scalar(generator: Optional[torch.Generator]) -> float:
    if generator is None:
        return float(torch.rand(1))
    return float(torch.rand(1, generator=generator, device=generator.device))


def sample_timesteps(
    batch_size: int,
    min_timestep: Optional[int] = None,
    max_timestep: Optional[int] = None,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> torch.Tensor:
    """Uniform integer timesteps in ``[min_timestep, max_timestep)``; kohya's
    defaults 0 and ``num_train_timesteps``. When min >= max every sample gets
    ``max_timestep`` (kohya's fixed-timestep case)."""
    low = 0 if min_timestep is None else int(min_timestep)
    high = num_train_timesteps if max_timestep is None else int(max_timestep)
    if low < high:
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.randint(low, high, (batch_size,), generator=generator, device=gen_device)
    else:
        t = torch.full((batch_size,), high)
    return t.long().to(device if device is not None else "cpu")


def apply_noise_offset(
    latents: torch.Tensor,
    noise: torch.Tensor,
    noise_offset,
    adaptive_noise_scale: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """kohya's offset noise: one extra N(0,1) value per (sample, channel), times
    ``noise_offset``; with ``adaptive_noise_scale`` the offset grows by that
    factor times each channel's |mean latent| (clamped at 0)."""
    if noise_offset is None:
        return noise
    if adaptive_noise_scale is not None:
        latent_mean = torch.abs(latents.mean(dim=(2, 3), keepdim=True))
        noise_offset = torch.clamp(noise_offset + adaptive_noise_scale * latent_mean, min=0.0)
    offset = _randn((latents.shape[0], latents.shape[1], 1, 1), latents, generator)
    return noise + noise_offset * offset


def pyramid_noise_like(
    noise: torch.Tensor,
    iterations: int = 6,
    discount: float = 0.4,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """kohya's multires noise: add bilinearly upsampled noise at shrinking
    resolutions (scale r**i, r uniform in [2, 4) per level), weighted
    discount**i, stop after a 1-pixel level, then renormalise to unit std."""
    b, c, h, w = noise.shape
    noise = noise.clone()
    for i in range(iterations):
        u = random.random() if generator is None else _rand_scalar(generator)
        r = u * 2 + 2
        hn, wn = max(1, int(h / (r**i))), max(1, int(w / (r**i)))
        low = _randn((b, c, hn, wn), noise, generator, dtype=torch.float32)
        noise += F.interpolate(low, size=(h, w), mode="bilinear").to(noise.dtype) * discount**i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


def _coefficients(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor):
    # DDPMScheduler casts alphas_cumprod to the sample dtype before the square roots
    ac = alphas_cumprod.to(device=like.device, dtype=like.dtype)[timesteps.to(like.device)]
    shape = (-1,) + (1,) * (like.ndim - 1)
    return (ac**0.5).reshape(shape), ((1 - ac) ** 0.5).reshape(shape)


def add_noise(latents, noise, timesteps, alphas_cumprod) -> torch.Tensor:
    """sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε."""
    a, s = _coefficients(alphas_cumprod, timesteps, latents)
    return a * latents + s * noise


def v_target(latents, noise, timesteps, alphas_cumprod) -> torch.Tensor:
    """The v-prediction target sqrt(ᾱ_t)·ε - sqrt(1-ᾱ_t)·x0."""
    a, s = _coefficients(alphas_cumprod, timesteps, latents)
    return a * noise - s * latents


def noisy_latents(
    latents: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    generator: Optional[torch.Generator] = None,
    noise_offset: Optional[float] = None,
    noise_offset_random_strength: bool = False,
    adaptive_noise_scale: Optional[float] = None,
    multires_noise_iterations: Optional[int] = None,
    multires_noise_discount: float = 0.3,
    min_timestep: Optional[int] = None,
    max_timestep: Optional[int] = None,
    ip_noise_gamma: Optional[float] = None,
    ip_noise_gamma_random_strength: bool = False,
):
    """kohya's ``get_noise_noisy_latents_and_timesteps``: returns
    ``(noise, noisy_latents, timesteps)``. ``noise`` (with offset / multires
    applied) is the epsilon target; input-perturbation noise (``ip_noise_gamma``)
    only enters ``noisy_latents``."""
    noise = _randn(latents.shape, latents, generator)
    # kohya tests these options for truthiness: 0 disables them
    if noise_offset:
        strength = _rand_scalar(generator) * noise_offset if noise_offset_random_strength else noise_offset
        noise = apply_noise_offset(latents, noise, strength, adaptive_noise_scale, generator)
    if multires_noise_iterations:
        noise = pyramid_noise_like(noise, multires_noise_iterations, multires_noise_discount, generator)

    timesteps = sample_timesteps(
        latents.shape[0], min_timestep, max_timestep, len(alphas_cumprod), generator, latents.device
    )

    if ip_noise_gamma:
        strength = _rand_scalar(generator) * ip_noise_gamma if ip_noise_gamma_random_strength else ip_noise_gamma
        noisy = add_noise(latents, noise + strength * _randn(latents.shape, latents, generator), timesteps, alphas_cumprod)
    else:
        noisy = add_noise(latents, noise, timesteps, alphas_cumprod)
    return noise, noisy, timesteps
