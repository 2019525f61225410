"""The metadata input stage: the packed raw white-balanced and colour-corrected with the raw's
own metadata, in training (the dataset's phone_raw), evaluation and rendering (the file's)."""

from __future__ import annotations

import click
import numpy as np
import pytest

from alignment import rawio
from learn.cli import _read_input
from learn.data import DataError, PackedPairs, write_pair
from learn.raw_space import INPUT_SPACES, MissingMetadata, encode_srgb, to_input_space

META = {"as_shot_wb": [2.0, 1.0, 1.5],
        "color_matrix": [[1.6, -0.4, -0.2], [-0.2, 1.4, -0.2], [0.0, -0.5, 1.5]]}


def test_white_balance_makes_a_neutral_surface_equal_in_every_plane():
    wb = np.asarray(META["as_shot_wb"])
    neutral = np.tile(np.array([1 / wb[0], 1 / wb[1], 1 / wb[1], 1 / wb[2]], np.float32) * 0.4, (3, 5, 1))
    out = to_input_space(neutral, META, "white_balanced")
    np.testing.assert_allclose(out, 0.4, rtol=1e-6)
    # a colour matrix maps white to white (rows sum to 1): the neutral stays neutral
    np.testing.assert_allclose(to_input_space(neutral, META, "linear_srgb"), 0.4, rtol=1e-5)
    assert to_input_space(neutral, None, "raw") is neutral


def test_linear_srgb_planes_agree_with_the_toolkits_own_rendering_of_a_real_raw(shared_data):
    raw = rawio.read_raw(shared_data / "raw" / "Blackmagic.dng")
    out = to_input_space(raw.packed(), raw.metadata(), "linear_srgb")
    half = rawio.raw_to_linear_rgb(raw, resolution="half")  # R, mean G, B per cell, WB and matrix applied
    np.testing.assert_allclose(out[..., 0], half[..., 0], atol=1e-5)
    np.testing.assert_allclose(0.5 * (out[..., 1] + out[..., 2]), half[..., 1], atol=1e-5)
    np.testing.assert_allclose(out[..., 3], half[..., 2], atol=1e-5)


def test_srgb_space_is_the_srgb_curve_on_linear_srgb_and_keeps_values_outside_the_unit_range():
    rng = np.random.default_rng(1)
    packed = (rng.random((6, 5, 4)) * 1.4 - 0.1).astype(np.float32)  # some px under 0 and over 1 after WB
    linear = to_input_space(packed, META, "linear_srgb")
    out = to_input_space(packed, META, "srgb")
    inside = (linear >= 0) & (linear <= 1)
    assert inside.any() and (~inside).any()
    np.testing.assert_allclose(out[inside], rawio.linear_to_srgb(linear[inside]), atol=1e-6)
    np.testing.assert_allclose(encode_srgb(-linear), -encode_srgb(linear), atol=1e-7)  # mirrored under 0
    x = np.array([0.999, 1.0, 1.001, 2.0], np.float32)  # continued above 1 with the slope at 1
    y = encode_srgb(x)
    np.testing.assert_allclose(np.diff(y[:3]), 0.001 * 1.055 / 2.4, rtol=2e-2)
    assert np.all(np.diff(y) > 0) and y[-1] > 1.4
    assert np.all(np.diff(encode_srgb(np.linspace(-2, 2, 401, dtype=np.float32))) > 0)  # order kept


@pytest.mark.parametrize("meta, match", [
    (None, "no as_shot_wb"),
    ({"as_shot_wb": [1.0, 1.0]}, "as_shot_wb is not a finite 3 array"),
    ({"as_shot_wb": [2.0, 1.0, 1.5]}, "no color_matrix"),
])
def test_missing_or_malformed_metadata_is_named(meta, match):
    with pytest.raises(MissingMetadata, match=match):
        to_input_space(np.zeros((2, 2, 4), np.float32), meta, "linear_srgb")


def test_an_unknown_space_lists_the_choices():
    with pytest.raises(ValueError, match="choices: " + ", ".join(INPUT_SPACES)):
        to_input_space(np.zeros((2, 2, 4), np.float32), META, "xyz")


def test_the_dataset_applies_each_pairs_metadata_and_refuses_pairs_without_it(tmp_path):
    rng = np.random.default_rng(0)
    raw = (rng.random((8, 12, 4)) * 0.5).astype(np.float32)
    target = rng.random((16, 24, 3)).astype(np.float32)
    write_pair(tmp_path / "with", "a", raw, target, phone_raw=META)
    got = PackedPairs(tmp_path / "with", "train", input_space="linear_srgb").load(0)["input"]
    np.testing.assert_allclose(got, to_input_space(raw, META, "linear_srgb"), rtol=1e-6)
    np.testing.assert_allclose(PackedPairs(tmp_path / "with", "train").load(0)["input"], raw)
    write_pair(tmp_path / "without", "b", raw, target)
    with pytest.raises(DataError, match="pair 'b': no as_shot_wb"):
        PackedPairs(tmp_path / "without", "train", input_space="white_balanced")


