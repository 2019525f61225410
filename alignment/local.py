"""Local refinement: tile-wise residual displacement, regularised into a smooth field.

After the global homography H (phone -> DSLR), what is left (lens distortion,
slight parallax) is a displacement field u on the phone grid:
``map(x) = H(x + u(x))``.  We measure u tile by tile with a one-step
Lucas-Kanade that also fits a per-tile gain and offset
(``T ~ a * W + b + a * grad(W) . d``, linear in (a, b, a*dx, a*dy)), where W is
the DSLR image warped onto the phone grid through the current model; the tile
estimates, weighted by their inverse variance, are fitted by a polynomial
field whose degree is chosen by the Bayesian information criterion (degree 0
"none" included, so a pure homography pair gets no field and no added noise);
warp, measure and fit repeat until the update is below ``tol_px``.

Coordinates: the field is stored in phone IMAGE px (the full raw grid for a
raw phone image); x = column, y = row, pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from alignment.ecc import prepare_level_pair, warp_to_template

__all__ = ["SmoothField", "TileResiduals", "TileChannel", "measure_tiles", "fit_field", "refine_local"]


def _monomials(degree: int) -> list[tuple[int, int]]:
    return [(i - j, j) for i in range(degree + 1) for j in range(i + 1)]


@dataclass
class SmoothField:
    """Polynomial displacement field u(x) (phone image px -> displacement in phone image px).

    degree: total polynomial degree (-1 = no field, u = 0).
    centre: (cx, cy) and scale: coordinates are normalised as (x - c) / scale.
    coef: (n_terms, 2) coefficients of the monomials u^i v^j (see :func:`_monomials`).
    """

    degree: int = -1
    centre: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    coef: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    def basis(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        u = (xy[:, 0] - self.centre[0]) / self.scale
        v = (xy[:, 1] - self.centre[1]) / self.scale
        return np.stack([u**i * v**j for i, j in _monomials(self.degree)], axis=1)

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) phone image px -> (N, 2) displacement in phone image px."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        if self.degree < 0 or self.coef.size == 0:
            return np.zeros_like(xy)
        return self.basis(xy) @ self.coef

    def dense(self, shape: tuple[int, int], to_image: np.ndarray) -> np.ndarray:
        """(rows, cols, 2) displacement in WORKING px for every pixel of a working grid
        whose px map to image px through the scale-and-offset matrix ``to_image``."""
        rows, cols = shape
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
        pts = np.stack([xx.ravel() * to_image[0, 0] + to_image[0, 2], yy.ravel() * to_image[1, 1] + to_image[1, 2]], 1)
        d = self(pts)
        d[:, 0] /= to_image[0, 0]
        d[:, 1] /= to_image[1, 1]
        return d.reshape(rows, cols, 2)

    def to_dict(self) -> dict:
        return {
            "model": "polynomial",
            "degree": int(self.degree),
            "centre": [float(c) for c in self.centre],
            "scale": float(self.scale),
            "coef": np.asarray(self.coef, float).tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> "SmoothField":
        if not d:
            return cls()
        return cls(int(d["degree"]), tuple(d["centre"]), float(d["scale"]), np.asarray(d["coef"], float).reshape(-1, 2))


@dataclass
class TileResiduals:
    """Per-tile residual displacement (phone image px), after the current model.

    centres: (N, 2) tile centres; shifts: (N, 2) measured displacement d such that
    the phone tile matches the DSLR at H(x + u(x) + d); sigma: (N,) standard error
    of the shift in px; correlation: (N,) tile correlation after the shift;
    reliable: (N,) bool, tiles with texture, a sane fit and not outliers;
    grid_shape: (rows, cols) of the tile grid (N = rows * cols).
    """

    centres: np.ndarray
    shifts: np.ndarray
    sigma: np.ndarray
    correlation: np.ndarray
    reliable: np.ndarray
    grid_shape: tuple[int, int]

    @property
    def magnitude(self) -> np.ndarray:
        return np.hypot(self.shifts[:, 0], self.shifts[:, 1])


def _tile_sum(a: np.ndarray, t: int, ny: int, nx: int) -> np.ndarray:
    return a[: ny * t, : nx * t].reshape(ny, t, nx, t).sum(axis=(1, 3))


@dataclass
class TileChannel:
    """One channel for :func:`measure_tiles`: a phone target and the DSLR warped onto it.

    template, warped: (rows, cols) float32 filtered alike; mask: bool where both are
    valid; to_image: (3,3) scale-and-offset, channel px -> phone image px.
    """

    template: np.ndarray
    warped: np.ndarray
    mask: np.ndarray
    to_image: np.ndarray


def measure_tiles(channels: list[TileChannel], tile_px: float, min_fill: float = 0.6) -> TileResiduals:
    """Residual displacement per tile, shared by all channels, with per-channel gain and offset.

    For each tile and channel k: ``T_k ~ a_k W_k + b_k + a_k grad(W_k) . D_k d``
    where d is the shift in phone image px shared by the channels and D_k converts
    it to channel px.  a_k is first estimated alone (regression of T_k on W_k),
    then the system in (b_k, a_k, dx, dy) is linear and solved per tile.
    tile_px: tile side in phone image px (rounded to whole channel px).
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
    for k, ch in enumerate(channels):
        m = ch.mask.astype(np.float64)
        w = ch.warped.astype(np.float64)
        t = ch.template.astype(np.float64)
        sx, sy = ch.to_image[0, 0], ch.to_image[1, 1]
        # derivative of W_k wrt a shift of d (phone image px): grad in channel px / scale
        gx = cv2.Sobel(ch.warped, cv2.CV_64F, 1, 0, ksize=1, scale=0.5) / sx
        gy = cv2.Sobel(ch.warped, cv2.CV_64F, 0, 1, ksize=1, scale=0.5) / sy
        ts = lambda a: _tile_sum(a, tile, ny, nx)  # noqa: E731
        n = ts(m)
        fill &= n >= min_fill * tile * tile
        sw, st, sww, swt, stt = ts(m * w), ts(m * t), ts(m * w * w), ts(m * w * t), ts(m * t * t)
        nn = np.maximum(n, 1)
        var_w = sww - sw * sw / nn
        gain = np.where(var_w > 0, (swt - sw * st / nn) / np.maximum(var_w, 1e-30), 1.0)
        gxa, gya = gx * 1.0, gy * 1.0
        regs_sum = {
            "gx": ts(m * gxa), "gy": ts(m * gya), "wgx": ts(m * w * gxa), "wgy": ts(m * w * gya),
            "gxgx": ts(m * gxa * gxa), "gxgy": ts(m * gxa * gya), "gygy": ts(m * gya * gya),
            "tgx": ts(m * t * gxa), "tgy": ts(m * t * gya),
        }
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
    corr = np.zeros(ny * nx)
    eye = np.eye(npar)
    for i in np.nonzero(ok)[0]:
        a_i = flat_a[i]
        try:
            inv = np.linalg.inv(a_i + eye * 1e-12 * np.trace(a_i))
        except np.linalg.LinAlgError:
            ok[i] = False
            continue
        q = inv @ flat_b[i]
        sol[i] = q
        rss = max(tt.ravel()[i] - q @ flat_b[i], 0.0)
        var = rss / max(n_all.ravel()[i] - npar, 1)
        sigma[i] = float(np.sqrt(max(var * (inv[-2, -2] + inv[-1, -1]), 0.0)))
        corr[i] = float(np.sqrt(max(1.0 - rss / max(sst.ravel()[i], 1e-30), 0.0))) if sst.ravel()[i] > 0 else 0.0
    shifts = sol[:, -2:].copy()
    cy, cx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    cxw = cx.ravel() * tile + (tile - 1) / 2.0
    cyw = cy.ravel() * tile + (tile - 1) / 2.0
    # tile centres in phone image px, through the first channel's px (the cell centre
    # of a Bayer plane tile is the same for all planes up to the plane offset)
    centres = np.stack([cxw * sx0 + 0.5 * (sx0 - 1), cyw * ch0.to_image[1, 1] + 0.5 * (ch0.to_image[1, 1] - 1)], 1)
    reliable = ok & np.isfinite(sigma) & (np.hypot(shifts[:, 0], shifts[:, 1]) < tile * sx0 / 4)
    return TileResiduals(centres, shifts, sigma, corr, reliable, (ny, nx))


