"""Raw and image decoding: the one home of file reading for every stage.

Phone raws (DNG, NEF, CR2, ARW, RAF, ... anything LibRaw decodes) are read
with rawpy and kept as the visible Bayer mosaic plus the facts needed to
interpret it: the CFA phase, per-channel black levels, the white level,
the camera white balance, the colour matrix and the EXIF facts later stages
use.  DSLR targets may also be plain images (JPEG, PNG, 8- or 16-bit TIFF).

Conventions (see ARCHITECTURE.md):

* Coordinates: x = column, y = row, pixel centres at integer coordinates.
  A raw's full-resolution grid is rawpy's ``raw_image_visible``.
* Packing: a Bayer mosaic (H, W) becomes (H/2, W/2, 4) planes in
  R, G1, G2, B order whatever the sensor's CFA phase.  G1 is the green on
  the red rows, G2 the green on the blue rows.  Packed pixel (j, i) holds
  the 2x2 cell whose top-left raw pixel is (2j, 2i).
* Normalisation: (value - black) / (white - black), per channel, not clipped.

Every failure to read a file raises :class:`ImageReadError`, which names the
file and one of the reasons in :data:`REASONS`.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from alignment import exif as exif_io

PathLike = Union[str, os.PathLike]

#: Every reason an :class:`ImageReadError` can carry.
REASONS = ("missing", "not_an_image", "corrupt", "truncated", "no_image_data", "unsupported")

#: File name extensions read as camera raws (through LibRaw).
RAW_EXTENSIONS = frozenset(
    ".dng .nef .nrw .cr2 .cr3 .crw .arw .srf .sr2 .raf .rw2 .rwl .orf .pef .srw .kdc .dcr "
    ".3fr .fff .iiq .x3f .erf .mef .mos .mrw .raw .dcs .k25 .bay .cap .eip .rdc .ptx".split()
)
#: File name extensions read as plain images.
IMAGE_EXTENSIONS = frozenset(".jpg .jpeg .png .tif .tiff".split())

CFA_PATTERNS = ("RGGB", "GRBG", "GBRG", "BGGR")

#: A raw file smaller than this many bytes per declared pixel cannot hold its
#: image (lossless raws take 1 to 2 bytes a pixel, lossy DNG some 0.2).
MIN_BYTES_PER_PIXEL = 0.02

# Rec. 709 / sRGB luminance weights for linear RGB.
LUMA_WEIGHTS = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


class ImageReadError(Exception):
    """A file could not be read as a raw or an image.

    Attributes:
        path: the file.
        reason: one of :data:`REASONS`.
        message: a sentence for a person.
    """

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line

    def __init__(self, path: PathLike, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        self.path = Path(path)
        self.reason = reason
        self.message = message
        super().__init__(f"{self.path}: {message}")


@dataclass(frozen=True)
class ExifInfo:
    """The EXIF facts the later stages use; None where the file has none.

    ``capture_time`` is the camera's capture time (:func:`alignment.exif.capture_time`):
    naive on the camera's clock, or aware where the file records its UTC offset
    (OffsetTimeOriginal), with microseconds from SubSecTimeOriginal where the file
    has them.  ``orientation`` is the EXIF
    code 1..8 (1 = as stored); pixels are always returned as stored.
    """

    make: str | None = None
    model: str | None = None
    focal_length_mm: float | None = None
    focal_length_35mm: float | None = None
    exposure_time_s: float | None = None
    iso: float | None = None
    capture_time: _dt.datetime | None = None
    orientation: int = 1

    def to_dict(self) -> dict:
        """JSON-friendly dict (capture time as ISO 8601)."""
        out = dict(self.__dict__)
        out["capture_time"] = self.capture_time.isoformat() if self.capture_time else None
        return out


@dataclass
class RawImage:
    """A Bayer raw as stored on the sensor.

    Attributes:
        path: the file it came from (None when built in memory).
        mosaic: (H, W) uint16 visible Bayer mosaic (rawpy ``raw_image_visible``,
            cropped to even H and W).
        cfa: 'RGGB' | 'GRBG' | 'GBRG' | 'BGGR', the colours at (row, col)
            (0,0), (0,1), (1,0), (1,1).
        black_levels: (4,) float32 black level in R, G1, G2, B order, in raw units.
        white_level: saturation level in raw units.
        camera_wb: (3,) float32 as-shot white-balance multipliers R, G, B (G = 1).
        color_matrix: (3, 3) float32 white-balanced camera RGB -> linear sRGB
            (identity when the file has none).
        exif: the EXIF facts.
        dng: the DNG colour calibration (:func:`dng_colour`: colour and forward
            matrices, calibration illuminants, as-shot neutral, baseline exposure),
            None for other raws.
    """

    mosaic: np.ndarray
    cfa: str
    black_levels: np.ndarray
    white_level: float
    camera_wb: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    color_matrix: np.ndarray = field(default_factory=lambda: np.eye(3, dtype=np.float32))
    exif: ExifInfo = field(default_factory=ExifInfo)
    path: Path | None = None
    dng: dict | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the full-resolution raw grid."""
        return self.mosaic.shape  # type: ignore[return-value]

    def packed(self) -> np.ndarray:
        """(H/2, W/2, 4) float32 planes R, G1, G2, B, black-subtracted and divided
        by (white - black); not clipped."""
        return normalize(pack(self.mosaic, self.cfa), self.black_levels, self.white_level)

    def metadata(self) -> dict:
        """What the raw file says about its own rendering, JSON-friendly: ``cfa``,
        ``black_levels`` (R, G1, G2, B), ``white_level`` (raw units), ``as_shot_wb``
        (R, G, B multipliers, G = 1), ``color_matrix`` (3x3, white-balanced camera RGB
        -> linear sRGB, rows = sRGB R, G, B; LibRaw's), ``exposure_time_s``, ``iso``,
        ``make``, ``model`` (None where the file has none) and ``dng``: the DNG's own
        colour calibration (:func:`dng_colour`: ColorMatrix1/2, ForwardMatrix1/2,
        CalibrationIlluminant1/2, AsShotNeutral, ...; None for other raws)."""
        return {"cfa": self.cfa, "black_levels": [float(b) for b in self.black_levels],
                "white_level": float(self.white_level), "as_shot_wb": [float(v) for v in self.camera_wb],
                "color_matrix": [[float(v) for v in row] for row in np.asarray(self.color_matrix)],
                "exposure_time_s": self.exif.exposure_time_s, "iso": self.exif.iso,
                "make": self.exif.make, "model": self.exif.model, "dng": self.dng}


