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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import sparse

from alignment import rawio
from alignment.ecc import _gauss, _local_scale, sample_points
from alignment.threads import thread_map

__all__ = [
    "PreparedImage",
    "prepare_phone",
    "prepare_dslr",
    "fit_radiometric",
    "focal_scale_guess",
    "shrink",
]

REC709 = np.array([0.2126, 0.7152, 0.0722], np.float32)
_HALF_TO_FULL = np.array([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]])


@dataclass
class PreparedImage:
    """An image ready for registration.

    lum: (h, w) float32 linear luminance on the working grid.
    valid: (h, w) bool, True where the value is measured and the luminance is not
        clipped (an encoded RGB image: neither its green nor two of its channels at
        full scale, dilated 1 px).
    clipped: (h, w) bool or None, an encoded RGB image's px with any channel at full
        scale, dilated 2 px (a target px whose colour is not measured: what the
        trust map drops); None: the complement of ``valid``.
    to_image: (3, 3) working-grid px -> image px (phone: full raw grid; DSLR: as stored).
    image_size: (W, H) of the image in its own px.
    encoded: (h, w, 3) display-encoded RGB as stored (uint8 / uint16) or float32
        in [0, 1] (DSLR only, for the radiometric fit), else None.  After
        :func:`alignment.reduce.crop_and_shrink_dslr` it is the crop, not shrunk.
    chroma_sampling: a JPEG's chroma subsampling (:attr:`alignment.rawio.RgbImage.chroma_sampling`)
        when ``encoded`` holds its samples, else None: the pipeline puts the chroma's
        lost detail back into the crop the response is fitted on
        (:func:`alignment.chroma.restore_chroma`).
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
    clipped: np.ndarray | None = None
    chroma_sampling: tuple[int, int] | None = None

    @property
    def colour_clipped(self) -> np.ndarray:
        """(h, w) bool, px whose colour is not measured: ``clipped``, and every px that is
        not ``valid``."""
        return ~self.valid if self.clipped is None else self.clipped | ~self.valid

    def plane_targets(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """[(values (h, w), valid (h, w), (3,3) px -> image px)]: the Bayer planes at
        their own sampling positions when known, else the luminance itself."""
        if self.planes is None or self.plane_to_image is None:
            return [(self.lum, self.valid, self.to_image)]
        return [(self.planes[..., k], self.valid, self.plane_to_image[k]) for k in range(self.planes.shape[-1])]


def _full_scale(enc: np.ndarray) -> float:
    """The value of full scale of encoded samples: 255, 65535, or 1.0 for floats."""
    return {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(enc.dtype, 1.0)


_STRIP_ROWS = 256  # rows per strip of apply_curves on a uint8 image


def desaturation(saturation: float) -> np.ndarray | None:
    """(3, 3) float32 matrix that undoes a saturation boost of display-encoded RGB about
    its channel mean, ``E' = mean(E) + (E - mean(E)) / saturation`` (what a camera's
    JPEG rendering applies after its tone curve, a colour mix no per-channel curve can
    undo); None for a saturation of 1 (nothing to undo).  For ``cv2.transform``."""
    if saturation == 1.0:
        return None
    return (np.eye(3) / saturation + (1.0 - 1.0 / saturation) / 3.0).astype(np.float32)


def _mixed(enc: np.ndarray, mix: np.ndarray | None) -> np.ndarray:
    """(..., 3) encoded RGB through the 3 x 3 colour ``mix`` (None: as is), in its own
    dtype (integers rounded and saturated, as cv2.transform does)."""
    if mix is None:
        return enc
    flat = np.ascontiguousarray(enc).reshape(-1, 1, 3)
    return cv2.transform(flat, mix).reshape(enc.shape)


def apply_curves(enc: np.ndarray, curves: np.ndarray, offset: float = 0.0, mix: np.ndarray | None = None) -> np.ndarray:
    """``offset + sum_c curves[c](E[..., c])`` as (H, W) float32, E = ``enc`` through the
    colour ``mix`` (:func:`desaturation`; None: ``enc`` itself).

    enc: (H, W, 3) display-encoded RGB, uint8, uint16 or float in [0, 1].
    curves: (3, n) values of one curve per channel on n equally spaced levels
    over [0, full scale] (piecewise linear between them).  Integer images go
    through a look-up table of every level, so a 24 MP image costs a few table
    reads per pixel instead of a curve evaluation.
    """
    if mix is not None and enc.dtype != np.uint8:
        enc = _mixed(enc, mix)
        mix = None
    n = curves.shape[1]
    levels = np.linspace(0.0, 1.0, n)
    if enc.dtype in (np.uint8, np.uint16):
        full = int(_full_scale(enc))
        grid = np.arange(full + 1) / full
        luts = np.stack([np.interp(grid, levels, curves[c]) for c in range(3)], 1).astype(np.float32)
        if enc.dtype == np.uint8:
            # in strips of rows, side by side: the (rows, W, 3) float tables' output of a
            # whole 24 MP image would be a 290 MB intermediate
            out = np.empty(enc.shape[:2], np.float32)
            ones = np.ones((1, 3), np.float32)

            def strip(r0: int) -> None:
                mapped = cv2.LUT(_mixed(enc[r0 : r0 + _STRIP_ROWS], mix), luts.reshape(256, 1, 3))
                out[r0 : r0 + _STRIP_ROWS] = cv2.transform(mapped, ones).reshape(-1, enc.shape[1])

            thread_map(strip, range(0, enc.shape[0], _STRIP_ROWS))
        else:
            out = luts[enc[..., 0], 0] + luts[enc[..., 1], 1] + luts[enc[..., 2], 2]
    else:
        out = sum(np.interp(enc[..., c], levels, curves[c]).astype(np.float32) for c in range(3))
    out = np.asarray(out, np.float32).reshape(enc.shape[:2])
    if offset:
        out += np.float32(offset)
    return out


def curves_on_grid(enc: np.ndarray, curves: np.ndarray, offset: float, size: tuple[int, int],
                   strip_blocks: int = 64, mix: np.ndarray | None = None) -> np.ndarray:
    """``shrink(apply_curves(enc, curves, offset, mix), size)`` in strips of ``strip_blocks``
    output rows: the same block means, without the full-size float image (64 MB for a
    16 MP crop, and three times that of per-channel intermediates).

    enc: (H, W, 3) display-encoded RGB whose size is an integer multiple of
    ``size`` = (W', H'); returns (H', W') float32."""
    return curves_on_grid_many(enc, [(curves, offset)], size, strip_blocks, mix)[0]


def curves_on_grid_many(enc: np.ndarray, curves_offsets: list[tuple[np.ndarray, float]], size: tuple[int, int],
                        strip_blocks: int = 64, mix: np.ndarray | None = None) -> list[np.ndarray]:
    """:func:`curves_on_grid` for several (curves, offset) on one image: each strip is
    read through the colour ``mix`` once for all of them, the strips side by side
    (:func:`alignment.threads.thread_map`).  Returns one (H', W') float32 per item."""
    w_out, h_out = size
    f = enc.shape[1] // w_out
    if enc.shape[1] != f * w_out or enc.shape[0] != f * h_out:
        raise ValueError(f"curves_on_grid needs an integer factor: {enc.shape[1]}x{enc.shape[0]} -> {w_out}x{h_out}")
    outs = [np.empty((h_out, w_out), np.float32) for _ in curves_offsets]

    def strip(r0: int) -> None:
        r1 = min(h_out, r0 + strip_blocks)
        part = enc[r0 * f : r1 * f]
        if mix is not None and enc.dtype == np.uint8:  # (apply_curves mixes other dtypes first itself)
            part = _mixed(part, mix)
            part_mix = None
        else:
            part_mix = mix
        for out, (curves, offset) in zip(outs, curves_offsets):
            out[r0:r1] = shrink(apply_curves(part, curves, offset, part_mix), (w_out, r1 - r0))

    thread_map(strip, range(0, h_out, strip_blocks))
    return outs


def encoded_luminance(enc: np.ndarray) -> np.ndarray:
    """(H, W, 3) sRGB-encoded RGB (uint8, uint16 or float in [0, 1]) -> (H, W) float32
    Rec. 709 linear luminance (inverse sRGB curve per channel)."""
    if enc.dtype in (np.uint8, np.uint16):
        full = _full_scale(enc)
        levels = np.arange(int(full) + 1) / full
        return apply_curves(enc, rawio.srgb_to_linear(levels)[None, :] * REC709[:, None].astype(np.float64))
    lin = rawio.srgb_to_linear(np.asarray(enc, np.float32))
    return np.ascontiguousarray(lin @ REC709).astype(np.float32)


def _masks_from_encoded(enc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (valid, clipped), (H, W) bool each, from channels at >= 99.5 % of full scale.

    valid: the luminance is measured: neither the green channel (71 % of the
    luminance) nor two channels clipped in a clipped area (:func:`_clipped_areas`: not
    the thin lines and specks JPEG ringing and noise clip beside dark strokes on white),
    dilated by 1 px.  A vivid JPEG clips its red or blue in whole regions while their
    luminance and structure stay; masking those emptied the registration's coarse
    levels (a third of a DSLR frame lost to one clipped channel, dilated).  clipped:
    any channel clipped, dilated by 2 px: the colour there is not measured, so the
    trust map drops it as a target (and the response is not fitted there)."""
    limit = float(np.ceil(0.995 * _full_scale(enc)) if enc.dtype in (np.uint8, np.uint16) else 0.995)
    # OpenCV's per-channel compares and bitwise ops (255 = clipped): a 24 MP JPEG in
    # tens of ms, where numpy's boolean sums over the channel axis took over a second
    enc = np.ascontiguousarray(enc)
    if enc.ndim == 3:
        r, g, b = (cv2.compare(cv2.extractChannel(enc, k), limit, cv2.CMP_GE) for k in range(3))
        any_sat = cv2.bitwise_or(cv2.bitwise_or(r, g), b)
        lum_sat = cv2.bitwise_or(g, cv2.bitwise_and(r, b))  # green, or two channels
    else:
        any_sat = lum_sat = cv2.compare(enc, limit, cv2.CMP_GE)
    if not cv2.countNonZero(any_sat):
        none = np.zeros(enc.shape[:2], bool)
        return ~none, none
    clipped = cv2.dilate(any_sat, np.ones((5, 5), np.uint8)) > 0
    valid = cv2.dilate(_clipped_areas(lum_sat), np.ones((3, 3), np.uint8)) == 0
    return valid, clipped


