"""Batch alignment: many phone-raw / DSLR pairs into one dataset folder.

Pairs come from a capture session, a folder of pair folders (the simulator's
output), a CSV, or two folders matched by file name or capture time.  Each
pair runs as one task on any :class:`concurrent.futures.Executor`: a local
process pool by default (OpenCV pinned to one thread per worker, the worker
count bounded by free memory as well as cores), or a Dask cluster's executor.

The batch is resumable: pairs with a final record (kept or rejected) in
``pairs.jsonl`` are skipped; each pair's files are written atomically by its
task and its record is appended by the driver only after the files are in
place; a pair that fails (unreadable file, error) gets a 'failed' record with
the reason and the batch goes on (failed pairs are tried again on resume).
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import datetime as _dt
import hashlib
import logging
import multiprocessing
import os
import threading
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from alignment import rawio
from alignment.malloc import keep_large_arrays, relax_malloc_trim, skip_hugepage_advice

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from alignment import trust
from alignment.atomic import write_json
from alignment.dataset import DatasetError, DatasetMeta, DatasetWriter, warp_to_phone_grid, write_pair_files
from alignment.scoring import load_truth_map, trust_scores, truth_error
from alignment.session_manifest import MANIFEST, read_manifest

log = logging.getLogger(__name__)
PHONE_RAW_EXTENSIONS = rawio.RAW_EXTENSIONS - {".nef", ".nrw", ".cr2", ".cr3", ".arw"}


class BatchSourceError(Exception):
    """The pairs to align could not be listed; the message names the path and the reason."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line


@dataclass
class PairJob:
    """One pair to align.  Paths are absolute; ``truth`` is a simulator truth.json."""

    pair_id: str
    phone: Path
    dslr: Path
    scene: str
    phone_jpeg: Path | None = None
    truth: Path | None = None

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# ----------------------------------------------------------------- sources


def _first(folder: Path, stem: str, extensions: Iterable[str]) -> Path | None:
    for ext in extensions:
        for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def pairs_from_pair_folders(root: Path | str) -> list[PairJob]:
    """Every sub-folder holding ``phone.<raw>`` and ``dslr.<jpg|tif|raw>`` (the simulator's
    layout; ``truth.json`` and ``phone.jpg`` are used when present).  Scene = folder name."""
    root = Path(root)
    jobs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        phone = _first(folder, "phone", sorted(PHONE_RAW_EXTENSIONS))
        dslr = _first(folder, "dslr", [".jpg", ".jpeg", ".tif", ".tiff", ".png", ".nef", ".dng"])
        if phone is None or dslr is None:
            continue
        truth = folder / "truth.json"
        jobs.append(PairJob(folder.name, phone.resolve(), dslr.resolve(), folder.name,
                            _first(folder, "phone", [".jpg", ".jpeg"]), truth.resolve() if truth.is_file() else None))
    if not jobs:
        raise BatchSourceError(f"{root}: no pair folders (sub-folders with phone.<raw> and dslr.<image>)")
    return jobs


def pairs_from_csv(path: Path | str) -> list[PairJob]:
    """A CSV with columns ``phone`` and ``dslr`` (required) and ``id``, ``scene``,
    ``phone_jpeg``, ``truth`` (optional); relative paths are relative to the CSV's folder."""
    path = Path(path)
    base = path.parent
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise BatchSourceError(f"{path}: {err.strerror}") from None
    if not rows or not {"phone", "dslr"} <= set(rows[0]):
        raise BatchSourceError(f"{path}: needs a header with the columns 'phone' and 'dslr'")

    def resolve(value: str | None) -> Path | None:
        return (base / value).resolve() if value else None

    jobs = []
    for n, row in enumerate(rows, 1):
        pid = row.get("id") or Path(row["phone"]).stem
        jobs.append(PairJob(pid, resolve(row["phone"]), resolve(row["dslr"]), row.get("scene") or pid,
                            resolve(row.get("phone_jpeg")), resolve(row.get("truth"))))
    _check_unique(jobs, path)
    return jobs


def _capture_time(path: Path) -> _dt.datetime | None:
    return rawio.read_exif(path).capture_time