class RgbImage:
    """A plain image (JPEG, PNG, TIFF) as stored.

    Attributes:
        rgb: (H, W, 3) float32 in [0, 1], display-referred (sRGB-encoded), RGB order
            (computed from ``stored`` on first use when the file held integers).
        stored: (H, W, 3) uint8 or uint16, the samples as the file holds them, RGB
            order, or None (float files, or an image built from floats); lets a
            consumer work on the integers (look-up tables) without the float copy.
        bit_depth: bits per sample in the file (8 or 16; 32 for float TIFF).
        exif: the EXIF facts.
        path: the file it came from.
        chroma_sampling: a JPEG's chroma subsampling, (px per chroma sample across,
            down): (2, 2) for 4:2:0 (:func:`jpeg_chroma_sampling`); None for other files.
    """

    def __init__(
        self,
        rgb: np.ndarray | None = None,
        bit_depth: int = 8,
        exif: ExifInfo | None = None,
        path: Path | None = None,
        stored: np.ndarray | None = None,
        chroma_sampling: tuple[int, int] | None = None,
    ) -> None:
        if rgb is None and stored is None:
            raise ValueError("RgbImage needs rgb or stored samples")
        self._rgb = rgb
        self.stored = stored
        self.bit_depth = bit_depth
        self.exif = exif if exif is not None else ExifInfo()
        self.path = path
        self.chroma_sampling = chroma_sampling

    @property
    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            assert self.stored is not None
            scale = 255.0 if self.stored.dtype == np.uint8 else 65535.0
            self._rgb = np.ascontiguousarray(self.stored, np.float32) * np.float32(1.0 / scale)
        return self._rgb

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        src = self.stored if self.stored is not None else self._rgb
        return src.shape[:2]  # type: ignore[union-attr,return-value]

    def __repr__(self) -> str:
        return f"RgbImage(shape={self.shape}, bit_depth={self.bit_depth}, path={self.path})"


# --------------------------------------------------------------------------- CFA


def _check_cfa(cfa: str) -> str:
    cfa = cfa.upper()
    if cfa not in CFA_PATTERNS:
        raise ValueError(f"CFA pattern must be one of {CFA_PATTERNS}, got {cfa!r}")
    return cfa


def cfa_positions(cfa: str) -> list[tuple[int, int]]:
    """(row, col) inside the 2x2 cell of R, G1, G2, B for a CFA pattern.

    G1 is the green sharing a row with red, G2 the green sharing a row with blue.
    """
    cfa = _check_cfa(cfa)
    cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
    red = cells[cfa.index("R")]
    blue = cells[cfa.index("B")]
    greens = [c for c, colour in zip(cells, cfa) if colour == "G"]
    g1 = next(c for c in greens if c[0] == red[0])
    g2 = next(c for c in greens if c[0] == blue[0])
    return [red, g1, g2, blue]


