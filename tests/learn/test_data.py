"""The dataset-folder reader, Bayer-preserving augmentation, crops, evaluation tiles, RGB folder pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from learn.data import (
    DataError,
    DatasetFolder,
    EvalTiles,
    PackedPairs,
    PairsUnion,
    RandomCrops,
    RgbFolderPairs,
    bayer_augment,
    list_rgb_pairs,
    open_source,
    split_names,
    write_image,
    write_pair,
)

OPS = [(fv, fh, tr) for fv in (False, True) for fh in (False, True) for tr in (False, True)]


def test_dataset_folder_reads_ok_records_and_skips_failed_ones(tiny_dataset):
    folder = DatasetFolder(tiny_dataset)
    assert [r.id for r in folder.split("train")] == ["p0", "p1", "p2", "p3"]
    assert [r.id for r in folder.split("test")] == ["p4", "p5"]
    assert folder.skipped == [("bad", "failed")]
    assert folder.split("test")[0].phone_jpeg is not None and folder.split("train")[0].phone_jpeg is None


def test_packed_pair_round_trips_raw_target_and_mask(tiny_dataset):
    item = PackedPairs(tiny_dataset, "train").load(0)
    assert item["input"].shape == (24, 32, 4) and item["input"].dtype == np.float32
    assert item["target"].shape == (48, 64, 3)
    assert item["mask"].shape == (48, 64) and not item["mask"][:, :6].any() and item["mask"][:, 6:].all()


def test_sixteen_bit_targets_keep_sixteen_bit_precision(tmp_path):
    raw = np.zeros((4, 4, 4), np.float32)
    target = np.linspace(0, 1, 8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    write_pair(tmp_path, "a", raw, target)
    got = PackedPairs(tmp_path, "train").load(0)["target"]
    assert np.abs(got - target).max() <= 0.5 / 65535 + 1e-7


@pytest.mark.parametrize("dtype,peak", [(np.uint16, 65535), (np.uint8, 255), (np.float32, 1)])
def test_npy_targets_are_read_like_pngs(tmp_path, dtype, peak):
    raw = np.zeros((4, 4, 4), np.float32)
    target = np.linspace(0, 1, 8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    write_pair(tmp_path, "a", raw, target)
    stored = (target * peak).round().astype(dtype) if dtype != np.float32 else target
    np.save(tmp_path / "pairs" / "a" / "target.npy", stored)
    lines = (tmp_path / "pairs.jsonl").read_text().replace("target.png", "target.npy")
    (tmp_path / "pairs.jsonl").write_text(lines)
    got = PackedPairs(tmp_path, "train").load(0)["target"]
    assert np.abs(got - target).max() <= 0.5 / peak + 1e-7 if peak > 1 else np.array_equal(got, target)


def test_target_of_the_wrong_size_is_an_error_naming_the_file(tmp_path):
    write_pair(tmp_path, "a", np.zeros((4, 4, 4), np.float32), np.zeros((8, 8, 3), np.float32))
    write_image(tmp_path / "pairs" / "a" / "target.png", np.zeros((8, 10, 3), np.float32))
    with pytest.raises(DataError, match="target.png.*expected 8x8"):
        PackedPairs(tmp_path, "train").load(0)


def test_missing_raw_file_is_an_error_naming_it(tmp_path):
    write_pair(tmp_path, "a", np.zeros((4, 4, 4), np.float32), np.zeros((8, 8, 3), np.float32))
    (tmp_path / "pairs" / "a" / "raw.npy").unlink()
    with pytest.raises(DataError, match="raw.npy: missing"):
        PackedPairs(tmp_path, "train").load(0)


def test_folder_without_pairs_jsonl_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="pairs.jsonl"):
        DatasetFolder(tmp_path)


def test_newer_format_version_is_refused(tmp_path):
    write_pair(tmp_path, "a", np.zeros((4, 4, 4), np.float32), np.zeros((8, 8, 3), np.float32))
    (tmp_path / "dataset.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(DataError, match="format_version 99"):
        DatasetFolder(tmp_path)


def _labelled_crop(h: int, w: int):
    """A packed RGGB crop whose raw values encode (scene pixel id, colour) and a target holding the id."""
    ids = np.arange(4 * h * w, dtype=np.float32).reshape(2 * h, 2 * w)
    colour = np.zeros((2 * h, 2 * w), np.float32)  # R=0, G=1, B=2 in an RGGB mosaic
    colour[0::2, 1::2] = colour[1::2, 0::2] = 1
    colour[1::2, 1::2] = 2
    mosaic = ids * 4 + colour
    raw = np.stack([mosaic[0::2, 0::2], mosaic[0::2, 1::2], mosaic[1::2, 0::2], mosaic[1::2, 1::2]], -1)
    target = np.repeat(ids[..., None], 3, axis=2)
    mask = (ids % 7) != 0
    return raw, target, mask


@pytest.mark.parametrize("fv,fh,tr", OPS)
def test_bayer_augmentation_keeps_the_phase_and_each_pixels_own_target(fv, fh, tr):
    raw, target, mask = _labelled_crop(5, 7)  # (h+1, w+1) = (5, 7) -> output (4, 6) cells
    r, t, m = bayer_augment(raw, target, mask, fv, fh, tr)
    oh, ow = (6, 4) if tr else (4, 6)
    assert r.shape == (oh, ow, 4) and t.shape == (2 * oh, 2 * ow, 3) and m.shape == (2 * oh, 2 * ow)
    expected_colour = [0, 1, 1, 2]  # planes R, G1, G2, B
    offsets = [(0, 0), (0, 1), (1, 0), (1, 1)]
    for k, (dy, dx) in enumerate(offsets):
        plane = r[..., k]
        assert np.all(plane % 4 == expected_colour[k]), f"plane {k} holds the wrong colour"
        own = t[dy::2, dx::2, 0]
        np.testing.assert_array_equal(plane // 4, own)  # raw pixel and its target show the same scene point
        np.testing.assert_array_equal(m[dy::2, dx::2], (own % 7) != 0)


def test_geometry_of_augmentation_is_the_requested_flip():
    raw, target, mask = _labelled_crop(5, 7)
    _, t, _ = bayer_augment(raw, target, mask, False, True, False)
    row = t[0, :, 0]
    assert np.all(np.diff(row) < 0)  # horizontal flip: scene ids decrease along the row


def test_random_crops_are_a_pure_function_of_seed_and_index(tiny_dataset):
    src = PackedPairs(tiny_dataset, "train")
    a, b = RandomCrops(src, crop=8, seed=3), RandomCrops(src, crop=8, seed=3)
    for k in (0, 5, 123):
        for key in ("input", "target", "mask"):
            np.testing.assert_array_equal(a[k][key].numpy(), b[k][key].numpy())
    assert not np.array_equal(a[0]["input"].numpy(), RandomCrops(src, crop=8, seed=4)[0]["input"].numpy())


def test_random_crops_have_cfa_aligned_shapes_and_prefer_valid_pixels(tiny_dataset):
    src = PackedPairs(tiny_dataset, "train")
    crops = RandomCrops(src, crop=8, seed=0, min_valid=0.9)
    for k in range(20):
        item = crops[k]
        assert tuple(item["input"].shape) == (4, 8, 8)
        assert tuple(item["target"].shape) == (3, 16, 16) and tuple(item["mask"].shape) == (1, 16, 16)
        assert float(item["mask"].mean()) >= 0.9


def test_crop_larger_than_the_image_is_a_clear_error(tiny_dataset):
    with pytest.raises(DataError, match="smaller than crop"):
        RandomCrops(PackedPairs(tiny_dataset, "train"), crop=40)[0]


def test_eval_tiles_are_fixed_and_cover_every_pixel(tiny_dataset):
    src = PackedPairs(tiny_dataset, "test")
    tiles = EvalTiles(src, tile=10)
    assert tiles.index == EvalTiles(src, tile=10).index
    covered = np.zeros((24, 32), bool)
    for p, i, j, th, tw in tiles.index:
        if p == 0:
            covered[i: i + th, j: j + tw] = True
    assert covered.all()
    item = tiles[0]
    assert tuple(item["jpeg"].shape) == tuple(item["target"].shape)


def test_rgb_folder_pairs_drop_identical_and_excluded_files(tmp_path):
    a, b = tmp_path / "phone", tmp_path / "dslr"
    rng = np.random.default_rng(0)
    for n in range(5):
        x = rng.random((8, 8, 3)).astype(np.float32)
        write_image(a / f"{n}.png", x)
        write_image(b / f"{n}.png", x if n == 3 else x * 0.5)
    assert list_rgb_pairs(a, b, exclude=["1"]) == ["0", "2", "4"]
    assert list_rgb_pairs(a, b, drop_identical=False) == ["0", "1", "2", "3", "4"]
    assert split_names([str(n) for n in range(10)], test_every=5) == (
        ["1", "2", "3", "4", "6", "7", "8", "9"], ["0", "5"])


def test_phone_vs_dslr_saturated_identical_patches_are_excluded(shared_data):
    d = shared_data / "phone_vs_dslr"
    names = list_rgb_pairs(d / "iphone", d / "canon")
    assert len(names) == 247 and not {"103", "177", "221"} & set(names)
    item = RgbFolderPairs(d / "iphone", d / "canon", names[:1]).load(0, with_jpeg=True)
    assert item["input"].shape == item["target"].shape == (100, 100, 3)


def test_appended_records_last_one_wins_and_a_torn_last_line_is_ignored(tmp_path):
    write_pair(tmp_path, "a", np.zeros((4, 4, 4), np.float32), np.zeros((8, 8, 3), np.float32))
    with open(tmp_path / "pairs.jsonl", "a") as f:
        f.write(json.dumps({"id": "a", "status": "rejected", "reason": "residual too large"}) + "\n")
        f.write('{"id": "b", "split": "tra')  # a writer killed mid-line
    folder = DatasetFolder(tmp_path)
    assert folder.records == [] and folder.skipped == [("a", "rejected")]


def test_a_folder_is_parsed_once_until_its_pairs_jsonl_changes(tmp_path):
    write_pair(tmp_path, "a", np.zeros((4, 4, 4), np.float32), np.zeros((8, 8, 3), np.float32))
    first = DatasetFolder.read(tmp_path)
    assert DatasetFolder.read(tmp_path) is first and [r.id for r in first.records] == ["a"]
    write_pair(tmp_path, "b", np.zeros((4, 4, 4), np.float32), np.zeros((8, 8, 3), np.float32))
    again = DatasetFolder.read(tmp_path)
    assert again is not first and [r.id for r in again.records] == ["a", "b"]


def test_rgb_input_pairs_of_a_dataset_folder_are_read_at_scale_one(tmp_path):
    write_pair(tmp_path, "a", np.zeros((4, 5, 4), np.float32), np.full((8, 10, 3), 0.5, np.float32))
    write_image(tmp_path / "pairs" / "a" / "input.png", np.full((8, 10, 3), 0.25, np.float32), 16)
    rec = json.loads((tmp_path / "pairs.jsonl").read_text())
    rec["files"].pop("raw")
    rec["files"]["input"] = "pairs/a/input.png"
    with open(tmp_path / "pairs.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    src = PackedPairs(tmp_path, "train")
    item = src.load(0)
    assert src.scale == 1 and not src.bayer
    assert item["input"].shape == item["target"].shape == (8, 10, 3)
    crop = RandomCrops(src, crop=4, seed=0)[0]
    assert tuple(crop["input"].shape) == (3, 4, 4) and tuple(crop["target"].shape) == (3, 4, 4)


def test_training_on_also_roots_draws_from_the_train_pairs_of_every_folder(tiny_dataset, tmp_path):
    rng = np.random.default_rng(5)
    write_pair(tmp_path / "other", "o0", (rng.random((24, 32, 4)) * 0.5).astype(np.float32),
               rng.random((48, 64, 3)).astype(np.float32))
    data = {"kind": "dataset", "root": str(tiny_dataset), "also_roots": [str(tmp_path / "other")]}
    train = open_source(data, "train")
    assert isinstance(train, PairsUnion) and len(train) == 4 + 1
    assert [train.load(i)["id"] for i in range(5)] == ["p0", "p1", "p2", "p3", "o0"]
    assert train.input_shape(4) == (24, 32, 4)
    assert {RandomCrops(train, crop=8, seed=0)[k]["input"].shape[0] for k in range(3)} == {4}
    assert len(open_source(data, "test")) == 2  # the other folders only add training pairs


def test_folders_of_raw_and_rgb_inputs_are_not_trained_on_together(tiny_dataset, tmp_path):
    write_pair(tmp_path, "a", np.zeros((4, 5, 4), np.float32), np.full((8, 10, 3), 0.5, np.float32))
    write_image(tmp_path / "pairs" / "a" / "input.png", np.full((8, 10, 3), 0.25, np.float32), 16)
    rec = json.loads((tmp_path / "pairs.jsonl").read_text())
    rec["files"].pop("raw")
    rec["files"]["input"] = "pairs/a/input.png"
    (tmp_path / "pairs.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataError, match="mix inputs"):
        open_source({"kind": "dataset", "root": str(tiny_dataset), "also_roots": [str(tmp_path)]}, "train")


def test_decoded_targets_stay_cached_within_the_byte_budget(tiny_dataset):
    src = PackedPairs(tiny_dataset, "train", cache_mb=1024)
    for i in range(len(src)):
        src.load(i)
    assert len(src._cache) == len(src)  # a small dataset stays decoded
    one = src._cache[0][0].nbytes
    tight = PackedPairs(tiny_dataset, "train", cache_mb=1.5 * one / 2**20)
    for i in range(len(tight)):
        tight.load(i)
    assert len(tight._cache) == 1 and tight._cached_bytes <= tight.cache_bytes
