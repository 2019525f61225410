"""Batch alignment throughput against the number of workers, in one run.

What is measured: the real command, ``isp-rig align batch SOURCE --out DS
--no-report --json`` run as a subprocess (interpreter start-up, imports, the
pool's or cluster's first-task warm-up, decoding, alignment and the dataset
writes all included), once per configuration:

- ``serial``: ``--workers 1`` (one worker process, OpenCV pinned to one
  thread): the peer every other row is divided by;
- ``pool-2``: ``--workers 2``, the default local process pool (forkserver);
- ``dask-2``: ``--scheduler ADDR`` against a ``distributed.LocalCluster`` of 2
  single-threaded worker processes, started before the timing (a cluster is
  assumed to be running already) and closed after it;
- ``dask-2-pinned``: the same, with ``cv2.setNumThreads(1)`` run in each Dask
  worker before the timing (``client.run``), the setting the local pool's
  initializer makes; ``process_pair`` itself does not set it, so plain
  ``dask-2`` runs OpenCV with its default thread count in each worker (the
  pinning imports cv2 in the workers before the timing: ~0.2 s head start).

The data are ``isp-rig simulate --pairs N`` pairs at the simulator's default
size (1024x768 phone DNG, 1536x1024 DSLR JPEG), generated once; every
configuration builds its own dataset folder from scratch, so no pair is skipped
by the batch's resume logic.  ``--no-report`` leaves out the batch report (a
serial step after the alignment, the same in every configuration).

Figures per configuration: wall seconds of the command, pairs/s, wall seconds
per pair, speed-up (serial wall / this wall), the batch's own seconds
(``run_batch``, without interpreter start-up), the median per-pair task seconds
(from pairs.jsonl: grows when workers compete for cores), the CPU seconds of
the process tree and CPU seconds / wall (the cores the run really got: other
work on the machine shows here and in the 1-min load average printed before
each run), peak RSS summed over the whole process tree (the CLI, its pool
workers and, for Dask, the cluster's scheduler, nannies and workers; sampled
every 0.2 s with psutil, or /proc when psutil is missing; shared pages count
once per process, so it is an upper bound), and the kept / rejected / failed counts (every row must do the same
work).  On a machine with C cores the ideal speed-up of 2 workers is min(2, C)x.

Run: ``nice -n 19 python benchmarks/bench_batch.py --pairs 8 --rev HEAD --out bench_batch.json``
(``--rev`` pins the code to a commit while the working tree is being edited;
without it the working tree is measured.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CONFIGS = ("serial", "pool-2", "dask-2", "dask-2-pinned")


def _tool(name: str) -> str:
    """The console script ``name`` of this interpreter's environment (else from PATH)."""
    local = BIN / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name}: not found next to {sys.executable} nor on PATH (pip install -e .)")
    return found


# ------------------------------------------------------------------ memory


def _children_proc(pid: int) -> list[int]:
    """Descendants of ``pid`` from /proc (the fallback when psutil is missing)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
                parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _stat_proc(pid: int) -> tuple[int, float]:
    """(RSS bytes, user + system CPU seconds) of ``pid`` from /proc; (0, 0) when it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0, 0.0


def tree_usage(roots: list[int]) -> dict[int, tuple[int, float]]:
    """pid -> (RSS bytes, CPU seconds so far) of the processes ``roots`` and all their descendants."""
    try:
        import psutil
    except ImportError:
        pids = set(roots)
        for r in roots:
            pids.update(_children_proc(r))
        return {p: _stat_proc(p) for p in pids}
    usage: dict[int, tuple[int, float]] = {}
    for r in roots:
        try:
            root = psutil.Process(r)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            continue
        for p in procs:
            if p.pid in usage:
                continue
            try:
                with p.oneshot():
                    cpu = p.cpu_times()
                    usage[p.pid] = (p.memory_info().rss, cpu.user + cpu.system)
            except psutil.Error:
                pass
    return usage


class TreeSampler:
    """Samples :func:`tree_usage` of ``roots`` every ``period_s`` in a thread.

    ``peak_rss`` is the largest summed RSS seen (bytes); ``cpu_s`` the CPU seconds the
    tree spent while sampled (each process's last sample minus its first, so a
    process that lives less than one period is missed; one born after the first
    sample counts from 0).
    """

    def __init__(self, roots: list[int], period_s: float = 0.2) -> None:
        self.roots, self.period_s, self.peak_rss = roots, period_s, 0
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._baseline = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        usage = tree_usage(self.roots)
        self.peak_rss = max(self.peak_rss, sum(rss for rss, _ in usage.values()))
        for pid, (_, cpu) in usage.items():
            self._first.setdefault(pid, cpu if self._baseline else 0.0)  # born during the run: from 0
            self._last[pid] = cpu
        self._baseline = False

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period_s)

    @property
    def cpu_s(self) -> float:
        return sum(self._last[p] - self._first[p] for p in self._last)

    def __enter__(self) -> "TreeSampler":
        self._sample()  # the baseline of processes alive before the timing (the Dask cluster)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------ dask cluster

