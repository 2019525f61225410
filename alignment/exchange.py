"""Moving datasets in and out: fixed-size patch export and import of already aligned pairs.

Patch layout written by :func:`export_patches` (the layout of the common
RAW-to-RGB patch datasets, e.g. Zurich RAW-to-RGB)::

    OUT/<split>/raw/<pair-id>_<row>_<col>.png   16-bit, 1 channel, size x size Bayer mosaic in RGGB
                                                order, value = clip(normalised, 0, 1) * 4095
    OUT/<split>/rgb/<pair-id>_<row>_<col>.png   8-bit RGB, size x size, the aligned DSLR target
    OUT/patches.csv                             split, raw, rgb, pair id, x, y (top-left on the raw grid)
    OUT/export.json                             the dataset, size and stride; "complete": true once
                                                patches.csv is written

Only patches whose target is valid everywhere are written; ``row``/``col``
count patches.  Patches start on even raw coordinates, so the RGGB phase of
the mosaic is that of the packed planes.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np

from alignment import rawio
from alignment.atomic import write_image, write_json, write_text
from alignment.dataset import DatasetError, DatasetMeta, DatasetWriter, latest_records, write_pair_files

PATCH_SCALE = 4095.0


EXPORT_MARK = "export.json"


def _load_planes(path: Path) -> np.ndarray:
    """A pair's packed raw ``.npy``; :class:`DatasetError` naming it when it cannot be read."""
    try:
        planes = np.load(path)
    except FileNotFoundError:
        raise DatasetError(path, "missing") from None
    except (ValueError, OSError, EOFError) as err:  # EOFError: an empty file
        raise DatasetError(path, f"not a .npy array ({err or 'empty file'})") from None
    if planes.ndim != 3 or planes.shape[2] != 4:
        raise DatasetError(path, f"a packed raw must be (h, w, 4), got {planes.shape}")
    return planes


def _load_png(path: Path, flags: int) -> np.ndarray:
    img = cv2.imread(str(path), flags) if path.is_file() else None
    if img is None:
        raise DatasetError(path, "missing" if not path.is_file() else "not a readable image")
    return img


def _prepare_export_folder(out: Path, dataset: Path, size: int, stride: int, force: bool) -> None:
    """Refuse a folder of other files; an earlier export is replaced only with ``force``."""
    if out.exists() and not out.is_dir():
        raise DatasetError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        mark = out / EXPORT_MARK
        if not mark.is_file():
            raise DatasetError(out, "not empty and not an isp-rig patch export; give a new or empty folder")
        if not force:
            try:
                earlier = json.loads(mark.read_text())
                what = f"of {earlier.get('dataset')}, {earlier.get('size')} px patches" + \
                    ("" if earlier.get("complete") else ", not complete")
            except (OSError, ValueError):
                what = "unreadable export.json"
            raise DatasetError(out, f"holds an earlier export ({what}); --force replaces it")
        import shutil

        for name in ("train", "test", "patches.csv", EXPORT_MARK):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / EXPORT_MARK, {"dataset": str(dataset.resolve()), "size": size, "stride": stride,
                                   "complete": False})


