"""Capture benchmark: software overhead per paired shot and the trigger skew the
software itself adds, barrier firing (ours) next to firing the devices one
after the other (the peer method), same run, same virtual devices.

Devices: libgphoto2's virtual camera (real PTP) with an injected trigger
latency, and the emulated phone behind the watched-folder adapter with its
own latency. Every shot is written through the session (sha256, fsync).

    python benchmarks/bench_capture.py [--shots 20] [--dslr-latency 0.03] [--phone-latency 0.05]

Overhead per shot = shot wall time - the time the devices themselves took
(barrier: the slowest device's trigger + collect; sequential: their sum).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tqdm import tqdm


def run(mode: str, shots: int, dslr_latency: float, phone_latency: float, work: Path) -> dict[str, float]:
    """Median shot time, overhead and trigger skew (seconds) of ``shots`` shots in ``mode``."""
    from isp_rig.devices.virtual import virtual_devices
    from isp_rig.rig import Rig
    from isp_rig.session import Session, check_session

    devices, _ = virtual_devices(work / mode, "bench", dslr_latency_s=dslr_latency, phone_latency_s=phone_latency)
    session = Session.open(work / f"session-{mode}", {"name": "bench", "mode": mode})
    walls, overheads, skews = [], [], []
    with Rig(devices, mode=mode, collect_timeout_s=5.0) as rig:
        for _ in tqdm(range(shots), desc=mode, leave=False):
            start = time.perf_counter()
            record, _results = rig.shoot(session, "bench")
            wall = time.perf_counter() - start
            if record.status != "ok":
                raise SystemExit(f"{mode}: shot {record.shot_id} failed: {record.reason}")
            device_s = [e["trigger_call_s"] + e["collect_s"] for e in record.fired.values()]
            busy = max(device_s) if mode != "sequential" else sum(device_s)
            walls.append(wall)
            overheads.append(wall - busy)
            skews.append(record.skew["trigger_s"])
    if not check_session(work / f"session-{mode}").ok:
        raise SystemExit(f"{mode}: session check failed")
    return {"shot_s": statistics.median(walls), "overhead_s": statistics.median(overheads),
            "skew_s": statistics.median(skews), "skew_max_s": max(skews)}


def main() -> None:
    """Run both modes and print them side by side with the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, default=20)
    parser.add_argument("--dslr-latency", type=float, default=0.03)
    parser.add_argument("--phone-latency", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        work = Path(tmp)
        barrier = run("barrier", args.shots, args.dslr_latency, args.phone_latency, work)
        sequential = run("sequential", args.shots, args.dslr_latency, args.phone_latency, work)
    print(f"{args.shots} paired shots per mode, DSLR latency {args.dslr_latency * 1e3:.0f} ms, "
          f"phone latency {args.phone_latency * 1e3:.0f} ms (medians)")
    print(f"{'':24}{'barrier (ours)':>16}{'sequential':>14}{'ratio seq/ours':>16}")
    for key, label in (("shot_s", "shot time [ms]"), ("overhead_s", "software overhead [ms]"),
                       ("skew_s", "trigger skew [ms]"), ("skew_max_s", "trigger skew max [ms]")):
        ours, peer = barrier[key], sequential[key]
        ratio = f"{peer / ours:.1f}x" if ours > 0 else "-"
        print(f"{label:24}{ours * 1e3:16.2f}{peer * 1e3:14.2f}{ratio:>16}")


if __name__ == "__main__":
    main()
