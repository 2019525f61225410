"""QA pictures of one alignment, for the person checking the data.

``write_pair_report(alignment, phone, dslr, out_dir)`` writes, at display size
(longer side ``max_side`` px):

- ``checkerboard.png``: phone preview and the DSLR warped onto the phone grid
  through ``alignment.map_points``, alternating in squares: edges that run
  straight across the squares are aligned;
- ``difference.png``: |phone - DSLR| of the locally normalised luminances,
  before (the DSLR only scaled to the phone frame) and after alignment, side by side;
- ``residuals.png``: the tile-wise residual displacement under the final model,
  magnitude as a heat map (black: unreliable tile), scale in the corner text;
- ``trust.png``: the trust map over the phone preview, dropped px tinted by reason
  (grey outside the DSLR frame, cyan clipped, red occluded, orange moved, blue
  unverified; see :mod:`alignment.trust`).

Display pixel j maps to phone px ``(j + 0.5) * f - 0.5`` (area resize by f).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from alignment import rawio, trust
from alignment.atomic import write_image
from alignment.ecc import local_normalize

__all__ = ["write_pair_report"]


def _phone_preview(phone) -> np.ndarray:
    if isinstance(phone, rawio.RawImage):
        return rawio.srgb_preview(phone)
    if isinstance(phone, rawio.RgbImage):
        return np.round(np.clip(phone.rgb, 0, 1) * 255).astype(np.uint8)
    raise TypeError("the report needs a rawio.RawImage or rawio.RgbImage phone image")


def _dslr_rgb(dslr) -> np.ndarray:
    if isinstance(dslr, rawio.RgbImage):
        return np.round(np.clip(dslr.rgb, 0, 1) * 255).astype(np.uint8)
    if isinstance(dslr, rawio.RawImage):
        return rawio.srgb_preview(dslr)
    raise TypeError("the report needs a rawio.RgbImage or rawio.RawImage DSLR image")


def _lum(rgb: np.ndarray) -> np.ndarray:
    return rawio.srgb_to_linear(rgb.astype(np.float32) / 255.0) @ np.array([0.2126, 0.7152, 0.0722], np.float32)


def _diff_image(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> np.ndarray:
    na = local_normalize(_lum(a), 8.0)
    nb = local_normalize(_lum(b), 8.0)
    d = np.clip(np.abs(na - nb) / 3.0, 0, 1)
    d[~valid] = 1.0
    return cv2.applyColorMap((d * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]


def _save(path: Path, rgb: np.ndarray) -> None:
    write_image(path, np.ascontiguousarray(rgb[..., ::-1]))


def write_pair_report(alignment, phone, dslr, out_dir: str | Path, max_side: int = 1200,
                      square: int = 48) -> dict[str, Path]:
    """Write the QA pictures of ``alignment`` into ``out_dir``; returns {name: path}.

    phone / dslr: the decoded images (``rawio.read_any``) the alignment was made from.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pw, ph = alignment.phone_size
    f = max(pw, ph) / float(max_side) if max(pw, ph) > max_side else 1.0
    dw, dh = int(round(pw / f)), int(round(ph / f))
    prev = cv2.resize(_phone_preview(phone), (dw, dh), interpolation=cv2.INTER_AREA)
    rgb = _dslr_rgb(dslr)
    ys, xs = np.mgrid[0:dh, 0:dw].astype(np.float64)
    pts = np.stack([(xs.ravel() + 0.5) * f - 0.5, (ys.ravel() + 0.5) * f - 0.5], 1)
    paths: dict[str, Path] = {}
    # before: DSLR scaled to the phone frame, no registration
    before = cv2.resize(rgb, (dw, dh), interpolation=cv2.INTER_AREA)
    ok_model = np.isfinite(alignment.homography).all()
    if ok_model:
        q = alignment.map_points(pts)
        # pre-blur the DSLR by its px per display px so the warp does not alias
        s = max(rgb.shape[1] / dw, 1.0)
        src = cv2.GaussianBlur(rgb, (0, 0), 0.45 * s) if s > 1.5 else rgb
        mx = q[:, 0].reshape(dh, dw).astype(np.float32)
        my = q[:, 1].reshape(dh, dw).astype(np.float32)
        after = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        valid = (mx >= 0) & (my >= 0) & (mx <= rgb.shape[1] - 1) & (my <= rgb.shape[0] - 1)
    else:
        after, valid = before, np.ones((dh, dw), bool)
    board = ((ys // square + xs // square) % 2).astype(bool)
    check = np.where(board[..., None], prev, after)
    paths["checkerboard"] = out / "checkerboard.png"
    _save(paths["checkerboard"], check)
    gap = np.full((dh, 8, 3), 255, np.uint8)
    diff = np.hstack([_diff_image(prev, before, np.ones_like(valid)), gap, _diff_image(prev, after, valid)])
    paths["difference"] = out / "difference.png"
    _save(paths["difference"], diff)
    if alignment.trust is not None:
        # the trust map over the phone preview: dropped px tinted by reason
        rows = np.clip(np.round(pts[:, 1]).astype(int), 0, ph - 1)
        cols = np.clip(np.round(pts[:, 0]).astype(int), 0, pw - 1)
        code = alignment.trust.code_at(np.stack([cols, rows], 1)).reshape(dh, dw)
        tinted = trust.overlay(prev.astype(np.float32) / 255.0, code)
        paths["trust"] = out / "trust.png"
        _save(paths["trust"], np.round(tinted * 255).astype(np.uint8))
    r = alignment.residuals
    if r is not None and r.reliable.size:
        gy, gx = r.grid_shape
        mag = np.where(r.reliable, r.magnitude, np.nan).reshape(gy, gx)
        top = max(float(np.nanmax(mag)) if np.isfinite(mag).any() else 0.0, 0.05)
        img = cv2.applyColorMap((np.nan_to_num(np.clip(mag / top, 0, 1)) * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
        img[~np.isfinite(mag)] = 0
        img = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_NEAREST)[..., ::-1].copy()
        cv2.putText(img, f"residual 0 .. {top:.3f} px (phone)", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (255, 255, 255), 1, cv2.LINE_AA)
        paths["residuals"] = out / "residuals.png"
        _save(paths["residuals"], img)
    return paths
