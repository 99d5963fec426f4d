"""Folder scanning: kohya's layout rules and a finding for every bad case."""
import os

import pytest
from PIL import Image

from lora_trainer.dataset.folders import parse_folder_name, scan_dataset


def _png(path, size=(64, 48), color=(200, 10, 10)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return str(path)


def _findings_for(scan, path):
    return [f for f in scan.findings if f.path == str(path)]


def test_parse_folder_name_kohya_rule():
    assert parse_folder_name("10_sks dog") == (10, "sks dog")
    assert parse_folder_name("3_my_char") == (3, "my_char")  # only the first "_" splits
    assert parse_folder_name("5") == (5, "")
    assert parse_folder_name("dog") is None
    assert parse_folder_name("x10_dog") is None
    assert parse_folder_name("0_dog") == (0, "dog")


def test_good_dataset(tmp_path):
    root = tmp_path / "train"
    _png(root / "10_sks dog" / "a.png", (64, 48))
    _png(root / "10_sks dog" / "b.png", (32, 32))
    (root / "10_sks dog" / "a.txt").write_text("sks dog, Red, sitting\n", encoding="utf-8")
    _png(root / "2_cat" / "c.png")
    (root / "2_cat" / "c.txt").write_text("cat, red", encoding="utf-8")
    scan = scan_dataset(str(root))

    assert scan.ok
    assert [(s.name, s.repeats, s.class_tokens, len(s.images)) for s in scan.subsets] == [
        ("10_sks dog", 10, "sks dog", 2),
        ("2_cat", 2, "cat", 1),
    ]
    a, b = scan.subsets[0].images
    assert (a.caption, a.caption_path, a.size) == ("sks dog, Red, sitting", str(root / "10_sks dog" / "a.txt"), (64, 48))
    # no caption file: the folder's class tokens, kohya's DreamBooth behaviour
    assert (b.caption, b.caption_path) == ("sks dog", None)
    assert scan.num_train_images == 10 * 2 + 2 * 1
    # kohya: tags split on ",", stripped, lower-cased, counted per folder name
    assert scan.tag_frequency == {
        "10_sks dog": {"sks dog": 2, "red": 1, "sitting": 1},
        "2_cat": {"cat": 1, "red": 1},
    }
    assert scan.dataset_dirs == {"10_sks dog": {"n_repeats": 10, "img_count": 2}, "2_cat": {"n_repeats": 2, "img_count": 1}}
    # one image captioned, one not: worth a warning naming the folder
    assert any("class tokens" in f.message for f in _findings_for(scan, root / "10_sks dog"))


def test_reg_dir_and_metadata(tmp_path):
    _png(tmp_path / "train" / "5_sks" / "a.png")
    _png(tmp_path / "reg" / "1_dog" / "r1.png")
    _png(tmp_path / "reg" / "1_dog" / "r2.png")
    scan = scan_dataset(str(tmp_path / "train"), str(tmp_path / "reg"))
    assert scan.ok
    assert [s.is_reg for s in scan.subsets] == [False, True]
    assert scan.num_train_images == 5 and scan.num_reg_images == 2
    assert scan.dataset_dirs == {"5_sks": {"n_repeats": 5, "img_count": 1}}
    assert scan.reg_dataset_dirs == {"1_dog": {"n_repeats": 1, "img_count": 2}}
    assert scan.tag_frequency == {"5_sks": {"sks": 1}, "1_dog": {"dog": 2}}


def test_any_case_extension_is_an_image(tmp_path):
    root = tmp_path / "train"
    for name in ["a.PNG", "b.JpG", "c.jpeg", "d.WEBP", "e.Bmp"]:
        path = root / "1_x" / name
        os.makedirs(path.parent, exist_ok=True)
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}[path.suffix.lower()]
        Image.new("RGB", (16, 16)).save(path, format=fmt)
    scan = scan_dataset(str(root))
    assert scan.ok and scan.findings == []
    assert sorted(os.path.basename(i.path) for i in scan.subsets[0].images) == ["a.PNG", "b.JpG", "c.jpeg", "d.WEBP", "e.Bmp"]


