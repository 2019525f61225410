"""Local refinement (alignment.local): the smooth field, tile residuals, field fitting."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from alignment.ecc import prepare_channels
from alignment.local import (SmoothField, TileChannel, TileResiduals, _fit_spline, _hull, _inside_convex,
                             _inside_rows, _left_to_go, _overshoot_damping, _second_differences, _tile_inverses,
                             fit_field, measure_tiles, refine_local, warp_channels)

HALF_RES = np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]])


def _field() -> SmoothField:
    rng = np.random.default_rng(0)
    f = SmoothField(3, (255.5, 191.5), 256.0, rng.normal(0, 0.3, (10, 2)), bounds=(10.0, 10.0, 500.0, 370.0))
    f.grid = rng.normal(0, 0.2, (6, 8, 2))
    f.grid_origin, f.grid_step = (32.0, 32.0), (64.0, 64.0)
    f.radial = (255.5, 191.5, 256.0, 0.02, -0.003)
    return f


def _field_with_hull() -> SmoothField:
    """:func:`_field` measured on part of the frame only: outside the hull of its tiles
    the smooth parts hold the value at the hull's nearest point."""
    f = _field()
    f.hull = _hull(np.array([[60.0, 40.0], [420.0, 70.0], [380.0, 330.0], [90.0, 300.0]]), 8.0)
    return f


@pytest.mark.parametrize("make", [_field, _field_with_hull], ids=["whole", "hull"])
@pytest.mark.parametrize("to_image", [np.eye(3), HALF_RES], ids=["full", "half"])
def test_dense_field_equals_pointwise_evaluation(to_image, make):
    f = make()
    rows, cols = 40, 60
    if f.hull is not None:
        rows, cols = 200, 260  # (the hull's outside reaches into the grid)
    d = f.dense((rows, cols), to_image)
    yy, xx = np.mgrid[0:rows, 0:cols]
    pts = np.stack([xx.ravel() * to_image[0, 0] + to_image[0, 2], yy.ravel() * to_image[1, 1] + to_image[1, 2]], 1)
    ref = f(pts) / [to_image[0, 0], to_image[1, 1]]
    assert np.abs(d.reshape(-1, 2) - ref).max() < 1e-9


_POLYGONS = {
    "grown tiles": _hull(np.array([[60.0, 40.0], [420.0, 70.0], [380.0, 330.0], [90.0, 300.0]]), 8.0),
    # (its sides on px of the full grid: px on the polygon count as inside)
    "level and plumb edges": np.array([[50.0, 30.0], [50.0, 120.0], [150.0, 120.0], [150.0, 30.0]])[::-1].copy(),
    "reaching past the grid": _hull(np.array([[-80.0, 100.0], [200.0, -60.0], [700.0, 300.0], [150.0, 500.0]]), 3.0),
    "off the grid": _hull(np.array([[900.0, 900.0], [1000.0, 900.0], [950.0, 1000.0]]), 1.0),
    "many vertices": _hull(np.random.default_rng(4).uniform(20, 480, (40, 2)), 5.0),
}


@pytest.mark.parametrize("poly", list(_POLYGONS.values()), ids=list(_POLYGONS))
@pytest.mark.parametrize("to_image", [np.eye(3), np.array([[4.0, 0, 1], [0, 4.0, 2], [0, 0, 1]])], ids=["full", "plane"])
def test_the_rows_inside_a_polygon_are_exactly_those_its_px_test_finds(poly, to_image):
    rows, cols = 130, 170
    x = np.arange(cols) * to_image[0, 0] + to_image[0, 2]
    y = np.arange(rows) * to_image[1, 1] + to_image[1, 2]
    lo, hi = _inside_rows(poly, x, y)
    by_rows = np.arange(cols)[None, :] >= lo[:, None]
    by_rows &= np.arange(cols)[None, :] < hi[:, None]
    assert np.array_equal(by_rows, _inside_convex(poly, x[None, :], y[:, None]))
    assert by_rows.any() == (poly.min() < 500)


