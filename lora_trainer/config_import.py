"""Import configs saved by the two GUIs our users come from.

* kohya_ss (bmaltais): the GUI's saved ``.json``. Keys are mostly kohya option
  names, plus GUI fields (``LoRA_type``, ``epoch``, ``max_resolution``,
  ``optimizer``, ``lr_warmup`` in percent, ``optimizer_args`` as one
  space-separated string, ...). They are translated the way the GUI builds its
  sd-scripts command (``kohya_gui/lora_gui.py``: ``train_model``).
* LoRA_Easy_Training_Scripts (derrian-distro): the ``.toml`` the GUI saves,
  sectioned as ``[general_args.args]``, ``[general_args.dataset_args]``,
  ``[network_args.args]`` (+ ``.network_args`` table), ``[optimizer_args.args]``
  (+ ``.optimizer_args`` / ``.lr_scheduler_args`` tables), ``[saving_args.args]``,
  ``[bucket_args.dataset_args]``, ``[noise_args.args]``, ``[[subsets]]``, ... and
  translated as its backend does (``utils/validation.py``: empty / false values
  are left out, tables become ``key=value`` lists).

Both return ``(options, notes)``: a dict of our (kohya) option names for
:func:`lora_trainer.config.from_dict`, and one line per setting that was not
carried over or was changed on the way (GUI-only, not supported yet, unknown).
Nothing here fails on an unknown key.
"""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any, Optional

from .config import ALIASES, FIELD_NAMES, ConfigError, load_toml

# kohya options we take (our TrainConfig fields) and kohya flags we accept and ignore
_OURS = set(FIELD_NAMES)
_ACCEPTED_IGNORED = {k for k, v in ALIASES.items() if v is None} - {"conv_dim", "conv_alpha"}
# network_args our LoRA module reads; others are dropped with a note
_NETWORK_ARGS_TAKEN = ("conv_dim", "conv_alpha", "rank_dropout", "module_dropout")
_LORA_TYPES_UNSUPPORTED = {
    "Kohya DyLoRA": "networks.dylora",
    "LoRA-FA": "networks.lora_fa",
    "Kohya LoHa": "networks.loha",
    "Kohya LoKr": "networks.lokr",
}


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _off(value: Any) -> bool:
    """A GUI field left at nothing: empty, 0, false, "none"."""
    if _empty(value) or value is False:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "0.0", "false", "none"):
        return True
    return False


