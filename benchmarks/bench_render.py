"""Benchmark: seconds to render a 12 MP phone DNG with ckisp's default input, beside the plain rendering.

The raw: a 4032 x 3024 DNG written from a real raw (default ../shared/data/raw/Blackmagic.dng, its
mosaic repeated to 12 MP, its black / white levels, white balance and colour matrix kept), so the
decode is a real LibRaw decode of a 12 MP file.  Each part is what `isp-rig render` does, timed
in this process (best of --repeat, after a warm-up):

- decode: `alignment.rawio.read_raw` (LibRaw via rawpy, with the data checks);
- input stage: the packed raw shifted to one CFA phase (`learn.cfa_phase.to_rggb`) and brought into
  the default metadata input space `srgb` with the raw's own white balance and colour matrix
  (`learn.raw_space.raw_to_model_input`, the function `isp-rig render` calls);
- model: ckisp (raw variant, default arguments; the weights do not change the time) through the
  tiled renderer (`learn.infer.render`, tile 768), on --threads threads.

The peer is the phone's plain rendering from the same decoded raw (`rawio.raw_to_linear_rgb`:
bilinear demosaic, as-shot white balance, colour matrix, then the sRGB curve): what the raw
benchmark's first row renders.  Not timed: the interpreter's start-up and imports and the PNG
write (`isp-rig render` prints its own time without them).

    python benchmarks/bench_render.py
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import learn.models as lm  # noqa: E402
from alignment import rawio  # noqa: E402
from isp_rig.simulate import write_dng  # noqa: E402
from learn.infer import render  # noqa: E402
from learn.raw_space import raw_to_model_input  # noqa: E402

SIZE = (3024, 4032)  # (H, W) raw px: a 12 MP phone


def twelve_mp_dng(source: Path, path: Path) -> Path:
    """Write ``source``'s raw with its mosaic repeated (whole 2x2 cells) to ``SIZE`` as a DNG."""
    src = rawio.read_raw(source)
    reps = (-(-SIZE[0] // src.mosaic.shape[0]), -(-SIZE[1] // src.mosaic.shape[1]))
    mosaic = np.ascontiguousarray(np.tile(src.mosaic, reps)[:SIZE[0], :SIZE[1]])
    write_dng(path, dataclasses.replace(src, mosaic=mosaic, path=None))
    return path


def best_of(fn, repeat: int) -> tuple[float, object]:
    """(least seconds of ``repeat`` calls after one warm-up call, the last result)."""
    out = fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", type=Path, default=REPO.parent / "shared" / "data" / "raw" / "Blackmagic.dng")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tile", type=int, default=768)
    args = ap.parse_args()
    if not args.raw.is_file():
        ap.error(f"{args.raw}: no such raw")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        dng = twelve_mp_dng(args.raw, Path(tmp) / "phone_12mp.dng")
        t_decode, raw = best_of(lambda: rawio.read_raw(dng), args.repeat)
        t_input, (x, _) = best_of(lambda: raw_to_model_input(raw, "srgb", "rggb"), args.repeat)
        model = lm.create("ckisp").eval()
        t_model, y = best_of(lambda: render(model, x, tile=args.tile), args.repeat)
        t_plain, _ = best_of(lambda: rawio.linear_to_srgb(np.clip(rawio.raw_to_linear_rgb(raw), 0, 1)), args.repeat)
    ours = t_decode + t_input + t_model
    peer = t_decode + t_plain
    print(f"\n### Render a 12 MP DNG ({SIZE[1]} x {SIZE[0]}, {raw.cfa}, from {args.raw.name}), "
          f"{args.threads} threads, best of {args.repeat}\n")
    print("| method | decode s | input stage s | rendering s | total s | total / plain rendering |")
    print("|---|---|---|---|---|---|")
    print(f"| ckisp, `srgb` input, one CFA phase (out {y.shape[1]} x {y.shape[0]}) | {t_decode:.2f} | {t_input:.2f} | "
          f"{t_model:.2f} | {ours:.2f} | {ours / peer:.1f}x |")
    print(f"| phone plain rendering (demosaic, WB, colour matrix, sRGB) | {t_decode:.2f} | - | {t_plain:.2f} | "
          f"{peer:.2f} | 1.0x |")


if __name__ == "__main__":
    main()
