"""Named starting points: the settings the user guides train with, as kohya options.

Each preset is a partial config (kohya option name -> value) holding only what
its guide states; the dataset, the model and the output are the user's. The
numbers come from the guides' own tables (see ``/work/shared/README.md`` in the
project notes): optimizer and its ``optimizer_args`` spelled as kohya takes them
on the command line, learning rates (``learning_rate`` plus ``unet_lr`` /
``text_encoder_lr``), scheduler, dim / alpha, resolution and buckets, epochs and
saving cadence. What is not an option (folder repeats, a step target) is in
:data:`PRESET_NOTES`, for the tab to show beside the preset.

:func:`apply_preset` replaces the whole *training recipe* (optimizer, its args,
learning rates, scheduler, dim/alpha, loss weighting, length and saving
cadence): recipe keys a preset does not name fall back to kohya's defaults, so
nothing stale from a previously applied preset survives (applying A then B
equals applying B). Settings about the data and the hardware (resolution,
buckets, batch size, precision, clip skip, token length, augmentations) change
only where the preset names them.
"""
from __future__ import annotations

import copy
from typing import Any

from .config import TrainConfig

PRODIGY_EASY_ARGS = [
    "decouple=True",
    "weight_decay=0.01",
    "d_coef=2",
    "use_bias_correction=True",
    "safeguard_warmup=False",
    "betas=0.9,0.999",
]
DADAPT_EASY_ARGS = ["decouple=True", "weight_decay=0.01", "betas=0.9,0.999"]

# "Easy settings" (guide 001): shared by its DAdaptAdam and Prodigy variants
_EASY_COMMON: dict[str, Any] = {
    "learning_rate": 1.0,
    "unet_lr": 1.0,
    "text_encoder_lr": 1.0,
    "lr_scheduler": "constant",
    "network_dim": 64,
    "network_alpha": 1,
    "resolution": "512",
    "enable_bucket": True,
    "min_bucket_reso": 320,
    "max_bucket_reso": 1024,  # the guide gives 768-1024
    "min_snr_gamma": 5,
    "max_token_length": 225,
    "max_train_steps": 1000,  # "around 1000 total steps, adjust epochs to fit"
}

PRESETS: dict[str, dict[str, Any]] = {
    "Pony style/character (000)": {
        "optimizer_type": "Prodigy",
        "optimizer_args": [],
        "learning_rate": 1.0,
        "unet_lr": 1.0,
        "text_encoder_lr": 1.0,
        "lr_scheduler": "cosine",
        "network_dim": 32,
        "network_alpha": 16,
        "resolution": "1024",
        "train_batch_size": 2,
        "max_train_epochs": 19,
        "save_every_n_epochs": 1,
        "save_last_n_epochs": 6,
    },
    "Illustrious character (002)": {
        "optimizer_type": "Prodigy",
        "optimizer_args": ["d_coef=2"],
        "learning_rate": 1.0,
        "unet_lr": 1.0,
        "text_encoder_lr": 1.0,
        "lr_scheduler": "cosine",
        "network_dim": 32,
        "network_alpha": 16,  # 0.5 x dim; the guide's range is 0.25-0.5 x dim
        "mixed_precision": "bf16",
        "clip_skip": 2,
        "debiased_estimation_loss": True,
        "max_train_steps": 1500,  # ~1500 steps per concept (one concept)
    },
    "Easy DAdapt (001)": {
        "optimizer_type": "DAdaptAdam",
        "optimizer_args": list(DADAPT_EASY_ARGS),
        **_EASY_COMMON,
    },
    "Easy Prodigy (001)": {
        "optimizer_type": "Prodigy",
        "optimizer_args": list(PRODIGY_EASY_ARGS),
        **_EASY_COMMON,
    },
    "Lazy SD1.5 character (003)": {
        "optimizer_type": "AdamW",
        "optimizer_args": [],
        "learning_rate": 1.6e-4,
        "unet_lr": 1.6e-4,
        "text_encoder_lr": 6.5e-5,
        "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": 5,
        "network_dim": 32,
        "network_alpha": 16,
        "resolution": "512",
        "train_batch_size": 2,
        "max_train_epochs": 50,
        "save_every_n_epochs": 5,
        "clip_skip": 2,
        "enable_bucket": True,
        "min_bucket_reso": 320,
        "max_bucket_reso": 1280,
        "bucket_reso_steps": 64,
    },
}

# What the guides say that is not a kohya option.
PRESET_NOTES: dict[str, list[str]] = {
    "Pony style/character (000)": [
        "3 repeats: name the image folders like 3_name.",
        "Steps = images x repeats x epochs / batch; with a small dataset raise the repeats to reach about "
        "1500 steps before dividing by the batch size.",
        "Compare the saved epochs at 0.8 strength with a constant seed; release one epoch after the results "
        "stop changing.",
    ],
    "Illustrious character (002)": [
        "Set network_alpha to 0.25-0.5 x network_dim (8-16 at dim 32); d_coef above 1 makes up for the lower alpha.",
        "Aim for about 1500 steps per concept: with several concepts, set max_train_epochs and balance the "
        "folder repeats instead of max_train_steps.",
        "Prune caption tags that define the subject so the trigger word carries them.",
    ],
    "Easy DAdapt (001)": [
        "About 1000 total steps: max_train_steps is set to 1000; use max_train_epochs instead to fit your images.",
        "max_bucket_reso 768 also works; flip_aug is optional (not for asymmetric characters).",
        "Dim 32 is fine for characters and concepts.",
    ],
    "Easy Prodigy (001)": [
        "About 1000 total steps: max_train_steps is set to 1000; use max_train_epochs instead to fit your images.",
        "max_bucket_reso 768 also works; flip_aug is optional (not for asymmetric characters).",
        "Adjust d_coef to scale Prodigy's step size.",
    ],
    "Lazy SD1.5 character (003)": [
        "1 repeat per image (folders named 1_name); the 50 epochs make up for it; pick the best saved epoch.",
        "A character is usually good after 1000-2000 steps at batch 2.",
        "clip_skip 2 is for NAI-based anime models; use 1 for models based on plain SD.",
    ],
}

# Keys that make up a training recipe: reset to kohya's defaults when a preset
# does not set them, so no value from a previously applied preset is left over.
RECIPE_KEYS = (
    "optimizer_type",
    "optimizer_args",
    "learning_rate",
    "unet_lr",
    "text_encoder_lr",
    "lr_scheduler",
    "lr_scheduler_num_cycles",
    "lr_scheduler_power",
    "lr_scheduler_args",
    "lr_warmup_steps",
    "network_dim",
    "network_alpha",
    "min_snr_gamma",
    "debiased_estimation_loss",
    "max_train_steps",
    "max_train_epochs",
    "save_every_n_epochs",
    "save_last_n_epochs",
)


def _defaults() -> dict[str, Any]:
    return TrainConfig().to_dict()


def apply_preset(name: str, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with preset ``name`` applied (a new dict; ``base`` is not changed)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None
    out = dict(base)
    defaults = _defaults()
    for key in RECIPE_KEYS:
        if key not in preset and key in out:
            out[key] = copy.deepcopy(defaults[key])
    out.update(copy.deepcopy(preset))
    return out