def pairs_from_two_folders(phone_dir: Path | str, dslr_dir: Path | str, match: str = "name",
                           tolerance_s: float = 1.0) -> list[PairJob]:
    """Pair phone raws in one folder with DSLR images in another.

    match='name': same file stem; match='time': nearest EXIF capture time within
    ``tolerance_s`` (each DSLR image used once; compared in UTC when every file records
    its UTC offset, else as the cameras' clock readings).  Scene = the phone file's stem.
    """
    phone_dir, dslr_dir = Path(phone_dir), Path(dslr_dir)
    for d in (phone_dir, dslr_dir):
        if not d.is_dir():
            raise BatchSourceError(f"{d}: no such folder")
    phones, dslrs = _two_folder_files(phone_dir, dslr_dir)
    jobs = []
    if match == "name":
        by_stem = {p.stem: p for p in dslrs}
        for ph in phones:
            if ph.stem in by_stem:
                jobs.append(PairJob(ph.stem, ph.resolve(), by_stem[ph.stem].resolve(), ph.stem))
    elif match == "time":
        dslr_times = [(t, p) for p in dslrs if (t := _capture_time(p)) is not None]
        phone_times = [(t, p) for p in phones if (t := _capture_time(p)) is not None]
        if any(t.tzinfo is None for t, _ in dslr_times + phone_times):
            # a camera that records no UTC offset: compare the clocks' readings
            dslr_times = [(t.replace(tzinfo=None), p) for t, p in dslr_times]
            phone_times = [(t.replace(tzinfo=None), p) for t, p in phone_times]
        used: set[Path] = set()
        for t, ph in phone_times:
            best = min(((abs((dt - t).total_seconds()), p) for dt, p in dslr_times if p not in used), default=None)
            if best and best[0] <= tolerance_s:
                used.add(best[1])
                jobs.append(PairJob(ph.stem, ph.resolve(), best[1].resolve(), ph.stem))
    else:
        raise ValueError(f"match must be 'name' or 'time', got {match!r}")
    if not jobs:
        raise BatchSourceError(f"{phone_dir} / {dslr_dir}: no phone raw matched a DSLR image by {match}")
    return jobs


def options_that_differ(options: dict[str, Any]) -> dict[str, Any]:
    """The alignment options whose values differ from :class:`alignment.AlignOptions`'
    defaults: what ``dataset.json`` records, so ``-o min_trusted=0.5`` (the default) and
    no option are the same dataset."""
    from alignment.pipeline import AlignOptions

    defaults = AlignOptions()
    return {k: v for k, v in options.items() if getattr(defaults, k, object()) != v}


def unpaired_files(phone_dir: Path | str, dslr_dir: Path | str, jobs: Sequence[PairJob]) -> tuple[list[str], list[str]]:
    """(phone raws, DSLR images) of the two folders that no job of
    :func:`pairs_from_two_folders` uses: sorted file names, what the batch leaves out."""
    used = {j.phone for j in jobs} | {j.dslr for j in jobs}
    phones, dslrs = _two_folder_files(Path(phone_dir), Path(dslr_dir))
    return [p.name for p in phones if p.resolve() not in used], [p.name for p in dslrs if p.resolve() not in used]


def _two_folder_files(phone_dir: Path, dslr_dir: Path) -> tuple[list[Path], list[Path]]:
    """(phone raws, DSLR images or raws) of the two folders, each sorted: what
    :func:`pairs_from_two_folders` pairs."""
    phones = sorted(p for p in phone_dir.iterdir() if p.suffix.lower() in PHONE_RAW_EXTENSIONS)
    dslrs = sorted(p for p in dslr_dir.iterdir() if p.suffix.lower() in rawio.IMAGE_EXTENSIONS | rawio.RAW_EXTENSIONS)
    return phones, dslrs


def _device_kinds(session_dir: Path) -> dict[str, str]:
    """device name -> 'phone' | 'dslr' from session.toml's ``[[rig.device]]`` tables:
    their ``kind`` where given, else 'dslr' for the gphoto adapter and 'phone' for the others."""
    path = session_dir / "session.toml"
    try:
        with open(path, "rb") as fh:
            config = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise BatchSourceError(f"{path}: cannot read the session's rig ({err})") from None
    devices = config.get("rig", {}).get("device", [])
    return {str(d["name"]): str(d.get("kind") or ("dslr" if d.get("adapter") == "gphoto" else "phone"))
            for d in devices if "name" in d}


