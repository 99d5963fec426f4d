"""Image resizing with kohya's choice of filter.

kohya (library/utils.py resize_image) shrinks with OpenCV's INTER_AREA and
enlarges with Pillow's LANCZOS unless ``resize_interpolation`` names a filter.
OpenCV is not a dependency here: INTER_AREA's shrinking case is reproduced
exactly (each output pixel is the coverage-weighted mean of the source pixels
under it), and OpenCV's other filters are matched by torch's equivalents
(nearest-exact, bilinear and bicubic with a=-0.75, no antialiasing), which
agree with OpenCV to within rounding.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

INTERPOLATIONS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")

_PIL_FILTERS = {"lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}
_TORCH_MODES = {
    "nearest": "nearest-exact",
    "bilinear": "bilinear",
    "linear": "bilinear",
    "bicubic": "bicubic",
    "cubic": "bicubic",
    # INTER_AREA only averages when shrinking; when it enlarges OpenCV
    # falls back to a bilinear-like kernel
    "area": "bilinear",
}


def _area_rows(img: np.ndarray, out_len: int) -> np.ndarray:
    """Shrink axis 0 by exact area averaging (float64 result).

    Output pixel i covers the real interval [e_i, e_i+1) of the input, e = i *
    n / out_len. Its integral is the sum of the whole pixels from floor(e_i)
    to floor(e_i+1) - 1, minus the part of the first one before e_i, plus the
    part of the pixel at floor(e_i+1) before e_i+1.
    """
    n = img.shape[0]
    scale = n / out_len
    edges = np.arange(out_len + 1, dtype=np.float64) * scale
    edges[-1] = n  # no float drift past the last pixel
    whole = np.floor(edges).astype(np.int64)
    frac = (edges - whole).reshape((-1,) + (1,) * (img.ndim - 1))
    # shrinking: scale >= 1 so the starts strictly increase, as reduceat needs
    acc = np.int64 if img.dtype == np.uint8 else np.float64
    sums = np.add.reduceat(img, whole[:-1], axis=0, dtype=acc).astype(np.float64)
    # at the last edge frac is 0, so clamping its index is harmless
    at_edge = img[np.minimum(whole, n - 1)]
    sums -= frac[:-1] * at_edge[:-1]
    sums += frac[1:] * at_edge[1:]
    return sums / scale


def _area_shrink(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = img if img.shape[0] == size[1] else _area_rows(img, size[1])
    if out.shape[1] != size[0]:
        out = _area_rows(out.swapaxes(0, 1), size[0]).swapaxes(0, 1)
    # half rounds up, as OpenCV's integer fast path for 2x shrinking does
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def _torch_resize(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    kwargs = {} if mode.startswith("nearest") else {"align_corners": False}
    out = F.interpolate(t, size=(size[1], size[0]), mode=mode, **kwargs)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_image(img: np.ndarray, size: tuple[int, int], interpolation: Optional[str] = None) -> np.ndarray:
    """Resize an HxWxC uint8 array to ``size`` = (width, height)."""
    h, w = img.shape[:2]
    width, height = int(size[0]), int(size[1])
    if interpolation is None:
        interpolation = "area" if w >= width and h >= height else "lanczos"
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown resize_interpolation {interpolation!r}; expected one of {INTERPOLATIONS}")

    if interpolation in _PIL_FILTERS:
        return np.array(Image.fromarray(img).resize((width, height), resample=_PIL_FILTERS[interpolation]))
    if interpolation == "area" and w >= width and h >= height:
        return _area_shrink(img, (width, height))
    return _torch_resize(img, (width, height), _TORCH_MODES[interpolation])
