"""Speed of one real-size pair: the whole ``isp-rig align pair`` command, fresh processes, interleaved.

What a user waits for (issue #11, item 4: a 12 MP raw + 24 MP JPEG in at most 5 s
on 2 cores): each run is a new process, so the interpreter, the imports and the
decoding count. Per run the process's wall time, its CPU time (user + system) and
its peak resident memory come from ``os.wait4``; the pipeline's own stage seconds
from the record ``--json`` prints. The variants take turns run by run, so a
machine that slows down for a while slows all of them:

- ``this checkout``: ``isp-rig align pair`` of the code in this folder;
- ``--against REF``: the same command of a git commit, checked out in a temporary
  worktree and put first on ``PYTHONPATH`` (what changed, measured in one run);
- the peer, as in ``bench_alignment.py --real-size``: ``align_pair`` and SIFT +
  MAGSAC + stock ECC (``bench_alignment.py --one METHOD DIR``, each in a fresh
  process, decoding included, imports not) with their ratio.

The pair: ``--pair DIR`` (``phone.dng``, ``dslr.jpg``, ``truth.json`` as
``isp-rig simulate`` writes), by default the real-size pair ``bench_alignment.py``
keeps in its cache (simulated there first when absent, about a minute).

Run: ``python benchmarks/bench_speed.py --runs 5 --against HEAD~3``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[dict, str]:
    """Run ``cmd`` to its end -> ({wall, cpu, sys, peak_mb, status}, its stdout)."""
    import time

    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    peak = usage.ru_maxrss / 1024.0 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "sys": usage.ru_stime, "peak_mb": peak,
            "status": proc.returncode}, text


def default_pair(cache: Path) -> Path:
    """The real-size pair of ``bench_alignment.py`` (its default seed), simulated into
    ``cache`` when absent, in a process of its own: the peak memory of a run is the
    ``ru_maxrss`` of its process, which carries over the resident size of the process
    it was forked from (simulated here, a 12 MP pair left this one at 6 GB and every
    run then reported 6.2 GB)."""
    code = ("import sys; from pathlib import Path; import bench_alignment as b; "
            "print(b.real_size_pair(Path(sys.argv[1]), b.DEFAULT_SEED))")
    made = subprocess.run([sys.executable, "-c", code, str(cache)], cwd=HERE, capture_output=True, text=True)
    if made.returncode != 0:
        sys.exit(f"bench_speed: the real-size pair could not be simulated: {made.stderr.strip()[-300:]}")
    return Path(made.stdout.strip().splitlines()[-1])


def command_variant(name: str, pythonpath: str | None, pair: Path) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = "import sys; from isp_rig.cli import main; sys.argv[0] = 'isp-rig'; main()"
    return {"name": name, "env": env, "json": True,
            "cmd": [sys.executable, "-c", code, "align", "pair", str(pair / "phone.dng"), str(pair / "dslr.jpg"), "--json"]}


def method_variant(method: str, pair: Path) -> dict:
    return {"name": f"{method} (bench_alignment --one)", "env": None, "json": False, "method": method,
            "cmd": [sys.executable, str(HERE / "bench_alignment.py"), "--one", method, str(pair)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per variant (default 5)")
    ap.add_argument("--pair", type=Path, help="a pair folder (default: bench_alignment's real-size pair)")
    ap.add_argument("--against", metavar="REF", help="also time the command of this git commit")
    ap.add_argument("--no-peer", action="store_true", help="leave out align_pair against SIFT + MAGSAC + ECC")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "isp-rig-bench-alignment")
    ap.add_argument("--out", type=Path, help="every run as JSON here")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    pair = args.pair or default_pair(args.cache)
    if not (pair / "phone.dng").exists() or not (pair / "dslr.jpg").exists():
        ap.error(f"--pair {pair}: no phone.dng and dslr.jpg there")
    if not args.no_peer and not (pair / "truth.json").exists():
        ap.error(f"--pair {pair}: no truth.json there, which the peer comparison scores against (or --no-peer)")
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        variants = [command_variant("isp-rig align pair (this checkout)", str(REPO), pair)]
        if args.against:
            tree = Path(tmp) / "ref"
            made = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.against],
                                  capture_output=True, text=True)
            if made.returncode != 0:
                ap.error(f"--against {args.against}: {made.stderr.strip()}")
            variants.append(command_variant(f"isp-rig align pair ({args.against})", str(tree), pair))
        if not args.no_peer:
            variants += [method_variant("ours", pair), method_variant("sift+ecc", pair)]
        runs: dict[str, list[dict]] = {v["name"]: [] for v in variants}
        try:
            for k in range(args.runs):
                for v in variants:  # turn by turn
                    r, text = timed(v["cmd"], v["env"], cwd=Path(tmp))
                    if v["json"] and r["status"] in (0, 3):
                        r["stages"] = json.loads(text)["seconds"]
                    elif "method" in v:
                        try:
                            one = json.loads(text.strip().splitlines()[-1])
                        except (IndexError, ValueError):  # it failed (a pair without truth.json, say)
                            one = {}
                        r["seconds"] = one.get("seconds", float("nan"))
                        r["corner"] = one.get("corner_median", float("nan"))
                    runs[v["name"]].append(r)
                print(f"run {k + 1}/{args.runs}: " + ", ".join(f"{n.split(' (')[0]} {rs[-1]['wall']:.2f} s"
                                                              for n, rs in runs.items()), flush=True)
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
    print(f"\npair: {pair}; {args.runs} fresh processes per row, taking turns; cpu = user + system seconds "
          "(system s: the kernel's share)\n")
    print("| process | wall s, median | wall s, min - max | cpu s | system s | cores busy | peak MB | exit |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        wall = np.array([r["wall"] for r in rs])
        cpu = np.array([r["cpu"] for r in rs])
        system = np.array([r.get("sys", np.nan) for r in rs])
        print(f"| {name} | {np.median(wall):.2f} | {wall.min():.2f} - {wall.max():.2f} | {np.median(cpu):.2f} | "
              f"{np.median(system):.2f} | {np.median(cpu / wall):.2f} | {max(r['peak_mb'] for r in rs):.0f} | "
              f"{','.join(sorted({str(r['status']) for r in rs}))} |")
    staged = {n: rs for n, rs in runs.items() if all("stages" in r for r in rs)}
    if staged:
        keys = list(next(iter(staged.values()))[0]["stages"])
        print("\nthe pipeline's stages, median seconds (``Alignment.seconds``; ecc includes the background start, "
              "the pre-fit measure and the response's refit)\n")
        print("| stage | " + " | ".join(staged) + " |")
        print("|---|" + "---|" * len(staged))
        for key in keys:
            print(f"| {key} | " + " | ".join(f"{np.median([r['stages'].get(key, np.nan) for r in rs]):.2f}"
                                              for rs in staged.values()) + " |")
    if not args.no_peer:
        ours = np.median([r["seconds"] for r in runs["ours (bench_alignment --one)"]])
        peer = np.median([r["seconds"] for r in runs["sift+ecc (bench_alignment --one)"]])
        print(f"\nalign_pair {ours:.2f} s against SIFT + MAGSAC + stock ECC {peer:.2f} s (decoding included, imports "
              f"not; median of {args.runs}): ours takes {ours / peer:.2f}x the peer's time")
    if args.out:
        args.out.write_text(json.dumps({"pair": str(pair), "runs": runs}, indent=1, default=float))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