@pytest.mark.parametrize("poly", [p for name, p in _POLYGONS.items() if name != "off the grid"],
                         ids=[name for name in _POLYGONS if name != "off the grid"])
@pytest.mark.parametrize("bounds", [(10.0, 10.0, 500.0, 370.0), (130.0, 60.0, 260.0, 150.0), None],
                         ids=["frame", "bounds inside the grid", "none"])
def test_the_px_outside_the_hull_take_the_value_at_their_nearest_point_exactly(poly, bounds):
    # many px share a point (on a vertex, beyond the bounds): the grid evaluates each
    # point once and must give every px what the field gives it alone, to the bit
    f = _field()
    f.hull, f.bounds = poly, bounds
    rows, cols = 200, 260
    d = f.dense((rows, cols), HALF_RES)
    x = np.arange(cols) * 2.0 + 0.5
    y = np.arange(rows) * 2.0 + 0.5
    ii, jj = np.nonzero(~_inside_convex(poly, x[None, :], y[:, None]))
    assert len(ii) > 1000
    pts = np.stack([x[jj], y[ii]], 1)
    smooth = SmoothField(f.degree, f.centre, f.scale, f.coef, f.bounds, f.grid, f.grid_origin, f.grid_step, None, f.hull)
    ref = smooth(pts) + f.radial_part(pts[:, 0], pts[:, 1])
    assert np.array_equal(d[ii, jj], ref / [2.0, 2.0])


def test_field_dict_round_trip_is_exact():
    f = _field()
    g = SmoothField.from_dict(f.to_dict())
    pts = np.random.default_rng(1).uniform(-50, 600, (200, 2))
    assert np.abs(f(pts) - g(pts)).max() < 1e-5


@pytest.mark.parametrize("radial", [(255.5, 191.5, 256.0, 0.02, -0.003),
                                    (255.5, 191.5, 256.0, 0.02, -0.003, 4e-4, -6e-5)],
                         ids=["two coefficients (a record before #11's thirty-second stop)", "four coefficients"])
def test_the_radial_part_is_the_polynomial_its_record_holds_and_survives_the_round_trip(radial):
    f = SmoothField(radial=radial)
    back = SmoothField.from_dict(f.to_dict())
    pts = np.random.default_rng(2).uniform(-50, 600, (200, 2))
    d = pts - np.array(radial[:2])
    rho2 = (d * d).sum(1) / radial[2] ** 2
    expected = d * sum(q * rho2 ** (k + 1) for k, q in enumerate(radial[3:]))[:, None]
    got = f.radial_part(pts[:, 0], pts[:, 1])
    assert np.abs(got - expected).max() < 1e-9
    assert back.radial == radial and np.array_equal(back.radial_part(pts[:, 0], pts[:, 1]), got)


def test_polynomial_and_spline_are_clamped_but_the_radial_lens_model_is_not():
    f = _field()
    inside = np.array([[500.0, 370.0]])
    far = np.array([[5000.0, 3700.0]])
    no_radial = f.without_radial()
    assert np.allclose(no_radial(far), no_radial(inside))
    assert np.abs(f.radial_part(far[:, 0], far[:, 1])).max() > 100


def test_empty_field_is_zero():
    f = SmoothField()
    assert f.empty
    assert np.all(f(np.array([[3.0, 4.0]])) == 0)


def _tile_values(fn, n=14):
    xs, ys = np.meshgrid(np.linspace(16, 1008, n), np.linspace(16, 752, n))
    c = np.stack([xs.ravel(), ys.ravel()], 1)
    return c, fn(c)


