"""ECC refinement (alignment.ecc): accuracy, the OpenCV pre-filter bias, masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import alignment.ecc as ecc
from alignment.ecc import (Channel, _gauss, forward_from_plain, gn_refine, lens_coefficient_jacobian, lens_coefficients,
                           lens_undistort, local_normalize, photometric_maps, prepare_channels, refine_homography,
                           refine_planes, sample_spline, sample_spline_gradient, spline_coefficients, warp_to_template)
from alignment.pipeline import AlignOptions

# A band-limited analytic scene sampled exactly on two grids related by a known
# homography: nothing resamples the data before the estimator sees it.
_RNG = np.random.default_rng(7)
_K = 40
_F = 0.22 * np.sqrt(_RNG.uniform(0.02, 1, _K))
_TH = _RNG.uniform(0, np.pi, _K)
_PH = _RNG.uniform(0, 2 * np.pi, _K)
_A = np.array([[0.8 * np.cos(0.05), -0.8 * np.sin(0.05), 40.0], [0.8 * np.sin(0.05), 0.8 * np.cos(0.05), 30.0],
               [1e-5, -2e-5, 1.0]])  # template px -> image px
_T_SHAPE = (240, 320)


def _scene(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    v = sum(np.cos(_F[i] * np.cos(_TH[i]) * x + _F[i] * np.sin(_TH[i]) * y + _PH[i]) for i in range(_K))
    return (v / _K + 0.5).astype(np.float32)


def _analytic_pair() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0 : _T_SHAPE[0], 0 : _T_SHAPE[1]].astype(np.float64)
    template = _scene(xx, yy)
    yi, xi = np.mgrid[0:360, 0:480].astype(np.float64)
    ai = np.linalg.inv(_A)
    w = ai[2, 0] * xi + ai[2, 1] * yi + ai[2, 2]
    image = _scene((ai[0, 0] * xi + ai[0, 1] * yi + ai[0, 2]) / w, (ai[1, 0] * xi + ai[1, 1] * yi + ai[1, 2]) / w)
    return template, image


def _corner_distance(h: np.ndarray, g: np.ndarray) -> float:
    """The largest distance (image px) between where h and g put the template's corners."""
    rows, cols = _T_SHAPE
    c = np.c_[np.array([[0, 0], [cols - 1, 0], [cols - 1, rows - 1], [0, rows - 1]], float), np.ones(4)]
    p, q = c @ h.T, c @ g.T
    return float(np.max(np.linalg.norm(p[:, :2] / p[:, 2:] - q[:, :2] / q[:, 2:], axis=1)))


def _corner_error(h: np.ndarray) -> float:
    return _corner_distance(h, _A)


def test_gauss_newton_converges_from_a_perturbed_start():
    template, image = _analytic_pair()
    start = _A @ np.array([[1.01, 0.004, 1.5], [-0.003, 0.99, -1.0], [1e-5, 0, 1.0]])
    r = refine_homography(template, image, start, levels=2, norm_sigma=None, huber=None)
    assert _corner_error(start) > 1.0
    assert _corner_error(r.homography) < 0.005
    assert r.correlation > 0.99 and r.converged


def test_each_level_reports_its_result_and_whether_it_was_the_last():
    template, image = _analytic_pair()
    start = _A @ np.array([[1.01, 0.004, 1.5], [-0.003, 0.99, -1.0], [1e-5, 0, 1.0]])
    seen = []
    r = refine_homography(template, image, start, levels=2, norm_sigma=None, huber=None,
                          level_done=lambda res, last: seen.append((res.converged, res.samples, last)))
    # coarse to fine: three levels, the last one flagged, every one converged here; the
    # finer levels hold more samples
    assert [last for _, _, last in seen] == [False, False, True]
    assert all(conv for conv, _, _ in seen) and r.converged
    assert seen[0][1] < seen[1][1] < seen[2][1]


def test_levels_handed_over_at_the_noise_take_fewer_steps_and_end_within_it(monkeypatch):
    # a noisy template, every Gauss-Newton step cut to 0.3 of itself (a linear convergence,
    # as the luminance's levels show on a real pair, each step 0.7 of the last): handed on
    # at half a standard error of each level's noise, with the series step, the levels
    # take fewer steps and end within a fraction of that noise of where they run to 1e-4 px
    clean, image = _analytic_pair()
    template = (clean + np.random.default_rng(5).normal(0, 0.1, clean.shape)).astype(np.float32)
    solve = ecc._gn_solve
    monkeypatch.setattr(ecc, "_gn_solve", lambda eq, damping=0.0: 0.3 * solve(eq, damping))
    start = _A @ np.array([[1.005, 0.002, 0.8], [-0.002, 0.995, -0.5], [0, 0, 1.0]])
    kw = dict(levels=2, norm_sigma=None, huber=None, tol_px=1e-4)
    sigmas = []
    full = refine_homography(template, image, start, **kw)
    handed = refine_homography(template, image, start, hand_over_sigmas=0.5,
                               level_done=lambda res, last: sigmas.append(res.corner_sigma_px), **kw)
    assert full.converged and handed.converged
    assert sum(handed.iterations) * 2 < sum(full.iterations)  # (11 against 47)
    assert _corner_distance(handed.homography, full.homography) < 0.5 * sigmas[-1]


