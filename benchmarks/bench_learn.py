"""Benchmark: ckisp against its baselines on real phone-vs-DSLR data, same data and budget for every model.

Data: ../shared/data/phone_vs_dslr (iPhone 3GS JPEG -> Canon 70D JPEG, 100x100 patches), the
three identical saturated patches (103, 177, 221) excluded; every 5th remaining patch (by
number) is test, the rest train (197 train / 50 test).

Every learned model: the same training code (learn.train.train), L1 loss, batch 16 of 64 px
crops with flips/turns, Adam with the same learning rate and cosine schedule, the same number
of steps, the same seed. The global second-order polynomial colour map is fitted by least
squares on all training pixels. The built-in ISP row scores the phone JPEG as it is.

Scores: mean (and median) PSNR and mean SSIM over the 50 whole test patches. Render time: CPU
seconds to turn a 12 MP raw (packed 1500 x 2000 x 4 -> 3000 x 4000 sRGB) into sRGB with the
raw-input variant of each architecture through the tiled renderer (learn.infer.render), on
--threads threads; slow models are timed on a quarter of the image and scaled (marked).

    python benchmarks/bench_learn.py --steps 1000 --models ckisp,plain,pac,unet --out /tmp/bench_learn
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import learn.models as lm  # noqa: E402
from learn.data import RgbFolderPairs, list_rgb_pairs, split_names  # noqa: E402
from learn.infer import render  # noqa: E402
from learn.metrics import psnr, ssim  # noqa: E402
from learn.models.blocks import poly_terms  # noqa: E402
from learn.train import load_config, load_model, train  # noqa: E402

SATURATED = ["103", "177", "221"]


def stack(src: RgbFolderPairs) -> tuple[torch.Tensor, torch.Tensor]:
    items = [src.load(i) for i in range(len(src))]
    x = torch.stack([torch.from_numpy(it["input"]).permute(2, 0, 1) for it in items])
    y = torch.stack([torch.from_numpy(it["target"]).permute(2, 0, 1) for it in items])
    return x, y


def scores(pred: torch.Tensor, target: torch.Tensor) -> dict:
    p = psnr(pred, target)
    return {"psnr": float(p.mean()), "psnr_median": float(p.median()), "ssim": float(ssim(pred, target).mean())}


def colour_map(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Global 2nd-order polynomial colour map (10 terms -> RGB) by least squares; returns test output and fit seconds."""
    t = time.perf_counter()
    a = poly_terms(xtr).permute(0, 2, 3, 1).reshape(-1, 10).double()
    b = ytr.permute(0, 2, 3, 1).reshape(-1, 3).double()
    m = torch.linalg.lstsq(a, b).solution.float()
    fit = time.perf_counter() - t
    out = (poly_terms(xte).permute(0, 2, 3, 1) @ m).permute(0, 3, 1, 2).clamp(0, 1)
    return out, fit


