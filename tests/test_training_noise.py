import math

import pytest
import torch

from lora_trainer.training import noise as nz


def _alphas_cumprod():
    # SD's scaled-linear schedule, as DDPMScheduler builds it (float32)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- timesteps


def test_timesteps_default_range_and_seeded_determinism():
    t = nz.sample_timesteps(4096, generator=_gen(3))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    assert t.max() >= 990 and t.min() <= 9
    assert torch.equal(t, torch.randint(0, 1000, (4096,), generator=_gen(3)))
    assert torch.equal(t, nz.sample_timesteps(4096, generator=_gen(3)))


def test_timesteps_min_max_half_open():
    t = nz.sample_timesteps(2000, min_timestep=200, max_timestep=300, generator=_gen(1))
    assert t.min() == 200 and t.max() == 299


def test_timesteps_fixed_when_min_not_below_max():
    assert nz.sample_timesteps(5, min_timestep=500, max_timestep=500).tolist() == [500] * 5
    assert nz.sample_timesteps(3, min_timestep=700, max_timestep=400).tolist() == [400] * 3


# ---------------------------------------------------------------- forward process


def test_add_noise_and_v_target_match_ddpm_scheduler():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False
    )
    g = _gen(0)
    x = torch.randn(3, 4, 8, 8, generator=g)
    eps = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    ac = sched.alphas_cumprod.clone()
    assert torch.equal(nz.add_noise(x, eps, t, ac), sched.add_noise(x, eps, t))
    assert torch.equal(nz.v_target(x, eps, t, ac), sched.get_velocity(x, eps, t))


def test_add_noise_closed_form_and_v_inversion():
    ac = _alphas_cumprod().double()
    g = _gen(1)
    x = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 900])
    noisy = nz.add_noise(x, eps, t, ac)
    v = nz.v_target(x, eps, t, ac)
    for i, ti in enumerate(t.tolist()):
        a, s = math.sqrt(ac[ti]), math.sqrt(1 - ac[ti])
        assert torch.allclose(noisy[i], a * x[i] + s * eps[i])
        # x0 = sqrt(ᾱ)·x_t - sqrt(1-ᾱ)·v
        assert torch.allclose(a * noisy[i] - s * v[i], x[i])


# ---------------------------------------------------------------- noise offset


def test_noise_offset_adds_one_value_per_channel():
    latents = torch.randn(2, 4, 6, 6, generator=_gen(0))
    base = torch.randn(2, 4, 6, 6, generator=_gen(1))
    out = nz.apply_noise_offset(latents, base, 0.1, generator=_gen(7))
    expected = base + 0.1 * torch.randn(2, 4, 1, 1, generator=_gen(7))
    assert torch.allclose(out, expected)
    assert nz.apply_noise_offset(latents, base, None) is base


def test_adaptive_noise_scale_grows_offset_with_channel_mean():
    latents = torch.randn(2, 4, 6, 6, generator=_gen(0)) + torch.tensor([2.0, -1.0, 0.0, 0.5]).view(1, 4, 1, 1)
    base = torch.zeros(2, 4, 6, 6)
    out = nz.apply_noise_offset(latents, base, 0.1, adaptive_noise_scale=-0.1, generator=_gen(7))
    z = torch.randn(2, 4, 1, 1, generator=_gen(7))
    scale = (0.1 - 0.1 * latents.mean(dim=(2, 3), keepdim=True).abs()).clamp(min=0)
    assert torch.allclose(out, scale * z)
    assert (scale == 0).any()  # the clamp engaged for the large-mean channel


# ---------------------------------------------------------------- multires (pyramid) noise


def test_pyramid_noise_one_level_is_added_full_res_noise_renormalised():
    base = torch.randn(2, 4, 8, 8, generator=_gen(0))
    out = nz.pyramid_noise_like(base, iterations=1, discount=0.3, generator=_gen(5))
    g = _gen(5)
    torch.rand(1, generator=g)  # the scale factor draw (unused at level 0: r**0 = 1)
    z = torch.randn(2, 4, 8, 8, generator=g)
    expected = (base + z) / (base + z).std()
    assert torch.allclose(out, expected, atol=1e-6)


