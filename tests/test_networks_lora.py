"""LoRAModule: kohya's math and init, attaching without touching the host."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_trainer.networks.lora import LoRAModule


def _randomize_up(lora: LoRAModule, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=gen) * 0.1)


def _merged(host: nn.Module, up: torch.Tensor, down: torch.Tensor, alpha: float, dim: int, multiplier: float = 1.0):
    """Host weight with the LoRA merged in, written out independently of the module:
    Linear / 1x1: W + m * alpha/dim * up @ down; kxk conv: the 1x1 ``up`` mixes the
    ``down`` kernels channel-wise (as kohya's merge_to does with conv2d)."""
    w = host.weight.detach().double()
    up, down = up.detach().double(), down.detach().double()
    if w.ndim == 2:
        delta = up @ down
    else:
        o, r = up.shape[:2]
        _, i, kh, kw = down.shape
        delta = (up.reshape(o, r) @ down.reshape(r, i * kh * kw)).reshape(o, i, kh, kw)
    return w + multiplier * (alpha / dim) * delta


HOSTS = {
    "linear": lambda: nn.Linear(12, 10),
    "conv1x1": lambda: nn.Conv2d(6, 8, 1),
    "conv3x3": lambda: nn.Conv2d(6, 8, 3, padding=1),
    "conv3x3_stride2": lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1),
}


def _input_for(host: nn.Module, gen: torch.Generator) -> torch.Tensor:
    if isinstance(host, nn.Linear):
        return torch.randn(2, 5, host.in_features, generator=gen)
    return torch.randn(2, host.in_channels, 9, 9, generator=gen)


@pytest.mark.parametrize("kind", sorted(HOSTS))
@pytest.mark.parametrize("dim,alpha", [(4, 1.0), (3, 6.0), (4, 0)])
def test_output_equals_merged_weight(kind, dim, alpha):
    torch.manual_seed(0)
    host = HOSTS[kind]()
    lora = LoRAModule("lora_test", host, dim=dim, alpha=alpha, multiplier=0.7)
    _randomize_up(lora)
    lora.apply()
    x = _input_for(host, torch.Generator().manual_seed(1))
    got = host(x).double()

    eff_alpha = dim if not alpha else alpha  # kohya: alpha 0/None means alpha = dim
    w = _merged(host, lora.lora_up.weight, lora.lora_down.weight, eff_alpha, dim, 0.7)
    b = host.bias.detach().double()
    if isinstance(host, nn.Linear):
        want = F.linear(x.double(), w, b)
    else:
        want = F.conv2d(x.double(), w, b, stride=host.stride, padding=host.padding)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert lora.scale == pytest.approx(eff_alpha / dim)
    assert float(lora.alpha) == pytest.approx(eff_alpha)
    lora.restore()


def test_init_matches_kohya():
    host = nn.Conv2d(6, 8, 3, stride=2, padding=1)
    torch.manual_seed(123)
    lora = LoRAModule("x", host, dim=4, alpha=2.0)
    # kohya's draw order: build down, build up (each with torch's default init), then
    # kaiming_uniform_(a=sqrt(5)) on down -- so a seed gives kohya's very init
    torch.manual_seed(123)
    ref_down = nn.Conv2d(6, 4, 3, 2, 1, bias=False)
    nn.Conv2d(4, 8, 1, bias=False)
    nn.init.kaiming_uniform_(ref_down.weight, a=math.sqrt(5))
    ref_w = ref_down.weight
    torch.testing.assert_close(lora.lora_down.weight, ref_w)
    assert torch.count_nonzero(lora.lora_up.weight) == 0
    assert lora.lora_down.kernel_size == (3, 3) and lora.lora_down.stride == (2, 2)
    assert lora.lora_down.padding == (1, 1) and lora.lora_up.kernel_size == (1, 1)
    assert lora.lora_down.bias is None and lora.lora_up.bias is None
    assert set(lora.state_dict()) == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert lora.alpha.dtype == torch.float32 and lora.alpha.ndim == 0


