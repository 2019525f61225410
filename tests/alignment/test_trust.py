"""The per-pixel trust map: what moved, what is hidden, what clipped is dropped; a
planar pair keeps its pixels; objects with a model of their own map to a fraction
of a pixel; the dataset writes the mask and the map it used."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from alignment import batch, rawio, trust
from alignment.features import match_homography
from alignment.pipeline import align_images
from alignment.scoring import load_truth_map, trust_scores
from isp_rig import simulate as sim

SIZES = dict(phone_size=(512, 384), dslr_size=(768, 512))
LAYERED = sim.SimOptions(parallax=True, motion=True, clipping=True, shading=True, **SIZES)


# ------------------------------------------------------------ the decision, in isolation


def _planes(scene: np.ndarray, rng: np.random.Generator, noise: float = 0.004) -> list[np.ndarray]:
    """Four noisy 'Bayer planes' of one grey scene (what dense_residual compares)."""
    return [(scene + rng.normal(0, noise, scene.shape)).astype(np.float32) for _ in range(4)]


def _textured(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5)
    return 0.2 + 0.6 * (img - img.min()) / (img.max() - img.min())


def test_a_patch_that_moved_and_a_patch_of_other_content_are_dropped_and_the_rest_is_kept():
    rng = np.random.default_rng(0)
    h, w = 192, 256
    scene = _textured(rng, h, w)
    prediction = scene.copy()
    # a 40 px patch whose content sits 4 px further right in the prediction (parallax)
    prediction[40:80, 44:84] = scene[40:80, 40:80]
    # a patch showing something else altogether (an occluder in the other camera)
    prediction[120:160, 150:190] = _textured(rng, 40, 40)
    masks = [np.ones((h, w), bool)] * 4
    res = trust.dense_residual(_planes(scene, rng), [prediction] * 4, masks)
    to_image = np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]])
    tm = trust.assess(res, to_image, np.zeros((h, w), bool), np.zeros((h, w), bool))
    assert (tm.code[48:72, 52:76] != 0).all()  # the moved patch, inside its edges
    assert (tm.code[48:72, 52:76] == trust.MOVED).mean() > 0.8
    assert (tm.code[128:152, 158:182] != 0).all()  # the other content
    untouched = np.ones((h, w), bool)
    untouched[25:95, 25:100] = False
    untouched[105:175, 135:205] = False
    assert (tm.code[untouched] == 0).mean() > 0.97


def test_a_residual_without_the_correlations_has_the_same_flows_and_texture():
    rng = np.random.default_rng(2)
    h, w = 128, 160
    scene = _textured(rng, h, w)
    prediction = np.roll(scene, 2, axis=1)
    planes = _planes(scene, rng)
    masks = [np.ones((h, w), bool)] * 4
    full = trust.dense_residual(planes, [prediction] * 4, masks)
    light = trust.dense_residual(planes, [prediction] * 4, masks, correlations=False)
    assert light.ncc is None and light.ncc_model is None and full.ncc is not None
    for name in ("flow", "fb_error", "snr", "valid"):
        assert np.array_equal(getattr(light, name), getattr(full, name)), name
    assert trust.explained_px(light, 2.0) == trust.explained_px(full, 2.0)


def test_a_residual_measured_again_on_the_same_phone_planes_reuses_their_half_and_is_the_same():
    rng = np.random.default_rng(5)
    h, w = 128, 160
    scene = _textured(rng, h, w)
    planes = _planes(scene, rng)
    masks = [np.ones((h, w), bool)] * 4
    phones = trust.PhoneSides()
    first = trust.dense_residual(planes, [np.roll(scene, 2, axis=1)] * 4, masks, phones=phones)
    moved = [np.roll(scene, -1, axis=0)] * 4
    again = trust.dense_residual(planes, moved, masks, phones=phones)
    fresh = trust.dense_residual(planes, moved, masks)
    assert again.phone is first.phone and fresh.phone is not first.phone
    for name in ("flow", "fb_error", "ncc", "ncc_model", "snr", "valid"):
        assert np.array_equal(getattr(again, name), getattr(fresh, name)), name
    a, b = trust.dominant_motion(again, 2.0), trust.dominant_motion(fresh, 2.0)
    assert np.array_equal(a.homography, b.homography) and np.array_equal(a.outliers, b.outliers)
    # another mask, or other plane arrays of the same values: the phone's half is measured anew
    other_mask = [m.copy() for m in masks]
    other_mask[0][:, :8] = False
    assert trust.dense_residual(planes, moved, other_mask, phones=phones).phone is not first.phone
    copies = [p.copy() for p in planes]
    assert trust.dense_residual(copies, moved, masks, correlations=False, phones=phones).phone.templates[0] is copies[0]


def _flat_window_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured scene with a flat 60 x 80 px window, and a prediction of it under 30 %
    vignetting in which the window's right half shows a flat surface 25 % darker."""
    scene = _textured(rng, h, w)
    scene[60:120, 90:170] = 0.5
    yy, xx = np.mgrid[0:h, 0:w]
    vignetting = 1.0 - 0.3 * (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / 2
    prediction = scene * vignetting.astype(np.float32)
    prediction[60:120, 130:170] *= 0.75
    return scene, prediction


def test_a_flat_surface_of_another_brightness_is_dropped_and_vignetting_is_not():
    rng = np.random.default_rng(4)
    h, w = 192, 256
    scene, prediction = _flat_window_scene(rng, h, w)
    res = trust.dense_residual(_planes(scene, rng), [prediction] * 4, [np.ones((h, w), bool)] * 4)
    to_image = np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]])
    none = np.zeros((h, w), bool)
    tm = trust.assess(res, to_image, none, none)
    # locally normalised, the two flat surfaces match; in level they do not
    assert (tm.code[66:114, 138:164] == trust.OCCLUDED).all()
    assert tm.by_level[66:114, 138:164].mean() > 0.3  # much of it: nothing but the level says so
    assert (tm.code[70:110, 96:116] == 0).all()  # the same flat surface in both
    untouched = np.ones((h, w), bool)
    untouched[55:125, 125:175] = False
    assert (tm.code[untouched] == 0).mean() > 0.99  # a smooth gain is not a mismatch
    off = trust.assess(res, to_image, none, none, trust.TrustParams(level_z=float("inf")))
    assert (off.code[66:114, 138:164] == 0).mean() > 0.3 and not off.by_level.any()


