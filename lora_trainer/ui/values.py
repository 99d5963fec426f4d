"""The tab's form, without Gradio: which component each option gets, and the
conversions between the form's values and a config dict.

Every :class:`~lora_trainer.config.TrainConfig` field has exactly one form
control, keyed by its kohya option name (``elem_id`` ``lora_trainer_<name>``);
``conv_dim`` / ``conv_alpha`` are two extra controls that travel inside
``network_args`` as kohya's shorthands do. The named sections list the options
the guides talk about; every other field lands in "Advanced", generated from
``dataclasses.fields(TrainConfig)`` so a new core option appears there by itself.

Values as the form holds them: bools for checkboxes, numbers for required
numeric options, text for everything else (an empty box is ``None`` for
optional options: kohya's "not set"), list options as kohya's command-line
spelling (space-separated ``key=value``). :func:`form_to_options` gives a
dict that :func:`lora_trainer.config.from_dict` takes; :func:`options_to_form`
goes back. Nothing here imports Gradio, so it is tested without it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from ..config import SAMPLE_SAMPLERS, ConfigError, TrainConfig, coerce_options

PREFIX = "lora_trainer_"
EXTRA_CONTROLS = ("conv_dim", "conv_alpha")  # not fields: they go into network_args

# kohya's names; custom "module.Class" optimizers are typed in (allow_custom_value)
OPTIMIZER_CHOICES = (
    "AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit", "PagedLion8bit",
    "SGDNesterov", "SGDNesterov8bit", "DAdaptation", "DAdaptAdamPreprint", "DAdaptAdaGrad", "DAdaptAdam",
    "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD", "Prodigy", "AdaFactor", "RAdamScheduleFree",
    "AdamWScheduleFree", "SGDScheduleFree",
)
SCHEDULER_CHOICES = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "inverse_sqrt",
    "cosine_with_min_lr", "warmup_stable_decay", "piecewise_constant", "adafactor",
)

# option -> choices for a dropdown; custom values stay allowed where kohya allows them
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer_type": OPTIMIZER_CHOICES,
    "lr_scheduler": SCHEDULER_CHOICES,
    "mixed_precision": ("no", "fp16", "bf16"),
    "save_precision": ("float", "fp16", "bf16"),
    "save_model_as": ("safetensors",),
    "network_module": ("networks.lora",),
    "caption_extension": (".txt", ".caption"),
    "max_token_length": ("75", "150", "225"),
    "device": ("auto", "cpu", "cuda"),
    "sample_sampler": SAMPLE_SAMPLERS,
}
CUSTOM_VALUES = {"optimizer_type", "lr_scheduler", "caption_extension", "device", "max_token_length"}

# The sections the guides talk about, in the order the tab shows them.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Dataset", (
        "train_data_dir", "reg_data_dir", "caption_extension", "output_name", "trigger_word",
        "train_batch_size", "max_train_epochs", "max_train_steps", "gradient_accumulation_steps",
    )),
    ("Network", (
        "network_dim", "network_alpha", "conv_dim", "conv_alpha", "network_weights", "dim_from_weights",
        "network_train_unet_only", "network_train_text_encoder_only", "network_dropout", "network_args",
        "network_module", "scale_weight_norms",
    )),
    ("Optimizer & scheduler", (
        "optimizer_type", "optimizer_args", "learning_rate", "unet_lr", "text_encoder_lr", "max_grad_norm",
        "lr_scheduler", "lr_warmup_steps", "lr_scheduler_num_cycles", "lr_scheduler_power", "lr_scheduler_args",
    )),
    ("Resolution & buckets", (
        "resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
        "bucket_no_upscale",
    )),
    ("Captions & augmentations", (
        "shuffle_caption", "keep_tokens", "keep_tokens_separator", "caption_separator", "caption_prefix",
        "caption_suffix", "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
        "flip_aug", "color_aug", "random_crop",
    )),
    ("Saving", (
        "output_dir", "save_every_n_epochs", "save_last_n_epochs", "save_precision", "save_model_as",
        "training_comment",
    )),
    ("Samples", (
        "sample_prompts", "sample_every_n_epochs", "sample_every_n_steps", "sample_at_first", "sample_sampler",
    )),
)
ADVANCED = "Advanced"

LABELS: dict[str, str] = {
    "train_data_dir": "Dataset folder (train_data_dir)",
    "reg_data_dir": "Regularization folder (reg_data_dir)",
    "output_name": "Output name (output_name)",
    "trigger_word": "Trigger word (activation text)",
    "conv_dim": "conv_dim (LoCon)",
    "conv_alpha": "conv_alpha (LoCon)",
}
INFO: dict[str, str] = {
    "train_data_dir": "holds N_name image folders (N = repeats), e.g. 10_mychar",
    "reg_data_dir": "optional; same N_name layout",
    "output_name": "file name without extension; epochs are saved as NAME-000001.safetensors",
    "trigger_word": "written into the LoRA's user metadata as activation text; add it to captions yourself "
                    "(or use caption_prefix)",
    "max_train_epochs": "empty: max_train_steps decides the length",
    "network_alpha": "scale = alpha / dim; empty = 1 (kohya)",
    "network_dim": "empty = 4 (kohya)",
    "conv_dim": "empty: no conv layers (plain LoRA); sets conv_dim in network_args",
    "conv_alpha": "empty: 1 when conv_dim is set",
    "optimizer_args": "space-separated key=value, e.g. weight_decay=0.01 betas=0.9,0.999",
    "lr_scheduler_args": "space-separated key=value",
    "network_args": "space-separated key=value (conv_dim/conv_alpha have their own boxes)",
    "lr_warmup_steps": "a step count, or a fraction of the total steps when below 1",
    "unet_lr": "empty: learning_rate",
    "text_encoder_lr": "empty: learning_rate",
    "resolution": "SIZE or WIDTH,HEIGHT",
    "output_dir": "empty: the host's LoRA folder",
    "save_every_n_epochs": "empty: only the last epoch is saved",
    "pretrained_model_name_or_path": "the host's loaded model is trained on; this names it in metadata",
    "clip_skip": "2 for NAI-family / Pony / Illustrious models",
    "caption_extension": "kohya's default is .caption",
    "sample_prompts": "a .txt file, one prompt per line: PROMPT --n NEGATIVE --w 512 --h 512 --d SEED --s STEPS "
                      "--l CFG (kohya's syntax; .toml / .json too); images go to OUTPUT_DIR/sample",
    "sample_every_n_epochs": "empty: no samples at epoch ends; wins over sample_every_n_steps",
    "sample_every_n_steps": "empty: no samples every N steps",
    "sample_at_first": "also render the samples before the first step (no LoRA effect yet)",
    "sample_sampler": "for prompts without --ss; a prompt without --d uses seed 1234",
}


@dataclass(frozen=True)
class Control:
    """One form control: the option it edits and the kind of component it is."""

    name: str
    kind: str  # "checkbox", "number", "dropdown", "text"
    section: str
    optional: bool = False  # an empty value means kohya's "not set"
    integer: bool = False
    is_list: bool = False
    choices: tuple[str, ...] = ()
    custom: bool = False  # a dropdown that takes values outside its choices

    @property
    def elem_id(self) -> str:
        return PREFIX + self.name

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)

    @property
    def info(self) -> Optional[str]:
        return INFO.get(self.name)


def _hint_parts(hint: Any) -> tuple[Any, bool]:
    """(inner type, optional) of a field's annotation."""
    if get_origin(hint) is Union:
        inner = [a for a in get_args(hint) if a is not type(None)]
        return inner[0], True
    return hint, False


