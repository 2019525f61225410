"""Coarse-to-fine, unbiased ECC refinement of a homography.

Two ways to refine a homography between a template (the phone luminance on its
working grid) and an image (the DSLR luminance):

``method="gn"`` (default)
    Our own forward-additive Gauss-Newton on the enhanced-correlation model
    ``T(x) ~ a(x) * I(W(x)) + b(x)`` with a smooth (polynomial) gain ``a`` and
    offset ``b`` estimated jointly with the 8 homography parameters, Huber
    weights against occlusions, and masks that keep every pixel whose value is
    not measured data (borders, the extrapolated ring of any pre-filter,
    saturated pixels) out of both the residual and the Jacobian.  The anti-alias
    pre-filter of the image is matched to the local scale between the two
    grids, so the template is never compared with a sharper or softer copy of
    itself.

``method="opencv"``
    ``cv2.findTransformECC`` (MOTION_HOMOGRAPHY).  Its ``gaussFiltSize``
    pre-filter smooths the template with reflected borders and then uses the
    synthesised ring as data, which pulls the scale inward (opencv issue
    29774).  ``gauss_filt_size=5`` reproduces the stock behaviour (biased);
    with ``gauss_filt_size=1`` no pre-filter runs and we blur both images
    ourselves on their full extent and erode the template mask instead.

Coordinates: x = column, y = row, pixel centres at integers.  Homographies
map template pixel coordinates to image pixel coordinates (3x3, ``H[2,2]=1``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

from alignment.geometry import apply_homography_xy, pixel_centres
from alignment.threads import thread_map

__all__ = [
    "Channel",
    "ImageSamples",
    "gn_refine",
    "refine_planes",
    "prepare_channels",
    "EccResult",
    "EccStopped",
    "refine_homography",
    "local_normalize",
    "spline_coefficients",
    "sample_spline",
    "warp_to_template",
    "template_positions",
    "sample_at",
    "pyramid_down_matrix",
    "correlation",
]

#: maps a pixel of a 2x area-downsampled image to the pixel of the finer image:
#: coarse pixel j covers fine pixels 2j and 2j+1, so its centre is 2j + 0.5.
_DOWN2 = np.array([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]])


class EccStopped(Exception):
    """A refinement given up at its caller's request (its ``stop`` event set): its result
    is no longer wanted.  Not a failure of the refinement (no ValueError)."""


def _check_stop(stop: threading.Event | None) -> None:
    """Raise :class:`EccStopped` when ``stop`` is set."""
    if stop is not None and stop.is_set():
        raise EccStopped("the refinement was stopped: its result is no longer wanted")


def pyramid_down_matrix(levels: int) -> np.ndarray:
    """(3,3) matrix from level-``levels`` coordinates to level-0 coordinates of a 2x area pyramid."""
    m = np.eye(3)
    for _ in range(levels):
        m = m @ _DOWN2
    return m


@dataclass
class EccResult:
    """Result of :func:`refine_homography`.

    homography: (3,3) template px -> image px.
    correlation: zero-mean normalised correlation of template and warped image over
        the final mask at the finest level (after the photometric model), in [-1, 1].
    iterations: Gauss-Newton iterations per level, coarse first.
    converged: whether the finest level converged below ``tol_px``.
    valid_fraction: fraction of template pixels that took part at the finest level.
    radial: (2,) or (4,) the lens model (q1, q2[, eu, ev]) of the frame (zeros when
        not estimated), see :func:`gn_refine`.
    photometric: :func:`gn_refine`'s per-channel gain and offset coefficients at the
        end (a start for another run on the same channels), or None.
    corner_sigma_px: :func:`gn_refine`'s standard error of the frame corners' positions
        that the residuals' scatter leaves (image px, the median of the four corners;
        :func:`_corner_sigma`): how far the samples' noise alone moves the model, NaN
        when not measured.
    samples: how many template px :func:`gn_refine` used (0: not recorded).
    """

    homography: np.ndarray
    correlation: float
    iterations: list[int] = field(default_factory=list)
    converged: bool = False
    valid_fraction: float = 0.0
    radial: np.ndarray = field(default_factory=lambda: np.zeros(2))
    photometric: list[np.ndarray] | None = None
    corner_sigma_px: float = float("nan")
    samples: int = 0


def _gauss(img: np.ndarray, sigma: float, border: int = cv2.BORDER_REFLECT, coarse: bool = False) -> np.ndarray:
    """Gaussian blur of (H, W) ``img`` (sigma in its px).  coarse: for windows of 8 px or
    more, blur a copy shrunk by f = sigma // 4 (area mean) and enlarge it back
    (bilinear): about the same window at a third of the time, for measures (scores)
    rather than fits."""
    if sigma <= 0.05:
        return img
    f = int(sigma // 4) if coarse else 1
    h, w = img.shape[:2]
    if f < 2 or min(h, w) < 8 * f:
        return cv2.GaussianBlur(img, (0, 0), sigma, borderType=border)
    small = cv2.resize(img, (-(-w // f), -(-h // f)), interpolation=cv2.INTER_AREA)
    # the area mean adds about f^2/12 px^2 of variance, the bilinear enlargement f^2/6
    s_small = float(np.sqrt(max(sigma * sigma - f * f / 4.0, 1.0))) / f
    small = cv2.GaussianBlur(small, (0, 0), s_small, borderType=border)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def local_normalize(
    img: np.ndarray, sigma: float, mask: np.ndarray | None = None, eps: float = 1e-3, coarse: bool = False
) -> np.ndarray:
    """Subtract the local mean and divide by the local standard deviation.

    img: (H, W) float32 linear luminance.  sigma: Gaussian window in px of ``img``.
    mask: (H, W) bool of measured pixels; the local moments are normalised
    convolutions over the mask only.  eps: floor of the local std relative to
    the global std (keeps flat regions from being amplified into noise).
    coarse: the local moments through :func:`_gauss`'s coarse path (scores, not fits).
    Returns (H, W) float32, about zero mean and unit variance locally.
    """
    img = img.astype(np.float32)
    if mask is None:
        w = np.ones_like(img)
    else:
        w = mask.astype(np.float32)
    # normalised convolution with zero outside the image: only measured data enter
    zb = cv2.BORDER_CONSTANT
    wsum = _gauss(w, sigma, zb, coarse) + 1e-6
    mu = _gauss(img * w, sigma, zb, coarse) / wsum
    d = img - mu
    var = _gauss(d * d * w, sigma, zb, coarse) / wsum
    floor = (eps * float(np.std(img[w > 0])) if np.any(w > 0) else eps) ** 2 + 1e-12
    out = d / np.sqrt(var + floor)
    if mask is not None:
        out[~mask] = 0.0
    return out.astype(np.float32)


def template_positions(
    h: np.ndarray, shape: tuple[int, int], image_shape: tuple[int, int], displacement: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where every template pixel x samples an image: ``H(x + displacement(x))``.

    h: (3,3) template px -> image px.  shape: template (rows, cols); image_shape: the
    image's (rows, cols).  displacement: optional (rows, cols, 2) template-px (dx, dy).
    Returns (x (rows, cols) float64, y (rows, cols) float64 in image px, inside
    (rows, cols) bool: the point at least 2 px inside the image, so a cubic kernel
    reads only measured data).
    """
    rows, cols = shape
    yy, xx = pixel_centres(rows, cols)
    if displacement is not None:
        xx = xx + displacement[..., 0]
        yy = yy + displacement[..., 1]
    mx, my, w = apply_homography_xy(h, xx, yy)  # (rows, cols) each: the column and the row broadcast
    ih, iw = image_shape
    inside = (w > 0) & (mx >= 2) & (my >= 2) & (mx <= iw - 3) & (my <= ih - 3)
    return mx, my, inside


def sample_at(image: np.ndarray, mx: np.ndarray, my: np.ndarray, interpolation: int = cv2.INTER_CUBIC,
              coefficients: np.ndarray | None = None) -> np.ndarray:
    """``image`` (h, w) float32 at the positions (mx, my) (any shape, image px) -> float32
    of their shape: through the exact cubic spline (``coefficients`` when already
    computed, see :func:`spline_coefficients`) for INTER_CUBIC, else OpenCV's remap
    (border values replicate)."""
    ih, iw = image.shape
    if interpolation == cv2.INTER_CUBIC:
        # exact cubic spline (OpenCV's INTER_CUBIC rounds positions to 1/32 px)
        coef = spline_coefficients(image) if coefficients is None else coefficients
        return sample_spline(coef, np.clip(mx, -1, iw), np.clip(my, -1, ih)).astype(np.float32)
    return cv2.remap(image, mx.astype(np.float32), my.astype(np.float32), interpolation,
                     borderMode=cv2.BORDER_REPLICATE)