def test_fresh_lora_changes_nothing():
    host = nn.Linear(8, 8)
    x = torch.randn(3, 8)
    before = host(x)
    lora = LoRAModule("x", host, dim=2)
    lora.apply()
    assert torch.equal(host(x), before)


def _snapshot(module: nn.Module):
    return {
        "dict": dict(module.__dict__),
        "params": {k: v.detach().clone() for k, v in module.named_parameters()},
        "buffers": {k: v.detach().clone() for k, v in module.named_buffers()},
        "tree": [(n, type(m)) for n, m in module.named_modules()],
        "class": type(module),
        "grad": {k: v.requires_grad for k, v in module.named_parameters()},
        "training": module.training,
    }


def _assert_same(a, b):
    assert a["class"] is b["class"]
    assert a["tree"] == b["tree"]
    assert a["grad"] == b["grad"]
    assert a["training"] == b["training"]
    assert a["params"].keys() == b["params"].keys() and a["buffers"].keys() == b["buffers"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k])
    for k in a["buffers"]:
        assert torch.equal(a["buffers"][k], b["buffers"][k])
    assert a["dict"].keys() == b["dict"].keys()


def test_apply_leaves_host_structure_and_restore_is_exact():
    host = nn.Conv2d(4, 4, 3, padding=1)
    host.weight.requires_grad_(False)
    before = _snapshot(host)
    lora = LoRAModule("x", host, dim=2)
    _randomize_up(lora)
    lora.apply()
    during = _snapshot(host)
    # only an instance ``forward`` is added while applied: no params, buffers, children
    assert set(during["dict"]) - set(before["dict"]) == {"forward"}
    assert during["tree"] == before["tree"] and during["params"].keys() == before["params"].keys()
    assert "forward" not in type(host).__dict__ or host.forward != type(host).forward

    # LoRA is not registered in the host and the host is not registered in the LoRA
    assert all(not isinstance(m, LoRAModule) for m in host.modules())
    assert set(dict(lora.named_modules())) == {"", "lora_down", "lora_up"}

    lora.restore()
    _assert_same(before, _snapshot(host))
    assert "forward" not in host.__dict__
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(host(x), F.conv2d(x, host.weight, host.bias, padding=1))


def test_restore_puts_back_an_existing_instance_forward():
    host = nn.Linear(4, 4)
    calls = []

    def custom(x):
        calls.append(1)
        return x * 2

    host.forward = custom
    lora = LoRAModule("x", host, dim=2)
    _randomize_up(lora)
    lora.apply()
    x = torch.randn(2, 4)
    want = x * 2 + lora.lora_up(lora.lora_down(x)) * lora.scale
    torch.testing.assert_close(host(x), want)
    assert calls == [1]
    lora.restore()
    assert host.__dict__["forward"] is custom


def test_restore_refuses_when_wrapped_over():
    host = nn.Linear(4, 4)
    lora = LoRAModule("x", host, dim=2)
    lora.apply()
    host.forward = lambda x: x
    with pytest.raises(RuntimeError):
        lora.restore()


def test_apply_and_restore_are_idempotent():
    host = nn.Linear(4, 4)
    lora = LoRAModule("x", host, dim=2)
    _randomize_up(lora)
    lora.apply()
    lora.apply()
    x = torch.randn(2, 4)
    torch.testing.assert_close(host(x), F.linear(x, host.weight, host.bias) + lora.lora_up(lora.lora_down(x)) * lora.scale)
    lora.restore()
    lora.restore()
    assert "forward" not in host.__dict__


class ForgeLikeLinear(nn.Module):
    """A Linear that is not an nn.Linear subclass (Forge's operations)."""

    def __init__(self, i, o):
        super().__init__()
        self.in_features, self.out_features = i, o
        self.weight = nn.Parameter(torch.randn(o, i))
        self.bias = nn.Parameter(torch.randn(o))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


