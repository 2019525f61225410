"""What each stage of the alignment costs and buys at 1 MP, against SIFT + MAGSAC + OpenCV ECC, in one run.

Issue #11 asks for a 1 MP pair within 2x of SIFT + MAGSAC + OpenCV ECC's time at the
accuracy of the full pipeline. This benchmark measures how far each part of the
pipeline is from that budget: the full pipeline and the same pipeline with stages
left out, each alone and one after another (each an ``alignment.AlignOptions``
override, nothing patched), beside the peer, on the same simulator pairs as ``bench_alignment.py``
(the same sources, seeds and hard photometry; ``--pairs`` per source and variant):

- ``ours``: everything (the default options);
- each stage left out alone: ``no local`` (``local=False``: no rounds of the local
  field, one measurement of the tiles under the global model for the verdict),
  ``subset only`` (``fine_full_step=False``, ``fine_noise_px=None``: the fine stage's
  last pass on its subset of samples only, no step on every sample, no pass on more
  samples where the noise limits), ``no trust`` (``trust=False``: no background start,
  no scores of the candidate models, no pre-fit mask, no trust map, its refit and
  layers; the verdict then has no trusted area to confirm a pair with);
- left out one after another: ``no trust, no local``, ``global, subset only`` (and
  the passes beyond the subset), ``luminance ECC only`` (features, the luminance ECC
  and the response fit, no per-plane fine stage: ``fine="none"``, trust and local off);
- ``sift+ecc``: ``bench_alignment.peer_sift_ecc``.

Every method runs in this one process, pair by pair in turn (a machine that slows
down for a while slows all of them), each warmed up once on the first pair (that
run not counted): the seconds are wall seconds per pair, decoding included, imports
not. Per variant and method: pairs kept, seconds per pair and their ratio to the
peer's, the median and 90th percentile of the pairs' median corner error and of
their dense error (DSLR px, kept pairs), the holdout half apart, the worst source by
median corner error, false rejections and wrong keeps as ``bench_alignment.py``
counts them.

Run: ``python benchmarks/bench_stages.py --pairs 4 --out bench_stages.json`` (about 35
minutes on 2 cores; ``--pairs 1``, the default, about 9).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import bench_alignment as ba

#: name -> (AlignOptions overrides, what is left out): the full pipeline, each stage left
#: out alone, then left out one after another down to the luminance ECC
CONFIGURATIONS: dict[str, tuple[dict, str]] = {
    "ours": ({}, "nothing"),
    "no local": ({"local": False}, "the local field's rounds"),
    "subset only": ({"fine_full_step": False, "fine_noise_px": None}, "the fine passes beyond the subset"),
    "no trust": ({"trust": False}, "the trust machinery"),
    "no trust, no local": ({"trust": False, "local": False}, "trust, local rounds"),
    "global, subset only": ({"trust": False, "local": False, "fine_full_step": False, "fine_noise_px": None},
                            "trust, local rounds, fine passes beyond the subset"),
    "luminance ECC only": ({"trust": False, "local": False, "fine": "none"},
                           "trust, local rounds, the per-plane fine stage"),
}
PEER = "sift+ecc"


def methods() -> dict:
    """name -> method f(phone_path, dslr_path), the configurations then the peer."""
    out = {name: ba.ours_with(**options) for name, (options, _) in CONFIGURATIONS.items()}
    out[PEER] = ba.METHODS[PEER]
    return out


def group_figures(rows: list[dict]) -> dict:
    """``bench_alignment.summarise`` of the rows, with the median and 90th percentile of
    the kept pairs' dense error added."""
    out = ba.summarise(rows)
    dense = np.array([r["dense_mean"] for r in rows if r["ok"]]) if any(r["ok"] for r in rows) else np.array([np.nan])
    out["median_dense"], out["p90_dense"] = float(np.median(dense)), float(np.percentile(dense, 90))
    return out


