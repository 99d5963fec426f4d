"""One training configuration, spelled with kohya sd-scripts' option names.

Every field here means what the option of the same name means in kohya's
``train_network.py`` / ``sdxl_train_network.py``; defaults are kohya's except
where noted: ``caption_extension`` is ".txt" like the guides (kohya's is
".caption") and ``learning_rate`` is 1e-4, a LoRA rate (kohya's generic
default, 2e-6, is meant for full fine-tuning). Validation lives in :func:`validate` and nowhere else: the CLI, the
tab and the API all build a :class:`TrainConfig` through :func:`from_dict`.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import os
try:
    import tomllib
except ImportError:  # Python 3.10, as the WebUIs run: install.py adds tomli
    import tomli as tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A configuration the trainer cannot run; the message says what to change."""


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------
    pretrained_model_name_or_path: str = ""
    v_parameterization: bool = False
    clip_skip: Optional[int] = None
    max_token_length: Optional[int] = None  # None = 75; 150 / 225 as kohya
    # --- dataset (kohya DreamBooth-style folders) -------------------------
    train_data_dir: str = ""
    reg_data_dir: Optional[str] = None
    caption_extension: str = ".txt"  # kohya's default is ".caption"
    resolution: str = "512"  # "W" or "W,H"
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    shuffle_caption: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    caption_separator: str = ","
    caption_prefix: Optional[str] = None
    caption_suffix: Optional[str] = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    prior_loss_weight: float = 1.0
    cache_latents: bool = False
    cache_latents_to_disk: bool = False
    cache_text_encoder_outputs: bool = False
    no_half_vae: bool = False  # keep the VAE in fp32 under fp16/bf16 (SDXL's VAE overflows in fp16)
    train_batch_size: int = 1
    # --- network -------------------------------------------------------------
    network_module: str = "networks.lora"
    network_dim: Optional[int] = None  # kohya: None -> 4
    network_alpha: Optional[float] = None  # kohya: None -> 1; 0 -> alpha = dim
    network_dropout: Optional[float] = None
    network_args: list[str] = field(default_factory=list)  # "conv_dim=8" ...
    network_weights: Optional[str] = None
    dim_from_weights: bool = False
    network_train_unet_only: bool = False
    network_train_text_encoder_only: bool = False
    scale_weight_norms: Optional[float] = None
    # --- optimizer and scheduler --------------------------------------------
    optimizer_type: str = "AdamW"
    optimizer_args: list[str] = field(default_factory=list)
    learning_rate: float = 1e-4  # kohya: 2e-6 (see the module docstring)
    unet_lr: Optional[float] = None
    text_encoder_lr: Optional[float] = None
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: float = 0  # a count, or a ratio of the total when < 1
    lr_scheduler_num_cycles: int = 1
    lr_scheduler_power: float = 1.0
    lr_scheduler_args: list[str] = field(default_factory=list)
    # --- training loop ---------------------------------------------------------
    max_train_steps: int = 1600
    max_train_epochs: Optional[int] = None
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # no / fp16 / bf16
    full_fp16: bool = False
    full_bf16: bool = False
    gradient_checkpointing: bool = False
    seed: Optional[int] = None
    noise_offset: Optional[float] = None
    adaptive_noise_scale: Optional[float] = None
    multires_noise_iterations: Optional[int] = None
    multires_noise_discount: float = 0.3
    ip_noise_gamma: Optional[float] = None
    min_snr_gamma: Optional[float] = None
    debiased_estimation_loss: bool = False
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: Optional[float] = None
    min_timestep: Optional[int] = None
    max_timestep: Optional[int] = None
    # --- saving -----------------------------------------------------------------
    output_dir: str = ""
    output_name: Optional[str] = None  # kohya: None -> epoch-000001 / last
    save_model_as: str = "safetensors"
    save_precision: Optional[str] = None  # None = float (fp32); fp16; bf16
    save_every_n_epochs: Optional[int] = None
    save_last_n_epochs: Optional[int] = None
    training_comment: Optional[str] = None
    # --- samples during training (kohya's sample_images) ----------------------------
    sample_every_n_epochs: Optional[int] = None  # overrides sample_every_n_steps, as kohya
    sample_every_n_steps: Optional[int] = None
    sample_at_first: bool = False  # before the first step (file suffix e000000)
    sample_prompts: Optional[str] = None  # .txt (--n --w --h --d --s --l --ss), .toml or .json
    sample_sampler: str = "ddim"
    # --- ours ---------------------------------------------------------------------
    device: str = "auto"  # auto / cpu / cuda / cuda:N
    trigger_word: str = ""  # goes into the user-metadata JSON as activation text
    preferred_weight: float = 0.8  # the user-metadata JSON's preferred weight (the guides test at 0.8)

    # derived views ---------------------------------------------------------------
    @property
    def resolution_wh(self) -> tuple[int, int]:
        return parse_resolution(self.resolution)

    @property
    def network_kwargs(self) -> dict[str, str]:
        """``network_args`` as a dict of strings (kohya passes them as strings)."""
        out = {}
        for item in self.network_args:
            key, _, value = item.partition("=")
            out[key.strip()] = value.strip()
        return out

    @property
    def conv_dim(self) -> Optional[int]:
        value = self.network_kwargs.get("conv_dim")
        return _number("conv_dim", value, int) if value not in (None, "", "None") else None

    @property
    def conv_alpha(self) -> Optional[float]:
        value = self.network_kwargs.get("conv_alpha")
        if value in (None, "", "None"):
            # kohya: conv_alpha defaults to 1.0 when conv_dim is given
            return 1.0 if self.conv_dim else None
        return _number("conv_alpha", value, float)

    @property
    def effective_network_dim(self) -> int:
        return self.network_dim if self.network_dim is not None else 4

    @property
    def effective_network_alpha(self) -> float:
        return self.network_alpha if self.network_alpha is not None else 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
