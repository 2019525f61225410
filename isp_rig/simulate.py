"""The rig simulator: a digital twin of a phone + DSLR rig with exact ground truth.

A pair is made from one *scene*: a linear-light RGB image (sRGB primaries)
at ``supersample`` times the DSLR resolution, built from a real raw, a real
photo or procedurally.  Both cameras sample that scene:

* the **DSLR** image is the scene averaged over ``supersample`` x
  ``supersample`` blocks (DSLR pixel x covers scene pixels
  [k x, k x + k - 1], so scene x_s = k x_d + (k - 1) / 2), then its own
  colour response, exposure, tone curve, a little noise, and JPEG (q92,
  4:2:2) or 16-bit TIFF with the Nikon Z6's EXIF facts;
* the **phone** raw pixel d (x = column, y = row, on the full raw grid)
  sees the scene at ``scene(H(undistort(d)))``, where H is the ground-truth
  phone -> DSLR homography and ``undistort`` removes the phone lens's radial
  distortion (identity when there is none).  The scene is low-pass filtered
  to the phone's pixel pitch first and sampled with cubic splines at exact
  float coordinates.  Then the phone's physics: its own colour response and
  white balance, vignetting, a Bayer mosaic of any of the four CFA phases,
  Poisson-Gaussian noise, black level, 10- or 12-bit quantisation; written
  as a DNG that rawpy opens, whose ``raw_image_visible`` is exactly the
  mosaic written, with the focal-length EXIF a phone writes.

Ground truth per pair (``truth.json``): ``phone_to_dslr`` (3x3, undistorted
phone pixel -> DSLR pixel), ``distortion`` (null or its parameters) and
``grid``, rows of (x_phone, y_phone, x_dslr, y_dslr) with the phone point
on the observed raw grid.  Everything is deterministic for a seed.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from alignment import rawio
from alignment.atomic import foreign_entries, is_temporary, write_json
from alignment.geometry import apply_homography

# sRGB (D65) <-> CIE XYZ
SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
XYZ_TO_SRGB = np.linalg.inv(SRGB_TO_XYZ)

TRUTH_FORMAT = 1


# ------------------------------------------------------------------ geometry


@dataclass
class Distortion:
    """Radial lens distortion of the phone camera, in phone raw pixels.

    An undistorted phone point u is observed at raw pixel d:
    ``n = (u - c) / f``; ``d = c + f * n * (1 + k1 |n|^2 + k2 |n|^4)``.
    """

    k1: float
    k2: float
    cx: float
    cy: float
    f: float

    def distort(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) undistorted phone px -> (N, 2) observed (distorted) phone px."""
        xy = np.asarray(xy, dtype=np.float64)
        n = (xy - [self.cx, self.cy]) / self.f
        r2 = np.sum(n * n, axis=-1, keepdims=True)
        return [self.cx, self.cy] + self.f * n * (1.0 + self.k1 * r2 + self.k2 * r2 * r2)

    def undistort(self, xy: np.ndarray, tol: float = 1e-9) -> np.ndarray:
        """(N, 2) observed phone px -> (N, 2) undistorted phone px (Newton's method on the radius)."""
        xy = np.asarray(xy, dtype=np.float64)
        nd = (xy - [self.cx, self.cy]) / self.f
        rd = np.sqrt(np.sum(nd * nd, axis=-1))
        ru = rd.copy()
        for _ in range(50):
            r2 = ru * ru
            g = ru * (1 + self.k1 * r2 + self.k2 * r2 * r2) - rd
            dg = 1 + 3 * self.k1 * r2 + 5 * self.k2 * r2 * r2
            step = g / dg
            ru = ru - step
            if np.max(np.abs(step)) * self.f < tol:
                break
        scale = np.divide(ru, rd, out=np.ones_like(rd), where=rd > 0)
        return [self.cx, self.cy] + nd * scale[..., None] * self.f

    def to_dict(self) -> dict:
        return {"model": "radial", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Distortion | None":
        if d is None:
            return None
        return cls(**{k: float(d[k]) for k in ("k1", "k2", "cx", "cy", "f")})


@dataclass
class Truth:
    """Ground truth of one simulated pair (see the module docstring)."""

    phone_to_dslr: np.ndarray
    distortion: Distortion | None
    phone_size: tuple[int, int]
    dslr_size: tuple[int, int]
    grid: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    facts: dict = field(default_factory=dict)
    #: layered scenes: (H, W, 2) float32 DSLR (x, y) of every phone px's scene point,
    #: NaN where hidden in the DSLR or outside its frame (``truth_map.npy``)
    dense: np.ndarray | None = None
    #: layered scenes with highlights: (H, W) bool, either camera clipped (``truth_clipped.png``)
    clipped: np.ndarray | None = None

    def map_points(self, xy_phone: np.ndarray) -> np.ndarray:
        """(N, 2) observed phone raw pixels -> (N, 2) DSLR pixels through ``phone_to_dslr``
        (exact for a planar scene; for a layered scene, the background plane's mapping:
        use ``dense`` for the truth of every px)."""
        xy = np.asarray(xy_phone, dtype=np.float64).reshape(-1, 2)
        if self.distortion is not None:
            xy = self.distortion.undistort(xy)
        return apply_homography(self.phone_to_dslr, xy)

    def make_grid(self, step: int) -> np.ndarray:
        """(N, 4) rows x_phone, y_phone, x_dslr, y_dslr on a regular phone grid."""
        w, h = self.phone_size
        xs = np.arange(0, w, step, dtype=np.float64)
        ys = np.arange(0, h, step, dtype=np.float64)
        xy = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        return np.hstack([xy, self.map_points(xy)])

    def to_json(self) -> dict:
        return {
            "format": TRUTH_FORMAT,
            "coordinates": "x = column, y = row, pixel centres at integers; phone = raw sensor grid "
            "(raw_image_visible), dslr = the DSLR image as stored",
            "phone_to_dslr": self.phone_to_dslr.tolist(),
            "phone_to_dslr_maps": "undistorted phone pixels to DSLR pixels",
            "distortion": None if self.distortion is None else self.distortion.to_dict(),
            "phone_size": list(self.phone_size),
            "dslr_size": list(self.dslr_size),
            "grid_columns": ["x_phone", "y_phone", "x_dslr", "y_dslr"],
            "grid": np.round(self.grid, 6).tolist(),
            **self.facts,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Truth":
        known = {"format", "coordinates", "phone_to_dslr", "phone_to_dslr_maps", "distortion", "phone_size",
                 "dslr_size", "grid_columns", "grid"}
        return cls(
            phone_to_dslr=np.asarray(d["phone_to_dslr"], dtype=np.float64),
            distortion=Distortion.from_dict(d.get("distortion")),
            phone_size=tuple(d["phone_size"]),
            dslr_size=tuple(d["dslr_size"]),
            grid=np.asarray(d.get("grid", []), dtype=np.float64).reshape(-1, 4),
            facts={k: v for k, v in d.items() if k not in known},
        )


TRUTH_MAP = "truth_map.npy"
TRUTH_CLIPPED = "truth_clipped.png"


def load_truth(pair_dir: str | Path) -> Truth:
    """Read ``truth.json`` of a simulated pair folder, with ``truth_map.npy`` and
    ``truth_clipped.png`` when the pair has them."""
    pair_dir = Path(pair_dir)
    with open(pair_dir / "truth.json") as fh:
        truth = Truth.from_json(json.load(fh))
    if (pair_dir / TRUTH_MAP).is_file():
        truth.dense = np.load(pair_dir / TRUTH_MAP)
    if (pair_dir / TRUTH_CLIPPED).is_file():
        truth.clipped = cv2.imread(str(pair_dir / TRUTH_CLIPPED), cv2.IMREAD_UNCHANGED) > 0
    return truth


# -------------------------------------------------------------------- scenes


class SourceError(Exception):
    """A scene source could not be used; the message names the file and the reason."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    small = rng.random((cells, max(2, round(cells * w / h)))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def procedural_scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured synthetic scene: (h, w, 3) float32 linear RGB in [0, 1].

    Smooth colour gradients, anti-aliased shapes, lines and text at many
    scales, and multi-octave texture, so every region has structure.
    """
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        img[..., c] = 0.15 + 0.5 * _value_noise(rng, h, w, 3)
    canvas = (linear_to_display(img) * 255).astype(np.uint8)
    scale = max(h, w) / 1000.0
    for _ in range(int(220 * min(4.0, scale**0.5 + 0.5))):
        colour = tuple(int(v) for v in rng.integers(10, 250, 3))
        kind = rng.integers(0, 5)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(np.exp(rng.uniform(np.log(4 * scale), np.log(120 * scale))))
        if kind == 0:
            cv2.circle(canvas, (x, y), size, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(canvas, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), colour, -1, cv2.LINE_AA)
        elif kind == 2:
            pts = (np.array([x, y]) + rng.normal(0, size, (int(rng.integers(3, 7)), 2))).astype(np.int32)
            cv2.fillPoly(canvas, [pts], colour, cv2.LINE_AA)
        elif kind == 3:
            x2, y2 = x + int(rng.normal(0, 3 * size)), y + int(rng.normal(0, 3 * size))
            cv2.line(canvas, (x, y), (x2, y2), colour, max(1, int(size / 10)), cv2.LINE_AA)
        else:
            text = "".join(rng.choice(list("ABCDEFGHKMNPRSTWXZ0123456789"), int(rng.integers(3, 9))))
            cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, size / 30.0, colour,
                        max(1, int(size / 20)), cv2.LINE_AA)
    img = display_to_linear(canvas.astype(np.float32) / 255.0)
    texture = sum(_value_noise(rng, h, w, cells) * amp for cells, amp in ((40, 0.5), (160, 0.3), (600, 0.2)))
    img *= (0.75 + 0.5 * texture)[..., None]
    return np.clip(img, 0.0, 1.0)


def linear_to_display(x: np.ndarray) -> np.ndarray:
    return rawio.linear_to_srgb(x)


def display_to_linear(x: np.ndarray) -> np.ndarray:
    return rawio.srgb_to_linear(x)


def load_source(path: Path) -> np.ndarray:
    """A real raw or photo as a linear RGB scene, (h, w, 3) float32 in [0, 1].

    Raises:
        SourceError: naming the file and the reason it cannot be read.
    """
    try:
        image = rawio.read_any(path)
    except rawio.ImageReadError as err:
        raise SourceError(str(err)) from None
    if isinstance(image, rawio.RawImage):
        # demosaicked on the full grid, then averaged in 2x2 blocks: every channel of a
        # scene px covers the same place.  (The half-resolution cell planes would not: R, G
        # and B of a CFA cell sit half a cell apart, and that offset, magnified with the
        # scene, became colour fringes of a few DSLR px that the two cameras weight
        # differently: a bias of 0.1-0.2 px in every pair made from a raw.)
        rgb = rawio.raw_to_linear_rgb(image, resolution="full")
        h, w = rgb.shape[:2]
        rgb = cv2.resize(rgb[: h // 2 * 2, : w // 2 * 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        rgb = rgb / max(float(np.percentile(rgb, 99.5)), 1e-6)
    else:
        rgb = rawio.srgb_to_linear(image.rgb)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def list_sources(source: str | Path | None) -> list[Path]:
    """The files a ``--source`` names: one file, or every raw/image in a folder (sorted)."""
    if source is None:
        return []
    p = Path(source)
    if p.is_dir():
        exts = rawio.RAW_EXTENSIONS | rawio.IMAGE_EXTENSIONS
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in exts)
        if not files:
            raise SourceError(f"{p}: the folder holds no raw or image files")
        return files
    if not p.exists():
        raise SourceError(f"{p}: no such file")
    return [p]


def scene_from_source(rng: np.random.Generator, source: np.ndarray, h: int, w: int,
                      frac_range: tuple[float, float] = (0.7, 1.0)) -> np.ndarray:
    """A random crop of a source image with aspect w:h, resized to (h, w, 3).

    frac_range: the crop's size as a fraction of the largest crop of that aspect.
    """
    sh, sw = source.shape[:2]
    aspect = w / h
    frac = rng.uniform(*frac_range)
    ch = min(sh, sw / aspect) * frac
    cw = ch * aspect
    y0 = rng.uniform(0, sh - ch)
    x0 = rng.uniform(0, sw - cw)
    # Affine crop + resize in one resampling: dst (x, y) <- src (x0 + x * sx, y0 + y * sy).
    sx, sy = cw / w, ch / h
    m = np.array([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]], np.float64)
    if sx > 1:  # downscaling: low-pass first
        source = cv2.GaussianBlur(source, (0, 0), 0.5 * sx)
    out = cv2.warpAffine(source, m, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REFLECT)
    return np.clip(out, 0.0, 1.0)


# ------------------------------------------------------------------- cameras


@dataclass
class PhoneModel:
    """The simulated phone camera.

    cfa: its CFA pattern (``RGGB``, ``BGGR``, ``GRBG``, ``GBRG``), or None for a pattern
    drawn per pair; colour_seed: its colour response (camera from sRGB, white-balanced)
    is drawn once from this seed, the same for every pair, or None for a response drawn
    per pair (a different "phone" every pair, the default).  full_well_e: electrons at
    white (shot noise); read_noise_dn: Gaussian read noise in DN; vignetting: luminance
    fall-off at the frame corner.
    """

    make: str = "isp-rig"
    model: str = "SimPhone 12"
    focal_length_mm: float = 4.25
    focal_length_35mm: float = 26.0
    bits: int = 10
    full_well_e: float = 3500.0
    read_noise_dn: float = 1.5
    vignetting: float = 0.3
    cfa: str | None = None
    colour_seed: int | None = None


#: the keys of a profile's ``[simulation]`` table (besides ``raw_size``), as PhoneModel fields
_SIMULATION_KEYS = {"focal_length_mm": float, "focal_length_35mm": float, "bits": int, "full_well_e": float,
                    "read_noise_dn": float, "vignetting": float, "cfa": str, "colour_seed": int}


def phone_from_profile(profile: dict, name: str) -> tuple[PhoneModel, tuple[int, int] | None]:
    """The simulated phone of a device profile's ``[simulation]`` table: (PhoneModel, its
    raw size (width, height) or None).  Make and model come from ``[profile]``.  Raises
    :class:`isp_rig.profiles.ProfileError` naming the profile and the key for a profile
    without the table, an unknown key or a value of the wrong kind."""
    from isp_rig.profiles import ProfileError

    table = profile.get("simulation")
    if not isinstance(table, dict):
        raise ProfileError(name, "has no [simulation] table: nothing says how to simulate this phone")
    unknown = sorted(set(table) - set(_SIMULATION_KEYS) - {"raw_size"})
    if unknown:
        raise ProfileError(name, f"[simulation] has unknown key(s) {', '.join(unknown)} "
                                 f"(known: raw_size, {', '.join(sorted(_SIMULATION_KEYS))})")
    values = {}
    for key, kind in _SIMULATION_KEYS.items():
        if key not in table:
            continue
        value = table[key]
        if not isinstance(value, (int, float) if kind is float else kind) or isinstance(value, bool):
            raise ProfileError(name, f"[simulation] {key} = {value!r} is not a {kind.__name__}")
        values[key] = kind(value)
    if "cfa" in values and values["cfa"] not in rawio.CFA_PATTERNS:
        raise ProfileError(name, f"[simulation] cfa = {values['cfa']!r} is not one of {', '.join(rawio.CFA_PATTERNS)}")
    if "bits" in values and values["bits"] not in (10, 12):
        raise ProfileError(name, f"[simulation] bits = {values['bits']} (10 or 12)")
    size = table.get("raw_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 32 and v % 2 == 0 for v in size)):
        raise ProfileError(name, f"[simulation] raw_size = {size!r} is not [width, height] of even px >= 32")
    head = profile.get("profile", {})
    phone = PhoneModel(make=str(head.get("make") or PhoneModel.make), model=str(head.get("model") or PhoneModel.model),
                       **values)
    return phone, (tuple(size) if size is not None else None)


@dataclass
class SimOptions:
    """Sizes and switches of the simulator.  Sizes are (width, height) in pixels."""

    phone_size: tuple[int, int] = (1024, 768)
    dslr_size: tuple[int, int] = (1536, 1024)
    supersample: int = 2
    distortion: bool = False
    dslr_format: str = "jpg"  # "jpg" (q92) or "tif" (16-bit)
    jpeg_quality: int = 92
    coverage: tuple[float, float] = (0.72, 0.88)  # phone field width / DSLR width
    max_rotation_deg: float = 2.0
    max_perspective: float = 0.03  # relative keystone across the frame
    distortion_k1: tuple[float, float] = (-0.08, 0.05)
    grid_points: int = 4000
    # layered real-world effects (see isp_rig.layered); any of the first three
    # switches renders a layered scene with two pinhole cameras
    parallax: bool = False
    motion: bool = False
    clipping: bool = False
    shading: bool = False
    baseline_mm: float = 60.0
    # "mild": the cameras' responses as before; "hard": what a benchmark that cannot be
    # tuned to needs (see :func:`_hard_photometry`)
    photometry: str = "mild"

    @property
    def layered(self) -> bool:
        """True when the scene is rendered as layers (parallax, motion or highlights)."""
        return self.parallax or self.motion or self.clipping


@dataclass
class SimPair:
    """One simulated pair, in memory."""

    pair_id: str
    phone: rawio.RawImage
    dslr_rgb: np.ndarray  # (H, W, 3) float32 display-referred in [0, 1], before encoding
    truth: Truth
    options: SimOptions
    phone_model: PhoneModel
    phone_time: _dt.datetime
    dslr_time: _dt.datetime
    dslr_focal_length_mm: float


def _random_homography(rng: np.random.Generator, opt: SimOptions) -> np.ndarray:
    pw, ph = opt.phone_size
    dw, dh = opt.dslr_size
    s = rng.uniform(*opt.coverage) * dw / pw
    theta = math.radians(rng.uniform(-opt.max_rotation_deg, opt.max_rotation_deg))
    persp = rng.uniform(-opt.max_perspective, opt.max_perspective, 2) / np.array([pw, ph]) * 2
    centre = np.array([(pw - 1) / 2, (ph - 1) / 2])
    t_phone = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]], np.float64)
    p = np.array([[1, 0, 0], [0, 1, 0], [persp[0], persp[1], 1]], np.float64)
    rs = np.array([[s * math.cos(theta), -s * math.sin(theta), 0], [s * math.sin(theta), s * math.cos(theta), 0],
                   [0, 0, 1]])
    # Translation: the phone field lands anywhere that keeps it inside the DSLR frame.
    h0 = rs @ p @ t_phone
    corners = np.array([[0, 0], [pw - 1, 0], [pw - 1, ph - 1], [0, ph - 1]], np.float64)
    mapped = apply_homography(h0, corners)
    lo = -mapped.min(axis=0) + 8
    hi = np.array([dw - 1, dh - 1]) - mapped.max(axis=0) - 8
    t = np.where(hi > lo, rng.uniform(np.minimum(lo, hi), np.maximum(lo, hi)), (lo + hi) / 2)
    hom = np.array([[1, 0, t[0]], [0, 1, t[1]], [0, 0, 1]]) @ h0
    return hom / hom[2, 2]


