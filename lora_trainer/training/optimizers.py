"""Optimizers by kohya's ``optimizer_type`` names, built from their own libraries.

The names, the defaults kohya fills in (SGD's momentum, Adafactor's
``relative_step``), its warnings and its ``ss_optimizer`` string follow
sd-scripts' ``get_optimizer``; the optimizers themselves come from torch,
lion-pytorch, bitsandbytes, dadaptation, prodigyopt, transformers and
schedulefree. Anything else is taken as ``module.Class`` (a bare class name
means ``torch.optim.<Class>``), as kohya does.
"""
from __future__ import annotations

import ast
import logging
from typing import Any, Iterable, Optional, Union

import torch

from .classpath import resolve_class

logger = logging.getLogger(__name__)

OPTIMIZER_TYPES = (
    "AdamW",
    "AdamW8bit",
    "PagedAdamW",
    "PagedAdamW8bit",
    "PagedAdamW32bit",
    "Lion",
    "Lion8bit",
    "PagedLion8bit",
    "SGDNesterov",
    "SGDNesterov8bit",
    "DAdaptation",
    "DAdaptAdamPreprint",
    "DAdaptAdaGrad",
    "DAdaptAdam",
    "DAdaptAdan",
    "DAdaptAdanIP",
    "DAdaptLion",
    "DAdaptSGD",
    "Prodigy",
    "AdaFactor",
    "RAdamScheduleFree",
    "AdamWScheduleFree",
    "SGDScheduleFree",
)

OptimizerArgs = Union[None, str, Iterable[str], dict]


def parse_kwargs(args: OptimizerArgs) -> dict[str, Any]:
    """kohya's ``key=value`` list (``--optimizer_args`` / ``--lr_scheduler_args``) as kwargs.

    Values go through ``ast.literal_eval`` like kohya's, so ``betas=0.9,0.999``
    is a tuple and ``relative_step=False`` a bool. One string is split on
    whitespace, as the shell splits kohya's ``nargs="*"`` option.
    """
    if args is None:
        return {}
    if isinstance(args, dict):
        return dict(args)
    if isinstance(args, str):
        args = args.split()
    kwargs: dict[str, Any] = {}
    for item in args:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"argument {item!r}: expected key=value, e.g. weight_decay=0.01")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as e:
            raise ValueError(
                f"argument {item!r}: {value!r} is not a Python literal (numbers, True/False, None, "
                "'quoted strings', tuples like 0.9,0.999)"
            ) from e
    return kwargs


def _bitsandbytes():
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ImportError(
            "this optimizer needs bitsandbytes, which is not installed (pip install bitsandbytes; "
            "it needs a CUDA GPU); use AdamW / Lion / Prodigy instead"
        ) from e
    return bnb


def _bnb_class(name: str, min_version: str):
    bnb = _bitsandbytes()
    cls = getattr(bnb.optim, name, None)
    if cls is None:
        raise AttributeError(f"bitsandbytes has no {name}; install bitsandbytes {min_version} or later")
    return cls


def _group_lrs(params, lr: float) -> tuple[float, int]:
    """The lr D-Adaptation/Prodigy will really use, and how many distinct lrs were asked for."""
    if isinstance(params, list) and params and isinstance(params[0], dict):
        first = params[0].get("lr", lr)
        return first, len({group.get("lr", first) for group in params})
    return lr, 1


def _warn_adaptive_lr(params, lr: float) -> None:
    actual_lr, lr_count = _group_lrs(params, lr)
    if actual_lr <= 0.1:
        logger.warning(
            f"learning rate is too low. If using D-Adaptation or Prodigy, set learning rate around 1.0: lr={actual_lr}"
        )
        logger.warning("recommend option: lr=1.0")
    if lr_count > 1:
        logger.warning(
            "when multiple learning rates are specified with dadaptation (e.g. for Text Encoder and U-Net), "
            f"only the first one will take effect: lr={actual_lr}"
        )