def test_fit_field_keeps_no_field_for_pure_noise():
    rng = np.random.default_rng(3)
    c, _ = _tile_values(lambda c: c)
    v = rng.normal(0, 0.03, c.shape)
    f = fit_field(c, v, np.full(len(c), 0.03), np.ones(len(c), bool), (511.5, 383.5), 512.0)
    assert f.degree == -1 and f.grid is None


def test_fit_field_recovers_a_smooth_distortion_field():
    rng = np.random.default_rng(4)

    def truth(c):
        n = (c - [511.5, 383.5]) / 512.0
        r2 = (n**2).sum(1, keepdims=True)
        return 512.0 * n * (0.01 * r2) + [0.3, -0.2]

    c, v = _tile_values(truth)
    f = fit_field(c, v + rng.normal(0, 0.02, v.shape), np.full(len(c), 0.02), np.ones(len(c), bool),
                  (511.5, 383.5), 512.0)
    assert f.degree >= 3
    assert np.abs(f(c) - truth(c)).max() < 0.05


@pytest.mark.parametrize("grid_shape", [(5, 7), (9, 4)], ids=["wide", "tall"])
def test_the_spline_grid_solves_its_penalised_normal_equations(grid_shape):
    # the banded solve must give what the dense system gives: (W + lam w_med P + eps) u = W v
    gy, gx = grid_shape
    rng = np.random.default_rng(6)
    ys, xs = np.mgrid[0:gy, 0:gx] * 40.0 + 20.0
    centres = np.stack([xs.ravel(), ys.ravel()], 1)
    values = rng.normal(0, 0.3, (gy * gx, 2))
    sigma = rng.uniform(0.02, 0.2, gy * gx)
    sel = rng.random(gy * gx) > 0.3
    lam = 3.0
    # robust_k so large that no node is reweighted: the last of the three solves is the plain one
    u = _fit_spline(centres, values, sigma, sel, grid_shape, (lam,), robust_k=1e12, select=False)[0]
    w = np.where(sel, 1.0 / sigma**2, 0.0)
    w_med = float(np.median(w[sel]))
    d2 = _second_differences(gy, gx).toarray()
    lhs = np.diag(w + 1e-9 * w_med) + lam * w_med * d2.T @ d2
    np.testing.assert_allclose(u.reshape(-1, 2), np.linalg.solve(lhs, w[:, None] * values), atol=1e-9)


def test_fit_field_ignores_outlier_tiles():
    rng = np.random.default_rng(5)
    c, v = _tile_values(lambda c: np.tile([0.5, -0.25], (len(c), 1)))
    v = v + rng.normal(0, 0.01, v.shape)
    v[::17] += 5.0  # a few wrong tiles
    f = fit_field(c, v, np.full(len(c), 0.01), np.ones(len(c), bool), (511.5, 383.5), 512.0)
    assert np.abs(f(c[1::17]) - [0.5, -0.25]).max() < 0.05


@pytest.mark.parametrize("singular", [False, True], ids=["all solvable", "one singular"])
def test_the_tiles_systems_are_inverted_together_as_each_alone_and_a_singular_one_is_left_out(singular):
    rng = np.random.default_rng(5)
    a = rng.normal(size=(40, 10, 10))
    a = a @ a.transpose(0, 2, 1) * rng.uniform(1e-3, 1e6, (40, 1, 1))
    if singular:
        a[7] = 0.0  # (its trace is zero too: no regularisation saves it)
    idx, inv = _tile_inverses(a, np.arange(3, 40))
    assert list(idx) == [i for i in range(3, 40) if not (singular and i == 7)]
    for i, got in zip(idx, inv):
        assert np.array_equal(got, np.linalg.inv(a[i] + np.eye(10) * 1e-12 * np.trace(a[i])))