def figures(rows: list[dict], names: list[str]) -> dict:
    """One method's rows of one variant -> all / tune / holdout figures and the worst
    source by median corner error."""
    per_source = {n: group_figures([r for r in rows if r["source"] == n]) for n in names}
    kept = {n: f for n, f in per_source.items() if f["accepted"]}
    worst = max(kept, key=lambda n: kept[n]["median_corner"]) if kept else None
    return {"all": group_figures(rows),
            **{h: group_figures([r for r in rows if r["half"] == h]) for h in ("tune", "holdout")},
            "worst_source": worst, "worst_source_median_corner": kept[worst]["median_corner"] if worst else None}


def print_table(variant: str, per_method: dict) -> None:
    """One variant's markdown table: a row per method ({method: :func:`figures`}), the
    seconds also as a ratio to the peer's."""
    peer_s = per_method[PEER]["all"]["seconds"]
    pairs = per_method[PEER]["all"]["pairs"]
    print(f"\n### {variant} variant, {pairs} pairs\n")
    print("| method | leaves out | kept | s / pair | time vs sift+ecc | median / p90 corner px | "
          "holdout median / p90 corner px | median / p90 dense px | worst source (median corner px) | "
          "false rejections / wrong keeps |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m, f in per_method.items():
        a, h = f["all"], f["holdout"]
        leaves = CONFIGURATIONS[m][1] if m in CONFIGURATIONS else "(the peer)"
        worst = f"{f['worst_source']} ({f['worst_source_median_corner']:.3f})" if f["worst_source"] else "-"
        holdout = f"{h['median_corner']:.4f} / {h['p90_corner']:.4f}" if h["accepted"] else "-"
        print(f"| {m} | {leaves} | {a['accepted']}/{a['pairs']} | {a['seconds']:.2f} | {a['seconds'] / peer_s:.1f}x | "
              f"{a['median_corner']:.4f} / {a['p90_corner']:.4f} | {holdout} | "
              f"{a['median_dense']:.4f} / {a['p90_dense']:.4f} | {worst} | "
              f"{a['false_rejections']} / {a['wrong_keeps']} |")


def main() -> None:
    """Simulate the pairs, score every method on each in turn, print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1, help="simulator pairs per (variant, source)")
    ap.add_argument("--seed", type=int, default=ba.DEFAULT_SEED)
    ap.add_argument("--sources", nargs="*", default=None, help="the sources (default: every one whose files exist)")
    ap.add_argument("--out", type=Path, help="write every pair's figures and the summaries as JSON here")
    args = ap.parse_args()
    if args.pairs < 1:
        ap.error("--pairs must be at least 1")
    names = args.sources or ba.available_sources()
    unknown = sorted(set(names) - set(ba.SOURCES))
    if unknown:
        ap.error(f"unknown source(s): {', '.join(unknown)} (known: {', '.join(ba.SOURCES)})")
    fns = methods()
    results: dict = {"command": f"python benchmarks/bench_stages.py --pairs {args.pairs} --seed {args.seed}"
                                + (f" --sources {' '.join(args.sources)}" if args.sources else ""),
                     "versions": ba.library_versions(),
                     "configurations": {n: o for n, (o, _) in CONFIGURATIONS.items()}, "variants": {}}
    scenes: dict = {}
    warm = False
    with tempfile.TemporaryDirectory(prefix="bench_stages_") as tmp:
        for variant in ("homography", "distortion"):
            rows: dict[str, list[dict]] = {m: [] for m in fns}
            for name, folder, night in ba.simulated_pairs(variant, names, args.pairs, args.seed, "hard", tmp, scenes):
                if not warm:  # the first call of each method pays for its lazy imports and caches
                    for fn in fns.values():
                        ba.score_sim(fn, folder)
                    warm = True
                for m, fn in fns.items():
                    r = ba.score_sim(fn, folder)
                    r.update(pair=folder.name, source=name, half=ba.SOURCES[name][1], night=night)
                    rows[m].append(r)
            results["variants"][variant] = {m: {"figures": figures(r, names), "pairs": r} for m, r in rows.items()}
    print("\nlibraries: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    for variant, per in results["variants"].items():
        print_table(variant, {m: v["figures"] for m, v in per.items()})
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