def test_clipped_and_outside_px_are_dropped_with_their_reason():
    rng = np.random.default_rng(1)
    h, w = 96, 128
    scene = _textured(rng, h, w)
    res = trust.dense_residual(_planes(scene, rng), [scene] * 4, [np.ones((h, w), bool)] * 4)
    outside = np.zeros((h, w), bool)
    outside[:, 120:] = True
    clipped = np.zeros((h, w), bool)
    clipped[40:44, 40:44] = True
    tm = trust.assess(res, np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]]), outside, clipped)
    assert (tm.code[:, 120:] == trust.OUTSIDE).all()
    assert (tm.code[40:44, 40:44] == trust.CLIPPED).all()
    assert tm.fractions()["trusted"] > 0.85


@pytest.mark.parametrize("to_image, shape", [
    ([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]], (60, 80)),  # packed planes of a raw
    ([[4.0, 0, 1.5], [0, 4.0, 1.5], [0, 0, 1]], (120, 160)),  # ... binned 2x2 (a 12 MP raw)
    ([[4.0, 0, 1.5], [0, 4.0, 1.5], [0, 0, 1]], (125, 163)),  # a frame past the last block
])
def test_the_code_at_points_is_the_full_resolution_maps(to_image, shape):
    rng = np.random.default_rng(5)
    code = rng.integers(0, len(trust.REASONS), (30, 40)).astype(np.uint8)
    tm = trust.TrustMap(code, np.zeros((30, 40, 2), np.float32), np.zeros((30, 40)), np.zeros((30, 40)),
                        np.array(to_image))
    full = tm.full(shape)
    ys, xs = rng.integers(0, shape[0], 500), rng.integers(0, shape[1], 500)
    assert np.array_equal(tm.code_at(np.stack([xs, ys], 1)), full[ys, xs])
    # points off the frame take the nearest block, as the frame's edge px do
    off = np.array([[-3, 5], [shape[1] + 7, 9], [11, shape[0] + 2]])
    edge = full[np.clip(off[:, 1], 0, shape[0] - 1), np.clip(off[:, 0], 0, shape[1] - 1)]
    assert np.array_equal(tm.code_at(off), edge)


