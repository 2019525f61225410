"""The model contract: shapes, ranges, parameter budgets, the conditional-kernel formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import learn.models as lm
from learn.models.blocks import cumulative_histogram, quantiles_from_histogram
from learn.models.pac import pac_conv2d

MODES = [pytest.param({}, 4, 2, id="raw"), pytest.param({"in_channels": 3, "upscale": 1}, 3, 1, id="rgb")]


def test_registry_lists_the_four_required_models():
    assert {"ckisp", "unet", "pac", "plain"} <= set(lm.available())


def test_unknown_model_name_raises_keyerror_listing_available():
    with pytest.raises(KeyError, match="ckisp"):
        lm.create("no-such-model")


@pytest.mark.parametrize("name", lm.available())
@pytest.mark.parametrize("kwargs,cin,scale", MODES)
@pytest.mark.parametrize("size", [(16, 24), (13, 21)])
def test_model_maps_input_to_upscaled_srgb_in_unit_range(name, kwargs, cin, scale, size):
    torch.manual_seed(0)
    model = lm.create(name, **kwargs).eval()
    x = torch.rand(2, cin, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, scale * size[0], scale * size[1])
    assert y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("name", lm.available())
def test_model_gradients_reach_every_parameter(name):
    model = lm.create(name, in_channels=3, upscale=1)
    x = torch.rand(1, 3, 16, 16)
    (model(x) - 0.5).pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("kwargs", [{}, {"in_channels": 3, "upscale": 1}])
def test_ckisp_has_under_a_million_parameters_and_a_tenth_of_sid(kwargs):
    ck = lm.count_parameters(lm.create("ckisp", **kwargs))
    sid = lm.count_parameters(lm.create("unet", **kwargs))
    assert ck < 1_000_000
    assert ck <= sid / 10
    assert 7_000_000 < sid < 8_500_000  # SID's U-Net is about 7.8 M parameters


@pytest.mark.parametrize("kwargs", [{}, {"in_channels": 3, "upscale": 1}])
def test_plain_cnn_matches_ckisp_parameter_count_within_ten_percent(kwargs):
    ck = lm.count_parameters(lm.create("ckisp", **kwargs))
    plain = lm.count_parameters(lm.create("plain", **kwargs))
    assert abs(plain - ck) / ck < 0.10


def _explicit_kernel_sum(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Y_i = sum_j W_i[i-j] X_j + b_i by loops; x (C,H,W), w (H,W,O,C,k,k), b (O,H,W), replicate border."""
    c, h, wd = x.shape
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p)), mode="edge")
    y = np.zeros((w.shape[2], h, wd))
    for yy in range(h):
        for xx in range(wd):
            window = xp[:, yy: yy + k, xx: xx + k]  # X_j for j = i + (dy - p, dx - p)
            y[:, yy, xx] = np.einsum("ocij,cij->o", w[yy, xx], window) + b[:, yy, xx]
    return y


@pytest.mark.parametrize("kwargs", [{"kernel_size": 3}, {"in_channels": 3, "upscale": 1, "kernel_size": 5}])
def test_ckisp_kernel_path_equals_the_explicit_per_pixel_kernel_sum(kwargs):
    torch.manual_seed(1)
    model = lm.create("ckisp", n_basis=3, **kwargs).double()
    with torch.no_grad():
        model.basis.weight.normal_()
        model.basis.bias.normal_()
    cin = kwargs.get("in_channels", 4)
    x = torch.rand(1, cin, 8, 8, dtype=torch.float64)
    a = torch.randn(1, 3, 8, 8, dtype=torch.float64)  # per-position mixing weights, varying everywhere
    with torch.no_grad():
        fast = model.apply_kernels(x, a)[0].numpy()
        w, b = model.kernels(a)
    slow = _explicit_kernel_sum(x[0].numpy(), w[0].numpy(), b[0].numpy())
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-10)


def test_ckisp_with_a_fixed_predicted_kernel_is_that_convolution():
    torch.manual_seed(2)
    model = lm.create("ckisp", in_channels=3, upscale=1, colour_path=False).double().eval()
    with torch.no_grad():
        model.basis.weight.normal_(std=0.1)
        model.mixer.head.weight.zero_()
        model.mixer.head.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0, 0, 0, 0, 0.25]))
        x = torch.rand(1, 3, 16, 16, dtype=torch.float64) * 0.3 + 0.3
        w, b = model.kernels(model.mixing_weights(x))
        expected = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), w[0, 0, 0], b[0, :, 0, 0]).clamp(0, 1)
        torch.testing.assert_close(model(x), expected)


def test_ckisp_output_is_kernel_path_plus_colour_path():
    torch.manual_seed(3)
    model = lm.create("ckisp", in_channels=3, upscale=1).eval()
    x = torch.rand(1, 3, 16, 16) * 0.5
    with torch.no_grad():
        y = model.apply_kernels(x, model.mixing_weights(x)) + model.colour(x, model.statistics(x))
        torch.testing.assert_close(model(x), y.clamp(0, 1))


