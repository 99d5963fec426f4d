import math

import pytest
import torch
import transformers.optimization as tf_opt

from lora_trainer.training.optimizers import build_optimizer
from lora_trainer.training.schedulers import build_scheduler, steps_from

LR = 1e-3
TOTAL = 40


def _optimizer(lr=LR):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _curve(scheduler, steps=TOTAL):
    """The lr each optimizer step runs with, stepping the scheduler after it."""
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _diffusers_scheduler(name, **kwargs):
    diffusers_opt = pytest.importorskip("diffusers.optimization")
    return diffusers_opt.get_scheduler(name, _optimizer(), **kwargs)


# ---------------------------------------------------------------- named schedules


@pytest.mark.parametrize(
    "name, ours, direct",
    [
        ("constant", dict(num_warmup_steps=0), lambda o: tf_opt.get_constant_schedule(o)),
        (
            "constant_with_warmup",
            dict(num_warmup_steps=7),
            lambda o: tf_opt.get_constant_schedule_with_warmup(o, num_warmup_steps=7),
        ),
        (
            "linear",
            dict(num_warmup_steps=5),
            lambda o: tf_opt.get_linear_schedule_with_warmup(o, num_warmup_steps=5, num_training_steps=TOTAL),
        ),
        (
            "cosine",
            dict(num_warmup_steps=5),
            lambda o: tf_opt.get_cosine_schedule_with_warmup(o, num_warmup_steps=5, num_training_steps=TOTAL),
        ),
        (
            "cosine_with_restarts",
            dict(num_warmup_steps=4, num_cycles=3),
            lambda o: tf_opt.get_cosine_with_hard_restarts_schedule_with_warmup(
                o, num_warmup_steps=4, num_training_steps=TOTAL, num_cycles=3
            ),
        ),
        (
            "polynomial",
            dict(num_warmup_steps=3, power=2.0),
            lambda o: tf_opt.get_polynomial_decay_schedule_with_warmup(
                o, num_warmup_steps=3, num_training_steps=TOTAL, power=2.0
            ),
        ),
        (
            "inverse_sqrt",
            dict(num_warmup_steps=6),
            lambda o: tf_opt.get_inverse_sqrt_schedule(o, num_warmup_steps=6),
        ),
    ],
)
def test_named_schedule_equals_library_curve(name, ours, direct):
    built = build_scheduler(name, _optimizer(), num_training_steps=TOTAL, **ours)
    assert _curve(built) == _curve(direct(_optimizer()))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("linear", dict(num_warmup_steps=5)),
        ("cosine", dict(num_warmup_steps=5)),
        ("cosine_with_restarts", dict(num_warmup_steps=4, num_cycles=3)),
        ("polynomial", dict(num_warmup_steps=3, power=2.0)),
        ("constant_with_warmup", dict(num_warmup_steps=7)),
        ("constant", dict()),
    ],
)
def test_named_schedule_equals_diffusers_implementation(name, kwargs):
    # kohya's original get_scheduler_fix came from diffusers: same curves
    ours = build_scheduler(name, _optimizer(), num_training_steps=TOTAL, **kwargs)
    theirs = _diffusers_scheduler(name, num_training_steps=TOTAL, **kwargs)
    assert _curve(ours) == pytest.approx(_curve(theirs), rel=1e-12, abs=1e-15)


def test_cosine_with_warmup_closed_form():
    warmup = 8
    curve = _curve(build_scheduler("cosine", _optimizer(), TOTAL, num_warmup_steps=warmup))
    for step, lr in enumerate(curve):
        if step < warmup:
            expected = LR * step / warmup
        else:
            progress = (step - warmup) / (TOTAL - warmup)
            expected = LR * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr == pytest.approx(expected, abs=1e-12)


def test_cosine_with_restarts_closed_form():
    cycles = 4
    curve = _curve(build_scheduler("cosine_with_restarts", _optimizer(), TOTAL, num_warmup_steps=0, num_cycles=cycles))
    for step, lr in enumerate(curve):
        progress = step / TOTAL
        expected = LR * 0.5 * (1 + math.cos(math.pi * ((cycles * progress) % 1.0)))
        assert lr == pytest.approx(expected, abs=1e-12)


def test_polynomial_closed_form():
    power, lr_end = 2.0, 1e-7
    curve = _curve(build_scheduler("polynomial", _optimizer(), TOTAL, num_warmup_steps=0, power=power))
    for step, lr in enumerate(curve):
        expected = (LR - lr_end) * (1 - step / TOTAL) ** power + lr_end
        assert lr == pytest.approx(expected, abs=1e-12)


def test_cosine_with_min_lr_uses_kohya_cycle_convention():
    ours = build_scheduler("cosine_with_min_lr", _optimizer(), TOTAL, num_warmup_steps=4, num_cycles=1, min_lr_ratio=0.1)
    direct = tf_opt.get_cosine_with_min_lr_schedule_with_warmup(
        _optimizer(), num_warmup_steps=4, num_training_steps=TOTAL, num_cycles=0.5, min_lr_rate=0.1
    )
    curve = _curve(ours)
    assert curve == _curve(direct)
    assert min(curve[4:]) >= 0.1 * LR - 1e-15