def test_pyramid_noise_properties():
    base = torch.randn(2, 4, 64, 64, generator=_gen(0))
    before = base.clone()
    out = nz.pyramid_noise_like(base, iterations=6, discount=0.8, generator=_gen(2))
    assert out.shape == base.shape and torch.equal(base, before)  # input untouched
    assert out.std().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(out, nz.pyramid_noise_like(base, iterations=6, discount=0.8, generator=_gen(2)))
    assert not torch.equal(out, nz.pyramid_noise_like(base, iterations=6, discount=0.8, generator=_gen(3)))

    def neighbour_corr(x):
        a, b = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
        return torch.corrcoef(torch.stack([a, b]))[0, 1].item()

    # low-resolution levels make neighbouring pixels correlated; white noise is not
    assert abs(neighbour_corr(base)) < 0.05
    assert neighbour_corr(out) > 0.15


def test_pyramid_noise_stops_at_one_pixel():
    g = _gen(0)
    nz.pyramid_noise_like(torch.randn(1, 1, 4, 4), iterations=1000, discount=0.5, generator=g)
    # level 0 is 4x4; level 1 is int(4 / r) = 1 pixel for r in (2, 4): then it stops,
    # having drawn exactly two scale factors and two noise tensors
    probe = _gen(0)
    torch.rand(1, generator=probe)
    torch.randn((1, 1, 4, 4), generator=probe)
    torch.rand(1, generator=probe)
    torch.randn((1, 1, 1, 1), generator=probe)
    assert torch.equal(g.get_state(), probe.get_state())


# ---------------------------------------------------------------- full sampling


def test_noisy_latents_plain_follows_kohya_draw_order():
    ac = _alphas_cumprod()
    latents = torch.randn(3, 4, 8, 8, generator=_gen(9))
    noise, noisy, t = nz.noisy_latents(latents, ac, generator=_gen(4))
    g = _gen(4)
    expected_noise = torch.randn(3, 4, 8, 8, generator=g)
    expected_t = torch.randint(0, 1000, (3,), generator=g)
    assert torch.equal(noise, expected_noise) and torch.equal(t, expected_t)
    assert torch.equal(noisy, nz.add_noise(latents, noise, t, ac))


def test_noisy_latents_zero_options_are_off():
    ac = _alphas_cumprod()
    latents = torch.randn(2, 4, 8, 8, generator=_gen(9))
    plain = nz.noisy_latents(latents, ac, generator=_gen(4))
    zeroed = nz.noisy_latents(
        latents, ac, generator=_gen(4), noise_offset=0.0, multires_noise_iterations=0, ip_noise_gamma=0.0
    )
    for a, b in zip(plain, zeroed):
        assert torch.equal(a, b)


def test_ip_noise_gamma_perturbs_input_not_target():
    ac = _alphas_cumprod()
    latents = torch.randn(2, 4, 8, 8, generator=_gen(9))
    noise, noisy, t = nz.noisy_latents(latents, ac, generator=_gen(4), ip_noise_gamma=0.1)
    g = _gen(4)
    expected_noise = torch.randn(2, 4, 8, 8, generator=g)
    expected_t = torch.randint(0, 1000, (2,), generator=g)
    extra = torch.randn(2, 4, 8, 8, generator=g)
    assert torch.equal(noise, expected_noise) and torch.equal(t, expected_t)
    assert torch.allclose(noisy, nz.add_noise(latents, noise + 0.1 * extra, t, ac))


def test_noisy_latents_with_offset_and_multires_is_reproducible():
    ac = _alphas_cumprod()
    latents = torch.randn(2, 4, 16, 16, generator=_gen(9))
    kwargs = dict(noise_offset=0.05, adaptive_noise_scale=0.01, multires_noise_iterations=4,
                  multires_noise_discount=0.3, min_timestep=100, max_timestep=200)
    a = nz.noisy_latents(latents, ac, generator=_gen(4), **kwargs)
    b = nz.noisy_latents(latents, ac, generator=_gen(4), **kwargs)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert a[0].std().item() == pytest.approx(1.0, abs=1e-5)  # multires renormalises last
    assert ((a[2] >= 100) & (a[2] < 200)).all()
