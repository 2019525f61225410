"""Point mappings shared by every stage: homographies on (N, 2) point arrays.

Coordinates: x = column, y = row, pixel centres at integers.  Light on purpose
(numpy only): the simulator and the dataset writer use it without importing
the registration stack.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_homography"]


def apply_homography(h: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(N, 2) points (x, y) through a 3x3 homography -> (N, 2) float64."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    out = np.empty_like(xy)
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    out[:, 0] = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w
    out[:, 1] = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
    return out
