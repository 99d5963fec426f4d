"""WD14 tagging with a tiny ONNX tagger built here (the real models' signature:
NHWC float32 [batch, S, S, 3] in, [batch, n_tags] sigmoid scores out).

The tiny model scores each tag from the mean B, G, R values of its input
(``sigmoid(mean / 255 @ W + b)``), so a red, green, blue or white image gets
different tags, deterministically, and the BGR channel order matters.
"""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from lora_trainer.tagging import captions_io, preprocess, wd14  # noqa: E402
from lora_trainer.tagging.wd14 import TagOptions, WD14Tagger  # noqa: E402

# (name, category, weights on mean [B, G, R] in 0..1, bias)
TINY_TAGS = [
    ("general", 9, (0, 0, 0), 1.0),
    ("sensitive", 9, (0, 0, 0), -1.0),
    ("questionable", 9, (0, 0, 0), -3.0),
    ("explicit", 9, (0, 0, 0), -4.0),
    ("red_theme", 0, (-5, -5, 10), -3.0),
    ("blue_theme", 0, (10, -5, -5), -3.0),
    ("green_theme", 0, (-5, 10, -5), -3.0),
    ("white_background", 0, (10, 10, 10), -25.0),
    ("^_^", 0, (0, 0, 0), 2.0),
    ("long_hair", 0, (0, 0, 0), -2.0),
    ("medium_score", 0, (0, 0, 0), float(np.log(0.6 / 0.4))),  # always 0.6
    ("hatsune_miku", 4, (0, 12, 0), -6.0),
    ("ganyu_(genshin_impact)", 4, (12, 0, 0), -6.0),
    ("mid_char", 4, (0, 0, 0), float(np.log(0.6 / 0.4))),  # always 0.6
]


def tiny_scores(prepared: np.ndarray) -> np.ndarray:
    """What the tiny model computes, in numpy, for one prepared HxWx3 BGR image."""
    w = np.array([t[2] for t in TINY_TAGS], dtype=np.float64).T
    b = np.array([t[3] for t in TINY_TAGS], dtype=np.float64)
    m = prepared.astype(np.float64).mean(axis=(0, 1)) / 255.0
    return 1 / (1 + np.exp(-(m @ w + b)))


def write_tiny_tagger(folder, size=32, flavour="v3", tags=TINY_TAGS, extra_csv_rows=0):
    """model.onnx + selected_tags.csv in ``folder``. v2: input "input_1:0" with
    batch fixed to 1, output "predictions_sigmoid"; v3: input "input" with a
    free batch dimension, output "output"."""
    os.makedirs(folder, exist_ok=True)
    in_name, out_name, batch = ("input_1:0", "predictions_sigmoid", 1) if flavour == "v2" else ("input", "output", "batch")
    n = len(tags)
    w = np.array([t[2] for t in tags], dtype=np.float32).T.copy()
    b = np.array([t[3] for t in tags], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2], keepdims=0),
            helper.make_node("Mul", ["mean", "scale"], ["m"]),
            helper.make_node("MatMul", ["m", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], [out_name]),
        ],
        "tiny_wd14",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, n])],
        initializer=[
            helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0 / 255.0]),
            helper.make_tensor("W", TensorProto.FLOAT, [3, n], w.flatten().tolist()),
            helper.make_tensor("b", TensorProto.FLOAT, [n], b.tolist()),
        ],
    )
    # rename the first node's input to the model's input name
    graph.node[0].input[0] = in_name
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(folder, "model.onnx"))
    with open(os.path.join(folder, "selected_tags.csv"), "w", encoding="utf-8", newline="") as f:
        f.write("tag_id,name,category,count\n")
        for i, (name, cat, _, _) in enumerate(tags):
            f.write(f"{1000 + i},{name},{cat},{500 - i}\n")
        for j in range(extra_csv_rows):
            f.write(f"{9000 + j},extra_{j},0,1\n")
    return str(folder)


def solid(path, colour, size=(40, 24), mode="RGB"):
    Image.new(mode, size, colour).save(path)
    return str(path)


@pytest.fixture
def tiny_v3(tmp_path):
    return write_tiny_tagger(tmp_path / "models" / "tiny-v3", flavour="v3")


@pytest.fixture
def tiny_v2(tmp_path):
    return write_tiny_tagger(tmp_path / "models" / "tiny-v2", flavour="v2")


def open_tagger(folder, **kwargs):
    onnx_path, csv_path, spec = wd14.resolve_model_files(None, folder, download=False)
    return WD14Tagger(onnx_path, csv_path, spec, threads=1, **kwargs)