def test_measure_tiles_finds_a_known_shift_in_all_channels():
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.normal(size=(256, 320)).astype(np.float32), (0, 0), 2.0)
    shift = (0.15, -0.1)  # phone image px; channels are half resolution
    # warped(x) = base(x + shift / 2) through an exact cubic spline (OpenCV's
    # INTER_CUBIC would round the shift to 1/32 px)
    warped = ndimage.shift(base, (-shift[1] / 2, -shift[0] / 2), order=3, mode="mirror")
    ones = np.ones(base.shape, bool)
    # template = base(x + shift), "DSLR" = base: the measured d is +shift
    chans = [TileChannel(warped, base * 1.7 + 0.2, ones, HALF_RES), TileChannel(warped, base, ones, HALF_RES)]
    res = measure_tiles(chans, 64.0)
    assert res.reliable.mean() > 0.9
    med = np.median(res.shifts[res.reliable], axis=0)
    assert np.allclose(med, shift, atol=0.01)
    assert res.consistent_fraction(1.0) > 0.9


@pytest.mark.parametrize("across_px, expected", [(0.05, 1.0), (3.0, 0.1)], ids=["edges agree", "edges disagree"])
def test_tiles_measured_across_one_edge_count_as_consistent_by_their_shift_across_it(across_px, expected):
    # one tile reliable both ways, nine only across a horizontal edge (lines of text on
    # clipped paper) that slid 2 px along it: only the shift across the edge is evidence
    n = 10
    shifts = np.tile([2.0, across_px], (n, 1))
    shifts[0] = [0.05, 0.0]
    reliable = np.zeros(n, bool)
    reliable[0] = True
    one_way = ~reliable
    res = TileResiduals(np.zeros((n, 2)), shifts, np.full(n, 0.05), np.ones(n), reliable, (1, n), reliable.copy(),
                        normal=np.tile([0.0, 1.0], (n, 1)))
    assert res.consistent_fraction(1.0) == 1.0  # the reliable tile alone
    assert res.consistent_fraction(1.0, one_way) == pytest.approx(expected)


