"""The report charts: matplotlib figures written whole as PNGs."""

from __future__ import annotations

import cv2
import numpy as np

from alignment import charts


def _png(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None and img.size > 0
    return img


def test_histogram_draws_every_series_or_says_there_are_none(tmp_path):
    full = _png(charts.histogram(tmp_path / "a.png", {"residual": [0.1, 0.2, 0.2, float("nan")],
                                                        "truth": [0.15, 0.3]}, "pixels"))
    one = _png(charts.histogram(tmp_path / "b.png", {"residual": [0.1, 0.2, 0.2, float("nan")]}, "pixels"))
    empty = _png(charts.histogram(tmp_path / "c.png", {"empty": []}, "pixels"))
    assert full.shape[:2] == (round(charts.SIZE[1] * charts.DPI), round(charts.SIZE[0] * charts.DPI))
    orange = lambda img: int(((img[..., 2] > 200) & (img[..., 1] > 100) & (img[..., 0] < 120)).sum())  # noqa: E731
    assert orange(full) > 100 and orange(one) == 0  # the second series' bars (matplotlib's second colour)
    assert np.abs(empty.astype(int) - one).sum() > 0 and empty.std() > 5  # axes and the "no values" note


def test_bars_and_curves_write_pictures_that_differ_with_the_data(tmp_path):
    a = _png(charts.bars(tmp_path / "a.png", ["1", "2", "3"], [0.5, 1.0, 0.2], "ms", "skew"))
    b = _png(charts.bars(tmp_path / "b.png", ["1", "2", "3"], [0.1, 1.0, 0.9], "ms", "skew"))
    assert a.shape == b.shape and np.abs(a.astype(int) - b).sum() > 0
    c = _png(charts.curves(tmp_path / "c.png", [{"x": [1, 2, 3], "y": [1.0, 0.5, 0.2], "title": "loss", "log": True},
                                                {"x": [3], "y": [20.0], "title": "PSNR"}]))
    assert c.shape[1] > c.shape[0]  # two panels side by side
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
