"""Working size: binned phone planes and the cropped, shrunk DSLR keep exact coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from _align_helpers import corner_errors, jpeg_roundtrip, make_sim
from alignment.prepare import PreparedImage
from alignment.reduce import (ResidualGrid, bin_phone, crop_and_shrink_dslr, crop_and_shrink_dslr_for, mask_onto,
                              phone_bin_factor)


def _ramp_phone(h: int, w: int) -> PreparedImage:
    """Packed planes whose values are 3x + 5y at each plane's own full-grid position (RGGB)."""
    offsets = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (row, col) of R, G1, G2, B
    mats = [np.array([[2.0, 0, c], [0, 2.0, r], [0, 0, 1]]) for r, c in offsets]
    ii, jj = np.mgrid[0:h, 0:w].astype(float)
    planes = np.stack([3 * (2 * jj + c) + 5 * (2 * ii + r) for r, c in offsets], -1).astype(np.float32)
    half = np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]])
    return PreparedImage(planes.mean(-1), np.ones((h, w), bool), half, (2 * w, 2 * h), kind="raw",
                         planes=planes, plane_to_image=mats)


@pytest.mark.parametrize("factor", [2, 3])
def test_binned_planes_sample_at_the_matrix_positions(factor):
    p = bin_phone(_ramp_phone(60, 90), factor)
    for values, _valid, t in p.plane_targets():
        ii, jj = np.mgrid[0 : values.shape[0], 0 : values.shape[1]].astype(float)
        x = t[0, 0] * jj + t[0, 2]
        y = t[1, 1] * ii + t[1, 2]
        np.testing.assert_allclose(values, 3 * x + 5 * y, atol=1e-3)
    assert p.image_size == (180, 120)