def test_a_stopped_refinement_raises_before_its_next_step_and_is_no_failure():
    import threading

    template, image = _analytic_pair()
    stop = threading.Event()
    stop.set()
    with pytest.raises(ecc.EccStopped):
        refine_homography(template, image, _A, levels=2, norm_sigma=None, huber=None, stop=stop)
    assert not issubclass(ecc.EccStopped, ValueError)  # callers that try another start on a failure do not catch it
    # set after the first level: the next level does not run
    levels = []

    def stop_after_one_level(res, last):
        levels.append(res)
        stop.set()

    stop.clear()
    with pytest.raises(ecc.EccStopped):
        refine_homography(template, image, _A @ np.diag([1.01, 0.99, 1.0]), levels=2, norm_sigma=None, huber=None,
                          stop=stop, level_done=stop_after_one_level)
    assert len(levels) == 1

    class SetFromItsFourthLook:  # looked at once per level, then before each Gauss-Newton step
        looks = 0

        def is_set(self):
            self.looks += 1
            return self.looks > 3  # set before the first level's third step

    levels.clear()
    with pytest.raises(ecc.EccStopped):
        refine_homography(template, image, _A @ np.diag([1.01, 0.99, 1.0]), levels=2, norm_sigma=None, huber=None,
                          stop=SetFromItsFourthLook(), level_done=lambda res, last: levels.append(res))
    assert levels == []  # stopped inside the first level


def test_a_coarse_level_whose_masks_leave_too_few_samples_can_be_skipped():
    # the DSLR measured only in 10 px bands (the rest clipped, like the paper around
    # text): the coarse levels' masks keep too little for a step, the full level does not
    template, image = _analytic_pair()
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    bands = ((xx % 30) < 10) | ((yy % 30) < 10)
    start = _A @ np.array([[1.0, 0.0, 0.8], [0.0, 1.0, -0.6], [0, 0, 1.0]])
    with pytest.raises(ValueError, match="leaves the image"):  # by default a failing level is raised
        refine_homography(template, image, start, image_mask=bands, levels=3, norm_sigma=None, huber=None)
    r = refine_homography(template, image, start, image_mask=bands, levels=3, norm_sigma=None, huber=None,
                          skip_failed_levels=True)
    assert _corner_error(start) > 0.7
    assert _corner_error(r.homography) < 0.005
    assert len(r.iterations) < 4  # some levels did not run
    with pytest.raises(ValueError, match="leaves the image"):  # the finest level still may not fail
        refine_homography(template, image, start, image_mask=np.zeros_like(bands), levels=3, norm_sigma=None,
                          skip_failed_levels=True)


def test_stock_opencv_prefilter_biases_scale_and_ours_does_not():
    """opencv #29774: gaussFiltSize=5 blurs the template with reflected borders and
    uses that ring as data; started AT the truth it walks away (scale too small)."""
    template, image = _analytic_pair()
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10)
    _, stock = cv2.findTransformECC(template, image, _A.astype(np.float32), cv2.MOTION_HOMOGRAPHY, crit, None, 5)
    stock = stock.astype(np.float64)
    ours = refine_homography(template, image, _A, levels=0, norm_sigma=None, gain_degree=0, huber=None).homography
    assert _corner_error(stock) > 0.01
    assert np.sqrt(abs(np.linalg.det(stock[:2, :2]))) < np.sqrt(abs(np.linalg.det(_A[:2, :2])))
    assert _corner_error(ours) < 0.005
    assert _corner_error(ours) * 5 < _corner_error(stock)


def test_opencv_method_without_prefilter_runs_through_the_same_interface():
    template, image = _analytic_pair()
    r = refine_homography(template, image, _A, method="opencv", levels=0, norm_sigma=None, gauss_filt_size=1)
    assert _corner_error(r.homography) < 0.01


def test_masked_out_template_pixels_do_not_move_the_estimate():
    template, image = _analytic_pair()
    corrupted = template.copy()
    corrupted[:, :60] = 5.0  # garbage the mask excludes
    mask = np.ones(template.shape, bool)
    mask[:, :70] = False
    r = refine_homography(corrupted, image, _A, mask, levels=0, norm_sigma=None, huber=None)
    assert _corner_error(r.homography) < 0.01


