"""Benchmark: bringing up a new phone from ten pairs, with a model trained on another phone.

Two simulated phones with fixed, different sensors (``isp-rig simulate --phone-profile``, the
``[simulation]`` tables of the built-in profiles):

* phone A, ``iphone_6s``: 1024x768, RGGB, 12 bit, its own colour response and noise;
* phone B, ``mi_3``: 960x720, BGGR, 10 bit, another colour response, more noise and vignetting.

Scenes: crops of the real raws in ../shared/data/raw (every file alignment.rawio reads) and of the real
photos of ``--photos`` (other cameras and scenes), drawn with other seeds for A and for B, so no B pair
shows a crop that A trained on.  Phone A's dataset covers every source; the new phone's few pairs come
from the first ``--few-sources`` sources only, as a first short capture with a new phone covers a few
scenes, while B's test pairs (and the ceiling's training pairs) span every source: what the few pairs
cannot teach about scenes, A's model may bring.  ``--few-sources 0`` draws the few pairs from every
source (the layout of the first runs of this benchmark).  Data through the
toolkit's own commands: ``isp-rig simulate`` then ``isp-rig dataset build`` (the real alignment):

* ``A``: every A pair (its own by-scene split; its test pairs only validate A's run);
* ``B_all``: every B pair, split by scene (``--test-fraction``): the B test pairs every row is scored on;
* ``B_few``: the same B test pairs plus ``--few`` B training pairs spread evenly over the B training
  pairs of the first ``--few-sources`` sources (each of them in about its share; the split is a hash of
  the scene, so the test pairs are the same pairs, aligned again by the same code).

Rows, all scored on B's test pairs with learn.evaluate (masked PSNR / SSIM on whole images):

* **B plain rendering**: the B raw through rawio with its own DNG metadata (as-shot WB, colour
  matrix, sRGB): what the new phone gives with no learning at all;
* **B plain rendering + colour map fitted on the few pairs** (the metadata baseline of
  bench_learn_raw, fitted on the same ``--few`` pairs the learned rows get);
* per input space (``--input-spaces``, learn.raw_space; ``raw`` = the packed raw only,
  ``linear_srgb`` = white-balanced and colour-transformed with each raw's own metadata, ``srgb`` = that
  through the sRGB curve, the default of training):
  **A's model as is**; **B from scratch on the few pairs**; **A's model fine-tuned on the same few
  pairs** (``train --init-from``, the same steps); **the same with A's training pairs beside the few**
  (``train --init-from --also-data A``: in a metadata input space both phones' pairs are camera-
  independent, so the new phone's model keeps seeing the scenes A was trained on; docs/new-phone.md has
  what it gave); **B from scratch on
  all B training pairs** (the ceiling).  The peer for the ratios is "B from scratch on the few pairs": what a user does
  without isp-rig's fine-tuning path.

Every run has the same model, optimiser, crops, seed and steps (``--steps``); runs already in
OUT/runs are resumed or only scored again.

    S=../shared/data
    nice -n 19 python benchmarks/bench_new_phone.py --steps 1000 --a-pairs 8 --b-pairs 8 \
        --photos $S/pairs/graf/img1.png,$S/pairs/homogr/BostonA.jpg,$S/phone_vs_dslr/hd/0.png,$S/pairs/homogr/EiffelA.png \
        --out /tmp/bench_new_phone
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import bench_learn_raw as blr  # noqa: E402  the raw benchmark's data and baseline helpers
from alignment.dataset import latest_records, scene_split  # noqa: E402
from learn.data import PackedPairs  # noqa: E402
from learn.evaluate import evaluate_run, score_images  # noqa: E402
from learn.train import load_config, load_model, train  # noqa: E402

PHONE_A, PHONE_B = "iphone_6s", "mi_3"
PEER = "B from scratch on the few pairs"


def simulate_phone(out: Path, profile: str, sources: list[Path], pairs: int, seeds: list[int]) -> list[dict]:
    """Simulate ``pairs`` pairs per source and seed with the phone ``profile``; the CSV rows of them."""
    rows = []
    for k, src in enumerate(sources):
        for s in seeds:
            seed = s + 100 * k
            folder = out / "sim" / f"{profile}-{src.stem}-s{seed}"
            blr.isp_rig("simulate", "--phone-profile", profile, "--source", str(src), "--pairs", str(pairs),
                        "--seed", str(seed), "--out", str(folder))
            for i in range(pairs):
                pair = folder / f"pair_{i:04d}"
                pid = f"{profile}-{src.stem}-s{seed}-{i:02d}"
                rows.append({"phone": str(pair / "phone.dng"), "dslr": str(pair / "dslr.jpg"), "id": pid,
                             "scene": pid, "truth": str(pair / "truth.json")})
    return rows


def few_of(rows: list[dict], n: int, sources: list[Path], n_sources: int = 0) -> list[dict]:
    """``n`` of ``rows`` spread evenly over the rows of the first ``n_sources`` of ``sources`` (0: all;
    the sources follow one another in the list), so the few pairs hold each of them in about its share."""
    keep = {p.stem for p in (sources[:n_sources] if n_sources else sources)}
    rows = [r for r in rows if blr.source_of(r["id"]) in keep]
    if len(rows) < n:
        raise SystemExit(f"{len(rows)} B training pairs in the first {n_sources} sources, {n} wanted: "
                         "raise --b-pairs or --few-sources")
    return [rows[int(k * len(rows) / n)] for k in range(n)]


def build(out: Path, name: str, rows: list[dict], profile: str, workers: int, test_fraction: float,
          split_seed: int) -> dict:
    """``isp-rig dataset build`` of the CSV ``rows`` into ``out/<name>``; the build summary."""
    csv_path = out / f"{name}.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["phone", "dslr", "id", "scene", "truth"])
        w.writeheader()
        w.writerows(rows)
    summary = blr.isp_rig("dataset", "build", "--pairs", str(csv_path), "--out", str(out / name),
                          "--workers", str(workers), "--test-fraction", str(test_fraction),
                          "--split-seed", str(split_seed), "--phone-profile", profile, "--json")
    return json.loads(summary)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw-dir", type=Path, default=BENCH.parent.parent / "shared" / "data" / "raw")
    ap.add_argument("--photos", default="", help="more real scenes (photos, comma-separated), as in bench_learn_raw")
    ap.add_argument("--a-pairs", type=int, default=12, help="phone A pairs per source raw")
    ap.add_argument("--b-pairs", type=int, default=12, help="phone B pairs per source raw")
    ap.add_argument("--few", type=int, default=10, help="B training pairs of the few-pair rows")
    ap.add_argument("--few-sources", type=int, default=2,
                    help="the few pairs come from the first N sources (raws, then photos); 0: every source")
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="ckisp")
    ap.add_argument("--input-spaces", default="srgb,raw")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--finetune-lr", type=float, default=None,
                    help="learning rate of the fine-tuning run (default: --lr, the same recipe as from scratch)")
    ap.add_argument("--finetune-steps", type=int, default=None, help="steps of the fine-tuning run (default: --steps)")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="training seed (every run)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench_new_phone_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- data
    t0 = time.perf_counter()
    builds_path = out / "builds.json"
    if builds_path.is_file():
        builds = json.loads(builds_path.read_text())
        print(f"reusing the datasets in {out}", flush=True)
    else:
        sources = blr.readable_raws(args.raw_dir) + [Path(p).resolve() for p in args.photos.split(",") if p]
        print("sources: " + ", ".join(p.name for p in sources), flush=True)
        a_rows = simulate_phone(out, PHONE_A, sources, args.a_pairs, [0])
        b_rows = simulate_phone(out, PHONE_B, sources, args.b_pairs, [50])
        b_test = [r for r in b_rows if scene_split(r["scene"], args.split_seed, args.test_fraction) == "test"]
        b_train = [r for r in b_rows if r not in b_test]
        if len(b_train) < args.few or not b_test:
            raise SystemExit(f"{len(b_train)} B training / {len(b_test)} test pairs: raise --b-pairs")
        few_rows = few_of(b_train, args.few, sources, args.few_sources)
        builds = {"A": build(out, "A", a_rows, PHONE_A, args.workers, args.test_fraction, args.split_seed),
                  "B_all": build(out, "B_all", b_rows, PHONE_B, args.workers, args.test_fraction, args.split_seed),
                  "B_few": build(out, "B_few", b_test + few_rows, PHONE_B, args.workers, args.test_fraction,
                                 args.split_seed),
                  "data_seconds": time.perf_counter() - t0,
                  "sources": [p.name for p in sources], "few_sources": args.few_sources}
        builds_path.write_text(json.dumps(builds, indent=1))
    datasets = {k: out / k for k in ("A", "B_all", "B_few")}
    b_test_src = PackedPairs(datasets["B_all"], "test")
    few_src = PackedPairs(datasets["B_few"], "train")
    test_ids = sorted(b_test_src.records[i].id for i in range(len(b_test_src)))
    few_test_ids = sorted(r.id for r in PackedPairs(datasets["B_few"], "test").records)
    assert test_ids == few_test_ids, "B_few must hold exactly B_all's test pairs"
    counts = {"A train": len(PackedPairs(datasets["A"], "train")), "B train (all)": len(PackedPairs(datasets["B_all"],
              "train")), "B train (few)": len(few_src), "B test": len(b_test_src)}
    print("pairs: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)

    # ------------------------------------------------------ baseline rows
    records = {r["id"]: r for r in latest_records(datasets["B_all"]).values() if r.get("status", "ok") == "ok"}
    few_records = {r["id"]: r for r in latest_records(datasets["B_few"]).values() if r.get("status", "ok") == "ok"}
    test_items = [(blr.plain_rendering(records[it["id"]]["phone"]), it)
                  for it in (b_test_src.load(i) for i in range(len(b_test_src)))]
    few_items = [(blr.plain_rendering(few_records[it["id"]]["phone"]), it)
                 for it in (few_src.load(i) for i in range(len(few_src)))]
    test_ids = [it["id"] for _, it in test_items]
    plain = [score_images(blr.to_t(p), blr.to_t(it["target"]), blr.to_t(it["mask"])) for p, it in test_items]
    coef, _ = blr.fit_colour_map([p for p, _ in few_items], [it["target"] for _, it in few_items],
                                 [it["mask"] for _, it in few_items])
    cmap = [score_images(blr.to_t(blr.apply_colour_map(coef, p)), blr.to_t(it["target"]), blr.to_t(it["mask"]))
            for p, it in test_items]
    rows: list[dict] = [
        {"method": "B plain rendering (its DNG's WB and colour matrix)", "space": "-", "pairs": 0, "steps": 0,
         **blr.mean_scores(plain), "train_s": None, "per_pair": {i: sc["psnr"] for i, sc in zip(test_ids, plain)}},
        {"method": f"B plain rendering + colour map fitted on the {len(few_src)} few pairs", "space": "-",
         "pairs": len(few_src), "steps": 0, **blr.mean_scores(cmap), "train_s": None,
         "per_pair": {i: sc["psnr"] for i, sc in zip(test_ids, cmap)}},
    ]
    del few_items
    picture = [test_items[0][0]]

    # ---------------------------------------------------------- learned rows
    def config(dataset: Path, space: str, lr: float | None = None, steps: int | None = None,
               also: list[Path] = ()) -> dict:
        lr, steps = lr or args.lr, steps or args.steps
        return load_config(overrides={
            "model": {"name": args.model, "kwargs": {}},
            "data": {"kind": "dataset", "root": str(dataset), "crop": args.crop, "batch_size": args.batch,
                     "eval_tile": 256, "input_space": space, "also_roots": [str(p) for p in also]},
            "optim": {"lr": lr, "steps": steps, "schedule": "cosine"},
            "loss": {"l1": 1.0},
            "train": {"seed": args.seed, "ckpt_every": max(100, steps // 4), "eval_every": steps,
                      "log_every": 25, "threads": args.threads},
        })

    def scored(label: str, run: Path, space: str, pairs: int, train_s: float | None, steps: int | None = None) -> None:
        scores = evaluate_run(run, datasets["B_all"], progress=False)
        rows.append({"method": label, "space": space, "pairs": pairs, "steps": steps or args.steps, "psnr": scores["psnr"],
                     "ssim": scores["ssim"], "train_s": train_s, "per_pair": blr.run_pair_psnr(run)})
        model, stored = load_model(run)
        picture.append(blr.first_test_rendering(model, stored, datasets["B_all"]))
        print(f"{label} [{space}]: {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}", flush=True)

    for space in args.input_spaces.split(","):
        runs = out / "runs" / (f"{args.model}_{space}_{args.steps}" + (f"_seed{args.seed}" if args.seed else ""))
        a = train(config(datasets["A"], space), runs / "A", progress=False)
        scored("A's model as is", runs / "A", space, 0, None)
        rows[-1]["a_train_s"] = a["elapsed_s"]  # trained on A's pairs, none of B's
        few = train(config(datasets["B_few"], space), runs / "B_few", progress=False)
        scored(PEER, runs / "B_few", space, counts["B train (few)"], few["elapsed_s"])
        ft_lr, ft_steps = args.finetune_lr or args.lr, args.finetune_steps or args.steps
        recipe = "" if (ft_lr, ft_steps) == (args.lr, args.steps) else f"_lr{ft_lr:g}_{ft_steps}"
        tuned = train(config(datasets["B_few"], space, ft_lr, ft_steps), runs / f"A_to_B_few{recipe}",
                      init_from=runs / "A" / "checkpoints" / "last.pt", progress=False)
        scored(f"A's model fine-tuned on the few pairs (--init-from, lr {ft_lr:g}, {ft_steps} steps)",
               runs / f"A_to_B_few{recipe}", space, counts["B train (few)"], tuned["elapsed_s"], ft_steps)
        mixed = train(config(datasets["B_few"], space, ft_lr, ft_steps, also=[datasets["A"]]),
                      runs / f"A_to_B_few_with_A{recipe}", init_from=runs / "A" / "checkpoints" / "last.pt",
                      progress=False)
        scored(f"A's model fine-tuned on the few pairs with A's pairs beside them (--also-data A, lr {ft_lr:g}, "
               f"{ft_steps} steps)", runs / f"A_to_B_few_with_A{recipe}", space, counts["B train (few)"],
               mixed["elapsed_s"], ft_steps)
        full = train(config(datasets["B_all"], space), runs / "B_all", progress=False)
        scored("B from scratch on all B training pairs (ceiling)", runs / "B_all", space, counts["B train (all)"],
               full["elapsed_s"])
        (out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                      "counts": counts, "builds": builds, "rows": rows}, indent=1))

    picture.append(test_items[0][1]["target"])
    gap = np.ones((picture[0].shape[0], 8, 3), np.float32)
    strip = np.concatenate([x for p in picture for x in (p, gap)][:-1], axis=1)
    strip = cv2.resize(strip, (strip.shape[1] // 2, strip.shape[0] // 2), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(out / "compare.png"), np.round(strip[..., ::-1] * 255).astype(np.uint8))

    # ---------------------------------------------------------------- table
    print(f"\n### a new phone (B = {PHONE_B}) from a model of another (A = {PHONE_A}): {counts['A train']} A "
          f"training pairs, {counts['B train (few)']} / {counts['B train (all)']} B training pairs, "
          f"{counts['B test']} B test pairs; {args.model}, {args.steps} steps per run, batch {args.batch}, "
          f"{args.crop}-position crops, Adam {args.lr:g} cosine, seed {args.seed}, {args.threads} threads "
          f"(load average {os.getloadavg()[0]:.1f})\n")
    print("| method | input | B training pairs | PSNR (dB) | SSIM | training s | PSNR - peer | SSIM - peer |")
    print("|---|---|---|---|---|---|---|---|")
    peers = {p["space"]: p for p in rows if p["method"] == PEER}
    for r in rows:
        peer = peers.get(r["space"], peers.get("raw"))
        dp = f"{r['psnr'] - peer['psnr']:+.2f}" if peer else "-"
        ds = f"{r['ssim'] - peer['ssim']:+.3f}" if peer else "-"
        t = "-" if r["train_s"] is None else f"{r['train_s']:.0f}"
        print(f"| {r['method']} | {r['space']} | {r['pairs']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {t} | {dp} | {ds} |")
    print(f"\n(peer: {PEER}, same input space; the baseline rows against the raw-input peer)")
    blr.print_spread(rows)
    print(f"datasets, runs, compare.png (B plain | each learned row in order | target, first B test pair) and "
          f"results.json in {out}")


if __name__ == "__main__":
    main()