def test_full_resolution_codes_put_the_frame_first_then_clipping_of_either_camera():
    working = trust.TrustMap(np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.float32), np.zeros((4, 4)),
                             np.zeros((4, 4)), np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]]))
    working.code[0, 0] = trust.MOVED
    inside = np.ones((8, 8), bool)
    inside[:, 7] = False
    dslr_clipped = np.zeros((8, 8), bool)
    dslr_clipped[0, 0] = True
    planes = np.zeros((4, 4, 4), np.float32)
    planes[3, 0, 2] = 1.0  # one saturated plane in the cell at rows 6-7, cols 0-1
    code = trust.full_resolution_codes(working, (8, 8), inside, dslr_clipped, planes)
    assert code[0, 0] == trust.CLIPPED and code[1, 1] == trust.MOVED
    assert (code[:, 7] == trust.OUTSIDE).all()
    assert (code[5:8, 0:3] == trust.CLIPPED).all()  # the saturated cell and its neighbours
    assert code[3, 4] == 0


def test_enclosed_finds_the_islands_that_do_not_touch_the_edge():
    mask = np.ones((20, 20), bool)
    mask[5:15, 5:15] = False
    mask[8:11, 8:11] = True  # an island inside the dropped square
    islands = trust.enclosed(mask, 100)
    assert islands[9, 9] and islands.sum() == 9
    assert not trust.enclosed(mask, 5).any()  # too large to count as an island


# ------------------------------------------------------------- the background wins


def test_a_wide_spread_background_wins_over_a_richly_textured_object_in_front():
    rng = np.random.default_rng(2)
    h, w = 360, 480
    a = np.full((h, w), 128, np.uint8)
    for _ in range(60):  # a background of a few spread blobs
        cv2.circle(a, (int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10))), int(rng.integers(3, 8)),
                   int(rng.integers(0, 255)), -1, cv2.LINE_AA)
    patch = cv2.resize((rng.random((40, 40)) * 255).astype(np.uint8), (120, 120), interpolation=cv2.INTER_NEAREST)
    b = a.copy()
    a[100:220, 150:270] = patch  # an object dense in features ...
    b[100:220, 180:300] = patch  # ... 30 px further in the other view (parallax)
    single = match_homography(a, b, layers=1)
    assert abs(single.homography[0, 2] - 30) < 1  # one MAGSAC run locks onto the object
    fm = match_homography(a, b, layers=3)
    assert len(fm.layers) >= 2 and fm.layers[0][0] > fm.inliers  # the object held more inliers
    np.testing.assert_allclose(fm.homography, np.eye(3), atol=0.02)  # the background won


@pytest.mark.parametrize("radial", [0, 2])  # radial terms beside the homography leave the object an outlier
def test_the_dominant_motion_is_the_background_shift_and_its_outliers_are_the_object(radial):
    rng = np.random.default_rng(3)
    h, w = 192, 256
    scene = _textured(rng, h + 20, w + 20)
    # what the phone shows at x, the prediction shows at x + (-3, 2) ...
    phone = scene[10:10 + h, 10:10 + w].copy()
    prediction = scene[8:8 + h, 13:13 + w].copy()
    # ... except in a patch that moved by (-10, 10) (an object nearer the cameras)
    phone[60:120, 80:150] = scene[70:130, 100:170]
    prediction[60:120, 80:150] = scene[60:120, 110:180]
    res = trust.dense_residual(_planes(phone, rng), [prediction] * 4, [np.ones((h, w), bool)] * 4)
    motion = trust.dominant_motion(res, step=2.0, margin_px=4.0, radial=radial)
    pts = np.array([[20.0, 20.0], [230.0, 20.0], [20.0, 170.0], [230.0, 170.0]])
    moved = cv2.perspectiveTransform(pts[None], motion.homography)[0]
    np.testing.assert_allclose(moved - pts, np.tile([-3.0, 2.0], (4, 1)), atol=0.15)
    assert motion.outliers[70:110, 90:140].mean() > 0.9
    outside = np.ones((h, w), bool)
    outside[50:130, 70:160] = False
    assert motion.outliers[outside].mean() < 0.02
    assert len(motion.radial) == radial and np.all(np.abs(motion.radial) < 0.01)
    # no lens bends this frame: a start composes MAGSAC's homography, as a homography pair's
    assert not motion.lens_bends