def test_px_left_out_by_selection_are_not_compared_and_their_holes_do_not_grow():
    # scattered px that do not follow the background (measured data, compared nowhere):
    # as a selection the holes keep their size at every level; as a mask of unmeasured
    # data each is eroded by the filters' reach, and the coarse levels lose most samples
    template, image = _analytic_pair()
    yy, xx = np.mgrid[0 : _T_SHAPE[0], 0 : _T_SHAPE[1]]
    holes = ((xx % 16) < 2) & ((yy % 16) < 2)  # 1.6 % of the frame
    start = _A @ np.array([[1.01, 0.004, 1.5], [-0.003, 0.99, -1.0], [1e-5, 0, 1.0]])
    samples: list[int] = []
    kw = dict(levels=2, norm_sigma=None, huber=None)
    r = refine_homography(template, image, start, template_select=~holes,
                          level_done=lambda res, last: samples.append(res.samples), **kw)
    assert _corner_error(r.homography) < 0.005
    assert samples[-1] > 0.95 * (_T_SHAPE[0] - 4) * (_T_SHAPE[1] - 4)  # only the frame's border eroded
    with pytest.raises(ValueError, match="too few template pixels"):
        refine_homography(template, image, start, ~holes, **kw)  # the coarsest level's holes met
    as_mask: list[int] = []
    refine_homography(template, image, r.homography, ~holes, levels=0, norm_sigma=None, huber=None,
                      level_done=lambda res, last: as_mask.append(res.samples))
    assert as_mask[0] < 0.8 * samples[-1]


def test_unknown_method_is_an_error_that_lists_the_choices_before_any_work():
    template, image = _analytic_pair()
    with pytest.raises(ValueError, match="unknown ECC method 'lk' \\(choices: gn, opencv\\)"):
        refine_homography(template, image, _A, method="lk")
    with pytest.raises(ValueError, match="ecc_method: 'lk' is not one of 'gn', 'opencv'"):
        AlignOptions(ecc_method="lk")


def test_local_normalize_gives_zero_mean_unit_variance_locally():
    rng = np.random.default_rng(0)
    img = (rng.normal(size=(200, 200)) * np.linspace(0.1, 5, 200)[None, :] + 7).astype(np.float32)
    out = local_normalize(img, 10.0)
    centre = out[50:150, 50:150]
    assert abs(float(centre.mean())) < 0.1
    assert 0.7 < float(centre[:, :20].std()) < 1.3 and 0.7 < float(centre[:, -20:].std()) < 1.3


@pytest.mark.parametrize("sigma", [8.0, 12.0, 20.0])
def test_the_coarse_blur_is_about_the_exact_window(sigma):
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.normal(size=(300, 400)).astype(np.float32), (0, 0), 2.0)
    img[:, :150] *= 3.0  # a contrast step
    exact, coarse = _gauss(img, sigma), _gauss(img, sigma, coarse=True)
    assert coarse.shape == exact.shape
    assert float(np.std(coarse - exact)) < 0.01 * float(np.std(exact))
    mask = np.ones(img.shape, bool)
    mask[:40] = False
    a, b = local_normalize(img, sigma, mask), local_normalize(img, sigma, mask, coarse=True)
    assert np.corrcoef(a[mask], b[mask])[0, 1] > 0.999
    assert (b[~mask] == 0).all()


# (13, 13): the smallest that OpenCV's 25-tap filter takes; (9, 40) and (1, 40): scipy's
@pytest.mark.parametrize("shape", [(240, 320), (13, 13), (9, 40), (1, 40)])
def test_spline_coefficients_are_scipys_and_interpolate_the_image_through_its_own_px(shape):
    from scipy import ndimage

    image = _RNG.random(shape).astype(np.float32)
    coef = spline_coefficients(image)
    exact = ndimage.spline_filter(image.astype(np.float64), order=3, mode="mirror")
    assert coef.dtype == np.float32 and coef.shape == image.shape
    assert np.abs(coef - exact).max() < 2e-6  # noise at float32's rounding, borders included
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    assert np.abs(sample_spline(coef, xx, yy) - image).max() < 2e-6  # a spline through the px
    # a view with strides (a colour channel of an image) gives the same
    rgb = np.dstack([image, image * 0.5, image * 0.25])
    assert np.array_equal(spline_coefficients(rgb[..., 1]), spline_coefficients(np.ascontiguousarray(rgb[..., 1])))


@pytest.mark.parametrize("block", [1000, 4999, ecc._SPLINE_BLOCK])
def test_the_spline_gradient_is_the_same_to_the_last_bit_whatever_block_it_is_sampled_in(monkeypatch, block):
    rng = np.random.default_rng(2)
    coef = spline_coefficients(_gauss(rng.random((60, 80)).astype(np.float32), 0.8))
    x, y = rng.uniform(1, 80 - 2.0001, 5000), rng.uniform(1, 60 - 2.0001, 5000)
    whole = sample_spline_gradient(coef, x, y)
    monkeypatch.setattr(ecc, "_SPLINE_BLOCK", block)
    for got, want in zip(sample_spline_gradient(coef, x, y), whole):
        assert got.dtype == np.float64 and np.array_equal(got, want)
    assert all(v.shape == (0,) for v in sample_spline_gradient(coef, x[:0], y[:0]))


