"""Training and evaluation data: the dataset folder (packed phone raw -> DSLR target)
and folders of matching RGB images (a phone's own JPEG -> DSLR).

Dataset folder read here (written by ``isp-rig dataset build``; see docs/learning.md)::

    DATASET/
      dataset.json              {"format_version": 1, "phone_profile": "...", "split": {...}, ...}
      pairs.jsonl               one record per source pair (see :class:`PairRecord`)
      pairs/<id>/raw.npy        float32 (H/2, W/2, 4): packed R, G1, G2, B, (v - black)/(white - black)
      pairs/<id>/target.png     RGB 8- or 16-bit, (H, W): the DSLR image warped onto the phone raw grid
      pairs/<id>/mask.png       8-bit gray (H, W): 255 where the target is valid, 0 elsewhere
      pairs/<id>/phone.png|jpg  optional: the phone's own JPEG on the same (H, W) grid (built-in ISP row)

Geometry: target pixel (row y, col x) shows the scene point of raw pixel (y, x)
(pixel centres at integers); packed position (i, j) is the 2x2 CFA cell with
its top-left raw pixel at (2i, 2j), always in R, G1, G2, B order (G1 = the
green in the red row).

Sampling is a pure function of (seed, sample index) so a resumed or
distributed run draws exactly the crops an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from alignment.dataset import DATASET_JSON, PAIRS_JSONL, DatasetError, numbered_records, read_meta
from learn.cfa_phase import CFA_PHASES, LEGACY_PHASE, pad_like_raw, red_offset, to_rggb
from learn.raw_space import metadata_problem, to_input_space

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class DataError(Exception):
    """A dataset file or record that cannot be used; ``str(err)`` names the file and the reason."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


# ---------------------------------------------------------------------------------------------
# files

def read_image(path: Path | str) -> np.ndarray:
    """An 8- or 16-bit image file as float32 RGB ``(H, W, 3)`` in [0, 1] (sRGB-encoded as stored).

    A ``.npy`` holding (H, W, 3) uint8, uint16 or float32 (already in [0, 1]) is read too
    (memory-mapped: the fastest target format for large images).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "missing")
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            raise DataError(path, f"not a .npy array ({err or 'empty file'})") from None
        if a.ndim != 3 or a.shape[2] != 3:
            raise DataError(path, f"image array must be (H, W, 3), got {a.shape}")
        if a.dtype == np.float32:
            return a
        if a.dtype in (np.uint8, np.uint16):
            return a.astype(np.float32) / np.float32(255.0 if a.dtype == np.uint8 else 65535.0)
        raise DataError(path, f"unsupported array type {a.dtype}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(path, "not a readable image")
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    else:
        raise DataError(path, f"unsupported sample type {img.dtype} (expected 8 or 16 bit)")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    elif img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img[..., ::-1], dtype=np.float32) / np.float32(scale)


def read_mask(path: Path | str) -> np.ndarray:
    """A mask PNG as bool ``(H, W)``: True where the stored value is above half range."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "missing")
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise DataError(path, "not a readable image")
    if m.ndim == 3:
        m = m[..., 0]
    half = 32767 if m.dtype == np.uint16 else 127
    return m > half