def _random_colour_response(rng: np.random.Generator, strength: float) -> np.ndarray:
    """3x3 camera-from-sRGB matrix with rows summing to one (white stays white)."""
    m = np.eye(3) + rng.normal(0, strength, (3, 3))
    m = np.abs(m)
    return m / m.sum(axis=1, keepdims=True)


#: the values of ``SimOptions.photometry``
PHOTOMETRY = ("mild", "hard")


def _hard_photometry(seed: int) -> dict:
    """The draws of ``SimOptions.photometry = "hard"``, from their own stream (the pair's
    other draws stay what they are with "mild"): the DSLR a stop brighter or darker
    than the phone's exposure (``dslr_stops`` in [-1, 1]), a strong S tone curve
    (``dslr_contrast`` 0.3 to 0.7) and saturation (``dslr_saturation`` 1.0 to 1.5);
    3x3 colour crosstalk of the phone (each filter passes 5 to 20 % of its neighbours'
    light: ``crosstalk``, rows summing to one), vignetting 0 to 30 %, JPEG quality 80
    to 95; one pair in four a night scene (the phone exposed 3 to 4 stops lower, read
    noise 3x, the DSLR's noise 5x)."""
    rng = np.random.default_rng([int(seed), 0x4A12D])
    a = rng.uniform(0.05, 0.20, 3)
    crosstalk = np.diag(1 - a) + (a / 2)[:, None] * (1 - np.eye(3))
    night = bool(rng.random() < 0.25)
    return {
        "dslr_stops": float(rng.uniform(-1, 1)),
        "dslr_contrast": float(rng.uniform(0.3, 0.7)),
        "dslr_saturation": float(rng.uniform(1.0, 1.5)),
        "crosstalk": crosstalk,
        "vignetting": float(rng.uniform(0.0, 0.3)),
        "jpeg_quality": int(rng.integers(80, 96)),
        "night": night,
        "phone_level": float(2.0 ** -rng.uniform(3, 4)) if night else 1.0,
        "read_noise_gain": 3.0 if night else 1.0,
        "dslr_noise": 0.01 if night else 0.002,
    }


