"""Aspect-ratio bucketing, resize and crop -- kohya sd-scripts' arithmetic.

Sizes are (width, height) throughout, as in kohya; only the SDXL conditioning
tuples built by the dataset are (height, width).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from .resize import resize_image

Size = tuple[int, int]


@dataclass(frozen=True)
class BucketSettings:
    """kohya's dataset resolution options, with kohya's defaults."""

    resolution: Size  # (width, height); kohya's --resolution "512" means (512, 512)
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False


def adjust_bucket_settings(settings: BucketSettings, required_multiple: Optional[int] = None) -> tuple[BucketSettings, list[str]]:
    """Apply kohya's checks and roundings; returns (settings, warnings).

    Raises ValueError where kohya stops with an assertion. ``required_multiple``
    is kohya's verify_bucket_reso_steps: 64 for SD1/SD2, 32 for SDXL.
    """
    w, h = settings.resolution
    if w <= 0 or h <= 0:
        raise ValueError(f"resolution must be positive, got {w}x{h}")
    if not settings.enable_bucket:
        return settings, []

    steps = settings.bucket_reso_steps
    if steps <= 0:
        raise ValueError(f"bucket_reso_steps must be positive, got {steps}")
    if required_multiple and steps % required_multiple != 0:
        raise ValueError(f"bucket_reso_steps is {steps}; it must be divisible by {required_multiple} for this model")

    warnings = []
    lo, hi = settings.min_bucket_reso, settings.max_bucket_reso
    if lo % steps:
        warnings.append(f"min_bucket_reso adjusted to a multiple of bucket_reso_steps: {lo} -> {lo - lo % steps}")
        lo -= lo % steps
    if hi % steps:
        warnings.append(f"max_bucket_reso adjusted to a multiple of bucket_reso_steps: {hi} -> {hi + steps - hi % steps}")
        hi += steps - hi % steps
    if min(w, h) < lo:
        raise ValueError(f"min_bucket_reso ({lo}) must be <= the smaller side of resolution ({min(w, h)})")
    if max(w, h) > hi:
        raise ValueError(f"max_bucket_reso ({hi}) must be >= the larger side of resolution ({max(w, h)})")
    if settings.bucket_no_upscale:
        warnings.append("min_bucket_reso and max_bucket_reso are ignored with bucket_no_upscale: buckets follow the image sizes")
    return replace(settings, min_bucket_reso=lo, max_bucket_reso=hi), warnings


def make_bucket_resolutions(max_reso: Size, min_size: int = 256, max_size: int = 1024, divisible: int = 64) -> list[Size]:
    """kohya's predefined buckets: every (w, h) on the step grid, w and h in
    [min_size, max_size], whose area stays within max_reso's, plus the square."""
    max_area = max_reso[0] * max_reso[1]
    resos = {(int(math.sqrt(max_area) // divisible) * divisible,) * 2}
    for width in range(min_size, max_size + 1, divisible):
        # the tallest grid height that keeps width x height within the area
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
    return sorted(resos)


@dataclass(frozen=True)
class BucketChoice:
    reso: Size  # the bucket, (width, height)
    resized_size: Size  # the image is resized to this, then center/random-cropped to reso
    ar_error: float  # bucket aspect minus image aspect (kohya's signed error)


class BucketSelector:
    """kohya's BucketManager.select_bucket for one dataset's settings.

    Without enable_bucket there is a single bucket, the resolution itself,
    chosen the same way (kohya builds it like that; only the latent cache
    uses its resized_size -- see fixed_resolution_problem).
    """

    def __init__(self, settings: BucketSettings):
        self.settings = settings
        self.no_upscale = settings.enable_bucket and settings.bucket_no_upscale
        self.max_area = settings.resolution[0] * settings.resolution[1]
        self.steps = settings.bucket_reso_steps
        if not settings.enable_bucket:
            self.predefined = [tuple(settings.resolution)]
        elif self.no_upscale:
            self.predefined = []
        else:
            self.predefined = make_bucket_resolutions(
                settings.resolution, settings.min_bucket_reso, settings.max_bucket_reso, settings.bucket_reso_steps
            )
        self._predefined_set = set(self.predefined)
        self._predefined_ar = np.array([w / h for w, h in self.predefined])

    def _round_to_steps(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps

    def _fit_predefined(self, w: int, h: int) -> tuple[Size, Size]:
        aspect = w / h
        if (w, h) in self._predefined_set:
            reso = (w, h)
        else:
            # argmin takes the first of equal errors, i.e. the smaller bucket
            reso = self.predefined[int(np.abs(self._predefined_ar - aspect).argmin())]
        # scale so the image covers the bucket; the overhang is cropped later
        if aspect > reso[0] / reso[1]:
            scale = reso[1] / h
        else:
            scale = reso[0] / w
        return reso, (int(w * scale + 0.5), int(h * scale + 0.5))

    def _fit_no_upscale(self, w: int, h: int) -> tuple[Size, Size]:
        aspect = w / h
        if w * h > self.max_area:
            # shrink to max_area at the same aspect, then snap one side to the
            # step grid: whichever side's snapping distorts the aspect less
            rw = math.sqrt(self.max_area * aspect)
            rh = self.max_area / rw
            bw = self._round_to_steps(rw)
            ar_from_w = bw / self._round_to_steps(bw / aspect)
            bh = self._round_to_steps(rh)
            ar_from_h = self._round_to_steps(bh * aspect) / bh
            if abs(ar_from_w - aspect) < abs(ar_from_h - aspect):
                resized = (bw, int(bw / aspect + 0.5))
            else:
                resized = (int(bh * aspect + 0.5), bh)
        else:
            resized = (w, h)
        # never pad: the bucket is the resized size floored to the grid
        reso = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
        return reso, resized

    def select(self, width: int, height: int) -> BucketChoice:
        """Raises ValueError when no bucket fits (kohya divides by zero there)."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image has no pixels ({width}x{height})")
        try:
            if self.no_upscale:
                reso, resized = self._fit_no_upscale(width, height)
            else:
                reso, resized = self._fit_predefined(width, height)
        except ZeroDivisionError:
            reso, resized = (0, 0), (0, 0)
        if reso[0] <= 0 or reso[1] <= 0:
            raise ValueError(
                f"no bucket fits a {width}x{height} image with bucket_no_upscale and bucket_reso_steps "
                f"{self.steps}: a side would be 0 pixels"
            )
        return BucketChoice(reso, resized, reso[0] / reso[1] - width / height)


def crop_ltrb(bucket_reso: Size, image_size: Size) -> tuple[float, float, float, float]:
    """kohya's get_crop_ltrb: the SDXL crop conditioning.

    kohya fits the original image *inside* the bucket at the same aspect and
    reports the margins as the crop (Stability AI's convention); floats, as
    kohya returns them -- the dataset truncates to int when it emits them.
    The right edge is kept so a horizontal flip can mirror the left one.
    """
    bw, bh = bucket_reso
    image_ar = image_size[0] / image_size[1]
    if bw / bh > image_ar:
        rw, rh = bh * image_ar, bh
    else:
        rw, rh = bw, bw / image_ar
    left = (bw - rw) // 2
    top = (bh - rh) // 2
    return left, top, left + rw, top + rh


def trim_and_resize(
    img: np.ndarray,
    bucket_reso: Size,
    resized_size: Size,
    random_crop: bool,
    rng: random.Random,
    interpolation: Optional[str] = None,
) -> tuple[np.ndarray, Size, tuple[float, float, float, float]]:
    """kohya's trim_and_resize_if_required: (pixels, original (w, h), crop ltrb)."""
    h, w = img.shape[:2]
    original_size = (w, h)
    if (w, h) != tuple(resized_size):
        img = resize_image(img, resized_size, interpolation)
    h, w = img.shape[:2]
    # width first, then height: the order kohya draws its random offsets in
    if w > bucket_reso[0]:
        excess = w - bucket_reso[0]
        p = rng.randint(0, excess) if random_crop else excess // 2
        img = img[:, p : p + bucket_reso[0]]
    if h > bucket_reso[1]:
        excess = h - bucket_reso[1]
        p = rng.randint(0, excess) if random_crop else excess // 2
        img = img[p : p + bucket_reso[1]]
    if img.shape[0] != bucket_reso[1] or img.shape[1] != bucket_reso[0]:
        raise ValueError(f"internal error: cropped to {img.shape[1]}x{img.shape[0]}, bucket is {bucket_reso}")
    # random crop offsets are not reflected, as in kohya
    return img, original_size, crop_ltrb(bucket_reso, original_size)


def fixed_resolution_problem(image_size: Size, resolution: Size, random_crop: bool) -> Optional[str]:
    """Why kohya would stop on this image without bucketing, or None.

    Without enable_bucket kohya does not resize: an image must be exactly the
    resolution, or larger with random_crop (it is then randomly cropped).
    """
    (w, h), (rw, rh) = image_size, resolution
    if w < rw or h < rh:
        return f"the image ({w}x{h}) is smaller than the resolution ({rw}x{rh}) and bucketing is off"
    if (w, h) != (rw, rh) and not random_crop:
        return f"the image ({w}x{h}) is larger than the resolution ({rw}x{rh}) and neither bucketing nor random_crop is on"
    return None


def fixed_resolution_crop(
    img: np.ndarray, resolution: Size, random_crop: bool, rng: random.Random
) -> tuple[np.ndarray, Size, tuple[float, float, float, float]]:
    """kohya's no-bucket path: random crop of an oversized image, no resizing."""
    h, w = img.shape[:2]
    problem = fixed_resolution_problem((w, h), resolution, random_crop)
    if problem:
        raise ValueError(problem)
    # height first here, unlike trim_and_resize -- kohya's order
    if h > resolution[1]:
        p = rng.randint(0, h - resolution[1])
        img = img[p : p + resolution[1]]
    if w > resolution[0]:
        p = rng.randint(0, w - resolution[0])
        img = img[:, p : p + resolution[0]]
    # kohya reports (0, 0, 0, 0) here, so a flipped sample's crop left becomes
    # width - 0 = the full width; the right edge is the width, which keeps
    # the flipped left at 0 -- as its own latent-cache path already gives
    return img, (resolution[0], resolution[1]), (0, 0, resolution[0], resolution[1])
