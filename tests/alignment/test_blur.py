"""The phone's relative blur (alignment.blur) and the sharp fine channels it serves.

The scene is analytic: axis-aligned rectangles whose edges are error functions, so
the DSLR image and the phone's aliased Bayer-plane samples are both exact, each
through its own blur, and the truth is known to the last digit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from alignment.blur import CANDIDATE_SIGMAS, estimate_relative_blur, least_misfit
from alignment.ecc import gn_refine, prepare_channels
from alignment.geometry import apply_homography

_DSLR_SHAPE = (300, 400)  # rows, cols
_DSLR_BLUR = 0.6  # the DSLR's own blur (its anti-aliasing filter), DSLR px
_S = 2.4  # DSLR px per plane px (a Bayer plane: two raw px of 1.2 DSLR px)
#: plane px -> DSLR px: scale and a shift, no rotation: every edge runs along the grid
_H_PLANE = np.array([[_S, 0.0, 31.3], [0.0, _S, 24.7], [0.0, 0.0, 1.0]])
_PLANE_SHAPE = (100, 140)


def _rectangles(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(20, 360, 40)
    y0 = rng.uniform(20, 260, 40)
    return np.stack([x0, y0, x0 + rng.uniform(12, 60, 40), y0 + rng.uniform(12, 60, 40), rng.uniform(-1, 1, 40)], 1)


def _scene(x: np.ndarray, y: np.ndarray, sigma: float, rects: np.ndarray) -> np.ndarray:
    """The rectangles seen through a Gaussian of ``sigma`` DSLR px at DSLR px (x, y)."""
    def box(t, a, b):
        k = 1.0 / (np.sqrt(2.0) * sigma)
        return 0.5 * (erf((t - a) * k) - erf((t - b) * k))
    out = np.full(x.shape, 0.5)
    for x0, y0, x1, y1, level in rects:
        out += 0.3 * level * box(x, x0, x1) * box(y, y0, y1)
    return out


def _pair(relative_dslr_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(DSLR image, one phone plane) of the rectangles; the plane's samples see the
    scene through the DSLR's blur and ``relative_dslr_px`` more (DSLR px)."""
    rects = _rectangles()
    yy, xx = np.mgrid[0 : _DSLR_SHAPE[0], 0 : _DSLR_SHAPE[1]].astype(np.float64)
    dslr = _scene(xx, yy, _DSLR_BLUR, rects).astype(np.float32)
    py, px = np.mgrid[0 : _PLANE_SHAPE[0], 0 : _PLANE_SHAPE[1]].astype(np.float64)
    m = apply_homography(_H_PLANE, np.stack([px.ravel(), py.ravel()], 1))
    plane = _scene(m[:, 0], m[:, 1], float(np.hypot(_DSLR_BLUR, relative_dslr_px)), rects)
    return dslr, plane.reshape(_PLANE_SHAPE).astype(np.float32)


@pytest.mark.parametrize("relative", [0.2, 0.45])
def test_the_relative_blur_is_measured_to_a_twentieth_of_a_plane_px(relative):
    dslr, plane = _pair(relative * _S)
    valid = np.ones(_PLANE_SHAPE, bool)
    sigma, costs = estimate_relative_blur([(plane, valid, np.eye(3))], [dslr], None, _H_PLANE)
    assert sigma == pytest.approx(relative, abs=0.05)
    assert len(costs) == len(CANDIDATE_SIGMAS) and least_misfit(costs) < _misfits_of_every_candidate(relative)[0]


def _misfits_of_every_candidate(relative: float) -> list[float]:
    """The misfit of each candidate blur measured on its own (one candidate a call)."""
    dslr, plane = _pair(relative * _S)
    target = [(plane, np.ones(_PLANE_SHAPE, bool), np.eye(3))]
    return [estimate_relative_blur(target, [dslr], None, _H_PLANE, candidates=(c,))[1][0] for c in CANDIDATE_SIGMAS]


@pytest.mark.parametrize("relative", [0.0, 0.2, 0.3, 0.6, 1.2])
def test_the_descent_finds_the_blur_that_measuring_every_candidate_finds(relative):
    # relative blurs whose least misfit lies at the first candidate, near the start, and
    # several candidates past it (1.2 plane px: beyond the last candidate)
    every = _misfits_of_every_candidate(relative)
    k = int(np.argmin(every))
    expected = CANDIDATE_SIGMAS[k]
    if 0 < k < len(every) - 1:
        a, b, _ = np.polyfit(CANDIDATE_SIGMAS[k - 1 : k + 2], every[k - 1 : k + 2], 2)
        expected = float(np.clip(-b / (2 * a), CANDIDATE_SIGMAS[k - 1], CANDIDATE_SIGMAS[k + 1])) if a > 0 else expected
    dslr, plane = _pair(relative * _S)
    sigma, costs = estimate_relative_blur([(plane, np.ones(_PLANE_SHAPE, bool), np.eye(3))], [dslr], None, _H_PLANE)
    assert sigma == expected
    assert least_misfit(costs) == min(every)
    measured = np.isfinite(costs)
    assert np.array_equal(np.asarray(costs)[measured], np.asarray(every)[measured])
    # the least's neighbours are measured; a least near the start leaves candidates out
    assert measured[max(k - 1, 0) : k + 2].all()
    if 1 <= k <= 3:
        assert measured.sum() < len(CANDIDATE_SIGMAS)


def test_no_target_inside_the_dslr_image_gives_no_misfit_and_so_no_sharp_channels():
    dslr, plane = _pair(0.3 * _S)
    far = np.array([[1.0, 0.0, 5000.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ _H_PLANE
    sigma, costs = estimate_relative_blur([(plane, np.ones(_PLANE_SHAPE, bool), np.eye(3))], [dslr], None, far)
    assert sigma == 0.0 and np.isnan(costs).all()


def _corner_error(h: np.ndarray) -> float:
    rows, cols = _PLANE_SHAPE
    c = np.array([[0.0, 0.0], [cols - 1.0, 0.0], [cols - 1.0, rows - 1.0], [0.0, rows - 1.0]])
    return float(np.abs(apply_homography(h, c) - apply_homography(_H_PLANE, c)).max())


def test_sharp_channels_place_grid_aligned_edges_that_a_pre_blurred_aliased_plane_pixel_locks():
    relative = 0.15  # plane px: a phone plane without an anti-aliasing filter
    dslr, plane = _pair(relative * _S)
    valid = np.ones(_PLANE_SHAPE, bool)
    start = _H_PLANE @ np.array([[1.0, 0.0, 0.3], [0.0, 1.0, -0.2], [0.0, 0.0, 1.0]])
    target = [(plane, valid, np.eye(3))]
    errors = {}
    for name, kw in (("blurred", {}), ("sharp", {"relative_blur": relative})):
        channels = prepare_channels(target, [dslr], None, start, blur_sigma=0.5, **kw)
        r = gn_refine(channels, start, _PLANE_SHAPE, gain_degree=0, huber=None, max_pixels=None)
        errors[name] = _corner_error(r.homography)
    # (DSLR px; what is left to the sharp channels is the DSLR's own aliasing, which
    # its spline interpolation cannot undo either)
    assert errors["sharp"] < 0.08
    assert errors["blurred"] > 3 * errors["sharp"]
