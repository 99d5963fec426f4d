"""Load a single-file SD checkpoint (``.safetensors`` / ``.ckpt``) without a WebUI.

The result is the same :class:`~lora_trainer.models.base.DiffusionModel` a
WebUI host lends, built from our own LDM-layout modules, so the training loop
cannot tell the difference.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional

import torch

from . import clip
from .base import DiffusionModel
from .detect import (
    detect_checkpoint,
    detect_prediction_type,
    read_sidecar_yaml,
    sd2_unet_predicts_v,
    unet_params_from_yaml,
)
from .ldm_unet import UNET_PREFIX, strip_prefix, unet_from_state_dict
from .ldm_vae import VAE_PREFIX, AutoencoderKL, vae_from_state_dict
from .schedule import alphas_cumprod_from_state_dict

VAE_SCALE_FACTORS = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}


def read_state_dict(path) -> dict:
    """All tensors of a checkpoint file, on CPU, in their stored dtype."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        # never unpickle arbitrary objects from a downloaded file
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refusing to load, the file holds more than plain tensors ({e}). "
            "Convert it to .safetensors with a tool you trust."
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a checkpoint (found {type(obj).__name__}, expected a dict of tensors)")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _heads_from_yaml(unet_params: dict) -> dict:
    channels = unet_params.get("num_head_channels", -1)
    if channels and channels > 0:
        return {"num_head_channels": int(channels)}
    heads = unet_params.get("num_heads", -1)
    if heads and heads > 0:
        return {"num_heads": int(heads)}
    return {}


def _text_encoder_folder(yaml_config: Optional[dict]) -> Optional[str]:
    """The local folder a yaml's first text encoder ``version`` names, if it
    holds tokenizer files (real yamls name a hub id, which we never fetch)."""
    if not yaml_config:
        return None
    params = yaml_config["model"].get("params", {}) or {}
    candidates = []
    cond = params.get("cond_stage_config") or {}
    candidates.append((cond.get("params") or {}).get("version"))
    for emb in ((params.get("conditioner_config") or {}).get("params") or {}).get("emb_models", []) or []:
        candidates.append((emb.get("params") or {}).get("version"))
    for version in candidates:
        if isinstance(version, str) and (Path(version) / "vocab.json").is_file():
            return version
    return None


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    return module.eval()


def _vae_functions(vae: AutoencoderKL, scale: float):
    # The VAE is frozen in LoRA training: no graph is ever wanted through it.
    @torch.no_grad()
    def vae_encode(images: torch.Tensor) -> torch.Tensor:
        p = next(vae.parameters())
        # a random draw, as kohya caches (latent_dist.sample()), not the mean
        return vae.encode(images.to(device=p.device, dtype=p.dtype)).sample() * scale

    @torch.no_grad()
    def vae_decode(latents: torch.Tensor) -> torch.Tensor:
        p = next(vae.parameters())
        return vae.decode(latents.to(device=p.device, dtype=p.dtype) / scale)

    return vae_encode, vae_decode


def model_from_state_dict(
    state_dict: dict,
    *,
    path: str = "<state dict>",
    yaml_config: Optional[dict] = None,
    prediction_type: Optional[str] = None,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    name: str = "",
) -> DiffusionModel:
    """A :class:`DiffusionModel` from a full LDM checkpoint dict.

    ``yaml_config`` is the parsed sidecar yaml (head counts, schedule,
    prediction type, text encoder folder); ``prediction_type`` overrides it.
    """
    unet_params = unet_params_from_yaml(yaml_config)
    info = detect_checkpoint(state_dict, path, **_heads_from_yaml(unet_params))
    device = torch.device(device)

    unet = _frozen(unet_from_state_dict(strip_prefix(state_dict, UNET_PREFIX), info.unet, dtype, device))
    vae = _frozen(vae_from_state_dict(strip_prefix(state_dict, VAE_PREFIX), info.vae, dtype, device))
    encoders = clip.text_encoders_from_state_dict(
        state_dict, info.arch, tokenizer_dir=_text_encoder_folder(yaml_config), dtype=dtype
    )
    for te in encoders:
        _frozen(te.model.to(device))

    found = detect_prediction_type(state_dict=state_dict, override=prediction_type, yaml_config=yaml_config)
    if found is None and info.arch == "sd2" and yaml_config is None:
        # as the WebUI does for an SD2 file without a yaml (512-base vs 768-v)
        found = "v_prediction" if sd2_unet_predicts_v(unet, info.unet.context_dim) else "epsilon"
    model_params = (yaml_config or {}).get("model", {}).get("params", {}) or {}
    scale = float(model_params.get("scale_factor", VAE_SCALE_FACTORS[info.arch]))
    vae_encode, vae_decode = _vae_functions(vae, scale)
    return DiffusionModel(
        arch=info.arch,
        prediction_type=found or "epsilon",
        unet=unet,
        text_encoders=encoders,
        alphas_cumprod=alphas_cumprod_from_state_dict(
            state_dict, model_params.get("linear_start"), model_params.get("linear_end")
        ),
        vae_encode=vae_encode,
        vae_decode=vae_decode,
        vae_scale_factor=scale,
        device=device,
        dtype=dtype,
        name=name,
        vae=vae,
    )


def load_checkpoint(
    path, device="cpu", dtype: torch.dtype = torch.float32, prediction_type: Optional[str] = None
) -> DiffusionModel:
    """Load ``path`` (``.safetensors`` or ``.ckpt``) and the same-stem ``.yaml`` beside it, if any."""
    path = Path(path)
    state_dict = read_state_dict(path)
    return model_from_state_dict(
        state_dict,
        path=str(path),
        yaml_config=read_sidecar_yaml(path),
        prediction_type=prediction_type,
        device=device,
        dtype=dtype,
        name=path.name,
    )