def _control(name: str, section: str, hints: dict[str, Any]) -> Control:
    if name == "conv_dim":
        return Control(name, "text", section, optional=True, integer=True)
    if name == "conv_alpha":
        return Control(name, "text", section, optional=True)
    inner, optional = _hint_parts(hints[name])
    if name in CHOICES:
        return Control(name, "dropdown", section, optional=optional, integer=inner is int,
                       choices=CHOICES[name], custom=name in CUSTOM_VALUES)
    if inner is bool:
        return Control(name, "checkbox", section)
    if get_origin(inner) is list:
        return Control(name, "text", section, is_list=True)
    if inner in (int, float):
        # a required number gets a number box; an optional one a text box (empty = not set)
        return Control(name, "text" if optional else "number", section, optional=optional, integer=inner is int)
    return Control(name, "text", section, optional=optional)


def build_controls() -> list[Control]:
    """Every control of the form, sections first, then "Advanced" in field order."""
    hints = get_type_hints(TrainConfig)
    placed: set[str] = set()
    controls: list[Control] = []
    for section, names in SECTIONS:
        for name in names:
            if name not in hints and name not in EXTRA_CONTROLS:
                raise ValueError(f"section {section!r} names {name!r}, which is no TrainConfig field")
            controls.append(_control(name, section, hints))
            placed.add(name)
    for f in dataclasses.fields(TrainConfig):
        if f.name not in placed:
            controls.append(_control(f.name, ADVANCED, hints))
    return controls


