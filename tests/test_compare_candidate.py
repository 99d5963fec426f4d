"""compare/candidate.py: suggesting the epoch where the change between epochs settles."""
import pytest
from PIL import Image, ImageDraw

from lora_trainer.compare.candidate import epoch_curve, image_distance, suggest_epoch, suggest_from_images


def test_converging_suggests_one_after_it_settles():
    # no LoRA -> 1, 1 -> 2, ... 7 -> 8
    curve = [0.20, 0.15, 0.10, 0.05, 0.03, 0.02, 0.02, 0.015]
    s = suggest_epoch(curve)
    assert s.verdict == "settled"
    # threshold 0.3 x the largest change between epochs (1 -> 2: 0.15) = 0.045; from 4 -> 5 (0.03) on every
    # change is below: settles after epoch 4, suggest 5
    assert s.threshold == pytest.approx(0.045)
    assert s.epoch == 5 and s.index == 4
    assert "after epoch 4" in s.reason and "epoch 5 is suggested" in s.reason
    assert s.labels[0] == "no LoRA -> 1" and s.labels[-1] == "7 -> 8" and s.curve == curve


@pytest.mark.parametrize("curve, threshold, epoch", [
    # the LoRA's effect (no LoRA -> 1) dwarfs the changes between epochs, which fall as they should
    ([0.25, 0.07, 0.05, 0.035, 0.02, 0.015, 0.012], 0.021, 5),
    ([0.40, 0.06, 0.045, 0.03, 0.015, 0.01, 0.008, 0.008], 0.018, 5),
    # a warm-up: the changes between epochs grow before they fall
    ([0.12, 0.05, 0.08, 0.06, 0.03, 0.012, 0.01], 0.024, 6),
])
def test_a_healthy_run_is_not_taken_for_over_trained(curve, threshold, epoch):
    """The no-LoRA -> epoch 1 change is the LoRA's whole effect, usually the largest entry by far: it
    must not set the threshold, else these runs would all look settled at once."""
    s = suggest_epoch(curve)
    assert s.verdict == "settled" and not s.oscillating, s.reason
    assert s.threshold == pytest.approx(threshold) and s.epoch == epoch


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
    curve = [0.25, 0.01, 0.008, 0.01, 0.006]  # every later change under a tenth of the first epoch's effect
    s = suggest_epoch(curve)
    assert s.verdict == "settled_at_once" and s.epoch == 1
    assert "over-trained" in s.reason and "learning rate too high" in s.reason
    # a change between epochs of a tenth of the effect or more is not "at once"
    assert suggest_epoch([0.25, 0.025, 0.01, 0.005, 0.004]).verdict == "settled"
    assert suggest_epoch([0.25, 0.024, 0.01, 0.005, 0.004]).verdict == "settled_at_once"


def test_no_effect_and_single_epoch():
    assert suggest_epoch([0.001, 0.0005, 0.0002]).verdict == "no_effect"
    assert suggest_epoch([0.1]).verdict == "single"
    s = suggest_epoch([0.15, 0.1, 0.02, 0.01], has_baseline=False)  # e1 -> e2 ... e4 -> e5
    assert s.verdict == "settled" and s.epoch == 4  # settles after 3 (0.02 < 0.045)


def _image(shift: int, colour=(200, 40, 40)):
    image = Image.new("RGB", (96, 96), (230, 230, 230))
    ImageDraw.Draw(image).ellipse((10 + shift, 20, 50 + shift, 60), fill=colour)
    return image


def _images(shifts):
    return [[_image(s), _image(s, (40, 40, 200))] for s in shifts]  # two seeds: two colours


BLANK = [Image.new("RGB", (96, 96), (230, 230, 230))] * 2  # no LoRA: no circle


def test_images_are_compared_at_the_same_seeds():
    assert image_distance(_image(0), _image(0)) == 0.0
    assert 0 < image_distance(_image(0), _image(4)) < image_distance(_image(0), _image(30)) <= 1
    # epoch 1 draws the circle (the LoRA's effect); then it moves 12, 8, 6, 4, 2, 1, 0 px per epoch
    shifts = [0, 12, 20, 26, 30, 32, 33, 33]
    images = _images(shifts)
    curve = epoch_curve(images, BLANK)
    assert len(curve) == 8 and all(a > b for a, b in zip(curve, curve[1:])) and curve[-1] == 0.0
    s = suggest_from_images(images, epochs=list(range(1, 9)), baseline=BLANK)
    # threshold 0.3 x the 12 px move; the 4 px move (epoch 4 -> 5) is above it, the 2 px move below:
    # settles after epoch 5, epoch 6 is suggested
    assert s.verdict == "settled" and s.curve == curve
    assert s.threshold == pytest.approx(0.3 * curve[1])
    assert curve[4] > s.threshold * 1.1 and curve[5] < s.threshold * 0.6  # clear of the threshold both ways
    assert s.epoch == 6 and "after epoch 5" in s.reason
    with pytest.raises(ValueError):
        epoch_curve([[_image(0)], [_image(1), _image(2)]])


def test_images_that_barely_move_after_the_first_epoch_settle_at_once():
    images = _images([20, 21, 21, 22, 22])  # the circle appears, then moves 1 px now and then
    s = suggest_from_images(images, epochs=[1, 2, 3, 4, 5], baseline=BLANK)
    assert s.verdict == "settled_at_once" and s.epoch == 1, s.reason