def test_render_reads_the_metadata_of_the_raw_it_renders_and_refuses_a_bare_npy(tmp_path, shared_data):
    path = shared_data / "raw" / "Blackmagic.dng"
    raw = rawio.read_raw(path)
    got, _ = _read_input(path, 4, "white_balanced")
    np.testing.assert_allclose(got, to_input_space(raw.packed(), raw.metadata(), "white_balanced"))
    np.save(tmp_path / "x.npy", raw.packed()[:8, :8])
    with pytest.raises(click.ClickException, match="carries no white balance"):
        _read_input(tmp_path / "x.npy", 4, "white_balanced")
    assert _read_input(tmp_path / "x.npy", 4, "raw")[0].shape == (8, 8, 4)


def test_a_run_is_evaluated_on_another_dataset_in_the_input_space_and_cfa_phase_it_was_trained_on():
    from learn.evaluate import run_data_config

    config = {"data": {"kind": "dataset", "root": "/a", "input_space": "linear_srgb", "cfa_phase": "rggb"}}
    assert run_data_config(config) == config["data"]
    assert run_data_config(config, "/b") == {"kind": "dataset", "root": "/b", "input_space": "linear_srgb",
                                             "cfa_phase": "rggb"}
    assert run_data_config(config, {"kind": "dataset", "root": "/b"})["input_space"] == "linear_srgb"
    assert run_data_config(config, {"root": "/b", "input_space": "raw"})["input_space"] == "raw"
    assert run_data_config(config, {"root": "/b", "input_space": "auto"})["input_space"] == "linear_srgb"
    assert run_data_config(config, {"root": "/b", "cfa_phase": "packed"})["cfa_phase"] == "rggb"


def test_a_run_stored_before_the_cfa_phase_is_evaluated_on_the_cells_as_packed():
    from learn.evaluate import run_data_config

    assert run_data_config({"data": {"kind": "dataset", "root": "/a"}}, "/b")["cfa_phase"] == "packed"


def _tiny_metadata_dataset(root, with_metadata: bool) -> None:
    """2 train + 1 test pair; without metadata, the second training pair lacks it."""
    rng = np.random.default_rng(2)
    for k, split in enumerate(("train", "train", "test")):
        meta = META if (with_metadata or k == 0) else None
        write_pair(root, f"p{k}", (rng.random((16, 16, 4)) * 0.5).astype(np.float32),
                   rng.random((32, 32, 3)).astype(np.float32), split=split, phone_raw=meta)


def _tiny_config(root) -> dict:
    from learn.train import load_config

    return load_config(overrides={"model": {"name": "ckisp", "kwargs": {"width": 8, "n_basis": 4}},
                                  "data": {"root": str(root), "crop": 8, "batch_size": 2, "eval_tile": 16},
                                  "optim": {"steps": 1}, "train": {"ckpt_every": 1, "eval_every": 1, "threads": 1}})


@pytest.mark.parametrize("with_metadata, expected", [(True, "srgb"), (False, "raw")])
def test_auto_input_space_is_srgb_only_when_every_training_pair_carries_the_metadata(tmp_path, caplog, with_metadata,
                                                                                    expected):
    import json
    import logging

    from learn.train import train

    _tiny_metadata_dataset(tmp_path / "data", with_metadata)
    cfg = _tiny_config(tmp_path / "data")
    assert cfg["data"]["input_space"] == "auto"
    with caplog.at_level(logging.INFO, logger="learn.train"):
        train(cfg, tmp_path / "run", progress=False)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["data"]["input_space"] == expected
    assert f"input space auto -> {expected}" in caplog.text
    if not with_metadata:
        assert "pair 'p1': no as_shot_wb" in caplog.text


def test_fine_tuning_from_a_run_of_another_input_space_says_so(tmp_path, caplog):
    import logging

    from learn.train import train

    _tiny_metadata_dataset(tmp_path / "a", True)
    _tiny_metadata_dataset(tmp_path / "b", False)
    train(_tiny_config(tmp_path / "a"), tmp_path / "run_a", progress=False)  # srgb
    with caplog.at_level(logging.WARNING, logger="learn.train"):
        train(_tiny_config(tmp_path / "b"), tmp_path / "run_b", init_from=tmp_path / "run_a", progress=False)
    assert "was trained with data.input_space = 'srgb', this run uses 'raw'" in caplog.text