CONTROLS: tuple[Control, ...] = tuple(build_controls())
CONTROL_NAMES: tuple[str, ...] = tuple(c.name for c in CONTROLS)
BY_NAME: dict[str, Control] = {c.name: c for c in CONTROLS}


def section_names() -> list[str]:
    return [s for s, _ in SECTIONS] + [ADVANCED]


def controls_in(section: str) -> list[Control]:
    return [c for c in CONTROLS if c.section == section]


# --- form values <-> options -----------------------------------------------------------


def _format_number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return str(value)


def _to_form(control: Control, value: Any) -> Any:
    """A typed option value as the control shows it."""
    if control.kind == "checkbox":
        return bool(value)
    if control.kind == "number":
        if value is None or value == "":
            return 0
        return int(value) if control.integer else float(value)
    if control.is_list:
        if isinstance(value, str):
            return value
        return " ".join(str(v) for v in (value or []))
    if control.name == "save_precision" and value in (None, ""):
        return "float"  # None = full precision, as "float"
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _format_number(value)
    return str(value)


def _from_form(control: Control, value: Any) -> Any:
    """A control's value as an option value for from_dict (strings are coerced there)."""
    if control.kind == "checkbox":
        return bool(value)
    if control.kind == "number":
        if value is None or value == "":
            return getattr(TrainConfig(), control.name)
        if control.integer and isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if isinstance(value, str):
        value = value.strip()
    if control.optional and (value is None or value == ""):
        return None
    if value is None:
        return ""
    return value


def form_to_options(values: Union[dict[str, Any], list[Any], tuple]) -> dict[str, Any]:
    """Form values (a dict by option name, or a list in :data:`CONTROLS` order) as a dict of
    kohya options for :func:`lora_trainer.config.from_dict`. ``network_args`` comes before
    ``conv_dim`` / ``conv_alpha``, which from_dict folds into it."""
    if not isinstance(values, dict):
        values = dict(zip(CONTROL_NAMES, values))
    out: dict[str, Any] = {}
    for control in CONTROLS:
        if control.name in EXTRA_CONTROLS or control.name not in values:
            continue
        out[control.name] = _from_form(control, values[control.name])
    for name in EXTRA_CONTROLS:
        if name in values:
            out[name] = _from_form(BY_NAME[name], values[name])
    return out


def options_to_form(options: dict[str, Any]) -> dict[str, Any]:
    """Typed options (a TrainConfig's dict, possibly partial) as form values by control name."""
    defaults = TrainConfig().to_dict()
    merged = {**defaults, **options}
    network_args = [str(a) for a in (merged.get("network_args") or [])]
    if isinstance(merged.get("network_args"), str):
        network_args = merged["network_args"].split()
    extra = {name: None for name in EXTRA_CONTROLS}
    kept = []
    for item in network_args:
        key, _, value = item.partition("=")
        if key.strip() in EXTRA_CONTROLS:
            extra[key.strip()] = value.strip()
        else:
            kept.append(item)
    merged["network_args"] = kept
    for name in EXTRA_CONTROLS:
        if options.get(name) not in (None, ""):
            extra[name] = options[name]
    out = {}
    for control in CONTROLS:
        value = extra[control.name] if control.name in EXTRA_CONTROLS else merged.get(control.name)
        out[control.name] = _to_form(control, value)
    return out