def test_folder_without_repeat_count(tmp_path):
    root = tmp_path / "train"
    _png(root / "dog" / "a.png")
    scan = scan_dataset(str(root))
    [f] = _findings_for(scan, root / "dog")
    assert "10_dog" in f.fix and "repeat" in f.message
    # nothing else to train on: the kohya "No data found" trap, as an error
    [err] = scan.errors
    assert err.path == str(root) and "no training images" in err.message


def test_zero_repeats_folder(tmp_path):
    _png(tmp_path / "0_dog" / "a.png")
    _png(tmp_path / "1_cat" / "a.png")
    scan = scan_dataset(str(tmp_path))
    assert scan.ok
    [f] = _findings_for(scan, tmp_path / "0_dog")
    assert "0 repeats" in f.message
    assert [s.name for s in scan.subsets] == ["1_cat"]


def test_empty_folder(tmp_path):
    _png(tmp_path / "1_cat" / "a.png")
    os.makedirs(tmp_path / "5_empty")
    scan = scan_dataset(str(tmp_path))
    [f] = _findings_for(scan, tmp_path / "5_empty")
    assert f.level == "warning" and "no usable images" in f.message
    # kohya records the empty folder in ss_tag_frequency but not in ss_dataset_dirs
    assert scan.tag_frequency["5_empty"] == {}
    assert "5_empty" not in scan.dataset_dirs


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("zero.png", b"", "empty"),
        ("text.png", b"this is not an image at all", "not an image"),
        ("fake.jpg", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),
    ],
)
def test_broken_files_are_skipped_with_a_finding(tmp_path, name, content, needle):
    _png(tmp_path / "1_x" / "good.png")
    bad = tmp_path / "1_x" / name
    bad.write_bytes(content)
    scan = scan_dataset(str(tmp_path))
    [f] = _findings_for(scan, bad)
    assert needle in f.message and "skipped" in f.message
    assert [os.path.basename(i.path) for i in scan.subsets[0].images] == ["good.png"]


@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_truncated_image(tmp_path, fmt, ext):
    import numpy as np

    noisy = Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype("uint8"))
    path = tmp_path / "1_x" / ("cut" + ext)
    os.makedirs(path.parent)
    noisy.save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    scan = scan_dataset(str(tmp_path))
    [f] = _findings_for(scan, path)
    assert "skipped" in f.message
    assert not scan.subsets  # the only image is gone
    if fmt != "WEBP":  # Pillow parses a WebP whole even for its size
        # header-only mode cannot see truncation: the file is listed
        assert len(scan_dataset(str(tmp_path), check_pixels=False).subsets[0].images) == 1


def test_unsupported_files(tmp_path):
    _png(tmp_path / "1_x" / "a.png")
    gif = tmp_path / "1_x" / "anim.gif"
    Image.new("P", (8, 8)).save(gif)
    psd = tmp_path / "1_x" / "layer.psd"
    psd.write_bytes(b"8BPS")
    (tmp_path / "1_x" / "a_cached.npz").write_bytes(b"")  # kohya's cache: silent
    (tmp_path / "1_x" / ".DS_Store").write_bytes(b"")  # hidden: silent
    scan = scan_dataset(str(tmp_path))
    assert "GIF" in _findings_for(scan, gif)[0].message
    assert "unsupported" in _findings_for(scan, psd)[0].message
    assert len(scan.findings) == 2
    assert scan.ok


def test_caption_without_image(tmp_path):
    _png(tmp_path / "1_x" / "a.png")
    orphan = tmp_path / "1_x" / "b.txt"
    orphan.write_text("lonely", encoding="utf-8")
    scan = scan_dataset(str(tmp_path))
    [f] = _findings_for(scan, orphan)
    assert "no image" in f.message


