"""``isp-rig demo``: the whole job on one machine with no hardware.

1. **Capture**: the virtual rig (libgphoto2's virtual camera as the Nikon, the
   emulated phone through the watched-folder bridge, scenes from the rig
   simulator) fires through the real capture command into a session folder.
2. **Align**: the session is aligned in batch into a dataset; every pair is
   scored against the simulator's ground truth.
3. **Learn**: ckisp and one baseline train briefly, are evaluated on the test
   scenes next to the untrained model and the phone's plain rendering, and a
   phone raw is rendered.

Everything lands in one folder with ``report.md`` (open it) and
``summary.json`` (the headline figures).  This module sits on top of all three
stages, like the CLI root.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import cv2
import numpy as np

from alignment import charts
from alignment.atomic import foreign_entries, some_names, write_image, write_json, write_text

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def demo_scene_names(n: int) -> list[str]:
    """``n`` scene names whose by-scene split puts at least one in test and one in train
    (the split rule is the dataset's own; only the names are chosen)."""
    from alignment.dataset import scene_split

    if n < 2:
        raise ValueError("the demo needs at least two scenes (one to train on, one to test on)")
    names, k = [], 0
    want_test = max(1, round(n * TEST_FRACTION))
    tests = trains = 0
    while len(names) < n:
        name = f"scene-{k:03d}"
        k += 1
        is_test = scene_split(name, SPLIT_SEED, TEST_FRACTION) == "test"
        if (is_test and tests < want_test) or (not is_test and trains < n - want_test):
            names.append(name)
            tests += is_test
            trains += not is_test
    return names


def capture_scenes(session_dir: Path, scenes: list[str], shots: int) -> list[dict]:
    """Fire the virtual rig ``shots`` times per scene through ``isp-rig capture``;
    returns one dict per shot (id, scene, status, trigger skew in ms)."""
    from isp_rig.capture_cli import capture
    from isp_rig.session import read_manifest

    for scene in scenes:
        try:
            capture.main(["--rig", "virtual", "--session", str(session_dir), "--scene", scene, "--shots", str(shots)],
                         standalone_mode=False)
        except SystemExit as stop:  # some shot failed: the session keeps what it has, the demo goes on
            if stop.code:
                click.echo(f"note: a shot of {scene} failed; see {session_dir / 'manifest.jsonl'}", err=True)
    records = read_manifest(session_dir / "manifest.jsonl").records
    return [{"shot": r.shot_id, "scene": r.scene, "status": r.status,
             "skew_ms": None if r.skew.get("trigger_s") is None else 1e3 * r.skew["trigger_s"]} for r in records]


def align_session(session_dir: Path, dataset_dir: Path, truth_dir: Path, workers: int) -> dict:
    """Batch-align the session into a dataset, scoring each pair against the simulator's truth."""
    from alignment import batch
    from alignment.batch_report import write_batch_report
    from alignment.dataset import DatasetMeta
    from isp_rig.devices.virtual import scene_pair

    truth_dir.mkdir(parents=True, exist_ok=True)
    jobs = batch.pairs_from_session(session_dir)
    for job in jobs:
        path = truth_dir / f"{job.scene}.json"
        if not path.exists():
            write_json(path, scene_pair(job.scene).truth.to_json(), indent=None)
        job.truth = path
    meta = DatasetMeta(phone_profile="virtual SimPhone", split_seed=SPLIT_SEED, test_fraction=TEST_FRACTION,
                       provenance={"session": str(session_dir), "made_by": "isp-rig demo"})
    summary = batch.run_batch(jobs, dataset_dir, workers=workers, meta=meta)
    write_batch_report(dataset_dir)
    return summary.to_dict()


def _train_config(model: str, dataset_dir: Path, steps: int, seed: int) -> dict:
    from learn.train import load_config

    return load_config(overrides={
        "model": {"name": model, "kwargs": {}},
        "data": {"kind": "dataset", "root": str(dataset_dir), "crop": 48, "batch_size": 8, "eval_tile": 128,
                 "min_valid": 0.9},
        "optim": {"steps": steps, "lr": 2e-3},
        "train": {"seed": seed, "ckpt_every": max(50, steps // 2), "eval_every": max(25, steps // 6),
                  "log_every": 10, "amp": False},
    })


def _phone_rendering(record: dict) -> np.ndarray:
    """The phone raw through the plain pipeline (bilinear demosaic, camera white
    balance and colour matrix, sRGB curve): what a phone gives with no tuning."""
    from alignment import rawio

    raw = rawio.read_raw(record["phone"])
    return rawio.linear_to_srgb(rawio.raw_to_linear_rgb(raw))


def _score(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict:
    import torch

    from learn.metrics import psnr, ssim

    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].float()  # noqa: E731
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return {"psnr": float(psnr(to_t(pred), to_t(target), m)), "ssim": float(ssim(to_t(pred), to_t(target), m))}


def learn_and_render(dataset_dir: Path, runs_dir: Path, out: Path, models: list[str], steps: int, seed: int) -> dict:
    """Train each model, evaluate it (and the untrained model and the plain phone
    rendering) on the test scenes, render one test raw; returns the figures."""
    import torch

    from alignment.dataset import latest_records
    from learn import models as registry
    from learn.data import open_source
    from learn.cfa_phase import crop_to_raw
    from learn.evaluate import evaluate, evaluate_run, run_data_config
    from learn.infer import render
    from learn.train import load_model, train

    results: dict = {"models": {}}
    for name in models:
        started = time.perf_counter()
        config = _train_config(name, dataset_dir, steps, seed)
        train(config, runs_dir / name)
        scores = evaluate_run(runs_dir / name, dataset_dir, progress=False)
        results["models"][name] = {"psnr": scores["psnr"], "ssim": scores["ssim"], "params": scores["params"],
                                   "train_seconds": round(time.perf_counter() - started, 1),
                                   "curve": str((runs_dir / name / "curve.png").relative_to(out))}
    model, config = load_model(runs_dir / models[0])
    test_src = open_source(run_data_config(config, dataset_dir), "test")  # the input space "auto" became, the CFA phase
    torch.manual_seed(seed)
    untrained = registry.create(models[0])
    rows = evaluate(untrained, test_src, progress=False)
    results["untrained"] = {k: float(np.mean([r["model"][k] for r in rows])) for k in ("psnr", "ssim")}

    tests = [r for r in latest_records(dataset_dir).values() if r.get("status") == "ok" and r.get("split") == "test"]
    plain_scores = []
    picture = None
    inputs = {test_src.records[i].id: i for i in range(len(test_src))}
    for rec in tests:
        target = cv2.imread(str(dataset_dir / rec["files"]["target"]), cv2.IMREAD_UNCHANGED)[..., ::-1] / 65535.0
        mask = cv2.imread(str(dataset_dir / rec["files"]["mask"]), cv2.IMREAD_GRAYSCALE) > 127
        plain = _phone_rendering(rec)
        plain_scores.append(_score(plain, target, mask))
        if picture is None:
            packed = test_src.load(inputs[rec["id"]])["input"]  # in the run's input space and CFA phase
            rendered = crop_to_raw(np.clip(render(model, packed), 0, 1), test_src.shifted_pattern(inputs[rec["id"]]))
            write_image(out / "render.png", np.round(rendered[..., ::-1] * 255).astype(np.uint8))
            gap = np.ones((target.shape[0], 8, 3))
            picture = np.concatenate([plain, gap, rendered, gap, target], axis=1)
            write_image(out / "before_after.png", np.round(np.clip(picture, 0, 1)[..., ::-1] * 255).astype(np.uint8))
            results["rendered_pair"] = rec["id"]
    results["phone_rendering"] = {k: float(np.mean([s[k] for s in plain_scores])) for k in ("psnr", "ssim")}
    return results


def write_report(out: Path, shots: list[dict], align: dict, learned: dict, seconds: float) -> dict:
    """``report.md`` and ``summary.json`` in ``out``; returns the summary."""
    skews = [s["skew_ms"] for s in shots if s["skew_ms"] is not None]
    charts.bars(out / "skew.png", [s["shot"][-3:] for s in shots], [s["skew_ms"] or 0.0 for s in shots],
                "ms", "trigger skew per shot")
    truth = align.get("truth_error_px") or {}
    summary = {
        "skew_ms": {"per_shot": {s["shot"]: s["skew_ms"] for s in shots},
                    "median": float(np.median(skews)) if skews else None, "max": max(skews) if skews else None},
        "alignment": {"pairs": align["total"], "kept": align["kept"], "rejected": align["rejected"],
                      "failed": align["failed"]},
        "alignment_error_px": {"median": truth.get("p50"), "max": truth.get("max"),
                               "what": "per-pair median distance to the simulator's ground truth, DSLR px"},
        "models": learned["models"],
        "untrained_model": learned["untrained"],
        "phone_rendering": learned["phone_rendering"],
        "seconds": round(seconds, 1),
    }
    write_json(out / "summary.json", summary)
    lines = [
        "# isp-rig demo", "",
        "A virtual rig (libgphoto2's virtual camera as the Nikon, an emulated phone through the watched-folder "
        "bridge, scenes from the rig simulator) captured a session; the session was aligned in batch into a "
        "dataset; ckisp and a baseline were trained briefly and evaluated on the test scenes.", "",
        f"Finished in {seconds:.0f} s.", "",
        "## 1. Capture", "",
        f"{len(shots)} shots, {sum(s['status'] == 'ok' for s in shots)} ok. Trigger skew between the DSLR and the "
        f"phone: median {summary['skew_ms']['median']:.2f} ms, max {summary['skew_ms']['max']:.2f} ms "
        "(session/manifest.jsonl has every figure).", "",
        "![skew per shot](skew.png)", "",
        "## 2. Alignment", "",
        f"{align['kept']} of {align['total']} pairs kept. Error against the simulator's ground truth (per-pair "
        f"medians, DSLR px): median {truth.get('p50', float('nan')):.3f}, max {truth.get('max', float('nan')):.3f}.",
        "", "![residual histogram](dataset/report/residuals.png)", "",
        "Overlays of every kept pair (checkerboard of the phone raw and the aligned DSLR target, and their "
        "difference): [dataset/report/report.md](dataset/report/report.md).", "",
        "## 3. Learning", "",
        "| method | PSNR (dB) | SSIM | parameters | training s |", "| --- | --- | --- | --- | --- |",
    ]
    for name, m in learned["models"].items():
        lines.append(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['params']:,} | {m['train_seconds']} |")
    lines += [
        f"| {list(learned['models'])[0]} untrained | {learned['untrained']['psnr']:.2f} | "
        f"{learned['untrained']['ssim']:.3f} | | |",
        f"| plain phone rendering (demosaic, WB, colour matrix, sRGB) | {learned['phone_rendering']['psnr']:.2f} | "
        f"{learned['phone_rendering']['ssim']:.3f} | | |", "",
        "Training curves:", "",
    ]
    lines += [f"![{name}]({m['curve']})" for name, m in learned["models"].items()]
    lines += ["", "## 4. Rendering", "",
              f"Test pair {learned.get('rendered_pair')}: the plain phone rendering, {list(learned['models'])[0]}, "
              "and the aligned DSLR target.", "", "![before and after](before_after.png)", ""]
    write_text(out / "report.md", "\n".join(lines))
    return summary


#: what a demo folder holds; a folder with anything else is not written into
DEMO_ENTRIES = {"session", "dataset", "truth", "runs", "summary.json", "report.md", "skew.png", "render.png",
                "before_after.png"}


class DemoFolderError(Exception):
    """The demo's output folder holds files the demo did not write."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line


def check_demo_folder(out: Path) -> None:
    """Refuse an ``out`` that exists and holds anything but an earlier demo's files
    (:data:`DEMO_ENTRIES`): the demo never writes among a user's files."""
    if out.exists() and not out.is_dir():
        raise DemoFolderError(f"{out}: exists and is not a folder")
    foreign = foreign_entries(out, DEMO_ENTRIES.__contains__)
    if foreign:
        raise DemoFolderError(f"{out}: holds {some_names(foreign)}, which the demo did not write; give a new or "
                              "empty folder")


def run_demo(out: Path, scenes: int = 6, shots: int = 2, steps: int = 1000, baseline: str = "plain",
             workers: int = 2, seed: int = 0) -> dict:
    """Run the whole demo into ``out`` and return the summary (see the module docstring).
    ``out`` must be new, empty or an earlier demo's folder (:func:`check_demo_folder`)."""
    started = time.perf_counter()
    check_demo_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    names = demo_scene_names(scenes)
    click.echo(f"[1/3] capture: {len(names)} scenes x {shots} shots on the virtual rig")
    shot_rows = capture_scenes(out / "session", names, shots)
    click.echo("[2/3] align: batch alignment of the session into a dataset")
    align = align_session(out / "session", out / "dataset", out / "truth", workers)
    if align["kept"] == 0:
        raise click.ClickException(f"no pair was kept; see {out / 'dataset' / 'report' / 'report.md'}")
    click.echo(f"[3/3] learn: ckisp and {baseline}, {steps} steps each")
    learned = learn_and_render(out / "dataset", out / "runs", out, ["ckisp", baseline], steps, seed)
    return write_report(out, shot_rows, align, learned, time.perf_counter() - started)


@click.command()
@click.option("--out", "out_dir", default="demo-out", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for everything the demo writes: new, empty, or an earlier demo's.")
@click.option("--scenes", default=6, show_default=True, type=click.IntRange(min=2), help="Scenes to capture.")
@click.option("--shots", default=2, show_default=True, type=click.IntRange(min=1), help="Shots per scene.")
@click.option("--steps", default=1000, show_default=True, type=click.IntRange(min=1), help="Training steps per model.")
@click.option("--baseline", default="plain", show_default=True, type=click.Choice(["plain", "unet", "pac"]),
              help="The baseline trained beside ckisp.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Alignment workers.")
def demo(out_dir: Path, scenes: int, shots: int, steps: int, baseline: str, workers: int) -> None:
    """The whole job with no hardware: capture on the virtual rig, align, learn, render.

    Writes OUT/report.md (open it) and OUT/summary.json.
    """
    summary = run_demo(out_dir, scenes, shots, steps, baseline, workers)
    best = summary["models"]["ckisp"]
    click.echo(f"done in {summary['seconds']:.0f} s: skew median {summary['skew_ms']['median']:.2f} ms; alignment "
               f"error median {summary['alignment_error_px']['median']:.3f} px; ckisp {best['psnr']:.2f} dB "
               f"(untrained {summary['untrained_model']['psnr']:.2f} dB, plain phone rendering "
               f"{summary['phone_rendering']['psnr']:.2f} dB)")
    click.echo(f"report: {out_dir / 'report.md'}")
