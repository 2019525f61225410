"""Photometric preparation: phone and DSLR images to comparable linear luminance.

Phone raw: the packed planes (R, G1, G2, B), each multiplied by the as-shot white
balance so that a neutral scene gives four equal planes, then averaged per 2x2
CFA cell.  With equal weights the cell's sampling centroid is exactly its centre,
full-res (2j + 0.5, 2i + 0.5); unequal weights (raw planes as stored) would move
it by a few hundredths of a pixel.  The working grid is therefore half
resolution and ``to_image`` maps it to the full raw grid.

DSLR image: sRGB-encoded RGB through the inverse sRGB curve, Rec. 709 luminance;
after a first alignment :func:`fit_radiometric` replaces the sRGB assumption with
per-channel response curves fitted against the phone (DSLR JPEGs carry a tone
curve that the inverse sRGB curve does not undo, and a tone curve moves the
apparent position of every blurred edge).

Coordinates: x = column, y = row, pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from alignment import rawio
from alignment.ecc import _gauss, _local_scale, sample_points

__all__ = [
    "PreparedImage",
    "prepare_phone",
    "prepare_dslr",
    "fit_radiometric",
    "focal_scale_guess",
]

REC709 = np.array([0.2126, 0.7152, 0.0722], np.float32)
_HALF_TO_FULL = np.array([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]])


@dataclass
class PreparedImage:
    """An image ready for registration.

    lum: (h, w) float32 linear luminance on the working grid.
    valid: (h, w) bool, True where the value is measured and not clipped.
    to_image: (3, 3) working-grid px -> image px (phone: full raw grid; DSLR: as stored).
    image_size: (W, H) of the image in its own px.
    encoded: (h, w, 3) float32 display-encoded RGB in [0, 1] (DSLR only, for the
        radiometric fit), else None.
    focal_length_35mm: from EXIF when known.
    kind: "raw", "rgb" or "luminance".
    path: source file when read from disk.
    """

    lum: np.ndarray
    valid: np.ndarray
    to_image: np.ndarray
    image_size: tuple[int, int]
    encoded: np.ndarray | None = None
    focal_length_35mm: float | None = None
    kind: str = "rgb"
    path: Path | None = None
    planes: np.ndarray | None = None
    plane_to_image: list[np.ndarray] | None = None

    def plane_targets(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """[(values (h, w), valid (h, w), (3,3) px -> image px)]: the Bayer planes at
        their own sampling positions when known, else the luminance itself."""
        if self.planes is None or self.plane_to_image is None:
            return [(self.lum, self.valid, self.to_image)]
        return [(self.planes[..., k], self.valid, self.plane_to_image[k]) for k in range(self.planes.shape[-1])]


def _valid_from_encoded(rgb: np.ndarray) -> np.ndarray:
    sat = (rgb.max(axis=-1) >= 0.995) if rgb.ndim == 3 else (rgb >= 0.995)
    if sat.any():
        sat = cv2.dilate(sat.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return ~sat


def _packed_luminance(planes: np.ndarray, wb: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (lum (h, w), valid (h, w), white-balanced planes (h, w, 4))."""
    planes = planes.astype(np.float32, copy=False)
    sat = planes.max(axis=-1) >= 0.98
    if wb is not None:
        w = np.array([wb[0], wb[1], wb[1], wb[2]], np.float32)
        planes = planes * w
    lum = planes.mean(axis=-1)
    if sat.any():
        sat = cv2.dilate(sat.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return np.ascontiguousarray(lum), ~sat, planes


def _plane_matrices(cfa: str) -> list[np.ndarray]:
    """(3,3) packed-plane px -> full raw grid px for R, G1, G2, B of ``cfa``."""
    return [np.array([[2.0, 0, c], [0, 2.0, r], [0, 0, 1]]) for r, c in rawio.cfa_positions(cfa)]


def _as_float_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return arr.astype(np.float32)


def _from_array(arr: np.ndarray, keep_encoded: bool) -> PreparedImage:
    arr = np.asarray(arr)
    h, w = arr.shape[:2]
    if arr.ndim == 3 and arr.shape[2] == 4:
        lum, valid, _ = _packed_luminance(arr, None)
        return PreparedImage(lum, valid, _HALF_TO_FULL.copy(), (2 * w, 2 * h), kind="raw")
    if arr.ndim == 3 and arr.shape[2] == 3:
        rgb = _as_float_rgb(arr)
        lum = np.ascontiguousarray(rawio.srgb_to_linear(rgb) @ REC709).astype(np.float32)
        return PreparedImage(lum, _valid_from_encoded(rgb), np.eye(3), (w, h), rgb if keep_encoded else None)
    if arr.ndim == 2:
        if arr.dtype in (np.uint8, np.uint16):
            g = _as_float_rgb(arr)
            lum = rawio.srgb_to_linear(g).astype(np.float32)
            enc = np.repeat(g[..., None], 3, -1) if keep_encoded else None
            return PreparedImage(lum, _valid_from_encoded(g), np.eye(3), (w, h), enc)
        lum = arr.astype(np.float32)
        return PreparedImage(lum, np.isfinite(lum), np.eye(3), (w, h), kind="luminance")
    raise ValueError(
        f"cannot use an array of shape {arr.shape} {arr.dtype}: expected (h, w, 4) packed raw planes, "
        "(H, W, 3) sRGB-encoded RGB, (H, W) uint8/uint16 sRGB-encoded grey or (H, W) float linear luminance"
    )


def _load(obj) -> object:
    if isinstance(obj, (str, Path)):
        return rawio.read_any(obj)
    return obj


def prepare_phone(phone) -> PreparedImage:
    """Phone image -> :class:`PreparedImage` on its working grid.

    phone: a path (read with ``rawio.read_any``), a ``rawio.RawImage`` (half-res
    white-balanced CFA-cell mean, ``to_image`` = [[2,0,.5],[0,2,.5],[0,0,1]]),
    a ``rawio.RgbImage``, or an array (see :func:`_from_array` rules: (h, w, 4)
    packed planes, (H, W, 3) sRGB RGB, (H, W) uint sRGB grey, (H, W) float linear).
    """
    obj = _load(phone)
    if isinstance(obj, rawio.RawImage):
        lum, valid, planes = _packed_luminance(obj.packed(), obj.camera_wb)
        h, w = obj.shape
        return PreparedImage(
            lum, valid, _HALF_TO_FULL.copy(), (w, h), None, obj.exif.focal_length_35mm, "raw", obj.path,
            planes, _plane_matrices(obj.cfa),
        )
    if isinstance(obj, rawio.RgbImage):
        p = _from_array(obj.rgb, keep_encoded=False)
        p.focal_length_35mm = obj.exif.focal_length_35mm
        p.path = obj.path
        return p
    return _from_array(obj, keep_encoded=False)


def prepare_dslr(dslr) -> PreparedImage:
    """DSLR image -> :class:`PreparedImage` (full resolution, ``to_image`` = identity).

    dslr: a path, a ``rawio.RgbImage`` (inverse sRGB, Rec. 709 luminance; the
    encoded RGB is kept for :func:`fit_radiometric`), a ``rawio.RawImage``
    (demosaicked linear RGB on its raw grid) or an array as for :func:`prepare_phone`
    (a packed (h, w, 4) array is taken as raw planes, working grid half-res).
    """
    obj = _load(dslr)
    if isinstance(obj, rawio.RawImage):
        rgb = rawio.raw_to_linear_rgb(obj, resolution="full")
        lum = np.ascontiguousarray(rgb @ REC709).astype(np.float32)
        sat = obj.mosaic >= obj.white_level * 0.98
        valid = ~(cv2.dilate(sat.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
        h, w = obj.shape
        return PreparedImage(lum, valid, np.eye(3), (w, h), None, obj.exif.focal_length_35mm, "raw", obj.path)
    if isinstance(obj, rawio.RgbImage):
        p = _from_array(obj.rgb, keep_encoded=True)
        p.focal_length_35mm = obj.exif.focal_length_35mm
        p.path = obj.path
        return p
    return _from_array(obj, keep_encoded=True)


def focal_scale_guess(phone: PreparedImage, dslr: PreparedImage) -> float | None:
    """DSLR px per phone image px from 35 mm-equivalent focal lengths, or None.

    A 35 mm-equivalent focal length f35 gives a focal length in px of
    ``f35 * diagonal_px / 43.27``; the ratio of the two is the scale.
    """
    fp, fd = phone.focal_length_35mm, dslr.focal_length_35mm
    if not fp or not fd or fp <= 0 or fd <= 0:
        return None
    dp = float(np.hypot(*phone.image_size))
    dd = float(np.hypot(*dslr.image_size))
    return (fd * dd) / (fp * dp)


def _hat_basis(v: np.ndarray, knots: np.ndarray) -> list[np.ndarray]:
    """Piecewise-linear hat functions of v on ``knots`` (partition of unity)."""
    out = []
    k = len(knots)
    for i in range(k):
        lo = knots[i - 1] if i > 0 else None
        hi = knots[i + 1] if i < k - 1 else None
        b = np.zeros_like(v)
        c = knots[i]
        if lo is not None:
            m = (v >= lo) & (v <= c)
            b[m] = (v[m] - lo) / (c - lo)
        else:
            b[v <= c] = 1.0
        if hi is not None:
            m = (v >= c) & (v <= hi)
            b[m] = (hi - v[m]) / (hi - c)
        else:
            b[v >= c] = 1.0
        out.append(b.astype(np.float32))
    return out


def fit_radiometric(
    targets: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    dslr: PreparedImage,
    h_image: np.ndarray,
    n_knots: int = 9,
    smooth: float = 1e-3,
    blur_sigma: float = 1.0,
    max_samples: int = 100_000,
) -> list[np.ndarray] | None:
    """Fit DSLR response curves that predict each phone target (Bayer plane or luminance).

    Model for target k: ``t_k(x) ~ c_k + sum_c sum_j a_kcj * B[hat_j(E_c)](H T_k x)``
    with E_c the display-encoded DSLR channel, hat_j piecewise-linear hats on
    ``n_knots`` knots in [0, 1] (so each sum over j is a curve), B the anti-alias
    filter matched to the local scale (linear, so it acts on each basis image),
    T_k the target's px -> phone image px.  Linear least squares with a
    second-difference smoothness penalty ``smooth``.

    targets: [(values (h, w), valid (h, w) bool, (3,3) px -> phone image px)].
    h_image: (3,3) phone image px -> DSLR px.
    Returns, per target, the (H, W) float32 DSLR image ``c_k + sum a_kcj hat_j(E_c)``
    in the target's units, or None without an encoded DSLR image or overlap.
    """
    if dslr.encoded is None:
        return None
    enc = dslr.encoded
    ih, iw = enc.shape[:2]
    knots = np.linspace(0.0, 1.0, n_knots)
    blurred: list[np.ndarray] | None = None
    rng = np.random.default_rng(0)
    out = []
    for values, valid, t_k in targets:
        hw = h_image @ t_k
        if blurred is None:
            s = _local_scale(hw, values.shape)
            sig_img = float(np.sqrt((blur_sigma * s) ** 2 + max(s * s - 1, 0) / 12.0))
            blurred = [_gauss(b, sig_img) for c in range(3) for b in _hat_basis(enc[..., c], knots)]
            pad = 3 * sig_img + 2
        ys, xs = np.nonzero(valid)
        if len(xs) > max_samples:
            sel = rng.choice(len(xs), max_samples, replace=False)
            xs, ys = xs[sel], ys[sel]
        w = hw[2, 0] * xs + hw[2, 1] * ys + hw[2, 2]
        mx = (hw[0, 0] * xs + hw[0, 1] * ys + hw[0, 2]) / w
        my = (hw[1, 0] * xs + hw[1, 1] * ys + hw[1, 2]) / w
        inside = (w > 0) & (mx >= pad) & (my >= pad) & (mx <= iw - 1 - pad) & (my <= ih - 1 - pad)
        inside &= sample_points(dslr.valid.astype(np.uint8), mx, my, cv2.INTER_NEAREST) > 0
        if inside.sum() < 500:
            return None
        xs, ys, mx, my = xs[inside], ys[inside], mx[inside], my[inside]
        target = _gauss(values.astype(np.float32), blur_sigma)[ys, xs].astype(np.float64)
        cols_a = [sample_points(b, mx, my, cv2.INTER_LINEAR) for b in blurred]
        a = np.stack(cols_a + [np.ones_like(mx, dtype=np.float32)], axis=1).astype(np.float64)
        n_par = a.shape[1]
        rows_p = []
        for c in range(3):
            for k in range(1, n_knots - 1):
                r = np.zeros(n_par)
                r[c * n_knots + k - 1 : c * n_knots + k + 2] = [1.0, -2.0, 1.0]
                rows_p.append(r)
        p = np.array(rows_p)
        scale = float(np.mean(a[:, :-1] ** 2)) * len(target)
        coef = np.linalg.lstsq(a.T @ a + smooth * scale * p.T @ p, a.T @ target, rcond=None)[0]
        lin = np.full(enc.shape[:2], np.float32(coef[-1]), np.float32)
        for c in range(3):
            lin += np.interp(enc[..., c], knots, coef[c * n_knots : (c + 1) * n_knots]).astype(np.float32)
        out.append(lin)
    return out