def _filmic(x: np.ndarray, contrast: float) -> np.ndarray:
    """A DSLR-like S tone curve on linear values, then the sRGB curve."""
    x = np.clip(x, 0, None)
    mapped = x * (1 + x / 4.0) / (1 + x)  # extended Reinhard shoulder: 2 maps to 1
    s = linear_to_display(np.clip(mapped, 0, 1))
    return np.clip(s + contrast * s * (1 - s) * (2 * s - 1), 0, 1)


def _render_phone_rgb(scene: np.ndarray, truth: Truth, k: int) -> np.ndarray:
    """Phone-grid linear RGB: each raw pixel samples the scene at its ground-truth point."""
    pw, ph = truth.phone_size
    ys, xs = np.mgrid[0:ph, 0:pw].astype(np.float64)
    xy_d = truth.map_points(np.stack([xs.ravel(), ys.ravel()], axis=1))
    xs_s = k * xy_d[:, 0] + (k - 1) / 2.0
    ys_s = k * xy_d[:, 1] + (k - 1) / 2.0
    # Local phone pixel pitch in scene pixels sets the anti-aliasing blur.
    pitch = k * math.sqrt(abs(np.linalg.det(truth.phone_to_dslr[:2, :2])))
    sigma = 0.45 * pitch
    out = np.empty((ph, pw, 3), np.float32)
    for c in range(3):
        blurred = cv2.GaussianBlur(scene[..., c], (0, 0), sigma)
        coeffs = ndimage.spline_filter(blurred, order=3, output=np.float32)
        out[..., c] = ndimage.map_coordinates(
            coeffs, [ys_s, xs_s], order=3, prefilter=False, mode="mirror"
        ).reshape(ph, pw)
    return np.clip(out, 0, None)


