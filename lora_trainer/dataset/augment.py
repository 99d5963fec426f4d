"""kohya's color_aug, without OpenCV.

kohya (AugHelper.color_aug) with probability 0.33 either shifts the hue by
up to +-8 OpenCV hue units (+-16 degrees) or applies ``pixel ** gamma`` with
gamma in [0.95, 1.05] on the 0..255 scale (so it mostly brightens or darkens,
clipped at 255). It runs OpenCV's BGR<->HSV on an RGB array; the channel swap
only mirrors the direction of a symmetric random shift. The 8-bit HSV
conversions below follow OpenCV's integer/float formulas so the result matches
OpenCV's to within rounding.
"""
from __future__ import annotations

import random

import numpy as np

_HSV_SHIFT = 12
_HUE_RANGE = 180


def _div_table(numerator: float) -> np.ndarray:
    # OpenCV's rounded reciprocal tables, 0 where the divisor is 0
    i = np.arange(256, dtype=np.float64)
    return np.where(i > 0, np.round(numerator / np.maximum(i, 1)), 0).astype(np.int64)


_SDIV = _div_table(255 << _HSV_SHIFT)
_HDIV = _div_table((_HUE_RANGE << _HSV_SHIFT) / 6.0)


def bgr_to_hsv(img: np.ndarray) -> np.ndarray:
    """OpenCV COLOR_BGR2HSV for uint8 (hue 0..179)."""
    b, g, r = (img[..., i].astype(np.int64) for i in range(3))
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _HSV_SHIFT
    h = np.where(h < 0, h + _HUE_RANGE, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


# which of (v, p, q, t) lands in (b, g, r) for each hue sector, as OpenCV tabulates
_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def hsv_to_bgr(hsv: np.ndarray) -> np.ndarray:
    """OpenCV COLOR_HSV2BGR for uint8."""
    h = hsv[..., 0].astype(np.float32) * np.float32(6.0 / _HUE_RANGE)
    s = hsv[..., 1].astype(np.float32) * np.float32(1 / 255)
    v = hsv[..., 2].astype(np.float32) * np.float32(1 / 255)
    h = np.mod(h, 6.0)
    sector = np.floor(h).astype(np.int64)
    sector = np.where((sector < 0) | (sector >= 6), 0, sector)
    f = h - sector
    tab = np.stack([v, v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))], axis=-1)
    idx = _SECTORS[sector]
    bgr = np.take_along_axis(tab, idx, axis=-1)
    bgr = np.where((s == 0)[..., None], v[..., None], bgr)
    return np.clip(np.rint(bgr * 255), 0, 255).astype(np.uint8)


def color_aug(img: np.ndarray, rng: random.Random) -> np.ndarray:
    """kohya's color augmentation of an HxWx3 uint8 array (a new array)."""
    if rng.random() > 0.33:
        return img
    if rng.random() > 0.5:
        hsv = bgr_to_hsv(img)
        shift = rng.uniform(-8, 8)
        if shift < 0:
            shift += 180
        # kohya writes the float result back into the uint8 array: truncation
        hsv[..., 0] = ((hsv[..., 0] + shift) % 180).astype(np.uint8)
        return hsv_to_bgr(hsv)
    gamma = rng.uniform(0.95, 1.05)
    return np.clip(img.astype(np.float64) ** gamma, 0, 255).astype(np.uint8)
