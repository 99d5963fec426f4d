"""Learning-rate schedulers by kohya's ``lr_scheduler`` names.

Mirrors sd-scripts' ``get_scheduler_fix``: the named schedules are
transformers' own functions called with the arguments kohya gives them,
``piecewise_constant`` is diffusers' (imported only when asked for),
``adafactor`` is transformers' ``AdafactorSchedule``, and any other name is a
scheduler class (``module.Class``, or a bare name from
``torch.optim.lr_scheduler``) built from ``scheduler_args`` alone, as kohya's
``--lr_scheduler_type``. The scheduler is stepped once per optimizer update.
"""
from __future__ import annotations

import logging
from typing import Optional, Union

import torch

from .classpath import resolve_class
from .optimizers import OptimizerArgs, is_schedulefree, parse_kwargs

logger = logging.getLogger(__name__)

SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
    "piecewise_constant",
    "adafactor",
)

StepCount = Union[int, float, None]


def steps_from(value: StepCount, num_training_steps: int) -> Optional[int]:
    """kohya's ``lr_warmup_steps`` / ``lr_decay_steps``: a float below 1 is a
    ratio of the total, truncated like kohya's ``int(ratio * total)``."""
    if value is None:
        return None
    if isinstance(value, float) and value < 1:
        return int(value * num_training_steps)
    return int(value)


class ScheduleFreeScheduler:
    """kohya's stand-in for schedule-free optimizers: nothing to schedule, lrs for logging."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self):
        pass

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]


def _is_relative_step_adafactor(optimizer) -> bool:
    from transformers.optimization import Adafactor

    return type(optimizer) is Adafactor and bool(optimizer.defaults.get("relative_step"))


def _class_scheduler(scheduler_type: str, optimizer, kwargs: dict):
    cls = resolve_class(scheduler_type, torch.optim.lr_scheduler, "lr scheduler", SCHEDULERS)
    logger.info(f"use {scheduler_type} | {kwargs} as lr_scheduler")
    return cls(optimizer, **kwargs)


def _transformers_schedule(name: str):
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    try:
        return TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]
    except (ValueError, KeyError) as e:
        raise ValueError(f"lr scheduler {name!r} is not available in the installed transformers") from e


def build_scheduler(
    name: str,
    optimizer,
    num_training_steps: int,
    num_warmup_steps: StepCount = 0,
    num_cycles: int = 1,
    power: float = 1.0,
    scheduler_args: OptimizerArgs = None,
    num_decay_steps: StepCount = 0,
    timescale: Optional[int] = None,
    min_lr_ratio: Optional[float] = None,
    initial_lr: Optional[float] = None,
):
    """The scheduler kohya's ``get_scheduler_fix`` builds for these options.

    ``num_training_steps`` is kohya's ``max_train_steps`` (times its process
    count, which is 1 here). ``num_warmup_steps`` / ``num_decay_steps`` below 1
    as floats are ratios of it. A relative-step Adafactor forces kohya's
    ``adafactor`` schedule whatever ``name`` says, seeded with the lr given to
    :func:`build_optimizer` (or ``initial_lr``).
    """
    if is_schedulefree(optimizer):
        return ScheduleFreeScheduler(optimizer)

    name = (name or "constant").strip()
    kwargs = parse_kwargs(scheduler_args)
    warmup = steps_from(num_warmup_steps, num_training_steps)
    decay = steps_from(num_decay_steps, num_training_steps)

    def no_warmup():
        if warmup is not None and warmup != 0:
            raise ValueError(f"{name} does not require `num_warmup_steps`. Set None or 0.")

    if name not in SCHEDULERS and not name.startswith("adafactor"):
        # kohya's --lr_scheduler_type wins even over Adafactor's forced schedule
        no_warmup()
        return _class_scheduler(name, optimizer, kwargs)

    if _is_relative_step_adafactor(optimizer):
        if initial_lr is None:
            initial_lr = getattr(optimizer, "adafactor_initial_lr", 0.0)
        if not name.startswith("adafactor"):
            logger.info("use adafactor_scheduler")
        name = f"adafactor:{initial_lr}"

    if name.startswith("adafactor"):
        from transformers.optimization import Adafactor, AdafactorSchedule

        if type(optimizer) is not Adafactor:
            raise ValueError("adafactor scheduler must be used with Adafactor optimizer")
        _, _, lr_text = name.partition(":")
        if not lr_text:
            # kohya only reaches this schedule through relative_step (it fails otherwise)
            raise ValueError("the adafactor scheduler needs the Adafactor optimizer with relative_step=True")
        no_warmup()
        return AdafactorSchedule(optimizer, float(lr_text))

    if name == "piecewise_constant":
        try:
            from diffusers.optimization import get_piecewise_constant_schedule
        except ImportError as e:
            raise ImportError("the piecewise_constant scheduler comes from diffusers, which is not installed") from e
        # step_rules (e.g. "1:10,0.1:20,0.01") arrive through scheduler_args, as in kohya
        return get_piecewise_constant_schedule(optimizer, **kwargs)

    schedule = _transformers_schedule(name)
    if name == "constant":
        no_warmup()
        return schedule(optimizer, **kwargs)
    if warmup is None:
        raise ValueError(f"{name} requires `num_warmup_steps`, please provide that argument.")
    if name == "constant_with_warmup":
        return schedule(optimizer, num_warmup_steps=warmup, **kwargs)
    if name == "inverse_sqrt":
        return schedule(optimizer, num_warmup_steps=warmup, timescale=timescale, **kwargs)
    if name == "cosine_with_restarts":
        return schedule(
            optimizer, num_warmup_steps=warmup, num_training_steps=num_training_steps, num_cycles=num_cycles, **kwargs
        )
    if name == "polynomial":
        return schedule(optimizer, num_warmup_steps=warmup, num_training_steps=num_training_steps, power=power, **kwargs)
    if name == "cosine_with_min_lr":
        # kohya counts cycles in full periods; transformers in half periods
        return schedule(
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=num_training_steps,
            num_cycles=num_cycles / 2,
            min_lr_rate=min_lr_ratio,
            **kwargs,
        )
    if name in ("linear", "cosine"):
        return schedule(optimizer, num_warmup_steps=warmup, num_training_steps=num_training_steps, **kwargs)
    # warmup_stable_decay
    if decay is None:
        raise ValueError(f"{name} requires `num_decay_steps`, please provide that argument.")
    return schedule(
        optimizer,
        num_warmup_steps=warmup,
        num_stable_steps=num_training_steps - warmup - decay,
        num_decay_steps=decay,
        num_cycles=num_cycles / 2,
        min_lr_ratio=min_lr_ratio if min_lr_ratio is not None else 0.0,
        **kwargs,
    )
