"""The training-curve picture: loss and validation PSNR against step, drawn with OpenCV into a PNG."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np

from alignment.atomic import write_image


def _panel(img: np.ndarray, box: tuple[int, int, int, int], xs: list[float], ys: list[float], title: str,
           colour: tuple[int, int, int], log: bool = False) -> None:
    x0, y0, x1, y1 = box
    cv2.rectangle(img, (x0, y0), (x1, y1), (180, 180, 180), 1)
    cv2.putText(img, title, (x0 + 6, y0 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (40, 40, 40), 1, cv2.LINE_AA)
    pts = [(x, math.log10(y) if log else y) for x, y in zip(xs, ys) if y == y and (not log or y > 0)]
    if not pts:
        return
    px, py = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
    lo, hi = float(py.min()), float(py.max())
    hi = hi if hi > lo else lo + 1e-6
    xmax = float(px.max()) if px.max() > 0 else 1.0
    u = x0 + 40 + (px / xmax) * (x1 - x0 - 50)
    v = y1 - 10 - (py - lo) / (hi - lo) * (y1 - y0 - 40)
    poly = np.stack([u, v], 1).round().astype(np.int32)
    if len(poly) > 1:
        cv2.polylines(img, [poly], False, colour, 2, cv2.LINE_AA)
    else:
        cv2.circle(img, tuple(int(c) for c in poly[0]), 3, colour, -1)
    fmt = (lambda t: f"{10 ** t:.3g}") if log else (lambda t: f"{t:.2f}")
    cv2.putText(img, fmt(hi), (x0 + 2, y0 + 34), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(img, fmt(lo), (x0 + 2, y1 - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(img, f"step {int(xmax)}", (x1 - 90, y1 - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (80, 80, 80), 1,
                cv2.LINE_AA)


def plot_curves(metrics_csv: Path | str, out_png: Path | str) -> Path:
    """Draw ``metrics.csv`` (columns step, loss, val_psnr, ...) as a two-panel PNG: loss (log) and val PSNR (dB)."""
    steps, loss, vsteps, vpsnr = [], [], [], []
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            steps.append(float(row["step"]))
            loss.append(float(row["loss"]) if row.get("loss") else float("nan"))
            if row.get("val_psnr"):
                vsteps.append(float(row["step"]))
                vpsnr.append(float(row["val_psnr"]))
    img = np.full((300, 800, 3), 255, np.uint8)
    _panel(img, (5, 5, 395, 295), steps, loss, "training loss", (200, 80, 30), log=True)
    _panel(img, (405, 5, 795, 295), vsteps, vpsnr, "validation PSNR (dB)", (30, 140, 30))
    return write_image(out_png, img)
