import math

import pytest
import torch

from lora_trainer.training import loss_weighting as lw


def _alphas_cumprod():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


AC = _alphas_cumprod()
# kohya keeps SNR in float32: near t=0, 1-ᾱ loses ~1e-5 relative precision
T = torch.tensor([0, 1, 10, 100, 250, 500, 750, 999])


def _snr(t):
    a = AC[t].item()
    return a / (1 - a)


def test_snr_table_closed_form():
    table = lw.snr_table(AC)
    assert table.dtype == torch.float32
    for t in T.tolist():
        assert table[t].item() == pytest.approx(_snr(t), rel=1e-4)
    assert _snr(0) > 1000 and _snr(999) < 0.01  # the weights below cross both caps


@pytest.mark.parametrize("gamma", [1.0, 5.0, 20.0])
def test_min_snr_weight_epsilon(gamma):
    loss = torch.ones(len(T))
    out = lw.apply_snr_weight(loss, T, AC, gamma, v_prediction=False)
    expected = [min(_snr(t), gamma) / _snr(t) for t in T.tolist()]
    assert out.tolist() == pytest.approx(expected, rel=1e-4)
    assert out[-1].item() == pytest.approx(1.0)  # SNR < γ: unweighted
    assert out[0].item() == pytest.approx(gamma / _snr(0), rel=1e-4)


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weight_v_prediction(gamma):
    loss = torch.full((len(T),), 2.0)
    out = lw.apply_snr_weight(loss, T, AC, gamma, v_prediction=True)
    expected = [2.0 * min(_snr(t), gamma) / (_snr(t) + 1) for t in T.tolist()]
    assert out.tolist() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("v_prediction", [False, True])
def test_debiased_estimation(v_prediction):
    out = lw.apply_debiased_estimation(torch.ones(len(T)), T, AC, v_prediction)
    expected = []
    for t in T.tolist():
        snr = min(_snr(t), 1000.0)  # kohya's cap for t≈0
        expected.append(1 / (snr + 1) if v_prediction else 1 / math.sqrt(snr))
    assert out.tolist() == pytest.approx(expected, rel=1e-4)


def test_scale_v_pred_loss_like_noise_pred():
    out = lw.scale_v_pred_loss_like_noise_pred(torch.ones(len(T)), T, AC)
    expected = [min(_snr(t), 1000) / (min(_snr(t), 1000) + 1) for t in T.tolist()]
    assert out.tolist() == pytest.approx(expected, rel=1e-4)


def test_v_pred_like_loss():
    loss = torch.full((len(T),), 3.0)
    out = lw.add_v_pred_like_loss(loss, T, AC, 0.2)
    expected = []
    for t in T.tolist():
        snr = min(_snr(t), 1000)
        expected.append(3.0 + 3.0 * (snr + 1) / snr * 0.2)
    assert out.tolist() == pytest.approx(expected, rel=1e-4)


def test_apply_all_composes_in_kohya_order():
    loss = torch.ones(len(T))
    out = lw.apply_all(loss, T, AC, v_prediction=True, min_snr_gamma=5.0, scale_v_pred_loss_like_noise_pred=True,
                       debiased_estimation_loss=True)
    expected = []
    for t in T.tolist():
        snr, capped = _snr(t), min(_snr(t), 1000)
        expected.append(min(snr, 5.0) / (snr + 1) * capped / (capped + 1) / (capped + 1))
    assert out.tolist() == pytest.approx(expected, rel=1e-4)
    assert torch.equal(lw.apply_all(loss, T, AC), loss)  # nothing asked: untouched
    # min_snr_gamma=0 is kohya's "off"
    assert torch.equal(lw.apply_all(loss, T, AC, min_snr_gamma=0), loss)


def test_check_loss_options():
    with pytest.raises(ValueError, match="only with v_parameterization"):
        lw.check_loss_options(False, scale_v_pred_loss_like_noise_pred=True)
    with pytest.raises(ValueError, match="cannot be enabled with v_parameterization"):
        lw.check_loss_options(True, v_pred_like_loss=0.1)
    lw.check_loss_options(True, scale_v_pred_loss_like_noise_pred=True)
    lw.check_loss_options(False, v_pred_like_loss=0.1)


# ---------------------------------------------------------------- per-sample reduction


def test_per_sample_l2_mean_over_chw_and_loss_weights():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 4, 5, 5, generator=g)
    target = torch.randn(3, 4, 5, 5, generator=g)
    out = lw.per_sample_loss(pred, target)
    for i in range(3):
        assert out[i].item() == pytest.approx(((pred[i] - target[i]) ** 2).mean().item(), rel=1e-6)
    weighted = lw.per_sample_loss(pred, target, loss_weights=torch.tensor([1.0, 0.5, 2.0]))
    assert torch.allclose(weighted, out * torch.tensor([1.0, 0.5, 2.0]))


def test_per_sample_l1_and_huber():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.full((2, 1, 2, 2), 3.0)
    assert lw.per_sample_loss(pred, target, "l1").tolist() == [3.0, 3.0]
    c = torch.tensor([0.1, 1.0])
    huber = lw.per_sample_loss(pred, target, "huber", huber_threshold=c)
    smooth = lw.per_sample_loss(pred, target, "smooth_l1", huber_threshold=c)
    for i, ci in enumerate(c.tolist()):
        core = math.sqrt(9 + ci**2) - ci
        assert huber[i].item() == pytest.approx(2 * ci * core, rel=1e-6)
        assert smooth[i].item() == pytest.approx(2 * core, rel=1e-6)
    with pytest.raises(ValueError):
        lw.per_sample_loss(pred, target, "huber")


def test_per_sample_mask_area_resized():
    pred = torch.zeros(1, 4, 2, 2)
    target = torch.ones(1, 4, 2, 2)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :] = 1.0  # top half of the image
    assert lw.per_sample_loss(pred, target, mask=mask).item() == pytest.approx(0.5)


def test_huber_c_schedules():
    t = torch.tensor([0, 500, 999])
    const = lw.huber_c(t, AC, "constant", c=0.2, scale=3.0)
    assert const.tolist() == pytest.approx([0.6] * 3)
    expo = lw.huber_c(t, AC, "exponential", c=0.1, scale=2.0)
    assert expo.tolist() == pytest.approx([2.0 * math.exp(math.log(0.1) * ti / 1000) for ti in t.tolist()], rel=1e-6)
    snr = lw.huber_c(t, AC, "snr", c=0.1)
    for i, ti in enumerate(t.tolist()):
        sigma = math.sqrt((1 - AC[ti].item()) / AC[ti].item())
        assert snr[i].item() == pytest.approx(0.9 / (1 + sigma) ** 2 + 0.1, rel=1e-6)