def form_list(form: dict[str, Any]) -> list[Any]:
    """Form values in :data:`CONTROLS` order (the order of the tab's components)."""
    return [form[name] for name in CONTROL_NAMES]


def default_form(**overrides: Any) -> dict[str, Any]:
    return options_to_form({**TrainConfig().to_dict(), **overrides})


# --- building a config without the path checks (save / load / presets) -----------------


def options_unchecked(data: dict[str, Any], base: Optional[dict[str, Any]] = None) -> tuple[dict[str, Any], list[str]]:
    """Options coerced like :func:`~lora_trainer.config.from_dict`, but without
    :func:`~lora_trainer.config.validate`: a half-filled form can be saved, a TOML with a
    dataset that is not on this machine can be loaded. Unknown options and values of the
    wrong type are reported in the notes and left out, never raised.
    Returns (a full TrainConfig dict, notes)."""
    return coerce_options(data, base, strict=False)


def config_unchecked(form_or_options: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """A TrainConfig from form values or options, without validation."""
    values, notes = options_unchecked(form_or_options)
    return TrainConfig(**values), notes


# --- TOML, presets, imports ----------------------------------------------------------------


def save_toml(form: dict[str, Any], path: Union[str, Path]) -> tuple[Path, list[str]]:
    """Write the form as a flat kohya TOML. Returns (path, notes): what validation says about
    the config (it is saved all the same, so an unfinished form can be kept)."""
    from ..config import to_toml, validate
    from ..networks.io import write_atomic

    config, notes = config_unchecked(form_to_options(form))
    try:
        notes += [f"warning: {w}" for w in validate(config)]
    except ConfigError as exc:
        notes += [f"not ready to train: {line}" for line in str(exc).splitlines()]
    path = Path(path).expanduser()
    if path.suffix.lower() != ".toml":
        path = path.with_name(path.name + ".toml")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, to_toml(config).encode("utf-8"))
    return path, notes


def load_toml_form(path: Union[str, Path]) -> tuple[dict[str, Any], list[str]]:
    """A TOML (flat or kohya's sectioned layout) as form values; raises ConfigError for a
    missing or unreadable file. Options it does not name keep their defaults."""
    from ..config import load_toml

    values, notes = options_unchecked(load_toml(path))
    return options_to_form(values), notes


def apply_preset_form(name: str, form: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The form with a preset applied (:func:`lora_trainer.presets.apply_preset`), and its notes."""
    from ..presets import PRESET_NOTES, apply_preset

    current, _ = options_unchecked(form_to_options(form))
    applied = apply_preset(name, current)
    values, notes = options_unchecked(applied, base=current)
    return options_to_form(values), list(PRESET_NOTES.get(name, [])) + notes


def import_form(path: Union[str, Path], form: Optional[dict[str, Any]] = None) -> tuple[dict[str, Any], list[str]]:
    """A kohya_ss GUI ``.json`` or a LoRA_Easy_Training_Scripts ``.toml`` as form values.
    Options the file does not set keep the current form's values (or the defaults)."""
    from ..config_import import import_easy_training_toml, import_kohya_ss_json

    path = Path(path)
    if path.suffix.lower() == ".json":
        options, notes = import_kohya_ss_json(path)
        source = "kohya_ss GUI"
    elif path.suffix.lower() == ".toml":
        options, notes = import_easy_training_toml(path)
        source = "LoRA_Easy_Training_Scripts"
    else:
        raise ConfigError(f"{path.name}: expected a kohya_ss GUI .json or a LoRA_Easy_Training_Scripts .toml")
    base = options_unchecked(form_to_options(form))[0] if form else None
    values, more = options_unchecked(options, base=base)
    return options_to_form(values), [f"imported from {source}: {path.name}"] + list(notes) + more
