"""Pictures and tables for the person checking a dataset after a batch.

``write_batch_report(dataset)`` writes into ``DATASET/report/``:

- ``residuals.png``: histogram of the per-pair alignment residual (the median
  tile residual left after alignment, phone px), and of the error against
  ground truth where the pairs came from the simulator;
- ``pairs/<id>.png`` per kept pair: a checkerboard of the phone raw's quick
  render and the aligned DSLR target (edges that run on across the squares mean
  a good alignment), beside the absolute luminance difference;
- ``report.md``: the summary, the table of rejected and failed pairs with their
  reasons, and links to the pictures.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from alignment import charts, rawio, trust
from alignment.atomic import write_image, write_text
from alignment.dataset import latest_records

def _phone_render(planes: np.ndarray) -> np.ndarray:
    """A quick sRGB look at packed planes (no white balance): (2h, 2w, 3) in [0, 1]."""
    rgb = np.stack([planes[..., 0], 0.5 * (planes[..., 1] + planes[..., 2]), planes[..., 3]], -1)
    rgb = rgb / max(float(np.percentile(rgb, 99)), 1e-6)
    rgb = cv2.resize(np.clip(rgb, 0, 1), (planes.shape[1] * 2, planes.shape[0] * 2), interpolation=cv2.INTER_LINEAR)
    return rawio.linear_to_srgb(rgb)


def pair_picture(dataset: Path, record: dict, out: Path, max_side: int = 640, squares: int = 8) -> None:
    """Checkerboard of phone render / aligned target, beside |luminance difference| (gain 4)
    and, when the pair has ``reasons.png``, the trust map over the phone render."""
    files = record["files"]
    target = cv2.imread(str(dataset / files["target"]), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float32)
    target /= float(np.iinfo(np.uint16).max if target.max() > 255 else 255)
    if "raw" in files:
        phone = _phone_render(np.load(dataset / files["raw"]))
    else:
        phone = cv2.imread(str(dataset / files["input"]), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float32)
        phone /= float(np.iinfo(np.uint16).max if phone.max() > 255 else 255)
    mask = cv2.imread(str(dataset / files["mask"]), cv2.IMREAD_GRAYSCALE) > 127
    scale = max_side / max(target.shape[:2])
    size = (max(1, int(target.shape[1] * scale)), max(1, int(target.shape[0] * scale)))
    t = cv2.resize(target, size, interpolation=cv2.INTER_AREA)
    p = cv2.resize(phone, size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    # Match the phone render's colours to the target (least squares per channel) so the board reads.
    for c in range(3):
        a, b = p[..., c][m], t[..., c][m]
        if a.size > 10 and a.std() > 1e-6:
            gain, offset = np.polyfit(a, b, 1)
            p[..., c] = gain * p[..., c] + offset
    p = np.clip(p, 0, 1)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    cell = max(1, size[0] // squares)
    board = np.where((((yy // cell) + (xx // cell)) % 2 == 0)[..., None], p, t)
    diff = np.abs((p - t) @ rawio.LUMA_WEIGHTS)
    diff = np.clip(diff * 4, 0, 1)
    diff_rgb = np.repeat(diff[..., None], 3, axis=2)
    diff_rgb[~m] = (0.3, 0.0, 0.0)
    gap = np.ones((size[1], 8, 3), np.float32)
    panels = [board, gap, diff_rgb]
    if "reasons" in files:  # the trust map over the phone render, dropped px tinted by reason
        reasons = cv2.imread(str(dataset / files["reasons"]), cv2.IMREAD_UNCHANGED)
        panels += [gap, trust.overlay(p, cv2.resize(reasons, size, interpolation=cv2.INTER_NEAREST))]
    picture = np.concatenate(panels, axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_image(out, np.round(picture[..., ::-1] * 255).astype(np.uint8))


def write_batch_report(dataset: Path | str, pictures: int = 24) -> Path:
    """Write ``report/`` of a dataset folder; returns the path of ``report.md``.

    Args:
        dataset: the dataset folder.
        pictures: at most this many per-pair pictures (the kept pairs with the
            largest residuals first, since those are the ones to look at).
    """
    dataset = Path(dataset)
    report = dataset / "report"
    report.mkdir(exist_ok=True)
    records = list(latest_records(dataset).values())
    kept = [r for r in records if r.get("status") == "ok"]
    residuals = [(r.get("quality") or {}).get("residual_median_px") for r in kept]
    series = {"alignment residual (phone px)": [float(v) for v in residuals if v is not None]}
    truth = [r["truth_error_px"]["median"] for r in kept if "truth_error_px" in r]
    if truth:
        series["error vs ground truth (DSLR px)"] = [float(v) for v in truth]
    charts.histogram(report / "residuals.png", series, "pixels")
    kept.sort(key=lambda r: -((r.get("quality") or {}).get("residual_median_px") or 0.0))
    for r in kept[:pictures]:
        if "target" in r.get("files", {}):
            pair_picture(dataset, r, report / "pairs" / f"{r['id']}.png")
    summary = json.loads((dataset / "summary.json").read_text()) if (dataset / "summary.json").exists() else {}
    lines = ["# Alignment report", "", f"Dataset: `{dataset}`", "",
             f"- pairs: {len(records)}; kept: {len(kept)}; rejected: "
             f"{sum(r.get('status') == 'rejected' for r in records)}; failed: "
             f"{sum(r.get('status') == 'failed' for r in records)}"]
    if summary.get("residual_px"):
        s = summary["residual_px"]
        lines.append(f"- residual after alignment (phone px): median {s['p50']:.3f}, p90 {s['p90']:.3f}, "
                     f"max {s['max']:.3f}")
    if summary.get("trusted_fraction"):
        s = summary["trusted_fraction"]
        lines.append(f"- trusted px per kept pair: median {s['p50']:.1%}, lowest {s['min']:.1%}")
    if summary.get("truth_error_px"):
        s = summary["truth_error_px"]
        lines.append(f"- error against ground truth over trusted px (DSLR px, per-pair medians): median "
                     f"{s['p50']:.3f}, p90 {s['p90']:.3f}, max {s['max']:.3f}")
    if summary.get("truth_trust"):
        s = summary["truth_trust"]
        lines.append(f"- trust map against ground truth (per-pair medians): precision at 0.5 px "
                     f"{s['precision_05']['p50']:.4f}, coverage {s['coverage']['p50']:.3f}, clipped px trusted "
                     f"{s['clipped_trusted']['p50']:.2%}")
    lines += ["", "![residual histogram](residuals.png)", "", "## Rejected and failed pairs", ""]
    bad = [r for r in records if r.get("status") != "ok"]
    if bad:
        lines += ["| pair | scene | status | reason | detail |", "| --- | --- | --- | --- | --- |"]
        for r in bad:
            detail = str(r.get("message", "")).replace("|", "/").replace("\n", " ")[:160]
            lines.append(f"| {r['id']} | {r.get('scene', '')} | {r.get('status')} | {r.get('reason')} | {detail} |")
    else:
        lines.append("None.")
    lines += ["", "## Kept pairs, largest residual first", "",
              "Left: a checkerboard of the phone raw (quick render) and the aligned DSLR target; edges that run on "
              "across the squares mean a good alignment. Middle: |luminance difference| x 4; dark red is outside "
              "the trust mask. Right: the trust map over the phone render; dropped px are tinted by reason (grey "
              "outside the DSLR frame, cyan clipped, red occluded, orange moved, blue unverified).", ""]
    for r in kept[:pictures]:
        res = (r.get("quality") or {}).get("residual_median_px")
        extra = f", error vs truth {r['truth_error_px']['median']:.3f} px" if "truth_error_px" in r else ""
        lines.append(f"### {r['id']} (residual {res if res is None else f'{res:.3f}'} px{extra})")
        lines += ["", f"![{r['id']}](pairs/{r['id']}.png)", ""]
    path = report / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