def _mosaic(rgb: np.ndarray, cfa: str) -> np.ndarray:
    h, w = rgb.shape[:2]
    planes = np.empty((h // 2, w // 2, 4), rgb.dtype)
    for k, ((r, c), ch) in enumerate(zip(rawio.cfa_positions(cfa), (0, 1, 1, 2))):
        planes[..., k] = rgb[r::2, c::2, ch]
    return rawio.unpack(planes, cfa)


@dataclass
class _Render:
    """What a scene model hands to the camera physics: linear light in both cameras."""

    truth: Truth
    dslr_lin: np.ndarray  # (dh, dw, 3) float32 scene light on the DSLR grid
    phone_rgb: np.ndarray  # (ph, pw, 3) float32 scene light on the phone raw grid
    scene_facts: dict = field(default_factory=dict)


def _distortion(rng: np.random.Generator, opt: SimOptions) -> Distortion | None:
    if not opt.distortion:
        return None
    pw, ph = opt.phone_size
    return Distortion(
        k1=float(rng.uniform(*opt.distortion_k1)),
        k2=float(rng.uniform(-0.01, 0.01)),
        cx=(pw - 1) / 2 + float(rng.normal(0, pw * 0.01)),
        cy=(ph - 1) / 2 + float(rng.normal(0, ph * 0.01)),
        f=float(max(pw, ph) * 0.8),
    )


def _grid_step(opt: SimOptions) -> int:
    pw, ph = opt.phone_size
    return max(4, int(round(math.sqrt(pw * ph / opt.grid_points))))


def _planar_render(rng: np.random.Generator, source: np.ndarray | None, opt: SimOptions) -> _Render:
    """A flat scene: one homography (plus the lens) from the phone to the DSLR."""
    k = int(opt.supersample)
    dw, dh = opt.dslr_size
    pw, ph = opt.phone_size
    scene = scene_from_source(rng, source, dh * k, dw * k) if source is not None else procedural_scene(
        rng, dh * k, dw * k
    )
    hom = _random_homography(rng, opt)
    truth = Truth(phone_to_dslr=hom, distortion=_distortion(rng, opt), phone_size=(pw, ph), dslr_size=(dw, dh))
    truth.grid = truth.make_grid(_grid_step(opt))
    dslr_lin = cv2.resize(scene, (dw, dh), interpolation=cv2.INTER_AREA) if k > 1 else scene.copy()
    return _Render(truth, dslr_lin, _render_phone_rgb(scene, truth, k))


#: the least :func:`texture_level` of a foreground object's material (a crop of sky or
#: of a blank wall is no textured object: 0.002-0.005; a facade, foliage, text: 0.02-0.09)
MIN_OBJECT_TEXTURE = 0.015


def texture_level(rgb: np.ndarray) -> float:
    """Mean local contrast of a linear RGB image in [0, 1]: the mean over px of the
    standard deviation of the gamma-encoded (1/2.2) luminance in a 7x7 window."""
    lum = np.clip(rgb.astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32), 0, None) ** (1 / 2.2)
    mu = cv2.blur(lum, (7, 7))
    var = np.maximum(cv2.blur(lum * lum, (7, 7)) - mu * mu, 0.0)
    return float(np.mean(np.sqrt(var)))


def _material(rng: np.random.Generator, sources: list[np.ndarray], tries: int = 24):
    """Texture maker for foreground objects: crops of other scene material, or procedural.

    Objects are textured: of up to ``tries`` random crops the first whose
    :func:`texture_level` reaches :data:`MIN_OBJECT_TEXTURE` is taken (else the most
    textured one), so an object is not a patch of sky in front of the sky.  Each
    texture draws from a generator of its own, so the scene's geometry does not
    depend on how many numbers a texture of some size needed."""

    def make(h: int, w: int) -> np.ndarray:
        rng_tex = np.random.default_rng(int(rng.integers(0, 2**63 - 1)))
        if not sources:
            return procedural_scene(rng_tex, h, w)
        best, best_level = None, -1.0
        for _ in range(tries):
            src = sources[int(rng_tex.integers(0, len(sources)))]
            tex = scene_from_source(rng_tex, src, h, w, frac_range=(0.12, 0.45))
            level = texture_level(tex)
            if level >= MIN_OBJECT_TEXTURE:
                return tex
            if level > best_level:
                best, best_level = tex, level
        return best

    return make


def _layered_render(rng: np.random.Generator, source: np.ndarray | None, materials: list[np.ndarray],
                    opt: SimOptions, cam: "PhoneModel") -> _Render:
    """Background plane and foreground objects seen by two pinhole cameras (isp_rig.layered)."""
    from isp_rig import layered

    k = int(opt.supersample)
    dw, dh = opt.dslr_size
    pw, ph = opt.phone_size
    distortion = _distortion(rng, opt)

    def background(h: int, w: int) -> np.ndarray:
        return scene_from_source(rng, source, h, w) if source is not None else procedural_scene(rng, h, w)

    scene = layered.build_scene(
        rng, phone_size=(pw, ph), dslr_size=(dw, dh), k=k, focal_35mm=cam.focal_length_35mm,
        coverage=opt.coverage, max_roll_deg=opt.max_rotation_deg, baseline_mm=opt.baseline_mm,
        parallax=opt.parallax, motion=opt.motion, clipping=opt.clipping, background=background,
        material=_material(rng, materials or ([source] if source is not None else [])),
    )
    undistort = distortion.undistort if distortion is not None else (lambda xy: np.asarray(xy, np.float64))
    dslr_lin, dslr_cov = layered.render_dslr(scene, (dw, dh))
    phone_rgb, phone_cov = layered.render_phone(scene, (pw, ph), undistort)
    dense, owner = layered.truth_from_render(scene, (pw, ph), (dw, dh), undistort, phone_cov, dslr_cov)
    truth = Truth(phone_to_dslr=scene.layers[0].homography, distortion=distortion, phone_size=(pw, ph),
                  dslr_size=(dw, dh), dense=dense)
    step = _grid_step(opt)
    gy, gx = np.mgrid[0:ph:step, 0:pw:step]
    at = dense[gy.ravel(), gx.ravel()]
    keep = np.isfinite(at).all(axis=1)
    truth.grid = np.hstack([np.stack([gx.ravel(), gy.ravel()], 1)[keep].astype(np.float64), at[keep]])
    visible = np.isfinite(dense[..., 0])
    facts = {
        "scene": "layered",
        "effects": [name for name in ("parallax", "motion", "clipping", "shading", "distortion")
                    if getattr(opt, name)],
        "baseline_mm": float(opt.baseline_mm),
        "rig": {"k_phone": scene.cameras.k_phone.tolist(), "k_dslr": scene.cameras.k_dslr.tolist(),
                "rotation": scene.cameras.rotation.tolist(), "translation_m": scene.cameras.translation.tolist()},
        "layers": [layer.describe() for layer in scene.layers],
        "highlights": scene.highlights,
        "owner_fractions": [round(float((owner == i).mean()), 5) for i in range(len(scene.layers))],
        "visible_fraction": round(float(visible.mean()), 5),
        "phone_to_dslr_plane": "the background plane (truth_map.npy holds every px)",
    }
    return _Render(truth, dslr_lin, phone_rgb, facts)


def _reference_level(lin: np.ndarray, scene_light: np.ndarray | None = None) -> float:
    """99.5th percentile of ``lin``; with ``scene_light``, over px whose scene light is at
    most 1.5 x the scene's white (emitters brighter than that are highlights, not what
    an exposure is set for)."""
    vals = lin
    if scene_light is not None:
        ordinary = scene_light.max(axis=-1) <= 1.5
        if ordinary.mean() > 0.5:
            vals = lin[ordinary]
    return max(float(np.percentile(vals, 99.5)), 1e-6)


def _shading(rng: np.random.Generator, pw: int, ph: int) -> np.ndarray:
    """(ph, pw, 3) per-colour lens shading: each channel's own radial fall-off and centre
    (red falls off most, as behind a phone's IR filter at oblique angles)."""
    yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
    out = np.empty((ph, pw, 3), np.float32)
    strength = (rng.uniform(0.35, 0.55), rng.uniform(0.2, 0.35), rng.uniform(0.15, 0.3))
    for c in range(3):
        cx = (pw - 1) / 2 + rng.normal(0, 0.03 * pw)
        cy = (ph - 1) / 2 + rng.normal(0, 0.03 * ph)
        r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (((pw - 1) / 2) ** 2 + ((ph - 1) / 2) ** 2)
        out[..., c] = 1 - strength[c] * r2 - 0.1 * strength[c] * r2 * r2
    return np.clip(out, 0.2, 1.0)


def simulate_pair(
    seed: int,
    source: np.ndarray | None = None,
    options: SimOptions | None = None,
    phone: PhoneModel | None = None,
    pair_id: str | None = None,
    materials: list[np.ndarray] | None = None,
) -> SimPair:
    """Simulate one phone-raw / DSLR pair in memory.

    Args:
        seed: everything random comes from this.
        source: a linear RGB source image (see :func:`load_source`), or None
            for a procedural scene.
        options: sizes and switches (:class:`SimOptions`).
        phone: the phone camera (:class:`PhoneModel`).
        pair_id: the pair's name (default ``pair_<seed>``).
        materials: linear RGB images whose crops texture the foreground objects of
            a layered scene (default: the source, or procedural material).

    Returns:
        :class:`SimPair` with the phone raw (mosaic uint16 on the raw grid),
        the DSLR image (display-referred float RGB) and the ground truth
        (with ``dense`` and ``clipped`` for a layered scene).
    """
    opt = options or SimOptions()
    cam = phone or PhoneModel()
    rng = np.random.default_rng(seed)
    dw, dh = opt.dslr_size
    pw, ph = opt.phone_size
    if pw % 2 or ph % 2:
        raise ValueError("the phone raw size must be even")
    if opt.photometry not in PHOTOMETRY:
        raise ValueError(f"photometry {opt.photometry!r} is not one of {', '.join(PHOTOMETRY)}")

    if opt.layered:
        render = _layered_render(rng, source, materials or [], opt, cam)
    else:
        render = _planar_render(rng, source, opt)
    truth = render.truth
    hom = truth.phone_to_dslr

    # DSLR: its colour response and tone curve (clips where the curve reaches white).
    dslr_lin = render.dslr_lin @ _random_colour_response(rng, 0.02).T
    exposure = rng.uniform(0.9, 1.3) / _reference_level(dslr_lin, render.dslr_lin if opt.clipping else None)
    contrast = rng.uniform(0.1, 0.3)
    hard = _hard_photometry(seed) if opt.photometry == "hard" else None
    if hard is not None:
        exposure *= 2.0 ** hard["dslr_stops"]
        contrast = hard["dslr_contrast"]
    dslr_clean = _filmic(dslr_lin * exposure, contrast=contrast)
    if hard is not None:
        grey = dslr_clean.mean(axis=-1, keepdims=True)
        dslr_clean = np.clip(grey + hard["dslr_saturation"] * (dslr_clean - grey), 0, 1)
    dslr_noise = 0.002 if hard is None else hard["dslr_noise"]
    dslr_rgb = np.clip(dslr_clean + rng.normal(0, dslr_noise, dslr_clean.shape).astype(np.float32), 0, 1).astype(np.float32)

    # Phone: the sensor behind its own colour filters.
    rgb = render.phone_rgb
    # camera (white-balanced) from sRGB: the phone model's own, or one drawn for this pair
    colour_rng = rng if cam.colour_seed is None else np.random.default_rng(cam.colour_seed)
    cam_rgb = _random_colour_response(colour_rng, 0.12)
    if hard is not None:
        cam_rgb = hard["crosstalk"] @ cam_rgb  # neighbouring filters leak into each other
    wb = np.array([rng.uniform(1.6, 2.4), 1.0, rng.uniform(1.3, 2.0)])  # as-shot multipliers
    camera = (rgb @ cam_rgb.T) / wb
    if opt.shading:
        camera *= _shading(rng, pw, ph)
    else:
        yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
        cx, cy = (pw - 1) / 2, (ph - 1) / 2
        r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (cx**2 + cy**2)
        camera *= (1 - (cam.vignetting if hard is None else hard["vignetting"]) * r2)[..., None]
    # a phone exposes for its highlights when the scene has them (1-2 stops of headroom)
    level = rng.uniform(0.25, 0.5) if opt.clipping else rng.uniform(0.7, 0.9)
    if hard is not None:
        level *= hard["phone_level"]  # a night scene: few photons, the noise stands out
    camera *= level / _reference_level(camera, rgb if opt.clipping else None)
    if opt.layered:
        clipped = camera.max(axis=-1) >= 0.98
        dense = truth.dense
        finite = np.isfinite(dense[..., 0])
        dslr_sat = (dslr_clean.max(axis=-1) >= 0.995).astype(np.float32)
        at = ndimage.map_coordinates(dslr_sat, [np.nan_to_num(dense[..., 1]), np.nan_to_num(dense[..., 0])],
                                     order=1, mode="nearest")
        clipped |= finite & (at > 0)
        truth.clipped = clipped
    cfa = cam.cfa or str(rng.choice(rawio.CFA_PATTERNS))
    signal = _mosaic(camera.astype(np.float64), cfa)
    bits = cam.bits if cam.bits in (10, 12) else 10
    white = 2**bits - 1
    black = 64 if bits == 10 else 256
    span = white - black
    electrons = rng.poisson(np.clip(signal, 0, None) * cam.full_well_e) / cam.full_well_e
    read_noise = cam.read_noise_dn * (1.0 if hard is None else hard["read_noise_gain"])
    dn = black + electrons * span + rng.normal(0, read_noise, signal.shape)
    mosaic = np.clip(np.round(dn), 0, white).astype(np.uint16)

    colour_matrix = np.linalg.inv(cam_rgb).astype(np.float32)  # white-balanced camera -> sRGB
    base_time = _dt.datetime(2026, 1, 1, 9, 0, 0) + _dt.timedelta(seconds=int(rng.integers(0, 300 * 86400)))
    phone_time = base_time + _dt.timedelta(microseconds=int(rng.integers(0, 999_000)))
    dslr_time = phone_time + _dt.timedelta(microseconds=int(rng.normal(0, 4000)))
    phone_diag = math.hypot(pw, ph) * math.sqrt(abs(np.linalg.det(hom[:2, :2])))
    dslr_focal = cam.focal_length_35mm * phone_diag / math.hypot(dw, dh)
    exif = rawio.ExifInfo(
        make=cam.make, model=cam.model, focal_length_mm=cam.focal_length_mm,
        focal_length_35mm=cam.focal_length_35mm, exposure_time_s=1 / 120, iso=100.0,
        capture_time=phone_time, orientation=1,
    )
    raw = rawio.RawImage(
        mosaic=mosaic, cfa=cfa, black_levels=np.full(4, black, np.float32), white_level=float(white),
        camera_wb=wb.astype(np.float32), color_matrix=colour_matrix, exif=exif,
    )
    truth.facts = {
        "seed": int(seed),
        "cfa": cfa,
        "phone_bits": bits,
        "black_level": black,
        "white_level": white,
        "supersample": int(opt.supersample),
        "dslr_focal_length_mm": round(dslr_focal, 3),
        "phone_focal_length_35mm": cam.focal_length_35mm,
        **render.scene_facts,
    }
    if truth.clipped is not None:
        truth.facts["clipped_fraction"] = round(float(truth.clipped.mean()), 5)
    if hard is not None:
        opt = replace(opt, jpeg_quality=hard["jpeg_quality"])
        truth.facts["photometry"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in hard.items()}
    return SimPair(
        pair_id=pair_id or f"pair_{seed}", phone=raw, dslr_rgb=dslr_rgb, truth=truth, options=opt,
        phone_model=cam, phone_time=phone_time, dslr_time=dslr_time, dslr_focal_length_mm=dslr_focal,
    )


# -------------------------------------------------------------------- writing


def _rational(value: float, den: int = 10000) -> tuple[int, int]:
    return int(round(value * den)), den


def _exif_time(t: _dt.datetime) -> tuple[str, str]:
    return t.strftime("%Y:%m:%d %H:%M:%S"), f"{t.microsecond // 1000:03d}"


def write_dng(path: Path, raw: rawio.RawImage) -> None:
    """Write a Bayer :class:`RawImage` as an uncompressed DNG that LibRaw reads
    back bit-exactly (``raw_image_visible`` == ``raw.mosaic``)."""
    import tifffile

    cfa_codes = tuple({"R": 0, "G": 1, "B": 2}[c] for c in raw.cfa)
    cam_xyz = np.linalg.inv(raw.color_matrix.astype(np.float64)) @ XYZ_TO_SRGB  # XYZ -> white-balanced camera
    neutral = 1.0 / raw.camera_wb.astype(np.float64)
    stamp, subsec = _exif_time(raw.exif.capture_time or _dt.datetime(2026, 1, 1))
    tags = [
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, cfa_codes, True),  # CFAPattern
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, f"{raw.exif.make} {raw.exif.model}", True),  # UniqueCameraModel
        (50713, "H", 2, (2, 2), True),  # BlackLevelRepeatDim
        (50714, "H", 4, tuple(int(round(b)) for b in unpack_black(raw)), True),  # BlackLevel
        (50717, "H", 1, (int(raw.white_level),), True),  # WhiteLevel
        (50721, "2i", 9, [v for c in cam_xyz.ravel() for v in _rational(c)], True),  # ColorMatrix1
        (50778, "H", 1, (21,), True),  # CalibrationIlluminant1 = D65
        (50728, "2I", 3, [v for c in neutral for v in _rational(c)], True),  # AsShotNeutral
        (271, "s", 0, raw.exif.make or "", True),
        (272, "s", 0, raw.exif.model or "", True),
        (274, "H", 1, (1,), True),  # Orientation
        (33434, "2I", 1, _rational(raw.exif.exposure_time_s or 0.01, 100000), True),  # ExposureTime
        (34855, "H", 1, (int(raw.exif.iso or 100),), True),  # ISOSpeedRatings
        (36867, "s", 0, stamp, True),  # DateTimeOriginal
        (37521, "s", 0, subsec, True),  # SubSecTimeOriginal
        (37386, "2I", 1, _rational(raw.exif.focal_length_mm or 4.0, 1000), True),  # FocalLength
        (41989, "H", 1, (int(round(raw.exif.focal_length_35mm or 26)),), True),  # FocalLengthIn35mmFilm
    ]
    tifffile.imwrite(path, raw.mosaic, photometric=32803, compression=None, extratags=tags,
                     metadata=None, subfiletype=0)