def test_a_point_whose_window_runs_past_the_arrays_last_row_raises_as_the_gathers_check_their_indices():
    coef = spline_coefficients(np.ones((10, 12), np.float32))
    with pytest.raises(IndexError):
        sample_spline_gradient(coef, np.array([5.0, 5.0]), np.array([5.0, 8.5]))  # (y past h - 2: rows 7 to 10)


def test_the_spline_gradient_is_the_derivative_of_the_spline_it_samples():
    rng = np.random.default_rng(1)
    image = _gauss(rng.random((60, 80)).astype(np.float32), 0.8)  # texture near the blur's limit
    coef = spline_coefficients(image)
    x, y = rng.uniform(1, 80 - 2.0001, 5000), rng.uniform(1, 60 - 2.0001, 5000)
    x[:2], y[:2] = [1.0, 77.999], [1.0, 57.999]  # the extremes it allows
    value, gx, gy = sample_spline_gradient(coef, x, y)
    assert np.abs(value - sample_spline(coef, x, y)).max() < 1e-6
    e = 1e-3
    assert np.abs(gx - (sample_spline(coef, x + e, y) - sample_spline(coef, x - e, y)) / (2 * e)).max() < 1e-4
    assert np.abs(gy - (sample_spline(coef, x, y + e) - sample_spline(coef, x, y - e)) / (2 * e)).max() < 1e-4
    # what the Jacobian read before: central differences of the image, bilinearly, a third short
    central = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=1, scale=0.5)
    short = ecc.sample_points(central, x, y, cv2.INTER_LINEAR)
    assert (short @ gx) / (gx @ gx) < 0.8


