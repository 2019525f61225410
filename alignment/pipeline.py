"""``align_pair`` / ``align_images``: register a DSLR image onto the phone raw grid.

Stages: photometric preparation (:mod:`alignment.prepare`), an initial scale
from EXIF focal lengths, SIFT + ratio test + USAC MAGSAC++
(:mod:`alignment.features`), coarse-to-fine unbiased ECC (:mod:`alignment.ecc`),
a radiometric fit of the DSLR response against the phone followed by a second
fine ECC pass, tile-wise local refinement into a smooth field
(:mod:`alignment.local`), and the verdict (:mod:`alignment.quality`).

The result, :class:`Alignment`, maps phone pixels on the FULL raw sensor grid
(rawpy ``raw_image_visible``; x = column, y = row, centres at integers) to DSLR
pixels: ``map_points(xy) = H(xy + u(xy))`` with the homography H and the local
field u.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

from alignment import trust
from alignment.blur import SHARP_MAX_MISFIT, estimate_relative_blur, least_misfit
from alignment.chroma import restore_chroma
from alignment.coarse import coarse_search
from alignment.ecc import (ECC_METHODS, Channel, EccResult, forward_from_plain, lens_coefficient_jacobian,
                           lens_coefficients, lens_undistort, photometric_maps, prepare_channels, refine_homography,
                           refine_planes)
from alignment.features import match_homography, to_uint8
from alignment.geometry import apply_homography, apply_homography_xy, pixel_centres
from alignment.layers import recover_layers, sharpness_ratio
from alignment.local import (SmoothField, TileChannel, TileResiduals, model_correlation, refine_local,
                             rewarped_masks, warp_channels)
from alignment.prepare import PreparedImage, RadiometricFit, fit_radiometric, focal_scale_guess, prepare_dslr, prepare_phone
from alignment.trust import TrustMap
from alignment.quality import Quality, Thresholds, verdict
from alignment.reduce import (DslrWindow, ResidualGrid, bin_phone, crop_and_shrink_dslr_for, mask_onto,
                              phone_bin_factor)
from alignment.threads import runs_beside, submit, thread_map

__all__ = ["Alignment", "AlignOptions", "align_images", "align_pair", "FORMAT"]

FORMAT = "isp-rig/alignment/1"


@dataclass
class AlignOptions:
    """Options of :func:`align_images` (all may be passed as keyword arguments).

    Features: ``ratio`` (Lowe), ``magsac_threshold`` (px of the feature image),
    ``max_features`` (SIFT keypoints kept per image, the strongest), ``feature_max_side``
    (px; images are downscaled for SIFT).
    Coarse ECC (mean luminance, locally normalised): ``ecc_method`` ("gn" or
    "opencv"), ``ecc_levels``, ``blur_sigma`` and ``norm_sigma`` (working px),
    ``gain_degree``, ``gauss_filt_size`` (OpenCV's pre-filter, "opencv" only).
    ``radiometric``: fit the DSLR response per phone target (Bayer plane), trying the
    saturation boosts ``dslr_saturations`` of the DSLR's rendering (see
    :func:`alignment.prepare.fit_radiometric`; ``(1.0,)``: none), and fitted again
    at the fine stage's first model when that moved the frame's corners or edge
    midpoints more than ``radiometric_refit_px`` (phone px; None: never);
    ``restore_chroma``: a JPEG DSLR's subsampled chroma gets its lost detail back from
    its luma before that fit (:mod:`alignment.chroma`).
    ``fine``: "planes" (a final Gauss-Newton with one channel per Bayer plane at
    its own sampling position, smooth polynomial gain of degree
    ``fine_gain_degree``, at most ``max_pixels``; when the noise leaves that pass's
    frame corners a standard error over ``fine_noise_px`` DSLR working px, its last pass
    takes as many more samples as bring it there, up to all of them and at most
    :data:`NOISE_SAMPLES_FACTOR` times ``max_pixels``; None: never; and with
    ``fine_full_step`` the pass ends with one Gauss-Newton step on every sample, when
    they are at most :data:`NOISE_SAMPLES_FACTOR` times ``max_pixels``) or "none".  ``fine_filter``:
    "sharp" (the planes' samples unfiltered against the DSLR blurred by the phone's
    blur relative to the DSLR's: ``phone_blur_sigma`` plane px, or measured on the
    pair when None, :mod:`alignment.blur`, and then only where the pair's noise leaves
    the misfit under ``blur.SHARP_MAX_MISFIT``) or "blur" (both pre-blurred by
    ``fine_blur_sigma`` plane px, as the local stage and the trust map always are).
    ``radial``: radial lens-distortion coefficients (0..2) estimated
    with the homography in both ECC stages (the phone lens: the undistortion of a
    forward lens, :func:`alignment.ecc.lens_coefficients`; the luminance stage fits
    the plain polynomial and hands it on converted); when the fine
    stage's model moves the frame corner by less than ``radial_min_px`` (phone
    px), the fine stage is run again without it (fewer parameters, less variance)
    and the local field takes whatever is left; ``lens_centre``: the fine stage also
    estimates the lens model's centre whenever it keeps a lens model (else the frame
    centre).  Local: ``local``,
    ``coarse_local`` (blurred passes with larger tiles first), ``tile_px`` (phone px; default: the longer side / 20,
    clamped to 8..48 working px), ``local_degrees``, ``tile_shading`` (the tiles measure
    with the fine stage's gain and offset divided out of the phone template, so that
    vignetting in a smooth tile is not taken for a shift; docs/alignment.md, step 9).
    ``scale_guess``: DSLR px per phone image px, overriding EXIF.  Working size (see
    :mod:`alignment.reduce`): ``max_plane_pixels`` bins the phone's working planes
    until each has at most this many px (None: never); ``global_plane_pixels``: the
    global stage up to the fine stage's first model (the features, the background
    start, ECC on the luminance, the response's first fit, the pre-fit mask, the fine
    trial) runs on planes binned until each has at most this many px (a 12 MP raw: 3 x 3
    against the working planes' 2 x 2), and the response's second fit, the fine
    stage's last pass, the local field and the trust map on the working planes (None,
    no more binning than ``max_plane_pixels``, or ``fine`` "none": one grid throughout;
    docs/alignment.md, #11's twenty-eighth stop);
    ``dslr_oversample``: after the features, the DSLR is cropped to the phone
    frame's footprint and averaged in integer blocks to about this many px per
    phone working px (None: cropped only); ``trust_grid_pixels``: the background start,
    the candidate models' scores and the pre-fit mask measure their dense residuals on
    the working grid binned until it holds at most this many px (None, the default: the
    working grid; :class:`alignment.reduce.ResidualGrid`; 250000 saves about 7 % of a
    12 MP pair's time, with mixed accuracy: docs/alignment.md, #11's twenty-fifth stop).
    Thresholds: see :class:`alignment.quality.Thresholds`.
    """

    ratio: float = 0.8
    magsac_threshold: float = 2.0
    feature_layers: int = 3
    max_features: int = 3000
    feature_max_side: int = 2000
    ecc_method: str = "gn"
    ecc_levels: int = 3
    blur_sigma: float = 0.7
    norm_sigma: float | None = 12.0
    gain_degree: int = 1
    gauss_filt_size: int = 1
    radiometric: bool = True
    radiometric_gain: bool = True
    restore_chroma: bool = True
    dslr_saturations: tuple[float, ...] = (1.0, 1.15, 1.3, 1.45, 1.6)
    radiometric_refit_px: float | None = 0.05
    fine: str = "planes"
    fine_blur_sigma: float = 0.5
    fine_filter: str = "sharp"
    phone_blur_sigma: float | None = None
    fine_gain_degree: int = 2
    max_pixels: int | None = 250_000
    fine_noise_px: float | None = 0.03
    fine_full_step: bool = True
    radial: int = 2
    radial_min_px: float = 1.0
    lens_centre: bool = True
    coarse_local: bool = False
    local: bool = True
    tile_px: float | None = None
    local_degrees: tuple[int, ...] = (-1, 0, 1, 2, 3, 4, 5, 6)
    tile_shading: bool = True
    scale_guess: float | None = None
    max_plane_pixels: int | None = 800_000
    global_plane_pixels: int | None = 400_000
    dslr_oversample: float | None = 2.5
    trust: bool = True
    trust_max_px: float = 1.0
    trust_margin_px: float = 8.0
    trust_refit: bool = True
    trust_refit_fraction: float = 0.01
    trust_layers: bool = True
    trust_grid_pixels: int | None = None
    coarse_start: bool = True
    coarse_min_score: float = 0.3
    # The verdict's thresholds, defaulting to quality.Thresholds (one home for the values).
    min_inliers: int = Thresholds.min_inliers
    min_inlier_ratio: float = Thresholds.min_inlier_ratio
    min_overlap: float = Thresholds.min_overlap
    min_correlation: float = Thresholds.min_correlation
    max_residual_px: float = Thresholds.max_residual_px
    min_reliable_tiles: float = Thresholds.min_reliable_tiles
    min_consistent: float = Thresholds.min_consistent
    min_correlation_confirmed: float = Thresholds.min_correlation_confirmed
    confirm_inliers: int = Thresholds.confirm_inliers
    min_trusted: float = Thresholds.min_trusted
    min_reliable_count: int = Thresholds.min_reliable_count
    min_reliable_cells: int = Thresholds.min_reliable_cells
    max_corner_sigma_px: float = Thresholds.max_corner_sigma_px

    def thresholds(self) -> Thresholds:
        return Thresholds(**{f.name: getattr(self, f.name) for f in fields(Thresholds)})

    def __post_init__(self) -> None:
        """Check every option's type and range (a ValueError naming the option), so a
        typo fails before any work starts rather than deep inside it."""
        for f in fields(self):
            value = getattr(self, f.name)
            kind = _OPTION_KINDS.get(f.name)
            if kind is None:
                continue
            allowed, check, says = kind
            if value is None and type(None) in allowed:
                continue
            if isinstance(value, bool) and bool not in allowed:
                ok = False
            else:
                ok = isinstance(value, allowed) and (check is None or check(value))
            if not ok:
                raise ValueError(f"alignment option {f.name}: {value!r} is not {says}")

    @classmethod
    def from_kwargs(cls, **kw) -> "AlignOptions":
        names = {f.name for f in fields(cls)}
        bad = sorted(set(kw) - names)
        if bad:
            raise TypeError(f"unknown alignment option(s): {', '.join(bad)} (known: {', '.join(sorted(names))})")
        return cls(**kw)


_POSITIVE = ((int, float), lambda v: v > 0, "a number > 0")
_FRACTION = ((int, float), lambda v: 0 <= v <= 1, "a number in [0, 1]")
_COUNT = ((int,), lambda v: v >= 1, "a whole number >= 1")
_FLAG = ((bool,), None, "true or false")
#: option -> (allowed types, check, what it must be); options not listed are not checked
_OPTION_KINDS = {
    "ratio": ((int, float), lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "magsac_threshold": _POSITIVE, "feature_layers": _COUNT, "max_features": _COUNT, "feature_max_side": _COUNT,
    "ecc_method": ((str,), lambda v: v in ECC_METHODS, "one of " + ", ".join(map(repr, ECC_METHODS))),
    "ecc_levels": ((int,), lambda v: v >= 1, "a whole number >= 1"),
    "blur_sigma": ((int, float), lambda v: v >= 0, "a number >= 0 (0: no blur)"),
    "norm_sigma": ((int, float, type(None)), lambda v: v is None or v > 0, "a number > 0 or null"),
    "gain_degree": ((int,), lambda v: 0 <= v <= 2, "0, 1 or 2"), "fine_gain_degree": ((int,), lambda v: 0 <= v <= 2,
                                                                                       "0, 1 or 2"),
    "radiometric": _FLAG, "radiometric_gain": _FLAG, "restore_chroma": _FLAG, "local": _FLAG, "coarse_local": _FLAG,
    "tile_shading": _FLAG, "trust": _FLAG,
    "trust_refit": _FLAG, "trust_layers": _FLAG, "coarse_start": _FLAG, "lens_centre": _FLAG,
    "coarse_min_score": ((int, float), lambda v: -1 <= v <= 1, "a number in [-1, 1]"),
    "fine": ((str,), lambda v: v in ("planes", "none"), "'planes' or 'none'"),
    "fine_blur_sigma": _POSITIVE,
    "fine_filter": ((str,), lambda v: v in ("sharp", "blur"), "'sharp' or 'blur'"),
    "phone_blur_sigma": ((int, float, type(None)), lambda v: v is None or v >= 0, "a number >= 0 or null"),
    "radial": ((int,), lambda v: 0 <= v <= 2, "0, 1 or 2"),
    "radial_min_px": ((int, float), lambda v: v >= 0, "a number >= 0"),
    "radiometric_refit_px": ((int, float, type(None)), lambda v: v is None or v >= 0, "a number >= 0 or null"),
    "max_pixels": ((int, type(None)), lambda v: v is None or v >= 1000, "a whole number >= 1000 or null"),
    "fine_noise_px": ((int, float, type(None)), lambda v: v is None or v > 0, "a number > 0 or null"),
    "fine_full_step": _FLAG,
    "max_plane_pixels": ((int, type(None)), lambda v: v is None or v >= 10_000, "a whole number >= 10000 or null"),
    "global_plane_pixels": ((int, type(None)), lambda v: v is None or v >= 10_000, "a whole number >= 10000 or null"),
    "trust_grid_pixels": ((int, type(None)), lambda v: v is None or v >= 10_000, "a whole number >= 10000 or null"),
    "dslr_oversample": ((int, float, type(None)), lambda v: v is None or v >= 1, "a number >= 1 or null"),
    "tile_px": ((int, float, type(None)), lambda v: v is None or v > 0, "a number > 0 or null"),
    "scale_guess": ((int, float, type(None)), lambda v: v is None or v > 0, "a number > 0 or null"),
    "trust_max_px": _POSITIVE, "trust_margin_px": ((int, float), lambda v: v >= 0, "a number >= 0"),
    "trust_refit_fraction": _FRACTION, "min_trusted": _FRACTION, "min_inlier_ratio": _FRACTION,
    "min_overlap": _FRACTION, "min_reliable_tiles": _FRACTION, "min_consistent": _FRACTION,
    "min_correlation": ((int, float), lambda v: -1 <= v <= 1, "a number in [-1, 1]"),
    "min_correlation_confirmed": ((int, float), lambda v: -1 <= v <= 1, "a number in [-1, 1]"),
    "min_inliers": ((int,), lambda v: v >= 4, "a whole number >= 4"),
    "min_reliable_count": ((int,), lambda v: v >= 1, "a whole number >= 1"),
    "min_reliable_cells": ((int,), lambda v: 1 <= v <= 9, "a whole number in 1..9"),
    "max_corner_sigma_px": _POSITIVE,
    "confirm_inliers": ((int,), lambda v: v >= 0, "a whole number >= 0"),
    "max_residual_px": _POSITIVE,
    "dslr_saturations": ((tuple, list), lambda v: len(v) >= 1 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v), "a list of numbers > 0"),
}


@dataclass
class Alignment:
    """Phone -> DSLR registration of one pair.

    homography: (3, 3) phone image px (full raw grid) -> DSLR px.
    field: local displacement u (phone px) applied before the homography.
    quality: :class:`alignment.quality.Quality` with the verdict.
    phone_size / dslr_size: (W, H) in each image's px.
    residuals: per-tile residuals under the final model (phone px), or None.
    """

    homography: np.ndarray
    field: SmoothField
    quality: Quality
    phone_size: tuple[int, int]
    dslr_size: tuple[int, int]
    phone_path: str | None = None
    dslr_path: str | None = None
    residuals: TileResiduals | None = None
    seconds: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    #: per-px trust on the phone's working grid (see :mod:`alignment.trust`); not part
    #: of the JSON record (its summary is: ``quality.trusted_fraction`` and ``dropped``)
    trust: TrustMap | None = None
    #: recovered layers (:mod:`alignment.layers`): (3, 3) phone px, radially undistorted by
    #: the global lens model -> stored DSLR px, one per object with a model of its own
    layers: list[np.ndarray] = field(default_factory=list)

    def dense_map_points(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) phone px -> (N, 2) DSLR px through the model that owns each px: a
        recovered layer where the trust map gave the px to one, else the global model
        (:meth:`map_points`).  Needs the trust map (not kept by the JSON record)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        out = self.map_points(xy)
        if not self.layers or self.trust is None:
            return out
        owner = self.trust.layer_of(xy)
        for k, hom in enumerate(self.layers):
            sel = owner == k
            if sel.any():
                pts = xy[sel]
                out[sel] = apply_homography(hom, pts + self.field.radial_part(pts[:, 0], pts[:, 1]))
        return out

    @property
    def ok(self) -> bool:
        return bool(self.quality.ok)

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) phone px (full raw grid) -> (N, 2) DSLR px, local field included."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        return apply_homography(self.homography, xy + self.field(xy))

    def to_dict(self) -> dict:
        d = {
            "format": FORMAT,
            "coordinates": "x = column, y = row, pixel centres at integers; phone = full raw sensor grid "
            "(raw_image_visible); map(x) = H (x + u(x))",
            # null when no model was found (NaN is not JSON)
            "homography": np.asarray(self.homography, float).tolist() if np.isfinite(self.homography).all() else None,
            "field": self.field.to_dict(),
            "quality": self.quality.to_dict(),
            "ok": bool(self.quality.ok),
            "reason": self.quality.reason,
            "phone_size": list(self.phone_size),
            "dslr_size": list(self.dslr_size),
            "phone_path": self.phone_path,
            "dslr_path": self.dslr_path,
            "seconds": self.seconds,
            "options": self.options,
            "layers": [np.asarray(hm, float).tolist() for hm in self.layers],
        }
        if self.residuals is not None:
            r = self.residuals
            d["residuals"] = {
                "grid_shape": list(r.grid_shape),
                "centres": np.round(r.centres, 3).tolist(),
                "shifts": np.round(r.shifts, 5).tolist(),
                "sigma": [None if not np.isfinite(s) else round(float(s), 5) for s in r.sigma],
                "correlation": np.round(r.correlation, 4).tolist(),
                "reliable": r.reliable.astype(bool).tolist(),
                "textured": None if r.textured is None else r.textured.astype(bool).tolist(),
            }
        return d

    def to_json(self, indent: int | None = None) -> str:
        """The alignment as a JSON string (see :meth:`from_json`)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes | dict) -> "Alignment":
        """Inverse of :meth:`to_json` (accepts the string or the parsed dict)."""
        d = text if isinstance(text, dict) else json.loads(text)
        if d.get("format") != FORMAT:
            raise ValueError(f"not an alignment record (format {d.get('format')!r}, expected {FORMAT!r})")
        res = None
        if d.get("residuals"):
            r = d["residuals"]
            res = TileResiduals(
                np.asarray(r["centres"], float).reshape(-1, 2),
                np.asarray(r["shifts"], float).reshape(-1, 2),
                np.array([np.inf if s is None else s for s in r["sigma"]], float),
                np.asarray(r["correlation"], float),
                np.asarray(r["reliable"], bool),
                tuple(r["grid_shape"]),
                None if r.get("textured") is None else np.asarray(r["textured"], bool),
            )
        return cls(
            homography=np.full((3, 3), np.nan) if d["homography"] is None else np.asarray(d["homography"], float),
            field=SmoothField.from_dict(d.get("field")),
            quality=Quality.from_dict(d["quality"]),
            phone_size=tuple(d["phone_size"]),
            dslr_size=tuple(d["dslr_size"]),
            phone_path=d.get("phone_path"),
            dslr_path=d.get("dslr_path"),
            residuals=res,
            seconds=d.get("seconds", {}),
            options=d.get("options", {}),
            layers=[np.asarray(hm, float) for hm in d.get("layers", [])],
        )


