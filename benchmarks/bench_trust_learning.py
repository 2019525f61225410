"""Benchmark: does the per-pixel trust mask matter for learning? ckisp trained on the same pairs with the
trust map (what ``isp-rig align batch`` writes today) against the frame-only mask (what it wrote before).

    nice -n 19 python benchmarks/bench_trust_learning.py                  # default: 300 steps, about 10 min
    nice -n 19 python benchmarks/bench_trust_learning.py --steps 3000     # same data (reused), longer runs
    nice -n 19 python benchmarks/bench_trust_learning.py --quick          # smoke run, small pairs, 40 steps
    nice -n 19 python benchmarks/bench_trust_learning.py --effects parallax,motion   # misalignment only

Data, built through the package's own API (nothing shortcut), in ``--work`` (default
bench-out/trust_learning; everything already there is reused, so a second run only trains what is new):

1. Training pairs: ``isp_rig.simulate.simulate_pairs`` with ``SimOptions(parallax, motion, clipping,
   shading)`` (``--effects``; the layered simulator: objects at 1.5-5 m seen from two camera centres
   60 mm apart, moving objects, highlights that clip, per-colour lens shading), ``--pairs`` per training source
   (``--train-sources``: a procedural scene and real images of ../shared/data), simulator seed
   ``--seed + 100 k`` for the k-th source.
2. Test pairs, CLEAN: planar pairs (no parallax, motion, clipping or shading: the target is right
   wherever the DSLR saw the scene) of other scenes (``--test-sources``) and other seeds
   (``--seed + 1000 + 100 k``), ``--test-pairs`` per source.
3. Both aligned for real by ``alignment.batch.run_batch`` (``isp-rig align batch``) into two dataset
   folders: ``data/train_trust`` with test fraction 0 (every scene train) and ``data/test_clean`` with
   test fraction 1 (every scene test); split seed 0. Every pair is its own scene.
4. The frame-only mask of a pair: 255 where its target px was sampled inside the DSLR image
   (1 <= x <= Wd - 2 and 1 <= y <= Hd - 2, Wd x Hd the record's alignment ``dslr_size``), the ``outside``
   test of ``alignment.dataset.warp_to_phone_grid``, applied to the positions the target was really
   sampled at: ``pairs/<id>/map.npy`` (the batch runs with ``save_maps``). Without map.npy it falls back
   to ``Alignment.from_json(record["alignment"]).map_points`` on the full grid, the same only where the
   batch samples the target with the record's model (not with anything the JSON record lacks). Views
   (dataset folders of symbolic links, own ``pairs.jsonl``): ``data/view_trust`` (train pairs as built)
   and ``data/view_frame`` (train pairs with links to the same raw.npy / target.png and a new mask.png),
   both holding ``data/test_frame`` as their test split: the clean test pairs with the frame-only mask
   (they are planar, so every target px inside the frame is right). The trust mask of every pair is
   checked to lie inside its frame mask.
5. ckisp trained by ``learn.train.train`` on each view with the same everything: L1, batch ``--batch``
   of ``--crop``-position packed crops, min valid fraction 0.5 per crop, Bayer-preserving flips / turns,
   Adam 1e-3 cosine, ``--steps``, training seed ``--train-seed`` (and the next ones with ``--repeats``).
6. Both scored by ``learn.evaluate.evaluate_run`` on the whole clean test images: PSNR / SSIM over the
   frame mask (the main score; LPIPS is unavailable without user-given weights), and again over the test
   pairs' own trust masks (``data/test_clean``) as a check.

The training loss is the masked L1 each run optimises: the frame run's includes the misaligned px, so
its final value is not comparable with the trust run's; it is printed as a sanity line only.

Caveat on the absolute scores: with ``clipping`` the simulated phone exposes for its highlights (scene
level 0.25-0.5 against 0.7-0.9 without), and ``shading`` replaces the plain vignetting, so the default
training raws are about half as bright as the clean test raws and differently shaded: that domain shift,
the same for both masks, dominates the absolute PSNR. ``--effects parallax,motion`` keeps only the
misalignment effects (same exposure and vignetting as the test pairs) and isolates the mask's effect.
A work folder holds one data configuration: other ``--effects`` get their own default folder.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from alignment.batch import find_pairs, run_batch, summarize  # noqa: E402
from alignment.dataset import DatasetMeta, latest_records  # noqa: E402
from alignment.pipeline import Alignment  # noqa: E402
from alignment.trust import CLIPPED  # noqa: E402
from bench_learn_raw import mean_scores  # noqa: E402
from isp_rig.simulate import SimOptions, simulate_pairs  # noqa: E402
from learn.data import PackedPairs, RandomCrops, read_mask  # noqa: E402
from learn.evaluate import evaluate, evaluate_run  # noqa: E402
from learn.train import load_config, load_model, train  # noqa: E402

TRAIN_SOURCES = "procedural,raw/Blackmagic.dng,pairs/graf/img1.png,pairs/homogr/BostonA.jpg"
TEST_SOURCES = "procedural,raw/RAW_KODAK_DC50.KDC,pairs/homogr/EiffelA.png,pairs/homogr/CapitalRegionA.jpg"
PROFILE = "SimPhone 12 (simulated)"
EFFECTS = ("parallax", "motion", "clipping", "shading")
MASKS = {"trust": "trust map (alignment.trust, as isp-rig align batch writes it)",
         "geometry": "trust map with its clipped px kept (parallax, motion, occlusion dropped)",
         "frame": "frame only (inside the DSLR image)"}


# ------------------------------------------------------------------------------------------- data


def package_state() -> dict:
    """The commit, the files that differ from it and a hash of those differences (the package a run
    measured: datasets reused from an earlier run were built by the package of that run)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""
    digest = hashlib.sha256(git("diff", "HEAD").encode())
    for name in git("ls-files", "--others", "--exclude-standard", "alignment", "learn", "isp_rig").split():
        digest.update(name.encode() + (REPO / name).read_bytes())
    return {"commit": git("rev-parse", "HEAD").strip(), "changed": git("status", "--short").splitlines(),
            "diff_sha256": digest.hexdigest()[:16]}


