"""Training: configs, exact resume, interruption, fine-tuning, DDP under torchrun."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from learn.train import ConfigError, learning_rate, load_checkpoint, load_config, train


def tiny_config(dataset: Path, steps: int = 6, **optim) -> dict:
    return load_config(overrides={
        "model": {"name": "ckisp", "kwargs": {"width": 8, "n_basis": 4}},
        "data": {"kind": "dataset", "root": str(dataset), "crop": 8, "batch_size": 4, "eval_tile": None},
        "optim": {"lr": 1e-3, "steps": steps, **optim},
        "train": {"seed": 0, "ckpt_every": 2, "eval_every": 3, "log_every": 1, "threads": 1},
    })


def _weights(run: Path) -> dict:
    return load_checkpoint(run)["model"]


def test_resumed_run_continues_the_step_count_and_reaches_the_same_weights(tiny_dataset, tmp_path):
    whole = train(tiny_config(tiny_dataset), tmp_path / "whole", progress=False)
    first = train(tiny_config(tiny_dataset), tmp_path / "split", progress=False, stop_at=3)
    assert first["step"] == 3 and first["stopped"]
    assert load_checkpoint(tmp_path / "split")["step"] == 3
    second = train(tiny_config(tiny_dataset), tmp_path / "split", progress=False)
    assert second["step"] == whole["step"] == 6
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "split" / "metrics.csv"))]
    assert steps == [1, 2, 3, 4, 5, 6]  # one row per step, none lost or repeated across the resume
    assert (tmp_path / "split" / "curve.png").stat().st_size > 0


def test_metrics_csv_records_validation_at_eval_steps(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset), tmp_path / "run", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    evaluated = [int(r["step"]) for r in rows if r["val_psnr"]]
    assert evaluated == [3, 6]
    assert all(5 < float(r["val_psnr"]) < 60 for r in rows if r["val_psnr"])


def test_init_from_starts_a_new_run_from_the_checkpoint_weights(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset), tmp_path / "base", progress=False)
    cfg = tiny_config(tiny_dataset, steps=1, lr=0.0)
    cfg["train"]["seed"] = 99  # a different initialisation, overwritten by --init-from
    train(cfg, tmp_path / "tuned", init_from=tmp_path / "base", progress=False)
    a, b = _weights(tmp_path / "base"), _weights(tmp_path / "tuned")
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_config_files_in_toml_and_json_merge_over_defaults(tmp_path):
    (tmp_path / "a.toml").write_text('[model]\nname = "unet"\n[optim]\nlr = 3e-4\n')
    (tmp_path / "b.json").write_text(json.dumps({"loss": {"l1": 1.0, "ssim": 0.1}}))
    a, b = load_config(tmp_path / "a.toml"), load_config(tmp_path / "b.json")
    assert a["model"]["name"] == "unet" and a["optim"]["lr"] == 3e-4 and a["optim"]["steps"] == 3000
    assert b["loss"] == {"l1": 1.0, "ssim": 0.1}
    (tmp_path / "c.toml").write_text("[modle]\nname = 'x'\n")
    with pytest.raises(ConfigError, match="c.toml.*modle"):
        load_config(tmp_path / "c.toml")


def test_cosine_schedule_starts_at_lr_and_ends_at_min_lr():
    optim = {"lr": 1e-3, "steps": 100, "schedule": "cosine", "warmup": 10, "min_lr": 1e-5}
    assert learning_rate(optim, 0) == pytest.approx(1e-4)
    assert learning_rate(optim, 10) == pytest.approx(1e-3)
    assert learning_rate(optim, 100) == pytest.approx(1e-5)


def _write_cfg(cfg: dict, path: Path) -> Path:
    path.write_text(json.dumps(cfg))
    return path


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_from_it(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, steps=100000)
    cfg["train"].update({"ckpt_every": 10**9, "eval_every": 10**9, "log_every": 1})
    path = _write_cfg(cfg, tmp_path / "cfg.json")
    run = tmp_path / "run"
    log = open(tmp_path / "log.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "learn.train", str(path), str(run)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while not (run / "config.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    log.close()
    assert proc.returncode == 0, (tmp_path / "log.txt").read_text()[-2000:]
    step = load_checkpoint(run)["step"]
    assert step > 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert int(rows[-1]["step"]) == step
    summary = train(load_config(path), run, progress=False, stop_at=step + 2)
    assert summary["step"] == step + 2


def test_torchrun_two_processes_give_the_single_process_weights(tiny_dataset, tmp_path):
    # torch installs torchrun beside the interpreter; a missing one is a broken install, not a skip
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun is not None, "torchrun (installed with torch) not found"
    cfg = tiny_config(tiny_dataset, steps=4)
    path = _write_cfg(cfg, tmp_path / "cfg.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "learn.train", str(path),
                          str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    train(cfg, tmp_path / "single", progress=False)
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "single")
    assert load_checkpoint(tmp_path / "ddp")["step"] == 4
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_rgb_input_data_builds_the_rgb_variant_of_the_model(tmp_path):
    from learn.data import write_image

    rng = np.random.default_rng(0)
    for n in range(6):
        x = rng.random((24, 24, 3)).astype(np.float32)
        write_image(tmp_path / "phone" / f"{n}.png", x)
        write_image(tmp_path / "dslr" / f"{n}.png", x ** 0.8)
    cfg = load_config(overrides={
        "model": {"name": "ckisp", "kwargs": {"width": 8}},
        "data": {"kind": "rgb_folders", "input_dir": str(tmp_path / "phone"), "target_dir": str(tmp_path / "dslr"),
                 "crop": 16, "batch_size": 2, "eval_tile": None},
        "optim": {"steps": 2}, "train": {"threads": 1}})
    train(cfg, tmp_path / "run", progress=False)
    stored = load_checkpoint(tmp_path / "run")["config"]["model"]["kwargs"]
    assert stored["in_channels"] == 3 and stored["upscale"] == 1


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_passes_the_checks_and_builds_its_model(path):
    from learn.models import available
    from learn.train import build_model

    cfg = load_config(path)
    assert cfg["model"]["name"] == path.stem and path.stem in available()
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 4, 32, 32))
    assert out.shape == (1, 3, 64, 64)


def test_one_config_ships_per_model():
    from learn.models import available

    assert [p.stem for p in CONFIGS] == available()


def test_a_run_saved_before_a_config_key_existed_still_resumes(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_dataset, steps=2), run, progress=False)
    ck_path = run / "checkpoints" / "last.pt"
    ck = torch.load(ck_path, weights_only=False)
    for key in ("exclude", "drop_identical", "test_every", "input_dir", "target_dir"):
        ck["config"]["data"].pop(key)  # the data keys an older isp-rig did not write
    torch.save(ck, ck_path)
    assert train(tiny_config(tiny_dataset, steps=4), run, progress=False)["step"] == 4


def test_a_resume_takes_the_new_machine_settings_and_keeps_the_rest(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_dataset, steps=2), run, progress=False)
    cfg = tiny_config(tiny_dataset, steps=3)
    cfg["train"]["threads"] = 2  # may differ on resume: how this machine runs it
    train(cfg, run, progress=False)
    stored = load_checkpoint(run)["config"]
    assert stored["train"]["threads"] == 2 and stored["optim"]["steps"] == 3
    assert stored["train"]["seed"] == 0 and stored["data"]["crop"] == 8


def test_a_config_without_its_data_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.root: not given"):
        train(load_config(), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