def fit_field(
    centres: np.ndarray,
    values: np.ndarray,
    sigma: np.ndarray,
    reliable: np.ndarray,
    centre: tuple[float, float],
    scale: float,
    degrees: tuple[int, ...] = (-1, 0, 1, 2, 3, 4, 5, 6),
    robust_k: float = 4.0,
) -> SmoothField:
    """Fit a polynomial displacement field to tile values, choosing the degree by BIC.

    centres, values: (N, 2) phone image px; sigma: (N,) std errors (px); reliable: (N,) bool.
    Weighted least squares with Tukey reweighting (``robust_k`` standard errors);
    among ``degrees`` (-1 = no field) the lowest BIC wins; a degree is only
    tried when there are at least 3 reliable tiles per coefficient.
    """
    sel = reliable & np.isfinite(sigma) & (sigma > 0)
    if sel.sum() < 6:
        return SmoothField(-1, centre, scale)
    c, v, s = centres[sel], values[sel], sigma[sel]
    # floor sigma so that a few super-confident tiles do not dominate
    s = np.maximum(s, np.median(s) * 0.5)
    n = len(c)
    best: tuple[float, SmoothField] | None = None
    for deg in degrees:
        f = SmoothField(deg, centre, scale)
        if deg < 0:
            res = v
            coef = np.zeros((0, 2))
            wts = np.ones(n)
            n_par = 0
        else:
            b = f.basis(c)
            n_par = b.shape[1]
            if n < 3 * n_par:
                continue
            wts = np.ones(n)
            coef = np.zeros((n_par, 2))
            for _ in range(5):
                ww = wts / s**2
                lhs = (b * ww[:, None]).T @ b + 1e-9 * np.eye(n_par)
                coef = np.linalg.solve(lhs, (b * ww[:, None]).T @ v)
                res = v - b @ coef
                z = np.hypot(res[:, 0], res[:, 1]) / s
                wts = np.where(z < robust_k, (1 - (z / robust_k) ** 2) ** 2, 0.0)
            res = v - b @ coef
        z2 = (res[:, 0] ** 2 + res[:, 1] ** 2) / s**2
        # robust chi2: cap outliers so one bad tile does not choose the degree
        chi2 = float(np.sum(np.minimum(z2, robust_k**2)))
        bic = chi2 + 2 * n_par * np.log(n)
        f.coef = coef
        if best is None or bic < best[0]:
            best = (bic, f)
    return best[1] if best else SmoothField(-1, centre, scale)