def unpack_black(raw: rawio.RawImage) -> list[float]:
    """Black levels in the DNG's 2x2 repeat order (row-major cell), from R, G1, G2, B order."""
    cell = [0.0] * 4
    for level, (r, c) in zip(raw.black_levels, rawio.cfa_positions(raw.cfa)):
        cell[2 * r + c] = float(level)
    return cell


NIKON_Z6 = {"make": "NIKON CORPORATION", "model": "NIKON Z 6", "lens": "NIKKOR Z 24-70mm f/4 S"}


def write_dslr(path: Path, rgb: np.ndarray, fmt: str, quality: int, focal_mm: float, when: _dt.datetime) -> None:
    """Write the DSLR image as JPEG (4:2:2) or 16-bit TIFF with the Nikon Z6's EXIF facts."""
    stamp, subsec = _exif_time(when)
    focal = max(focal_mm, 1.0)
    if fmt == "jpg":
        from PIL import Image, TiffImagePlugin

        exif = Image.Exif()
        exif[0x010F], exif[0x0110], exif[0x0112] = NIKON_Z6["make"], NIKON_Z6["model"], 1
        ifd = exif.get_ifd(0x8769)
        ifd[0x920A] = TiffImagePlugin.IFDRational(*_rational(focal, 1000))
        ifd[0xA405] = int(round(focal))  # full frame: 35 mm equivalent = focal length
        ifd[0x829A] = TiffImagePlugin.IFDRational(1, 125)
        ifd[0x8827] = 100
        ifd[0x9003] = stamp
        ifd[0x9291] = subsec
        ifd[0xA434] = NIKON_Z6["lens"]
        img = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
        img.save(path, format="JPEG", quality=quality, subsampling=1, exif=exif)
    elif fmt == "tif":
        import tifffile

        tags = [
            (271, "s", 0, NIKON_Z6["make"], True),
            (272, "s", 0, NIKON_Z6["model"], True),
            (37386, "2I", 1, _rational(focal, 1000), True),
            (41989, "H", 1, (int(round(focal)),), True),
            (33434, "2I", 1, (1, 125), True),
            (34855, "H", 1, (100,), True),
            (36867, "s", 0, stamp, True),
            (37521, "s", 0, subsec, True),
        ]
        tifffile.imwrite(path, np.round(rgb * 65535).astype(np.uint16), photometric="rgb",
                         extratags=tags, metadata=None)
    else:
        raise ValueError(f"DSLR format must be 'jpg' or 'tif', got {fmt!r}")


