"""Turning an image into a WD14 tagger's input, as the reference taggers do.

The reference is the WebUI tagger extension (toriato's
stable-diffusion-webui-wd14-tagger and picobyte's fork, both taken from
SmilingWolf's own demo for the v1.4/v2 models):

1. the image is converted to RGBA and pasted onto a white canvas through its
   alpha channel (Pillow's ``paste(..., mask=...)``, so half-transparent pixels
   are blended with white), then made RGB;
2. RGB becomes BGR (the models were trained on OpenCV-loaded images);
3. it is padded with white to a centred square (the extra column or row goes
   right / bottom: ``left = (size - w) // 2``);
4. the square is resized to the model's input size, read from the ONNX input
   shape: OpenCV ``INTER_AREA`` when shrinking, ``INTER_CUBIC`` when enlarging;
5. float32 values 0-255, NHWC, no normalisation.

Small images. The extension pads a small image to at least the input size
(``make_square(img, target_size)``), so it is centred, unscaled, on a white
448x448 canvas and never enlarged: ``small_images="pad"``, the default for the
v1.4 (v2) models. SmilingWolf's v3 demo and kohya's tagger pad to the image's
own longer side and enlarge: ``small_images="enlarge"``, the default for the
v3 models (cubic, as the extension's ``smart_resize`` would).

OpenCV is not a dependency: the two OpenCV filters are reproduced in numpy.

* ``INTER_AREA`` (shrinking): each output pixel is the coverage-weighted mean
  of the source pixels under it, with OpenCV's weight table (partial pixels
  under 0.001 are ignored). For integer factors OpenCV takes its "fast" path:
  for 2x the sum of 4 pixels is rounded half up (``(s + 2) >> 2``); for other
  integer factors ``s * (1/k^2)`` is computed in float32 and rounded half to
  even; both are reproduced exactly (448 from 896, 1344, ...).
* ``INTER_CUBIC`` (enlarging): Keys' kernel with a = -0.75, source coordinate
  ``(x + 0.5) * in / out - 0.5``, edge pixels replicated, horizontal pass
  then vertical, rounded to nearest.

Checked against opencv-python-headless 4.10.0 and 5.0.0 on random images
(not a dependency, not in the tests): integer-factor area is identical; for
other factors and for cubic, the only differences are pixels whose exact value
is a tie (x.5), where OpenCV's float32 arithmetic decides: 1 level on about
0.03 % (area) and 0.02 % (cubic) of the pixels. SmilingWolf's v3 demo
enlarges with Pillow's BICUBIC (a = -0.5) and shrinks with Pillow's
antialiased BICUBIC instead of area, a few levels apart from the extension.

Deliberate difference: EXIF orientation is applied first (the extension does
not), so the tagger sees the image the way training will
(:mod:`lora_trainer.dataset.images` applies it too).
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps

SMALL_IMAGE_MODES = ("pad", "enlarge")


def composite_on_white(img: Image.Image) -> Image.Image:
    """RGB image: ``img`` pasted onto white through its alpha (no alpha -> unchanged pixels)."""
    if img.mode == "RGB":
        return img  # fully opaque: the paste would change nothing
    rgba = img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.paste(rgba, mask=rgba)
    return canvas.convert("RGB")


def pad_to_square(arr: np.ndarray, min_size: int = 0, value: int = 255) -> np.ndarray:
    """Pad an HxWxC array with ``value`` to a square of side max(h, w, min_size), centred."""
    h, w = arr.shape[:2]
    size = max(h, w, min_size)
    top, left = (size - h) // 2, (size - w) // 2
    out = np.full((size, size) + arr.shape[2:], value, dtype=arr.dtype)
    out[top : top + h, left : left + w] = arr
    return out


# --- OpenCV INTER_AREA, shrinking ----------------------------------------------


def _area_axis0(a: np.ndarray, n_out: int) -> np.ndarray:
    """Shrink axis 0 by area averaging (float64, not rounded).

    Output pixel i covers [f_i, f_i+1) of the input, f = i * n / n_out: the sum
    of the pixels floor(f_i) .. floor(f_i+1) - 1, less the part of the first one
    before f_i, plus the part of pixel floor(f_i+1) before f_i+1, over the
    interval's length. Sums run on the input's own dtype (no float copy of a
    large image).
    """
    n = a.shape[0]
    scale = n / n_out
    edges = np.arange(n_out + 1, dtype=np.float64) * scale
    edges[-1] = n
    whole = np.floor(edges).astype(np.int64)
    frac = edges - whole
    frac[frac < 1e-3] = 0.0  # OpenCV ignores slivers under 0.001 of a pixel
    shape = (-1,) + (1,) * (a.ndim - 1)
    acc = np.int64 if a.dtype.kind in "ui" else np.float64
    # a slice sum per output row: far faster than np.add.reduceat on a large uint8 image
    sums = np.stack([a[whole[i] : max(whole[i + 1], whole[i] + 1)].sum(axis=0, dtype=acc) for i in range(n_out)]).astype(np.float64)
    edge_px = a[np.minimum(whole, n - 1)].astype(np.float64)
    sums -= frac[:-1].reshape(shape) * edge_px[:-1]
    sums += frac[1:].reshape(shape) * edge_px[1:]
    return sums / np.diff(edges).reshape(shape)


def resize_area(arr: np.ndarray, size: int) -> np.ndarray:
    """Shrink a square HxWxC uint8 array to ``size`` x ``size`` as cv2.INTER_AREA does."""
    h, w = arr.shape[:2]
    if (h, w) == (size, size):
        return arr.copy()
    if h < size or w < size:
        raise ValueError("resize_area only shrinks")
    kx, ky = w / size, h / size
    if kx == int(kx) and ky == int(ky):
        # OpenCV's resizeAreaFast: an integer sum over each k x k block
        kx, ky = int(kx), int(ky)
        blocks = arr.reshape(size, ky, size, kx, *arr.shape[2:]).sum(axis=(1, 3), dtype=np.int64)
        if kx == 2 and ky == 2:
            out = (blocks + 2) >> 2
        else:
            out = np.rint(blocks.astype(np.float32) * np.float32(1.0 / (kx * ky)))
        return np.clip(out, 0, 255).astype(np.uint8)
    out = _area_axis0(arr, size)
    out = _area_axis0(out.swapaxes(0, 1), size).swapaxes(0, 1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- OpenCV INTER_CUBIC, enlarging ----------------------------------------------


def _cubic_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(tap indices n_out x 4, edge-clamped; weights n_out x 4) for OpenCV's cubic kernel."""
    fx = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    sx = np.floor(fx)
    x = fx - sx
    a = -0.75
    c0 = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
    c1 = ((a + 2) * x - (a + 3)) * x * x + 1
    c2 = ((a + 2) * (1 - x) - (a + 3)) * (1 - x) * (1 - x) + 1
    c3 = 1 - c0 - c1 - c2
    taps = np.clip(sx.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)
    return taps, np.stack([c0, c1, c2, c3], axis=1)