def pairs_from_session(session_dir: Path | str) -> list[PairJob]:
    """Every shot with status 'ok' of a capture session: the phone's raw (and its JPEG)
    against the DSLR's JPEG (or its raw when it shot no JPEG).  Pair id =
    ``<shot-id>-<phone device>``; scene = the shot's scene name.  The manifest is read
    by the session format's one reader (:func:`alignment.session_manifest.read_manifest`:
    a torn last line is a shot that was never completed)."""
    session_dir = Path(session_dir)
    manifest = session_dir / MANIFEST
    if not manifest.is_file():
        raise BatchSourceError(f"{session_dir}: not a capture session (no {MANIFEST})")
    kinds = _device_kinds(session_dir)
    jobs = []
    for shot in read_manifest(manifest).records:
        if shot.status != "ok":
            continue
        by_device: dict[str, list[Path]] = {}
        for f in shot.files:
            by_device.setdefault(f.device, []).append(session_dir / f.path)
        dslr_files = [p for d, ps in by_device.items() if kinds.get(d) == "dslr" for p in ps]
        dslr = next((p for p in dslr_files if p.suffix.lower() in (".jpg", ".jpeg", ".tif", ".tiff")), None) or next(
            (p for p in dslr_files if p.suffix.lower() in rawio.RAW_EXTENSIONS), None)
        if dslr is None:
            continue
        for device, files in by_device.items():
            if kinds.get(device) != "phone":
                continue
            raw = next((p for p in files if p.suffix.lower() in PHONE_RAW_EXTENSIONS), None)
            jpeg = next((p for p in files if p.suffix.lower() in (".jpg", ".jpeg")), None)
            if raw is not None:
                jobs.append(PairJob(f"{shot.shot_id}-{device}", raw.resolve(), dslr.resolve(),
                                    str(shot.scene or shot.shot_id), jpeg.resolve() if jpeg else None))
    if not jobs:
        raise BatchSourceError(f"{session_dir}: no completed shot holds both a phone raw and a DSLR image")
    return jobs


def _check_unique(jobs: Sequence[PairJob], where: Path) -> None:
    seen = Counter(j.pair_id for j in jobs)
    dup = [k for k, n in seen.items() if n > 1]
    if dup:
        raise BatchSourceError(f"{where}: pair ids must be unique; repeated: {', '.join(dup[:5])}")