def _adafactor(params, lr: float, kwargs: dict, max_grad_norm: Optional[float], lr_scheduler: Optional[str]):
    from transformers.optimization import Adafactor

    kwargs.setdefault("relative_step", True)
    if not kwargs["relative_step"] and kwargs.get("warmup_init", False):
        logger.info("set relative_step to True because warmup_init is True")
        kwargs["relative_step"] = True

    if kwargs["relative_step"]:
        # Adafactor computes its own step size; the given lr only seeds the
        # AdafactorSchedule that build_scheduler forces (kohya's "adafactor:<lr>")
        if lr != 0.0:
            logger.warning("learning rate is used as initial_lr")
        if isinstance(params, list) and params and isinstance(params[0], dict):
            params = [dict(group) for group in params]
            popped = [group.pop("lr", None) for group in params]
            if any(lr_ is not None for lr_ in popped):
                logger.warning("unet_lr and text_encoder_lr are ignored")
        if lr_scheduler is not None and lr_scheduler != "adafactor":
            logger.info("use adafactor_scheduler")
        optimizer = Adafactor(params, lr=None, **kwargs)
        optimizer.adafactor_initial_lr = lr  # read by schedulers.build_scheduler
        return optimizer, Adafactor

    if max_grad_norm is not None and max_grad_norm != 0.0:
        logger.warning("because max_grad_norm is set, clip_grad_norm is enabled. consider set to 0")
    if lr_scheduler is not None and lr_scheduler != "constant_with_warmup":
        logger.warning("constant_with_warmup will be good")
    if kwargs.get("clip_threshold", 1.0) != 1.0:
        logger.warning("clip_threshold=1.0 will be good")
    return Adafactor(params, lr=lr, **kwargs), Adafactor


def _dadaptation_class(kind: str):
    try:
        import dadaptation
        from dadaptation import experimental
    except ImportError as e:
        raise ImportError("D-Adaptation optimizers need the dadaptation package (pip install dadaptation)") from e
    classes = {
        # kohya's plain "DAdaptation" is the preprint variant, not DAdaptAdam
        "dadaptation": experimental.DAdaptAdamPreprint,
        "dadaptadampreprint": experimental.DAdaptAdamPreprint,
        "dadaptadagrad": dadaptation.DAdaptAdaGrad,
        "dadaptadam": dadaptation.DAdaptAdam,
        "dadaptadan": dadaptation.DAdaptAdan,
        "dadaptadanip": experimental.DAdaptAdanIP,
        "dadaptlion": dadaptation.DAdaptLion,
        "dadaptsgd": dadaptation.DAdaptSGD,
    }
    if kind not in classes:
        raise ValueError(f"Unknown optimizer type: {kind}")
    return classes[kind]


def _schedulefree_class(kind: str):
    try:
        import schedulefree
    except ImportError as e:
        raise ImportError("schedule-free optimizers need the schedulefree package (pip install schedulefree)") from e
    return {
        "radamschedulefree": getattr(schedulefree, "RAdamScheduleFree", None),
        "adamwschedulefree": schedulefree.AdamWScheduleFree,
        "sgdschedulefree": schedulefree.SGDScheduleFree,
    }.get(kind)


def _custom_class(optimizer_type: str):
    return resolve_class(optimizer_type, torch.optim, "optimizer", OPTIMIZER_TYPES)


