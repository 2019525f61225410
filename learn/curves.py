"""The training-curve picture: loss and validation PSNR against step (matplotlib, :mod:`alignment.charts`)."""

from __future__ import annotations

import csv
from pathlib import Path

from alignment import charts


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
    return charts.curves(out_png, [
        {"x": steps, "y": loss, "title": "training loss", "ylabel": "loss", "log": True},
        {"x": vsteps, "y": vpsnr, "title": "validation PSNR", "ylabel": "dB"},
    ])
