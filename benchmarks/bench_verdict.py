"""False rejections and wrong keeps of the verdict, on simulator pairs with ground truth.

Data: the planar simulator pairs of ``bench_trust.py`` (``isp-rig simulate`` at the
default size, phone raw 1024x768 DNG, DSLR 1536x1024 JPEG; ``--pairs-per-source``
pairs from each of its twelve sources, tune and holdout halves as there), built
into the same work folder when they are not there yet.  Each pair is aligned
three ways (``align_images`` on the files, as ``isp-rig align pair`` does):

- ``as is``: the default pipeline;
- ``features withheld``: ``min_inliers`` set out of reach, so that no pair passes
  on its feature matches and every one takes the start without features (the
  coarse search of ``alignment.coarse``): what a whiteboard, a document or a soft
  scene with too few matches gets;
- ``other scene``: the phone raw against the DSLR JPEG of the next source's pair
  (nothing there to align: any keep is wrong).

A false rejection is a rejected pair of one scene; a wrong keep is a kept pair whose
largest error at the four phone raw corners against the truth is over 1 DSLR px (or
any kept ``other scene`` pair).  Prints per source and per half, with the median
and 90th percentile corner error of the kept pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_trust as bt  # noqa: E402  (the pairs and their sources)

VARIANTS = ("as is", "features withheld", "other scene")
WRONG_PX = 1.0


def align_one(job: tuple[str, str, str, str]) -> dict:
    """(pair id, variant, phone folder, DSLR folder) -> the verdict and the corner error."""
    from alignment import rawio
    from alignment.batch import pin_threads
    from alignment.pipeline import align_images
    from isp_rig import simulate as sim

    pin_threads()
    pid, variant, phone_dir, dslr_dir = job
    raw = rawio.read_raw(Path(phone_dir) / "phone.dng")
    dslr = rawio.read_any(Path(dslr_dir) / "dslr.jpg")
    opts = {"min_inliers": 1_000_000_000} if variant == "features withheld" else {}
    a = align_images(raw, dslr, **opts)
    truth = sim.load_truth(phone_dir)
    h, w = raw.shape
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)
    err = float("nan")
    if a.ok and variant != "other scene":
        err = float(np.linalg.norm(a.map_points(corners) - truth.map_points(corners), axis=1).max())
    q = a.quality
    return {"id": pid, "variant": variant, "ok": bool(a.ok), "reason": q.reason, "start": q.start,
            "coarse_score": None if not np.isfinite(q.coarse_score) else q.coarse_score, "inliers": q.inliers,
            "corner_max_px": err, "seconds": float(sum(a.seconds.values()))}


def summary(rows: list[dict]) -> str:
    same = [r for r in rows if r["variant"] != "other scene"]
    kept_err = np.array([r["corner_max_px"] for r in same if r["ok"]])
    false_rej = sum(not r["ok"] for r in same)
    wrong = sum(r["ok"] for r in rows if r["variant"] == "other scene") + int((kept_err > WRONG_PX).sum())
    med = f"{np.median(kept_err):.3f}" if kept_err.size else "-"
    p90 = f"{np.percentile(kept_err, 90):.3f}" if kept_err.size else "-"
    return (f"{len(rows):3d} {false_rej:4d} of {len(same):<3d} {wrong:4d}   "
            f"{med:>7} {p90:>7}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs-per-source", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=bt.REPO / "bench-out" / "trust",
                    help="the folder bench_trust.py simulates into (default: the repository's bench-out/trust)")
    ap.add_argument("--out", type=Path, default=None, help="write every row as JSON here")
    args = ap.parse_args()
    sizes = ((1024, 768), (1536, 1024))
    work = args.work / f"p{sizes[0][0]}x{sizes[0][1]}-d{sizes[1][0]}x{sizes[1][1]}-seed{args.seed}" / "pairs-planar"
    plan = bt.plan_pairs(list(bt.DEFAULT_SOURCES), args.pairs_per_source, args.seed, layered=False)
    bt.ensure_simulated(plan, work, sizes[0], sizes[1], args.workers)
    jobs = []
    for k, pair in enumerate(plan):
        other = plan[(k + args.pairs_per_source) % len(plan)]  # the next source's pair
        folder = str(work / pair["id"])
        jobs += [(pair["id"], "as is", folder, folder), (pair["id"], "features withheld", folder, folder),
                 (pair["id"], "other scene", folder, str(work / other["id"]))]
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as ex:
        rows = list(tqdm(ex.map(align_one, jobs), total=len(jobs), desc="align", unit="pair"))
    source_of = {p["id"]: p["source"] for p in plan}
    half_of = {p["id"]: p["half"] for p in plan}
    print(f"{len(plan)} pairs ({args.pairs_per_source} per source, {len(bt.DEFAULT_SOURCES)} sources), 3 variants; "
          f"wrong keep: corner error > {WRONG_PX} DSLR px or any kept other-scene pair")
    print(f"{'':28s}runs false-rej    wrong  med px  p90 px   (corner error of the kept same-scene pairs)")
    for variant in VARIANTS:
        print(f"{variant:28s}{summary([r for r in rows if r['variant'] == variant])}")
    for half in bt.HALVES:
        print(f"half {half:23s}{summary([r for r in rows if half_of[r['id']] == half])}")
    for name in bt.DEFAULT_SOURCES:
        print(f"  {name:26s}{summary([r for r in rows if source_of[r['id']] == name])}")
    coarse = [r for r in rows if r["start"] == "coarse"]
    scores = {v: [r["coarse_score"] for r in coarse if r["variant"] == v and r["coarse_score"] is not None]
              for v in VARIANTS}
    for v, sc in scores.items():
        if sc:
            print(f"coarse-search score, {v}: min {min(sc):.3f} median {np.median(sc):.3f} max {max(sc):.3f}")
    other = [r["coarse_score"] for r in rows if r["variant"] == "other scene" and r["coarse_score"] is not None]
    if other:
        print(f"coarse-search score, other scene (searched, below the 0.3 floor or not): max {max(other):.3f}")
    reasons = {}
    for r in rows:
        if not r["ok"]:
            reasons[(r["variant"], r["reason"])] = reasons.get((r["variant"], r["reason"]), 0) + 1
    print("rejections: " + ", ".join(f"{v} {k}: {n}" for (v, k), n in sorted(reasons.items())))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