# --- preprocessing, pixel for pixel -------------------------------------------------


def blend(c, a):
    """Pillow's paste-with-mask onto white, by hand: round((c*a + 255*(255-a)) / 255)."""
    return int(np.floor((c * a + 255 * (255 - a)) / 255 + 0.5))


def test_alpha_bgr_and_centred_padding_by_hand():
    # 3 wide, 2 tall RGBA: transparent, opaque red, half-transparent (10, 200, 60) / opaque green, blue, black
    img = Image.new("RGBA", (3, 2))
    img.putdata([(9, 9, 9, 0), (255, 0, 0, 255), (10, 200, 60, 128), (0, 255, 0, 255), (0, 0, 255, 255), (0, 0, 0, 255)])
    out = preprocess.prepare_array(img, 3)  # square side 3 = the input size: no resize
    white = [255, 255, 255]
    half = [blend(60, 128), blend(200, 128), blend(10, 128)]  # BGR
    expected = np.array(
        [
            [white, [0, 0, 255], half],  # transparent -> white; red is B=0, G=0, R=255
            [[0, 255, 0], [255, 0, 0], [0, 0, 0]],
            [white, white, white],  # the odd row of padding goes to the bottom
        ],
        dtype=np.float32,
    )
    assert out.dtype == np.float32 and out.shape == (3, 3, 3)
    np.testing.assert_array_equal(out, expected)


def test_pad_mode_centres_small_image_unscaled_and_enlarge_mode_enlarges():
    img = Image.new("RGB", (2, 1), (10, 20, 30))
    padded = preprocess.prepare_array(img, 6, "pad")
    expected = np.full((6, 6, 3), 255, np.float32)
    expected[2, 2:4] = [30, 20, 10]  # left = (6 - 2) // 2, top = (6 - 1) // 2
    np.testing.assert_array_equal(padded, expected)

    flat = Image.new("RGB", (4, 2), (10, 20, 30))
    enlarged = preprocess.prepare_array(flat, 8, "enlarge")  # 4x4 square (white rows 0 and 3) -> 8x8
    assert enlarged.shape == (8, 8, 3)
    np.testing.assert_array_equal(enlarged[:, 0], enlarged[:, 7])  # every column alike: rows vary only
    ref = hand_cubic(np.array([255, 30, 30, 255], np.float64), 8)  # the B channel (30) down one column
    np.testing.assert_array_equal(enlarged[:, 3, 0], np.clip(np.floor(ref + 0.5), 0, 255))


def hand_cubic(column: np.ndarray, out: int) -> np.ndarray:
    """OpenCV's INTER_CUBIC along one axis, written out pixel by pixel."""
    n = len(column)
    a = -0.75

    def w(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        if t < 2:
            return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
        return 0.0

    res = []
    for i in range(out):
        x = (i + 0.5) * n / out - 0.5
        base = int(np.floor(x))
        res.append(sum(column[min(max(base + k, 0), n - 1)] * w(x - (base + k)) for k in range(-1, 3)))
    return np.array(res)


def test_area_shrink_by_hand_with_opencv_rounding():
    # 2x: block sums rounded half up, as OpenCV's (s + 2) >> 2
    img = np.zeros((4, 4, 1), np.uint8)
    img[0:2, 0:2, 0] = [[0, 1], [0, 1]]  # mean 0.5 -> 1
    img[0:2, 2:4, 0] = [[10, 10], [10, 12]]  # mean 10.5 -> 11
    img[2:4, 0:2, 0] = 200
    img[2:4, 2:4, 0] = [[3, 4], [5, 6]]  # mean 4.5 -> 5
    np.testing.assert_array_equal(preprocess.resize_area(img, 2)[..., 0], [[1, 11], [200, 5]])
    # 4x: s * (1/16) in float32, rounded half to even
    img = np.zeros((8, 8, 1), np.uint8)
    img[0, 0:8, 0] = 1  # first block sum 4 ... make sums 8 and 24
    img[0:4, 0:4, 0] = 0
    img[0, 0:4, 0] = 2  # sum 8 -> 0.5 -> 0
    img[0:4, 4:8, 0] = 0
    img[0:2, 4:8, 0] = 3  # sum 24 -> 1.5 -> 2
    img[4:8, :, 0] = 7
    np.testing.assert_array_equal(preprocess.resize_area(img, 2)[..., 0], [[0, 2], [7, 7]])
    # a non-integer factor: 3 -> 2, each output covers 1.5 pixels
    row = np.array([[[0], [30], [90]]], np.uint8).repeat(3, axis=0)
    out = preprocess.resize_area(row, 2)
    np.testing.assert_array_equal(out[0, :, 0], [round((0 + 30 * 0.5) / 1.5), round((30 * 0.5 + 90) / 1.5)])


def test_cubic_by_hand_in_two_dimensions():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (3, 4, 1), dtype=np.uint8)
    out = preprocess.resize_cubic(img, 7)[..., 0]
    horiz = np.stack([hand_cubic(img[r, :, 0].astype(np.float64), 7) for r in range(3)])
    both = np.stack([hand_cubic(horiz[:, c], 7) for c in range(7)], axis=1)
    expected = np.clip(np.floor(both + 0.5), 0, 255)
    # ties (x.5) are the only place rounding could differ; there are none here
    assert np.all(np.abs(both - np.floor(both) - 0.5) > 1e-6)
    np.testing.assert_array_equal(out, expected)