def source_path(name: str) -> Path | None:
    """``procedural`` -> None, else a path relative to ../shared/data (or as given)."""
    if name == "procedural":
        return None
    p = Path(name)
    return p if p.is_absolute() else SHARED / p


def simulate_set(root: Path, sources: list[str], n: int, base_seed: int, options: SimOptions) -> list:
    """Simulate ``n`` pairs per source into ``root/<stem>-s<seed>`` (skipped where complete); the
    batch jobs, renamed ``<stem>-s<seed>-<i>`` (pair id and scene: every pair its own scene)."""
    jobs = []
    for k, name in enumerate(sources):
        src = source_path(name)
        stem = "procedural" if src is None else src.stem
        seed = base_seed + 100 * k
        folder = root / f"{stem}-s{seed}"
        done = all((folder / f"pair_{i:04d}" / "truth.json").is_file() for i in range(n))
        if not done:
            t = time.perf_counter()
            simulate_pairs(folder, n, seed, source=src, options=options, progress=False)
            print(f"simulated {n} pairs of {stem} (seed {seed}) in {time.perf_counter() - t:.1f} s", flush=True)
        for job in find_pairs(folder):
            i = int(job.pair_id.split("_")[-1])
            if i >= n:
                continue
            job.pair_id = job.scene = f"{stem}-s{seed}-{i:02d}"
            jobs.append(job)
    return jobs


def build(jobs: list, out: Path, test_fraction: float, workers: int, note: str) -> dict:
    """``alignment.batch.run_batch`` into dataset folder ``out`` (resumed); the kept records by id."""
    t = time.perf_counter()
    meta = DatasetMeta(phone_profile=PROFILE, split_seed=0, test_fraction=test_fraction,
                       provenance={"benchmark": "bench_trust_learning", "pairs": note})
    summary = run_batch(jobs, out, workers=workers, meta=meta, progress=False, save_maps=True)
    print(f"{out.name}: {summary.total} pairs, {summary.kept} kept, rejected {summary.rejected or 0}, failed "
          f"{summary.failed or 0} ({summary.skipped} already done), {time.perf_counter() - t:.1f} s", flush=True)
    ids = {j.pair_id for j in jobs}
    return {k: r for k, r in latest_records(out).items() if k in ids and r.get("status") == "ok"}