def warp_to_template(
    image: np.ndarray,
    h: np.ndarray,
    shape: tuple[int, int],
    displacement: np.ndarray | None = None,
    interpolation: int = cv2.INTER_CUBIC,
    coefficients: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``image`` at ``H(x + displacement(x))`` for every template pixel x.

    image: (h, w) float32.  h: (3,3) template -> image.  shape: template (rows, cols).
    displacement: optional (rows, cols, 2) template-px displacement (dx, dy).
    coefficients: the image's spline coefficients when already computed
    (:func:`spline_coefficients`; cubic interpolation only).
    Returns (warped (rows, cols) float32, inside (rows, cols) bool: sample point at
    least 2 px inside the image, so the cubic kernel reads only measured data).
    """
    mx, my, inside = template_positions(h, shape, image.shape, displacement)
    return sample_at(image, mx, my, interpolation, coefficients), inside


#: the cubic B-spline prefilter's impulse response, sqrt(3) z^|k| with its pole z = sqrt(3) - 2,
#: cut at 12 taps either side: the taps left out weigh 1.7e-7 in all (6e-8 of the kernel's
#: absolute sum), under float32's rounding
_SPLINE_POLE = np.sqrt(3.0) - 2.0
_SPLINE_TAPS = 12
_SPLINE_KERNEL = (np.sqrt(3.0) * _SPLINE_POLE ** np.abs(np.arange(-_SPLINE_TAPS, _SPLINE_TAPS + 1))).astype(np.float32)


def spline_coefficients(image: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of a (H, W) image (mirror boundary), for :func:`sample_spline`.

    OpenCV's INTER_CUBIC rounds sub-pixel positions to 1/32 px; an alignment
    aiming at hundredths of a pixel samples through exact cubic splines instead.
    The prefilter (the inverse of the spline's [1, 4, 1] / 6 sampling, a recursive
    filter in :func:`scipy.ndimage.spline_filter`) is applied as its impulse response,
    25 taps per axis, by OpenCV's separable filter on the mirrored image (OpenCV's
    BORDER_REFLECT_101 is scipy's "mirror"): the exact coefficients within 2e-6 of the
    image's range (uniform noise, the worst case; 7e-7 on a photo-like image; scipy's
    float32 output is within 1e-7), in a tenth of the time (0.16 -> 0.02 s for a
    2520 x 1900 DSLR plane; a 12 MP pair filters about 30 MP).
    """
    if np.ndim(image) != 2:
        raise ValueError(f"spline_coefficients needs a (H, W) image, not shape {np.shape(image)}")
    image = np.ascontiguousarray(image, np.float32)
    if min(image.shape) <= _SPLINE_TAPS:  # too small to mirror the kernel once
        return ndimage.spline_filter(image, order=3, mode="mirror", output=np.float32)
    return cv2.sepFilter2D(image, cv2.CV_32F, _SPLINE_KERNEL, _SPLINE_KERNEL, borderType=cv2.BORDER_REFLECT_101)


def sample_spline(coef: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Evaluate cubic-spline coefficients (from :func:`spline_coefficients`) at points (x, y)."""
    return ndimage.map_coordinates(coef, [np.ravel(y), np.ravel(x)], order=3, prefilter=False, mode="mirror").reshape(
        np.shape(x)
    )


def _bspline_weights(t: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """The cubic B-spline's four weights at the px ``floor - 1 .. floor + 2`` of points whose
    fractional part is ``t`` (N,), and their derivatives -> (four (N,), four (N,))."""
    t2 = t * t
    t3 = t2 * t
    u = 1.0 - t
    w = (u * u * u / 6.0, (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0, (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0, t3 / 6.0)
    d = (-0.5 * u * u, 1.5 * t2 - 2.0 * t, -1.5 * t2 + t + 0.5, 0.5 * t2)
    return w, d


# points sampled a block at a time by sample_spline_gradient: a block's eleven float32
# planes (256 kB each) stay in the cache, and on two threads the blocks are long enough that
# the numpy calls' own time, which holds the GIL, stays small beside their arithmetic
# (two threads, 1 M points each on a 12 MP array: 136 ms a block of 16 384, 95 ms of 65 536)
_SPLINE_BLOCK = 65_536


def sample_spline_gradient(coef: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
    """The cubic spline of :func:`sample_spline` and its exact derivatives at N points ->
    (value, d/dx, d/dy), each (N,) float64, derivatives per image px.

    coef: (h, w) C-contiguous coefficients (:func:`spline_coefficients`); x, y: (N,) image
    px with ``1 <= x < w - 2`` and ``1 <= y < h - 2`` (the 4 x 4 coefficients under each
    point inside the array; no border rule is applied).  The values equal
    :func:`sample_spline`'s; the derivatives are those of the same spline, where
    central differences of the image read bilinearly fall short by a third on texture
    near the blur's limit (and Gauss-Newton's steps overshoot by as much).
    """
    n = x.size
    value, along_x, along_y = np.empty(n), np.empty(n), np.empty(n)
    if n == 0:
        return value, along_x, along_y
    w = coef.shape[1]
    flat = coef.ravel()
    # the coefficient at row j, column k of each point's 4 x 4 window, read from the corner's
    # flat index in the array shifted by j * w + k: sixteen gathers of one plane each, 1.5 to
    # 4 times faster than one gather of (N, 16) windows and sums along their small axes.
    # float32 like the coefficients (the values agree with map_coordinates' to 2e-7), each
    # sum of four terms taken as (0 + 1) + (2 + 3), as numpy's einsum sums four terms: the
    # same values to the last bit as those einsums gave
    shifted = [[flat[j * w + k :] for k in range(4)] for j in range(4)]
    m0 = min(n, _SPLINE_BLOCK)
    planes = [np.empty(m0, np.float32) for _ in range(11)]
    for a in range(0, n, _SPLINE_BLOCK):
        b = min(a + _SPLINE_BLOCK, n)
        m = b - a
        xb, yb = x[a:b], y[a:b]
        fx, fy = np.floor(xb), np.floor(yb)
        wx, dx = _bspline_weights((xb - fx).astype(np.float32))
        wy, dy = _bspline_weights((yb - fy).astype(np.float32))
        corner = (fy.astype(np.intp) - 1) * w + (fx.astype(np.intp) - 1)
        c, term, right, right_dx, *rest = (plane[:m] for plane in planes)
        # rows j - 1 and j of the window along x (and their d/dx), j odd
        rows = [(rest[0], rest[1]), (rest[2], rest[3])]
        # value, d/dx and d/dy over rows 0 and 1 (the sum over rows 2 and 3 goes to right,
        # right_dx and c once those have served)
        upper = rest[4], rest[5], rest[6]
        lower = right, right_dx, c
        for j in range(4):
            row, row_dx = rows[j % 2]
            # row j along x and its derivative along x: (columns 0 + 1) + (columns 2 + 3)
            for k, (pair, pair_dx) in ((0, (row, row_dx)), (2, (right, right_dx))):
                np.take(shifted[j][k], corner, out=c)
                np.multiply(c, wx[k], out=pair)
                np.multiply(c, dx[k], out=pair_dx)
                np.take(shifted[j][k + 1], corner, out=c)
                pair += np.multiply(c, wx[k + 1], out=term)
                pair_dx += np.multiply(c, dx[k + 1], out=term)
            row += right
            row_dx += right_dx
            if j % 2:
                (r0, r0_dx), (r1, r1_dx) = rows
                v, vx, vy = upper if j == 1 else lower
                np.multiply(r0, wy[j - 1], out=v)
                v += np.multiply(r1, wy[j], out=term)
                np.multiply(r0_dx, wy[j - 1], out=vx)
                vx += np.multiply(r1_dx, wy[j], out=term)
                np.multiply(r0, dy[j - 1], out=vy)
                vy += np.multiply(r1, dy[j], out=term)
        # (rows 0 + 1) + (rows 2 + 3), summed in float32 and stored as float64
        for total, up, low in zip((value, along_x, along_y), upper, lower):
            np.add(up, low, out=total[a:b])
    return value, along_x, along_y


def sample_points(image: np.ndarray, x: np.ndarray, y: np.ndarray, interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Sample ``image`` (H, W[, C]) at N points (x, y) -> (N[, C]); border values replicate."""
    n = x.size
    width = 4096
    rows = max(1, -(-n // width))
    pad = rows * width - n
    mx = np.concatenate([x.ravel().astype(np.float32), np.zeros(pad, np.float32)]).reshape(rows, width)
    my = np.concatenate([y.ravel().astype(np.float32), np.zeros(pad, np.float32)]).reshape(rows, width)
    out = cv2.remap(image, mx, my, interpolation, borderMode=cv2.BORDER_REPLICATE)
    if image.ndim == 3:
        return out.reshape(rows * width, image.shape[2])[:n]
    return out.reshape(-1)[:n]


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Zero-mean normalised cross-correlation of two (H, W) arrays over ``mask``."""
    if mask.sum() < 16:
        return 0.0
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else 0.0


#: the photometric polynomial's terms in (u, v), in order, for degrees 0, 1 and 2
_POLY_TERMS = ((lambda u, v: np.ones_like(u * v),), (lambda u, v: u, lambda u, v: v),
               (lambda u, v: u * u, lambda u, v: u * v, lambda u, v: v * v))


def _poly_terms(degree: int) -> list:
    """The terms of :data:`_POLY_TERMS` up to ``degree``, as functions of (u, v)."""
    return [term for group in _POLY_TERMS[: degree + 1] for term in group]


def _poly_basis(u: np.ndarray, v: np.ndarray, degree: int) -> np.ndarray:
    """(N,) u, v -> (N, terms) the photometric polynomial's basis."""
    return np.stack([term(u, v) for term in _poly_terms(degree)], axis=1)


def photometric_maps(channels: list[Channel], photo: list[np.ndarray] | None,
                     frame_shape: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """:func:`gn_refine`'s photometric model on each channel's template grid: per channel
    (gain, offset), two (h, w) float32 maps with ``template ~ gain * DSLR + offset``
    (the phone's vignetting and colour shading against the DSLR's, polynomial in the
    normalised frame).  channels: those ``photo`` was fitted on (``to_frame`` = template
    px -> frame px, axis-aligned); photo: ``EccResult.photometric``; frame_shape: (rows,
    cols) of the frame gn_refine was given.  None when there is no model or it does not
    match the channels (a channel gn_refine skipped)."""
    if photo is None or len(photo) != len(channels):
        return None
    frame = _Frame.of(frame_shape)
    degrees = {len(_poly_terms(d)): d for d in range(len(_POLY_TERMS))}
    out = []
    for ch, coef in zip(channels, photo):
        npb = len(coef) // 2
        tf = ch.to_frame
        if npb not in degrees or abs(tf[0, 1]) > 1e-9 or abs(tf[1, 0]) > 1e-9:
            return None
        rows, cols = ch.template.shape
        u = ((tf[0, 0] * np.arange(cols) + tf[0, 2] - frame.cx) / frame.sc)[None, :]
        v = ((tf[1, 1] * np.arange(rows) + tf[1, 2] - frame.cy) / frame.sc)[:, None]
        terms = _poly_terms(degrees[npb])
        out.append(tuple(_poly_grid(u, v, terms, c) for c in (coef[:npb], coef[npb:])))
    return out


def _poly_grid(u: np.ndarray, v: np.ndarray, terms: list, coef: np.ndarray) -> np.ndarray:
    """The polynomial of ``terms`` (:func:`_poly_terms`) with coefficients ``coef`` on the
    grid of (1, cols) ``u`` and (rows, 1) ``v``, term by term over the grid (no (px, terms)
    basis: a 12 MP phone's plane would need 60 MB for it) -> (rows, cols) float32."""
    out = np.zeros((v.shape[0], u.shape[1]), np.float32)
    for term, c in zip(terms, coef):
        out += (c * term(u, v)).astype(np.float32)
    return out


class ImageSamples:
    """What sampling needs from one filtered DSLR image, computed once on first use
    (or all at once by :meth:`compute`): its spline coefficients and its mask as a
    number image.  Channels that compare with the same image share one
    (e.g. the two green Bayer planes)."""

    def __init__(self, image: np.ndarray, image_mask: np.ndarray | None) -> None:
        self.image = image
        self.image_mask = image_mask
        # whether the image mask excludes any px (an all-true mask need not be sampled)
        self.mask_has_holes = image_mask is not None and not bool(image_mask.all())
        self._coefficients: np.ndarray | None = None
        self._mask_f32: np.ndarray | None = None

    # plain lazy attributes, not functools.cached_property: on Python 3.11 its lock
    # is shared by every instance and would queue the images computed side by side
    @property
    def coefficients(self) -> np.ndarray:
        """(h, w) float32 cubic-spline coefficients of the image (see :func:`spline_coefficients`)."""
        if self._coefficients is None:
            self._coefficients = spline_coefficients(self.image)
        return self._coefficients

    @property
    def mask_f32(self) -> np.ndarray | None:
        """The image mask as (h, w) float32 (1 = measured), or None."""
        if self._mask_f32 is None and self.image_mask is not None:
            self._mask_f32 = self.image_mask.astype(np.float32)
        return self._mask_f32

    def compute(self) -> "ImageSamples":
        """Everything at once (what a thread of :func:`prepare_channels` does); returns self."""
        _ = self.coefficients, self.mask_f32
        return self


@dataclass(eq=False)
class Channel:
    """One template channel for :func:`gn_refine`.

    template: (rows, cols) float32, filtered like ``image``; mask: (rows, cols) bool;
    image: (h, w) float32 the channel is compared with; image_mask: (h, w) bool or None;
    to_frame: (3,3) template px -> the shared frame in which the homography is
    expressed (e.g. a Bayer plane's half-res px -> full raw grid px).
    samples: the image's :class:`ImageSamples` (made from ``image`` when not
    given), so one prepared channel serves every stage that samples it.
    """

    template: np.ndarray
    mask: np.ndarray
    image: np.ndarray
    image_mask: np.ndarray | None = None
    to_frame: np.ndarray = field(default_factory=lambda: np.eye(3))
    samples: ImageSamples | None = None
    #: the template's squared gradient (:attr:`gradient_energy`), once computed
    energy: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.samples is None:
            self.samples = ImageSamples(self.image, self.image_mask)

    @property
    def gradient_energy(self) -> np.ndarray:
        """(rows, cols) float32 squared gradient of the template (central differences),
        computed once per channel (and kept by :meth:`with_mask` when computed before)."""
        if self.energy is None:
            gy, gx = np.gradient(self.template.astype(np.float32))
            self.energy = gx * gx + gy * gy
        return self.energy

    def with_mask(self, mask: np.ndarray) -> "Channel":
        """The same channel with another template mask (``mask``: (rows, cols) bool)."""
        return Channel(self.template, mask, self.image, self.image_mask, self.to_frame, self.samples, self.energy)

    @property
    def coefficients(self) -> np.ndarray:
        return self.samples.coefficients  # type: ignore[union-attr]

    @property
    def image_mask_f32(self) -> np.ndarray | None:
        return self.samples.mask_f32  # type: ignore[union-attr]

    @property
    def mask_has_holes(self) -> bool:
        return self.samples.mask_has_holes  # type: ignore[union-attr]


#: :func:`gn_refine` stops when a step that raised the robust cost had been promised, by
#: the linearisation, a fall of no more than this fraction of the cost: near the optimum
#: Gauss-Newton steps of the reweighted problem raise it by 1e-7 to 3e-5 (the broadened
#: benchmark's pairs), and damping them only creeps; a step that overshoots raises it by
#: 1e-4 to 1e-1, far from the optimum, where a fall is promised and damping finds it.
COST_FLOOR = 1e-4


def gn_refine(
    channels: list[Channel],
    h: np.ndarray,
    frame_shape: tuple[int, int],
    max_iter: int = 30,
    tol_px: float = 1e-4,
    gain_degree: int = 1,
    huber: float | None = 3.0,
    max_pixels: int | None = 400_000,
    radial: int = 0,
    q0: np.ndarray | None = None,
    photo0: list[np.ndarray] | None = None,
    lens_centre: bool = False,
    series: bool = False,
    forward_lens: bool = True,
    stop: threading.Event | None = None,
    min_step_sigmas: float | None = None,
    hands_over: Callable[[float, int], bool] | None = None,
) -> EccResult:
    """Gauss-Newton on a homography (and radial distortion) shared by several template channels.

    Each channel k predicts its template as ``a_k(x) * I_k(H T_k x) + b_k(x)`` with
    its own polynomial gain/offset (degree ``gain_degree``); H (frame px -> image px)
    is shared.  frame_shape: (rows, cols) of the frame, for the normalisation of
    the update.  Huber weights (``huber`` robust sigmas) per channel.
    max_pixels: at most this many template pixels in all (a fixed random subset
    of each channel's mask beyond that; None: all).
    radial: number of radial distortion coefficients (0, 1 or 2) estimated with H:
    the frame point z is first undistorted, ``n = (z - c) / s``,
    ``n_u = n (1 + q1 |n|^2 + q2 |n|^4 + q3 |n|^6 + q4 |n|^8)`` with c the frame
    centre and s half its longer side, so q is dimensionless and the same at every
    pyramid level (q3 and q4 follow q1 and q2, ``forward_lens`` below);
    q0: the starting coefficients, (q1, q2) or (q1, q2, eu, ev) with the lens centre
    e in the same normalised units (:func:`lens_undistort`).  lens_centre: estimate
    that centre too (with ``radial``; q then has four entries).  A lens centre away
    from the frame's leaves a radial model fitted about the frame centre up to 0.9 px
    off at the frame corners (the simulator's 1 % decentring).  forward_lens: the
    model's form (:func:`lens_undistort`: a forward lens's undistortion, q3 and q4
    following q1 and q2; False: the plain polynomial).
    photo0: the starting gain and offset coefficients
    (``EccResult.photometric`` of an earlier run on the same channels; None: gain 1,
    offset 0).
    A step that raises the robust cost is damped and tried again (Levenberg-Marquardt);
    the pass ends (``converged``) when a step moves no frame corner by ``tol_px``
    (image px; a Gauss-Newton step that small is taken unmeasured, a damped one is
    not taken) or when a step that raised the cost was promised a fall of no more
    than :data:`COST_FLOOR` of it, else after ``max_iter`` trials (refused ones
    included).  With ``series``, where two plain steps in a row show a linear
    convergence (the second a constant share of the first, the same way), the next is
    taken as long as the rest of that series (:func:`_series_factor`), kept only when
    the cost falls there; that counts as a trial (the fine stage's passes, which start
    near their end; a pass far from it may jump to another basin that way).  The
    correlation and the fraction inside are those of the last point measured.  The
    Jacobian takes the exact derivatives of the image's cubic spline
    (:func:`sample_spline_gradient`).
    stop: when set (by another thread), the pass raises :class:`EccStopped` before its
    next step (a refinement run ahead in the background, no longer wanted).
    min_step_sigmas: a plain Gauss-Newton step shorter than this many standard errors
    of the noise (:func:`_step_sigmas`) is taken unmeasured and ends the pass, as one
    under ``tol_px`` does (None: no such rule): where the model drifts along what the
    samples barely constrain, its steps stay above ``tol_px`` for every trial.
    hands_over: with ``min_step_sigmas``, that rule applies only where this is true of
    the standard error the noise leaves the frame corners at the step's start (image px,
    :func:`_corner_sigma`) and the samples the pass uses: where a later pass on more
    samples takes over (whose own noise is the finer limit), None: everywhere.
    Returns an :class:`EccResult` (one entry in ``iterations``), the correlation
    pooled over channels.
    """
    q = np.zeros(2) if q0 is None else np.asarray(q0, np.float64).copy()
    nr = int(radial)
    nc = 2 if lens_centre and nr else 0
    if nc and len(q) < 4:
        q = np.r_[q, np.zeros(4 - len(q))]
    frame = _Frame.of(frame_shape)
    data = _channel_samples(channels, frame, gain_degree, max_pixels)
    npb = data[0].basis.shape[1]
    n_par = 8 + nr + nc + 2 * npb * len(data)
    photo = [np.concatenate([[1.0], np.zeros(npb - 1), np.zeros(npb)]) for _ in data]
    if photo0 is not None and len(photo0) == len(photo) and all(len(a) == len(b) for a, b in zip(photo0, photo)):
        photo = [np.array(a, np.float64) for a in photo0]
    converged = False
    it = 0

    def equations(hh: np.ndarray, qq: np.ndarray, pp: list[np.ndarray],
                  before: list[float | None] | None = None) -> _SummedEquations:
        """The summed equations at (H, q, photometric) under ``before``'s thresholds."""
        return _gn_equations(data, hh @ frame.ninv, qq, pp, nr, huber, n_par, nc, before, forward_lens)

    # Levenberg-Marquardt's acceptance rule on Gauss-Newton: a step is kept only when the
    # robust cost falls (measured under the thresholds of the point it started from);
    # else the step is damped and tried again from the same point.  A pass whose steps
    # all lower the cost is plain Gauss-Newton, step for step.  (Undamped, and with
    # gradients a third short, passes ran to max_iter and returned wherever the last
    # step landed: a procedural pair's coarse levels moving 10 to 60 px a step, a
    # rejected night pair's fine pass cycling at 0.1 px for 4.5 s.)
    eq = equations(h, q, photo)
    if eq.n_inside < 64:
        raise ValueError("the warped template leaves the image")
    damping, grow = 0.0, 2.0
    n_samples = sum(len(d.u) for d in data)
    n_geo = 8 + nr + nc  # the geometric parameters lead dp; the photometric ones follow
    last_geo: np.ndarray | None = None  # the geometric part of the last plain step taken
    for it in range(1, max_iter + 1):
        _check_stop(stop)
        dp = _gn_solve(eq, damping)
        # the fall the linearisation promises (per sample, as the cost)
        promised = float(dp @ eq.atb - 0.5 * dp @ eq.ata @ dp) / max(eq.n_cost, 1)
        h_t, q_t, moved = _apply_update(h, q, dp, nr, frame, nc, forward_lens)
        if moved < tol_px or (min_step_sigmas is not None and damping == 0.0
                              and _step_sigmas(promised, eq) < min_step_sigmas
                              and (hands_over is None or hands_over(
                                  _corner_sigma(eq, h, q, nr, nc, frame, forward_lens), n_samples))):
            # a Gauss-Newton step this small is taken without measuring where it lands; a
            # damped one this small means no step of any length lowers the cost: stay
            if damping == 0.0:
                h, q, photo = h_t, q_t, _photo_update(photo, dp, n_geo, npb)
            converged = True
            break
        factor = _series_factor(last_geo, dp[:n_geo]) if series and damping == 0.0 else 1.0
        if factor > 1.0:
            # Gauss-Newton converging linearly: the rest of the series in one step, kept
            # when the cost falls there (else the plain step below, as before)
            h_x, q_x, _ = _apply_update(h, q, dp * factor, nr, frame, nc, forward_lens)
            photo_x = _photo_update(photo, dp * factor, n_geo, npb)
            extrapolated = equations(h_x, q_x, photo_x, eq.thresholds)
            if extrapolated.n_inside >= 64 and extrapolated.cost_before <= eq.cost:
                h, q, photo, eq, last_geo = h_x, q_x, photo_x, extrapolated, None
                continue
        photo_t = _photo_update(photo, dp, n_geo, npb)
        trial = equations(h_t, q_t, photo_t, eq.thresholds)
        if trial.n_inside >= 64 and trial.cost_before <= eq.cost:
            gain = eq.cost - trial.cost_before
            h, q, photo, eq = h_t, q_t, photo_t, trial
            last_geo = dp[:n_geo].copy() if damping == 0.0 else None
            if damping > 0.0:  # Nielsen's schedule
                rho = gain / promised if promised > 0 else 0.0
                damping *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
                damping = 0.0 if damping < 1e-6 else damping
                grow = 2.0
        elif promised <= COST_FLOOR * eq.cost:
            # refused, and the linearisation promised no more than the cost's own noise
            # (the spline's, the thresholds'): the point stays where the cost was lowest
            converged = True
            break
        else:
            damping, grow = (1e-3 if damping == 0.0 else damping * grow), grow * 2.0
    corr, valid_frac = eq.correlation, eq.valid_fraction
    return EccResult(homography=h, correlation=float(corr), iterations=[it], converged=converged,
                     valid_fraction=valid_frac, radial=q, photometric=photo,
                     corner_sigma_px=_corner_sigma(eq, h, q, nr, nc, frame, forward_lens),
                     samples=n_samples)


#: :func:`gn_refine`'s series step: two plain Gauss-Newton steps in a row whose geometric
#: parts point the same way (cosine over :data:`SERIES_MIN_COSINE`) with the second
#: :data:`SERIES_RATIOS` of the first's length are a linear convergence, x_k - x* shrinking
#: by that ratio a step; the next step is then taken 1 / (1 - ratio) times as long (the sum
#: of the series, at most :data:`SERIES_MAX_FACTOR`).  Measured (docs/alignment.md, #11's
#: thirty-first stop): a 12 MP lens pair's pass on every sample (1.0 M) 15 -> 5 steps.
SERIES_MIN_COSINE = 0.95
SERIES_RATIOS = (0.5, 0.95)
SERIES_MAX_FACTOR = 8.0


def _step_sigmas(promised: float, eq: "_SummedEquations") -> float:
    """The length of a plain Gauss-Newton step in standard errors of the noise at its
    start (the Mahalanobis length under the covariance :func:`_corner_sigma` uses,
    ``2 cost (J^T W J)^-1``): for a plain step, whose promised fall per sample is
    ``promised = dp^T (J^T W J) dp / (2 n)``, that length squared is ``promised n /
    cost``.  A step under a fraction of one moves the model by less than the noise
    could tell."""
    return float(np.sqrt(max(promised, 0.0) * eq.n_cost / eq.cost)) if eq.cost > 0 else float("inf")


def _series_factor(last: np.ndarray | None, step: np.ndarray) -> float:
    """How many times longer to take ``step`` (the geometric part of a plain Gauss-Newton
    step) after ``last`` (the one before it, None: none): 1 / (1 - ratio) when the two
    are a linearly converging series (see :data:`SERIES_MIN_COSINE`), else 1."""
    if last is None:
        return 1.0
    n0, n1 = float(np.linalg.norm(last)), float(np.linalg.norm(step))
    if n0 <= 0.0 or n1 <= 0.0 or float(last @ step) < SERIES_MIN_COSINE * n0 * n1:
        return 1.0
    ratio = n1 / n0
    if not SERIES_RATIOS[0] < ratio < SERIES_RATIOS[1]:
        return 1.0
    return min(1.0 / (1.0 - ratio), SERIES_MAX_FACTOR)


def _photo_update(photo: list[np.ndarray], dp: np.ndarray, n_geo: int, npb: int) -> list[np.ndarray]:
    """Each channel's gain and offset coefficients moved by its part of the step ``dp``
    (after the ``n_geo`` geometric parameters, ``2 npb`` per channel)."""
    return [p + dp[n_geo + 2 * npb * k : n_geo + 2 * npb * (k + 1)] for k, p in enumerate(photo)]


def _corner_sigma(eq: "_SummedEquations", h: np.ndarray, q: np.ndarray, nr: int, nc: int, frame: "_Frame",
                  forward: bool = True) -> float:
    """The standard error of the frame corners' positions (image px, the median of the
    four) that the residuals' scatter leaves in the model of :func:`gn_refine` at the
    point of ``eq``: the covariance ``s^2 (J^T W J)^-1`` of all its parameters (s^2 twice
    the robust cost per sample: the residuals' variance for those inside the Huber
    threshold), the geometric block propagated to the corners through the step's own
    parametrisation (:func:`_apply_update`, by differences of 1e-6).  It counts the
    noise only: a bias of the model (a blur or response that does not match) is not in
    it.  NaN when the equations are singular."""
    n_geo = 8 + nr + nc
    try:
        cov = 2.0 * eq.cost * np.linalg.inv(eq.ata)[:n_geo, :n_geo]
    except np.linalg.LinAlgError:
        return float("nan")
    base = apply_homography_xy(h @ frame.ninv, *lens_undistort(q, frame.corners_u, frame.corners_v, forward))
    jac = np.zeros((2 * len(frame.corners_u), n_geo))
    for k in range(n_geo):
        dp = np.zeros(len(eq.atb))
        dp[k] = 1e-6
        h_k, q_k, _ = _apply_update(h, q, dp, nr, frame, nc, forward)
        undistorted = lens_undistort(q_k, frame.corners_u, frame.corners_v, forward)
        x_k, y_k, _ = apply_homography_xy(h_k @ frame.ninv, *undistorted)
        jac[0::2, k], jac[1::2, k] = (x_k - base[0]) / 1e-6, (y_k - base[1]) / 1e-6
    var = np.einsum("ik,kl,il->i", jac, cov, jac)
    per_corner = np.sqrt(np.maximum(var[0::2] + var[1::2], 0.0))
    return float(np.median(per_corner)) if np.all(np.isfinite(per_corner)) else float("nan")


@dataclass
class _SummedEquations:
    """The normal equations of one Gauss-Newton point of :func:`gn_refine`, summed over the
    channels: ``ata`` / ``atb``, the robust cost there per sample inside the image of
    the channels with equations (``n_cost`` of them; ``cost``, under its own Huber
    thresholds ``thresholds``, one per channel, None for a channel without equations)
    and under the thresholds of the point a step started from (``cost_before``), the
    correlation pooled over channels, the fraction of samples inside the image and
    how many are (``n_inside``, every channel's)."""

    ata: np.ndarray
    atb: np.ndarray
    cost: float
    cost_before: float
    thresholds: list[float | None]
    correlation: float
    valid_fraction: float
    n_inside: int
    n_cost: int


def _gn_equations(data: list, g: np.ndarray, q: np.ndarray, photo: list[np.ndarray], nr: int, huber: float | None,
                  n_par: int, nc: int = 0, thresholds_before: list[float | None] | None = None,
                  forward: bool = True) -> _SummedEquations:
    """Every channel's equations (:func:`_channel_equations`, the channels side by side:
    :func:`alignment.threads.thread_map`) summed into the shared normal equations (the
    8 + nr (+ nc) geometric parameters shared, each channel's 2 * npb photometric ones its
    own).  g: the homography in normalised frame coordinates; thresholds_before: the
    channels' Huber thresholds of the point a step started from (None: their own)."""
    npb = len(photo[0]) // 2
    ata = np.zeros((n_par, n_par))
    atb = np.zeros(n_par)
    n_tot = n_in_tot = n_cost = 0
    sxy = sxx = syy = cost = cost_before = 0.0
    before = thresholds_before or [None] * len(data)
    equations = thread_map(lambda k: _channel_equations(data[k], g, q, photo[k], nr, huber, nc, before[k], forward),
                           range(len(data)))
    for k, (sample, eq) in enumerate(zip(data, equations)):
        n_tot += len(sample.u)
        n_in_tot += eq.n_inside
        if eq.jtj is None:
            continue
        o = 8 + nr + nc + 2 * npb * k
        idx = np.r_[0 : 8 + nr + nc, o : o + 2 * npb]
        ata[np.ix_(idx, idx)] += eq.jtj
        atb[idx] += eq.jtr
        sxy, sxx, syy = sxy + eq.sxy, sxx + eq.sxx, syy + eq.syy
        cost, cost_before = cost + eq.cost, cost_before + eq.cost_before
        n_cost += eq.n_inside
    corr = sxy / np.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0
    # per sample of the channels with equations (one with too few px inside has no cost)
    per = 1.0 / max(n_cost, 1)
    return _SummedEquations(ata, atb, cost * per, cost_before * per, [eq.threshold for eq in equations], float(corr),
                            n_in_tot / max(n_tot, 1), n_in_tot, n_cost)


def _gn_solve(eq: _SummedEquations, damping: float = 0.0) -> np.ndarray:
    """The Gauss-Newton step of the summed equations, damped as Levenberg-Marquardt's
    (``damping`` times the diagonal added; 0: plain Gauss-Newton)."""
    ata = eq.ata.copy()
    n_par = len(eq.atb)
    # tiny ridge for channels that dropped out entirely
    ata[np.diag_indices_from(ata)] += 1e-12 * (np.trace(ata) / n_par + 1e-30) + damping * np.diag(eq.ata)
    try:
        return np.linalg.solve(ata, eq.atb)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(ata, eq.atb, rcond=None)[0]


@dataclass
class _Frame:
    """The normalised frame of :func:`gn_refine`: ``n = (z - c) / s`` with c the frame
    centre and s half its longer side; ``nmat`` / ``ninv`` map frame px to n and back;
    corners_u / corners_v: the frame corners in n."""

    cx: float
    cy: float
    sc: float
    nmat: np.ndarray
    ninv: np.ndarray
    corners_u: np.ndarray
    corners_v: np.ndarray

    @classmethod
    def of(cls, frame_shape: tuple[int, int]) -> "_Frame":
        rows, cols = frame_shape
        cx, cy = (cols - 1) / 2.0, (rows - 1) / 2.0
        sc = max(cols, rows) / 2.0
        nmat = np.array([[1 / sc, 0, -cx / sc], [0, 1 / sc, -cy / sc], [0, 0, 1]])
        return cls(cx, cy, sc, nmat, np.linalg.inv(nmat), np.array([-1.0, 1.0, 1.0, -1.0]) * (cx / sc),
                   np.array([-1.0, -1.0, 1.0, 1.0]) * (cy / sc))


@dataclass
class _ChannelSamples:
    """One channel's template px in :func:`gn_refine`: normalised frame coordinates (u, v),
    template values, the photometric polynomial basis at them, and the channel."""

    u: np.ndarray
    v: np.ndarray
    values: np.ndarray
    basis: np.ndarray
    channel: Channel


#: the share of a channel's samples, when it has more px than :func:`gn_refine` may
#: use, taken where the template's gradient is strongest (the rest drawn at random
#: from the others, so the photometric polynomial still sees the whole frame).  A
#: px constrains the geometry by its gradient; on soft scenes most random samples
#: lie in flat px and add only noise.  Measured on the broadened benchmark's 36
#: homography pairs (docs/alignment.md, #11's sixth stop): random samples 0.028 /
#: 0.095 px (median / p90 corner error), half by gradient 0.024 / 0.090.
INFORMATIVE_SHARE = 0.5


#: the informative samples are chosen per cell of a SAMPLE_GRID x SAMPLE_GRID grid over
#: the channel, each cell's share in proportion to its px: chosen over the whole frame,
#: they left a flat corner to the random half alone, and at 12 MP (a twelfth of the px
#: sampled) the homography tilted there (a Boston pair 1.6 px off in its sky corner
#: before the local field, 0.71 px with the grid, 0.24 px with every px sampled; a soft
#: Blackmagic landscape kept 1.28 px off, now 0.60).  1 (one cell) chooses over the frame.
SAMPLE_GRID = 16


def _informative_samples(ch: Channel, ys: np.ndarray, xs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic half of a channel's sample subset: the indices (into ys, xs) of the
    ``INFORMATIVE_SHARE`` of ``n`` with the largest squared template gradient, chosen in
    each cell of the ``SAMPLE_GRID`` over the channel's grid (each cell's share in
    proportion to its px, rounded down: up to SAMPLE_GRID^2 fewer), and the indices of
    the others (the pool the rest is drawn from) -> (top, others)."""
    n_top = int(n * INFORMATIVE_SHARE)
    energy = ch.gradient_energy[ys, xs]
    h, w = ch.gradient_energy.shape
    # cell (i, j) holds rows i h / SAMPLE_GRID to (i + 1) h / SAMPLE_GRID (their floor),
    # columns likewise: each row's and column's place read from a table
    row_cell = (np.arange(h) * SAMPLE_GRID // h * SAMPLE_GRID).astype(np.uint16)
    col_cell = (np.arange(w) * SAMPLE_GRID // w).astype(np.uint16)
    cell = row_cell[ys] + col_cell[xs]
    order = np.argsort(cell, kind="stable")  # a radix sort for 16-bit keys
    counts = np.bincount(cell, minlength=SAMPLE_GRID * SAMPLE_GRID)
    quota = (counts * (n_top / len(xs))).astype(np.int64)
    picks = [np.zeros(0, np.int64)]
    falling = -energy[order]  # (the cells' px one after another)
    for end, count, q in zip(np.cumsum(counts), counts, quota):
        if q > 0:
            members = order[end - count : end]  # this cell's px
            picks.append(members[np.argpartition(falling[end - count : end], q - 1)[:q]])
    top = np.concatenate(picks)
    others = np.ones(len(xs), bool)
    others[top] = False
    return top, np.flatnonzero(others)


def _with_random(top: np.ndarray, others: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """The informative indices ``top`` and ``n`` less the informative share drawn from
    ``others`` without replacement (one ``rng.choice``), sorted."""
    # (the random half keeps its size: refilling the cells' rounding deficit with random
    # px changes every random draw, and a distortion colour-chart pair of the 1 MP
    # benchmark flips to a rejection on such a draw)
    return np.sort(np.concatenate([top, rng.choice(others, n - int(n * INFORMATIVE_SHARE), replace=False)]))


def _channel_samples(channels: list[Channel], frame: _Frame, gain_degree: int,
                     max_pixels: int | None) -> list[_ChannelSamples]:
    """The template px of every channel with at least 64 in its mask, at most
    ``max_pixels`` in all (a fixed subset of each channel beyond that: its informative
    samples, :func:`_informative_samples`, and a random rest, :func:`_with_random`).  The channels' px and informative samples are found side by
    side (:func:`alignment.threads.thread_map`); the random draws are made in channel
    order from one stream, so the subsets do not depend on the threads."""
    rng = np.random.default_rng(12345)
    per_channel = None if max_pixels is None else max(64, max_pixels // max(len(channels), 1))

    def candidates(ch: Channel) -> tuple | None:
        ys, xs = np.nonzero(ch.mask)
        if len(xs) < 64:
            return None
        pools = _informative_samples(ch, ys, xs, per_channel) if per_channel is not None and len(xs) > per_channel \
            else None
        return ys, xs, pools

    found = thread_map(candidates, channels)
    # the draws in channel order, as one stream
    chosen = [None if c is None or c[2] is None else _with_random(*c[2], per_channel, rng) for c in found]

    def samples(ch: Channel, c: tuple, sel: np.ndarray | None) -> _ChannelSamples:
        ys, xs, _ = c
        if sel is not None:
            ys, xs = ys[sel], xs[sel]
        tvals = ch.template[ys, xs].astype(np.float64)
        tf = ch.to_frame
        fx = tf[0, 0] * xs + tf[0, 1] * ys + tf[0, 2]
        fy = tf[1, 0] * xs + tf[1, 1] * ys + tf[1, 2]
        u = (fx - frame.cx) / frame.sc
        v = (fy - frame.cy) / frame.sc
        return _ChannelSamples(u, v, tvals, _poly_basis(u, v, gain_degree), ch)

    data = thread_map(lambda k: samples(channels[k], found[k], chosen[k]),
                      [k for k, c in enumerate(found) if c is not None])
    if not data:
        raise ValueError("too few template pixels inside the mask")
    return data


@dataclass
class _ChannelEquations:
    """One channel's share of a Gauss-Newton step: the weighted normal equations over its
    parameters (the 8 homography and ``nr`` radial ones, then its gain and offset), how
    many of its px landed inside the image, and the sums of its correlation."""

    n_inside: int
    jtj: np.ndarray | None = None
    jtr: np.ndarray | None = None
    sxy: float = 0.0
    sxx: float = 0.0
    syy: float = 0.0
    cost: float = 0.0
    cost_before: float = 0.0
    threshold: float | None = None


def _channel_equations(sample: _ChannelSamples, g: np.ndarray, q: np.ndarray, photo: np.ndarray, nr: int,
                       huber: float | None, nc: int = 0, threshold_before: float | None = None,
                       forward: bool = True) -> _ChannelEquations:
    """Linearise one channel's model ``a(x) * I(H x) + b(x)`` at the current homography
    (g: normalised frame -> image px), radial coefficients q and photometric parameters
    ``photo`` (gain then offset coefficients); no equations (``jtj`` None) when fewer
    than 64 of its px land inside the image.  Its robust cost (Huber's, the threshold
    ``huber`` robust sigmas of the residual here) comes with the cost under
    ``threshold_before`` (None: this threshold)."""
    ch = sample.channel
    u0, v0, pb = sample.u, sample.v, sample.basis
    npb = pb.shape[1]
    ih, iw = ch.image.shape[:2]
    (u, v), (du0, dv0, rho2, fac) = _lens_terms(q, u0, v0, forward)
    mx, my, w = apply_homography_xy(g, u, v)
    inside = (w > 0) & (mx >= 2) & (my >= 2) & (mx <= iw - 3) & (my <= ih - 3)
    if ch.mask_has_holes:
        inside &= sample_points(ch.image_mask_f32, mx, my, cv2.INTER_NEAREST) > 0
    n_in = int(inside.sum())
    if n_in < 64:
        return _ChannelEquations(n_in)
    mxi, myi = mx[inside], my[inside]
    # the value and the Jacobian's gradients through the same exact cubic spline
    iv, gxv, gyv = sample_spline_gradient(ch.coefficients, mxi, myi)
    uu, vv, ww = u[inside], v[inside], w[inside]
    X, Y = mxi, myi
    pbi = pb[inside]
    gain, offset = photo[:npb], photo[npb:]
    a = pbi @ gain
    pred = a * iv + pbi @ offset
    t_in = sample.values[inside]
    r = t_in - pred
    j00 = (g[0, 0] - X * g[2, 0]) / ww
    j01 = (g[0, 1] - X * g[2, 1]) / ww
    j10 = (g[1, 0] - Y * g[2, 0]) / ww
    j11 = (g[1, 1] - Y * g[2, 1]) / ww
    ag_x = a * gxv
    ag_y = a * gyv
    hx = ag_x * j00 + ag_y * j10
    hy = ag_x * j01 + ag_y * j11
    s = hx * uu + hy * vv
    kk = None
    if huber is not None:
        scale = 1.4826 * np.median(np.abs(r - np.median(r))) + 1e-12
        kk = huber * scale
        ar = np.abs(r)
        root_w = np.sqrt(np.where(ar <= kk, 1.0, kk / np.maximum(ar, 1e-12)))
    else:
        root_w = np.ones_like(r)
    if nr or nc:
        r2i = rho2[inside]
        dui, dvi = du0[inside], dv0[inside]
    if nr:
        base = hx * dui + hy * dvi
        # the factor's derivatives along q1 and q2 (q3, q4 follow them, lens_coefficients)
        cj = _lens_coefficient_jacobian(q, forward)
        dfac = [r2i * (cj[0, k] + r2i * (cj[1, k] + r2i * (cj[2, k] + r2i * cj[3, k]))) for k in range(nr)]
    if nc:
        # the undistorted point's derivatives along the lens centre
        one_minus = 1.0 - fac[inside]
        c = _lens_coefficients(q, forward)
        slope = 2.0 * (c[0] + r2i * (2.0 * c[1] + r2i * (3.0 * c[2] + r2i * 4.0 * c[3])))
        duu, dvv, duv = one_minus - slope * dui * dui, one_minus - slope * dvi * dvi, -slope * dui * dvi
    o = 8 + nr + nc
    n_par = o + 2 * npb
    jtj = np.zeros((n_par, n_par))
    jtr = np.zeros(n_par)
    # the Jacobian transposed (one parameter per row, its rows written and multiplied
    # along contiguous memory), weighted by the roots of the Huber weights, built and
    # multiplied _EQUATION_BLOCK samples at a time: a block stays in the cache, where a
    # plane's 250 000 samples made 44 MB, written and then read twice
    block = np.empty((n_par, min(n_in, _EQUATION_BLOCK)))
    for a in range(0, n_in, _EQUATION_BLOCK):
        b = min(a + _EQUATION_BLOCK, n_in)
        jac = block[:, : b - a]
        hxb, hyb, ub, vb, sb = hx[a:b], hy[a:b], uu[a:b], vv[a:b], s[a:b]
        jac[0] = hxb * ub
        jac[1] = hxb * vb
        jac[2] = hxb
        jac[3] = hyb * ub
        jac[4] = hyb * vb
        jac[5] = hyb
        jac[6] = -sb * ub
        jac[7] = -sb * vb
        for k in range(nr):
            jac[8 + k] = base[a:b] * dfac[k][a:b]
        if nc:
            jac[8 + nr] = hxb * duu[a:b] + hyb * duv[a:b]
            jac[8 + nr + 1] = hxb * duv[a:b] + hyb * dvv[a:b]
        pbt = pbi[a:b].T
        jac[o : o + npb] = pbt * iv[a:b]
        jac[o + npb :] = pbt
        jac *= root_w[a:b]
        jtj += jac @ jac.T
        jtr += jac @ (r[a:b] * root_w[a:b])
    tc = t_in - t_in.mean()
    pc = pred - pred.mean()
    cost = _huber_cost(r, kk)
    cost_before = cost if threshold_before is None or threshold_before == kk else _huber_cost(r, threshold_before)
    return _ChannelEquations(n_in, jtj, jtr, float(tc @ pc), float(tc @ tc), float(pc @ pc), cost, cost_before, kk)


#: the samples of one block of :func:`_channel_equations`' Jacobian (22 rows of float64
#: at most: 5.6 MB)
_EQUATION_BLOCK = 32_768


def _huber_cost(r: np.ndarray, threshold: float | None) -> float:
    """Huber's cost of the residuals ``r``: r^2 / 2 within ``threshold``, linear beyond
    (None: least squares)."""
    a = np.abs(r)
    if threshold is None:
        return float(0.5 * (a @ a))
    inner = np.minimum(a, threshold)
    return float(0.5 * (inner @ inner) + threshold * np.sum(a - inner))


def lens_undistort(q: np.ndarray, u: np.ndarray, v: np.ndarray, forward: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Normalised frame points (u, v) undistorted by the lens model ``q`` = (q1, q2[, eu,
    ev]): about the centre e = (eu, ev) (normalised units; 0 when absent), ``n = z - e``,
    ``z_u = e + n (1 + q1 |n|^2 + q2 |n|^4 + q3 |n|^6 + q4 |n|^8)`` with (q3, q4) those
    of :func:`lens_coefficients`, the undistortion of a forward lens (``forward``; False:
    q3 = q4 = 0, the plain polynomial of :func:`refine_homography`'s luminance stage)."""
    return _lens_terms(q, u, v, forward)[0]


def lens_coefficients(q1: float, q2: float) -> np.ndarray:
    """The four undistortion coefficients (q1, q2, q3, q4) of the lens model (q1, q2): a
    real lens is described by a forward model, the distorted radius a polynomial of the
    undistorted one, ``r_d = r_u (1 + k1 r_u^2 + k2 r_u^4)`` (OpenCV, DNG's
    WarpRectilinear, the simulator), and its undistortion is the series
    ``r_u = r_d (1 + q1 r_d^2 + q2 r_d^4 + q3 r_d^6 + q4 r_d^8 + ...)`` with q1 = -k1,
    q2 = 3 k1^2 - k2, q3 = 8 k1 k2 - 12 k1^3, q4 = 55 k1^4 - 55 k1^2 k2 + 5 k2^2.  The
    model's two free parameters are q1 and q2; q3 and q4 follow from them.  Two free
    terms of the undistortion alone (before #11's thirty-second stop) left a strong
    barrel lens (80 px at the corner) 0.67 px off at a 12 MP frame's corners when fitted
    where tiles reach 0.91 of the half-diagonal; the series 0.09 px, with no more
    parameters (a free third term ran off where a sky left the rim empty:
    docs/alignment.md)."""
    k1, k2 = -q1, 3.0 * q1 * q1 - q2
    return np.array([q1, q2, 8.0 * k1 * k2 - 12.0 * k1**3, 55.0 * k1**4 - 55.0 * k1 * k1 * k2 + 5.0 * k2 * k2])


def lens_coefficient_jacobian(q1: float, q2: float) -> np.ndarray:
    """(4, 2) derivatives of :func:`lens_coefficients` along (q1, q2)."""
    k1, k2 = -q1, 3.0 * q1 * q1 - q2
    dk = np.array([[-1.0, 0.0], [6.0 * q1, -1.0]])  # d(k1, k2) / d(q1, q2)
    d3 = np.array([8.0 * k2 - 36.0 * k1 * k1, 8.0 * k1]) @ dk
    d4 = np.array([220.0 * k1**3 - 110.0 * k1 * k2, -55.0 * k1 * k1 + 10.0 * k2]) @ dk
    return np.array([[1.0, 0.0], [0.0, 1.0], d3, d4])


def _lens_coefficients(q: np.ndarray, forward: bool) -> np.ndarray:
    """(q1, q2, q3, q4) of the lens model ``q`` (its first two entries) in its form."""
    if forward:
        return lens_coefficients(float(q[0]), float(q[1]))
    return np.array([q[0], q[1], 0.0, 0.0], np.float64)


def _lens_coefficient_jacobian(q: np.ndarray, forward: bool) -> np.ndarray:
    """(4, 2) derivatives of :func:`_lens_coefficients` along (q1, q2)."""
    if forward:
        return lens_coefficient_jacobian(float(q[0]), float(q[1]))
    return np.eye(4, 2)


def forward_from_plain(q: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """The forward lens model (:func:`lens_coefficients`) closest to the plain two-term
    polynomial ``q`` = (q1, q2[, eu, ev]) (the luminance stage's, ``forward=False``) over
    the frame of ``frame_shape`` (rows, cols): the radial displacement of the two matched
    in least squares out to the frame's corners (radii weighted by the area they cover),
    the centre kept -> the same layout."""
    q = np.asarray(q, np.float64)
    out = q.copy()
    if not (q[0] or q[1]):
        return out
    rows, cols = frame_shape
    reach = np.hypot(rows, cols) / max(rows, cols)  # the corner's radius, normalised units
    r2 = np.linspace(0.0, reach, 65)[1:] ** 2
    weight = np.sqrt(r2)  # the ring's area
    powers = np.stack([r2 ** (k + 1) for k in range(4)], 1) * np.sqrt(r2)[:, None]  # displacement per coefficient
    target = powers[:, :2] @ q[:2]
    x = q[:2].copy()
    for _ in range(8):  # Gauss-Newton on (q1, q2): the higher terms are small
        resid = (target - powers @ lens_coefficients(*x)) * weight
        jac = (powers @ lens_coefficient_jacobian(*x)) * weight[:, None]
        step = np.linalg.lstsq(jac, resid, rcond=None)[0]
        x += step
        if np.max(np.abs(step)) < 1e-12:
            break
    out[:2] = x
    return out


def _lens_terms(q: np.ndarray, u: np.ndarray, v: np.ndarray, forward: bool = True) -> tuple[tuple, tuple]:
    """:func:`lens_undistort` and its intermediates -> ((u_u, v_u), (n_u, n_v, |n|^2, the
    factor 1 + q1 |n|^2 + ... + q4 |n|^8)) for the Jacobian."""
    if len(q) > 3 and (q[2] or q[3]):
        eu, ev = float(q[2]), float(q[3])
        du, dv = u - eu, v - ev
    else:
        eu = ev = 0.0
        du, dv = u, v
    r2 = du * du + dv * dv
    if q[0] or q[1]:
        c = _lens_coefficients(q, forward)
        fac = 1.0 + r2 * (c[0] + r2 * (c[1] + r2 * (c[2] + r2 * c[3])))
    else:
        fac = np.ones_like(r2)
    return (eu + du * fac, ev + dv * fac), (du, dv, r2, fac)


def _apply_update(h: np.ndarray, q: np.ndarray, dp: np.ndarray, nr: int,
                  frame: _Frame, nc: int = 0, forward: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """The step ``dp`` applied to the homography (composed in the normalised frame), the
    radial coefficients and (``nc`` = 2) the lens centre -> (H, q, how far the step moved
    a frame corner in image px)."""
    d = np.array([[dp[0], dp[1], dp[2]], [dp[3], dp[4], dp[5]], [dp[6], dp[7], 0.0]])
    q_new = q.copy()
    q_new[:nr] += dp[8 : 8 + nr]
    if nc:
        q_new[2:4] += dp[8 + nr : 8 + nr + nc]
    h_new = h @ frame.ninv @ (np.eye(3) + d) @ frame.nmat
    h_new /= h_new[2, 2]
    cu, cv_ = frame.corners_u, frame.corners_v
    x0, y0, _ = apply_homography_xy(h @ frame.ninv, *lens_undistort(q, cu, cv_, forward))
    x1, y1, _ = apply_homography_xy(h_new @ frame.ninv, *lens_undistort(q_new, cu, cv_, forward))
    return h_new, q_new, float(np.max(np.hypot(x1 - x0, y1 - y0)))


def _gn_level(
    template: np.ndarray,
    tmask: np.ndarray,
    image: np.ndarray,
    imask: np.ndarray | None,
    h: np.ndarray,
    max_iter: int,
    tol_px: float,
    gain_degree: int,
    huber: float | None,
    max_pixels: int | None = 150_000,
    radial: int = 0,
    q0: np.ndarray | None = None,
    gauss_filt_size: int = 1,
    forward_lens: bool = True,
    stop: threading.Event | None = None,
    series: bool = False,
    min_step_sigmas: float | None = None,
) -> EccResult:
    """Gauss-Newton at one pyramid level (one channel). See :func:`gn_refine`
    (``gauss_filt_size`` is OpenCV's and not used)."""
    return gn_refine(
        [Channel(template, tmask, image, imask)], h, template.shape, max_iter, tol_px, gain_degree, huber, max_pixels,
        radial, q0, forward_lens=forward_lens, stop=stop, series=series, min_step_sigmas=min_step_sigmas,
    )


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    out = cv2.erode(mask.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool)


def _border_mask(shape: tuple[int, int], radius: int, mask: np.ndarray | None) -> np.ndarray:
    """Erode the mask (and the image border) by ``radius`` px: no pixel whose
    filtered value used extrapolated or unmeasured data remains."""
    m = np.ones(shape, bool) if mask is None else mask.astype(bool)
    return _erode(m, max(int(radius), 1))


def _area_down(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    h2, w2 = h // 2, w // 2
    return cv2.resize(img[: 2 * h2, : 2 * w2], (w2, h2), interpolation=cv2.INTER_AREA)


def _mask_down(mask: np.ndarray | None, level: int) -> np.ndarray | None:
    """The mask of pyramid ``level`` from the level below: level 1 keeps a px only when
    all four px under it are valid; coarser levels when at least half the area is
    (scattered invalid px would otherwise empty the coarse levels, where only the
    basin of convergence is at stake; level 1 and the full-resolution stages stay
    exact)."""
    if mask is None:
        return None
    return _area_down(mask.astype(np.float32)) > (0.999 if level <= 1 else 0.5)


def _local_scale(h: np.ndarray, shape: tuple[int, int]) -> float:
    """Geometric-mean linear scale (image px per template px) at the template centre."""
    rows, cols = shape
    x, y = (cols - 1) / 2.0, (rows - 1) / 2.0
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    X = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w
    Y = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
    j = np.array(
        [[(h[0, 0] - X * h[2, 0]) / w, (h[0, 1] - X * h[2, 1]) / w], [(h[1, 0] - Y * h[2, 0]) / w, (h[1, 1] - Y * h[2, 1]) / w]]
    )
    return float(np.sqrt(abs(np.linalg.det(j))))


def prepare_level_pair(
    template: np.ndarray,
    image: np.ndarray,
    h: np.ndarray,
    template_mask: np.ndarray | None,
    image_mask: np.ndarray | None,
    blur_sigma: float,
    norm_sigma: float | None,
    aperture: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Filter one template/image pair consistently, in the template's units.

    The template gets a Gaussian of ``blur_sigma`` (template px); the image gets
    the same blur expressed in its own px (times the local scale ``s``) plus the
    box-footprint difference of the two pixel grids, variance
    ``aperture**2 * (s**2 - 1) / 12`` (image px**2), when the image is the finer
    grid.  Local normalisation windows are ``norm_sigma`` template px and
    ``norm_sigma * s`` image px.  The template mask is eroded by the extent of the
    filters so that no reflected-border value is used as data (opencv #29774).
    Returns (template', template_mask', image', image_mask').
    """
    s = _local_scale(h, template.shape)
    t, tm2 = filter_template(template, template_mask, blur_sigma, norm_sigma)
    im, imk2 = filter_image(image, image_mask, s, blur_sigma, norm_sigma, aperture)
    return t, tm2, im, imk2


def filter_template(
    template: np.ndarray, template_mask: np.ndarray | None, blur_sigma: float, norm_sigma: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The template half of :func:`prepare_level_pair` -> (template', eroded mask)."""
    t = _gauss(template.astype(np.float32), blur_sigma)
    if norm_sigma:
        t = local_normalize(t, norm_sigma, template_mask)
    radius = int(np.ceil(3 * blur_sigma)) + 1
    return t, _border_mask(template.shape, radius, template_mask)


def filter_image(
    image: np.ndarray,
    image_mask: np.ndarray | None,
    scale: float,
    blur_sigma: float,
    norm_sigma: float | None,
    aperture: float = 1.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The image half of :func:`prepare_level_pair` at local scale ``scale`` (image px
    per template px) -> (image', eroded mask or None)."""
    var_img = (blur_sigma * scale) ** 2 + max(scale * scale - 1.0, 0.0) * aperture**2 / 12.0
    sig_img = float(np.sqrt(var_img))
    im = _gauss(image.astype(np.float32), sig_img)
    if norm_sigma:
        im = local_normalize(im, norm_sigma * scale, image_mask)
    imk2 = None if image_mask is None else _erode(image_mask, int(np.ceil(3 * sig_img)) + 1)
    return im, imk2


def refine_homography(
    template: np.ndarray,
    image: np.ndarray,
    h0: np.ndarray,
    template_mask: np.ndarray | None = None,
    image_mask: np.ndarray | None = None,
    *,
    method: str = "gn",
    levels: int = 3,
    blur_sigma: float = 0.7,
    norm_sigma: float | None = 12.0,
    max_iter: int = 30,
    tol_px: float = 1e-4,
    gain_degree: int = 1,
    huber: float | None = 3.0,
    gauss_filt_size: int = 1,
    aperture: float = 1.0,
    min_level: int = 0,
    radial: int = 0,
    q0: np.ndarray | None = None,
    skip_failed_levels: bool = False,
    forward_lens: bool = True,
    stop: threading.Event | None = None,
    level_done: Callable[[EccResult, bool], None] | None = None,
    template_select: np.ndarray | None = None,
    hand_over_sigmas: float | None = None,
) -> EccResult:
    """Refine ``h0`` (template px -> image px) coarse to fine.

    template: (H, W) float32 linear luminance on the template grid (phone).
    image: (h, w) float32 linear luminance (DSLR).  Masks: bool, True = measured.
    method: "gn" (our Gauss-Newton, unbiased) or "opencv" (cv2.findTransformECC).
    levels: number of 2x coarser levels above the finest (fewer when images are small).
    blur_sigma: common pre-blur in template px (matched in the image, see
        :func:`prepare_level_pair`).  norm_sigma: local normalisation window in
        template px at every level (None: off).  gain_degree: polynomial degree
        (0..2) of the gain and offset of the photometric model ("gn" only).
    huber: Huber threshold in robust standard deviations (None: least squares).
    gauss_filt_size: OpenCV's own pre-filter size ("opencv" only); 1 disables it.
    min_level: the finest level to run (0 = full resolution; 1 when a finer
    stage such as :func:`refine_planes` follows).
    radial / q0: radial distortion coefficients estimated with H (see
    :func:`gn_refine`; the template grid is the frame); forward_lens: their form
    (:func:`lens_undistort`; the pipeline's luminance stage, which starts far from its
    end, takes the plain polynomial: its two terms of the forward form ran a 12 MP
    Eiffel lens pair off to q = (-0.05, 0.08), 6 px off at the corners, where the plain
    form found the lens; :func:`forward_from_plain` carries it over).
    skip_failed_levels: a level coarser than the finest that fails (too few of its
    samples land in the image at the level's start; a step that would throw them off
    is refused since #11's seventeenth stop, :func:`gn_refine`) is skipped, the next
    level starting from the same model (False: the failure is raised, so that a caller
    with other starts tries those first).
    stop: when set (by another thread), the refinement raises :class:`EccStopped` at its
    next level or Gauss-Newton step (a start run ahead in the background whose result
    is no longer wanted).  level_done: called after each level that ran with its
    result (on that level's grids) and whether it was the last level.
    template_select: bool, True = compared; template px whose data are measured but
    that are left out of the comparison (what does not follow the background,
    :func:`alignment.trust.dominant_motion`).  Unlike ``template_mask`` (unmeasured
    data, eroded by the filters' reach at every level), it is not eroded: a filter may
    read those px.  Eroded as a mask, a 12 MP Eiffel pair's scattered holes (3 % of the
    frame) left 41 % of its coarsest level (63 x 84 px) to compare, and ECC ran off
    there (docs/alignment.md, #11's thirty-sixth stop).
    hand_over_sigmas: each level ("gn") ends once a plain Gauss-Newton step is shorter
    than this many standard errors of that level's noise, and takes the rest of a
    linearly converging series of steps in one (:func:`gn_refine`'s ``min_step_sigmas``
    and ``series``): for a caller whose next stage refines the result on finer data
    anyway, as the next level does a coarser one's (None: every level runs to its
    ``tol_px``, 1e-3 px at the coarse levels).
    Returns an :class:`EccResult`; raises ValueError when the overlap vanishes.
    """
    level = ECC_METHODS.get(method)
    if level is None:
        raise ValueError(f"unknown ECC method {method!r} (choices: {', '.join(ECC_METHODS)})")
    if radial and method != "gn":
        raise ValueError("radial distortion needs method='gn'")
    h = np.asarray(h0, np.float64).copy()
    h /= h[2, 2]
    q = np.zeros(2) if q0 is None else np.asarray(q0, np.float64).copy()
    # pyramids
    tpyr = [template.astype(np.float32)]
    tmpyr = [template_mask if template_mask is None else template_mask.astype(bool)]
    spyr = [template_select if template_select is None else template_select.astype(bool)]
    while len(tpyr) <= levels and min(tpyr[-1].shape) >= 96:
        tpyr.append(_area_down(tpyr[-1]))
        tmpyr.append(_mask_down(tmpyr[-1], len(tmpyr)))
        spyr.append(_mask_down(spyr[-1], len(spyr)))
    ipyr = [image.astype(np.float32)]
    impyr = [image_mask if image_mask is None else image_mask.astype(bool)]
    iters: list[int] = []
    converged = False
    corr = 0.0
    valid = 0.0
    last = min(min_level, len(tpyr) - 1)
    for lvl in range(len(tpyr) - 1, last - 1, -1):
        _check_stop(stop)
        pt = pyramid_down_matrix(lvl)
        # choose the image level so that the image is at most ~2x finer than the template
        s = _local_scale(h @ pt, tpyr[lvl].shape)
        m = max(0, int(np.floor(np.log2(max(s, 1e-6)))))
        while len(ipyr) <= m and min(ipyr[-1].shape) >= 32:
            ipyr.append(_area_down(ipyr[-1]))
            impyr.append(_mask_down(impyr[-1], len(impyr)))
        m = min(m, len(ipyr) - 1)
        pi = pyramid_down_matrix(m)
        hl = np.linalg.inv(pi) @ h @ pt
        hl /= hl[2, 2]
        t, tm, im, imk = prepare_level_pair(
            tpyr[lvl], ipyr[m], hl, tmpyr[lvl], impyr[m], blur_sigma, norm_sigma, aperture
        )
        if spyr[lvl] is not None:
            tm = tm & spyr[lvl]
        # (1e-2 here cost a sky-heavy Boston pair of the trust benchmark its background:
        # precision 0.96 -> 0.34; the later stages do not always recover a coarse start)
        try:
            r = level(t, tm, im, imk, hl, max_iter, tol_px if lvl == 0 else 1e-3, gain_degree, huber,
                      None if lvl == 0 else 150_000, radial, q, gauss_filt_size=gauss_filt_size,
                      forward_lens=forward_lens, stop=stop, series=hand_over_sigmas is not None,
                      min_step_sigmas=hand_over_sigmas)
        except ValueError:
            if not skip_failed_levels or lvl == last:
                raise
            # a coarse level whose samples miss the image from its start (a page of text on
            # paper the DSLR clipped: its coarse levels keep 6 % of the samples, a few
            # blurred strokes; before steps that raise the cost were refused, one step from
            # them also left a 222-inlier start): the finer level starts from the same model
            continue
        if level_done is not None:
            level_done(r, lvl == last)
        iters += r.iterations
        converged, corr, valid, q = r.converged, r.correlation, r.valid_fraction, r.radial
        h = pi @ r.homography @ np.linalg.inv(pt)
        h /= h[2, 2]
    return EccResult(
        homography=h, correlation=float(corr), iterations=iters, converged=converged, valid_fraction=valid, radial=q
    )


def _opencv_level(
    template: np.ndarray,
    tmask: np.ndarray,
    image: np.ndarray,
    imask: np.ndarray | None,
    h: np.ndarray,
    max_iter: int,
    tol_px: float = 1e-4,
    gain_degree: int = 1,
    huber: float | None = None,
    max_pixels: int | None = None,
    radial: int = 0,
    q0: np.ndarray | None = None,
    gauss_filt_size: int = 1,
    forward_lens: bool = True,
    stop: threading.Event | None = None,
    series: bool = False,
    min_step_sigmas: float | None = None,
) -> EccResult:
    """One level of cv2.findTransformECCWithMask (template and image masks); the
    arguments of :func:`_gn_level` that OpenCV has no use for are ignored (``stop``
    is looked at between levels only; ``series`` and ``min_step_sigmas`` are
    Gauss-Newton's), and a radial model is refused."""
    if radial:
        raise ValueError("radial distortion needs method='gn'")
    warp = h.astype(np.float32)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, max_iter, 1e-8)
    im_mask = np.full(image.shape, 255, np.uint8) if imask is None else imask.astype(np.uint8) * 255
    try:
        _, warp = cv2.findTransformECCWithMask(
            template.astype(np.float32),
            image.astype(np.float32),
            tmask.astype(np.uint8) * 255,
            im_mask,
            warp,
            cv2.MOTION_HOMOGRAPHY,
            crit,
            gauss_filt_size,
        )
    except cv2.error as err:  # depends on data
        raise ValueError(f"OpenCV ECC did not converge: {err}") from err
    hh = warp.astype(np.float64)
    hh /= hh[2, 2]
    warped, inside = warp_to_template(image, hh, template.shape)
    m = tmask & inside
    return EccResult(homography=hh, correlation=correlation(template, warped, m), iterations=[max_iter],
                     converged=True, valid_fraction=float(m.mean()), radial=np.zeros(2) if q0 is None else q0)


#: ECC method name -> the function that runs one pyramid level (``refine_homography(method=...)``)
ECC_METHODS = {"gn": _gn_level, "opencv": _opencv_level}


def prepare_channels(
    targets: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    images: list[np.ndarray],
    image_mask: np.ndarray | None,
    h_image: np.ndarray,
    *,
    blur_sigma: float = 0.7,
    norm_sigma: float | None = None,
    aperture: float = 1.0,
    templates: list[tuple[np.ndarray, np.ndarray]] | None = None,
    relative_blur: float | None = None,
    energies: list[np.ndarray] | None = None,
) -> list[Channel]:
    """One filtered :class:`Channel` per phone target (see :func:`prepare_level_pair`).

    targets: [(values (h, w), valid (h, w), (3,3) target px -> phone image px)];
    images: per target, the (H, W) DSLR image predicting it; image_mask: (H, W)
    bool of measured DSLR px or None; h_image: (3,3) phone image px -> DSLR px
    (sets the matched blur).  The channels' ``to_frame`` is the target's matrix,
    so the homography of :func:`gn_refine` is in phone image px.  templates: the
    filtered (template, mask) of each target from an earlier call with the same
    targets, ``blur_sigma`` and ``norm_sigma`` (they do not depend on the images),
    or None to filter them here.
    relative_blur: None, or the sharp channels of the fine stage (:mod:`alignment.blur`):
    the templates unfiltered and each image blurred by ``relative_blur`` target px (the
    phone's blur relative to the DSLR's; ``blur_sigma``, ``norm_sigma`` and
    ``aperture`` then play no part).  energies: per target, the squared template
    gradient to choose the informative samples by (:attr:`Channel.gradient_energy`
    of filtered channels: an unfiltered template's gradient picks its noise), or None.
    """
    if relative_blur is not None:
        blur_sigma, norm_sigma, aperture = relative_blur, None, 0.0
    scales = [round(_local_scale(h_image @ t_k, values.shape), 3) for values, _, t_k in targets]
    # the same DSLR image at the same scale is filtered once; the templates, the
    # images and the images' spline coefficients are made side by side
    keys = [(id(img), sc) for img, sc in zip(images, scales)]
    unique = {key: (img, sc) for key, img, sc in zip(keys, images, scales)}

    def image_samples(item: tuple[np.ndarray, float]) -> ImageSamples:
        im, imk = filter_image(item[0], image_mask, item[1], blur_sigma, norm_sigma, aperture)
        return ImageSamples(im, imk).compute()

    samples = dict(zip(unique, thread_map(image_samples, unique.values())))
    template_sigma = 0.0 if relative_blur is not None else blur_sigma
    filtered = templates if templates is not None else thread_map(
        lambda tg: filter_template(tg[0], tg[1], template_sigma, norm_sigma), targets)
    return [Channel(t, tm, samples[key].image, samples[key].image_mask, t_k, samples[key], e)
            for (t, tm), key, (_, _, t_k), e in zip(filtered, keys, targets, energies or [None] * len(targets))]


def refine_planes(
    targets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None,
    images: list[np.ndarray] | None,
    image_mask: np.ndarray | None,
    h_image: np.ndarray,
    frame_shape: tuple[int, int],
    *,
    blur_sigma: float = 0.7,
    norm_sigma: float | None = None,
    gain_degree: int = 2,
    huber: float | None = 3.0,
    max_iter: int = 30,
    tol_px: float = 1e-4,
    aperture: float = 1.0,
    max_pixels: int | None = 400_000,
    radial: int = 0,
    q0: np.ndarray | None = None,
    channels: list[Channel] | None = None,
    photo0: list[np.ndarray] | None = None,
    lens_centre: bool = False,
    series: bool = False,
    min_step_sigmas: float | None = None,
    hands_over: Callable[[float, int], bool] | None = None,
) -> EccResult:
    """Finest-level refinement with one channel per phone target (e.g. Bayer plane).

    targets: [(values (h, w), valid (h, w), (3,3) target px -> phone image px)];
    images: per target, the DSLR image predicting it (see
    :func:`alignment.prepare.fit_radiometric`); h_image: (3,3) phone image px ->
    DSLR px; frame_shape: (rows, cols) of the phone image grid.  Each plane is
    compared at its own sampling positions, so a colour edge seen by one plane
    only does not move the estimate.  radial / q0: radial distortion of the phone
    image frame estimated with H (see :func:`gn_refine`; ``lens_centre``: its centre
    too); photo0: the channels'
    starting gain and offset (see :func:`gn_refine`, as ``series``,
    ``min_step_sigmas`` and ``hands_over``).  channels: the
    channels already prepared by :func:`prepare_channels` (then ``targets``,
    ``images``, ``image_mask``, ``blur_sigma``, ``norm_sigma`` and ``aperture``
    are not used), so that repeated refinements filter the images once.
    Returns an :class:`EccResult` with the homography in phone image px (applied
    to undistorted points when ``radial``).
    """
    if channels is None:
        if targets is None or images is None:
            raise ValueError("refine_planes needs targets and images, or prepared channels")
        channels = prepare_channels(
            targets, images, image_mask, h_image, blur_sigma=blur_sigma, norm_sigma=norm_sigma, aperture=aperture
        )
    return gn_refine(channels, h_image, frame_shape, max_iter, tol_px, gain_degree, huber, max_pixels, radial, q0,
                     photo0, lens_centre, series, min_step_sigmas=min_step_sigmas, hands_over=hands_over)
