"""The metadata a kohya LoRA file carries: ``ss_*`` training keys, the
``sshs_*`` hashes and the ``modelspec.*`` keys.

Metadata viewers, the WebUIs' Lora pages and the Civitai uploader read these
keys as kohya's ``train_network.py`` writes them: every value a string
(``str()`` of the Python value, so ``"None"``, ``"True"``, ``"(512, 512)"``),
nested ones JSON-encoded.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import time
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from safetensors.torch import save as serialize

NETWORK_MODULE = "networks.lora"
IMPLEMENTATION_NAME = "lora_trainer"

# Keys kohya always writes, with its argparse defaults where it has one: a file
# from a run that left a knob alone then reads as kohya's would.
ALWAYS: dict[str, Any] = {
    "session_id": None,
    "training_started_at": None,
    "output_name": None,
    "learning_rate": None,
    "text_encoder_lr": None,
    "unet_lr": None,
    "num_train_images": None,
    "num_validation_images": 0,
    "num_reg_images": 0,
    "num_batches_per_epoch": None,
    "num_epochs": None,
    "gradient_checkpointing": False,
    "gradient_accumulation_steps": 1,
    "max_train_steps": None,
    "lr_warmup_steps": 0,
    "lr_scheduler": "constant",
    "network_module": NETWORK_MODULE,
    "network_dim": None,
    "network_alpha": None,
    "network_dropout": None,
    "mixed_precision": "no",
    "full_fp16": False,
    "v2": None,  # from arch
    "base_model_version": None,  # from arch
    "clip_skip": None,
    "max_token_length": None,
    "cache_latents": False,
    "seed": None,
    "lowram": False,
    "noise_offset": None,
    "multires_noise_iterations": None,
    "multires_noise_discount": 0.3,
    "adaptive_noise_scale": None,
    "zero_terminal_snr": False,
    "training_comment": None,
    "optimizer": None,
    "max_grad_norm": 1.0,
    "caption_dropout_rate": 0.0,
    "caption_dropout_every_n_epochs": 0,
    "caption_tag_dropout_rate": 0.0,
    "face_crop_aug_range": None,
    "prior_loss_weight": 1.0,
    "min_snr_gamma": None,
    "scale_weight_norms": None,
    "ip_noise_gamma": None,
    "debiased_estimation": False,
    "noise_offset_random_strength": False,
    "ip_noise_gamma_random_strength": False,
    "loss_type": "l2",
    "huber_schedule": "snr",
    "huber_scale": 1.0,
    "huber_c": 0.1,
    "fp8_base": False,
    "fp8_base_unet": False,
    "validation_seed": None,
    "validation_split": 0.0,
    "max_validation_steps": None,
    "validate_every_n_epochs": None,
    "validate_every_n_steps": None,
    "resize_interpolation": None,
}

# Written only when given. The dataset keys are those of kohya's single-dataset
# (folder) branch; ``datasets`` is its dataset-config branch.
OPTIONAL = frozenset(
    {
        "batch_size_per_device",
        "total_batch_size",
        "resolution",
        "color_aug",
        "flip_aug",
        "random_crop",
        "shuffle_caption",
        "enable_bucket",
        "bucket_no_upscale",
        "min_bucket_reso",
        "max_bucket_reso",
        "keep_tokens",
        "dataset_dirs",
        "reg_dataset_dirs",
        "tag_frequency",
        "bucket_info",
        "datasets",
        "network_args",
        "sd_model_name",
        "sd_model_hash",
        "new_sd_model_hash",
        "vae_name",
        "vae_hash",
        "new_vae_hash",
        "sd_scripts_commit_hash",
        "training_finished_at",
        "steps",
        "epoch",
    }
)

# kohya's argparse types, so 8 and 8.0 print as kohya's file would ("8.0" for alpha)
FLOAT_KEYS = frozenset({
    "learning_rate", "unet_lr", "text_encoder_lr", "network_alpha", "network_dropout", "noise_offset",
    "multires_noise_discount", "adaptive_noise_scale", "max_grad_norm", "caption_dropout_rate",
    "caption_tag_dropout_rate", "prior_loss_weight", "min_snr_gamma", "scale_weight_norms", "ip_noise_gamma",
    "huber_scale", "huber_c", "validation_split",
})
INT_KEYS = frozenset({
    "session_id", "num_train_images", "num_validation_images", "num_reg_images", "num_batches_per_epoch",
    "num_epochs", "gradient_accumulation_steps", "max_train_steps", "network_dim", "clip_skip",
    "max_token_length", "seed", "multires_noise_iterations", "batch_size_per_device", "total_batch_size",
    "min_bucket_reso", "max_bucket_reso", "keep_tokens", "steps", "epoch",
})

# given as None, kohya still writes these: json.dumps(None) (bucket_info without buckets)
WRITTEN_AS_NULL = frozenset({"bucket_info"})
JSON_KEYS = frozenset({"dataset_dirs", "reg_dataset_dirs", "tag_frequency", "bucket_info", "datasets", "network_args"})

# kohya's SS_METADATA_MINIMUM_KEYS: what survives --no_metadata
MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args")


def base_model_version(arch: str, prediction_type: str = "epsilon") -> str:
    """``ss_base_model_version``: sd_v1, sd_v2, their ``_v`` v-prediction forms, sdxl_base_v1-0."""
    if arch == "sdxl":
        return "sdxl_base_v1-0"
    version = "sd_v2" if arch == "sd2" else "sd_v1"
    return version + ("_v" if prediction_type == "v_prediction" else "")


def resolution_tuple(resolution: Union[int, str, Sequence[int]]) -> tuple[int, int]:
    """kohya's parsed ``--resolution``: ``512`` / ``"512"`` / ``"512,768"`` -> (width, height)."""
    if isinstance(resolution, str):
        resolution = [int(part) for part in resolution.split(",")]
    if isinstance(resolution, int):
        resolution = [resolution]
    values = tuple(int(v) for v in resolution)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def network_args(**args: Any) -> dict[str, Any]:
    """``ss_network_args`` as kohya gets it from ``--network_args k=v``: values as strings, Nones left
    out; except ``dropout``, which kohya adds itself from ``--network_dropout`` as a number or null."""
    return {key: (value if key == "dropout" and not isinstance(value, str) else str(value))
            for key, value in args.items() if value is not None or key == "dropout"}


