"""Per-step caption processing, with kohya sd-scripts' semantics.

Every random decision draws from the ``random.Random`` passed in, in the same
order kohya draws from the global ``random`` module, so a seeded run is
reproducible and, for equal seeds, yields kohya's own captions.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class CaptionOptions:
    """kohya's per-subset caption options, with kohya's defaults."""

    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: Optional[str] = None
    enable_wildcard: bool = False
    caption_prefix: Optional[str] = None
    caption_suffix: Optional[str] = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    token_warmup_min: int = 1
    # < 1 means a fraction of max_train_steps, as in kohya
    token_warmup_step: float = 0

    @property
    def splits_tokens(self) -> bool:
        # kohya only tokenises (and so re-joins with ", ") when one of these is on;
        # otherwise the caption text passes through untouched
        return self.shuffle_caption or self.token_warmup_step > 0 or self.caption_tag_dropout_rate > 0


def _expand_wildcards(caption: str, rng: random.Random) -> str:
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))

    # "{{" / "}}" are literal braces; park them on characters that cannot
    # appear in the caption so the wildcard pattern does not see them
    open_mark, close_mark = "⦅", "⦆"
    while open_mark in caption or close_mark in caption:
        open_mark += "⦅"
        close_mark += "⦆"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)
    caption = re.sub(r"\{([^}]+)\}", lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def _split_tokens(caption: str, opts: CaptionOptions) -> tuple[list[str], list[str], list[str]]:
    """(fixed head, shufflable middle, fixed tail)."""
    sep = opts.caption_separator
    kts = opts.keep_tokens_separator
    if kts and kts in caption:
        # the separator variant drops empty tokens; the keep_tokens variant
        # below keeps them -- kohya differs here and so do we
        fixed_part, flex_part = caption.split(kts, 1)
        tail: list[str] = []
        if kts in flex_part:
            flex_part, tail_part = flex_part.split(kts, 1)
            tail = [t.strip() for t in tail_part.split(sep) if t.strip()]
        fixed = [t.strip() for t in fixed_part.split(sep) if t.strip()]
        flex = [t.strip() for t in flex_part.split(sep) if t.strip()]
        return fixed, flex, tail

    tokens = [t.strip() for t in caption.strip().split(sep)]
    if opts.keep_tokens > 0:
        return tokens[: opts.keep_tokens], tokens[opts.keep_tokens :], []
    return [], tokens, []


def warmup_steps(opts: CaptionOptions, max_train_steps: int) -> int:
    if opts.token_warmup_step < 1:
        return math.floor(opts.token_warmup_step * max_train_steps)
    return int(opts.token_warmup_step)


def process_caption(
    caption: str,
    opts: CaptionOptions,
    rng: random.Random,
    epoch: int = 0,
    step: int = 0,
    max_train_steps: int = 0,
) -> str:
    """The caption the text encoder sees for one sample.

    ``epoch`` is kohya's ``current_epoch``: 1 for the first training epoch,
    so ``caption_dropout_every_n_epochs=n`` drops captions in epochs n, 2n, ...
    """
    if opts.caption_prefix:
        caption = opts.caption_prefix + " " + caption
    if opts.caption_suffix:
        caption = caption + " " + opts.caption_suffix

    # the rng is only consulted when the rate is positive, exactly like kohya,
    # so that enabling nothing leaves the random stream untouched
    dropped = opts.caption_dropout_rate > 0 and rng.random() < opts.caption_dropout_rate
    if not dropped and opts.caption_dropout_every_n_epochs > 0:
        dropped = epoch % opts.caption_dropout_every_n_epochs == 0
    if dropped:
        return ""

    if opts.enable_wildcard:
        caption = _expand_wildcards(caption, rng)
    else:
        caption = caption.split("\n")[0]

    if opts.splits_tokens:
        fixed, flex, tail = _split_tokens(caption, opts)

        n_warmup = warmup_steps(opts, max_train_steps)
        if n_warmup and step < n_warmup:
            n_keep = math.floor(step * ((len(flex) - opts.token_warmup_min) / n_warmup)) + opts.token_warmup_min
            flex = flex[:n_keep]

        if opts.shuffle_caption:
            rng.shuffle(flex)
        if opts.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= opts.caption_tag_dropout_rate]

        # kohya always re-joins with ", " whatever caption_separator is
        caption = ", ".join(fixed + flex + tail)

    if opts.secondary_separator:
        caption = caption.replace(opts.secondary_separator, opts.caption_separator)
    return caption


def count_tags(captions: Iterable[str], into: Optional[dict[str, int]] = None) -> dict[str, int]:
    """kohya's tag counting for ``ss_tag_frequency``.

    It always splits on "," (not on caption_separator), strips and lower-cases
    every tag, and counts raw captions -- before prefix/suffix or wildcards.
    """
    counts = {} if into is None else into
    for caption in captions:
        for tag in caption.split(","):
            tag = tag.strip()
            if tag:
                tag = tag.lower()
                counts[tag] = counts.get(tag, 0) + 1
    return counts