def test_palette_transparency_and_exif_orientation(tmp_path):
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0  # palette entry 0 (red) is transparent
    path = tmp_path / "pal.png"
    pal.save(path, transparency=0)
    out = preprocess.prepare_image(str(path), 2)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[1, 1], [255, 0, 0])  # blue, as BGR

    img = Image.new("RGB", (4, 2), (255, 255, 255))
    img.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=100)
    shown = preprocess.load_image(str(path))
    assert shown.size == (2, 4)


def test_large_image_memory_path_matches_reference_on_integer_factor():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    got = preprocess.resize_area(img, 16)
    ref = np.rint(img.reshape(16, 4, 16, 4, 3).astype(np.int64).sum(axis=(1, 3)).astype(np.float32) * np.float32(1 / 16))
    np.testing.assert_array_equal(got, ref)


# --- the tagger ------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["v2", "v3"])
def test_signature_input_size_and_tags_per_colour(tmp_path, flavour):
    folder = write_tiny_tagger(tmp_path / flavour, size=24, flavour=flavour)
    paths = {c: solid(tmp_path / f"{c}.png", rgb) for c, rgb in
             {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}.items()}
    with open_tagger(folder, batch_size=3) as tagger:
        assert tagger.input_name == ("input_1:0" if flavour == "v2" else "input")
        assert tagger.input_size == 24
        assert tagger.providers == ["CPUExecutionProvider"]
        probs = tagger.predict(list(paths.values()))  # 4 images: v2 runs one at a time, v3 in batches of 3
        for p, path in zip(probs, paths.values()):
            np.testing.assert_allclose(p, tiny_scores(tagger.prepare(path)), rtol=1e-5, atol=1e-6)
        tags = dict(zip(paths, tagger.tag(list(paths.values()))))
    # colours land on different tags; the padding is white, so a colour image is only mostly that colour
    assert "red theme" in tags["red"] and "blue theme" not in tags["red"]
    assert "blue theme" in tags["blue"] and "ganyu (genshin impact)" not in tags["red"]
    assert tags["green"][0] == "hatsune miku"  # characters first
    assert "white background" in tags["white"] and "red theme" not in tags["white"]
    assert all("^_^" in t and "long hair" not in t for t in tags.values())


def test_thresholds_are_separate_and_rating_is_excluded_by_default(tiny_v3, tmp_path):
    white = solid(tmp_path / "w.png", (255, 255, 255))
    with open_tagger(tiny_v3) as tagger:
        (probs,) = tagger.predict([white])
        labels = tagger.labels
    select = lambda **kw: wd14.select_tags(probs, labels, TagOptions(**kw))  # noqa: E731
    default = select()
    assert "medium score" in default and "mid char" not in default  # 0.6: >= 0.35 general, < 0.85 character
    assert not {"general", "sensitive", "questionable", "explicit"} & set(default)
    high_general = select(general_threshold=0.7, character_threshold=0.5)
    assert "medium score" not in high_general and "mid char" in high_general
    rated = select(include_rating=True)
    assert rated[0] == "general" and "sensitive" not in rated  # the top rating only, first
    score = float(probs[[lb.name for lb in labels].index("medium_score")])
    assert "medium score" in select(general_threshold=score)  # >=, as the reference taggers
    assert "medium score" not in select(general_threshold=float(np.nextafter(np.float32(score), np.float32(1))))