def resize_cubic(arr: np.ndarray, size: int) -> np.ndarray:
    """Enlarge an HxWxC uint8 array to ``size`` x ``size`` as cv2.INTER_CUBIC does."""
    h, w = arr.shape[:2]
    src = arr.astype(np.float64)
    xt, xc = _cubic_table(w, size)
    yt, yc = _cubic_table(h, size)
    hor = np.einsum("hwk...,wk->hw...", src[:, xt], xc)  # horizontal pass first, as OpenCV
    ver = np.einsum("hk...,hk->h...", hor[yt], yc)
    return np.clip(np.rint(ver), 0, 255).astype(np.uint8)


# --- the whole pipeline ----------------------------------------------------------


def prepare_array(img: Image.Image, size: int, small_images: str = "pad") -> np.ndarray:
    """HxWx3 float32 BGR array (0-255) for one image, as the reference taggers build it."""
    if small_images not in SMALL_IMAGE_MODES:
        raise ValueError(f"small_images must be one of {SMALL_IMAGE_MODES}, got {small_images!r}")
    rgb = np.asarray(composite_on_white(img))
    bgr = rgb[:, :, ::-1]
    square = pad_to_square(bgr, size if small_images == "pad" else 0)
    side = square.shape[0]
    if side > size:
        square = resize_area(square, size)
    elif side < size:
        square = resize_cubic(square, size)
    return np.ascontiguousarray(square, dtype=np.float32)


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Open an image, fully loaded, EXIF orientation applied."""
    with Image.open(path) as img:
        img.load()
        return ImageOps.exif_transpose(img)


def prepare_image(path_or_image, size: int, small_images: str = "pad") -> np.ndarray:
    """:func:`prepare_array` for a path or an already opened image."""
    img = path_or_image if isinstance(path_or_image, Image.Image) else load_image(path_or_image)
    return prepare_array(img, size, small_images)


def input_size_from_shape(shape) -> int:
    """The side of a WD14 model's NHWC input ([batch, S, S, 3]); ValueError for anything else."""
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
        raise ValueError(f"not a WD14 tagger input: expected [batch, S, S, 3] (NHWC), got {list(shape)}")
    return int(shape[1])


__all__ = [
    "SMALL_IMAGE_MODES",
    "composite_on_white",
    "input_size_from_shape",
    "load_image",
    "pad_to_square",
    "prepare_array",
    "prepare_image",
    "resize_area",
    "resize_cubic",
]
