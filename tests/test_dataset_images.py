"""Image loading (EXIF, transparency), header-only sizes and resizing."""
import numpy as np
import pytest
from PIL import Image

from lora_trainer.dataset.augment import bgr_to_hsv, color_aug, hsv_to_bgr
from lora_trainer.dataset.images import inspect_image, load_image, read_image_size
from lora_trainer.dataset.resize import resize_image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _half_red_half_blue(w=40, h=20):
    img = Image.new("RGB", (w, h), BLUE)
    img.paste(Image.new("RGB", (w // 2, h), RED), (0, 0))
    return img


@pytest.mark.parametrize("fmt,ext", [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")])
def test_exif_rotation_applied(tmp_path, fmt, ext):
    path = tmp_path / ("rot" + ext)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    _half_red_half_blue().save(path, format=fmt, exif=exif)

    assert read_image_size(str(path)) == (20, 40)  # displayed size, from the header
    assert inspect_image(str(path))[0] == (20, 40)
    px = load_image(str(path))
    assert px.shape == (40, 20, 3)
    # the stored left (red) half is the displayed top half
    assert np.abs(px[5, 10].astype(int) - RED).max() < 40
    assert np.abs(px[35, 10].astype(int) - BLUE).max() < 40


def test_no_exif_unchanged(tmp_path):
    path = tmp_path / "plain.png"
    _half_red_half_blue().save(path)
    assert read_image_size(str(path)) == (40, 20)
    px = load_image(str(path))
    assert px.shape == (20, 40, 3) and tuple(px[0, 0]) == RED and tuple(px[0, -1]) == BLUE


def test_transparency_dropped_like_kohya(tmp_path):
    # kohya 48d368fa: convert("RGB") drops alpha, no compositing -- a fully
    # transparent red pixel trains as red, not as a background colour
    path = tmp_path / "t.png"
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (0, 255, 0, 255))
    img.save(path)
    rgb = load_image(str(path))
    assert rgb.shape == (4, 4, 3)
    assert tuple(rgb[1, 1]) == (255, 0, 0) and tuple(rgb[0, 0]) == (0, 255, 0)
    rgba = load_image(str(path), alpha=True)  # kohya's alpha_mask path
    assert rgba.shape == (4, 4, 4) and rgba[1, 1, 3] == 0 and rgba[0, 0, 3] == 255
    assert inspect_image(str(path))[2] is True


def test_palette_and_grey_images_become_rgb(tmp_path):
    for mode in ("P", "L", "LA", "I;16", "CMYK"):
        path = tmp_path / f"m{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.new(mode, (6, 5)).save(path)
        assert load_image(str(path)).shape == (5, 6, 3), mode


def test_area_shrink_is_exact_area_average():
    # 3 -> 2 pixels: each output covers 1.5 inputs
    #   [0, 100*0.5] / 1.5 = 33.3 -> 33 ; [100*0.5 + 200] / 1.5 = 166.7 -> 167
    row = np.array([[0, 100, 200]], np.uint8)[..., None].repeat(3, 2)
    assert resize_image(row, (2, 1))[0, :, 0].tolist() == [33, 167]
    # 2x shrink is the block mean, half rounding up (OpenCV's fast path)
    block = np.arange(16, dtype=np.uint8).reshape(4, 4, 1).repeat(3, 2)
    assert resize_image(block, (2, 2))[..., 0].tolist() == [[3, 5], [11, 13]]


def _area_by_weights(img, w, h):
    # independent reference: dense coverage-weight matrices, one per axis
    def weights(n, out):
        s = n / out
        m = np.zeros((out, n))
        for i in range(out):
            a, b = i * s, (i + 1) * s
            for j in range(int(a), min(n, int(np.ceil(b)))):
                m[i, j] = max(0.0, min(b, j + 1) - max(a, j)) / s
        return m

    out = np.einsum("ih,hwc,jw->ijc", weights(img.shape[0], h), img.astype(float), weights(img.shape[1], w))
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(20, 11), (53, 20), (17, 37), (26, 18), (1, 1), (52, 36)])
def test_area_shrink_matches_coverage_weights(size):
    src = (np.random.default_rng(1).random((37, 53, 3)) * 255).astype(np.uint8)
    assert np.array_equal(resize_image(src, size), _area_by_weights(src, *size))


def test_enlarging_uses_pil_lanczos_like_kohya():
    src = (np.random.default_rng(1).random((10, 12, 3)) * 255).astype(np.uint8)
    expected = np.array(Image.fromarray(src).resize((30, 25), Image.Resampling.LANCZOS))
    assert np.array_equal(resize_image(src, (30, 25)), expected)
    # one side growing is enough to switch to lanczos
    expected = np.array(Image.fromarray(src).resize((6, 20), Image.Resampling.LANCZOS))
    assert np.array_equal(resize_image(src, (6, 20)), expected)


def test_named_interpolations():
    src = (np.random.default_rng(2).random((16, 16, 3)) * 255).astype(np.uint8)
    for name in ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box"):
        assert resize_image(src, (8, 12), name).shape == (12, 8, 3)
    with pytest.raises(ValueError):
        resize_image(src, (8, 8), "sinc")


def test_hsv_matches_opencv_reference_values():
    # OpenCV 8-bit BGR2HSV: hue in degrees / 2
    bgr = np.array([[[0, 0, 255], [0, 255, 0], [255, 0, 0], [128, 128, 128], [0, 128, 255]]], np.uint8)
    assert bgr_to_hsv(bgr)[0].tolist() == [[0, 255, 255], [60, 255, 255], [120, 255, 255], [0, 0, 128], [15, 255, 255]]
    rng = np.random.default_rng(3)
    px = (rng.random((1, 500, 3)) * 255).astype(np.uint8)
    assert np.abs(hsv_to_bgr(bgr_to_hsv(px)).astype(int) - px).max() <= 4  # 8-bit round trip


def test_color_aug_probabilities():
    import random

    img = (np.random.default_rng(4).random((8, 8, 3)) * 255).astype(np.uint8)
    changed = sum(not np.array_equal(color_aug(img, random.Random(s)), img) for s in range(600))
    # kohya: applied with probability 0.33
    assert 150 < changed < 260
