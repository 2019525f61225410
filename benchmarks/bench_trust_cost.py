"""What the trust map costs: seconds per pair of a dataset build, this code against a
revision without it, in one run on the same pairs.

Both builds run the real command, ``isp-rig align batch SRC --out DS --workers 1
--no-report --json``, as a subprocess with the code of each version first on
``PYTHONPATH`` (the revision is exported with ``git archive``), one after the
other, on the same simulated pairs: planar pairs (the simulator's default) and
layered ones (``--parallax --motion --clipping --shading``; the old code aligns
them too, it only cannot make them).  Figures: wall seconds of the command per
pair, the median of the records' own ``seconds`` per pair (alignment, warp and
writes, without interpreter start-up), and the ratio this / revision.  The
issue's target: at most 1.5x.

Run: ``nice -n 19 python benchmarks/bench_trust_cost.py --pairs 4 --rev 2005c43 --out bench_trust_cost.json``
(2005c43 is the last commit before the trust map).  Run it on an idle machine:
the two builds must see the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _export(rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def _build(code: Path, source: Path, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code))
    cmd = [sys.executable, "-c", "from isp_rig.cli import main; main()", "align", "batch", str(source), "--out",
           str(out), "--workers", "1", "--no-report", "--json"]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{code}: the build failed: {done.stderr.strip().splitlines()[-1:]}")
    records = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines() if line.strip()]
    return {"wall_s": wall, "pairs": len(records), "pair_s": [r["seconds"] for r in records],
            "kept": sum(r["status"] == "ok" for r in records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4, help="Pairs of each kind (default 4).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rev", default="2005c43", help="The revision to compare with (default: before the trust map).")
    parser.add_argument("--work", type=Path, help="Work folder (default: a temporary one).")
    parser.add_argument("--out", type=Path, help="Write the results as JSON.")
    args = parser.parse_args()

    from isp_rig import simulate as sim

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_trust_cost_"))
    kinds = {"planar": sim.SimOptions(),
             "layered": sim.SimOptions(parallax=True, motion=True, clipping=True, shading=True)}
    for kind, opts in kinds.items():
        if not (work / kind).is_dir():
            sim.simulate_pairs(work / kind, args.pairs, seed=args.seed, options=opts, progress=False)
    old = _export(args.rev, work / f"code-{args.rev}")
    results = {}
    for kind in kinds:
        for name, code in ((args.rev, old), ("this", REPO)):
            out = work / f"ds-{kind}-{name}"
            if out.exists():
                import shutil

                shutil.rmtree(out)
            results[(kind, name)] = _build(code, work / kind, out)
    print(f"seconds per pair, {args.pairs} pairs of each kind, serial (--workers 1), same machine, one after the other")
    print(f"{'pairs':8s} {'code':10s} {'wall s/pair':>12s} {'pair s (median)':>16s} {'kept':>5s} {'this / ' + args.rev:>14s}")
    table = []
    for kind in kinds:
        base = results[(kind, args.rev)]
        for name in (args.rev, "this"):
            r = results[(kind, name)]
            med = statistics.median(r["pair_s"])
            ratio = "" if name == args.rev else f"{med / statistics.median(base['pair_s']):.2f}x"
            print(f"{kind:8s} {name:10s} {r['wall_s'] / r['pairs']:12.2f} {med:16.2f} {r['kept']:5d} {ratio:>14s}")
            table.append({"pairs": kind, "code": name, "wall_s_per_pair": r["wall_s"] / r["pairs"],
                          "pair_s_median": med, "pair_s": r["pair_s"], "kept": r["kept"]})
    if args.out:
        args.out.write_text(json.dumps({"rev": args.rev, "pairs": args.pairs, "rows": table}, indent=1))


if __name__ == "__main__":
    main()
