"""Point mappings shared by every stage: homographies on (N, 2) point arrays.

Coordinates: x = column, y = row, pixel centres at integers.  Light on purpose
(numpy only): the simulator and the dataset writer use it without importing
the registration stack.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_homography", "apply_homography_xy", "pixel_centres"]


def apply_homography(h: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(N, 2) points (x, y) through a 3x3 homography -> (N, 2) float64."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    out = np.empty_like(xy)
    out[:, 0], out[:, 1], _ = apply_homography_xy(h, xy[:, 0], xy[:, 1])
    return out


def apply_homography_xy(h: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x and y (arrays that broadcast: a grid's column and row, or two images) through a
    3x3 homography -> (x', y', w) float64 of their broadcast shape, w the homogeneous
    scale (what :func:`apply_homography` computes on (N, 2) points)."""
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    return (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w, (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w, w


def pixel_centres(rows: int, cols: int, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """(y (rows, 1), x (1, cols)) the pixel centres of a (rows, cols) grid as ``dtype``,
    broadcastable against each other: the values of ``np.mgrid[0:rows, 0:cols]``
    without its two (rows, cols) arrays (an expression of both, elementwise, comes out
    (rows, cols) with the same values)."""
    return np.arange(rows, dtype=dtype)[:, None], np.arange(cols, dtype=dtype)[None, :]
