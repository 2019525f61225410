"""The DSLR JPEG's colour detail, put back from its luma.

A JPEG keeps its luma (Y) at full resolution and, as most cameras write it (4:2:0), its
chroma averaged over blocks of 2 x 2 px; the decoder interpolates the chroma back
(libjpeg's "fancy" upsampling, a triangle filter).  The decoded RGB is then sharp in
luma and soft in colour, and the two are mixed in the display encoding: where a phone
plane sees a colour edge, the DSLR's prediction of it (its response curves applied to
the decoded RGB, :func:`alignment.prepare.fit_radiometric`) puts a soft part through a
curve, and the edge it predicts is not only blurred but displaced, by an amount that
depends on the curve and the edge's colours.  On the broadened benchmark's colour charts
this held the homography at 0.07 px at the corners (16 chart pairs written as 16-bit
TIFF instead: 0.04).

Within a few px the chroma of a scene mostly follows its luma linearly (the patches of a
chart, an object against its background): C = a Y + b.  So the chroma's lost detail is
put back as ``a`` times the luma's own lost detail: with ``L`` the JPEG's loss (block
average, then the decoder's interpolation), ``C' = C + a (Y - L(Y))``, where ``a`` is the
local regression of the decoded chroma on ``L(Y)`` (both carry the same loss, so the
slope is not biased by it), smoothed as in a guided filter.  Where the chroma does not
follow the luma (a soft colour gradient, noise) ``a`` is about 0 and the chroma stays as
decoded.  The luma is unchanged (the weights of Y sum the three chroma differences to
zero).
"""

from __future__ import annotations

import cv2
import numpy as np

from alignment.threads import thread_map

__all__ = ["BT601", "restore_chroma"]

#: the luma weights of a JFIF JPEG's YCbCr (ITU-R BT.601, full range)
BT601 = np.array([0.299, 0.587, 0.114], np.float32)

#: the radius of the windows the slope is fitted over and smoothed by (encoded px; on the
#: chroma grid, as many chroma samples as cover it, at least one each way).  With EPS_FRACTION,
#: chosen on the 16 colour-chart pairs of the benchmark's tune half (docs/alignment.md, step
#: 6) with a plain guided filter of the chroma on the luma, this module's first form: radius
#: 1 / 2 / 3 gave 0.080 / 0.054 / 0.052 px median corner error at eps 0.01, and eps 0.01 /
#: 0.003 / 0.001 gave 0.054 / 0.047 / 0.057 at radius 2 (0.069 decoded as is)
RADIUS = 2
#: the regularisation of the slope, as a fraction of the full scale (a luma step smaller
#: than this barely carries the chroma along)
EPS_FRACTION = 0.003
#: ... plus the luma noise's variance times this squared: a slope is fitted only to luma
#: steps well above the noise
NOISE_SIGMAS = 2.0
#: a subsampled axis's block mean of the decoder's interpolation, on the chroma grid (1: none)
_REBLOCK = {1: np.array([1.0], np.float32), 2: np.array([0.125, 0.75, 0.125], np.float32)}
#: rows per strip (memory: a 24 MP JPEG at eight float32 images at once is 0.8 GB)
STRIP_ROWS = 512