def find_pairs(source: Path | str) -> list[PairJob]:
    """Pairs of a session folder (has manifest.jsonl), a CSV file, or a folder of pair folders."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return pairs_from_csv(source)
    if (source / "manifest.jsonl").is_file():
        return pairs_from_session(source)
    if source.is_dir():
        return pairs_from_pair_folders(source)
    raise BatchSourceError(f"{source}: not a session folder, a folder of pairs, or a CSV")


# ----------------------------------------------------------------- one pair


#: a DSLR px whose largest channel reaches this (of full scale) is clipped
DSLR_CLIP_LEVEL = 0.99


def process_pair(job: PairJob, out_dir: str, split: str, options: dict[str, Any],
                 save_maps: bool = False) -> dict[str, Any]:
    """Align one pair and write its dataset files; returns its record (never raises).

    The target is the DSLR sampled through the alignment onto the phone's full raw
    grid; ``mask.png`` is the trust map (:mod:`alignment.trust`: the alignment's
    working-grid decision, then clipping of either camera and the frame at full
    resolution); with ``save_maps`` also ``map.npy``.  For a simulator pair
    (``truth.json``; ``truth_map.npy`` for a layered scene) the record carries the
    scores against the truth.  Pins OpenCV and BLAS to one thread first: on any
    executor (a Dask worker has no pool initializer) one task is one core.
    """
    from alignment.pipeline import align_images

    pin_threads()

    started = time.perf_counter()
    record: dict[str, Any] = {"id": job.pair_id, "scene": job.scene, "split": split,
                              "phone": str(job.phone), "dslr": str(job.dslr)}
    try:
        raw = rawio.read_raw(job.phone)
        record["phone_raw"] = raw.metadata()
        dslr = rawio.read_any(job.dslr)
        # after the reads: an unreadable file is reported as such, and the hash reads from the page cache
        record["sources"] = {"phone": file_identity(job.phone), "dslr": file_identity(job.dslr)}
        alignment = align_images(raw, dslr, **options)
        record["alignment"] = alignment.to_dict()
        record["quality"] = alignment.quality.to_dict()
        if not alignment.ok:
            record.update(status="rejected", reason=alignment.quality.reason, message=alignment.quality.message)
        else:
            dslr_rgb = dslr.rgb if isinstance(dslr, rawio.RgbImage) else rawio.linear_to_srgb(
                rawio.raw_to_linear_rgb(dslr))
            truth = load_truth_map(job.truth.parent) if job.truth is not None else None
            warp = warp_to_phone_grid(dslr_rgb, alignment.dense_map_points, raw.shape, clip_level=DSLR_CLIP_LEVEL,
                                      keep_map=save_maps or truth is not None)
            packed = raw.packed()
            codes = trust.full_resolution_codes(alignment.trust, raw.shape, warp.valid, warp.clipped, packed)
            mask = codes == 0
            phone_rgb = None
            if job.phone_jpeg is not None:
                jpeg = rawio.read_rgb(job.phone_jpeg)
                if jpeg.shape == raw.shape:
                    phone_rgb = jpeg.rgb
                else:
                    record["phone_jpeg_note"] = f"size {jpeg.shape} differs from the raw grid {raw.shape}: not stored"
            if job.truth is not None:
                record["truth_error_px"] = truth_error(job.truth, alignment.dense_map_points,
                                                       mask if mask.any() else warp.valid)
            if truth is not None:
                record["truth_trust"] = trust_scores(warp.mapped, mask, *truth)
            record["files"] = write_pair_files(Path(out_dir), job.pair_id, packed, warp.target, mask, phone_rgb,
                                               mapped=warp.mapped if save_maps else None, reasons=codes)
            record["valid_fraction"] = float(warp.valid.mean())
            record["trusted_fraction"] = float(mask.mean())
            record["dropped"] = {k: round(v, 5) for k, v in trust.fractions(codes).items() if k != "trusted"}
            record["status"] = "ok"
    except rawio.ImageReadError as err:
        record.update(status="failed", reason=f"unreadable_{err.reason}", message=str(err))
    except MemoryError:
        record.update(status="failed", reason="out_of_memory", message="the pair did not fit in memory")
    except OSError as err:
        record.update(status="failed", reason="write_error", message=f"{err.filename or out_dir}: {err.strerror}")
    except Exception as err:  # one bad pair never stops the batch: record the error and go on
        record.update(status="failed", reason="error", message=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc(limit=5))
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


# ----------------------------------------------------------------- content identity


def file_identity(path: Path | str) -> dict[str, Any]:
    """``{"path": absolute path, "bytes": size, "mtime_ns": modification time, "sha256": hex
    digest}`` of a source file: what a dataset record remembers of the files a pair was
    made from."""
    path = Path(path).resolve()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        stat = os.fstat(fh.fileno())
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


def _same_source(recorded: dict | str | None, path: Path) -> bool:
    """Whether ``path`` is the file a record was made from: the same absolute path, size
    and modification time (no need to read it), else the same size and SHA-256 (a
    moved folder, a touched file).  Records written before ``sources`` existed hold
    only the path as given; it is compared resolved."""
    path = Path(path)
    if not isinstance(recorded, dict):
        return recorded is None or Path(recorded).resolve() == path.resolve()
    try:
        stat = path.stat()
    except OSError:
        return False
    if stat.st_size != recorded.get("bytes"):
        return False
    if str(path.resolve()) == recorded.get("path") and stat.st_mtime_ns == recorded.get("mtime_ns"):
        return True
    return file_identity(path)["sha256"] == recorded.get("sha256")


def foreign_pairs(records: dict[str, dict], jobs: Sequence[PairJob]) -> list[str]:
    """One line per job whose id already has a record in the dataset made from other
    files (other paths with other content, or a file changed since): a dataset folder
    is resumed only with its own pairs."""
    out = []
    for job in jobs:
        rec = records.get(job.pair_id)
        if rec is None:
            continue
        sources = rec.get("sources") or {}
        for side, path in (("phone", job.phone), ("dslr", job.dslr)):
            recorded = sources.get(side) or rec.get(side)
            if not _same_source(recorded, path):
                was = recorded.get("path") if isinstance(recorded, dict) else recorded
                out.append(f"pair {job.pair_id}: its {side} file was {was}, now {path}"
                           + (" (same path, other content)" if str(Path(path).resolve()) == was else ""))
                break
    return out


# ----------------------------------------------------------------- executors


def pin_threads() -> None:
    """One OpenCV / BLAS thread in this process (the process-pool initializer, and the
    first thing :func:`process_pair` does), glibc's heap set up for large arrays
    (:func:`alignment.malloc.keep_large_arrays`, else :func:`~alignment.malloc.relax_malloc_trim`
    where the environment set the thresholds) and numpy's huge-page advice off
    (:func:`~alignment.malloc.skip_hugepage_advice`); cheap to repeat."""
    import cv2

    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    # the variables only reach libraries loaded after this point; the pools of
    # those already loaded (numpy's OpenBLAS) are limited at run time
    threadpool_limits(1)
    # large arrays reused from the heap (a 12 MP pair's): unless the environment chose the
    # thresholds, as Dask's nannies do, whose tiny trim threshold is undone instead
    if not keep_large_arrays():
        relax_malloc_trim()
    skip_hugepage_advice()


def init_pool_worker(driver_pid: int) -> None:
    """The local process pool's initializer: one thread per library (:func:`pin_threads`)
    and :func:`stop_with_driver`."""
    pin_threads()
    stop_with_driver(driver_pid)


def stop_with_driver(driver_pid: int, period_s: float = 0.5) -> threading.Thread:
    """End this worker process within ``period_s`` of its driver's death.

    A daemon thread polls whether the process ``driver_pid`` (the batch driver) still
    runs and whether this process still has the parent it started with (the pool's
    fork server exits with the driver); when either is gone it calls ``os._exit``, so
    a driver killed with SIGKILL leaves no worker aligning and writing into the
    dataset behind it (a half-written pair folder is a ``.tmp-*`` that the next run
    removes).  Returns the thread."""
    parent = os.getppid()

    def driver_alive() -> bool:
        try:
            os.kill(driver_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else (cannot be ours, but be safe)
            return True
        return os.getppid() == parent

    def watch() -> None:
        while driver_alive():
            time.sleep(period_s)
        os._exit(70)  # EX_SOFTWARE: nobody is left to read the result

    thread = threading.Thread(target=watch, name="isp-rig-driver-watch", daemon=True)
    thread.start()
    return thread


def available_memory_bytes() -> int:
    """Memory available to new processes (Linux MemAvailable; physical pages elsewhere)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def estimate_pair_memory(job: PairJob) -> int:
    """Peak bytes one pair needs, from its image sizes (headers only)."""
    import rawpy
    from PIL import Image

    try:
        with rawpy.imread(str(job.phone)) as r:
            phone_px = r.sizes.raw_width * r.sizes.raw_height
    except Exception:
        phone_px = 12_000_000
    try:
        with Image.open(job.dslr) as im:
            dslr_px = im.size[0] * im.size[1]
    except Exception:
        dslr_px = 24_000_000
    # measured: a 12 MP raw + 24 MP JPEG pair peaks at 1.14 GB (alignment on the binned,
    # cropped working grid, then the full-resolution dataset warp); interpreter and
    # libraries about 300 MB
    return int(phone_px * 40 + dslr_px * 30 + 350e6)