def pack(mosaic: np.ndarray, cfa: str) -> np.ndarray:
    """Pack a Bayer mosaic into half-resolution planes.

    Args:
        mosaic: (H, W) Bayer mosaic, H and W even, any dtype.
        cfa: the pattern of the 2x2 cell at the mosaic's top-left.

    Returns:
        (H/2, W/2, 4) array of the mosaic's dtype, planes R, G1, G2, B.
    """
    if mosaic.ndim != 2 or mosaic.shape[0] % 2 or mosaic.shape[1] % 2:
        raise ValueError(f"mosaic must be 2-D with even sides, got shape {mosaic.shape}")
    return np.stack([mosaic[r::2, c::2] for r, c in cfa_positions(cfa)], axis=-1)


def unpack(planes: np.ndarray, cfa: str) -> np.ndarray:
    """Exact inverse of :func:`pack`: (H/2, W/2, 4) R, G1, G2, B -> (H, W) mosaic."""
    if planes.ndim != 3 or planes.shape[2] != 4:
        raise ValueError(f"planes must have shape (h, w, 4), got {planes.shape}")
    h, w = planes.shape[:2]
    mosaic = np.empty((2 * h, 2 * w), dtype=planes.dtype)
    for k, (r, c) in enumerate(cfa_positions(cfa)):
        mosaic[r::2, c::2] = planes[..., k]
    return mosaic


def normalize(planes: np.ndarray, black_levels: np.ndarray, white_level: float) -> np.ndarray:
    """(planes - black) / (white - black) per channel, as float32, not clipped.

    Args:
        planes: (h, w, 4) raw units, R, G1, G2, B.
        black_levels: (4,) black level per plane, raw units.
        white_level: saturation level, raw units.
    """
    black = np.asarray(black_levels, dtype=np.float32).reshape(1, 1, 4)
    scale = 1.0 / (np.float32(white_level) - black)
    return (planes.astype(np.float32) - black) * scale


