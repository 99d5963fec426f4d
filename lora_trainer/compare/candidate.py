"""Which epoch to release: where the change between consecutive epochs settles.

Same prompt, same seeds, one image per epoch (and one without the LoRA). Early in a
healthy training each epoch changes the images a lot; later the changes get small.

The rule, on the curve of changes ``[no LoRA -> e1, e1 -> e2, e2 -> e3, ...]``:

* the *effect* is the first entry, no LoRA -> first epoch: what the LoRA does at all.
  It is not a change between epochs and is usually by far the largest entry, so it
  does not set the threshold (measured against it, a healthy run whose epochs still
  change the image would look settled from the start);
* the *threshold* is ``relative`` (0.3) times the largest change between two epochs;
* the change *settles after* the epoch from which every further change stays below
  the threshold; the suggestion is the epoch **one after** it (a margin), the last
  saved one at most;
* *settled at once*: every change between epochs is below ``at_once`` (0.1) times the
  effect: the first epoch already did all but a little of what the later ones do.

The distance between two images is the mean absolute pixel difference of the
images scaled down to ``size`` x ``size`` (RGB, 0..1), averaged over the seeds; a
caller with latents (or any other measure) passes the distances instead
(:func:`suggest_epoch`).

Verdicts, each with its reason in words:

* ``settled``: the suggestion as above;
* ``never_settled``: still changing at the last epoch: under-trained, train more
  epochs (or, when the changes go up and down instead of falling, a learning
  rate too high to settle);
* ``settled_at_once``: the first epoch already changes the image and the later
  ones barely do: probably over-trained, a learning rate too high or too many
  steps per epoch; the first epoch is suggested (needs the no-LoRA image);
* ``no_effect``: the LoRA barely changes the image at all (every change below
  :data:`NO_EFFECT`);
* ``single``: one epoch only, nothing to compare.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

DEFAULT_RELATIVE = 0.3
DEFAULT_AT_ONCE = 0.1
DEFAULT_SIZE = 64
NO_EFFECT = 0.004  # mean |difference| (0..1) below which the LoRA is taken to change nothing


@dataclass
class Suggestion:
    verdict: str  # settled | never_settled | settled_at_once | no_effect | single
    index: int  # into the epochs given
    epoch: object  # the label of that epoch (as given)
    reason: str
    curve: list[float]  # change into each epoch: [no LoRA -> e1, e1 -> e2, ...] (without a baseline: e1 -> e2, ...)
    threshold: float
    labels: list[str] = field(default_factory=list)  # "no LoRA -> 1", "1 -> 2", ...
    oscillating: bool = False

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "index": self.index, "epoch": self.epoch, "reason": self.reason,
                "curve": [round(v, 6) for v in self.curve], "threshold": round(self.threshold, 6),
                "labels": self.labels, "oscillating": self.oscillating}


# ------------------------------------------------------------------------------ distances


def image_distance(a, b, size: int = DEFAULT_SIZE) -> float:
    """Mean absolute difference (0..1) of two PIL images scaled to ``size`` x ``size`` RGB."""
    import numpy as np
    from PIL import Image

    def prep(image):
        image = image.convert("RGB").resize((size, size), Image.BOX)
        return np.asarray(image, dtype=np.float32) / 255.0

    return float(np.abs(prep(a) - prep(b)).mean())


def epoch_curve(images: Sequence[Sequence], baseline: Optional[Sequence] = None, size: int = DEFAULT_SIZE) -> list[float]:
    """``images[e][s]``: epoch ``e``'s image at seed ``s`` (every epoch the same seeds, in the same
    order); ``baseline[s]``: the same seeds without the LoRA. The change into each epoch, averaged
    over the seeds: ``[baseline -> e0, e0 -> e1, ...]`` (no first entry without a baseline)."""
    sequence = ([list(baseline)] if baseline is not None else []) + [list(row) for row in images]
    counts = {len(row) for row in sequence}
    if len(counts) > 1 or 0 in counts:
        raise ValueError(f"every epoch needs an image at each seed (got {sorted(len(r) for r in sequence)})")
    return [sum(image_distance(a, b, size) for a, b in zip(prev, cur)) / len(cur)
            for prev, cur in zip(sequence, sequence[1:])]


# ----------------------------------------------------------------------------- suggestion


def _oscillates(values: Sequence[float]) -> bool:
    """Changes that go up and down (at least two rises of a quarter or more) rather than falling."""
    rises = sum(1 for a, b in zip(values, values[1:]) if b > a * 1.25 and b - a > 1e-9)
    falls = sum(1 for a, b in zip(values, values[1:]) if b < a / 1.25)
    return rises >= 2 and falls >= 2


def suggest_epoch(curve: Sequence[float], epochs: Optional[Sequence] = None, *, has_baseline: bool = True,
                  relative: float = DEFAULT_RELATIVE, at_once: float = DEFAULT_AT_ONCE) -> Suggestion:
    """Suggest an epoch from the change curve (the rule is in the module's text).

    ``curve``: with ``has_baseline`` ``[no LoRA -> e1, e1 -> e2, ...]`` (one entry per epoch),
    else ``[e1 -> e2, ...]`` (one fewer). ``epochs``: the epochs' labels (default 1, 2, ...).
    """
    curve = [float(v) for v in curve]
    n = len(curve) + (0 if has_baseline else 1)
    epochs = list(epochs) if epochs is not None else list(range(1, n + 1))
    if len(epochs) != n:
        raise ValueError(f"{len(epochs)} epoch labels for a curve of {len(curve)} changes")
    names = ["no LoRA"] if has_baseline else []
    names += [str(e) for e in epochs]
    labels = [f"{a} -> {b}" for a, b in zip(names, names[1:])]
    steps = curve[1:] if has_baseline else curve  # epoch-to-epoch changes: steps[i] is epochs[i] -> epochs[i+1]

    def result(verdict, index, reason, threshold=0.0, oscillating=False):
        return Suggestion(verdict, index, epochs[index] if epochs else None, reason, curve, threshold, labels,
                          oscillating)

    if n == 0:
        raise ValueError("no epochs to choose from")
    if n == 1:
        return result("single", 0, f"only one epoch ({epochs[0]}) was saved: nothing to compare it with")
    largest = max(curve)
    if largest < NO_EFFECT:
        return result("no_effect", n - 1,
                      f"the LoRA barely changes the image (largest change {largest:.4f}): check that it "
                      "was trained on this model and that the prompt uses its trigger word; the last epoch is "
                      "suggested only for lack of a better one")
    reference = max(steps)
    threshold = relative * reference
    oscillating = _oscillates(steps)
    if has_baseline and reference < at_once * curve[0]:
        return result(
            "settled_at_once", 0,
            f"settles at once: the first epoch changes the image ({labels[0]}: {curve[0]:.4f}) and later epochs "
            f"barely do (at most {reference:.4f}, under {at_once:g} x that): probably over-trained already, a "
            "learning rate too high or too many steps per epoch; epoch " + f"{epochs[0]} is suggested, and a run "
            "with a lower learning rate or fewer repeats would show where it really settles", threshold, oscillating)
    # the first epoch-to-epoch step from which every later step stays below the threshold
    settle = len(steps)
    for i in range(len(steps) - 1, -1, -1):
        if steps[i] >= threshold:
            break
        settle = i
    if settle == len(steps):
        last = steps[-1]
        if oscillating:
            why = (f"the change between epochs goes up and down instead of falling (last {last:.4f}, threshold "
                   f"{threshold:.4f}): a learning rate too high to settle; lower it, or pick by eye")
        else:
            why = (f"the images still change at the last epoch ({labels[-1]}: {last:.4f}, threshold "
                   f"{threshold:.4f}): under-trained; train more epochs, or raise the learning rate")
        return result("never_settled", n - 1, f"never settles: {why}. The last epoch is suggested for now",
                      threshold, oscillating)
    index = min(settle + 1, n - 1)
    after = epochs[settle]
    osc = " (after going up and down)" if oscillating else ""
    return result(
        "settled", index,
        f"the change settles{osc} after epoch {after}: from there every change stays below {threshold:.4f} "
        f"({relative:g} x the largest change between epochs, {reference:.4f}); epoch {epochs[index]} is suggested, "
        "one after it" + (" (the last saved: train a little longer to have a margin)" if index == n - 1 else ""),
        threshold, oscillating)


def suggest_from_images(images: Sequence[Sequence], epochs: Optional[Sequence] = None,
                        baseline: Optional[Sequence] = None, *, size: int = DEFAULT_SIZE,
                        relative: float = DEFAULT_RELATIVE, at_once: float = DEFAULT_AT_ONCE) -> Suggestion:
    """:func:`suggest_epoch` on :func:`epoch_curve` of the images."""
    curve = epoch_curve(images, baseline, size)
    return suggest_epoch(curve, epochs, has_baseline=baseline is not None, relative=relative, at_once=at_once)
