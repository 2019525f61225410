"""The charts of the reports, drawn with matplotlib (object API on the Agg canvas: no
pyplot state, no display needed) and written through :mod:`alignment.atomic`.

One home for every chart: the batch report's residual histogram, the demo's
trigger-skew bars, the training curves of :mod:`learn.curves`.  matplotlib is
imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from alignment.atomic import write_figure

#: figure size (inches) and resolution of the report charts
SIZE = (7.2, 3.6)
DPI = 100


def figure(size: tuple[float, float] = SIZE):
    """A new matplotlib ``Figure`` on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def histogram(path: Path | str, series: dict[str, Sequence[float]], xlabel: str, bins: int = 30) -> Path:
    """Histograms of one or more named series on a shared axis (finite values only;
    the legend gives each series' count).  Returns the PNG path."""
    fig = figure()
    ax = fig.add_subplot()
    values = {name: np.asarray([v for v in vs if np.isfinite(v)], float) for name, vs in series.items()}
    pooled = np.concatenate([v for v in values.values()]) if values else np.zeros(0)
    if pooled.size:
        hi = float(pooled.max()) * 1.05 if pooled.max() > 0 else 1.0
        edges = np.linspace(0.0, hi, bins + 1)
        for name, v in values.items():
            ax.hist(v, bins=edges, alpha=0.6, label=f"{name} (n={v.size})")
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pairs")
    return write_figure(path, fig)


def bars(path: Path | str, labels: Sequence[str], values: Sequence[float], ylabel: str, title: str) -> Path:
    """One bar per label (e.g. the trigger skew of each shot).  Returns the PNG path."""
    fig = figure((max(4.0, 0.35 * len(values) + 1.5), 3.0))
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(values)), labels, rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return write_figure(path, fig)


def curves(path: Path | str, panels: Sequence[dict]) -> Path:
    """Line panels side by side: each a dict with ``x``, ``y``, ``title``, ``ylabel`` and
    optionally ``log`` (log y axis; non-positive values left out).  Returns the PNG path."""
    fig = figure((4.0 * max(1, len(panels)), 3.0))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        x, y = np.asarray(panel["x"], float), np.asarray(panel["y"], float)
        keep = np.isfinite(y) & ((y > 0) if panel.get("log") else True)
        if keep.any():
            ax.plot(x[keep], y[keep], marker="." if keep.sum() < 30 else None, lw=1.2)
        if panel.get("log") and keep.any():
            ax.set_yscale("log")
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.grid(alpha=0.3)
    return write_figure(path, fig)
