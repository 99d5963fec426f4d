import importlib.util
import logging

import pytest
import torch

from lora_trainer.training.optimizers import build_optimizer, optimizer_lr_and_d, parse_kwargs


def _params(n=2):
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(n)]


def _step(optimizer, params):
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()


# ---------------------------------------------------------------- args


def test_parse_kwargs_like_kohya_literal_eval():
    kwargs = parse_kwargs(["weight_decay=0.01", "betas=0.9,0.999", "relative_step=False", "d_coef=2", "eps=1e-8"])
    assert kwargs == {"weight_decay": 0.01, "betas": (0.9, 0.999), "relative_step": False, "d_coef": 2, "eps": 1e-8}
    assert isinstance(kwargs["d_coef"], int) and isinstance(kwargs["betas"], tuple)


def test_parse_kwargs_string_dict_and_empty():
    assert parse_kwargs("weight_decay=0.1  decouple=True") == {"weight_decay": 0.1, "decouple": True}
    assert parse_kwargs({"a": 1}) == {"a": 1}
    assert parse_kwargs(None) == {} and parse_kwargs([]) == {}
    assert parse_kwargs(["name='x'"]) == {"name": "x"}


@pytest.mark.parametrize("bad", ["weight_decay", "=3", "mode=fast"])
def test_parse_kwargs_rejects_what_kohya_cannot_parse(bad):
    with pytest.raises(ValueError):
        parse_kwargs([bad])


# ---------------------------------------------------------------- classes


@pytest.mark.parametrize(
    "name, module, cls",
    [
        ("AdamW", "torch.optim", "AdamW"),
        ("adamw", "torch.optim", "AdamW"),
        ("Lion", "lion_pytorch", "Lion"),
        ("DAdaptation", "dadaptation.experimental", "DAdaptAdamPreprint"),
        ("DAdaptAdamPreprint", "dadaptation.experimental", "DAdaptAdamPreprint"),
        ("DAdaptAdam", "dadaptation", "DAdaptAdam"),
        ("DAdaptAdaGrad", "dadaptation", "DAdaptAdaGrad"),
        ("DAdaptAdan", "dadaptation", "DAdaptAdan"),
        ("DAdaptAdanIP", "dadaptation.experimental", "DAdaptAdanIP"),
        ("DAdaptLion", "dadaptation", "DAdaptLion"),
        ("DAdaptSGD", "dadaptation", "DAdaptSGD"),
        ("Prodigy", "prodigyopt", "Prodigy"),
        ("PRODIGY", "prodigyopt", "Prodigy"),
        ("RAdam", "torch.optim", "RAdam"),  # bare class name: torch.optim
        ("torch.optim.Adagrad", "torch.optim", "Adagrad"),
        ("lion_pytorch.Lion", "lion_pytorch", "Lion"),
    ],
)
def test_kohya_names_build_the_library_class(name, module, cls):
    expected = getattr(importlib.import_module(module), cls)
    params = _params()
    optimizer, ss_optimizer = build_optimizer(name, params, 1.0, [])
    assert type(optimizer) is expected
    assert ss_optimizer == f"{expected.__module__}.{expected.__name__}"
    _step(optimizer, params)  # usable


def test_adamw_args_reach_param_groups_and_metadata_string():
    optimizer, ss = build_optimizer("AdamW", _params(), 1e-4, ["weight_decay=0.05", "betas=0.8,0.95"])
    group = optimizer.param_groups[0]
    assert group["lr"] == 1e-4 and group["weight_decay"] == 0.05 and group["betas"] == (0.8, 0.95)
    assert ss == "torch.optim.adamw.AdamW(weight_decay=0.05,betas=(0.8, 0.95))"


def test_prodigy_args_passed_through():
    args = ["d_coef=2.5", "weight_decay=0.01", "decouple=True", "use_bias_correction=True",
            "safeguard_warmup=True", "betas=0.9,0.99", "d0=1e-5"]
    optimizer, ss = build_optimizer("Prodigy", _params(), 1.0, args)
    group = optimizer.param_groups[0]
    assert group["d_coef"] == 2.5 and group["weight_decay"] == 0.01
    assert group["use_bias_correction"] is True and group["safeguard_warmup"] is True
    assert group["betas"] == (0.9, 0.99) and group["d"] == 1e-5 and group["lr"] == 1.0
    assert ss.startswith("prodigyopt.prodigy.Prodigy(d_coef=2.5,")


def test_sgd_nesterov_gets_kohya_default_momentum():
    optimizer, ss = build_optimizer("SGDNesterov", _params(), 0.1, None)
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["nesterov"] is True and optimizer.param_groups[0]["momentum"] == 0.9
    assert ss == "torch.optim.sgd.SGD(momentum=0.9)"
    optimizer, _ = build_optimizer("SGDNesterov", _params(), 0.1, ["momentum=0.5"])
    assert optimizer.param_groups[0]["momentum"] == 0.5


