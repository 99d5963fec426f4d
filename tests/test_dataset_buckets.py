"""Bucketing against hand-worked kohya examples and, where the reference
checkout exists, against kohya's own BucketManager code used as an oracle."""
import ast
import math
import random
import types
from pathlib import Path

import numpy as np
import pytest

from lora_trainer.dataset.buckets import (
    BucketSelector,
    BucketSettings,
    adjust_bucket_settings,
    crop_ltrb,
    fixed_resolution_crop,
    fixed_resolution_problem,
    make_bucket_resolutions,
    trim_and_resize,
)

KOHYA = Path("/work/ref/sd-scripts/library")


def _kohya_defs(file: str, names: set, namespace: dict) -> dict:
    """Execute only the named top-level defs of a kohya file (its module
    imports pull in cv2, accelerate, ... which are not installed here)."""
    source = (KOHYA / file).read_text(encoding="utf-8")
    tree = ast.parse(source)
    module = ast.Module([n for n in tree.body if getattr(n, "name", None) in names], type_ignores=[])
    exec(compile(module, file, "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def kohya():
    if not (KOHYA / "train_util.py").exists():
        pytest.skip("kohya sd-scripts reference checkout not present")
    mu = _kohya_defs("model_util.py", {"make_bucket_resolutions"}, {"math": math})
    ns = _kohya_defs(
        "train_util.py",
        {"BucketManager"},
        {"np": np, "math": math, "random": random, "Tuple": tuple, "model_util": types.SimpleNamespace(**mu)},
    )
    return types.SimpleNamespace(make_bucket_resolutions=mu["make_bucket_resolutions"], BucketManager=ns["BucketManager"])


# -- hand-worked -----------------------------------------------------------

# resolution 512x512 -> max_area 262144, steps 64, sizes 256..1024.
# square: int(sqrt(262144) // 64) * 64 = 512.
# for width w: height = min(1024, (262144 // w) // 64 * 64):
#   256 -> 1024 | 320 -> 819//64=12 -> 768 | 384 -> 682 -> 640 | 448 -> 585 -> 576
#   512 -> 512  | 576 -> 455 -> 448 | 640 -> 409 -> 384 | 704 -> 372 -> 320
#   768 -> 341 -> 320 | 832 -> 315 -> 256 | 896 -> 292 -> 256 | 960 -> 273 -> 256
#   1024 -> 256; every pair is added both ways round.
BUCKETS_512 = [
    (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
    (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256),
]


def test_bucket_list_512_hand_worked():
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == BUCKETS_512


def test_bucket_list_non_square_resolution():
    # (768, 512): area 393216; square int(627.06 // 64) * 64 = 576.
    # w=256 -> min(1024, 1536 // 64 * 64 = 1536) = 1024; w=384 -> 1024;
    # w=448 -> 877 -> 832; w=512 -> 768; w=576 -> 682 -> 640; w=640 -> 614 -> 576;
    # w=704 -> 558 -> 512; w=768 -> 512; w=832 -> 472 -> 448; w=896 -> 438 -> 384;
    # w=960 -> 409 -> 384; w=1024 -> 384.
    resos = make_bucket_resolutions((768, 512), 256, 1024, 64)
    assert (576, 576) in resos
    assert (448, 832) in resos and (832, 448) in resos
    assert (512, 768) in resos and (768, 512) in resos
    assert (1024, 384) in resos and (384, 1024) in resos
    assert all(w * h <= 768 * 512 for w, h in resos)
    assert resos == sorted(resos)


def test_select_non_square_portrait():
    # 1000x1500, aspect 0.6667. Nearest bucket aspects: 384/640=0.6 (err
    # 0.0667) vs 448/576=0.7778 (err 0.111) -> (384, 640).
    # 0.6667 > 0.6 so the height is matched: scale 640/1500 ->
    # resized (int(426.67+0.5), int(640+0.5)) = (427, 640); 43 px are cropped.
    sel = BucketSelector(BucketSettings((512, 512), enable_bucket=True))
    c = sel.select(1000, 1500)
    assert c.reso == (384, 640)
    assert c.resized_size == (427, 640)
    assert c.ar_error == pytest.approx(0.6 - 1000 / 1500)


def test_select_non_square_landscape():
    # 768x512, aspect 1.5: 576/448=1.286 (err .214), 640/384=1.667 (err .167)
    # -> (640, 384). 1.5 < 1.667 so the width is matched: scale 640/768 ->
    # (640, int(426.67 + 0.5)) = (640, 427).
    c = BucketSelector(BucketSettings((512, 512), enable_bucket=True)).select(768, 512)
    assert (c.reso, c.resized_size) == ((640, 384), (640, 427))


def test_select_exact_bucket_and_upscale():
    sel = BucketSelector(BucketSettings((512, 512), enable_bucket=True))
    # an image already bucket-sized stays as it is
    assert sel.select(448, 576).resized_size == (448, 576)
    # small images are enlarged to cover the bucket
    c = sel.select(100, 100)
    assert (c.reso, c.resized_size) == ((512, 512), (512, 512))


def test_select_sdxl_16_9():
    # 1024 base, max_bucket_reso 1024: w=576 -> (1048576 // 576) // 64 * 64 =
    # 1792, capped to 1024 -> (576, 1024) and (1024, 576). 1920x1080 is 16:9
    # exactly like 1024x576 -> scale 1024/1920 -> (1024, 576), no crop.
    c = BucketSelector(BucketSettings((1024, 1024), enable_bucket=True)).select(1920, 1080)
    assert (c.reso, c.resized_size) == ((1024, 576), (1024, 576))
    assert c.ar_error == pytest.approx(0.0)


def test_no_upscale_small_image_floors_to_steps():
    # 300x200 is under max_area (262144): not resized. Bucket = size floored
    # to 64: (300 - 44, 200 - 8) = (256, 192). ar_error = 1.333 - 1.5.
    sel = BucketSelector(BucketSettings((512, 512), enable_bucket=True, bucket_no_upscale=True))
    c = sel.select(300, 200)
    assert (c.reso, c.resized_size) == ((256, 192), (300, 200))
    assert c.ar_error == pytest.approx(256 / 192 - 1.5)


def test_no_upscale_large_image_max_area():
    # 2000x1000 (aspect 2) over max_area 262144:
    #   rw = sqrt(262144*2) = 724.08, rh = 362.04
    #   width-first: bw = round(724.08)=724 -> 704; h = round(704/2=352) -> 320; ar 2.2
    #   height-first: bh = round(362.04)=362 -> 320; w = round(640) -> 640; ar 2.0
    #   |2.2-2| < |2.0-2| is false -> resized (int(320*2+0.5), 320) = (640, 320)
    sel = BucketSelector(BucketSettings((512, 512), enable_bucket=True, bucket_no_upscale=True))
    c = sel.select(2000, 1000)
    assert (c.reso, c.resized_size) == ((640, 320), (640, 320))
    # 1500x1000 (aspect 1.5): rw = 627.06 -> 627 -> 576, 576/1.5 = 384 -> 384: ar 1.5
    # rh = 418.04 -> 418 -> 384, 384*1.5 = 576: ar 1.5; a tie goes to the
    # height branch: (int(576.5), 384) = (576, 384)
    c = sel.select(1500, 1000)
    assert (c.reso, c.resized_size) == ((576, 384), (576, 384))


def test_no_upscale_too_small_for_steps_is_an_error_not_a_zero_bucket():
    sel = BucketSelector(BucketSettings((512, 512), enable_bucket=True, bucket_no_upscale=True))
    with pytest.raises(ValueError, match="0 pixels"):
        sel.select(50, 300)


def test_fixed_resolution_single_bucket():
    sel = BucketSelector(BucketSettings((512, 768), enable_bucket=False))
    assert sel.select(512, 768).reso == (512, 768)
    assert sel.select(1024, 1024).reso == (512, 768)
    assert fixed_resolution_problem((512, 768), (512, 768), False) is None
    assert "smaller" in fixed_resolution_problem((500, 768), (512, 768), True)
    assert "larger" in fixed_resolution_problem((600, 800), (512, 768), False)
    assert fixed_resolution_problem((600, 800), (512, 768), True) is None


def test_fixed_resolution_random_crop():
    img = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    out, original, crop = fixed_resolution_crop(img, (8, 6), True, random.Random(3))
    assert out.shape == (6, 8, 3)
    assert original == (8, 6) and crop == (0, 0, 8, 6)
    # the crop is a contiguous window of the source
    r = random.Random(3)
    top, left = r.randint(0, 4), r.randint(0, 4)
    assert np.array_equal(out, img[top : top + 6, left : left + 8])


def test_adjust_settings_like_kohya():
    s, warnings = adjust_bucket_settings(
        BucketSettings((512, 512), enable_bucket=True, min_bucket_reso=300, max_bucket_reso=1000)
    )
    # min floors to the grid, max ceils to it
    assert (s.min_bucket_reso, s.max_bucket_reso) == (256, 1024)
    assert len(warnings) == 2
    with pytest.raises(ValueError, match="min_bucket_reso"):
        adjust_bucket_settings(BucketSettings((512, 512), enable_bucket=True, min_bucket_reso=640, max_bucket_reso=1024))
    with pytest.raises(ValueError, match="max_bucket_reso"):
        adjust_bucket_settings(BucketSettings((1024, 1024), enable_bucket=True, max_bucket_reso=768))
    with pytest.raises(ValueError, match="divisible by 64"):
        adjust_bucket_settings(BucketSettings((512, 512), enable_bucket=True, bucket_reso_steps=32), required_multiple=64)
    assert adjust_bucket_settings(BucketSettings((1024, 1024), enable_bucket=True, bucket_reso_steps=32), 32)[1] == []


def test_crop_ltrb_hand_worked():
    # bucket (640, 384) aspect 1.667 > image 768x512 aspect 1.5: kohya fits the
    # image inside by height: width 384*1.5 = 576, left margin (640-576)//2 = 32
    assert crop_ltrb((640, 384), (768, 512)) == (32, 0, 608, 384)
    # bucket (384, 640) aspect 0.6 < image 1000x1500 aspect 0.667: fit by
    # width: height 384/0.667 = 576 -> top margin (640-576)//2 = 32
    left, top, right, bottom = crop_ltrb((384, 640), (1000, 1500))
    assert (left, top, right) == (0, 32, 384) and bottom == pytest.approx(608)


def test_trim_and_resize_center_and_random():
    # 768x512 -> resized 640x427 -> center crop of 427-384 = 43 rows: top 21
    img = np.zeros((512, 768, 3), np.uint8)
    img[:, :, 0] = (np.arange(512) // 2).astype(np.uint8)[:, None]  # every row pair differs
    out, original, crop = trim_and_resize(img, (640, 384), (640, 427), False, random.Random(0))
    assert out.shape == (384, 640, 3)
    assert original == (768, 512)
    assert crop == (32, 0, 608, 384)
    rng = random.Random(5)
    expected_top = random.Random(5).randint(0, 43)
    out2, _, crop2 = trim_and_resize(img, (640, 384), (640, 427), True, rng)
    assert out2.shape == (384, 640, 3)
    assert crop2 == crop  # kohya does not report random offsets
    # the random window starts expected_top rows into the resized image
    resized_rows = trim_and_resize(img, (640, 427), (640, 427), False, random.Random(0))[0]
    assert np.array_equal(out2, resized_rows[expected_top : expected_top + 384])


# -- kohya's own code as the oracle ---------------------------------------


@pytest.mark.parametrize("resolution", [(512, 512), (768, 512), (1024, 1024), (640, 896)])
@pytest.mark.parametrize("steps,lo,hi", [(64, 256, 1024), (32, 256, 2048), (64, 320, 1536)])
def test_bucket_list_matches_kohya(kohya, resolution, steps, lo, hi):
    assert make_bucket_resolutions(resolution, lo, hi, steps) == kohya.make_bucket_resolutions(resolution, lo, hi, steps)


@pytest.mark.parametrize("no_upscale", [False, True])
@pytest.mark.parametrize("resolution,steps,hi", [((512, 512), 64, 1024), ((1024, 1024), 32, 2048), ((768, 512), 64, 1024)])
def test_selection_matches_kohya(kohya, no_upscale, resolution, steps, hi):
    ours = BucketSelector(BucketSettings(resolution, True, 256, hi, steps, no_upscale))
    theirs = kohya.BucketManager(no_upscale, resolution, 256, hi, steps)
    if not no_upscale:
        theirs.make_buckets()
    rng = random.Random(1234)
    sizes = [(rng.randint(64, 4000), rng.randint(64, 4000)) for _ in range(400)]
    sizes += [(rng.randint(300, 1200), rng.randint(300, 1200)) for _ in range(200)]
    sizes += [(512, 768), (1920, 1080), (1024, 1024), (3000, 300)]
    for w, h in sizes:
        reso, resized, err = theirs.select_bucket(w, h)
        c = ours.select(w, h)
        assert (c.reso, c.resized_size) == (tuple(reso), tuple(resized)), (w, h)
        assert c.ar_error == pytest.approx(err)
        assert crop_ltrb(c.reso, (w, h)) == theirs.get_crop_ltrb(reso, (w, h))


def test_fixed_resolution_matches_kohya(kohya):
    theirs = kohya.BucketManager(False, (512, 768), None, None, None)
    theirs.set_predefined_resos([(512, 768)])
    ours = BucketSelector(BucketSettings((512, 768)))
    for w, h in [(512, 768), (1000, 1000), (300, 2000), (2000, 300)]:
        reso, resized, _ = theirs.select_bucket(w, h)
        c = ours.select(w, h)
        assert (c.reso, c.resized_size) == (tuple(reso), tuple(resized))
