"""The three commands end to end: isp-rig train, eval, render."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from isp_rig.cli import main


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    cfg.write_text('[model]\nname = "ckisp"\n[model.kwargs]\nwidth = 8\nn_basis = 4\n'
                   '[data]\ncrop = 8\nbatch_size = 4\neval_tile = 16\n'
                   '[train]\nckpt_every = 3\neval_every = 3\nlog_every = 1\nthreads = 1\n')
    res = CliRunner().invoke(main, ["train", "--data", str(tiny_dataset), "--out", str(run), "--config", str(cfg),
                                    "--steps", "6", "--seed", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    return run


def test_train_writes_checkpoint_metrics_and_curve(trained_run):
    assert (trained_run / "checkpoints" / "last.pt").is_file()
    assert (trained_run / "metrics.csv").is_file() and (trained_run / "curve.png").is_file()
    assert json.loads((trained_run / "config.json").read_text())["train"]["seed"] == 1


def test_eval_json_reports_model_and_builtin_isp_with_lpips_null(trained_run, tiny_dataset):
    res = CliRunner().invoke(main, ["eval", "--data", str(tiny_dataset), "--run", str(trained_run), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["lpips"] is None and out["builtin_isp"]["lpips"] is None
    assert 5 < out["psnr"] < 60 and 0 < out["ssim"] <= 1
    assert out["images"] == 2 and 5 < out["builtin_isp"]["psnr"] < 60
    table = (trained_run / "eval" / "table.md").read_text()
    assert "built-in ISP" in table and "testphone" in table and "n/a" in table
    assert (trained_run / "eval" / "table.csv").is_file()


def test_render_of_a_packed_npy_writes_a_full_resolution_png_and_exports(trained_run, tiny_dataset, tmp_path):
    raw = tiny_dataset / "pairs" / "p4" / "raw.npy"
    out = tmp_path / "out.png"
    res = CliRunner().invoke(main, ["render", str(raw), "--run", str(trained_run), "--out", str(out), "--tile", "16",
                                    "--export-torchscript", str(tmp_path / "m.pt")])
    assert res.exit_code == 0, res.output
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert (tmp_path / "m.pt").is_file()


def test_render_of_a_real_dng_through_rawio(trained_run, tmp_path):
    from isp_rig.simulate import simulate_pairs

    pair = simulate_pairs(tmp_path / "sim", 1, seed=3, progress=False)[0]
    dng = next(pair.glob("phone*.dng"))
    out = tmp_path / "dng.png"
    res = CliRunner().invoke(main, ["render", str(dng), "--run", str(trained_run), "--out", str(out), "--bits", "16"])
    assert res.exit_code == 0, res.output
    from alignment.rawio import read_raw

    h, w = read_raw(dng).mosaic.shape
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert img.shape == (h, w, 3) and img.dtype == np.uint16


def test_render_of_a_broken_raw_is_a_clear_error(trained_run, tmp_path):
    bad = tmp_path / "broken.dng"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    res = CliRunner().invoke(main, ["render", str(bad), "--run", str(trained_run), "--out", str(tmp_path / "o.png")])
    assert res.exit_code != 0 and "broken.dng" in res.output
    assert not (tmp_path / "o.png").exists()


def test_train_with_an_unknown_model_is_a_usage_error(tiny_dataset, tmp_path):
    res = CliRunner().invoke(main, ["train", "--data", str(tiny_dataset), "--model", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "available" in res.output


@pytest.mark.slow
def test_train_eval_render_on_a_dataset_built_by_the_alignment_stage(tmp_path):
    """The user's path: simulate -> isp-rig dataset build -> train -> eval -> render (about 2 minutes)."""
    from isp_rig.simulate import simulate_pairs

    simulate_pairs(tmp_path / "sim", 3, seed=1, progress=False)
    runner = CliRunner()
    res = runner.invoke(main, ["dataset", "build", str(tmp_path / "sim"), "--out", str(tmp_path / "ds"),
                               "--workers", "1", "--no-report", "--phone-profile", "simphone"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["train", "--data", str(tmp_path / "ds"), "--model", "ckisp", "--out",
                               str(tmp_path / "run"), "--steps", "4", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["eval", "--data", str(tmp_path / "ds"), "--run", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["images"] >= 1 and out["psnr"] > 5 and out["lpips"] is None
    assert "simphone" in (tmp_path / "run" / "eval" / "table.md").read_text()
    dng = tmp_path / "sim" / "pair_0000" / "phone.dng"
    res = runner.invoke(main, ["render", str(dng), "--run", str(tmp_path / "run"), "--out", str(tmp_path / "o.png")])
    assert res.exit_code == 0, res.output
    assert cv2.imread(str(tmp_path / "o.png")).shape[2] == 3
