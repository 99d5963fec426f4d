"""The built-in demo: a tiny SD1 checkpoint, a generated dataset, a short run.

Everything is made here from a seed, so the demo works offline and on a CPU in
a couple of minutes. The dataset mimics what users train on: two concepts in
kohya ``N_name`` folders, booru-style captions, a few non-square images.
"""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "blue": (40, 70, 220),
    "green": (40, 170, 60),
    "yellow": (230, 210, 40),
    "white": (245, 245, 245),
}
BACKGROUNDS = {"simple background": (200, 200, 200), "dark background": (30, 30, 40), "sky": (130, 180, 240)}


def _draw(rng: random.Random, shape: str, size: tuple[int, int]) -> tuple[Image.Image, list[str]]:
    colour_name = rng.choice(list(COLOURS))
    bg_name = rng.choice(list(BACKGROUNDS))
    image = Image.new("RGB", size, BACKGROUNDS[bg_name])
    draw = ImageDraw.Draw(image)
    w, h = size
    r = rng.randint(min(w, h) // 5, min(w, h) // 3)
    cx, cy = rng.randint(r, w - r), rng.randint(r, h - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour_name])
    else:
        draw.rectangle(box, fill=COLOURS[colour_name])
    tags = [f"{colour_name} {shape}", bg_name]
    if rng.random() < 0.4:
        tags.append("solo")
    return image, tags


def make_demo_dataset(root: Path, per_folder: int = 16, seed: int = 0) -> Path:
    """Write ``root/train/{4_circle,2_square}`` with images and .txt captions."""
    rng = random.Random(seed)
    train = Path(root) / "train"
    for folder, shape, trigger in (("2_circle", "circle", "demo_circle"), ("1_square", "square", "demo_square")):
        directory = train / folder
        directory.mkdir(parents=True, exist_ok=True)
        for index in range(per_folder):
            # a third of the images are non-square so bucketing has work to do
            size = rng.choice([(96, 96), (96, 96), (128, 64), (64, 128)])
            image, tags = _draw(rng, shape, size)
            stem = directory / f"{shape}_{index:03d}"
            image.save(stem.with_suffix(".png"))
            stem.with_suffix(".txt").write_text(", ".join([trigger] + tags), encoding="utf-8")
    return train