_CLUSTER_SCRIPT = """
import sys
from distributed import LocalCluster
with LocalCluster(n_workers=int(sys.argv[1]), threads_per_worker=1, processes=True,
                  dashboard_address=None) as cluster:
    print(cluster.scheduler_address, flush=True)
    sys.stdin.read()   # runs until the benchmark closes stdin
"""


def _worker_threads() -> dict:
    """Run inside a Dask worker: the thread settings process_pair meets there."""
    import cv2

    return {"cv2_threads": cv2.getNumThreads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def _pin_opencv() -> None:
    """Run inside a Dask worker: one OpenCV thread (what batch.pin_threads does in every task since it was added)."""
    import cv2

    cv2.setNumThreads(1)


class DaskCluster:
    """A ``LocalCluster`` of ``n`` single-threaded worker processes in a child process
    (so its processes are a tree whose RSS can be sampled); ``address``, ``pid``, ``start_s``."""

    def __init__(self, n: int, env: dict[str, str], cwd: Path) -> None:
        self.n, self.env, self.cwd = n, env, cwd

    def __enter__(self) -> "DaskCluster":
        started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-c", _CLUSTER_SCRIPT, str(self.n)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=self.env, cwd=self.cwd)
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            self.proc.kill()
            raise SystemExit("the Dask LocalCluster did not start (is distributed installed?)")
        self.pid = self.proc.pid
        self.start_s = time.perf_counter() - started
        return self

    def worker_threads(self) -> list[dict]:
        """``cv2.getNumThreads()`` and OMP_NUM_THREADS in each worker (asked after the timing)."""
        from distributed import Client

        with Client(self.address) as client:
            return list(client.run(_worker_threads).values())

    def pin_opencv_threads(self) -> None:
        """``cv2.setNumThreads(1)`` in every worker, as the local pool's initializer does."""
        from distributed import Client

        with Client(self.address) as client:
            client.run(_pin_opencv)

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------------ one configuration


def run_config(name: str, pairs_dir: Path, ds_dir: Path, env: dict[str, str], workers: int | None = None,
               cluster: DaskCluster | None = None) -> dict:
    """Run ``isp-rig align batch`` once into a fresh ``ds_dir``; returns its figures."""
    if ds_dir.exists():
        shutil.rmtree(ds_dir)
    cmd = [_tool("isp-rig"), "align", "batch", str(pairs_dir), "--out", str(ds_dir), "--no-report", "--json"]
    cmd += ["--scheduler", cluster.address] if cluster else ["--workers", str(workers)]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ds_dir.parent)
    with TreeSampler([proc.pid] + ([cluster.pid] if cluster else [])) as sampler:
        out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name}: {' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    summary = json.loads(out)
    records = [json.loads(line) for line in (ds_dir / "pairs.jsonl").read_text().splitlines() if line.strip()]
    task_s = [r["seconds"] for r in records if "seconds" in r]
    n = summary["total"]
    return {
        "config": name, "command": " ".join(cmd), "pairs": n, "wall_s": wall, "batch_s": summary["seconds"],
        "pairs_per_s": n / wall, "s_per_pair": wall / n,
        "task_s_median": statistics.median(task_s) if task_s else None, "task_s_sum": sum(task_s),
        "cpu_s": sampler.cpu_s, "cores_used": sampler.cpu_s / wall, "load_1min_before": load_before,
        "load_1min_after": os.getloadavg()[0], "peak_rss_bytes": sampler.peak_rss, "kept": summary["kept"], "rejected": sum(summary["rejected"].values()),
        "failed": sum(summary["failed"].values()), "rejected_reasons": summary["rejected"],
        "failed_reasons": summary["failed"],
    }


def _print_table(rows: list[dict], cores: int) -> None:
    peer = rows[0]
    print(f"{peer['pairs']} simulator pairs (1024x768 phone DNG + 1536x1024 DSLR JPEG), "
          f"{cores} cores: the ideal speed-up of 2 workers is {min(2, cores)}x")
    print(f"{'config':14}{'wall s':>8}{'pairs/s':>9}{'s/pair':>8}{'speed-up':>10}{'batch s':>9}"
          f"{'task s med':>11}{'CPU s':>7}{'cores':>6}{'load':>6}{'peak RSS':>10}{'kept':>6}{'rej':>5}{'fail':>5}")
    for r in rows:
        speed = peer["wall_s"] / r["wall_s"]
        print(f"{r['config']:14}{r['wall_s']:8.1f}{r['pairs_per_s']:9.3f}{r['s_per_pair']:8.2f}{speed:9.2f}x"
              f"{r['batch_s']:9.1f}{r['task_s_median']:11.2f}{r['cpu_s']:7.0f}{r['cores_used']:6.2f}"
              f"{r['load_1min_before']:6.1f}{r['peak_rss_bytes'] / 2**20:7.0f} MB"
              f"{r['kept']:6d}{r['rejected']:5d}{r['failed']:5d}")
    if len({(r["kept"], r["rejected"], r["failed"]) for r in rows}) > 1:
        print("WARNING: the configurations did not keep / reject / fail the same number of pairs")


def main() -> None:
    """Simulate the pairs once, run every configuration, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8, help="Simulator pairs (default 8).")
    parser.add_argument("--seed", type=int, default=0, help="Simulator seed.")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"Comma-separated subset of {', '.join(CONFIGS)} (serial always runs, first).")
    parser.add_argument("--workdir", type=Path, help="Keep the pairs and datasets here (default: a temp folder, "
                        "removed at the end).  Pairs already simulated there are reused.")
    parser.add_argument("--out", type=Path, help="Write the results as JSON to this file.")
    parser.add_argument("--rev", help="Benchmark this git revision of the code (e.g. HEAD), exported into the "
                        "workdir and put first on PYTHONPATH, instead of the working tree (which may change "
                        "while the benchmark runs).")
    args = parser.parse_args()
    wanted = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(wanted) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs: {', '.join(sorted(unknown))}")
    configs = ["serial"] + [c for c in wanted if c != "serial"]

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench-batch-")
    work = args.workdir or Path(tmp.name)
    try:
        work.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        code = "working tree " + str(REPO)
        if args.rev:
            snapshot = work / "code"
            if snapshot.exists():
                shutil.rmtree(snapshot)
            snapshot.mkdir()
            sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", args.rev], check=True, capture_output=True,
                                 text=True).stdout.strip()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "alignment", "isp_rig", "learn"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(snapshot)], input=archive, check=True)
            env["PYTHONPATH"] = os.pathsep.join([str(snapshot)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                    else []))
            sys.path.insert(0, str(snapshot))
            code = f"git {args.rev} = {sha[:12]}"
        print(f"code: {code}", flush=True)
        pairs_dir = work / "pairs"
        have = sorted(p.name for p in pairs_dir.glob("pair_*") if (p / "truth.json").is_file()) \
            if pairs_dir.is_dir() else []
        if len(have) != args.pairs:
            if pairs_dir.exists():
                shutil.rmtree(pairs_dir)
            started = time.perf_counter()
            subprocess.run([_tool("isp-rig"), "simulate", "--out", str(pairs_dir), "--pairs", str(args.pairs),
                            "--seed", str(args.seed)], check=True, env=env, cwd=work)
            print(f"simulated {args.pairs} pairs in {time.perf_counter() - started:.1f} s", flush=True)

        from alignment import batch

        jobs = batch.find_pairs(pairs_dir)
        per_pair = batch.estimate_pair_memory(jobs[0])
        print(f"default_workers for this batch: {batch.default_workers(jobs)} (cores {cores}, "
              f"per-pair memory estimate {per_pair / 2**20:.0f} MB, "
              f"available {batch.available_memory_bytes() / 2**30:.1f} GB)", flush=True)

        rows = []
        for name in configs:
            print(f"running {name} ...", flush=True)
            if name.startswith("dask-2"):
                with DaskCluster(2, env, work) as cluster:
                    if name == "dask-2-pinned":
                        cluster.pin_opencv_threads()
                    rows.append(run_config(name, pairs_dir, work / f"ds-{name}", env, cluster=cluster))
                    rows[-1]["cluster_start_s"] = cluster.start_s
                    rows[-1]["worker_threads"] = cluster.worker_threads()
            else:
                rows.append(run_config(name, pairs_dir, work / f"ds-{name}", env,
                                       workers=1 if name == "serial" else 2))
            print(f"  {rows[-1]['wall_s']:.1f} s", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()

    print()
    _print_table(rows, cores)
    for r in rows:
        if "cluster_start_s" in r:
            print(f"{r['config']}: LocalCluster start-up {r['cluster_start_s']:.1f} s (not in the wall time); "
                  f"worker threads after the run: {r['worker_threads']}")
    print("wall = the whole command; batch = run_batch's own seconds; task s med = median seconds of one pair "
          "inside a worker; CPU s = CPU seconds of the process tree, cores = CPU s / wall; load = 1-min load "
          "average before the run; peak RSS summed over the process tree")
    if args.out:
        args.out.write_text(json.dumps({"cores": cores, "seed": args.seed, "code": code, "rows": rows}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
