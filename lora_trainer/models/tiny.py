"""Tiny random SD1 / SD2 / SDXL checkpoints for tests and WebUI smoke runs.

They keep the real block layout and key pattern (the same blocks, the same
places where a ResBlock changes width and so has a ``skip_connection``, the
same attention levels) and shrink only widths and transformer depths, so code
that indexes blocks the way the WebUIs and kohya do still works on them:

* SD1/SD2: model_channels 32, channel_mult 1,2,4,4, 2 res blocks, attention
  at downscale 4,2,1 with depth 1. SD1 keeps 8 heads; SD2's 64-wide heads do not
  fit a 32-channel level, so the tiny SD2 uses 32-wide heads, which its yaml
  states (``num_head_channels: 32``).
* SDXL: model_channels 32, channel_mult 1,2,4, 2 res blocks, transformer depth
  0,1,2 (real: 0,2,10), 64-wide heads as the real one (1 and 2 heads).
* VAE: 4 latent channels, 3 downsamples, 2 res blocks, channels 32,32,64,64.

Every tensor is random and non-zero, including those LDM initialises to zero
(``proj_out``, ``out_layers.3``, ``out.2``): a zero there would make a LoRA on
the layer, or on the one feeding it, invisible in tests. Weights are stored in
float16, as most published checkpoints are, to keep the files small.

``size="forge"`` (SD1 only) is the smallest checkpoint Forge loads. Forge's model
detection (huggingface_guess) takes an SD1.5 UNet only with 320 base channels,
768-wide context, conv ``proj_in`` / ``proj_out`` and no ADM input, and Forge builds
the text encoder and the VAE from SD1.5's own config files (full CLIP-L: 12 layers,
768 wide; full VAE: channels 128,256,512,512), whatever the file holds. So those two
are full size and only the UNet shrinks: one level (no down/up-sampling), one
ResBlock and one 8-head transformer per block (26 M parameters; the file is 465 MB
in fp16 with the 123 M-parameter text encoder and the 84 M-parameter VAE). An SDXL UNet is only recognised with SDXL's
real depths (2 and 10 transformer blocks), so there is no Forge-size SDXL.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from . import clip
from .base import ARCHITECTURES, DiffusionModel
from .ldm_unet import UNET_PREFIX, UNetConfig, UNetModel
from .ldm_vae import VAE_PREFIX, AutoencoderKL, VAEConfig
from .schedule import LINEAR_END, LINEAR_START, NUM_TIMESTEPS, scaled_linear_alphas_cumprod

# SDXL's y: pooled te2 output + (original size, crop top-left, target size),
# each number embedded into 256 sinusoid features
SDXL_SIZE_EMBED_DIM = 6 * 256
TINY_VAE = VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=2)
SIZES = ("tiny", "forge")
FORGE_VAE = VAEConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2)  # SD1.5's VAE
FORGE_CLIP_L = dict(hidden_size=768, num_layers=12, intermediate_size=3072)  # SD1.5's text encoder
STORAGE_DTYPE = torch.float16
# LDM zero-initialises these (residual branch outputs); trained weights are small there
_ZERO_INIT_SUFFIXES = ("out_layers.3", "proj_out", "out.2")


def _check_arch(arch: str, size: str = "tiny") -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    if size == "forge" and arch != "sd1":
        raise ValueError(f"there is no Forge-size {arch} checkpoint: Forge recognises an SDXL UNet only with SDXL's "
                         "real transformer depths (a full-size UNet); use --arch sd1 for a Forge test checkpoint")


def forge_unet_config() -> UNetConfig:
    """The Forge-size SD1 UNet: what Forge's detection requires, at one level."""
    return UNetConfig(
        model_channels=320, channel_mult=(1,), num_res_blocks=1, transformer_depth=(1,),
        transformer_depth_middle=1, context_dim=FORGE_CLIP_L["hidden_size"], use_linear=False, num_heads=8,
    )


def _forge_text_encoder_meta():
    with torch.device("meta"):
        config = clip.text_config(vocab_size=clip.VOCAB_SIZE, intermediate_size=FORGE_CLIP_L["intermediate_size"],
                                  hidden_size=FORGE_CLIP_L["hidden_size"], num_layers=FORGE_CLIP_L["num_layers"],
                                  max_positions=clip.MODEL_MAX_LENGTH, hidden_act="quick_gelu")
        return clip._meta_model(config, projection=False)