# ----------------------------------------------------------------- colour maths


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """Inverse sRGB transfer curve (IEC 61966-2-1) on float values in [0, 1]."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4).astype(
        np.float32
    )


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """sRGB transfer curve (IEC 61966-2-1); input clipped to [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


_GREEN_KERNEL = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4.0
_RB_KERNEL = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4.0


def demosaic(planes: np.ndarray, cfa: str) -> np.ndarray:
    """Fast bilinear demosaic onto the full raw grid.

    Args:
        planes: (h, w, 4) float planes R, G1, G2, B (normalised or not).
        cfa: the CFA pattern of the mosaic they were packed from.

    Returns:
        (2h, 2w, 3) float32 camera RGB on the full-resolution raw grid: each
        output pixel is centred on the raw pixel of the same index; measured
        samples are kept exactly, missing ones interpolated (normalised
        convolution, so borders are interpolated from the samples present).
    """
    planes = planes.astype(np.float32, copy=False)
    h, w = planes.shape[:2]
    pos = cfa_positions(cfa)
    out = np.empty((2 * h, 2 * w, 3), np.float32)
    for channel, plane_ids, kernel in ((0, [0], _RB_KERNEL), (1, [1, 2], _GREEN_KERNEL), (2, [3], _RB_KERNEL)):
        sparse = np.zeros((2 * h, 2 * w), np.float32)
        mask = np.zeros((2 * h, 2 * w), np.float32)
        for k in plane_ids:
            r, c = pos[k]
            sparse[r::2, c::2] = planes[..., k]
            mask[r::2, c::2] = 1.0
        num = cv2.filter2D(sparse, -1, kernel, borderType=cv2.BORDER_CONSTANT)
        den = cv2.filter2D(mask, -1, kernel, borderType=cv2.BORDER_CONSTANT)
        full = num / den
        full[mask > 0] = sparse[mask > 0]
        out[..., channel] = full
    return out


def _camera_to_srgb(rgb: np.ndarray, raw: RawImage, white_balance: bool, color_matrix: bool) -> np.ndarray:
    if white_balance:
        rgb = rgb * raw.camera_wb.astype(np.float32).reshape(1, 1, 3)
    if color_matrix:
        rgb = rgb @ raw.color_matrix.astype(np.float32).T
    return rgb.astype(np.float32, copy=False)


def raw_to_linear_rgb(
    raw: RawImage, white_balance: bool = True, color_matrix: bool = True, resolution: str = "full"
) -> np.ndarray:
    """Linear RGB of a raw (sRGB primaries when the colour matrix is applied).

    Args:
        raw: the raw.
        white_balance: multiply by the as-shot camera white balance.
        color_matrix: apply the camera -> sRGB matrix.
        resolution: 'full' (bilinear demosaic, (H, W, 3) on the raw grid) or
            'half' ((H/2, W/2, 3): R, mean of the greens, B of each 2x2 cell,
            whose centre is full-res (2j + 0.5, 2i + 0.5)).

    Returns:
        float32 linear RGB, 1.0 = white level, not clipped.
    """
    planes = raw.packed()
    if resolution == "full":
        rgb = demosaic(planes, raw.cfa)
    elif resolution == "half":
        rgb = np.stack([planes[..., 0], 0.5 * (planes[..., 1] + planes[..., 2]), planes[..., 3]], axis=-1)
    else:
        raise ValueError(f"resolution must be 'full' or 'half', got {resolution!r}")
    return _camera_to_srgb(rgb, raw, white_balance, color_matrix)


def srgb_preview(raw: RawImage, max_side: int | None = None, auto_exposure: bool = True) -> np.ndarray:
    """An sRGB 8-bit preview of a raw: white-balanced, colour-corrected, gamma-encoded.

    Args:
        raw: the raw.
        max_side: the longest side of the preview in pixels (None: full resolution).
        auto_exposure: scale so the 99th luminance percentile sits at 0.9 (gain 1 to 16).

    Returns:
        (h, w, 3) uint8 RGB.
    """
    full = max_side is None or max_side > max(raw.shape) // 2
    rgb = raw_to_linear_rgb(raw, resolution="full" if full else "half")
    if max_side is not None and max(rgb.shape[:2]) > max_side:
        scale = max_side / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    if auto_exposure:
        p99 = float(np.percentile(rgb @ LUMA_WEIGHTS, 99))
        rgb = rgb * float(np.clip(0.9 / max(p99, 1e-6), 1.0, 16.0))
    return np.round(linear_to_srgb(rgb) * 255.0).astype(np.uint8)


def luminance(image: RawImage | RgbImage | np.ndarray, resolution: str = "full") -> np.ndarray:
    """Linear luminance for alignment.

    Args:
        image: a :class:`RawImage` (white-balanced, colour-corrected, on the raw
            sensor grid), an :class:`RgbImage` or an (H, W, 3) array in [0, 1]
            sRGB-encoded (linearised through the inverse sRGB curve), or an
            (H, W) array taken as linear luminance already.
        resolution: for raws, 'full' ((H, W) on the raw grid) or 'half'
            ((H/2, W/2), from each 2x2 CFA cell, centred at full-res
            (x, y) = (2j + 0.5, 2i + 0.5) only approximately: the colour weights
            differ per plane, which moves the effective centre by a few hundredths
            of a pixel; sub-pixel work should weight the planes equally).
            Ignored for RGB images.

    Returns:
        float32 linear luminance, 1.0 = white.
    """
    if isinstance(image, RawImage):
        return np.ascontiguousarray(raw_to_linear_rgb(image, resolution=resolution) @ LUMA_WEIGHTS)
    if isinstance(image, RgbImage):
        image = image.rgb
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.float32)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(srgb_to_linear(image) @ LUMA_WEIGHTS)
    raise ValueError(f"luminance needs a raw, an RGB image or an (H, W[, 3]) array, got shape {image.shape}")


# -------------------------------------------------------------------- EXIF


def _ratio(value) -> float | None:
    try:
        v = value.values[0] if hasattr(value, "values") else value
        if isinstance(v, (list, tuple)):
            v = v[0]
        if hasattr(v, "num") and hasattr(v, "den"):
            return None if v.den == 0 else float(Fraction(v.num, v.den))
        return float(v)
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        return None


def read_exif(path: PathLike) -> ExifInfo:
    """Read the EXIF facts of a raw or image file (exifread; an empty
    :class:`ExifInfo` when the file has no readable EXIF)."""
    return _exif_from_tags(exif_io.read_tags(path))


#: EXIF LightSource codes, as DNG's CalibrationIlluminant1/2 use them
ILLUMINANTS = {0: "Unknown", 1: "Daylight", 2: "Fluorescent", 3: "Tungsten", 4: "Flash", 9: "Fine weather",
               10: "Cloudy", 11: "Shade", 12: "Daylight fluorescent", 13: "Day white fluorescent",
               14: "Cool white fluorescent", 15: "White fluorescent", 16: "Warm white fluorescent",
               17: "Standard light A", 18: "Standard light B", 19: "Standard light C", 20: "D55", 21: "D65",
               22: "D75", 23: "D50", 24: "ISO studio tungsten", 255: "Other"}