def _resize_matrix(old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """(3,3) px of a resized image (W, H)=new -> px of the original (W, H)=old (area resize)."""
    fx = old[0] / new[0]
    fy = old[1] / new[1]
    return np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1.0]])


def _feature_image(lum: np.ndarray, valid: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize by ``factor`` (<= 1) -> (uint8 image, mask, (3,3) feature px -> working px)."""
    h, w = lum.shape
    if factor < 0.95:
        nw, nh = max(8, int(round(w * factor))), max(8, int(round(h * factor)))
        small = cv2.resize(lum, (nw, nh), interpolation=cv2.INTER_AREA)
        vm = cv2.resize(valid.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA) > 0.5
        return to_uint8(small, vm), vm, _resize_matrix((w, h), (nw, nh))
    return to_uint8(lum, valid), valid, np.eye(3)


def _overlap_fraction(h_work: np.ndarray, shape: tuple[int, int], dslr_shape: tuple[int, int]) -> float:
    rows, cols = shape
    ys, xs = np.mgrid[0 : rows : max(1, rows // 40), 0 : cols : max(1, cols // 40)]
    p = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    w = p @ h_work[2, :2] + h_work[2, 2]
    q = apply_homography(h_work, p)
    dh, dw = dslr_shape
    inside = (w > 0) & (q[:, 0] >= 0) & (q[:, 1] >= 0) & (q[:, 0] <= dw - 1) & (q[:, 1] <= dh - 1)
    return float(inside.mean())


def align_images(phone, dslr, **options) -> Alignment:
    """Align a DSLR image onto a phone image.

    phone: ``rawio.RawImage``, ``rawio.RgbImage``, a path, or an array: (h, w, 4)
        packed raw planes (normalised, working grid half-res, phone coordinates
        on the full raw grid), (H, W, 3) sRGB-encoded RGB, (H, W) uint8/uint16
        sRGB-encoded grey, or (H, W) float linear luminance.
    dslr: the same kinds (a JPEG/TIFF ``RgbImage`` or an sRGB array is the usual case).
    options: see :class:`AlignOptions`.
    Returns an :class:`Alignment`; a pair that cannot be aligned comes back with
    ``quality.ok = False`` and the reason, never with a silently wrong answer.
    """
    opt = AlignOptions.from_kwargs(**options)
    # the linear algebra here is thin (N x 20 systems): a multi-threaded BLAS only
    # adds hand-over costs, and collapses when other processes hold the cores
    with threadpool_limits(1, user_api="blas"):
        return _align(phone, dslr, opt)


def _corner_px(q_radial: np.ndarray, image_size: tuple[int, int]) -> float:
    """The largest displacement of a frame corner by the lens model (phone image px)."""
    w, h = image_size
    half = max(w, h) / 2.0
    u = np.array([-1.0, 1.0, 1.0, -1.0]) * ((w - 1) / 2.0 / half)
    v = np.array([-1.0, -1.0, 1.0, 1.0]) * ((h - 1) / 2.0 / half)
    uu, vv = lens_undistort(np.asarray(q_radial, np.float64), u, v)
    return float(np.max(np.hypot(uu - u, vv - v)) * half)


_FINE_TOL_PX = 1e-3  # the fine stage's stopping rule: the last step moved no frame corner more (phone px)


@dataclass
class _FineTrial:
    """The fine stage's first pass (:func:`_fine_trial`): its homography (phone image px,
    undistorted by ``q_radial`` -> DSLR working px), the lens model kept (None: dropped),
    the channels' gains and offsets, and whether the final pass estimates the lens centre."""

    h_image: np.ndarray
    q_radial: np.ndarray | None
    photometric: list[np.ndarray] | None
    centre: bool
    samples: int  # how many samples the first pass used


def _fine_refine(channels: list[Channel], h: np.ndarray, q: np.ndarray | None, photo: list[np.ndarray] | None,
                 max_pixels: int | None, with_centre: bool, image_size: tuple[int, int], opt: AlignOptions,
                 tol_px: float = _FINE_TOL_PX, max_iter: int = 30, min_step_sigmas: float | None = None,
                 hands_over: Callable[[float, int], bool] | None = None) -> EccResult:
    """One per-plane Gauss-Newton pass of the fine stage (``q`` None: no lens model;
    ``tol_px``, ``max_iter``, ``min_step_sigmas`` and ``hands_over``: its stopping rule, see
    :func:`alignment.ecc.gn_refine`; with its series step: the pass starts near its end)."""
    # steps stop under a thousandth of a px at the frame corners: ten times finer
    # than any error the benchmarks resolve, a Gauss-Newton step fewer per pass
    return refine_planes(None, None, None, h, (image_size[1], image_size[0]), gain_degree=opt.fine_gain_degree,
                         max_pixels=max_pixels, radial=opt.radial if q is not None else 0, q0=q, channels=channels,
                         tol_px=tol_px, photo0=photo, lens_centre=with_centre and q is not None, max_iter=max_iter,
                         series=True, min_step_sigmas=min_step_sigmas, hands_over=hands_over)


def _blur_measure(targets: list, images: list[np.ndarray], image_mask: np.ndarray | None, h_image: np.ndarray,
                  q_radial: np.ndarray, p: PreparedImage, opt: AlignOptions, q: Quality) -> Future | None:
    """The phone's blur relative to the DSLR's (:func:`estimate_relative_blur` at the model
    (h_image, q_radial)) started in the background when the first :func:`_fine_channels`
    call will need it (None when it will not): it needs neither the channels nor the
    pre-fit mask, and runs while they are made."""
    if opt.fine != "planes" or opt.fine_filter == "blur" or q.fine_filter is not None or opt.phone_blur_sigma is not None:
        return None
    undistort = _undistortion(q_radial, p)
    return submit(lambda: estimate_relative_blur(targets, images, image_mask, h_image, undistort))


def _fine_channels(fit_channels: list[Channel], targets: list, images: list[np.ndarray], image_mask: np.ndarray | None,
                   h_image: np.ndarray, q_radial: np.ndarray, p: PreparedImage, opt: AlignOptions,
                   q: Quality, blur: Future | None = None) -> list[Channel]:
    """The channels the fine stage fits, with the masks of ``fit_channels`` (the
    local stage's, pre-blurred by ``fine_blur_sigma``): those themselves when
    ``opt.fine_filter`` is "blur" or the pair is too noisy for sharp channels, else the
    phone targets unfiltered against ``images`` blurred by the phone's blur relative to
    the DSLR's (:mod:`alignment.blur` says why), the informative samples chosen by the
    pre-blurred templates' gradients.  On the first call the blur is measured at the
    model (h_image, q_radial) unless ``opt.phone_blur_sigma`` gives it (sharp channels
    then, unmeasured), and ``q.phone_blur_sigma``, ``q.phone_blur_misfit`` and the
    choice, ``q.fine_filter`` (sharp when the misfit is under
    :data:`alignment.blur.SHARP_MAX_MISFIT`), hold for the later calls.  blur: that
    measure already started at the same model (:func:`_blur_measure`), or None."""
    if opt.fine_filter == "blur":
        q.fine_filter = "blur"
    elif q.fine_filter is None and opt.phone_blur_sigma is not None:
        q.phone_blur_sigma, q.fine_filter = float(opt.phone_blur_sigma), "sharp"
    elif q.fine_filter is None:
        sigma, misfits = blur.result() if blur is not None else estimate_relative_blur(
            targets, images, image_mask, h_image, _undistortion(q_radial, p))
        q.phone_blur_sigma, q.phone_blur_misfit = round(sigma, 4), round(least_misfit(misfits), 5)
        q.fine_filter = "sharp" if q.phone_blur_misfit < SHARP_MAX_MISFIT else "blur"
    if q.fine_filter == "blur":
        return fit_channels
    sharp = prepare_channels(targets, images, image_mask, h_image, relative_blur=q.phone_blur_sigma,
                             energies=[c.gradient_energy for c in fit_channels])
    return [c.with_mask(f.mask) for c, f in zip(sharp, fit_channels)]