def _text_encoder_state_dict(arch: str, seed: int, size: str) -> dict:
    if size == "tiny":
        return clip.tiny_text_encoder_state_dict(arch, seed)
    shapes = {k: v.shape for k, v in clip.hf_state_dict(_forge_text_encoder_meta()).items()}
    hf = clip._random_like(shapes, torch.Generator().manual_seed(seed))
    return {"cond_stage_model.transformer." + k: v for k, v in hf.items()}


def _vae_config(size: str) -> VAEConfig:
    return FORGE_VAE if size == "forge" else TINY_VAE


def _text_dims(arch: str, te_sd: dict) -> tuple[int, Optional[int]]:
    """(UNet context width, SDXL pooled width) of the text encoder tensors."""
    if arch == "sd1":
        return te_sd["cond_stage_model.transformer.text_model.final_layer_norm.weight"].shape[0], None
    if arch == "sd2":
        return te_sd["cond_stage_model.model.ln_final.weight"].shape[0], None
    te1 = te_sd["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"].shape[0]
    te2 = te_sd["conditioner.embedders.1.model.ln_final.weight"].shape[0]
    return te1 + te2, te_sd["conditioner.embedders.1.model.text_projection"].shape[1]


def tiny_unet_config(arch: str, te_state_dict: Optional[dict] = None, size: str = "tiny") -> UNetConfig:
    """The tiny UNet's sizes; its context and pooled widths follow the tiny text encoders."""
    _check_arch(arch, size)
    if size == "forge":
        return forge_unet_config()
    te_state_dict = te_state_dict or clip.tiny_text_encoder_state_dict(arch, 0)
    context_dim, pooled_dim = _text_dims(arch, te_state_dict)
    if arch == "sdxl":
        return UNetConfig(
            model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=2, transformer_depth=(0, 1, 2),
            transformer_depth_middle=2, context_dim=context_dim, use_linear=True, num_head_channels=64,
            adm_in_channels=pooled_dim + SDXL_SIZE_EMBED_DIM,
        )
    heads = {"num_heads": 8} if arch == "sd1" else {"num_head_channels": 32}
    return UNetConfig(
        model_channels=32, channel_mult=(1, 2, 4, 4), num_res_blocks=2, transformer_depth=(1, 1, 1, 0),
        transformer_depth_middle=1, context_dim=context_dim, use_linear=arch == "sd2", **heads,
    )


def random_weights(module: nn.Module, generator: torch.Generator) -> dict:
    """Plausible non-zero weights for every tensor of ``module`` (may live on meta).

    Keys are drawn in sorted order, so the values depend only on the seed and
    the key set, not on module construction order.
    """
    norms = {n for n, m in module.named_modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))}
    out = {}
    for key, ref in sorted(module.state_dict().items()):
        owner, kind = key.rsplit(".", 1)
        noise = torch.randn(tuple(ref.shape), generator=generator)
        if owner in norms:
            out[key] = 1 + 0.1 * noise if kind == "weight" else 0.1 * noise
        elif kind == "bias":
            out[key] = 0.02 * noise
        else:
            scale = ref[0].numel() ** -0.5  # unit-variance outputs for unit-variance inputs
            if owner.endswith(_ZERO_INIT_SUFFIXES):
                scale *= 0.3
            out[key] = scale * noise
    return out


def checkpoint_shapes(arch: str, size: str = "tiny") -> dict[str, tuple[int, ...]]:
    """Key -> shape of the checkpoint :func:`tiny_state_dict` writes, without making any tensor."""
    _check_arch(arch, size)
    if size == "forge":
        te = {"cond_stage_model.transformer." + k: tuple(v.shape)
              for k, v in clip.hf_state_dict(_forge_text_encoder_meta()).items()}
    else:
        te = {k: tuple(v.shape) for k, v in clip.tiny_text_encoder_state_dict(arch, 0).items()}
    with torch.device("meta"):
        unet = UNetModel(tiny_unet_config(arch, size=size))
        vae = AutoencoderKL(_vae_config(size))
    out = {UNET_PREFIX + k: tuple(v.shape) for k, v in unet.state_dict().items()}
    out.update({VAE_PREFIX + k: tuple(v.shape) for k, v in vae.state_dict().items()})
    out.update(te)
    if arch != "sdxl":
        out["alphas_cumprod"] = (NUM_TIMESTEPS,)
    return out


