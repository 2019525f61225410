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

A periodic scene (a colour chart's grid of patches, windows, tiles) places the
locally normalised frame almost as well one period off: local normalisation keeps
the patches' edges and drops their levels.  Every placement whose score comes
within ``contenders`` of the best (a local maximum of its scale's map) is therefore
also scored by the plain correlation of the shrunk luminances, levels kept (the
two cameras' tone curves differ, but a brighter patch stays brighter); the
placement with the highest sum of the two scores wins.  A scene without a
repeated structure has one such placement and is unchanged.

Coordinates: x = column, y = row, pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from alignment.ecc import correlation, local_normalize
from alignment.reduce import block_mean
from alignment.threads import thread_map

__all__ = ["CoarseMatch", "coarse_search"]


@dataclass
class CoarseMatch:
    """homography: (3,3) phone px -> DSLR px of the grids searched (scale and
    translation); scale: DSLR px per phone px; score: the normalised correlation
    of the locally normalised luminances at that placement, in [-1, 1];
    level_score: the plain correlation of the shrunk luminances there (levels kept);
    contenders: how many placements came within ``contenders`` of the best score
    (1: the placement was unambiguous)."""

    homography: np.ndarray
    scale: float
    score: float
    level_score: float = float("nan")
    contenders: int = 1


#: the DSLR is first shrunk once by an integer block of px, as large as keeps at least
#: this many block means across each px of the shrunk image at the finest scale searched
#: (``cv2.resize`` of a 24 MP luminance once per scale was 97 % of a real-size search)
BLOCK_MEANS_PER_PX = 3.0


def _resize_matrix(f: float) -> np.ndarray:
    """(3,3) px of an image -> px of it resized by factor f (cv2.resize's pixel centres)."""
    return np.array([[f, 0, 0.5 * f - 0.5], [0, f, 0.5 * f - 0.5], [0, 0, 1.0]])


def _prepare(lum: np.ndarray, valid: np.ndarray | None, f: float) -> tuple[np.ndarray, np.ndarray]:
    """lum shrunk by factor f -> (locally normalised, plain) float32 images.  lum and
    valid (bool, or its 0/1 float32 image; None: every px) are converted to float32
    only when they are not already (the DSLR side is block-shrunk once before the scales
    are searched, :func:`alignment.reduce.block_mean`)."""
    size = (max(1, int(round(lum.shape[1] * f))), max(1, int(round(lum.shape[0] * f))))
    small = cv2.resize(lum.astype(np.float32, copy=False), size, interpolation=cv2.INTER_AREA)
    mask = None if valid is None else cv2.resize(valid.astype(np.float32, copy=False), size,
                                                 interpolation=cv2.INTER_AREA) > 0.5
    return local_normalize(small, 2.0, mask).astype(np.float32), small


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
                  step: float = 0.02, contenders: float = 0.7) -> CoarseMatch | None:
    """The scale and translation that best place the phone frame in the DSLR image.

    phone, dslr: (h, w) luminances (any linear or encoded scale); *_valid: (h, w) bool
    of the measured px or None.  scale_guess: DSLR px per phone px (the EXIF focal
    lengths' guess), searched within ``search`` times either way; without it every
    scale of ``scale_range`` is searched.  The phone is shrunk to ``side`` px on its
    long side and its central ``template_share`` slid over the DSLR shrunk by the
    same factor over the scale, scales ``step`` apart (log).  contenders: placements
    scoring at least this share of the best are told apart by their plain
    correlation too (a periodic scene, see the module's docstring).  Returns the
    chosen :class:`CoarseMatch` (phone px -> DSLR px of the full grids given), or None
    when the phone frame is flat or no scale fits the template inside the DSLR image.
    """
    ph, pw = phone.shape
    f_p = min(1.0, side / max(ph, pw))
    tmpl_full, plain_full = _prepare(phone, phone_valid, f_p)
    th, tw = tmpl_full.shape
    mh, mw = int(round(th * (1 - template_share) / 2)), int(round(tw * (1 - template_share) / 2))
    tmpl = np.ascontiguousarray(tmpl_full[mh:th - mh, mw:tw - mw])
    plain_tmpl = plain_full[mh:th - mh, mw:tw - mw]
    whole = np.ones(plain_tmpl.shape, bool)  # the plain correlation over every template px
    if float(tmpl.std()) < 0.05:
        return None  # a flat phone frame (local normalisation leaves it near zero): nothing to place
    lo, hi = (scale_guess / search, scale_guess * search) if scale_guess else scale_range
    scales = np.exp(np.arange(np.log(lo), np.log(hi) + 1e-9, np.log1p(step)))
    # the DSLR side converted once, not once per scale (a 24 MP DSLR at real size)
    dslr = dslr.astype(np.float32, copy=False)
    # a mask of every px (most pairs: nothing clipped) normalises as no mask does
    # (ecc.local_normalize's weights are ones either way): nothing to shrink
    dslr_mask = None if dslr_valid is None or dslr_valid.all() else dslr_valid.astype(np.float32, copy=False)
    # ... and shrunk once by the largest integer block that leaves BLOCK_MEANS_PER_PX
    # block means across each px at the finest scale: each scale then shrinks that
    block = max(1, int(1.0 / (BLOCK_MEANS_PER_PX * f_p / scales[0]))) if len(scales) else 1
    small_dslr = dslr if block == 1 else block_mean(dslr, block)
    small_mask = dslr_mask if dslr_mask is None or block == 1 else block_mean(dslr_mask, block)

    def placements(s: float) -> tuple[float, np.ndarray, np.ndarray] | None:
        # one scale's correlation map over the DSLR shrunk so that it shows the scene at
        # the phone template's scale -> (f_d, map, plain shrunk DSLR); None: it does not fit
        f_d = f_p / s
        if f_d > 1.0:
            return None
        if dslr.shape[0] * f_d < tmpl.shape[0] + 2 or dslr.shape[1] * f_d < tmpl.shape[1] + 2:
            return None
        img, plain = _prepare(small_dslr, small_mask, f_d * block)
        if img.shape[0] < tmpl.shape[0] or img.shape[1] < tmpl.shape[1]:
            return None
        c = cv2.matchTemplate(img, tmpl, cv2.TM_CCOEFF_NORMED)
        return f_d, np.nan_to_num(c, nan=-1.0, posinf=-1.0, neginf=-1.0), plain

    # (score, level score, scale, f_d, x, y): each scale's local maxima above the floor,
    # the scales' maps made side by side and read in the order of the scales
    peaks: list[tuple[float, float, float, float, float, float]] = []
    floor = -1.0
    nms = np.ones((2 * (min(tmpl.shape) // 8) + 1,) * 2, np.uint8)  # peaks an eighth of the template apart
    for s, placed in zip(scales, thread_map(placements, scales)):
        if placed is None:
            continue
        f_d, c, plain = placed
        top = float(c.max())
        floor = max(floor, contenders * top)
        if top < floor:
            continue
        ys, xs = np.nonzero((c >= floor) & (c >= cv2.dilate(c, nms)))
        for y, x in zip(ys.tolist(), xs.tolist()):
            level = correlation(plain_tmpl, plain[y:y + tmpl.shape[0], x:x + tmpl.shape[1]], whole)
            xs_, ys_ = _subpixel(c, y, x)
            peaks.append((float(c[y, x]), level, float(s), f_d, xs_, ys_))
    if not peaks:
        return None

    def homography(peak: tuple[float, float, float, float, float, float]) -> np.ndarray:
        # phone px -> shrunk phone px -> template px -> shrunk DSLR px -> DSLR px
        f_d, x0, y0 = peak[3:]
        shift = np.array([[1.0, 0, x0 - mw], [0, 1.0, y0 - mh], [0, 0, 1.0]])
        hom = np.linalg.inv(_resize_matrix(f_d)) @ shift @ _resize_matrix(f_p)
        return hom / hom[2, 2]

    # one placement per place: the best-scoring scale of the peaks whose phone-frame
    # centres land within an eighth of the template's width of each other
    centre = np.array([(pw - 1) / 2, (ph - 1) / 2, 1.0])
    rivals: list[tuple[tuple, np.ndarray]] = []
    best_score = max(p[0] for p in peaks)
    for peak in sorted(peaks, reverse=True):
        if peak[0] < contenders * best_score:
            break
        hom = homography(peak)
        at = hom @ centre
        at = at[:2] / at[2]
        if all(np.hypot(*(at - other)) > tmpl.shape[1] / (8 * peak[3]) for _, other in rivals):
            rivals.append((peak, at))
    chosen = max((peak for peak, _ in rivals), key=lambda p: p[0] + p[1])
    return CoarseMatch(homography(chosen), chosen[2], chosen[0], chosen[1], len(rivals))
