"""LDM ``AutoencoderKL`` (the checkpoint's ``first_stage_model.``) in its original layout.

Only what training needs: ``encode`` to a diagonal Gaussian and ``decode``.
kohya caches ``vae.encode(images).latent_dist.sample()`` (a random draw, not the
mean) and multiplies by the scale factor afterwards; :class:`LatentDistribution`
offers both so the caller decides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .ldm_unet import Upsample  # LDM's VAE and UNet share the upsampler (nearest x2, then conv)

VAE_PREFIX = "first_stage_model."


@dataclass
class VAEConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    in_channels: int = 3
    out_ch: int = 3

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def vae_config_from_state_dict(sd: dict) -> VAEConfig:
    """Sizes from a VAE state dict (keys without ``first_stage_model.``)."""
    conv_in = sd["encoder.conv_in.weight"]
    ch = conv_in.shape[0]
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down."))
    ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels))
    num_res_blocks = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block."))
    return VAEConfig(
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        z_channels=sd["decoder.conv_in.weight"].shape[1],
        embed_dim=sd["post_quant_conv.weight"].shape[0],
        in_channels=conv_in.shape[1],
        out_ch=sd["decoder.conv_out.weight"].shape[0],
    )


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with 1x1 conv projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (m(hn).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        # LDM pads only right and bottom before the strided conv
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def _mid(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


def _run_mid(mid: nn.Module, h):
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        self.down = nn.ModuleList()
        ch_in = c.ch
        for i, mult in enumerate(c.ch_mult):
            level = nn.Module()  # keys: block.N, downsample/upsample
            level.block = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                level.block.append(ResnetBlock(ch_in, c.ch * mult))
                ch_in = c.ch * mult
            level.attn = nn.ModuleList()
            if i != len(c.ch_mult) - 1:
                level.downsample = Downsample(ch_in)
            self.down.append(level)
        self.mid = _mid(ch_in)
        self.norm_out = Normalize(ch_in)
        self.conv_out = nn.Conv2d(ch_in, 2 * c.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        ch = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, ch, 3, padding=1)
        self.mid = _mid(ch)
        levels = []
        # built deepest first, stored by level index as LDM does (up.0 is full resolution)
        for i in reversed(range(len(c.ch_mult))):
            level = nn.Module()  # keys: block.N, downsample/upsample
            level.block = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                level.block.append(ResnetBlock(ch, c.ch * c.ch_mult[i]))
                ch = c.ch * c.ch_mult[i]
            level.attn = nn.ModuleList()
            if i != 0:
                level.upsample = Upsample(ch)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(ch)
        self.conv_out = nn.Conv2d(ch, c.out_ch, 3, padding=1)

    def forward(self, z):
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LatentDistribution:
    """LDM's DiagonalGaussianDistribution: ``mean``, clamped ``logvar``, ``sample()``."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def encode(self, pixels: torch.Tensor) -> LatentDistribution:
        """``pixels`` in [-1, 1]; returns the unscaled latent distribution."""
        return LatentDistribution(self.quant_conv(self.encoder(pixels)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents to pixels in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))


def vae_from_state_dict(
    sd: dict, config: Optional[VAEConfig] = None, dtype: torch.dtype = torch.float32, device="cpu"
) -> AutoencoderKL:
    """A VAE loaded strictly from ``sd`` (keys without prefix), sized from it unless ``config`` is given.

    Loss-only keys some checkpoints carry (``loss.*``) are ignored.
    """
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    # some converted files store the mid attention projections as linear weights
    for k, v in sd.items():
        if ".attn_1." in k and k.endswith("weight") and v.ndim == 2:
            sd[k] = v[:, :, None, None]
    with torch.device("meta"):
        vae = AutoencoderKL(config or vae_config_from_state_dict(sd))
    vae.load_state_dict(sd, strict=True, assign=True)
    return vae.to(device=device, dtype=dtype)