def tiny_state_dict(arch: str, seed: int = 0, dtype: torch.dtype = STORAGE_DTYPE, size: str = "tiny") -> dict:
    """A full single-file checkpoint dict (LDM keys) of a tiny random ``arch`` model
    (``size="forge"``: the smallest SD1 checkpoint Forge loads, see the module notes)."""
    _check_arch(arch, size)
    te_sd = _text_encoder_state_dict(arch, seed, size)
    with torch.device("meta"):
        unet, vae = UNetModel(tiny_unet_config(arch, te_sd, size)), AutoencoderKL(_vae_config(size))
    # own streams per part, so that resizing one part leaves the others' values alone
    unet_sd = random_weights(unet, torch.Generator().manual_seed(seed + 1_000_003))
    vae_sd = random_weights(vae, torch.Generator().manual_seed(seed + 2_000_003))
    out = {UNET_PREFIX + k: v for k, v in unet_sd.items()}
    out.update({VAE_PREFIX + k: v for k, v in vae_sd.items()})
    out.update(te_sd)
    out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
    if arch != "sdxl":  # SD1/SD2 files carry their schedule, SDXL files do not
        out["alphas_cumprod"] = scaled_linear_alphas_cumprod().float()
    return out


def build_tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                     prediction_type: str = "epsilon") -> DiffusionModel:
    """The tiny model in memory, loaded exactly as its written checkpoint would be."""
    from .standalone import model_from_state_dict

    sd = tiny_state_dict(arch, seed)
    return model_from_state_dict(
        sd,
        yaml_config=tiny_yaml_config(arch, prediction_type=prediction_type),
        dtype=dtype,
        name=f"tiny_{arch}.safetensors",
    )


# ------------------------------------------------------------ yaml


def _open_clip_arch_name(arch: str) -> str:
    return f"lora-trainer-tiny-{arch}-text"


def _open_clip_model_config(te_sd: dict, prefix: str) -> dict:
    """An ``open_clip`` model config (for ``open_clip.add_model_config``) of a text tower."""
    width = te_sd[prefix + "ln_final.weight"].shape[0]
    blocks = prefix + "transformer.resblocks."
    layers = len({k[len(blocks):].split(".")[0] for k in te_sd if k.startswith(blocks)})
    return {
        "embed_dim": te_sd[prefix + "text_projection"].shape[1],
        # open_clip always builds a vision tower; SD deletes it, so keep it minimal
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 64, "patch_size": 16},
        "text_cfg": {
            "context_length": te_sd[prefix + "positional_embedding"].shape[0],
            "vocab_size": te_sd[prefix + "token_embedding.weight"].shape[0],
            "width": width,
            "heads": clip.heads_for_width(width),
            "layers": layers,
        },
    }


def _unet_params(arch: str, c: UNetConfig) -> dict:
    depths = {c.transformer_depth[i] for i in c.attention_levels}
    p = {
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "model_channels": c.model_channels,
        "attention_resolutions": sorted(c.attention_resolutions, reverse=True),
        "num_res_blocks": c.num_res_blocks,
        "channel_mult": list(c.channel_mult),
    }
    if c.num_head_channels > 0:
        p["num_head_channels"] = c.num_head_channels
    else:
        p["num_heads"] = c.num_heads
    p["use_spatial_transformer"] = True
    if c.use_linear:
        p["use_linear_in_transformer"] = True
    if arch == "sdxl":
        p = {"adm_in_channels": c.adm_in_channels, "num_classes": "sequential", "use_checkpoint": True, **p}
        p["transformer_depth"] = list(c.transformer_depth)
        p["transformer_depth_middle"] = c.transformer_depth_middle
        p["context_dim"] = c.context_dim
        p["spatial_transformer_attn_type"] = "softmax-xformers"
    else:
        # LDM's UNetModel takes one depth for every level
        if len(depths) != 1 or c.transformer_depth_middle not in depths:
            raise ValueError(f"an LDM yaml cannot express transformer depths {c.transformer_depth}")
        p = {"use_checkpoint": True, "image_size": 32, **p}
        p["transformer_depth"] = depths.pop()
        p["context_dim"] = c.context_dim
    p["legacy"] = False
    return p