#: DNG colour tags -> (key in :func:`dng_colour`, shape: "matrix" (rows of 3), "fmatrix" (3 rows),
#: "square" (n x n), "vector", "scalar" or "illuminant")
_DNG_COLOUR_TAGS = {
    0xC621: ("color_matrix_1", "matrix"), 0xC622: ("color_matrix_2", "matrix"),
    0xC623: ("camera_calibration_1", "square"), 0xC624: ("camera_calibration_2", "square"),
    0xC627: ("analog_balance", "vector"), 0xC628: ("as_shot_neutral", "vector"),
    0xC62A: ("baseline_exposure", "scalar"),
    0xC65A: ("calibration_illuminant_1", "illuminant"), 0xC65B: ("calibration_illuminant_2", "illuminant"),
    0xC714: ("forward_matrix_1", "fmatrix"), 0xC715: ("forward_matrix_2", "fmatrix"),
}


def dng_colour(tags: dict) -> dict | None:
    """The DNG colour calibration of a raw's tags (exifread's, :func:`_exif_tags`), JSON-
    friendly; None when the file has none of them (not a DNG).

    Keys, each present only where the file has the tag: ``color_matrix_1/2`` (XYZ ->
    camera, rows = camera colours, DNG ColorMatrix), ``forward_matrix_1/2`` (white-
    balanced camera -> XYZ D50, rows = X, Y, Z), ``camera_calibration_1/2``,
    ``analog_balance``, ``as_shot_neutral`` (camera values of neutral, G = 1 for most
    cameras), ``baseline_exposure`` (EV), ``calibration_illuminant_1/2`` (the EXIF
    LightSource code) with ``calibration_illuminant_1/2_name`` (:data:`ILLUMINANTS`).
    A tag whose values do not have its shape is left out.
    """
    out: dict = {}
    for tag, (key, shape) in _DNG_COLOUR_TAGS.items():
        found = tags.get(f"Image Tag 0x{tag:04X}")
        if found is None:
            continue
        try:
            values = [float(_ratio_value(v)) for v in found.values]
        except (TypeError, ValueError, ZeroDivisionError, AttributeError):
            continue
        if not values or not all(np.isfinite(values)):
            continue
        n = len(values)
        if shape == "scalar":
            out[key] = values[0]
        elif shape == "vector":
            out[key] = values
        elif shape == "illuminant":
            out[key] = int(values[0])
            out[key + "_name"] = ILLUMINANTS.get(int(values[0]), "Other")
        elif shape == "matrix" and n % 3 == 0:
            out[key] = [values[i:i + 3] for i in range(0, n, 3)]
        elif shape == "fmatrix" and n % 3 == 0:
            cols = n // 3
            out[key] = [values[i:i + cols] for i in range(0, n, cols)]
        elif shape == "square" and int(round(n ** 0.5)) ** 2 == n:
            side = int(round(n ** 0.5))
            out[key] = [values[i:i + side] for i in range(0, n, side)]
    return out or None


def _ratio_value(v) -> float:
    """An exifread value (a Ratio, an int or a float) as a float."""
    if hasattr(v, "numerator") and hasattr(v, "denominator"):
        return v.numerator / v.denominator
    return float(v)


def _exif_from_tags(tags: dict) -> ExifInfo:
    """The :class:`ExifInfo` of exifread's tags."""

    def get(name: str):
        return tags.get(f"EXIF {name}", tags.get(f"Image {name}"))

    orientation = get("Orientation")
    try:
        orientation_code = int(orientation.values[0]) if orientation is not None else 1
    except (TypeError, ValueError, IndexError, AttributeError):
        orientation_code = 1
    return ExifInfo(
        make=exif_io.text(get("Make")),
        model=exif_io.text(get("Model")) or exif_io.text(tags.get("Image Tag 0xC614")),  # DNG UniqueCameraModel
        focal_length_mm=_ratio(get("FocalLength")) if get("FocalLength") is not None else None,
        focal_length_35mm=_ratio(get("FocalLengthIn35mmFilm")) if get("FocalLengthIn35mmFilm") is not None else None,
        exposure_time_s=_ratio(get("ExposureTime")) if get("ExposureTime") is not None else None,
        iso=_ratio(get("ISOSpeedRatings")) if get("ISOSpeedRatings") is not None else None,
        capture_time=exif_io.capture_time(tags),
        orientation=orientation_code if 1 <= orientation_code <= 8 else 1,
    )