def build_optimizer(
    optimizer_type: str,
    params,
    lr: float,
    optimizer_args: OptimizerArgs = None,
    *,
    max_grad_norm: Optional[float] = None,
    lr_scheduler: Optional[str] = None,
):
    """Build kohya's ``optimizer_type`` over ``params`` (tensors or param-group dicts).

    Returns ``(optimizer, ss_optimizer)``: the second is kohya's metadata string,
    ``module.Class(k=v,...)`` with the kwargs as kohya finally passed them.
    ``max_grad_norm`` and ``lr_scheduler`` only feed kohya's Adafactor advice.
    """
    kwargs = parse_kwargs(optimizer_args)
    kind = (optimizer_type or "AdamW").lower()
    cls = None
    optimizer = None

    if kind == "lion":
        try:
            import lion_pytorch
        except ImportError as e:
            raise ImportError("Lion needs the lion-pytorch package (pip install lion-pytorch)") from e
        cls = lion_pytorch.Lion
    elif kind.endswith("8bit"):
        if kind == "adamw8bit":
            cls = _bnb_class("AdamW8bit", "0.35")
        elif kind == "sgdnesterov8bit":
            if "momentum" not in kwargs:
                logger.warning("8-bit SGD with Nesterov must be with momentum, set momentum to 0.9")
                kwargs["momentum"] = 0.9
            cls = _bnb_class("SGD8bit", "0.35")
            optimizer = cls(params, lr=lr, nesterov=True, **kwargs)
        elif kind == "lion8bit":
            cls = _bnb_class("Lion8bit", "0.38.0")
        elif kind == "pagedadamw8bit":
            cls = _bnb_class("PagedAdamW8bit", "0.39.0")
        elif kind == "pagedlion8bit":
            cls = _bnb_class("PagedLion8bit", "0.39.0")
        else:
            _bitsandbytes()  # kohya requires bitsandbytes for any *8bit name before falling through
    elif kind == "pagedadamw":
        cls = _bnb_class("PagedAdamW", "0.39.0")
    elif kind == "pagedadamw32bit":
        cls = _bnb_class("PagedAdamW32bit", "0.39.0")
    elif kind == "sgdnesterov":
        if "momentum" not in kwargs:
            logger.info("SGD with Nesterov must be with momentum, set momentum to 0.9")
            kwargs["momentum"] = 0.9
        cls = torch.optim.SGD
        optimizer = cls(params, lr=lr, nesterov=True, **kwargs)
    elif kind.startswith("dadapt") or kind == "prodigy":
        _warn_adaptive_lr(params, lr)
        if kind == "prodigy":
            try:
                import prodigyopt
            except ImportError as e:
                raise ImportError("Prodigy needs the prodigyopt package (pip install prodigyopt)") from e
            cls = prodigyopt.Prodigy
        else:
            cls = _dadaptation_class(kind)
    elif kind == "adafactor":
        optimizer, cls = _adafactor(params, lr, kwargs, max_grad_norm, lr_scheduler)
    elif kind == "adamw":
        cls = torch.optim.AdamW
    elif kind.endswith("schedulefree"):
        cls = _schedulefree_class(kind)

    if cls is None:
        cls = _custom_class(optimizer_type)
    logger.info(f"use {cls.__module__}.{cls.__name__} | {kwargs}")
    if optimizer is None:
        optimizer = cls(params, lr=lr, **kwargs)

    if is_schedulefree(optimizer):
        # schedule-free optimizers keep two weight sequences; they must be in
        # train mode for steps (and eval mode while saving or sampling)
        optimizer.train()

    name = f"{cls.__module__}.{cls.__name__}"
    args_text = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return optimizer, name + (f"({args_text})" if args_text else "")


def is_schedulefree(optimizer) -> bool:
    return type(optimizer).__module__.split(".")[0] == "schedulefree"


def optimizer_lr_and_d(optimizer, scheduler=None, names: Optional[list[str]] = None) -> dict[str, float]:
    """Current lr of every param group, plus ``d*lr`` for D-Adaptation/Prodigy.

    Keys are the group names (``names``, else a group's own ``"name"`` entry,
    else ``group<i>``) and ``d*lr/<name>``, as kohya's ``lr/<desc>`` and
    ``lr/d*lr/<desc>`` logs. Given a ``scheduler``, lrs come from its
    ``get_last_lr()`` as in kohya (that is where Adafactor's relative step
    size is read).
    """
    groups = optimizer.param_groups
    lrs = list(scheduler.get_last_lr()) if scheduler is not None else [g.get("lr") for g in groups]
    out: dict[str, float] = {}
    for i, group in enumerate(groups):
        name = (names[i] if names is not None and i < len(names) else None) or group.get("name") or f"group{i}"
        lr = lrs[i] if i < len(lrs) else group.get("lr")
        if lr is None:
            continue
        out[name] = float(lr)
        if "d" in group and group.get("lr") is not None:
            # kohya multiplies d by the group's own lr, not the scheduler's
            out[f"d*lr/{name}"] = float(group["d"]) * float(group["lr"])
    return out
