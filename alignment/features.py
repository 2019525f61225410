"""Keypoints, descriptor matching and a robust homography between two images.

The default is SIFT on contrast-stretched, gamma-encoded 8-bit luminance,
Lowe's ratio test, a mutual-consistency check and OpenCV's USAC MAGSAC++.
``method="published"`` reproduces the peer used in the benchmark (SIFT, FLANN
kd-tree 5 trees / 50 checks, ratio 0.7, RANSAC 5 px).

Coordinates: x = column, y = row, pixel centres at integers, in the pixel grid
of the arrays passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from alignment.threads import thread_map

__all__ = ["FEATURE_METHODS", "FeatureMatch", "to_uint8", "match_homography"]


@dataclass
class FeatureMatch:
    """Result of :func:`match_homography`.

    homography: (3,3) image-A px -> image-B px, or None when none was found.
    keypoints_a / keypoints_b: number of keypoints detected in each image.
    matches: tentative matches after the ratio (and mutual) test.
    inliers: matches consistent with the homography.
    src / dst: (N, 2) float64 inlier coordinates in A and B.
    """

    homography: np.ndarray | None
    keypoints_a: int
    keypoints_b: int
    matches: int
    inliers: int
    src: np.ndarray
    dst: np.ndarray
    #: homographies found one after another on the matches left by the earlier ones
    #: (planes at other depths, moving objects), as (inliers, frame cells covered)
    layers: list[tuple[int, int]] | None = None

    @property
    def inlier_ratio(self) -> float:
        return self.inliers / self.matches if self.matches else 0.0


def to_uint8(lum: np.ndarray, mask: np.ndarray | None = None, gamma: float = 1 / 2.2) -> np.ndarray:
    """(H, W) linear luminance -> (H, W) uint8, percentile-stretched and gamma-encoded.

    The 0.5 / 99.5 percentiles (inside ``mask`` when given) map to 0 / 255 before
    the power ``gamma``; detectors then see comparable contrast in both images.
    """
    vals = lum[mask] if mask is not None and mask.any() else lum.ravel()
    lo, hi = np.percentile(vals, [0.5, 99.5]) if vals.size else (0.0, 1.0)
    x = np.clip((lum - lo) / max(hi - lo, 1e-12), 0, 1) ** gamma
    return (x * 255 + 0.5).astype(np.uint8)


def _detect(img: np.ndarray, mask: np.ndarray | None, max_features: int):
    sift = cv2.SIFT_create(nfeatures=max_features)
    m = None if mask is None else mask.astype(np.uint8) * 255
    kp, desc = sift.detectAndCompute(img, m)
    return kp, desc


def _published_match(da: np.ndarray, db: np.ndarray, ratio: float, mutual: bool) -> list:
    """FLANN (5 KD-trees, 50 checks) and Lowe's ratio 0.7, as published (ratio, mutual unused)."""
    flann = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 5}, {"checks": 50})
    return [m[0] for m in flann.knnMatch(da, db, k=2) if len(m) == 2 and m[0].distance < 0.7 * m[1].distance]


def _published_fit(src: np.ndarray, dst: np.ndarray, threshold_px: float, confidence: float, max_iters: int):
    """OpenCV RANSAC at 5 px with its default confidence and iterations, as published."""
    return cv2.findHomography(src, dst, cv2.RANSAC, 5.0)


def _magsac_match(da: np.ndarray, db: np.ndarray, ratio: float, mutual: bool, rows: int = 1024) -> list:
    """Exhaustive L2 matching with the ratio test, optionally kept only where B's best
    match points back.  One squared-distance matrix, |a|^2 + |b|^2 - 2 a.b (BLAS, in
    blocks of ``rows`` descriptors of A), serves both directions: a brute-force
    matcher computes the distances once per direction.
    Returns cv2.DMatch (queryIdx in A, trainIdx in B, distance)."""
    a = np.asarray(da, np.float32)
    b = np.asarray(db, np.float32)
    if len(a) == 0 or len(b) < 2:
        return []
    nb = np.einsum("ij,ij->i", b, b)
    back_best = np.zeros(len(b), np.int64)  # B's nearest in A
    back_d2 = np.full(len(b), np.inf, np.float32)
    found = []
    cols = np.arange(len(b))
    for r0 in range(0, len(a), rows):
        blk = a[r0:r0 + rows]
        d2 = blk @ b.T
        d2 *= -2.0
        d2 += nb[None, :]
        d2 += np.einsum("ij,ij->i", blk, blk)[:, None]
        np.maximum(d2, 0.0, out=d2)
        if mutual:
            near = d2.argmin(axis=0)
            near_d2 = d2[near, cols]
            closer = near_d2 < back_d2
            back_d2[closer] = near_d2[closer]
            back_best[closer] = r0 + near[closer]
        at = np.arange(len(blk))
        first = d2.argmin(axis=1)
        d_first = d2[at, first]
        d2[at, first] = np.inf  # the second nearest is the nearest of the rest
        d_second = d2.min(axis=1)
        keep = d_first < ratio * ratio * d_second  # the ratio test on distances, squared
        found += [(r0 + i, int(first[i]), float(np.sqrt(d_first[i]))) for i in np.nonzero(keep)[0]]
    if mutual:
        found = [m for m in found if back_best[m[1]] == m[0]]
    return [cv2.DMatch(q, t, d) for q, t, d in found]