ForgeLikeLinear.__name__ = "Linear"


def test_non_torch_linear_host():
    host = ForgeLikeLinear(6, 5)
    lora = LoRAModule("x", host, dim=3, alpha=3)
    assert isinstance(lora.lora_down, nn.Linear) and lora.lora_down.in_features == 6
    _randomize_up(lora)
    lora.apply()
    x = torch.randn(2, 6)
    w = _merged(host, lora.lora_up.weight, lora.lora_down.weight, 3, 3)
    torch.testing.assert_close(host(x).double(), F.linear(x.double(), w, host.bias.double()), rtol=1e-5, atol=1e-5)


def test_low_precision_host_keeps_its_dtype_and_lora_stays_fp32():
    host = nn.Linear(8, 8).to(torch.bfloat16)
    lora = LoRAModule("x", host, dim=4)
    _randomize_up(lora)
    assert lora.lora_down.weight.dtype == torch.float32
    lora.apply()
    x = torch.randn(3, 8).to(torch.bfloat16)
    out = host(x)
    assert out.dtype == torch.bfloat16
    want = F.linear(x, host.weight, host.bias).float() + lora.lora_up(lora.lora_down(x.float())) * lora.scale
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
    # under autocast the LoRA computes in the autocast dtype and gradients reach the fp32 weights
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = host(x.float())
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert lora.lora_up.weight.grad is not None and lora.lora_up.weight.grad.dtype == torch.float32


def test_given_dtype():
    lora = LoRAModule("x", nn.Linear(4, 4), dim=2, dtype=torch.bfloat16)
    assert lora.lora_down.weight.dtype == torch.bfloat16 and lora.alpha.dtype == torch.float32


def test_dropouts():
    torch.manual_seed(0)
    host = nn.Linear(16, 16)
    x = torch.randn(4, 7, 16)
    org = F.linear(x, host.weight, host.bias)

    lora = LoRAModule("x", host, dim=8, module_dropout=1.0, dropout=0.5, rank_dropout=0.5)
    _randomize_up(lora)
    lora.apply()
    lora.train()
    assert torch.equal(host(x), org)  # module dropout 1: always skipped in training
    lora.eval()
    clean = org + lora.lora_up(lora.lora_down(x)) * lora.scale
    torch.testing.assert_close(host(x), clean)  # no dropout at all in eval
    lora.restore()

    lora = LoRAModule("x", host, dim=8, rank_dropout=0.5)
    _randomize_up(lora)
    lora.apply()
    lora.train()
    torch.manual_seed(5)
    got = host(x)
    torch.manual_seed(5)
    mask = (torch.rand(4, 8) > 0.5).unsqueeze(1)  # one mask per sample and rank, shared over tokens
    want = org + lora.lora_up(lora.lora_down(x) * mask) * (lora.scale / 0.5)
    torch.testing.assert_close(got, want)


def test_multiplier_and_enabled():
    host = nn.Linear(4, 4)
    lora = LoRAModule("x", host, dim=2)
    _randomize_up(lora)
    lora.apply()
    x = torch.randn(2, 4)
    org = F.linear(x, host.weight, host.bias)
    lora.multiplier = 0.0
    assert torch.equal(host(x), org)
    lora.multiplier = 1.0
    lora.enabled = False
    assert torch.equal(host(x), org)


def test_loading_another_alpha_updates_scale():
    lora = LoRAModule("x", nn.Linear(4, 4), dim=4, alpha=1.0)
    sd = lora.state_dict()
    sd["alpha"] = torch.tensor(8.0, dtype=torch.float16)
    lora.load_state_dict(sd)
    assert lora.scale == 2.0 and lora.alpha.dtype == torch.float32


def test_rejects_zero_dim():
    with pytest.raises(ValueError):
        LoRAModule("x", nn.Linear(4, 4), dim=0)