@pytest.mark.parametrize("angle_deg", [0.0, 90.0, 30.0])
def test_a_tile_on_one_straight_edge_measures_the_shift_across_it_only(angle_deg):
    # the left two thirds textured, the rest straight edges (a sawtooth across n, one
    # edge per 32 px tile), both with a little noise: the edges' tiles cannot be
    # measured along their edge (only the noise's gradients say anything there), so
    # they are not reliable, yet each measures the shift across it as well as a
    # reliable tile does
    rows, cols = 192, 576
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    n = np.array([np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))])
    shift = np.array([0.12, -0.08])  # phone image px (the template shows the image at x + shift)
    rng = np.random.default_rng(1)
    texture = cv2.GaussianBlur(rng.normal(size=(rows, cols)).astype(np.float32), (0, 0), 2.0) * 4.0
    right = xx >= 2 * cols // 3

    def image(offset: np.ndarray) -> np.ndarray:
        s = (xx + offset[0]) * n[0] + (yy + offset[1]) * n[1]
        edges = np.tanh(np.sin(2 * np.pi * s / 32.0) * 1.5)
        tex = ndimage.shift(texture, (-offset[1], -offset[0]), order=3, mode="mirror")
        return (np.where(right, edges, tex) + rng.normal(0, 0.01, s.shape)).astype(np.float32)

    ones = np.ones((rows, cols), bool)
    res = measure_tiles([TileChannel(image(shift), image(np.zeros(2)), ones, np.eye(3))], 32.0)
    on_edges = res.centres[:, 0] > 2 * cols // 3 + 16  # tiles wholly in the edges' part
    assert res.reliable[res.centres[:, 0] < 2 * cols // 3 - 16].mean() > 0.9
    assert not res.reliable[on_edges].any()
    edge = res.edge & on_edges
    assert edge.sum() > 0.8 * on_edges.sum()
    assert np.allclose(np.abs(res.normal[edge] @ n), 1.0, atol=0.01)  # across the edge
    across = np.einsum("ij,ij->i", res.normal[edge], res.shifts[edge]) * np.sign(res.normal[edge] @ n)
    assert np.allclose(across, shift @ n, atol=0.01)


def test_tiles_measured_both_ways_through_noise_are_faint_and_a_flat_noisy_tile_is_nothing():
    # a soft texture at three contrasts under the same noise: strong (reliable), weak
    # (each shift good to a few tenths of a px only: faint, not reliable) and none (flat:
    # no shift measured at all)
    rows, cols = 128, 384
    rng = np.random.default_rng(2)
    texture = cv2.GaussianBlur(rng.normal(size=(rows, cols)).astype(np.float32), (0, 0), 6.0)
    texture /= texture.std()
    xx = np.mgrid[0:rows, 0:cols][1]
    contrast = np.where(xx < 128, 1.0, np.where(xx < 256, 0.15, 0.0)).astype(np.float32)
    shift = np.array([0.1, -0.05])
    moved = ndimage.shift(texture, (-shift[1], -shift[0]), order=3, mode="mirror") * contrast
    phone = (moved + rng.normal(0, 0.1, moved.shape)).astype(np.float32)
    res = measure_tiles([TileChannel(phone, texture * contrast, np.ones(phone.shape, bool), np.eye(3))], 32.0)
    strong, weak, flat = (res.centres[:, 0] < 128), (res.centres[:, 0] > 160) & (res.centres[:, 0] < 256), \
        (res.centres[:, 0] > 256)
    assert res.reliable[strong].all() and not res.faint[strong].any()
    assert res.faint[weak].mean() > 0.8 and not res.reliable[weak].any()
    assert (res.sigma[res.faint] > 0.15).all() and (res.sigma[res.faint] <= 0.6).all()
    assert not (res.faint | res.reliable | res.edge)[flat].any()
    # each faint shift is unbiased within its error: together they measure the shift
    z = (res.shifts[res.faint] - shift) / res.sigma[res.faint, None]
    assert np.abs(z).max() < 3.0
    assert np.allclose(res.shifts[res.faint].mean(0), shift, atol=0.1)


def test_tiles_measured_under_the_fitted_shading_do_not_take_vignetting_for_a_shift():
    # a soft scene (clouds) seen through 30 % vignetting, no shift at all: a tile's own
    # gain and offset are constant over it, so in a smooth tile the vignetting's slope
    # passes for a shift unless the tiles compare the template with the shading divided out
    rng = np.random.default_rng(4)
    rows, cols = 240, 320
    base = cv2.GaussianBlur(rng.normal(size=(rows, cols)).astype(np.float32), (0, 0), 10.0) * 20.0 + 1.0
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    gain = (1.0 - 0.3 * ((xx - (cols - 1) / 2) ** 2 + (yy - (rows - 1) / 2) ** 2) / (cols / 2) ** 2).astype(np.float32)
    targets = [(base * gain, np.ones(base.shape, bool), np.eye(3))]
    kw = dict(tile_px=32.0, degrees=(-1,), iterations=1, spline=False)
    plain = refine_local(targets, [base], None, np.eye(3), (cols, rows), **kw)[2]
    shaded = refine_local(targets, [base], None, np.eye(3), (cols, rows),
                          shading=[(gain, np.zeros_like(gain))], **kw)[2]
    assert np.median(plain.magnitude[plain.reliable]) > 0.05
    assert np.median(shaded.magnitude[shaded.reliable]) < 0.01
    assert shaded.reliable.sum() >= 0.8 * plain.reliable.sum()


def test_a_converged_field_reports_what_a_fresh_measurement_under_it_finds():
    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.normal(size=(240, 320)).astype(np.float32), (0, 0), 1.5)
    shift = (0.3, -0.2)  # the template shows the image at x + shift
    template = ndimage.shift(base, (-shift[1], -shift[0]), order=3, mode="mirror")
    targets = [(template, np.ones(base.shape, bool), np.eye(3))]
    fld, first, final, warped = refine_local(targets, [base], None, np.eye(3), (320, 240), tile_px=32.0,
                                             degrees=(-1, 0))
    centres = final.centres[final.reliable]
    assert np.abs(fld(centres) - shift).max() < 0.02
    # the last measurement stood in for the final one: it agrees with a measurement
    # under the returned field to within the stopping tolerance (0.01 px)
    channels = prepare_channels(targets, [base], None, np.eye(3), blur_sigma=0.5)
    fresh = measure_tiles(warp_channels(channels, np.eye(3), fld), 32.0)
    both = final.reliable & fresh.reliable
    assert both.mean() > 0.8
    assert np.abs(final.shifts[both] - fresh.shifts[both]).max() < 0.01
    assert len(warped) == 1 and warped[0].warped.shape == template.shape


