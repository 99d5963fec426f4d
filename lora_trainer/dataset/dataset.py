"""The training dataset: kohya's DreamBoothDataset epoch composition.

One item is one *batch*, as in kohya: images (with repeats) are grouped into
buckets, every bucket is cut into batches of ``batch_size`` (the last one may
be short), and ``len(dataset)`` is kohya's "num batches per epoch". Use it
with ``DataLoader(dataset, batch_size=None, shuffle=True)`` -- kohya's
loader also shuffles the batch order (batch_size=1 plus a collate that
unwraps).

Shuffling follows kohya exactly: building shuffles with ``seed + 0``; each
``set_epoch(e)`` re-shuffles cumulatively with ``seed + e`` for every epoch
passed. Per-sample randomness (flip, random crop, colour, captions) comes
from a ``random.Random`` seeded by (seed, epoch, index), so a batch is the
same whichever worker or order produces it. Loader workers hold a copy of
the dataset: call ``set_epoch`` before creating each epoch's iterator and do
not use persistent workers, or the workers never see the new epoch.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .augment import color_aug
from .buckets import (
    BucketSelector,
    BucketSettings,
    adjust_bucket_settings,
    fixed_resolution_crop,
    fixed_resolution_problem,
    trim_and_resize,
)
from .captions import CaptionOptions, process_caption
from .folders import DatasetScan, Finding
from .images import load_image

Size = tuple[int, int]
LATENT_STRIDE = 8  # SD/SDXL VAE downscale


@dataclass(frozen=True)
class AugmentOptions:
    """kohya's per-subset image options, with kohya's defaults."""

    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    alpha_mask: bool = False


@dataclass
class DatasetImage:
    """One image as the dataset uses it (kohya's ImageInfo)."""

    path: str
    caption: str
    is_reg: bool
    repeats: int  # for reg images: after kohya's balancing against the train images
    size: Size  # (w, h) as loaded
    bucket_reso: Size = (0, 0)
    resized_size: Size = (0, 0)
    # filled by cache_latents
    latents: Optional[torch.Tensor] = None
    latents_flipped: Optional[torch.Tensor] = None
    latents_original_size: Optional[Size] = None
    latents_crop_ltrb: Optional[tuple] = None
    cached_alpha_mask: Optional[torch.Tensor] = None
    latents_npz: Optional[str] = None


def _balance_reg(train_count: int, reg: list[DatasetImage]) -> list[DatasetImage]:
    """kohya's reg balancing: walk the reg images (each first with its folder
    repeats, then +1 per pass) until they add up to the train images * repeats.
    Returns the reg images used, repeats rewritten in place."""
    used: list[DatasetImage] = []
    n = 0
    first_pass = True
    while n < train_count:
        for img in reg:
            if first_pass:
                used.append(img)
                n += img.repeats
            else:
                img.repeats += 1
                n += 1
            if n >= train_count:
                break
        first_pass = False
    return used


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    # torchvision's ToTensor + Normalize([0.5], [0.5]): [0, 255] -> [-1, 1]
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
    return (t - 0.5) / 0.5


class LoraDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        scan: DatasetScan,
        buckets: BucketSettings,
        batch_size: int = 1,
        captions: CaptionOptions = CaptionOptions(),
        augment: AugmentOptions = AugmentOptions(),
        prior_loss_weight: float = 1.0,
        resize_interpolation: Optional[str] = None,
        seed: int = 0,
        required_bucket_multiple: Optional[int] = None,
        will_cache_latents: bool = False,
    ):
        """``required_bucket_multiple``: 64 for SD1/SD2, 32 for SDXL (kohya's
        verify_bucket_reso_steps). ``will_cache_latents``: without bucketing,
        kohya's latent cache resizes and center-crops every image to the
        resolution, while its uncached path accepts only exact (or, with
        random_crop, larger) images; this picks which rule applies.
        Raises ValueError for impossible bucket settings, as kohya asserts."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.settings, setting_warnings = adjust_bucket_settings(buckets, required_bucket_multiple)
        self.batch_size = batch_size
        self.caption_options = captions
        self.augment = augment
        self.prior_loss_weight = prior_loss_weight
        self.resize_interpolation = resize_interpolation
        self.seed = seed
        self.will_cache_latents = will_cache_latents
        self.findings: list[Finding] = [Finding("warning", "", w) for w in setting_warnings]
        self.current_epoch = 0
        self.current_step = 0
        self.max_train_steps = 0
        self.latent_scale = 1.0

        self.num_train_images = scan.num_train_images
        self.num_reg_images = scan.num_reg_images
        self._selector = BucketSelector(self.settings)
        self.images = self._register(scan)
        self._make_buckets()

    # -- building ---------------------------------------------------------

    def _fit(self, img: DatasetImage) -> Optional[tuple[Size, Size, float]]:
        """(bucket, resized size, ar error), or None after recording why not."""
        s = self.settings
        if not s.enable_bucket and not self.will_cache_latents:
            problem = fixed_resolution_problem(img.size, s.resolution, self.augment.random_crop)
            if problem:
                self.findings.append(
                    Finding("error", img.path, problem + "; kohya stops on this image", "enable bucketing, or resize the image to the resolution")
                )
                return None
        try:
            choice = self._selector.select(*img.size)
        except ValueError as e:
            self.findings.append(Finding("error", img.path, str(e), "use a larger image or a smaller bucket_reso_steps"))
            return None
        return choice.reso, choice.resized_size, choice.ar_error

    def _register(self, scan: DatasetScan) -> list[DatasetImage]:
        train: list[DatasetImage] = []
        reg: list[DatasetImage] = []
        for subset in scan.subsets:
            for entry in subset.images:
                img = DatasetImage(entry.path, entry.caption, subset.is_reg, subset.repeats, tuple(entry.size))
                (reg if subset.is_reg else train).append(img)

        used_reg: list[DatasetImage] = []
        if self.num_reg_images > 0:
            if self.num_train_images < self.num_reg_images:
                self.findings.append(
                    Finding("warning", "", "there are more reg images (with repeats) than train images; some reg images are not used")
                )
            used_reg = _balance_reg(self.num_train_images, reg)

        images, ar_errors = [], []
        for img in train + used_reg:
            fit = self._fit(img)
            if fit is None:
                continue
            img.bucket_reso, img.resized_size, ar_error = fit
            ar_errors.append(abs(ar_error))
            images.append(img)
        self._ar_errors = ar_errors
        return images

    def _make_buckets(self) -> None:
        resos = sorted({img.bucket_reso for img in self.images})
        reso_index = {reso: i for i, reso in enumerate(resos)}
        self.bucket_resos: list[Size] = resos
        self.buckets: list[list[int]] = [[] for _ in resos]
        for i, img in enumerate(self.images):
            self.buckets[reso_index[img.bucket_reso]].extend([i] * img.repeats)

        if self.settings.enable_bucket:
            # kohya's ss_bucket_info
            self.bucket_info = {
                "buckets": {i: {"resolution": reso, "count": len(b)} for i, (reso, b) in enumerate(zip(resos, self.buckets))},
                "mean_img_ar_error": float(np.mean(self._ar_errors)) if self._ar_errors else 0,
            }
        else:
            self.bucket_info = None

        # (bucket, batch number within the bucket), one per dataset item
        self.batch_index: list[tuple[int, int]] = [
            (b, k) for b, bucket in enumerate(self.buckets) for k in range(math.ceil(len(bucket) / self.batch_size))
        ]
        self._shuffle()

    def _shuffle(self) -> None:
        # kohya reseeds the global random with seed + epoch and shuffles the
        # batch list, then every bucket, in place -- so each epoch builds on
        # the previous one. A Random(x) draws exactly what random.seed(x) does.
        rng = random.Random(self.seed + self.current_epoch)
        rng.shuffle(self.batch_index)
        for bucket in self.buckets:
            rng.shuffle(bucket)

    def set_epoch(self, epoch: int) -> None:
        """kohya's set_current_epoch. Training epochs are 1-based there
        (epoch 1 is the first); this also drives caption_dropout_every_n_epochs."""
        if epoch > self.current_epoch:
            for _ in range(epoch - self.current_epoch):
                self.current_epoch += 1
                self._shuffle()
        else:
            self.current_epoch = epoch

    def set_step(self, step: int) -> None:
        """Global step, for kohya's token warmup."""
        self.current_step = step

    # -- reading ----------------------------------------------------------

    def __len__(self) -> int:
        return len(self.batch_index)

    def batch_images(self, index: int) -> list[DatasetImage]:
        bucket, k = self.batch_index[index]
        return [self.images[i] for i in self.buckets[bucket][k * self.batch_size : (k + 1) * self.batch_size]]

    def _pixels(self, img: DatasetImage, rng: random.Random):
        """(CHW tensor in [-1, 1], alpha mask or None, original size, crop ltrb)."""
        aug = self.augment
        pixels = load_image(img.path, alpha=aug.alpha_mask)
        h, w = pixels.shape[:2]
        if (w, h) != tuple(img.size):
            raise ValueError(f"{img.path}: the image is now {w}x{h}, it was {img.size[0]}x{img.size[1]} when scanned; scan again")
        if self.settings.enable_bucket or self.will_cache_latents:
            pixels, original_size, crop = trim_and_resize(
                pixels, img.bucket_reso, img.resized_size, aug.random_crop, rng, self.resize_interpolation
            )
        else:
            pixels, original_size, crop = fixed_resolution_crop(pixels, self.settings.resolution, aug.random_crop, rng)
        if aug.color_aug:
            pixels = pixels.copy()
            pixels[:, :, :3] = color_aug(pixels[:, :, :3], rng)
        return pixels, original_size, crop

    def _sample(self, img: DatasetImage, rng: random.Random) -> dict:
        aug = self.augment
        flipped = aug.flip_aug and rng.random() < 0.5
        latents = image = alpha = None

        if img.latents is not None or img.latents_npz is not None:
            if img.latents is not None:
                latents, flipped_latents = img.latents, img.latents_flipped
                original_size, crop, alpha = img.latents_original_size, img.latents_crop_ltrb, img.cached_alpha_mask
            else:
                latents, flipped_latents, original_size, crop, alpha = _load_npz(img.latents_npz, self.latent_scale)
            if flipped:
                latents = flipped_latents
                alpha = None if alpha is None else torch.flip(alpha, [1])
            target_size = (latents.shape[2] * LATENT_STRIDE, latents.shape[1] * LATENT_STRIDE)
        else:
            pixels, original_size, crop = self._pixels(img, rng)
            if flipped:
                pixels = pixels[:, ::-1]
            if aug.alpha_mask:
                alpha = torch.from_numpy(pixels[:, :, 3].astype(np.float32) / 255.0)
            image = _to_tensor(pixels[:, :, :3])
            target_size = (image.shape[2], image.shape[1])

        # a flip mirrors the crop: the right margin becomes the left one
        left = target_size[0] - crop[2] if flipped else crop[0]
        caption = process_caption(
            img.caption, self.caption_options, rng, self.current_epoch, self.current_step, self.max_train_steps
        )
        return {
            "image": image,
            "latents": latents,
            "alpha_mask": alpha,
            "caption": caption,
            "loss_weight": self.prior_loss_weight if img.is_reg else 1.0,
            "original_size_hw": (int(original_size[1]), int(original_size[0])),
            "crop_top_left": (int(crop[1]), int(left)),
            "target_size_hw": (int(target_size[1]), int(target_size[0])),
            "flipped": flipped,
            "path": img.path,
            "is_reg": img.is_reg,
        }

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = random.Random(f"{self.seed}:{self.current_epoch}:{index}")
        samples = [self._sample(img, rng) for img in self.batch_images(index)]

        def stack(key):
            values = [s[key] for s in samples]
            return None if values[0] is None else torch.stack(values)

        return {
            "images": stack("image"),
            "latents": stack("latents"),
            "alpha_masks": stack("alpha_mask"),
            "captions": [s["caption"] for s in samples],
            "loss_weights": torch.tensor([s["loss_weight"] for s in samples], dtype=torch.float32),
            "original_sizes_hw": torch.tensor([s["original_size_hw"] for s in samples], dtype=torch.long),
            "crop_top_lefts": torch.tensor([s["crop_top_left"] for s in samples], dtype=torch.long),
            "target_sizes_hw": torch.tensor([s["target_size_hw"] for s in samples], dtype=torch.long),
            "flipped": [s["flipped"] for s in samples],
            "paths": [s["path"] for s in samples],
            "is_reg": [s["is_reg"] for s in samples],
        }