def test_underscores_kaomoji_escape_and_exclude(tiny_v3, tmp_path):
    blue = solid(tmp_path / "b.png", (0, 0, 255), size=(24, 24))
    with open_tagger(tiny_v3) as tagger:
        (probs,) = tagger.predict([blue])
        labels = tagger.labels
    tags = wd14.select_tags(probs, labels, TagOptions())
    assert "ganyu (genshin impact)" in tags and "^_^" in tags and "blue theme" in tags
    escaped = wd14.select_tags(probs, labels, TagOptions(escape=True))
    assert "ganyu \\(genshin impact\\)" in escaped and "^_^" in escaped
    raw = wd14.select_tags(probs, labels, TagOptions(replace_underscores=False))
    assert "ganyu_(genshin_impact)" in raw and "blue_theme" in raw
    excluded = wd14.select_tags(probs, labels, TagOptions(exclude=["Blue_Theme", "^_^, medium score"]))
    assert "blue theme" not in excluded and "^_^" not in excluded and "medium score" not in excluded


def test_labels_must_match_the_model(tmp_path):
    folder = write_tiny_tagger(tmp_path / "bad", extra_csv_rows=2)
    with pytest.raises(wd14.TaggerError, match="scores but"):
        with open_tagger(folder):
            pass
    (tmp_path / "nocsv").mkdir()
    (tmp_path / "nocsv" / "selected_tags.csv").write_text("id,tag\n1,a\n")
    with pytest.raises(wd14.TaggerError, match="not a WD14 selected_tags.csv"):
        wd14.load_labels(tmp_path / "nocsv" / "selected_tags.csv")


def test_session_is_released_after_the_block(tiny_v3, tmp_path):
    tagger = open_tagger(tiny_v3)
    with tagger:
        assert tagger.is_open
    assert not tagger.is_open
    with pytest.raises(wd14.TaggerError, match="not open"):
        tagger.run(np.zeros((1, 32, 32, 3), np.float32))


def test_providers_prefer_cuda_when_onnxruntime_has_it(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert wd14.choose_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert wd14.choose_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert wd14.choose_providers() == ["CPUExecutionProvider"]
    with pytest.raises(wd14.TaggerError, match="onnxruntime-gpu"):
        wd14.choose_providers("cuda")


# --- model files -----------------------------------------------------------------------------


def test_model_registry():
    assert wd14.get_model("SmilingWolf/wd-eva02-large-tagger-v3").name == "wd-eva02-large-tagger-v3"
    for name in ["wd-v1-4-vit-tagger-v2", "wd-v1-4-convnext-tagger-v2", "wd-v1-4-convnextv2-tagger-v2",
                 "wd-v1-4-swinv2-tagger-v2", "wd-v1-4-moat-tagger-v2", "wd-vit-tagger-v3", "wd-convnext-tagger-v3",
                 "wd-swinv2-tagger-v3", "wd-eva02-large-tagger-v3"]:
        m = wd14.get_model(name)
        assert m.repo_id == "SmilingWolf/" + name
        assert (m.general_threshold, m.character_threshold) == (0.35, 0.85)
        assert m.small_images == ("pad" if m.generation == "v2" else "enlarge")
    with pytest.raises(wd14.TaggerError, match="unknown tagger model"):
        wd14.get_model("nope")


def test_local_folder_and_models_root_never_touch_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*a, **k):
        raise AssertionError("the hub must not be asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    local = write_tiny_tagger(tmp_path / "mine")
    onnx_path, csv_path, spec = wd14.resolve_model_files("wd-vit-tagger-v3", local)
    assert onnx_path == os.path.join(local, "model.onnx") and spec.name == "wd-vit-tagger-v3"
    root = tmp_path / "models"
    write_tiny_tagger(root / "wd-swinv2-tagger-v3")
    onnx_path, _, spec = wd14.resolve_model_files("wd-swinv2-tagger-v3", root)
    assert onnx_path == str(root / "wd-swinv2-tagger-v3" / "model.onnx") and spec.generation == "v3"
    with pytest.raises(wd14.TaggerError, match="allow the download"):
        wd14.resolve_model_files("wd-vit-tagger-v3", root, download=False)


def test_first_use_downloads_into_the_models_root(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    source = write_tiny_tagger(tmp_path / "hub")

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("local_dir")))
        dest = os.path.join(kwargs["local_dir"], filename)
        shutil.copy(os.path.join(source, filename), dest)
        return dest

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    root = tmp_path / "webui" / "models" / "wd14_tagger"
    onnx_path, csv_path, spec = wd14.resolve_model_files("wd-eva02-large-tagger-v3", root)
    target = str(root / "wd-eva02-large-tagger-v3")
    assert calls == [("SmilingWolf/wd-eva02-large-tagger-v3", "selected_tags.csv", target),
                     ("SmilingWolf/wd-eva02-large-tagger-v3", "model.onnx", target)]
    assert onnx_path == os.path.join(target, "model.onnx") and os.path.isfile(csv_path)
    calls.clear()
    wd14.resolve_model_files("wd-eva02-large-tagger-v3", root)  # second use: already there
    assert calls == []

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(wd14.TaggerError, match="could not download selected_tags.csv"):
        wd14.resolve_model_files("wd-vit-tagger-v3", root)


