"""The coarse search: the start without features (scale and translation at low
resolution) finds where the phone frame lies in the DSLR image, and says so weakly
for an image of another scene."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from alignment.coarse import coarse_search
from alignment.geometry import apply_homography


def _scene(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 4.0)
    return (img - img.min()) / (img.max() - img.min())


def _pair(scale: float, offset: tuple[float, float], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A DSLR view of a scene and a phone view of part of it: phone px x maps to DSLR
    px scale * x + offset; the phone has its own tone curve.  -> (phone, dslr, truth)."""
    dslr = _scene(seed, 600, 900)
    truth = np.array([[scale, 0, offset[0]], [0, scale, offset[1]], [0, 0, 1.0]])
    phone = cv2.warpPerspective(dslr, truth, (320, 240), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return np.sqrt(phone) * 0.7 + 0.1, dslr, truth


@pytest.mark.parametrize("scale, offset, guess", [(1.6, (150.0, 120.0), None), (2.1, (80.0, 40.0), 2.0),
                                                  (1.25, (400.0, 250.0), None)])
def test_the_search_places_the_phone_frame_within_a_few_px(scale, offset, guess):
    phone, dslr, truth = _pair(scale, offset)
    found = coarse_search(phone, None, dslr, None, guess)
    corners = np.array([[0, 0], [319, 0], [0, 239], [319, 239]], np.float64)
    err = np.linalg.norm(apply_homography(found.homography, corners) - apply_homography(truth, corners), axis=1)
    assert found.score > 0.8
    assert err.max() < 0.03 * 320 * scale  # within ECC's reach from its coarsest level
    assert abs(found.scale / scale - 1) < 0.03


def _chart(seed: int = 3) -> np.ndarray:
    """A colour chart's luminance: 6 x 4 patches of distinct levels, 120 px apart, on
    a dark ground (a periodic scene: every patch has the same edges, brighter than the
    ground)."""
    rng = np.random.default_rng(seed)
    img = np.full((520, 760), 0.08, np.float32)
    for i, level in enumerate(rng.permutation(np.linspace(0.2, 0.95, 24))):
        r, c = divmod(i, 6)
        img[30 + 120 * r:130 + 120 * r, 30 + 120 * c:130 + 120 * c] = level
    return cv2.GaussianBlur(img, (0, 0), 1.5)


def test_a_periodic_scene_is_placed_at_its_levels_not_one_period_off():
    dslr = _chart()
    truth = np.array([[1.5, 0, 160.0], [0, 1.5, 100.0], [0, 0, 1.0]])
    phone = np.sqrt(cv2.warpPerspective(dslr, truth, (280, 200), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    found = coarse_search(phone, None, dslr, None, 1.5)
    centre = np.array([[139.5, 99.5]])
    err = np.linalg.norm(apply_homography(found.homography, centre) - apply_homography(truth, centre))
    assert found.contenders >= 2  # the edges alone place it about as well one patch off
    assert err < 10.0
    assert found.level_score > 0.9


def test_an_image_of_another_scene_scores_low():
    phone, _, _ = _pair(1.6, (150.0, 120.0))
    other = _scene(7, 600, 900)
    assert coarse_search(phone, None, other, None).score < 0.3


def test_a_flat_phone_frame_has_no_placement():
    flat = np.full((240, 320), 0.5, np.float32)
    assert coarse_search(flat, None, _scene(0, 600, 900), None) is None


def test_a_dslr_mask_of_every_px_is_not_shrunk_and_gives_the_same_images():
    from alignment.coarse import _prepare

    lum = _scene(5, 600, 900)
    shortcut = _prepare(lum, None, 0.23)  # what coarse_search passes for a mask of every px
    shrunk = _prepare(lum, np.ones(lum.shape, np.float32), 0.23)
    for a, b in zip(shortcut, shrunk):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("clipped", [False, True])
def test_the_scales_searched_side_by_side_give_the_placement_found_one_by_one(clipped):
    phone, dslr, _ = _pair(1.6, (150.0, 120.0))
    valid = np.ones(dslr.shape, bool)
    if clipped:
        valid[:40, :200] = False  # a clipped corner: the DSLR's mask is shrunk at every scale
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)  # (alignment.threads.thread_map runs serially)
        serial = coarse_search(phone, None, dslr, valid, 1.5)
        cv2.setNumThreads(2)
        side_by_side = coarse_search(phone, None, dslr, valid, 1.5)
    finally:
        cv2.setNumThreads(before)
    np.testing.assert_array_equal(serial.homography, side_by_side.homography)
    assert (serial.score, serial.level_score, serial.contenders) == (side_by_side.score, side_by_side.level_score,
                                                                     side_by_side.contenders)


def test_a_large_dslr_shrunk_once_by_blocks_is_placed_as_at_full_resolution(monkeypatch):
    # a DSLR six times the phone's resolution: the search shrinks it once by 3 x 3
    # blocks, then by each scale, and places the frame where shrinking the full image
    # at every scale did, within a tenth of a searched px (12 DSLR px at this scale)
    import alignment.coarse as coarse

    dslr = _scene(7, 1800, 2400)
    phone = cv2.resize(dslr[200:1640, 300:2220], (320, 240), interpolation=cv2.INTER_AREA)
    truth = np.array([[6.0, 0, 302.5], [0, 6.0, 202.5], [0, 0, 1.0]])  # phone px -> DSLR px (pixel centres)
    corners = np.array([[0, 0], [319, 0], [0, 239], [319, 239]], np.float64)
    blocked = coarse_search(np.sqrt(phone), None, dslr, None, 6.0)
    monkeypatch.setattr(coarse, "BLOCK_MEANS_PER_PX", 1e9)  # every scale from the full image
    full = coarse_search(np.sqrt(phone), None, dslr, None, 6.0)
    assert blocked.scale == full.scale
    moved = np.linalg.norm(apply_homography(blocked.homography, corners) - apply_homography(full.homography, corners),
                           axis=1)
    assert moved.max() < 1.2
    err = np.linalg.norm(apply_homography(blocked.homography, corners) - apply_homography(truth, corners), axis=1)
    assert err.max() < 0.03 * 320 * 6.0
