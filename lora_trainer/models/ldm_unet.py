"""The LDM / SGM ``UNetModel`` in its original layout.

Module paths, state-dict keys and block class names are those of CompVis'
``ldm.modules.diffusionmodules.openaimodel.UNetModel`` and Stability's ``sgm``
copy of it, which is what the WebUIs hold at
``sd_model.model.diffusion_model``. kohya's LoRA key names are derived from this
layout (through its diffusers mapping), and the WebUIs recognise blocks by
these class names, so both must stay as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

UNET_PREFIX = "model.diffusion_model."


@dataclass
class UNetConfig:
    """Sizes of one UNet. ``transformer_depth[level]`` is 0 where a level has no attention."""

    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    transformer_depth: tuple[int, ...]
    transformer_depth_middle: int
    context_dim: int
    use_linear: bool
    in_channels: int = 4
    out_channels: int = 4
    # exactly one of the two is > 0: SD1 fixes the head count, SD2/SDXL the head width
    num_heads: int = -1
    num_head_channels: int = -1
    adm_in_channels: Optional[int] = None  # SDXL's pooled text + size embedding width

    @property
    def attention_levels(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.transformer_depth) if d > 0)

    @property
    def attention_resolutions(self) -> list[int]:
        """Downscale factors with attention, as the LDM yaml spells them."""
        return [2**i for i in self.attention_levels]

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, head width) for a transformer of ``channels`` width."""
        if self.num_head_channels > 0:
            heads, dim_head = channels // self.num_head_channels, self.num_head_channels
        else:
            heads, dim_head = self.num_heads, channels // self.num_heads
        if heads < 1 or heads * dim_head != channels:
            raise ValueError(
                f"a {channels}-channel transformer cannot be split into heads "
                f"(num_heads={self.num_heads}, num_head_channels={self.num_head_channels})"
            )
        return heads, dim_head


def unet_config_from_state_dict(
    sd: dict, num_heads: Optional[int] = None, num_head_channels: Optional[int] = None
) -> UNetConfig:
    """Infer the sizes from a UNet state dict (keys without ``model.diffusion_model.``).

    Head counts leave no trace in the weights; by default SD1 (conv projections)
    gets LDM's 8 heads and SD2/SDXL (linear projections) 64-wide heads, as in
    the Stability configs. Pass the yaml's value to override.
    """
    first = sd["input_blocks.0.0.weight"]
    model_channels, in_channels = first.shape[0], first.shape[1]
    n_input = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks."))
    downsample_ids = sorted(
        int(k.split(".")[1]) for k in sd if k.startswith("input_blocks.") and k.endswith(".0.op.weight")
    )
    levels = len(downsample_ids) + 1
    num_res_blocks = (n_input - 1 - len(downsample_ids)) // levels
    if 1 + levels * num_res_blocks + len(downsample_ids) != n_input:
        raise ValueError("UNet input blocks do not form equal levels")

    def depth_of(prefix: str) -> int:
        ids = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
        return len(ids)

    channel_mult, depths = [], []
    for level in range(levels):
        block = 1 + level * (num_res_blocks + 1)
        out_ch = sd[f"input_blocks.{block}.0.out_layers.3.weight"].shape[0]
        channel_mult.append(out_ch // model_channels)
        depths.append(depth_of(f"input_blocks.{block}.1.transformer_blocks."))
    depth_middle = depth_of("middle_block.1.transformer_blocks.")

    to_k = [k for k in sd if k.endswith("transformer_blocks.0.attn2.to_k.weight")]
    proj_in = [k for k in sd if k.endswith(".proj_in.weight")]
    context_dim = sd[to_k[0]].shape[1] if to_k else 0
    use_linear = bool(proj_in) and sd[proj_in[0]].ndim == 2
    adm = sd["label_emb.0.0.weight"].shape[1] if "label_emb.0.0.weight" in sd else None

    if num_heads is None and num_head_channels is None:
        if use_linear:
            num_head_channels = 64
        else:
            num_heads = 8
    return UNetConfig(
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=num_res_blocks,
        transformer_depth=tuple(depths),
        transformer_depth_middle=depth_middle,
        context_dim=context_dim,
        use_linear=use_linear,
        in_channels=in_channels,
        out_channels=sd["out.2.weight"].shape[0],
        num_heads=num_heads if num_heads else -1,
        num_head_channels=num_head_channels if num_head_channels else -1,
        adm_in_channels=adm,
    )


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """LDM's sinusoidal embedding: cosines first, then sines, in float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    # LDM normalises in float32 even when the weights are half precision
    def forward(self, x):
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels: int) -> nn.GroupNorm:
    return GroupNorm32(32, channels)


class TimestepEmbedSequential(nn.Sequential):
    """Passes the time embedding to ResBlocks and the context to transformers."""

    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: Optional[int] = None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        dtype = x.dtype
        # nearest upsampling has no bfloat16 kernel on some torch builds
        if dtype == torch.bfloat16:
            x = x.float()
        x = F.interpolate(x, scale_factor=2, mode="nearest").to(dtype)
        return self.conv(x)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: Optional[int] = None):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b = q.shape[0]
        q, k, v = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[3])
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim=context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, use_linear: bool):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        if use_linear:
            self.proj_in = nn.Linear(channels, inner)
        else:
            self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)]
        )
        if use_linear:
            self.proj_out = nn.Linear(inner, channels)
        else:
            self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)  # b (h w) c
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class UNetModel(nn.Module):
    """``forward(x, timesteps, context, y=None)`` as LDM's; ``y`` only for SDXL."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        mc = config.model_channels
        emb_dim = mc * 4
        self.model_channels = mc
        self.num_classes = "sequential" if config.adm_in_channels else None

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if config.adm_in_channels:
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(config.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            )

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            heads, dim_head = config.heads_for(ch)
            return SpatialTransformer(ch, heads, dim_head, depth, config.context_dim, config.use_linear)

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(config.in_channels, mc, 3, padding=1))]
        )
        skip_channels = [mc]
        ch = mc
        last = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers = [ResBlock(ch, emb_dim, mult * mc)]
                ch = mult * mc
                if config.transformer_depth[level]:
                    layers.append(transformer(ch, config.transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != last:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim), transformer(ch, config.transformer_depth_middle), ResBlock(ch, emb_dim)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mc * mult)]
                ch = mc * mult
                if config.transformer_depth[level]:
                    layers.append(transformer(ch, config.transformer_depth[level]))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(mc, config.out_channels, 3, padding=1))

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.gradient_checkpointing = enabled

    def _run(self, block, h, emb, context):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, use_reentrant=False)
        return block(h, emb, context)

    def forward(self, x, timesteps, context=None, y=None, **kwargs):
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("y must be given exactly when the UNet has a label embedding (SDXL)")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        if y is not None:
            emb = emb + self.label_emb(y.to(dtype))

        hs = []
        h = x
        for block in self.input_blocks:
            h = self._run(block, h, emb, context)
            hs.append(h)
        h = self._run(self.middle_block, h, emb, context)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h.type(x.dtype))


def unet_from_state_dict(
    sd: dict,
    config: Optional[UNetConfig] = None,
    dtype: torch.dtype = torch.float32,
    device="cpu",
) -> UNetModel:
    """A UNet loaded strictly from ``sd`` (keys without prefix), sized from it unless ``config`` is given."""
    config = config or unet_config_from_state_dict(sd)
    # meta construction skips random init: the weights are replaced right away
    with torch.device("meta"):
        unet = UNetModel(config)
    unet.load_state_dict(sd, strict=True, assign=True)
    return unet.to(device=device, dtype=dtype)


def strip_prefix(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