def _fine_trial(channels: list[Channel], h_image: np.ndarray, q_radial: np.ndarray, image_size: tuple[int, int],
                opt: AlignOptions, photo0: list[np.ndarray] | None = None) -> _FineTrial:
    """The fine stage's first pass, on a quarter of the samples (with the lens model when
    ``opt.radial``): it decides whether the lens model stays (dropped when it moves the
    frame corner by less than ``radial_min_px``), and with it whether the final pass
    estimates the lens centre (``opt.lens_centre`` and a lens model kept), and gives
    :func:`_fine_final` its start (and :func:`_global_stage` the measure of how far the
    fine stage moves the model)."""
    samples = sum(int(c.mask.sum()) for c in channels)
    quarter = max(1000, min(samples, opt.max_pixels or samples) // 4)
    # the trial keeps the centre where it is: a centre is barely defined by a weak
    # lens model, and on a quarter of the samples its steps can run off the frame
    trial = _fine_refine(channels, h_image, q_radial if opt.radial else None, photo0, quarter, False, image_size, opt)
    # no lens distortion worth modelling: two fewer parameters, less variance
    lens = opt.radial and _corner_px(trial.radial, image_size) >= opt.radial_min_px
    # the centre is fixed by the radial terms alone: the final pass estimates it with the
    # lens model the trial kept (not only with one that ECC's luminance stage had found:
    # a low-texture scene starts from the background's homography, no lens, and its lens
    # model held at the frame centre was up to 1.2 px off at the corners of a whiteboard)
    return _FineTrial(trial.homography, trial.radial if lens else None, trial.photometric,
                      bool(opt.lens_centre and lens), quarter)


#: the farthest a lens centre the fine stage estimates may lie from the frame centre, as a
#: fraction of half the frame's longer side (the normalised units of ``ecc.lens_undistort``):
#: a phone lens's optical centre sits within 2 or 3 % of it (the simulator draws 1 % per
#: axis); one further out is the fit bending the frame to fit something else, and the
#: final pass is run again with the centre held at the frame centre
PLAUSIBLE_LENS_OFFSET = 0.1


#: the most samples the fine stage's last pass takes for the noise (``fine_noise_px``), as a
#: multiple of ``max_pixels``: 1 M at the default, a 12 MP phone's last pass on a
#: noisy pair about 4 times as long
NOISE_SAMPLES_FACTOR = 4

#: the fine stage's pass on more samples for the noise ends once a plain Gauss-Newton step
#: is shorter than this many standard errors of the noise (``ecc.gn_refine``'s
#: ``min_step_sigmas``): it starts from a converged pass, and a step that short moves the
#: model by less than the noise could tell.  Measured (docs/alignment.md, #11's
#: thirty-fourth stop): the night colour chart's 12 MP lens pair (rejected) drifted 30
#: steps of 0.16 to 0.28 standard errors each along what its flat patches leave free, 10 s
#: on 1 M samples; on the 1 MP benchmark it moved six pairs, by at most 0.0015 px.
NOISE_STEP_SIGMAS = 0.25


#: the last step of the fine stage on every sample (``fine_full_step``) is taken without
#: measuring where it lands when it moves no frame corner by more than this (DSLR working
#: px): the subset's model lies a few hundredths of a px from every sample's, where the
#: linearisation holds; a longer step is measured and kept only if the cost falls
FULL_STEP_TOL_PX = 0.05


def _fine_final(channels: list[Channel], trial: _FineTrial, image_size: tuple[int, int], opt: AlignOptions,
                max_pixels: int | None, q: Quality | None = None
                ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
    """The fine stage's last pass, on at most ``max_pixels`` samples (None: all), from the
    trial's model (with the lens centre held at the frame centre after all, with one
    more pass, when the estimate lies beyond :data:`PLAUSIBLE_LENS_OFFSET`; and without
    the lens model after all when the samples put it under ``radial_min_px``) -> (H,
    radial coefficients, the channels' gains and offsets).  With ``q`` (the last pass
    of the pair): when the noise leaves that pass's corners a standard error
    (``EccResult.corner_sigma_px``) over ``opt.fine_noise_px``, one more pass from its
    model on as many more samples as bring it there (:func:`_noise_samples`); then,
    with ``opt.fine_full_step``, one Gauss-Newton step from where it ended on every
    sample (:func:`_full_step_samples`); the samples of the last pass or step and the
    standard error they leave go to ``q.fine_samples`` / ``q.fine_sigma_px``."""
    q_radial = trial.q_radial
    # the samples the planes hold (for the passes after the pair's last one: not counted
    # for a pass that only places the response's samples)
    every = 0 if q is None else sum(int(c.mask.sum()) for c in channels)
    # the last pass of the pair, where the noise will call for more samples (the pass
    # below), ends as that pass does: its own noise is not the limit
    handing = None if q is None else (lambda sigma, samples: _noise_samples(sigma, samples, every, max_pixels, opt)
                                      is not None)
    rf = _fine_refine(channels, trial.h_image, q_radial, trial.photometric, max_pixels, trial.centre, image_size, opt,
                      min_step_sigmas=None if handing is None else NOISE_STEP_SIGMAS, hands_over=handing)
    if trial.centre and len(rf.radial) == 4 and np.hypot(rf.radial[2], rf.radial[3]) > PLAUSIBLE_LENS_OFFSET:
        # a centre run off the frame is no lens: the fit bent the frame to something else
        # (the real BruggeSquare pair: a centre 2800 px below the frame); held at the frame's
        rf = _fine_refine(channels, trial.h_image, q_radial, trial.photometric, max_pixels, False, image_size, opt)
    if q_radial is not None and _corner_px(rf.radial, image_size) < opt.radial_min_px:
        # all the samples do not confirm the trial's lens model (a weak scene): without it
        rf, q_radial = _fine_refine(channels, rf.homography, None, rf.photometric, max_pixels, False, image_size,
                                    opt), None
    if q is not None:
        more = _noise_samples(rf.corner_sigma_px, rf.samples, every, max_pixels, opt)
        if more is not None:
            # the noise, not the model, limits this pass (a soft scene at night): more of
            # the same samples, from where it ended, the lens model as it kept it.  On such
            # a pair Gauss-Newton converges only linearly (each step about half the last: a
            # night Blackmagic pair's 0.23, 0.10, 0.046 ... px), so its steps stop under a
            # tenth of the standard error the noise will leave on the new samples (what is
            # left of the series is about the last step: a twentieth of that error), or
            # once a step is under NOISE_STEP_SIGMAS of that noise's standard errors
            rf = _fine_refine(channels, rf.homography, rf.radial if q_radial is not None else None, rf.photometric,
                              more, q_radial is not None and len(rf.radial) == 4, image_size, opt,
                              tol_px=max(_FINE_TOL_PX, 0.1 * rf.corner_sigma_px * np.sqrt(rf.samples / more)),
                              min_step_sigmas=NOISE_STEP_SIGMAS)
        full = _full_step_samples(rf, every, max_pixels, opt)
        if full is not None:
            # the pass placed the model on a subset (a third of a 1 MP phone's px): a
            # soft scene's few textured px then carry the model, and which of them were
            # drawn moves it by hundredths of a px at the corners it extrapolates to (a
            # soft landscape's sky).  One Gauss-Newton step on every sample goes most of
            # the way to every sample's model (docs/alignment.md, step 8: a whole pass of
            # steps gained no more) at about one pass's price
            rf = _fine_refine(channels, rf.homography, rf.radial if q_radial is not None else None, rf.photometric,
                              full, q_radial is not None and len(rf.radial) == 4, image_size, opt,
                              tol_px=FULL_STEP_TOL_PX, max_iter=1)
        q.fine_samples, q.fine_sigma_px = rf.samples, round(rf.corner_sigma_px, 5)
    return rf.homography, (rf.radial if q_radial is not None else np.zeros(2)), rf.photometric


def _noise_samples(sigma_px: float, samples: int, every: int, max_pixels: int | None,
                   opt: AlignOptions) -> int | None:
    """How many samples bring the noise's standard error of a fine pass's corners
    (``sigma_px`` on its ``samples``; it falls as one over the square root of the samples)
    to ``opt.fine_noise_px``: at most ``every`` sample the channels hold and
    :data:`NOISE_SAMPLES_FACTOR` times ``max_pixels`` -> that many, or None when the pass
    is within it, already used every sample, or would gain under a quarter more."""
    target = opt.fine_noise_px
    if target is None or max_pixels is None or not samples or not sigma_px > target:
        return None
    want = int(np.ceil(samples * (sigma_px / target) ** 2))
    more = min(want, every, NOISE_SAMPLES_FACTOR * max_pixels)
    return more if more >= 1.25 * samples else None


def _full_step_samples(rf: EccResult, every: int, max_pixels: int | None, opt: AlignOptions) -> int | None:
    """How many samples the fine stage's last step takes with ``opt.fine_full_step``:
    ``every`` sample the channels hold -> that many, or None when the option is off,
    ``max_pixels`` is None (every sample already), the pass ``rf`` used over four fifths
    of them, or they are more than :data:`NOISE_SAMPLES_FACTOR` times ``max_pixels``: a
    12 MP phone's 3.2 M, where a step on 1 M of them would again be a subset, for 0.5 to
    1 s and 140 MB more (a soft Blackmagic pair 0.221 -> 0.212 px, Boston 0.028 -> 0.029)."""
    if not opt.fine_full_step or max_pixels is None or not rf.samples:
        return None
    return every if every <= NOISE_SAMPLES_FACTOR * max_pixels and every >= 1.25 * rf.samples else None


def _fine_stage(channels: list[Channel], h_image: np.ndarray, q_radial: np.ndarray, image_size: tuple[int, int],
                opt: AlignOptions, photo0: list[np.ndarray] | None, q: Quality
                ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
    """Per-plane Gauss-Newton on H (and the radial lens model) -> (H, radial coefficients,
    the channels' gains and offsets: a start for another fine stage on the same channels,
    ``photo0``): :func:`_fine_trial`, then :func:`_fine_final` (its samples recorded in ``q``)."""
    trial = _fine_trial(channels, h_image, q_radial, image_size, opt, photo0)
    return _fine_final(channels, trial, image_size, opt, opt.max_pixels, q)


def _model_moved_px(before: tuple[np.ndarray, np.ndarray | None], after: tuple[np.ndarray, np.ndarray | None],
                    p: PreparedImage) -> float:
    """How far (phone image px) two (h_image, radial coefficients or None) models move
    the phone frame's corners and edge midpoints apart from each other: the largest
    distance in DSLR working px over the DSLR's working px per phone image px."""
    w, h = p.image_size
    xs = np.array([0, (w - 1) / 2, w - 1, w - 1, w - 1, (w - 1) / 2, 0, 0], float)
    ys = np.array([0, 0, 0, (h - 1) / 2, h - 1, h - 1, h - 1, (h - 1) / 2], float)
    pts = np.stack([xs, ys], 1)

    def mapped(model: tuple[np.ndarray, np.ndarray | None]) -> np.ndarray:
        undistort = None if model[1] is None else _undistortion(model[1], p)
        return apply_homography(model[0], pts if undistort is None else undistort(pts))

    a = after[0] / after[0][2, 2]
    dslr_per_phone = math.sqrt(abs(np.linalg.det(a[:2, :2])))
    return float(np.max(np.linalg.norm(mapped(after) - mapped(before), axis=1))) / max(dslr_per_phone, 1e-12)


def _local_stage(channels: list[Channel], h_image: np.ndarray, q_radial: np.ndarray, p: PreparedImage,
                 opt: AlignOptions, coarse: tuple | None = None,
                 photometric: list[np.ndarray] | None = None) -> tuple[SmoothField, TileResiduals, list[TileChannel]]:
    """The smooth local field (radial part kept), the tile residuals under it and the
    channels warped by it (:func:`alignment.local.refine_local`).
    coarse: (targets, images, DSLR mask) for the optional blurred coarse passes.
    photometric: the fine stage's gains and offsets on ``channels``: the tiles measure
    under its shading (None: without)."""
    degrees = tuple(opt.local_degrees) if opt.local else (-1,)
    init = _radial_field(q_radial, p) if np.any(q_radial[:2] != 0) else None
    # about 20 tiles across, of 8 to 48 working px (a binned phone has coarser working px)
    step = float(p.to_image[0, 0])
    tile = opt.tile_px or float(np.clip(max(p.image_size) / 20.0, 8.0 * step, 48.0 * step))
    if opt.local and opt.coarse_local and coarse is not None:
        # coarse passes: blurred images and larger tiles catch displacements of
        # several px (strong lens distortion) that the fine tiles cannot
        targets, images, dslr_mask = coarse
        for factor in (4.0, 2.0):
            init, _, _, _ = refine_local(
                targets, images, dslr_mask, h_image, p.image_size, tile_px=factor * tile,
                blur_sigma=factor, degrees=degrees, iterations=4, spline=False, tol_px=0.05, init=init,
            )
    shading = photometric_maps(channels, photometric, (p.image_size[1], p.image_size[0])) if opt.tile_shading else None
    fld, _first, final, warped = refine_local(
        None, None, None, h_image, p.image_size, tile_px=tile, degrees=degrees,
        iterations=6 if opt.local else 1, init=init, channels=channels, shading=shading,
    )
    return fld, final, warped


def _radial_field(q_radial: np.ndarray, p: PreparedImage) -> SmoothField:
    """The field holding only the lens model (zero when there is none): q_radial = (q1, q2)
    about the frame centre, or (q1, q2, eu, ev) about a lens centre e (frame centre +
    e times half the longer side, :func:`alignment.ecc.lens_undistort`), recorded with
    its four coefficients (q1, q2, q3, q4) of :func:`alignment.ecc.lens_coefficients`."""
    if not np.any(q_radial[:2] != 0):
        return SmoothField()
    w_img, h_img = p.image_size
    half = max(w_img, h_img) / 2.0
    centre = ((w_img - 1) / 2.0, (h_img - 1) / 2.0)
    lens = centre if len(q_radial) < 4 else (centre[0] + half * float(q_radial[2]), centre[1] + half * float(q_radial[3]))
    coef = lens_coefficients(float(q_radial[0]), float(q_radial[1]))
    return SmoothField(-1, centre, half, radial=(*lens, half, *(float(c) for c in coef)))


def _undistortion(q_radial: np.ndarray, p: PreparedImage) -> Callable[[np.ndarray], np.ndarray] | None:
    """(N, 2) phone image px -> undistorted by the lens model ``q_radial`` (what the
    homography applies to), or None when there is no lens model."""
    lens = _radial_field(q_radial, p)
    return None if lens.empty else (lambda xy: xy + lens(xy))


def _channel_lists(warped: list[TileChannel]) -> tuple[list, list, list]:
    return [c.template for c in warped], [c.warped for c in warped], [c.mask for c in warped]


def _masked(channels: list[Channel], keep: np.ndarray) -> list[Channel]:
    """The channels with their template masks limited to ``keep`` (working grid)."""
    return [ch.with_mask(ch.mask & keep) for ch in channels]


def _trust_params(opt: AlignOptions) -> trust.TrustParams:
    return trust.TrustParams(max_px=opt.trust_max_px, margin_px=opt.trust_margin_px)


def _trust_stage(warped: list, p: PreparedImage, d: PreparedImage, h_image: np.ndarray, fld: SmoothField,
                 dslr_stored: tuple[np.ndarray, tuple[int, int]],
                 opt: AlignOptions, phones: trust.PhoneSides | None = None) -> tuple[TrustMap, trust.DenseResidual]:
    """Measure the residual densely and decide per working px (see :mod:`alignment.trust`).

    dslr_stored: ((3,3) reduced DSLR px -> stored px, stored (W, H)); phones: the
    phone's halves kept from earlier residuals (:func:`trust.dense_residual`)."""
    shape = p.lum.shape

    def outside_and_clipped() -> tuple[np.ndarray, np.ndarray]:
        # where each working px lands in the DSLR: outside its frame, or on clipped colour
        ys, xs = pixel_centres(*shape)
        ix, iy, _ = apply_homography_xy(p.to_image, xs, ys)  # (rows, cols) phone image px each
        if not fld.empty:  # the field on the working grid, separably (the same values as fld(img))
            step_xy = fld.dense(shape, p.to_image) * np.diag(p.to_image)[:2]
            ix, iy = ix + step_xy[..., 0], iy + step_xy[..., 1]
        rx, ry, _ = apply_homography_xy(h_image, ix, iy)  # reduced DSLR px
        to_stored, (sw, sh) = dslr_stored
        sx, sy, _ = apply_homography_xy(to_stored, rx, ry)
        outside = ~((sx >= 1) & (sy >= 1) & (sx <= sw - 2) & (sy <= sh - 2))
        clipped = ~p.valid
        d_clipped = d.colour_clipped
        if d_clipped.any():
            bad = d_clipped.astype(np.float32)
            at = cv2.remap(bad, rx.astype(np.float32), ry.astype(np.float32),
                           cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            clipped = clipped | (at > 0.01)
        return outside, clipped

    geometry = submit(outside_and_clipped)  # beside the dense residual's flows
    res = trust.dense_residual(*_channel_lists(warped), picture=True, phones=phones)  # (the watershed's picture too)
    outside, clipped = geometry.result()
    return trust.assess(res, p.to_image, outside, clipped, _trust_params(opt)), res


def _adopt_layers(tm: TrustMap, found: list, lens: SmoothField, p: PreparedImage, to_stored: np.ndarray,
                  stored_size: tuple[int, int]) -> list[np.ndarray]:
    """Trust the px of each recovered layer (where the global model dropped them as moved,
    occluded or unverified and the layer's own map stays inside the DSLR image); returns
    the layers' homographies in stored DSLR px."""
    out = []
    rows, cols = tm.code.shape
    for layer in found:
        ys, xs = np.nonzero(layer.region)
        img = apply_homography(p.to_image, np.stack([xs, ys], 1).astype(np.float64))
        hom = to_stored @ layer.homography
        hom = hom / hom[2, 2]
        at = apply_homography(hom, img + lens(img) if not lens.empty else img)
        sw, sh = stored_size
        inside = (at[:, 0] >= 1) & (at[:, 1] >= 1) & (at[:, 0] <= sw - 2) & (at[:, 1] <= sh - 2)
        code = tm.code[ys, xs]
        take = inside & np.isin(code, (trust.MOVED, trust.OCCLUDED, trust.UNVERIFIED))
        tm.code[ys[take], xs[take]] = 0
        tm.layer[ys[take], xs[take]] = len(out)
        out.append(hom)
    return out


def _layers_stage(tm: TrustMap, res: trust.DenseResidual, channels: list[Channel], h_image: np.ndarray,
                  fld: SmoothField, final: TileResiduals, q_radial: np.ndarray, p: PreparedImage,
                  to_stored: np.ndarray, stored_size: tuple[int, int], opt: AlignOptions) -> list[np.ndarray]:
    """Recover the objects that moved as layers of their own (:mod:`alignment.layers`) and
    trust their px in ``tm``; returns their homographies in stored DSLR px."""
    lens = _radial_field(q_radial, p)
    ref = final.correlation[final.reliable]
    params = _trust_params(opt)
    sharp = sharpness_ratio(res, tm.trusted & (res.snr >= params.flat_snr))
    found = recover_layers(tm, res, channels, lambda xy: apply_homography(h_image, xy + fld(xy)), lens, q_radial,
                           p.image_size, params, reference_correlation=float(np.median(ref)) if ref.size else 0.9,
                           background_sharpness=sharp if np.isfinite(sharp) else 1.0)
    return _adopt_layers(tm, found, lens, p, to_stored, stored_size)


def _tile_quality(q: Quality, final: TileResiduals, trust_map: TrustMap | None, image_size: tuple[int, int],
                  max_residual_px: float, corners: np.ndarray | None = None,
                  lens: tuple[float, ...] | None = None, lens_centre: bool = False
                  ) -> Callable[[np.ndarray], np.ndarray] | None:
    """The tile figures of the verdict (reliable and consistent shares, residual percentiles);
    with a trust map, over the tiles whose centre is trusted: the model is judged where
    the scene agrees with it.  corners: where the corner uncertainty is evaluated (see
    :func:`corner_uncertainty`); lens: the lens model kept (:attr:`SmoothField.radial`)
    or None; lens_centre: the fine stage estimated that lens's centre (its two terms
    are then parameters of the model the tiles must fix as well).  The faint tiles
    (:attr:`TileResiduals.faint`) join the reliable and one-edge ones in the
    uncertainty, each weighed by its own sigma, and their scatter about the model
    scales it (``residuals``); they do not count as reliable.  Returns how well
    the same tiles pin the model at other points ((K, 2) phone image px -> (K,)
    standard errors, :func:`position_uncertainty`), None without reliable tiles."""
    rel = final.reliable
    textured = final.textured
    one_way = final.edge if final.edge is not None else np.zeros_like(rel)
    faint = final.faint if final.faint is not None else np.zeros_like(rel)
    if trust_map is not None:
        cx = np.clip(np.round(final.centres[:, 0]).astype(int), 0, image_size[0] - 1)
        cy = np.clip(np.round(final.centres[:, 1]).astype(int), 0, image_size[1] - 1)
        in_trust = trust_map.code_at(np.stack([cx, cy], 1)) == 0
        rel = rel & in_trust
        textured = None if textured is None else textured & in_trust
        one_way = one_way & in_trust
        faint = faint & in_trust
        q.reliable_tiles = float((rel | one_way).sum() / max(int(in_trust.sum()), 1))
    else:
        q.reliable_tiles = float((rel | one_way).mean()) if rel.size else 0.0
    q.reliable_tile_count = int(rel.sum())
    q.edge_tile_count = int(one_way.sum())
    q.faint_tile_count = int(faint.sum())
    if one_way.any():
        q.edge_residual_p90_px = float(np.percentile(final.across[one_way], 90))
    if rel.any():
        w, h = image_size
        cells = (np.clip((final.centres[rel, 0] * 3 // w), 0, 2) * 3 + np.clip(final.centres[rel, 1] * 3 // h, 0, 2))
        q.reliable_cells = int(len(np.unique(cells)))
        q.tile_correlation = float(np.median(final.correlation[rel]))
        # the reliable tiles, those measured across one straight edge (a chart's patch
        # sides, lines of text) and the faint ones fix the model together; a one-way
        # tile's sigma as a reliable tile's (whose sigma adds its two directions' variances)
        ev = rel | one_way | faint
        sigma, normals = final.sigma, None
        if one_way.any():
            sigma = np.where(one_way, np.sqrt(2.0) * final.normal_sigma, final.sigma)
            normals = np.where(one_way[:, None], final.normal, 0.0)[ev]
        # a lens model: its two terms about its own centre, and the centre's two when the
        # fine stage estimated it (the parameters the model has are the ones to pin); the
        # tiles' scatter about the model scales the estimate with a lens model or faint
        # tiles (whose sigmas are the least sure)
        scatter = lens is not None or bool(faint.any())
        evidence = dict(residuals=final.shifts[ev] if scatter else None, normals=normals, lens=lens,
                        lens_centre=lens is not None and lens_centre)
        q.corner_sigma_px = corner_uncertainty(final.centres[ev], sigma[ev], image_size, corners=corners, **evidence)
        uncertainty = partial(position_uncertainty, final.centres[ev], sigma[ev], image_size, **evidence)
    judged = TileResiduals(final.centres, final.shifts, final.sigma, final.correlation, rel, final.grid_shape,
                           textured, normal=final.normal)
    # a tile measured across one straight edge agrees when its shift across it does (a
    # page of text on paper the DSLR clipped has few tiles reliable both ways)
    q.consistent_tiles = judged.consistent_fraction(max_residual_px, one_way)
    if rel.any():
        mag = judged.magnitude[rel]
        q.residual_median_px = float(np.median(mag))
        q.residual_p90_px = float(np.percentile(mag, 90))
        q.residual_max_px = float(mag.max())
        return uncertainty
    return None


def _mark_unpinned(q: Quality, trust_map: TrustMap, uncertainty: Callable[[np.ndarray], np.ndarray],
                   bound_px: float, lattice: int = 4) -> None:
    """Where the tiles leave the global model unpinned, its px are unverified.

    A model fixed by tiles in part of the frame (the texture of a soft landscape at
    night below a flat sky, a page's lines of text, a whiteboard's strokes) is known
    well near them and less so the farther it extrapolates, a lens model's terms
    most of all.  Every trusted px of the global model whose
    own standard error (:func:`position_uncertainty` at its centre, phone px) is over
    ``bound_px`` becomes :data:`alignment.trust.UNVERIFIED`, in ``trust_map`` and in
    ``q``'s trusted share and dropped shares, however the pair is kept.
    ``q.pinned_fraction``: the share of the measurable px (neither outside the DSLR
    frame nor clipped) within the bound, which the verdict weighs
    (``Thresholds.min_trusted``): about 1 when the tiles pin the corners, 0 (and
    nothing marked: they say nothing either way) when they fix the model nowhere.
    The standard error is a smooth function of position (its square a polynomial:
    of degree 4 for a homography, 10 at most with a lens model): it is evaluated on
    a lattice of every ``lattice``-th working px and its square interpolated linearly
    in between (a 12 MP phone's 750 000 working px in about 50 000 evaluations).
    (Measured on the 144 pairs of the broadened benchmark: over the px pinned to
    0.5 px, the models without a lens were at most 0.61 px off their truth; with a
    lens whose centre the fine stage estimates, and the centre's terms in the
    covariance, 0.52 px.  With the centre held at the frame centre a lens model was
    1.6 px off there: that model cannot follow a decentred lens, and no covariance
    sees such a bias.)"""
    code = trust_map.code
    rows, cols = code.shape
    (iy, fy, ny), (ix, fx, nx) = (_lattice_weights(n, lattice) for n in (rows, cols))
    gy, gx = np.meshgrid(np.linspace(0, rows - 1, ny), np.linspace(0, cols - 1, nx), indexing="ij")
    at = np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)], 1) @ trust_map.to_image.T
    var = uncertainty(at[:, :2]).reshape(ny, nx) ** 2
    if not np.all(np.isfinite(var)):  # (inf is all or nothing: the tiles fix the model or not)
        q.pinned_fraction = 0.0
        return
    measurable = ~np.isin(code, (trust.OUTSIDE, trust.CLIPPED))
    along = var[:, ix] * (1.0 - fx) + var[:, ix + 1] * fx  # (ny, cols)
    var_px = along[iy] * (1.0 - fy)[:, None] + along[iy + 1] * fy[:, None]  # (rows, cols)
    pinned = var_px <= bound_px * bound_px
    q.pinned_fraction = float((pinned & measurable).sum() / max(int(measurable.sum()), 1))
    unpinned = (code == 0) & ~pinned
    if trust_map.layer is not None:
        unpinned &= trust_map.layer < 0  # an object's own homography is not these tiles' model
    if unpinned.any():
        code[unpinned] = trust.UNVERIFIED
        q.trusted_fraction = float(trust_map.trusted.mean())
        q.dropped.update({k: round(v, 5) for k, v in trust_map.fractions().items() if k != "trusted"})


def _lattice_weights(n: int, lattice: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The px 0 .. n - 1 of an axis read off ``m = max(2, ceil((n - 1) / lattice) + 1)``
    lattice points spread evenly over it (``np.linspace(0, n - 1, m)``) -> (each px's
    lower lattice index (n,) int, its weight on the next one (n,) float, m)."""
    m = max(2, -(-(n - 1) // lattice) + 1)
    t = np.arange(n) * ((m - 1) / max(n - 1, 1))
    i = np.minimum(np.floor(t).astype(np.intp), m - 2)
    return i, t - i, m


def corner_uncertainty(centres: np.ndarray, sigma: np.ndarray, image_size: tuple[int, int],
                       sigma_floor_px: float = 0.05, radial: int = 0, residuals: np.ndarray | None = None,
                       corners: np.ndarray | None = None, normals: np.ndarray | None = None,
                       lens: tuple[float, ...] | None = None,
                       lens_centre: bool = False) -> float:
    """The largest of :func:`position_uncertainty` at the frame's four corners (or at
    ``corners``): how well the tiles pin the frame's corners (phone px, inf when the
    tiles cannot fix the model)."""
    if corners is None:
        w, h = image_size
        corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)
    s = position_uncertainty(centres, sigma, image_size, corners, sigma_floor_px, radial, residuals, normals, lens,
                             lens_centre)
    return float(s.max()) if np.all(np.isfinite(s)) else float("inf")


def position_uncertainty(centres: np.ndarray, sigma: np.ndarray, image_size: tuple[int, int], points: np.ndarray,
                         sigma_floor_px: float = 0.05, radial: int = 0, residuals: np.ndarray | None = None,
                         normals: np.ndarray | None = None,
                         lens: tuple[float, ...] | None = None,
                         lens_centre: bool = False) -> np.ndarray:
    """How well tiles pin the model at ``points`` ((K, 2) phone image px): the standard
    error (phone px) there of a homography (and a lens model, ``radial`` or ``lens``
    below) fitted to tile shifts measured at
    ``centres`` ((N, 2) phone image px) with standard errors ``sigma`` ((N,) px, floored
    at ``sigma_floor_px``: a tile's own error is optimistic) -> (K,) float64.  A small perturbation of
    the model, x -> x + (A x + t - x (p . x)) in coordinates centred on the frame and
    scaled by its half-diagonal, is linear in its 8 parameters; their covariance
    (J^T W J)^-1 propagated to the points.  Tiles in one band of the frame leave its
    corners free (large); tiles spread over it pin them (small).  radial: the model
    also holds that many radial lens terms (n |n|^2, n |n|^4), whose extrapolation to
    the corners is as uncertain.  residuals: the tiles' (N, 2) shifts left under the
    model (px); when given, the covariance is scaled by their robust reduced chi-square
    when it is over 1 (the tiles scatter more than their errors say).  The pipeline
    gives them when a lens model is kept: two low-texture pairs with one were kept at
    0.43 and 0.50 px by this estimate and were 2.2 and 0.94 px off; without a lens
    model the plain estimate held (no wrong keep among 36 homography pairs).  The
    pipeline evaluates it at the corners of the part of the frame the DSLR sees
    (:func:`corner_uncertainty` at :func:`overlap_corners`) and over the working grid
    (:func:`_mark_unpinned`: the trust map's ``unverified``).  normals: (N, 2) unit
    vectors, or zeros: a tile with a normal measures the shift across one straight
    edge only (its weight n n^T / sigma^2, nothing along the edge); zeros: both
    directions (weight I / sigma^2).  lens: the
    model's lens (cx, cy, s, q1, q2, q3, q4) as in :attr:`SmoothField.radial`: its two
    free parameters q1 and q2 (q3 and q4 following them,
    :func:`alignment.ecc.lens_coefficients`) about its own centre replace ``radial``'s;
    lens_centre: its centre is a free parameter too (two more terms: a centre that the
    tiles do not fix swings the corners by what the lens bends there).  A lens model is
    judged as one radial term richer than it is (:data:`SPARE_LENS_TERMS`, n |n|^6 about
    its centre, free): the pipeline fits a forward lens of two terms, a real lens may
    hold a third (k3 of OpenCV and DNG's WarpRectilinear), and where the tiles stop
    short of the rim the term it lacks bends the rim freely.  With ``residuals``
    the richer model is also fitted to the tiles' shifts (weighted least squares),
    and its correction at each point, the bias the tiles see there, adds to the
    variance.  (Measured on 12 MP lens pairs, docs/alignment.md, #11's thirty-first
    stop: the two-term estimate pinned the sky above an Eiffel tower and a
    whiteboard's blank rim to 0.1 to 0.5 px where they were 0.5 to 1.4 px off.)
    inf everywhere when the tiles cannot fix the parameters."""
    w, h = image_size
    c0 = np.array([(w - 1) / 2, (h - 1) / 2])
    scale = float(np.hypot(w, h)) / 2

    centred_terms = radial if lens is None else 0  # radial terms about the frame centre

    def jac(xy: np.ndarray) -> np.ndarray:
        x, y = ((xy - c0) / scale).T
        z, o = np.zeros_like(x), np.ones_like(x)
        r2 = x * x + y * y
        jx = np.stack([x, y, o, z, z, z, -x * x, -x * y] + [x * r2 ** (k + 1) for k in range(centred_terms)], 1)
        jy = np.stack([z, z, z, x, y, o, -x * y, -y * y] + [y * r2 ** (k + 1) for k in range(centred_terms)], 1)
        j = np.stack([jx, jy], 1) * scale  # (N, 2, 8 + centred_terms) px per parameter
        return j if lens is None else np.concatenate([j, _lens_jacobian(xy, lens, lens_centre, SPARE_LENS_TERMS)], 2)

    n_params = 8 + (centred_terms if lens is None else 2 + 2 * lens_centre + SPARE_LENS_TERMS)
    one_way = np.zeros(len(centres), bool)
    if normals is not None:
        nrm = np.asarray(normals, np.float64).reshape(-1, 2)
        one_way = np.hypot(nrm[:, 0], nrm[:, 1]) > 0
    # a tile measured both ways gives two equations, one across a straight edge one
    free = np.full(len(np.asarray(points).reshape(-1, 2)), np.inf)
    if 2 * len(centres) - int(one_way.sum()) < n_params:
        return free
    j = jac(np.asarray(centres, np.float64))
    wgt = 1.0 / np.maximum(np.asarray(sigma, np.float64), sigma_floor_px) ** 2
    metric = np.broadcast_to(np.eye(2), (len(wgt), 2, 2)).copy()
    if one_way.any():
        metric[one_way] = np.einsum("nk,nl->nkl", nrm[one_way], nrm[one_way])
    wmat = metric * wgt[:, None, None]  # (N, 2, 2) each tile's weight
    info = np.einsum("nki,nkl,nlj->ij", j, wmat, j)
    # the inverse through the eigenvalues of the matrix scaled to a unit diagonal (the lens
    # centre's terms are 1e-3 px per px where the others are a half-diagonal per unit, so
    # unscaled a well-fixed centre looks singular): a direction the tiles do not fix (edges
    # all one way, too few tiles for the lens terms) has an eigenvalue under a billionth of
    # the largest and leaves the corners free.  np.linalg.inv returned rounding noise there,
    # and a corner variance below zero read as 0 px: a document page 1.8 px off (one
    # reliable tile, six edges on text lines, two lens terms) was "pinned to 0.0 px"
    diag = np.diag(info)
    if not (np.all(np.isfinite(diag)) and np.all(diag > 0)):
        return free
    unit = np.sqrt(diag)
    try:
        evals, evecs = np.linalg.eigh(info / np.outer(unit, unit))
    except np.linalg.LinAlgError:
        return free
    if not np.all(np.isfinite(evals)) or evals[0] <= 1e-9 * evals[-1]:
        return free
    inverse = ((evecs / evals) @ evecs.T) / np.outer(unit, unit)
    cov, correction = inverse, None
    if residuals is not None and len(residuals):
        r = np.asarray(residuals, np.float64)
        z2 = np.einsum("nk,nkl,nl->n", r, wmat, r)
        if one_way.any():  # a chi-square with 1 dof there: scale to 2
            z2[one_way] *= 1.3863 / 0.4549
        cov = inverse * max(1.0, float(np.median(z2)) / 1.3863)  # the median of a chi-square with 2 dof
        if lens is not None:  # the richer model's fit to what the tiles left
            correction = inverse @ np.einsum("nki,nkl,nl->i", j, wmat, r)
    jc = jac(np.asarray(points, np.float64).reshape(-1, 2))
    var = np.einsum("nki,ij,nkj->n", jc, cov, jc)
    if correction is not None:
        var = var + np.square(np.einsum("nki,i->nk", jc, correction)).sum(1)
    return np.where(np.isfinite(var), np.sqrt(np.maximum(var, 0.0)), np.inf)


#: Radial terms beyond the lens model's two that :func:`position_uncertainty` lets free
#: (n |n|^6, then n |n|^8, ... about the lens centre): the model judged as that much richer.
SPARE_LENS_TERMS = 1


def _lens_jacobian(xy: np.ndarray, lens: tuple[float, ...], centre: bool, spare: int = 0) -> np.ndarray:
    """(N, 2, 2 [+ 2] [+ spare]) px of displacement per unit change of the lens model (cx,
    cy, s, q1, q2, q3, q4) of :meth:`SmoothField.radial_part` at ``xy`` ((N, 2) phone
    px): its two free coefficients q1 and q2 (q3 and q4 following them,
    :func:`alignment.ecc.lens_coefficients`; a record of two coefficients, written
    before #11's thirty-second stop, has none), with ``centre`` its centre (px per px),
    then ``spare`` further radial terms free of the model (d rho^6, d rho^8, ...: a
    forward lens's k3, k4)."""
    cx, cy, s = lens[:3]
    coef = np.asarray(lens[3:], np.float64)
    dcoef = lens_coefficient_jacobian(coef[0], coef[1])[: len(coef)]  # (K, 2)
    d = np.asarray(xy, np.float64) - np.array([cx, cy])
    rho2 = (d * d).sum(1) / (s * s)
    powers = np.stack([rho2 ** (k + 1) for k in range(max(len(coef), 2 + spare))], 1)  # rho^2, rho^4, ...
    cols = [d * (powers[:, : len(coef)] @ dcoef[:, j])[:, None] for j in range(2)]
    if centre:
        f = powers[:, : len(coef)] @ coef
        below = np.c_[np.ones_like(rho2), powers[:, : len(coef) - 1]]  # d(rho^2k) / d(rho^2) = k rho^(2k-2)
        slope = (below @ (coef * np.arange(1, len(coef) + 1))) * 2.0 / (s * s)
        for k in range(2):
            col = -d * (slope * d[:, k])[:, None]
            col[:, k] -= f
            cols.append(col)
    cols += [d * powers[:, 2 + k][:, None] for k in range(spare)]
    return np.stack(cols, 2)


def overlap_corners(h_stored: np.ndarray, phone_size: tuple[int, int], dslr_size: tuple[int, int]) -> np.ndarray:
    """The corners of the part of the phone frame that the DSLR frame covers: (K, 2)
    phone image px, the vertices of the phone frame intersected with the DSLR frame
    mapped back through ``h_stored`` ((3,3) phone image px -> DSLR stored px; the lens
    model left out: a few px at most at the rim).  The phone frame's four corners when
    the DSLR covers it whole or the intersection cannot be formed."""
    w, h = phone_size
    frame = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    dw, dh = dslr_size
    dslr = np.array([[0, 0], [dw - 1, 0], [dw - 1, dh - 1], [0, dh - 1]], np.float64)
    try:
        back = np.c_[dslr, np.ones(4)] @ np.linalg.inv(h_stored).T
    except np.linalg.LinAlgError:
        return frame
    if np.any(back[:, 2] <= 0):  # the DSLR frame's edge crosses the phone's horizon: no convex image
        return frame
    area, poly = cv2.intersectConvexConvex(frame.astype(np.float32), (back[:, :2] / back[:, 2:]).astype(np.float32))
    return poly.reshape(-1, 2).astype(np.float64) if area > 0 and poly is not None and len(poly) >= 3 else frame


def _luminance_residual(p: PreparedImage, d: PreparedImage, h_work: np.ndarray,
                        q_radial: np.ndarray | None = None,
                        phones: trust.PhoneSides | None = None) -> trust.DenseResidual:
    """The phone luminance against the DSLR luminance under a model, densely
    (:func:`trust.dense_residual` on the phone's working grid, without the local
    correlations: for the dominant motion and what a model explains).

    h_work: (3,3) phone working px -> DSLR working px, applied to the phone points
    undistorted by the radial lens model ``q_radial`` (None or zeros: none); phones:
    the phone's halves kept for reuse (see :func:`trust.dense_residual`)."""
    rows, cols = p.lum.shape
    ys, xs = pixel_centres(rows, cols)
    ix, iy, _ = apply_homography_xy(p.to_image, xs, ys)  # every working px in phone image px
    undistort = None if q_radial is None else _undistortion(q_radial, p)
    if undistort is not None:
        img = undistort(np.stack([ix.ravel(), iy.ravel()], 1))
        ix, iy = img[:, 0].reshape(rows, cols), img[:, 1].reshape(rows, cols)
    mx, my, _ = apply_homography_xy(h_work @ np.linalg.inv(p.to_image), ix, iy)
    map_x, map_y = mx.astype(np.float32), my.astype(np.float32)
    warped = cv2.remap(d.lum.astype(np.float32, copy=False), map_x, map_y, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT)
    seen = cv2.remap(d.valid.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                     borderValue=0) > 0
    return trust.dense_residual([p.lum], [warped], [p.valid & seen], correlations=False, phones=phones)


def _background_start(grid: ResidualGrid, d: PreparedImage, h_work: np.ndarray, opt: AlignOptions,
                      rounds: int = 3, phones: trust.PhoneSides | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Where ECC starts, and what it compares: the background.

    The features' homography h_work ((3,3) phone working px -> DSLR working px) may
    hold a foreground object's matches; the dense flow between the phone luminance
    and the DSLR luminance under it (on ``grid``, :class:`alignment.reduce.ResidualGrid`)
    has the background (the largest consistent plane, seen through the phone's lens:
    ``opt.radial`` radial terms beside the homography) as its dominant motion
    (:func:`trust.dominant_motion`).  Returns (h_work composed with that motion's
    homography, the phone's valid working px less those that do not follow it, lens
    included; ECC compares them without eroding those holes, see
    :func:`alignment.ecc.refine_homography`'s ``template_select``); h_work and the valid px
    unchanged when no motion can be fitted or when it leaves under a fifth of the px.  A
    correction that moves a frame corner by a working px or more is measured again from
    the corrected start (up to ``rounds`` times): the flow reaches only so far.

    The homography composed is MAGSAC's, or, where the first round finds that the lens
    bends the frame (``DominantMotion.lens_bends``), in every round the one fitted with
    the lens terms: through a strong lens MAGSAC's is a patch's, another each round, 1 to
    2.5 px from the last at the corners, and the rounds did not settle (a strong-lens
    pair ran all three); with the fit's the second is within half a px (docs/alignment.md,
    #11's thirty-ninth stop).  Decided once, as a start that switched between the two
    would not settle either.
    """
    p = grid.work
    rows, cols = p.lum.shape
    corners = np.array([[0, 0], [cols - 1, 0], [0, rows - 1], [cols - 1, rows - 1]], np.float64)
    mask = p.valid
    through_lens = None
    for _ in range(rounds):
        res = _luminance_residual(grid.phone, d, grid.model(h_work), phones=phones)
        motion = trust.dominant_motion(res, grid.step, margin_px=opt.trust_margin_px, radial=opt.radial)
        if motion.homography is None or motion.outliers.mean() >= 0.8:
            break
        if through_lens is None:
            through_lens = motion.lens_bends
        m = grid.motion(motion.lens_homography if through_lens else motion.homography)
        moved = h_work @ m
        h_work = moved / moved[2, 2]
        mask = p.valid & ~grid.up(motion.outliers)
        # a large correction was measured through a flow at the edge of its reach: look again
        if np.abs(apply_homography(m, corners) - corners).max() < 1.0:
            break
    return h_work, mask


def _explained(grid: ResidualGrid, d: PreparedImage, model: tuple[np.ndarray, np.ndarray],
               phones: trust.PhoneSides | None = None) -> int:
    """How many textured phone px of ``grid`` the (h_work, radial coefficients) model
    explains (:func:`trust.explained_px` of :func:`_luminance_residual`)."""
    h_work, q_radial = model
    res = _luminance_residual(grid.phone, d, grid.model(h_work), q_radial, phones=phones)
    return trust.explained_px(res, grid.step)


def _explained_scores(grid: ResidualGrid, d: PreparedImage, candidates: list[tuple[np.ndarray, np.ndarray]],
                      scores: list[Future | int | None] | None = None,
                      phones: trust.PhoneSides | None = None) -> list[int]:
    """:func:`_explained` of every (h_work, radial coefficients) candidate, those not yet
    scored side by side: ECC on the luminance can be pulled off the background by what it
    cannot tell apart (a near object, a lens model fitted to parallax), and the model that
    explains the most textured phone px is the background's.  scores: per candidate, its
    score already known, or started (:func:`alignment.threads.submit`), or None."""
    started = scores or [None] * len(candidates)
    fresh = thread_map(lambda c: _explained(grid, d, c, phones), [c for c, f in zip(candidates, started) if f is None])
    it = iter(fresh)
    return [next(it) if f is None else (f.result() if isinstance(f, Future) else int(f)) for f in started]


def _ecc_from(starts: list[tuple[np.ndarray, np.ndarray]], refine: Callable[[np.ndarray, np.ndarray, bool], EccResult]
              ) -> tuple[EccResult, int, bool]:
    """``refine(h, mask, skip)`` from the first start (homography, template mask) where it
    succeeds with every pyramid level (skip False); when none does, the starts again in
    order with the failing coarse levels skipped (skip True: a page of text on paper the
    DSLR clipped keeps too few samples at its coarse levels, see
    :func:`alignment.ecc.refine_homography`); the last failure is raised when none does.
    Returns (the result, the index of its start, skip)."""
    failure: Exception = ValueError("no start for ECC")
    for skip in (False, True):
        for k, (h, mask) in enumerate(starts):
            try:
                return refine(h, mask, skip), k, skip
            except (ValueError, np.linalg.LinAlgError) as err:
                failure = err
    raise failure


def _ecc_more_starts(starts: list[tuple[np.ndarray, np.ndarray]], first: int, skip: bool,
                     refine: Callable[[np.ndarray, np.ndarray, bool], EccResult]
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``refine(h, mask, skip)`` from each start after the ``first`` one, those that
    succeed -> their (homography, radial coefficients)."""
    found = []
    for h, mask in starts[first + 1 :]:
        try:
            r = refine(h, mask, skip)
        except (ValueError, np.linalg.LinAlgError):
            continue
        found.append(_ecc_model(r))
    return found


class _EccAhead:
    """ECC from the starts after the first, run ahead in the background (:func:`submit`)
    once the run from the first start shows that it may be needed: a level before its
    last ended unconverged (its steps still moving after ``max_iter``: ECC running off).
    The luminance stage is one channel and keeps one core busy; the runs ahead take the
    other.  Measured (docs/alignment.md, #11's thirty-fourth stop): on a real-size
    Eiffel lens pair, whose first run runs off, the luminance stage 1.40 -> 1.05 s
    in-process, the whole command 6.12 -> 5.78 s (medians of seven); begun
    with the first run on every pair, the runs ahead slowed it by contention (a 1 MP
    Kodak pair's stage 0.14 -> 0.22 s) where nine pairs in ten never need them.

    Called as ``ecc(h, mask, skip)`` with a start of ``starts`` (the same h array: a
    start is known by it): the result of the run begun ahead from that start (``skip``
    False; the same result, as a run depends on no thread), else ECC run now.
    :meth:`stop` ends the runs ahead still going (their results dropped) at their next
    level or Gauss-Newton step.  Nothing runs ahead where :func:`submit` would not run
    it beside the caller (one worker: a batch's pinned process).

    ecc: ``ecc(h, mask, skip, stop, level_done)`` (:func:`alignment.ecc.refine_homography`
    from the start (h, mask) with those arguments); starts: [(h, mask)], the first the
    one ECC runs from first."""

    def __init__(self, ecc: Callable[..., EccResult], starts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self._ecc = ecc
        self._first = id(starts[0][0]) if starts else None
        self._later = starts[1:]
        self._stop = threading.Event()
        self._ahead: dict[int, Future] = {}

    def __call__(self, h: np.ndarray, mask: np.ndarray, skip: bool) -> EccResult:
        ahead = None if skip or self._stop.is_set() else self._ahead.pop(id(h), None)
        if ahead is not None:
            return ahead.result()
        watch = self._level_done if id(h) == self._first and not skip else None
        return self._ecc(h, mask, skip, None, watch)

    def _level_done(self, r: EccResult, last: bool) -> None:
        """Begin the runs ahead when a level before the last ended unconverged."""
        if not last and not r.converged and not self._ahead and not self._stop.is_set() and runs_beside():
            self._ahead = {id(h): submit(partial(self._ecc, h, mask, False, self._stop, None))
                           for h, mask in self._later}

    def stop(self) -> None:
        """End the runs ahead still going (their results are dropped)."""
        self._stop.set()
        self._ahead.clear()


#: ECC on the luminance hands each level on (``refine_homography``'s ``hand_over_sigmas``)
#: once its Gauss-Newton steps are shorter than this many standard errors of the level's
#: noise: the next level, and after the last the fine stage, refine it on finer data.
#: Run to their 1e-3 px, those levels converge only linearly on a luminance the two
#: cameras' tones make differ (each step 0.7 to 0.76 of the last on 12 MP Eiffel and
#: BruggeSquare lens pairs: 26 and 30 steps, the last 10 to 12 under one standard error).
#: Measured (docs/alignment.md, #11's thirty-eighth stop): the stage 0.95 -> 0.49 s on
#: that Eiffel pair, 0.30 -> 0.25 s mean on the 1 MP benchmark's pairs; the 1 MP
#: benchmark's figures the same within their noise
LUMINANCE_HAND_OVER_SIGMAS = 0.5


def _ecc_model(r: EccResult) -> tuple[np.ndarray, np.ndarray]:
    """ECC's result as a model: (its homography scaled to H[2, 2] = 1, its radial coefficients)."""
    return r.homography / r.homography[2, 2], r.radial


#: ECC on the luminance runs again from the features' start (:func:`_luminance_model`)
#: when its result from the background start explains under this share of the textured px
#: the start explains: ECC ran off there.  Measured (docs/alignment.md, #11's thirtieth
#: stop): the 1 MP distortion pairs it rescues 0.011, 0.033, 0.23 and 0.52 (ECC's lens
#: model wild); on 24 of 31 real-size pairs ECC on the 3 x 3-binned planes ends a little
#: coarser than the dense flow's start, 0.73 to 0.999, where running it again never won
ECC_RESTART_SHARE = 0.6


def _luminance_model(starts: list[tuple[np.ndarray, np.ndarray]],
                     ecc: Callable[[np.ndarray, np.ndarray, bool], EccResult],
                     scores: Callable[[list, list], list[int]], start_score: Future | int | None
                     ) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """ECC on the luminance (``ecc(h, mask, skip)``, :func:`_ecc_from`) from ``starts``, the
    first of which is the background start, and the model kept: of ECC's result and that
    start, the one that explains more of the phone (``scores(models, known)`` -> one count
    per model, ``known`` its count where already known or started, see
    :func:`_explained_scores`; ``start_score``: the start's).  When ECC's result explains
    under :data:`ECC_RESTART_SHARE` of what the start explains, ECC ran off from where it
    began (a strong lens distortion the start holds none of, a near object): it runs
    again from the starts after the one it used, and the model that explains the most of
    all is kept.  Returns ((h_work, radial coefficients), how many more starts ECC ran
    from)."""
    r, used, skip = _ecc_from(starts, ecc)
    candidates = [_ecc_model(r), (starts[0][0], np.zeros(2))]
    found = scores(candidates, [None, start_score])
    more: list[tuple[np.ndarray, np.ndarray]] = []
    if found[0] < ECC_RESTART_SHARE * found[1] and used + 1 < len(starts):
        # (on a distortion BruggeTower pair ECC from the background start came out with the
        # lens model [-0.32, 0.71] at a correlation of 0.78, the start was kept and the
        # frame ended 44 px off at its corners; ECC from the features' start found the lens)
        more = _ecc_more_starts(starts, used, skip, ecc)
        candidates += more
        found = scores(candidates, found + [None] * len(more))
    return candidates[int(np.argmax(found))], len(more)


class _StageFailed(Exception):
    """A stage cannot go on: the verdict is made from what was measured so far.

    h_work: the model to record ((3,3) phone working px -> DSLR working px, None:
    none); message: why, for ``Quality.message`` (None: the verdict says it)."""

    def __init__(self, h_work: np.ndarray | None, message: str | None = None) -> None:
        super().__init__(message)
        self.h_work = h_work
        self.message = message


@dataclass
class _PairState:
    """What every stage of one alignment shares.

    p: the phone, prepared and binned (working grid -> phone image px: ``p.to_image``);
    d: the DSLR, prepared, then cropped and shrunk to the phone frame's footprint once
    the features have found it (``d.to_image``: DSLR working px -> stored px);
    window: that reduction (None before); stored_size: the DSLR (W, H) as stored;
    q: the quality figures the stages fill in; secs: seconds per stage;
    phones: the phone's halves of the dense residuals, kept for the next residual on
    the same planes and mask (:class:`alignment.trust.PhoneSides`); restoring: the
    reduced DSLR's chroma restoration while it runs in the background (its result
    becomes ``d.encoded`` on first use: :meth:`encoded_ready`), or None; finer: the
    phone on the working planes when ``p`` is binned coarser for the global stage
    (``AlignOptions.global_plane_pixels``), else None; finer_dslr: the DSLR reduced for
    those planes (and its window) once :func:`_reduce_dslr` has made it.  The global
    stage moves every stage after it onto them (:func:`_onto_finer_grid`)."""

    opt: AlignOptions
    p: PreparedImage
    d: PreparedImage
    stored_size: tuple[int, int]
    q: Quality
    secs: dict
    window: DslrWindow | None = None
    phones: trust.PhoneSides = field(default_factory=trust.PhoneSides)
    restoring: Future | None = None
    finer: PreparedImage | None = None
    finer_dslr: tuple[PreparedImage, DslrWindow] | None = None

    @property
    def step(self) -> float:
        """Phone image px per working px."""
        return float(self.p.to_image[0, 0])

    def h_image(self, h_work: np.ndarray) -> np.ndarray:
        """(3,3) phone image px -> DSLR working px of a working-grid model."""
        return h_work @ np.linalg.inv(self.p.to_image)

    def encoded_ready(self) -> None:
        """Wait for the chroma restoration started by :func:`_reduce_dslr`, if any, and
        put its result in ``d.encoded`` (its seconds in ``secs``)."""
        if self.restoring is not None:
            restoring, self.restoring = self.restoring, None
            self.d.encoded, self.secs["restore_chroma"] = restoring.result()


@dataclass
class _GlobalModel:
    """The global model and the channels it is measured on.

    h_image: (3,3) phone image px (undistorted by ``q_radial``) -> DSLR working px;
    q_radial: (2,) radial lens coefficients; targets / images: the phone planes and
    their DSLR predictions; channels: every phone px; fit_channels: the px the fit
    uses (what moved kept out); fld / final / warped: the local field, the tile
    residuals under the whole model and the fit channels warped by it (after
    :func:`_local_fit`); photometric: the fine stage's per-channel gains and offsets
    (a start for the refit's fine stage)."""

    h_image: np.ndarray
    q_radial: np.ndarray
    targets: list
    images: list
    channels: list[Channel]
    fit_channels: list[Channel]
    fld: SmoothField = field(default_factory=SmoothField)
    final: TileResiduals | None = None
    warped: list[TileChannel] = field(default_factory=list)
    photometric: list[np.ndarray] | None = None

    def h_work(self, s: _PairState) -> np.ndarray:
        """(3,3) phone working px -> DSLR working px."""
        return self.h_image @ s.p.to_image


def _prepare_pair(phone, dslr, opt: AlignOptions) -> _PairState:
    t0 = time.perf_counter()

    def phone_side() -> tuple[PreparedImage, PreparedImage | None]:
        p = prepare_phone(phone)
        final = phone_bin_factor(p, opt.max_plane_pixels)
        # (coarser planes for the global stage only with a fine stage, whose last pass is on the working ones)
        first = max(final, phone_bin_factor(p, opt.global_plane_pixels)) if opt.fine == "planes" else final
        return bin_phone(p, first), None if first == final else bin_phone(p, final)

    (p, finer), d = thread_map(lambda side: side(), [phone_side, lambda: prepare_dslr(dslr)])  # side by side
    return _PairState(opt, p, d, d.image_size, Quality(), {"prepare": time.perf_counter() - t0}, finer=finer)


def _features_stage(s: _PairState) -> np.ndarray:
    """SIFT + MAGSAC at comparable scales (the EXIF scale guess) -> h_work ((3,3) phone
    working px -> DSLR working px); stops the alignment when too few matches agree or
    the frames hardly overlap."""
    t1 = time.perf_counter()
    p, d, opt, q = s.p, s.d, s.opt, s.q
    s_guess = opt.scale_guess or focal_scale_guess(p, d)
    ph, pw = p.lum.shape
    dh, dw = d.lum.shape
    f_phone = min(1.0, opt.feature_max_side / max(ph, pw))
    if s_guess:
        # DSLR px per phone feature px -> downscale the DSLR to the phone feature scale
        f_dslr = min(1.0, f_phone / (s_guess * s.step))
    else:
        f_dslr = min(1.0, opt.feature_max_side / max(dh, dw))
    # the two sides side by side (the DSLR's is a 24 MP shrink at real size)
    (fa, ma, sa), (fb, mb, sb) = thread_map(lambda side: _feature_image(*side),
                                            [(p.lum, p.valid, f_phone), (d.lum, d.valid, f_dslr)])
    fm = match_homography(fa, fb, ma, mb, ratio=opt.ratio, threshold_px=opt.magsac_threshold,
                          max_features=opt.max_features, layers=opt.feature_layers)
    q.keypoints_phone, q.keypoints_dslr = fm.keypoints_a, fm.keypoints_b
    q.matches, q.inliers, q.inlier_ratio = fm.matches, fm.inliers, fm.inlier_ratio
    s.secs["features"] = time.perf_counter() - t1
    if fm.homography is None or fm.inliers < opt.min_inliers or fm.inlier_ratio < opt.min_inlier_ratio:
        h_work = _coarse_start(s, s_guess)
    else:
        h_work = sb @ fm.homography @ np.linalg.inv(sa)
        h_work /= h_work[2, 2]
    q.overlap_fraction = _overlap_fraction(h_work, p.lum.shape, d.lum.shape)
    if q.overlap_fraction < opt.min_overlap:
        raise _StageFailed(h_work)
    return h_work


def _coarse_start(s: _PairState, s_guess: float | None) -> np.ndarray:
    """Too few feature matches agree: the exhaustive low-resolution search over scale
    and translation (:func:`alignment.coarse.coarse_search`, around the EXIF scale
    guess when there is one) -> h_work, the start for ECC (``Quality.start`` becomes
    "coarse"; the verdict keeps the pair only when the tiles confirm the refined
    model).  Stops the alignment when the option is off or no placement correlates
    at ``coarse_min_score``."""
    p, d, opt, q = s.p, s.d, s.opt, s.q
    if not opt.coarse_start:
        raise _StageFailed(None)
    t0 = time.perf_counter()
    guess = s_guess * s.step if s_guess else None  # DSLR working px per phone working px
    cm = coarse_search(p.lum, p.valid, d.lum, d.valid, guess)
    s.secs["coarse_start"] = time.perf_counter() - t0
    q.coarse_score = float("nan") if cm is None else round(cm.score, 4)
    q.coarse_contenders = 0 if cm is None else cm.contenders
    if cm is None or cm.score < opt.coarse_min_score:
        said = "no placement" if cm is None else f"best correlation {cm.score:.2f} < {opt.coarse_min_score}"
        raise _StageFailed(None, f"the coarse search found no start either: {said}")
    q.start = "coarse"
    return cm.homography


def _reduce_dslr(s: _PairState, h_work: np.ndarray) -> np.ndarray:
    """Keep the DSLR px the phone frame covers, at no more px than the estimators use:
    from here on ``s.d`` is the reduced DSLR (and ``s.finer_dslr`` the DSLR reduced on
    the same crop for the working planes, when the global stage runs on coarser ones);
    returns h_work onto ``s.d``'s grid."""
    steps = (s.step,) if s.finer is None else (s.step, float(s.finer.to_image[0, 0]))
    (s.d, s.window), *finer = crop_and_shrink_dslr_for(s.d, s.h_image(h_work), s.p.image_size, steps,
                                                       s.opt.dslr_oversample)
    s.finer_dslr = finer[0] if finer else None
    # for the response fit, the only reader of the encoded RGB: in the background while
    # the background start and ECC on the luminance run (about 1 s of one core at real
    # size, where those leave a core idle a third of the time); the same result
    if s.d.encoded is not None and s.d.chroma_sampling is not None and s.opt.restore_chroma and s.opt.radiometric:
        encoded, sampling, origin = s.d.encoded, s.d.chroma_sampling, s.window.crop[:2]

        def restore() -> tuple[np.ndarray, float]:
            t0 = time.perf_counter()
            return restore_chroma(encoded, sampling, origin=origin), time.perf_counter() - t0

        s.restoring = submit(restore)
    h_work = np.linalg.inv(s.window.to_stored) @ h_work
    return h_work / h_work[2, 2]


def _fit_response(s: _PairState, targets: list, h_image: np.ndarray, q_radial: np.ndarray | None,
                  saturations: tuple[float, ...], restored: bool = True) -> RadiometricFit | None:
    """The DSLR's response fitted per phone plane at the model (h_image, q_radial)
    (:func:`alignment.prepare.fit_radiometric`, step 6), trying the saturation boosts
    ``saturations``; None when the options or the DSLR image allow none.  restored:
    on the JPEG's chroma restored (waiting for it, :meth:`_PairState.encoded_ready`);
    False: on the chroma as decoded when its restoration has not ended yet."""
    if restored:
        s.encoded_ready()
    p, d, opt = s.p, s.d, s.opt
    if not opt.radiometric or d.encoded is None:
        return None
    window = s.window
    return fit_radiometric(
        targets, d, h_image, encoded_grid=None if window is None else (window.to_crop, window.size),
        groups=[0, 1, 1, 2] if len(targets) == 4 else None,  # R, G1, G2, B: one green filter
        frame=p.image_size if opt.radiometric_gain else None, saturations=saturations,
        undistort=None if q_radial is None else _undistortion(q_radial, p),
    )


def _onto_finer_grid(s: _PairState, h_image: np.ndarray) -> np.ndarray:
    """Move the alignment from the global stage's coarser planes onto the working planes
    (``s.finer``) and the DSLR reduced for them (``s.finer_dslr``): ``s.p``, ``s.d`` and
    ``s.window`` become those, and the JPEG's chroma restored on the crop both DSLR grids
    share (:func:`alignment.reduce.crop_and_shrink_dslr_for`) the new DSLR's.  h_image:
    (3,3) phone image px -> the coarser DSLR grid's px; returns it onto the new one's."""
    coarse_d = s.d
    s.encoded_ready()
    s.p, (s.d, s.window) = s.finer, s.finer_dslr
    s.finer = s.finer_dslr = None
    s.d.encoded = coarse_d.encoded
    h = np.linalg.inv(s.d.to_image) @ coarse_d.to_image @ h_image
    return h / h[2, 2]


def _response_refit(s: _PairState, targets: list, keep: np.ndarray | None, saturation: float | None,
                    h_fine: np.ndarray, q_fine: np.ndarray, photo: list[np.ndarray] | None, trial: _FineTrial,
                    templates: list[tuple[np.ndarray, np.ndarray]] | None = None) -> _GlobalModel:
    """The response fitted again at the fine stage's model (h_fine: phone image px -> DSLR
    working px; q_fine, the lens model, all zero when it was dropped) with the boost
    ``saturation`` the first fit chose (None: no first fit), the channels made on it
    (``templates``: the phone's filtered planes kept from the first channels, None: made
    here), ``keep`` (the pre-fit mask on ``s.p``'s grid; None: every px) kept out of the
    fit, and the fine stage's last pass from the model on them (the trial's lens choice,
    ``photo`` its start) -> the model and its channels."""
    opt, q, p, d = s.opt, s.q, s.p, s.d
    lens = q_fine if np.any(q_fine != 0) else None
    fitted = _fit_response(s, targets, h_fine, lens,
                           tuple(opt.dslr_saturations) if saturation is None else (saturation,))
    images = [d.lum] * len(targets) if fitted is None else fitted.images
    if fitted is not None:
        q.radiometric_refit = True
    # the phone's relative blur, when not measured yet (the working planes' first fit),
    # measured beside the channels: it needs only the fitted images and the model
    blur = _blur_measure(targets, images, d.valid, h_fine, q_fine, p, opt, q)
    channels = prepare_channels(targets, images, d.valid, h_fine, blur_sigma=opt.fine_blur_sigma,
                                templates=templates)
    fit_channels = channels if keep is None else _masked(channels, keep)
    start = _FineTrial(h_fine, lens, photo, trial.centre and lens is not None, trial.samples)
    h_fine, q_fine, photo = _fine_final(
        _fine_channels(fit_channels, targets, images, d.valid, h_fine, q_fine, p, opt, q, blur), start,
        p.image_size, opt, opt.max_pixels, q)
    return _GlobalModel(h_fine, q_fine, targets, images, channels, fit_channels, photometric=photo)


def _global_stage(s: _PairState, h_work: np.ndarray) -> _GlobalModel:
    """The background start, coarse-to-fine ECC on the luminance, the radiometric fit,
    the fine channels, the pre-fit outlier mask and the per-plane fine stage (steps 4
    to 8 of docs/alignment.md); stops the alignment with "ECC failed" when any fails."""
    t2 = time.perf_counter()
    p, d, opt, q = s.p, s.d, s.opt, s.q
    eccopt = dict(method=opt.ecc_method, blur_sigma=opt.blur_sigma, norm_sigma=opt.norm_sigma,
                  gain_degree=opt.gain_degree, gauss_filt_size=opt.gauss_filt_size)
    targets = p.plane_targets()
    starts = [(h_work, p.valid)]
    start_score = None
    if opt.trust:
        t_bg = time.perf_counter()
        grid = ResidualGrid.at_most(p, opt.trust_grid_pixels)
        starts.insert(0, _background_start(grid, d, h_work, opt, phones=s.phones))
        s.secs["background_start"] = time.perf_counter() - t_bg
        # what the start explains is measured while ECC runs from it (see _luminance_model)
        start_score = submit(lambda: _explained(grid, d, (starts[0][0], np.zeros(2)), s.phones))

    def ecc(h: np.ndarray, mask: np.ndarray, skip: bool, stop: threading.Event | None = None,
            level_done: Callable[[EccResult, bool], None] | None = None) -> EccResult:
        # the lens in the plain form while the pyramid runs from far (see refine_homography),
        # handed on in the forward form every later stage fits
        # (the start's mask holds what does not follow the background: measured px, compared
        # nowhere, but not eroded as unmeasured ones are)
        r = refine_homography(p.lum, d.lum, h, p.valid, d.valid, template_select=None if mask is p.valid else mask,
                              levels=opt.ecc_levels,
                              min_level=1 if opt.fine == "planes" else 0,
                              radial=opt.radial if opt.ecc_method == "gn" else 0, skip_failed_levels=skip,
                              forward_lens=False, stop=stop, level_done=level_done,
                              hand_over_sigmas=LUMINANCE_HAND_OVER_SIGMAS, **eccopt)
        return replace(r, radial=forward_from_plain(r.radial, p.lum.shape))

    try:
        if opt.trust:
            ahead = _EccAhead(ecc, starts)
            try:
                (h_work, q_radial), q.ecc_restarts = _luminance_model(
                    starts, ahead, lambda models, known: _explained_scores(grid, d, models, known, s.phones),
                    start_score)
            finally:
                ahead.stop()
        else:
            h_work, q_radial = _ecc_model(_ecc_from(starts, ecc)[0])
        q.radial_corner_px = _corner_px(q_radial, p.image_size)
        h_image = s.h_image(h_work)
        # on coarser planes than the working ones (``global_plane_pixels``) up to a first
        # fine model: the response fitted on the chroma as decoded (its lost detail matters
        # less there than waiting for it; it is back for the fit on the working planes), and
        # the fine trial on the pre-blurred channels (the phone's blur relative to the DSLR's,
        # in plane px, is measured on the working planes, where the last pass uses it)
        finer = s.finer is not None
        fitted = _fit_response(s, targets, h_image, q_radial, tuple(opt.dslr_saturations), restored=not finer)
        images = [d.lum] * len(targets) if fitted is None else fitted.images
        blur = None if finer else _blur_measure(targets, images, d.valid, h_image, q_radial, p, opt, q)
        # the fine channels (filtered once, spline coefficients kept) serve the fine
        # ECC, the local refinement, the final correlation and the trust map
        channels = prepare_channels(targets, images, d.valid, h_image, blur_sigma=opt.fine_blur_sigma)
        keep = None
        if opt.trust:
            # what does not follow the dominant motion (objects nearer or moving) stays
            # out of the fine stage and the local field: the background must win
            t_pre = time.perf_counter()
            # (bilinear: what does not follow is px off, not hundredths; on the grid of the
            # luminance residuals, the planes and their predictions block-averaged)
            templates, predictions, masks = _channel_lists(
                warp_channels(channels, h_image, _radial_field(q_radial, p), cv2.INTER_LINEAR))
            pre = trust.dense_residual([grid.bin(t) for t in templates], [grid.bin(w) for w in predictions],
                                       [grid.bin_mask(m) for m in masks], correlations=False, phones=s.phones)
            outliers = grid.up(trust.dominant_motion(pre, grid.step, margin_px=opt.trust_margin_px).outliers)
            del pre, templates, predictions, masks  # (memory at 12 MP)
            if outliers.any() and outliers.mean() < 0.8:
                keep = ~outliers
            q.prefit_outliers = round(float(outliers.mean()), 5)
            s.secs["trust_prefit"] = time.perf_counter() - t_pre
        fit_channels = channels if keep is None else _masked(channels, keep)
        photo = None
        if opt.fine == "planes":
            fine_channels = fit_channels if finer else _fine_channels(fit_channels, targets, images, d.valid, h_image,
                                                                      q_radial, p, opt, q, blur)
            trial = _fine_trial(fine_channels, h_image, q_radial, p.image_size, opt)
            again = fitted is not None and opt.radiometric_refit_px is not None and _model_moved_px(
                (h_image, q_radial), (trial.h_image, trial.q_radial), p) > opt.radiometric_refit_px
            # a pass that only places the samples of the response's second fit (or of the
            # working planes' fit) needs no more samples than the trial; the pass after that
            # fit uses them all
            h_fine, q_fine, photo = _fine_final(fine_channels, trial, p.image_size, opt,
                                                trial.samples if again or finer else opt.max_pixels,
                                                None if again or finer else q)
            fine_channels = None  # (their filtered images: not needed past the pass)
            refit = None
            if finer:
                # the working planes from here on: the response fitted there at this model,
                # and the fine stage's last pass on them
                t_re = time.perf_counter()
                saturation = None if fitted is None else fitted.saturation
                channels = fit_channels = fitted = images = None  # (the coarser planes' go before the finer's come)
                coarse_p = p
                h_fine = _onto_finer_grid(s, h_fine)
                p, d = s.p, s.d
                h_work = h_fine @ p.to_image  # (the model a failure from here on reports)
                refit = _response_refit(s, p.plane_targets(), None if keep is None else mask_onto(keep, coarse_p, p),
                                        saturation, h_fine, q_fine, photo, trial)
                s.secs["radiometric_refit"] = time.perf_counter() - t_re
            elif again:
                # the response was fitted at the coarse model: samples paired a fraction
                # of a px off blur the curves differently at the centre and the rim, and
                # the fine stage measured against them keeps part of that error (a scale
                # bias of ~1e-4 on a night Eiffel pair, 0.10 px at the corners; 0.03 px
                # once fitted again at the fine model); the boost chosen stays, and so
                # does the lens model the fine stage kept or dropped
                t_re = time.perf_counter()
                saturation, fitted = fitted.saturation, None
                templates = [(c.template, c.mask) for c in channels]  # the phone side stays as it was
                channels = fit_channels = None  # the first channels' filtered images go before the second's come
                refit = _response_refit(s, targets, keep, saturation, h_fine, q_fine, photo, trial, templates)
                s.secs["radiometric_refit"] = time.perf_counter() - t_re
            if refit is not None:
                targets, images, channels, fit_channels = refit.targets, refit.images, refit.channels, refit.fit_channels
                h_fine, q_fine, photo = refit.h_image, refit.q_radial, refit.photometric
            h_image, q_radial = h_fine, q_fine
            q.radial_corner_px = _corner_px(q_radial, p.image_size)
    except (ValueError, np.linalg.LinAlgError) as err:
        q.ecc_correlation = 0.0
        raise _StageFailed(h_work, f"ECC failed: {err}") from err
    model = _GlobalModel(h_image, q_radial, targets, images, channels, fit_channels, photometric=photo)
    s.secs["ecc"] = time.perf_counter() - t2
    q.overlap_fraction = _overlap_fraction(model.h_work(s), p.lum.shape, d.lum.shape)
    return model


def _local_fit(s: _PairState, m: _GlobalModel) -> None:
    """The local field and the tile residuals under the model (:func:`_local_stage`, with
    its optional blurred coarse passes), into ``m``."""
    try:
        m.fld, m.final, m.warped = _local_stage(m.fit_channels, m.h_image, m.q_radial, s.p, s.opt,
                                                (m.targets, m.images, s.d.valid), m.photometric)
    except (ValueError, np.linalg.LinAlgError) as err:
        raise _StageFailed(m.h_work(s), f"local refinement failed: {err}") from err


def _trust_refit_stage(s: _PairState, m: _GlobalModel,
                       warped: list[TileChannel]) -> tuple[TrustMap, trust.DenseResidual, list[TileChannel]]:
    """The trust map under the model (``warped``: the channels warped by it); when it drops
    more than the pre-fit mask kept out of the fit (``trust_refit_fraction``), the model
    is fitted once more without those px (into ``m``) and the map measured again.
    Returns (trust map, dense residual, the channels warped by the final model)."""
    p, opt, q = s.p, s.opt, s.q
    dslr_stored = (s.d.to_image, s.stored_size)
    tm, res = _trust_stage(warped, p, s.d, m.h_image, m.fld, dslr_stored, opt, s.phones)
    # what the final measure drops that the fit still used
    dropped = ((tm.code == trust.MOVED) | (tm.code == trust.OCCLUDED)) & m.fit_channels[0].mask
    if tm.by_level is not None:
        dropped &= ~tm.by_level  # flat px of another brightness: nothing for a fit to lose
    if not (opt.trust_refit and dropped.mean() > opt.trust_refit_fraction):
        return tm, res, warped
    # the final measure found more that moved than the first: fit once more without it
    h_before = m.h_work(s)
    try:
        m.fit_channels = _masked(m.fit_channels, ~trust.grow(dropped, opt.trust_margin_px / s.step))
        if opt.fine == "planes":
            fine_channels = _fine_channels(m.fit_channels, m.targets, m.images, s.d.valid, m.h_image, m.q_radial,
                                           p, opt, q)
            m.h_image, m.q_radial, m.photometric = _fine_stage(fine_channels, m.h_image, m.q_radial, p.image_size,
                                                               opt, m.photometric, q)
            del fine_channels
            q.radial_corner_px = _corner_px(m.q_radial, p.image_size)
        m.fld, m.final, m.warped = _local_stage(m.fit_channels, m.h_image, m.q_radial, p, opt,
                                                photometric=m.photometric)
    except (ValueError, np.linalg.LinAlgError) as err:
        raise _StageFailed(h_before, f"refit on the trusted px failed: {err}") from err
    warped = rewarped_masks(m.warped, m.channels)
    tm, res = _trust_stage(warped, p, s.d, m.h_image, m.fld, dslr_stored, opt, s.phones)
    q.trust_refit = True
    return tm, res, warped


def _align(phone, dslr, opt: AlignOptions) -> Alignment:
    """The stages in order (docs/alignment.md); a stage that cannot go on ends the run with
    what was measured so far and the verdict."""
    t0 = time.perf_counter()
    s = _prepare_pair(phone, dslr, opt)
    q, secs = s.q, s.secs
    result = Alignment(
        homography=np.full((3, 3), np.nan), field=SmoothField(), quality=q, phone_size=s.p.image_size,
        dslr_size=s.d.image_size, phone_path=str(s.p.path) if s.p.path else None,
        dslr_path=str(s.d.path) if s.d.path else None, seconds=secs,
        options={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opt).items()},
    )
    h_work = None
    try:
        h_work = _reduce_dslr(s, _features_stage(s))
        m = _global_stage(s, h_work)
        h_work = m.h_work(s)
        t3 = time.perf_counter()
        _local_fit(s, m)
        secs["local"] = time.perf_counter() - t3
        warped = rewarped_masks(m.warped, m.channels)  # every px, not only the fit's
        if opt.trust:
            t4 = time.perf_counter()
            tm, res, warped = _trust_refit_stage(s, m, warped)
            h_work = m.h_work(s)
            if opt.trust_layers:
                t5 = time.perf_counter()
                result.layers = _layers_stage(tm, res, m.channels, m.h_image, m.fld, m.final, m.q_radial, s.p,
                                              s.d.to_image, s.stored_size, opt)
                secs["layers"] = time.perf_counter() - t5
            result.trust = tm
            q.trusted_fraction = float(tm.trusted.mean())
            q.dropped.update({k: round(v, 5) for k, v in tm.fractions().items() if k != "trusted"})
            secs["trust"] = time.perf_counter() - t4
        result.field = m.fld
        result.residuals = m.final
        q.field_degree = m.fld.degree
        # the corners that matter are those of what the DSLR sees: a frame corner outside
        # the DSLR frame has no target to be wrong about
        lens = _radial_field(m.q_radial, s.p).radial
        uncertainty = _tile_quality(q, m.final, result.trust, s.p.image_size, opt.max_residual_px,
                                    overlap_corners(s.d.to_image @ m.h_image, s.p.image_size, s.stored_size), lens,
                                    lens_centre=len(m.q_radial) == 4)
        if result.trust is not None:
            keep = result.trust.trusted
            warped = [TileChannel(c.template, c.warped, c.mask & keep, c.to_image, c.sampled) for c in warped]
        q.ecc_correlation = model_correlation(warped, opt.norm_sigma)
        # (the correlation over every trusted px: the verdict weighs the whole as well)
        if result.trust is not None and uncertainty is not None:
            _mark_unpinned(q, result.trust, uncertainty, opt.thresholds().max_corner_sigma_px)
    except _StageFailed as stop:
        h_work = stop.h_work
        if stop.message:
            q.message = stop.message
    if h_work is not None:
        hh = s.d.to_image @ h_work @ np.linalg.inv(s.p.to_image)  # DSLR working px -> stored px
        result.homography = hh / hh[2, 2]
    verdict(q, opt.thresholds())
    if q.reason == "too_few_matches":
        # neither the features nor a confirmed direct start found the geometry: offer none
        result.homography = np.full((3, 3), np.nan)
    secs["total"] = time.perf_counter() - t0
    return result


def read_pair(phone_path: str | Path, dslr_path: str | Path) -> tuple:
    """Decode a phone file and a DSLR file side by side (``rawio.read_any`` each) ->
    (phone, DSLR) as ``RawImage`` / ``RgbImage``.  Raises ``rawio.ImageReadError`` for
    the first of them (the phone's first) that cannot be read."""
    from alignment import rawio

    phone, dslr = thread_map(rawio.read_any, [phone_path, dslr_path])
    return phone, dslr


def align_pair(phone_path: str | Path, dslr_path: str | Path, **options) -> Alignment:
    """Read a phone file (raw or image) and a DSLR file (:func:`read_pair`) and align them.

    Raises ``alignment.rawio.ImageReadError`` (naming the file and the reason) for
    a file that cannot be read; see :func:`align_images` for the result and options.
    """
    phone, dslr = read_pair(phone_path, dslr_path)
    a = align_images(phone, dslr, **options)
    a.phone_path = str(phone_path)
    a.dslr_path = str(dslr_path)
    return a
