"""Moving datasets in and out: fixed-size patch export and import of already aligned pairs.

Patch layout written by :func:`export_patches` (the layout of the common
RAW-to-RGB patch datasets, e.g. Zurich RAW-to-RGB)::

    OUT/<split>/raw/<pair-id>_<row>_<col>.png   16-bit, 1 channel, size x size Bayer mosaic in RGGB
                                                order, value = clip(normalised, 0, 1) * 4095
    OUT/<split>/rgb/<pair-id>_<row>_<col>.png   8-bit RGB, size x size, the aligned DSLR target
    OUT/patches.csv                             split, raw, rgb, pair id, x, y (top-left on the raw grid)

Only patches whose target is valid everywhere are written; ``row``/``col``
count patches.  Patches start on even raw coordinates, so the RGGB phase of
the mosaic is that of the packed planes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from alignment import rawio
from alignment.dataset import DatasetError, DatasetMeta, DatasetWriter, latest_records, write_pair_files

PATCH_SCALE = 4095.0


def export_patches(dataset: Path | str, out: Path | str, size: int = 256, stride: int | None = None) -> int:
    """Cut every kept pair of a dataset folder into size x size patches.

    Args:
        dataset: a dataset folder (``pairs.jsonl``).
        out: the patch folder (see the module docstring).
        size: patch side on the full-resolution raw grid (even).
        stride: step between patches (default ``size``, no overlap; even).

    Returns:
        the number of patches written.
    """
    if size % 2 or (stride or size) % 2:
        raise ValueError("patch size and stride must be even (whole 2x2 CFA cells)")
    stride = stride or size
    dataset, out = Path(dataset), Path(out)
    records = [r for r in latest_records(dataset).values() if r.get("status") == "ok" and "raw" in r.get("files", {})]
    if not records:
        raise DatasetError(dataset, "no kept raw pairs to export")
    rows = []
    for rec in records:
        planes = np.load(dataset / rec["files"]["raw"])
        target = cv2.imread(str(dataset / rec["files"]["target"]), cv2.IMREAD_UNCHANGED)[..., ::-1]
        target8 = np.round(target.astype(np.float32) * (255.0 / np.iinfo(target.dtype).max)).astype(np.uint8)
        mask = cv2.imread(str(dataset / rec["files"]["mask"]), cv2.IMREAD_GRAYSCALE) > 127
        mosaic = rawio.unpack(np.clip(planes, 0, 1), "RGGB")
        h, w = mask.shape
        split = rec.get("split", "train")
        (out / split / "raw").mkdir(parents=True, exist_ok=True)
        (out / split / "rgb").mkdir(parents=True, exist_ok=True)
        for i, y in enumerate(range(0, h - size + 1, stride)):
            for j, x in enumerate(range(0, w - size + 1, stride)):
                if not mask[y:y + size, x:x + size].all():
                    continue
                name = f"{rec['id']}_{i:03d}_{j:03d}.png"
                patch = np.round(mosaic[y:y + size, x:x + size] * PATCH_SCALE).astype(np.uint16)
                cv2.imwrite(str(out / split / "raw" / name), patch)
                cv2.imwrite(str(out / split / "rgb" / name), np.ascontiguousarray(target8[y:y + size, x:x + size, ::-1]))
                rows.append((split, f"{split}/raw/{name}", f"{split}/rgb/{name}", rec["id"], x, y))
    with open(out / "patches.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "raw", "rgb", "pair_id", "x", "y"])
        writer.writerows(rows)
    return len(rows)


def _read_input(path: Path, cfa: str, white_level: float | None) -> tuple[str, np.ndarray]:
    """('raw', packed (h, w, 4) float32 normalised) or ('rgb', (H, W, 3) float32 in [0, 1]).

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
        planes = np.load(path)
        if planes.ndim != 3 or planes.shape[2] != 4:
            raise DatasetError(path, f"a packed raw must be (h, w, 4), got {planes.shape}")
        if planes.dtype.kind == "f":
            return "raw", planes.astype(np.float32)
        return "raw", planes.astype(np.float32) / np.float32(levels())
    if suffix in rawio.RAW_EXTENSIONS:
        return "raw", rawio.read_raw(path).packed()
    image = rawio.read_rgb(path)
    grey = np.array_equal(image.rgb[..., 0], image.rgb[..., 1]) and np.array_equal(image.rgb[..., 1], image.rgb[..., 2])
    if suffix == ".png" and image.bit_depth == 16 and grey:
        mosaic = image.rgb[..., 0] * 65535.0
        return "raw", (rawio.pack(mosaic, cfa) / np.float32(levels())).astype(np.float32)
    return "rgb", image.rgb


def _import_files(writer: DatasetWriter, names: list[Path], by_stem: dict[str, Path], split: str | None, cfa: str,
                  white_level: float | None) -> int:
    count = 0
    for path in names:
        pid = path.stem
        if writer.done(pid):
            continue
        kind, data = _read_input(path, cfa, white_level)
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
                       "files": files})
        count += 1
    return count


def import_aligned(inputs: Path | str, targets: Path | str, out: Path | str, split: str | None = None,
                   cfa: str = "RGGB", seed: int = 0, test_fraction: float = 0.2,
                   white_level: float | None = None) -> int:
    """Import already aligned pairs with matching file names into a dataset folder.

    Inputs may be camera raws (through LibRaw, levels from the file), packed
    ``.npy`` planes (h, w, 4) in R, G1, G2, B order (float: normalised already;
    integer: divided by ``white_level``), 1-channel 16-bit PNG Bayer mosaics
    (phase ``cfa``, divided by ``white_level``), or RGB images (a phone's own
    JPEG, as in DPED).  Targets are RGB images of the same scene: (2h, 2w)
    for raw inputs, the input's size for RGB inputs.  ``split`` puts every pair
    in one split; without it the scene split of :func:`scene_split` applies
    (each file is its own scene).

    Returns:
        the number of pairs imported (pairs already in the folder are skipped).
    """
    inputs, targets, out = Path(inputs), Path(targets), Path(out)
    for d in (inputs, targets):
        if not d.is_dir():
            raise DatasetError(d, "no such folder")
    by_stem = {p.stem: p for p in targets.iterdir() if p.suffix.lower() in rawio.IMAGE_EXTENSIONS}
    names = sorted(p for p in inputs.iterdir() if p.is_file() and p.stem in by_stem)
    if not names:
        raise DatasetError(inputs, f"no input file has a target of the same name in {targets}")
    with DatasetWriter(out, DatasetMeta(split_seed=seed, test_fraction=test_fraction,
                                            provenance={"imported_from": {"inputs": str(inputs),
                                                                          "targets": str(targets)}})) as writer:
        count = _import_files(writer, names, by_stem, split, cfa, white_level)
    meta_path = out / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["input"] = sorted({r.get("input_kind", "raw") for r in latest_records(out).values()})
    meta_path.write_text(json.dumps(meta, indent=1))
    return count