def export_patches(dataset: Path | str, out: Path | str, size: int = 256, stride: int | None = None,
                   force: bool = False) -> int:
    """Cut every kept pair of a dataset folder into size x size patches.

    Args:
        dataset: a dataset folder (``pairs.jsonl``).
        out: the patch folder (see the module docstring); it must be new or empty, or
            hold an earlier export, which ``force`` replaces (``export.json`` marks it;
            ``"complete": true`` once ``patches.csv`` is written).
        size: patch side on the full-resolution raw grid (even).
        stride: step between patches (default ``size``, no overlap; even).

    Returns:
        the number of patches written.  Raises :class:`DatasetError` naming the file for
        an unreadable pair file, an unwritable patch or a refused output folder.
    """
    if size % 2 or (stride or size) % 2:
        raise ValueError("patch size and stride must be even (whole 2x2 CFA cells)")
    stride = stride or size
    dataset, out = Path(dataset), Path(out)
    records = [r for r in latest_records(dataset).values() if r.get("status") == "ok" and "raw" in r.get("files", {})]
    if not records:
        raise DatasetError(dataset, "no kept raw pairs to export")
    _prepare_export_folder(out, dataset, size, stride, force)
    rows = []
    for rec in records:
        planes = _load_planes(dataset / rec["files"]["raw"])
        target = _load_png(dataset / rec["files"]["target"], cv2.IMREAD_UNCHANGED)
        if target.ndim != 3 or target.dtype not in (np.uint8, np.uint16):
            raise DatasetError(dataset / rec["files"]["target"], "not an 8- or 16-bit RGB image")
        target = target[..., ::-1]
        target8 = np.round(target.astype(np.float32) * (255.0 / np.iinfo(target.dtype).max)).astype(np.uint8)
        mask = _load_png(dataset / rec["files"]["mask"], cv2.IMREAD_GRAYSCALE) > 127
        mosaic = rawio.unpack(np.clip(planes, 0, 1), "RGGB")
        h, w = mask.shape
        if target8.shape[:2] != (h, w) or mosaic.shape != (h, w):
            raise DatasetError(dataset / "pairs" / str(rec["id"]), f"raw {mosaic.shape}, target {target8.shape[:2]} "
                               f"and mask {(h, w)} differ in size")
        split = rec.get("split", "train")
        (out / split / "raw").mkdir(parents=True, exist_ok=True)
        (out / split / "rgb").mkdir(parents=True, exist_ok=True)
        for i, y in enumerate(range(0, h - size + 1, stride)):
            for j, x in enumerate(range(0, w - size + 1, stride)):
                if not mask[y:y + size, x:x + size].all():
                    continue
                name = f"{rec['id']}_{i:03d}_{j:03d}.png"
                patch = np.round(mosaic[y:y + size, x:x + size] * PATCH_SCALE).astype(np.uint16)
                # no fsync per patch: export.json says "complete" only after the synced patches.csv
                write_image(out / split / "raw" / name, patch, sync=False)
                write_image(out / split / "rgb" / name, np.ascontiguousarray(target8[y:y + size, x:x + size, ::-1]),
                            sync=False)
                rows.append((split, f"{split}/raw/{name}", f"{split}/rgb/{name}", rec["id"], x, y))
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["split", "raw", "rgb", "pair_id", "x", "y"])
    writer.writerows(rows)
    write_text(out / "patches.csv", table.getvalue())
    mark = json.loads((out / EXPORT_MARK).read_text())
    write_json(out / EXPORT_MARK, {**mark, "complete": True, "patches": len(rows)})
    return len(rows)


#: keys a side file (``<input stem>.json`` beside a ``.npy`` or Bayer-PNG input) may give, with the
#: shape of each list value: what :meth:`alignment.rawio.RawImage.metadata` records for a camera raw
SIDE_FILE_SHAPES = {"cfa": None, "black_levels": (4,), "white_level": (), "as_shot_wb": (3,), "color_matrix": (3, 3),
                    "exposure_time_s": (), "iso": (), "make": None, "model": None, "dng": None}
#: the suffix of the side file that carries a packed input's raw metadata
SIDE_FILE_SUFFIX = ".json"