def test_non_utf8_caption_is_an_error_naming_the_file(tmp_path):
    _png(tmp_path / "1_x" / "a.png")
    _png(tmp_path / "1_x" / "b.png")
    cap = tmp_path / "1_x" / "a.txt"
    cap.write_bytes("café, crème".encode("latin-1"))
    scan = scan_dataset(str(tmp_path))
    [f] = _findings_for(scan, cap)
    assert f.level == "error" and "UTF-8" in f.message
    assert not scan.ok
    assert [os.path.basename(i.path) for i in scan.subsets[0].images] == ["b.png"]


def test_empty_caption_file_is_an_error(tmp_path):
    _png(tmp_path / "1_x" / "a.png")
    cap = tmp_path / "1_x" / "a.txt"
    cap.write_bytes(b"")
    scan = scan_dataset(str(tmp_path))
    [f] = _findings_for(scan, cap)
    assert f.level == "error" and "empty" in f.message


def test_caption_lines_bom_and_wildcard(tmp_path):
    _png(tmp_path / "1_x" / "a.png")
    cap = tmp_path / "1_x" / "a.txt"
    cap.write_bytes("\ufefffirst, tag\r\n\r\n  second  \r\n".encode("utf-8"))
    scan = scan_dataset(str(tmp_path))
    assert scan.subsets[0].images[0].caption == "first, tag"
    assert "byte-order mark" in _findings_for(scan, cap)[0].message
    wild = scan_dataset(str(tmp_path), enable_wildcard=True)
    assert wild.subsets[0].images[0].caption == "first, tag\nsecond"


def test_caption_extension_default_and_kohya_caption_files(tmp_path):
    _png(tmp_path / "1_x" / "a.png")
    (tmp_path / "1_x" / "a.caption").write_text("from caption file", encoding="utf-8")
    scan = scan_dataset(str(tmp_path))  # our default is .txt
    assert scan.subsets[0].images[0].caption == "x"
    [f] = _findings_for(scan, tmp_path / "1_x")
    assert ".caption" in f.message and ".caption" in f.fix
    kohya_default = scan_dataset(str(tmp_path), caption_extension="caption")
    assert kohya_default.subsets[0].images[0].caption == "from caption file"


def test_face_crop_name_shares_caption(tmp_path):
    # kohya: name_cx_cy_w_h.png falls back to name.txt
    _png(tmp_path / "1_x" / "portrait_10_20_30_40.png")
    (tmp_path / "1_x" / "portrait.txt").write_text("face", encoding="utf-8")
    scan = scan_dataset(str(tmp_path))
    assert scan.subsets[0].images[0].caption == "face"


def test_loose_images_and_missing_dir(tmp_path):
    _png(tmp_path / "loose.png")
    scan = scan_dataset(str(tmp_path))
    [loose] = _findings_for(scan, tmp_path)[:1]
    assert "sub-folder" in loose.message and "10_name" in loose.fix
    assert not scan.ok
    missing = scan_dataset(str(tmp_path / "nope"))
    [f] = missing.errors
    assert f.path == str(tmp_path / "nope")


def test_nested_folder_warning(tmp_path):
    _png(tmp_path / "1_x" / "a.png")
    _png(tmp_path / "1_x" / "more" / "b.png")
    scan = scan_dataset(str(tmp_path))
    [f] = _findings_for(scan, tmp_path / "1_x" / "more")
    assert "nested" in f.message
    assert len(scan.subsets[0].images) == 1


def test_transparent_image_warns(tmp_path):
    path = tmp_path / "1_x" / "t.png"
    os.makedirs(path.parent)
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    opaque = tmp_path / "1_x" / "o.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(opaque)
    scan = scan_dataset(str(tmp_path))
    assert "transparent" in _findings_for(scan, path)[0].message
    assert _findings_for(scan, opaque) == []
