"""The paired dataset folder: the alignment stage's output and the learning stage's input.

Layout (format version 1; ``learn.data`` reads exactly this)::

    DATASET/dataset.json            format_version, phone_profile, split rule and seed, provenance
    DATASET/pairs.jsonl             one record per source pair, appended (later lines win)
    DATASET/pairs/<id>/raw.npy      float32 (H/2, W/2, 4) packed phone raw R, G1, G2, B,
                                    (v - black) / (white - black), not clipped
    DATASET/pairs/<id>/target.png   16-bit RGB (H, W): the DSLR image warped onto the phone's
                                    full-resolution raw grid, sRGB-encoded as the DSLR stored it
    DATASET/pairs/<id>/mask.png     8-bit (H, W): the trust map, 255 where the target px shows the
                                    phone px's scene point (inside the frame, not occluded, not
                                    moved, not clipped in either camera: alignment.trust)
    DATASET/pairs/<id>/reasons.png  8-bit (H, W): why each px was dropped (alignment.trust.REASONS:
                                    0 trusted, 1 outside, 2 clipped, 3 occluded, 4 moved, 5 unverified)
    DATASET/pairs/<id>/map.npy      optional (``--save-maps``): float32 (H, W, 2), the DSLR (x, y)
                                    at which each target px was sampled
    DATASET/pairs/<id>/phone.png    optional: the phone's own JPEG on the same grid (built-in ISP row)
    DATASET/pairs/<id>/input.png    instead of raw.npy for RGB-input pairs (``isp-rig dataset import``
                                    of a phone's JPEGs): 16-bit RGB (H, W), same grid as the target

Target pixel (row y, col x) shows the scene point of phone raw pixel (x, y)
(pixel centres at integers), so packed position (j, i) matches target pixels
(2j..2j+1, 2i..2i+1).

A record (one JSON line): ``id``, ``scene``, ``split`` ('train' | 'test'),
``status`` ('ok' kept, 'rejected' by the alignment verdict, 'failed' an error),
``reason`` and ``message`` when not ok, ``phone`` and ``dslr`` (source paths),
``alignment`` (Alignment JSON), ``quality``, ``files`` (paths relative to the
dataset folder) and, for simulator pairs, ``truth_error_px`` (error of the
alignment against the ground truth over the valid target).

Splits are by scene: a scene's split is a pure function of (seed, scene name),
so no scene is ever in both train and test and adding pairs never moves one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from alignment.atomic import foreign_entries, fsync_dir, some_names, write_image, write_json, write_npy
from alignment.ecc import sample_spline, spline_coefficients

FORMAT_VERSION = 1
DATASET_JSON = "dataset.json"
PAIRS_JSONL = "pairs.jsonl"
PAIRS_DIR = "pairs"
FINAL_STATUSES = ("ok", "rejected")


class DatasetError(Exception):
    """A dataset folder problem; the message names the path and the reason."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def scene_split(scene: str, seed: int, test_fraction: float) -> str:
    """'test' or 'train' for a scene: a hash of (seed, scene) against ``test_fraction``."""
    digest = hashlib.sha256(f"{seed}:{scene}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test_fraction else "train"


@dataclass
class PhoneGridWarp:
    """The DSLR image resampled onto the phone's full raw grid (see :func:`warp_to_phone_grid`).

    target: (H, W, 3) float32 in [0, 1]; valid: (H, W) bool, the sampled point lies
    inside the DSLR image (one px margin for the interpolation); clipped: (H, W) bool,
    the sample reads a DSLR px with a channel at its clip level (dilated by one DSLR
    px), or None when not asked; mapped: (H, W, 2) float32 DSLR (x, y) at which each
    target px was sampled, or None when not asked.
    """

    target: np.ndarray
    valid: np.ndarray
    clipped: np.ndarray | None = None
    mapped: np.ndarray | None = None


def warp_to_phone_grid(
    dslr_rgb: np.ndarray,
    map_points: Callable[[np.ndarray], np.ndarray],
    phone_shape: tuple[int, int],
    rows_per_chunk: int = 256,
    clip_level: float | None = None,
    keep_map: bool = False,
) -> PhoneGridWarp:
    """Resample the DSLR image onto the phone's full-resolution raw grid.

    Args:
        dslr_rgb: (Hd, Wd, 3) float32 DSLR image (any encoding; resampled as is).
        map_points: (N, 2) phone px (x, y) -> (N, 2) DSLR px, e.g. ``Alignment.map_points``.
        phone_shape: (H, W) of the phone raw grid.
        rows_per_chunk: phone rows mapped at a time (bounds memory).
        clip_level: with a value, also say where the sample reads a DSLR px whose
            largest channel is at least this (in the image's [0, 1] units).
        keep_map: also return the DSLR (x, y) of every target px.

    Returns:
        :class:`PhoneGridWarp`.

    Anti-aliasing: where a phone pixel covers s > 1 DSLR pixels (s from the
    mapping's local Jacobian), the DSLR image is low-passed with a Gaussian of
    sigma = 0.5 * sqrt(s^2 - 1) before bicubic sampling, so the target has the
    phone pixel's footprint rather than the DSLR's aliasing.  Sampling is by
    exact cubic B-splines at float positions (OpenCV's remap would round them
    to 1/32 px).
    """
    h, w = phone_shape
    hd, wd = dslr_rgb.shape[:2]
    centre = np.array([[(w - 1) / 2, (h - 1) / 2]])
    probe = map_points(np.vstack([centre, centre + [1, 0], centre + [0, 1]]))
    jac = np.stack([probe[1] - probe[0], probe[2] - probe[0]], axis=1)
    scale = float(np.sqrt(abs(np.linalg.det(jac))))
    # only the part of the DSLR image the phone frame maps into (plus the filters' reach)
    edge = np.concatenate([
        np.stack([np.linspace(0, w - 1, 64), np.full(64, y)], 1) for y in (0, h - 1)
    ] + [np.stack([np.full(64, x), np.linspace(0, h - 1, 64)], 1) for x in (0, w - 1)])
    footprint = map_points(edge)
    pad = int(np.ceil(2 * scale)) + 8
    x0 = int(np.clip(np.floor(footprint[:, 0].min()) - pad, 0, wd - 1))
    y0 = int(np.clip(np.floor(footprint[:, 1].min()) - pad, 0, hd - 1))
    x1 = int(np.clip(np.ceil(footprint[:, 0].max()) + pad + 1, x0 + 1, wd))
    y1 = int(np.clip(np.ceil(footprint[:, 1].max()) + pad + 1, y0 + 1, hd))
    source = dslr_rgb[y0:y1, x0:x1].astype(np.float32, copy=False)
    saturated = None
    if clip_level is not None:
        sat = (source.max(axis=-1) >= clip_level).astype(np.uint8)
        saturated = cv2.dilate(sat, np.ones((3, 3), np.uint8)).astype(np.float32) if sat.any() else None
    if scale > 1.0:
        sigma = 0.5 * np.sqrt(scale * scale - 1.0)
        source = cv2.GaussianBlur(source, (0, 0), sigma)
    # Exact cubic B-spline sampling: OpenCV's remap rounds positions to 1/32 px.
    coefs = [spline_coefficients(source[..., c]) for c in range(3)]
    target = np.empty((h, w, 3), np.float32)
    valid = np.empty((h, w), bool)
    clipped = np.zeros((h, w), bool) if clip_level is not None else None
    mapped_all = np.empty((h, w, 2), np.float32) if keep_map else None
    xs = np.arange(w, dtype=np.float64)
    for r0 in range(0, h, rows_per_chunk):
        r1 = min(h, r0 + rows_per_chunk)
        gx, gy = np.meshgrid(xs, np.arange(r0, r1, dtype=np.float64))
        mapped = map_points(np.stack([gx.ravel(), gy.ravel()], axis=1))
        mx = mapped[:, 0].reshape(r1 - r0, w)
        my = mapped[:, 1].reshape(r1 - r0, w)
        for c in range(3):
            target[r0:r1, :, c] = sample_spline(coefs[c], mx - x0, my - y0)
        valid[r0:r1] = (mx >= 1) & (mx <= wd - 2) & (my >= 1) & (my <= hd - 2)
        if saturated is not None:
            at = cv2.remap(saturated, (mx - x0).astype(np.float32), (my - y0).astype(np.float32), cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            clipped[r0:r1] = at > 0.0
        if mapped_all is not None:
            mapped_all[r0:r1, :, 0] = mx
            mapped_all[r0:r1, :, 1] = my
    np.clip(target, 0.0, 1.0, out=target)
    return PhoneGridWarp(target, valid, clipped, mapped_all)


def _write_png16(path: Path, rgb: np.ndarray) -> None:
    write_image(path, np.round(np.clip(rgb, 0, 1) * 65535).astype(np.uint16)[..., ::-1])


def write_pair_files(
    root: Path,
    pair_id: str,
    packed_raw: np.ndarray | None,
    target: np.ndarray,
    valid: np.ndarray,
    phone_rgb: np.ndarray | None = None,
    input_rgb: np.ndarray | None = None,
    mapped: np.ndarray | None = None,
    reasons: np.ndarray | None = None,
) -> dict[str, str]:
    """Write one kept pair's files atomically: into a temporary folder, then
    renamed to ``pairs/<id>`` (an earlier partial folder of the same id is replaced).

    Args:
        packed_raw: (H/2, W/2, 4) float32 normalised planes R, G1, G2, B (None
            for an RGB-input pair).
        target: (H, W, 3) float in [0, 1].
        valid: (H, W) bool, the trust map (``mask.png``: 255 where the target px
            can be trusted).
        mapped: optional (H, W, 2) DSLR (x, y) at which each target px was sampled
            (``map.npy``, float32).
        reasons: optional (H, W) uint8, why each px the mask drops was dropped
            (``reasons.png``; codes of ``alignment.trust.REASONS``, 0 = trusted).
        phone_rgb: optional (H, W, 3) phone JPEG in [0, 1] (the built-in ISP row).
        input_rgb: (H, W, 3) in [0, 1]: the model input of an RGB-input pair
            (a phone's own JPEG), written as ``input.png`` instead of ``raw.npy``.

    Returns:
        the ``files`` dict of the record (paths relative to ``root``).
    """
    h, w = target.shape[:2]
    if (packed_raw is None) == (input_rgb is None):
        raise ValueError("give exactly one of packed_raw and input_rgb")
    if packed_raw is not None and packed_raw.shape != (h // 2, w // 2, 4):
        raise ValueError(f"shapes disagree: raw {packed_raw.shape}, target {target.shape}")
    if valid.shape != (h, w) or (input_rgb is not None and input_rgb.shape != target.shape):
        raise ValueError(f"shapes disagree: target {target.shape}, mask {valid.shape}")
    pairs = root / PAIRS_DIR
    pairs.mkdir(parents=True, exist_ok=True)
    tmp = pairs / f".tmp-{pair_id}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {}
    if packed_raw is not None:
        write_npy(tmp / "raw.npy", packed_raw.astype(np.float32, copy=False))
        files["raw"] = f"{PAIRS_DIR}/{pair_id}/raw.npy"
    else:
        _write_png16(tmp / "input.png", input_rgb)
        files["input"] = f"{PAIRS_DIR}/{pair_id}/input.png"
    _write_png16(tmp / "target.png", target)
    write_image(tmp / "mask.png", valid.astype(np.uint8) * 255)
    files.update(target=f"{PAIRS_DIR}/{pair_id}/target.png", mask=f"{PAIRS_DIR}/{pair_id}/mask.png")
    if phone_rgb is not None:
        write_image(tmp / "phone.png", np.round(np.clip(phone_rgb, 0, 1) * 255).astype(np.uint8)[..., ::-1])
        files["phone_jpeg"] = f"{PAIRS_DIR}/{pair_id}/phone.png"
    if reasons is not None:
        if reasons.shape != (h, w):
            raise ValueError(f"shapes disagree: target {target.shape}, reasons {reasons.shape}")
        write_image(tmp / "reasons.png", reasons.astype(np.uint8))
        files["reasons"] = f"{PAIRS_DIR}/{pair_id}/reasons.png"
    if mapped is not None:
        if mapped.shape != (h, w, 2):
            raise ValueError(f"shapes disagree: target {target.shape}, map {mapped.shape}")
        write_npy(tmp / "map.npy", mapped.astype(np.float32, copy=False))
        files["map"] = f"{PAIRS_DIR}/{pair_id}/map.npy"
    final = pairs / pair_id  # each file above is already fsync'ed
    if final.exists():  # a folder left by a run killed before its record was written
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_dir(pairs)
    return files


#: what a dataset folder may hold (a folder with anything else and no dataset.json is refused)
DATASET_ENTRIES = {".lock", "dataset.json", "pairs", "pairs.jsonl", "summary.json", "report"}


def _json_form(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


@dataclass
class DatasetMeta:
    """What ``dataset.json`` holds."""

    phone_profile: str | None = None
    split_seed: int = 0
    test_fraction: float = 0.2
    provenance: dict | None = None
    #: the alignment options every pair of the folder was aligned with (None: not
    #: recorded, e.g. an import); a resume with other options is refused
    align_options: dict | None = None

    def to_dict(self) -> dict:
        extra = {} if self.align_options is None else {"align_options": _json_form(self.align_options)}
        return {
            **extra,
            "format_version": FORMAT_VERSION,
            "phone_profile": self.phone_profile,
            "split": {"rule": "by scene: sha256(seed:scene) < test_fraction -> test",
                      "seed": self.split_seed, "test_fraction": self.test_fraction},
            "layout": "pairs/<id>/raw.npy (float32 H/2xW/2x4 R,G1,G2,B), target.png (16-bit RGB HxW on the "
                      "phone raw grid), mask.png, optional phone.png",
            "provenance": self.provenance or {},
        }


class DatasetWriter:
    """An open dataset folder: ``dataset.json`` plus an append-only ``pairs.jsonl``.

    Opening an existing folder checks that its split rule matches (a different
    seed or fraction would move scenes between splits) and reads the records
    already there, so a batch can skip finished pairs.  One writer at a time:
    the folder is locked (``.lock``, flock) until :meth:`close`; temporary pair
    folders left by a killed batch are removed on opening.
    """

    def __init__(self, root: Path | str, meta: DatasetMeta) -> None:
        self.root = Path(root)
        self.meta = meta
        self.root.mkdir(parents=True, exist_ok=True)
        meta_path = self.root / DATASET_JSON
        if meta_path.exists():
            try:
                existing = json.loads(meta_path.read_text())
            except json.JSONDecodeError as err:
                raise DatasetError(meta_path, f"invalid JSON ({err})") from None
            split = existing.get("split", {})
            if (split.get("seed"), split.get("test_fraction")) != (meta.split_seed, meta.test_fraction):
                raise DatasetError(
                    meta_path,
                    f"this dataset splits with seed {split.get('seed')} and test fraction "
                    f"{split.get('test_fraction')}; resuming with seed {meta.split_seed} and "
                    f"{meta.test_fraction} would move scenes between splits",
                )
            if int(existing.get("format_version", 0)) != FORMAT_VERSION:
                raise DatasetError(meta_path, f"format_version {existing.get('format_version')} is not {FORMAT_VERSION}")
            stored = existing.get("align_options")
            asked = None if meta.align_options is None else _json_form(meta.align_options)
            if stored is not None and asked is not None and stored != asked:
                changed = sorted(k for k in set(stored) | set(asked) if stored.get(k) != asked.get(k))
                raise DatasetError(meta_path, "this dataset was aligned with other options ("
                                   + ", ".join(f"{k}: {stored.get(k, 'default')} -> {asked.get(k, 'default')}"
                                               for k in changed)
                                   + "); resume with the same -o options or give a new --out")
        else:
            foreign = foreign_entries(self.root, DATASET_ENTRIES.__contains__)
            if foreign:
                raise DatasetError(self.root, f"holds {some_names(foreign)} "
                                              "and no dataset.json: not a dataset folder; give a new or empty folder")
            write_json(meta_path, meta.to_dict())
        self._lock = open(self.root / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise DatasetError(self.root, "another batch is writing this dataset folder now") from None
        for stale in (self.root / PAIRS_DIR).glob(".tmp-*"):  # left by a killed batch
            shutil.rmtree(stale, ignore_errors=True)
        _repair_torn_tail(self.root / PAIRS_JSONL)
        self.records: dict[str, dict[str, Any]] = {}
        for record in read_records(self.root):
            self.records[record["id"]] = record

    def close(self) -> None:
        """Release the folder's lock (also released when the process ends)."""
        if not self._lock.closed:
            self._lock.close()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def done(self, pair_id: str) -> bool:
        """True when the pair already has a final record (kept or rejected)."""
        rec = self.records.get(pair_id)
        return rec is not None and rec.get("status") in FINAL_STATUSES

    def split_of(self, scene: str) -> str:
        return scene_split(scene, self.meta.split_seed, self.meta.test_fraction)

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to disk (one write, then fsync).  Non-finite
        numbers are written as null: the file stays strict JSON."""
        record = _json_safe(record)
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        with open(self.root / PAIRS_JSONL, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.records[record["id"]] = record


def _json_safe(value: Any) -> Any:
    """The value with every NaN or infinite float replaced by None (recursively)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _repair_torn_tail(path: Path) -> None:
    """Cut a last line torn by a kill (no newline), so appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
            fh.flush()
            os.fsync(fh.fileno())


def numbered_records(root: Path | str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every record of ``pairs.jsonl`` in order: the one reader
    of the file (a torn last line from a kill is ignored; any other bad line raises
    :class:`DatasetError` naming the line)."""
    path = Path(root) / PAIRS_JSONL
    if not path.exists():
        return []
    out = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if n == len(lines):  # the last line, torn by a kill: the pair is simply redone
                continue
            raise DatasetError(path, f"line {n} is not valid JSON ({err})") from None
        if not isinstance(rec, dict):
            raise DatasetError(path, f"line {n} is not a record (a JSON object)")
        out.append((n, rec))
    return out


def read_records(root: Path | str) -> list[dict[str, Any]]:
    """All records of ``pairs.jsonl`` in order (see :func:`numbered_records`)."""
    return [rec for _, rec in numbered_records(root)]


def read_meta(root: Path | str) -> dict[str, Any]:
    """``dataset.json`` of a dataset folder ({} when absent), checked: valid JSON, a
    ``format_version`` this reader knows (at most :data:`FORMAT_VERSION`)."""
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(path, f"invalid JSON ({err})") from None
    version = meta.get("format_version", FORMAT_VERSION) if isinstance(meta, dict) else None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DatasetError(path, f"format_version {version!r} is newer than this reader ({FORMAT_VERSION})")
    return meta


def latest_records(root: Path | str) -> dict[str, dict[str, Any]]:
    """The last record of each pair id."""
    return {r["id"]: r for r in read_records(root)}