def _ddconfig(c: VAEConfig, sdxl: bool) -> dict:
    d = {"attn_type": "vanilla-xformers"} if sdxl else {}
    d.update({
        "double_z": True, "z_channels": c.z_channels, "resolution": 256, "in_channels": c.in_channels,
        "out_ch": c.out_ch, "ch": c.ch, "ch_mult": list(c.ch_mult), "num_res_blocks": c.num_res_blocks,
        "attn_resolutions": [], "dropout": 0.0,
    })
    return d


def ldm_yaml_config(
    arch: str,
    unet: UNetConfig,
    vae: VAEConfig,
    prediction_type: str = "epsilon",
    text_encoder_dir: Optional[str] = None,
    te1_layer_idx: int = 11,
    open_clip_arch: Optional[str] = None,
) -> dict:
    """A WebUI model config in the layout of Stability's v1-inference.yaml,
    v2-inference(-v).yaml or sd_xl_base.yaml, with the given sizes.

    ``text_encoder_dir`` becomes the CLIP-L ``version`` (a folder with
    config.json and tokenizer files; without it the hub id stays implicit),
    ``te1_layer_idx`` SDXL's CLIP-L hidden layer (the penultimate),
    ``open_clip_arch`` the OpenCLIP tower's arch name (SD2 / SDXL te2).
    """
    _check_arch(arch)
    unet_params = _unet_params(arch, unet)
    first_stage = {"embed_dim": vae.embed_dim, "monitor": "val/rec_loss", "ddconfig": _ddconfig(vae, arch == "sdxl"),
                   "lossconfig": {"target": "torch.nn.Identity"}}
    v = prediction_type == "v_prediction"

    if arch == "sdxl":
        te1 = {"layer": "hidden", "layer_idx": te1_layer_idx}
        if text_encoder_dir:
            te1["version"] = str(text_encoder_dir)
        te2 = {"arch": open_clip_arch or "ViT-bigG-14", "version": None if open_clip_arch else "laion2b_s39b_b160k",
               "freeze": True, "layer": "penultimate", "always_return_pooled": True, "legacy": False}
        scaling = "VScaling" if v else "EpsScaling"
        weighting = "VWeighting" if v else "EpsWeighting"

        def size_embedder(key: str) -> dict:
            return {"is_trainable": False, "input_key": key,
                    "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND", "params": {"outdim": 256}}

        return {"model": {"target": "sgm.models.diffusion.DiffusionEngine", "params": {
            "scale_factor": 0.13025,
            "disable_first_stage_autocast": True,
            "denoiser_config": {"target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser", "params": {
                "num_idx": NUM_TIMESTEPS,
                "weighting_config": {"target": f"sgm.modules.diffusionmodules.denoiser_weighting.{weighting}"},
                "scaling_config": {"target": f"sgm.modules.diffusionmodules.denoiser_scaling.{scaling}"},
                "discretization_config": {
                    "target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"},
            }},
            "network_config": {"target": "sgm.modules.diffusionmodules.openaimodel.UNetModel",
                               "params": unet_params},
            "conditioner_config": {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": [
                {"is_trainable": False, "input_key": "txt",
                 "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder", "params": te1},
                {"is_trainable": False, "input_key": "txt",
                 "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2", "params": te2},
                size_embedder("original_size_as_tuple"),
                size_embedder("crop_coords_top_left"),
                size_embedder("target_size_as_tuple"),
            ]}},
            "first_stage_config": {"target": "sgm.models.autoencoder.AutoencoderKLInferenceWrapper",
                                   "params": first_stage},
        }}}

    params = {
        "linear_start": LINEAR_START, "linear_end": LINEAR_END, "num_timesteps_cond": 1, "log_every_t": 200,
        "timesteps": NUM_TIMESTEPS, "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": 64,
        "channels": 4, "cond_stage_trainable": False, "conditioning_key": "crossattn",
        "monitor": "val/loss_simple_ema", "scale_factor": 0.18215, "use_ema": False,
    }
    if v:
        params = {"parameterization": "v", **params}
    params["unet_config"] = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet_params}
    params["first_stage_config"] = {"target": "ldm.models.autoencoder.AutoencoderKL", "params": first_stage}
    if arch == "sd1":
        cond = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}
        if text_encoder_dir:
            cond["params"] = {"version": str(text_encoder_dir)}
    else:
        cond = {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                "params": {"freeze": True, "layer": "penultimate"}}
        if open_clip_arch:
            cond["params"].update({"arch": open_clip_arch, "version": None})
    params["cond_stage_config"] = cond
    return {"model": {"base_learning_rate": 1.0e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                      "params": params}}


