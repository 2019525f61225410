"""Per-pixel trust: where the target shows the same scene point as the phone pixel.

After the global model (homography, lens, smooth field) what is left is measured
densely on the phone's working grid (one px per CFA cell, or per binned block),
from the same per-plane channels the fine stage compares (each Bayer plane at
its own sampling positions against the DSLR's fitted prediction of it), summed
into one luminance per side (:func:`dense_residual`):

1. **flow**: OpenCV DIS optical flow from the phone to the prediction and back,
   both locally normalised (a local gain and offset: vignetting, colour shading
   and tone do not count), with the forward-backward inconsistency of every px;
2. **agreement**: the local correlation of the phone with the prediction as it
   is and moved by the flow;
3. **texture**: the local variance of the phone over its own noise variance at
   that brightness (the noise read off G1 - G2, which is noise however textured
   the scene).

:func:`evidence` turns these into per-px rules: a textured px *fits the model*,
*moved* (a real flow above ``max_px`` that explains it clearly better: parallax,
motion), is *occluded* (a well textured px that neither explains) or is
*ambiguous* (a flow that explains it no better than the model).  :func:`assess`
adds the regions: flat, faint, ambiguous and unseen px take the verdict of the
textured px they are joined to without crossing an image edge (watershed),
islands enclosed by what moved go with it, dropped regions grow by
``margin_px`` (window measures blur a boundary; a px beside an occlusion edge
is a mixture), and clipping and the frame are marked.  The codes and their
reasons are :data:`REASONS`; :func:`full_resolution_codes` brings them to the
full raw grid for the dataset's mask.

Coordinates: x = column, y = row, pixel centres at integers; ``to_image`` maps
working px to phone image px (the full raw grid).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from alignment.geometry import apply_homography_xy, pixel_centres
from alignment.threads import thread_map

__all__ = ["TrustMap", "TrustParams", "REASONS", "DenseResidual", "PhoneSide", "PhoneSides", "dense_residual", "assess", "evidence", "Evidence", "grow", "dominant_motion", "DominantMotion",
           "upsample_codes", "full_resolution_codes", "fractions"]

#: codes of :attr:`TrustMap.code`; 0 is trusted
REASONS = ("trusted", "outside", "clipped", "occluded", "moved", "unverified")
OUTSIDE, CLIPPED, OCCLUDED, MOVED, UNVERIFIED = 1, 2, 3, 4, 5
#: RGB in [0, 1] of each reason in pictures (:func:`overlay`)
REASON_COLOURS = {OUTSIDE: (0.5, 0.5, 0.5), CLIPPED: (0.0, 1.0, 1.0), OCCLUDED: (1.0, 0.0, 0.0),
                  MOVED: (1.0, 0.5, 0.0), UNVERIFIED: (0.2, 0.3, 1.0)}


def overlay(rgb: np.ndarray, code: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1] with each dropped px tinted by its reason's colour
    (grey outside, cyan clipped, red occluded, orange moved, blue unverified)."""
    out = np.asarray(rgb, np.float32).copy()
    for c, colour in REASON_COLOURS.items():
        sel = code == c
        out[sel] = (1 - strength) * out[sel] + strength * np.asarray(colour, np.float32)
    return out


@dataclass
class TrustParams:
    """Thresholds of :func:`assess` (lengths in phone image px).

    max_px: a flow above this is parallax or motion; max_fb_px: a forward-backward
    disagreement above this is no correspondence; ncc_slack: how far below the
    correlation a correct match reaches at the px's contrast (see :func:`assess`) a
    match may fall; min_gain: how much better the flow must explain a px than the
    model to count as motion; margin_px: dropped regions grow by this; support_px: a
    flat px needs a trusted textured px this close (inf: a flat px joined by the
    watershed to agreeing textured px is trusted however far); flat_snr: local variance over
    noise variance below which a px is flat; mismatch_snr: the least such ratio at
    which a px that does not fit counts as occluded (fainter ones have no say);
    speckle_px: dropped spots narrower than twice this are noise; max_island: kept
    regions smaller than this share of the frame and enclosed by dropped px (not
    touching the frame's edge) are dropped with them; level_tol, level_z,
    level_grow_px: a px whose brightness departs from the prediction's by more than
    ``level_z`` times its noise and ``level_tol`` of the level in quadrature (after
    the smooth gain between the two, see :func:`level_mismatch`) shows something else (inf: no
    such test); those px grow by ``level_grow_px``.
    """

    max_px: float = 1.0
    max_fb_px: float = 1.0
    ncc_slack: float = 0.25
    min_gain: float = 0.1
    margin_px: float = 8.0
    support_px: float = float("inf")
    flat_snr: float = 4.0
    mismatch_snr: float = 10.0
    speckle_px: float = 3.0
    max_island: float = 0.02
    level_tol: float = 0.05
    level_z: float = 3.0
    level_grow_px: float = 3.0
    clip_grow_px: float = 0.0