def read_packed(path: Path | str) -> np.ndarray:
    """A packed raw ``.npy`` as float32 ``(H/2, W/2, 4)`` (memory-mapped, not copied)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "missing")
    try:
        a = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:  # EOFError: an empty file
        raise DataError(path, f"not a .npy array ({err or 'empty file'})") from None
    if a.ndim != 3 or a.shape[2] != 4:
        raise DataError(path, f"packed raw must be (H/2, W/2, 4), got {a.shape}")
    if a.dtype != np.float32:
        raise DataError(path, f"packed raw must be float32, got {a.dtype}")
    return a


def write_image(path: Path | str, rgb: np.ndarray, bits: int = 8) -> None:
    """Write float RGB ``(H, W, 3)`` in [0, 1] as an 8- or 16-bit PNG, atomically
    (:func:`alignment.atomic.write_image`; :class:`alignment.atomic.WriteError` names the path)."""
    from alignment.atomic import write_image as write_atomic_image

    peak, dtype = (255, np.uint8) if bits == 8 else (65535, np.uint16)
    write_atomic_image(path, np.round(np.clip(rgb, 0, 1) * peak).astype(dtype)[..., ::-1])


def write_pair(root: Path | str, pair_id: str, raw: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
               split: str = "train", phone_jpeg: np.ndarray | None = None, **extra) -> dict:
    """Write one dataset-folder pair through the alignment stage's writer
    (:mod:`alignment.dataset`, the one writer of the layout :class:`DatasetFolder` reads).

    ``raw`` (h, w, 4) float32; ``target`` (2h, 2w, 3) in [0, 1]; ``mask`` (2h, 2w) bool
    (all valid when None); ``phone_jpeg`` optional (2h, 2w, 3).  Appends the record to
    ``pairs.jsonl`` (creating ``dataset.json`` when absent) and returns it.
    """
    from alignment.dataset import DatasetMeta, DatasetWriter, write_pair_files

    h, w = raw.shape[:2]
    if target.shape[:2] != (2 * h, 2 * w):
        raise ValueError(f"target {target.shape[:2]} must be twice the packed raw {raw.shape[:2]}")
    valid = np.ones((2 * h, 2 * w), bool) if mask is None else mask.astype(bool)
    with DatasetWriter(root, DatasetMeta()) as writer:
        files = write_pair_files(writer.root, pair_id, np.asarray(raw, np.float32), target, valid, phone_jpeg)
        record = {"id": pair_id, "split": split, "status": "ok", "files": files, **extra}
        writer.append(record)
    return record


# ---------------------------------------------------------------------------------------------
# the dataset folder

@dataclass(frozen=True)
class PairRecord:
    """One usable pair of a dataset folder (absolute paths).

    ``raw`` is the packed raw input; RGB-input pairs (a phone's own JPEG as the
    model input, ``isp-rig dataset import``) have ``input`` instead.  ``phone_raw``:
    what the phone raw says about its rendering (the record's ``phone_raw``), or None.
    """

    id: str
    split: str
    raw: Path | None
    target: Path
    mask: Path | None
    phone_jpeg: Path | None = None
    phone_model: str | None = None
    scene: str | None = None
    input: Path | None = None
    phone_raw: dict | None = None


class DatasetFolder:
    """Reads ``dataset.json`` and ``pairs.jsonl`` of a dataset folder.

    ``pairs.jsonl`` is append-only: the last record of each ``id`` wins, and a
    torn last line (a writer killed mid-line) is ignored. A record is used when
    its ``status`` is ``"ok"`` (or absent). File paths are relative to the folder
    and sit under ``files`` (keys ``raw`` or ``input``, ``target``, ``mask``,
    optional ``phone_jpeg``) or at the record's top level.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        pairs_path = self.root / PAIRS_JSONL
        if not pairs_path.is_file():
            raise DataError(pairs_path, "missing: not a dataset folder")
        try:  # the alignment stage owns the format: its readers, its errors named as ours
            self.meta: dict = read_meta(self.root)
            numbered = numbered_records(self.root)
        except DatasetError as err:
            raise DataError(err.path, err.reason) from None
        latest: dict[str, tuple[int, dict]] = {str(rec.get("id", n)): (n, rec) for n, rec in numbered}
        self.records: list[PairRecord] = []
        self.skipped: list[tuple[str, str]] = []
        for pid, (n, rec) in latest.items():
            status = rec.get("status", "ok")
            if status != "ok":
                self.skipped.append((pid, str(status)))
                continue
            files = rec.get("files", rec)
            if ("raw" not in files and "input" not in files) or "target" not in files:
                raise DataError(pairs_path, f"line {n}: record {pid!r} lacks the 'raw' (or 'input') or 'target' file")
            path = lambda key: (self.root / files[key]) if files.get(key) else None  # noqa: E731
            self.records.append(PairRecord(
                id=pid, split=str(rec.get("split", "train")), raw=path("raw"), input=path("input"),
                target=path("target"), mask=path("mask"), phone_jpeg=path("phone_jpeg"),
                phone_model=rec.get("phone_model") or self.meta.get("phone_profile"), scene=rec.get("scene"),
                phone_raw=rec.get("phone_raw")))

    @classmethod
    def read(cls, root: Path | str) -> "DatasetFolder":
        """The folder at ``root``, parsed once for as long as its ``pairs.jsonl`` and
        ``dataset.json`` keep their size and modification time (one training run opens
        its dataset for the train split, the validation split and the checks before them)."""
        root = Path(root)
        stamp = tuple(_file_stamp(root / name) for name in (PAIRS_JSONL, DATASET_JSON))
        key = str(root.resolve())
        cached = _FOLDERS.get(key)
        if cached is None or cached[0] != stamp:
            cached = _FOLDERS[key] = (stamp, cls(root))
        return cached[1]

    def split(self, name: str | Sequence[str]) -> list[PairRecord]:
        """Records of one split (or several)."""
        names = {name} if isinstance(name, str) else set(name)
        return [r for r in self.records if r.split in names]


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


#: DatasetFolder.read's parsed folders: resolved root -> (file stamps, folder)
_FOLDERS: dict[str, tuple[tuple, DatasetFolder]] = {}


class PairSource(Protocol):
    """What the crop and tile datasets draw from: ``len`` pairs, each loadable as arrays."""

    scale: int

    def __len__(self) -> int: ...

    def load(self, i: int) -> dict: ...


class _ByteLru(OrderedDict):
    """An LRU cache of tuples of arrays (None allowed) holding at most ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget
        self.used = 0

    @staticmethod
    def _size(value: tuple) -> int:
        return sum(a.nbytes for a in value if a is not None)

    def fetch(self, key, make):
        """The value of ``key``, made by ``make()`` (and kept, evicting the oldest) when absent."""
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        size = self._size(value)
        if size <= self.budget:
            self[key] = value
            self.used += size
            while self.used > self.budget:
                _, old = self.popitem(last=False)
                self.used -= self._size(old)
        return value


class PackedPairs:
    """Pairs of a dataset folder split: ``load(i)`` gives ``input`` (h, w, 4) float32 packed raw,
    ``target`` (2h, 2w, 3), ``mask`` (2h, 2w) bool, ``id``, and ``jpeg`` (2h, 2w, 3) where present.

    A split of RGB-input pairs (records with ``input`` instead of ``raw``) gives
    ``input`` (H, W, 3) and targets of the same size (``scale`` 1, no Bayer handling).
    input_space: the packed raw is brought into this space with each pair's ``phone_raw``
    metadata (:func:`learn.raw_space.to_input_space`; RGB inputs are left as they are);
    a pair without the metadata the space needs is a :class:`DataError` here, before
    any training.
    cfa_phase: ``rggb`` shifts every packed raw by its pattern (``phone_raw["cfa"]``; none
    recorded: taken as RGGB) so R is first in every cell, padding the target and mask alike
    (:mod:`learn.cfa_phase`; ``input`` is then (h + dy, w + dx, 4), the target and mask
    (2h + 2dy, 2w + 2dx)); ``packed`` leaves the cells as the pattern gives them.
    """

    def __init__(self, root: Path | str, split: str | Sequence[str], cache_mb: float = 1024.0,
                 input_space: str = "raw", cfa_phase: str = LEGACY_PHASE) -> None:
        self.folder = DatasetFolder.read(root)
        self.records = self.folder.split(split)
        if not self.records:
            raise DataError(self.folder.root / "pairs.jsonl", f"no usable pairs in split {split!r}")
        kinds = {r.raw is not None for r in self.records}
        if len(kinds) > 1:
            raise DataError(self.folder.root / "pairs.jsonl", f"split {split!r} mixes raw and RGB-input pairs")
        self.bayer = kinds.pop()
        self.input_space = input_space if self.bayer else "raw"
        if self.input_space != "raw":
            for r in self.records:
                problem = metadata_problem(r.phone_raw, self.input_space)
                if problem:
                    raise DataError(self.folder.root / "pairs.jsonl",
                                    f"pair {r.id!r}: {problem}; input space {self.input_space!r} needs the raw's "
                                    "white balance and colour matrix (use input_space 'raw')")
        if cfa_phase not in CFA_PHASES:
            raise ValueError(f"unknown cfa_phase {cfa_phase!r} (choices: {', '.join(CFA_PHASES)})")
        self.cfa_phase = cfa_phase if self.bayer else LEGACY_PHASE
        self._cfa = [self._pattern(r) for r in self.records] if self.cfa_phase == "rggb" else [None] * len(self.records)
        self.scale = 2 if self.bayer else 1
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache = _ByteLru(self.cache_bytes)  # decoded targets and masks
        self._inputs = _ByteLru(self.cache_bytes)  # inputs in a metadata space (raw stays memory-mapped)

    def _pattern(self, r: PairRecord) -> str | None:
        """The CFA pattern pair ``r``'s packed raw was packed from (None: none recorded, taken as RGGB)."""
        cfa = (r.phone_raw or {}).get("cfa")
        try:
            red_offset(cfa)
        except ValueError as err:
            raise DataError(self.folder.root / "pairs.jsonl", f"pair {r.id!r}: {err}") from None
        return cfa

    def shifted_pattern(self, i: int) -> str | None:
        """The CFA pattern pair ``i`` was shifted from (None: not shifted): give it to
        :func:`learn.cfa_phase.crop_to_raw` to bring a rendering of ``load(i)["input"]`` back onto the raw's grid."""
        return self._cfa[i]

    @property
    def _cached_bytes(self) -> int:
        return self._cache.used

    def __len__(self) -> int:
        return len(self.records)

    def _input(self, i: int) -> np.ndarray:
        r = self.records[i]
        if not self.bayer:
            return read_image(r.input)
        cfa = self._cfa[i]
        if self.input_space == "raw" and red_offset(cfa) == (0, 0):
            return read_packed(r.raw)  # memory-mapped: a crop reads only its own rows
        # the shift and the transform touch every px: once per pair, not once per crop
        return self._inputs.fetch(i, lambda: (
            to_input_space(to_rggb(read_packed(r.raw), cfa), r.phone_raw, self.input_space),))[0]

    def input_shape(self, i: int) -> tuple[int, ...]:
        """Shape of pair ``i``'s input (packed raw: without decoding any PNG or applying the input space)."""
        r = self.records[i]
        if not self.bayer:
            return read_image(r.input).shape
        h, w, c = read_packed(r.raw).shape
        dy, dx = red_offset(self._cfa[i])
        return h + dy, w + dx, c

    def _target(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decoded target and mask of pair ``i`` (padded as its input is shifted), kept in an LRU
        cache of at most ``cache_mb`` (decoding a 16-bit PNG dominates the time of a crop; a small
        dataset stays decoded)."""
        r = self.records[i]

        def decode() -> tuple[np.ndarray, np.ndarray | None]:
            target = read_image(r.target)
            mask = read_mask(r.mask) if r.mask is not None else None
            if red_offset(self._cfa[i]) == (0, 0):
                return target, mask
            return pad_like_raw(target, np.ones(target.shape[:2], bool) if mask is None else mask, self._cfa[i])

        return self._cache.fetch(i, decode)

    def load(self, i: int, with_jpeg: bool = False) -> dict:
        r = self.records[i]
        raw = self._input(i)
        target, mask = self._target(i)
        th, tw = self.scale * raw.shape[0], self.scale * raw.shape[1]  # the target size
        if target.shape[:2] != (th, tw):
            raise DataError(r.target, f"target is {target.shape[1]}x{target.shape[0]}, expected {tw}x{th} "
                                      f"(the input {(r.raw or r.input).name} times {self.scale})")
        mask = mask if mask is not None else np.ones((th, tw), bool)
        if mask.shape != (th, tw):
            raise DataError(r.mask, f"mask is {mask.shape[1]}x{mask.shape[0]}, expected {tw}x{th}")
        out = {"input": raw, "target": target, "mask": mask, "id": r.id}
        if with_jpeg and r.phone_jpeg is not None:
            jpeg = read_image(r.phone_jpeg)
            if jpeg.shape[:2] != (th, tw):
                raise DataError(r.phone_jpeg, f"phone JPEG is {jpeg.shape[1]}x{jpeg.shape[0]}, expected {tw}x{th}")
            out["jpeg"] = jpeg
        return out


# ---------------------------------------------------------------------------------------------
# folders of matching RGB files (e.g. phone JPEG -> DSLR JPEG)

def _index(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def list_rgb_pairs(input_dir: Path | str, target_dir: Path | str, exclude: Iterable[str] = (),
                   drop_identical: bool = True) -> list[str]:
    """Names (file stems) present in both folders, numerically sorted where names are numbers.

    ``exclude`` names are dropped, and with ``drop_identical`` so is every pair whose
    two files are byte-identical (e.g. saturated white patches: scoring them says nothing).
    """
    a, b = _index(Path(input_dir)), _index(Path(target_dir))
    skip = {str(e) for e in exclude}
    names = [n for n in a if n in b and n not in skip]
    if drop_identical:
        names = [n for n in names if _digest(a[n]) != _digest(b[n])]
    return sorted(names, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))


def split_names(names: Sequence[str], test_every: int = 5) -> tuple[list[str], list[str]]:
    """Deterministic split: every ``test_every``-th name (by position) is test, the rest train."""
    test = [n for k, n in enumerate(names) if k % test_every == 0]
    train = [n for k, n in enumerate(names) if k % test_every != 0]
    return train, test


class RgbFolderPairs:
    """Pairs of same-named RGB files: ``load(i)`` gives ``input`` (H, W, 3), ``target`` (H, W, 3),
    ``mask`` (H, W) all True, and ``jpeg`` = the input itself (the built-in ISP output)."""

    scale = 1
    bayer = False

    def __init__(self, input_dir: Path | str, target_dir: Path | str, names: Sequence[str]) -> None:
        self.input_dir, self.target_dir = Path(input_dir), Path(target_dir)
        a, b = _index(self.input_dir), _index(self.target_dir)
        missing = [n for n in names if n not in a or n not in b]
        if missing:
            raise DataError(self.input_dir, f"no matching pair for {missing[:5]}")
        self.names = list(names)
        self._paths = [(a[n], b[n]) for n in self.names]
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.names)

    def input_shape(self, i: int) -> tuple[int, ...]:
        """Shape of pair ``i``'s input image."""
        return self.load(i)["input"].shape

    def load(self, i: int, with_jpeg: bool = False) -> dict:
        if i not in self._cache:
            pa, pb = self._paths[i]
            x, y = read_image(pa), read_image(pb)
            if x.shape != y.shape:
                raise DataError(pb, f"size {y.shape[1]}x{y.shape[0]} differs from {pa} ({x.shape[1]}x{x.shape[0]})")
            self._cache[i] = {"input": x, "target": y, "mask": np.ones(x.shape[:2], bool), "id": self.names[i]}
        out = dict(self._cache[i])
        if with_jpeg:
            out["jpeg"] = out["input"]
        return out


# ---------------------------------------------------------------------------------------------
# augmentation

def _pack_rggb(mosaic: np.ndarray) -> np.ndarray:
    return np.stack([mosaic[0::2, 0::2], mosaic[0::2, 1::2], mosaic[1::2, 0::2], mosaic[1::2, 1::2]], -1)


def _unpack_rggb(planes: np.ndarray) -> np.ndarray:
    h, w = planes.shape[:2]
    m = np.empty((2 * h, 2 * w), planes.dtype)
    m[0::2, 0::2], m[0::2, 1::2], m[1::2, 0::2], m[1::2, 1::2] = (planes[..., k] for k in range(4))
    return m


def _dihedral(a: np.ndarray, flip_v: bool, flip_h: bool, transpose: bool) -> np.ndarray:
    if flip_v:
        a = a[::-1]
    if flip_h:
        a = a[:, ::-1]
    if transpose:
        a = a.swapaxes(0, 1)
    return a


def bayer_augment(raw: np.ndarray, target: np.ndarray, mask: np.ndarray, flip_v: bool, flip_h: bool,
                  transpose: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip / transpose a packed raw crop with its target and mask, keeping the Bayer phase right.

    ``raw`` (h+1, w+1, 4) packed R, G1, G2, B; ``target`` (2h+2, 2w+2, 3); ``mask`` (2h+2, 2w+2).
    The mosaic is unpacked, transformed with the target on the full-resolution grid,
    then shifted by at most one raw pixel so that an R pixel is again at (0, 0)
    (Liu et al. 2019, Bayer-preserving augmentation), and packed again. Returns
    raw (h, w, 4), target (2h, 2w, 3), mask (2h, 2w): every output raw pixel keeps
    its own target pixel, and each plane holds only its own colour.
    """
    hh, ww = raw.shape[0] - 1, raw.shape[1] - 1
    mosaic = _unpack_rggb(raw)
    colour = _unpack_rggb(np.broadcast_to(np.array([0, 1, 1, 2], np.int8), raw.shape))
    ops = (flip_v, flip_h, transpose)
    mosaic, colour = _dihedral(mosaic, *ops), _dihedral(colour, *ops)
    target, mask = _dihedral(target, *ops), _dihedral(mask, *ops)
    if transpose:
        hh, ww = ww, hh
    dy, dx = next((y, x) for y in (0, 1) for x in (0, 1) if colour[y, x] == 0)
    sl = (slice(dy, dy + 2 * hh), slice(dx, dx + 2 * ww))
    return (np.ascontiguousarray(_pack_rggb(mosaic[sl])), np.ascontiguousarray(target[sl]),
            np.ascontiguousarray(mask[sl]))


# ---------------------------------------------------------------------------------------------
# torch datasets

def _to_tensors(x: np.ndarray, y: np.ndarray, m: np.ndarray) -> dict:
    return {"input": torch.from_numpy(np.array(x, np.float32)).permute(2, 0, 1),
            "target": torch.from_numpy(np.array(y, np.float32)).permute(2, 0, 1),
            "mask": torch.from_numpy(np.array(m, np.float32))[None]}


@dataclass
class RandomCrops(Dataset):
    """Random training crops, a pure function of ``(seed, index)``.

    Item ``k`` picks a pair, a crop of ``crop`` input positions (packed positions
    for raw: crops are whole 2x2 CFA cells; target crops are ``scale * crop``),
    preferring crops with at least ``min_valid`` of the mask valid, and with
    ``augment`` one of the 8 flips / 90-degree turns (Bayer-preserving for raw).
    Returns ``{"input": (C, crop, crop), "target": (3, s*crop, s*crop), "mask": (1, s*crop, s*crop)}``.
    """

    source: PairSource
    crop: int = 64
    seed: int = 0
    augment: bool = True
    min_valid: float = 0.5
    length: int = 10**9
    _tries: int = field(default=8, repr=False)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> dict:
        rng = np.random.default_rng([self.seed, int(k)])
        s, c = self.source.scale, self.crop
        bayer = getattr(self.source, "bayer", False)
        extra = 1 if (bayer and self.augment) else 0
        item = self.source.load(int(rng.integers(len(self.source))))
        x, y, m = item["input"], item["target"], item["mask"]
        h, w = x.shape[:2]
        if h < c + extra or w < c + extra:
            raise DataError(str(item["id"]), f"image of {w}x{h} input positions is smaller than crop {c} + {extra}")
        best = None
        for _ in range(self._tries):
            i, j = int(rng.integers(h - c - extra + 1)), int(rng.integers(w - c - extra + 1))
            frac = float(m[s * i: s * (i + c), s * j: s * (j + c)].mean())
            if best is None or frac > best[0]:
                best = (frac, i, j)
            if frac >= self.min_valid:
                break
        _, i, j = best
        ce = c + extra
        xc = np.asarray(x[i: i + ce, j: j + ce], np.float32)
        yc, mc = y[s * i: s * (i + ce), s * j: s * (j + ce)], m[s * i: s * (i + ce), s * j: s * (j + ce)]
        if self.augment:
            fv, fh, tr = (bool(b) for b in rng.integers(2, size=3))
            if bayer:
                xc, yc, mc = bayer_augment(xc, yc, mc, fv, fh, tr)
            else:
                xc, yc, mc = _dihedral(xc, fv, fh, tr), _dihedral(yc, fv, fh, tr), _dihedral(mc, fv, fh, tr)
        return _to_tensors(xc, yc, mc)


class EvalTiles(Dataset):
    """Fixed evaluation tiles: each pair cut into a deterministic grid of ``tile`` input positions.

    ``tile=None`` gives whole images. Tiles at the right/bottom edge are shifted
    inside the image (they may overlap their neighbour). Item: ``input``, ``target``,
    ``mask`` tensors as in :class:`RandomCrops`, ``jpeg`` (3, H, W) or an empty
    tensor when the pair has no phone JPEG, ``id`` (pair id) and ``tile`` (i, j, size).
    """

    def __init__(self, source: PairSource, tile: int | None = None) -> None:
        self.source, self.tile = source, tile
        self.index: list[tuple[int, int, int, int, int]] = []
        for p in range(len(source)):
            shape = source.input_shape(p) if hasattr(source, "input_shape") else source.load(p)["input"].shape
            h, w = shape[:2]
            th, tw = (h, w) if tile is None else (min(tile, h), min(tile, w))
            rows = sorted({min(i, h - th) for i in range(0, h, th)})
            cols = sorted({min(j, w - tw) for j in range(0, w, tw)})
            self.index += [(p, i, j, th, tw) for i in rows for j in cols]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict:
        p, i, j, th, tw = self.index[k]
        s = self.source.scale
        item = self.source.load(p, with_jpeg=True)
        ys, xs = slice(s * i, s * (i + th)), slice(s * j, s * (j + tw))
        out = _to_tensors(item["input"][i: i + th, j: j + tw], item["target"][ys, xs], item["mask"][ys, xs])
        jpeg = item.get("jpeg")
        out["jpeg"] = (torch.from_numpy(np.array(jpeg[ys, xs], np.float32)).permute(2, 0, 1)
                       if jpeg is not None else torch.zeros(0))
        out["id"] = str(item["id"])
        out["tile"] = (i, j, th)
        return out


class PairsUnion:
    """Several :class:`PackedPairs` drawn from as one source (training on more than one folder).

    Pair ``i`` is pair ``i - offset`` of the part it falls in, in the order given; every
    part must hold the same kind of input (packed raw or RGB) in the same input space.
    """

    def __init__(self, parts: Sequence[PackedPairs]) -> None:
        kinds = {(p.bayer, p.scale, p.input_space, p.cfa_phase) for p in parts}
        if len(kinds) > 1:
            raise DataError(parts[0].folder.root, "the training folders mix inputs (packed raw and RGB, or "
                                                  "input spaces, or CFA phases): they cannot be trained on together")
        self.parts = list(parts)
        self.bayer, self.scale, self.input_space, self.cfa_phase = kinds.pop()
        self.records = [r for p in self.parts for r in p.records]
        self._where = [(k, i) for k, p in enumerate(self.parts) for i in range(len(p))]

    def __len__(self) -> int:
        return len(self._where)

    def input_shape(self, i: int) -> tuple[int, ...]:
        k, j = self._where[i]
        return self.parts[k].input_shape(j)

    def load(self, i: int, with_jpeg: bool = False) -> dict:
        k, j = self._where[i]
        return self.parts[k].load(j, with_jpeg)


def open_source(data: dict, split: str) -> PairSource:
    """The pair source a data config describes.

    ``{"kind": "dataset", "root": DIR}`` -> :class:`PackedPairs` of split ``split``
    (``"train"`` or ``"test"``; ``"val"`` falls back to test when the folder has no val split,
    and is read from ``val_root`` (another dataset folder) when the config gives one; the train
    split of ``also_roots`` joins the train split as a :class:`PairsUnion`);
    ``{"kind": "rgb_folders", "input_dir": A, "target_dir": B, "exclude": [...], "test_every": 5}``
    -> :class:`RgbFolderPairs` over the deterministic split of :func:`split_names`.
    """
    kind = data.get("kind", "dataset")
    if kind == "dataset":
        root = (data.get("val_root") or data["root"]) if split == "val" else data["root"]
        folder = DatasetFolder.read(root)
        if split == "val" and not folder.split("val"):
            split = "test"
        space, phase = data.get("input_space", "raw"), data.get("cfa_phase", LEGACY_PHASE)
        if split == "train" and data.get("also_roots"):
            return PairsUnion([PackedPairs(r, "train", input_space=space, cfa_phase=phase)
                               for r in [root, *data["also_roots"]]])
        return PackedPairs(root, split, input_space=space, cfa_phase=phase)
    if kind == "rgb_folders":
        names = list_rgb_pairs(data["input_dir"], data["target_dir"], data.get("exclude", ()),
                               data.get("drop_identical", True))
        train, test = split_names(names, int(data.get("test_every", 5)))
        return RgbFolderPairs(data["input_dir"], data["target_dir"], train if split == "train" else test)
    raise ValueError(f"unknown data kind {kind!r} (expected 'dataset' or 'rgb_folders')")