def default_workers(jobs: Sequence[PairJob], requested: int | None = None) -> int:
    """Workers for a local pool: the requested count (or the cores), no more than
    free memory holds at the estimated peak of one pair, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = requested or cores
    per_pair = estimate_pair_memory(jobs[0]) if jobs else 1
    by_memory = max(1, int(available_memory_bytes() * 0.8 // per_pair))
    return max(1, min(wanted, by_memory, max(1, len(jobs))))


# ----------------------------------------------------------------- the batch


@dataclass
class BatchSummary:
    """What a batch did.  Residuals are the alignment's own tile residual medians
    (phone px); truth errors (DSLR px) exist for simulator pairs only."""

    total: int = 0
    skipped: int = 0
    kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    residual_px: dict[str, float] = field(default_factory=dict)
    truth_error_px: dict[str, float] = field(default_factory=dict)
    trusted_fraction: dict[str, float] = field(default_factory=dict)
    truth_trust: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _percentiles(values: list[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if v.size == 0:
        return {}
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)), "max": float(v.max()),
            "min": float(v.min()), "n": int(v.size)}


def summarize(records: Iterable[dict[str, Any]], skipped: int = 0, seconds: float = 0.0) -> BatchSummary:
    """A :class:`BatchSummary` of the latest record of each pair."""
    recs = list(records)
    s = BatchSummary(total=len(recs), skipped=skipped, seconds=round(seconds, 2))
    s.kept = sum(r.get("status") == "ok" for r in recs)
    s.rejected = dict(Counter(r.get("reason") for r in recs if r.get("status") == "rejected"))
    s.failed = dict(Counter(r.get("reason") for r in recs if r.get("status") == "failed"))
    s.residual_px = _percentiles([(r.get("quality") or {}).get("residual_median_px") for r in recs
                                  if r.get("status") == "ok"])
    s.truth_error_px = _percentiles([r["truth_error_px"]["median"] for r in recs
                                     if r.get("status") == "ok" and "truth_error_px" in r])
    s.trusted_fraction = _percentiles([r.get("trusted_fraction") for r in recs if r.get("status") == "ok"])
    scored = [r["truth_trust"] for r in recs if r.get("status") == "ok" and "truth_trust" in r]
    if scored:
        s.truth_trust = {k: _percentiles([t[k] for t in scored])
                         for k in ("precision_05", "precision_1", "coverage", "clipped_trusted")}
    return s


def run_batch(
    jobs: Sequence[PairJob],
    out_dir: Path | str,
    *,
    executor: cf.Executor | None = None,
    workers: int | None = None,
    options: dict[str, Any] | None = None,
    meta: DatasetMeta | None = None,
    progress: bool = True,
    save_maps: bool = False,
) -> BatchSummary:
    """Align every pair not already finished in ``out_dir`` and write the dataset.

    Args:
        jobs: the pairs (see the ``pairs_from_*`` functions).
        out_dir: the dataset folder (created, or resumed).
        executor: any ``concurrent.futures.Executor`` (e.g. a Dask client's
            ``get_executor()``); default: a local process pool of
            :func:`default_workers` workers, closed at the end.
        options: keyword options for :func:`alignment.align_images`.
        meta: the dataset's description and split rule.
        progress: show a tqdm bar.
        save_maps: also write each kept pair's ``map.npy`` (the DSLR (x, y) of every
            target px).

    Returns:
        the :class:`BatchSummary` over every pair of ``jobs`` (finished earlier or now).
    """
    from tqdm import tqdm

    started = time.perf_counter()
    meta = replace(meta or DatasetMeta(), align_options=options_that_differ(options or {}))
    writer = DatasetWriter(out_dir, meta)
    foreign = foreign_pairs(writer.records, jobs)
    if foreign:
        writer.close()
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise DatasetError(writer.root, f"holds pairs made from other files: {foreign[0]}{more}; give a new --out "
                           "(a dataset is resumed only with its own pairs)")
    todo = [j for j in jobs if not writer.done(j.pair_id)]
    skipped = len(jobs) - len(todo)
    log.info("%s: %d pair(s) to align, %d already done", writer.root, len(todo), skipped)
    own_pool = executor is None and len(todo) > 0
    if own_pool:
        # forkserver, not fork: LibRaw's OpenMP runtime can deadlock in a forked child.
        executor = cf.ProcessPoolExecutor(max_workers=default_workers(todo, workers), initializer=init_pool_worker,
                                          initargs=(os.getpid(),), mp_context=multiprocessing.get_context("forkserver"))
    try:
        futures = {executor.submit(process_pair, j, str(writer.root), writer.split_of(j.scene), options or {},
                                   save_maps): j
                   for j in todo}
        with tqdm(total=len(todo), desc="align", unit="pair", disable=not progress) as bar:
            for fut in cf.as_completed(futures):
                job = futures[fut]
                try:
                    record = fut.result()
                except Exception as err:  # the worker itself died (killed, out of memory)
                    record = {"id": job.pair_id, "scene": job.scene, "split": writer.split_of(job.scene),
                              "phone": str(job.phone), "dslr": str(job.dslr), "status": "failed",
                              "reason": "worker_died", "message": f"{type(err).__name__}: {err}"}
                writer.append(record)
                bar.set_postfix_str(f"{record['id']}: {record['status']}")
                bar.update()
    finally:
        if own_pool:
            executor.shutdown(wait=True, cancel_futures=True)
        writer.close()
    ids = {j.pair_id for j in jobs}
    summary = summarize([r for k, r in writer.records.items() if k in ids], skipped,
                        time.perf_counter() - started)
    write_json(writer.root / "summary.json", summary.to_dict())
    return summary


def dask_client(address: str):
    """A ``distributed.Client`` of the Dask cluster at ``address`` (needs the ``dask``
    extra); use it as a context manager and pass ``client.get_executor()`` to
    :func:`run_batch`.  Workers must see the same file paths (a shared file system)."""
    try:
        from distributed import Client
    except ImportError:
        raise BatchSourceError(f"--scheduler {address}: Dask is not installed: pip install 'isp-rig[dask]'") from None
    try:
        return Client(address, timeout=30)
    except (OSError, TimeoutError, ValueError) as err:
        raise BatchSourceError(f"--scheduler {address}: cannot reach the Dask scheduler ({err})") from None