@dataclass
class TrustMap:
    """Per-px trust on the phone's working grid.

    code: (h, w) uint8, 0 = trusted, else the index of the reason in :data:`REASONS`.
    residual: (h, w, 2) float32 residual displacement (phone image px) measured
        under the model (the optical flow), NaN where nothing was measured.
    sigma: (h, w) float32 its forward-backward inconsistency (phone image px), inf
        where unmeasured.
    ncc: (h, w) float32 local agreement in [-1, 1] (NaN where flat).
    to_image: (3, 3) working px -> phone image px (scale and offset).
    moved_core: (h, w) bool, the px that moved (parallax, motion) before the margin:
        where :mod:`alignment.layers` looks for objects with a model of their own.
    layer: (h, w) int16, the index of the recovered layer whose model maps the px
        (``Alignment.layers``), -1 for the global model.
    by_level: (h, w) bool, the px dropped (as occluded) by :func:`level_mismatch` alone:
        flat px of another brightness, no evidence of motion (the refit keeps them).
    """

    code: np.ndarray
    residual: np.ndarray
    sigma: np.ndarray
    ncc: np.ndarray
    to_image: np.ndarray
    moved_core: np.ndarray | None = None
    layer: np.ndarray | None = None
    by_level: np.ndarray | None = None

    def _cells(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the working px whose block holds each of (N, 2) phone image px
        (clipped to the grid; at integer px the cells :meth:`full` gives them)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        h, w = self.code.shape
        return (_cell_index(xy[:, 1], self.to_image[1, 1], self.to_image[1, 2], h),
                _cell_index(xy[:, 0], self.to_image[0, 0], self.to_image[0, 2], w))

    def layer_of(self, xy: np.ndarray) -> np.ndarray:
        """(N,) layer index (-1: global model) of (N, 2) phone image px: the working px
        whose block holds each point."""
        if self.layer is None:
            return np.full(len(xy), -1, np.int16)
        return self.layer[self._cells(xy)]

    def code_at(self, xy: np.ndarray) -> np.ndarray:
        """(N,) uint8 codes of (N, 2) phone image px: ``full(shape)[y, x]`` at integer
        points inside the frame, without making the full-resolution array."""
        return self.code[self._cells(xy)]

    @property
    def trusted(self) -> np.ndarray:
        """(h, w) bool, working grid."""
        return self.code == 0

    def fractions(self) -> dict[str, float]:
        """Fraction of working px per reason (keys of :data:`REASONS`)."""
        return fractions(self.code)

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """(H, W) uint8 codes on the phone image grid (each working px covers its block)."""
        return upsample_codes(self.code, self.to_image, shape)


def upsample_codes(code: np.ndarray, to_image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest working px of every image px: working px j covers image px
    ``to_image`` maps j - 0.5 .. j + 0.5 onto (a binning block or a CFA cell)."""
    h, w = shape
    cols = _cell_index(np.arange(w), to_image[0, 0], to_image[0, 2], code.shape[1])
    rows = _cell_index(np.arange(h), to_image[1, 1], to_image[1, 2], code.shape[0])
    return code[rows[:, None], cols[None, :]]


def _cell_index(coord: np.ndarray, scale: float, offset: float, n: int) -> np.ndarray:
    """The working px (0 .. n - 1) whose block holds each image px coordinate along one
    axis, the axis's working px -> image px being ``scale * j + offset``."""
    return np.clip(np.floor((coord - offset) / scale + 0.5).astype(int), 0, n - 1)


def _gauss(a: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(a, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)


def _local_moments(t: np.ndarray, m: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised-convolution local mean and variance of t over mask m -> (mean, var, weight)."""
    wsum = _gauss(m, sigma) + 1e-6
    mu = _gauss(t * m, sigma) / wsum
    var = np.maximum(_gauss(t * t * m, sigma) / wsum - mu * mu, 0.0)
    return mu, var, wsum


def _noise_curve(mean: np.ndarray, var: np.ndarray, ok: np.ndarray, bins: int = 24) -> tuple[float, float]:
    """Fit var = a * mean + b to the quiet end of the local variance at each brightness
    (10th percentile per brightness bin): the px noise of the image itself."""
    mu = mean[ok]
    v = var[ok]
    if mu.size < 1000:
        return 0.0, float(np.median(v)) if v.size else 1e-6
    edges = np.unique(np.percentile(mu, np.linspace(1, 99, bins + 1)))
    # each px's bin [lo, hi) (-1: outside), the px grouped by bin with one radix sort of
    # the small bin numbers (the same sets as a mask per bin, without the masks)
    which = np.searchsorted(edges, mu, side="right") - 1
    which[which == len(edges) - 1] = -1
    which = which.astype(np.int8)
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(len(edges)))
    mu_in, v_in = mu[order], v[order]
    xs, ys = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo >= 50:
            xs.append(float(np.median(mu_in[lo:hi])))
            ys.append(float(np.percentile(v_in[lo:hi], 10)))
    if len(xs) < 3:
        return 0.0, float(np.percentile(v, 10))
    a, b = np.polyfit(xs, ys, 1)
    if a < 0:
        a, b = 0.0, float(np.median(ys))
    return float(a), float(max(b, 1e-9))


def _texture_snr(planes: list[np.ndarray], mf: np.ndarray, valid: np.ndarray, window: float) -> np.ndarray:
    """(h, w) local variance of the phone over its own noise variance at that brightness.

    With four Bayer planes (R, G1, G2, B) the noise is read off G1 - G2: the two greens
    see nearly the same scene, so their difference is mostly noise however textured
    the scene (its quiet end per brightness is fitted as ``var = a * mean + b``); the
    texture is the green mean's.  Otherwise the noise is the quiet end of the local
    variance of what a 1 px blur removes.
    """
    if len(planes) == 4:
        g = 0.5 * (planes[1].astype(np.float32) + planes[2].astype(np.float32))
        hp = (planes[1].astype(np.float32) - planes[2].astype(np.float32)) * 0.5  # var = var(G mean noise)
    else:
        g = np.mean([p.astype(np.float32) for p in planes], axis=0)
        hp = _fine_part(g)
    mu, var, a, b = _noise_model(g, hp, mf, valid, window)
    return (var / (a * np.maximum(mu, 0) + b)).astype(np.float32)


def _fine_part(img: np.ndarray) -> np.ndarray:
    """What a 1 px Gaussian blur removes, scaled so that its variance is about the px
    noise variance where the image is smooth: a noise sample of a single image."""
    return (img - cv2.GaussianBlur(img, (0, 0), 1.0)) * 1.5


def _noise_model(signal: np.ndarray, noise_sample: np.ndarray, mf: np.ndarray, valid: np.ndarray,
                 window: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Local mean and variance of ``signal`` (window ``window``, over mask ``mf``) and the
    noise curve ``var = a * mean + b`` fitted to the quiet end of ``noise_sample``'s
    local variance (:func:`_noise_curve`) -> (mean, var, a, b)."""
    mu, var, _ = _local_moments(signal, mf, window)
    _, var_noise, _ = _local_moments(noise_sample, mf, window)
    a, b = _noise_curve(mu, var_noise, valid)
    return mu, var, a, b


@dataclass
class DenseResidual:
    """Output of :func:`dense_residual` on the channels' common grid (working px).

    flow: (h, w, 2) displacement d such that phone px x shows what the DSLR
    prediction shows at x + d (forward optical flow); fb_error: (h, w) forward-
    backward inconsistency |d(x) + d_back(x + d(x))|; ncc: (h, w) local correlation of
    the phone with the prediction moved by d; ncc_model: (h, w) the same without the
    flow (how well the model alone explains the px); both None when the residual was
    measured without them (``dense_residual(correlations=False)``); snr: (h, w) local contrast of the phone
    over its own noise (variance ratio); valid: (h, w) bool, every plane measured;
    planes: the phone planes (h, w) the residual was measured on, or None;
    lum: the two luminances compared (phone, prediction), (h, w) float32 each;
    fb_vector: (h, w, 2) the forward-backward inconsistency as a vector (fb_error is
    its length), or None; phone: the phone's half it was measured with
    (:class:`PhoneSide`: the structure tensor of ``lum[0]`` is kept there), or None.
    :attr:`image` is made from ``planes`` when first asked for (or beside the flows:
    ``dense_residual(picture=True)``).
    """

    flow: np.ndarray
    fb_error: np.ndarray
    ncc: np.ndarray | None
    ncc_model: np.ndarray | None
    snr: np.ndarray
    valid: np.ndarray
    planes: list[np.ndarray] | None = None
    lum: tuple[np.ndarray, np.ndarray] | None = None
    fb_vector: np.ndarray | None = None
    phone: PhoneSide | None = field(default=None, repr=False)
    _image: np.ndarray | None = field(default=None, repr=False)

    @property
    def image(self) -> np.ndarray | None:
        """(h, w, 3) uint8 the phone planes as a picture (R, mean G, B, percentile-stretched,
        gamma-encoded) whose edges bound flat regions; None without planes.  Made on first
        use: only the trust map's flat regions need it, not every residual measured."""
        if self._image is None and self.planes is not None:
            self._image = _picture(self.planes, self.valid)
        return self._image


def _picture(planes: list[np.ndarray], valid: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 of the phone planes: R, mean G, B when there are four planes (R,
    G1, G2, B), else the grey of their mean; 0.5/99.5 percentiles stretched, gamma 1/2.2."""
    if len(planes) == 4:
        rgb = np.stack([planes[0], 0.5 * (planes[1] + planes[2]), planes[3]], -1).astype(np.float32)
    else:
        grey = np.mean([p.astype(np.float32) for p in planes], axis=0)
        rgb = np.repeat(grey[..., None], 3, -1)
    vals = rgb[valid] if valid.any() else rgb.reshape(-1, 3)
    lo, hi = np.percentile(vals, [0.5, 99.5])
    x = np.clip((rgb - lo) / max(hi - lo, 1e-9), 0, 1) ** (1 / 2.2)
    return np.ascontiguousarray((x * 255 + 0.5).astype(np.uint8))


def normalized(img: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Local mean removed and local standard deviation divided out (window ``sigma``,
    normalised convolution over ``mask``): :func:`alignment.ecc.local_normalize`."""
    from alignment.ecc import local_normalize

    return local_normalize(img, sigma, mask)


def _to_u8(img: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Locally normalised (window ``sigma``) image as uint8, +-4 local sigmas -> 0..255."""
    return np.clip(128.0 + 32.0 * normalized(img, mask, sigma), 0, 255).astype(np.uint8)


def optical_flow(a: np.ndarray, b: np.ndarray, patch: int = 8) -> np.ndarray:
    """OpenCV DIS optical flow (medium preset) from uint8 image a to b: (h, w, 2) float32
    d with a(x) ~ b(x + d), in px of the images."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setPatchSize(patch)
    dis.setPatchStride(max(2, patch // 2))
    return dis.calc(a, b, None)


@dataclass
class PhoneSide:
    """The phone's half of :func:`dense_residual`: what it measures from the phone planes
    and the common mask alone, the same whatever model the prediction is warped by.

    templates: the phone planes (the arrays themselves); valid: (h, w) bool, the common
    mask; norm_sigma, window: as in :func:`dense_residual`; lum: (h, w) float32 the
    planes' sum; u8: (h, w) uint8 that sum locally normalised (the flow's input);
    snr: (h, w) float32 the texture measure (:func:`_texture_snr`).  The local moments
    of ``lum`` and its structure tensor are computed on first use and kept."""

    templates: tuple
    valid: np.ndarray
    norm_sigma: float
    window: float
    lum: np.ndarray
    u8: np.ndarray
    snr: np.ndarray
    _moments: tuple | None = field(default=None, repr=False)
    _tensor: tuple | None = field(default=None, repr=False)

    def matches(self, templates: list[np.ndarray], valid: np.ndarray, norm_sigma: float, window: float) -> bool:
        """True for the same plane arrays (identity), the same mask px and the same windows."""
        return (len(templates) == len(self.templates) and all(a is b for a, b in zip(templates, self.templates))
                and norm_sigma == self.norm_sigma and window == self.window and np.array_equal(valid, self.valid))

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, variance, weight) of ``lum`` over the mask, window ``window``
        (:func:`_local_moments`)."""
        if self._moments is None:
            self._moments = _local_moments(self.lum, self.valid.astype(np.float32), self.window)
        return self._moments

    def tensor(self) -> tuple[np.ndarray, ...]:
        """:func:`structure_tensor` of ``lum`` over the mask (its default window)."""
        if self._tensor is None:
            self._tensor = structure_tensor(self.lum, self.valid)
        return self._tensor


class PhoneSides:
    """The phone halves of one alignment's residuals (:class:`PhoneSide`), kept for
    reuse: a residual measured again on the same phone planes and mask under another
    model (the background start, each candidate model's score, the pre-fit mask and
    the trust map) computes only the prediction's half.  Thread-safe; keeps the last
    ``size`` (one: an alignment measures its luminance residuals first, then its plane
    residuals; about 40 B per working px each)."""

    def __init__(self, size: int = 1) -> None:
        self._kept: list[PhoneSide] = []
        self._size = size
        self._lock = threading.Lock()

    def find(self, templates: list[np.ndarray], valid: np.ndarray, norm_sigma: float,
             window: float) -> PhoneSide | None:
        with self._lock:
            return next((s for s in self._kept if s.matches(templates, valid, norm_sigma, window)), None)

    def keep(self, side: PhoneSide) -> None:
        with self._lock:
            self._kept = [side] + self._kept[: self._size - 1]


def dense_residual(templates: list[np.ndarray], warped: list[np.ndarray], masks: list[np.ndarray],
                   window: float = 3.0, norm_sigma: float = 4.0, correlations: bool = True,
                   picture: bool = False, phones: PhoneSides | None = None) -> DenseResidual:
    """The phone against the DSLR prediction under the model, densely.

    templates, warped, masks: per plane (h, w) arrays on one grid (the working grid:
    every plane's px (i, j) is the same CFA cell or binning block).  The planes are
    summed into one luminance per side, locally normalised (window ``norm_sigma``:
    a local gain and offset, so vignetting, colour shading and tone do not count)
    and compared with DIS optical flow both ways (the two flows side by side:
    :func:`alignment.threads.thread_map`).  window: Gaussian sigma (working
    px) of the local correlation and of the texture measure.  correlations: False
    leaves out the local correlations (``ncc``, ``ncc_model`` None), which only the
    trust map needs: what follows a motion (:func:`dominant_motion`) and what a model
    explains (:func:`explained_px`) need the flows and the texture alone.
    picture: also make the phone picture (:attr:`DenseResidual.image`, which the
    trust map's watershed needs) beside the flows rather than on first use.
    phones: where the phone's half (:class:`PhoneSide`) of an earlier residual on the
    same planes and mask is found, and this one's is kept (None: computed here).
    Returns a :class:`DenseResidual` in working px.
    """
    h, w = templates[0].shape
    valid = np.ones((h, w), bool)
    for m in masks:
        valid &= m
    mf = valid.astype(np.float32)
    side = None if phones is None else phones.find(templates, valid, norm_sigma, window)
    lum_t = side.lum if side is not None else np.sum([t.astype(np.float32) for t in templates], axis=0)
    lum_w = np.sum([x.astype(np.float32) for x in warped], axis=0)
    if side is not None:
        a, b = side.u8, _to_u8(lum_w, valid, norm_sigma)
    else:
        a, b = thread_map(lambda lum: _to_u8(lum, valid, norm_sigma), [lum_t, lum_w])

    def texture() -> np.ndarray:
        return _texture_snr(templates, mf, valid, window)

    def model_only() -> tuple:
        # what the trust map needs that does not need the flow: the phone's local moments
        # and its correlation with the prediction as the model places it
        mu_t, var_t, wsum = side.moments() if side is not None else _local_moments(lum_t, mf, window)
        mu_0, var_0, _ = _local_moments(lum_w, mf, window)
        cov0 = _gauss(lum_t * lum_w * mf, window) / wsum - mu_t * mu_0
        return mu_t, var_t, wsum, cov0 / np.sqrt(np.maximum(var_t * var_0, 1e-20))

    # the two flows and what does not need them, side by side (the phone's texture when
    # its half is not kept from an earlier residual; the phone as a picture too when
    # asked for)
    jobs = [lambda: optical_flow(a, b), lambda: optical_flow(b, a)]
    if side is None:
        jobs.append(texture)
    if correlations:
        jobs.append(model_only)
    if picture:
        jobs.append(lambda: _picture(templates, valid))
    fwd, bwd, *more = thread_map(lambda job: job(), jobs)
    snr = side.snr if side is not None else more.pop(0)
    image = more.pop() if picture else None
    # (a new phone half keeps the moments model_only just measured)
    phone = side if side is not None else PhoneSide(tuple(templates), valid, norm_sigma, window, lum_t, a, snr,
                                                    _moments=more[0][:3] if correlations else None)
    if phones is not None and side is None:
        phones.keep(phone)
    yy, xx = pixel_centres(h, w, np.float32)
    at_x, at_y = xx + fwd[..., 0], yy + fwd[..., 1]  # where the flow takes each px
    back = cv2.remap(bwd, at_x, at_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    fb_vector = (fwd + back).astype(np.float32)
    fb_error = np.hypot(fb_vector[..., 0], fb_vector[..., 1])
    if not correlations:
        return DenseResidual(fwd, fb_error, None, None, snr, valid, planes=list(templates), lum=(lum_t, lum_w),
                             fb_vector=fb_vector, phone=phone, _image=image)
    mu_t, var_t, wsum, ncc_model = more[0]
    # local agreement after the flow: the prediction moved onto the phone
    moved = cv2.remap(lum_w, at_x, at_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mu_m, var_m, _ = _local_moments(moved, mf, window)
    cov = _gauss(lum_t * moved * mf, window) / wsum - mu_t * mu_m
    ncc = cov / np.sqrt(np.maximum(var_t * var_m, 1e-20))
    return DenseResidual(fwd, fb_error, ncc.astype(np.float32), ncc_model.astype(np.float32), snr,
                         valid, planes=list(templates), lum=(lum_t, lum_w), fb_vector=fb_vector, phone=phone,
                         _image=image)


@dataclass
class DominantMotion:
    """The motion of the largest consistent plane in a residual flow (see :func:`dominant_motion`).

    homography: (3,3) working px x -> x + flow(x) of that plane (None when none could
        be fitted); outliers: (h, w) bool, the px that do not follow it (grown by the
        margin).
    """

    homography: np.ndarray | None
    outliers: np.ndarray
    #: the radial lens terms fitted with the motion (``dominant_motion(radial=...)``):
    #: (q1, q2, ...) about the grid's centre in units of half its longer side, the plain
    #: polynomial form ``x_u = c + (x - c) (1 + q1 r^2 + q2 r^4)``; empty when none
    radial: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: the homography fitted together with those terms, the one they go with (the plane
    #: seen through the lens); ``homography`` when none were fitted
    lens_homography: np.ndarray | None = None
    #: whether the lens bends the frame: over twice as many of the sampled px follow the
    #: fit with the radial terms as follow ``homography`` (False without terms)
    lens_bends: bool = False


#: MAGSAC's iterations in :func:`dominant_motion`: the full search, which draws four px of
#: a plane that a fifth of the sampled px follow with a probability of 0.9997 ...
FULL_SEARCH_ITERATIONS = 5000
#: ... and the short one (0.80 for a fifth, 0.98 for a quarter) that seeds the fit with the
#: lens terms (radial > 0), kept when more than half the sampled px follow that fit (then
#: no other motion can be followed by more)
SEED_SEARCH_ITERATIONS = 1000


def _magsac(src: np.ndarray, dst: np.ndarray, step: float, iterations: int) -> np.ndarray | None:
    """MAGSAC++'s homography (grid px ``src`` -> ``dst``, (N, 2) each, [2, 2] = 1) at the
    threshold of a phone px (``step`` phone px per grid px), or None."""
    hom, _ = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, 0.5 / step * 2.0, maxIters=iterations, confidence=0.999)
    return None if hom is None else hom / hom[2, 2]


def structure_tensor(lum: np.ndarray, valid: np.ndarray, window: float = 3.0) -> tuple[np.ndarray, ...]:
    """The local structure tensor of ``lum`` ((h, w), working px): the gradient's outer
    product averaged over a Gaussian ``window`` (working px) over the ``valid`` px ->
    (Sxx, Sxy, Syy, its larger eigenvalue), each (h, w) float32."""
    img = lum.astype(np.float32)
    mf = valid.astype(np.float32)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    wsum = _gauss(mf, window) + 1e-6
    sxx, sxy, syy = (_gauss(a * mf, window) / wsum for a in (gx * gx, gx * gy, gy * gy))
    lmax = 0.5 * (sxx + syy) + np.sqrt(0.25 * (sxx - syy) ** 2 + sxy * sxy)
    return sxx, sxy, syy, lmax


def measurable_length(vx: np.ndarray, vy: np.ndarray, tensor: tuple[np.ndarray, ...]) -> np.ndarray:
    """(h, w) length of the displacements (vx, vy) (each (h, w), any unit) in the
    directions the texture fixes: sqrt(v' S v / lambda_max) with S the structure tensor
    (:func:`structure_tensor`).  Across an edge the full length, along it nothing, in
    texture that varies both ways (corners, foliage) about the full length."""
    sxx, sxy, syy, lmax = tensor
    q = (sxx * vx * vx + 2.0 * sxy * vx * vy + syy * vy * vy) / np.maximum(lmax, 1e-20)
    return np.sqrt(np.maximum(q, 0.0))


def _departure(vx: np.ndarray, vy: np.ndarray, tensor: tuple[np.ndarray, ...] | None) -> np.ndarray:
    """:func:`measurable_length` of (vx, vy), or their plain length without a tensor."""
    if tensor is None:
        return np.hypot(vx, vy)
    return measurable_length(vx, vy, tensor)


def dominant_motion(res: DenseResidual, step: float, max_px: float = 1.5, margin_px: float = 8.0,
                    flat_snr: float = 4.0, grid: int = 4, min_two_way: float = 0.1, radial: int = 0) -> DominantMotion:
    """The dominant motion of the residual flow and the working px that do not follow it.

    A homography fitted by MAGSAC++ to the flow at textured, forward-backward
    consistent px (every ``grid``-th px) is the motion of the largest consistent
    plane: the background, what the global model must fit (a smooth error of the
    current model is part of it).  Px whose flow departs from it by more than
    ``max_px`` phone px, or whose flow does not come back, are outliers (objects
    at other depths, moving things, occlusions); speckles are removed and the rest
    grown by ``margin_px``.  step: phone px per working px.

    Both departures are measured in the directions the phone's texture fixes
    (:func:`measurable_length`): along a straight edge a flow is free (the aperture
    problem), so a flow that slid along an edge is no evidence that the edge moved
    (a colour chart seen 2 px off had 44 % of its frame, every patch edge, taken
    for motion and kept out of the fine stage); the motion itself is fitted to px whose
    texture fixes the flow both ways (the structure tensor's smaller eigenvalue at
    least ``min_two_way`` of its larger), when at least 50 of the sampled px have it.

    radial: the number of radial lens terms (0, 1 or 2) the background's motion holds
    beside the homography, when the flow was measured under a model without the phone's
    lens (the background start): a lens's displacement is the background's, not an
    object's.  The homography and those terms are then fitted together to the same px,
    robustly (Cauchy, scale ``max_px``) from MAGSAC's homography, and the departures
    are measured from that fit.  Without them, the textured px of a lens pair's frame
    (its lattice and edges, where the flow is measured) departed from the homography
    by more than ``max_px`` and were all taken for objects: a 12 MP night Eiffel pair's
    start compared 85 % of its frame, mostly flat sky, and ECC from it ran 66 px off
    (docs/alignment.md, #11's thirty-sixth stop).  Through a strong lens no homography
    holds the frame to a phone px, and MAGSAC's is a patch's (followed by 2 to 44 % of
    the sampled px where the 12 MP lens pairs' lens bends the frame, the fit mostly by
    85 to 100 %), found only after its whole search; as the fit comes out the same from
    any such seed (to 1e-4 grid px), a short search (:data:`SEED_SEARCH_ITERATIONS`)
    seeds it, and the full one (:data:`FULL_SEARCH_ITERATIONS`) is made only when half
    the sampled px or fewer follow the fit from that seed.  ``homography`` is MAGSAC's, ``lens_homography`` the
    fit's, and ``lens_bends`` says whether over twice as many sampled px follow the fit
    as follow MAGSAC's homography (where a homography holds about as many, the terms may
    as well be fitting another plane's motion: on a frame whose thirds moved three ways,
    the fit was followed by 57 % where the background held 45 %).
    Returns a :class:`DominantMotion` (no outliers when no motion can be fitted).
    """
    h, w = res.valid.shape
    none = DominantMotion(None, np.zeros((h, w), bool))
    ys, xs = np.mgrid[0:h:grid, 0:w:grid]
    if res.phone is not None:
        tensor = res.phone.tensor()  # (kept with the phone's half: the same for every model)
    else:
        tensor = structure_tensor(res.lum[0], res.valid) if res.lum is not None else None
    sel = res.valid[ys, xs] & (res.fb_error[ys, xs] * step <= 1.0) & (res.snr[ys, xs] >= flat_snr)
    if tensor is not None:
        # the motion is fitted where the flow is fixed both ways (corners, texture), when
        # there are enough such px: an edge's flow is free along it
        sxx, _, syy, lmax = tensor
        two_way = (sxx + syy - lmax)[ys, xs] >= min_two_way * lmax[ys, xs]
        if (sel & two_way).sum() >= 50:
            sel &= two_way
    if sel.sum() < 50:
        return none
    src = np.stack([xs[sel], ys[sel]], 1).astype(np.float64)
    dst = src + res.flow[ys[sel], xs[sel]].astype(np.float64)

    def search(iterations: int) -> tuple[_LensHomography | None, _LensHomography | None]:
        """-> (MAGSAC's homography alone, the fit with the lens terms from it: the same
        model without terms)."""
        hom = _magsac(src, dst, step, iterations)
        if hom is None:
            return None, None
        plain = _LensHomography(hom, np.zeros(0), (h, w))
        return plain, (_LensHomography.fit(src, dst, plain.with_terms(radial), max_px / step) if radial else plain)

    def followed(model: _LensHomography | None) -> float:
        return 0.0 if model is None else model.followed(src, dst, max_px / step)

    share = 0.0  # of the sampled px that follow the fit with the lens terms
    if radial:
        plain, lens = search(SEED_SEARCH_ITERATIONS)
        share = followed(lens)
        if share <= 0.5:
            plain, lens = search(FULL_SEARCH_ITERATIONS)
            share = followed(lens)
    else:
        plain, lens = search(FULL_SEARCH_ITERATIONS)
    if plain is None:
        return none
    hom = plain.homography
    bends = bool(radial) and share > 2.0 * followed(plain)
    yy, xx = pixel_centres(h, w)
    mx, my = lens.map(xx, yy)
    px, py = mx - xx, my - yy
    off = _departure(res.flow[..., 0] - px, res.flow[..., 1] - py, tensor) * step
    # only textured px can say that they do not follow (a flat px's flow is guesswork)
    textured = res.valid & (res.snr >= flat_snr)
    fb = res.fb_error if res.fb_vector is None else _departure(res.fb_vector[..., 0], res.fb_vector[..., 1], tensor)
    follow = (off <= max_px) & (fb * step <= 1.0)
    bad = textured & ~follow
    return DominantMotion(hom, grow(_open(bad, 3.0 / step), margin_px / step), lens.radial, lens.homography,
                          bends)


@dataclass
class _LensHomography:
    """A homography after radial lens terms on a (rows, cols) grid: ``x -> H x_u`` with
    ``x_u = c + (x - c) (1 + q1 r^2 + q2 r^4)``, c the grid's centre and r the distance
    from it in units of half the grid's longer side (the plain form of
    :func:`alignment.ecc.lens_undistort`; x = column, y = row, px centres at integers)."""

    homography: np.ndarray  # (3, 3), [2, 2] = 1
    radial: np.ndarray  # (q1, q2, ...), possibly empty
    shape: tuple[int, int]

    def with_terms(self, n: int) -> "_LensHomography":
        """The same model with ``n`` radial terms (new ones zero)."""
        return _LensHomography(self.homography, np.r_[self.radial, np.zeros(n)][:n], self.shape)

    def map(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid px (x, y) (arrays that broadcast) -> where the model puts them."""
        if len(self.radial):
            # (imported here: the pipeline has it loaded; a report that reads trust maps
            # need not load the registration stack)
            from alignment.ecc import lens_undistort

            rows, cols = self.shape
            cx, cy, half = (cols - 1) / 2.0, (rows - 1) / 2.0, max(rows, cols) / 2.0
            u, v = lens_undistort(np.r_[self.radial, np.zeros(2)][:2], (x - cx) / half, (y - cy) / half, forward=False)
            x, y = cx + u * half, cy + v * half
        mx, my, _ = apply_homography_xy(self.homography, x, y)
        return mx, my

    def followed(self, src: np.ndarray, dst: np.ndarray, within: float) -> float:
        """The share of the (N, 2) points ``src`` that the model carries to within
        ``within`` grid px of their ``dst``."""
        mx, my = self.map(src[:, 0], src[:, 1])
        return float(np.mean(np.hypot(mx - dst[:, 0], my - dst[:, 1]) <= within))

    @classmethod
    def fit(cls, src: np.ndarray, dst: np.ndarray, start: "_LensHomography", scale: float,
            max_iter: int = 50, tol: float = 1e-4) -> "_LensHomography":
        """The model from ``start`` that carries the (N, 2) points ``src`` to ``dst``: robust
        least squares under Cauchy's loss at ``scale`` grid px, by iteratively reweighted
        Gauss-Newton (each step halved until the robust cost falls; it ends when a step
        moves no point by ``tol`` grid px, or after ``max_iter``), in coordinates about the
        grid's centre in half its longer side, where the parameters are of one size.
        (scipy's ``least_squares`` with the same loss reaches the same model: on the 12 MP
        Blackmagic and Eiffel lens pairs' 2 800 to 10 000 points, to within 1e-4 grid px
        everywhere on them; but importing ``scipy.optimize`` costs every process 80 ms,
        four times the fit.)  ``start`` when no step lowers the cost."""
        n = len(start.radial)
        rows, cols = start.shape
        half = max(rows, cols) / 2.0
        norm = np.array([[1.0 / half, 0.0, -(cols - 1) / 2.0 / half], [0.0, 1.0 / half, -(rows - 1) / 2.0 / half],
                         [0.0, 0.0, 1.0]])
        u, v, _ = apply_homography_xy(norm, src[:, 0], src[:, 1])
        du, dv, _ = apply_homography_xy(norm, dst[:, 0], dst[:, 1])
        powers = [(u * u + v * v) ** (k + 1) for k in range(n)]  # the radial terms' factors r^2, r^4
        c2 = (scale / half) ** 2  # Cauchy's scale, squared, in normalised units

        def parts(par: np.ndarray) -> tuple[np.ndarray, ...]:
            """The model at ``par`` (normalised homography, radial terms) at the points."""
            f = 1.0 + sum(q * pw for q, pw in zip(par[8:], powers))
            uu, vv = u * f, v * f
            w = par[6] * uu + par[7] * vv + 1.0
            return uu, vv, w, (par[0] * uu + par[1] * vv + par[2]) / w, (par[3] * uu + par[4] * vv + par[5]) / w

        def cost(res: np.ndarray) -> float:
            return float(np.log1p(res * res / c2).sum())

        def jacobian(par: np.ndarray, uu: np.ndarray, vv: np.ndarray, w: np.ndarray, mu: np.ndarray,
                     mv: np.ndarray) -> np.ndarray:
            jac = np.zeros((2 * len(u), 8 + n))
            ju, jv = jac[: len(u)], jac[len(u) :]
            ju[:, 0], ju[:, 1], ju[:, 2] = uu / w, vv / w, 1.0 / w
            jv[:, 3], jv[:, 4], jv[:, 5] = uu / w, vv / w, 1.0 / w
            ju[:, 6], ju[:, 7] = -mu * uu / w, -mu * vv / w
            jv[:, 6], jv[:, 7] = -mv * uu / w, -mv * vv / w
            for k, pw in enumerate(powers):  # through the undistorted point: d (u, v)_u / d q_k = (u, v) r^2k
                ju[:, 8 + k] = ((par[0] - mu * par[6]) * u + (par[1] - mu * par[7]) * v) * pw / w
                jv[:, 8 + k] = ((par[3] - mv * par[6]) * u + (par[4] - mv * par[7]) * v) * pw / w
            return jac

        hn = norm @ start.homography @ np.linalg.inv(norm)
        par = np.r_[(hn / hn[2, 2]).ravel()[:8], start.radial]
        at = parts(par)
        res = np.r_[at[3] - du, at[4] - dv]
        now = cost(res)
        moved_any = False
        for _ in range(max_iter):
            weights = 1.0 / (1.0 + res * res / c2)  # Cauchy's, as least squares weights
            jac = jacobian(par, *at)
            jw = jac * weights[:, None]
            try:
                step = np.linalg.solve(jw.T @ jac, jw.T @ res)
            except np.linalg.LinAlgError:
                break
            for _halving in range(10):
                trial = par - step
                at_t = parts(trial)
                res_t = np.r_[at_t[3] - du, at_t[4] - dv]
                now_t = cost(res_t) if np.all(np.isfinite(res_t)) else np.inf
                if now_t <= now:
                    break
                step = step / 2.0
            else:
                break
            moved = float(np.abs(res_t - res).max()) * half
            par, at, res, now, moved_any = trial, at_t, res_t, now_t, True
            if moved < tol:
                break
        if not moved_any or not n:
            return start
        h = np.linalg.inv(norm) @ np.r_[par[:8], 1.0].reshape(3, 3) @ norm
        return cls(h / h[2, 2], par[8:], start.shape)


def _smooth_gain(ratio: np.ndarray, use: np.ndarray, block: int, degree: int = 3) -> np.ndarray:
    """(h, w) smooth map of ``ratio`` (a gain between two images): the median of each
    ``block`` x ``block`` block over the ``use`` px, and a polynomial of ``degree`` in
    x and y fitted to their logarithms robustly (Cauchy weights, a few reweighted
    least-squares passes): vignetting, colour shading and exposure follow it, a
    region of another brightness (tens of blocks) does not pull it."""
    h, w = ratio.shape
    bh, bw = -(-h // block), -(-w // block)
    pad = np.full((bh * block, bw * block), np.nan, np.float32)
    pad[:h, :w] = np.where(use & (ratio > 0), ratio, np.nan)
    cells = pad.reshape(bh, block, bw, block).transpose(0, 2, 1, 3).reshape(bh, bw, -1)
    has = np.isfinite(cells).sum(-1) >= block * block // 4
    if has.sum() < 4:
        return np.ones((h, w), np.float32)
    by, bx = np.nonzero(has)
    val = np.log(np.nanmedian(cells[has], axis=-1)).astype(np.float64)

    def design(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = 2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1
        return np.stack([u ** i * v ** j for i in range(degree + 1) for j in range(degree + 1 - i)], -1)

    a = design((bx + 0.5) * block - 0.5, (by + 0.5) * block - 0.5)
    if len(val) < 2 * a.shape[1]:
        return np.full((h, w), float(np.exp(np.median(val))), np.float32)
    wgt = np.ones_like(val)
    for _ in range(6):
        coef = np.linalg.lstsq(a * wgt[:, None], val * wgt, rcond=None)[0]
        r = val - a @ coef
        scale = max(1.4826 * float(np.median(np.abs(r))), 0.01)
        wgt = 1.0 / np.sqrt(1.0 + (r / (2.5 * scale)) ** 2)  # sqrt of the Cauchy weight
    # the polynomial on the whole grid, separably: sum_ij c_ij u^i v^j = V C^T U^T
    powers = [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]
    cmat = np.zeros((degree + 1, degree + 1))
    for (i, j), c in zip(powers, coef):
        cmat[i, j] = c
    u = 2 * np.arange(w) / max(w - 1, 1) - 1
    v = 2 * np.arange(h) / max(h - 1, 1) - 1
    pu = u[:, None] ** np.arange(degree + 1)[None, :]
    pv = v[:, None] ** np.arange(degree + 1)[None, :]
    return np.exp(pv @ cmat.T @ pu.T).astype(np.float32)


def level_mismatch(res: DenseResidual, exclude: np.ndarray, step: float, tol: float = 0.05, z: float = 3.0,
                   block_px: float = 32.0, smooth_px: float = 3.0) -> np.ndarray:
    """(h, w) bool, working px whose brightness the prediction does not reach.

    The optical flow and the correlations compare locally normalised images, so a flat
    px matches any flat px.  Here the phone luminance is compared with the
    prediction's in level: their ratio's smooth part (:func:`_smooth_gain`: a robust
    cubic through the medians per ``block_px`` block over the px not in ``exclude``:
    vignetting, colour shading and exposure the fitted prediction leaves) is divided out, both sides are blurred by
    ``smooth_px`` (phone px) and a px departs where the difference is over ``z`` times
    the sum in quadrature of its noise (the phone's own noise curve, both sides)
    and ``tol`` of the level (what a smooth gain leaves: shading, tone).
    Where the DSLR shows another surface of another brightness (what the phone sees
    beside an object that the DSLR sees in front of it; the flat inside of an object
    that moved) this is the only evidence there is.  step: phone px per working px.
    """
    if res.lum is None:
        return np.zeros(res.valid.shape, bool)
    lum_t, lum_w = res.lum
    valid = res.valid & (lum_w > 0) & (lum_t > 0)
    if valid.sum() < 1000:
        return np.zeros(res.valid.shape, bool)
    ratio = lum_t / np.maximum(lum_w, 1e-9)
    gain = _smooth_gain(ratio.astype(np.float32), valid & ~exclude, max(2, int(round(block_px / step))))
    mf = valid.astype(np.float32)
    sm = max(1.0, smooth_px / step)
    _, _, a, b = _noise_model(lum_t, _fine_part(lum_t), mf, valid, 3.0)
    t = cv2.GaussianBlur(lum_t, (0, 0), sm)
    p = cv2.GaussianBlur(lum_w * gain, (0, 0), sm)
    noise_var = 2.0 * (a * np.maximum(t, 0) + b) / (4 * np.pi * sm * sm)  # both sides, after the blur
    tol_var = (tol * np.maximum(p, 0)) ** 2
    diff = np.abs(t - p)
    return valid & (diff * diff > z * z * (noise_var + tol_var))


def explained_px(res: DenseResidual, step: float, max_px: float = 1.0, flat_snr: float = 4.0) -> int:
    """How many textured working px the model behind ``res`` explains: their residual
    flow is at most ``max_px`` phone px and comes back (forward-backward within 1 phone
    px).  step: phone px per working px."""
    mag = np.hypot(res.flow[..., 0], res.flow[..., 1]) * step
    ok = res.valid & (res.snr >= flat_snr) & (res.fb_error * step <= 1.0) & (mag <= max_px)
    return int(ok.sum())


def enclosed(mask: np.ndarray, max_area: float) -> np.ndarray:
    """The connected parts of ``mask`` (8-connected) that do not touch the image edge and
    hold fewer than ``max_area`` px."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    h, w = mask.shape
    x0, y0 = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    x1, y1 = x0 + stats[:, cv2.CC_STAT_WIDTH], y0 + stats[:, cv2.CC_STAT_HEIGHT]
    keep = (x0 > 0) & (y0 > 0) & (x1 < w) & (y1 < h) & (stats[:, cv2.CC_STAT_AREA] < max_area)
    keep[0] = False
    return keep[labels]


def _open(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological opening: regions narrower than 2 ``radius`` px vanish."""
    r = int(round(radius))
    if r <= 0 or not mask.any():
        return mask
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, k) > 0


def grow(mask: np.ndarray, radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    if r <= 0 or not mask.any():
        return mask
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(mask.astype(np.uint8), k) > 0


@dataclass
class Evidence:
    """What each working px says about the model (see :func:`evidence`); (h, w) bool each."""

    textured: np.ndarray
    flat: np.ndarray
    fits_model: np.ndarray
    moved: np.ndarray
    occluded: np.ndarray
    ambiguous: np.ndarray


def evidence(res: DenseResidual, step: float, prm: TrustParams) -> Evidence:
    """The per-px rules, before any region reasoning.

    textured: local contrast at least ``flat_snr`` times the noise; fits_model: the
    model's prediction correlates locally with the phone nearly as well as a correct
    match can at this contrast (``ncc_slack`` below sqrt((snr - 1) / snr)); moved: a
    flow larger than ``max_px`` that comes back (forward-backward) and explains the
    px clearly better than the model (``min_gain``); occluded: neither the model nor
    a flow explains a textured px; ambiguous: a clear, consistent flow that explains
    the px as well as the model does (a stripe moved along itself).
    """
    mag = np.hypot(res.flow[..., 0], res.flow[..., 1]) * step
    fb = res.fb_error * step
    textured = res.valid & (res.snr >= prm.flat_snr)
    expected = np.sqrt(np.clip(res.snr - 1.0, 0.0, None) / np.maximum(res.snr, 1e-6))
    fits_model = res.ncc_model >= expected - prm.ncc_slack
    fits_flow = res.ncc >= expected - prm.ncc_slack
    flow_real = textured & (fb <= prm.max_fb_px) & (mag > prm.max_px) & fits_flow
    moved = flow_real & (res.ncc - res.ncc_model > prm.min_gain)
    # a mismatch is only evidence where the texture stands well above the noise (faint
    # structure, a shading gradient, correlated noise: the DSLR need not show it)
    occluded = textured & (res.snr >= prm.mismatch_snr) & ~fits_model & ~moved
    ambiguous = flow_real & ~moved & ~occluded
    return Evidence(textured, res.valid & ~textured, fits_model & textured, moved, occluded, ambiguous)


def assess(
    res: DenseResidual,
    to_image: np.ndarray,
    outside: np.ndarray,
    clipped: np.ndarray,
    params: TrustParams | None = None,
) -> TrustMap:
    """Decide per working px from a :class:`DenseResidual`.

    to_image: (3,3) working px -> phone image px; outside: (h, w) bool, the mapped
    point is not inside the DSLR image; clipped: (h, w) bool, the phone cell or the
    DSLR px it maps to is saturated.  Returns the :class:`TrustMap`.
    """
    prm = params or TrustParams()
    step = float(to_image[0, 0])  # phone image px per working px
    h, w = res.valid.shape
    flow_img = res.flow * step
    fb = res.fb_error * step
    ev = evidence(res, step, prm)
    textured, flat, moved, occluded, ambiguous = ev.textured, ev.flat, ev.moved, ev.occluded, ev.ambiguous
    moved = _open(moved, prm.speckle_px / step)
    occluded = _open(occluded, prm.speckle_px / step)
    ambiguous &= ~moved & ~occluded
    good = textured & ~moved & ~occluded & ~ambiguous
    # px the measures could not see (the frame's rim, the filters' reach around a
    # masked px) go with what surrounds them, like flat px
    unseen = ~res.valid & ~outside & ~clipped
    unknown = flat | ambiguous | unseen
    # a flat px takes the verdict of the textured px it is joined to without crossing
    # an edge of the phone image (watershed from the textured px): the flat inside of
    # a moved object moved with it; beyond ``support_px`` of any agreeing textured px,
    # nothing confirms the model
    code = np.zeros((h, w), np.uint8)
    markers = np.zeros((h, w), np.int32)
    markers[good] = 1
    markers[occluded] = 2
    markers[moved] = 3
    if (markers > 0).any() and unknown.any():
        filled = cv2.watershed(res.image, markers.copy())
        occluded = occluded | (unknown & (filled == 2))
        moved = moved | (unknown & (filled == 3))
        edge = unknown & (filled == -1)
        occluded |= edge & grow(occluded | moved, 1.5)
    if not good.any():
        code[unknown & ~moved & ~occluded] = UNVERIFIED
    elif np.isfinite(prm.support_px):
        dist = cv2.distanceTransform((~good).astype(np.uint8), cv2.DIST_L2, 5)
        code[unknown & ~moved & ~occluded & (dist * step > prm.support_px)] = UNVERIFIED
    # an island of agreement enclosed by what moved is part of the moving thing whose
    # texture happens to fit the model (a stripe along the motion, a flat patch)
    # (enclosed by the dropped px grown by the margin: a gap narrower than that is closed)
    margin = prm.margin_px / step
    islands = enclosed(~grow(moved | occluded, margin) & ~outside, prm.max_island * h * w)
    if islands.any():
        moved |= islands & grow(moved, margin + 2.0)
        occluded |= islands & ~moved
    code[grow(occluded, margin)] = OCCLUDED
    code[grow(moved, margin) & ~occluded] = MOVED
    by_level = np.zeros((h, w), bool)
    if np.isfinite(prm.level_z):
        other = level_mismatch(res, grow(moved | occluded, margin), step, prm.level_tol, prm.level_z)
        by_level = grow(other, prm.level_grow_px / step) & (code == 0)
        code[by_level] = OCCLUDED
    code[grow(clipped, prm.clip_grow_px / step)] = CLIPPED
    code[outside] = OUTSIDE
    residual = np.where(res.valid[..., None], flow_img, np.nan).astype(np.float32)
    ncc = np.where(textured, res.ncc, np.nan).astype(np.float32)
    return TrustMap(code, residual, np.where(res.valid, fb, np.inf).astype(np.float32), ncc, to_image.copy(),
                    moved_core=moved & ~occluded, layer=np.full((h, w), -1, np.int16), by_level=by_level)


def full_resolution_codes(
    trust_map: TrustMap | None,
    shape: tuple[int, int],
    inside: np.ndarray,
    dslr_clipped: np.ndarray | None,
    phone_planes: np.ndarray | None,
    phone_clip_level: float = 0.98,
) -> np.ndarray:
    """Trust codes on the phone's full raw grid, for the dataset's ``mask.png``.

    trust_map: the alignment's working-grid map (None: nothing dropped there);
    shape: (H, W); inside: (H, W) bool, the target px was sampled inside the DSLR
    image; dslr_clipped: (H, W) bool, it read a clipped DSLR px (or None);
    phone_planes: (H/2, W/2, 4) normalised packed raw (or None): a CFA cell with a
    plane at ``phone_clip_level`` or more is clipped, with its neighbours (a
    demosaicked px reads them).  Precedence: outside, clipped, then the working
    grid's reasons.  Returns (H, W) uint8 codes (0 = trusted, see :data:`REASONS`).
    """
    h, w = shape
    code = trust_map.full(shape) if trust_map is not None else np.zeros((h, w), np.uint8)
    clipped = np.zeros((h, w), bool) if dslr_clipped is None else dslr_clipped.copy()
    if phone_planes is not None:
        sat = phone_planes.max(axis=-1) >= phone_clip_level
        if sat.any():
            cells = np.repeat(np.repeat(sat, 2, axis=0), 2, axis=1)[:h, :w]
            clipped |= cv2.dilate(cells.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    code[clipped] = CLIPPED
    code[~inside] = OUTSIDE
    return code


def fractions(code: np.ndarray) -> dict[str, float]:
    """Fraction of px per reason of a code array (keys of :data:`REASONS`)."""
    n = max(code.size, 1)
    counts = np.bincount(code.ravel(), minlength=len(REASONS))
    return {name: float(counts[i] / n) for i, name in enumerate(REASONS)}