def optimizer_description(optimizer: Union[type, str], kwargs: Optional[Mapping[str, Any]] = None) -> str:
    """``ss_optimizer``: ``torch.optim.adamw.AdamW(weight_decay=0.01,betas=(0.9, 0.999))``."""
    name = optimizer if isinstance(optimizer, str) else f"{optimizer.__module__}.{optimizer.__name__}"
    args = ",".join(f"{k}={v}" for k, v in (kwargs or {}).items())
    return name + (f"({args})" if args else "")


def _encode(key: str, value: Any) -> str:
    if key in JSON_KEYS and not isinstance(value, str):
        if key == "network_args":
            value = network_args(**value)
        return json.dumps(value)
    if key == "resolution" and value is not None:
        value = resolution_tuple(value)  # kohya writes its parsed tuple: "(512, 512)"
    elif key in FLOAT_KEYS and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif key in INT_KEYS and isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def ss_metadata(arch: str, prediction_type: str = "epsilon", **values: Any) -> dict[str, str]:
    """kohya's ``ss_*`` training metadata.

    ``values`` are keyed without the ``ss_`` prefix (``learning_rate=1e-4``,
    ``tag_frequency={...}``). Keys kohya always writes are present, filled
    with kohya's defaults when not given; the others (dataset details, model
    names and hashes, ``network_args``…) only when given and not None. An
    unknown key is an error, to catch typos.
    """
    values = {k[3:] if k.startswith("ss_") else k: v for k, v in values.items()}
    unknown = sorted(set(values) - set(ALWAYS) - OPTIONAL)
    if unknown:
        raise ValueError(f"unknown ss_ metadata keys: {unknown}")
    filled = dict(ALWAYS)
    filled["v2"] = arch == "sd2"
    filled["base_model_version"] = base_model_version(arch, prediction_type)
    filled.update(values)
    if not filled.get("network_args"):
        filled.pop("network_args", None)  # kohya writes it only for --network_args
    return {f"ss_{key}": _encode(key, value) for key, value in filled.items()
            if key in ALWAYS or value is not None or key in WRITTEN_AS_NULL and key in values}


def checkpoint_metadata(
    metadata: Mapping[str, str], *, steps: int, epoch: int, finished_at: Optional[float] = None
) -> dict[str, str]:
    """What kohya stamps on each save: finish time, steps and epoch so far, and the modelspec
    date (kohya builds the modelspec at each save)."""
    out = dict(metadata)
    finished_at = time.time() if finished_at is None else finished_at
    out["ss_training_finished_at"] = str(finished_at)
    if "modelspec.date" in out:
        out["modelspec.date"] = datetime.datetime.fromtimestamp(int(finished_at)).isoformat()
    out["ss_steps"] = str(steps)
    out["ss_epoch"] = str(epoch)
    return out