def _warp_channels(
    targets: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    prepared: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
    h_image: np.ndarray,
    fld: SmoothField,
) -> list[TileChannel]:
    out = []
    for (values, _valid, t_k), (t, tm, im, imk) in zip(targets, prepared):
        shape = values.shape
        disp = fld.dense(shape, t_k) if fld.degree >= 0 else None
        hk = h_image @ t_k
        warped, inside = warp_to_template(im, hk, shape, disp)
        if imk is not None:
            mk, _ = warp_to_template(imk.astype(np.float32), hk, shape, disp, cv2.INTER_LINEAR)
            inside &= mk > 0.999
        out.append(TileChannel(t, warped, tm & inside, t_k))
    return out


def refine_local(
    targets: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    images: list[np.ndarray],
    image_mask: np.ndarray | None,
    h_image: np.ndarray,
    image_size: tuple[int, int],
    *,
    tile_px: float = 48.0,
    blur_sigma: float = 0.5,
    norm_sigma: float | None = None,
    iterations: int = 6,
    tol_px: float = 1e-3,
    degrees: tuple[int, ...] = (-1, 0, 1, 2, 3, 4, 5, 6),
    init: SmoothField | None = None,
) -> tuple[SmoothField, TileResiduals, TileResiduals]:
    """Refine what the homography cannot hold.

    targets: [(values (h, w), valid, (3,3) px -> phone image px)] (Bayer planes or
    the luminance); images: the DSLR image predicting each target; h_image: (3,3)
    phone image px -> DSLR px; image_size: (W, H) of the phone image.
    tile_px: tile side in phone image px.
    Returns (field in phone image px, tile residuals before any field, tile
    residuals after the final field).
    """
    prepared = []
    for (values, valid, t_k), img in zip(targets, images):
        prepared.append(prepare_level_pair(values, img, h_image @ t_k, valid, image_mask, blur_sigma, norm_sigma))
    w_img, h_img = image_size
    centre = ((w_img - 1) / 2.0, (h_img - 1) / 2.0)
    scale = max(w_img, h_img) / 2.0
    fld = init if init is not None else SmoothField(-1, centre, scale)
    first: TileResiduals | None = None
    for _ in range(iterations):
        res = measure_tiles(_warp_channels(targets, prepared, h_image, fld), tile_px)
        if first is None:
            first = res
        # the new field must explain the old field plus the measured residual at tile centres
        target = fld(res.centres) + res.shifts
        new = fit_field(res.centres, target, res.sigma, res.reliable, centre, scale, degrees)
        grid = res.centres[res.reliable] if res.reliable.any() else res.centres
        change = float(np.max(np.hypot(*(new(grid) - fld(grid)).T))) if len(grid) else 0.0
        fld = new
        if change < tol_px:
            break
    final = measure_tiles(_warp_channels(targets, prepared, h_image, fld), tile_px)
    assert first is not None
    return fld, first, final


def model_correlation(
    targets: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    images: list[np.ndarray],
    image_mask: np.ndarray | None,
    h_image: np.ndarray,
    fld: SmoothField,
    blur_sigma: float = 0.5,
    norm_sigma: float | None = 12.0,
) -> float:
    """Correlation of the phone targets with the DSLR warped through the full model
    (homography and field), pooled over channels, over the valid overlap."""
    prepared = [
        prepare_level_pair(v, img, h_image @ t_k, valid, image_mask, blur_sigma, norm_sigma)
        for (v, valid, t_k), img in zip(targets, images)
    ]
    sxy = sxx = syy = 0.0
    for ch in _warp_channels(targets, prepared, h_image, fld):
        m = ch.mask
        if m.sum() < 16:
            continue
        a = ch.template[m].astype(np.float64)
        b = ch.warped[m].astype(np.float64)
        a -= a.mean()
        b -= b.mean()
        sxy += float(a @ b)
        sxx += float(a @ a)
        syy += float(b @ b)
    return sxy / np.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0
