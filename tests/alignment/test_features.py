"""Keypoints, matching and robust homography (alignment.features)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from alignment.features import _magsac_match, match_homography, to_uint8


def _texture(seed: int = 0, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A deterministic textured image: multi-scale noise plus shapes, uint8."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.zeros((h, w), np.float32)
    for cells in (8, 24, 64):
        img += cv2.resize(rng.random((cells * h // w + 1, cells)).astype(np.float32), (w, h),
                          interpolation=cv2.INTER_CUBIC)
    for _ in range(60):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, c, int(rng.integers(4, 30)), float(rng.uniform(0, 3)), -1)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).astype(np.uint8)


H_TRUE = np.array([[1.05, 0.04, 12.0], [-0.03, 0.98, -7.0], [2e-5, -1e-5, 1.0]])


def _warped_pair():
    a = _texture()
    b = cv2.warpPerspective(a, H_TRUE, (a.shape[1], a.shape[0]), flags=cv2.INTER_CUBIC)
    return a, b


def _corner_error(h: np.ndarray, shape: tuple[int, int]) -> float:
    hh, ww = shape
    c = np.array([[0, 0], [ww - 1, 0], [ww - 1, hh - 1], [0, hh - 1]], float)
    p = np.c_[c, np.ones(4)] @ h.T
    q = np.c_[c, np.ones(4)] @ H_TRUE.T
    return float(np.max(np.linalg.norm(p[:, :2] / p[:, 2:] - q[:, :2] / q[:, 2:], axis=1)))


@pytest.mark.parametrize("method", ["magsac", "published"])
def test_match_homography_recovers_a_known_warp(method):
    a, b = _warped_pair()
    m = match_homography(a, b, method=method)
    assert m.homography is not None
    assert m.inliers >= 50 and m.inlier_ratio > 0.5
    assert _corner_error(m.homography, a.shape) < 1.0
    assert m.src.shape == m.dst.shape == (m.inliers, 2)


def _opencv_brute_force(da: np.ndarray, db: np.ndarray, ratio: float, mutual: bool) -> set:
    """OpenCV's BFMatcher (L2): knn 2 with the ratio test, and B's best match back."""
    good = [m[0] for m in cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
            if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if mutual:
        back = {m.queryIdx: m.trainIdx for m in cv2.BFMatcher(cv2.NORM_L2).match(db, da)}
        good = [m for m in good if back.get(m.trainIdx) == m.queryIdx]
    return {(m.queryIdx, m.trainIdx) for m in good}


@pytest.mark.parametrize("mutual", [True, False])
def test_one_distance_matrix_keeps_the_matches_that_opencvs_brute_force_keeps(mutual):
    a, b = _warped_pair()
    sift = cv2.SIFT_create(3000)
    _, da = sift.detectAndCompute(a, None)
    _, db = sift.detectAndCompute(b, None)
    # blocks of 100 rows: B's best match back is carried across blocks
    ours = _magsac_match(da, db, 0.8, mutual, rows=100)
    assert {(m.queryIdx, m.trainIdx) for m in ours} == _opencv_brute_force(da, db, 0.8, mutual)
    assert len(ours) > 100
    m = ours[0]
    assert m.distance == pytest.approx(float(np.linalg.norm(da[m.queryIdx] - db[m.trainIdx])), rel=1e-3)


def test_magsac_inliers_agree_with_the_homography():
    a, b = _warped_pair()
    m = match_homography(a, b)
    p = np.c_[m.src, np.ones(len(m.src))] @ m.homography.T
    assert np.median(np.linalg.norm(p[:, :2] / p[:, 2:] - m.dst, axis=1)) < 1.0


def test_flat_images_give_no_usable_homography():
    rng = np.random.default_rng(1)
    flat = np.clip(128 + rng.normal(0, 1.0, (300, 400)), 0, 255).astype(np.uint8)
    m = match_homography(flat, flat.copy())
    assert m.homography is None or m.inliers < 20


def test_different_scenes_give_few_inliers():
    m = match_homography(_texture(1), _texture(2))
    assert m.homography is None or m.inlier_ratio < 0.1


def test_mask_excludes_keypoints():
    a, b = _warped_pair()
    mask = np.zeros(a.shape, bool)
    m = match_homography(a, b, mask_a=mask)
    assert m.keypoints_a == 0 and m.homography is None


def test_unknown_method_is_refused_before_any_detection_with_the_choices():
    # no images at all: the name is checked before the detector would fail on them
    with pytest.raises(ValueError, match="unknown feature method 'orb' \\(choices: 'magsac', 'published'\\)"):
        match_homography(None, None, method="orb")


def test_to_uint8_stretches_percentiles_and_encodes():
    lum = np.linspace(0, 1, 10000, dtype=np.float32).reshape(100, 100) * 0.2
    out = to_uint8(lum)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    # gamma encoding lifts the mid-tones above a linear ramp
    assert out[50, 0] > 140
