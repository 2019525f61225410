"""Photometric preparation: look-up tables equal the curves, point-wise blurred hat
features equal blurring the hat images, integer images stay integers, and the
radiometric fit undoes the saturation boost of a DSLR's rendering."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from alignment import rawio
from alignment.ecc import _gauss
from alignment.prepare import (REC709, _mixed, apply_curves, blurred_hat_features, curves_on_grid, curves_on_grid_many,
                               desaturation, encoded_luminance, fit_radiometric, prepare_dslr, shrink)


def _encoded(dtype, shape=(40, 50, 3), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.random(shape).astype(np.float32)
    full = np.iinfo(dtype).max
    return rng.integers(0, full + 1, shape).astype(dtype)


def _as_unit(enc: np.ndarray) -> np.ndarray:
    return enc.astype(np.float64) / (np.iinfo(enc.dtype).max if enc.dtype != np.float32 else 1.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_curves_through_lookup_tables_equal_the_curves(dtype):
    enc = _encoded(dtype)
    curves = np.random.default_rng(1).random((3, 9))
    levels = np.linspace(0, 1, 9)
    unit = _as_unit(enc)
    expected = sum(np.interp(unit[..., c], levels, curves[c]) for c in range(3)) + 0.25
    np.testing.assert_allclose(apply_curves(enc, curves, 0.25), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_encoded_luminance_is_rec709_of_the_inverse_srgb_curve(dtype):
    enc = _encoded(dtype)
    expected = rawio.srgb_to_linear(_as_unit(enc)) @ REC709.astype(np.float64)
    np.testing.assert_allclose(encoded_luminance(enc), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sigma", [1.2, 2.0])
def test_blurred_hat_features_equal_blurring_each_hat_image(sigma):
    enc = _encoded(np.uint8, (120, 140, 3))
    rng = np.random.default_rng(2)
    x = rng.integers(30, 110, 300).astype(float)
    y = rng.integers(30, 90, 300).astype(float)
    feats = blurred_hat_features(enc, x, y, sigma, 9)
    knots = np.linspace(0, 1, 9)
    unit = _as_unit(enc)
    ref = np.stack([
        _gauss(np.interp(unit[..., c], knots, np.eye(9)[k]).astype(np.float32), sigma)[y.astype(int), x.astype(int)]
        for c in range(3) for k in range(9)
    ], 1)
    np.testing.assert_allclose(feats, ref, atol=2e-3)  # both truncate the Gaussian near 3 sigma
    np.testing.assert_allclose(feats.reshape(-1, 3, 9).sum(-1), 1.0, atol=1e-9)  # hats: a partition of unity


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_blurred_hat_features_do_not_depend_on_chunks_or_memory_layout(dtype):
    enc = _encoded(dtype, (120, 140, 3))
    rng = np.random.default_rng(3)
    x, y = rng.uniform(30, 110, 300), rng.uniform(30, 90, 300)
    whole = blurred_hat_features(enc, x, y, 2.0, 9)
    np.testing.assert_allclose(blurred_hat_features(enc, x, y, 2.0, 9, chunk=64), whole, atol=1e-12)
    # a view with its channels reversed (as cv2.imread(...)[..., ::-1] gives) reads the same px
    flipped = enc[..., ::-1]
    assert not flipped.flags.c_contiguous
    np.testing.assert_allclose(blurred_hat_features(flipped, x, y, 2.0, 9).reshape(-1, 3, 9),
                               whole.reshape(-1, 3, 9)[:, ::-1], atol=1e-12)


def test_wide_blur_on_a_lattice_keeps_the_mean_of_a_smooth_image():
    yy, xx = np.mgrid[0:200, 0:200]
    enc = np.repeat(((xx + yy) * 0.6).astype(np.uint8)[..., None], 3, -1)
    x = np.array([100.3, 80.7])
    y = np.array([90.2, 110.9])
    feats = blurred_hat_features(enc, x, y, 4.5, 9).reshape(-1, 3, 9)
    # the blurred value of a ramp at a point is the ramp there: the hats' expected level
    level = (feats[:, 0] * np.linspace(0, 255, 9)).sum(-1)
    np.testing.assert_allclose(level, (x + y) * 0.6 - 0.5, atol=0.7)  # 0.5: the floor() of the uint8 ramp


def test_jpeg_is_kept_as_stored_integers(tmp_path):
    import cv2

    img = _encoded(np.uint8, (30, 40, 3))
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), img[..., ::-1])
    r = rawio.read_rgb(path)
    assert r.stored is not None and r.stored.dtype == np.uint8
    np.testing.assert_array_equal(r.stored, img)
    np.testing.assert_allclose(r.rgb, img / 255.0, atol=1e-7)
    assert r.shape == (30, 40)


def test_a_clipped_red_channel_keeps_the_luminance_for_registration_but_is_clipped_for_the_target():
    from alignment.prepare import prepare_dslr

    rgb = np.full((64, 96, 3), 120, np.uint8)
    rgb[10:30, 10:30, 0] = 255  # red clipped: a vivid red region
    rgb[40:60, 60:90, 1] = 255  # green clipped: the luminance is clipped
    d = prepare_dslr(rgb)
    assert d.valid[15:25, 15:25].all() and d.clipped[15:25, 15:25].all()
    assert not d.valid[45:55, 65:85].any() and d.clipped[45:55, 65:85].all()
    assert d.valid[5:60, 40:55].all() and not d.clipped[5:60, 40:55].any()


def test_thin_clipped_specks_stay_measured_while_a_clipped_area_is_masked_with_its_rims():
    rgb = np.full((80, 120, 3), 246, np.uint8)  # paper a few levels below full scale
    rgb[20:23, 10:60] = 30  # a dark stroke
    rgb[19, 10:60] = rgb[23, 10:60] = 255  # the JPEG's ringing clipped beside it, 1 px wide
    rgb[50, 20] = rgb[60, 30:32] = 255  # specks of noise at full scale
    rgb[40:60, 70:100] = 255  # a clipped area (a lamp, a blank half of a whiteboard)
    rgb[50, 100:115] = 255  # its rim running out 1 px wide
    d = prepare_dslr(rgb)
    assert d.valid[17:26, 12:58].all()  # the stroke and its ringing: measured
    assert d.valid[50, 20] and d.valid[60, 30:32].all()
    assert not d.valid[39:61, 69:101].any()  # the area, dilated by 1 px
    assert not d.valid[50, 100:116].any()  # with its thin rim
    assert d.clipped[19, 10:60].all() and d.clipped[50, 20]  # the colour there still unmeasured


def test_hat_features_of_8_bit_levels_equal_the_general_path():
    # the uint8 path sums a weighted histogram of the 256 levels; the same values
    # scaled to 16 bits go through the per-px hat weights
    enc = _encoded(np.uint8, (120, 140, 3), seed=3)
    rng = np.random.default_rng(4)
    x, y = rng.uniform(30, 110, 200), rng.uniform(30, 90, 200)
    eight = blurred_hat_features(enc, x, y, 2.8, 9)
    sixteen = blurred_hat_features(enc.astype(np.uint16) * 257, x, y, 2.8, 9)
    np.testing.assert_allclose(eight, sixteen, atol=1e-6)


def test_curves_of_a_tall_image_in_strips_equal_the_curves_at_once():
    enc = _encoded(np.uint8, (700, 90, 3), seed=5)  # several strips of rows
    curves = np.random.default_rng(6).random((3, 9))
    levels = np.linspace(0, 1, 9)
    unit = _as_unit(enc)
    expected = sum(np.interp(unit[..., c], levels, curves[c]) for c in range(3))
    np.testing.assert_allclose(apply_curves(enc, curves), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strip_blocks", [1, 7, 64])
def test_curves_on_grid_equal_the_curves_then_the_block_mean(strip_blocks):
    enc = _encoded(np.uint8, (300, 240, 3), seed=7)
    curves = np.random.default_rng(8).random((3, 9))
    expected = shrink(apply_curves(enc, curves, 0.1), (80, 100))
    np.testing.assert_array_equal(curves_on_grid(enc, curves, 0.1, (80, 100), strip_blocks), expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_several_curves_on_grid_through_one_mix_equal_each_on_its_own(dtype):
    enc = _encoded(dtype, (300, 240, 3), seed=9)
    mix = desaturation(1.3)
    rng = np.random.default_rng(10)
    items = [(rng.random((3, 9)), 0.1 * k) for k in range(3)]
    many = curves_on_grid_many(enc, items, (80, 100), 7, mix=mix)
    for (curves, offset), got in zip(items, many):
        np.testing.assert_array_equal(got, curves_on_grid(enc, curves, offset, (80, 100), 64, mix=mix))
        np.testing.assert_array_equal(got, shrink(apply_curves(enc, curves, offset, mix), (80, 100)))


def test_curves_on_grid_refuses_a_size_that_is_no_integer_factor():
    with pytest.raises(ValueError, match="integer factor"):
        curves_on_grid(_encoded(np.uint8, (100, 100, 3)), np.ones((3, 9)), 0.0, (30, 30))


def _boosted(unit: np.ndarray, saturation: float) -> np.ndarray:
    """Display RGB in [0, 1] with its saturation boosted about the channel mean."""
    grey = unit.mean(axis=-1, keepdims=True)
    return grey + saturation * (unit - grey)


def test_desaturation_undoes_a_saturation_boost():
    unit = 0.3 + 0.4 * np.random.default_rng(3).random((20, 30, 3)).astype(np.float32)
    undone = _mixed(_boosted(unit, 1.4).astype(np.float32), desaturation(1.4))
    np.testing.assert_allclose(undone, unit, atol=1e-5)
    assert desaturation(1.0) is None


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_curves_and_hat_features_through_a_colour_mix_equal_those_of_the_mixed_image(dtype):
    enc = _encoded(dtype, (60, 70, 3))
    mix = desaturation(1.3)
    curves = np.random.default_rng(1).random((3, 9))
    np.testing.assert_allclose(apply_curves(enc, curves, 0.1, mix), apply_curves(_mixed(enc, mix), curves, 0.1),
                               rtol=1e-5, atol=1e-5)
    x, y = np.array([20.3, 35.8, 40.0]), np.array([22.1, 30.5, 37.2])
    np.testing.assert_allclose(blurred_hat_features(enc, x, y, 2.0, 9, mix=mix),
                               blurred_hat_features(_mixed(enc, mix), x, y, 2.0, 9), atol=1e-6)


def test_radiometric_fit_undoes_the_saturation_boost_of_the_dslr_rendering():
    # a colourful linear scene; the phone target is its red channel, the DSLR an sRGB
    # JPEG-like rendering whose saturation was boosted 1.4x after the tone curve
    rng = np.random.default_rng(5)
    small = rng.random((12, 16, 3)).astype(np.float32)
    scene = cv2.resize(small, (320, 240), interpolation=cv2.INTER_CUBIC).clip(0.02, 1)
    display = _boosted(rawio.linear_to_srgb(scene), 1.4).clip(0, 1)
    dslr = prepare_dslr((display * 255 + 0.5).astype(np.uint8))
    target = (scene[..., 0], np.ones(scene.shape[:2], bool), np.eye(3))

    def misfit(saturations: tuple) -> float:
        predicted = fit_radiometric([target], dslr, np.eye(3), saturations=saturations).images[0]
        inner = (slice(20, -20), slice(20, -20))
        return float(np.median(np.abs(predicted[inner] - scene[..., 0][inner])))

    per_channel = misfit((1.0,))
    searched = misfit((1.0, 1.2, 1.4, 1.6))
    assert searched < 0.5 * per_channel


def test_radiometric_fit_pairs_the_samples_through_the_lens_model():
    # a phone whose lens moves the frame corners by about 13 px: its px x show the
    # scene at u(x) = x + k (x - c) |x - c|^2; the DSLR shows the scene on its own grid
    rng = np.random.default_rng(8)
    small = rng.random((30, 40)).astype(np.float32)
    scene = cv2.resize(small, (320, 240), interpolation=cv2.INTER_CUBIC).clip(0.02, 1)
    dslr = prepare_dslr((np.repeat(rawio.linear_to_srgb(scene)[..., None], 3, 2) * 255 + 0.5).astype(np.uint8))
    c, k = np.array([159.5, 119.5]), 1.6e-4

    def undistort(xy: np.ndarray) -> np.ndarray:
        d = xy - c
        return xy + k * d * (d * d).sum(1, keepdims=True) / 100.0

    ys, xs = np.mgrid[0:240, 0:320].astype(np.float64)
    u = undistort(np.stack([xs.ravel(), ys.ravel()], 1))
    phone = cv2.remap(scene, u[:, 0].reshape(240, 320).astype(np.float32), u[:, 1].reshape(240, 320).astype(np.float32),
                      cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    target = (phone, np.ones(phone.shape, bool), np.eye(3))
    assert np.abs(u - np.stack([xs.ravel(), ys.ravel()], 1)).max() > 10

    def misfit(undo) -> float:
        predicted = fit_radiometric([target], dslr, np.eye(3), undistort=undo, robust_k=None).images[0]
        # the prediction lives on the DSLR grid: compare it where the phone px land
        at = cv2.remap(predicted, u[:, 0].reshape(240, 320).astype(np.float32),
                       u[:, 1].reshape(240, 320).astype(np.float32), cv2.INTER_LINEAR)
        inner = (slice(30, -30), slice(30, -30))
        return float(np.median(np.abs(at[inner] - phone[inner])))

    assert misfit(undistort) < 0.01 < misfit(None)


def test_radiometric_fit_separates_a_strong_vignetting_from_the_curves():
    # a soft scene; the phone sees it under 30 % vignetting (1 - 0.3 r^2, r = 1 at the
    # frame corners), the DSLR without: the frame gain must take all of it and the
    # curves (the images returned) must predict the scene itself.  Fitting curves and
    # gain in turn for three rounds left 3.5 % of full scale in the curves (median).
    rng = np.random.default_rng(5)
    small = rng.random((6, 8)).astype(np.float32)
    scene = cv2.resize(small, (320, 240), interpolation=cv2.INTER_CUBIC).clip(0.05, 1)
    dslr = prepare_dslr((np.repeat(rawio.linear_to_srgb(scene)[..., None], 3, 2) * 255 + 0.5).astype(np.uint8))
    ys, xs = np.mgrid[0:240, 0:320].astype(np.float32)
    r2 = ((xs - 159.5) ** 2 + (ys - 119.5) ** 2) / (159.5**2 + 119.5**2)
    phone = scene * (1 - 0.3 * r2)
    predicted = fit_radiometric([(phone, np.ones(phone.shape, bool), np.eye(3))], dslr, np.eye(3),
                                frame=(320, 240)).images[0]
    inner = (slice(20, -20), slice(20, -20))
    assert float(np.median(np.abs(predicted[inner] - scene[inner]))) < 0.004