def minimum_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """kohya's ``--no_metadata``: only the keys a loader needs to identify the network."""
    return {key: metadata[key] for key in MINIMUM_KEYS if key in metadata}


# --- hashes -------------------------------------------------------------------


def addnet_hash_safetensors(data: bytes) -> str:
    """sha256 of a safetensors file's tensor bytes (after the header), the
    additional-networks / WebUI "model hash" that ignores metadata edits."""
    header_len = int.from_bytes(data[:8], "little")
    return hashlib.sha256(memoryview(data)[8 + header_len :]).hexdigest()


def addnet_hash_legacy(data: bytes) -> str:
    """The old additional-networks hash: sha256 of the 64 KiB at offset 1 MiB, 8 hex digits."""
    return hashlib.sha256(memoryview(data)[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]


def add_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` plus ``sshs_model_hash`` / ``sshs_legacy_hash`` of ``tensors`` as they
    will be written (cast them first).

    As kohya does, the hashes are taken over a serialization carrying only the
    ``ss_*`` keys, so later edits of other metadata do not change them.
    """
    training_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = serialize(dict(tensors), training_only)
    out = dict(metadata)
    out["sshs_model_hash"] = addnet_hash_safetensors(data)
    out["sshs_legacy_hash"] = addnet_hash_legacy(data)
    return out


# --- modelspec ------------------------------------------------------------------

MODELSPEC_VERSION = "1.0.1"
IMPL_STABILITY_AI = "https://github.com/Stability-AI/generative-models"
IMPL_DIFFUSERS = "diffusers"


def modelspec_architecture(arch: str, prediction_type: str = "epsilon") -> str:
    if arch == "sdxl":
        base = "stable-diffusion-xl-v1-base"
    elif arch == "sd2":
        base = "stable-diffusion-v2-768-v" if prediction_type == "v_prediction" else "stable-diffusion-v2-512"
    else:
        base = "stable-diffusion-v1"
    return base + "/lora"


def default_resolution(arch: str, prediction_type: str = "epsilon") -> tuple[int, int]:
    if arch == "sdxl":
        return (1024, 1024)
    if arch == "sd2" and prediction_type == "v_prediction":
        return (768, 768)
    return (512, 512)


def modelspec_metadata(
    arch: str,
    prediction_type: str = "epsilon",
    *,
    title: Optional[str] = None,
    resolution: Union[int, str, Sequence[int], None] = None,
    timestamp: Optional[float] = None,
    author: Optional[str] = None,
    description: Optional[str] = None,
    license: Optional[str] = None,
    tags: Optional[str] = None,
    merged_from: Optional[str] = None,
    min_timestep: Optional[int] = None,
    max_timestep: Optional[int] = None,
    clip_skip: Optional[int] = None,
    implementation_version: Optional[str] = None,
    extra: Optional[Mapping[str, str]] = None,
) -> dict[str, str]:
    """``modelspec.*`` keys as kohya's ``sai_model_spec.build_metadata`` writes them for a LoRA.

    ``title`` is kohya's ``--metadata_title`` or else ``--output_name``;
    ``extra`` holds further modelspec fields (``usage_hint``, ``trigger_phrase``…).
    """
    timestamp = time.time() if timestamp is None else timestamp
    if title is None:
        title = f"LoRA@{timestamp}"
    width, height = default_resolution(arch, prediction_type) if resolution is None else resolution_tuple(resolution)
    if implementation_version is None:
        from lora_trainer import __version__

        implementation_version = f"{IMPLEMENTATION_NAME}/{__version__}"

    fields: dict[str, Optional[str]] = {
        "architecture": modelspec_architecture(arch, prediction_type),
        # kohya: an SDXL LoRA is keyed to sgm's layout, an SD1/SD2 one to diffusers'
        "implementation": IMPL_STABILITY_AI if arch == "sdxl" else IMPL_DIFFUSERS,
        "title": title,
        "resolution": f"{width}x{height}",
        "sai_model_spec": MODELSPEC_VERSION,
        "description": description,
        "author": author,
        # local time without microseconds, as kohya
        "date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
        "license": license,
        "tags": tags,
        "merged_from": merged_from,
        "prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "timestep_range": None,
        "encoder_layer": None if clip_skip is None else str(clip_skip),
    }
    if min_timestep is not None or max_timestep is not None:
        low = 0 if min_timestep is None else min_timestep
        high = 1000 if max_timestep is None else max_timestep
        fields["timestep_range"] = f"{low},{high}"
    fields.update({"implementation_version": implementation_version, **(extra or {})})
    return {
        (key if key.startswith("modelspec.") else f"modelspec.{key}"): str(value)
        for key, value in fields.items()
        if value is not None
    }