#: :func:`_clipped_areas`: a clipped structure counts as a clipped area when it holds a
#: square of this many px a side clipped throughout
CLIPPED_AREA_CORE_PX = 3


def _clipped_areas(clipped: np.ndarray) -> np.ndarray:
    """(H, W) uint8 mask of clipped px (255 = clipped) -> the same, kept only for the
    8-connected clipped structures that hold a :data:`CLIPPED_AREA_CORE_PX` square
    clipped throughout (a clipped area with all its rims and specks attached); a
    structure thinner than that everywhere (JPEG ringing one or two px beside the dark
    strokes of text on white paper, the specks noise clips where paper or a whiteboard
    is a level or two below full scale) is measured: its px hold a level or a few less
    than they would unclipped.

    Why: those thin structures sit where the strokes' edges are, the only texture of
    such a page.  Masked, dilated by 1 px and then eroded by every ECC level's blur
    footprint, they left 3 to 7 % of a document's or a whiteboard's samples at the
    coarse levels; ECC ran off there (a frame corner 100 to 1700 px out), and three of
    the broadened benchmark's pairs ended 1 to 5 px off, rejected (docs/alignment.md,
    #11's thirty-third stop).  Real clipped areas (a sky, a lamp, a whiteboard's blank
    half) keep their rims masked: their values are far from the truth."""
    k = CLIPPED_AREA_CORE_PX
    core = cv2.erode(clipped, np.ones((k, k), np.uint8))
    out = np.zeros_like(clipped)
    if not cv2.countNonZero(core):
        return out
    x, y, w, h = cv2.boundingRect(clipped)  # (the structures labelled where they are)
    count, labels = cv2.connectedComponents(clipped[y : y + h, x : x + w], connectivity=8)
    areas = np.zeros(count, np.uint8)
    areas[labels[core[y : y + h, x : x + w] > 0]] = 255
    areas[0] = 0
    out[y : y + h, x : x + w] = areas[labels]
    return out


