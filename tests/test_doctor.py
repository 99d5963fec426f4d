"""The dataset doctor on a crafted messy dataset: every finding, with its files."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from lora_trainer.cli_dataset import check_main
from lora_trainer.dataset.doctor import check_dataset, false_positive_tags, near_duplicate_groups


def pattern(path, seed, size=(640, 640), fmt=None):
    """A distinct image: random 16x16 blocks, scaled up (so a resized copy keeps its look)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.NEAREST).save(path, format=fmt)
    return str(path)


def write(path, text):
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


@pytest.fixture
def messy(tmp_path):
    train = tmp_path / "train"
    char = train / "10_mychar"
    char.mkdir(parents=True)
    for i in range(12):
        pattern(char / f"img_{i:02d}.png", seed=i)
        write(char / f"img_{i:02d}.txt", "mychar, blonde hair, blue eyes, smile")
    write(char / "img_05.txt", "mychar, brown hair, blue eyes, smile")  # the odd one out
    write(char / "img_06.txt", "blonde hair, blue eyes, smile")  # no trigger
    pattern(char / "nocap.png", seed=100)  # no caption
    pattern(char / "empty.png", seed=101)
    write(char / "empty.txt", b"")
    pattern(char / "blank.png", seed=102)
    write(char / "blank.txt", "  \n")
    pattern(char / "UPPER.PNG", seed=103, fmt="PNG")
    write(char / "UPPER.txt", "mychar, blonde hair")
    pattern(char / "clash.png", seed=104)
    pattern(char / "clash.jpg", seed=105, fmt="JPEG")
    write(char / "clash.txt", "mychar, blonde hair")
    pattern(char / "small.png", seed=106, size=(300, 400))
    write(char / "small.txt", "mychar, blonde hair")
    # img_00 again, resized and re-encoded as JPEG
    Image.open(char / "img_00.png").resize((600, 600), Image.Resampling.BILINEAR).save(char / "dup.jpg", quality=90)
    write(char / "dup.txt", "mychar, blonde hair")
    pattern(char / "tall.png", seed=107, size=(512, 1024))
    write(char / "tall.txt", "mychar, blonde hair")
    (char / "anim.gif").write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    few = train / "2_few"
    few.mkdir()
    for i in range(3):
        pattern(few / f"f{i}.png", seed=200 + i)
        write(few / f"f{i}.txt", "mychar, outdoors")
    (train / "notes").mkdir()  # no repeat count: the trainer's own scan reports it
    reg = tmp_path / "reg" / "1_person"
    reg.mkdir(parents=True)
    for i in range(5):
        pattern(reg / f"r{i}.png", seed=300 + i)
    return train, tmp_path / "reg"


def names(finding):
    return sorted(os.path.basename(p) for p in finding.files)


def test_every_finding_on_a_messy_dataset(messy):
    train, reg = messy
    report = check_dataset(str(train), str(reg), trigger_word="mychar", batch_size=2)
    char = train / "10_mychar"
    by = {}
    for f in report.findings:
        by.setdefault((f.code, f.level), []).append(f)

    (f,) = by[("unsupported_file", "warning")]
    assert names(f) == ["anim.gif"] and ".gif" in f.message and f.fix
    (f,) = by[("extension_case", "warning")]
    assert names(f) == ["UPPER.PNG"]
    (f,) = by[("stem_clash", "warning")]
    assert names(f) == ["clash.jpg", "clash.png"] and "clash.txt" in f.message
    (f,) = by[("missing_caption", "warning")]
    assert names(f) == ["nocap.png"] and "tag" in f.fix
    (f,) = by[("empty_caption", "error")]
    assert names(f) == ["empty.txt"]
    (f,) = by[("empty_caption", "warning")]
    assert names(f) == ["blank.txt"]
    (f,) = by[("missing_trigger", "warning")]
    # the uncaptioned image trains with the class tokens "mychar", which hold the trigger
    assert names(f) == ["img_06.txt"] and "--trigger mychar" in f.fix
    (f,) = by[("small_image", "warning")]
    assert names(f) == ["small.png"] and f.details["sizes"][str(char / "small.png")] == [300, 400]
    (f,) = by[("near_duplicate", "warning")]
    assert names(f) == ["dup.jpg", "img_00.png"]
    (f,) = by[("false_positive_tag", "warning")]
    assert names(f) == ["img_05.txt"] and f.details["tag"] == "brown hair" and f.details["majority_tag"] == "blonde hair"
    (f,) = by[("too_few_images", "warning")]
    assert f.files == [str(train / "2_few")]
    (f,) = by[("steps_low", "warning")]  # 3 images x 2 repeats x 10 epochs / 2
    assert f.files == [str(train / "2_few")] and f.details["total_steps"] == 30
    (f,) = by[("bucket_imbalance", "warning")]  # batch 2: the tall and the 3:4 image are alone in their buckets
    assert names(f) == ["small.png", "tall.png"]
    (f,) = by[("buckets", "info")]
    assert f.details["buckets"][0]["resolution"] == [512, 512]
    (f,) = by[("reg_balance", "warning")]  # 5 reg images for 10 x 20 + 2 x 3 train images
    assert f.details == {"train_images_x_repeats": report.totals["train_images_x_repeats"], "reg_images_x_repeats": 5}
    scan = [f for f in report.findings if f.code == "scan"]
    assert any(f.files == [str(train / "notes")] for f in scan)
    # what the codes above cover is not repeated from the scan
    assert not any(p.endswith(("anim.gif", "empty.txt")) for f in scan for p in f.files)

    assert not report.ok and [f.code for f in report.errors] == ["empty_caption"]
    folders = {f.name: f for f in report.folders}
    assert folders["10_mychar"].repeats == 10 and folders["2_few"].total_steps == 30 and folders["1_person"].is_reg
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["counts"]["error"] == 1
    text = report.format_text()
    assert "[false_positive_tag]" in text and "fix:" in text and "1 error(s)" in text


