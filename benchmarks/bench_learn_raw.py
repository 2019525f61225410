"""Benchmark: ckisp against its baselines on raw input, with simulator pairs built from the real raws.

Data, built through the toolkit's own commands (nothing is shortcut):

1. ``isp-rig simulate --source RAW --pairs P --seed S --out OUT/sim/<raw stem>-s<S>`` for every real raw in
   ../shared/data/raw that alignment.rawio reads (Blackmagic.dng, RAW_KODAK_DC50.KDC; the packed
   ``phone_patch_x90_rggb_512.npy`` is not a raw file rawio opens and has no scene to re-photograph), every
   real photo of ``--photos`` (other scenes, other cameras) and every seed of ``--seeds`` (the seed is offset by 100 x the source's index, so two sources never share
   a geometry or colour draw). Each pair: a random crop of the real raw's scene seen by a simulated phone
   (1024x768 Bayer DNG, random CFA phase, colour response, white balance, vignetting, Poisson-Gaussian
   noise) and a simulated DSLR (JPEG, its own colour response, exposure and tone curve), with a random
   homography between them.
2. ``isp-rig dataset build --pairs OUT/pairs.csv --out OUT/dataset``: the real alignment of every pair onto
   the phone raw grid (features, ECC, local field), the dataset folder of ../shared/ARCHITECTURE.md, and
   the by-scene split (every pair is its own scene; ``--test-fraction``, ``--split-seed``).

Every learned model (raw input, packed (N, 4, H, W) -> sRGB (N, 3, 2H, 2W)) is trained with the same
code (learn.train.train), data, steps, seed and optimiser: L1, batch 16 of 64-position packed crops
(128 px targets) with Bayer-preserving flips / turns, Adam 1e-3 with a cosine schedule, seed 0; then
scored by learn.evaluate.evaluate_run on the whole test images (tiled rendering, masked PSNR / SSIM).

Baseline rows, scored with the same function (learn.evaluate.score_images) on the same targets and masks:

* **phone plain rendering**: the simulated phone has no JPEG, so the dataset has no built-in-ISP row;
  instead the phone DNG through alignment.rawio (bilinear demosaic, the as-shot white balance and colour
  matrix from the DNG, sRGB curve, clipped), what a phone gives with no tuning (the demo's baseline).
  It uses the DNG's white balance and colour matrix, which the learned models see only with a metadata
  input stage (``--input-spaces``: ``white_balanced``, ``linear_srgb``, ``srgb``, learn.raw_space; a row per model
  and space, ``<model> (<space> input)``).
* **global colour map**: a second-order polynomial (10 terms -> RGB) from that plain rendering to the
  target, fitted by least squares on the valid pixels of the training pairs.
* **the same colour map on the exposed rendering**: the plain rendering first scaled (in linear light) so
  its 99.5th percentile is 0.8, an auto exposure set on the highlights, then the colour map fitted on
  those: the strongest global baseline here, since the simulated cameras expose on that percentile.

If the dataset ever carries phone JPEGs, evaluate_run's built-in-ISP row is printed as well.
The peer for the ratios is the SID U-Net (``unet``). Runs already in OUT/runs/<model>[_<space>]_<steps> are resumed
by learn.train (a finished run is only scored again), so delete them to retrain.

    nice -n 19 python benchmarks/bench_learn_raw.py --steps 300 --models ckisp,plain,pac,unet \
        --pairs 8 --seeds 0,1 --out /tmp/bench_learn_raw
    # again on the same data, another budget:
    nice -n 19 python benchmarks/bench_learn_raw.py --steps 1000 --reuse-data --out /tmp/bench_learn_raw
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from alignment import rawio  # noqa: E402
from alignment.dataset import latest_records  # noqa: E402
from isp_rig.simulate import SourceError, list_sources, load_source  # noqa: E402
from learn.cfa_phase import crop_to_raw  # noqa: E402
from learn.data import PackedPairs, open_source  # noqa: E402
from learn.evaluate import evaluate, evaluate_run, run_data_config, score_images  # noqa: E402
from learn.infer import render  # noqa: E402
from learn.models.blocks import poly_terms  # noqa: E402
from learn.train import load_config, load_model, train  # noqa: E402

PEER = "unet"
PLAIN_ROW = "phone plain rendering (rawio: demosaic, as-shot WB, colour matrix, sRGB)"
CMAP_ROW = "global 2nd-order colour map on the plain rendering (least squares)"
EXPOSED_CMAP_ROW = "the same colour map on the plain rendering exposed to its 99.5th percentile"
#: where the exposed rendering puts the 99.5th percentile of its linear values (an auto exposure)
EXPOSURE_LEVEL = 0.8


def isp_rig(*args: str) -> str:
    """Run one ``isp-rig`` command (the installed CLI root, same interpreter); returns its stdout."""
    cmd = [sys.executable, "-m", "isp_rig.cli", *args]
    print("$ isp-rig " + " ".join(args), flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return done.stdout


def readable_raws(folder: Path) -> list[Path]:
    """The raw files in ``folder`` that the simulator's source reader (alignment.rawio) opens."""
    ok = []
    for p in list_sources(folder):
        if p.suffix.lower() not in rawio.RAW_EXTENSIONS:
            continue
        try:
            load_source(p)
        except SourceError as err:
            print(f"skipping {p.name}: {err}", flush=True)
            continue
        ok.append(p)
    if not ok:
        raise SystemExit(f"{folder}: no raw file that alignment.rawio can read")
    return ok


