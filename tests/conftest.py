"""Shared fixtures: tiny checkpoints written once per session, small generated datasets."""
import random

import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    from lora_trainer.models.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    cache = {}

    def get(arch: str) -> str:
        if arch not in cache:
            cache[arch] = write_tiny_checkpoint(arch, root / f"tiny-{arch}.safetensors")["checkpoint"]
        return str(cache[arch])

    return get


def make_images(folder, count, size=(64, 64), seed=0, caption=True, prefix="img"):
    """Coloured shapes with booru-style captions; deterministic from the seed."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        colour = rng.choice([(220, 40, 40), (40, 70, 220), (40, 170, 60)])
        image = Image.new("RGB", size, (200, 200, 200))
        w, h = size
        r = min(w, h) // 4
        cx, cy = rng.randint(r, w - r), rng.randint(r, h - r)
        ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        image.save(folder / f"{prefix}_{index:03d}.png")
        if caption:
            (folder / f"{prefix}_{index:03d}.txt").write_text(f"sks, circle, {colour}", encoding="utf-8")
    return folder


@pytest.fixture
def small_dataset(tmp_path):
    train = tmp_path / "train"
    make_images(train / "2_sks", 4)
    return train