def frame_mask(record: dict, root: Path, shape: tuple[int, int], rows: int = 256) -> tuple[np.ndarray, str]:
    """(H, W) bool: the target px was sampled inside the DSLR image, and where that came from:
    the pair's ``map.npy`` (the positions really sampled) or, without it, the record's alignment."""
    al = Alignment.from_json(record["alignment"])
    wd, hd = al.dslr_size
    h, w = shape
    if record["files"].get("map"):
        m = np.load(root / record["files"]["map"], mmap_mode="r")
        mx, my = m[..., 0], m[..., 1]
        return (mx >= 1) & (mx <= wd - 2) & (my >= 1) & (my <= hd - 2), "map.npy"
    inside = np.empty((h, w), bool)
    xs = np.arange(w, dtype=np.float64)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        gx, gy = np.meshgrid(xs, np.arange(r0, r1, dtype=np.float64))
        m = al.map_points(np.stack([gx.ravel(), gy.ravel()], 1))
        mx, my = m[:, 0].reshape(r1 - r0, w), m[:, 1].reshape(r1 - r0, w)
        inside[r0:r1] = (mx >= 1) & (mx <= wd - 2) & (my >= 1) & (my <= hd - 2)
    return inside, "record alignment (global model)"


def _link(target: Path, link: Path) -> None:
    """A relative symbolic link ``link`` -> ``target`` (replaced when it points elsewhere)."""
    rel = os.path.relpath(target, link.parent)
    if link.is_symlink() and os.readlink(link) == rel:
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.symlink_to(rel, target_is_directory=target.is_dir())


def write_view(view: Path, entries: list[tuple[dict, Path, str]], note: str) -> dict[str, dict]:
    """A dataset folder of links: each entry (record, its dataset folder, 'link' | 'frame').

    'link': ``pairs/<id>`` links to the pair's folder (its files as they are); 'frame': ``pairs/<id>`` holds
    links to raw.npy and target.png and a frame-only ``mask.png`` (computed once, kept). ``pairs.jsonl``
    is written anew: the records with ``files`` raw / target / mask and ``mask_source``.
    Returns per id ``{"frame": fraction inside, "trust": trusted fraction, "outside_trusted": px, "from":
    how the frame mask was made}`` for the 'frame' entries.
    """
    (view / "pairs").mkdir(parents=True, exist_ok=True)
    stats, lines = {}, []
    for rec, root, how in entries:
        pid = rec["id"]
        src, dst = root / "pairs" / pid, view / "pairs" / pid
        files = {k: rec["files"][k] for k in ("raw", "target", "mask")}
        if how == "link":
            _link(src, dst)
        else:
            if dst.is_symlink():
                dst.unlink()
            dst.mkdir(exist_ok=True)
            _link(root / rec["files"]["raw"], dst / "raw.npy")
            _link(root / rec["files"]["target"], dst / "target.png")
            files = {"raw": f"pairs/{pid}/raw.npy", "target": f"pairs/{pid}/target.png",
                     "mask": f"pairs/{pid}/mask.png"}
            trust = read_mask(root / rec["files"]["mask"])
            made = dst / "mask_source.txt"
            if not (dst / "mask.png").is_file() or not made.is_file():
                inside, how_made = frame_mask(rec, root, trust.shape)
                if how == "geometry":  # the trust map, but the px dropped as clipped are kept
                    reasons = cv2.imread(str(root / rec["files"]["reasons"]), cv2.IMREAD_UNCHANGED)
                    inside = inside & (trust | (reasons == CLIPPED))
                    how_made = "trust map + clipped px (reasons.png), inside " + how_made
                tmp = dst / ".mask.tmp.png"
                if not cv2.imwrite(str(tmp), inside.astype(np.uint8) * 255):
                    raise OSError(f"{tmp}: could not write")
                tmp.replace(dst / "mask.png")
                made.write_text(how_made + "\n")
            inside = read_mask(dst / "mask.png")
            stats[pid] = {"frame": float(inside.mean()), "trust": float(trust.mean()),
                          "outside_trusted": int((trust & ~inside).sum()), "from": made.read_text().strip()}
        keep = {k: v for k, v in rec.items() if k not in ("files", "alignment", "quality")}
        source = {"frame": "frame only", "geometry": "trust map with clipped px kept"}.get(how)
        lines.append(json.dumps({**keep, "files": files, "mask_source": source or rec.get("mask_source", "as built")}))
    for stale in (view / "pairs").iterdir():  # pairs of an earlier, larger run
        if stale.name in {r["id"] for r, _, _ in entries}:
            continue
        if stale.is_symlink():
            stale.unlink()
        else:
            shutil.rmtree(stale)
    (view / "dataset.json").write_text(json.dumps({
        "format_version": 1, "phone_profile": PROFILE,
        "split": {"rule": "as in the source datasets (train_trust: all train, test_clean: all test)"},
        "view": note}, indent=1))
    tmp = view / "pairs.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(view / "pairs.jsonl")
    return stats