def build_dataset(out: Path, sources: list[Path], pairs: int, seeds: list[int], workers: int,
                  test_fraction: float, split_seed: int) -> dict:
    """Simulate pairs from every source and seed, list them in ``out/pairs.csv`` and build ``out/dataset``."""
    rows = []
    for k, src in enumerate(sources):
        for s in seeds:
            seed = s + 100 * k
            folder = out / "sim" / f"{src.stem}-s{seed}"
            isp_rig("simulate", "--source", str(src), "--pairs", str(pairs), "--seed", str(seed),
                    "--out", str(folder))
            for i in range(pairs):
                pair = folder / f"pair_{i:04d}"
                pid = f"{src.stem}-s{seed}-{i:02d}"
                rows.append({"phone": str(pair / "phone.dng"), "dslr": str(pair / "dslr.jpg"), "id": pid,
                             "scene": pid, "truth": str(pair / "truth.json")})
    with open(out / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["phone", "dslr", "id", "scene", "truth"])
        w.writeheader()
        w.writerows(rows)
    summary = isp_rig("dataset", "build", "--pairs", str(out / "pairs.csv"), "--out", str(out / "dataset"),
                      "--workers", str(workers), "--test-fraction", str(test_fraction),
                      "--split-seed", str(split_seed), "--phone-profile", "SimPhone 12 (simulated from real raws)",
                      "--json")
    return json.loads(summary)


def phone_linear(phone_path: str) -> np.ndarray:
    """(H, W, 3) float32 linear sRGB >= 0: the phone raw through rawio (bilinear demosaic, the as-shot
    white balance and colour matrix), on the raw grid."""
    return np.clip(rawio.raw_to_linear_rgb(rawio.read_raw(phone_path)), 0, None)


def display(lin: np.ndarray, exposed: bool = False) -> np.ndarray:
    """(H, W, 3) float32 sRGB in [0, 1] of a :func:`phone_linear` image.

    exposed: first scale the linear image so its 99.5th percentile is :data:`EXPOSURE_LEVEL`
    (an auto exposure set on the highlights, as ckisp's colour path can learn from its quantiles)."""
    if exposed:
        lin = lin * (EXPOSURE_LEVEL / max(float(np.percentile(lin, 99.5)), 1e-6))
    return np.clip(rawio.linear_to_srgb(lin), 0, 1).astype(np.float32)


def plain_rendering(phone_path: str, exposed: bool = False) -> np.ndarray:
    """(H, W, 3) float32 sRGB in [0, 1]: the phone raw through the plain rawio pipeline, on the raw grid
    (``exposed``: see :func:`display`)."""
    return display(phone_linear(phone_path), exposed)


def to_t(a: np.ndarray) -> torch.Tensor:
    """(H, W, C) array -> (1, C, H, W) float tensor."""
    a = a[..., None] if a.ndim == 2 else a
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))[None]