def test_param_group_lrs_are_kept():
    a, b = _params()
    groups = [{"params": [a], "lr": 1e-4}, {"params": [b], "lr": 5e-5}]
    optimizer, _ = build_optimizer("AdamW", groups, 1e-3, [])
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 5e-5]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes installed")
@pytest.mark.parametrize("name", ["AdamW8bit", "PagedAdamW8bit", "Lion8bit", "SGDNesterov8bit", "PagedAdamW"])
def test_8bit_without_bitsandbytes_is_a_clear_error(name):
    with pytest.raises(ImportError, match="bitsandbytes"):
        build_optimizer(name, _params(), 1e-4, [])


def test_unknown_optimizer_is_an_error():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("NoSuchOpt", _params(), 1e-4, [])


# ---------------------------------------------------------------- Adafactor


def test_adafactor_defaults_to_relative_step_and_drops_lrs():
    from transformers.optimization import Adafactor

    a, b = _params()
    groups = [{"params": [a], "lr": 1e-4}, {"params": [b], "lr": 5e-5}]
    optimizer, ss = build_optimizer("AdaFactor", groups, 1e-3, [])
    assert type(optimizer) is Adafactor
    assert optimizer.defaults["relative_step"] is True and optimizer.defaults["lr"] is None
    assert all(g["lr"] is None for g in optimizer.param_groups)
    assert ss == "transformers.optimization.Adafactor(relative_step=True)"
    assert "lr" in groups[0]  # the caller's groups are not mutated
    _step(optimizer, [a, b])


def test_adafactor_warmup_init_forces_relative_step():
    optimizer, _ = build_optimizer("adafactor", _params(), 1e-3, ["relative_step=False", "warmup_init=True"])
    assert optimizer.defaults["relative_step"] is True and optimizer.defaults["warmup_init"] is True


def test_adafactor_fixed_lr_when_relative_step_false(caplog):
    with caplog.at_level(logging.WARNING):
        optimizer, ss = build_optimizer(
            "Adafactor", _params(), 1e-3, ["relative_step=False", "scale_parameter=False"],
            max_grad_norm=1.0, lr_scheduler="cosine",
        )
    assert optimizer.defaults["relative_step"] is False and optimizer.param_groups[0]["lr"] == 1e-3
    assert "constant_with_warmup will be good" in caplog.text and "max_grad_norm" in caplog.text
    assert ss == "transformers.optimization.Adafactor(relative_step=False,scale_parameter=False)"


# ---------------------------------------------------------------- warnings / progress


def test_adaptive_optimizer_low_lr_warning(caplog):
    with caplog.at_level(logging.WARNING):
        build_optimizer("Prodigy", _params(), 1e-4, [])
    assert "learning rate is too low" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_optimizer("DAdaptAdam", _params(), 1.0, [])
    assert caplog.text == ""


def test_adaptive_optimizer_multiple_lrs_warning(caplog):
    a, b = _params()
    with caplog.at_level(logging.WARNING):
        build_optimizer("Prodigy", [{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5}], 1.0, [])
    assert "only the first one will take effect" in caplog.text


def test_optimizer_lr_and_d_reports_d_times_lr():
    a, b = _params()
    groups = [{"params": [a], "lr": 0.5}, {"params": [b], "lr": 0.5}]
    optimizer, _ = build_optimizer("Prodigy", groups, 1.0, [])
    for _ in range(4):  # a quadratic loss: Prodigy's d estimate grows
        for p in (a, b):
            p.grad = 2 * p.detach() + 1
        optimizer.step()
    d = optimizer.param_groups[0]["d"]
    assert d > 1e-6  # Prodigy grew its estimate
    info = optimizer_lr_and_d(optimizer, names=["te", "unet"])
    assert info == {"te": 0.5, "d*lr/te": d * 0.5, "unet": 0.5, "d*lr/unet": d * 0.5}


def test_prodigy_rejects_different_group_lrs_like_kohya():
    # kohya only warns; the library itself refuses at the first step
    a, b = _params()
    optimizer, _ = build_optimizer("Prodigy", [{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5}], 1.0, [])
    with pytest.raises(RuntimeError, match="different lr"):
        _step(optimizer, [a, b])


def test_optimizer_lr_and_d_plain_optimizer_and_scheduler():
    optimizer, _ = build_optimizer("AdamW", _params(), 2e-4, [])
    assert optimizer_lr_and_d(optimizer) == {"group0": 2e-4}
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert optimizer_lr_and_d(optimizer, scheduler) == {"group0": 1e-4}
