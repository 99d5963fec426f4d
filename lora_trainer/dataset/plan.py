"""From a config to what the loop consumes: scanned folders, buckets, counts, batches.

``build_dataset_plan`` is where config options become the dataset package's
arguments. Findings the user must fix stop here, before any model work, in one
message that names each file and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from .buckets import BucketSettings
from .captions import CaptionOptions
from .dataset import AugmentOptions, LoraDataset, StepCounts, cache_latents, count_steps
from .folders import DatasetScan, Finding, scan_dataset


class DatasetError(ValueError):
    """The dataset cannot be trained on as it is; the message lists each problem and its fix."""


def format_findings(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        where = f" {f.path}:" if f.path else ""
        fix = f" Fix: {f.fix}" if f.fix else ""
        lines.append(f"[{f.level}]{where} {f.message}{fix}")
    return "\n".join(lines)


@dataclass
class Batch:
    captions: list[str]
    loss_weights: torch.Tensor
    original_sizes_hw: torch.Tensor
    crop_top_lefts: torch.Tensor
    target_sizes_hw: torch.Tensor
    images: Optional[torch.Tensor] = None
    latents: Optional[torch.Tensor] = None


class DatasetPlan:
    def __init__(self, scan: DatasetScan, dataset: LoraDataset, counts: StepCounts, batch_size: int, seed: int):
        self.scan = scan
        self.dataset = dataset
        self.counts = counts
        self.batch_size = batch_size
        self.seed = seed

    @property
    def findings(self) -> list[Finding]:
        return self.scan.findings + self.dataset.findings

    def summary(self) -> str:
        c = self.counts
        return "\n".join([
            f"num train images * repeats: {c.num_train_images}",
            f"num reg images: {c.num_reg_images}",
            f"num batches per epoch: {c.num_batches_per_epoch}",
            f"num epochs: {c.num_epochs}",
            f"batch size per device: {self.batch_size}",
            f"gradient accumulation steps: {c.gradient_accumulation_steps}",
            f"total optimization steps: {c.max_train_steps}",
        ])

    def cache_latents(self, encode: Callable[[torch.Tensor], torch.Tensor], to_disk: bool, device, sdxl: bool,
                      scale: float) -> int:
        def encode_on_device(pixels: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return encode(pixels.to(device)).float().cpu()

        return cache_latents(self.dataset, encode_on_device, to_disk=to_disk, sdxl=sdxl, latent_scale=scale)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def batches(self, epoch: int) -> Iterator[Batch]:
        # kohya's DataLoader shuffles the batch order again on top of the dataset's own shuffle
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        for index in torch.randperm(len(self.dataset), generator=generator).tolist():
            item = self.dataset[index]
            yield Batch(
                captions=item["captions"],
                loss_weights=item["loss_weights"],
                original_sizes_hw=item["original_sizes_hw"],
                crop_top_lefts=item["crop_top_lefts"],
                target_sizes_hw=item["target_sizes_hw"],
                images=item["images"],
                latents=item["latents"],
            )


def build_dataset_plan(config, arch: str, seed: int, log: Callable[[str], None] = print) -> DatasetPlan:
    scan = scan_dataset(config.train_data_dir, config.reg_data_dir, config.caption_extension)
    if scan.num_train_images == 0:
        # nothing to train on: every finding may explain why, warnings included
        raise DatasetError("the dataset has problems to fix before training:\n"
                           + format_findings(scan.errors + scan.warnings))
    for finding in scan.warnings:
        log(f"warning: {format_findings([finding])}")
    if scan.errors:
        log("warning: some files cannot be used; they are left out of training:\n" + format_findings(scan.errors))

    captions = CaptionOptions(
        shuffle_caption=config.shuffle_caption,
        caption_separator=config.caption_separator,
        keep_tokens=config.keep_tokens,
        keep_tokens_separator=config.keep_tokens_separator,
        caption_prefix=config.caption_prefix,
        caption_suffix=config.caption_suffix,
        caption_dropout_rate=config.caption_dropout_rate,
        caption_dropout_every_n_epochs=config.caption_dropout_every_n_epochs,
        caption_tag_dropout_rate=config.caption_tag_dropout_rate,
    )
    width, height = config.resolution_wh
    buckets = BucketSettings(
        resolution=(width, height),
        enable_bucket=config.enable_bucket,
        min_bucket_reso=config.min_bucket_reso,
        max_bucket_reso=config.max_bucket_reso,
        bucket_reso_steps=config.bucket_reso_steps,
        bucket_no_upscale=config.bucket_no_upscale,
    )
    try:
        dataset = LoraDataset(
            scan,
            buckets,
            batch_size=config.train_batch_size,
            captions=captions,
            augment=AugmentOptions(flip_aug=config.flip_aug, color_aug=config.color_aug,
                                   random_crop=config.random_crop),
            prior_loss_weight=config.prior_loss_weight,
            seed=seed,
            # kohya's verify_bucket_reso_steps: SDXL buckets are multiples of 32, SD1/2 of 64
            required_bucket_multiple=32 if arch == "sdxl" else 64,
            will_cache_latents=config.cache_latents,
        )
        counts = count_steps(dataset, config.gradient_accumulation_steps, config.max_train_steps,
                             config.max_train_epochs)
    except ValueError as exc:
        raise DatasetError(f"{config.train_data_dir}: {exc}") from None
    for finding in dataset.findings:
        log(f"warning: {format_findings([finding])}")
    return DatasetPlan(scan, dataset, counts, config.train_batch_size, seed)
