"""The model interface the training loop talks to.

Every host (standalone file loader, AUTOMATIC1111, Forge) lends its model to the
core as a :class:`DiffusionModel`. The loop never looks behind it: it calls the
UNet, the text encoders and the VAE only through these attributes, and finds
the modules that may carry a LoRA through ``unet`` / ``TextEncoder.model``,
whose module paths follow the original LDM layout (UNet) and the Hugging Face
CLIP layout (text encoders) — the two layouts kohya's key names are built from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

ARCHITECTURES = ("sd1", "sd2", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class TextEncoder:
    """One CLIP text encoder.

    ``model`` behaves like ``transformers.CLIPTextModel`` (or
    ``CLIPTextModelWithProjection`` for SDXL's second encoder): calling it with
    ``input_ids`` and ``output_hidden_states=True`` returns an object with
    ``hidden_states`` (embeddings + every layer) and ``last_hidden_state``;
    ``model.text_model.final_layer_norm`` exists, and ``model.text_projection``
    for the projected (SDXL second) encoder. Its ``named_modules()`` paths are
    Hugging Face paths (``text_model.encoder.layers.0.self_attn.q_proj``).
    """

    name: str  # kohya prefix stem: "te" (SD1/SD2), "te1" / "te2" (SDXL)
    model: nn.Module
    tokenizer: Any  # transformers.CLIPTokenizer-like: __call__ -> {"input_ids": ...}
    # SDXL's second tokenizer pads with "!" (id 0), not with <|endoftext|>
    pad_token_id: Optional[int] = None

    @property
    def model_max_length(self) -> int:
        return int(getattr(self.tokenizer, "model_max_length", 77))


@dataclass
class DiffusionModel:
    """What a host lends to the core for one training.

    ``unet(x, timesteps, context, y=None)`` is the LDM ``UNetModel`` call
    (``y`` is SDXL's pooled-text + size vector). ``vae_encode`` takes images in
    [-1, 1] (B,3,H,W) and returns latents already multiplied by the scale
    factor; ``vae_decode`` is its inverse.
    """

    arch: str
    prediction_type: str
    unet: nn.Module
    text_encoders: list[TextEncoder]
    alphas_cumprod: torch.Tensor  # (1000,), float64 or float32, on CPU
    vae_encode: Callable[[torch.Tensor], torch.Tensor]
    vae_decode: Callable[[torch.Tensor], torch.Tensor]
    vae_scale_factor: float
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32  # storage dtype of the lent weights
    name: str = ""  # file name of the checkpoint, for ss_sd_model_name
    model_hash: str = ""  # the WebUI's legacy 8-hex hash, for ss_sd_model_hash
    model_sha256: str = ""  # full sha256 of the file, for ss_new_sd_model_hash
    vae: Optional[nn.Module] = None  # the module behind vae_encode/decode, for moving it

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; expected one of {ARCHITECTURES}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {self.prediction_type!r}")

    @property
    def is_sdxl(self) -> bool:
        return self.arch == "sdxl"