def tiny_yaml_config(arch: str, prediction_type: str = "epsilon", text_encoder_dir: Optional[str] = None,
                     size: str = "tiny") -> dict:
    """The yaml config of the tiny ``arch`` model."""
    _check_arch(arch, size)
    if size == "forge":
        return ldm_yaml_config(arch, forge_unet_config(), FORGE_VAE, prediction_type=prediction_type,
                               text_encoder_dir=text_encoder_dir)
    return ldm_yaml_config(
        arch, tiny_unet_config(arch), TINY_VAE, prediction_type=prediction_type,
        text_encoder_dir=text_encoder_dir, te1_layer_idx=clip.TINY_LAYERS - 1,
        open_clip_arch=None if arch == "sd1" else _open_clip_arch_name(arch),
    )


# ------------------------------------------------------------ files


def write_tiny_checkpoint(arch: str, out_path, seed: int = 0,
                          prediction_type: str = "epsilon", size: str = "tiny") -> dict[str, Path]:
    """Write ``out_path`` (.safetensors) with a same-stem .yaml and the text
    encoder folder(s) the yaml names, as the WebUIs expect beside a checkpoint.
    ``size="forge"``: the smallest SD1 checkpoint Forge loads (see the module notes).

    Returns the written paths: ``checkpoint``, ``yaml``, ``text_encoder`` (the
    CLIP-L folder: config.json + tokenizer files) and, for SD2/SDXL,
    ``open_clip_config`` (a json for ``open_clip.add_model_config``: WebUIs
    build OpenCLIP towers by arch name, and the tiny arch is no registered one).
    """
    from safetensors.torch import save_file

    _check_arch(arch, size)
    out_path = Path(out_path).resolve()
    if out_path.suffix != ".safetensors":
        raise ValueError(f"{out_path}: the tiny checkpoint is written as .safetensors")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stem = out_path.with_suffix("")
    sd = tiny_state_dict(arch, seed, size=size)
    written = {"checkpoint": out_path, "yaml": out_path.with_suffix(".yaml")}

    encoders = clip.text_encoders_from_state_dict(sd, arch)
    te_dir = None
    if arch in ("sd1", "sdxl"):
        te_dir = clip.write_text_encoder_folder(encoders[0], Path(f"{stem}_{encoders[0].name}"))
        written["text_encoder"] = te_dir
    if arch in ("sd2", "sdxl"):
        prefix = "cond_stage_model.model." if arch == "sd2" else "conditioner.embedders.1.model."
        name = _open_clip_arch_name(arch)
        oc_path = Path(f"{stem}_open_clip") / f"{name}.json"
        oc_path.parent.mkdir(exist_ok=True)
        oc_path.write_text(json.dumps(_open_clip_model_config(sd, prefix), indent=2))
        written["open_clip_config"] = oc_path

    import yaml

    config = tiny_yaml_config(arch, prediction_type=prediction_type, text_encoder_dir=te_dir, size=size)
    header = (
        f"# Tiny random {arch} test model written by lora_trainer.models.tiny (seed {seed}).\n"
        "# Real block layout, shrunken widths; not a usable image model.\n"
    )
    if size == "forge":
        header = (
            f"# Forge-size random {arch} test model written by lora_trainer.models.tiny (seed {seed}).\n"
            "# Full-size CLIP-L and VAE, a one-level 320-channel UNet; not a usable image model.\n"
        )
    if "open_clip_config" in written:
        header += (
            f"# Its OpenCLIP text tower is no registered open_clip arch: call\n"
            f"# open_clip.add_model_config('{written['open_clip_config']}') before loading it.\n"
        )
    written["yaml"].write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    save_file(sd, str(out_path), metadata={"format": "pt"})
    return written
