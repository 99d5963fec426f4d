"""Epoch composition, step counts, items and the latent cache."""
import math
import os
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from lora_trainer.dataset import (
    AugmentOptions,
    BucketSettings,
    CaptionOptions,
    LoraDataset,
    cache_latents,
    count_steps,
    latents_npz_path,
    scan_dataset,
)


def _make(root, folder, n, size=(512, 512), start=0):
    os.makedirs(root / folder, exist_ok=True)
    yy, xx = np.indices((size[1], size[0]))
    for i in range(start, start + n):
        # a gradient: every row and column differs, and PNG writes it fast
        px = np.stack([xx % 256, yy % 256, (xx + yy + 40 * i) % 256], -1).astype(np.uint8)
        Image.fromarray(px).save(root / folder / f"img{i:03d}.png")


def _dataset(tmp_path, layout, reg_layout=(), resolution=(512, 512), enable_bucket=True, **kw):
    for folder, n, size in layout:
        _make(tmp_path / "train", folder, n, size)
    for folder, n, size in reg_layout:
        _make(tmp_path / "reg", folder, n, size)
    scan = scan_dataset(str(tmp_path / "train"), str(tmp_path / "reg") if reg_layout else None, check_pixels=False)
    assert scan.ok, scan.findings
    return LoraDataset(scan, BucketSettings(resolution, enable_bucket=enable_bucket), **kw)


# -- step counts (hand-worked kohya numbers) ---------------------------------


def test_steps_single_bucket(tmp_path):
    # 5 images x 10 repeats = 50 in one bucket.
    ds = _dataset(tmp_path, [("10_x", 5, (64, 64))], resolution=(64, 64), enable_bucket=False, batch_size=1)
    c = count_steps(ds, 1, max_train_epochs=10)
    # batch 1: 50 batches; 10 epochs -> 500 steps
    assert (c.num_train_images, c.num_reg_images, c.num_batches_per_epoch, c.num_epochs, c.max_train_steps) == (50, 0, 50, 10, 500)

    ds4 = LoraDataset(ds_scan(tmp_path), BucketSettings((64, 64)), batch_size=4)
    # batch 4: ceil(50/4) = 13 batches; grad accum 2: ceil(13/2) = 7 updates/epoch
    c = count_steps(ds4, 2, max_train_epochs=10)
    assert (c.num_batches_per_epoch, c.num_update_steps_per_epoch, c.max_train_steps, c.num_epochs) == (13, 7, 70, 10)
    # no max_train_epochs: kohya's default 1600 steps -> ceil(1600/7) = 229 epochs
    c = count_steps(ds4, 2)
    assert (c.max_train_steps, c.num_epochs) == (1600, 229)


def ds_scan(tmp_path):
    return scan_dataset(str(tmp_path / "train"), check_pixels=False)


def test_steps_are_per_bucket(tmp_path):
    # 3_a: 3 portrait images (512x768 -> bucket 384x640) = 9 entries
    # 2_b: 5 square images (bucket 512x512) = 10 entries
    # batch 4: ceil(9/4) + ceil(10/4) = 3 + 3 = 6 batches, not ceil(19/4) = 5
    ds = _dataset(tmp_path, [("3_a", 3, (512, 768)), ("2_b", 5, (512, 512))], batch_size=4)
    assert ds.bucket_resos == [(384, 640), (512, 512)]
    c = count_steps(ds, gradient_accumulation_steps=4, max_train_steps=5)
    # ceil(6/4) = 2 updates per epoch; 5 steps -> ceil(5/2) = 3 epochs
    assert (c.num_train_images, c.num_batches_per_epoch, c.num_update_steps_per_epoch, c.num_epochs, c.max_train_steps) == (
        19, 6, 2, 3, 5,
    )
    assert ds.bucket_info["buckets"] == {0: {"resolution": (384, 640), "count": 9}, 1: {"resolution": (512, 512), "count": 10}}