def _pair_files(pair: SimPair) -> list[tuple[str, object]]:
    """(file name, writer taking a binary file path) of every file of a pair folder."""
    fmt = pair.options.dslr_format
    files = [
        ("phone.dng", lambda p: write_dng(p, pair.phone)),
        (f"dslr.{fmt}", lambda p: write_dslr(p, pair.dslr_rgb, fmt, pair.options.jpeg_quality,
                                             pair.dslr_focal_length_mm, pair.dslr_time)),
        ("truth.json", lambda p: p.write_text(json.dumps(pair.truth.to_json(), indent=1))),
    ]
    if pair.truth.dense is not None:
        files.append((TRUTH_MAP, lambda p: np.save(p, pair.truth.dense.astype(np.float32))))
    if pair.truth.clipped is not None:
        files.append((TRUTH_CLIPPED, lambda p: p.write_bytes(_png_bytes(pair.truth.clipped.astype(np.uint8) * 255))))
    return files


def pair_file_names(options: SimOptions) -> list[str]:
    """The files a complete pair folder of these options holds."""
    names = ["phone.dng", f"dslr.{options.dslr_format}", "truth.json"]
    return names + ([TRUTH_MAP, TRUTH_CLIPPED] if options.layered else [])


def write_pair(pair: SimPair, out_dir: str | Path) -> Path:
    """Write a pair as ``out_dir/<pair-id>/phone.dng``, ``dslr.jpg`` (or ``.tif``)
    and ``truth.json`` (a layered scene adds ``truth_map.npy``, float32 (H, W, 2), and
    ``truth_clipped.png``, uint8 (H, W)); returns the pair folder.

    The whole folder is written under a temporary name, every file checked
    (not empty) and flushed to disk, then renamed into place (an earlier folder of
    the same id is replaced), so a killed run or a full disk never leaves a
    pair folder that looks finished.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = out_dir / pair.pair_id
    tmp = out_dir / f".{pair.pair_id}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, writer in _pair_files(pair):
            path = tmp / name
            writer(path)
            if path.stat().st_size == 0:
                raise OSError(errno.EIO, "an empty file was written", str(path))
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("could not encode a PNG")
    return buf.tobytes()


SIMULATION_JSON = "simulation.json"
_PAIR_NAME = re.compile(r"^pair_\d{4,}$")
_PAIR_PARTIAL = re.compile(r"^\.pair_\d{4,}\.partial$")  # a pair folder write_pair had not finished


class OutputFolderError(Exception):
    """The output folder holds something this simulation must not write over."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _settings(seed: int, sources: list[Path], opt: SimOptions, cam: PhoneModel) -> dict:
    """What decides the bytes of pair i (everything but the number of pairs)."""
    return json.loads(json.dumps({
        "format": "isp-rig/simulation/1", "seed": int(seed), "sources": [str(p.resolve()) for p in sources],
        "options": asdict(opt), "phone": asdict(cam),
    }))