# --------------------------------------------------------------------------------------- learning


def crop_stats(view: Path, crop: int, seed: int, n: int = 256, min_valid: float = 0.5) -> dict:
    """Valid fraction of the first ``n`` training crops ``learn.data.RandomCrops`` draws from ``view``."""
    crops = RandomCrops(PackedPairs(view, "train"), crop=crop, seed=seed, min_valid=min_valid)
    fr = np.array([float(crops[k]["mask"].mean()) for k in range(n)])
    return {"mean_valid": float(fr.mean()), "below_min_valid": float((fr < min_valid).mean()), "n": n}


def loss_curve(run: Path) -> dict:
    """Final logged training loss and the mean over the last tenth of the logged steps (metrics.csv)."""
    with open(run / "metrics.csv", newline="") as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    tail = rows[-max(1, len(rows) // 10):]
    return {"final_step": rows[-1][0], "final": rows[-1][1], "last_tenth_mean": float(np.mean([v for _, v in tail])),
            "first": rows[0][1], "logged": len(rows)}


def train_and_score(view: Path, run: Path, test_frame: Path, test_trust: Path, args, seed: int) -> dict:
    cfg = load_config(overrides={
        "model": {"name": "ckisp", "kwargs": {}},
        "data": {"kind": "dataset", "root": str(view), "crop": args.crop, "batch_size": args.batch,
                 "min_valid": 0.5, "eval_tile": 256, "input_space": "raw", "cfa_phase": "packed"},  # as its published figures
        "optim": {"lr": 1e-3, "steps": args.steps, "schedule": "cosine"},
        "loss": {"l1": 1.0},
        "train": {"seed": seed, "ckpt_every": max(100, args.steps // 4), "eval_every": args.steps,
                  "log_every": 10, "threads": args.threads},
    })
    t = time.perf_counter()
    summary = train(cfg, run, progress=False)
    wall = time.perf_counter() - t
    scores = evaluate_run(run, test_frame, progress=False)  # RUN/eval/table.md, pairs.json
    per_image = {r["id"]: r["model"] for r in json.loads((run / "eval" / "pairs.json").read_text())}
    model, _ = load_model(run)
    trust_rows = evaluate(model, PackedPairs(test_trust, "test"), progress=False)
    return {"steps": summary["step"], "train_s": summary["elapsed_s"], "wall_s": wall,
            "psnr": scores["psnr"], "ssim": scores["ssim"], "lpips": scores["lpips"], "params": scores["params"],
            "images": scores["images"], "per_image": per_image,
            "test_trust_mask": mean_scores([r["model"] for r in trust_rows]), "loss": loss_curve(run)}


# -------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None,
                    help="work folder, reused between runs (default bench-out/trust_learning, with "
                         "'-<effects>' for other --effects and '-quick' for --quick)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default WORK/results.json)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 300; 40 with --quick)")
    ap.add_argument("--pairs", type=int, default=None, help="training pairs per source (default 6; 2 with --quick)")
    ap.add_argument("--test-pairs", type=int, default=None, help="test pairs per source (default 3; 1 with --quick)")
    ap.add_argument("--seed", type=int, default=0,
                    help="simulator seed: source k of training uses seed+100k, of test seed+1000+100k")
    ap.add_argument("--train-seed", type=int, default=0, help="training seed (weights and crops), same for both masks")
    ap.add_argument("--repeats", type=int, default=1, help="train with seeds train-seed .. train-seed+repeats-1")
    ap.add_argument("--effects", default=",".join(EFFECTS),
                    help="simulator effects of the training pairs (comma-separated subset of "
                         f"{','.join(EFFECTS)}; at least one of parallax, motion, clipping)")
    ap.add_argument("--train-sources", default=TRAIN_SOURCES,
                    help="comma-separated: 'procedural' or paths relative to ../shared/data")
    ap.add_argument("--test-sources", default=TEST_SOURCES, help="as --train-sources; other scenes")
    ap.add_argument("--phone-size", default=None, help="phone raw WxH (default 1024x768; 512x384 with --quick)")
    ap.add_argument("--dslr-size", default=None, help="DSLR WxH (default 1536x1024; 768x512 with --quick)")
    ap.add_argument("--crop", type=int, default=64, help="training crop in packed positions (target 2x)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--workers", type=int, default=2, help="alignment worker processes")
    ap.add_argument("--masks", default="trust,frame",
                    help="masks to train with (comma-separated subset of trust,geometry,frame; frame is always "
                         "trained: the others are compared with it); geometry = the trust map with its clipped px "
                         "kept, to tell the effect of dropping misaligned px from that of dropping clipped ones")
    ap.add_argument("--quick", action="store_true", help="smoke run: small pairs, few of them, few steps")
    args = ap.parse_args()
    q = args.quick
    args.steps = args.steps or (40 if q else 300)
    args.pairs = args.pairs or (2 if q else 6)
    args.test_pairs = args.test_pairs or (1 if q else 3)
    phone_size = tuple(int(v) for v in (args.phone_size or ("512x384" if q else "1024x768")).split("x"))
    dslr_size = tuple(int(v) for v in (args.dslr_size or ("768x512" if q else "1536x1024")).split("x"))
    effects = [e for e in args.effects.split(",") if e]
    if not set(effects) <= set(EFFECTS) or not set(effects) & {"parallax", "motion", "clipping"}:
        ap.error(f"--effects: a subset of {','.join(EFFECTS)} with at least one of parallax, motion, clipping")
    effects = [e for e in EFFECTS if e in effects]
    masks = [m for m in MASKS if m in set(args.masks.split(",")) | {"frame"}]
    if not set(args.masks.split(",")) <= set(MASKS):
        ap.error(f"--masks: a subset of {','.join(MASKS)}")
    suffix = ("" if effects == list(EFFECTS) else "-" + "+".join(effects)) + ("-quick" if q else "")
    work = (args.work or REPO / "bench-out" / f"trust_learning{suffix}").resolve()
    out_json = args.out or work / "results.json"
    torch.set_num_threads(args.threads)
    train_sources, test_sources = args.train_sources.split(","), args.test_sources.split(",")
    seeds = [args.train_seed + r for r in range(args.repeats)]
    t0 = time.perf_counter()
    package = package_state()

    # ------------------------------------------------------------------------------ data
    data = work / "data"
    params = {"phone_size": phone_size, "dslr_size": dslr_size, "pairs": args.pairs, "test_pairs": args.test_pairs,
              "seed": args.seed, "train_sources": train_sources, "test_sources": test_sources, "effects": effects}
    params_path = data / "params.json"
    if params_path.is_file():
        old = json.loads(params_path.read_text())
        if json.loads(json.dumps(params)) != old:
            raise SystemExit(f"{work} holds data built with {old}; this run asks for {params}: "
                             "give another --work or delete that folder")
    data.mkdir(parents=True, exist_ok=True)
    params_path.write_text(json.dumps(params, indent=1))
    layered = SimOptions(phone_size=phone_size, dslr_size=dslr_size, **{e: True for e in effects})
    planar = SimOptions(phone_size=phone_size, dslr_size=dslr_size)
    train_jobs = simulate_set(work / "sim" / "train", train_sources, args.pairs, args.seed, layered)
    test_jobs = simulate_set(work / "sim" / "test", test_sources, args.test_pairs, args.seed + 1000, planar)
    train_recs = build(train_jobs, data / "train_trust", 0.0, args.workers, "layered: " + ", ".join(effects))
    test_recs = build(test_jobs, data / "test_clean", 1.0, args.workers, "planar, clean")
    if not train_recs or not test_recs:
        raise SystemExit("no kept training or test pair: nothing to learn from")
    bad = [r["id"] for r in list(train_recs.values()) + list(test_recs.values())
           if r.get("split") != ("train" if r["id"] in train_recs else "test")]
    if bad:
        raise SystemExit(f"unexpected split for {bad}")
    test_stats = write_view(data / "test_frame", [(r, data / "test_clean", "frame") for r in test_recs.values()],
                            "clean test pairs, frame-only masks")
    test_links = [(r, data / "test_frame", "link") for r in latest_records(data / "test_frame").values()]
    write_view(data / "view_trust", [(r, data / "train_trust", "link") for r in train_recs.values()] + test_links,
               "train pairs with the trust map as built; test = test_frame")
    train_stats = write_view(data / "view_frame",
                             [(r, data / "train_trust", "frame") for r in train_recs.values()] + test_links,
                             "train pairs with frame-only masks; test = test_frame")
    if "geometry" in masks:
        write_view(data / "view_geometry",
                   [(r, data / "train_trust", "geometry") for r in train_recs.values()] + test_links,
                   "train pairs with the trust map, clipped px kept; test = test_frame")
    outside = sum(s["outside_trusted"] for s in list(train_stats.values()) + list(test_stats.values()))
    if outside:
        print(f"WARNING: {outside} trusted px lie outside the frame mask (the trust map should be inside it)")
    data_s = time.perf_counter() - t0

    def dropped_means(recs: dict) -> dict:
        keys = sorted({k for r in recs.values() for k in r.get("dropped", {})})
        return {k: float(np.mean([r.get("dropped", {}).get(k, 0.0) for r in recs.values()])) for k in keys}

    train_summary = summarize(train_recs.values()).to_dict()
    test_summary = summarize(test_recs.values()).to_dict()
    data_info = {
        "train_pairs": len(train_recs), "train_jobs": len(train_jobs), "test_pairs": len(test_recs),
        "test_jobs": len(test_jobs),
        "train_trusted_fraction_mean": float(np.mean([s["trust"] for s in train_stats.values()])),
        "train_frame_fraction_mean": float(np.mean([s["frame"] for s in train_stats.values()])),
        "train_dropped_mean": dropped_means(train_recs),
        "train_truth_trust": train_summary["truth_trust"], "train_truth_error_px": train_summary["truth_error_px"],
        "test_trusted_fraction_mean": float(np.mean([s["trust"] for s in test_stats.values()])),
        "test_frame_fraction_mean": float(np.mean([s["frame"] for s in test_stats.values()])),
        "test_truth_error_px": test_summary["truth_error_px"], "trusted_px_outside_frame": outside,
        "frame_mask_from": dict(Counter(s["from"] for s in list(train_stats.values()) + list(test_stats.values()))),
        "seconds": data_s,
    }
    print(f"\ndata ({data_s:.0f} s): {len(train_recs)}/{len(train_jobs)} layered training pairs kept, "
          f"{len(test_recs)}/{len(test_jobs)} clean test pairs kept")
    print(f"  training targets: trusted {data_info['train_trusted_fraction_mean']:.1%} of px, inside the frame "
          f"{data_info['train_frame_fraction_mean']:.1%}; dropped (mean): "
          + ", ".join(f"{k} {v:.1%}" for k, v in data_info["train_dropped_mean"].items()))
    tt = train_summary["truth_trust"]
    if tt:
        print(f"  trust map against the simulator's truth (per-pair medians): precision at 0.5 px "
              f"{tt['precision_05']['p50']:.4f}, coverage {tt['coverage']['p50']:.3f}")
    print(f"  frame-only masks from: {data_info['frame_mask_from']}; trusted px outside them: {outside}")
    te = test_summary["truth_error_px"]
    print(f"  test pairs: alignment error against truth p50 {te.get('p50', float('nan')):.3f} DSLR px "
          f"(max {te.get('max', float('nan')):.3f}); frame mask {data_info['test_frame_fraction_mean']:.1%} of px, "
          f"their own trust map {data_info['test_trusted_fraction_mean']:.1%}")

    # -------------------------------------------------------------------------- learning
    crops = {m: crop_stats(data / f"view_{m}", args.crop, seeds[0]) for m in masks}
    for m, c in crops.items():
        print(f"  first {c['n']} training crops ({m} mask): {c['mean_valid']:.1%} valid px on average, "
              f"{c['below_min_valid']:.1%} below min_valid 0.5")
    runs: list[dict] = []
    results = {"benchmark": "bench_trust_learning", "model": "ckisp", "steps": args.steps, "batch": args.batch,
               "crop": args.crop, "lr": 1e-3, "schedule": "cosine", "loss": "l1 (masked)", "min_valid": 0.5,
               "threads": args.threads, "train_seeds": seeds, "sim_seeds": {
                   "train": {s: args.seed + 100 * k for k, s in enumerate(train_sources)},
                   "test": {s: args.seed + 1000 + 100 * k for k, s in enumerate(test_sources)}},
               "split": {"train_trust": "test_fraction 0, split seed 0", "test_clean": "test_fraction 1, split seed 0"},
               "params": params, "data": data_info, "crops": crops, "work": str(work), "package": package,
               "runs": runs}
    for seed in seeds:
        for m in masks:
            run = work / "runs" / f"ckisp-{m}-seed{seed}-steps{args.steps}"
            r = train_and_score(data / f"view_{m}", run, data / "test_frame", data / "test_clean", args, seed)
            runs.append({"mask": m, "seed": seed, "run": str(run), **r})
            print(f"ckisp, {m} mask, seed {seed}: {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f} "
                  f"({r['train_s']:.0f} s training)", flush=True)
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(results, indent=1))

    # ----------------------------------------------------------------------------- tables
    by = {(r["mask"], r["seed"]): r for r in runs}
    diffs = []
    for seed in seeds:
        b = by[("frame", seed)]
        for m in masks:
            if m == "frame":
                continue
            a = by[(m, seed)]
            per = [a["per_image"][k]["psnr"] - b["per_image"][k]["psnr"] for k in a["per_image"]]
            diffs.append({"mask": m, "seed": seed, "psnr": a["psnr"] - b["psnr"], "ssim": a["ssim"] - b["ssim"],
                          "psnr_trust_mask": a["test_trust_mask"]["psnr"] - b["test_trust_mask"]["psnr"],
                          "ssim_trust_mask": a["test_trust_mask"]["ssim"] - b["test_trust_mask"]["ssim"],
                          "images_better": int(sum(d > 0 for d in per)), "images": len(per),
                          "per_image_psnr": dict(zip(a["per_image"], per))})
    results["difference_minus_frame"] = diffs
    if len(seeds) > 1:
        results["difference_mean"] = {m: {k: float(np.mean([d[k] for d in diffs if d["mask"] == m]))
                                          for k in ("psnr", "ssim", "psnr_trust_mask", "ssim_trust_mask")}
                                      for m in masks if m != "frame"}
    results["seconds"] = time.perf_counter() - t0
    after = package_state()
    if after != package:
        results["package_after"] = after
        print(f"\nWARNING: the package changed during this run ({package['diff_sha256']} -> {after['diff_sha256']}): "
              "its datasets and runs may come from different code")
    out_json.write_text(json.dumps(results, indent=1))

    diff_of = {(d["mask"], d["seed"]): d for d in diffs}
    print(f"\n### ckisp on {len(train_recs)} layered training pairs ({', '.join(effects)}), scored on "
          f"{len(test_recs)} clean planar test pairs (frame mask): {args.steps} steps, batch {args.batch}, "
          f"{args.crop}-position packed crops, L1, Adam 1e-3 cosine, {args.threads} threads "
          f"(load average {os.getloadavg()[0]:.1f})\n")
    print("| mask used | train seed | steps | test PSNR (dB) | test SSIM | PSNR - frame | SSIM - frame | "
          "test images better |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        d = diff_of.get((r["mask"], r["seed"]))
        tail = f"{d['psnr']:+.2f} | {d['ssim']:+.4f} | {d['images_better']} of {d['images']}" if d else "- | - | -"
        print(f"| {MASKS[r['mask']]} | {r['seed']} | {r['steps']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {tail} |")
    if len(seeds) > 1:
        dm = results["difference_mean"]
        for m in masks:
            rs = [r for r in runs if r["mask"] == m]
            tail = f"{dm[m]['psnr']:+.2f} | {dm[m]['ssim']:+.4f} | -" if m in dm else "- | - | -"
            print(f"| {m}, mean of seeds | {','.join(map(str, seeds))} | {args.steps} | "
                  f"{np.mean([r['psnr'] for r in rs]):.2f} | {np.mean([r['ssim'] for r in rs]):.4f} | {tail} |")
    print("\nLPIPS: unavailable (no AlexNet / LPIPS weights given).")
    print("\nCheck, and sanity lines (the training loss is the masked L1 of each run: over trusted px for the "
          "trust run, over every px inside the frame for the frame run):\n")
    print("| mask used | train seed | test PSNR, test trust masks | test SSIM, test trust masks | first logged loss | "
          "final loss (step) | mean loss, last tenth | training s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        lc, tm = r["loss"], r["test_trust_mask"]
        print(f"| {r['mask']} | {r['seed']} | {tm['psnr']:.2f} | {tm['ssim']:.4f} | {lc['first']:.4f} | "
              f"{lc['final']:.4f} ({lc['final_step']}) | {lc['last_tenth_mean']:.4f} | {r['train_s']:.0f} |")
    print(f"\nseeds: simulator {results['sim_seeds']}; training {seeds}")
    print(f"runs in {work / 'runs'}; results in {out_json} ({results['seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