def test_reg_balancing(tmp_path):
    # train 2_a x 3 images = 6; reg 1_r x 4 images = 4 (kohya prints 4).
    # kohya walks the reg images: r0 r1 r2 r3 (n=4), then +1 each: r0 (5), r1 (6) stop
    ds = _dataset(tmp_path, [("2_a", 3, (64, 64))], [("1_r", 4, (64, 64))], resolution=(64, 64), enable_bucket=False, batch_size=2, prior_loss_weight=0.5)
    reg = [img for img in ds.images if img.is_reg]
    assert [img.repeats for img in reg] == [2, 2, 1, 1]
    c = count_steps(ds)
    # 6 train + 6 reg entries, one bucket, batch 2 -> 6 batches
    assert (c.num_train_images, c.num_reg_images, c.num_batches_per_epoch) == (6, 4, 6)
    weights = torch.cat([ds[i]["loss_weights"] for i in range(len(ds))])
    regs = sum(sum(ds[i]["is_reg"]) for i in range(len(ds)))
    assert regs == 6 and sorted(weights.tolist()) == [0.5] * 6 + [1.0] * 6


def test_reg_more_than_train_uses_only_some(tmp_path):
    # train 1_a x 2 = 2; reg 1_r x 5: r0 (1), r1 (2) stop -- r2..r4 unused
    ds = _dataset(tmp_path, [("1_a", 2, (64, 64))], [("1_r", 5, (64, 64))], resolution=(64, 64), enable_bucket=False)
    assert len([i for i in ds.images if i.is_reg]) == 2
    assert len(ds) == 4
    assert any("not used" in f.message for f in ds.findings)


def test_reg_repeats_folder(tmp_path):
    # train 5_a x 2 = 10; reg 3_r x 2: 3+3 = 6, then +1 per image per pass -> 5, 5
    ds = _dataset(tmp_path, [("5_a", 2, (64, 64))], [("3_r", 2, (64, 64))], resolution=(64, 64), enable_bucket=False)
    assert [i.repeats for i in ds.images if i.is_reg] == [5, 5]
    assert count_steps(ds).num_reg_images == 6


# -- composition --------------------------------------------------------------


def test_every_image_repeats_times_and_batches_within_a_bucket(tmp_path):
    ds = _dataset(tmp_path, [("3_a", 3, (512, 768)), ("2_b", 5, (512, 512)), ("1_c", 2, (768, 512))], batch_size=3, seed=9)
    seen = Counter()
    for i in range(len(ds)):
        imgs = ds.batch_images(i)
        assert len({img.bucket_reso for img in imgs}) == 1
        seen.update(img.path for img in imgs)
    assert all(seen[img.path] == img.repeats for img in ds.images)
    assert sum(seen.values()) == 3 * 3 + 2 * 5 + 2


def test_shuffle_is_kohyas_cumulative_seeded_shuffle(tmp_path):
    ds = _dataset(tmp_path, [("3_a", 3, (512, 768)), ("2_b", 4, (512, 512))], batch_size=2, seed=123)

    # kohya: make_buckets shuffles with random.seed(seed + 0); every epoch
    # increment reseeds with seed + epoch and shuffles the batch list, then
    # each bucket, in place
    # images in folder order: 2_b (0..3, square) then 3_a (4..6, portrait);
    # buckets sorted by resolution, each image listed `repeats` times
    buckets = [[4] * 3 + [5] * 3 + [6] * 3, [0] * 2 + [1] * 2 + [2] * 2 + [3] * 2]
    index = [(b, k) for b, bucket in enumerate(buckets) for k in range(math.ceil(len(bucket) / 2))]
    for epoch in range(0, 4):
        random.seed(123 + epoch)
        random.shuffle(index)
        for bucket in buckets:
            random.shuffle(bucket)
        if epoch:
            ds.set_epoch(epoch)
        assert ds.batch_index == index
        assert ds.buckets == buckets

    again = _dataset(tmp_path / "again", [("3_a", 3, (512, 768)), ("2_b", 4, (512, 512))], batch_size=2, seed=123)
    again.set_epoch(3)
    assert again.batch_index == ds.batch_index and again.buckets == ds.buckets


