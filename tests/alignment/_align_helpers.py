"""Helpers for the alignment tests: simulator pairs and error measures."""

from __future__ import annotations

import cv2
import numpy as np

from isp_rig import simulate as sim

#: small simulator pairs keep the suite fast; benchmarks use the default sizes
SMALL = dict(phone_size=(512, 384), dslr_size=(768, 512))


def jpeg_roundtrip(rgb: np.ndarray, quality: int = 92) -> np.ndarray:
    """(H, W, 3) float display RGB in [0, 1] -> uint8 RGB after JPEG at ``quality``,
    as the simulator writes a DSLR JPEG."""
    enc = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", enc[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def make_sim(seed: int, distortion: bool = False, **sizes) -> sim.SimPair:
    opts = sim.SimOptions(distortion=distortion, **(sizes or SMALL))
    return sim.simulate_pair(seed, None, opts)


def corner_errors(alignment, truth) -> np.ndarray:
    """(4,) DSLR px distance at the four phone raw corners."""
    w, h = truth.phone_size
    c = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
    return np.linalg.norm(alignment.map_points(c) - truth.map_points(c), axis=1)


def dense_errors(alignment, truth) -> np.ndarray:
    """DSLR px distance on the truth's phone grid (the whole phone frame lies inside the DSLR frame)."""
    g = truth.grid
    return np.linalg.norm(alignment.map_points(g[:, :2]) - g[:, 2:], axis=1)
