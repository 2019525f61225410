"""Putting a JPEG's lost chroma detail back from its luma (alignment.chroma) and reading
its subsampling from the file (alignment.rawio.jpeg_chroma_sampling)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from alignment import rawio
from alignment.chroma import BT601, restore_chroma

#: PIL's subsampling codes -> (px per chroma sample across, down)
SAMPLINGS = {0: (1, 1), 1: (2, 1), 2: (2, 2)}


def _patches(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8: patches of random colours (a colour chart), their edges off the
    2-px chroma grid (odd columns and rows)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    for y0 in range(0, h, 17):
        for x0 in range(0, w, 21):
            img[y0 : y0 + 17, x0 : x0 + 21] = rng.integers(30, 220, 3)
    return img


def _as_jpeg(tmp_path, rgb: np.ndarray, subsampling: int, quality: int = 100) -> rawio.RgbImage:
    path = tmp_path / f"s{subsampling}.jpg"
    Image.fromarray(rgb).save(path, quality=quality, subsampling=subsampling)
    return rawio.read_rgb(path)


def _chroma(rgb: np.ndarray) -> np.ndarray:
    f = rgb.astype(np.float64)
    return f - (f @ BT601)[..., None]


@pytest.mark.parametrize("subsampling", [0, 1, 2])
def test_the_jpegs_chroma_subsampling_is_read_from_its_frame_header(tmp_path, subsampling):
    im = _as_jpeg(tmp_path, _patches(), subsampling)
    assert im.chroma_sampling == SAMPLINGS[subsampling]
    assert rawio.jpeg_chroma_sampling(im.path) == SAMPLINGS[subsampling]


def test_a_png_has_no_chroma_sampling(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_patches()).save(path)
    assert rawio.read_rgb(path).chroma_sampling is None and rawio.jpeg_chroma_sampling(path) is None


@pytest.mark.parametrize("subsampling", [1, 2])
def test_a_charts_colour_edges_come_back_sharp_and_its_luma_stays(tmp_path, subsampling):
    truth = _patches()
    im = _as_jpeg(tmp_path, truth, subsampling)
    restored = restore_chroma(im.stored, im.chroma_sampling)
    before = np.sqrt(np.mean((_chroma(im.stored) - _chroma(truth)) ** 2))
    after = np.sqrt(np.mean((_chroma(restored) - _chroma(truth)) ** 2))
    # the patches' chroma follows their luma within every window: most of the loss is undone
    assert after < 0.5 * before
    luma_change = np.abs(restored.astype(np.float64) @ BT601 - im.stored.astype(np.float64) @ BT601)
    assert luma_change.max() <= 1.0  # (rounding of the three channels)


def test_noise_is_not_carried_into_the_chroma(tmp_path):
    rng = np.random.default_rng(1)
    flat = np.clip(rng.normal(120, 6, (96, 128, 3)), 0, 255).astype(np.uint8)
    im = _as_jpeg(tmp_path, flat, 2, quality=95)
    restored = restore_chroma(im.stored, im.chroma_sampling)
    change = np.sqrt(np.mean((restored.astype(np.float64) - im.stored) ** 2))
    assert change < 0.5  # DL, against the noise's 6


def test_a_crop_is_restored_as_the_frame_is_when_given_its_origin(tmp_path):
    im = _as_jpeg(tmp_path, _patches(), 2)
    whole = restore_chroma(im.stored, (2, 2))
    crop = restore_chroma(im.stored[11:90, 7:120], (2, 2), origin=(7, 11))
    inner = (slice(10, -10), slice(10, -10))  # away from the crop's own edges
    assert np.abs(crop[inner].astype(int) - whole[11:90, 7:120][inner]).max() <= 1
    misplaced = restore_chroma(im.stored[11:90, 7:120], (2, 2))
    assert np.abs(misplaced[inner].astype(int) - whole[11:90, 7:120][inner]).max() > 1


@pytest.mark.parametrize("subsampling", [1, 2])
def test_strips_give_the_result_of_one_piece(tmp_path, monkeypatch, subsampling):
    from alignment import chroma

    im = _as_jpeg(tmp_path, _patches(h=150, seed=3), subsampling)
    whole = restore_chroma(im.stored, im.chroma_sampling)
    monkeypatch.setattr(chroma, "STRIP_ROWS", 16)
    diff = np.abs(restore_chroma(im.stored, im.chroma_sampling).astype(int) - whole)
    # (float sums over arrays of another extent round a few values the other way)
    assert diff.max() <= 1 and np.mean(diff > 0) < 0.01


def test_clipped_px_keep_their_decoded_values(tmp_path):
    truth = _patches()
    truth[40:60, 40:70] = (255, 255, 60)  # a patch clipped in two channels
    im = _as_jpeg(tmp_path, truth, 2)
    restored = restore_chroma(im.stored, (2, 2))
    clipped = (im.stored >= 254).any(axis=2)
    assert clipped[44:56, 48:62].all()  # (the patch, as decoded)
    assert np.array_equal(restored[clipped], im.stored[clipped])


@pytest.mark.parametrize("sampling", [(1, 1), (4, 1)])
def test_no_subsampling_or_an_unusual_one_returns_the_image_itself(sampling):
    img = _patches()
    assert restore_chroma(img, sampling) is img


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_restored_planes_are_rounded_halves_to_even_and_clipped_as_numpy_does(dtype):
    from alignment.chroma import _to_stored

    full = float(np.iinfo(dtype).max)
    plane = np.array([[-3.7, -0.5, 0.5, 1.5, 2.5, 2.49, 7.51, full - 0.5, full + 0.4, full + 9.0]], np.float32)
    plane = np.tile(plane, (3, 7))  # 70 px a row: OpenCV's vectorised loop and its tail alike
    expected = np.clip(np.rint(plane), 0, full).astype(dtype)
    got = _to_stored(plane, np.dtype(dtype), full)
    assert got.dtype == dtype
    assert np.array_equal(got, expected)