PATH_FIELDS = ("pretrained_model_name_or_path", "train_data_dir", "reg_data_dir", "network_weights", "output_dir",
               "sample_prompts")
# kohya's --sample_sampler choices (train_util.py)
SAMPLE_SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver",
                   "dpmsolver++", "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")
# Accepted for kohya compatibility and mapped onto our names.
ALIASES = {
    "caption_extention": "caption_extension",  # kohya's historic misspelling
    "conv_dim": None,  # handled: goes into network_args
    "conv_alpha": None,
    "v2": None,  # architecture comes from the checkpoint's tensors
    "sdxl": None,
    "xformers": None,  # attention backend is chosen by torch (SDPA)
    "sdpa": None,
    "mem_eff_attn": None,
    "max_data_loader_n_workers": None,
    "persistent_data_loader_workers": None,
    "logging_dir": None,
    "log_prefix": None,
    "save_state": None,
    "lowram": None,
}
MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = (None, "float", "fp16", "bf16")


def _number(name: str, value: Any, kind: type):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None


def parse_resolution(text: Union[str, int, tuple, list]) -> tuple[int, int]:
    parts = text if isinstance(text, (tuple, list)) else [v for v in str(text).replace("x", ",").split(",") if v.strip()]
    values = [_number("resolution", v, int) for v in parts]
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ConfigError(f"resolution {text!r}: expected 'SIZE' or 'WIDTH,HEIGHT', e.g. '512' or '1024,1024'")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn a TOML value or a ``--set`` string into the field's type."""
    origin = get_origin(hint)
    if origin is Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        inner = [a for a in get_args(hint) if a is not type(None)][0]
        return _coerce(name, value, inner)
    if origin is list:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                value = ast.literal_eval(value)
            else:
                value = value.split() if value else []
        return [str(v) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if hint in (int, float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if hint is int:
            if number != int(number):
                raise ConfigError(f"{name}: expected a whole number, got {value!r}")
            return int(number)
        return number
    if hint is str:
        return "" if value is None else str(value)
    return value


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """kohya's --config_file TOMLs group options in tables ([model_arguments] ...)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in FIELD_NAMES:
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


def coerce_options(data: dict[str, Any], base: Optional[dict[str, Any]] = None,
                   strict: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Option names and values normalised to TrainConfig's fields and types.

    kohya's spellings are accepted (``--caption-extention``, sectioned TOML tables,
    ``conv_dim`` / ``conv_alpha`` as shorthands for ``network_args``). With ``strict``,
    an unknown option or a value of the wrong type raises ConfigError; without it
    (the tab saving a half-filled form) they are reported in the notes and left out.
    Returns (a full TrainConfig dict, notes).
    """
    hints = get_type_hints(TrainConfig)
    values = dict(base) if base is not None else TrainConfig().to_dict()
    network_args = list(values.get("network_args") or [])
    notes: list[str] = []
    for key, value in _flatten(dict(data)).items():
        key = str(key).strip().lstrip("-").replace("-", "_")
        if key in ("conv_dim", "conv_alpha"):
            network_args = [a for a in network_args if not a.startswith(key + "=")]
            if value not in (None, "", "None"):
                network_args.append(f"{key}={value}")
            continue
        if key in ALIASES:
            if ALIASES[key] is None:
                notes.append(f"{key}: accepted and ignored (see README: options that differ from kohya)")
                continue
            key = ALIASES[key]
        if key not in hints:
            close = difflib.get_close_matches(key, FIELD_NAMES, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if strict:
                raise ConfigError(f"unknown option {key!r}{hint}")
            notes.append(f"unknown option {key!r} left out{hint}")
            continue
        try:
            coerced = _coerce(key, value, hints[key])
        except (ConfigError, ValueError, SyntaxError) as exc:
            if strict:
                raise ConfigError(str(exc) if isinstance(exc, ConfigError) else f"{key}: {exc}") from None
            notes.append(f"{key}: {exc}; kept {values.get(key)!r}")
            continue
        if key == "network_args":
            network_args = coerced
        else:
            values[key] = coerced
    values["network_args"] = network_args
    return values, notes


def from_dict(data: dict[str, Any], base: Optional[TrainConfig] = None) -> tuple[TrainConfig, list[str]]:
    """Build and validate a config. Returns (config, warnings); raises ConfigError."""
    values, notes = coerce_options(data, dataclasses.asdict(base) if base is not None else None)
    if values.get("cache_latents_to_disk") and not values.get("cache_latents"):
        # kohya turns cache_latents on when only cache_latents_to_disk is given
        values["cache_latents"] = True
        notes.append("cache_latents_to_disk turns cache_latents on (as kohya does)")
    config = TrainConfig(**values)
    return config, notes + validate(config)


def validate(config: TrainConfig, check_paths: bool = True) -> list[str]:
    """The one place where options are checked. Raises ConfigError, returns warnings."""
    warnings: list[str] = []
    errors: list[str] = []

    if check_paths:
        if not config.train_data_dir:
            errors.append("train_data_dir is not set: point it at the folder that holds your N_name image folders")
        elif not Path(config.train_data_dir).is_dir():
            errors.append(f"train_data_dir {config.train_data_dir!r} does not exist or is not a folder")
        if config.reg_data_dir and not Path(config.reg_data_dir).is_dir():
            errors.append(f"reg_data_dir {config.reg_data_dir!r} does not exist or is not a folder")
        if config.network_weights and not Path(config.network_weights).is_file():
            errors.append(f"network_weights {config.network_weights!r} does not exist")
        if config.pretrained_model_name_or_path and not Path(config.pretrained_model_name_or_path).is_file():
            errors.append(f"pretrained_model_name_or_path {config.pretrained_model_name_or_path!r} is not a file")
    try:
        width, height = config.resolution_wh
        if width % 8 or height % 8 or width <= 0 or height <= 0:
            errors.append(f"resolution {config.resolution!r}: width and height must be positive multiples of 8")
    except ConfigError as exc:
        errors.append(str(exc))
    if config.network_module not in ("networks.lora", "lora"):
        errors.append(f"network_module {config.network_module!r} is not supported yet; use networks.lora")
    for item in config.network_args:
        if "=" not in item:
            errors.append(f"network_args entry {item!r}: expected key=value, e.g. conv_dim=8")
    for item in config.optimizer_args + config.lr_scheduler_args:
        if "=" not in item:
            errors.append(f"optimizer/scheduler arg {item!r}: expected key=value, e.g. weight_decay=0.01")
    dim = config.effective_network_dim
    if dim <= 0:
        errors.append(f"network_dim must be at least 1, got {dim}")
    if config.network_alpha is not None and config.network_alpha > dim:
        warnings.append(
            f"network_alpha {config.network_alpha:g} is larger than network_dim {dim}: the LoRA is scaled by "
            f"{config.network_alpha / dim:g}x; kohya's guides keep alpha <= dim"
        )
    if config.conv_dim is not None and config.conv_alpha is not None and config.conv_alpha > config.conv_dim:
        warnings.append(f"conv_alpha {config.conv_alpha:g} is larger than conv_dim {config.conv_dim}")
    if config.network_train_unet_only and config.network_train_text_encoder_only:
        errors.append("network_train_unet_only and network_train_text_encoder_only cannot both be set")
    if config.mixed_precision not in MIXED_PRECISIONS:
        errors.append(f"mixed_precision {config.mixed_precision!r}: expected one of {', '.join(MIXED_PRECISIONS)}")
    if config.save_precision not in SAVE_PRECISIONS:
        errors.append(f"save_precision {config.save_precision!r}: expected float, fp16 or bf16")
    if config.save_model_as != "safetensors":
        errors.append(f"save_model_as {config.save_model_as!r}: only safetensors is written")
    if config.max_token_length not in (None, 75, 150, 225):
        errors.append(f"max_token_length {config.max_token_length}: expected 75, 150 or 225 (kohya's choices)")
    if config.clip_skip is not None and config.clip_skip < 1:
        errors.append("clip_skip must be 1 or more (2 for NAI-family / Pony / Illustrious models)")
    if config.train_batch_size < 1:
        errors.append("train_batch_size must be at least 1")
    if config.gradient_accumulation_steps < 1:
        errors.append("gradient_accumulation_steps must be at least 1")
    if config.min_bucket_reso > config.max_bucket_reso:
        errors.append("min_bucket_reso is larger than max_bucket_reso")
    if config.enable_bucket and config.min_bucket_reso < config.bucket_reso_steps:
        # kohya rounds the minimum down to a multiple of the step: 0, and a division by zero follows
        errors.append(f"min_bucket_reso {config.min_bucket_reso} is smaller than bucket_reso_steps "
                      f"{config.bucket_reso_steps}; use at least {config.bucket_reso_steps}")
    if config.bucket_reso_steps <= 0 or config.bucket_reso_steps % 8:
        errors.append("bucket_reso_steps must be a positive multiple of 8 (64 is kohya's usual)")
    elif config.enable_bucket and config.bucket_reso_steps % 64:
        warnings.append("bucket_reso_steps that is not a multiple of 64 may give lower quality (kohya warns the same)")
    for name in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            errors.append(f"{name} must be between 0 and 1")
    if config.cache_latents and (config.color_aug or config.random_crop):
        errors.append("cache_latents cannot be used with color_aug or random_crop (kohya refuses the same)")
    if config.adaptive_noise_scale is not None and config.noise_offset is None:
        errors.append("adaptive_noise_scale needs noise_offset (kohya refuses the same)")
    if config.full_fp16 and config.mixed_precision != "fp16":
        errors.append("full_fp16 needs mixed_precision = \"fp16\" (kohya refuses the same)")
    if config.full_bf16 and config.mixed_precision != "bf16":
        errors.append("full_bf16 needs mixed_precision = \"bf16\" (kohya refuses the same)")
    if config.full_fp16 and config.full_bf16:
        errors.append("full_fp16 and full_bf16 cannot both be set")
    for name in ("min_timestep", "max_timestep"):
        value = getattr(config, name)
        if value is not None and not 0 <= value <= 1000:
            errors.append(f"{name} must be between 0 and 1000, got {value}")
    if (config.min_timestep or 0) >= (config.max_timestep if config.max_timestep is not None else 1000):
        errors.append("min_timestep must be smaller than max_timestep")
    if config.cache_text_encoder_outputs:
        if not config.network_train_unet_only:
            errors.append("cache_text_encoder_outputs needs network_train_unet_only: a trained text encoder's "
                          "outputs change every step (kohya refuses the same)")
        changing = [name for name in ("shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate",
                                      "caption_dropout_every_n_epochs") if getattr(config, name)]
        if changing:
            errors.append(f"cache_text_encoder_outputs cannot be used with {', '.join(changing)}: the captions "
                          "change between epochs (kohya refuses the same)")
    if config.save_every_n_epochs is not None and config.save_every_n_epochs < 1:
        errors.append("save_every_n_epochs must be at least 1")
    if config.conv_dim is not None and config.conv_dim < 0:
        errors.append("conv_dim must be 0 or more")
    if config.output_name is not None and (not config.output_name
                                          or any(c in config.output_name for c in '/\\:*?"<>|')):
        errors.append(f"output_name {config.output_name!r}: use a plain file name without path characters")
    _validate_samples(config, check_paths, errors, warnings)
    single_lr = _single_lr_conflict(config)
    if single_lr:
        errors.append(single_lr)
    if config.optimizer_type.lower().startswith(("dadapt", "prodigy")) and config.learning_rate < 0.1:
        warnings.append(
            f"{config.optimizer_type} adapts its step size itself; kohya's guides set learning_rate around 1.0 "
            f"(got {config.learning_rate:g})"
        )
    if errors:
        raise ConfigError("\n".join(errors))
    return warnings


# These step-size-adapting optimizers refuse parameter groups with different non-zero lrs
# (a RuntimeError at the first step, in kohya too); said up front here instead.
_SINGLE_LR_OPTIMIZERS = {"prodigy", "dadaptation", "dadaptadam", "dadaptadampreprint", "dadaptlion", "dadaptsgd"}


def _single_lr_conflict(config: "TrainConfig") -> Optional[str]:
    name = config.optimizer_type.lower().rsplit(".", 1)[-1]
    if name not in _SINGLE_LR_OPTIMIZERS:
        return None
    lrs = {}
    if not config.network_train_text_encoder_only:
        lrs["unet_lr"] = config.learning_rate if config.unet_lr is None else config.unet_lr
    if not config.network_train_unet_only:
        lrs["text_encoder_lr"] = config.learning_rate if config.text_encoder_lr is None else config.text_encoder_lr
    used = {k: v for k, v in lrs.items() if v}
    if len(set(used.values())) <= 1:
        return None
    given = ", ".join(f"{k} = {v:g}" for k, v in used.items())
    return (f"{config.optimizer_type} takes one learning rate for every part ({given}): set unet_lr and "
            "text_encoder_lr to the same value, or text_encoder_lr = 0 to train the UNet only")


def _validate_samples(config: TrainConfig, check_paths: bool, errors: list[str], warnings: list[str]) -> None:
    """kohya's sample options: when to render, which prompts, which sampler."""
    if config.sample_sampler not in SAMPLE_SAMPLERS:
        close = difflib.get_close_matches(str(config.sample_sampler), SAMPLE_SAMPLERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        errors.append(f"sample_sampler {config.sample_sampler!r}: expected one of {', '.join(SAMPLE_SAMPLERS)}{hint}")
    for name in ("sample_every_n_epochs", "sample_every_n_steps"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            # kohya warns and turns the option off
            warnings.append(f"{name} is {value}: 0 or less turns it off (as kohya does)")
    every_epochs = (config.sample_every_n_epochs or 0) > 0
    every_steps = (config.sample_every_n_steps or 0) > 0
    if every_epochs and every_steps:
        warnings.append("sample_every_n_steps is ignored: sample_every_n_epochs is set (as kohya does)")
    wanted = every_epochs or every_steps or config.sample_at_first
    if not config.sample_prompts:
        if wanted:
            errors.append("samples are asked for (sample_every_n_epochs / sample_every_n_steps / sample_at_first) "
                          "but sample_prompts is not set: name a .txt file with one prompt per line "
                          "(kohya's syntax: a prompt --n negative --w 512 --h 512 --d seed --s steps --l cfg)")
        return
    if not wanted:
        warnings.append("sample_prompts is set but no samples will be rendered: set sample_every_n_epochs, "
                        "sample_every_n_steps or sample_at_first")
    if not check_paths:
        return
    try:
        prompts = read_sample_prompts(config.sample_prompts)
    except ConfigError as exc:
        errors.append(str(exc))
        return
    if not prompts:
        warnings.append(f"sample_prompts {config.sample_prompts!r} holds no prompt (empty lines and lines starting "
                        "with # are skipped): no samples will be rendered")
    for prompt in prompts:
        where = f"sample_prompts {Path(config.sample_prompts).name}" + (f" line {prompt.line}" if prompt.line else "")
        for problem in prompt.warnings:
            warnings.append(f"{where}: {problem} (skipped, as kohya does)")
        for option in prompt.ignored:
            warnings.append(f"{where}: {option!r} is not a sample option kohya knows; ignored")


def read_sample_prompts(path: Union[str, os.PathLike]) -> list:
    """The prompts of a ``sample_prompts`` file (:func:`lora_trainer.compare.prompts.load_prompts`);
    a file that is missing or unreadable is a ConfigError naming it."""
    from .compare.prompts import load_prompts

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sample_prompts {str(path)!r} does not exist: name a .txt, .toml or .json prompt file")
    if path.suffix.lower() not in (".txt", ".toml", ".json"):
        raise ConfigError(f"sample_prompts {str(path)!r}: expected a .txt, .toml or .json file (kohya's formats)")
    try:
        return load_prompts(path)
    except UnicodeDecodeError:
        raise ConfigError(f"sample_prompts {str(path)!r} is not UTF-8 text: save it as UTF-8") from None
    except (ValueError, TypeError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"sample_prompts {str(path)!r} cannot be read: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"sample_prompts {str(path)!r} cannot be read: {exc}") from None


def load_toml(path: Union[str, os.PathLike]) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def parse_set_args(items: list[str]) -> dict[str, str]:
    """``--set key=value`` pairs from the command line."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def to_toml(config: TrainConfig) -> str:
    """Serialise a config as a flat TOML table (None values are left out)."""
    import tomli_w  # small, only needed when saving

    data = {k: v for k, v in config.to_dict().items() if v is not None}
    return tomli_w.dumps(data)
