"""Fixtures for the alignment tests: simulator pairs (with exact ground truth) and
their alignments, computed once per session because alignment takes seconds."""

from __future__ import annotations

import pytest

from _align_helpers import jpeg_roundtrip, make_sim  # noqa: E402

_CACHE: dict = {}


@pytest.fixture(scope="session")
def aligned_sim():
    """Callable (seed, distortion) -> (SimPair, Alignment of phone raw vs JPEG DSLR), cached."""
    from alignment import align_images

    def get(seed: int, distortion: bool = False):
        key = (seed, distortion)
        if key not in _CACHE:
            pair = make_sim(seed, distortion)
            _CACHE[key] = (pair, align_images(pair.phone, jpeg_roundtrip(pair.dslr_rgb)))
        return _CACHE[key]

    return get


@pytest.fixture
def two_threads():
    """OpenCV, and so the alignment's thread pool, on two threads for the test."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    yield
    cv2.setNumThreads(before)
