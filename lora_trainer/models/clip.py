"""CLIP text encoders from (and back to) LDM checkpoints.

A checkpoint stores its text encoders in one of two layouts:

* Hugging Face CLIP (SD1's ``cond_stage_model.transformer.text_model.*``,
  SDXL's ``conditioner.embedders.0.transformer.text_model.*``), quick_gelu;
* OpenCLIP (SD2's ``cond_stage_model.model.*``, SDXL's
  ``conditioner.embedders.1.model.*``), gelu, with fused q/k/v
  (``attn.in_proj_*``) and ``text_projection`` stored as a (width, dim) matrix
  applied as ``x @ P``.

We always build ``transformers`` CLIP models, whose module paths are the ones
kohya's LoRA key names come from. Tensors the model has no place for but the
checkpoint carries (``logit_scale``, ``position_ids``, SD2's unused last block
and projection) ride along in ``model.ldm_extra_state`` so that writing the
encoders back reproduces the checkpoint bit for bit.

SD2 follows kohya and diffusers: its encoder drops OpenCLIP's last block,
because SD2 conditions on the penultimate layer; the model's last hidden state
(after ``final_layer_norm``) is then exactly what SD2 was trained on, and no
LoRA is made for a block that never runs.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .base import ARCHITECTURES, TextEncoder
from .tokenizer import (
    MODEL_MAX_LENGTH,
    SDXL_TE2_PAD_TOKEN,
    VOCAB_SIZE,
    load_clip_tokenizer,
    write_tokenizer_files,
)

EXTRA_STATE_ATTR = "ldm_extra_state"

# Every real CLIP text tower uses 64-wide heads (ViT-L 768/12, ViT-H 1024/16,
# bigG 1280/20). Shapes cannot tell the head count, so this rule is the
# convention; widths that are not a multiple of 64 (tiny test models only) use
# 16-wide heads. The count is written to config.json by write_text_encoder_folder.
HEAD_DIM = 64
TINY_HEAD_DIM = 16


@dataclass(frozen=True)
class _Slot:
    """Where and how one text encoder is stored in an LDM checkpoint."""

    name: str
    prefix: str
    open_clip: bool
    projection: bool = False  # build CLIPTextModelWithProjection (SDXL te2)
    drop_last_block: bool = False  # SD2: the penultimate layer is the output
    pad_token: Optional[str] = None


_SLOTS = {
    "sd1": (_Slot("te", "cond_stage_model.transformer.", open_clip=False),),
    "sd2": (_Slot("te", "cond_stage_model.model.", open_clip=True, drop_last_block=True,
          pad_token=SDXL_TE2_PAD_TOKEN),),  # SD2's tokenizer pads with "!" as kohya loads it
    "sdxl": (
        _Slot("te1", "conditioner.embedders.0.transformer.", open_clip=False),
        _Slot("te2", "conditioner.embedders.1.model.", open_clip=True, projection=True,
              pad_token=SDXL_TE2_PAD_TOKEN),
    ),
}


def _slots(arch: str) -> tuple[_Slot, ...]:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    return _SLOTS[arch]


def heads_for_width(width: int) -> int:
    head_dim = HEAD_DIM if width % HEAD_DIM == 0 else TINY_HEAD_DIM
    if width % head_dim:
        raise ValueError(f"cannot infer attention heads for text encoder width {width}")
    return width // head_dim


# ---------------------------------------------------------------- HF models


class _TextModelShell(nn.Module):
    """Puts back the ``text_model.`` level that transformers >= 5.6 flattened
    out of ``CLIPTextModel``, so module paths stay
    ``text_model.encoder.layers.N...`` (kohya's LoRA names) on every version.
    Anything else (``config``, ``dtype``, gradient checkpointing) is the inner
    model's.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.text_model = inner

    def forward(self, *args, **kwargs):
        return self.text_model(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("text_model")
            if inner is None:
                raise
            return getattr(inner, name)


def text_config(*, vocab_size: int, hidden_size: int, num_layers: int, intermediate_size: int,
                max_positions: int, hidden_act: str, projection_dim: Optional[int] = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        projection_dim=projection_dim or hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads_for_width(hidden_size),
        max_position_embeddings=max_positions,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        # the real ids: pooling then picks the first <|endoftext|>, which is
        # also where SD's argmax pooling lands (49407 is the largest id)
        bos_token_id=VOCAB_SIZE - 2,
        eos_token_id=VOCAB_SIZE - 1,
        pad_token_id=1,
    )


def _new_model(config, projection: bool, device="cpu", dtype=torch.float32) -> nn.Module:
    """An uninitialised model (weights are always loaded right after)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    # building on meta skips random init, which costs seconds for bigG
    with torch.device("meta"):
        model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    if not hasattr(model, "text_model"):
        model = _TextModelShell(model)
    model = model.to(dtype).to_empty(device=device)
    _reset_position_ids(model)
    return model


def _reset_position_ids(model: nn.Module) -> None:
    for name, buf in model.named_buffers():
        if name.endswith("position_ids"):
            with torch.no_grad():
                buf.copy_(torch.arange(buf.shape[-1], device=buf.device).expand_as(buf))


def hf_state_dict(model: nn.Module) -> dict:
    """``text_model.*`` (+ ``text_projection.weight``) tensors, any transformers version."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def _load_strict(model: nn.Module, state: dict, what: str) -> None:
    expected = hf_state_dict(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{what}: checkpoint does not match a CLIP text model; "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{what}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    # position_ids may be a persistent buffer (transformers < 4.31): keep ours
    model.load_state_dict(state, strict=False)


def _infer_config(hf: dict, hidden_act: str):
    prefix = "text_model.encoder.layers."
    layers = {int(k[len(prefix):].split(".")[0]) for k in hf if k.startswith(prefix)}
    if not layers or layers != set(range(len(layers))):
        raise ValueError(f"text encoder layers are not numbered 0..N-1: {sorted(layers)}")
    try:
        vocab_size, width = hf["text_model.embeddings.token_embedding.weight"].shape
        max_positions = hf["text_model.embeddings.position_embedding.weight"].shape[0]
        intermediate = hf[prefix + "0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"text encoder tensor {e} is missing from the checkpoint") from None
    projection = hf.get("text_projection.weight")
    return text_config(
        vocab_size=vocab_size, hidden_size=width, num_layers=len(layers), intermediate_size=intermediate,
        max_positions=max_positions, hidden_act=hidden_act,
        projection_dim=None if projection is None else projection.shape[0],
    )


# ------------------------------------------------------------ OpenCLIP layout

# per-block names: OpenCLIP -> HF (q/k/v are fused in OpenCLIP and handled apart)
_BLOCK_NAMES = {
    "ln_1": "layer_norm1",
    "attn.out_proj": "self_attn.out_proj",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_GLOBAL_NAMES = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
# carried by OpenCLIP checkpoints, unused by a text encoder
_OPEN_CLIP_PASSENGERS = ("logit_scale", "attn_mask")
_BLOCK_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_IN_PROJ_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


def _block_count(keys) -> int:
    """Number of OpenCLIP blocks, or -1 when they are not numbered 0..N-1."""
    found = set()
    for key in keys:
        if m := re.match(r"transformer\.resblocks\.(\d+)\.", key):
            found.add(int(m.group(1)))
    return len(found) if found == set(range(len(found))) else -1


def _open_clip_to_hf(oc: dict, slot: _Slot) -> tuple[dict, dict]:
    """(HF tensors, passengers) from one encoder's OpenCLIP tensors (prefix stripped)."""
    n_blocks = _block_count(oc)
    if n_blocks < 1:
        raise ValueError(f"{slot.prefix}: no OpenCLIP resblocks numbered 0..N-1 found")
    n_used = n_blocks - 1 if slot.drop_last_block else n_blocks
    hf, extra, unknown = {}, {}, []
    for key, value in oc.items():
        block = re.match(r"transformer\.resblocks\.(\d+)\.", key)
        if key in _GLOBAL_NAMES:
            hf[_GLOBAL_NAMES[key]] = value
        elif key == "text_projection" and slot.projection:
            hf["text_projection.weight"] = value.t().contiguous()  # x @ P == Linear(weight=P.T)
        elif key == "text_projection" or key in _OPEN_CLIP_PASSENGERS or (block and int(block.group(1)) >= n_used):
            extra[key] = value
        elif m := _IN_PROJ_KEY.match(key):
            q, k, v = value.chunk(3, dim=0)
            base = f"text_model.encoder.layers.{m.group(1)}.self_attn."
            for name, part in zip("qkv", (q, k, v)):
                hf[f"{base}{name}_proj.{m.group(2)}"] = part.contiguous()
        elif (m := _BLOCK_KEY.match(key)) and m.group(2) in _BLOCK_NAMES:
            hf[f"text_model.encoder.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{slot.prefix}: unexpected OpenCLIP keys {sorted(unknown)[:8]}")
    return hf, extra


def _hf_to_open_clip(hf: dict) -> dict:
    to_global = {v: k for k, v in _GLOBAL_NAMES.items()}
    to_block = {v: k for k, v in _BLOCK_NAMES.items()}
    oc = {}
    for key, value in hf.items():
        if key in to_global:
            oc[to_global[key]] = value
        elif key == "text_projection.weight":
            oc["text_projection"] = value.t().contiguous()
        elif m := re.match(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key):
            if m.group(2) == "q":
                base = f"text_model.encoder.layers.{m.group(1)}.self_attn."
                parts = [hf[f"{base}{n}_proj.{m.group(3)}"] for n in "qkv"]
                oc[f"transformer.resblocks.{m.group(1)}.attn.in_proj_{m.group(3)}"] = torch.cat(parts, dim=0)
        elif (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)) \
                and m.group(2) in to_block:
            oc[f"transformer.resblocks.{m.group(1)}.{to_block[m.group(2)]}.{m.group(3)}"] = value
        else:
            raise ValueError(f"no OpenCLIP name for text encoder tensor {key}")
    return oc


# ------------------------------------------------------------- public API


def _cast(tensors: dict, dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def _encoder_from_tensors(own: dict, slot: _Slot, tokenizer, dtype) -> TextEncoder:
    if slot.open_clip:
        hf, extra = _open_clip_to_hf(own, slot)
    else:
        hf = {k: v for k, v in own.items() if not k.endswith("position_ids")}
        extra = {k: v for k, v in own.items() if k.endswith("position_ids")}
    config = _infer_config(hf, hidden_act="gelu" if slot.open_clip else "quick_gelu")
    if slot.projection and "text_projection.weight" not in hf:
        raise ValueError(f"{slot.prefix}: text_projection is missing")
    model = _new_model(config, slot.projection, dtype=dtype)
    _load_strict(model, _cast(hf, dtype), slot.prefix)
    setattr(model, EXTRA_STATE_ATTR, extra)
    model.eval()
    return TextEncoder(name=slot.name, model=model, tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id)


def text_encoders_from_state_dict(state_dict: dict, arch: str, tokenizer_dir: Optional[str] = None,
                                  dtype=torch.float32) -> list[TextEncoder]:
    """The text encoder(s) of a full LDM checkpoint, in kohya's order."""
    encoders = []
    for slot in _slots(arch):
        own = {k[len(slot.prefix):]: v for k, v in state_dict.items() if k.startswith(slot.prefix)}
        if not own:
            raise ValueError(f"{arch} checkpoint has no text encoder tensors under {slot.prefix!r}")
        tokenizer = load_clip_tokenizer(tokenizer_dir, pad_token=slot.pad_token)
        encoders.append(_encoder_from_tensors(own, slot, tokenizer, dtype))
    return encoders


def text_encoders_to_state_dict(encoders: list[TextEncoder], arch: str) -> dict:
    """The inverse of :func:`text_encoders_from_state_dict` (LDM-prefixed keys).

    Tensors are the models' own (detached, not copied) except fused q/k/v and
    the transposed projection.
    """
    slots = _slots(arch)
    if len(encoders) != len(slots):
        raise ValueError(f"{arch} has {len(slots)} text encoder(s), got {len(encoders)}")
    out = {}
    for slot, encoder in zip(slots, encoders):
        hf = {k: v.detach() for k, v in hf_state_dict(encoder.model).items()}
        own = _hf_to_open_clip(hf) if slot.open_clip else hf
        own.update(getattr(encoder.model, EXTRA_STATE_ATTR, None) or {})
        out.update({slot.prefix + k: v for k, v in own.items()})
    return out


# ------------------------------------------------------------ tiny models

TINY_LAYERS = 3  # clip_skip 2 needs a penultimate layer that is not the first
TINY_WIDTHS = {"te": 32, "te1": 32, "te2": 48}


def _random_like(shapes: dict, gen: torch.Generator) -> dict:
    """Plausible weights: unit-scale activations, trained-looking LayerNorms.

    A final LayerNorm left at weight 1 / bias 0 makes the WebUI's emphasis
    rescaling (which divides by the mean of the output) blow up, so every
    LayerNorm gets weight 1 + noise and a clearly non-zero bias.
    """
    out = {}
    for key in sorted(shapes):
        shape = shapes[key]
        noise = torch.randn(shape, generator=gen)
        if "norm" in key:
            out[key] = (1 + 0.2 * noise) if key.endswith("weight") else (0.3 + 0.1 * noise)
        elif key.endswith("token_embedding.weight"):
            out[key] = 0.02 * noise
        elif key.endswith("position_embedding.weight"):
            out[key] = 0.01 * noise
        elif key.endswith("weight"):
            out[key] = noise / shape[1] ** 0.5
        else:
            out[key] = 0.02 * noise
    return out


def tiny_text_encoder_state_dict(arch: str, seed: int = 0) -> dict:
    """Random text encoder tensors of a tiny model in ``arch``'s LDM layout."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for slot in _slots(arch):
        width = TINY_WIDTHS[slot.name]
        layers = TINY_LAYERS + (1 if slot.drop_last_block else 0)
        config = text_config(vocab_size=VOCAB_SIZE, hidden_size=width, num_layers=layers,
                             intermediate_size=4 * width, max_positions=MODEL_MAX_LENGTH,
                             hidden_act="gelu" if slot.open_clip else "quick_gelu")
        # OpenCLIP towers always carry a projection, even where SD ignores it
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in hf_state_dict(_meta_model(config, slot.open_clip)).items()}
        hf = _random_like(shapes, gen)
        if slot.open_clip:
            own = _hf_to_open_clip(hf)
            own["logit_scale"] = torch.tensor(4.6052)  # ln(100), OpenCLIP's trained value
        else:
            own = hf
        out.update({slot.prefix + k: v for k, v in own.items()})
    return out


def _meta_model(config, projection: bool) -> nn.Module:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    return model if hasattr(model, "text_model") else _TextModelShell(model)


def open_clip_hf_parts(tensors: dict, arch: str) -> tuple[str, dict, nn.Module]:
    """An OpenCLIP text tower's tensors (SD2's encoder, SDXL's second) in the Hugging Face
    layout kohya trains: (the encoder's name, the HF state dict — views of ``tensors`` where
    the layout allows —, an empty HF model on the meta device to load it into). The same
    conversion the standalone loader uses, for hosts that hold OpenCLIP towers."""
    slot = _slots(arch)[-1]
    if not slot.open_clip:
        raise ValueError(f"{arch}'s last text encoder is not an OpenCLIP tower")
    hf, _passengers = _open_clip_to_hf(tensors, slot)
    config = _infer_config(hf, hidden_act="gelu")
    with torch.device("meta"):
        model = _meta_model(config, slot.projection)
    return slot.name, hf, model


def build_tiny_text_encoders(arch: str, seed: int = 0) -> list[TextEncoder]:
    """Tiny random CLIP(s) for ``arch``: real vocabulary and 77 positions,
    :data:`TINY_WIDTHS`, :data:`TINY_LAYERS` layers; deterministic in ``seed``."""
    return text_encoders_from_state_dict(tiny_text_encoder_state_dict(arch, seed), arch)


# ------------------------------------------------------- config folders


def text_encoder_config_dict(encoder: TextEncoder) -> dict:
    """A Hugging Face ``config.json`` for ``encoder.model``, readable by
    transformers 4.30 and 5.x alike (only long-standing fields)."""
    c = encoder.model.config
    projection = hasattr(encoder.model, "text_projection")
    return {
        "architectures": ["CLIPTextModelWithProjection" if projection else "CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "projection_dim": c.projection_dim,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "max_position_embeddings": c.max_position_embeddings,
        "hidden_act": c.hidden_act,
        "layer_norm_eps": c.layer_norm_eps,
        "attention_dropout": c.attention_dropout,
        "dropout": 0.0,
        "initializer_range": c.initializer_range,
        "initializer_factor": c.initializer_factor,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "torch_dtype": "float32",
    }


def write_text_encoder_folder(encoder: TextEncoder, directory) -> Path:
    """config.json plus tokenizer files (no weights): what a WebUI yaml's
    text encoder ``version`` may point at."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(text_encoder_config_dict(encoder), indent=2))
    pad = SDXL_TE2_PAD_TOKEN if encoder.pad_token_id == 0 else None
    write_tokenizer_files(directory, pad_token=pad)
    return directory


__all__ = [
    "TINY_LAYERS",
    "TINY_WIDTHS",
    "build_tiny_text_encoders",
    "heads_for_width",
    "hf_state_dict",
    "text_encoder_config_dict",
    "text_encoders_from_state_dict",
    "text_encoders_to_state_dict",
    "tiny_text_encoder_state_dict",
    "write_text_encoder_folder",
]
