"""Writing epochs as kohya does: file names, save cadence, last-n pruning, metadata.

The ``ss_*`` / modelspec metadata is built once at the start of the run (as
kohya does) and stamped with steps/epoch at each save. Beside each file goes
the WebUI's user-metadata JSON (activation text = trigger word, preferred
weight 0.8), so the Lora tab shows it ready to use.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch

from ..networks import io as network_io
from ..networks.metadata import checkpoint_metadata, modelspec_metadata, ss_metadata

SAVE_DTYPES = {None: None, "float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
def user_metadata(arch: str, trigger_word: str, preferred_weight: float = 0.8) -> dict:
    """The WebUI's extra-networks user metadata for a LoRA (``NAME.json``)."""
    return {
        "description": "",
        "sd version": "SDXL" if arch == "sdxl" else ("SD2" if arch == "sd2" else "SD1"),
        "activation text": trigger_word,
        "preferred weight": preferred_weight,
        "negative text": "",
        "notes": "trained with lora_trainer",
    }


class EpochSaver:
    def __init__(self, config, model, network, plan, *, seed: int, optimizer_name: str, total_steps: int,
                 log: Callable[[str], None] = print, around_save=None):
        self.config = config
        self.model = model
        self.network = network
        self.plan = plan
        self.log = log
        self.output_dir = Path(config.output_dir or ".")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.dtype = SAVE_DTYPES[config.save_precision]
        self.around_save = around_save  # a context-manager factory (schedule-free optimizers' eval mode)
        self.base_metadata = self._build_metadata(seed, optimizer_name, total_steps)

    def _build_metadata(self, seed: int, optimizer_name: str, total_steps: int) -> dict[str, str]:
        c, m, counts = self.config, self.model, self.plan.counts
        buckets = self.plan.dataset.settings
        started = time.time()
        ss = ss_metadata(
            m.arch, m.prediction_type,
            session_id=int.from_bytes(os.urandom(4), "little") % 2**31,
            training_started_at=started,
            output_name=c.output_name,
            learning_rate=c.learning_rate,
            text_encoder_lr=c.text_encoder_lr,
            unet_lr=c.unet_lr,
            num_train_images=counts.num_train_images,
            num_reg_images=counts.num_reg_images,
            num_batches_per_epoch=counts.num_batches_per_epoch,
            num_epochs=counts.num_epochs,
            gradient_checkpointing=c.gradient_checkpointing,
            gradient_accumulation_steps=c.gradient_accumulation_steps,
            max_train_steps=total_steps,
            lr_warmup_steps=int(c.lr_warmup_steps) if float(c.lr_warmup_steps).is_integer() else c.lr_warmup_steps,
            lr_scheduler=c.lr_scheduler,
            network_dim=c.network_dim,  # kohya writes the option as given ("None" when unset)
            network_alpha=c.network_alpha,
            network_dropout=c.network_dropout,
            network_args=_recorded_network_args(c),
            mixed_precision=c.mixed_precision,
            full_fp16=c.full_fp16,
            clip_skip=c.clip_skip,
            max_token_length=c.max_token_length,
            cache_latents=c.cache_latents,
            seed=seed,
            noise_offset=c.noise_offset,
            multires_noise_iterations=c.multires_noise_iterations,
            multires_noise_discount=c.multires_noise_discount,
            adaptive_noise_scale=c.adaptive_noise_scale,
            training_comment=c.training_comment,
            optimizer=optimizer_name,
            max_grad_norm=c.max_grad_norm,
            caption_dropout_rate=c.caption_dropout_rate,
            caption_dropout_every_n_epochs=c.caption_dropout_every_n_epochs,
            caption_tag_dropout_rate=c.caption_tag_dropout_rate,
            prior_loss_weight=c.prior_loss_weight,
            min_snr_gamma=c.min_snr_gamma,
            scale_weight_norms=c.scale_weight_norms,
            ip_noise_gamma=c.ip_noise_gamma,
            debiased_estimation=c.debiased_estimation_loss,
            batch_size_per_device=c.train_batch_size,
            total_batch_size=c.train_batch_size * c.gradient_accumulation_steps,
            resolution=c.resolution_wh,
            color_aug=c.color_aug,
            flip_aug=c.flip_aug,
            random_crop=c.random_crop,
            shuffle_caption=c.shuffle_caption,
            enable_bucket=c.enable_bucket,
            # the settings the buckets were made with (kohya writes the adjusted ones; none without buckets)
            bucket_no_upscale=buckets.bucket_no_upscale if c.enable_bucket else False,
            min_bucket_reso=buckets.min_bucket_reso if c.enable_bucket else None,
            max_bucket_reso=buckets.max_bucket_reso if c.enable_bucket else None,
            keep_tokens=c.keep_tokens,
            dataset_dirs=self.plan.scan.dataset_dirs,
            reg_dataset_dirs=self.plan.scan.reg_dataset_dirs or None,
            tag_frequency=self.plan.scan.tag_frequency,
            bucket_info=self.plan.dataset.bucket_info,
            sd_model_name=m.name or None,
            sd_model_hash=m.model_hash or None,
            new_sd_model_hash=m.model_sha256 or None,
        )
        spec = modelspec_metadata(
            m.arch, m.prediction_type, title=c.output_name, resolution=c.resolution_wh, timestamp=started,
            clip_skip=c.clip_skip, min_timestep=c.min_timestep, max_timestep=c.max_timestep,
        )
        return {**ss, **spec}

    def path_for(self, epoch: Optional[int], final: bool, tag: str = "") -> Path:
        if final:
            return self.output_dir / network_io.last_file_name(self.config.output_name)
        name = network_io.epoch_file_name(self.config.output_name, epoch)
        if tag:
            name = name.replace(".safetensors", f"-{tag}.safetensors")
        return self.output_dir / name

    def save(self, epoch: int, steps: int, final: bool, tag: str = "") -> Path:
        path = self.path_for(epoch, final, tag)
        metadata = checkpoint_metadata(self.base_metadata, steps=steps, epoch=epoch)
        with (self.around_save() if self.around_save else nullcontext()):
            network_io.save_network(path, self.network.state_dict(), metadata, dtype=self.dtype)
        json_path = path.with_suffix(".json")
        user = user_metadata(self.model.arch, self.config.trigger_word, self.config.preferred_weight)
        network_io.write_atomic(json_path, json.dumps(user, indent=4).encode("utf-8"))
        return path

    def maybe_save_epoch(self, epoch: int, steps: int, is_last: bool) -> Optional[Path]:
        """kohya saves every n epochs except the last, which becomes NAME.safetensors."""
        every = self.config.save_every_n_epochs
        if not every or is_last or epoch % every:
            return None
        path = self.save(epoch, steps, final=False)
        removed = network_io.prune_old_epochs(self.output_dir, self.config.output_name, epoch, every,
                                              self.config.save_last_n_epochs)
        if removed:
            Path(removed).with_suffix(".json").unlink(missing_ok=True)
            self.log(f"removed {removed} (save_last_n_epochs={self.config.save_last_n_epochs})")
        return path


def _recorded_network_args(config) -> Optional[dict]:
    """kohya records --network_args with ``dropout`` (--network_dropout, possibly null) appended
    unless the args name one; nothing without --network_args."""
    if not config.network_kwargs:
        return None
    args = dict(config.network_kwargs)
    args.setdefault("dropout", config.network_dropout)
    return args