def _merge_rawpy_facts(exif: ExifInfo, other) -> ExifInfo:
    """Fill what exifread missed from LibRaw's own parse (rawpy ``other``)."""
    values = dict(exif.__dict__)
    if values["focal_length_mm"] is None and other.focal_length > 0:
        values["focal_length_mm"] = float(other.focal_length)
    if values["exposure_time_s"] is None and other.shutter_speed > 0:
        values["exposure_time_s"] = float(other.shutter_speed)
    if values["iso"] is None and other.iso_speed > 0:
        values["iso"] = float(other.iso_speed)
    if values["capture_time"] is None and other.timestamp.year > 1970:
        values["capture_time"] = other.timestamp
    return ExifInfo(**values)


# ------------------------------------------------------------------ reading


def _check_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "missing", "no such file")
    if not p.is_file():
        raise ImageReadError(p, "not_an_image", "not a regular file")
    if p.stat().st_size == 0:
        raise ImageReadError(p, "truncated", "the file is empty (0 bytes)")
    return p


def _head(p: Path, n: int = 64) -> bytes:
    with open(p, "rb") as fh:
        return fh.read(n)


def _looks_like_raw_container(head: bytes) -> bool:
    return head[:4] in (b"II*\x00", b"MM\x00*", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00") or head.startswith(
        (b"FUJIFILM", b"FOVb", b"\x00MRM", b"II\x1a\x00\x00\x00HEAPCCDR")
    ) or head[4:8] == b"ftyp"


