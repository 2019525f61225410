"""Scores of an alignment against a simulator's ground truth (``isp-rig simulate``).

Two kinds of truth: ``truth.json``'s correspondence grid (every simulated pair)
and, for layered scenes, ``truth_map.npy`` / ``truth_clipped.png`` (the DSLR
(x, y) of every phone px's scene point, NaN where the DSLR does not see it; where
either camera clipped).  Errors are DSLR px.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

__all__ = ["truth_error", "trust_scores", "load_truth_map"]


def truth_error(truth_path: Path | str, map_points, valid: np.ndarray | None = None) -> dict[str, float]:
    """Error of a mapping against a simulator truth.json over its correspondence grid.

    map_points: (N, 2) phone px -> (N, 2) DSLR px (``Alignment.dense_map_points`` for
    what a dataset target was sampled with, or an Alignment, whose ``map_points`` is used).
    Returns median, p95 and max of |map(x_phone) - x_dslr| in DSLR px, over the grid
    points inside ``valid`` (all points when None).
    """
    if hasattr(map_points, "map_points"):
        map_points = map_points.map_points
    data = json.loads(Path(truth_path).read_text())
    grid = np.asarray(data["grid"], dtype=np.float64).reshape(-1, 4)
    if valid is not None:
        xi = np.clip(np.round(grid[:, 0]).astype(int), 0, valid.shape[1] - 1)
        yi = np.clip(np.round(grid[:, 1]).astype(int), 0, valid.shape[0] - 1)
        grid = grid[valid[yi, xi]]
    if len(grid) == 0:
        return {"median": float("nan"), "p95": float("nan"), "max": float("nan"), "points": 0}
    err = np.linalg.norm(map_points(grid[:, :2]) - grid[:, 2:], axis=1)
    return {"median": float(np.median(err)), "p95": float(np.percentile(err, 95)), "max": float(err.max()),
            "points": int(len(err))}


def load_truth_map(pair_dir: Path | str) -> tuple[np.ndarray, np.ndarray] | None:
    """(truth_map (H, W, 2) float32, clipped (H, W) bool) of a layered simulator pair, or None."""
    pair_dir = Path(pair_dir)
    path = pair_dir / "truth_map.npy"
    if not path.is_file():
        return None
    truth = np.load(path)
    clip_path = pair_dir / "truth_clipped.png"
    clipped = (cv2.imread(str(clip_path), cv2.IMREAD_UNCHANGED) > 0) if clip_path.is_file() else np.zeros(
        truth.shape[:2], bool)
    return truth, clipped


def trust_scores(mapped: np.ndarray, trusted: np.ndarray, truth: np.ndarray, clipped: np.ndarray) -> dict[str, float]:
    """How far a trust map can be trusted, against the truth.

    mapped: (H, W, 2) DSLR (x, y) at which each target px was sampled; trusted:
    (H, W) bool; truth: (H, W, 2) the true DSLR (x, y), NaN where not visible;
    clipped: (H, W) bool, either camera clipped.
    Returns precision at 0.5 and 1 px (trusted px within that of the truth; a
    trusted px with NaN truth counts as wrong; NaN when nothing is trusted),
    coverage (finite-truth, unclipped px that are trusted and within 0.5 px, over
    all finite-truth unclipped px), clipped_trusted (trusted share of the clipped
    px), trusted (share of all px) and the median error over trusted px.
    """
    err = np.linalg.norm(mapped.astype(np.float64) - truth, axis=-1)
    err = np.where(np.isfinite(err), err, np.inf)
    n_trusted = int(trusted.sum())
    usable = np.isfinite(truth[..., 0]) & ~clipped
    within = trusted & (err <= 0.5)
    return {
        "precision_05": float(within.sum() / n_trusted) if n_trusted else float("nan"),
        "precision_1": float((trusted & (err <= 1.0)).sum() / n_trusted) if n_trusted else float("nan"),
        "coverage": float((within & usable).sum() / max(int(usable.sum()), 1)),
        "clipped_trusted": float((trusted & clipped).sum() / max(int(clipped.sum()), 1)),
        "trusted": float(trusted.mean()),
        "median_error_trusted": float(np.median(err[trusted])) if n_trusted else float("nan"),
    }
