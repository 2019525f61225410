"""Bring a pair to a working size: bin large phone planes, crop and shrink the DSLR.

The estimators (ECC, local tiles) gain nothing from more pixels than they need:
their cost grows with the pixel count while their precision, once hundreds of
thousands of pixels take part, is already far below a tenth of a pixel.  A 12 MP
phone raw against a 24 MP DSLR image is therefore brought to a working size
before the expensive stages:

- :func:`bin_phone` averages ``factor x factor`` blocks of each Bayer plane (and
  of the luminance).  The block mean samples the plane at the block's centroid,
  so each plane keeps an exact matrix to the full raw grid and the phone frame,
  its size and every result stay in full raw-grid px.
- :func:`crop_and_shrink_dslr` keeps the part of the DSLR image that the phone
  frame covers (plus a margin) and averages it in blocks of an integer factor so
  that it is about ``oversample`` DSLR px per phone working px.  It returns the matrix from the
  reduced grid to the stored DSLR px, which the pipeline composes into the final
  homography.  The encoded RGB is cropped only (never averaged): the radiometric
  fit applies its curves to the stored values and shrinks the result
  (:func:`shrink`), because a curve of an average is not the average of a curve.
- A 12 MP phone's global stage runs on planes binned further than the working
  ones (``AlignOptions.global_plane_pixels``): :func:`crop_and_shrink_dslr_for`
  reduces the DSLR for both grids on one crop, and :func:`mask_onto` carries a
  mask from the coarser planes onto the working ones.

Coordinates: x = column, y = row, pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from alignment.ecc import _local_scale
from alignment.prepare import PreparedImage, shrink
from alignment.threads import thread_map

__all__ = ["phone_bin_factor", "bin_phone", "ResidualGrid", "DslrWindow", "crop_and_shrink_dslr",
           "crop_and_shrink_dslr_for", "mask_onto", "shrink"]


def phone_bin_factor(phone: PreparedImage, max_plane_pixels: int | None) -> int:
    """Smallest integer factor that brings each working plane to at most ``max_plane_pixels`` px (1: none)."""
    if not max_plane_pixels:
        return 1
    h, w = phone.lum.shape
    return max(1, int(np.ceil(np.sqrt(h * w / float(max_plane_pixels)))))


def _block_matrix(factor: int) -> np.ndarray:
    """(3,3) binned px -> unbinned px: block j covers px factor*j .. factor*j + factor - 1."""
    c = (factor - 1) / 2.0
    return np.array([[factor, 0.0, c], [0.0, factor, c], [0.0, 0.0, 1.0]])


def block_mean(a: np.ndarray, factor: int) -> np.ndarray:
    """(h, w[, c]) float32 -> the means of its ``factor x factor`` blocks, (h // factor,
    w // factor[, c]) (the last rows and columns that fill no block left out): the array
    shrunk by exactly 1 / factor, pixel centres as ``cv2.resize`` places them."""
    h, w = a.shape[:2]
    hb, wb = h // factor, w // factor
    return cv2.resize(np.ascontiguousarray(a[: hb * factor, : wb * factor]), (wb, hb), interpolation=cv2.INTER_AREA)


def _binned(a: np.ndarray, factor: int) -> np.ndarray:
    """(h, w[, c]) array -> its ``factor`` block means, contiguous float32."""
    return np.ascontiguousarray(block_mean(a.astype(np.float32), factor))


def _binned_mask(m: np.ndarray, factor: int) -> np.ndarray:
    """(h, w) bool -> True where every px of the ``factor`` block is."""
    return block_mean(m.astype(np.float32), factor) > 0.999


def bin_phone(phone: PreparedImage, factor: int) -> PreparedImage:
    """Average ``factor x factor`` blocks of the working grid (luminance and each plane).

    A binned px is valid only when every px of its block was.  ``to_image`` and
    ``plane_to_image`` are composed with the block matrix, so coordinates stay
    in phone image px (the full raw grid).  factor 1 returns ``phone`` itself.
    """
    if factor <= 1:
        return phone
    m = _block_matrix(factor)
    return replace(
        phone,
        lum=_binned(phone.lum, factor),
        valid=_binned_mask(phone.valid, factor),
        to_image=phone.to_image @ m,
        planes=None if phone.planes is None else _binned(phone.planes, factor),
        plane_to_image=None if phone.plane_to_image is None else [t @ m for t in phone.plane_to_image],
    )


def mask_onto(mask: np.ndarray, source: PreparedImage, target: PreparedImage) -> np.ndarray:
    """A (h, w) bool mask on ``source``'s working grid -> one on ``target``'s (two binnings
    of one phone, :func:`bin_phone`): each target px takes the value of the source px its
    centre falls in (the nearest source px centre; rows and columns past the source's
    last block its neighbour's)."""
    m = np.linalg.inv(source.to_image) @ target.to_image  # target px -> source px (axis-aligned)
    h, w = target.lum.shape
    cols = np.clip(np.rint(m[0, 0] * np.arange(w) + m[0, 2]), 0, mask.shape[1] - 1).astype(np.intp)
    rows = np.clip(np.rint(m[1, 1] * np.arange(h) + m[1, 2]), 0, mask.shape[0] - 1).astype(np.intp)
    return mask[np.ix_(rows, cols)]


class ResidualGrid:
    """The grid the trust machinery's decisions are measured on: the phone's working grid
    binned by an integer ``factor`` (1: the working grid itself).

    The background start, the candidate models' scores and the pre-fit mask look for what
    is px off (a start a few px out, an object at another depth).  Their dense residuals
    (two DIS flows each, :func:`alignment.trust.dense_residual`) were validated on the
    1 MP benchmark's working grid (512 x 384); a 12 MP raw's has four times its px, and
    they cost four times as much.  On this grid (``AlignOptions.trust_grid_pixels``, off
    by default) they cost a quarter, about 7 % of a 12 MP pair's time, but the accuracy
    of real-size pairs moved both ways (docs/alignment.md, #11's twenty-fifth stop).  The
    trust map itself stays on the working grid.

    phone: the binned :class:`PreparedImage` (:func:`bin_phone`; the working phone itself
    for factor 1), one object for every residual, so that the phone's half of them is kept
    (:class:`alignment.trust.PhoneSides`); work: the working phone; factor; block: (3,3)
    grid px -> working px.  Every method is the identity for factor 1.
    """

    def __init__(self, phone: PreparedImage, factor: int) -> None:
        self.work = phone
        self.factor = max(1, int(factor))
        self.phone = bin_phone(phone, self.factor)
        self.block = _block_matrix(self.factor)

    @classmethod
    def at_most(cls, phone: PreparedImage, max_pixels: int | None) -> ResidualGrid:
        """The grid binned by the smallest factor that leaves at most ``max_pixels`` px
        (None: the working grid)."""
        return cls(phone, phone_bin_factor(phone, max_pixels))

    @property
    def step(self) -> float:
        """Phone image px per grid px."""
        return float(self.phone.to_image[0, 0])

    def model(self, h_work: np.ndarray) -> np.ndarray:
        """(3,3) working px -> X, as grid px -> X."""
        return h_work if self.factor == 1 else h_work @ self.block

    def motion(self, m_grid: np.ndarray) -> np.ndarray:
        """A (3,3) motion of grid px (grid px -> grid px) as one of working px."""
        return m_grid if self.factor == 1 else self.block @ m_grid @ np.linalg.inv(self.block)

    def bin(self, a: np.ndarray) -> np.ndarray:
        """(h, w) float working-grid array -> its block means on the grid (float32)."""
        return a if self.factor == 1 else _binned(a, self.factor)

    def bin_mask(self, m: np.ndarray) -> np.ndarray:
        """(h, w) bool working-grid mask -> True where the whole block is."""
        return m if self.factor == 1 else _binned_mask(m, self.factor)

    def up(self, m: np.ndarray) -> np.ndarray:
        """(gh, gw) grid mask -> the working grid's (h, w): each block takes its grid px's
        value, the rows and columns past the last whole block their neighbour's."""
        return m if self.factor == 1 else mask_onto(m, self.phone, self.work)


class DslrWindow:
    """The reduced DSLR grid: ``crop`` of the stored image, shrunk by ``factor``.

    crop: (x0, y0, x1, y1) stored DSLR px, end exclusive, a whole number of blocks.
    factor: stored px per reduced px (an integer; 1: not shrunk).  size: (W, H) of
    the reduced grid.
    ``to_stored``: (3,3) reduced px -> stored DSLR px.
    """

    def __init__(self, crop: tuple[int, int, int, int], size: tuple[int, int]) -> None:
        self.crop = crop
        self.size = size
        x0, y0, x1, y1 = crop
        fx = (x1 - x0) / size[0]
        fy = (y1 - y0) / size[1]
        self.factor = int(round(max(fx, fy)))
        # block mean: reduced px j covers stored px x0 + j fx .. x0 + (j+1) fx - 1
        self.to_stored = np.array([[fx, 0.0, x0 + 0.5 * fx - 0.5], [0.0, fy, y0 + 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])

    @property
    def to_crop(self) -> np.ndarray:
        """(3,3) reduced px -> px of the cropped (not shrunk) stored image."""
        x0, y0 = self.crop[:2]
        return np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1.0]]) @ self.to_stored

    @property
    def shrunk(self) -> bool:
        return (self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]) != tuple(self.size)

    def apply(self, a: np.ndarray) -> np.ndarray:
        """Crop and area-shrink a stored-grid array (H, W[, C]) onto the reduced grid."""
        return shrink(self.crop_only(a), self.size)

    def crop_only(self, a: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.crop
        return a[y0:y1, x0:x1]


def crop_and_shrink_dslr(
    dslr: PreparedImage,
    phone_to_dslr: np.ndarray,
    phone_size: tuple[int, int],
    phone_step: float,
    oversample: float | None,
    margin: float = 0.06,
) -> tuple[PreparedImage, DslrWindow]:
    """Crop the DSLR to the phone frame's footprint and shrink it to ``oversample``.

    dslr: the prepared DSLR image (working grid = stored px).  phone_to_dslr:
    (3,3) phone image px -> DSLR px (a first estimate).  phone_size: (W, H) phone
    image px.  phone_step: phone image px per phone working px (2 for Bayer planes,
    more when binned).  oversample: about how many DSLR px per phone working px to keep
    (None: no shrinking; the block factor is the integer nearest to the scale over
    ``oversample``, shrinking only from 2).  margin: extra border around the footprint, as a
    fraction of its size (plus 16 px), for the local field and the filters.
    Returns (the reduced image, with ``to_image`` = reduced px -> stored px, the
    encoded RGB cropped but not shrunk; the window).
    """
    return crop_and_shrink_dslr_for(dslr, phone_to_dslr, phone_size, (phone_step,), oversample, margin)[0]


def crop_and_shrink_dslr_for(
    dslr: PreparedImage,
    phone_to_dslr: np.ndarray,
    phone_size: tuple[int, int],
    phone_steps: tuple[float, ...],
    oversample: float | None,
    margin: float = 0.06,
) -> list[tuple[PreparedImage, DslrWindow]]:
    """:func:`crop_and_shrink_dslr` for phone working grids of several ``phone_steps``
    (phone image px per working px; a global stage on coarser planes than the final
    ones): one (reduced image, window) per step, every window on one crop (its right
    and bottom ends whole blocks of every window's factor), so that the cropped
    encoded RGB is one array that all of them share."""
    ih, iw = dslr.lum.shape
    w, h = phone_size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1], [(w - 1) / 2, (h - 1) / 2]], float)
    p = corners @ phone_to_dslr[:, :2].T + phone_to_dslr[:, 2]
    if np.any(p[:, 2] <= 0):
        x0, y0, x1, y1 = 0, 0, iw, ih
    else:
        q = p[:, :2] / p[:, 2:3]
        span = q.max(0) - q.min(0)
        lo = np.floor(q.min(0) - margin * span - 16).astype(int)
        hi = np.ceil(q.max(0) + margin * span + 16).astype(int) + 1
        x0, y0 = max(0, lo[0]), max(0, lo[1])
        x1, y1 = min(iw, hi[0]), min(ih, hi[1])
        if x1 - x0 < 32 or y1 - y0 < 32:
            x0, y0, x1, y1 = 0, 0, iw, ih
    scale = _local_scale(phone_to_dslr, (h, w))  # DSLR px per phone image px
    # an integer block factor keeps every reduced px centred exactly (see shrink)
    factors = [max(1, int(round(scale * step / oversample))) if oversample else 1 for step in phone_steps]
    whole = int(np.lcm.reduce(factors))
    if whole > 1:
        x1 = x0 + (x1 - x0) // whole * whole
        y1 = y0 + (y1 - y0) // whole * whole
    windows = [DslrWindow((x0, y0, x1, y1), ((x1 - x0) // f, (y1 - y0) // f)) for f in factors]

    def mask(m: np.ndarray, win: DslrWindow, above: float) -> np.ndarray:
        # cropped before it becomes a number image: a 24 MP mask as float32 is 96 MB
        crop = win.crop_only(m)
        return shrink(crop.astype(np.float32), win.size) > above if win.shrunk else crop.copy()

    jobs = [lambda: None if dslr.encoded is None else np.ascontiguousarray(windows[0].crop_only(dslr.encoded))]
    for win in windows:
        jobs += [lambda win=win: np.ascontiguousarray(win.apply(dslr.lum)), lambda win=win: mask(dslr.valid, win, 0.999),
                 lambda win=win: None if dslr.clipped is None else mask(dslr.clipped, win, 0.001)]
    enc, *reduced = thread_map(lambda job: job(), jobs)
    out = []
    for k, win in enumerate(windows):
        lum, valid, clipped = reduced[3 * k : 3 * k + 3]
        out.append((replace(dslr, lum=lum, valid=valid, to_image=dslr.to_image @ win.to_stored, encoded=enc,
                            clipped=clipped), win))
    return out