def _looks_like_text(head: bytes) -> bool:
    return bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _unsupported_layout(p: Path, head: bytes) -> str | None:
    """Why a raw LibRaw refused is not a 2x2 Bayer mosaic, when the header says so."""
    if head.startswith(b"FOVb"):
        return "a Foveon X3F raw (three stacked colour layers), not a Bayer mosaic"
    if head[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    try:
        import tifffile

        with tifffile.TiffFile(p) as tif:
            for page in tif.pages:
                tags = page.tags
                photometric = tags.get(262)
                if photometric is not None and int(photometric.value) == 34892:
                    return "a linear (already demosaiced) DNG, not a Bayer mosaic"
                dim = tags.get(33421)
                if dim is not None and tuple(dim.value) != (2, 2):
                    return f"a {dim.value[0]}x{dim.value[1]} colour filter array, not a 2x2 Bayer mosaic"
    except Exception:  # a damaged header: the caller reports it as corrupt
        return None
    return None


def _cfa_from_rawpy(pattern: np.ndarray, desc: str) -> str | None:
    if pattern is None or pattern.shape != (2, 2):
        return None
    letters = "".join(desc[int(i)] if int(i) < len(desc) else "?" for i in pattern.ravel())
    return letters if letters in CFA_PATTERNS else None


def _check_image_data(p: Path, mosaic: np.ndarray, black: np.ndarray, white: float) -> None:
    """Refuse a mosaic that holds no real image: all constant, mostly empty
    blocks (header-only or truncated files that LibRaw still 'decodes'), or
    garbage above the white level."""
    if mosaic.size == 0:
        raise ImageReadError(p, "no_image_data", "the raw holds no pixels")
    size = p.stat().st_size
    if size < MIN_BYTES_PER_PIXEL * mosaic.size:
        raise ImageReadError(
            p,
            "no_image_data",
            f"the file is {size / 1024:.0f} KiB, far too small for the {mosaic.shape[1]}x{mosaic.shape[0]} "
            "image it declares: it holds no image data (header only)",
        )
    lo, hi = int(mosaic.min()), int(mosaic.max())
    if lo == hi:
        raise ImageReadError(p, "no_image_data", f"every pixel has the same value ({lo}): no image data")
    block = 32
    h, w = (mosaic.shape[0] // block) * block, (mosaic.shape[1] // block) * block
    if h and w:
        tiles = mosaic[:h, :w].reshape(h // block, block, w // block, block)
        tmin, tmax = tiles.min(axis=(1, 3)), tiles.max(axis=(1, 3))
        dead = (tmin == tmax) & (tmax < white)
        fraction = float(dead.mean())
        if fraction > 0.9:
            raise ImageReadError(
                p, "no_image_data", f"{fraction:.0%} of the image is flat and empty: the file holds no image data"
            )
        if fraction > 0.1:
            raise ImageReadError(
                p,
                "truncated",
                f"{fraction:.0%} of the image is flat and empty: the file is truncated or its image data is damaged",
            )
    above = float((mosaic > white).mean())
    if above > 0.01:
        raise ImageReadError(p, "corrupt", f"{above:.0%} of the pixels exceed the white level {white:g}: garbage data")


def read_raw(path: PathLike, check_data: bool = True) -> RawImage:
    """Read a Bayer raw through LibRaw.

    Args:
        path: a raw file (DNG, NEF, CR2, ARW, RAF, RW2, ...).
        check_data: refuse mosaics that hold no real image (see ``ImageReadError``
            reasons 'no_image_data' and 'truncated').

    Returns:
        the :class:`RawImage`.

    Raises:
        ImageReadError: missing file, not a raw, truncated or corrupt data, no
            image data, or a raw that is not a 2x2 Bayer mosaic ('unsupported':
            X-Trans, Foveon, linear or film-scanner raws).
    """
    import rawpy

    p = _check_file(path)
    head = _head(p)
    try:
        handle = rawpy.imread(str(p))
    except rawpy.LibRawFileUnsupportedError:
        layout = _unsupported_layout(p, head)
        if layout:
            raise ImageReadError(p, "unsupported", layout) from None
        if _looks_like_raw_container(head):
            raise ImageReadError(
                p, "corrupt", "LibRaw cannot decode this raw container (damaged, stripped, or an unsupported variant)"
            ) from None
        raise ImageReadError(p, "not_an_image", "not a raw file LibRaw can open") from None
    except rawpy.LibRawError as err:
        if _looks_like_text(head):
            raise ImageReadError(p, "not_an_image", "a text file, not a raw") from None
        if isinstance(err, rawpy.LibRawIOError):
            raise ImageReadError(p, "truncated", "unexpected end of file: the raw is truncated") from None
        if isinstance(err, rawpy.LibRawTooBigError):
            raise ImageReadError(p, "corrupt", "the raw declares an impossible image size") from None
        raise ImageReadError(p, "corrupt", f"LibRaw could not decode it ({type(err).__name__}: {err})") from None

    with handle as r:
        try:
            raw_type = r.raw_type
            desc = r.color_desc.decode("ascii", "replace")
            pattern = r.raw_pattern
            if raw_type != rawpy.RawType.Flat:
                raise ImageReadError(p, "unsupported", f"not a Bayer mosaic (LibRaw raw type {raw_type.name})")
            cfa = _cfa_from_rawpy(pattern, desc)
            if cfa is None:
                shape = "none" if pattern is None else "x".join(map(str, pattern.shape))
                raise ImageReadError(
                    p, "unsupported", f"not a 2x2 RGB Bayer sensor (colours {desc!r}, CFA repeat {shape})"
                )
            mosaic = np.array(r.raw_image_visible, dtype=np.uint16, copy=True)
            per_colour = np.asarray(r.black_level_per_channel, dtype=np.float32)
            white = float(r.white_level)
            wb = np.asarray(r.camera_whitebalance[:3], dtype=np.float32)
            if not np.all(wb > 0):
                wb = np.asarray(r.daylight_whitebalance[:3], dtype=np.float32)
            wb = wb / wb[1] if np.all(wb > 0) else np.ones(3, np.float32)
            matrix = np.asarray(r.color_matrix, dtype=np.float32)[:, :3]
            if not np.any(matrix) or not np.all(np.isfinite(matrix)):
                matrix = np.eye(3, dtype=np.float32)
            other = r.other
        except rawpy.LibRawIOError:
            raise ImageReadError(p, "truncated", "unexpected end of file while unpacking the raw data") from None
        except rawpy.LibRawError as err:
            raise ImageReadError(p, "corrupt", f"LibRaw could not unpack the data ({type(err).__name__})") from None

    # raw_pattern indexes colours; the first cell of the visible area defines the phase.
    cell_colours = [int(pattern[r_][c_]) for r_, c_ in cfa_positions(cfa)]
    black = per_colour[cell_colours] if per_colour.size >= 4 else np.full(4, per_colour.mean(), np.float32)
    mosaic = mosaic[: mosaic.shape[0] // 2 * 2, : mosaic.shape[1] // 2 * 2]
    if check_data:
        _check_image_data(p, mosaic, black, white)
    tags = exif_io.read_tags(p)
    exif = _merge_rawpy_facts(_exif_from_tags(tags), other)
    return RawImage(
        mosaic=mosaic,
        cfa=cfa,
        black_levels=black.astype(np.float32),
        white_level=white,
        camera_wb=wb.astype(np.float32),
        color_matrix=matrix,
        exif=exif,
        path=p,
        dng=dng_colour(tags),
    )


def jpeg_chroma_sampling(path: PathLike) -> tuple[int, int] | None:
    """The chroma subsampling of a three-component JPEG from its frame header: (luma px per
    chroma sample across, down), (2, 2) for 4:2:0, (2, 1) for 4:2:2, (1, 1) for 4:4:4; None
    when the file is not such a JPEG or its header cannot be read."""
    with open(path, "rb") as fh:
        data = fh.read(1 << 20)  # the headers come first; a camera's EXIF thumbnail fits in it
    i = 2 if data[:2] == b"\xff\xd8" else len(data)
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            seg = data[i + 4 : i + 2 + length]
            if len(seg) < 6 + 3 * 3 or seg[5] != 3:
                return None
            h = [seg[6 + 3 * k + 1] >> 4 for k in range(3)]
            v = [seg[6 + 3 * k + 1] & 15 for k in range(3)]
            if min(h + v) == 0 or h[1:] != [h[1]] * 2 or v[1:] != [v[1]] * 2 or h[0] % h[1] or v[0] % v[1]:
                return None
            return h[0] // h[1], v[0] // v[1]
        if marker == 0xDA:  # the scan starts: no frame header before it
            return None
        i += 2 + length
    return None


def _jpeg_is_complete(p: Path) -> bool:
    with open(p, "rb") as fh:
        fh.seek(max(0, p.stat().st_size - 65536))
        return b"\xff\xd9" in fh.read()


def read_rgb(path: PathLike) -> RgbImage:
    """Read a plain image (JPEG, PNG, 8/16-bit or float TIFF) as stored.

    Pixels are returned as stored (EXIF orientation is reported, not applied),
    so DSLR coordinates are the file's own pixel grid.

    Returns:
        :class:`RgbImage` with rgb (H, W, 3) float32 in [0, 1] (grey images are
        replicated to 3 channels; alpha is dropped).

    Raises:
        ImageReadError: missing, not an image, truncated, or corrupt.
    """
    p = _check_file(path)
    with open(p, "rb") as fh:
        head = fh.read(8)
    is_tiff = head[:4] in (b"II*\x00", b"MM\x00*")
    is_jpeg = head[:3] == b"\xff\xd8\xff"
    is_png = head == b"\x89PNG\r\n\x1a\n"
    if not (is_tiff or is_jpeg or is_png):
        raise ImageReadError(p, "not_an_image", "not a JPEG, PNG or TIFF image")
    if is_tiff:
        import tifffile

        try:
            data = tifffile.imread(str(p))
        except Exception as err:  # tifffile raises ValueError, struct.error, EOFError...
            raise ImageReadError(p, "corrupt", f"the TIFF could not be decoded ({type(err).__name__}: {err})") from None
    else:
        if is_jpeg and not _jpeg_is_complete(p):
            raise ImageReadError(p, "truncated", "the JPEG has no end-of-image marker: the file is truncated")
        data = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if data is None:
            raise ImageReadError(p, "corrupt", "the image data could not be decoded")
        if data.ndim == 3 and data.shape[2] in (3, 4):
            data = cv2.cvtColor(data, cv2.COLOR_BGR2RGB if data.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[2] == 4:
        data = data[..., :3]
    if data.ndim == 2:
        data = np.repeat(data[..., None], 3, axis=2)
    if data.ndim != 3 or data.shape[2] != 3:
        raise ImageReadError(p, "unsupported", f"unsupported image layout {data.shape}")
    if data.dtype in (np.uint8, np.uint16):
        depth = 8 if data.dtype == np.uint8 else 16
        return RgbImage(stored=np.ascontiguousarray(data), bit_depth=depth, exif=read_exif(p), path=p,
                        chroma_sampling=jpeg_chroma_sampling(p) if is_jpeg else None)
    if np.issubdtype(data.dtype, np.floating):
        rgb = np.clip(data.astype(np.float32), 0.0, 1.0)
        return RgbImage(rgb=np.ascontiguousarray(rgb), bit_depth=32, exif=read_exif(p), path=p)
    raise ImageReadError(p, "unsupported", f"unsupported sample type {data.dtype}")


def read_any(path: PathLike) -> RawImage | RgbImage:
    """Read a raw or a plain image, chosen by the file name's extension (raws
    through LibRaw, JPEG/PNG/TIFF as images); unknown extensions are tried as
    an image first, then as a raw."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext in RAW_EXTENSIONS:
        return read_raw(p)
    if ext in IMAGE_EXTENSIONS:
        return read_rgb(p)
    try:
        return read_rgb(p)
    except ImageReadError as err:
        if err.reason != "not_an_image":
            raise
    return read_raw(p)
