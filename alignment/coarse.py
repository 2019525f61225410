"""A start without features: exhaustive search over scale and translation at low resolution.

When too few SIFT matches agree (a whiteboard, a soft or low-texture scene, a
document), the geometry can still be found directly: both luminances are shrunk
to a few hundred px, locally normalised (a local gain and offset: tone curves,
exposure and vignetting do not count), and the central part of the phone frame is
slid over the DSLR image at every scale of a log-spaced range by OpenCV's
``matchTemplate`` (normalised correlation coefficient).  The best scale and
offset, refined to a fraction of a coarse px by a parabola through the peak, is
a similarity without rotation: the start that coarse-to-fine ECC then refines.
Rotation is not searched: the cameras of a rig are mounted level to within a few
degrees, which ECC's coarsest level takes.  Whether the result holds is not
decided here: the verdict keeps such a pair only when the refined model's
correlation and its tiles confirm it (:func:`alignment.quality.verdict`).

Coordinates: x = column, y = row, pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from alignment.ecc import local_normalize

__all__ = ["CoarseMatch", "coarse_search"]


@dataclass
class CoarseMatch:
    """homography: (3,3) phone px -> DSLR px of the grids searched (scale and
    translation); scale: DSLR px per phone px; score: the normalised correlation
    of the best placement in [-1, 1]."""

    homography: np.ndarray
    scale: float
    score: float


def _resize_matrix(f: float) -> np.ndarray:
    """(3,3) px of an image -> px of it resized by factor f (cv2.resize's pixel centres)."""
    return np.array([[f, 0, 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5], [0, 0, 1.0]])


def _prepare(lum: np.ndarray, valid: np.ndarray | None, f: float) -> np.ndarray:
    size = (max(1, int(round(lum.shape[1] * f))), max(1, int(round(lum.shape[0] * f))))
    small = cv2.resize(lum.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    mask = None if valid is None else cv2.resize(valid.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    return local_normalize(small, 2.0, mask).astype(np.float32)


def _subpixel(c: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """Parabola through the peak of a correlation map, per axis."""
    def off(a: float, b: float, d: float) -> float:
        den = a - 2 * b + d
        return float(np.clip(0.5 * (a - d) / den, -0.5, 0.5)) if den < 0 else 0.0

    dx = off(c[y, x - 1], c[y, x], c[y, x + 1]) if 0 < x < c.shape[1] - 1 else 0.0
    dy = off(c[y - 1, x], c[y, x], c[y + 1, x]) if 0 < y < c.shape[0] - 1 else 0.0
    return x + dx, y + dy


def coarse_search(phone: np.ndarray, phone_valid: np.ndarray | None, dslr: np.ndarray, dslr_valid: np.ndarray | None,
                  scale_guess: float | None = None, *, side: int = 160, template_share: float = 0.6,
                  search: float = 1.3, scale_range: tuple[float, float] = (0.25, 4.0),
                  step: float = 0.02) -> CoarseMatch | None:
    """The scale and translation that best place the phone frame in the DSLR image.

    phone, dslr: (h, w) luminances (any linear or encoded scale); *_valid: (h, w) bool
    of the measured px or None.  scale_guess: DSLR px per phone px (the EXIF focal
    lengths' guess), searched within ``search`` times either way; without it every
    scale of ``scale_range`` is searched.  The phone is shrunk to ``side`` px on its
    long side and its central ``template_share`` slid over the DSLR shrunk by the
    same factor over the scale, scales ``step`` apart (log).  Returns the best
    :class:`CoarseMatch` (phone px -> DSLR px of the full grids given), or None when
    the phone frame is flat or no scale fits the template inside the DSLR image.
    """
    ph, pw = phone.shape
    f_p = min(1.0, side / max(ph, pw))
    tmpl_full = _prepare(phone, phone_valid, f_p)
    th, tw = tmpl_full.shape
    mh, mw = int(round(th * (1 - template_share) / 2)), int(round(tw * (1 - template_share) / 2))
    tmpl = np.ascontiguousarray(tmpl_full[mh:th - mh, mw:tw - mw])
    if float(tmpl.std()) < 0.05:
        return None  # a flat phone frame (local normalisation leaves it near zero): nothing to place
    lo, hi = (scale_guess / search, scale_guess * search) if scale_guess else scale_range
    scales = np.exp(np.arange(np.log(lo), np.log(hi) + 1e-9, np.log1p(step)))
    best: tuple[float, float, float, float, float] | None = None
    for s in scales:
        f_d = f_p / s  # DSLR px shrunk so that it shows the scene at the phone template's scale
        if f_d > 1.0:
            continue
        if dslr.shape[0] * f_d < tmpl.shape[0] + 2 or dslr.shape[1] * f_d < tmpl.shape[1] + 2:
            continue
        img = _prepare(dslr, dslr_valid, f_d)
        if img.shape[0] < tmpl.shape[0] or img.shape[1] < tmpl.shape[1]:
            continue
        c = cv2.matchTemplate(img, tmpl, cv2.TM_CCOEFF_NORMED)
        c = np.nan_to_num(c, nan=-1.0, posinf=-1.0, neginf=-1.0)
        _, score, _, (x, y) = cv2.minMaxLoc(c)
        if best is None or score > best[0]:
            xs, ys = _subpixel(c, y, x)
            best = (float(score), float(s), f_d, xs, ys)
    if best is None:
        return None
    score, s, f_d, x0, y0 = best
    # phone px -> shrunk phone px -> template px -> shrunk DSLR px -> DSLR px
    shift = np.array([[1.0, 0, x0 - mw], [0, 1.0, y0 - mh], [0, 0, 1.0]])
    hom = np.linalg.inv(_resize_matrix(f_d)) @ shift @ _resize_matrix(f_p)
    return CoarseMatch(hom / hom[2, 2], s, score)
