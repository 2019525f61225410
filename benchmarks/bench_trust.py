"""Per-pixel trust maps against the simulator's ground truth: isp-rig's trust map and the peers, in one run.

Data: ``isp-rig simulate`` pairs with all four real-world effects (``--parallax
--motion --clipping --shading``) at the simulator's default size (phone raw
1024x768 DNG, DSLR 1536x1024 JPEG), ``--pairs-per-source`` pairs (default 3) from
each source of ``--sources`` (default: the twelve below); within each half the
pairs alternate between a 60 mm and a 120 mm baseline (half the pairs each), so
the parallax ranges wider.  ``--distortion`` adds the phone lens's radial
distortion to every pair (``isp-rig simulate --distortion``; up to about 80 px
at a 12 MP frame's corners), so the trust map of a lens model is scored: the
part of the frame its tiles leave to the lens model's extrapolation.  The
sources are split into two fixed halves, reported separately (and together):
``tune`` (every source the trust thresholds were looked at on while they were
developed) and ``holdout`` (sources nobody looked at before this benchmark ran;
the split follows what was seen, so it is 8 to 4):

- tune: ``procedural`` (source=None), ``blackmagic`` (raw/Blackmagic.dng),
  ``graf`` (pairs/graf/img1.png), ``boston`` (pairs/homogr/BostonA.jpg), ``kodak``
  (raw/RAW_KODAK_DC50.KDC), ``eiffel`` (pairs/homogr/EiffelA.png),
  ``capital-region`` (pairs/homogr/CapitalRegionA.jpg), ``phone-hd0``
  (phone_vs_dslr/hd/0.png, a real phone photo);
- holdout: ``brugge-tower`` (pairs/homogr/BruggeTowerA.png), ``brugge-square``
  (pairs/homogr/BruggeSquareA.jpg), ``extreme-zoom`` (pairs/homogr/ExtremeZoomA.png),
  ``phone-hd1`` (phone_vs_dslr/hd/1.png).
Pair k of source s is ``isp-rig simulate --pairs 1 --seed SEED --source FILE
--parallax --motion --clipping --shading --baseline-mm B`` with the SEED and B
written in the output (``pairs[].sim_seed``, ``baseline_mm``), so any pair can be
re-made on its own, except that the foreground objects are cut from the other
image sources of the same half (``pairs[].materials``; as ``isp-rig simulate``
cuts them from its other ``--source`` files), never from the pair's own source,
and never from the other half (procedural pairs keep procedural objects).

Alignment: one dataset build (``alignment.batch.run_batch(..., save_maps=True)``,
what ``isp-rig align batch SIMDIR --save-maps`` runs) with the default options;
every method below scores the pairs of that same build, against ``truth_map.npy``
and ``truth_clipped.png``, with ``alignment.scoring.trust_scores``.  A pair the
verdict rejected (or that failed) has no target: every method but the oracle
trusts nothing in it (counted in ``rej``).

Methods:

- ``isp-rig`` (ours): the dataset's ``mask.png`` and ``map.npy`` (the map the
  target was sampled through);
- ``frame-only``: the behaviour before the trust map: every px whose mapped DSLR
  point lies inside the DSLR image with a 1 px margin is trusted, with the global
  model's map (``Alignment.from_json(record['alignment']).map_points`` on the full
  grid: homography and smooth field).  The peers below use the same map; where
  ``map.npy`` differs from it (an alignment that samples some px through models
  of their own, e.g. recovered layers), the peers' target is the DSLR warped again
  through the global map (``alignment.dataset.warp_to_phone_grid``; not timed),
  else the dataset's ``target.png``;
- ``patch-filter``: the patch filter released with the SIGGRAPH 2022 dataset:
  128x128 phone px patches, optical flow from the phone rendering to the target,
  a patch is kept (its in-frame px trusted) when its mean flow magnitude is at
  most 1.2 px.  OpenCV DIS (medium preset) stands in for PWC-Net;
- ``pynet-window``: the Zurich raw-to-RGB (PyNET) filter: windows kept when the
  normalised cross-correlation of the phone rendering and the target over the
  window is at least 0.9; PyNET cut 448 px windows from ~4000 px wide images, so
  the window here is 448/4000 of the phone raw width, rounded to an even size
  (114 px at 1024 px wide);
- ``oracle``: trusted = finite truth and not clipped, map = the truth: must score
  precision 1.0 (a check of the scoring).

The phone rendering of both peers: the raw bilinearly demosaicked, white-balanced
and colour-corrected (``rawio.raw_to_linear_rgb``), its luminance over its 99.5th
percentile, sRGB-encoded; the target's luminance (linearised, then encoded the
same way); each stretched between its own 1st and 99th percentiles over the
in-frame px to 8-bit grey.  Flow and NCC are computed on these two images (full
phone resolution).  Neither peer corrects the phone's colour shading: they never
did.

Figures per method, from ``trust_scores``: precision at 0.5 px and at 1 px
(trusted px within that of the truth; a trusted px the DSLR does not see counts
as wrong), coverage (finite-truth, unclipped px trusted and within 0.5 px, over
all such px), clipped trusted (share of clipped px that are trusted), per pair;
summarised per half, overall and per source as median, p10, p90 over pairs (a
pair that trusts nothing has no precision and is left out of the precision
statistics; the bad tail of precision and coverage is p10, of clipped trusted
p90) and pooled (all px of all pairs together: a pair that trusts nothing adds
nothing to precision and lowers coverage).  Seconds per pair: ours = the record's
``seconds`` (decoding, alignment with its trust stage, dataset writes); a peer =
the same record's seconds plus its own filter time (rendering, flow or NCC, the
decision; not the file reads); frame-only = the record's seconds.  Ratio columns:
ours / peer of the pooled precision and coverage.

Planar section (``--planar also`` (default) | ``only`` | ``no``): the same
sources and seeds without the new effects (plain ``isp-rig simulate`` pairs):
ours must lose nothing there: the share of in-frame px (map inside the DSLR frame
with a 1 px margin) that stay trusted (target >= 98 %), and the median corner
error (DSLR px, four phone raw corners, ``Alignment.map_points`` against
``isp_rig.simulate.load_truth(pair).map_points``).

Work folder (``--work``, default bench-out/trust): pairs already simulated there
are reused (per pair folder), dataset builds resume (finished pairs are skipped);
``--rebuild`` deletes the dataset folders and aligns again (after a code change:
the script warns when the package code differs from the code that built a dataset
or simulated the pairs).  Sizes and seed name a sub-folder of their own.  ``--quick``: 1 pair per
source at phone 768x576 / DSLR 1152x768 (a smoke run, a separate sub-folder).

Run: ``nice -n 19 python benchmarks/bench_trust.py --out bench_trust.json``
(quick: ``nice -n 19 python benchmarks/bench_trust.py --quick --out bench_trust_quick.json``)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import hashlib
import importlib
import json
import multiprocessing
import shutil
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"

#: name -> (path under ../shared/data or None for the procedural scene, half).  ``tune``: every
#: source the trust thresholds were looked at on while they were developed; ``holdout``:
#: sources nobody looked at before the benchmark ran (the split is by what was seen, so
#: it is 8 to 4, not half and half)
SOURCES = {
    "procedural": (None, "tune"),
    "blackmagic": ("raw/Blackmagic.dng", "tune"),
    "graf": ("pairs/graf/img1.png", "tune"),
    "boston": ("pairs/homogr/BostonA.jpg", "tune"),
    "kodak": ("raw/RAW_KODAK_DC50.KDC", "tune"),
    "eiffel": ("pairs/homogr/EiffelA.png", "tune"),
    "capital-region": ("pairs/homogr/CapitalRegionA.jpg", "tune"),
    "phone-hd0": ("phone_vs_dslr/hd/0.png", "tune"),
    "brugge-tower": ("pairs/homogr/BruggeTowerA.png", "holdout"),
    "brugge-square": ("pairs/homogr/BruggeSquareA.jpg", "holdout"),
    "extreme-zoom": ("pairs/homogr/ExtremeZoomA.png", "holdout"),
    "phone-hd1": ("phone_vs_dslr/hd/1.png", "holdout"),
}
DEFAULT_SOURCES = tuple(SOURCES)
HALVES = ("tune", "holdout")
BASELINES_MM = (60.0, 120.0)

METHODS = ("isp-rig", "frame-only", "patch-filter", "pynet-window", "oracle")
LABELS = {"isp-rig": "isp-rig (ours)", "frame-only": "frame-only", "patch-filter": "published patch",
          "pynet-window": "PyNET window", "oracle": "oracle"}
PEERS = ("frame-only", "patch-filter", "pynet-window")

PATCH_PX = 128  # published patch filter: patch side (phone full-res px)
PATCH_MAX_FLOW = 1.2  # ... keep when the mean flow magnitude is at most this (px)
PYNET_WINDOW_PER_PX = 448 / 4000  # PyNET: 448 px windows on ~4000 px wide images
PYNET_MIN_NCC = 0.9

METRICS = ("precision_05", "precision_1", "coverage", "clipped_trusted")
SIM_FILES = ("phone.dng", "dslr.jpg", "truth.json")
LAYERED_FILES = ("truth_map.npy", "truth_clipped.png")


# ------------------------------------------------------------------ pairs


def pynet_window(width: int) -> int:
    """The PyNET window side for a phone raw ``width`` px wide (even, at least 16)."""
    return max(16, 2 * int(round(PYNET_WINDOW_PER_PX * width / 2)))


def sim_seed(seed: int, source: str, index: int) -> int:
    """The ``isp-rig simulate --seed`` of pair ``index`` of ``source`` (stable across source lists)."""
    return seed * 1_000_000 + (zlib.crc32(source.encode()) % 10_000) * 100 + index


def plan_pairs(sources: list[str], per_source: int, seed: int, layered: bool) -> list[dict]:
    """One dict per pair: id, source, half, index, sim_seed, baseline_mm, layered, materials.

    Within each half, source number k's pair i has baseline ``BASELINES_MM[(k + i) % 2]``:
    with an even number of sources or pairs per source, half the pairs at each.
    materials: the other image sources of the same half, whose crops texture the
    foreground objects (as ``isp-rig simulate`` does with several sources; a half's
    material never appears in the other half)."""
    plan = []
    for half in HALVES:
        in_half = [s for s in sources if SOURCES[s][1] == half]
        for k, name in enumerate(in_half):
            materials = [s for s in in_half if s != name and SOURCES[s][0]] if SOURCES[name][0] else []
            for i in range(per_source):
                base = BASELINES_MM[(k + i) % 2]
                pid = f"{name}-b{int(base):03d}-{i:02d}" if layered else f"{name}-{i:02d}"
                plan.append({"id": pid, "source": name, "half": half, "index": i,
                             "sim_seed": sim_seed(seed, name, i), "baseline_mm": base if layered else None,
                             "layered": layered, "materials": materials if layered else []})
    return plan


def pair_complete(folder: Path, layered: bool) -> bool:
    names = SIM_FILES + (LAYERED_FILES if layered else ())
    return all((folder / n).is_file() for n in names)


@functools.lru_cache(maxsize=None)
def _load_source(name: str) -> np.ndarray:
    """A source image as the simulator reads it, once per worker."""
    from isp_rig import simulate as sim

    return sim.load_source(SHARED / SOURCES[name][0])


def simulate_one(pair: dict, out_dir: str, phone_size: tuple[int, int], dslr_size: tuple[int, int],
                 distortion: bool = False) -> str:
    """Simulate one pair as ``isp-rig simulate --seed S [--source F] [effects] [--distortion]`` would
    with the pair's materials as the other sources (the pair is written as ``out_dir/<id>`` instead
    of ``pair_0000``); runs in a worker."""
    from alignment.batch import pin_threads
    from isp_rig import simulate as sim

    pin_threads()
    rel = SOURCES[pair["source"]][0]
    path = SHARED / rel if rel else None
    src = sim.load_source(path) if path is not None else None
    opt = sim.SimOptions(phone_size=phone_size, dslr_size=dslr_size, distortion=distortion,
                         supersample=2 if dslr_size[0] * dslr_size[1] <= 8_000_000 else 1)
    if pair["layered"]:
        opt.parallax = opt.motion = opt.clipping = opt.shading = True
        opt.baseline_mm = pair["baseline_mm"]
    pair_seed = int(np.random.SeedSequence([pair["sim_seed"], 0]).generate_state(1)[0])
    materials = [_load_source(m) for m in pair["materials"]]
    sp = sim.simulate_pair(pair_seed, src, opt, sim.PhoneModel(bits=10), pair_id=pair["id"],
                           materials=materials or None)
    if path is not None:
        sp.truth.facts["source"] = path.name
    return str(sim.write_pair(sp, out_dir))


def ensure_simulated(plan: list[dict], out_dir: Path, phone_size, dslr_size, workers: int,
                     distortion: bool = False) -> tuple[int, float]:
    """Simulate the pairs of ``plan`` whose folder is not complete (``distortion``: with the phone
    lens, :func:`simulate_one`); returns (made, seconds)."""
    todo = [p for p in plan if not pair_complete(out_dir / p["id"], p["layered"])]
    started = time.perf_counter()
    if todo:
        from tqdm import tqdm

        out_dir.mkdir(parents=True, exist_ok=True)
        with cf.ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo))),
                                    mp_context=multiprocessing.get_context("forkserver")) as pool:
            futs = [pool.submit(simulate_one, p, str(out_dir), phone_size, dslr_size, distortion) for p in todo]
            for f in tqdm(cf.as_completed(futs), total=len(futs), desc="simulate", unit="pair"):
                f.result()
    return len(todo), time.perf_counter() - started


def package_root(name: str) -> Path:
    """The folder of the package ``name`` as imported: an editable install or PYTHONPATH
    may import another checkout than the one this script lies in (run from a second
    worktree without PYTHONPATH, this benchmark measured the editable install's code)."""
    return Path(importlib.import_module(name).__file__).resolve().parent


def code_hash(folders: tuple[str, ...]) -> str:
    """sha256 of the package sources that decide a build's results (the packages as
    imported, :func:`package_root`)."""
    h = hashlib.sha256()
    for folder in folders:
        root = package_root(folder)
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def check_code(folder: Path, what: str, folders: tuple[str, ...], reset: bool) -> str | None:
    """Record the package code hash beside ``folder`` (``<folder>.code.json``: a dataset folder
    holds only what the dataset writer put there); a warning when it differs from the stored one."""
    now = code_hash(folders)
    stamp = folder.with_name(folder.name + ".code.json")
    folder.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(stamp.read_text()).get("code") if stamp.is_file() and not reset else None
    if old is None:
        stamp.write_text(json.dumps({"code": now, "packages": list(folders)}))
        return None
    if old != now:
        how = "delete the folder to re-simulate" if what == "simulated pairs" else "--rebuild re-aligns"
        return (f"WARNING: {folder} was made by other {'/'.join(folders)} code ({old} vs now {now}); "
                f"its {what} are reused as they are ({how})")
    return None


def build_dataset(plan: list[dict], sim_dir: Path, ds_dir: Path, workers: int, rebuild: bool) -> tuple[dict, dict]:
    """Align the pairs of ``plan`` into ``ds_dir`` (resumed); returns (records by id, run facts)."""
    from alignment import batch
    from alignment.dataset import latest_records

    if rebuild and ds_dir.exists():
        shutil.rmtree(ds_dir)
    wanted = {p["id"] for p in plan}
    jobs = [j for j in batch.find_pairs(sim_dir) if j.pair_id in wanted]
    started = time.perf_counter()
    summary = batch.run_batch(jobs, ds_dir, workers=workers, save_maps=True, progress=True)
    records = latest_records(ds_dir)
    return {k: records[k] for k in wanted if k in records}, {
        "aligned_now": summary.total - summary.skipped, "reused": summary.skipped,
        "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------ peers


def _stretch_u8(grey: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float [0, 1], uint8) of ``grey`` stretched between its 1st and 99th percentiles over ``inside``."""
    vals = grey[inside] if inside.any() else grey.ravel()
    lo, hi = np.percentile(vals, [1, 99])
    f = np.clip((grey - lo) / max(hi - lo, 1e-9), 0.0, 1.0).astype(np.float32)
    f[~inside] = 0.5  # outside the DSLR frame: flat grey
    return f, (f * 255 + 0.5).astype(np.uint8)


def render_pair(raw, target: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The peers' view of a pair: phone rendering and target as comparable grey images.

    Returns (phone float, phone uint8, target float, target uint8), each (H, W)."""
    from alignment import rawio

    lum = rawio.raw_to_linear_rgb(raw, resolution="full") @ rawio.LUMA_WEIGHTS
    ref = float(np.percentile(lum[inside] if inside.any() else lum, 99.5))
    phone = rawio.linear_to_srgb(np.clip(lum / max(ref, 1e-6), 0.0, 1.0))
    tgt = rawio.linear_to_srgb(rawio.srgb_to_linear(target) @ rawio.LUMA_WEIGHTS)
    pf, pu = _stretch_u8(phone, inside)
    tf, tu = _stretch_u8(tgt, inside)
    return pf, pu, tf, tu


def _blocks(h: int, w: int, side: int):
    for y0 in range(0, h, side):
        for x0 in range(0, w, side):
            yield slice(y0, min(h, y0 + side)), slice(x0, min(w, x0 + side))


def patch_filter(phone_u8: np.ndarray, target_u8: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Published patch filter: DIS flow (in place of PWC-Net), 128 px patches, mean |flow| <= 1.2 px."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(phone_u8, target_u8, None)
    mag = np.hypot(flow[..., 0], flow[..., 1])
    trusted = np.zeros(inside.shape, bool)
    for ys, xs in _blocks(*inside.shape, PATCH_PX):
        sel = inside[ys, xs]
        if sel.any() and float(mag[ys, xs][sel].mean()) <= PATCH_MAX_FLOW:
            trusted[ys, xs] = sel
    return trusted


def pynet_filter(phone_f: np.ndarray, target_f: np.ndarray, inside: np.ndarray, window: int) -> np.ndarray:
    """PyNET window filter: windows whose NCC (phone rendering vs target) is at least 0.9."""
    trusted = np.zeros(inside.shape, bool)
    for ys, xs in _blocks(*inside.shape, window):
        sel = inside[ys, xs]
        if sel.sum() < 16:
            continue
        a = phone_f[ys, xs][sel].astype(np.float64)
        b = target_f[ys, xs][sel].astype(np.float64)
        a -= a.mean()
        b -= b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        if den > 0 and (a * b).sum() / den >= PYNET_MIN_NCC:
            trusted[ys, xs] = sel
    return trusted


def global_map(alignment, shape: tuple[int, int], rows: int = 256) -> np.ndarray:
    """(H, W, 2) float32 DSLR (x, y) of every phone px through ``alignment.map_points``
    (the global model: homography and smooth field), as the dataset's warp computes it."""
    h, w = shape
    out = np.empty((h, w, 2), np.float32)
    xs = np.arange(w, dtype=np.float64)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        gx, gy = np.meshgrid(xs, np.arange(r0, r1, dtype=np.float64))
        out[r0:r1] = alignment.map_points(np.stack([gx.ravel(), gy.ravel()], axis=1)).reshape(r1 - r0, w, 2)
    return out


def in_frame(mapped: np.ndarray, dslr_size) -> np.ndarray:
    """The mapped DSLR point lies inside the DSLR image with a 1 px margin (as the dataset's warp)."""
    wd, hd = dslr_size
    mx, my = mapped[..., 0], mapped[..., 1]
    return (mx >= 1) & (mx <= wd - 2) & (my >= 1) & (my <= hd - 2)


# ------------------------------------------------------------------ scoring


def score(mapped, trusted, truth, clipped) -> dict:
    """``trust_scores`` plus the px counts that pool it over pairs."""
    from alignment.scoring import trust_scores

    s = trust_scores(mapped, trusted, truth, clipped)
    usable = np.isfinite(truth[..., 0]) & ~clipped
    s.update(n_px=int(trusted.size), n_trusted=int(trusted.sum()), n_usable=int(usable.sum()),
             n_clipped=int(clipped.sum()))
    return s


def score_layered(pair: dict, record: dict | None, sim_dir: Path, ds_dir: Path, window: int) -> dict:
    """Every method on one pair: {method: scores + seconds}."""
    from alignment import rawio
    from alignment.dataset import warp_to_phone_grid
    from alignment.pipeline import Alignment
    from alignment.scoring import load_truth_map

    folder = sim_dir / pair["id"]
    truth, clipped = load_truth_map(folder)
    h, w = truth.shape[:2]
    out = {"oracle": {**score(truth, np.isfinite(truth[..., 0]) & ~clipped, truth, clipped),
                      "seconds": 0.0, "filter_seconds": 0.0}}
    status = (record or {}).get("status", "missing")
    if status != "ok":
        nothing = np.zeros((h, w), bool)
        zero_map = np.zeros((h, w, 2), np.float32)
        for m in METHODS[:-1]:
            out[m] = {**score(zero_map, nothing, truth, clipped), "seconds": (record or {}).get("seconds"),
                      "filter_seconds": 0.0, "status": status}
        return out
    files = {k: ds_dir / v for k, v in record["files"].items()}
    mapped = np.load(files["map"])
    mask = cv2.imread(str(files["mask"]), cv2.IMREAD_UNCHANGED) > 0
    raw = rawio.read_raw(folder / "phone.dng")
    secs = float(record["seconds"])
    out["isp-rig"] = {**score(mapped, mask, truth, clipped), "seconds": secs, "filter_seconds": 0.0}

    # the peers: the global model's map (homography + smooth field), and a target sampled through it
    alignment = Alignment.from_json(record["alignment"])
    gmap = global_map(alignment, (h, w))
    differs = float(np.nanmax(np.abs(gmap - mapped)))
    if differs <= 1e-3:  # map.npy is the global map: the dataset's target is the peers' target
        target = cv2.imread(str(files["target"]), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float32) / 65535.0
        peer_target = "target.png"
    else:  # the dataset sampled some px through other models (recovered layers): warp again, globally
        dslr = rawio.read_any(folder / "dslr.jpg")
        dslr_rgb = dslr.rgb if isinstance(dslr, rawio.RgbImage) else rawio.linear_to_srgb(
            rawio.raw_to_linear_rgb(dslr))
        target = warp_to_phone_grid(dslr_rgb, alignment.map_points, (h, w)).target
        peer_target = "re-warped through the global model"
    out["isp-rig"].update(map_vs_global_max_px=differs, layers=len(record["alignment"].get("layers") or []))
    inside = in_frame(gmap, record["alignment"]["dslr_size"])
    t0 = time.perf_counter()
    frame = inside.copy()
    t_frame = time.perf_counter() - t0
    out["frame-only"] = {**score(gmap, frame, truth, clipped), "seconds": secs + t_frame, "filter_seconds": t_frame}
    t0 = time.perf_counter()
    pf, pu, tf, tu = render_pair(raw, target, inside)
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    patches = patch_filter(pu, tu, inside)
    t_patch = t_render + time.perf_counter() - t0
    out["patch-filter"] = {**score(gmap, patches, truth, clipped), "seconds": secs + t_patch,
                           "filter_seconds": t_patch, "target": peer_target}
    t0 = time.perf_counter()
    windows = pynet_filter(pf, tf, inside, window)
    t_win = t_render + time.perf_counter() - t0
    out["pynet-window"] = {**score(gmap, windows, truth, clipped), "seconds": secs + t_win,
                           "filter_seconds": t_win, "target": peer_target}
    for m in METHODS[:-1]:
        out[m]["status"] = "ok"
    ours_pkg = record.get("truth_trust")
    if ours_pkg is not None:
        diff = max(abs(ours_pkg[k] - out["isp-rig"][k]) for k in METRICS
                   if np.isfinite(ours_pkg[k]) and np.isfinite(out["isp-rig"][k]))
        out["isp-rig"]["record_truth_trust_diff"] = float(diff)
    return out


def _q(values: list[float], p: float) -> float | None:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    return float(np.percentile(v, p)) if v.size else None


def summarise(rows: list[dict], method: str) -> dict:
    """Median / p10 / p90 over pairs and pooled values of one method over ``rows`` (per-pair rows)."""
    sc = [r["scores"][method] for r in rows]
    out = {"pairs": len(sc), "rejected": sum(s.get("status") == "rejected" for s in sc),
           "failed": sum(s.get("status") not in (None, "ok", "rejected") for s in sc),
           "trust_nothing": sum(s["n_trusted"] == 0 for s in sc)}
    if method != "oracle":
        out["not_kept"] = {r["id"]: f"{r['status']}: {r.get('reason')}" for r in rows if r["status"] != "ok"}
    for k in METRICS + ("trusted", "seconds", "filter_seconds"):
        vals = [s.get(k) for s in sc]
        out[k] = {"median": _q(vals, 50), "p10": _q(vals, 10), "p90": _q(vals, 90),
                  "n": sum(v is not None and np.isfinite(v) for v in vals)}
    nt = sum(s["n_trusted"] for s in sc)
    nu = sum(s["n_usable"] for s in sc)
    nc = sum(s["n_clipped"] for s in sc)
    npx = sum(s["n_px"] for s in sc)
    for k in ("precision_05", "precision_1"):
        out[k]["pooled"] = sum(s[k] * s["n_trusted"] for s in sc if s["n_trusted"]) / nt if nt else None
    out["coverage"]["pooled"] = sum(s["coverage"] * s["n_usable"] for s in sc) / nu if nu else None
    out["clipped_trusted"]["pooled"] = sum(s["clipped_trusted"] * s["n_clipped"] for s in sc) / nc if nc else None
    out["trusted"]["pooled"] = nt / npx if npx else None
    return out


def _finite(obj):
    """``obj`` with NaN / inf floats as None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def add_ratios(summary: dict) -> None:
    """ours / peer for the pooled and median precision and coverage, in each peer's entry."""
    ours = summary["isp-rig"]
    for peer in PEERS:
        summary[peer]["ours_over_peer"] = {
            f"{k}_{stat}": _ratio(ours[k][stat], summary[peer][k][stat])
            for k in ("precision_05", "precision_1", "coverage") for stat in ("pooled", "median")}


# ------------------------------------------------------------------ planar


def score_planar(pair: dict, record: dict | None, sim_dir: Path, ds_dir: Path) -> dict:
    from alignment.pipeline import Alignment
    from isp_rig import simulate as sim

    status = (record or {}).get("status", "missing")
    row = {"status": status, "reason": (record or {}).get("reason"), "seconds": (record or {}).get("seconds")}
    truth = sim.load_truth(sim_dir / pair["id"])
    w, h = truth.phone_size
    if status != "ok":
        row.update(in_frame_trusted=0.0, n_in_frame=None, corner_median=None, grid_trusted=0, grid_precision_05=None,
                   grid_worst_trusted_px=None)
        return row
    mapped = np.load(ds_dir / record["files"]["map"])
    mask = cv2.imread(str(ds_dir / record["files"]["mask"]), cv2.IMREAD_UNCHANGED) > 0
    inside = in_frame(mapped, record["alignment"]["dslr_size"])
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
    err = np.linalg.norm(Alignment.from_json(record["alignment"]).map_points(corners) - truth.map_points(corners),
                         axis=1)
    row.update(in_frame_trusted=float((mask & inside).sum() / max(int(inside.sum()), 1)),
               n_in_frame=int(inside.sum()), n_in_frame_trusted=int((mask & inside).sum()),
               corner_median=float(np.median(err)), corner_max=float(err.max()),
               dropped=record.get("dropped", {}), **grid_precision(truth.grid, mapped, mask & inside))
    return row


def grid_precision(grid: np.ndarray, mapped: np.ndarray, trusted: np.ndarray, tol_px: float = 0.5) -> dict:
    """The trusted px of a planar pair against its truth grid ((N, 4): phone x, y at whole
    px, their DSLR x, y): how many grid points the trust mask ((h, w) bool) keeps, the
    share of those whose mapped DSLR point (``mapped``, (h, w, 2)) lies within ``tol_px``
    of the truth, and the largest error among them (DSLR px).  Planar pairs have no truth
    map; their grid (every 55 px at the default size) is where a lens model's
    extrapolation past its tiles shows (``--distortion``)."""
    xi, yi = np.rint(grid[:, 0]).astype(int), np.rint(grid[:, 1]).astype(int)
    h, w = trusted.shape
    ok = (xi >= 0) & (yi >= 0) & (xi < w) & (yi < h)
    xi, yi, truth = xi[ok], yi[ok], grid[ok, 2:]
    keep = trusted[yi, xi]
    err = np.linalg.norm(mapped[yi, xi].astype(np.float64) - truth, axis=1)[keep]
    return {"grid_trusted": int(keep.sum()),
            "grid_precision_05": float(np.mean(err <= tol_px)) if err.size else None,
            "grid_worst_trusted_px": float(err.max()) if err.size else None}


def summarise_planar(rows: list[dict]) -> dict:
    kept = [r for r in rows if r["status"] == "ok"]
    fr = [r["in_frame_trusted"] for r in rows]
    n_in = sum(r["n_in_frame"] for r in kept)
    drops: dict[str, float] = {}
    for r in kept:
        for k, v in r.get("dropped", {}).items():
            drops[k] = drops.get(k, 0.0) + v / len(kept)
    return {
        "pairs": len(rows), "rejected": sum(r["status"] == "rejected" for r in rows),
        "not_kept": [{"id": r["id"], "status": r["status"], "reason": r["reason"]}
                     for r in rows if r["status"] != "ok"],
        "failed": sum(r["status"] not in ("ok", "rejected") for r in rows),
        "in_frame_trusted": {"median": _q(fr, 50), "p10": _q(fr, 10), "min": min(fr) if fr else None,
                             "pooled_kept": sum(r["n_in_frame_trusted"] for r in kept) / n_in if n_in else None,
                             "pairs_at_least_98": sum(f >= 0.98 for f in fr)},
        "corner_median_px": {"median": _q([r["corner_median"] for r in kept], 50),
                             "p90": _q([r["corner_median"] for r in kept], 90),
                             "max": max((r["corner_median"] for r in kept), default=None)},
        "grid_precision_05": {
            "median": _q([r["grid_precision_05"] for r in kept if r.get("grid_precision_05") is not None], 50),
            "min": min((r["grid_precision_05"] for r in kept if r.get("grid_precision_05") is not None), default=None),
            "pooled_kept": (sum(r["grid_precision_05"] * r["grid_trusted"] for r in kept if r.get("grid_trusted"))
                            / max(sum(r.get("grid_trusted") or 0 for r in kept), 1)) if kept else None,
            "worst_px": max((r["grid_worst_trusted_px"] for r in kept if r.get("grid_worst_trusted_px") is not None),
                            default=None)},
        "seconds": {"median": _q([r["seconds"] for r in rows], 50), "p90": _q([r["seconds"] for r in rows], 90)},
        "dropped_mean_kept": {k: round(v, 5) for k, v in sorted(drops.items(), key=lambda kv: -kv[1])},
    }


# ------------------------------------------------------------------ printing


def _f(v, width: int = 6, digits: int = 3) -> str:
    return f"{'-':>{width}}" if v is None or not np.isfinite(v) else f"{v:{width}.{digits}f}"


def print_group(name: str, summary: dict, sources: list[str]) -> None:
    n = summary["isp-rig"]["pairs"]
    print(f"\n== {name}: {n} pairs from {', '.join(sources)}")
    print(f"{'':16}{'':9}|{'precision @ 0.5 px':^28}|{'precision @ 1 px':^28}|{'coverage':^28}"
          f"|{'clipped trusted':^28}|{'s / pair':^14}|{'ours / this (pooled)':^21}")
    stats = f"{'med':>7}{'p10*':>7}{'p90':>7}{'pool':>7}"
    print(f"{'method':16}{'pairs':>5}{'rej':>4}|{stats}|{stats}|{stats}|{'med':>7}{'p10':>7}{'p90*':>7}{'pool':>7}"
          f"|{'med':>7}{'p90':>7}|{'P@.5':>7}{'P@1':>7}{'cov':>7}")
    for m in METHODS:
        s = summary[m]
        line = f"{LABELS[m]:16}{s['pairs']:5d}{s['rejected'] + s['failed']:4d}"
        for k in METRICS:
            line += "|" + "".join(" " + _f(s[k][st]) for st in ("median", "p10", "p90", "pooled"))
        line += "|" + "".join(" " + _f(s["seconds"][st], 6, 2) for st in ("median", "p90"))
        if m in PEERS:
            r = s["ours_over_peer"]
            line += "|" + "".join(" " + _f(r[f"{k}_pooled"], 6, 2) for k in ("precision_05", "precision_1",
                                                                            "coverage"))
        else:
            line += "|"
        print(line)
    lost = summary["isp-rig"].get("not_kept", {})
    if lost:
        print("not kept by the verdict (every method but the oracle trusts nothing there): "
              + ", ".join(f"{k} ({v})" for k, v in lost.items()))


def print_per_source(per_source: dict) -> None:
    print("\n== per source (medians over pairs; P@.5 / coverage)")
    head = f"{'source':16}{'half':8}{'pairs':>5}{'rej':>4}"
    for m in METHODS:
        head += f"  {LABELS[m][:15]:>15}"
    print(head)
    for name, s in per_source.items():
        line = f"{name:16}{s['half']:8}{s['isp-rig']['pairs']:5d}{s['isp-rig']['rejected'] + s['isp-rig']['failed']:4d}"
        for m in METHODS:
            line += f"  {_f(s[m]['precision_05']['median'], 7)}/{_f(s[m]['coverage']['median'], 6)} ".rjust(17)
        print(line)


def print_planar(planar: dict, per_source: dict) -> None:
    print("\n== planar pairs (no parallax, motion, clipping or shading): isp-rig (ours) only")
    print(f"{'group':16}{'pairs':>5}{'rej':>4}|{'in-frame px trusted':^33}|{'corner error px':^21}|"
          f"{'trusted grid P@0.5':^28}|{'s/pair':>7}| most dropped (mean share of the frame, kept pairs)")
    print(f"{'':25}|{'med':>7}{'p10':>7}{'min':>7}{'pool':>7}{'>=98%':>6}|{'med':>7}{'p90':>7}{'max':>7}|"
          f"{'med':>7}{'min':>7}{'pool':>7}{'worst':>7}|{'med':>7}|")
    for name, s in [*planar.items(), *((f"  {k}", v) for k, v in per_source.items())]:
        f = s["in_frame_trusted"]
        c = s["corner_median_px"]
        g = s.get("grid_precision_05", {})
        drops = ", ".join(f"{k} {v:.3f}" for k, v in list(s["dropped_mean_kept"].items())[:3] if v > 0)
        print(f"{name:16}{s['pairs']:5d}{s['rejected'] + s['failed']:4d}|{_f(f['median'], 7)}{_f(f['p10'], 7)}"
              f"{_f(f['min'], 7)}{_f(f['pooled_kept'], 7)}{f['pairs_at_least_98']:6d}|{_f(c['median'], 7)}"
              f"{_f(c['p90'], 7)}{_f(c['max'], 7)}|{_f(g.get('median'), 7)}{_f(g.get('min'), 7)}"
              f"{_f(g.get('pooled_kept'), 7)}{_f(g.get('worst_px'), 7, 2)}|{_f(s['seconds']['median'], 7, 2)}| {drops}")
    a = planar["all"]
    print(f"target: >= 98 % of the in-frame px trusted in every pair: {a['in_frame_trusted']['pairs_at_least_98']} "
          f"of {a['pairs']} pairs meet it (pool = over the kept pairs; a rejected pair counts 0 in med/p10/min); "
          f"not kept: " + (", ".join(f"{r['id']} ({r['status']}: {r['reason']})" for r in a["not_kept"]) or "none"))


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                        help=f"Comma-separated subset of {', '.join(SOURCES)} (default: {', '.join(DEFAULT_SOURCES)}).")
    parser.add_argument("--pairs-per-source", type=int, help="Pairs per source (default 3; --quick: 1).")
    parser.add_argument("--seed", type=int, default=0, help="Simulator seed base (default 0).")
    parser.add_argument("--phone-size", help="Phone raw WIDTHxHEIGHT (default 1024x768; --quick: 768x576).")
    parser.add_argument("--dslr-size", help="DSLR WIDTHxHEIGHT (default 1536x1024; --quick: 1152x768).")
    parser.add_argument("--distortion", action="store_true",
                        help="Every pair with the phone lens's radial distortion (isp-rig simulate --distortion; "
                             "its own work folder): the trust map of a lens model.")
    parser.add_argument("--planar", choices=("also", "only", "no"), default="also",
                        help="The planar section: also (default), only (skip the effects benchmark), no.")
    parser.add_argument("--workers", type=int, default=2, help="Processes for simulation and alignment (default 2).")
    parser.add_argument("--work", type=Path, default=REPO / "bench-out" / "trust",
                        help="Work folder: simulated pairs and datasets, reused (default bench-out/trust).")
    parser.add_argument("--rebuild", action="store_true", help="Delete the dataset folders of this size and seed "
                        "(every pair in them) and align again; the simulated pairs are kept.")
    parser.add_argument("--quick", action="store_true", help="Smoke run: 1 pair per source, phone 768x576, "
                        "DSLR 1152x768.")
    parser.add_argument("--out", type=Path, help="Write the results as JSON to this file.")
    args = parser.parse_args()

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        parser.error(f"unknown sources: {', '.join(unknown)} (known: {', '.join(SOURCES)})")
    missing = [s for s in sources if SOURCES[s][0] and not (SHARED / SOURCES[s][0]).is_file()]
    if missing:
        parser.error(f"source files missing under {SHARED}: "
                     + ", ".join(f"{s} ({SOURCES[s][0]})" for s in missing))
    per_source = args.pairs_per_source or (1 if args.quick else 3)

    def size(text, default):
        w, h = (int(v) for v in (text or default).lower().split("x"))
        return w, h

    phone_size = size(args.phone_size, "768x576" if args.quick else "1024x768")
    dslr_size = size(args.dslr_size, "1152x768" if args.quick else "1536x1024")
    if phone_size[0] % 2 or phone_size[1] % 2:
        parser.error("the phone raw size must be even")
    window = pynet_window(phone_size[0])
    tag = f"p{phone_size[0]}x{phone_size[1]}-d{dslr_size[0]}x{dslr_size[1]}-seed{args.seed}" + (
        "-lens" if args.distortion else "")
    work = args.work / tag
    work.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    notes = [
        "patch-filter: OpenCV DIS optical flow (medium preset) in place of PWC-Net; "
        f"{PATCH_PX} px patches, kept at mean |flow| <= {PATCH_MAX_FLOW} px",
        f"pynet-window: {window} px windows (448 px per 4000 px of phone width), kept at NCC >= {PYNET_MIN_NCC}",
        "frame-only and the peers: the global model's map (Alignment.map_points); their target is target.png, or "
        "the DSLR warped again through that map where map.npy differs from it (pairs[].scores.<peer>.target)",
        "phone rendering: bilinear demosaic, white balance, colour matrix, luminance / its p99.5, sRGB curve; "
        "target luminance sRGB-encoded; each stretched p1..p99 (in-frame px) to 8-bit grey",
        "seconds: ours = the dataset record's seconds (decode, align incl. trust stage, writes); peers = the same "
        "record's seconds + their own filter time (rendering + flow/NCC + decision, file reads excluded)",
        "every method but the oracle trusts nothing in a pair the verdict rejected (the shared alignment's verdict, "
        "too_little_trusted included: a reason that exists only with the trust map); rej = rejected + failed",
        "p10* = the bad tail of precision and coverage, p90* = the bad tail of clipped trusted; "
        "ratios = ours / peer of the pooled values",
    ]
    print(f"work folder {work}; sources {', '.join(sources)}; {per_source} pair(s) per source; phone "
          f"{phone_size[0]}x{phone_size[1]}, DSLR {dslr_size[0]}x{dslr_size[1]}; workers {args.workers}; "
          f"alignment code from {package_root('alignment')}", flush=True)

    results: dict = {
        "settings": {"sources": {s: {"path": SOURCES[s][0], "half": SOURCES[s][1]} for s in sources},
                     "pairs_per_source": per_source, "seed": args.seed, "phone_size": list(phone_size),
                     "dslr_size": list(dslr_size), "distortion": args.distortion,
                     "baselines_mm": list(BASELINES_MM), "quick": args.quick,
                     "patch_px": PATCH_PX, "patch_max_flow_px": PATCH_MAX_FLOW, "pynet_window_px": window,
                     "pynet_min_ncc": PYNET_MIN_NCC, "workers": args.workers, "work": str(work),
                     "code": code_hash(("alignment", "isp_rig"))},
        "notes": notes,
    }
    sections = [] if args.planar == "only" else [True]
    if args.planar != "no":
        sections.append(False)
    for layered in sections:
        kind = "effects" if layered else "planar"
        plan = plan_pairs(sources, per_source, args.seed, layered)
        sim_dir, ds_dir = work / f"pairs-{kind}", work / f"ds-{kind}"
        w = check_code(sim_dir, "simulated pairs", ("isp_rig",), reset=False)
        warnings += [w] if w else []
        made, sim_s = ensure_simulated(plan, sim_dir, phone_size, dslr_size, args.workers, args.distortion)
        print(f"{kind}: simulated {made} pair(s) in {sim_s:.1f} s, {len(plan) - made} reused", flush=True)
        w = check_code(ds_dir, "alignments", ("alignment",), reset=args.rebuild or not ds_dir.exists())
        warnings += [w] if w else []
        records, build = build_dataset(plan, sim_dir, ds_dir, args.workers, args.rebuild)
        if args.rebuild:
            check_code(ds_dir, "alignments", ("alignment",), reset=True)
        print(f"{kind}: aligned {build['aligned_now']} pair(s) in {build['seconds']:.1f} s, {build['reused']} "
              f"reused from {ds_dir}", flush=True)
        if layered:
            rows = []
            print("per pair: precision @ 0.5 px / coverage", flush=True)
            for p in plan:
                rec = records.get(p["id"])
                t0 = time.perf_counter()
                scores = score_layered(p, rec, sim_dir, ds_dir, window)
                rows.append({**p, "status": (rec or {}).get("status", "missing"), "reason": (rec or {}).get("reason"),
                             "dropped": (rec or {}).get("dropped"), "scores": scores})
                verdict = rows[-1]["status"] if rows[-1]["status"] == "ok" else \
                    f"{rows[-1]['status']} ({rows[-1]['reason']})"
                print(f"  {p['id']:24} {verdict:8} " + "  ".join(
                    f"{m} {_f(scores[m]['precision_05'], 5)}/{_f(scores[m]['coverage'], 5)}" for m in METHODS)
                    + f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
            diffs = [r["scores"]["isp-rig"].get("record_truth_trust_diff") for r in rows]
            diffs = [d for d in diffs if d is not None]
            if diffs and max(diffs) > 1e-6:
                warnings.append(f"WARNING: re-scoring ours differs from the record's truth_trust by up to "
                                f"{max(diffs):.2e}")
            groups = {h: [r for r in rows if r["half"] == h] for h in HALVES}
            groups["all"] = rows
            summary = {}
            for g, grows in groups.items():
                if not grows:
                    continue
                summary[g] = {m: summarise(grows, m) for m in METHODS}
                add_ratios(summary[g])
            per_src = {}
            for s in sources:
                srows = [r for r in rows if r["source"] == s]
                per_src[s] = {"half": SOURCES[s][1], **{m: summarise(srows, m) for m in METHODS}}
                add_ratios(per_src[s])
            results["effects"] = {"build": build, "pairs": rows, "summary": summary, "per_source": per_src}
        else:
            prow = []
            for p in plan:
                prow.append({**p, **score_planar(p, records.get(p["id"]), sim_dir, ds_dir)})
            pgroups = {h: [r for r in prow if r["half"] == h] for h in HALVES}
            pgroups["all"] = prow
            planar = {g: summarise_planar(r) for g, r in pgroups.items() if r}
            per_src = {s: summarise_planar([r for r in prow if r["source"] == s]) for s in sources}
            results["planar"] = {"build": build, "pairs": prow, "summary": planar, "per_source": per_src}

    if "effects" in results:
        eff = results["effects"]
        for g in list(HALVES) + ["all"]:
            if g in eff["summary"]:
                print_group(g, eff["summary"][g], sources if g == "all" else [s for s in sources
                                                                          if SOURCES[s][1] == g])
        print_per_source(eff["per_source"])
        oracle = eff["summary"]["all"]["oracle"]
        ok = oracle["precision_05"]["pooled"] == 1.0 and oracle["precision_05"]["p10"] == 1.0
        print(f"\noracle check: pooled precision @ 0.5 px = {oracle['precision_05']['pooled']}, coverage = "
              f"{oracle['coverage']['pooled']}: {'OK' if ok else 'FAILED (the scoring is wrong)'}")
        if not ok:
            warnings.append("WARNING: the oracle does not score precision 1.0")
        results["oracle_check"] = ok
    if "planar" in results:
        print_planar(results["planar"]["summary"], results["planar"]["per_source"])
    print()
    for n in notes:
        print("note:", n)
    for w in warnings:
        print(w)
    results["warnings"] = warnings
    if args.out:
        args.out.write_text(json.dumps(_finite(results), indent=1, allow_nan=False))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