def read_side_file(path: Path) -> dict | None:
    """The raw metadata a side file gives for the input ``path`` (``path`` with ``.json``), or
    None when there is none.  Keys as :meth:`~alignment.rawio.RawImage.metadata` (a subset is
    fine; ``as_shot_wb`` and ``color_matrix`` are what the learner's input stage uses);
    raises :class:`DatasetError` naming the side file for unknown keys or values of the
    wrong shape."""
    side = path.with_suffix(SIDE_FILE_SUFFIX)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(side, f"not a readable JSON side file ({err})") from None
    if not isinstance(meta, dict):
        raise DatasetError(side, "a side file holds one JSON object of raw metadata")
    unknown = sorted(set(meta) - set(SIDE_FILE_SHAPES))
    if unknown:
        raise DatasetError(side, f"unknown key(s) {', '.join(unknown)} (known: {', '.join(SIDE_FILE_SHAPES)})")
    for key, shape in SIDE_FILE_SHAPES.items():
        if shape is None or meta.get(key) is None:
            continue
        try:
            value = np.asarray(meta[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise DatasetError(side, f"{key} must be numbers") from None
        if value.shape != shape or not np.all(np.isfinite(value)):
            raise DatasetError(side, f"{key} must be {'a number' if not shape else 'x'.join(map(str, shape))} "
                                     f"finite number(s), got {meta[key]!r}")
    return meta


def _read_input(path: Path, cfa: str, white_level: float | None) -> tuple[str, np.ndarray, dict | None]:
    """('raw', packed (h, w, 4) float32 normalised, metadata) or ('rgb', (H, W, 3) float32 in
    [0, 1], None); metadata is :meth:`alignment.rawio.RawImage.metadata` for a camera raw
    read through LibRaw and, for planes and PNG mosaics (which carry none), what their side
    file gives (:func:`read_side_file`; None without one).

    Integer packed planes and Bayer PNGs carry no levels, so they need
    ``white_level`` (black level taken as already subtracted); float planes are
    taken as normalised already.
    """
    suffix = path.suffix.lower()

    def levels() -> float:
        if white_level is None:
            raise DatasetError(path, "integer raw data carries no white level: give white_level (--white-level)")
        return float(white_level)

    if suffix == ".npy":
        planes = _load_planes(path)
        if planes.dtype.kind == "f":
            return "raw", planes.astype(np.float32), read_side_file(path)
        return "raw", planes.astype(np.float32) / np.float32(levels()), read_side_file(path)
    if suffix in rawio.RAW_EXTENSIONS:
        raw = rawio.read_raw(path)
        return "raw", raw.packed(), raw.metadata()
    image = rawio.read_rgb(path)
    grey = np.array_equal(image.rgb[..., 0], image.rgb[..., 1]) and np.array_equal(image.rgb[..., 1], image.rgb[..., 2])
    if suffix == ".png" and image.bit_depth == 16 and grey:
        mosaic = image.rgb[..., 0] * 65535.0
        return "raw", (rawio.pack(mosaic, cfa) / np.float32(levels())).astype(np.float32), read_side_file(path)
    return "rgb", image.rgb, None


def _import_files(writer: DatasetWriter, names: list[Path], by_stem: dict[str, Path], split: str | None, cfa: str,
                  white_level: float | None) -> int:
    count = 0
    kinds = {r.get("input_kind", "raw") for r in writer.records.values() if r.get("status") == "ok"}
    for path in names:
        pid = path.stem
        earlier = writer.records.get(pid)
        if earlier is not None:
            was = (earlier.get("source") or {}).get("input") or earlier.get("phone")
            if was is None or Path(was).resolve() != path.resolve():
                raise DatasetError(writer.root, f"pair {pid} here was made from {was}, not {path}: this folder "
                                                "holds other pairs (give another --out)")
        if writer.done(pid):
            continue
        kind, data, metadata = _read_input(path, cfa, white_level)
        if kinds and kind not in kinds:
            raise DatasetError(path, f"is a {kind} input, and {writer.root} holds {'/'.join(sorted(kinds))} pairs: "
                                     "a dataset holds one input kind (give another --out)")
        kinds.add(kind)
        target = rawio.read_rgb(by_stem[pid]).rgb
        expected = (data.shape[0] * 2, data.shape[1] * 2) if kind == "raw" else data.shape[:2]
        if target.shape[:2] != expected:
            raise DatasetError(by_stem[pid], f"target size {target.shape[1]}x{target.shape[0]} does not fit the input "
                                             f"{path.name} ({expected[1]}x{expected[0]} expected)")
        valid = np.ones(target.shape[:2], bool)
        if kind == "raw":
            files = write_pair_files(writer.root, pid, data, target, valid)
        else:
            files = write_pair_files(writer.root, pid, None, target, valid, input_rgb=data)
        writer.append({"id": pid, "scene": pid, "split": split or writer.split_of(pid),
                       "status": "ok", "input_kind": kind, "source": {"input": str(path), "target": str(by_stem[pid])},
                       **({"phone_raw": metadata} if metadata is not None else {}),
                       "files": files})
        count += 1
    return count


def unmatched_files(inputs: Path | str, targets: Path | str) -> tuple[list[str], list[str]]:
    """(input files with no target of the same name, target images with no input) of an
    import, sorted names: what :func:`import_aligned` leaves out."""
    input_files, by_stem = _import_files_of(Path(inputs), Path(targets))
    input_stems = {p.stem for p in input_files}
    lonely_inputs = sorted(p.name for p in input_files if p.stem not in by_stem)
    lonely_targets = sorted(p.name for stem, p in by_stem.items() if stem not in input_stems)
    return lonely_inputs, lonely_targets


def _import_files_of(inputs: Path, targets: Path) -> tuple[list[Path], dict[str, Path]]:
    """(the input files of an import, sorted, side files left out; target images by stem)."""
    by_stem = {p.stem: p for p in targets.iterdir() if p.suffix.lower() in rawio.IMAGE_EXTENSIONS}
    input_files = sorted(p for p in inputs.iterdir() if p.is_file() and p.suffix.lower() != SIDE_FILE_SUFFIX)
    return input_files, by_stem


def import_aligned(inputs: Path | str, targets: Path | str, out: Path | str, split: str | None = None,
                   cfa: str = "RGGB", seed: int = 0, test_fraction: float = 0.2,
                   white_level: float | None = None) -> int:
    """Import already aligned pairs with matching file names into a dataset folder.

    Inputs may be camera raws (through LibRaw, levels from the file), packed
    ``.npy`` planes (h, w, 4) in R, G1, G2, B order (float: normalised already;
    integer: divided by ``white_level``), 1-channel 16-bit PNG Bayer mosaics
    (phase ``cfa``, divided by ``white_level``), or RGB images (a phone's own
    JPEG, as in DPED).  A ``.npy`` or PNG mosaic may have a side file
    ``<stem>.json`` with its raw metadata (:func:`read_side_file`), recorded as the
    pair's ``phone_raw`` as a camera raw's own would be.  Targets are RGB images of
    the same scene: (2h, 2w) for raw inputs, the input's size for RGB inputs.  ``split`` puts every pair
    in one split; without it the scene split of :func:`scene_split` applies
    (each file is its own scene).

    Returns:
        the number of pairs imported (pairs already in the folder are skipped).
    """
    inputs, targets, out = Path(inputs), Path(targets), Path(out)
    for d in (inputs, targets):
        if not d.is_dir():
            raise DatasetError(d, "no such folder")
    input_files, by_stem = _import_files_of(inputs, targets)
    names = [p for p in input_files if p.stem in by_stem]
    if not names:
        raise DatasetError(inputs, f"no input file has a target of the same name in {targets}")
    with DatasetWriter(out, DatasetMeta(split_seed=seed, test_fraction=test_fraction,
                                            provenance={"imported_from": {"inputs": str(inputs),
                                                                          "targets": str(targets)}})) as writer:
        count = _import_files(writer, names, by_stem, split, cfa, white_level)
    meta_path = out / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["input"] = sorted({r.get("input_kind", "raw") for r in latest_records(out).values()})
    write_json(meta_path, meta)
    return count