# --- captions: modes, trigger, backups -----------------------------------------------------------


def make_dataset(root):
    """10_char/: red (captioned), green (empty caption), blue (blank caption), white (no caption)."""
    folder = root / "10_char"
    folder.mkdir(parents=True)
    solid(folder / "red.png", (255, 0, 0))
    solid(folder / "green.png", (0, 255, 0))
    solid(folder / "blue.png", (0, 0, 255))
    solid(folder / "white.PNG", (255, 255, 255))
    (folder / "red.txt").write_bytes(b"\xef\xbb\xbfkeep me, hand written\r\n")
    (folder / "green.txt").write_bytes(b"")
    (folder / "blue.txt").write_bytes(b"  \n")
    return folder


def snapshot(root):
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != captions_io.BACKUP_DIR_NAME]
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def test_if_empty_never_overwrites(tiny_v3, tmp_path):
    folder = make_dataset(tmp_path / "train")
    before = (folder / "red.txt").read_bytes()
    with open_tagger(tiny_v3) as tagger:
        result = wd14.tag_dataset(tmp_path / "train", tagger, trigger="sks")
        assert result.skipped == [str(folder / "red.png")]
        assert sorted(os.path.basename(p) for p in result.written) == ["blue.txt", "green.txt", "white.txt"]
        assert (folder / "red.txt").read_bytes() == before
        assert (folder / "green.txt").read_text().startswith("sks, hatsune miku")
        assert (folder / "white.txt").read_text().split(", ")[0] == "sks"
        again = wd14.tag_dataset(tmp_path / "train", tagger, trigger="sks")
    assert again.written == [] and len(again.skipped) == 4 and again.undo is None


def test_overwrite_needs_confirmation_and_its_backup_restores_byte_identical(tiny_v3, tmp_path):
    root = tmp_path / "train"
    make_dataset(root)
    original = snapshot(root)
    with open_tagger(tiny_v3) as tagger:
        with pytest.raises(wd14.OverwriteNotConfirmed, match="--yes"):
            wd14.tag_dataset(root, tagger, mode="overwrite")
        assert snapshot(root) == original
        assert not (root / captions_io.BACKUP_DIR_NAME).exists()
        result = wd14.tag_dataset(root, tagger, mode="overwrite", confirm_overwrite=True)
    assert len(result.written) == 4
    assert (root / "10_char" / "red.txt").read_text().startswith("red theme")
    backup = result.backup_dir
    assert os.path.dirname(backup) == str(root / captions_io.BACKUP_DIR_NAME)
    for name in ["red.txt", "green.txt", "blue.txt"]:  # every existing caption, byte-identical
        with open(os.path.join(backup, "10_char", name), "rb") as f:
            assert f.read() == original[os.path.join("10_char", name)]
    assert not os.path.exists(os.path.join(backup, "10_char", "white.txt"))  # it did not exist
    res = captions_io.undo(backup)  # from the folder alone (its manifest)
    assert sorted(map(os.path.basename, res.restored)) == ["blue.txt", "green.txt", "red.txt"]
    assert res.removed == [str(root / "10_char" / "white.txt")]
    assert snapshot(root) == original


def test_append_keeps_captions_and_adds_new_tags_once(tiny_v3, tmp_path):
    root = tmp_path / "train"
    folder = root / "5_x"
    folder.mkdir(parents=True)
    solid(folder / "a.png", (255, 0, 0))
    (folder / "a.txt").write_text("my tag, red_theme, sks\nsecond line\n", encoding="utf-8")
    with open_tagger(tiny_v3) as tagger:
        result = wd14.tag_dataset(root, tagger, mode="append", trigger="sks", additional="1girl")
    lines = (folder / "a.txt").read_text(encoding="utf-8").split("\n")
    first = lines[0].split(", ")
    assert first[:3] == ["sks", "my tag", "red_theme"]  # trigger first, the caption's own tags kept
    assert "red theme" not in first and "1girl" in first and "^_^" in first  # no tag twice
    assert lines[1].startswith("sks, second line") and lines[2] == ""
    captions_io.undo(result.undo)
    assert (folder / "a.txt").read_text(encoding="utf-8") == "my tag, red_theme, sks\nsecond line\n"


