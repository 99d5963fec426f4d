"""LoRANetwork on the tiny models: merge fidelity, hand-back, weights, optimizer groups."""
import copy
import re

import pytest
import torch
from torch import nn

from lora_trainer.models.tiny import build_tiny_model
from lora_trainer.networks import LoRANetwork
from lora_trainer.networks.io import save_network

KEY = re.compile(r"^lora_(unet|te|te1|te2)_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


@pytest.fixture(scope="module")
def tiny():
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = build_tiny_model(arch, seed=0)
        return cache[arch]

    return get


def randomize(network: LoRANetwork, seed: int = 0, std: float = 0.2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in network.all_loras():
            for p in (lora.lora_up.weight, lora.lora_down.weight):
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def delta_of(up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """up @ down in the host weight's shape, computed independently of lora.py."""
    up, down = up.double(), down.double()
    if down.ndim == 2:
        return up @ down
    o, r = up.shape[:2]
    _, i, kh, kw = down.shape
    return (up.reshape(o, r) @ down.reshape(r, i * kh * kw)).reshape(o, i, kh, kw)


def merge_into(root: nn.Module, network: LoRANetwork, root_name: str) -> None:
    """Fold every LoRA of ``root_name`` into the weights of ``root`` (a copy of the host)."""
    modules = dict(root.named_modules())
    with torch.no_grad():
        for lora in network.all_loras():
            target = network.targets[lora.lora_name]
            if target.root != root_name:
                continue
            dim = lora.lora_down.weight.shape[0]
            alpha = float(lora.alpha)
            w = modules[target.path].weight
            merged = w.double() + lora.multiplier * alpha / dim * delta_of(lora.lora_up.weight, lora.lora_down.weight)
            w.copy_(merged.to(w.dtype))


def unet_inputs(model, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cfg = model.unet.config
    x = torch.randn(batch, 4, 8, 8, generator=gen)
    t = torch.tensor([50, 700])[:batch]
    ctx = torch.randn(batch, 7, cfg.context_dim, generator=gen)
    y = torch.randn(batch, cfg.adm_in_channels, generator=gen) if cfg.adm_in_channels else None
    return x, t, ctx, y


def run_unet(unet, inputs):
    x, t, ctx, y = inputs
    with torch.no_grad():
        return unet(x, t, ctx, y) if y is not None else unet(x, t, ctx)


def run_te(te_model, ids):
    with torch.no_grad():
        return te_model(input_ids=ids, output_hidden_states=True).last_hidden_state


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
@pytest.mark.parametrize("conv_dim", [None, 3])
def test_applied_network_equals_merged_weights(tiny, arch, conv_dim):
    model = tiny(arch)
    network = LoRANetwork.from_model(model, network_dim=4, network_alpha=2.0, conv_dim=conv_dim, conv_alpha=1.5)
    network.set_multiplier(0.8)
    randomize(network)
    inputs = unet_inputs(model)
    ids = torch.randint(0, 49407, (2, 77), generator=torch.Generator().manual_seed(3))

    merged_unet = copy.deepcopy(model.unet)
    merge_into(merged_unet, network, "unet")
    merged_tes = []
    for te in model.text_encoders:
        m = copy.deepcopy(te.model)
        merge_into(m, network, te.name)
        merged_tes.append(m)

    base = run_unet(model.unet, inputs)
    with network.apply():
        applied = run_unet(model.unet, inputs)
        applied_te = [run_te(te.model, ids) for te in model.text_encoders]
    want = run_unet(merged_unet, inputs)

    assert (applied - base).abs().max() > 1e-2  # the LoRA really changes the output
    torch.testing.assert_close(applied, want, rtol=1e-4, atol=1e-4)
    for got, m in zip(applied_te, merged_tes):
        torch.testing.assert_close(got, run_te(m, ids), rtol=1e-4, atol=1e-4)
    if conv_dim:
        assert any(lora.lora_down.kernel_size == (3, 3) for lora in network.unet_loras)


def snapshot(root: nn.Module):
    return {
        "state": {k: v.detach().clone() for k, v in root.state_dict(keep_vars=False).items()},
        "tree": [(n, type(m)) for n, m in root.named_modules()],
        "grad": [(n, p.requires_grad) for n, p in root.named_parameters()],
        "training": [(n, m.training) for n, m in root.named_modules()],
        "dicts": [(n, sorted(m.__dict__)) for n, m in root.named_modules()],
        "ids": [(n, id(p)) for n, p in root.named_parameters()],
    }


def assert_same(a, b):
    for key in ("tree", "grad", "training", "dicts", "ids"):
        assert a[key] == b[key], key
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_model_is_handed_back_bit_identical(tiny, arch):
    model = tiny(arch)
    roots = [model.unet] + [te.model for te in model.text_encoders]
    before = [snapshot(r) for r in roots]
    inputs = unet_inputs(model)
    base = run_unet(model.unet, inputs)

    network = LoRANetwork.from_model(model, network_dim=4, conv_dim=2)
    randomize(network)
    network.train()
    groups, _ = network.prepare_optimizer_params(unet_lr=1e-3, text_encoder_lr=1e-3, default_lr=1e-3)
    opt = torch.optim.SGD(groups, lr=1e-3)
    with network.apply():
        x, t, ctx, y = inputs
        out = model.unet(x, t, ctx, y) if y is not None else model.unet(x, t, ctx)
        out.square().mean().backward()
        opt.step()
    assert not network.is_applied
    for r, b in zip(roots, before):
        assert_same(b, snapshot(r))
        assert all(p.grad is None for p in r.parameters())
    assert torch.equal(run_unet(model.unet, inputs), base)

    # an exception inside the block restores too
    with pytest.raises(KeyError):
        with network:
            raise KeyError("boom")
    for r, b in zip(roots, before):
        assert_same(b, snapshot(r))


def test_network_does_not_adopt_host_modules(tiny):
    model = tiny("sd1")
    network = LoRANetwork.from_model(model, network_dim=2)
    own = sum(p.numel() for p in network.parameters())
    expected = sum(l.lora_down.weight.numel() + l.lora_up.weight.numel() for l in network.all_loras())
    assert own == expected
    assert all(KEY.match(k) for k in network.state_dict())
    network.to(torch.bfloat16)  # moves LoRA weights only
    assert next(model.unet.parameters()).dtype == torch.float32


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_state_dict_is_kohya_format(tiny, arch):
    model = tiny(arch)
    network = LoRANetwork.from_model(model, network_dim=4, network_alpha=2)
    sd = network.state_dict()
    assert all(KEY.match(k) for k in sd), [k for k in sd if not KEY.match(k)][:3]
    names = {k.split(".")[0] for k in sd}
    for name in names:
        down, up, alpha = sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"], sd[f"{name}.alpha"]
        assert down.shape[0] == 4 and up.shape[1] == 4
        assert alpha.ndim == 0 and float(alpha) == 2.0
    prefixes = {n.split("_")[1] for n in names}
    assert prefixes == ({"unet", "te1", "te2"} if arch == "sdxl" else {"unet", "te"})


def test_train_switches(tiny):
    model = tiny("sdxl")
    unet_only = LoRANetwork.from_model(model, train_text_encoder=False)
    assert unet_only.unet_loras and not unet_only.text_encoder_loras
    assert all(k.startswith("lora_unet_") for k in unet_only.state_dict())
    te_only = LoRANetwork.from_model(model, train_unet=False)
    assert te_only.text_encoder_loras and not te_only.unet_loras
    assert all(k.startswith(("lora_te1_", "lora_te2_")) for k in te_only.state_dict())
    with pytest.raises(ValueError):
        LoRANetwork.from_model(model, train_unet=False, train_text_encoder=False)
    # kohya's defaults: dim 4, alpha 1
    default = LoRANetwork.from_model(model)
    assert {l.lora_dim for l in default.all_loras()} == {4} and {float(l.alpha) for l in default.all_loras()} == {1.0}


def test_optimizer_groups_follow_kohya(tiny):
    model = tiny("sd1")
    network = LoRANetwork.from_model(model, network_dim=2)
    te_params = {id(p) for l in network.text_encoder_loras for p in l.parameters()}
    unet_params = {id(p) for l in network.unet_loras for p in l.parameters()}

    groups, desc = network.prepare_optimizer_params(unet_lr=None, text_encoder_lr=None, default_lr=1e-4)
    assert desc == ["textencoder", "unet"] and [g["lr"] for g in groups] == [1e-4, 1e-4]
    assert {id(p) for p in groups[0]["params"]} == te_params and {id(p) for p in groups[1]["params"]} == unet_params

    groups, desc = network.prepare_optimizer_params(unet_lr=1e-3, text_encoder_lr=5e-5, default_lr=1e-4)
    assert [g["lr"] for g in groups] == [5e-5, 1e-3]

    # text_encoder_lr 0: no text encoder group, its LoRA is left alone (and not differentiated)
    groups, desc = network.prepare_optimizer_params(unet_lr=1e-3, text_encoder_lr=0, default_lr=1e-4)
    assert desc == ["unet"] and not network.trains_text_encoder
    assert all(not p.requires_grad for l in network.text_encoder_loras for p in l.parameters())

    # LoRA+: up weights in their own group at lr * ratio
    groups, desc = network.prepare_optimizer_params(unet_lr=1e-3, text_encoder_lr=None, default_lr=1e-4,
                                                    loraplus_lr_ratio=16)
    assert desc == ["textencoder", "textencoder plus", "unet", "unet plus"]
    assert [g["lr"] for g in groups] == [1e-4, 1e-4 * 16, 1e-3, 1e-3 * 16]
    ups = {id(l.lora_up.weight) for l in network.unet_loras}
    assert {id(p) for p in groups[3]["params"]} == ups and network.trains_text_encoder


def test_save_load_and_resume(tiny, tmp_path):
    model = tiny("sd1")
    network = LoRANetwork.from_model(model, network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=1)
    randomize(network, seed=1)
    path = tmp_path / "a.safetensors"
    save_network(path, network.state_dict(), {"ss_network_dim": "4"})

    fresh = LoRANetwork.from_model(model, network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=1)
    result = fresh.load_weights(path)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in network.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)

    wrong_rank = LoRANetwork.from_model(model, network_dim=8, conv_dim=2)
    with pytest.raises(ValueError, match="rank"):
        wrong_rank.load_weights(path)

    # a unet-only network ignores the text encoder keys, as kohya's load_weights does
    unet_only = LoRANetwork.from_model(model, network_dim=4, network_alpha=2, conv_dim=2, train_text_encoder=False)
    result = unet_only.load_weights(path)
    assert not result.missing_keys and all(k.startswith("lora_te_") for k in result.unexpected_keys)


def test_from_file_takes_dims_per_module(tiny, tmp_path):
    model = tiny("sdxl")
    network = LoRANetwork.from_model(model, network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=1)
    randomize(network, seed=2)
    sd = {k: v.clone() for k, v in network.state_dict().items()}
    # one module with another rank and an alpha-less one (old files): alpha = rank
    odd = "lora_unet_middle_block_1_proj_in"
    sd[f"{odd}.lora_down.weight"] = torch.randn(6, sd[f"{odd}.lora_down.weight"].shape[1])
    sd[f"{odd}.lora_up.weight"] = torch.randn(sd[f"{odd}.lora_up.weight"].shape[0], 6)
    del sd[f"{odd}.alpha"]
    # and drop one module entirely
    gone = "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
        del sd[gone + suffix]
    path = tmp_path / "b.safetensors"
    save_network(path, sd, {}, dtype=torch.float16)

    loaded = LoRANetwork.from_file(model, path)
    mods = {l.lora_name: l for l in loaded.all_loras()}
    assert gone not in mods and len(mods) == len(network.all_loras()) - 1
    assert mods[odd].lora_dim == 6 and float(mods[odd].alpha) == 6.0 and mods[odd].scale == 1.0
    conv = mods["lora_unet_input_blocks_1_0_in_layers_2"]
    assert conv.lora_dim == 2 and conv.lora_down.kernel_size == (3, 3) and float(conv.alpha) == 1.0
    assert mods["lora_unet_middle_block_1_proj_out"].scale == 0.5
    for k, v in loaded.state_dict().items():
        want = sd[k] if k in sd else torch.tensor(6.0)
        assert torch.equal(v, want.half().float()), k

    bad = dict(sd)
    bad["lora_unet_nothing_here.lora_down.weight"] = torch.zeros(2, 4)
    bad["lora_unet_nothing_here.lora_up.weight"] = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="match nothing"):
        LoRANetwork.from_file(model, bad)


def test_max_norm_regularization(tiny):
    model = tiny("sd1")
    network = LoRANetwork.from_model(model, network_dim=4, network_alpha=2, conv_dim=2, conv_alpha=2)
    randomize(network, seed=3, std=0.3)
    before = {l.lora_name: (l.lora_up.weight.clone(), l.lora_down.weight.clone()) for l in network.all_loras()}

    def norm(up, down, alpha, dim):
        return float((alpha / dim * delta_of(up.detach(), down.detach())).norm())

    norms = {l.lora_name: norm(*before[l.lora_name], float(l.alpha), l.lora_dim) for l in network.all_loras()}
    max_norm = sorted(norms.values())[len(norms) // 2]  # about half get scaled
    scaled, mean, biggest = network.apply_max_norm_regularization(max_norm)

    assert scaled == sum(n > max_norm for n in norms.values())
    after = []
    for l in network.all_loras():
        up0, down0 = before[l.lora_name]
        n = norm(l.lora_up.weight, l.lora_down.weight, float(l.alpha), l.lora_dim)
        after.append(n)
        if norms[l.lora_name] > max_norm:
            assert n == pytest.approx(max_norm, rel=1e-4)
            ratio = (max_norm / norms[l.lora_name]) ** 0.5  # split evenly between up and down
            torch.testing.assert_close(l.lora_up.weight, up0 * ratio, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(l.lora_down.weight, down0 * ratio, rtol=1e-4, atol=1e-6)
        else:
            assert torch.equal(l.lora_up.weight, up0) and torch.equal(l.lora_down.weight, down0)
    assert biggest == pytest.approx(max(after), rel=1e-4)
    assert mean == pytest.approx(sum(after) / len(after), rel=1e-4)


# --- a WebUI-like tree whose layers are not torch classes (Forge) ---------------


class Linear(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.in_features, self.out_features = i, o
        self.weight = nn.Parameter(torch.randn(o, i) / i**0.5)
        self.bias = nn.Parameter(torch.randn(o) * 0.1)

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


class CrossAttention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.to_q, self.to_k, self.to_v = Linear(d, d), Linear(d, d), Linear(d, d)
        self.to_out = nn.Sequential(Linear(d, d), nn.Dropout(0.0))

    def forward(self, x):
        a = torch.softmax(self.to_q(x) @ self.to_k(x).transpose(1, 2), -1)
        return self.to_out(a @ self.to_v(x))


class SpatialTransformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.proj_in = nn.Conv2d(c, c, 1)
        self.transformer_blocks = nn.ModuleList([nn.Module()])
        self.transformer_blocks[0].attn1 = CrossAttention(c)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        z = self.proj_in(x).flatten(2).transpose(1, 2)
        z = self.transformer_blocks[0].attn1(z)
        return x + self.proj_out(z.transpose(1, 2).reshape(b, c, h, w))


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.in_layers = nn.Sequential(nn.SiLU(), nn.Identity(), nn.Conv2d(c, c, 3, padding=1))
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Identity(), nn.Identity(), nn.Conv2d(c, c, 3, padding=1))
        self.skip_connection = nn.Identity()

    def forward(self, x):
        return self.skip_connection(x) + self.out_layers(self.in_layers(x))


class FakeUNet(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.input_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(4, c, 3, padding=1)),
                                           nn.Sequential(ResBlock(c), SpatialTransformer(c))])
        self.middle_block = nn.Sequential(ResBlock(c), SpatialTransformer(c), ResBlock(c))
        self.output_blocks = nn.ModuleList([nn.Sequential(ResBlock(c), SpatialTransformer(c))])

    def forward(self, x):
        h = self.input_blocks[1](self.input_blocks[0](x))
        return self.output_blocks[0](self.middle_block(h))


def test_fake_tree_with_non_torch_linear():
    torch.manual_seed(0)
    unet = FakeUNet()
    network = LoRANetwork(unet, [], "sdxl", network_dim=2, conv_dim=2, train_text_encoder=False)
    names = {l.lora_name for l in network.unet_loras}
    assert "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_middle_block_2_out_layers_3" in names
    randomize(network)
    merged = copy.deepcopy(unet)
    merge_into(merged, network, "unet")
    x = torch.randn(2, 4, 6, 6)
    with network:
        got = unet(x)
    torch.testing.assert_close(got, merged(x), rtol=1e-4, atol=1e-4)
    assert all("forward" not in m.__dict__ for m in unet.modules())