def test_ckisp_without_a_per_image_correction_applies_one_colour_map_to_every_image():
    torch.manual_seed(4)
    model = lm.create("ckisp", colour_hidden=0).eval()
    with torch.no_grad():
        model.colour.base.normal_()
        dark, bright = torch.rand(1, 4, 8, 8) * 0.1, torch.rand(1, 4, 8, 8) * 0.1 + 0.8
        same = model.colour.coefficients(torch.cat([model.statistics(dark), model.statistics(bright)]))
    torch.testing.assert_close(same[0], same[1])
    torch.testing.assert_close(same[0], model.colour.base)
    assert lm.count_parameters(model) < lm.count_parameters(lm.create("ckisp"))


def test_cumulative_histogram_is_additive_over_tiles():
    torch.manual_seed(5)
    x = torch.rand(2, 4, 10, 16) * 1.4 - 0.1
    th = torch.linspace(-0.05, 1.55, 129)
    left, right = cumulative_histogram(x[..., :6], th), cumulative_histogram(x[..., 6:], th)
    torch.testing.assert_close((6 * left + 10 * right) / 16, cumulative_histogram(x, th))
    assert torch.all(cumulative_histogram(x, th).diff(dim=1) >= 0)


@pytest.mark.parametrize("levels", [(0.5,), (0.1, 0.9, 0.99, 0.995)])
def test_quantiles_from_the_histogram_are_the_image_quantiles_within_a_threshold_step(levels):
    torch.manual_seed(6)
    x = torch.rand(3, 4, 40, 40) ** torch.tensor([0.5, 1.0, 3.0])[:, None, None, None]
    th = torch.linspace(-0.05, 1.55, 129)
    q = quantiles_from_histogram(cumulative_histogram(x, th), th, torch.tensor(levels))
    exact = torch.quantile(x.flatten(1), torch.tensor(levels), dim=1).T
    assert torch.all((q - exact).abs() <= float(th[1] - th[0]))


def test_ckisp_colour_correction_reads_the_quantiles_beside_the_means():
    torch.manual_seed(7)
    model = lm.create("ckisp", colour_quantiles=(0.5, 0.995)).eval()
    t = model.colour.terms
    with torch.no_grad():
        model.colour.mlp[-1].weight.normal_()
        x = torch.full((1, 4, 32, 32), 0.3)
        lit = x.clone()
        lit[..., :1, :8] = 1.2  # 0.8 % of the values: past the 99.5th percentile
        plain, bright = model.colour.statistics(x), model.colour.statistics(lit)
        same_means = torch.cat([plain[:, : t - 1], bright[:, t - 1:]], 1)  # only the histogram differs
        q = quantiles_from_histogram(bright[:, t - 1:], model.colour.thresholds, model.colour.levels)
        coef_plain, coef_bright = model.colour.coefficients(plain), model.colour.coefficients(same_means)
    assert float(q[0, 1]) > 1.0  # the highlight is the 99.5th percentile
    assert (coef_plain - coef_bright).abs().max() > 1e-3


def test_a_ckisp_checkpoint_without_quantiles_loads_and_renders_as_trained():
    torch.manual_seed(8)
    old = lm.create("ckisp", colour_quantiles=()).eval()
    with torch.no_grad():
        old.colour.mlp[-1].weight.normal_(0, 0.1)
    new = lm.create("ckisp", colour_quantiles=(0.5, 0.99)).eval()
    new.load_state_dict(old.state_dict())
    x = torch.rand(1, 4, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x))
    assert new.colour.levels.numel() == 0


def test_pac_with_constant_guidance_is_an_ordinary_convolution():
    torch.manual_seed(4)
    x, weight, bias = torch.rand(1, 3, 10, 12), torch.randn(5, 3, 5, 5), torch.randn(5)
    guide = torch.full((1, 2, 10, 12), 0.3)
    expected = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), weight, bias)
    torch.testing.assert_close(pac_conv2d(x, guide, weight, bias), expected, rtol=1e-5, atol=1e-5)


def test_output_clamp_passes_the_gradient_of_out_of_range_values():
    from learn.models.blocks import to_image

    y = torch.tensor([-0.5, 0.3, 1.7, 0.9]).reshape(1, 1, 2, 2).repeat(1, 12, 1, 1).requires_grad_()
    out = to_image(y, 2)
    assert torch.equal(out.detach(), torch.nn.functional.pixel_shuffle(y.detach(), 2).clamp(0, 1))
    out.sum().backward()
    # a hard clamp would give zero gradient at -0.5 and 1.7: an untrained net starting
    # below 0 (a raw-input U-Net does) could never come back
    assert torch.all(y.grad == 1)