def test_a_field_refitted_like_another_keeps_its_structure():
    rng = np.random.default_rng(6)

    def truth(c):
        n = (c - [511.5, 383.5]) / 512.0
        return 512.0 * n * (0.01 * (n**2).sum(1, keepdims=True)) + [0.3, -0.2]

    c, v = _tile_values(truth)
    sig, rel = np.full(len(c), 0.02), np.ones(len(c), bool)
    first = fit_field(c, v + rng.normal(0, 0.02, v.shape), sig, rel, (511.5, 383.5), 512.0)
    # new measurements that would cross-validate to another structure: pure noise
    again = fit_field(c, v + rng.normal(0, 0.02, v.shape), sig, rel, (511.5, 383.5), 512.0, like=first)
    assert again.degree == first.degree and (again.grid is None) == (first.grid is None)
    assert np.abs(again(c) - truth(c)).max() < 0.05
    noise = rng.normal(0, 0.02, v.shape)
    assert fit_field(c, noise, sig, rel, (511.5, 383.5), 512.0).degree == -1  # chosen afresh: none
    assert fit_field(c, noise, sig, rel, (511.5, 383.5), 512.0, like=first).degree == first.degree


def test_rewarped_masks_keep_the_samples_and_take_the_new_template_masks():
    from alignment.ecc import Channel

    rng = np.random.default_rng(7)
    image = rng.random((80, 90)).astype(np.float32)
    template = rng.random((60, 70)).astype(np.float32)
    everything = Channel(template, np.ones((60, 70), bool), image)
    less = Channel(template, np.arange(60 * 70).reshape(60, 70) % 3 > 0, image, samples=everything.samples)
    shift = np.array([[1.0, 0, 5.3], [0, 1.0, 4.1], [0, 0, 1]])
    from alignment.local import SmoothField, rewarped_masks, warp_channels

    once = warp_channels([less], shift, SmoothField())
    again = rewarped_masks(once, [everything])[0]
    direct = warp_channels([everything], shift, SmoothField())[0]
    np.testing.assert_array_equal(again.warped, direct.warped)
    np.testing.assert_array_equal(again.mask, direct.mask)
    with pytest.raises(ValueError):
        rewarped_masks([TileChannel(template, template, everything.mask, np.eye(3))], [everything])


def test_structures_order_from_no_field_to_a_loose_spline():
    from alignment.local import _complexity

    grid = np.zeros((3, 3, 2))
    ordered = [
        SmoothField(-1),
        SmoothField(1, coef=np.zeros((3, 2))),
        SmoothField(2, coef=np.zeros((6, 2))),
        SmoothField(2, coef=np.zeros((6, 2)), grid=grid, smoothing=100.0),
        SmoothField(2, coef=np.zeros((6, 2)), grid=grid, smoothing=1.0),
    ]
    assert [id(f) for f in sorted(ordered[::-1], key=_complexity)] == [id(f) for f in ordered]