# -- items --------------------------------------------------------------------


def test_items_tensor_range_and_sdxl_conditioning(tmp_path):
    ds = _dataset(tmp_path, [("1_a", 1, (768, 512))], batch_size=1)
    b = ds[0]
    # 768x512 -> bucket (640, 384), resized (640, 427), center-cropped
    assert b["images"].shape == (1, 3, 384, 640)
    assert b["images"].min() >= -1 and b["images"].max() <= 1 and b["images"].min() < -0.9
    assert b["original_sizes_hw"].tolist() == [[512, 768]]
    assert b["target_sizes_hw"].tolist() == [[384, 640]]
    # kohya's crop_ltrb for this case is (32, 0, 608, 384): top 0, left 32
    assert b["crop_top_lefts"].tolist() == [[0, 32]]
    assert b["latents"] is None and b["captions"] == ["a"] and b["loss_weights"].tolist() == [1.0]


def test_flip_aug_mirrors_pixels_and_crop(tmp_path):
    # 575x384 -> bucket (640, 384); kohya's crop: the image fitted inside is
    # 575 wide, left (640-575)//2 = 32, right 607. Flipped, the left margin is
    # the old right one: 640 - 607 = 33.
    ds = _dataset(tmp_path, [("1_a", 1, (575, 384))], augment=AugmentOptions(flip_aug=True), seed=0)
    plain = _dataset(tmp_path / "p", [("1_a", 1, (575, 384))])[0]
    assert plain["crop_top_lefts"].tolist() == [[0, 32]]
    flips = []
    for epoch in range(1, 12):
        ds.set_epoch(epoch)
        b = ds[0]
        if b["flipped"][0]:
            assert torch.equal(b["images"][0], torch.flip(plain["images"][0], [2]))
            assert b["crop_top_lefts"].tolist() == [[0, 33]]
        else:
            assert torch.equal(b["images"][0], plain["images"][0])
            assert b["crop_top_lefts"].tolist() == [[0, 32]]
        flips.append(b["flipped"][0])
    assert any(flips) and not all(flips)


def test_alpha_mask_items(tmp_path):
    path = tmp_path / "train" / "1_a" / "t.png"
    os.makedirs(path.parent)
    img = Image.new("RGBA", (512, 512), (255, 0, 0, 255))
    img.paste(Image.new("RGBA", (256, 512), (0, 0, 255, 0)), (0, 0))
    img.save(path)
    scan = scan_dataset(str(tmp_path / "train"))
    b = LoraDataset(scan, BucketSettings((512, 512), enable_bucket=True), augment=AugmentOptions(alpha_mask=True))[0]
    mask = b["alpha_masks"]
    assert mask.shape == (1, 512, 512)
    assert mask[0, :, :256].max() == 0 and mask[0, :, 256:].min() == 1
    # the RGB keeps the transparent pixels' stored colour (blue), as kohya
    assert b["images"][0, 2, 0, 0] == 1 and b["images"][0, 0, 0, 0] == -1
    plain = LoraDataset(scan, BucketSettings((512, 512), enable_bucket=True))[0]
    assert plain["alpha_masks"] is None and torch.equal(plain["images"], b["images"])


def test_no_bucket_flip_keeps_crop_left_zero(tmp_path):
    ds = _dataset(tmp_path, [("1_a", 1, (64, 64))], resolution=(64, 64), enable_bucket=False, augment=AugmentOptions(flip_aug=True))
    for epoch in range(1, 8):
        ds.set_epoch(epoch)
        assert ds[0]["crop_top_lefts"].tolist() == [[0, 0]]


def test_item_is_reproducible(tmp_path):
    kw = dict(augment=AugmentOptions(flip_aug=True, random_crop=True, color_aug=True), captions=CaptionOptions(shuffle_caption=True), seed=5)
    a = _dataset(tmp_path, [("2_a, b, c, d", 2, (700, 500))], **kw)
    b = LoraDataset(scan_dataset(str(tmp_path / "train")), BucketSettings((512, 512), enable_bucket=True), **kw)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["images"], y["images"]) and x["captions"] == y["captions"]


