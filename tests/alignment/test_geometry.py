"""Point mappings: a homography on a grid's broadcast column and row gives, to the bit,
what it gives on the grid's points one by one (the stages rely on that to skip the
(rows, cols) coordinate arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from alignment.geometry import apply_homography, apply_homography_xy, pixel_centres


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_centres_hold_the_values_of_mgrid(dtype):
    yy, xx = pixel_centres(5, 7, dtype)
    ys, xs = np.mgrid[0:5, 0:7].astype(dtype)
    assert yy.shape == (5, 1) and xx.shape == (1, 7) and yy.dtype == dtype
    np.testing.assert_array_equal(np.broadcast_to(yy, (5, 7)), ys)
    np.testing.assert_array_equal(np.broadcast_to(xx, (5, 7)), xs)


def test_a_homography_on_the_broadcast_grid_equals_it_on_every_point_to_the_bit():
    rng = np.random.default_rng(3)
    h = np.eye(3) + rng.normal(0, [[1e-2, 1e-2, 5.0], [1e-2, 1e-2, 5.0], [1e-5, 1e-5, 0]])
    rows, cols = 37, 53
    yy, xx = pixel_centres(rows, cols)
    mx, my, w = apply_homography_xy(h, xx, yy)
    ys, xs = np.mgrid[0:rows, 0:cols]
    at = apply_homography(h, np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64))
    assert mx.shape == my.shape == w.shape == (rows, cols)
    np.testing.assert_array_equal(mx.ravel(), at[:, 0])
    np.testing.assert_array_equal(my.ravel(), at[:, 1])
