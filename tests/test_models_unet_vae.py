"""Our LDM-layout UNet and VAE against diffusers' own LDM -> diffusers conversion.

diffusers' converter maps every LDM key name onto its modules; a strict load of
the converted tiny checkpoint into diffusers' models plus equal outputs proves
both the key layout and the numerics of our modules.
"""
import re

import pytest
import torch

from lora_trainer.models.ldm_unet import (
    UNET_PREFIX,
    UNetConfig,
    UNetModel,
    strip_prefix,
    timestep_embedding,
    unet_config_from_state_dict,
    unet_from_state_dict,
)
from lora_trainer.models.ldm_vae import VAE_PREFIX, vae_from_state_dict
from lora_trainer.models.tiny import TINY_VAE, tiny_state_dict, tiny_unet_config, tiny_yaml_config

single_file = pytest.importorskip("diffusers.loaders.single_file_utils")
from diffusers import AutoencoderKL as DiffusersVAE  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

ATOL = 2e-5


@pytest.fixture(scope="module")
def checkpoints():
    return {arch: tiny_state_dict(arch, seed=3) for arch in ("sd1", "sd2", "sdxl")}


def _diffusers_unet(arch: str, sd: dict, ours: UNetConfig) -> UNet2DConditionModel:
    config = single_file.create_unet_diffusers_config_from_ldm(tiny_yaml_config(arch), sd)
    if arch == "sdxl":
        # diffusers' config builder knows SDXL only by its real sizes: it spots
        # text_time conditioning by context_dim 2048/1280 and derives head counts
        # as model_channels // num_head_channels (0 for a 32-channel model)
        config.update(
            class_embed_type=None,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            attention_head_dim=[max(1, ours.model_channels * m // ours.num_head_channels) for m in ours.channel_mult],
        )
    converted = single_file.convert_ldm_unet_checkpoint(sd, config)
    model = UNet2DConditionModel(**config)
    model.load_state_dict({k: v.float() for k, v in converted.items()}, strict=True)
    return model.eval()


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_unet_matches_diffusers(arch, checkpoints):
    sd = checkpoints[arch]
    unet_sd = strip_prefix(sd, UNET_PREFIX)
    config = unet_config_from_state_dict(unet_sd, **({"num_head_channels": 32} if arch == "sd2" else {}))
    assert config == tiny_unet_config(arch)
    ours = unet_from_state_dict(unet_sd, config).eval()
    theirs = _diffusers_unet(arch, sd, config)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 8, generator=g)  # non-square: catches h/w mix-ups
    t = torch.tensor([17, 903])
    ctx = torch.randn(2, 77, config.context_dim, generator=g)
    kwargs, y = {}, None
    if arch == "sdxl":
        pooled = torch.randn(2, config.adm_in_channels - 6 * 256, generator=g)
        time_ids = torch.tensor([[1024.0, 512, 0, 64, 1024, 512], [512.0, 768, 32, 0, 512, 768]])
        # sgm's y: pooled te2 output, then each size number as a 256-wide sinusoid
        y = torch.cat([pooled, timestep_embedding(time_ids.flatten(), 256).reshape(2, -1)], dim=1)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    with torch.no_grad():
        out = ours(x, t, ctx, y=y)
        ref = theirs(x, t, encoder_hidden_states=ctx, **kwargs).sample
    assert out.shape == x.shape
    assert ref.abs().mean() > 0.05  # a non-trivial output, or the comparison proves nothing
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=1e-4)


