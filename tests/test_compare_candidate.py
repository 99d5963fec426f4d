"""compare/candidate.py: suggesting the epoch where the change between epochs settles."""
import pytest
from PIL import Image, ImageDraw

from lora_trainer.compare.candidate import epoch_curve, image_distance, suggest_epoch, suggest_from_images


def test_converging_suggests_one_after_it_settles():
    # no LoRA -> 1, 1 -> 2, ... 7 -> 8
    curve = [0.20, 0.15, 0.10, 0.05, 0.03, 0.02, 0.02, 0.015]
    s = suggest_epoch(curve)
    assert s.verdict == "settled"
    # threshold 0.3 * 0.20 = 0.06; from 3 -> 4 (0.05) on every change is below: settles after epoch 3, suggest 4
    assert s.threshold == pytest.approx(0.06)
    assert s.epoch == 4 and s.index == 3
    assert "after epoch 3" in s.reason and "epoch 4 is suggested" in s.reason
    assert s.labels[0] == "no LoRA -> 1" and s.labels[-1] == "7 -> 8" and s.curve == curve


def test_labels_are_the_epochs_given():
    s = suggest_epoch([0.2, 0.15, 0.1, 0.08, 0.01], epochs=["e2", "e4", "e6", "e8", "final"])
    assert s.epoch == "final" and s.index == 4 and "e8" in s.reason and "last saved" in s.reason


def test_a_spike_late_moves_the_suggestion_past_it():
    curve = [0.2, 0.1, 0.03, 0.02, 0.12, 0.02, 0.01, 0.01]  # 4 -> 5 jumps again
    s = suggest_epoch(curve)
    assert s.verdict == "settled" and s.epoch == 6


def test_damped_oscillation_settles_and_says_so():
    curve = [0.20, 0.16, 0.04, 0.14, 0.05, 0.10, 0.03, 0.02, 0.02]
    s = suggest_epoch(curve)
    assert s.verdict == "settled" and s.oscillating
    assert s.epoch == 7  # the last big change is 5 -> 6 (0.10): settled after 6
    assert "up and down" in s.reason


def test_undamped_oscillation_never_settles_and_blames_the_learning_rate():
    curve = [0.20, 0.15, 0.04, 0.15, 0.04, 0.15, 0.04, 0.15]
    s = suggest_epoch(curve)
    assert s.verdict == "never_settled" and s.oscillating
    assert "learning rate too high" in s.reason and s.index == len(curve) - 1


def test_never_settling_is_under_trained():
    curve = [0.20, 0.18, 0.17, 0.15, 0.15, 0.14]
    s = suggest_epoch(curve)
    assert s.verdict == "never_settled" and not s.oscillating
    assert "under-trained" in s.reason and "train more epochs" in s.reason and s.epoch == 6


def test_settling_at_once_is_probably_over_trained():
    curve = [0.25, 0.01, 0.008, 0.01, 0.006]
    s = suggest_epoch(curve)
    assert s.verdict == "settled_at_once" and s.epoch == 1
    assert "over-trained" in s.reason and "learning rate too high" in s.reason


def test_no_effect_and_single_epoch():
    assert suggest_epoch([0.001, 0.0005, 0.0002]).verdict == "no_effect"
    assert suggest_epoch([0.1]).verdict == "single"
    s = suggest_epoch([0.15, 0.1, 0.02, 0.01], has_baseline=False)  # e1 -> e2 ... e4 -> e5
    assert s.verdict == "settled" and s.epoch == 4  # settles after 3 (0.02 < 0.045)


def _image(shift: int, colour=(200, 40, 40)):
    image = Image.new("RGB", (96, 96), (230, 230, 230))
    ImageDraw.Draw(image).ellipse((10 + shift, 20, 50 + shift, 60), fill=colour)
    return image


def test_images_are_compared_at_the_same_seeds():
    assert image_distance(_image(0), _image(0)) == 0.0
    assert 0 < image_distance(_image(0), _image(4)) < image_distance(_image(0), _image(30)) <= 1
    # the circle moves 30 px, then 8, 3, 1, 0 per epoch (two seeds: two colours)
    shifts = [30, 38, 41, 42, 42]
    images = [[_image(s), _image(s, (40, 40, 200))] for s in shifts]
    baseline = [Image.new("RGB", (96, 96), (230, 230, 230))] * 2
    curve = epoch_curve(images, baseline)
    assert len(curve) == 5 and curve[2] > curve[3] > curve[4] == 0.0
    s = suggest_from_images(images, epochs=[1, 2, 3, 4, 5], baseline=baseline)
    assert s.verdict in ("settled", "settled_at_once") and s.curve == curve
    with pytest.raises(ValueError):
        epoch_curve([[_image(0)], [_image(1), _image(2)]])