def test_no_bucket_mode_rules(tmp_path):
    _make(tmp_path / "train", "1_a", 1, (64, 64))
    _make(tmp_path / "train", "1_a", 1, (80, 70), start=1)
    _make(tmp_path / "train", "1_a", 1, (32, 64), start=2)
    scan = scan_dataset(str(tmp_path / "train"))
    ds = LoraDataset(scan, BucketSettings((64, 64)))
    errors = {os.path.basename(f.path): f.message for f in ds.findings if f.level == "error"}
    assert set(errors) == {"img001.png", "img002.png"}
    assert "larger" in errors["img001.png"] and "smaller" in errors["img002.png"]
    # random_crop makes the larger one usable, as in kohya
    ds = LoraDataset(scan, BucketSettings((64, 64)), augment=AugmentOptions(random_crop=True))
    assert [os.path.basename(f.path) for f in ds.findings if f.level == "error"] == ["img002.png"]
    assert all(ds[i]["images"].shape == (1, 3, 64, 64) for i in range(len(ds)))
    # kohya's latent-cache path resizes instead
    ds = LoraDataset(scan, BucketSettings((64, 64)), will_cache_latents=True)
    assert not [f for f in ds.findings if f.level == "error"]
    assert all(ds[i]["images"].shape == (1, 3, 64, 64) for i in range(len(ds)))


# -- latent cache ---------------------------------------------------------------


def _fake_vae(x):
    # a stand-in encoder with the VAE's shape contract: /8 spatially, 4 channels
    pooled = torch.nn.functional.avg_pool2d(x, 8)
    return torch.cat([pooled, pooled.mean(1, keepdim=True)], 1)


def test_cache_latents_in_memory(tmp_path):
    ds = _dataset(tmp_path, [("2_a", 2, (768, 512))], batch_size=2, augment=AugmentOptions(flip_aug=True))
    pixels = ds[0]["images"]
    assert cache_latents(ds, _fake_vae, batch_size=4) == 2
    b = ds[0]
    assert b["images"] is None and b["latents"].shape == (2, 4, 48, 80)
    assert b["target_sizes_hw"].tolist() == [[384, 640]] * 2
    for img in ds.images:
        assert torch.allclose(img.latents_flipped, torch.flip(img.latents, [2]), atol=1e-6)
    with pytest.raises(ValueError):
        cache_latents(_dataset(tmp_path / "c", [("1_a", 1, (64, 64))], augment=AugmentOptions(color_aug=True)), _fake_vae)


def test_cache_latents_to_disk_kohya_names_and_reuse(tmp_path):
    ds = _dataset(tmp_path, [("1_a", 2, (768, 512))])
    calls = []

    def encode(x):
        calls.append(x.shape[0])
        return _fake_vae(x) * 0.18215  # a scaled encoder, as the model interface gives

    assert cache_latents(ds, encode, to_disk=True, latent_scale=0.18215) == 2
    path = str(tmp_path / "train" / "1_a" / "img000_0768x0512_sd.npz")
    assert ds.images[0].latents_npz == path and os.path.exists(path)
    with np.load(path) as npz:
        # kohya stores the unscaled sample, (C, H/8, W/8), plus size and crop
        assert npz["latents"].shape == (4, 48, 80)
        assert npz["original_size"].tolist() == [768, 512]
        assert npz["crop_ltrb"].tolist() == [32, 0, 608, 384]
        unscaled = npz["latents"]
    b = ds[0]
    assert torch.allclose(b["latents"][0], torch.from_numpy(unscaled) * 0.18215, atol=1e-6)

    fresh = _dataset(tmp_path, [], resolution=(512, 512))
    assert cache_latents(fresh, encode, to_disk=True, latent_scale=0.18215) == 0  # both files reused
    assert latents_npz_path(str(tmp_path / "x.png"), (1024, 768), sdxl=True).endswith("x_1024x0768_sdxl.npz")