def _packed_luminance(planes: np.ndarray, wb: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (lum (h, w), valid (h, w), white-balanced planes (h, w, 4))."""
    planes = planes.astype(np.float32, copy=False)
    # per plane with OpenCV (numpy's reductions over a last axis of 4 are slow: 0.2 s at
    # 12 MP); the same values as planes.max(axis=-1) and (planes * w).mean(axis=-1)
    split = cv2.split(np.ascontiguousarray(planes))
    sat = cv2.max(cv2.max(split[0], split[1]), cv2.max(split[2], split[3])) >= 0.98
    if wb is not None:
        w = np.array([wb[0], wb[1], wb[1], wb[2]], np.float32)
        planes = planes * w
        split = [cv2.multiply(c, float(k)) for c, k in zip(split, w)]
    lum = cv2.add(cv2.add(cv2.add(split[0], split[1]), split[2]), split[3]) * np.float32(0.25)
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
        enc = arr if arr.dtype in (np.uint8, np.uint16) else _as_float_rgb(arr)
        lum = encoded_luminance(enc)
        valid, clipped = _masks_from_encoded(enc)
        return PreparedImage(lum, valid, np.eye(3), (w, h), enc if keep_encoded else None, clipped=clipped)
    if arr.ndim == 2:
        if arr.dtype in (np.uint8, np.uint16):
            g = _as_float_rgb(arr)
            lum = rawio.srgb_to_linear(g).astype(np.float32)
            enc = np.repeat(g[..., None], 3, -1) if keep_encoded else None
            valid, clipped = _masks_from_encoded(g)
            return PreparedImage(lum, valid, np.eye(3), (w, h), enc, clipped=clipped)
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
    return _from_rgb_or_array(obj, keep_encoded=False)


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
    return _from_rgb_or_array(obj, keep_encoded=True)


def _from_rgb_or_array(obj, keep_encoded: bool) -> PreparedImage:
    """A decoded ``rawio.RgbImage`` (its stored encoding, EXIF focal length and path
    kept) or a bare array, through :func:`_from_array`."""
    if isinstance(obj, rawio.RgbImage):
        p = _from_array(obj.stored if obj.stored is not None else obj.rgb, keep_encoded=keep_encoded)
        if p.encoded is not None and obj.stored is not None:
            p.chroma_sampling = obj.chroma_sampling
        p.focal_length_35mm = obj.exif.focal_length_35mm
        p.path = obj.path
        return p
    return _from_array(obj, keep_encoded=keep_encoded)


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


def shrink(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Block-average an (H, W[, C]) array to (W, H) = ``size``, an integer factor smaller.

    Output px (j, i) is the mean of the f x f block starting at (j f, i f), so it
    samples exactly at ((j + 0.5) f - 0.5, (i + 0.5) f - 0.5) input px.  (A box of
    non-integer width cannot: the centroid of its px weights wanders by up to
    0.05 input px from its nominal centre, which is why the factor is an integer.)
    Returns float32 (the input itself when already that size).
    """
    if (a.shape[1], a.shape[0]) == tuple(size):
        return a
    f = a.shape[1] // size[0]
    if f < 1 or a.shape[1] != f * size[0] or a.shape[0] != f * size[1]:
        raise ValueError(f"shrink needs an integer factor: {a.shape[1]}x{a.shape[0]} -> {size[0]}x{size[1]}")
    return cv2.resize(np.ascontiguousarray(a, np.float32), tuple(size), interpolation=cv2.INTER_AREA)


def _gaussian_weights(pos: np.ndarray, start: np.ndarray, taps: int, sigma: float, stride: int = 1) -> np.ndarray:
    """(n, taps) normalised Gaussian weights of the px start + stride * (0..taps-1) around positions pos."""
    d = start[:, None] + stride * np.arange(taps)[None, :] - pos[:, None]
    w = np.exp(-0.5 * (d / sigma) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def blurred_hat_features(
    enc: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: float, n_knots: int, chunk: int = 1024,
    mix: np.ndarray | None = None,
) -> np.ndarray:
    """Gaussian-weighted means of the hat-basis images of each channel at points (x, y).

    enc: (H, W, 3) display-encoded RGB (uint8, uint16 or float), read through the
    colour ``mix`` (:func:`desaturation`; None: as is).  x, y: (n,) DSLR
    px (inside the image by at least ``3 sigma + 1``).  The hats are the
    piecewise-linear partition of unity on ``n_knots`` levels over [0, full scale].
    Returns (n, 3 * n_knots) float64, channel-major: what blurring each basis image
    by a Gaussian of ``sigma`` px and reading it at (x, y) gives, computed from
    the (2r+2)^2 neighbourhood of each point only (r = ceil(3 sigma)).
    """
    full = _full_scale(enc)
    # a wide Gaussian is read on a lattice of every ``stride``-th px: the lattice's
    # weights still sum to one and its bias is below exp(-2 pi^2 (sigma/stride)^2)
    stride = max(1, int(sigma / 1.5))
    r = int(np.ceil(3 * sigma / stride)) * stride
    taps = 2 * r // stride + 2
    out = np.empty((len(x), 3 * n_knots))
    off = np.arange(taps) * stride
    # the neighbourhoods are read as rows of the (H W, 3) image: one gather of flat
    # indices is twice as fast as indexing rows and columns
    width = enc.shape[1]
    flat = np.ascontiguousarray(enc).reshape(-1, 3)  # (a copy only for a view that is not contiguous)
    if enc.dtype == np.uint8:
        # 256 levels: a weighted histogram of each point's neighbourhood per channel,
        # times the table of every level's two hat weights (the same sums, one pass)
        levels = np.arange(256) * ((n_knots - 1) / full)
        lower = np.clip(np.floor(levels), 0, n_knots - 2).astype(np.int64)
        table = np.zeros((256, n_knots))
        table[np.arange(256), lower] = 1.0 - (levels - lower)
        table[np.arange(256), lower + 1] = levels - lower
    for i in range(0, len(x), chunk):
        xs, ys = x[i : i + chunk], y[i : i + chunk]
        x0 = np.floor(xs).astype(np.int64) - r
        y0 = np.floor(ys).astype(np.int64) - r
        wx = _gaussian_weights(xs, x0.astype(float), taps, sigma, stride)
        wy = _gaussian_weights(ys, y0.astype(float), taps, sigma, stride)
        w2 = (wy[:, :, None] * wx[:, None, :])[..., None]  # (n, taps, taps, 1)
        n = len(xs)
        rows = ((y0[:, None] + off) * width)[:, :, None] + (x0[:, None] + off)[:, None, :]
        patch = _mixed(np.take(flat, rows.ravel(), axis=0).reshape(n, taps, taps, 3), mix)
        if enc.dtype == np.uint8:
            # the histograms as sparse matrices, one row per point: scipy's kernels run
            # beside the other planes' threads where np.bincount holds the GIL (four
            # planes' samples on two threads: twice as fast)
            weights = w2.ravel()
            starts = np.arange(0, n * taps * taps + 1, taps * taps)
            for c in range(3):
                hist = sparse.csr_matrix((weights, patch[..., c].ravel(), starts), shape=(n, 256))
                out[i : i + chunk, c * n_knots : (c + 1) * n_knots] = hist @ table
            continue
        v = patch.astype(np.float32) * np.float32((n_knots - 1) / full)  # (n, taps, taps, 3) in knot units
        j = np.clip(np.floor(v), 0, n_knots - 2).astype(np.int64)
        frac = v - j
        w2 = w2.astype(np.float32)
        # each px adds (1 - frac) to its lower hat and frac to the upper one (here
        # np.bincount is the faster, on two threads too)
        base = (np.arange(n)[:, None, None, None] * 3 + np.arange(3)) * n_knots + j
        size = n * 3 * n_knots
        feats = np.bincount(base.ravel(), (w2 * (1.0 - frac)).ravel(), size)
        feats += np.bincount((base + 1).ravel(), (w2 * frac).ravel(), size)
        out[i : i + chunk] = feats.reshape(n, -1)
    return out


def _gain_basis(t_k: np.ndarray, xs: np.ndarray, ys: np.ndarray, frame: tuple[int, int] | None) -> np.ndarray:
    """(n, 6) position terms of the smooth gain at target px (xs, ys): u, v, u^2, u v,
    v^2, r^4 with (u, v) = (phone image px - frame centre) / half the longer side."""
    if frame is None:
        return np.zeros((len(xs), 0))
    w, h = frame
    half = max(w, h) / 2.0
    u = (t_k[0, 0] * xs + t_k[0, 1] * ys + t_k[0, 2] - (w - 1) / 2.0) / half
    v = (t_k[1, 0] * xs + t_k[1, 1] * ys + t_k[1, 2] - (h - 1) / 2.0) / half
    r2 = u * u + v * v
    return np.stack([u, v, u * u, u * v, v * v, r2 * r2], 1)


def _second_differences(curves: int, n_knots: int) -> np.ndarray:
    """(curves * (n_knots - 2), curves * n_knots + 1) rows of the second differences of
    each curve's knot values (the last column, the offset, is not penalised)."""
    rows = np.zeros((curves * (n_knots - 2), curves * n_knots + 1))
    for c in range(curves):
        for k in range(1, n_knots - 1):
            rows[c * (n_knots - 2) + k - 1, c * n_knots + k - 1 : c * n_knots + k + 2] = [1.0, -2.0, 1.0]
    return rows


@dataclass
class RadiometricFit:
    """What :func:`fit_radiometric` fitted: per target, the DSLR image predicting it
    (float32, the working grid, the target's units), and the saturation boost of the
    DSLR rendering that was undone (one of the ``saturations`` tried)."""

    images: list[np.ndarray]
    saturation: float


def fit_radiometric(
    targets: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    dslr: PreparedImage,
    h_image: np.ndarray,
    n_knots: int = 9,
    smooth: float = 1e-3,
    blur_sigma: float = 1.0,
    max_samples: int = 5_000,
    encoded_grid: tuple[np.ndarray, tuple[int, int]] | None = None,
    groups: list[int] | None = None,
    frame: tuple[int, int] | None = None,
    gain_rounds: int = 3,
    robust_k: float | None = 9.0,
    saturations: tuple[float, ...] = (1.0,),
    search_samples: int = 1_000,
    undistort: Callable[[np.ndarray], np.ndarray] | None = None,
) -> RadiometricFit | None:
    """Fit DSLR response curves that predict each phone target (Bayer plane or luminance).

    Model for target k: ``t_k(x) ~ c_k + sum_c sum_j a_kcj * B[hat_j(E_c)](H T_k x)``
    with E_c the display-encoded DSLR channel (after undoing the saturation, below), hat_j piecewise-linear hats on
    ``n_knots`` levels over [0, full scale] (so each sum over j is a curve), B the
    anti-alias filter matched to the local scale (linear, so it acts on each basis
    image; evaluated at the sample points only, see :func:`blurred_hat_features`),
    T_k the target's px -> phone image px.  Linear least squares with a
    second-difference smoothness penalty ``smooth``, on at most ``max_samples``
    valid target px.

    targets: [(values (h, w), valid (h, w) bool, (3,3) px -> phone image px)].
    h_image: (3,3) phone image px -> DSLR working px.
    encoded_grid: when the DSLR working grid is not the grid of ``dslr.encoded``
    (a cropped and shrunk DSLR, see :mod:`alignment.reduce`): (the (3,3) working
    px -> encoded px matrix, the working grid's (W, H)); the curves are applied
    to the encoded values and the result area-averaged onto the working grid.
    groups: one label per target; targets with the same label (the two green
    planes of a Bayer sensor: one colour filter) are fitted together and share
    one image object (None: every target on its own).
    frame: (W, H) of the phone image: the model becomes ``t_k(x) ~ gain_k(x) *
    (c_k + sum ...)`` with a smooth gain over the frame (quadratic in position
    plus the fourth power of the radius: vignetting and colour shading), fitted
    jointly with the curves: one alternation for a start, then ``gain_rounds``
    Gauss-Newton steps on both (each after the robust reweighting); the images returned hold
    the curves only (the fine stage fits its own gain).  None: no gain.
    robust_k: every round reweights the samples (Tukey, that many robust sigmas),
    so samples the first model maps wrongly (objects in front, motion,
    occlusions) do not bend the curves; None: plain least squares.  (Measured on
    the 36 pairs of ``benchmarks/bench_trust.py``: 9 sigmas gave pooled precision
    0.984 at 0.5 px against 0.979 for fitting again without the pre-fit outliers;
    4.7 sigmas drops informative samples of soft scenes.)
    saturations: the saturation boosts of the DSLR rendering to try (:func:`desaturation`):
    a JPEG's saturation mixes the channels after the tone curve, so per-channel curves
    of the encoded channels cannot predict a phone plane (the misfit follows colour
    edges and biases the registration); the curves are fitted on the encoded RGB
    with each boost undone, and the one with the smallest robust residual (the
    geometric mean of the groups' MADs, on every few-th sample: about ``search_samples``
    per target) is kept.
    undistort: (N, 2) phone image px -> the same points undistorted (the lens model
    the homography applies to; None: none): the samples pair each phone px with the
    DSLR px the whole model maps it to (a lens that moves the frame corners by tens of
    px otherwise pairs the rim with the wrong DSLR px, and the curves fitted to them
    biased a distortion pair's geometry by 1 to 2 px).
    Returns a :class:`RadiometricFit`: per target, the float32 DSLR image ``c_k +
    sum a_kcj hat_j(E_c)`` on the working grid, in the target's units (through
    look-up tables, see :func:`apply_curves`), and the boost chosen; None without an
    encoded DSLR image or overlap.
    """
    if dslr.encoded is None:
        return None
    enc = np.ascontiguousarray(dslr.encoded)  # (no copy when it is; blurred_hat_features reads its rows)
    ih, iw = enc.shape[:2]
    rng = np.random.default_rng(0)
    to_enc = np.eye(3) if encoded_grid is None else encoded_grid[0]
    groups = list(range(len(targets))) if groups is None else list(groups)
    # the targets' samples are drawn in order (one random stream), read side by side
    draws = []
    for values, valid, t_k in targets:
        ys, xs = np.nonzero(valid)
        if len(xs) > max_samples:
            sel = rng.choice(len(xs), max_samples, replace=False)
            xs, ys = xs[sel], ys[sel]
        draws.append((values, t_k, xs, ys))

    def target_samples(draw: tuple, mix: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        values, t_k, xs, ys = draw
        hw = to_enc @ h_image @ t_k
        s = _local_scale(hw, values.shape)
        sig_img = float(np.sqrt((blur_sigma * s) ** 2 + max(s * s - 1, 0) / 12.0))
        pad = int(np.ceil(5 * sig_img)) + 4  # the neighbourhood of blurred_hat_features
        if undistort is None:
            px, py, m = xs, ys, hw
        else:  # target px -> phone image px -> undistorted, then the homography
            img = undistort(np.stack([xs, ys, np.ones(len(xs))], 1) @ t_k.T[:, :2])
            px, py, m = img[:, 0], img[:, 1], to_enc @ h_image
        w = m[2, 0] * px + m[2, 1] * py + m[2, 2]
        mx = (m[0, 0] * px + m[0, 1] * py + m[0, 2]) / w
        my = (m[1, 0] * px + m[1, 1] * py + m[1, 2]) / w
        inside = (w > 0) & (mx >= pad) & (my >= pad) & (mx <= iw - 1 - pad) & (my <= ih - 1 - pad)
        if encoded_grid is None:
            inside &= sample_points((~dslr.colour_clipped).astype(np.uint8), mx, my, cv2.INTER_NEAREST) > 0
        else:
            inside &= np.all(enc[np.round(my).astype(int).clip(0, ih - 1), np.round(mx).astype(int).clip(0, iw - 1)]
                             < np.ceil(0.995 * _full_scale(enc)), axis=-1)
        if inside.sum() < 500:
            return None
        xs, ys, mx, my = xs[inside], ys[inside], mx[inside], my[inside]
        target = _gauss(values.astype(np.float32), blur_sigma)[ys, xs].astype(np.float64)
        a = np.concatenate([blurred_hat_features(enc, mx, my, sig_img, n_knots, mix=mix), np.ones((len(mx), 1))], 1)
        return a, target, _gain_basis(t_k, xs, ys, frame)

    second = _second_differences(3, n_knots)
    penalty = second.T @ second

    def group_fit(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, float]:
        """-> (curve coefficients then offset, the robust scale of the last residual)."""
        a = np.concatenate([x for x, _, _ in parts])
        target = np.concatenate([t for _, t, _ in parts])
        gains = np.concatenate([b for _, _, b in parts])
        scale = float(np.mean(a[:, :-1] ** 2)) * len(target)
        lhs_p = smooth * scale * penalty
        # t ~ gain(x) * curves(E): the phone's vignetting and colour shading are a smooth
        # gain over the frame; left in the curves, they bend them, and a curve that is
        # wrong differently at the centre and at the rim moves edges radially (a scale
        # bias of ~0.1 % measured).  Curves and gain are fitted together.
        gain = np.ones(len(target))
        wts = np.ones(len(target))
        m = a.shape[1]
        for r in range(gain_rounds + 1):
            penalty_w = lhs_p * wts.mean()
            if r == 0 or frame is None:
                # the start: the curves alone, then the gain under them
                aw = a * wts[:, None]
                coef = np.linalg.lstsq(aw.T @ a + penalty_w, aw.T @ target, rcond=None)[0]
                pred = a @ coef
                if frame is not None:
                    gw = gains * (pred * wts)[:, None]
                    beta = np.linalg.lstsq(gw.T @ (gains * pred[:, None]), gw.T @ (target - pred), rcond=None)[0]
                    gain = np.clip(1.0 + gains @ beta, 0.2, 5.0)
            else:
                # curves and gain together: a Gauss-Newton step on t ~ gain(x) * curves(E)
                # from the last round's (pred, gain), bilinear in the two.  Fitting them in
                # turn converged slowly: under 30 % vignetting three alternations left part
                # of the gain in the curves (a soft lake landscape 0.085 px off at the
                # corners; 0.036 once converged)
                jac = np.concatenate([a * gain[:, None], gains * pred[:, None]], 1)
                jw = jac * wts[:, None]
                lhs = jw.T @ jac
                lhs[:m, :m] += penalty_w
                rhs = jw.T @ (target - gain * pred)
                rhs[:m] -= penalty_w @ coef
                step = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
                coef, beta = coef + step[:m], beta + step[m:]
                gain = np.clip(1.0 + gains @ beta, 0.2, 5.0)
                pred = a @ coef
            resid = target - gain * pred
            mad = 1.4826 * float(np.median(np.abs(resid - np.median(resid)))) + 1e-12
            if robust_k is not None:
                z = resid / (robust_k * mad)
                wts = np.where(np.abs(z) < 1, (1 - z * z) ** 2, 0.0)
        return coef, mad

    def fit_at(saturation: float, chosen: list[tuple]) -> tuple[float, np.ndarray | None, dict] | None:
        """The curves on the samples ``chosen`` with the boost ``saturation`` undone ->
        (score: the mean log MAD of the groups, the colour mix, {group: coefficients}),
        None when a target has too few samples inside the DSLR image."""
        mix = desaturation(saturation)
        drawn = thread_map(lambda d: target_samples(d, mix), chosen)
        if any(d is None for d in drawn):
            return None
        samples: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        for d, g in zip(drawn, groups):
            samples.setdefault(g, []).append(d)
        fits = dict(zip(samples, thread_map(group_fit, samples.values())))  # the colour filters side by side
        return float(np.mean([np.log(mad) for _, mad in fits.values()])), mix, {g: c for g, (c, _) in fits.items()}

    saturation = saturations[0]
    if len(saturations) > 1:
        # the boost is chosen on every few-th sample (most of the cost is reading the
        # samples' neighbourhoods), the curves are then fitted on all of them
        few = [(v, t, xs[::step], ys[::step]) for v, t, xs, ys in draws
               for step in [max(1, len(xs) // search_samples)]]
        scored = [(r[0], sat) for sat in saturations if (r := fit_at(sat, few)) is not None]
        if scored:
            saturation = min(scored)[1]
    fitted = fit_at(saturation, draws)
    if fitted is None:
        return None
    _, mix, coefs = fitted

    curves_offsets = [(coef[:-1].reshape(3, n_knots), float(coef[-1])) for coef in coefs.values()]
    if encoded_grid is None:
        made = thread_map(lambda co: apply_curves(enc, co[0], co[1], mix), curves_offsets)
    else:  # block means onto the working grid, the image read once for every group
        made = curves_on_grid_many(enc, curves_offsets, tuple(encoded_grid[1]), mix=mix)
    images = dict(zip(coefs, made))
    return RadiometricFit([images[g] for g in groups], float(saturation))
