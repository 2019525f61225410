"""Evaluation of a trained run on the test split: PSNR, SSIM, LPIPS (only with
user-given weights), per phone model, beside the built-in ISP (the phone's own
JPEG) wherever it exists; written as a table in the paper's shape (Markdown and CSV).

Scores are means over test images of per-image values, computed on whole
images rendered tile by tile (:func:`learn.infer.render_tensor`) and restricted
to the valid mask.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from alignment.atomic import write_json, write_text
from learn.cfa_phase import LEGACY_PHASE
from learn.data import EvalTiles, PackedPairs, RgbFolderPairs, open_source
from learn.infer import render_tensor
from learn.metrics import load_lpips, psnr, ssim
from learn.models import count_parameters
from learn.raw_space import AUTO
from learn.train import load_model


def _fmt(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _phone_of(source, i: int) -> str:
    if isinstance(source, PackedPairs):
        return source.records[i].phone_model or "phone"
    if isinstance(source, RgbFolderPairs):
        return source.input_dir.name
    return "phone"


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(values) else None


def score_images(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lpips=None) -> dict:
    """PSNR (dB), SSIM and LPIPS (None without weights) of one image: tensors (1, 3, H, W), mask (1, 1, H, W)."""
    return {"psnr": float(psnr(pred, target, mask)[0]), "ssim": float(ssim(pred, target, mask)[0]),
            "lpips": None if lpips is None else float(lpips(pred, target)[0])}


def evaluate(model: torch.nn.Module, source, lpips=None, tile: int = 512, progress: bool = True) -> list[dict]:
    """Per-image scores of ``model`` and of the built-in ISP on every pair of ``source``.

    Returns one dict per image: ``id``, ``phone``, ``model`` (scores), ``builtin`` (scores or None).
    """
    tiles = EvalTiles(source, None)
    rows = []
    for k in tqdm(range(len(tiles)), desc="evaluate", unit="image", disable=not progress):
        item = tiles[k]
        x, y, m = item["input"][None], item["target"][None], item["mask"][None]
        pred = render_tensor(model, x, tile=tile)
        row = {"id": item["id"], "phone": _phone_of(source, tiles.index[k][0]),
               "model": score_images(pred, y, m, lpips), "builtin": None}
        if item["jpeg"].numel():
            row["builtin"] = score_images(item["jpeg"][None], y, m, lpips)
        rows.append(row)
    return rows


def summarise(rows: list[dict], method: str) -> list[dict]:
    """Table rows ``{"phone", "method", "lpips", "psnr", "ssim", "n"}``: the model, and the built-in ISP where present."""
    by_phone: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_phone[r["phone"]].append(r)
    table = []
    for phone, items in sorted(by_phone.items()):
        builtin = [r["builtin"] for r in items if r["builtin"] is not None]
        if builtin:
            table.append({"phone": phone, "method": "built-in ISP (phone JPEG)", "n": len(builtin),
                          **{k: _mean([b[k] for b in builtin]) for k in ("lpips", "psnr", "ssim")}})
        table.append({"phone": phone, "method": method, "n": len(items),
                      **{k: _mean([r["model"][k] for r in items]) for k in ("lpips", "psnr", "ssim")}})
    return table


def table_markdown(table: list[dict]) -> str:
    """The paper-shaped table: Phone | Method | LPIPS (lower better) | PSNR | SSIM | images."""
    lines = ["| Phone | Method | LPIPS ↓ | PSNR (dB) ↑ | SSIM ↑ | images |", "|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['phone']} | {r['method']} | {_fmt(r['lpips'], 3)} | {_fmt(r['psnr'], 2)} | "
                     f"{_fmt(r['ssim'], 3)} | {r['n']} |")
    return "\n".join(lines) + "\n"


def write_table(table: list[dict], out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``table.md`` and ``table.csv`` (LPIPS empty when unavailable) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, cs = out_dir / "table.md", out_dir / "table.csv"
    write_text(md, table_markdown(table))
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=["phone", "method", "lpips", "psnr", "ssim", "n"])
    w.writeheader()
    for r in table:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in w.fieldnames})
    write_text(cs, text.getvalue())
    return md, cs


def run_data_config(config: dict, data: Path | str | dict | None = None) -> dict:
    """The data config to evaluate a run's model on: the run's own (``data`` None), another
    dataset folder or data config, which takes the run's ``input_space`` unless it names
    one other than ``auto`` (the model only understands the input it was trained on), and
    always the run's ``cfa_phase`` (``packed`` for a run stored before the key)."""
    stored = config.get("data", {})
    phase = {"cfa_phase": stored.get("cfa_phase", LEGACY_PHASE)}
    if data is None:
        return {**stored, **phase}
    own = {"input_space": stored.get("input_space", "raw"), **phase}
    if isinstance(data, dict):
        return {**data, **own} if data.get("input_space", AUTO) == AUTO else {**own, **data, **phase}
    return {"kind": "dataset", "root": str(data), **own}


def evaluate_run(run: Path | str, data: Path | str | dict | None = None, lpips_weights: Path | str | None = None,
                 tile: int = 512, progress: bool = True) -> dict:
    """Evaluate run folder ``run`` on the test split and write ``RUN/eval/table.{md,csv}`` and ``pairs.json``.

    ``data``: a dataset folder, a data config dict, or None for the run's own data config.
    Returns ``{"psnr", "ssim", "lpips", "builtin_isp": {...} | None, "table": [...], "params", "model"}``
    with means over all test images (``lpips`` None when no weights were given).
    """
    run = Path(run)
    model, config = load_model(run)
    source = open_source(run_data_config(config, data), "test")
    lpips = load_lpips(lpips_weights)
    rows = evaluate(model, source, lpips, tile, progress)
    name = config["model"]["name"]
    table = summarise(rows, name)
    write_table(table, run / "eval")
    write_json(run / "eval" / "pairs.json", rows)
    builtin = [r["builtin"] for r in rows if r["builtin"] is not None]
    return {
        "model": name, "params": count_parameters(model), "images": len(rows),
        **{k: _mean([r["model"][k] for r in rows]) for k in ("psnr", "ssim", "lpips")},
        "builtin_isp": {k: _mean([b[k] for b in builtin]) for k in ("psnr", "ssim", "lpips")} if builtin else None,
        "table": table,
    }
