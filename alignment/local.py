"""Local refinement: tile-wise residual displacement, regularised into a smooth field.

After the global homography H (phone -> DSLR), what is left (lens distortion,
slight parallax) is a displacement field u on the phone grid:
``map(x) = H(x + u(x))``.  We measure u tile by tile with a one-step
Lucas-Kanade that also fits a per-tile gain and offset
(``T ~ a * W + b + a * grad(W) . d``, linear in (a, b, a*dx, a*dy)), where W is
the DSLR image warped onto the phone grid through the current model; the tile
estimates, weighted by their inverse variance, are fitted by a polynomial
field whose degree is chosen by cross-validation on held-out tiles (degree -1,
"none", included, so a pure homography pair gets no field and no added noise);
warp, measure and fit repeat until the update is below ``tol_px`` (0.01 phone px: a third
of the accuracy aimed at, and the field converges geometrically).

Coordinates: the field is stored in phone IMAGE px (the full raw grid for a
raw phone image); x = column, y = row, pixel centres at integers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from scipy import ndimage, sparse
from scipy.linalg import solve_banded

from alignment.ecc import Channel, local_normalize, prepare_channels, sample_at, template_positions
from alignment.threads import thread_map

__all__ = [
    "SmoothField", "TileResiduals", "TileChannel", "measure_tiles", "fit_field", "refine_local", "warp_channels",
    "model_correlation", "rewarped_masks",
]


def _monomials(degree: int) -> list[tuple[int, int]]:
    return [(i - j, j) for i in range(degree + 1) for j in range(i + 1)]


#: rows of a working grid that :meth:`SmoothField.dense` evaluates at a time (32 rows of
#: a 12 MP raw's 1008-column planes: 250 kB an array, kept in the cache)
_DENSE_STRIP = 32


@functools.lru_cache(maxsize=32)
def _node_weights(n_nodes: int, origin: float, step: float, count: int, spacing: float, offset: float) -> np.ndarray:
    """(count, n_nodes) weights of a spline grid's nodes along one axis (nodes at
    ``origin + step * k``) at the px ``offset + spacing * arange(count)``: each unit node
    vector interpolated as :meth:`SmoothField._grid_eval` does (cubic, edges nearest).
    Cached (read-only): the warps of one alignment evaluate fields on the same grids at
    the same px many times."""
    pos = np.arange(count) * spacing + offset
    t = np.clip((pos - origin) / step, 0, n_nodes - 1)
    eye = np.eye(n_nodes)
    w = np.stack([ndimage.map_coordinates(eye[k], [t], order=3, mode="nearest") for k in range(n_nodes)], 1)
    w.flags.writeable = False
    return w


@dataclass
class SmoothField:
    """Polynomial displacement field u(x) (phone image px -> displacement in phone image px).

    degree: total polynomial degree (-1 = no field, u = 0).
    centre: (cx, cy) and scale: coordinates are normalised as (x - c) / scale.
    coef: (n_terms, 2) coefficients of the monomials u^i v^j (see :func:`_monomials`).
    bounds: (xmin, ymin, xmax, ymax) phone px where the field was measured; outside,
        the polynomial and spline parts are evaluated at the nearest point of this
        box (never extrapolated), or None for no clamping.
    grid: optional (gy, gx, 2) residual displacement on a regular node grid (a
        smoothing spline of what the polynomial leaves), node (i, j) at phone px
        (grid_origin[0] + j * grid_step[0], grid_origin[1] + i * grid_step[1]);
        interpolated with cubic B-splines, clamped at the grid's edge.
    radial: optional (cx, cy, s, q1, q2[, q3, q4]) radial lens distortion estimated
        with the homography (see :meth:`radial_part`), valid over the whole frame.
    hull: optional (K, 2) convex polygon (phone px, counter-clockwise in image
        coordinates) around the measured tiles: outside it the polynomial and spline
        parts are evaluated at the nearest point of the polygon, so a field measured
        on part of the frame (an object or a textureless sky hides the rest) does not
        swing where nothing was measured.
    """

    degree: int = -1
    centre: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    coef: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    bounds: tuple[float, float, float, float] | None = None
    grid: np.ndarray | None = None
    grid_origin: tuple[float, float] = (0.0, 0.0)
    grid_step: tuple[float, float] = (1.0, 1.0)
    radial: tuple[float, ...] | None = None
    hull: np.ndarray | None = None
    #: the spline part's smoothing weight that :func:`fit_field` chose (a detail of the
    #: fit, for refitting with the same structure; not part of the model, not saved)
    smoothing: float | None = None

    @property
    def empty(self) -> bool:
        """True when the field is identically zero."""
        return (self.degree < 0 or self.coef.size == 0) and self.grid is None and self.radial is None

    def radial_part(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Radial lens-distortion displacement (never clamped): with ``radial`` =
        (cx, cy, s, q1, q2[, q3, q4]), ``u = (x - c) (q1 rho^2 + q2 rho^4 + q3 rho^6 +
        q4 rho^8)``, ``rho = |x - c| / s`` (the pipeline writes all four,
        :func:`alignment.ecc.lens_coefficients`; a record of two, written before #11's
        thirty-second stop, has q3 = q4 = 0); x and y broadcast together (a row of
        columns and a column of rows: the grid)."""
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y)) + (2,))
        if self.radial is None:
            return out
        dx, dy, f = self._radial_factor(x, y)
        out[..., 0] = dx * f
        out[..., 1] = dy * f
        return out

    def _radial_factor(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x - cx, y - cy, f) of :meth:`radial_part` (its displacement is (dx f, dy f)),
        for a field with ``radial``; x and y broadcast together."""
        cx, cy, sc = self.radial[:3]
        dx, dy = x - cx, y - cy
        r2 = (dx * dx + dy * dy) / (sc * sc)
        # the sum of q_k rho^(2k), its terms added from the lowest power up
        f = self.radial[3] * r2
        power = r2
        for qk in self.radial[4:]:
            power = power * r2
            f += qk * power
        return dx, dy, f

    def displacement_key(self) -> tuple:
        """What decides the displacement this field makes, as a value two fields can be
        compared by (equal keys: equal displacements everywhere, to the bit): the lens
        model alone for a field without polynomial or spline part, else every part."""
        if not (self.degree >= 0 and self.coef.size) and self.grid is None:
            return ("radial", self.radial)
        arrays = tuple(None if a is None else (a.shape, np.asarray(a, np.float64).tobytes())
                       for a in (self.coef, self.grid, self.hull))
        return ("field", self.radial, self.degree, self.centre, self.scale, self.bounds, self.grid_origin,
                self.grid_step, arrays)

    def without_radial(self) -> "SmoothField":
        """The same field minus its radial part."""
        return SmoothField(self.degree, self.centre, self.scale, self.coef, self.bounds, self.grid, self.grid_origin,
                           self.grid_step, None, self.hull)

    def _grid_eval(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        gy, gx = self.grid.shape[:2]
        j = np.clip((x - self.grid_origin[0]) / self.grid_step[0], 0, gx - 1)
        i = np.clip((y - self.grid_origin[1]) / self.grid_step[1], 0, gy - 1)
        out = np.empty(x.shape + (2,))
        for c in range(2):
            out[..., c] = ndimage.map_coordinates(self.grid[..., c], [i, j], order=3, mode="nearest")
        return out

    def _axis_weights(self, count: int, spacing: float, offset: float, axis: int) -> np.ndarray:
        """(count, nodes) weights of the grid nodes along one axis (0 = x, 1 = y) at the
        image px ``offset + spacing * arange(count)`` (see :func:`_node_weights`), so
        that grid values at a tensor of points are ``Wy @ grid @ Wx.T``."""
        return _node_weights(self.grid.shape[1 - axis], float(self.grid_origin[axis]), float(self.grid_step[axis]),
                             int(count), float(spacing), float(offset))

    def _clamp(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.bounds is None:
            return x, y
        x0, y0, x1, y1 = self.bounds
        return np.clip(x, x0, x1), np.clip(y, y0, y1)

    def _onto_hull(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points outside :attr:`hull` moved to its nearest point (others unchanged)."""
        if self.hull is None or len(self.hull) < 3:
            return x, y
        x = np.array(x, np.float64, copy=True)
        y = np.array(y, np.float64, copy=True)
        outside = ~_inside_convex(self.hull, x, y)
        if outside.any():
            px, py = _project_convex(self.hull, x[outside], y[outside])
            x[outside], y[outside] = px, py
        return x, y

    def _where(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where the polynomial and spline parts are evaluated for the points (x, y)."""
        return self._onto_hull(*self._clamp(x, y))

    def basis(self, xy: np.ndarray) -> np.ndarray:
        """(N, P) the polynomial's monomials at (N, 2) phone image px (clamped to the
        bounds and moved onto the hull as the field evaluates them)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        return self._basis_at(*self._where(xy[:, 0], xy[:, 1]))

    def _basis_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u = (x - self.centre[0]) / self.scale
        v = (y - self.centre[1]) / self.scale
        return np.stack([u**i * v**j for i, j in _monomials(self.degree)], axis=1)

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) phone image px -> (N, 2) displacement in phone image px."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        out = self.radial_part(xy[:, 0], xy[:, 1])
        poly = self.degree >= 0 and self.coef.size
        if poly or self.grid is not None:
            x, y = self._where(xy[:, 0], xy[:, 1])  # (one projection onto the hull for both parts)
            if poly:
                out += self._basis_at(x, y) @ self.coef
            if self.grid is not None:
                out += self._grid_eval(x, y)
        return out

    def dense(self, shape: tuple[int, int], to_image: np.ndarray) -> np.ndarray:
        """(rows, cols, 2) displacement in WORKING px for every pixel of a working grid
        whose px map to image px through the scale-and-offset matrix ``to_image``.
        Evaluated separably (powers of the row and column coordinates), exact.  (A view
        of two planes: ``[..., 0]`` and ``[..., 1]`` are each contiguous.)"""
        rows, cols = shape
        sx, sy = to_image[0, 0], to_image[1, 1]
        x_img = np.arange(cols) * sx + to_image[0, 2]
        y_img = np.arange(rows) * sy + to_image[1, 2]
        xs, ys = self._clamp(x_img, y_img)
        u = (xs - self.centre[0]) / self.scale
        v = (ys - self.centre[1]) / self.scale
        planes = np.zeros((2, rows, cols))
        if self.grid is not None:
            # the spline grid is a tensor product: rows x nodes @ grid @ nodes x cols
            wy = self._axis_weights(rows, sy, to_image[1, 2], 1)
            wx = self._axis_weights(cols, sx, to_image[0, 2], 0)
            for c in range(2):
                planes[c] += wy @ self.grid[..., c] @ wx.T
        terms = _monomials(self.degree) if self.degree >= 0 and self.coef.size else []
        # the polynomial: for each power j of the row coordinate, a row of its columns' terms
        row_polys = []
        for j in range(self.degree + 1 if terms else 0):
            row_polys.append([np.zeros(cols), np.zeros(cols)])
            for c in range(2):
                for t, (pi, pj) in enumerate(terms):
                    if pj == j:
                        row_polys[j][c] += self.coef[t, c] * u**pi
        for r0 in range(0, rows, _DENSE_STRIP):
            # a strip of rows at a time: its arrays stay in the cache
            strip = planes[:, r0: r0 + _DENSE_STRIP]
            if self.radial is not None:
                dx, dy, f = self._radial_factor(x_img[None, :], y_img[r0: r0 + _DENSE_STRIP, None])
                strip[0] += dx * f
                strip[1] += dy * f
            for j, row_poly in enumerate(row_polys):
                vj = v[r0: r0 + _DENSE_STRIP] ** j
                for c in range(2):
                    strip[c] += vj[:, None] * row_poly[c][None, :]
            strip[0] /= sx
            strip[1] /= sy
        if self.hull is not None and len(self.hull) >= 3 and (terms or self.grid is not None):
            # outside the measured area: the smooth parts at the nearest point of the hull
            ext = _exterior(self.hull, self.bounds, shape, to_image)
            if len(ext.rows):
                # (each distinct point once, as __call__ sums the parts, then each px's own
                # radial part: every px gets what the field gives it alone, to the bit)
                value = np.zeros((len(ext.x), 2))
                if terms:
                    value += self._basis_at(ext.x, ext.y) @ self.coef
                if self.grid is not None:
                    value += self._grid_eval(ext.x, ext.y)
                value = value[ext.index]
                if self.radial is not None:
                    dx, dy, f = self._radial_factor(x_img[ext.cols], y_img[ext.rows])
                    value[:, 0] += dx * f
                    value[:, 1] += dy * f
                planes[0][ext.rows, ext.cols] = value[:, 0] / sx
                planes[1][ext.rows, ext.cols] = value[:, 1] / sy
        return planes.transpose(1, 2, 0)

    def to_dict(self) -> dict:
        return {
            "model": "polynomial+spline",
            "degree": int(self.degree),
            "centre": [float(c) for c in self.centre],
            "scale": float(self.scale),
            "coef": np.asarray(self.coef, float).tolist(),
            "bounds": None if self.bounds is None else [float(b) for b in self.bounds],
            "grid": None if self.grid is None else np.round(self.grid, 6).tolist(),
            "grid_origin": [float(v) for v in self.grid_origin],
            "grid_step": [float(v) for v in self.grid_step],
            "radial": None if self.radial is None else [float(v) for v in self.radial],
            "hull": None if self.hull is None else np.round(self.hull, 3).tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> "SmoothField":
        if not d:
            return cls()
        b = d.get("bounds")
        g = d.get("grid")
        return cls(
            int(d["degree"]), tuple(d["centre"]), float(d["scale"]), np.asarray(d["coef"], float).reshape(-1, 2),
            None if b is None else tuple(float(x) for x in b),
            None if g is None else np.asarray(g, float),
            tuple(d.get("grid_origin", (0.0, 0.0))), tuple(d.get("grid_step", (1.0, 1.0))),
            None if d.get("radial") is None else tuple(float(v) for v in d["radial"]),
            None if d.get("hull") is None else np.asarray(d["hull"], float).reshape(-1, 2),
        )


@dataclass
class TileResiduals:
    """Per-tile residual displacement (phone image px), after the current model.

    centres: (N, 2) tile centres; shifts: (N, 2) measured displacement d such that
    the phone tile matches the DSLR at H(x + u(x) + d); sigma: (N,) standard error
    of the shift in px; correlation: (N,) tile correlation after the shift;
    reliable: (N,) bool, tiles with texture, a sane fit and not outliers;
    grid_shape: (rows, cols) of the tile grid (N = rows * cols);
    textured: (N,) bool, tiles inside the overlap with enough texture for a
    shift to be measured (reliable or not): the denominator of consistency;
    edge: (N,) bool, tiles that are not reliable because their texture runs one
    way (one straight edge: a chart patch's side, a line of text) but whose shift
    across it is measured as well as a reliable tile's; normal: (N, 2) unit
    vector across which such a tile measures (its best-measured direction, every
    tile); normal_sigma: (N,) standard error of the shift along ``normal`` (px);
    faint: (N,) bool, tiles measured both ways whose shift's standard error is over
    a reliable tile's bound but within ``FAINT_SIGMA_FACTOR`` times it, their fit
    correlating and their shift sane (a chart patch's corner in a noisy night raw):
    none alone confirms the model, many together pin it
    (:func:`alignment.pipeline.position_uncertainty` weighs each by its own sigma).
    """

    centres: np.ndarray
    shifts: np.ndarray
    sigma: np.ndarray
    correlation: np.ndarray
    reliable: np.ndarray
    grid_shape: tuple[int, int]
    textured: np.ndarray | None = None
    edge: np.ndarray | None = None
    normal: np.ndarray | None = None
    normal_sigma: np.ndarray | None = None
    faint: np.ndarray | None = None

    def consistent_fraction(self, max_shift_px: float, one_way: np.ndarray | None = None) -> float:
        """Fraction of textured tiles that are reliable with a residual <= ``max_shift_px``;
        with ``one_way`` ((N,) bool: tiles measured across one straight edge, see
        ``edge``) those count as textured too, and agree when their residual across
        their edge is <= ``max_shift_px``."""
        tex = self.textured if self.textured is not None else self.reliable
        good = self.reliable & (self.magnitude <= max_shift_px)
        if one_way is not None and self.normal is not None:
            tex = tex | one_way
            good = good | (one_way & (self.across <= max_shift_px))
        if not tex.any():
            return 0.0
        return float((good & tex).sum() / tex.sum())

    @property
    def magnitude(self) -> np.ndarray:
        return np.hypot(self.shifts[:, 0], self.shifts[:, 1])

    @property
    def across(self) -> np.ndarray:
        """(N,) |shift . normal|: the shift across each tile's best-measured direction (px)."""
        return np.abs(np.einsum("ij,ij->i", self.normal, self.shifts))


#: a faint tile's standard error is at most this many times a reliable tile's bound
#: (``TileResiduals.faint``): 0.6 px at the default 0.15.  On the broadened
#: benchmark's 144 pairs, the model was at most 0.39 px off its truth at the tile
#: centres that the reliable, one-edge and faint tiles together pin within 0.5 px
#: (0.35 px with the reliable and one-edge tiles alone; 0.43 and 0.43 before the
#: fine stage's pass for the noise, ``pipeline.NOISE_SAMPLES_FACTOR``).
FAINT_SIGMA_FACTOR = 4.0


#: :func:`measure_tiles`' sums over each tile of a channel: its valid px (n), warped (w)
#: and template (t) values, and the warped image's gradient (gx, gy), and their products
_TILE_SUMS = ("n", "sw", "st", "sww", "swt", "stt", "gx", "gy", "wgx", "wgy", "gxgx", "gxgy", "gygy", "tgx", "tgy")
#: rows of a channel that :func:`measure_tiles` sums at a time, in whole tiles (five of
#: a 12 MP raw's planes' 12-px tiles: 480 kB an array, and few enough numpy calls that two
#: threads do not wait on each other for them)
_TILE_BAND_ROWS = 64


def _tile_sum(a: np.ndarray, t: int, ny: int, nx: int) -> np.ndarray:
    return a[: ny * t, : nx * t].reshape(ny, t, nx, t).sum(axis=(1, 3))


@dataclass
class TileChannel:
    """One channel for :func:`measure_tiles`: a phone target and the DSLR warped onto it.

    template, warped: (rows, cols) float32 filtered alike; mask: bool where both are
    valid; to_image: (3,3) scale-and-offset, channel px -> phone image px;
    sampled: (rows, cols) bool where the warped DSLR is measured, whatever the
    template's mask (None: not known), so the same warp serves channels that differ
    only in their template masks (:func:`rewarped_masks`).
    """

    template: np.ndarray
    warped: np.ndarray
    mask: np.ndarray
    to_image: np.ndarray
    sampled: np.ndarray | None = None


def rewarped_masks(warped: list[TileChannel], channels: list[Channel]) -> list[TileChannel]:
    """The warp of ``channels``' DSLR images already made for channels that differ from
    them only in their template masks (the fit's channels, with what moved kept out):
    the same samples, each mask now ``channel.mask & sampled``."""
    if len(warped) != len(channels) or any(w.sampled is None for w in warped):
        raise ValueError("rewarped_masks needs one warp with its sampled mask per channel")
    return [TileChannel(ch.template, w.warped, ch.mask & w.sampled, w.to_image, w.sampled)
            for w, ch in zip(warped, channels)]


def _tile_inverses(a: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverses of the tiles' normal matrices ``a[idx]`` ((N, p, p)), each regularised
    by 1e-12 of its trace -> (the tiles whose matrix is not singular, (M, p, p) their
    inverses).  All at once (numpy solves each matrix of a stack as it would alone: the
    same numbers), each alone where one of them is singular."""
    regularised = a[idx] + np.eye(a.shape[-1]) * 1e-12 * np.trace(a[idx], axis1=1, axis2=2)[:, None, None]
    try:
        return idx, np.linalg.inv(regularised)
    except np.linalg.LinAlgError:
        kept, inverses = [], []
        for i, m in zip(idx, regularised):
            try:
                inverses.append(np.linalg.inv(m))
                kept.append(i)
            except np.linalg.LinAlgError:
                continue
        return np.asarray(kept, np.intp), np.asarray(inverses).reshape(-1, *a.shape[1:])


def measure_tiles(
    channels: list[TileChannel],
    tile_px: float,
    min_fill: float = 0.6,
    max_sigma_px: float = 0.15,
    min_correlation: float = 0.5,
) -> TileResiduals:
    """Residual displacement per tile, shared by all channels, with per-channel gain and offset.

    For each tile and channel k: ``T_k ~ a_k W_k + b_k + a_k grad(W_k) . D_k d``
    where d is the shift in phone image px shared by the channels and D_k converts
    it to channel px.  a_k is first estimated alone (regression of T_k on W_k),
    then the system in (b_k, a_k, dx, dy) is linear and solved per tile.
    tile_px: tile side in phone image px (rounded to whole channel px).
    A tile is reliable when at least ``min_fill`` of it is valid, its shift has a
    standard error <= ``max_sigma_px`` (and <= 4x the median tile's or 0.02 px), its
    correlation after the fit is >= ``min_correlation`` and the shift is below a
    quarter tile.
    Returns :class:`TileResiduals` in phone image px.
    """
    ch0 = channels[0]
    sx0 = ch0.to_image[0, 0]
    tile = max(4, int(round(tile_px / sx0)))
    rows, cols = ch0.template.shape
    ny, nx = rows // tile, cols // tile
    k_ch = len(channels)
    npar = 2 * k_ch + 2
    ata = np.zeros((ny, nx, npar, npar))
    atb = np.zeros((ny, nx, npar))
    tt = np.zeros((ny, nx))
    n_all = np.zeros((ny, nx))
    sst = np.zeros((ny, nx))
    fill = np.ones((ny, nx), bool)
    band_tiles = max(1, round(_TILE_BAND_ROWS / tile))

    def channel_sums(ch: TileChannel) -> dict[str, np.ndarray]:
        sx, sy = ch.to_image[0, 0], ch.to_image[1, 1]
        # derivative of W_k wrt a shift of d (phone image px): grad in channel px / scale
        grad_x = cv2.Sobel(ch.warped, cv2.CV_64F, 1, 0, ksize=1, scale=0.5)
        grad_y = cv2.Sobel(ch.warped, cv2.CV_64F, 0, 1, ksize=1, scale=0.5)
        sums = {key: np.empty((ny, nx)) for key in _TILE_SUMS}
        for i0 in range(0, ny, band_tiles):
            # a band of tile rows at a time: its products stay in the cache
            i1 = min(ny, i0 + band_tiles)
            band = slice(i0 * tile, i1 * tile)
            m = ch.mask[band].astype(np.float64)
            w = ch.warped[band].astype(np.float64)
            t = ch.template[band].astype(np.float64)
            gx, gy = grad_x[band] / sx, grad_y[band] / sy
            mw, mt, mgx, mgy = m * w, m * t, m * gx, m * gy
            for key, product in zip(_TILE_SUMS, (m, mw, mt, mw * w, mw * t, mt * t, mgx, mgy, mw * gx, mw * gy,
                                                 mgx * gx, mgx * gy, mgy * gy, mt * gx, mt * gy)):
                sums[key][i0:i1] = _tile_sum(product, tile, i1 - i0, nx)
        return sums

    # the channels' tile sums side by side, then their normal equations in order
    for k, regs_sum in enumerate(thread_map(channel_sums, channels)):
        n, sw, st, sww, swt, stt = (regs_sum[key] for key in ("n", "sw", "st", "sww", "swt", "stt"))
        fill &= n >= min_fill * tile * tile
        nn = np.maximum(n, 1)
        var_w = sww - sw * sw / nn
        gain = np.where(var_w > 0, (swt - sw * st / nn) / np.maximum(var_w, 1e-30), 1.0)
        ia, ib = 2 * k, 2 * k + 1
        ix, iy = npar - 2, npar - 1
        g = gain
        ata[..., ia, ia] += sww
        ata[..., ia, ib] += sw
        ata[..., ib, ia] += sw
        ata[..., ib, ib] += n
        for i_own, s_x, s_y in ((ia, regs_sum["wgx"], regs_sum["wgy"]), (ib, regs_sum["gx"], regs_sum["gy"])):
            ata[..., i_own, ix] += g * s_x
            ata[..., ix, i_own] += g * s_x
            ata[..., i_own, iy] += g * s_y
            ata[..., iy, i_own] += g * s_y
        ata[..., ix, ix] += g * g * regs_sum["gxgx"]
        ata[..., ix, iy] += g * g * regs_sum["gxgy"]
        ata[..., iy, ix] += g * g * regs_sum["gxgy"]
        ata[..., iy, iy] += g * g * regs_sum["gygy"]
        atb[..., ia] += swt
        atb[..., ib] += st
        atb[..., ix] += g * regs_sum["tgx"]
        atb[..., iy] += g * regs_sum["tgy"]
        tt += stt
        n_all += n
        sst += stt - st * st / nn
    flat_a = ata.reshape(-1, npar, npar)
    flat_b = atb.reshape(-1, npar)
    ok = fill.ravel().copy()
    sol = np.zeros_like(flat_b)
    sigma = np.full(ny * nx, np.inf)
    cov = np.zeros((ny * nx, 2, 2))  # of the shift, phone image px^2
    corr = np.zeros(ny * nx)
    idx, inv = _tile_inverses(flat_a, np.nonzero(ok)[0])
    ok[:] = False
    ok[idx] = True
    b_ok = flat_b[idx]
    # (stacks of one product per tile: the same numbers as each tile's alone)
    q = np.matmul(inv, b_ok[:, :, None])[:, :, 0]
    sol[idx] = q
    rss = np.maximum(tt.ravel()[idx] - np.matmul(q[:, None, :], b_ok[:, :, None])[:, 0, 0], 0.0)
    var = rss / np.maximum(n_all.ravel()[idx] - npar, 1)
    sigma[idx] = np.sqrt(np.maximum(var * (inv[:, -2, -2] + inv[:, -1, -1]), 0.0))
    cov[idx] = var[:, None, None] * inv[:, -2:, -2:]
    s_ok = sst.ravel()[idx]
    corr[idx] = np.where(s_ok > 0, np.sqrt(np.maximum(1.0 - rss / np.maximum(s_ok, 1e-30), 0.0)), 0.0)
    shifts = sol[:, -2:].copy()
    # the shift's best-measured direction: the covariance's smaller principal axis
    evals, evecs = np.linalg.eigh(cov)
    normal = evecs[:, :, 0]
    normal_sigma = np.where(ok, np.sqrt(np.maximum(evals[:, 0], 0.0)), np.inf)
    cy, cx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    cxw = cx.ravel() * tile + (tile - 1) / 2.0
    cyw = cy.ravel() * tile + (tile - 1) / 2.0
    # tile centres in phone image px, through the first channel's px (the cell centre
    # of a Bayer plane tile is the same for all planes up to the plane offset)
    centres = np.stack([cxw * sx0 + 0.5 * (sx0 - 1), cyw * ch0.to_image[1, 1] + 0.5 * (ch0.to_image[1, 1] - 1)], 1)
    finite = ok & np.isfinite(sigma)
    sig_ref = float(np.median(sigma[finite])) if finite.any() else np.inf
    textured = finite & (sigma <= min(max_sigma_px, max(4.0 * sig_ref, 0.02)))
    # a tile the model gets wrong fits poorly (large sigma, low correlation): it is
    # textured too when its signal stands well above the noise of the tiles that
    # fit (a smooth gradient or a noisy flat tile does not)
    if textured.any():
        var_px = np.maximum(tt.ravel() - np.einsum("ij,ij->i", sol, flat_b), 0.0) / np.maximum(n_all.ravel() - npar, 1)
        noise = float(np.median(var_px[textured]))
        signal = sst.ravel() / np.maximum(n_all.ravel(), 1)
        textured |= ok & (corr < min_correlation) & (signal >= 10.0 * noise)
    sigma_max = min(max_sigma_px, max(4.0 * sig_ref, 0.02))
    quarter = tile * sx0 / 4  # the largest sane shift (phone image px)
    correlates = corr >= min_correlation
    sane_both_ways = finite & (np.hypot(shifts[:, 0], shifts[:, 1]) < quarter) & correlates
    reliable = sane_both_ways & (sigma <= sigma_max)
    res = TileResiduals(centres, shifts, sigma, corr, reliable, (ny, nx), textured, None, normal, normal_sigma)
    # one straight edge: measured across as well as a reliable tile is in each of its
    # two directions (whose sigma adds both variances), the shift across it sane
    res.edge = ok & ~reliable & (np.sqrt(2.0) * normal_sigma <= sigma_max) & correlates & (res.across < quarter)
    # measured both ways, only less precisely than a reliable tile (noise, mostly)
    res.faint = sane_both_ways & ~reliable & ~res.edge & (sigma <= FAINT_SIGMA_FACTOR * sigma_max)
    return res


def _noise_scale(
    c: np.ndarray, v: np.ndarray, s: np.ndarray, centre: tuple[float, float], scale: float, degree: int, robust_k: float
) -> float:
    """Robust reduced chi-square of the richest polynomial fit (>= 1)."""
    n = len(c)
    deg = degree
    while deg >= 0 and n < 3 * len(_monomials(deg)):
        deg -= 1
    if deg < 0:
        return 1.0
    b = SmoothField(deg, centre, scale).basis(c)
    ww = 1.0 / s**2
    coef = np.linalg.solve((b * ww[:, None]).T @ b + 1e-9 * np.eye(b.shape[1]), (b * ww[:, None]).T @ v)
    z = np.hypot(*(v - b @ coef).T) / s
    # median of a chi with 2 dof is sqrt(2 ln 2) = 1.1774
    return float(max(1.0, (np.median(z) / 1.1774) ** 2))


def fit_field(
    centres: np.ndarray,
    values: np.ndarray,
    sigma: np.ndarray,
    reliable: np.ndarray,
    centre: tuple[float, float],
    scale: float,
    degrees: tuple[int, ...] = (-1, 0, 1, 2, 3, 4, 5, 6),
    robust_k: float = 4.0,
    grid_shape: tuple[int, int] | None = None,
    lambdas: tuple[float, ...] = (100.0, 10.0, 1.0, 0.1),
    like: SmoothField | None = None,
) -> SmoothField:
    """Fit a polynomial displacement field to tile values, choosing the degree by cross-validation.

    centres, values: (N, 2) phone image px; sigma: (N,) std errors (px); reliable: (N,) bool.
    Weighted least squares with Tukey reweighting (``robust_k`` standard errors);
    among ``degrees`` (-1 = no field) the degree with the lowest 4-fold
    cross-validated robust error on held-out tiles wins; a degree is only tried
    when there are at least 3 reliable training tiles per coefficient.
    With ``grid_shape`` (the tiles form that regular grid, row-major), what the
    polynomial leaves is then fitted by a smoothing spline on the tile grid
    (thin-plate penalty, weight chosen among ``lambdas`` or none by the same
    cross-validation): it holds parallax and anything not polynomial, and unlike
    a high-degree polynomial it cannot swing between sparse tiles.
    like: a field fitted before: its structure (degree; spline or not, and its weight
    ``smoothing``) is refitted to the new measurements without cross-validation
    (chosen afresh only when too few tiles are left for its degree).
    """
    sel = reliable & np.isfinite(sigma) & (sigma > 0)
    if sel.sum() < 6:
        return SmoothField(-1, centre, scale)
    c, v, s = centres[sel], values[sel], sigma[sel]
    # the box of measured tiles, half a tile spacing wider: the area the tiles cover
    if len(c) > 1:
        dist = np.hypot(*(c[:, None, :] - c[None, :, :]).reshape(-1, 2).T)
        apart = dist[dist > 0]
        spacing = float(apart.min()) if len(apart) else 0.0
    else:
        spacing = 0.0
    half = 0.5 * spacing
    bounds = (
        float(c[:, 0].min() - half), float(c[:, 1].min() - half),
        float(c[:, 0].max() + half), float(c[:, 1].max() + half),
    )
    hull = _hull(c, half)
    # floor sigma so that a few super-confident tiles do not dominate
    s = np.maximum(s, np.median(s) * 0.5)
    # the formal tile errors miss aliasing, compression and linearisation errors:
    # rescale them by the scatter left around the richest admissible model
    s = s * np.sqrt(_noise_scale(c, v, s, centre, scale, max(degrees), robust_k))
    n = len(c)
    folds = np.random.default_rng(0).permutation(n) % 4

    def solve(deg: int, idx: np.ndarray) -> np.ndarray:
        b = SmoothField(deg, centre, scale).basis(c[idx])
        wts = np.ones(len(idx))
        coef = np.zeros((b.shape[1], 2))
        for _ in range(5):
            ww = wts / s[idx] ** 2
            lhs = (b * ww[:, None]).T @ b + 1e-9 * np.eye(b.shape[1])
            coef = np.linalg.solve(lhs, (b * ww[:, None]).T @ v[idx])
            z = np.hypot(*(v[idx] - b @ coef).T) / s[idx]
            wts = np.where(z < robust_k, (1 - (z / robust_k) ** 2) ** 2, 0.0)
        return coef

    def loss(deg: int, coef: np.ndarray, idx: np.ndarray) -> float:
        pred = SmoothField(deg, centre, scale, coef).basis(c[idx]) @ coef if deg >= 0 else 0.0
        z2 = np.sum((v[idx] - pred) ** 2, axis=1) / s[idx] ** 2
        return float(np.sum(np.minimum(z2, robust_k**2)))

    # 4-fold cross-validation of the degree on held-out tiles: noise and oscillation
    # between sparse tiles both show up as held-out error
    select = like is None or (like.degree >= 0 and n < 3 * len(_monomials(like.degree)))
    best: tuple[float, int] | None = None if select else (0.0, like.degree)
    for deg in degrees if select else ():
        n_par = len(_monomials(deg)) if deg >= 0 else 0
        if deg >= 0 and 0.75 * n < 3 * n_par:
            continue
        if deg >= 0 and not _tame(SmoothField(deg, centre, scale, solve(deg, np.arange(n)), bounds), v):
            continue
        cv = 0.0
        for f in range(4):
            tr, te = np.nonzero(folds != f)[0], np.nonzero(folds == f)[0]
            coef = solve(deg, tr) if deg >= 0 else np.zeros((0, 2))
            cv += loss(deg, coef, te)
        # a richer model must earn its place: 1 % of the loss per extra coefficient pair
        cv *= 1.0 + 0.01 * n_par
        if best is None or cv < best[0]:
            best = (cv, deg)
    if best is None or best[1] < 0:
        out = SmoothField(-1, centre, scale, bounds=bounds, hull=hull)
    else:
        deg = best[1]
        out = SmoothField(deg, centre, scale, solve(deg, np.arange(n)), bounds, hull=hull)
    if not select:
        grid_shape = grid_shape if like.grid is not None else None
        lambdas = (like.smoothing or lambdas[0],)
    if grid_shape is not None and len(centres) == grid_shape[0] * grid_shape[1]:
        s_all = np.full(len(centres), np.inf)
        s_all[sel] = s
        resid = values - out(centres)
        grid = _fit_spline(centres, resid, s_all, sel, grid_shape, lambdas, robust_k, select)
        if grid is not None:
            out.grid, out.grid_origin, out.grid_step, out.smoothing = grid
    return out


def _hull(points: np.ndarray, grow: float) -> np.ndarray | None:
    """Convex hull of (N, 2) points, each vertex moved ``grow`` px away from the centroid;
    counter-clockwise in image coordinates (y down).  None for fewer than 3 points."""
    if len(points) < 3:
        return None
    hull = cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    if len(hull) < 3:
        return None
    centroid = hull.mean(axis=0)
    d = hull - centroid
    norm = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)
    hull = hull + d / norm[:, None] * grow
    # orient: positive area in (x, y-down) coordinates
    x, y = hull[:, 0], hull[:, 1]
    if np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) < 0:
        hull = hull[::-1]
    return hull


def _inside_convex(poly: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether points lie inside a convex polygon (orientation of :func:`_hull`); x and y
    broadcast together (a row of columns and a column of rows test a grid, each edge's
    two terms made once per column and once per row)."""
    a = poly
    b = np.roll(poly, -1, axis=0)
    inside = np.ones(np.broadcast_shapes(np.shape(x), np.shape(y)), bool)
    for (ax, ay), (bx, by) in zip(a, b):
        inside &= (bx - ax) * (y - ay) - (by - ay) * (x - ax) >= 0
    return inside


def _project_convex(poly: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest points of a polygon's boundary to the points (x, y)."""
    return _edge_point(poly, *_nearest_edge(poly, x, y))


def _edge_point(poly: np.ndarray, k: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points ``poly[k] + t (poly[k + 1] - poly[k])`` (edge k, t along it) -> (x, y)."""
    e = np.roll(poly, -1, axis=0) - poly
    return poly[k, 0] + t * e[k, 0], poly[k, 1] + t * e[k, 1]


def _nearest_edge(poly: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the points (x, y): the polygon's edge (k: from vertex k to vertex k + 1)
    whose nearest point is the nearest of all (the first of equals), and where along
    it that point lies (t in [0, 1]: ``poly[k] + t (poly[k + 1] - poly[k])``; 0 and 1
    are its vertices)."""
    best_d = np.full(np.shape(x), np.inf)
    best_k = np.zeros(np.shape(x), np.intp)
    best_t = np.zeros(np.shape(x))
    for k, ((ax, ay), (bx, by)) in enumerate(zip(poly, np.roll(poly, -1, axis=0))):
        ex, ey = bx - ax, by - ay
        t = np.clip(((x - ax) * ex + (y - ay) * ey) / max(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
        qx, qy = ax + t * ex, ay + t * ey
        d = (x - qx) ** 2 + (y - qy) ** 2
        closer = d < best_d
        best_d = np.where(closer, d, best_d)
        best_k[closer] = k
        best_t = np.where(closer, t, best_t)
    return best_k, best_t


def _inside_rows(poly: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grid of the columns ``x`` (increasing) and the rows ``y`` inside a convex
    polygon, row by row: (lo, hi), each (rows,), row i's px inside are the columns lo[i]
    to hi[i] - 1 (none where they are equal).  Exactly :func:`_inside_convex`'s test
    (the same products, each edge's condition ``a - m >= 0`` is ``m <= a``, and m, the
    column's term, is monotonic along the row), in the rows' and columns' time, not
    the grid's."""
    lo = np.zeros(len(y), np.intp)
    hi = np.full(len(y), len(x), np.intp)
    for (ax, ay), (bx, by) in zip(poly, np.roll(poly, -1, axis=0)):
        a = (bx - ax) * (y - ay)
        b = by - ay
        m = b * (x - ax)
        if b > 0:  # m rises along the row: a prefix of it passes
            hi = np.minimum(hi, np.searchsorted(m, a, "right"))
        elif b < 0:  # m falls: a suffix passes
            lo = np.maximum(lo, np.searchsorted(-m, -a, "left"))
        else:
            hi = np.where(a >= 0, hi, 0)
    return lo, np.maximum(hi, lo)


@dataclass(frozen=True)
class _Exterior:
    """The px of a working grid outside a field's hull (``rows``, ``cols``: their
    indices, row-major) and where the field's smooth parts are evaluated for them:
    the distinct points (``x``, ``y``: image px) and, for each px, its point
    (``index``).  Many px share a point: those clamped onto one point of the field's
    bounds, and those that land on one of the hull's vertices (where the hull covers
    part of the frame, most of them: 307 000 px on 126 000 points in a 12 MP lens pair's
    plane)."""

    rows: np.ndarray
    cols: np.ndarray
    x: np.ndarray
    y: np.ndarray
    index: np.ndarray


def _exterior(hull: np.ndarray, bounds: tuple[float, float, float, float] | None, shape: tuple[int, int],
              to_image: np.ndarray) -> _Exterior:
    """:class:`_Exterior` of a working grid of ``shape`` (rows, cols) whose px map to
    image px through the scale-and-offset matrix ``to_image`` (positive scales), for the
    polygon ``hull`` and the field's ``bounds``: the px that
    :meth:`SmoothField.dense` evaluates outside, where :meth:`SmoothField._where` puts
    them.  Cached: the channels of a warp, and the rounds of the local stage, share
    their fields' hulls."""
    if not (to_image[0, 0] > 0 and to_image[1, 1] > 0):
        raise ValueError("a working grid's scales must be positive")
    steps = (int(shape[0]), float(to_image[1, 1]), float(to_image[1, 2]), int(shape[1]), float(to_image[0, 0]),
             float(to_image[0, 2]))
    return _exterior_cached(np.ascontiguousarray(hull, np.float64).tobytes(), bounds, *steps)


def _groups(code: np.ndarray, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
    """Items grouped by their integer ``code`` (0 to ``n_codes`` - 1) -> (each item's
    group, the groups numbered in the order of their codes; one item of each group,
    whichever: the caller's items of one code are equal)."""
    one = np.zeros(n_codes, np.intp)
    one[code] = np.arange(len(code))
    present = np.zeros(n_codes, bool)
    present[code] = True
    return (np.cumsum(present) - 1)[code], one[present]


@functools.lru_cache(maxsize=8)
def _exterior_cached(hull_bytes: bytes, bounds: tuple[float, float, float, float] | None, rows: int, sy: float,
                     oy: float, cols: int, sx: float, ox: float) -> _Exterior:
    hull = np.frombuffer(hull_bytes, np.float64).reshape(-1, 2)
    x_img = np.arange(cols) * sx + ox  # (as SmoothField.dense)
    y_img = np.arange(rows) * sy + oy
    lo, hi = _inside_rows(hull, x_img, y_img)
    counts = lo + (cols - hi)
    rr = np.repeat(np.arange(rows), counts)
    at = np.arange(len(rr)) - np.repeat(np.cumsum(counts) - counts, counts)  # place among the row's outside px
    cc = np.where(at < lo[rr], at, at - lo[rr] + hi[rr])
    if not len(rr):
        empty = np.zeros(0)
        return _Exterior(rr, cc, empty, empty, rr)
    # the field is evaluated at the px clamped to its bounds: the columns (rows) beyond
    # one side of them share one point there
    xc, yc = SmoothField(bounds=bounds)._clamp(x_img, y_img)
    col_id = np.r_[0, np.cumsum(xc[1:] != xc[:-1])]
    row_id = np.r_[0, np.cumsum(yc[1:] != yc[:-1])]
    index, one = _groups(row_id[rr] * (col_id[-1] + 1) + col_id[cc], (row_id[-1] + 1) * (col_id[-1] + 1))
    x, y = xc[cc[one]], yc[rr[one]]
    outside = ~_inside_convex(hull, x, y)
    if outside.any():
        k, t = _nearest_edge(hull, x[outside], y[outside])
        x[outside], y[outside] = _edge_point(hull, k, t)
        # and the points on one vertex (t 0 or 1 on its edge) are one
        on = (t == 0.0) | (t == 1.0)
        code = np.arange(len(x)) + 2 * len(hull)
        code[np.flatnonzero(outside)[on]] = 2 * k[on] + (t[on] == 1.0)
        again, one = _groups(code, len(x) + 2 * len(hull))
        index = again[index]
        x, y = x[one], y[one]
    # (the indices kept as int32: a 12 MP lens pair's sky holds 307 000 px of a plane)
    rr, cc, index = rr.astype(np.int32), cc.astype(np.int32), index.astype(np.int32)
    for a in (rr, cc, x, y, index):
        a.flags.writeable = False
    return _Exterior(rr, cc, x, y, index)


def _tame(f: SmoothField, values: np.ndarray, slack: float = 1.5, margin_px: float = 0.5) -> bool:
    """True when the field stays within ``slack`` x the largest measured value (+ margin)
    everywhere in its bounds: a polynomial swinging between sparse tiles fails."""
    x0, y0, x1, y1 = f.bounds if f.bounds is not None else (-1.0, -1.0, 1.0, 1.0)
    xs, ys = np.meshgrid(np.linspace(x0, x1, 33), np.linspace(y0, y1, 33))
    u = f(np.stack([xs.ravel(), ys.ravel()], 1))
    limit = slack * float(np.max(np.hypot(values[:, 0], values[:, 1]))) + margin_px
    return float(np.max(np.hypot(u[:, 0], u[:, 1]))) <= limit


def _second_differences(gy: int, gx: int):
    idx = np.arange(gy * gx).reshape(gy, gx)
    rows, cols, vals = [], [], []
    r = 0
    for a, b, c in (
        (idx[:, :-2], idx[:, 1:-1], idx[:, 2:]),
        (idx[:-2, :], idx[1:-1, :], idx[2:, :]),
    ):
        for k in range(a.size):
            rows += [r, r, r]
            cols += [a.flat[k], b.flat[k], c.flat[k]]
            vals += [1.0, -2.0, 1.0]
            r += 1
    # cross term, weight sqrt(2)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    w = np.sqrt(2.0)
    for k in range(a.size):
        rows += [r] * 4
        cols += [a.flat[k], b.flat[k], c.flat[k], d.flat[k]]
        vals += [w, -w, -w, w]
        r += 1
    return sparse.csr_matrix((vals, (rows, cols)), shape=(r, gy * gx))


def _fit_spline(
    centres: np.ndarray,
    values: np.ndarray,
    sigma: np.ndarray,
    sel: np.ndarray,
    grid_shape: tuple[int, int],
    lambdas: tuple[float, ...],
    robust_k: float,
    select: bool = True,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float], float] | None:
    """Smoothing spline of tile values on the tile grid -> (node values, origin, step, the
    weight); None when 'no grid' cross-validates best.  select: False takes
    ``lambdas[0]`` without cross-validation."""
    gy, gx = grid_shape
    if gy < 3 or gx < 3 or sel.sum() < 12:
        return None
    # the normal matrix is banded (the penalty couples nodes at most two grid rows
    # apart): a banded LU takes about a third of a ms where a general sparse solve
    # took over 1 ms, mostly setting itself up (153 solves per fit)
    d2 = _second_differences(gy, gx)
    pen = (d2.T @ d2).tocoo()
    bands = int(np.max(pen.col - pen.row))
    pen_ab = np.zeros((2 * bands + 1, gy * gx))  # the layout of scipy.linalg.solve_banded
    pen_ab[bands + pen.row - pen.col, pen.col] = pen.data
    w_all = np.where(sel, 1.0 / np.where(np.isfinite(sigma), sigma, 1.0) ** 2, 0.0)
    w_med = float(np.median(w_all[sel]))
    idx = np.nonzero(sel)[0]
    folds = np.random.default_rng(1).permutation(len(idx)) % 4

    def solve(lam: float, w: np.ndarray) -> np.ndarray:
        wts = w.copy()
        u = np.zeros_like(values)
        for _ in range(3):
            ab = lam * w_med * pen_ab
            ab[bands] += wts + 1e-9 * w_med
            u = solve_banded((bands, bands), ab, wts[:, None] * values)  # x and y, one factorisation
            z = np.hypot(*(values - u).T) * np.sqrt(w)
            wts = w * np.where(z < robust_k, (1 - (z / robust_k) ** 2) ** 2, 0.0)
        return u

    def loss(u: np.ndarray, te: np.ndarray) -> float:
        z2 = np.sum((values[te] - u[te]) ** 2, axis=1) * w_all[te]
        return float(np.sum(np.minimum(z2, robust_k**2)))

    best_lam, best_loss = (None, 0.0) if select else (lambdas[0], 0.0)
    for f in range(4 if select else 0):
        best_loss += loss(np.zeros_like(values), idx[folds == f])
    best_loss *= 1.02  # the spline must earn its place

    def held_out_loss(job: tuple[float, int]) -> float:
        lam, f = job
        w = w_all.copy()
        w[idx[folds == f]] = 0.0
        return loss(solve(lam, w), idx[folds == f])

    # every (weight, fold) fit side by side
    jobs = [(lam, f) for lam in lambdas for f in range(4)] if select else []
    losses = thread_map(held_out_loss, jobs)
    for i, lam in enumerate(lambdas if select else ()):
        cv = float(sum(losses[4 * i : 4 * i + 4]))
        if cv < best_loss:
            best_lam, best_loss = lam, cv
    if best_lam is None:
        return None
    u = solve(best_lam, w_all).reshape(gy, gx, 2)
    origin = (float(centres[0, 0]), float(centres[0, 1]))
    step = (
        float(centres[1, 0] - centres[0, 0]) if gx > 1 else 1.0,
        float(centres[gx, 1] - centres[0, 1]) if gy > 1 else 1.0,
    )
    return u, origin, step, float(best_lam)


def warp_channels(channels: list[Channel], h_image: np.ndarray, fld: SmoothField,
                  interpolation: int = cv2.INTER_CUBIC) -> list[TileChannel]:
    """Sample each prepared channel's DSLR image through the model onto its template grid.

    channels: from :func:`alignment.ecc.prepare_channels` (``to_frame`` = target px
    -> phone image px); h_image: (3,3) phone image px -> DSLR px; fld: the local
    field in phone image px.  interpolation: INTER_CUBIC samples the exact cubic
    spline (what every measurement needs); INTER_LINEAR OpenCV's bilinear remap
    (positions rounded to 1/32 px, ten times faster: enough to find what is px off).
    Returns one :class:`TileChannel` per channel whose mask keeps template px that
    are valid and sample measured DSLR px.  The channels are warped side by side
    (:func:`alignment.threads.thread_map`).
    """

    def warp(ch: Channel) -> TileChannel:
        shape = ch.template.shape
        t_k = ch.to_frame
        disp = None if fld.empty else fld.dense(shape, t_k)
        mx, my, inside = template_positions(h_image @ t_k, shape, ch.image.shape, disp)
        warped = sample_at(ch.image, mx, my, interpolation,
                           ch.coefficients if interpolation == cv2.INTER_CUBIC else None)
        if ch.mask_has_holes:
            inside &= sample_at(ch.image_mask_f32, mx, my, cv2.INTER_LINEAR) > 0.999
        return TileChannel(ch.template, warped, ch.mask & inside, t_k, inside)

    return thread_map(warp, channels)


def refine_local(
    targets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None,
    images: list[np.ndarray] | None,
    image_mask: np.ndarray | None,
    h_image: np.ndarray,
    image_size: tuple[int, int],
    *,
    tile_px: float = 48.0,
    blur_sigma: float = 0.5,
    norm_sigma: float | None = None,
    iterations: int = 6,
    tol_px: float = 1e-2,
    degrees: tuple[int, ...] = (-1, 0, 1, 2, 3, 4, 5, 6),
    init: SmoothField | None = None,
    shading: list[tuple[np.ndarray, np.ndarray]] | None = None,
    spline: bool = True,
    channels: list[Channel] | None = None,
) -> tuple[SmoothField, TileResiduals, TileResiduals, list[TileChannel]]:
    """Refine what the homography cannot hold.

    targets: [(values (h, w), valid, (3,3) px -> phone image px)] (Bayer planes or
    the luminance); images: the DSLR image predicting each target; h_image: (3,3)
    phone image px -> DSLR px; image_size: (W, H) of the phone image.
    tile_px: tile side in phone image px.  degrees: candidate polynomial degrees;
    spline: also fit a smoothing spline to what the polynomial leaves.
    channels: already prepared channels (:func:`alignment.ecc.prepare_channels`
    with this ``blur_sigma`` / ``norm_sigma``); then ``targets``, ``images`` and
    ``image_mask`` are not used.  shading: per channel, the (gain, offset) maps of a
    photometric model on its template grid (:func:`alignment.ecc.photometric_maps`):
    the tiles then compare ``(template - offset) / gain`` with the DSLR, so a smooth
    gain over the frame (vignetting) does not pass for a shift in smooth tiles (whose
    own gain and offset are constant over the tile).  None: the templates as they are.
    Returns (field in phone image px, tile residuals before any field, tile
    residuals after the final field, the channels warped by the final field: see
    :func:`warp_channels`).  When the field converged (its last change under
    ``tol_px`` at every tile centre, or a change of at most :data:`SETTLED_STEP_TOLS`
    ``tol_px`` in the structure of the round before that leaves, as a series shrinking
    as its last two steps did, under ``tol_px`` to go: :func:`_left_to_go`), the last
    measurement stands for the final one: its shifts less that change, and its warped
    channels (under a field at most that change from the returned one), which saves a
    warp of every channel.  When the
    field swings about its solution (two steps of one form pointing nearly opposite
    ways), the step the next round measures from is shortened by the ratio of the two
    (:func:`_overshoot_damping`).
    """
    if channels is None:
        if targets is None or images is None:
            raise ValueError("refine_local needs targets and images, or prepared channels")
        channels = prepare_channels(targets, images, image_mask, h_image, blur_sigma=blur_sigma, norm_sigma=norm_sigma)
    w_img, h_img = image_size
    centre = ((w_img - 1) / 2.0, (h_img - 1) / 2.0)
    scale = max(w_img, h_img) / 2.0
    fld = init if init is not None else SmoothField(-1, centre, scale)
    first: TileResiduals | None = None
    fits: list[SmoothField] = []
    locked: SmoothField | None = None
    warped: list[TileChannel] = []
    # the templates as the DSLR would show them: a tile then sees no shading slope
    shaded = None if shading is None else [(ch.template - offset) / np.maximum(gain, 1e-3)
                                           for ch, (gain, offset) in zip(channels, shading)]

    def measure(warped: list[TileChannel]) -> TileResiduals:
        if shaded is not None:
            warped = [replace(c, template=t) for c, t in zip(warped, shaded)]
        return measure_tiles(warped, tile_px)

    # the first warp and its measurement are kept while the loop runs: a structure that
    # cross-validates no better than none falls back to the start's field exactly (a
    # spline, then no field: A, B, A), whose warp is then not made again (a real-size
    # whiteboard: 0.3 s)
    start: tuple | None = None

    def warped_and_measured(f: SmoothField) -> tuple[list[TileChannel], TileResiduals]:
        nonlocal start
        key = f.displacement_key()
        if start is not None and key == start[0]:
            return start[1], start[2]
        w = warp_channels(channels, h_image, f)
        r = measure(w)
        if start is None:
            start = (key, w, r)
        return w, r

    last_move: np.ndarray | None = None  # the last round's field update at the tile centres
    for _ in range(iterations):
        warped, res = warped_and_measured(fld)
        if first is None:
            first = res
        # the new field must explain the old field plus the measured residual at tile
        # centres; the radial part (a global lens model) stays, the rest is refitted
        rad = fld.radial_part(res.centres[:, 0], res.centres[:, 1])
        target = fld(res.centres) + res.shifts - rad
        # the structure (degree, spline and its weight) is chosen afresh each round until
        # two structures that cross-validate alike take turns (A, B, A): then the simpler
        # of the two is kept and refitted, or the field never settles
        def fit(like: SmoothField | None, values: np.ndarray = target) -> SmoothField:
            f = fit_field(res.centres, values, res.sigma, res.reliable, centre, scale, degrees,
                          grid_shape=res.grid_shape if spline else None, like=like)
            f.radial = fld.radial
            return f

        new = fit(locked)
        if locked is None and len(fits) >= 2 and _structure(new) == _structure(fits[-2]) != _structure(fits[-1]):
            locked = min(new, fits[-1], key=_complexity)
            if locked is not new:
                new = fit(locked)
        fits.append(new)
        grid = res.centres[res.reliable] if res.reliable.any() else res.centres
        change = float(np.max(np.hypot(*(new(grid) - fld(grid)).T))) if len(grid) else 0.0
        move = new(res.centres) - fld(res.centres)
        # a step of the structure the last round chose, in a series that shrinks fast
        # enough that what it leaves to go is under tol_px, ends the loop as a step under
        # tol_px does (a flexible spline's fixed point approached in steps of 0.015 px)
        settling = (last_move is not None and len(fits) >= 2 and _structure(new) == _structure(fits[-2])
                    and change <= SETTLED_STEP_TOLS * tol_px
                    and _left_to_go(last_move, move, res.reliable, change) < tol_px)
        if change < tol_px or settling:
            # converged: the last measurement, under a field less than tol_px (at most
            # SETTLED_STEP_TOLS tol_px) from the new one, stands for the final one (its
            # shifts less the field's change: the linearisation the fit itself uses); no
            # further warp
            final = replace(res, shifts=res.shifts - move)
            assert first is not None
            return new, first, final, warped
        # the field swings about its solution (each tile's one-step shift overshoots: the
        # three-point derivative falls short on fine texture): the step that the next
        # round will measure from is shortened by the ratio the last two steps show, the
        # structure kept; only between fields of one form (degree, spline or not), as a
        # step that changes the form is no overshoot
        same_form = len(fits) >= 2 and _structure(new)[:2] == _structure(fits[-2])[:2]
        damping = _overshoot_damping(last_move, move, res.reliable) if same_form else 1.0
        if damping < 1.0:
            new = fit(new, fld(res.centres) + damping * res.shifts - rad)
            fits[-1] = new
            move = new(res.centres) - fld(res.centres)
        last_move = move
        fld = new
    warped, final = warped_and_measured(fld)
    assert first is not None
    return fld, first, final, warped


#: :func:`refine_local` ends at a step of at most this many ``tol_px`` when the series of
#: steps leaves less than ``tol_px`` to go (:func:`_left_to_go`); the warp it returns is
#: then up to this many ``tol_px`` from the field (0.05 px at the default)
SETTLED_STEP_TOLS = 5.0


def _left_to_go(last: np.ndarray, step: np.ndarray, reliable: np.ndarray, length: float) -> float:
    """How far a fixed-point iteration still is from its end after ``step`` ((N, 2) at the
    tile centres), which followed ``last``, at most ``length`` px long: with r the ratio of
    the two over the ``reliable`` tiles (``<step, last> / <last, last>``), a series that
    shrinks by |r| a step has ``length |r| / (1 - |r|)`` left; inf for |r| >= 1."""
    if not reliable.any():
        return float("inf")
    a, b = last[reliable].ravel(), step[reliable].ravel()
    aa = float(a @ a)
    if aa <= 1e-12:
        return float("inf")
    ratio = abs(float(a @ b) / aa)
    return length * ratio / (1.0 - ratio) if ratio < 1.0 else float("inf")


#: :func:`_overshoot_damping` shortens a step when the last two steps of the field ran
#: back at least this much of each other (their ratio, at most ``-OVERSHOOT_RATIO[0]``
#: and at least ``-OVERSHOOT_RATIO[1]``) ...
OVERSHOOT_RATIO = (0.1, 0.9)
#: ... and point nearly opposite ways (their cosine over the reliable tiles at most minus this)
OVERSHOOT_COSINE = 0.7


def _overshoot_damping(last: np.ndarray | None, step: np.ndarray, reliable: np.ndarray) -> float:
    """The factor a field's step is shortened by when the field swings about its
    solution: with the last step ``last`` and this one ``step`` ((N, 2) at the tile
    centres, phone image px) in ratio r = <step, last> / <last, last> over the
    ``reliable`` tiles, a fixed-point iteration whose every step overshoots by a factor
    g has r = 1 - g, and a step times 1 / (1 - r) lands on the solution.  1.0 (no
    change) unless r lies in -OVERSHOOT_RATIO and the two steps' cosine is at most
    -OVERSHOOT_COSINE."""
    if last is None or not reliable.any():
        return 1.0
    a, b = last[reliable].ravel(), step[reliable].ravel()
    aa, bb = float(a @ a), float(b @ b)
    if aa <= 1e-12 or bb <= 1e-12:
        return 1.0
    ab = float(a @ b)
    ratio, cosine = ab / aa, ab / np.sqrt(aa * bb)
    if -OVERSHOOT_RATIO[1] <= ratio <= -OVERSHOOT_RATIO[0] and cosine <= -OVERSHOOT_COSINE:
        return 1.0 / (1.0 - ratio)
    return 1.0


def _structure(f: SmoothField) -> tuple:
    """What :func:`fit_field` chose: (degree, spline or not, the spline's weight)."""
    return f.degree, f.grid is not None, f.smoothing


def _complexity(f: SmoothField) -> tuple[int, int, float]:
    """Orders structures from the simplest: polynomial terms, then a spline, then a
    looser one (a smaller weight bends more)."""
    terms = len(_monomials(f.degree)) if f.degree >= 0 else 0
    return terms, int(f.grid is not None), -(f.smoothing or 0.0)


def model_correlation(warped: list[TileChannel], norm_sigma: float | None = 12.0) -> float:
    """Correlation of the phone targets with the DSLR warped through the full model.

    warped: from :func:`warp_channels` (template and warped DSLR on each target's
    grid, with the joint mask).  Both are locally normalised on the target grid
    (window ``norm_sigma`` target px; None: raw values), so a DSLR and a phone that
    render tones differently still correlate where their structure agrees.
    Pooled over channels, over the valid overlap; in [-1, 1].
    """

    def sums(ch: TileChannel) -> tuple[float, float, float]:
        m = ch.mask
        if m.sum() < 16:
            return 0.0, 0.0, 0.0
        t, w = ch.template, ch.warped
        if norm_sigma:
            t = local_normalize(t, norm_sigma, m, coarse=True)
            w = local_normalize(w, norm_sigma, m, coarse=True)
        a = t[m].astype(np.float64)
        b = w[m].astype(np.float64)
        a -= a.mean()
        b -= b.mean()
        return float(a @ b), float(a @ a), float(b @ b)

    sxy, sxx, syy = np.sum(thread_map(sums, warped), axis=0) if warped else (0.0, 0.0, 0.0)
    return float(sxy / np.sqrt(sxx * syy)) if sxx > 0 and syy > 0 else 0.0