def test_a_field_that_falls_back_to_the_start_is_not_warped_again(monkeypatch):
    """A, then no field (the start's), then A again: the loop locks the simpler (none)
    and ends under the start's field, whose warp and measurement it already had; the
    result is the one a fresh warp gives, with one warp fewer."""
    import alignment.local as local

    rng = np.random.default_rng(5)
    base = cv2.GaussianBlur(rng.normal(size=(240, 320)).astype(np.float32), (0, 0), 1.5)
    targets = [(base.copy(), np.ones(base.shape, bool), np.eye(3))]
    channels = prepare_channels(targets, [base], None, np.eye(3), blur_sigma=0.5)
    some = SmoothField(0, (159.5, 119.5), 160.0, np.array([[0.2, -0.1]]))
    chosen = iter([some, SmoothField(-1, (159.5, 119.5), 160.0), some])

    def fit(*args, like=None, **kw):
        return SmoothField(-1, (159.5, 119.5), 160.0) if like is not None else next(chosen)

    warps = []
    real_warp = local.warp_channels

    def counted(*args, **kw):
        warps.append(args[2])
        return real_warp(*args, **kw)

    monkeypatch.setattr(local, "fit_field", fit)
    monkeypatch.setattr(local, "warp_channels", counted)
    fld, first, final, warped = refine_local(None, None, None, np.eye(3), (320, 240), tile_px=32.0,
                                             channels=channels)
    assert fld.empty
    assert len(warps) == 2  # the start's field and A: the start's is not warped again
    fresh = real_warp(channels, np.eye(3), fld)
    np.testing.assert_array_equal(warped[0].warped, fresh[0].warped)
    np.testing.assert_array_equal(final.shifts, measure_tiles(fresh, 32.0).shifts)


def test_a_field_that_overshoots_its_solution_settles_in_three_warps(monkeypatch):
    # texture near the sampling limit shifted 0.3 px: each tile's one-step shift
    # overshoots by a quarter (the three-point derivative), so the field swings about the
    # shift (0.38, then 0.28 px, ...: four warps); the second step, shortened by the
    # ratio of the first two, lands within the stopping tolerance
    import alignment.local as local

    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.normal(size=(240, 320)).astype(np.float32), (0, 0), 0.8)
    shift = (0.3, -0.2)
    template = ndimage.shift(base, (-shift[1], -shift[0]), order=3, mode="mirror")
    warps = []
    real_warp = local.warp_channels
    monkeypatch.setattr(local, "warp_channels", lambda *a, **k: warps.append(1) or real_warp(*a, **k))
    fld, _, final, _ = refine_local([(template, np.ones(base.shape, bool), np.eye(3))], [base], None, np.eye(3),
                                    (320, 240), tile_px=32.0, degrees=(-1, 0), spline=False)
    assert np.abs(fld(final.centres[final.reliable]) - shift).max() < 0.005
    assert len(warps) == 3


@pytest.mark.parametrize("shifts, warps_made", [
    ([0.2, 0.215], 2),  # the second step a thirteenth of the first: 0.0012 px left, settled
    ([0.02, 0.035, 0.04625, 0.0547], 4),  # each step 0.75 of the last: on until one is under tol_px
], ids=["fast series", "slow series"])
def test_a_field_whose_steps_leave_less_than_the_tolerance_to_go_ends_without_another_warp(
        monkeypatch, shifts, warps_made):
    # a field of one structure whose second step (0.015 px) is over tol_px (0.01) but a
    # thirteenth of the first: the series leaves 0.0012 px to go, so the loop ends there,
    # the last measurement standing for the final one; where the steps shrink slowly it
    # goes on until a step is under tol_px, as before
    import alignment.local as local

    rng = np.random.default_rng(5)
    base = cv2.GaussianBlur(rng.normal(size=(240, 320)).astype(np.float32), (0, 0), 1.5)
    channels = prepare_channels([(base.copy(), np.ones(base.shape, bool), np.eye(3))], [base], None, np.eye(3),
                                blur_sigma=0.5)
    chosen = iter([SmoothField(0, (159.5, 119.5), 160.0, np.array([[dx, 0.0]])) for dx in shifts])
    monkeypatch.setattr(local, "fit_field", lambda *args, like=None, **kw: next(chosen))
    warps = []
    real_warp = local.warp_channels
    monkeypatch.setattr(local, "warp_channels", lambda *a, **k: warps.append(1) or real_warp(*a, **k))
    fld, _, final, warped = refine_local(None, None, None, np.eye(3), (320, 240), tile_px=32.0, channels=channels)
    assert len(warps) == warps_made
    assert fld.coef[0, 0] == pytest.approx(shifts[-1])
    assert next(chosen, None) is None  # every field of the series was fitted: none skipped
    # the final measurement is the last one, less the field's last step (its linearisation)
    last = measure_tiles(warped, 32.0)
    step = shifts[-1] - shifts[-2]
    np.testing.assert_allclose(final.shifts[:, 0], last.shifts[:, 0] - step)


