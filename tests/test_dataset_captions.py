"""Caption processing: hand cases, and kohya's own process_caption as the
oracle (same seed -> same caption, since both draw in the same order)."""
import ast
import math
import random
import re
import types
from pathlib import Path

import pytest

from lora_trainer.dataset.captions import CaptionOptions, count_tags, process_caption

KOHYA = Path("/work/ref/sd-scripts/library/train_util.py")


def test_no_processing_leaves_text_untouched():
    # without shuffle / tag dropout kohya does not re-join tokens
    assert process_caption("a,b ,  c", CaptionOptions(), random.Random(0)) == "a,b ,  c"
    # only the first line is used without wildcards
    assert process_caption("first\nsecond", CaptionOptions(), random.Random(0)) == "first"


def test_shuffle_keeps_keep_tokens_in_place():
    opts = CaptionOptions(shuffle_caption=True, keep_tokens=2)
    caption = "sks, dog, red, blue, green, yellow, grass"
    seen = set()
    for seed in range(50):
        out = process_caption(caption, opts, random.Random(seed)).split(", ")
        assert out[:2] == ["sks", "dog"]
        assert sorted(out[2:]) == sorted(["red", "blue", "green", "yellow", "grass"])
        seen.add(tuple(out[2:]))
    assert len(seen) > 10  # it really shuffles


def test_shuffle_is_reproducible_with_seed():
    opts = CaptionOptions(shuffle_caption=True)
    caption = "a, b, c, d, e, f, g"
    assert process_caption(caption, opts, random.Random(7)) == process_caption(caption, opts, random.Random(7))
    expected = ["a", "b", "c", "d", "e", "f", "g"]
    random.Random(7).shuffle(expected)
    assert process_caption(caption, opts, random.Random(7)) == ", ".join(expected)


def test_caption_dropout_edges():
    rng = random.Random(0)
    assert all(process_caption("a, b", CaptionOptions(caption_dropout_rate=1.0), rng) == "" for _ in range(20))
    rng = random.Random(0)
    state = rng.getstate()
    assert process_caption("a, b", CaptionOptions(caption_dropout_rate=0.0), rng) == "a, b"
    assert rng.getstate() == state  # a zero rate draws nothing, as in kohya


def test_caption_dropout_every_n_epochs():
    opts = CaptionOptions(caption_dropout_every_n_epochs=2)
    dropped = [process_caption("a", opts, random.Random(0), epoch=e) == "" for e in range(1, 7)]
    assert dropped == [False, True, False, True, False, True]


def test_tag_dropout_edges():
    caption = "keep, x, y, z"
    assert process_caption(caption, CaptionOptions(caption_tag_dropout_rate=1.0, keep_tokens=1), random.Random(0)) == "keep"
    assert process_caption(caption, CaptionOptions(caption_tag_dropout_rate=0.0), random.Random(0)) == caption


def test_keep_tokens_separator_head_and_tail():
    opts = CaptionOptions(shuffle_caption=True, keep_tokens_separator="|||", keep_tokens=5)
    for seed in range(20):
        out = process_caption("sks, dog ||| a, b, c, d ||| masterpiece", opts, random.Random(seed)).split(", ")
        # the separator wins over keep_tokens
        assert out[:2] == ["sks", "dog"] and out[-1] == "masterpiece"
        assert sorted(out[2:-1]) == ["a", "b", "c", "d"]


def test_secondary_separator_keeps_groups_together():
    opts = CaptionOptions(shuffle_caption=True, secondary_separator=";;;")
    for seed in range(20):
        out = process_caption("red;;;hair, blue;;;eyes, smile", opts, random.Random(seed))
        assert sorted(out.split(", ")) == ["blue,eyes", "red,hair", "smile"]


def test_prefix_suffix():
    opts = CaptionOptions(caption_prefix="photo of", caption_suffix="4k")
    assert process_caption("sks dog", opts, random.Random(0)) == "photo of sks dog 4k"


def test_wildcards_and_escaped_braces():
    opts = CaptionOptions(enable_wildcard=True)
    outs = {process_caption("a {red|blue} {{x}} dog", opts, random.Random(s)) for s in range(30)}
    assert outs == {"a red {x} dog", "a blue {x} dog"}
    lines = {process_caption("one\ntwo", opts, random.Random(s)) for s in range(30)}
    assert lines == {"one", "two"}


def test_token_warmup():
    opts = CaptionOptions(token_warmup_min=1, token_warmup_step=10)
    caption = "a, b, c, d, e"
    # floor(step * (5 - 1) / 10) + 1 tokens until step 10
    assert process_caption(caption, opts, random.Random(0), step=0) == "a"
    assert process_caption(caption, opts, random.Random(0), step=5) == "a, b, c"
    assert process_caption(caption, opts, random.Random(0), step=10) == caption


def test_count_tags_like_kohya():
    counts = count_tags(["Dog, red ,dog", "cat;;;x, , RED"])
    assert counts == {"dog": 2, "red": 2, "cat;;;x": 1}


# -- kohya's own process_caption as the oracle ------------------------------


@pytest.fixture(scope="module")
def kohya_process_caption():
    if not KOHYA.exists():
        pytest.skip("kohya sd-scripts reference checkout not present")
    tree = ast.parse(KOHYA.read_text(encoding="utf-8"))
    base = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BaseDataset")
    fn = next(n for n in base.body if isinstance(n, ast.FunctionDef) and n.name == "process_caption")
    ns = {"random": random, "math": math, "re": re, "BaseSubset": object}
    exec(compile(ast.Module([fn], type_ignores=[]), "train_util.py", "exec"), ns)
    return ns["process_caption"]


OPTION_SETS = [
    CaptionOptions(shuffle_caption=True),
    CaptionOptions(shuffle_caption=True, keep_tokens=2, caption_tag_dropout_rate=0.3),
    CaptionOptions(caption_dropout_rate=0.3, shuffle_caption=True, keep_tokens=1),
    CaptionOptions(shuffle_caption=True, keep_tokens_separator="|||", secondary_separator=";;;"),
    CaptionOptions(enable_wildcard=True, shuffle_caption=True, caption_prefix="pre", caption_suffix="post"),
    CaptionOptions(caption_dropout_every_n_epochs=3, caption_tag_dropout_rate=0.5),
    CaptionOptions(caption_separator=";", shuffle_caption=True, keep_tokens=1),
    CaptionOptions(token_warmup_step=0.5, token_warmup_min=2, shuffle_caption=True),
]
CAPTIONS = [
    "sks, dog, red collar, sitting, grass, outdoors",
    "1girl, ||| long;;;hair, smile, {red|blue} eyes ||| masterpiece",
    "a {cat|dog|bird} on a {{mat}}, sunny\nsecond line, x",
    "single",
    "a; b; c; d",
    "",
]


@pytest.mark.parametrize("opts", OPTION_SETS)
def test_matches_kohya_process_caption(kohya_process_caption, opts):
    for caption in CAPTIONS:
        for seed in range(15):
            for epoch, step in [(1, 0), (3, 40), (6, 100)]:
                subset = types.SimpleNamespace(**opts.__dict__)
                fake_self = types.SimpleNamespace(current_epoch=epoch, current_step=step, max_train_steps=200, replacements={})
                random.seed(seed)
                expected = kohya_process_caption(fake_self, subset, caption)
                got = process_caption(caption, opts, random.Random(seed), epoch=epoch, step=step, max_train_steps=200)
                assert got == expected, (caption, seed, epoch)
