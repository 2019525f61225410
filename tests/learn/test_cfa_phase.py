"""The CFA phase the model sees: R first in every cell whatever the camera's pattern, nothing of the raw lost."""

from __future__ import annotations

import numpy as np
import pytest

from alignment import rawio
from learn.cfa_phase import crop_to_raw, pad_like_raw, red_offset, to_rggb
from learn.data import PackedPairs, RandomCrops, write_pair

COLOUR = {"R": 0, "G": 1, "B": 2}


def _colour_mosaic(cfa: str, h: int = 8, w: int = 12) -> np.ndarray:
    """(h, w) mosaic holding the colour index (0 R, 1 G, 2 B) each pixel of pattern ``cfa`` samples."""
    cell = np.array([[COLOUR[cfa[0]], COLOUR[cfa[1]]], [COLOUR[cfa[2]], COLOUR[cfa[3]]]], np.float32)
    return np.tile(cell, (h // 2, w // 2))


@pytest.mark.parametrize("cfa", rawio.CFA_PATTERNS)
def test_every_pattern_becomes_rggb_cells_with_each_raw_pixel_moved_by_the_red_offset(cfa):
    colours = _colour_mosaic(cfa)
    values = np.arange(colours.size, dtype=np.float32).reshape(colours.shape)  # one value per raw pixel
    shifted_colours = rawio.unpack(to_rggb(rawio.pack(colours, cfa), cfa), "RGGB")
    np.testing.assert_array_equal(shifted_colours, _colour_mosaic("RGGB", *shifted_colours.shape))
    dy, dx = red_offset(cfa)
    shifted = rawio.unpack(to_rggb(rawio.pack(values, cfa), cfa), "RGGB")
    assert shifted.shape == (colours.shape[0] + 2 * dy, colours.shape[1] + 2 * dx)
    np.testing.assert_array_equal(shifted[dy: dy + values.shape[0], dx: dx + values.shape[1]], values)


@pytest.mark.parametrize("cfa", rawio.CFA_PATTERNS)
def test_a_padded_target_crops_back_to_itself_and_its_padding_is_never_valid(cfa):
    target = np.random.default_rng(0).random((8, 12, 3)).astype(np.float32)
    padded, mask = pad_like_raw(target, np.ones((8, 12), bool), cfa)
    np.testing.assert_array_equal(crop_to_raw(padded, cfa), target)
    assert mask.sum() == 8 * 12 and crop_to_raw(mask[..., None], cfa).all()


def test_an_unknown_pattern_is_refused():
    with pytest.raises(ValueError, match="XGGB"):
        red_offset("XGGB")


def _pair_of_pattern(root, cfa: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    mosaic = rng.random((16, 20)).astype(np.float32)
    target = rng.random((16, 20, 3)).astype(np.float32)
    write_pair(root, "p0", rawio.pack(mosaic, cfa), target, phone_raw={"cfa": cfa})
    return mosaic, target


@pytest.mark.parametrize("cfa", rawio.CFA_PATTERNS)
def test_dataset_pairs_in_the_rggb_phase_keep_each_raw_pixel_on_its_own_target_pixel(tmp_path, cfa):
    mosaic, target = _pair_of_pattern(tmp_path, cfa)
    item = PackedPairs(tmp_path, "train", cfa_phase="rggb").load(0)
    dy, dx = red_offset(cfa)
    shifted = rawio.unpack(item["input"], "RGGB")
    assert item["target"].shape[:2] == item["mask"].shape == shifted.shape
    np.testing.assert_array_equal(shifted[dy: dy + 16, dx: dx + 20], mosaic)
    np.testing.assert_allclose(item["target"][dy: dy + 16, dx: dx + 20], target, atol=1 / 65535)  # 16-bit PNG
    assert item["mask"].sum() == 16 * 20  # the padding is not valid
    packed = PackedPairs(tmp_path, "train", cfa_phase="packed").load(0)
    np.testing.assert_array_equal(packed["input"], rawio.pack(mosaic, cfa))  # the cells as packed, unshifted


def test_training_crops_of_a_shifted_pair_have_the_crop_size(tmp_path):
    _pair_of_pattern(tmp_path, "BGGR")
    crop = RandomCrops(PackedPairs(tmp_path, "train", cfa_phase="rggb"), crop=4, seed=0)[0]
    assert crop["input"].shape == (4, 4, 4) and crop["target"].shape == (3, 8, 8)


def test_a_recorded_pattern_that_is_not_a_bayer_pattern_is_a_data_error(tmp_path):
    from learn.data import DataError

    write_pair(tmp_path, "p0", np.zeros((4, 4, 4), np.float32), np.zeros((8, 8, 3), np.float32),
               phone_raw={"cfa": "XTRANS"})
    with pytest.raises(DataError, match="XTRANS"):
        PackedPairs(tmp_path, "train", cfa_phase="rggb")


@pytest.mark.parametrize("cfa", rawio.CFA_PATTERNS)
def test_flipped_training_crops_keep_every_sample_on_its_own_target_pixel_for_every_pattern(tmp_path, cfa):
    """Before the shift, the Bayer flips took every crop as RGGB: on a GRBG raw they put the R sample at
    (0, 1), (1, 0), (0, -1) or (-1, 0) of its target cell depending on the flip, even for one phone."""
    mosaic = (np.arange(16 * 20, dtype=np.float32).reshape(16, 20) + 1) / 1000  # one value per raw pixel
    write_pair(tmp_path, "p0", rawio.pack(mosaic, cfa), np.repeat(mosaic[..., None], 3, -1), phone_raw={"cfa": cfa})
    crops = RandomCrops(PackedPairs(tmp_path, "train", cfa_phase="rggb"), crop=4, seed=0, min_valid=0.0)
    for k in range(16):  # every flip / turn is drawn among 16 crops
        c = crops[k]
        samples = rawio.unpack(c["input"].permute(1, 2, 0).numpy(), "RGGB")
        valid = c["mask"][0].numpy() > 0
        np.testing.assert_allclose(samples[valid], c["target"][0].numpy()[valid], atol=1e-4)