def _seen_through_a_lens(scene: np.ndarray, q1: float) -> np.ndarray:
    """What a phone whose lens bends ``scene`` radially shows: its px x shows the scene at
    ``x_u = c + (x - c) (1 + q1 r^2)`` (c the centre, r in half the longer side)."""
    h, w = scene.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy, half = (w - 1) / 2.0, (h - 1) / 2.0, max(h, w) / 2.0
    f = 1.0 + q1 * ((xx - cx) ** 2 + (yy - cy) ** 2) / half**2
    return cv2.remap(scene, cx + (xx - cx) * f, cy + (yy - cy) * f, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def test_a_lens_is_the_backgrounds_motion_when_the_motion_holds_radial_terms():
    # the flow of a pair whose model holds no lens yet (the background start): the lens
    # moves the textured corners px away from any homography, and they are no object
    rng = np.random.default_rng(8)
    h, w = 192, 256
    scene = _textured(rng, h, w)
    phone = _seen_through_a_lens(scene, 0.04)
    res = trust.dense_residual(_planes(phone, rng), [scene] * 4, [np.ones((h, w), bool)] * 4)
    plain = trust.dominant_motion(res, step=2.0, margin_px=4.0)
    lens = trust.dominant_motion(res, step=2.0, margin_px=4.0, radial=2)
    inner = (slice(16, -16), slice(16, -16))  # (the frame's edge shows what the scene lacks)
    assert plain.outliers[inner].mean() > 0.1 and len(plain.radial) == 0
    assert lens.outliers[inner].mean() < 0.01
    # (near the frame's middle r^2 trades with the homography's scale: q1 comes out 0.035)
    assert abs(lens.radial[0] - 0.04) < 0.01 and abs(lens.radial[1]) < 0.01


def _corner_move(h: np.ndarray, rows: int, cols: int) -> float:
    """How far (px) a homography moves the corners of a (rows, cols) frame."""
    corners = np.array([[0.0, 0.0], [cols - 1, 0.0], [0.0, rows - 1], [cols - 1, rows - 1]])
    return float(np.abs(cv2.perspectiveTransform(corners[None], h)[0] - corners).max())


def test_through_a_lens_the_motion_fitted_with_the_lens_is_found_again_within_half_a_px():
    # the background start composes the motion's homography into its start and measures
    # again: through a lens, the homography fitted with the lens terms is the plane's, so
    # the second measurement finds (almost) nothing left to correct
    rng = np.random.default_rng(8)
    h, w = 192, 256
    scene = _textured(rng, h, w)
    phone = _seen_through_a_lens(scene, 0.04)
    off = np.array([[1.0, 0.01, 2.5], [-0.01, 1.0, -1.5], [0.0, 0.0, 1.0]])  # the start, 3 px off
    first = cv2.warpPerspective(scene, off, (w, h), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_CUBIC,
                                borderMode=cv2.BORDER_REFLECT)
    masks = [np.ones((h, w), bool)] * 4
    planes = _planes(phone, rng)
    motion = trust.dominant_motion(trust.dense_residual(planes, [first] * 4, masks), step=2.0, margin_px=4.0,
                                   radial=2)
    assert motion.lens_bends and _corner_move(motion.lens_homography, h, w) > 1.0  # the first correction
    again = cv2.warpPerspective(first, motion.lens_homography, (w, h), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_CUBIC,
                                borderMode=cv2.BORDER_REFLECT)
    second = trust.dominant_motion(trust.dense_residual(planes, [again] * 4, masks), step=2.0, margin_px=4.0, radial=2)
    assert _corner_move(second.lens_homography, h, w) < 0.5
    assert abs(second.radial[0] - motion.radial[0]) < 0.005  # the lens, found again


@pytest.mark.parametrize("radial, followed, searches", [(2, None, [trust.SEED_SEARCH_ITERATIONS]),
                                                       (2, 0.5, [trust.SEED_SEARCH_ITERATIONS,
                                                                 trust.FULL_SEARCH_ITERATIONS]),
                                                       (0, None, [trust.FULL_SEARCH_ITERATIONS])])
def test_the_full_search_runs_only_when_half_or_fewer_follow_the_fit_from_the_short_one(monkeypatch, radial,
                                                                                        followed, searches):
    # a background shifted by (-3, 2) seen through a lens: the fit from the short search's
    # seed is followed by nearly every sampled px (with ``followed``: as if only that share were)
    rng = np.random.default_rng(4)
    h, w = 192, 256
    scene = _textured(rng, h + 40, w + 40)
    phone = _seen_through_a_lens(scene[20 : 20 + h, 20 : 20 + w], 0.03 if radial else 0.0)
    prediction = scene[18 : 18 + h, 23 : 23 + w].copy()
    made = []
    magsac = trust._magsac
    monkeypatch.setattr(trust, "_magsac", lambda *a: made.append(a[-1]) or magsac(*a))
    if followed is not None:
        monkeypatch.setattr(trust._LensHomography, "followed", lambda *a: followed)
    res = trust.dense_residual(_planes(phone, rng), [prediction] * 4, [np.ones((h, w), bool)] * 4)
    motion = trust.dominant_motion(res, step=2.0, margin_px=4.0, radial=radial)
    assert made == searches
    # the plane's motion at the frame's centre, where the lens moves nothing
    centre = np.array([[[(w - 1) / 2.0, (h - 1) / 2.0]]])
    np.testing.assert_allclose(cv2.perspectiveTransform(centre, motion.lens_homography)[0, 0] - centre[0, 0],
                               [-3.0, 2.0], atol=0.2)


def test_the_lens_and_homography_fit_recovers_them_through_noise_and_a_tenth_of_outliers():
    from alignment.trust import _LensHomography

    rng = np.random.default_rng(9)
    truth = _LensHomography(np.array([[1.01, 0.02, 3.0], [0.01, 0.99, -2.0], [1e-5, -2e-5, 1.0]]),
                            np.array([0.02, -0.01]), (240, 320))
    src = rng.uniform(0, [319, 239], (5000, 2))
    dst = np.stack(truth.map(src[:, 0], src[:, 1]), 1) + rng.normal(0, 0.3, src.shape)
    dst[:500] += rng.uniform(3, 10, (500, 2))  # a tenth that follow something else
    start = _LensHomography(np.eye(3), np.zeros(0), (240, 320)).with_terms(2)
    fit = _LensHomography.fit(src, dst, start, 1.0)
    np.testing.assert_allclose(fit.radial, truth.radial, atol=2e-3)
    grid = np.stack(np.meshgrid(np.arange(0, 320, 20.0), np.arange(0, 240, 20.0)), -1).reshape(-1, 2)
    off = np.hypot(*(np.stack(fit.map(grid[:, 0], grid[:, 1])) - np.stack(truth.map(grid[:, 0], grid[:, 1]))))
    assert off.max() < 0.1  # (0.05: Cauchy's loss still feels outliers 3 to 10 scales off, all one way)
    assert _LensHomography.fit(src, dst, truth.with_terms(0), 1.0).radial.size == 0  # no terms: the start


def _chart(h: int, w: int, dx: int = 0, dy: int = 0) -> np.ndarray:
    """Flat patches of different greys with straight edges on a grey card (a colour
    chart), shifted by (dx, dy) whole px: edges only, no texture along them."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w), 0.45, np.float32)
    levels = np.linspace(0.1, 0.9, 12)
    for k, level in enumerate(levels):
        r, c = divmod(k, 4)
        x0, y0 = 12 + c * 60 + dx, 12 + r * 60 + dy
        inside = (xx >= x0) & (xx < x0 + 44) & (yy >= y0) & (yy < y0 + 44)
        img[inside] = level
    return cv2.GaussianBlur(img, (0, 0), 1.0)


def test_a_model_off_on_a_scene_of_straight_edges_is_one_motion_not_edges_that_moved():
    # the prediction a model 2 px off gives: every patch edge's flow is fixed across it and
    # free along it (the aperture problem); what slides along an edge did not move
    rng = np.random.default_rng(5)
    h, w = 196, 256
    phone = _chart(h, w)
    prediction = _chart(h, w, dx=-2, dy=1)
    res = trust.dense_residual(_planes(phone, rng, noise=0.002), [prediction] * 4, [np.ones((h, w), bool)] * 4)
    motion = trust.dominant_motion(res, step=2.0, margin_px=4.0)
    pts = np.array([[40.0, 40.0], [200.0, 40.0], [40.0, 150.0], [200.0, 150.0]])
    moved = cv2.perspectiveTransform(pts[None], motion.homography)[0]
    np.testing.assert_allclose(moved - pts, np.tile([-2.0, 1.0], (4, 1)), atol=0.15)
    assert motion.outliers.mean() < 0.02


def test_measurable_length_keeps_the_part_across_an_edge_and_all_of_it_in_texture():
    h, w = 64, 64
    edge = np.zeros((h, w), np.float32)
    edge[:, 32:] = 1.0  # a vertical edge: x is fixed, y is free
    tensor = trust.structure_tensor(cv2.GaussianBlur(edge, (0, 0), 1.0), np.ones((h, w), bool))
    vx, vy = np.full((h, w), 0.6, np.float32), np.full((h, w), 0.8, np.float32)
    np.testing.assert_allclose(trust.measurable_length(vx, vy, tensor)[32, 32], 0.6, atol=0.01)
    texture = _textured(np.random.default_rng(6), h, w)
    length = trust.measurable_length(vx, vy, trust.structure_tensor(texture, np.ones((h, w), bool)))
    assert 0.5 < np.median(length[8:-8, 8:-8]) <= 1.0


def test_explained_px_counts_the_textured_px_whose_residual_flow_stays_within_the_bound():
    rng = np.random.default_rng(4)
    scene = _textured(rng, 140, 180)
    phone = scene[10:130, 10:170].copy()
    for shift, lo, hi in [(0, 0.9, 1.0), (3, 0.0, 0.02)]:  # a 3 working px shift = 6 phone px
        prediction = scene[10:130, 10 + shift:170 + shift].copy()
        res = trust.dense_residual(_planes(phone, rng), [prediction] * 4, [np.ones(phone.shape, bool)] * 4)
        textured = int((res.snr >= 4.0).sum())
        assert lo * textured <= trust.explained_px(res, step=2.0, max_px=1.0) <= hi * textured


# --------------------------------------------------------- the whole pipeline


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """Two layered pairs and one planar pair, aligned once (with and without layers)."""
    root = tmp_path_factory.mktemp("trust")
    layered = sim.simulate_pairs(root / "layered", 2, seed=3, options=LAYERED, progress=False)
    planar = sim.simulate_pairs(root / "planar", 1, seed=3, options=sim.SimOptions(**SIZES), progress=False)
    out = {}
    for folder in layered + planar:
        raw = rawio.read_raw(folder / "phone.dng")
        dslr = rawio.read_any(folder / "dslr.jpg")
        out[folder] = (align_images(raw, dslr), align_images(raw, dslr, trust_layers=False), sim.load_truth(folder))
    return out


def _map_and_mask(alignment, shape):
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w]
    mapped = alignment.dense_map_points(np.stack([xs.ravel(), ys.ravel()], 1)).reshape(h, w, 2)
    return mapped, alignment.trust.full(shape) == 0


def test_trusted_px_of_layered_pairs_are_within_half_a_dslr_px_of_the_truth(aligned):
    for folder, (a, _, truth) in aligned.items():
        if truth.dense is None:
            continue
        assert a.ok, (folder, a.quality.message)
        mapped, trusted = _map_and_mask(a, truth.dense.shape[:2])
        scores = trust_scores(mapped, trusted, truth.dense, truth.clipped)
        assert scores["precision_05"] > 0.99, (folder, scores)
        assert scores["coverage"] > 0.75, (folder, scores)


def test_layered_pairs_keep_their_trusted_px_right_when_the_decisions_are_measured_on_a_coarser_grid(aligned):
    # the background start, the model scores and the pre-fit mask on 2 x 2 blocks of the
    # working grid (what a 12 MP raw gets, reduce.ResidualGrid; here a 128 x 96 grid, four
    # times coarser than a 12 MP raw's); the trust map as before
    kept_out = []
    for folder, (_, _, truth) in aligned.items():
        if truth.dense is None:
            continue
        a = align_images(rawio.read_raw(folder / "phone.dng"), rawio.read_any(folder / "dslr.jpg"),
                         trust_grid_pixels=20_000)
        assert a.ok, (folder, a.quality.message)
        kept_out.append(a.quality.prefit_outliers)
        mapped, trusted = _map_and_mask(a, truth.dense.shape[:2])
        scores = trust_scores(mapped, trusted, truth.dense, truth.clipped)
        assert scores["precision_05"] > 0.99, (folder, scores)
        assert scores["coverage"] > 0.75, (folder, scores)
    assert max(kept_out) > 0.05  # what moved is found on the coarser grid too


def _moving_px(truth):
    h, w = truth.dense.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    bg = truth.map_points(np.stack([xs.ravel(), ys.ravel()], 1).astype(float)).reshape(h, w, 2)
    off = np.linalg.norm(truth.dense - bg, axis=-1)
    return np.isfinite(off) & (off > 2.0)


def test_what_moved_is_dropped_by_the_global_model_or_mapped_by_its_own(aligned):
    for folder, (with_layers, without, truth) in aligned.items():
        if truth.dense is None:
            continue
        moving = _moving_px(truth)
        assert moving.mean() > 0.02
        right = {}
        for name, a in (("global model", without), ("with layers", with_layers)):
            mapped, trusted = _map_and_mask(a, moving.shape)
            err = np.nan_to_num(np.linalg.norm(mapped - truth.dense, axis=-1), nan=np.inf)
            # what moved is never trusted with a wrong map ...
            assert (moving & trusted & (err > 0.5)).sum() < 0.03 * moving.sum(), (folder, name)
            right[name] = (moving & trusted & (err <= 0.5)).sum()
        # ... and the global model alone trusts none of it; layers only add px mapped right
        assert right["global model"] < 0.01 * moving.sum()
        assert right["with layers"] >= right["global model"]


def test_a_planar_pair_keeps_its_in_frame_px_and_its_accuracy(aligned):
    for folder, (a, _, truth) in aligned.items():
        if truth.dense is not None:
            continue
        assert a.ok and a.layers == []
        assert a.quality.trusted_fraction > 0.98, a.quality.dropped
        w, h = truth.phone_size
        corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
        assert np.median(np.linalg.norm(a.map_points(corners) - truth.map_points(corners), axis=1)) < 0.1


def _prepared_with_truth(folder):
    """The phone and DSLR as the pipeline prepares them, and the background's homography
    in their working px (phone working px -> DSLR working px)."""
    from alignment.prepare import prepare_dslr, prepare_phone

    p = prepare_phone(rawio.read_raw(folder / "phone.dng"))
    d = prepare_dslr(rawio.read_any(folder / "dslr.jpg"))
    truth = sim.load_truth(folder)
    assert truth.distortion is None  # layered scenes: the background is one homography
    h_true = np.linalg.inv(d.to_image) @ truth.phone_to_dslr @ p.to_image
    return p, d, h_true / h_true[2, 2]


def _corner_error(p, d, h_a, h_b) -> float:
    """Largest distance (DSLR working px) between two models at the phone's working corners."""
    rows, cols = p.lum.shape
    corners = np.array([[[0, 0], [cols - 1, 0], [0, rows - 1], [cols - 1, rows - 1]]], np.float64)
    return float(np.abs(cv2.perspectiveTransform(corners, h_a) - cv2.perspectiveTransform(corners, h_b)).max())


@pytest.mark.parametrize("grid_factor", [1, 2])
def test_a_start_pulled_off_the_background_is_moved_back_onto_it_before_ecc(aligned, grid_factor):
    from alignment.pipeline import AlignOptions, _background_start, _explained_scores
    from alignment.reduce import ResidualGrid

    folder = next(f for f, (_, _, t) in aligned.items() if t.dense is not None)
    p, d, h_true = _prepared_with_truth(folder)
    # (grid factor 2: the residuals measured on 2 x 2 blocks of the working grid, as at 12 MP)
    grid = ResidualGrid(p, grid_factor)
    # a start off by a shift and a turn, as features locked partly on a near object give
    rows, cols = p.lum.shape
    turn = cv2.getRotationMatrix2D(((cols - 1) / 2, (rows - 1) / 2), 0.4, 1.0)
    off = np.vstack([turn, [0, 0, 1]]) @ np.array([[1, 0, 4.0], [0, 1, -3.0], [0, 0, 1]])
    start = h_true @ off
    assert _corner_error(p, d, start, h_true) > 4.0
    h_bg, mask = _background_start(grid, d, start, AlignOptions())
    # within a working px or so: well inside the reach of ECC, which refines from here
    assert _corner_error(p, d, h_bg, h_true) < 1.5
    assert 0.5 < mask.mean() < p.valid.mean()  # what moved is kept out of ECC
    # of two candidate models, the one that explains more of the phone wins, in either order
    zero = np.zeros(2)
    for order in ((start, h_bg), (h_bg, start)):
        found = _explained_scores(grid, d, [(order[0], zero), (order[1], zero)])
        assert order[int(np.argmax(found))] is h_bg


@pytest.mark.parametrize("bends_first", [True, False])
def test_the_background_start_keeps_the_first_rounds_choice_of_homography_in_every_round(aligned, monkeypatch,
                                                                                          bends_first):
    # a start whose rounds switched between MAGSAC's homography and the one fitted with the
    # lens terms would not settle: the first round decides, whatever the later ones find
    from alignment import pipeline
    from alignment.pipeline import AlignOptions, _background_start
    from alignment.reduce import ResidualGrid

    folder = next(f for f, (_, _, t) in aligned.items() if t.dense is not None)
    p, d, h_true = _prepared_with_truth(folder)
    grid = ResidualGrid(p, 1)
    start = h_true @ np.array([[1, 0, 4.0], [0, 1, -3.0], [0, 0, 1]])  # 5 px off: more than one round
    found = []
    real = trust.dominant_motion

    def flipping(*args, **kwargs):
        motion = real(*args, **kwargs)
        found.append(dataclasses.replace(motion, lens_homography=motion.homography.copy(),
                                         lens_bends=bends_first if not found else not bends_first))
        return found[-1]

    composed = []
    motion_of = ResidualGrid.motion
    monkeypatch.setattr(pipeline.trust, "dominant_motion", flipping)
    monkeypatch.setattr(ResidualGrid, "motion", lambda self, h: composed.append(h) or motion_of(self, h))
    _background_start(grid, d, start, AlignOptions())
    assert len(found) >= 2 and len(composed) == len(found)
    for motion, h in zip(found, composed):
        assert h is (motion.lens_homography if bends_first else motion.homography)


def test_the_verdict_rejects_a_pair_with_too_little_trusted(aligned):
    folder = next(f for f, (_, _, t) in aligned.items() if t.dense is not None)
    raw = rawio.read_raw(folder / "phone.dng")
    a = align_images(raw, rawio.read_any(folder / "dslr.jpg"), min_trusted=0.995)
    assert not a.ok and a.quality.reason == "too_little_trusted"
    assert "can be trusted" in a.quality.message


def test_dataset_pair_has_the_trust_mask_the_map_and_scores_against_the_truth(aligned, tmp_path):
    folder = next(f for f, (_, _, t) in aligned.items() if t.dense is not None)
    job = batch.find_pairs(folder.parent)[0]
    record = batch.process_pair(job, str(tmp_path), "train", {}, save_maps=True)
    assert record["status"] == "ok", record.get("message")
    mask = cv2.imread(str(tmp_path / record["files"]["mask"]), cv2.IMREAD_UNCHANGED) > 0
    mapped = np.load(tmp_path / record["files"]["map"])
    truth, clipped = load_truth_map(job.phone.parent)
    assert mapped.dtype == np.float32 and mapped.shape == truth.shape
    assert record["trusted_fraction"] == pytest.approx(mask.mean())
    assert set(record["dropped"]) == set(trust.REASONS[1:])
    assert sum(record["dropped"].values()) == pytest.approx(1 - mask.mean(), abs=1e-4)
    scores = record["truth_trust"]
    assert scores == pytest.approx(trust_scores(mapped, mask, truth, clipped), rel=1e-6, nan_ok=True)
    assert scores["precision_05"] > 0.99 and scores["clipped_trusted"] < 0.01
    # the map says where the target was sampled: the target equals the DSLR read there
    dslr = rawio.read_rgb(job.dslr).rgb
    ys, xs = np.nonzero(mask)
    pick = np.random.default_rng(0).choice(len(ys), 200, replace=False)
    target = cv2.imread(str(tmp_path / record["files"]["target"]), cv2.IMREAD_UNCHANGED)[..., ::-1] / 65535.0
    at = mapped[ys[pick], xs[pick]]
    near = dslr[np.round(at[:, 1]).astype(int), np.round(at[:, 0]).astype(int)]
    assert np.median(np.abs(target[ys[pick], xs[pick]] - near)) < 0.05
    json.dumps(record)  # the record is plain JSON


def test_a_rejected_alignment_is_strict_json_and_reads_back():
    flat = np.full((96, 128, 3), 0.5, np.float32)
    a = align_images(flat, flat)
    assert not a.ok
    text = a.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    back = type(a).from_json(text)
    assert np.isnan(back.homography).all() and back.quality.reason == a.quality.reason