def test_bin_factor_brings_planes_under_the_budget():
    p = _ramp_phone(300, 400)
    assert phone_bin_factor(p, None) == 1
    assert phone_bin_factor(p, 10**6) == 1
    f = phone_bin_factor(p, 30_000)
    assert (300 // f) * (400 // f) <= 30_000 and (300 // (f - 1)) * (400 // (f - 1)) > 30_000


def test_a_residual_grid_of_factor_one_is_the_working_grid_itself():
    p = _ramp_phone(60, 90)
    grid = ResidualGrid.at_most(p, None)
    h = np.array([[1.01, 0.02, 3.0], [-0.01, 0.99, 4.0], [1e-5, 0.0, 1.0]])
    mask = np.zeros((60, 90), bool)
    mask[10:20, 30:40] = True
    assert grid.factor == 1 and grid.phone is p
    assert grid.model(h) is h and grid.motion(h) is h and grid.up(mask) is mask and grid.bin_mask(mask) is mask


@pytest.mark.parametrize("factor", [2, 3])
def test_a_residual_grid_maps_its_models_and_masks_to_the_working_grid(factor):
    p = _ramp_phone(61, 92)  # (sides that are not whole blocks)
    grid = ResidualGrid(p, factor)
    assert grid.phone.lum.shape == (61 // factor, 92 // factor) and grid.step == 2.0 * factor
    # a model of working px seen from the grid: grid px -> working px -> X
    h = np.array([[1.01, 0.02, 3.0], [-0.01, 0.99, 4.0], [1e-5, 0.0, 1.0]])
    gy, gx = 5.0, 7.0
    wx, wy = factor * gx + (factor - 1) / 2, factor * gy + (factor - 1) / 2  # the block's centre
    a, b = grid.model(h) @ [gx, gy, 1.0], h @ [wx, wy, 1.0]
    np.testing.assert_allclose(a[:2] / a[2], b[:2] / b[2], atol=1e-9)
    # a motion of grid px (here a shift by one grid px) is the same motion in working px
    shift = np.array([[1.0, 0, 1.0], [0, 1.0, 0], [0, 0, 1.0]])
    np.testing.assert_allclose(grid.motion(shift) @ [wx, wy, 1.0], [wx + factor, wy, 1.0], atol=1e-9)
    # the planes' block means sample the ramp at the blocks' centres
    plane = grid.bin(p.planes[..., 0])
    np.testing.assert_allclose(plane, grid.phone.planes[..., 0], atol=1e-4)
    # a grid mask covers its blocks; the rows and columns past the last block take their neighbours'
    m = np.zeros(grid.phone.lum.shape, bool)
    m[2, 3] = True
    m[-1, -1] = True
    up = grid.up(m)
    assert up.shape == (61, 92)
    assert up[2 * factor : 3 * factor, 3 * factor : 4 * factor].all()
    assert up[-1, -1] and up.sum() == factor * factor + (61 - (61 // factor - 1) * factor) * (92 - (92 // factor - 1) * factor)
    # a block is valid on the grid only when all of its px are
    valid = np.ones((61, 92), bool)
    valid[0, 0] = False
    assert not grid.bin_mask(valid)[0, 0] and grid.bin_mask(valid)[0, 1]


def test_cropped_shrunk_dslr_maps_back_to_stored_px():
    h, w = 400, 600
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lum = 2 * xx + 7 * yy
    d = PreparedImage(lum, np.ones((h, w), bool), np.eye(3), (w, h))
    # a phone frame of 100x80 px mapped 2.4x into the middle of the DSLR, working step 2: factor 2
    h_pd = np.array([[2.4, 0, 150], [0, 2.4, 100], [0, 0, 1]])
    red, win = crop_and_shrink_dslr(d, h_pd, (100, 80), 2.0, oversample=2.0)
    assert win.shrunk and red.lum.size < lum.size
    ii, jj = np.mgrid[0 : red.lum.shape[0], 0 : red.lum.shape[1]].astype(float)
    x = red.to_image[0, 0] * jj + red.to_image[0, 2]
    y = red.to_image[1, 1] * ii + red.to_image[1, 2]
    assert win.factor == 2
    np.testing.assert_allclose(red.lum, 2 * x + 7 * y, rtol=1e-6, atol=1e-3)
    # the footprint of the phone frame lies inside the crop
    x0, y0, x1, y1 = win.crop
    assert x0 <= 150 and y0 <= 100 and x1 >= 150 + 2.4 * 99 and y1 >= 100 + 2.4 * 79


def test_dslr_reduced_for_several_phone_grids_shares_one_crop_and_maps_back_exactly():
    h, w = 400, 600
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lum = 2 * xx + 7 * yy
    enc = np.zeros((h, w, 3), np.uint8)
    d = PreparedImage(lum, np.ones((h, w), bool), np.eye(3), (w, h), enc)
    h_pd = np.array([[2.4, 0, 150], [0, 2.4, 100], [0, 0, 1]])
    # phone working grids of 2 and 3 image px a px: DSLR blocks of 2 and 3 (oversample 2.4)
    (fine, win_f), (coarse, win_c) = crop_and_shrink_dslr_for(d, h_pd, (100, 80), (2.0, 3.0), oversample=2.4)
    assert (win_f.factor, win_c.factor) == (2, 3)
    assert win_f.crop == win_c.crop and fine.encoded is coarse.encoded
    x0, y0, x1, y1 = win_f.crop
    assert (x1 - x0) % 6 == 0 and (y1 - y0) % 6 == 0 and fine.encoded.shape[:2] == (y1 - y0, x1 - x0)
    for red in (fine, coarse):
        ii, jj = np.mgrid[0 : red.lum.shape[0], 0 : red.lum.shape[1]].astype(float)
        x = red.to_image[0, 0] * jj + red.to_image[0, 2]
        y = red.to_image[1, 1] * ii + red.to_image[1, 2]
        np.testing.assert_allclose(red.lum, 2 * x + 7 * y, rtol=1e-6, atol=1e-3)
    # one grid: what crop_and_shrink_dslr gives
    (one, win_one), = crop_and_shrink_dslr_for(d, h_pd, (100, 80), (2.0,), oversample=2.0)
    red, win = crop_and_shrink_dslr(d, h_pd, (100, 80), 2.0, oversample=2.0)
    assert win.crop == win_one.crop and np.array_equal(red.lum, one.lum)


@pytest.mark.parametrize("coarse, fine", [(3, 2), (2, 1), (4, 2)])
def test_a_mask_moves_between_binnings_by_the_block_each_px_centre_lies_in(coarse, fine):
    p = _ramp_phone(61, 92)
    src, dst = bin_phone(p, coarse), bin_phone(p, fine)
    rng = np.random.default_rng(coarse)
    mask = rng.random(src.lum.shape) < 0.5
    moved = mask_onto(mask, src, dst)
    assert moved.shape == dst.lum.shape
    # each destination px's centre in unbinned working px -> the source block holding it
    rows, cols = dst.lum.shape
    centre_x = fine * np.arange(cols) + (fine - 1) / 2
    centre_y = fine * np.arange(rows) + (fine - 1) / 2
    bx = np.minimum(np.floor(centre_x / coarse).astype(int), mask.shape[1] - 1)
    by = np.minimum(np.floor(centre_y / coarse).astype(int), mask.shape[0] - 1)
    np.testing.assert_array_equal(moved, mask[np.ix_(by, bx)])


def test_alignment_through_binning_and_shrinking_stays_sub_tenth_pixel():
    from alignment import align_images

    pair = make_sim(11)
    a = align_images(pair.phone, jpeg_roundtrip(pair.dslr_rgb), max_plane_pixels=15_000, dslr_oversample=1.5)
    assert a.ok, a.quality.message
    assert np.median(corner_errors(a, pair.truth)) < 0.1
    assert a.dslr_size == (pair.dslr_rgb.shape[1], pair.dslr_rgb.shape[0])


def test_a_block_mean_gives_the_means_of_whole_blocks():
    from alignment.reduce import block_mean

    img = np.random.default_rng(9).random((61, 95)).astype(np.float32)
    small = block_mean(img, 4)  # 15 x 23 blocks; the last rows and columns fill none
    assert small.shape == (15, 23)
    np.testing.assert_allclose(small, img[:60, :92].reshape(15, 4, 23, 4).mean(axis=(1, 3)), rtol=1e-5, atol=1e-6)