def _magsac_fit(src: np.ndarray, dst: np.ndarray, threshold_px: float, confidence: float, max_iters: int):
    """OpenCV USAC MAGSAC++ at ``threshold_px``."""
    return cv2.findHomography(src, dst, cv2.USAC_MAGSAC, threshold_px, maxIters=max_iters, confidence=confidence)


@dataclass(frozen=True)
class FeatureMethod:
    """How one feature method matches descriptors and fits a homography; ``layered``:
    whether further homographies are fitted on what the first one left."""

    match: Callable[[np.ndarray, np.ndarray, float, bool], list]
    fit: Callable[[np.ndarray, np.ndarray, float, float, int], tuple]
    layered: bool


#: the feature methods by name (``match_homography(method=...)``)
FEATURE_METHODS: dict[str, FeatureMethod] = {
    "magsac": FeatureMethod(_magsac_match, _magsac_fit, layered=True),
    "published": FeatureMethod(_published_match, _published_fit, layered=False),
}


def match_homography(
    img_a: np.ndarray,
    img_b: np.ndarray,
    mask_a: np.ndarray | None = None,
    mask_b: np.ndarray | None = None,
    *,
    method: str = "magsac",
    ratio: float = 0.8,
    threshold_px: float = 3.0,
    max_features: int = 8000,
    mutual: bool = True,
    confidence: float = 0.9999,
    max_iters: int = 20000,
    layers: int = 1,
) -> FeatureMatch:
    """Detect, match and fit a homography A -> B.

    img_a, img_b: (H, W) uint8 (see :func:`to_uint8`).  mask_a / mask_b: bool, where
    keypoints may be detected.  method: "magsac" (USAC MAGSAC++, ratio test,
    mutual check; ``threshold_px`` is MAGSAC's maximum sigma, px of B) or
    "published" (FLANN kd-tree 5 trees / 50 checks, ratio 0.7, RANSAC 5 px).
    layers: with more than one, up to that many homographies are fitted one after
    another, each on the matches the earlier ones left ("magsac" only), and the one
    whose inliers cover the most cells of an 8 x 8 grid over image A wins: the
    background, the largest consistent plane, rather than a richly textured object
    in front of it that holds more matches.  A later homography must hold at least
    20 inliers and a tenth of the first one's.
    Returns a :class:`FeatureMatch`; ``homography`` is None when fewer than four
    matches survive or the estimator finds nothing.
    """
    matcher = FEATURE_METHODS.get(method)
    if matcher is None:
        raise ValueError(f"unknown feature method {method!r} (choices: {', '.join(map(repr, FEATURE_METHODS))})")
    (kpa, da), (kpb, db) = thread_map(lambda im: _detect(*im, max_features), [(img_a, mask_a), (img_b, mask_b)])
    empty = np.zeros((0, 2))
    if da is None or db is None or len(kpa) < 4 or len(kpb) < 4:
        return FeatureMatch(None, len(kpa), len(kpb), 0, 0, empty, empty)
    good = matcher.match(da, db, ratio, mutual)
    if len(good) < 4:
        return FeatureMatch(None, len(kpa), len(kpb), len(good), 0, empty, empty)
    src = np.float64([kpa[m.queryIdx].pt for m in good])
    dst = np.float64([kpb[m.trainIdx].pt for m in good])

    def fit(a: np.ndarray, b: np.ndarray):
        return matcher.fit(a, b, threshold_px, confidence, max_iters)

    h, inl = fit(src, dst)
    if h is None or inl is None:
        return FeatureMatch(None, len(kpa), len(kpb), len(good), 0, empty, empty)
    inl = inl.ravel().astype(bool)
    h = h / h[2, 2]
    if not matcher.layered or layers <= 1:
        return FeatureMatch(h, len(kpa), len(kpb), len(good), int(inl.sum()), src[inl], dst[inl])
    shape = img_a.shape[:2]
    candidates = [(h, inl, _cells(src[inl], shape))]
    left = ~inl
    for _ in range(layers - 1):
        if left.sum() < 20:
            break
        idx = np.nonzero(left)[0]
        h2, inl2 = fit(src[idx], dst[idx])
        if h2 is None or inl2 is None:
            break
        inl2 = inl2.ravel().astype(bool)
        if inl2.sum() < max(20, 0.1 * candidates[0][1].sum()):
            break
        mask = np.zeros(len(good), bool)
        mask[idx[inl2]] = True
        candidates.append((h2 / h2[2, 2], mask, _cells(src[mask], shape)))
        left &= ~mask
    best = max(candidates, key=lambda c: (c[2], int(c[1].sum())))
    h, inl = best[0], best[1]
    return FeatureMatch(h, len(kpa), len(kpb), len(good), int(inl.sum()), src[inl], dst[inl],
                        [(int(c[1].sum()), c[2]) for c in candidates])


def _cells(points: np.ndarray, shape: tuple[int, int], n: int = 8) -> int:
    """How many cells of an n x n grid over an image of ``shape`` (rows, cols) hold a point."""
    if len(points) == 0:
        return 0
    rows, cols = shape
    cx = np.clip((points[:, 0] / cols * n).astype(int), 0, n - 1)
    cy = np.clip((points[:, 1] / rows * n).astype(int), 0, n - 1)
    return int(len(np.unique(cy * n + cx)))