# -- latent cache ----------------------------------------------------------


def latents_npz_path(image_path: str, image_size: Size, sdxl: bool) -> str:
    """kohya's cache file name: ``<stem>_<W>x<H>_sd.npz`` / ``_sdxl.npz`` (4-digit
    sizes), or an existing old-style ``<stem>.npz``, which kohya still prefers."""
    stem = os.path.splitext(image_path)[0]
    if os.path.exists(stem + ".npz"):
        return stem + ".npz"
    return f"{stem}_{image_size[0]:04d}x{image_size[1]:04d}{'_sdxl' if sdxl else '_sd'}.npz"


def _npz_usable(path: str, bucket_reso: Size, flip_aug: bool, alpha_mask: bool) -> bool:
    if not os.path.exists(path):
        return False
    try:
        with np.load(path) as npz:
            keys = set(npz.files)
            if not {"latents", "original_size", "crop_ltrb"} <= keys:
                return False
            if flip_aug and "latents_flipped" not in keys:
                return False
            if alpha_mask and "alpha_mask" not in keys:
                return False
            # kohya's current check stops at the keys; a cache from other
            # bucket settings would then feed wrongly sized latents
            expected = (bucket_reso[1] // LATENT_STRIDE, bucket_reso[0] // LATENT_STRIDE)
            return tuple(npz["latents"].shape[-2:]) == expected
    except Exception:
        return False  # unreadable: encode again and overwrite


def _load_npz(path: str, scale: float):
    with np.load(path) as npz:
        latents = torch.from_numpy(npz["latents"].astype(np.float32)) * scale
        flipped = torch.from_numpy(npz["latents_flipped"].astype(np.float32)) * scale if "latents_flipped" in npz.files else None
        alpha = torch.from_numpy(npz["alpha_mask"].astype(np.float32)) if "alpha_mask" in npz.files else None
        return latents, flipped, npz["original_size"].tolist(), npz["crop_ltrb"].tolist(), alpha


def _save_npz(path: str, arrays: dict) -> None:
    # kohya updates an existing file, keeping keys it does not write
    if os.path.exists(path):
        try:
            with np.load(path) as old:
                arrays = {**{k: old[k] for k in old.files}, **arrays}
        except Exception:
            pass
    np.savez(path, **arrays)


def cache_latents(
    dataset: LoraDataset,
    encode_fn: Callable[[torch.Tensor], torch.Tensor],
    to_disk: bool = False,
    batch_size: int = 1,
    sdxl: bool = False,
    latent_scale: float = 1.0,
) -> int:
    """Encode every image once, as kohya's cache_latents; returns how many were encoded.

    ``encode_fn`` takes (B, 3, H, W) in [-1, 1] and returns (B, C, H/8, W/8).
    kohya stores the *unscaled* VAE sample on disk; if ``encode_fn`` returns
    latents already multiplied by the VAE scale factor, pass that factor as
    ``latent_scale`` so the files stay interchangeable with kohya's and items
    still come out scaled. With ``to_disk`` a valid existing file is reused.
    Images are batched by bucket, smallest first, like kohya.
    """
    aug = dataset.augment
    if aug.color_aug or aug.random_crop:
        raise ValueError("latents cannot be cached with color_aug or random_crop: both change the image every step")
    dataset.latent_scale = latent_scale
    no_rng = random.Random(0)  # center crops only; nothing is drawn

    todo: list[DatasetImage] = []
    for img in sorted(dataset.images, key=lambda i: i.bucket_reso[0] * i.bucket_reso[1]):
        if to_disk:
            img.latents_npz = latents_npz_path(img.path, img.size, sdxl)
            if _npz_usable(img.latents_npz, img.bucket_reso, aug.flip_aug, aug.alpha_mask):
                continue
        todo.append(img)

    batches: list[list[DatasetImage]] = []
    for img in todo:
        if batches and len(batches[-1]) < batch_size and batches[-1][0].bucket_reso == img.bucket_reso:
            batches[-1].append(img)
        else:
            batches.append([img])

    for batch in batches:
        tensors, alphas, originals, crops = [], [], [], []
        for img in batch:
            pixels = load_image(img.path, alpha=aug.alpha_mask)
            pixels, original_size, crop = trim_and_resize(
                pixels, img.bucket_reso, img.resized_size, False, no_rng, dataset.resize_interpolation
            )
            alphas.append(torch.from_numpy(pixels[:, :, 3].astype(np.float32) / 255.0) if aug.alpha_mask else None)
            tensors.append(_to_tensor(pixels[:, :, :3]))
            originals.append(original_size)
            crops.append(crop)
        x = torch.stack(tensors)
        with torch.no_grad():
            latents = encode_fn(x).detach().float().cpu()
            flipped = encode_fn(torch.flip(x, dims=[3])).detach().float().cpu() if aug.flip_aug else None

        for i, img in enumerate(batch):
            if torch.isnan(latents[i]).any() or (flipped is not None and torch.isnan(flipped[i]).any()):
                raise RuntimeError(f"NaN in the latents of {img.path}: the VAE overflowed (try a float32 VAE)")
            if to_disk:
                arrays = {
                    "latents": (latents[i] / latent_scale).numpy(),
                    "original_size": np.array(originals[i]),
                    "crop_ltrb": np.array(crops[i]),
                }
                if flipped is not None:
                    arrays["latents_flipped"] = (flipped[i] / latent_scale).numpy()
                if alphas[i] is not None:
                    arrays["alpha_mask"] = alphas[i].numpy()
                _save_npz(img.latents_npz, arrays)
            else:
                img.latents = latents[i]
                img.latents_flipped = None if flipped is None else flipped[i]
                img.latents_original_size = originals[i]
                img.latents_crop_ltrb = crops[i]
                img.cached_alpha_mask = alphas[i]
    return len(todo)


# -- step count ------------------------------------------------------------


@dataclass(frozen=True)
class StepCounts:
    """The numbers kohya prints before training."""

    num_train_images: int  # "num train images * repeats"
    num_reg_images: int  # "num reg images" (with their folder repeats, before balancing)
    num_batches_per_epoch: int
    num_epochs: int
    gradient_accumulation_steps: int
    num_update_steps_per_epoch: int
    max_train_steps: int  # "total optimization steps"


def count_steps(
    dataset: LoraDataset,
    gradient_accumulation_steps: int = 1,
    max_train_steps: int = 1600,
    max_train_epochs: Optional[int] = None,
) -> StepCounts:
    """kohya's schedule arithmetic (single process). max_train_epochs, when
    given, overrides max_train_steps; training stops at max_train_steps even
    mid-epoch. Also hands max_train_steps to the dataset for token warmup."""
    if gradient_accumulation_steps < 1:
        raise ValueError("gradient_accumulation_steps must be >= 1")
    batches = len(dataset)
    if batches == 0:
        raise ValueError("the dataset has no batches: no usable images")
    updates_per_epoch = math.ceil(batches / gradient_accumulation_steps)
    if max_train_epochs is not None:
        max_train_steps = max_train_epochs * updates_per_epoch
    dataset.max_train_steps = max_train_steps
    return StepCounts(
        num_train_images=dataset.num_train_images,
        num_reg_images=dataset.num_reg_images,
        num_batches_per_epoch=batches,
        num_epochs=math.ceil(max_train_steps / updates_per_epoch),
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_update_steps_per_epoch=updates_per_epoch,
        max_train_steps=max_train_steps,
    )