def _differences(old: dict, new: dict) -> str:
    diffs = []
    for key in ("seed", "sources"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key} {old.get(key)} vs {new.get(key)}")
    for group in ("options", "phone"):
        a, b = old.get(group) or {}, new.get(group) or {}
        diffs += [f"{k} {a.get(k)} vs {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(diffs[:4]) + (", ..." if len(diffs) > 4 else "")


def prepare_output(out_dir: Path, settings: dict, options: SimOptions, force: bool = False) -> set[str]:
    """Make ``out_dir`` ready for a simulation; returns the ids of the pairs already done.

    An empty or new folder is used as it is.  A folder of an earlier simulation
    with the same settings (``simulation.json``) is resumed: its complete pair
    folders are kept, partial ones redone.  Anything else is refused with
    :class:`OutputFolderError` (nothing is written): files that are not this
    simulator's, or a simulation with other settings unless ``force``, which
    replaces its pair folders.
    """
    if not out_dir.exists():
        out_dir.mkdir(parents=True)
        return set()
    if not out_dir.is_dir():
        raise OutputFolderError(out_dir, "is a file, not a folder")
    entries = list(out_dir.iterdir())
    foreign = foreign_entries(out_dir, lambda name: name == SIMULATION_JSON or bool(_PAIR_NAME.match(name))
                              or bool(_PAIR_PARTIAL.match(name)))
    if foreign:
        raise OutputFolderError(out_dir, f"holds {foreign[0]!r}{' and more' if len(foreign) > 1 else ''}: not a "
                                "simulation folder, refusing to write into it")
    if not entries:
        return set()
    manifest = out_dir / SIMULATION_JSON
    earlier = None
    if manifest.is_file():
        try:
            earlier = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            earlier = None
    if earlier == settings:
        for stale in (e for e in entries if _PAIR_PARTIAL.match(e.name) or is_temporary(e.name)):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
        names = pair_file_names(options)
        return {e.name for e in entries if _PAIR_NAME.match(e.name) and e.is_dir()
                and all((e / n).is_file() and (e / n).stat().st_size > 0 for n in names)}
    if not force:
        what = ("a simulation with other settings (" + _differences(earlier, settings) + ")" if earlier
                else "pair folders of a simulation whose settings are unknown")
        raise OutputFolderError(out_dir, f"holds {what}; use --force to replace it, or another folder")
    for e in entries:
        shutil.rmtree(e) if e.is_dir() else e.unlink()
    return set()


def simulate_pairs(
    out_dir: str | Path,
    n: int,
    seed: int,
    source: str | Path | None = None,
    options: SimOptions | None = None,
    phone: PhoneModel | None = None,
    progress: bool = True,
    force: bool = False,
) -> list[Path]:
    """Simulate ``n`` pairs into ``out_dir`` (``pair_0000`` ...) with ``simulation.json``.

    Pair i is drawn from seed ``(seed, i)``; with a source folder, pair i uses
    its i-th file (cycling).  Raises :class:`SourceError` for an unreadable source
    and :class:`OutputFolderError` for a folder that holds something else (see
    :func:`prepare_output`; ``force`` replaces an earlier simulation), both before
    anything is written.  A folder of the same simulation is resumed: finished
    pairs are kept, the rest made.
    """
    from tqdm import tqdm

    opt = options or SimOptions()
    cam = phone or PhoneModel()
    sources = list_sources(source)
    loaded = {p: load_source(p) for p in sources}  # fail early, before writing
    out_dir = Path(out_dir)
    settings = _settings(seed, sources, opt, cam)
    done = prepare_output(out_dir, settings, opt, force)
    write_json(out_dir / SIMULATION_JSON, settings)
    folders = []
    for i in tqdm(range(n), desc="simulate", unit="pair", disable=not progress):
        pair_id = f"pair_{i:04d}"
        if pair_id in done:
            folders.append(out_dir / pair_id)
            continue
        pair_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        src = loaded[sources[i % len(sources)]] if sources else None
        others = [loaded[p] for p in sources if p != sources[i % len(sources)]] if sources else []
        pair = simulate_pair(pair_seed, src, opt, cam, pair_id=pair_id, materials=others or None)
        if sources:
            pair.truth.facts["source"] = sources[i % len(sources)].name
        folders.append(write_pair(pair, out_dir))
    return folders
