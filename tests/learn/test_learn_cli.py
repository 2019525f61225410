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


@pytest.mark.parametrize("flag, name", [("--export-program", "m.pt2"), ("--export-onnx", "m.onnx")])
def test_render_of_a_packed_npy_writes_a_full_resolution_png_and_exports(trained_run, tiny_dataset, tmp_path, flag,
                                                                          name):
    import torch

    from learn.infer import check_export
    from learn.train import load_model

    raw = tiny_dataset / "pairs" / "p4" / "raw.npy"
    out = tmp_path / "out.png"
    res = CliRunner().invoke(main, ["render", str(raw), "--run", str(trained_run), "--out", str(out), "--tile", "16",
                                    flag, str(tmp_path / name)])  # the export runs after the render
    assert res.exit_code == 0, res.output
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    model, _ = load_model(trained_run)
    assert check_export(model, tmp_path / name, torch.rand(1, 4, 20, 28)) < 1e-4


def test_render_of_a_real_dng_of_another_cfa_pattern_has_the_raws_size(trained_run, tmp_path):
    from alignment.rawio import read_raw
    from isp_rig.simulate import simulate_pairs

    pair = simulate_pairs(tmp_path / "sim", 1, seed=3, progress=False)[0]
    dng = next(pair.glob("phone*.dng"))
    assert read_raw(dng).cfa == "GRBG"  # the run's rggb phase shifts it by a column; the render crops it back
    out = tmp_path / "dng.png"
    res = CliRunner().invoke(main, ["render", str(dng), "--run", str(trained_run), "--out", str(out), "--bits", "16"])
    assert res.exit_code == 0, res.output
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


TINY = ('[model]\nname = "ckisp"\n[model.kwargs]\nwidth = 8\nn_basis = 4\n'
        '[data]\ncrop = 8\nbatch_size = 4\neval_tile = 16\n[train]\nckpt_every = 2\neval_every = 2\nthreads = 1\n')


@pytest.mark.parametrize("extra, named", [
    ("[optim]\nstpes = 5\n", "optim.stpes: unknown key (did you mean 'steps'?)"),
    ('[optim]\nsteps = "five"\n', "optim.steps: expected an integer, got 'five'"),
    ("[optim]\nsteps = 0\n", "optim.steps: 0 is below"),
    ("[optim]\nschedule = \"linear\"\n", "optim.schedule: 'linear' is not one of 'cosine', 'constant'"),
    ("[loss]\nl3 = 1.0\n", "loss.l3: unknown loss"),
    ("[trian]\nseed = 1\n", "trian: unknown section (did you mean 'train'?)"),
])
def test_train_config_errors_name_the_key_before_any_work(tiny_dataset, tmp_path, extra, named):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(TINY + extra)
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--data", str(tiny_dataset), "--out", str(run), "--config", str(cfg),
                                    "--no-progress"])
    assert res.exit_code == 1
    assert named in res.output and str(cfg) in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not run.exists()  # refused before anything was written


@pytest.mark.parametrize("key, value", [("crop", -4), ("batch_size", 0), ("min_valid", 1.5)])
def test_train_data_values_out_of_range_are_refused(tiny_dataset, tmp_path, key, value):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"data": {key: value}}))
    res = CliRunner().invoke(main, ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"),
                                    "--config", str(cfg), "--no-progress"])
    assert res.exit_code == 1 and f"data.{key}: {value}" in res.output


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_train_with_no_steps_is_a_usage_error(tiny_dataset, tmp_path, steps):
    res = CliRunner().invoke(main, ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"),
                                    "--steps", steps, "--no-progress"])
    assert res.exit_code == 2 and "--steps" in res.output
    assert not (tmp_path / "run").exists()


def test_train_refuses_to_resume_a_run_with_another_model_and_says_when_it_resumes(tiny_dataset, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset), "--out", str(run), "--config", str(cfg), "--no-progress"]
    assert CliRunner().invoke(main, [*args, "--steps", "2"]).exit_code == 0
    before = (run / "checkpoints" / "last.pt").read_bytes()
    res = CliRunner().invoke(main, [*args, "--steps", "4", "--model", "plain"])
    assert res.exit_code == 1 and "holds a run with other settings" in res.output and "model.name" in res.output
    assert (run / "checkpoints" / "last.pt").read_bytes() == before  # nothing trained on top
    res = CliRunner().invoke(main, [*args, "--steps", "4"])
    assert res.exit_code == 0 and "resuming" in res.output and "from step 2 of 4" in res.output