def test_compose_caption_trigger_additional_dedupe():
    assert wd14.compose_caption(["a", "sks", "b"], None, "overwrite", "sks", "x, a") == "sks, x, a, b"
    assert wd14.compose_caption(["b"], "a, B", "append", "t") == "t, a, B"
    assert wd14.compose_caption(["b"], "a", "if-empty") == "b"


def test_unreadable_image_is_reported_and_the_rest_tagged(tiny_v3, tmp_path):
    folder = tmp_path / "train" / "1_x"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"not an image")
    solid(folder / "ok.png", (0, 255, 0))
    with open_tagger(tiny_v3) as tagger:
        result = wd14.tag_dataset(tmp_path / "train", tagger)
    assert [f[0] for f in result.failed] == [str(folder / "broken.png")]
    assert result.written == [str(folder / "ok.txt")]
    assert not (folder / "broken.txt").exists()


def test_dry_run_writes_nothing_and_stop_ends_between_batches(tiny_v3, tmp_path):
    root = tmp_path / "train"
    make_dataset(root)
    original = snapshot(root)
    with open_tagger(tiny_v3) as tagger:
        dry = wd14.tag_dataset(root, tagger, mode="overwrite", dry_run=True, trigger="sks")  # no confirmation needed
        assert snapshot(root) == original and not (root / captions_io.BACKUP_DIR_NAME).exists()
        assert dry.written == [] and dry.undo is None and len(dry.captions) == 4
        assert all(text.startswith("sks, ") for text in dry.captions.values())
        asked = []
        stopped = wd14.tag_dataset(root, tagger, should_stop=lambda: len(asked) > 0 or asked.append(1))
    assert stopped.stopped and len(stopped.written) == 1  # one batch (of 1), then stopped
    assert captions_io.undo(stopped.undo).removed == []  # blue.txt (first to do) existed: it is restored
    assert snapshot(root) == original


def test_models_root_is_the_hosts_models_folder_or_a_fixed_cache_never_the_working_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("LORA_TRAINER_TAGGER_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert wd14.standalone_models_root() == str(tmp_path / "cache" / "lora_trainer" / "models" / "wd14_tagger")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert wd14.standalone_models_root() == str(tmp_path / "home" / ".cache" / "lora_trainer" / "models" / "wd14_tagger")
    assert os.path.isabs(wd14.DEFAULT_MODELS_ROOT)  # the same folder from any working directory
    assert wd14.models_root(tmp_path / "webui" / "models") == str(tmp_path / "webui" / "models" / "wd14_tagger")
    assert wd14.models_root(None) == wd14.models_root("") == wd14.DEFAULT_MODELS_ROOT
    monkeypatch.setenv("LORA_TRAINER_TAGGER_DIR", str(tmp_path / "mine"))
    assert wd14.models_root(tmp_path / "webui" / "models") == str(tmp_path / "mine")
    # resolve_model_files without a folder looks under models_root()
    with pytest.raises(wd14.TaggerError, match=str(tmp_path / "mine" / "wd-vit-tagger-v3")):
        wd14.resolve_model_files("wd-vit-tagger-v3", None, download=False)


@pytest.mark.parametrize("options", [TagOptions(general_threshold=1.5), TagOptions(character_threshold=-0.2),
                                     TagOptions(general_threshold=float("nan"))])
def test_a_threshold_outside_0_1_stops_before_any_backup_or_write(tiny_v3, tmp_path, options):
    root = tmp_path / "train"
    make_dataset(root)
    original = snapshot(root)
    with open_tagger(tiny_v3) as tagger:
        with pytest.raises(wd14.TaggerError, match="threshold must be a score between 0 and 1"):
            wd14.tag_dataset(root, tagger, mode="overwrite", confirm_overwrite=True, options=options)
    assert snapshot(root) == original and not (root / captions_io.BACKUP_DIR_NAME).exists()
    assert TagOptions(general_threshold=0, character_threshold=1).thresholds(None) == (0.0, 1.0)