def _number(value: Any) -> Optional[float]:
    if _empty(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _split_args(text: Any) -> list[str]:
    """The GUI's ``str(x).replace('"', '').split()`` for optimizer/scheduler/network args."""
    if _empty(text):
        return []
    if isinstance(text, (list, tuple)):
        return [str(v) for v in text]
    return str(text).replace('"', "").split()


def _load_json(path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a JSON object of settings")
    return data


def _take_network_args(items: list[str], out: dict[str, Any], notes: list[str], source: str) -> None:
    kept = list(out.get("network_args", []))
    for item in items:
        key = item.partition("=")[0].strip()
        if key in _NETWORK_ARGS_TAKEN:
            kept = [k for k in kept if not k.startswith(key + "=")] + [item]
        else:
            notes.append(f"{source}: network arg {item!r} is not supported yet (LoRA/LoCon options only); dropped")
    if kept:
        out["network_args"] = kept


# -- kohya_ss GUI (bmaltais) -----------------------------------------------------------

# GUI field -> our option, same value
_KOHYA_SS_RENAMES = {
    "max_resolution": "resolution",
    "optimizer": "optimizer_type",
    "lora_network_weights": "network_weights",
}
# fields that mean "not set" when 0 (the GUI sends None to sd-scripts then)
_KOHYA_SS_ZERO_IS_NONE = {
    "clip_skip", "seed", "min_snr_gamma", "ip_noise_gamma", "min_timestep", "max_timestep", "save_every_n_epochs",
    "save_last_n_epochs", "max_train_steps", "max_train_epochs", "v_pred_like_loss", "scale_weight_norms",
    "network_dropout", "noise_offset", "adaptive_noise_scale", "multires_noise_iterations", "lr_scheduler_power",
    "sample_every_n_epochs", "sample_every_n_steps",
}
# GUI plumbing: launcher, logging, hub upload, sampling layout ... nothing that changes the LoRA
_KOHYA_SS_GUI_ONLY = {
    "model_list", "save_as_bool", "file_path", "num_cpu_threads_per_process", "num_processes", "num_machines",
    "multi_gpu", "gpu_ids", "main_process_port", "dynamo_backend", "dynamo_mode", "dynamo_use_fullgraph",
    "dynamo_use_dynamic", "extra_accelerate_launch_args", "logging_dir", "log_with", "wandb_api_key",
    "wandb_run_name", "log_tracker_name", "log_tracker_config", "log_config", "log_prefix", "highvram", "lowvram",
    "lowram", "max_data_loader_n_workers", "persistent_data_loader_workers", "vae_batch_size", "skip_cache_check",
    "huggingface_repo_id", "huggingface_token", "huggingface_repo_type", "huggingface_repo_visibility",
    "huggingface_path_in_repo", "save_state_to_huggingface", "resume_from_huggingface", "async_upload",
    "mem_eff_attn", "xformers", "sdpa", "v2", "sdxl", "save_state",
    "save_state_on_train_end", "save_last_n_steps_state", "save_last_n_epochs_state", "noise_offset_type",
    "huber_schedule", "huber_c", "huber_scale", "flux1_checkbox", "sd3_checkbox", "unit", "factor", "use_cp", "use_tucker",
    "use_scalar", "rank_dropout_scale", "constrain", "rescaled", "train_norm", "decompose_both",
    "train_on_input", "bypass_mode", "dora_wd", "LyCORIS_preset", "t5xxl_lr", "show_timesteps",
    "show_timesteps_resolution", "max_token_length_sd3",
}
# GUI fields for features we do not have: noted when set
_KOHYA_SS_UNSUPPORTED = {
    "stop_text_encoder_training": "stopping text-encoder training part-way is not supported (kohya_ss ignores it too)",
    "dataset_config": "dataset config files are not read: set train_data_dir to the folder holding N_name folders",
    "vae": "an external VAE is not supported: the checkpoint's own VAE is used",
    "weighted_captions": "weighted captions are not supported",
    "masked_loss": "masked loss is not supported",
    "fp8_base": "fp8 base weights are not supported",
    "fp8_base_unet": "fp8 base weights are not supported",
    "resume": "resuming a saved training state is not supported; network_weights continues from a LoRA file",
    "save_every_n_steps": "saving every N steps is not supported; use save_every_n_epochs",
    "save_last_n_steps": "save_last_n_steps is not supported; use save_last_n_epochs",
    "noise_offset_random_strength": "noise_offset_random_strength is not supported",
    "ip_noise_gamma_random_strength": "ip_noise_gamma_random_strength is not supported",
    "train_inpainting": "inpainting training is not supported",
    "loraplus_lr_ratio": "LoRA+ learning-rate ratios are not supported",
    "loraplus_unet_lr_ratio": "LoRA+ learning-rate ratios are not supported",
    "loraplus_text_encoder_lr_ratio": "LoRA+ learning-rate ratios are not supported",
    "train_lora_ggpo": "GGPO is not supported",
    "ggpo_sigma": "GGPO is not supported",
    "ggpo_beta": "GGPO is not supported",
    "down_lr_weight": "block-wise learning rates are not supported yet",
    "mid_lr_weight": "block-wise learning rates are not supported yet",
    "up_lr_weight": "block-wise learning rates are not supported yet",
    "block_lr_zero_threshold": "block-wise learning rates are not supported yet",
    "block_dims": "block-wise dims are not supported yet",
    "block_alphas": "block-wise alphas are not supported yet",
    "conv_block_dims": "block-wise dims are not supported yet",
    "conv_block_alphas": "block-wise alphas are not supported yet",
    "metadata_author": "modelspec metadata fields are not written from the import",
    "metadata_description": "modelspec metadata fields are not written from the import",
    "metadata_license": "modelspec metadata fields are not written from the import",
    "metadata_tags": "modelspec metadata fields are not written from the import",
    "metadata_title": "modelspec metadata fields are not written from the import",
}


def import_kohya_ss_json(path) -> tuple[dict[str, Any], list[str]]:
    """Options and notes from a kohya_ss GUI LoRA config (``.json``)."""
    return kohya_ss_options(_load_json(path), source=Path(path))


def _write_sample_prompts(text: str, data: dict[str, Any], source: Optional[Path]) -> Optional[Path]:
    """kohya_ss keeps the sample prompts as text and writes them to ``<output_dir>/sample/prompt.txt``
    when it launches sd-scripts; we write that same file at import (beside the imported config when
    it names no output_dir). An existing file with other content is left alone: a numbered name is used."""
    from .fileio import write_atomic

    folder = Path(str(data["output_dir"])) / "sample" if not _empty(data.get("output_dir")) else \
        (source.parent if source is not None else None)
    if folder is None:
        return None
    target = folder / "prompt.txt"
    number = 1
    while target.exists() and target.read_text(encoding="utf-8", errors="replace") != text:
        number += 1
        target = folder / f"prompt-{number}.txt"
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(target, text.encode("utf-8"))
    return target


def kohya_ss_options(data: dict[str, Any], source: Optional[Path] = None) -> tuple[dict[str, Any], list[str]]:
    """``source``: the imported file (where the inline sample prompts go when no output_dir is set)."""
    out: dict[str, Any] = {}
    notes: list[str] = []
    gui_only_set: list[str] = []
    data = dict(data)
    handled: set[str] = set()

    # --- sample prompts: inline text in the GUI, a file for sd-scripts -----------------
    handled.add("sample_prompts")
    prompts = str(data.get("sample_prompts") or "").strip()
    sampling_on = not _off(data.get("sample_every_n_epochs")) or not _off(data.get("sample_every_n_steps"))
    if prompts and sampling_on:
        written = _write_sample_prompts(prompts + "\n", data, source)
        if written is not None:
            out["sample_prompts"] = str(written)
            notes.append(f"sample_prompts: the GUI's prompt text was written to {written}")
        else:
            notes.append("sample_prompts: the GUI's prompt text was not imported (no output_dir to write it to)")
    elif prompts:
        notes.append("sample_prompts is set but sample_every_n_epochs and sample_every_n_steps are 0: "
                     "no samples are drawn (as in kohya_ss)")

    def take(key: str, target: Optional[str] = None, value: Any = None) -> None:
        out[target or key] = data[key] if value is None else value

    # --- network type ---------------------------------------------------------------
    lora_type = str(data.get("LoRA_type") or "Standard")
    handled.add("LoRA_type")
    conv_dim, conv_alpha = data.get("conv_dim"), data.get("conv_alpha")
    handled.update({"conv_dim", "conv_alpha", "rank_dropout", "module_dropout"})
    if lora_type == "Standard":
        out["network_module"] = "networks.lora"
        if not _off(conv_dim):
            notes.append(f"conv_dim {conv_dim} not used: LoRA_type is Standard (kohya_ss passes conv_dim only for "
                         "Kohya LoCon); choose LoCon to train the 3x3 convolutions")
    elif lora_type == "Kohya LoCon":
        out["network_module"] = "networks.lora"
        if not _off(conv_dim):
            alpha = conv_alpha if not _empty(conv_alpha) else 1
            out["network_args"] = [f"conv_dim={int(float(conv_dim))}", f"conv_alpha={alpha}"]
    elif lora_type in _LORA_TYPES_UNSUPPORTED:
        out["network_module"] = _LORA_TYPES_UNSUPPORTED[lora_type]
        notes.append(f"LoRA_type {lora_type!r} is not supported yet: only LoRA and LoCon are; set network_module "
                     "to networks.lora to train a LoRA with the other settings")
    elif lora_type == "LoCon" or lora_type.startswith("LyCORIS/"):
        out["network_module"] = "lycoris.kohya"
        notes.append(f"LoRA_type {lora_type!r} (LyCORIS) is not supported yet; set network_module to networks.lora "
                     "(with conv_dim for LoCon) to train a LoRA with the other settings")
    else:
        out["network_module"] = "networks.lora"
        notes.append(f"LoRA_type {lora_type!r} is not a Stable Diffusion LoRA type this trainer knows; "
                     "imported as a plain LoRA")
    if lora_type in ("Standard", "Kohya LoCon"):
        extra = [f"{k}={data[k]}" for k in ("rank_dropout", "module_dropout") if not _off(data.get(k))]
        if extra:
            out["network_args"] = list(out.get("network_args", [])) + extra

    # --- length: epoch / max_train_epochs / max_train_steps ------------------------------
    handled.update({"epoch", "max_train_epochs", "max_train_steps"})
    epoch = _number(data.get("epoch"))
    max_epochs = _number(data.get("max_train_epochs"))
    max_steps = _number(data.get("max_train_steps"))
    if max_epochs:
        out["max_train_epochs"] = int(max_epochs)
        if epoch and int(epoch) != int(max_epochs):
            notes.append(f"epoch {int(epoch)} ignored: max_train_epochs {int(max_epochs)} decides (as in sd-scripts)")
    elif max_steps:
        out["max_train_steps"] = int(max_steps)
        if epoch:
            notes.append(f"epoch {int(epoch)} ignored: max_train_steps {int(max_steps)} is set (as in kohya_ss)")
    elif epoch:
        # kohya_ss turns its epoch count into max_train_steps; sd-scripts' max_train_epochs is the same length
        out["max_train_epochs"] = int(epoch)

    # --- learning rates and which parts train (kohya_ss's resolve_network_train_flags) -----
    handled.update({"learning_rate", "unet_lr", "text_encoder_lr"})
    lr, unet_lr, te_lr = (_number(data.get(k)) for k in ("learning_rate", "unet_lr", "text_encoder_lr"))
    if lr is not None:
        out["learning_rate"] = lr
    if unet_lr:
        out["unet_lr"] = unet_lr
    if te_lr:
        out["text_encoder_lr"] = te_lr
    if (te_lr or 0) == 0 and (unet_lr or 0) != 0:
        out["network_train_unet_only"] = True
        notes.append("text_encoder_lr is 0: only the UNet is trained (network_train_unet_only), as kohya_ss does")
    elif (unet_lr or 0) == 0 and (te_lr or 0) != 0:
        out["network_train_text_encoder_only"] = True
        notes.append("unet_lr is 0: only the text encoder is trained (network_train_text_encoder_only), "
                     "as kohya_ss does")

    # --- scheduler ------------------------------------------------------------------------
    handled.update({"lr_warmup", "lr_warmup_steps", "lr_scheduler_num_cycles", "lr_scheduler_args",
                    "lr_scheduler_type", "optimizer_args"})
    warmup_pct, warmup_steps = _number(data.get("lr_warmup")) or 0.0, _number(data.get("lr_warmup_steps")) or 0.0
    if warmup_steps > 0:
        out["lr_warmup_steps"] = int(warmup_steps)
        if warmup_pct > 0:
            notes.append("lr_warmup (percent) ignored: lr_warmup_steps is set (as in kohya_ss)")
    elif warmup_pct > 0:
        if warmup_pct >= 100:
            notes.append(f"lr_warmup {warmup_pct:g}% is the whole run; imported as 99%")
            warmup_pct = 99
        out["lr_warmup_steps"] = warmup_pct / 100  # a ratio of the total steps
    cycles = data.get("lr_scheduler_num_cycles")
    if not _empty(cycles):
        out["lr_scheduler_num_cycles"] = int(float(cycles))
    elif "max_train_epochs" in out:
        out["lr_scheduler_num_cycles"] = out["max_train_epochs"]  # kohya_ss: empty -> the epoch count
    if _split_args(data.get("lr_scheduler_args")):
        out["lr_scheduler_args"] = _split_args(data.get("lr_scheduler_args"))
    if not _off(data.get("lr_scheduler_type")):
        notes.append(f"lr_scheduler_type {data['lr_scheduler_type']!r} (a custom scheduler class) is not "
                     f"supported; lr_scheduler {data.get('lr_scheduler')!r} is used")
    if _split_args(data.get("optimizer_args")):
        out["optimizer_args"] = _split_args(data.get("optimizer_args"))

    # --- noise: kohya_ss passes the fields of the chosen noise_offset_type only ---------
    noise_type = str(data.get("noise_offset_type") or "Original")
    handled.update({"noise_offset", "adaptive_noise_scale", "multires_noise_iterations", "multires_noise_discount"})
    if noise_type == "Original":
        for key in ("noise_offset", "adaptive_noise_scale"):
            if not _off(data.get(key)):
                out[key] = data[key]
    elif noise_type == "Multires":
        if not _off(data.get("multires_noise_iterations")):
            out["multires_noise_iterations"] = data["multires_noise_iterations"]
            if not _empty(data.get("multires_noise_discount")):
                out["multires_noise_discount"] = data["multires_noise_discount"]

    # --- SDXL text-encoder cache, loss type, extra command-line parameters ------------
    handled.update({"sdxl_cache_text_encoder_outputs", "loss_type", "additional_parameters",
                    "cache_text_encoder_outputs", "sdxl_no_half_vae", "no_half_vae"})
    if "no_half_vae" in _OURS and (data.get("sdxl") and data.get("sdxl_no_half_vae") or data.get("no_half_vae")):
        out["no_half_vae"] = True  # kohya_ss passes it for SDXL only
    if data.get("sdxl") and data.get("sdxl_cache_text_encoder_outputs") or data.get("cache_text_encoder_outputs"):
        out["cache_text_encoder_outputs"] = True
    if not _empty(data.get("loss_type")) and str(data["loss_type"]).lower() != "l2":
        notes.append(f"loss_type {data['loss_type']!r} is not supported: the L2 (MSE) loss is used")
    if not _empty(data.get("additional_parameters")):
        _additional_parameters(str(data["additional_parameters"]), out, notes)

    # --- everything else ---------------------------------------------------------------
    for key, value in data.items():
        if key in handled:
            continue
        if key in _KOHYA_SS_RENAMES:
            if not _empty(value):
                out[_KOHYA_SS_RENAMES[key]] = value
            continue
        if key in _KOHYA_SS_UNSUPPORTED:
            if not _off(value):
                notes.append(f"{key} = {value!r}: {_KOHYA_SS_UNSUPPORTED[key]}")
            continue
        if key in _KOHYA_SS_GUI_ONLY or key in _ACCEPTED_IGNORED:
            if not _off(value) and key not in ("xformers", "sdpa", "v2", "sdxl", "noise_offset_type",
                                               "LyCORIS_preset"):
                gui_only_set.append(key)  # set, but without effect on the LoRA
            continue
        if key in _OURS:
            if key in _KOHYA_SS_ZERO_IS_NONE and _off(value):
                continue
            if _empty(value):
                continue
            out[key] = value
            continue
        if key.startswith(("flux1_", "sd3_", "t5xxl", "clip_l", "clip_g", "ae", "hunyuan", "anima", "lumina")) \
                or key in ("model_type", "discrete_flow_shift", "model_prediction_type", "timestep_sampling",
                           "split_mode", "train_blocks", "guidance_scale", "mem_eff_save", "apply_t5_attn_mask",
                           "split_qkv", "train_t5xxl", "cpu_offload_checkpointing", "blocks_to_swap",
                           "single_blocks_to_swap", "double_blocks_to_swap", "enable_all_linear",
                           "img_attn_dim", "img_mlp_dim", "img_mod_dim", "single_dim", "txt_attn_dim",
                           "txt_mlp_dim", "txt_mod_dim", "single_mod_dim", "in_dims",
                           "train_double_block_indices", "train_single_block_indices", "logit_mean",
                           "logit_std", "mode_scale", "weighting_scheme", "pos_emb_random_crop_rate",
                           "enable_scaled_pos_embed", "save_clip", "save_t5xxl", "t5_dropout_rate",
                           "clip_g_dropout_rate", "clip_l_dropout_rate", "disable_mmap_load_safetensors",
                           "fused_backward_pass"):
            continue  # Flux / SD3 / other model families' fields
        if not _off(value):
            notes.append(f"unknown setting {key} = {value!r}: not imported")
    if data.get("flux1_checkbox") or data.get("sd3_checkbox"):
        notes.append("this config trains Flux / SD3, which this trainer does not; only SD 1.x / 2.x / SDXL are "
                     "supported")
    if gui_only_set:
        notes.append("GUI-only settings not carried over (no effect on the LoRA here): " + ", ".join(sorted(gui_only_set)))

    # kohya_ss writes clip_skip, keep_tokens, seed, max_token_length ... as strings: leave
    # the typing to from_dict, but drop the "not set" zeros first
    for key in ("clip_skip", "seed"):
        if key in out and _off(out[key]):
            del out[key]
    return out, notes


def _additional_parameters(text: str, out: dict[str, Any], notes: list[str]) -> None:
    """kohya_ss's free-form extra command line, e.g. ``--debiased_estimation_loss --min_snr_gamma=5``."""
    try:
        tokens = shlex.split(text)
    except ValueError:
        notes.append(f"additional_parameters {text!r} could not be parsed; not imported")
        return
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--"):
            notes.append(f"additional_parameters: {token!r} is not an option; not imported")
            continue
        key, sep, value = token[2:].partition("=")
        key = key.replace("-", "_")
        values = [value] if sep else []
        while not sep and i < len(tokens) and not tokens[i].startswith("--"):
            values.append(tokens[i])
            i += 1
        if key in _OURS:
            if key in ("optimizer_args", "network_args", "lr_scheduler_args"):
                items = [v for v in values]
                if key == "network_args":
                    _take_network_args(items, out, notes, "additional_parameters")
                else:
                    out[key] = list(out.get(key, [])) + items
            else:
                out[key] = values[0] if len(values) == 1 else (" ".join(values) if values else True)
        elif key in _ACCEPTED_IGNORED:
            continue
        else:
            notes.append(f"additional_parameters: --{key} is not supported; not imported")


# -- LoRA_Easy_Training_Scripts (derrian-distro) -------------------------------------

_EASY_SECTIONS = ("general_args", "network_args", "optimizer_args", "saving_args", "bucket_args", "noise_args",
                  "sample_args", "logging_args", "extra_args")
_EASY_GUI_ONLY = {"easy_name", "tag_occurrence", "save_toml", "save_toml_location", "max_data_loader_n_workers",
                  "persistent_data_loader_workers", "xformers", "sdpa", "v2", "sdxl", "lowram",
                  "highvram", "log_with", "logging_dir", "log_prefix", "log_tracker_name", "log_tracker_config",
                  "wandb_api_key", "wandb_run_name", "huber_schedule", "huber_c", "cache_text_encoder_outputs_to_disk",
                  "save_state", "save_last_n_epochs_state", "save_last_n_steps_state"}
_EASY_UNSUPPORTED = {
    "vae": "an external VAE is not supported: the checkpoint's own VAE is used",
    "fp8_base": "fp8 base weights are not supported",
    "zero_terminal_snr": "zero_terminal_snr is not supported yet",
    "masked_loss": "masked loss is not supported",
    "resume": "resuming a saved training state is not supported; network_weights continues from a LoRA file",
    "save_every_n_steps": "saving every N steps is not supported; use save_every_n_epochs",
    "save_last_n_steps": "save_last_n_steps is not supported; use save_last_n_epochs",
    "fa": "LoRA-FA is not supported; a plain LoRA is trained",
}
_EASY_CUSTOM_OPTIMIZERS = {"came", "compass", "lpfadamw", "rmsprop"}
# subset keys -> our (global) options; the folder layout carries image_dir / num_repeats / is_reg
_SUBSET_KEYS = ("caption_extension", "shuffle_caption", "keep_tokens", "flip_aug", "color_aug", "random_crop",
                "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate")
_SUBSET_KNOWN = set(_SUBSET_KEYS) | {
    "name", "image_dir", "num_repeats", "is_reg", "token_warmup_min", "token_warmup_step", "face_crop_aug_range",
    "conditioning_data_dir", "keep_tokens_separator", "secondary_separator", "caption_prefix", "caption_suffix",
}


def import_easy_training_toml(path) -> tuple[dict[str, Any], list[str]]:
    """Options and notes from a LoRA_Easy_Training_Scripts config (``.toml``)."""
    return easy_training_options(load_toml(path))


def _table_to_args(value: Any) -> list[str]:
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if isinstance(v, bool):
                v = str(v)
            elif isinstance(v, str) and v in ("true", "false"):
                v = v.capitalize()  # the backend's fix-up for optimizer args
            elif isinstance(v, (list, tuple)):
                v = ",".join(str(x) for x in v)
            items.append(f"{k}={v}")
        return items
    return _split_args(value)


def easy_training_options(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {}
    notes: list[str] = []
    args: dict[str, Any] = {}
    dataset_args: dict[str, Any] = {}
    for section, value in data.items():
        if section in ("subsets", "train_mode"):
            continue
        if not isinstance(value, dict):
            notes.append(f"unknown top-level setting {section} = {value!r}: not imported")
            continue
        if section not in _EASY_SECTIONS:
            if value.get("args") or value.get("dataset_args"):
                notes.append(f"[{section}] settings are for another model family or feature; not imported")
            continue
        args.update(value.get("args") or {})
        dataset_args.update(value.get("dataset_args") or {})

    mode = (data.get("train_mode") or {}).get("train_mode", "lora") if isinstance(data.get("train_mode"), dict) \
        else "lora"
    if str(mode).lower() != "lora":
        notes.append(f"train_mode {mode!r} is not supported: only LoRA training is")

    # ${replace} in paths is the GUI's easy_name template
    easy_name = str(args.get("easy_name") or "")
    for key in ("output_dir", "output_name"):
        if isinstance(args.get(key), str) and "${replace}" in args[key]:
            args[key] = args[key].replace("${replace}", easy_name)

    # the backend drops empty / false values before building the command line
    args = {k: v for k, v in args.items() if v and not (isinstance(v, str) and v.lower() == "false")}

    for key, value in args.items():
        if key == "network_args":
            items = _table_to_args(value)
            if isinstance(value, dict):
                if "algo" in value:
                    out["network_module"] = "lycoris.kohya"
                    notes.append(f"network algo {value['algo']!r} (LyCORIS) is not supported yet; set network_module "
                                 "to networks.lora to train a LoRA with the other settings")
                elif "unit" in value:
                    out["network_module"] = "networks.dylora"
                    notes.append("DyLoRA is not supported yet; set network_module to networks.lora to train a LoRA")
                # the backend passes dropped-out toggles as False; they are not arguments
                items = [f"{k}={v}" if not isinstance(v, (list, tuple)) else f"{k}={','.join(map(str, v))}"
                         for k, v in value.items()
                         if not (v is False or v is None or v == "") and k not in ("algo", "unit", "preset")]
            _take_network_args(items, out, notes, "network_args")
        elif key == "lr_scheduler_args" and "lr_scheduler_type" in args:
            notes.append(f"lr_scheduler_args {_table_to_args(value)} belong to the custom scheduler; not imported")
        elif key in ("optimizer_args", "lr_scheduler_args"):
            items = _table_to_args(value)
            if items:
                out[key] = items
        elif key == "warmup_ratio":
            ratio = _number(value) or 0.0
            if 0 < ratio < 1:
                out["lr_warmup_steps"] = ratio  # a ratio of the total steps
            elif ratio >= 1:
                notes.append(f"warmup_ratio {ratio:g} is the whole run; not imported")
        elif key == "lr_scheduler_type":
            notes.append(f"custom scheduler {value!r} is not supported; imported as cosine_with_restarts "
                         "(min_lr / gamma / d not applied)")
            out["lr_scheduler"] = "cosine_with_restarts"
        elif key == "lr_scheduler" and "lr_scheduler_type" in args:
            continue
        elif key == "optimizer_type" and str(value).lower() in _EASY_CUSTOM_OPTIMIZERS:
            out[key] = value
            notes.append(f"optimizer {value!r} is one of LoRA_Easy_Training_Scripts' own optimizers and is not "
                         "available here; pick AdamW, Prodigy, DAdaptAdam, Lion, AdaFactor ...")
        elif key == "save_n_epoch_ratio":
            epochs = _number(args.get("max_train_epochs"))
            if epochs:
                # sd-scripts: save_every_n_epochs = floor(epochs / ratio) or 1
                out["save_every_n_epochs"] = max(int(epochs // float(value)), 1)
            else:
                notes.append("save_n_epoch_ratio needs max_train_epochs; not imported")
        elif key == "loss_type":
            if str(value).lower() != "l2":
                notes.append(f"loss_type {value!r} is not supported: the L2 (MSE) loss is used")
        elif key == "keep_tokens_separator":
            out[key] = value
        elif key == "mixed_precision":
            out[key] = "no" if value == "float" else value
        elif key in _EASY_UNSUPPORTED:
            notes.append(f"{key} = {value!r}: {_EASY_UNSUPPORTED[key]}")
        elif key in _EASY_GUI_ONLY or key in _ACCEPTED_IGNORED:
            continue
        elif key in _OURS:
            out[key] = value
        else:
            notes.append(f"unknown setting {key} = {value!r}: not imported")

    for key, value in dataset_args.items():
        if not value:  # the backend drops these too
            continue
        if key == "resolution":
            out["resolution"] = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        elif key == "batch_size":
            out["train_batch_size"] = value
        elif key in _OURS:
            out[key] = value
        else:
            notes.append(f"unknown dataset setting {key} = {value!r}: not imported")

    _easy_subsets(data.get("subsets") or [], out, notes)
    return out, notes


def _easy_subsets(subsets: list, out: dict[str, Any], notes: list[str]) -> None:
    """Subsets name image folders with their own repeats; our dataset is a folder of N_name folders."""
    from .dataset.folders import parse_folder_name

    if not isinstance(subsets, list):
        notes.append("subsets is not a list of tables; not imported")
        return
    subsets = [s for s in subsets if isinstance(s, dict)]
    for is_reg, target in ((False, "train_data_dir"), (True, "reg_data_dir")):
        group = [s for s in subsets if bool(s.get("is_reg")) == is_reg and s.get("image_dir")]
        if not group:
            continue
        dirs = [Path(str(s["image_dir"])) for s in group]
        parents = []
        for d in dirs:
            if d.parent not in parents:
                parents.append(d.parent)
        out[target] = str(parents[0])
        if len(parents) > 1:
            notes.append(f"{'reg ' if is_reg else ''}subsets are in different folders ({', '.join(map(str, parents))}); "
                         f"{target} is {parents[0]}: move the N_name folders into one folder")
        for s, d in zip(group, dirs):
            label = s.get("name") or d.name
            repeats = int(s.get("num_repeats") or 1)
            parsed = parse_folder_name(d.name)
            if parsed is None:
                notes.append(f"subset {label!r}: the trainer reads repeats from the folder name; rename {d} to "
                             f"{d.parent / f'{repeats}_{d.name}'} ({repeats} repeats)")
            elif parsed[0] != repeats:
                notes.append(f"subset {label!r}: num_repeats is {repeats} but the folder {d.name!r} says "
                             f"{parsed[0]}; the folder name decides here: rename it to "
                             f"{repeats}_{parsed[1]} to keep {repeats}")
        listed = {os.path.normpath(str(d)) for d in dirs}
        root = parents[0]
        if root.is_dir():
            others = sorted(p.name for p in root.iterdir()
                            if p.is_dir() and parse_folder_name(p.name) and os.path.normpath(str(p)) not in listed)
            if others:
                notes.append(f"{root} also holds {', '.join(others)}, which will be trained too")
        # per-subset options are global here: take them when all subsets agree
        if is_reg:
            continue
        for key in _SUBSET_KEYS:
            values = [s.get(key) for s in group]
            values = [None if (v is False or _empty(v) or v == 0) else v for v in values]
            distinct = []
            for v in values:
                if v not in distinct:
                    distinct.append(v)
            if len(distinct) > 1:
                notes.append(f"subsets differ in {key} ({', '.join(repr(v) for v in distinct)}); one value applies "
                             f"to every folder here: {distinct[0]!r} (from the first subset)")
            if distinct and distinct[0] is not None:
                out[key] = distinct[0]
        for s in group:
            for key in sorted(set(s) - _SUBSET_KNOWN):
                if not _off(s[key]):
                    notes.append(f"subset {s.get('name') or s.get('image_dir')!r}: unknown setting {key} = {s[key]!r}; "
                                 "not imported")
            for key in ("token_warmup_min", "token_warmup_step", "face_crop_aug_range", "conditioning_data_dir",
                        "keep_tokens_separator", "secondary_separator", "caption_prefix", "caption_suffix"):
                if key in s and not _off(s[key]) and not (key == "token_warmup_min" and s[key] == 1):
                    if key in ("keep_tokens_separator", "caption_prefix", "caption_suffix"):
                        out[key] = s[key]
                    else:
                        notes.append(f"subset {s.get('name') or s.get('image_dir')!r}: {key} = {s[key]!r} is not "
                                     "supported; not imported")