def test_train_refuses_an_output_folder_that_holds_something_else(tiny_dataset, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not mine")
    res = CliRunner().invoke(main, ["train", "--data", str(tiny_dataset), "--out", str(out), "--steps", "1",
                                    "--no-progress"])
    assert res.exit_code == 1 and "not empty and not a training run" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def _copy_dataset(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _one_error_line(res, *names):
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert all(n in lines[0] for n in names), lines[0]


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("file, damage, reason", [
    ("p4/raw.npy", b"", "not a .npy array"),
    ("p5/target.png", b"\x89PNG\r\n\x1a\n\x00\x00", "not a readable image"),
    ("p4/target.png", None, "missing"),
])
def test_a_damaged_dataset_file_is_one_line_naming_it(trained_run, tiny_dataset, tmp_path, command, file, damage,
                                                      reason):
    data = _copy_dataset(tiny_dataset, tmp_path / "ds")
    path = data / "pairs" / file
    path.unlink() if damage is None else path.write_bytes(damage)
    (tmp_path / "tiny.toml").write_text(TINY)
    args = (["train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "2", "--no-progress",
             "--config", str(tmp_path / "tiny.toml")] if command == "train" else ["eval", "--run", str(trained_run), "--data", str(data)])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1
    _one_error_line(res, str(path), reason)


def test_render_of_an_empty_npy_is_one_line(trained_run, tmp_path):
    (tmp_path / "raw.npy").write_bytes(b"")
    res = CliRunner().invoke(main, ["render", str(tmp_path / "raw.npy"), "--run", str(trained_run),
                                    "--out", str(tmp_path / "o.png")])
    assert res.exit_code == 1 and not (tmp_path / "o.png").exists()
    _one_error_line(res, "raw.npy", "not a .npy array")


@pytest.mark.parametrize("what", ["empty run folder", "foreign file"])
def test_a_run_that_is_not_a_run_is_one_line(tiny_dataset, tmp_path, what):
    if what == "empty run folder":
        run = tmp_path / "run"
        run.mkdir()
    else:
        run = tmp_path / "weights.pt"
        run.write_bytes(b"not a checkpoint at all")
    commands = [["eval", "--run", str(run), "--data", str(tiny_dataset)]] if run.is_dir() else []  # eval: folders
    for args in (*commands,
                 ["render", str(tiny_dataset / "pairs" / "p4" / "raw.npy"), "--run", str(run),
                  "--out", str(tmp_path / "o.png")],
                 ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "new"), "--steps", "1",
                  "--init-from", str(run), "--no-progress"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1, args
        _one_error_line(res, run.name)


def test_lpips_weights_that_are_not_weights_are_one_line(trained_run, tiny_dataset, tmp_path):
    bad = tmp_path / "alex.pth"
    bad.write_bytes(b"\x80\x04garbage")
    res = CliRunner().invoke(main, ["eval", "--run", str(trained_run), "--data", str(tiny_dataset),
                                    "--lpips-weights", str(bad)])
    assert res.exit_code == 1
    _one_error_line(res, "alex.pth", "not a torch weights file")


@pytest.mark.parametrize("args", [["eval", "--tile", "0"], ["render", "--tile", "4"], ["render", "--threads", "-1"]])
def test_tile_and_thread_counts_out_of_range_are_usage_errors(trained_run, tiny_dataset, tmp_path, args):
    cmd, *opts = args
    base = (["eval", "--run", str(trained_run), "--data", str(tiny_dataset)] if cmd == "eval" else
            ["render", str(tiny_dataset / "pairs" / "p4" / "raw.npy"), "--run", str(trained_run),
             "--out", str(tmp_path / "o.png")])
    res = CliRunner().invoke(main, [*base, *opts])
    assert res.exit_code == 2 and opts[0] in res.output


def _train_only(tiny_dataset, root):
    """The tiny dataset's pairs, every one in the train split."""
    from learn.data import DatasetFolder, read_image, read_mask, read_packed, write_pair

    for rec in DatasetFolder(tiny_dataset).records:
        write_pair(root, rec.id, np.asarray(read_packed(rec.raw)), read_image(rec.target), read_mask(rec.mask),
                   split="train")
    return root


def test_train_on_a_train_only_dataset_says_validation_is_off_or_validates_on_val_data(tiny_dataset, tmp_path):
    data = _train_only(tiny_dataset, tmp_path / "ds")
    (tmp_path / "tiny.toml").write_text(TINY)
    args = ["train", "--data", str(data), "--config", str(tmp_path / "tiny.toml"), "--steps", "2", "--no-progress"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "no val or test pairs: training without validation" in res.output and "val PSNR" not in res.output
    assert (tmp_path / "a" / "checkpoints" / "last.pt").is_file()
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--val-data", str(tiny_dataset)])
    assert res.exit_code == 0, res.output
    assert "val PSNR" in res.output and "without validation" not in res.output


def test_train_with_also_data_stores_the_extra_folders_in_the_run(tiny_dataset, tmp_path):
    other = _train_only(tiny_dataset, tmp_path / "other")
    (tmp_path / "tiny.toml").write_text(TINY)
    res = CliRunner().invoke(main, ["train", "--data", str(tiny_dataset), "--also-data", str(other), "--config",
                                    str(tmp_path / "tiny.toml"), "--steps", "1", "--no-progress", "--out",
                                    str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["data"]["also_roots"] == [str(other)]