@pytest.mark.parametrize("last, step, expected", [
    ([1.0, -0.5], [0.1, -0.05], 0.03 * 0.1 / 0.9),  # shrinking by a tenth a step, the same way
    ([1.0, -0.5], [-0.1, 0.05], 0.03 * 0.1 / 0.9),  # by a tenth, swinging: |r| alike
    ([1.0, -0.5], [0.5, 1.0], 0.0),  # at right angles: no series left
    ([1.0, -0.5], [1.2, -0.6], np.inf),  # growing: no end in sight
    ([0.0, 0.0], [0.1, 0.0], np.inf),  # no last step to compare with
], ids=["shrinking", "swinging", "across", "growing", "no last step"])
def test_what_a_series_of_field_steps_leaves_to_go(last, step, expected):
    last, step = np.tile(last, (6, 1)), np.tile(step, (6, 1))
    assert _left_to_go(last, step, np.ones(6, bool), 0.03) == pytest.approx(expected)
    assert _left_to_go(last, step, np.zeros(6, bool), 0.03) == np.inf  # no reliable tile


@pytest.mark.parametrize("step, expected", [
    ([-0.35, 0.35 * 0.5], 1.0 / 1.35),  # ran back a third of the last step: shortened
    ([0.5, -0.25], 1.0),  # on along the last step: converging, left alone
    ([-0.25, -0.5], 1.0),  # at right angles to the last step: not a swing
    ([-0.95, 0.95 * 0.5], 1.0),  # ran back nearly all of it: no ratio to trust
], ids=["swing", "onwards", "across", "all the way back"])
def test_a_step_is_shortened_only_where_the_field_swings_back(step, expected):
    last = np.tile([1.0, -0.5], (6, 1))
    steps = np.tile(step, (6, 1))
    assert _overshoot_damping(last, steps, np.ones(6, bool)) == pytest.approx(expected)
    assert _overshoot_damping(None, steps, np.ones(6, bool)) == 1.0


@pytest.mark.parametrize("other, same", [
    (lambda f: SmoothField(-1, (1.0, 2.0), 3.0, radial=f.radial, hull=np.zeros((3, 2))), True),  # no smooth part
    (lambda f: SmoothField(-1, radial=(f.radial[0], f.radial[1], f.radial[2], 0.021, -0.003)), False),
    (lambda f: f.without_radial(), False),
])
def test_displacement_keys_tell_fields_apart_by_what_they_displace(other, same):
    f = SmoothField(-1, radial=(255.5, 191.5, 256.0, 0.02, -0.003))
    assert (f.displacement_key() == other(f).displacement_key()) is same
    g = _field_with_hull()
    h = _field_with_hull()
    assert g.displacement_key() == h.displacement_key()
    h.grid = h.grid.copy()
    h.grid[0, 0, 0] += 1e-12
    assert g.displacement_key() != h.displacement_key()
