"""How long a config trains, before it trains: kohya's counts from a quick dataset scan.

The tab calls :func:`estimate` live while the user edits. It scans the folders
(image headers only, no pixel decoding), buckets the images as training will and
counts batches and steps with the same functions the loop uses
(:class:`~lora_trainer.dataset.LoraDataset`, :func:`~lora_trainer.dataset.count_steps`),
so the totals are the numbers kohya prints before step 1.

Per concept (one ``N_name`` folder) it also gives the guides' step count,
``images x repeats x epochs / (batch size x gradient accumulation)`` — an
optimizer step sees batch x accumulation images; with accumulation 1 this is
the guides' ``images x repeats x epochs / batch``. The guides aim at about
1000-1500 steps per concept (001: ~1000, 002 and 000: ~1500); a concept below
:data:`STEPS_LOW` (600) or above :data:`STEPS_HIGH` (2500) gets a warning: well
under half the target usually under-trains, well over the upper end risks an
overcooked LoRA. Epochs are fractional when ``max_train_steps`` ends training
mid-epoch.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Optional, Union

from .config import ConfigError, TrainConfig, from_dict

STEPS_TARGET = (1000, 1500)
STEPS_LOW = 600
STEPS_HIGH = 2500

# the options the counts depend on; others are not read (nor validated) here
_RELEVANT = (
    "train_data_dir", "reg_data_dir", "caption_extension", "resolution", "enable_bucket", "min_bucket_reso",
    "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale", "train_batch_size", "gradient_accumulation_steps",
    "max_train_steps", "max_train_epochs", "cache_latents", "random_crop", "prior_loss_weight",
)


def guess_arch(checkpoint_path: str) -> Optional[str]:
    """"sdxl" / "sd1or2" from a .safetensors header (no tensor is read); None when unknown."""
    if not checkpoint_path or not str(checkpoint_path).lower().endswith(".safetensors"):
        return None
    try:
        stat = os.stat(checkpoint_path)
    except OSError:
        return None
    return _guess_arch(str(checkpoint_path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _guess_arch(checkpoint_path: str, _mtime_ns: int, _size: int) -> Optional[str]:
    try:
        from safetensors import safe_open

        with safe_open(str(checkpoint_path), framework="pt") as f:
            for key in f.keys():
                if key.startswith("conditioner.embedders."):
                    return "sdxl"
                if key.startswith("cond_stage_model."):
                    return "sd1or2"
    except Exception:
        return None
    return None


def _config(config_or_dict: Union[TrainConfig, dict]) -> TrainConfig:
    if isinstance(config_or_dict, TrainConfig):
        return config_or_dict
    data = {k: v for k, v in dict(config_or_dict).items() if k in _RELEVANT}
    config, _ = from_dict(data)
    return config


def estimate(config_or_dict: Union[TrainConfig, dict], arch: Optional[str] = None) -> dict[str, Any]:
    """Counts for ``config_or_dict`` (a TrainConfig or a dict of kohya options).

    ``arch`` ("sd1", "sd2", "sdxl") sets kohya's bucket-step rule; by default it is
    read from the checkpoint's header when the config names one. Never raises for
    a config or dataset problem: ``ok`` is False and ``error`` says what to fix.
    """
    from .dataset import AugmentOptions, BucketSettings, LoraDataset, count_steps, format_findings, scan_dataset

    out: dict[str, Any] = {
        "ok": False,
        "error": "",
        "folders": [],
        "num_train_images": 0,
        "num_reg_images": 0,
        "num_batches_per_epoch": 0,
        "steps_per_epoch": 0,
        "num_epochs": 0,
        "total_steps": 0,
        "batch_size": 1,
        "gradient_accumulation_steps": 1,
        "buckets": [],
        "warnings": [],
        "notes": [],
        "findings": [],
        "steps_target": list(STEPS_TARGET),
        "steps_low": STEPS_LOW,
        "steps_high": STEPS_HIGH,
    }
    try:
        config = _config(config_or_dict)
    except ConfigError as exc:
        out["error"] = str(exc)
        return out
    if not config.train_data_dir:
        out["error"] = "train_data_dir is not set: point it at the folder that holds your N_name image folders"
        return out
    if arch is None and not isinstance(config_or_dict, TrainConfig):
        arch = guess_arch(dict(config_or_dict).get("pretrained_model_name_or_path") or "")
    elif arch is None:
        arch = guess_arch(config.pretrained_model_name_or_path)
    out["batch_size"] = config.train_batch_size
    out["gradient_accumulation_steps"] = config.gradient_accumulation_steps

    scan = scan_dataset(config.train_data_dir, config.reg_data_dir, config.caption_extension, check_pixels=False)
    out["findings"] = [format_findings([f]) for f in scan.findings]
    for subset in scan.subsets:
        out["folders"].append({
            "folder": subset.name,
            "path": subset.folder,
            "is_reg": subset.is_reg,
            "class_tokens": subset.class_tokens,
            "images": len(subset.images),
            "repeats": subset.repeats,
            "images_x_repeats": len(subset.images) * subset.repeats,
        })
    if scan.num_train_images == 0:
        out["error"] = "no training images: " + "; ".join(format_findings([f]) for f in scan.errors) \
            if scan.errors else "no training images found"
        return out

    width, height = config.resolution_wh
    try:
        dataset = LoraDataset(
            scan,
            BucketSettings(
                resolution=(width, height), enable_bucket=config.enable_bucket,
                min_bucket_reso=config.min_bucket_reso, max_bucket_reso=config.max_bucket_reso,
                bucket_reso_steps=config.bucket_reso_steps, bucket_no_upscale=config.bucket_no_upscale,
            ),
            batch_size=config.train_batch_size,
            augment=AugmentOptions(random_crop=config.random_crop),
            prior_loss_weight=config.prior_loss_weight,
            required_bucket_multiple={"sdxl": 32, "sd1": 64, "sd2": 64, "sd1or2": 64}.get(arch or ""),
            will_cache_latents=config.cache_latents,
        )
        counts = count_steps(dataset, config.gradient_accumulation_steps, config.max_train_steps,
                             config.max_train_epochs)
    except ValueError as exc:
        out["error"] = str(exc)
        return out
    out["findings"] += [format_findings([f]) for f in dataset.findings]

    out.update(
        num_train_images=counts.num_train_images,
        num_reg_images=counts.num_reg_images,
        num_batches_per_epoch=counts.num_batches_per_epoch,
        steps_per_epoch=counts.num_update_steps_per_epoch,
        num_epochs=counts.num_epochs,
        total_steps=counts.max_train_steps,
        buckets=[{"resolution": list(reso), "count": len(bucket)}
                 for reso, bucket in zip(dataset.bucket_resos, dataset.buckets)],
    )
    # epochs actually trained, fractional when max_train_steps stops mid-epoch
    epochs = counts.max_train_steps / counts.num_update_steps_per_epoch
    per_step = config.train_batch_size * config.gradient_accumulation_steps
    usable = {}
    for img in dataset.images:
        if not img.is_reg:
            key = os.path.normpath(os.path.dirname(img.path))
            usable[key] = usable.get(key, 0) + 1
    for folder in out["folders"]:
        if folder["is_reg"]:
            folder["steps_per_epoch"] = None
            folder["total_steps"] = None
            continue
        # images the bucketing refused (kohya would stop on them) do not train
        n = usable.get(os.path.normpath(folder["path"]), 0)
        per_epoch = n * folder["repeats"] / per_step
        folder["steps_per_epoch"] = round(per_epoch, 2)
        folder["total_steps"] = round(per_epoch * epochs)
        formula = (f"{n} images x {folder['repeats']} repeats x {epochs:g} epochs / "
                   f"{per_step} {'batch' if config.gradient_accumulation_steps == 1 else 'batch x accumulation'}")
        if folder["total_steps"] < STEPS_LOW:
            out["warnings"].append(
                f"{folder['folder']}: about {folder['total_steps']} steps ({formula}); the guides aim for "
                f"{STEPS_TARGET[0]}-{STEPS_TARGET[1]} per concept: raise its repeats or the epochs"
            )
        elif folder["total_steps"] > STEPS_HIGH:
            out["warnings"].append(
                f"{folder['folder']}: about {folder['total_steps']} steps ({formula}); the guides aim for "
                f"{STEPS_TARGET[0]}-{STEPS_TARGET[1]} per concept: lower its repeats or the epochs"
            )
    if config.max_train_epochs is None:
        out["notes"].append(
            f"max_train_epochs is not set: max_train_steps ({config.max_train_steps}) decides the length"
            + (" (kohya's default)" if config.max_train_steps == TrainConfig.max_train_steps else "")
        )
    out["ok"] = True
    return out