def render_seconds(name: str, threads: int, fraction: float, kwargs: dict | None = None) -> float:
    """Seconds to render a 12 MP raw (or ``fraction`` of it, scaled up) with the raw-input architecture."""
    torch.set_num_threads(threads)
    model = lm.create(name, **(kwargs or {})).eval()
    h, w = 1500, 2000
    hh = int(round(h * fraction / 8)) * 8 if fraction < 1 else h
    raw = np.random.default_rng(0).random((hh, w, 4), dtype=np.float32) * 0.5
    render(model, raw[:64, :64], tile=64)  # warm-up
    t = time.perf_counter()
    render(model, raw, tile=768)
    return (time.perf_counter() - t) * (h / hh)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "phone_vs_dslr")
    ap.add_argument("--models", default="ckisp,plain,pac,unet")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-kwargs", default="{}",
                    help="JSON constructor arguments for every model beside the RGB ones, "
                         "e.g. '{\"colour_quantiles\": []}'")
    ap.add_argument("--tag", default="", help="suffix of the run folders and row labels (a variant of the same models)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the runs and results.json")
    ap.add_argument("--no-render", action="store_true", help="skip the 12 MP render timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_learn_"))
    out.mkdir(parents=True, exist_ok=True)

    iphone, canon = args.data / "iphone", args.data / "canon"
    names = list_rgb_pairs(iphone, canon, exclude=SATURATED)
    train_names, test_names = split_names(names, 5)
    xtr, ytr = stack(RgbFolderPairs(iphone, canon, train_names))
    xte, yte = stack(RgbFolderPairs(iphone, canon, test_names))
    print(f"data: {len(train_names)} train / {len(test_names)} test patches (100x100), "
          f"{len(SATURATED)} saturated identical pairs excluded", flush=True)

    rows: list[dict] = []
    rows.append({"method": "built-in ISP (iPhone JPEG as is)", **scores(xte, yte), "params": None,
                 "train_s": None, "render_s": None})
    cm_out, fit_s = colour_map(xtr, ytr, xte)
    rows.append({"method": "global 2nd-order colour map (least squares)", **scores(cm_out, yte), "params": 30,
                 "train_s": fit_s, "render_s": None})
    print(f"{rows[0]['method']}: {rows[0]['psnr']:.2f} dB; colour map: {rows[1]['psnr']:.2f} dB in {fit_s:.1f} s",
          flush=True)

    data_cfg = {"kind": "rgb_folders", "input_dir": str(iphone), "target_dir": str(canon), "exclude": SATURATED,
                "test_every": 5, "crop": 64, "batch_size": 16, "eval_tile": None}
    for name in args.models.split(","):
        cfg = load_config(overrides={
            "model": {"name": name, "kwargs": {**json.loads(args.model_kwargs), "in_channels": 3, "upscale": 1}},
            "data": data_cfg,
            "optim": {"lr": args.lr, "steps": args.steps, "schedule": "cosine"},
            "loss": {"l1": 1.0},
            "train": {"seed": args.seed, "ckpt_every": max(100, args.steps // 4), "eval_every": args.steps,
                      "log_every": 25, "threads": args.threads},
        })
        run = out / (f"{name}_{args.steps}" + (f"_{args.tag}" if args.tag else ""))
        summary = train(cfg, run, progress=False)
        model, _ = load_model(run)
        with torch.inference_mode():
            pred = model(xte)
            pred_tr = model(xtr[:64])
        row = {"method": name + (f" [{args.tag}]" if args.tag else ""), **scores(pred, yte),
               "train_psnr": float(psnr(pred_tr, ytr[:64]).mean()),
               "params": lm.count_parameters(model), "train_s": summary["elapsed_s"], "render_s": None}
        if not args.no_render:
            frac = 1.0 if name in ("ckisp", "plain") else 0.1
            row["render_s"] = render_seconds(name, args.threads, frac, json.loads(args.model_kwargs))
            row["render_note"] = "" if frac == 1.0 else f" (x{1 / frac:.0f} from {frac:.2f} of the image)"
        rows.append(row)
        print(f"{name}: {row['psnr']:.2f} dB (train {row['train_psnr']:.2f}), SSIM {row['ssim']:.3f}, "
              f"{row['params']} params, {row['train_s']:.0f} s training, render 12 MP {row['render_s']}", flush=True)
        (out / "results.json").write_text(json.dumps({"steps": args.steps, "lr": args.lr, "threads": args.threads,
                                                      "rows": rows}, indent=1))

    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"\n### phone_vs_dslr, {args.steps} steps, batch 16, 64 px crops, Adam {args.lr:g} cosine, "
          f"{args.threads} threads (load average {os.getloadavg()[0]:.1f})\n")
    print("| method | PSNR mean (dB) | PSNR median | SSIM | params | training s | render 12 MP raw, s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['psnr']:.2f} | {r['psnr_median']:.2f} | {r['ssim']:.3f} | "
              f"{fmt(r['params'], ',')} | {fmt(r['train_s'], '.0f')} | {fmt(r['render_s'], '.2f')}"
              f"{r.get('render_note', '')} |")
    ck = next((r for r in rows if r["method"].startswith("ckisp")), None)
    if ck is not None:
        print("\nckisp against each peer (same run): PSNR difference, parameter ratio, render-time ratio")
        for r in rows:
            if r is ck:
                continue
            pr = "-" if not r["params"] else f"{ck['params'] / r['params']:.3f}"
            rr = "-" if not (r["render_s"] and ck["render_s"]) else f"{ck['render_s'] / r['render_s']:.3f}"
            print(f"  vs {r['method']}: {ck['psnr'] - r['psnr']:+.2f} dB, params x{pr}, render time x{rr}")
    print(f"\nruns and results.json in {out}")


if __name__ == "__main__":
    main()
