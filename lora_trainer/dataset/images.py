"""Reading training images: size from the header, pixels with orientation.

Two deliberate points against kohya sd-scripts (48d368fa):

* EXIF orientation is applied (``ImageOps.exif_transpose``). kohya reads the
  size with ``imagesize`` and the pixels with ``Image.open`` and never looks
  at EXIF, so a phone photo tagged "rotate 90" trains sideways there. The size
  we report for bucketing is the size *after* orientation, so buckets and the
  loaded pixels always agree.
* Transparency follows kohya's ``load_image``: without ``alpha`` the image is
  ``convert("RGB")``-ed, which *drops* the alpha channel -- no compositing, so
  fully transparent pixels train as whatever colour they store (often black).
  With ``alpha`` (kohya's ``alpha_mask``) the image is ``convert("RGBA")``-ed
  and the alpha channel becomes the loss mask.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# EXIF orientations 5..8 swap width and height
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112


def _orientation(img: Image.Image, loaded: bool) -> int:
    # PNG's getexif() decodes the whole image when no eXIf chunk precedes the
    # pixel data; the header-only path must not pay that, so for PNG it only
    # trusts an eXIf chunk already seen while parsing the header.
    if not loaded and img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception:  # malformed EXIF must not make a good image unusable
        return 1


def _oriented_size(img: Image.Image, loaded: bool) -> tuple[int, int]:
    w, h = img.size
    if _orientation(img, loaded) in _TRANSPOSING_ORIENTATIONS:
        return h, w
    return w, h


def read_image_size(path: str) -> tuple[int, int]:
    """(width, height) as the image will be loaded, read from the header only."""
    with Image.open(path) as img:
        return _oriented_size(img, loaded=False)


def _open_oriented(path: str) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return ImageOps.exif_transpose(img)


def load_image(path: str, alpha: bool = False) -> np.ndarray:
    """HxWx3 (or HxWx4 with ``alpha``) uint8 array, EXIF orientation applied."""
    img = _open_oriented(path)
    mode = "RGBA" if alpha else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    return np.array(img, np.uint8)


def has_transparency(img: Image.Image) -> bool:
    """True when some pixel is not fully opaque (the image must be loaded)."""
    if img.mode in ("RGBA", "LA", "PA"):
        return img.getchannel("A").getextrema()[0] < 255
    if "transparency" in img.info:
        return img.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def inspect_image(path: str) -> tuple[Optional[tuple[int, int]], Optional[str], bool]:
    """Decode the whole file once: (size as loaded, problem, has transparency).

    ``problem`` is a sentence for the user when the file cannot be trained on
    (zero bytes, truncated, not an image); the size is then None.
    """
    try:
        if os.path.getsize(path) == 0:
            return None, "the file is empty (0 bytes)", False
        with Image.open(path) as img:
            full_size = img.size
            if img.format == "JPEG":
                # decoding at 1/8 scale still walks the whole entropy-coded
                # stream, so truncation is caught for a fraction of the cost
                img.draft("RGB", (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            img.load()
            transparent = has_transparency(img)
            # draft() shrank img.size; orientation is read from the decoded file
            w, h = full_size
            size = (h, w) if _orientation(img, loaded=True) in _TRANSPOSING_ORIENTATIONS else (w, h)
    except UnidentifiedImageError:
        return None, "not an image Pillow can read (wrong extension or corrupt header)", False
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return None, f"the image cannot be decoded ({e}); it is probably truncated or corrupt", False
    if size[0] <= 0 or size[1] <= 0:
        return None, f"the image has no pixels ({size[0]}x{size[1]})", False
    return size, None, transparent
