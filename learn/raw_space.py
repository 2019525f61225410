"""The metadata input stage: the packed raw in the colour space its own metadata defines.

Every phone raw records how its maker would start rendering it: the as-shot white
balance and a colour matrix (``alignment.rawio.RawImage.metadata``, kept per pair in
the dataset's ``phone_raw``).  A learned ISP given only the packed raw must guess both
for every shot; given the raw already white-balanced (and colour-corrected), it
starts where a well-informed ISP starts.  The space is chosen per experiment
(``data.input_space`` in the training config) and stored with the run, so
evaluation and ``isp-rig render`` apply the same stage with the metadata of the raw
they read.

Spaces (:data:`INPUT_SPACES`), on (h, w, 4) packed planes R, G1, G2, B (black
subtracted, divided by the white level, see :meth:`RawImage.packed`):

- ``raw``: as recorded;
- ``white_balanced``: each plane times its as-shot multiplier (``as_shot_wb``: R, G, B
  with G = 1), so a neutral surface has equal planes;
- ``linear_srgb``: white-balanced, then the colour matrix (``color_matrix``: white-
  balanced camera RGB -> linear sRGB, rows = sRGB R, G, B) per CFA cell: R and B out
  of (R, mean G, B), each green plane out of (R, its own G, B), so the two greens stay
  two samples.  The planes keep their positions (no demosaicking);
- ``srgb``: ``linear_srgb`` through the sRGB transfer curve (IEC 61966-2-1), the tone
  the phone's plain rendering starts from, so the colour path's polynomial works on
  display-referred values as a global colour map does.  The curve is mirrored below 0
  (noise around black keeps its sign; the curve is linear there) and continued above 1 with its slope
  there (1.055 / 2.4), so no highlight the white balance lifts past 1 is clipped.
"""

from __future__ import annotations

import numpy as np

from alignment.rawio import RawImage, linear_to_srgb

#: the input spaces, in order of how much of the metadata they use
INPUT_SPACES = ("raw", "white_balanced", "linear_srgb", "srgb")

#: what ``input_space = "auto"`` (the training default) becomes when every training pair carries the
#: metadata: the space the raw benchmark measured best (docs/learning.md); ``raw`` otherwise
AUTO, METADATA_DEFAULT = "auto", "srgb"


class MissingMetadata(ValueError):
    """The input space needs metadata the pair or file does not carry."""


def to_input_space(packed: np.ndarray, metadata: dict | None, space: str) -> np.ndarray:
    """(h, w, 4) float32 packed raw (R, G1, G2, B) -> the same in ``space``.

    metadata: the raw's ``phone_raw`` record (``as_shot_wb``, ``color_matrix``); not
    read for ``raw``.  Raises ValueError for an unknown space and
    :class:`MissingMetadata` when the metadata lacks what the space needs.
    """
    if space not in INPUT_SPACES:
        raise ValueError(f"unknown input space {space!r} (choices: {', '.join(INPUT_SPACES)})")
    if space == "raw":
        return packed
    wb = _field(metadata, "as_shot_wb", (3,))
    x = np.asarray(packed, np.float32) * np.array([wb[0], wb[1], wb[1], wb[2]], np.float32)
    if space == "white_balanced":
        return x
    m = _field(metadata, "color_matrix", (3, 3))
    r, g1, g2, b = (x[..., k] for k in range(4))
    g = 0.5 * (g1 + g2)
    out = np.stack([m[0, 0] * r + m[0, 1] * g + m[0, 2] * b,
                    m[1, 0] * r + m[1, 1] * g1 + m[1, 2] * b,
                    m[1, 0] * r + m[1, 1] * g2 + m[1, 2] * b,
                    m[2, 0] * r + m[2, 1] * g + m[2, 2] * b], axis=-1)
    if space == "srgb":
        out = encode_srgb(out)
    return out.astype(np.float32)


#: slope of the sRGB transfer curve at 1, the continuation of :func:`encode_srgb` above 1
_SRGB_SLOPE_AT_1 = 1.055 / 2.4


def raw_to_model_input(raw: RawImage, space: str, cfa_phase: str = "packed") -> tuple[np.ndarray, str | None]:
    """A decoded camera raw (:class:`alignment.rawio.RawImage`) -> (the model's input, the
    CFA pattern it was shifted from).

    The (h, w, 4) float32 packed raw, shifted so R is first in every cell when
    ``cfa_phase`` is ``rggb`` (:func:`learn.cfa_phase.to_rggb`; the pattern is returned
    for :func:`learn.cfa_phase.crop_to_raw`, else None), brought into ``space`` with the
    raw's own metadata (:func:`to_input_space`; raises :class:`MissingMetadata`)."""
    from learn.cfa_phase import to_rggb

    cfa = raw.cfa if cfa_phase == "rggb" else None
    return to_input_space(to_rggb(raw.packed(), cfa), raw.metadata(), space), cfa


def encode_srgb(x: np.ndarray) -> np.ndarray:
    """The sRGB transfer curve on any real values: mirrored below 0, continued linearly above 1.

    On [0, 1] it equals :func:`alignment.rawio.linear_to_srgb`; it is continuous with a
    continuous slope, so a value past 1 or under 0 keeps its order and distance.
    """
    x = np.asarray(x, np.float32)
    a = np.abs(x)
    inside = linear_to_srgb(np.minimum(a, 1.0))
    out = np.where(a > 1.0, 1.0 + _SRGB_SLOPE_AT_1 * (a - 1.0), inside)
    return (np.sign(x) * out).astype(np.float32)


def metadata_problem(metadata: dict | None, space: str) -> str | None:
    """Why a raw's ``phone_raw`` record cannot be brought into ``space`` (None: it can)."""
    try:
        to_input_space(np.zeros((1, 1, 4), np.float32), metadata, space)
    except MissingMetadata as err:
        return str(err)
    return None


def auto_input_space(packed_pairs: bool, metadata: list[dict | None], ids: list[str]) -> tuple[str, str]:
    """What ``input_space = "auto"`` means for a training split: ``(space, why)``.

    packed_pairs: the split holds packed raws (RGB inputs have no input stage: ``raw``);
    metadata / ids: each training pair's ``phone_raw`` record and id.  The space is
    :data:`METADATA_DEFAULT` when every pair carries what it needs, else ``raw``, and
    ``why`` names the first pair that lacks it.
    """
    if not packed_pairs:
        return "raw", "RGB inputs have no metadata stage"
    for meta, pid in zip(metadata, ids):
        problem = metadata_problem(meta, METADATA_DEFAULT)
        if problem:
            return "raw", f"pair {pid!r}: {problem}"
    return METADATA_DEFAULT, "every training pair carries its white balance and colour matrix"


def _field(metadata: dict | None, key: str, shape: tuple[int, ...]) -> np.ndarray:
    value = None if metadata is None else metadata.get(key)
    if value is None:
        raise MissingMetadata(f"no {key} in the raw's metadata")
    arr = np.asarray(value, np.float32)
    if arr.shape != shape or not np.all(np.isfinite(arr)):
        raise MissingMetadata(f"{key} is not a finite {'x'.join(map(str, shape))} array")
    return arr
