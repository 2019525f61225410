"""Metrics against known values, and the behaviour each loss exists for."""

from __future__ import annotations

import math

import pytest
import torch

from learn.data import DataError
from learn.losses import build_loss, colour_loss, l1_loss, l2_loss, ms_ssim_loss, shift_l1_loss, ssim_loss
from learn.metrics import LPIPS, load_lpips, psnr, ssim


def test_psnr_of_a_constant_error_of_a_tenth_is_20_db():
    t = torch.full((2, 3, 8, 8), 0.5)
    torch.testing.assert_close(psnr(t + 0.1, t), torch.tensor([20.0, 20.0]))


def test_psnr_counts_only_masked_pixels():
    t = torch.zeros(1, 3, 8, 8)
    p = t.clone()
    p[..., :4] = 0.01   # MSE 1e-4 where valid -> 40 dB
    p[..., 4:] = 0.9    # garbage where the mask says invalid
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    torch.testing.assert_close(psnr(p, t, mask), torch.tensor([40.0]))


def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 3, 24, 24)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))


@pytest.mark.parametrize("a,b", [(0.2, 0.6), (0.5, 0.5), (0.9, 0.1)])
def test_ssim_of_constant_images_is_the_luminance_term(a, b):
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    x, y = torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)
    assert float(ssim(x, y)[0]) == pytest.approx(expected, rel=1e-3)  # float32 variances


def test_lpips_without_weights_is_unavailable_not_substituted():
    assert load_lpips(None) is None


def test_lpips_loads_user_weights_and_scores_identical_images_zero(tmp_path):
    torch.manual_seed(0)
    state = {}
    for idx, (cin, cout, k) in zip([0, 3, 6, 8, 10], [(3, 64, 11), (64, 192, 5), (192, 384, 3), (384, 256, 3),
                                                     (256, 256, 3)]):
        state[f"features.{idx}.weight"] = torch.randn(cout, cin, k, k) * 0.05
        state[f"features.{idx}.bias"] = torch.zeros(cout)
    for i, c in enumerate([64, 192, 384, 256, 256]):
        state[f"lin{i}.model.1.weight"] = torch.rand(1, c, 1, 1)
    path = tmp_path / "alex_lpips.pth"
    torch.save(state, path)
    metric = load_lpips(path)
    x, y = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    assert float(metric(x, x)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(metric(x, y)[0]) > 0
    del state["lin4.model.1.weight"]
    torch.save(state, path)
    with pytest.raises(DataError, match="lin4"):
        LPIPS(path)


def test_missing_lpips_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="nope.pth: LPIPS weights file not found"):
        load_lpips(tmp_path / "nope.pth")


@pytest.mark.parametrize("fn", [l1_loss, l2_loss])
def test_pixel_losses_ignore_pixels_outside_the_mask(fn):
    t = torch.zeros(1, 3, 8, 8)
    p = t.clone()
    p[..., 4:] = 1.0
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    assert float(fn(p, t, mask)) == 0.0
    assert float(fn(p, t)) == pytest.approx(0.5)


def test_l2_loss_is_the_mean_squared_error_psnr_measures():
    t = torch.full((1, 3, 8, 8), 0.5)
    p = t + 0.1
    assert float(l2_loss(p, t)) == pytest.approx(0.01)
    assert float(psnr(p, t)[0]) == pytest.approx(-10 * math.log10(float(l2_loss(p, t))), abs=1e-4)


def test_shift_tolerant_l1_forgives_a_small_misalignment_that_l1_punishes():
    torch.manual_seed(0)
    scene = torch.rand(1, 3, 40, 40)
    pred, target = scene[..., 4:36, 4:36], scene[..., 5:37, 2:34]  # target offset by (+1, -2) px
    assert float(l1_loss(pred, target)) > 0.2
    assert float(shift_l1_loss(pred, target, max_shift=2)) == pytest.approx(0.0, abs=1e-7)
    assert float(shift_l1_loss(pred, target, max_shift=1)) > 0.1


def test_colour_loss_ignores_brightness_and_sees_hue():
    x = torch.rand(1, 3, 32, 32) * 0.2 + torch.tensor([0.7, 0.4, 0.1]).view(1, 3, 1, 1)
    assert float(colour_loss(0.5 * x, x)) == pytest.approx(0.0, abs=1e-5)
    assert float(colour_loss(x[:, [2, 0, 1]], x)) > 0.3


@pytest.mark.parametrize("fn", [ssim_loss, ms_ssim_loss])
def test_structural_losses_are_zero_for_identical_and_grow_with_noise(fn):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    assert float(fn(x, x)) == pytest.approx(0.0, abs=1e-5)
    assert float(fn((x + 0.2 * torch.randn_like(x)).clamp(0, 1), x)) > float(fn((x + 0.05 * torch.randn_like(x)).clamp(0, 1), x)) > 0


def test_build_loss_weights_named_terms_and_refuses_unknown_or_perceptual():
    torch.manual_seed(0)
    p, t = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    combined = build_loss({"l1": 2.0, "ssim": 0.5})(p, t)
    assert float(combined) == pytest.approx(float(2 * l1_loss(p, t) + 0.5 * ssim_loss(p, t)), rel=1e-6)
    with pytest.raises(KeyError, match="available"):
        build_loss({"l3": 1.0})
    with pytest.raises(KeyError, match="weights"):
        build_loss({"perceptual": 1.0})
    assert math.isfinite(float(build_loss({"ms_ssim": 1.0, "colour": 0.1, "shift_l1": 1.0})(p, t)))