def test_unet_rejects_missing_or_spurious_y(checkpoints):
    xl = unet_from_state_dict(strip_prefix(checkpoints["sdxl"], UNET_PREFIX))
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([5])
    with pytest.raises(ValueError, match="y must be given"):
        xl(x, t, torch.randn(1, 77, xl.config.context_dim))


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_vae_matches_diffusers(arch, checkpoints):
    sd = checkpoints[arch]
    ours = vae_from_state_dict(strip_prefix(sd, VAE_PREFIX)).eval()
    assert ours.config == TINY_VAE
    config = single_file.create_vae_diffusers_config_from_ldm(tiny_yaml_config(arch), sd)
    theirs = DiffusersVAE(**config)
    theirs.load_state_dict({k: v.float() for k, v in single_file.convert_ldm_vae_checkpoint(sd, config).items()},
                           strict=True)
    theirs.eval()

    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(2, 3, 64, 48, generator=g) * 2 - 1
    with torch.no_grad():
        dist, ref = ours.encode(pixels), theirs.encode(pixels).latent_dist
        assert dist.mean.shape == (2, 4, 8, 6)
        torch.testing.assert_close(dist.mean, ref.mean, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(dist.logvar, ref.logvar, atol=ATOL, rtol=1e-4)
        z = torch.randn(2, 4, 8, 6, generator=g)
        decoded = ours.decode(z)
        assert decoded.shape == (2, 3, 64, 48)
        torch.testing.assert_close(decoded, theirs.decode(z).sample, atol=ATOL, rtol=1e-4)
    # sample() is mean + std * noise, as diffusers' latent_dist.sample()
    a = dist.sample(torch.Generator().manual_seed(5))
    b = ref.sample(torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)
    assert not torch.allclose(a, dist.mean)


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_gradient_checkpointing_changes_nothing(arch, checkpoints):
    unet = unet_from_state_dict(strip_prefix(checkpoints[arch], UNET_PREFIX)).train()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([100, 700])
    ctx = torch.randn(2, 77, unet.config.context_dim, generator=g)
    y = torch.randn(2, unet.config.adm_in_channels, generator=g) if arch == "sdxl" else None

    calls = []
    # a pre-hook: non-reentrant recomputation may stop before a block finishes
    unet.input_blocks[4].register_forward_pre_hook(lambda *a: calls.append(1))

    def run(enabled):
        unet.set_gradient_checkpointing(enabled)
        unet.zero_grad(set_to_none=True)
        calls.clear()
        xi = x.clone().requires_grad_(True)
        out = unet(xi, t, ctx, y=y)
        out.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in unet.named_parameters()}
        return out.detach(), xi.grad, grads, len(calls)

    out0, gx0, grads0, calls0 = run(False)
    out1, gx1, grads1, calls1 = run(True)
    # the block really ran again during backward, so checkpointing was in effect
    assert (calls0, calls1) == (1, 2)
    torch.testing.assert_close(out1, out0, atol=0, rtol=0)
    torch.testing.assert_close(gx1, gx0, atol=1e-7, rtol=1e-5)
    assert grads1.keys() == grads0.keys() and len(grads0) > 100
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-7, rtol=1e-5, msg=name)
    # no graph is kept for checkpointed blocks under no_grad either
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, ctx, y=y), out0, atol=0, rtol=0)


def _pattern(keys):
    return {re.sub(r"transformer_blocks\.\d+\.", "transformer_blocks.K.", k) for k in keys}


@pytest.mark.parametrize("arch,real", [
    ("sd1", UNetConfig(320, (1, 2, 4, 4), 2, (1, 1, 1, 0), 1, 768, False, num_heads=8)),
    ("sd2", UNetConfig(320, (1, 2, 4, 4), 2, (1, 1, 1, 0), 1, 1024, True, num_head_channels=64)),
    ("sdxl", UNetConfig(320, (1, 2, 4), 2, (0, 2, 10), 10, 2048, True, num_head_channels=64, adm_in_channels=2816)),
])
def test_tiny_unet_keeps_the_real_key_pattern(arch, real, checkpoints):
    with torch.device("meta"):
        real_keys = UNetModel(real).state_dict().keys()
    tiny_keys = strip_prefix(checkpoints[arch], UNET_PREFIX).keys()
    assert _pattern(tiny_keys) == _pattern(real_keys)
    # the real SD1 block indices the WebUIs hard-code
    if arch == "sd1":
        assert {"input_blocks.4.0.skip_connection.weight", "input_blocks.8.1.proj_out.weight",
                "output_blocks.11.1.proj_in.weight", "middle_block.1.proj_out.weight"} <= set(tiny_keys)
    if arch == "sdxl":
        assert "output_blocks.0.1.transformer_blocks.1.attn2.to_k.weight" in tiny_keys
        assert "input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight" not in tiny_keys


def test_real_sdxl_config_is_inferred():
    real = UNetConfig(320, (1, 2, 4), 2, (0, 2, 10), 10, 2048, True, num_head_channels=64, adm_in_channels=2816)
    with torch.device("meta"):
        sd = UNetModel(real).state_dict()
    assert unet_config_from_state_dict(sd) == real
    assert real.attention_resolutions == [2, 4]
    assert real.heads_for(640) == (10, 64) and real.heads_for(1280) == (20, 64)
    sd1 = UNetConfig(320, (1, 2, 4, 4), 2, (1, 1, 1, 0), 1, 768, False, num_heads=8)
    assert sd1.heads_for(1280) == (8, 160)


def test_timestep_embedding_is_ldms():
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 1, 250, 999])
    ours = timestep_embedding(t, 320)
    # LDM: cos first, frequencies exp(-ln(10000) * i / half)
    ref = get_timestep_embedding(t, 320, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(ours, ref)
    assert torch.equal(ours[0, :160], torch.ones(160))


def test_unet_runs_in_half_precision_without_autocast(checkpoints):
    unet = unet_from_state_dict(strip_prefix(checkpoints["sd1"], UNET_PREFIX)).eval()
    g = torch.Generator().manual_seed(4)
    x, ctx, t = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g), torch.tensor([50])
    with torch.no_grad():
        ref = unet(x, t, ctx)
        out = unet.to(torch.bfloat16)(x.bfloat16(), t, ctx.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean()
