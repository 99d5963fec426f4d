"""Objects shaped like the WebUI's loaded models, built from lora_trainer's own modules (tests only).

Written for lora_trainer's tests. ``LatentDiffusion`` (SD1/SD2) and
``DiffusionEngine`` (SDXL) have the attributes the host adapter reads:
``model.diffusion_model``, ``cond_stage_model.wrapped.transformer/.tokenizer``
(SD1), ``cond_stage_model.wrapped.model`` (SD2), ``conditioner.embedders[i].wrapped``
(SDXL), ``first_stage_model``, ``encode_first_stage`` / ``get_first_stage_encoding``
/ ``decode_first_stage``, ``scale_factor``, ``alphas_cumprod(_original)``,
``parameterization`` and the ``is_*`` flags. Text encoders are wrapped as the
WebUI's hijack wraps them (``.wrapped``, token embeddings inside a module with
``.wrapped``), and the OpenCLIP towers are real fused-attention towers with
OpenCLIP's module names, so the adapter's conversion is exercised.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class EmbeddingsWithFixes(nn.Module):
    """The WebUI's textual-inversion hook around a token embedding (no embeddings loaded here)."""

    def __init__(self, wrapped: nn.Embedding):
        super().__init__()
        self.wrapped = wrapped
        self.fixes = None

    def forward(self, input_ids):
        return self.wrapped(input_ids)


# ----------------------------------------------------------------- OpenCLIP tower


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = nn.Identity()
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(4 * width, width)),
        ]))
        self.ls_2 = nn.Identity()

    def forward(self, x, attn_mask):
        h = self.ln_1(x)
        x = x + self.ls_1(self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])


class CLIP(nn.Module):
    """OpenCLIP's CLIP with the vision tower deleted, as SD keeps it."""

    def __init__(self, width, layers, heads, vocab_size, context_length, embed_dim):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def encode(self, input_ids):
        """(hidden states after each block, pooled projection at the first EOS)."""
        x = self.token_embedding(input_ids) + self.positional_embedding
        states = []
        for block in self.transformer.resblocks:
            x = block(x, self.attn_mask.to(x.dtype))
            states.append(x)
        last = self.ln_final(x)
        eos = torch.argmax((input_ids == 49407).int(), dim=1)
        pooled = last[torch.arange(last.shape[0]), eos] @ self.text_projection
        return states, pooled


def open_clip_tower(state_dict: dict, prefix: str, dtype=torch.float32) -> CLIP:
    from lora_trainer.models.clip import heads_for_width

    own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    width = own["ln_final.weight"].shape[0]
    layers = len({k.split(".")[2] for k in own if k.startswith("transformer.resblocks.")})
    vocab, _ = own["token_embedding.weight"].shape
    tower = CLIP(width, layers, heads_for_width(width), vocab, own["positional_embedding"].shape[0],
                 own["text_projection"].shape[1])
    tower.load_state_dict({k: v.to(dtype) for k, v in own.items()}, strict=True)
    tower.to(dtype)
    tower.token_embedding = EmbeddingsWithFixes(tower.token_embedding)
    return tower


# -------------------------------------------------------------- conditioning holders


class FrozenCLIPEmbedder(nn.Module):
    def __init__(self, transformer, tokenizer, layer="last", layer_idx=None):
        super().__init__()
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.layer = layer
        self.layer_idx = layer_idx


class FrozenOpenCLIPEmbedder(nn.Module):
    def __init__(self, model, layer="penultimate"):
        super().__init__()
        self.model = model
        self.layer = layer


class CustomWordsWrapper(nn.Module):
    """The WebUI's prompt-parsing hijack around a text encoder holder."""

    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped


class SizeEmbedder(nn.Module):
    """SDXL's size conditioning embedders (no weights)."""

    def __init__(self, key):
        super().__init__()
        self.input_key = key


class GeneralConditioner(nn.Module):
    def __init__(self, embedders):
        super().__init__()
        self.embedders = nn.ModuleList(embedders)


# ---------------------------------------------------------------------- models


class DiffusionWrapper(nn.Module):
    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(self, x, t, context=None, y=None):
        return self.diffusion_model(x, t, context, y)


class OpenAIWrapper(DiffusionWrapper):
    pass


class LatentDiffusion(nn.Module):
    """CompVis' LatentDiffusion as the WebUI holds it (SD1 / SD2)."""

    def __init__(self, unet, cond_stage_model, vae, alphas_cumprod, scale_factor, parameterization, arch):
        super().__init__()
        self.model = DiffusionWrapper(unet)
        self.cond_stage_model = cond_stage_model
        self.first_stage_model = vae
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float32))
        self.alphas_cumprod_original = self.alphas_cumprod
        self.scale_factor = scale_factor
        self.parameterization = parameterization
        self.is_sd1, self.is_sd2, self.is_sdxl, self.is_ssd, self.is_sd3 = arch == "sd1", arch == "sd2", False, False, False
        self.lowvram = False

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, posterior):
        return self.scale_factor * posterior.sample()

    @torch.no_grad()
    def decode_first_stage(self, z):
        return self.first_stage_model.decode(1.0 / self.scale_factor * z)


class DiffusionEngine(nn.Module):
    """sgm's DiffusionEngine as the WebUI holds it (SDXL)."""

    def __init__(self, unet, conditioner, vae, alphas_cumprod, scale_factor, parameterization):
        super().__init__()
        self.model = OpenAIWrapper(unet)
        self.conditioner = conditioner
        self.first_stage_model = vae
        self.alphas_cumprod = alphas_cumprod.to(torch.float32)
        self.alphas_cumprod_original = self.alphas_cumprod
        self.scale_factor = scale_factor
        self.parameterization = parameterization
        self.is_sd1, self.is_sd2, self.is_sdxl, self.is_ssd, self.is_sd3 = False, False, True, False, False
        self.is_sdxl_inpaint = False
        self.lowvram = False

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.scale_factor * self.first_stage_model.encode(x).sample()

    def get_first_stage_encoding(self, x):
        return x

    @torch.no_grad()
    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)
