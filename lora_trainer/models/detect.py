"""What a checkpoint file holds: SD architecture and sizes from its tensors,
prediction type from the ``.yaml`` the WebUIs read beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .base import PREDICTION_TYPES
from .ldm_unet import UNET_PREFIX, UNetConfig, strip_prefix, unet_config_from_state_dict
from .ldm_vae import VAE_PREFIX, VAEConfig, vae_config_from_state_dict


class NotAStableDiffusionCheckpoint(ValueError):
    """The file is readable but is no SD1/SD2/SDXL single-file checkpoint."""


# the text encoder tensors each architecture must carry
TEXT_ENCODER_PREFIXES = {
    "sd1": ("cond_stage_model.transformer.",),
    "sd2": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}

# (substring of some key, what the file probably is) for a helpful refusal
_OTHER_KINDS = (
    ("lora_unet_", "a LoRA / LyCORIS network"),
    ("lora_te", "a LoRA / LyCORIS network"),
    (".lora_down.", "a LoRA network"),
    (".lora_A.", "a LoRA network (PEFT format)"),
    ("hada_w1_a", "a LoHa network"),
    ("joint_blocks.", "a Stable Diffusion 3 model"),
    ("double_blocks.", "a Flux model"),
    ("single_transformer_blocks.", "a Flux / DiT model in diffusers format"),
    ("transformer_blocks.0.attn.add_k_proj", "a DiT model in diffusers format"),
    ("down_blocks.0.resnets.0.conv1.weight", "a diffusers-format UNet or VAE (not a single-file checkpoint)"),
    ("string_to_param", "a textual-inversion embedding"),
    ("emb_params", "a textual-inversion embedding"),
    ("encoder.down.0.block.0.conv1.weight", "a standalone VAE"),
    ("control_model.", "a ControlNet"),
    ("input_hint_block.", "a ControlNet"),
)


@dataclass
class CheckpointInfo:
    arch: str
    unet: UNetConfig
    vae: VAEConfig


def _what_else(keys) -> str:
    for needle, kind in _OTHER_KINDS:
        if any(needle in k for k in keys):
            return kind
    return "no Stable Diffusion UNet (model.diffusion_model.*) was found"


def detect_checkpoint(
    state_dict: dict,
    path: str = "<state dict>",
    num_heads: Optional[int] = None,
    num_head_channels: Optional[int] = None,
) -> CheckpointInfo:
    """Architecture and sizes of a full LDM checkpoint, from key names and shapes only.

    The UNet decides (SDXL has a label embedding, SD2 linear transformer
    projections, SD1 1x1 convs); the text encoder keys must then agree.
    """
    keys = list(state_dict)
    if UNET_PREFIX + "input_blocks.0.0.weight" not in state_dict:
        raise NotAStableDiffusionCheckpoint(
            f"{path}: not a Stable Diffusion 1.x/2.x/XL checkpoint: it looks like {_what_else(keys)}"
        )
    unet_sd = strip_prefix(state_dict, UNET_PREFIX)
    try:
        unet = unet_config_from_state_dict(unet_sd, num_heads=num_heads, num_head_channels=num_head_channels)
    except (KeyError, ValueError) as e:
        raise NotAStableDiffusionCheckpoint(f"{path}: UNet has an unknown layout ({e})") from None

    if unet.adm_in_channels and not any(k.startswith("conditioner.") for k in keys):
        raise NotAStableDiffusionCheckpoint(
            f"{path}: a UNet with a class/image embedding but no SDXL conditioner (an unCLIP model?) "
            "is not supported"
        )
    if unet.adm_in_channels:
        arch = "sdxl"
    elif unet.use_linear:
        arch = "sd2"
    else:
        arch = "sd1"

    if unet.in_channels != 4:
        raise NotAStableDiffusionCheckpoint(
            f"{path}: the UNet takes {unet.in_channels} input channels (an inpainting or "
            "instruct-pix2pix model); only plain 4-channel text-to-image checkpoints are supported"
        )
    if arch == "sdxl" and any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise NotAStableDiffusionCheckpoint(f"{path}: an SDXL refiner checkpoint; only SDXL base models are supported")
    for prefix in TEXT_ENCODER_PREFIXES[arch]:
        if not any(k.startswith(prefix) for k in keys):
            raise NotAStableDiffusionCheckpoint(
                f"{path}: looks like {arch} from its UNet but has no text encoder tensors under {prefix!r}"
            )
    vae_sd = strip_prefix(state_dict, VAE_PREFIX)
    if "encoder.conv_in.weight" not in vae_sd:
        raise NotAStableDiffusionCheckpoint(f"{path}: has no VAE (first_stage_model.*)")
    return CheckpointInfo(arch=arch, unet=unet, vae=vae_config_from_state_dict(vae_sd))


# ------------------------------------------------------------ sidecar yaml


def sidecar_yaml_path(checkpoint_path) -> Optional[Path]:
    """``model.yaml`` beside ``model.safetensors``, as the WebUIs look for it."""
    path = Path(checkpoint_path)
    candidate = path.with_suffix(".yaml")
    return candidate if candidate.is_file() else None


def read_sidecar_yaml(checkpoint_path) -> Optional[dict]:
    path = sidecar_yaml_path(checkpoint_path)
    if path is None:
        return None
    import yaml

    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{path}: not an LDM model config (no 'model' section)")
    return config


def _model_params(config: Optional[dict]) -> dict:
    if not config:
        return {}
    return config.get("model", {}).get("params", {}) or {}


def unet_params_from_yaml(config: Optional[dict]) -> dict:
    """``unet_config`` (LDM) or ``network_config`` (SGM) params, or {}."""
    params = _model_params(config)
    section = params.get("unet_config") or params.get("network_config") or {}
    return section.get("params", {}) or {}


def prediction_type_from_yaml(config: Optional[dict]) -> Optional[str]:
    """'v_prediction' for ``parameterization: "v"`` (LDM) or a V-scaling denoiser (SGM)."""
    params = _model_params(config)
    if params.get("parameterization") == "v":
        return "v_prediction"
    if params.get("parameterization") in ("eps", "epsilon"):
        return "epsilon"
    scaling = (((params.get("denoiser_config") or {}).get("params") or {}).get("scaling_config") or {})
    target = scaling.get("target", "")
    if target.endswith("VScaling"):
        return "v_prediction"
    if target.endswith("EpsScaling"):
        return "epsilon"
    return None


def detect_prediction_type(
    checkpoint_path=None,
    state_dict: Optional[dict] = None,
    override: Optional[str] = None,
    yaml_config: Optional[dict] = None,
) -> Optional[str]:
    """The override, else the sidecar yaml's, else a ``v_pred`` marker key
    (the convention of v-prediction SDXL fine-tunes), else None (unknown).

    Callers treat None as epsilon, except that the WebUI probes SD2 files
    without a yaml; see :func:`sd2_unet_predicts_v`.
    """
    if override is not None:
        if override == "v":
            override = "v_prediction"
        if override not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {override!r}; expected one of {PREDICTION_TYPES}")
        return override
    if yaml_config is None and checkpoint_path is not None:
        yaml_config = read_sidecar_yaml(checkpoint_path)
    found = prediction_type_from_yaml(yaml_config)
    if found:
        return found
    if state_dict is not None and "v_pred" in state_dict:
        return "v_prediction"
    return None


@torch.no_grad()
def sd2_unet_predicts_v(unet: torch.nn.Module, context_dim: int) -> bool:
    """The WebUI's probe for SD2 files without a yaml (768-v vs 512-base).

    On a constant half-grey latent at the last timestep an epsilon model
    predicts noise close to the input, a v model something far below it.
    """
    p = next(unet.parameters())
    x = torch.full((1, 4, 8, 8), 0.5, device=p.device, dtype=p.dtype)
    context = torch.full((1, 2, context_dim), 0.5, device=p.device, dtype=p.dtype)
    t = torch.tensor([999], device=p.device)
    out = unet(x, t, context)
    return (out.float() - x.float()).mean().item() < -1