def _aliased_level() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A coarse pyramid level of fine texture: a 48 x 64 template cut from a noise image
    blurred by 0.8 px, and the template-to-image homography."""
    rng = np.random.default_rng(3)
    image = _gauss(rng.random((400, 520)).astype(np.float32), 0.8)
    truth = np.array([[1.0, 0.02, 30.0], [-0.02, 1.0, 25.0], [0, 0, 1.0]])
    yy, xx = np.mgrid[0:48, 0:64].astype(np.float64)
    template = sample_spline(spline_coefficients(image), truth[0, 0] * xx + truth[0, 1] * yy + truth[0, 2],
                             truth[1, 0] * xx + truth[1, 1] * yy + truth[1, 2]).astype(np.float32)
    return template, image, truth


def _robust_cost(template: np.ndarray, image: np.ndarray, h: np.ndarray, thresholds: list | None = None):
    """(gn_refine's robust cost per sample of a one-channel pass at ``h``, gain 1 and offset 0,
    under ``thresholds``: None, its own; its thresholds)."""
    frame = ecc._Frame.of(template.shape)
    data = ecc._channel_samples([Channel(template, np.ones(template.shape, bool), image, None)], frame, 1, None)
    eq = ecc._gn_equations(data, h @ frame.ninv, np.zeros(2), [np.r_[1.0, 0, 0, 0, 0, 0]], 0, 3.0, 14, 0, thresholds)
    return (eq.cost if thresholds is None else eq.cost_before), eq.thresholds


@pytest.mark.parametrize("offset_px", [0.5, 1.0, 1.5])
def test_gauss_newton_on_fine_texture_converges_in_few_steps_to_the_truth(offset_px):
    template, image, truth = _aliased_level()
    start = truth @ np.array([[1, 0, offset_px], [0, 1, -offset_px], [0, 0, 1.0]])
    r = gn_refine([Channel(template, np.ones(template.shape, bool), image, None)], start, template.shape,
                  tol_px=1e-3, max_pixels=None)
    # (with the bilinear central differences: 13, 15 and 30 steps, the last not converged)
    assert r.converged and r.iterations[0] <= 10
    assert np.abs(r.homography / r.homography[2, 2] - truth)[:2, 2].max() < 0.02


def test_gauss_newton_keeps_no_step_that_raises_the_cost(monkeypatch):
    # 3.5 px off on fine texture, at the edge of the basin, Gauss-Newton's steps overshoot
    # uphill: each is refused, damped and tried again from the point the cost was lowest
    # at, which the pass returns (undamped, this pass wandered off 19 px)
    template, image, truth = _aliased_level()
    offset = 3.5 * np.array([np.cos(3.0), np.sin(3.0)])
    start = truth @ np.array([[1, 0, offset[0]], [0, 1, offset[1]], [0, 0, 1.0]])
    measured = []  # (the homography in normalised frame coordinates, its equations)
    original = ecc._gn_equations

    def measuring(data, g, *args, **kwargs):
        measured.append((g, original(data, g, *args, **kwargs)))
        return measured[-1][1]

    monkeypatch.setattr(ecc, "_gn_equations", measuring)
    r = gn_refine([Channel(template, np.ones(template.shape, bool), image, None)], start, template.shape,
                  tol_px=1e-3, max_pixels=None)
    monkeypatch.undo()
    (g_at, at), refused = measured[0], 0
    for g, trial in measured[1:]:
        if trial.cost_before <= at.cost:
            g_at, at = g, trial
        else:
            refused += 1
    assert refused > 0
    # ... none of them kept: the pass ends on the last point that lowered the cost (or a
    # step under tol_px from there, taken unmeasured), nearer the truth than it started
    frame = ecc._Frame.of(template.shape)
    corners = np.c_[frame.corners_u, frame.corners_v, np.ones(4)]
    ends, last = corners @ (r.homography @ frame.ninv).T, corners @ g_at.T
    assert np.abs(ends[:, :2] / ends[:, 2:] - last[:, :2] / last[:, 2:]).max() < 1e-3
    assert np.abs(r.homography / r.homography[2, 2] - truth)[:2, 2].max() < 1.0


def test_spline_coefficients_refuse_an_image_with_channels():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        spline_coefficients(np.zeros((20, 30, 3), np.float32))


def test_warp_to_template_samples_the_image_at_the_homography():
    template, image = _analytic_pair()
    warped, inside = warp_to_template(image, _A, template.shape)
    assert inside.mean() > 0.9
    assert np.abs(warped[inside] - template[inside]).max() < 0.01


@pytest.mark.parametrize("forward", [True, False])
def test_gn_refine_recovers_radial_distortion_with_the_homography_in_either_lens_form(forward):
    rows, cols = _T_SHAPE
    q_true = np.array([0.03, 0.0])
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    c = np.array([(cols - 1) / 2, (rows - 1) / 2])
    s = max(rows, cols) / 2
    nu, nv = lens_undistort(q_true, (xx - c[0]) / s, (yy - c[1]) / s, forward)
    ux, uy = c[0] + s * nu, c[1] + s * nv  # undistorted frame points
    # the scene is defined in undistorted template px; the image sees it through A
    template = _scene(ux, uy)
    _, image = _analytic_pair()
    valid = np.ones(template.shape, bool)
    r = gn_refine([Channel(template, valid, image, None)], _A, template.shape, gain_degree=0, huber=None, radial=1,
                  forward_lens=forward)
    assert abs(r.radial[0] - q_true[0]) < 1e-3
    assert _corner_error(r.homography) < 0.05


def _forward_lens_radius(r_u: np.ndarray, k1: float, k2: float) -> np.ndarray:
    """The distorted radius of a forward lens at the undistorted radius ``r_u``."""
    return r_u * (1.0 + k1 * r_u**2 + k2 * r_u**4)


@pytest.mark.parametrize("k1, k2", [(-0.018, -0.0014), (0.02, 0.003), (-0.03, 0.0)])
def test_the_lens_model_fitted_short_of_the_rim_follows_a_forward_lens_there_better_than_two_plain_terms(k1, k2):
    # a forward lens as OpenCV, DNG's WarpRectilinear and the simulator write it (the
    # distorted radius a polynomial of the undistorted one), 90 to 140 px at the corner of a
    # 12 MP frame (radius 1.25 in units of half its longer side, 2016 px), each form fitted
    # where tiles reach (0.9 of the corner's radius) and judged beyond
    r_d = np.linspace(0.0, 1.25, 200)
    r_u = r_d.copy()
    for _ in range(20):  # the undistorted radius, Newton on the forward polynomial
        r_u -= (_forward_lens_radius(r_u, k1, k2) - r_d) / (1 + 3 * k1 * r_u**2 + 5 * k2 * r_u**4)
    inner, rim = r_d <= 0.9 * 1.25, r_d > 0.9 * 1.25
    powers = np.stack([r_d ** (2 * k + 3) for k in range(4)], 1)  # displacement per coefficient
    plain_q = np.linalg.lstsq(powers[inner, :2], (r_u - r_d)[inner], rcond=None)[0]
    q = np.zeros(2)
    for _ in range(10):  # Gauss-Newton on the forward form's two parameters
        jac = powers[inner] @ lens_coefficient_jacobian(*q)
        q += np.linalg.lstsq(jac, (r_u - r_d)[inner] - powers[inner] @ lens_coefficients(*q), rcond=None)[0]
    forward, _ = lens_undistort(q, r_d, np.zeros_like(r_d))
    plain, _ = lens_undistort(plain_q, r_d, np.zeros_like(r_d), forward=False)
    forward_px, plain_px = (np.abs(f[rim] - r_u[rim]).max() * 2016 for f in (forward, plain))
    assert forward_px < 0.25 and forward_px < 0.4 * plain_px


def test_lens_coefficient_jacobian_is_the_derivative_of_lens_coefficients():
    q1, q2, step = 0.03, -0.004, 1e-6
    jac = lens_coefficient_jacobian(q1, q2)
    numeric = np.stack([(lens_coefficients(q1 + step, q2) - lens_coefficients(q1 - step, q2)) / (2 * step),
                        (lens_coefficients(q1, q2 + step) - lens_coefficients(q1, q2 - step)) / (2 * step)], 1)
    np.testing.assert_allclose(jac, numeric, atol=1e-8)


@pytest.mark.parametrize("q", [np.array([0.02, 0.003]), np.array([-0.03, 0.004, 0.01, -0.02]), np.zeros(2)])
def test_forward_from_plain_bends_the_frame_as_the_plain_form_did_and_keeps_the_centre(q):
    got = forward_from_plain(q, (3024, 4032))
    assert got.shape == q.shape and np.array_equal(got[2:], q[2:])
    r = np.linspace(0.0, 1.25, 100)
    plain, _ = lens_undistort(q[:2], r, np.zeros_like(r), forward=False)
    forward, _ = lens_undistort(got[:2], r, np.zeros_like(r))
    as_was, _ = lens_undistort(q[:2], r, np.zeros_like(r))  # the same numbers read in the forward form
    # px out to a 12 MP frame's corner (the fine stage fits what is left)
    assert np.abs(forward - plain).max() * 2016 <= min(0.15, 0.05 * np.abs(as_was - plain).max() * 2016)


def test_refine_planes_recovers_the_lens_centre_of_a_decentred_distortion():
    rows, cols = _T_SHAPE
    q_true = np.array([0.06, 0.0, 0.08, -0.05])  # centre 13 and 8 px off the frame's
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    c = np.array([(cols - 1) / 2, (rows - 1) / 2])
    s = max(rows, cols) / 2
    uu, vv = lens_undistort(q_true, (xx - c[0]) / s, (yy - c[1]) / s)
    template = _scene(c[0] + s * uu, c[1] + s * vv)
    _, image = _analytic_pair()
    valid = np.ones(template.shape, bool)
    kw = dict(radial=2, q0=np.array([0.06, 0.0]), norm_sigma=None, gain_degree=0, huber=None)
    centred = refine_planes([(template, valid, np.eye(3))], [image], None, _A, template.shape, **kw)
    free = refine_planes([(template, valid, np.eye(3))], [image], None, _A, template.shape, lens_centre=True, **kw)
    assert np.abs(free.radial[2:] - q_true[2:]).max() * s < 1.0  # the centre to a px
    assert _corner_error(free.homography) < 0.1 < _corner_error(centred.homography)


def test_lens_undistort_keeps_its_centre_and_matches_the_fields_radial_part():
    q = np.array([0.05, -0.01, 0.1, -0.04])
    u, v = lens_undistort(q, np.array([0.1]), np.array([-0.04]))
    assert (u[0], v[0]) == pytest.approx((0.1, -0.04))
    from alignment.pipeline import _radial_field
    from alignment.prepare import PreparedImage

    p = PreparedImage(np.zeros((3, 4), np.float32), np.ones((3, 4), bool), np.eye(3), (400, 300))
    corners = np.array([[0.0, 0.0], [399.0, 0.0], [0.0, 299.0], [399.0, 299.0]])
    c, half = np.array([199.5, 149.5]), 200.0
    uu, vv = lens_undistort(q, (corners[:, 0] - c[0]) / half, (corners[:, 1] - c[1]) / half)
    expected = np.stack([c[0] + half * uu, c[1] + half * vv], 1)
    np.testing.assert_allclose(corners + _radial_field(q, p)(corners), expected, atol=1e-9)


def test_a_second_run_from_the_fitted_gains_converges_in_fewer_steps_to_the_same_model():
    template, image = _analytic_pair()
    rng = np.random.default_rng(0)
    # a gain, an offset and noise for the photometric model; an occluder for the Huber weights
    template = 0.6 * template + 0.1 + rng.normal(0, 0.02, template.shape).astype(np.float32)
    template[50:120, 60:160] = rng.random((70, 100)).astype(np.float32)
    planes = [(template, np.ones(template.shape, bool), np.eye(3))]
    start = _A @ np.array([[1.002, 0.0, 0.3], [0.0, 0.998, -0.2], [0, 0, 1.0]])
    kwargs = dict(norm_sigma=None, gain_degree=1, tol_px=1e-4)
    first = refine_planes(planes, [image], None, start, template.shape, **kwargs)
    assert first.photometric is not None and abs(first.photometric[0][0] - 0.6) < 0.02
    cold = refine_planes(planes, [image], None, first.homography, template.shape, **kwargs)
    warm = refine_planes(planes, [image], None, first.homography, template.shape, photo0=first.photometric, **kwargs)
    assert warm.iterations[0] < cold.iterations[0]
    assert abs(_corner_error(warm.homography) - _corner_error(cold.homography)) < 1e-3


def test_the_fitted_shading_maps_give_the_gain_over_the_frame():
    template, image = _analytic_pair()
    rows, cols = template.shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    r2 = ((xx - (cols - 1) / 2) ** 2 + (yy - (rows - 1) / 2) ** 2) / (cols / 2) ** 2
    shading = 0.9 * (1.0 - 0.25 * r2)  # vignetting: a quadratic gain over the frame
    planes = [((template * shading + 0.05).astype(np.float32), np.ones(template.shape, bool), np.eye(3))]
    channels = prepare_channels(planes, [image], None, _A, blur_sigma=0.7)
    res = refine_planes(None, None, None, _A, template.shape, gain_degree=2, channels=channels, tol_px=1e-4)
    maps = photometric_maps(channels, res.photometric, template.shape)
    assert maps is not None and len(maps) == 1
    gain, offset = maps[0]
    assert gain.shape == template.shape
    assert np.abs(gain - shading).max() < 0.02 and np.abs(offset - 0.05).max() < 0.02
    assert photometric_maps(channels, None, template.shape) is None


def test_samples_beyond_the_budget_take_the_strongest_gradients_of_every_region_and_a_random_rest():
    # strong texture in the top half, faint texture in the bottom half (a flat sky): the
    # informative half is chosen region by region, so the faint half gets its share, and
    # there its strongest px; the random half is spread over the frame
    from alignment.ecc import INFORMATIVE_SHARE, SAMPLE_GRID, Channel, _informative_samples, _with_random

    rng = np.random.default_rng(3)
    template = (0.5 + 0.4 * rng.random((64, 64))).astype(np.float32)
    template[32:] = 0.5 + 0.02 * rng.random((32, 64)).astype(np.float32)
    ch = Channel(template, np.ones_like(template, bool), template)
    ys, xs = np.nonzero(ch.mask)
    n = 800
    sel = _with_random(*_informative_samples(ch, ys, xs, n), n, np.random.default_rng(0))
    assert n - SAMPLE_GRID**2 <= len(sel) <= n and len(np.unique(sel)) == len(sel) and np.all(np.diff(sel) > 0)
    faint = ys[sel] >= 33  # the rows the strong half's gradient does not reach
    assert faint.sum() >= 0.45 * n * 31 / 64  # its share of both halves, near enough
    energy = ch.gradient_energy[ys, xs]
    faint_px = ys >= 33
    chosen = np.zeros(len(xs), bool)
    chosen[sel] = True
    # where the texture is faint, the chosen px are its stronger ones
    assert energy[chosen & faint_px].mean() > 1.3 * energy[faint_px].mean()
    assert (chosen & faint_px).sum() >= n * INFORMATIVE_SHARE * 31 / 64 * 0.9
    # the mask-changed copy keeps the gradient once computed
    assert ch.with_mask(ch.mask).energy is ch.gradient_energy


def test_the_corner_standard_error_is_the_scatter_that_noise_gives_and_falls_with_more_samples():
    # one analytic scene, the template under 20 draws of white noise: the pass's own
    # corner standard error is the spread of the corners it lands on over the draws,
    # and a quarter of the samples doubles it
    clean, image = _analytic_pair()
    rng = np.random.default_rng(11)
    frame = ecc._Frame.of(clean.shape)
    corners = np.c_[frame.corners_u, frame.corners_v, np.ones(4)]
    ends, sigmas = [], []
    for _ in range(20):
        template = (clean + rng.normal(0, 0.05, clean.shape)).astype(np.float32)
        r = gn_refine([Channel(template, np.ones(template.shape, bool), image, None)], _A, template.shape,
                      tol_px=1e-4, max_pixels=None, huber=None)
        e = corners @ (r.homography @ frame.ninv).T
        ends.append(e[:, :2] / e[:, 2:])
        sigmas.append(r.corner_sigma_px)
        assert r.samples == clean.size
    spread = np.sqrt(np.var(np.array(ends), axis=0).sum(1))  # per corner, image px
    assert np.median(sigmas) == pytest.approx(np.median(spread), rel=0.25)
    quarter = gn_refine([Channel(template, np.ones(template.shape, bool), image, None)], _A, template.shape,
                        tol_px=1e-4, max_pixels=clean.size // 4, huber=None)
    assert quarter.samples == pytest.approx(clean.size // 4, rel=0.01)
    assert quarter.corner_sigma_px == pytest.approx(2.0 * sigmas[-1], rel=0.25)


@pytest.mark.parametrize("last, step, factor", [
    (None, [1.0, 0.0], 1.0),  # no step before: plain
    ([1.0, 0.0], [0.8, 0.0], 5.0),  # the same way, 0.8 as long: the series' sum, 1 / (1 - 0.8)
    ([1.0, 0.0], [0.6, 0.1], 1.0 / (1.0 - np.hypot(0.6, 0.1))),  # nearly the same way
    ([1.0, 0.0], [0.3, 0.0], 1.0),  # converging fast: plain
    ([1.0, 0.0], [0.93, 0.0], 8.0),  # slowly shrinking (1 / 0.07): at most 8 times
    ([1.0, 0.0], [0.97, 0.0], 1.0),  # hardly shrinking: no series to sum
    ([1.0, 0.0], [0.0, 0.8], 1.0),  # another way
    ([1.0, 0.0], [-0.8, 0.0], 1.0),  # back: oscillating, not converging linearly
])
def test_the_series_step_is_the_rest_of_a_linearly_converging_series(last, step, factor):
    got = ecc._series_factor(None if last is None else np.array(last), np.array(step))
    assert got == pytest.approx(factor)


def test_a_pass_converging_linearly_ends_where_its_plain_steps_end_in_fewer_trials(monkeypatch):
    # every Gauss-Newton step cut to 0.3 of itself: the pass converges linearly (each step
    # 0.7 of the last, as a noise-limited lens pair's passes do at 12 MP, about 0.8)
    template, image = _analytic_pair()
    valid = np.ones(template.shape, bool)
    solve = ecc._gn_solve
    monkeypatch.setattr(ecc, "_gn_solve", lambda eq, damping=0.0: 0.3 * solve(eq, damping))
    start = _A @ np.array([[1, 0, 0.6], [0, 1, -0.4], [0, 0, 1.0]])
    kw = dict(norm_sigma=None, gain_degree=0, huber=None, tol_px=1e-3, series=True)
    series = refine_planes([(template, valid, np.eye(3))], [image], None, start, template.shape, **kw)
    monkeypatch.setattr(ecc, "SERIES_MAX_FACTOR", 1.0)  # no step longer than the plain one
    plain = refine_planes([(template, valid, np.eye(3))], [image], None, start, template.shape, **kw)
    assert series.converged and plain.converged
    assert series.iterations[0] * 2 < plain.iterations[0]  # (4 against 16)
    assert _corner_error(series.homography) < 0.01 and _corner_error(plain.homography) < 0.01


def test_a_steps_length_in_standard_errors_is_its_mahalanobis_length_under_the_noise_covariance():
    rng = np.random.default_rng(3)
    m = rng.normal(size=(6, 6))
    ata = m @ m.T + 6 * np.eye(6)  # summed normal equations
    atb = rng.normal(size=6)
    n, cost = 5000, 0.02  # samples, robust cost per sample
    eq = ecc._SummedEquations(ata, atb, cost, cost, [None], 0.9, 1.0, n, n)
    dp = np.linalg.solve(ata, atb)  # the plain Gauss-Newton step
    promised = float(dp @ atb - 0.5 * dp @ ata @ dp) / n
    cov = 2.0 * cost * np.linalg.inv(ata)  # as the corner standard error takes it
    assert ecc._step_sigmas(promised, eq) == pytest.approx(np.sqrt(dp @ np.linalg.solve(cov, dp)), rel=1e-9)


def test_min_step_sigmas_ends_a_pass_at_a_step_the_noise_could_not_tell_and_not_before():
    # a noisy template: from a start a twentieth of a standard error off its own optimum
    # the first step is taken unmeasured and ends the pass; from one several standard
    # errors off the pass still runs to within a tenth of one of where it ends without
    # the rule
    clean, image = _analytic_pair()
    template = (clean + np.random.default_rng(5).normal(0, 0.1, clean.shape)).astype(np.float32)
    channel = [Channel(template, np.ones(template.shape, bool), image, None)]
    kw = dict(tol_px=1e-6, max_pixels=None, huber=None)
    best = gn_refine(channel, _A, template.shape, **kw)
    frame = ecc._Frame.of(template.shape)
    corners = np.c_[frame.corners_u, frame.corners_v, np.ones(4)]

    def at(h):
        e = corners @ (h @ frame.ninv).T
        return e[:, :2] / e[:, 2:]

    def shifted(px):  # the optimum moved by px along x
        return np.array([[1, 0, px], [0, 1, 0], [0, 0, 1.0]]) @ best.homography

    sigma = best.corner_sigma_px
    kw["photo0"] = best.photometric  # (the gain and offset at the optimum too)
    near = gn_refine(channel, shifted(0.05 * sigma), template.shape, min_step_sigmas=0.25, **kw)
    plain_near = gn_refine(channel, shifted(0.05 * sigma), template.shape, **kw)
    assert near.converged and near.iterations == [1] < plain_near.iterations
    assert np.linalg.norm(at(near.homography) - at(best.homography), axis=1).max() < 0.05 * sigma
    far = gn_refine(channel, shifted(4 * sigma), template.shape, min_step_sigmas=0.25, **kw)
    assert far.iterations[0] > 1
    assert np.linalg.norm(at(far.homography) - at(best.homography), axis=1).max() < 0.1 * sigma
    # hands_over: the rule applies only where it says a later pass takes over; it is asked
    # with the standard error of the corners at the step's start and the pass's samples
    asked = []

    def hands_over(answer):
        return lambda sigma_px, samples: asked.append((sigma_px, samples)) or answer

    kept = gn_refine(channel, shifted(0.05 * sigma), template.shape, min_step_sigmas=0.25,
                     hands_over=hands_over(False), **kw)
    assert kept.iterations == plain_near.iterations and np.array_equal(kept.homography, plain_near.homography)
    handed = gn_refine(channel, shifted(0.05 * sigma), template.shape, min_step_sigmas=0.25,
                       hands_over=hands_over(True), **kw)
    assert handed.iterations == near.iterations and np.array_equal(handed.homography, near.homography)
    assert asked and all(n == near.samples for _, n in asked)
    assert all(s == pytest.approx(sigma, rel=0.05) for s, _ in asked)