def fit_colour_map(inputs: list[np.ndarray], targets: list[np.ndarray], masks: list[np.ndarray],
                   max_pixels: int = 2_000_000) -> tuple[torch.Tensor, float]:
    """Least-squares 2nd-order polynomial colour map (10 terms -> RGB) over valid pixels; (10, 3), seconds."""
    t = time.perf_counter()
    total = sum(int(m.sum()) for m in masks)
    stride = max(1, total // max_pixels)
    a, b = [], []
    for x, y, m in zip(inputs, targets, masks):
        a.append(x[m][::stride])
        b.append(y[m][::stride])
    xa = torch.from_numpy(np.concatenate(a)).T[None, :, :, None]  # (1, 3, P, 1)
    terms = poly_terms(xa)[0, :, :, 0].T.double()  # (P, 10)
    coef = torch.linalg.lstsq(terms, torch.from_numpy(np.concatenate(b)).double()).solution.float()
    return coef, time.perf_counter() - t


def apply_colour_map(coef: torch.Tensor, x: np.ndarray) -> np.ndarray:
    """Apply a (10, 3) colour map to an (H, W, 3) image; clipped to [0, 1]."""
    terms = poly_terms(to_t(x))[0].permute(1, 2, 0)
    return (terms @ coef).clamp(0, 1).numpy()


def first_test_rendering(model: torch.nn.Module, stored: dict, dataset: Path) -> np.ndarray:
    """(H, W, 3) in [0, 1]: ``model``'s rendering of the first test pair of ``dataset`` in the input space and
    CFA phase of its run's stored config, on the raw's own grid."""
    view = open_source(run_data_config(stored, dataset), "test")
    with torch.inference_mode():
        return np.clip(crop_to_raw(render(model, view.load(0)["input"]), view.shifted_pattern(0)), 0, 1)


def mean_scores(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim")}


def run_pair_psnr(run: Path) -> dict[str, float]:
    """Pair id -> PSNR of a run's last ``evaluate_run`` (its ``eval/pairs.json``)."""
    return {r["id"]: r["model"]["psnr"] for r in json.loads((run / "eval" / "pairs.json").read_text())}


def source_of(pair_id: str) -> str:
    """The scene source of a benchmark pair id ``[<phone>-]<source stem>-s<seed>-<index>``."""
    head = pair_id.rsplit("-", 2)[0]
    return head.split("-", 1)[1] if head.startswith(("iphone_6s-", "mi_3-")) else head


def print_spread(rows: list[dict]) -> None:
    """Per row: the median, 10th and 90th percentile of the per-pair PSNR over the test pairs,
    and the median per scene source (pairs in brackets), from each row's ``per_pair``."""
    rows = [r for r in rows if r.get("per_pair")]
    if not rows:
        return
    sources = sorted({source_of(pid) for r in rows for pid in r["per_pair"]})
    print("\nPSNR per test pair (dB): median, 10th / 90th percentile, and the median per scene source\n")
    print("| method | median | p10 | p90 | " + " | ".join(sources) + " |")
    print("|---" * (4 + len(sources)) + "|")
    for r in rows:
        vals = np.array(list(r["per_pair"].values()))
        by = {s: [v for pid, v in r["per_pair"].items() if source_of(pid) == s] for s in sources}
        cells = " | ".join(f"{np.median(v):.2f} ({len(v)})" if v else "-" for v in by.values())
        label = r["method"] + (f" [{r['space']}]" if r.get("space", "-") != "-" else "")
        print(f"| {label} | {np.median(vals):.2f} | {np.percentile(vals, 10):.2f} | {np.percentile(vals, 90):.2f} | "
              f"{cells} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw-dir", type=Path, default=REPO.parent / "shared" / "data" / "raw",
                    help="folder of real raws used as scenes (every file rawio reads)")
    ap.add_argument("--photos", default="",
                    help="more real scenes: photos (files, comma-separated) the simulator re-photographs beside "
                         "the raws, e.g. ../shared/data/pairs/graf/img1.png,../shared/data/pairs/homogr/BostonA.jpg")
    ap.add_argument("--pairs", type=int, default=8, help="pairs per source raw and seed")
    ap.add_argument("--seeds", default="0,1", help="simulator seeds (comma-separated)")
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="alignment worker processes")
    ap.add_argument("--reuse-data", action="store_true", help="keep OUT/dataset if it exists (skip simulate + build)")
    ap.add_argument("--models", default="ckisp,plain,pac,unet")
    ap.add_argument("--input-spaces", default="raw,srgb",
                    help="metadata input stages to train each model with (learn.raw_space.INPUT_SPACES, "
                         "comma-separated): raw, white_balanced, linear_srgb, srgb")
    ap.add_argument("--model-kwargs", default="{}",
                    help="JSON constructor arguments for every model (model.kwargs), e.g. '{\"colour_hidden\": 0}'")
    ap.add_argument("--loss", default='{"l1": 1.0}',
                    help='JSON loss table for every model (learn.losses), e.g. \'{"l2": 1.0}\'')
    ap.add_argument("--tag", default="", help="suffix of the run folders and row labels (a variant of the same models)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--crop", type=int, default=64, help="training crop in packed positions (target 2x)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="training seed (same for every model)")
    ap.add_argument("--second-seed-models", default="",
                    help="models (comma-separated) trained again, every input space, with training seed --seed + 1: "
                         "rows '<model> ... seed <s>' that show the seed-to-seed noise")
    ap.add_argument("--out", type=Path, default=None, help="folder for the dataset, the runs and results.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench_learn_raw_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dataset = out / "dataset"

    # ---------------------------------------------------------------- data
    t0 = time.perf_counter()
    if args.reuse_data and (dataset / "pairs.jsonl").is_file():
        print(f"reusing {dataset}", flush=True)
        build = json.loads((out / "build.json").read_text()) if (out / "build.json").is_file() else {}
    else:
        sources = readable_raws(args.raw_dir) + [Path(p).resolve() for p in args.photos.split(",") if p]
        for photo in sources:
            load_source(photo)  # an unreadable photo stops here, before any pair is made
        print("sources: " + ", ".join(p.name for p in sources), flush=True)
        build = build_dataset(out, sources, args.pairs, [int(s) for s in args.seeds.split(",")], args.workers,
                              args.test_fraction, args.split_seed)
        build["data_seconds"] = time.perf_counter() - t0
        (out / "build.json").write_text(json.dumps(build, indent=1))
    records = {r["id"]: r for r in latest_records(dataset).values() if r.get("status", "ok") == "ok"}
    train_src, test_src = PackedPairs(dataset, "train"), PackedPairs(dataset, "test")
    print(f"data: {len(train_src)} train / {len(test_src)} test pairs (each its own scene), "
          f"{build.get('kept', '?')} of {build.get('total', '?')} pairs kept by the alignment; "
          f"alignment error vs truth p50 {build.get('truth_error_px', {}).get('p50', float('nan')):.3f} DSLR px",
          flush=True)

    # ------------------------------------------------------ baseline rows
    def renderings(src: PackedPairs) -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
        """Each pair's plain and exposed renderings (one raw decode each) and its loaded item."""
        plain, exposed, items = [], [], []
        for it in map(src.load, range(len(src))):
            lin = phone_linear(records[it["id"]]["phone"])
            plain.append(display(lin))
            exposed.append(display(lin, exposed=True))
            items.append(it)
        return plain, exposed, items

    def per_pair(images: list[np.ndarray], items: list[dict]) -> list[dict]:
        return [score_images(to_t(p), to_t(it["target"]), to_t(it["mask"])) for p, it in zip(images, items)]

    test_plain, test_exposed, items = renderings(test_src)
    train_plain, train_exposed, train_items = renderings(train_src)
    rows: list[dict] = [{"method": PLAIN_ROW, "scores": per_pair(test_plain, items), "params": None, "train_s": None}]
    for label, train_in, test_in in ((CMAP_ROW, train_plain, test_plain),
                                     (EXPOSED_CMAP_ROW, train_exposed, test_exposed)):
        coef, fit_s = fit_colour_map(train_in, [it["target"] for it in train_items], [it["mask"] for it in train_items])
        cmap_test = [apply_colour_map(coef, p) for p in test_in]
        if label == CMAP_ROW:
            picture = [test_plain[0], cmap_test[0]]
        rows.append({"method": label, "scores": per_pair(cmap_test, items), "params": 30, "train_s": fit_s})
    del train_plain, train_exposed, train_items
    test_ids = [it["id"] for it in items]
    for r in rows:
        scores = r.pop("scores")
        r.update(mean_scores(scores), per_pair={i: sc["psnr"] for i, sc in zip(test_ids, scores)})
        print(f"{r['method']}: {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}", flush=True)

    # ---------------------------------------------------------- learned models
    data_cfg = {"kind": "dataset", "root": str(dataset), "crop": args.crop, "batch_size": args.batch,
                "eval_tile": 256}
    train_check = min(4, len(train_src))
    builtin = None
    variants = [(name, space, args.seed) for name in args.models.split(",") for space in args.input_spaces.split(",")]
    variants += [(name, space, args.seed + 1) for name in args.second_seed_models.split(",") if name
                 for space in args.input_spaces.split(",")]
    for name, space, seed in variants:
        label = name if space == "raw" else f"{name} ({space} input)"
        label += f" [{args.tag}]" if args.tag else ""
        label += f", seed {seed}" if seed != args.seed else ""
        cfg = load_config(overrides={
            "model": {"name": name, "kwargs": json.loads(args.model_kwargs)},
            "data": {**data_cfg, "input_space": space},
            "optim": {"lr": args.lr, "steps": args.steps, "schedule": "cosine"},
            "loss": json.loads(args.loss),
            "train": {"seed": seed, "ckpt_every": max(100, args.steps // 4), "eval_every": args.steps,
                      "log_every": 25, "threads": args.threads},
        })
        run = out / "runs" / (f"{name}_{args.steps}" if space == "raw" else f"{name}_{space}_{args.steps}")
        run = run.with_name(run.name + (f"_{args.tag}" if args.tag else "") + (f"_seed{seed}" if seed != args.seed else ""))
        summary = train(cfg, run, progress=False)
        scores = evaluate_run(run, dataset, progress=False)
        builtin = builtin or scores.get("builtin_isp")
        model, stored = load_model(run)
        train_view = open_source(run_data_config(stored, dataset), "train")  # its input space and CFA phase
        tr = [r["model"] for r in evaluate(model, train_view, progress=False)[:train_check]] if train_check else []
        row = {"method": label, "model": name, "input_space": space, "seed": seed, "psnr": scores["psnr"], "ssim": scores["ssim"],
               "params": scores["params"], "train_s": summary["elapsed_s"],
               "train_psnr": mean_scores(tr)["psnr"] if tr else None, "steps": summary["step"],
               "per_pair": run_pair_psnr(run)}
        rows.append(row)
        picture.append(first_test_rendering(model, stored, dataset))
        print(f"{label}: {row['psnr']:.2f} dB (train {row['train_psnr']:.2f}), SSIM {row['ssim']:.3f}, "
              f"{row['params']:,} params, {row['train_s']:.0f} s training", flush=True)
        (out / "results.json").write_text(json.dumps({
            "steps": args.steps, "lr": args.lr, "crop": args.crop, "batch": args.batch, "threads": args.threads,
            "train_pairs": len(train_src), "test_pairs": len(test_src), "build": build, "rows": rows,
            "builtin_isp": builtin}, indent=1))
    if builtin:
        rows.insert(0, {"method": "built-in ISP (phone JPEG)", **builtin, "params": None, "train_s": None})

    # A picture: plain rendering | colour map | each model | target, first test pair, half size.
    picture.append(items[0]["target"])
    gap = np.ones((picture[0].shape[0], 8, 3), np.float32)
    strip = np.concatenate([a for p in picture for a in (p, gap)][:-1], axis=1)
    strip = cv2.resize(strip, (strip.shape[1] // 2, strip.shape[0] // 2), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(out / "compare.png"), np.round(strip[..., ::-1] * 255).astype(np.uint8))

    # ---------------------------------------------------------------- table
    peer = next((r for r in rows if r["method"] == PEER), None)
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"\n### raw input, simulator pairs from real raws: {len(train_src)} train / {len(test_src)} test pairs, "
          f"{args.steps} steps, batch {args.batch}, {args.crop}-position packed crops, Adam {args.lr:g} cosine, "
          f"{args.threads} threads (load average {os.getloadavg()[0]:.1f})\n")
    print(f"| method | PSNR (dB) | SSIM | train PSNR | params | training s | PSNR - {PEER} | SSIM - {PEER} | "
          f"params / {PEER} | training s / {PEER} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        dp = ds = pr = tr = "-"
        if peer is not None:
            dp, ds = f"{r['psnr'] - peer['psnr']:+.2f}", f"{r['ssim'] - peer['ssim']:+.3f}"
            pr = f"{r['params'] / peer['params']:.3g}" if r["params"] else "-"
            tr = f"{r['train_s'] / peer['train_s']:.3f}" if r["train_s"] and r["params"] != 30 else "-"
        print(f"| {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {fmt(r.get('train_psnr'), '.2f')} | "
              f"{fmt(r['params'], ',')} | {fmt(r['train_s'], '.1f')} | {dp} | {ds} | {pr} | {tr} |")
    print_spread(rows)
    print(f"\ndataset, runs, compare.png (plain | colour map | {' | '.join(n if sp == 'raw' else f'{n} ({sp})' for n, sp, _ in variants)} | target, "
          f"first test pair) and results.json in {out}")


if __name__ == "__main__":
    main()