def _block_mean(a: np.ndarray, sampling: tuple[int, int]) -> np.ndarray:
    """(h, w) float32 averaged over the JPEG's chroma blocks (``sampling`` = (px per
    chroma sample across, down), from the array's top left; the last ones padded by their
    edge, as the encoder pads) -> (ceil(h / sy), ceil(w / sx)) float32."""
    sx, sy = sampling
    h, w = a.shape
    ph, pw = -h % sy, -w % sx
    if ph or pw:
        a = cv2.copyMakeBorder(a, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    # (an area resize by whole factors is the block mean, and ten times numpy's speed)
    return cv2.resize(a, ((w + pw) // sx, (h + ph) // sy), interpolation=cv2.INTER_AREA)


def _upsample(small: np.ndarray, sampling: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Chroma samples at their blocks' centres back onto the (h, w) px grid, as libjpeg's
    fancy upsampling does (a triangle filter: bilinear, half-px aligned)."""
    sx, sy = sampling
    h, w = shape
    return cv2.resize(small, (small.shape[1] * sx, small.shape[0] * sy), interpolation=cv2.INTER_LINEAR)[:h, :w]


def _restore_strip(planes: list[np.ndarray], sampling: tuple[int, int], radius: int, eps: float
                   ) -> list[np.ndarray]:
    """:func:`restore_chroma` on one strip, as its three (h, W) float32 channel planes, whose
    first row is a chroma block's.  The slopes are fitted on the chroma grid (the decoded
    chroma and the luma's JPEG loss both block-averaged once more: the same blur on both)
    and interpolated back."""
    sx, sy = sampling
    y = cv2.addWeighted(planes[0], float(BT601[0]), planes[1], float(BT601[1]), 0.0)
    y = cv2.scaleAdd(planes[2], float(BT601[2]), y)
    y_small = _block_mean(y, sampling)
    detail = cv2.subtract(y, _upsample(y_small, sampling, y.shape))
    # the luma's noise (a robust scale of its lost detail, which flat px dominate) must not
    # carry the chroma along: noise in R, G and B correlates Y with every chroma difference
    noise = 1.4826 * float(np.median(np.abs(detail[::3, ::3])))
    eps = eps + (NOISE_SIGMAS * noise) ** 2
    k = (2 * max(1, -(-radius // sx)) + 1, 2 * max(1, -(-radius // sy)) + 1)  # the window, in chroma samples

    def box(z: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(z, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT)

    # the luma's JPEG loss on the chroma grid: its block mean interpolated and block-averaged
    # again, which on the chroma grid is the kernel (1/8, 3/4, 1/8) along a subsampled axis
    low_small = cv2.sepFilter2D(y_small, cv2.CV_32F, _REBLOCK[sx], _REBLOCK[sy], borderType=cv2.BORDER_REPLICATE)
    m_low = box(low_small)
    var_low = box(low_small * low_small) - m_low * m_low + np.float32(eps)

    def restored(plane: np.ndarray) -> np.ndarray:
        c_small = _block_mean(plane, sampling) - y_small  # (the block mean is linear)
        slope = box((box(low_small * c_small) - m_low * box(c_small)) / var_low)
        return cv2.add(plane, cv2.multiply(_upsample(slope, sampling, y.shape), detail))

    red, blue = restored(planes[0]), restored(planes[2])
    # green from the luma, which the restoration keeps: Y = 0.299 R + 0.587 G + 0.114 B
    green = cv2.addWeighted(red, -float(BT601[0] / BT601[1]), blue, -float(BT601[2] / BT601[1]), 0.0)
    return [red, cv2.scaleAdd(y, float(1.0 / BT601[1]), green), blue]


def _to_stored(plane: np.ndarray, dtype: np.dtype, full: float) -> np.ndarray:
    """A float32 channel rounded to the nearest integer (halves to even) and clipped to
    [0, ``full``], as ``dtype``: for uint8 by OpenCV's saturating conversion (of the plane
    clipped at 0 first, so its absolute value is itself), the same numbers as numpy's
    ``rint``, ``clip`` and ``astype`` in one pass instead of three."""
    if np.dtype(dtype) == np.uint8:
        return cv2.convertScaleAbs(cv2.max(plane, 0.0))
    return np.clip(np.rint(plane), 0, full).astype(dtype)


def restore_chroma(encoded: np.ndarray, sampling: tuple[int, int], origin: tuple[int, int] = (0, 0),
                   radius: int = RADIUS, eps_fraction: float = EPS_FRACTION) -> np.ndarray:
    """The decoded JPEG ``encoded`` ((H, W, 3) uint8 or uint16, RGB) with its chroma's lost
    detail put back from its luma (the module's docstring).  origin: the file's (x, y) px
    at ``encoded``'s top left (a crop: the chroma blocks start at the file's).
    sampling: the JPEG's chroma subsampling, (px per chroma sample across, down): (2, 2)
    for 4:2:0, (2, 1) for 4:2:2; (1, 1), or a factor other than 1 or 2, returns ``encoded``
    itself.  Returns an array of the same shape and type, clipped to its full scale.
    Worked in strips of ``STRIP_ROWS`` rows (whole chroma blocks, each with the margin its
    windows reach) on the pool's threads: the same result as in one piece."""
    sx, sy = sampling
    if (sx, sy) == (1, 1) or sx not in _REBLOCK or sy not in _REBLOCK:  # (4:1:1 and rarer: as decoded)
        return encoded
    px, py = origin[0] % sx, origin[1] % sy
    if px or py:  # a crop that starts inside a chroma block: padded to the block's start
        padded = cv2.copyMakeBorder(encoded, py, 0, px, 0, cv2.BORDER_REPLICATE)
        return restore_chroma(padded, sampling, (0, 0), radius, eps_fraction)[py:, px:]
    full = 255.0 if encoded.dtype == np.uint8 else 65535.0
    eps = float((eps_fraction * full) ** 2)
    h = encoded.shape[0]
    step = max(sy, STRIP_ROWS - STRIP_ROWS % sy)
    # the reach of a strip's outputs into its neighbours, in whole blocks: the two windows
    # (the slope's fit and its smoothing), the loss kernel and the interpolation
    margin = sy * (2 * max(1, -(-radius // sy)) + 2)
    tops = list(range(0, h, step))
    out = np.empty_like(encoded)  # (each strip written in place: no second copy of the image)

    def strip(top: int) -> None:
        lo, hi = max(0, top - margin), min(h, top + step + margin)
        n = min(step, h - top)
        rows = slice(top - lo, top - lo + n)
        # split as stored, then each channel to float (a third of the memory traffic of
        # converting the interleaved strip first, and no 3-channel float copy of it)
        stored = cv2.split(np.ascontiguousarray(encoded[lo:hi]))
        restored = _restore_strip([c.astype(np.float32) for c in stored], (sx, sy), radius, eps)
        out[top : top + n] = cv2.merge([_to_stored(c[rows], encoded.dtype, full) for c in restored])
        # what was clipped stays as decoded (its colour is not measured, and the fits' masks
        # must still find it)
        clipped = cv2.max(cv2.max(stored[0], stored[1]), stored[2])[rows] >= np.ceil(0.995 * full)
        if clipped.any():
            np.copyto(out[top : top + n], encoded[top : top + n], where=clipped[..., None])

    thread_map(strip, tops)
    return out
