"""One Bayer phase for every raw the model sees: an R pixel at the top-left of every packed cell.

A packed raw (:meth:`alignment.rawio.RawImage.packed`) always holds the planes R, G1, G2, B, but
where each plane's pixel sits inside its 2x2 cell depends on the camera's CFA pattern: R is at
(0, 0) of the cell for ``RGGB``, at (0, 1) for ``GRBG``, at (1, 0) for ``GBRG`` and at (1, 1) for
``BGGR``.  A model that puts its output's detail on the four pixels of a cell must know which; given
packed planes of several patterns it cannot, and learns a blur that suits all four (the raw
benchmark of docs/learning.md mixes the four patterns, as datasets of several phones do).

Phase ``rggb`` (:data:`CFA_PHASES`; the training default) removes the ambiguity: the mosaic is
padded by one raw pixel on both sides of each axis where R is not first, with ``reflect``
padding (row -1 repeats row 1, which has row -1's colours: the Bayer pattern continues), so every
cell of the padded mosaic is R, G1 / G2, B in RGGB order, and nothing of the raw is lost.  The
target is padded with its edge and the mask with "not valid", so the padding is never scored; a
rendering is cropped back to the raw's own grid (:func:`crop_to_raw`).  Phase ``packed`` keeps
the cells as the pattern gives them (every run trained before 2026-12-01, whose stored config has
no ``cfa_phase``).
"""

from __future__ import annotations

import numpy as np

from alignment import rawio

#: ``rggb``: shifted to R first; ``packed``: the raw's own cells (runs trained before the shift existed)
CFA_PHASES = ("rggb", "packed")

#: the phase of a run whose stored config predates the key
LEGACY_PHASE = "packed"


def red_offset(cfa: str | None) -> tuple[int, int]:
    """(row, col) of the R pixel in the 2x2 cell of ``cfa`` (``RGGB`` ... ``BGGR``); (0, 0) for None.

    Raises ValueError (:func:`alignment.rawio.cfa_positions`'s check) for a pattern that is not one of
    :data:`alignment.rawio.CFA_PATTERNS`.
    """
    return (0, 0) if cfa is None else tuple(rawio.cfa_positions(cfa)[0])


def to_rggb(packed: np.ndarray, cfa: str | None) -> np.ndarray:
    """(h, w, 4) packed R, G1, G2, B of pattern ``cfa`` -> (h + dy, w + dx, 4) with R first in every cell.

    (dy, dx) = :func:`red_offset`; the mosaic is reflect-padded by dy raw rows above and below and
    dx raw columns left and right.  Raw pixel (y, x) becomes pixel (y + dy, x + dx) of the result's
    mosaic.  ``cfa`` ``RGGB`` or None: ``packed`` itself (no copy).
    """
    dy, dx = red_offset(cfa)
    if not (dy or dx):
        return packed
    mosaic = rawio.unpack(np.asarray(packed), cfa)
    padded = np.pad(mosaic, ((dy, dy), (dx, dx)), mode="reflect")
    return np.ascontiguousarray(rawio.pack(padded, "RGGB"))


def pad_like_raw(target: np.ndarray, mask: np.ndarray, cfa: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Pad a full-resolution target (H, W, 3) and mask (H, W) as :func:`to_rggb` pads the mosaic:
    the target with its edge, the mask with False (the padding is never trained on or scored)."""
    dy, dx = red_offset(cfa)
    if not (dy or dx):
        return target, mask
    pad = ((dy, dy), (dx, dx))
    return np.pad(target, pad + ((0, 0),), mode="edge"), np.pad(mask, pad, constant_values=False)


def crop_to_raw(image: np.ndarray, cfa: str | None) -> np.ndarray:
    """A rendering (H + 2dy, W + 2dx, C) of :func:`to_rggb`'s input -> (H, W, C) on the raw's own grid."""
    dy, dx = red_offset(cfa)
    return image[dy: image.shape[0] - dy, dx: image.shape[1] - dx]