def test_a_clean_dataset_has_nothing_to_say(tmp_path):
    folder = tmp_path / "train" / "6_mychar"
    folder.mkdir(parents=True)
    for i in range(20):
        pattern(folder / f"{i}.png", seed=i, size=(576, 576))
        write(folder / f"{i}.txt", f"mychar, {'smile' if i % 2 else 'open mouth'}, blonde hair")
    report = check_dataset(str(tmp_path / "train"), trigger_word="mychar")
    assert report.ok
    assert [(f.code, f.level) for f in report.findings] == [("buckets", "info")]  # 20 x 6 x 10 = 1200 steps
    assert report.folders[0].total_steps == 1200 and report.folders[0].captioned == 20
    assert check_main([str(tmp_path / "train"), "--trigger", "mychar"]) == 0


def test_check_cli_exit_codes_and_json(messy, capsys):
    train, reg = messy
    assert check_main([str(train), "--reg", str(reg), "--trigger", "mychar", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert {f["code"] for f in data["findings"]} >= {"empty_caption", "near_duplicate", "reg_balance"}
    os.remove(train / "10_mychar" / "empty.txt")
    assert check_main([str(train)]) == 0
    out = capsys.readouterr().out
    assert "Dataset check:" in out and "OK: no errors" in out
    assert check_main([str(train / "missing")]) == 1


def test_near_duplicates_keep_flat_images_of_different_colours_apart(tmp_path):
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200), (200, 30, 30)]):
        p = tmp_path / f"flat{i}.png"
        Image.new("RGB", (64, 64), colour).save(p)
        paths.append(str(p))
    assert near_duplicate_groups(paths) == [[paths[0], paths[2]]]


def test_false_positive_needs_enough_images_and_a_majority():
    caps = {f"{i}.png": ["blonde hair", "blue eyes"] for i in range(9)}
    caps["odd.png"] = ["brown hair", "blue eyes"]
    assert [d["file"] for d in false_positive_tags(caps)] == ["odd.png"]
    del caps["0.png"]  # 9 images: too few to tell
    assert false_positive_tags(caps) == []
    caps = {f"{i}.png": ["blonde hair"] if i < 6 else ["red hair"] for i in range(12)}
    caps["odd.png"] = ["brown hair"]
    assert false_positive_tags(caps) == []  # no colour in most of them


def test_reg_balance_more_reg_than_train(tmp_path):
    train = tmp_path / "train" / "1_x"
    train.mkdir(parents=True)
    for i in range(2):
        pattern(train / f"{i}.png", seed=i)
        write(train / f"{i}.txt", "x")
    reg = tmp_path / "reg" / "1_person"
    reg.mkdir(parents=True)
    for i in range(6):
        pattern(reg / f"{i}.png", seed=50 + i)
    report = check_dataset(str(tmp_path / "train"), str(tmp_path / "reg"))
    (f,) = report.find("reg_balance")
    assert f.level == "warning" and "only 2 of them" in f.message
    shutil.rmtree(tmp_path / "reg" / "1_person")
    (tmp_path / "reg" / "1_person").mkdir()
    (f,) = check_dataset(str(tmp_path / "train"), str(tmp_path / "reg")).find("reg_balance")
    assert "no usable images" in f.message