def test_warmup_stable_decay():
    ours = build_scheduler("warmup_stable_decay", _optimizer(), TOTAL, num_warmup_steps=0.1, num_decay_steps=0.25)
    direct = tf_opt.get_wsd_schedule(
        _optimizer(), num_warmup_steps=4, num_stable_steps=TOTAL - 4 - 10, num_decay_steps=10, num_cycles=0.5,
        min_lr_ratio=0.0,
    )
    curve = _curve(ours)
    assert curve == _curve(direct)
    assert curve[4:26] == [LR] * 22


# ---------------------------------------------------------------- warmup ratio


@pytest.mark.parametrize(
    "value, total, expected",
    [(0, 100, 0), (5, 100, 5), (0.1, 100, 10), (0.25, 10, 2), (0.05, 30, 1), (2.0, 100, 2), (None, 10, None)],
)
def test_warmup_ratio_like_kohya(value, total, expected):
    # kohya: int(ratio * total) for floats below 1, else a step count
    assert steps_from(value, total) == expected


def test_warmup_ratio_gives_the_same_curve_as_the_count():
    by_ratio = build_scheduler("linear", _optimizer(), 50, num_warmup_steps=0.2)
    by_count = build_scheduler("linear", _optimizer(), 50, num_warmup_steps=10)
    assert _curve(by_ratio, 50) == _curve(by_count, 50)
    assert _curve(build_scheduler("linear", _optimizer(), 50, num_warmup_steps=0.2), 50)[10] == LR


@pytest.mark.parametrize("name", ["constant", "torch.optim.lr_scheduler.ExponentialLR"])
def test_warmup_rejected_where_kohya_rejects_it(name):
    with pytest.raises(ValueError, match="does not require `num_warmup_steps`"):
        build_scheduler(name, _optimizer(), TOTAL, num_warmup_steps=3, scheduler_args=["gamma=0.9"])


# ---------------------------------------------------------------- adafactor / custom / piecewise


def test_relative_step_adafactor_forces_adafactor_schedule():
    from transformers.optimization import AdafactorSchedule

    p = torch.nn.Parameter(torch.randn(8, 4))
    rms = p.detach().pow(2).mean().sqrt().item()
    optimizer, _ = build_optimizer("AdaFactor", [p], 2e-4, [])
    scheduler = build_scheduler("cosine", optimizer, TOTAL)
    assert isinstance(scheduler, AdafactorSchedule)
    assert scheduler.get_last_lr() == [2e-4]  # kohya's "adafactor:<lr>" seed, before any step
    p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler.step()
    # Adafactor's relative step at step 1: min(1e-2, 1/sqrt(1)) scaled by max(eps2, RMS(param))
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-2 * max(1e-3, rms), rel=1e-5)


def test_adafactor_schedule_rejects_warmup_and_other_optimizers():
    optimizer, _ = build_optimizer("AdaFactor", [torch.nn.Parameter(torch.randn(3))], 1e-3, [])
    with pytest.raises(ValueError, match="num_warmup_steps"):
        build_scheduler("constant", optimizer, TOTAL, num_warmup_steps=5)
    with pytest.raises(ValueError, match="Adafactor"):
        build_scheduler("adafactor", _optimizer(), TOTAL)


def test_fixed_lr_adafactor_keeps_the_asked_schedule():
    optimizer, _ = build_optimizer("AdaFactor", [torch.nn.Parameter(torch.randn(3))], 1e-3, ["relative_step=False"])
    scheduler = build_scheduler("linear", optimizer, 10, num_warmup_steps=0)
    assert _curve(scheduler, 10) == pytest.approx([1e-3 * (10 - i) / 10 for i in range(10)], abs=1e-12)
    with pytest.raises(ValueError, match="relative_step=True"):
        build_scheduler("adafactor", optimizer, 10)


def test_custom_torch_scheduler_by_bare_and_dotted_name():
    bare = build_scheduler("StepLR", _optimizer(), TOTAL, scheduler_args=["step_size=3", "gamma=0.5"])
    assert isinstance(bare, torch.optim.lr_scheduler.StepLR)
    assert _curve(bare, 9) == pytest.approx([LR] * 3 + [LR / 2] * 3 + [LR / 4] * 3)
    dotted = build_scheduler("torch.optim.lr_scheduler.ExponentialLR", _optimizer(), TOTAL, scheduler_args={"gamma": 0.9})
    assert _curve(dotted, 5) == pytest.approx([LR * 0.9**i for i in range(5)])


def test_piecewise_constant():
    pytest.importorskip("diffusers")
    scheduler = build_scheduler("piecewise_constant", _optimizer(), TOTAL, scheduler_args=["step_rules='1:3,0.5:6,0.1'"])
    assert _curve(scheduler, 8) == pytest.approx([LR] * 3 + [LR / 2] * 3 + [LR / 10] * 2)


def test_unknown_scheduler_is_an_error():
    with pytest.raises(ValueError, match="unknown lr scheduler"):
        build_scheduler("cosine_annealing_typo", _optimizer(), TOTAL)
