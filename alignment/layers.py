"""Layers: objects that moved against the background, each with a model of its own.

The trust map (:mod:`alignment.trust`) drops what does not follow the global
model: things nearer than the background (parallax) and things that moved
between the exposures.  A planar or nearly planar object is mapped from the
phone to the DSLR by a homography of its own, so instead of losing it:

1. each connected region that moved (``TrustMap.moved_core``, at least
   ``min_area`` of the frame) gives correspondences: every textured px whose
   flow comes back maps to the DSLR point the global model assigns to the px
   the flow points at;
2. a homography is fitted to them with MAGSAC++ (in phone px with the phone's
   radial lens model removed, so the lens stays the global one);
3. the per-plane Gauss-Newton of the fine stage refines it on the region alone
   (the region shrunk by the margin, so no px of the boundary takes part);
4. the region is measured again under its own model, exactly as the background
   was (:func:`alignment.trust.dense_residual`, :func:`alignment.trust.evidence`):
   the layer is kept when most of its textured px agree with it; its px that
   agree (and the flat px the trust map gave to it), shrunk by the margin, are
   candidates;
5. the tile-wise Lucas-Kanade of the local stage, on the candidates, keeps the
   tiles whose residual is at most ``max_tile_px`` and whose correlation is as
   good as the background's (a smeared object or a region holding two objects
   fails here); their candidates are trusted with the layer's map.

Coordinates: phone image px (full raw grid), DSLR px of the reduced working
grid while fitting; x = column, y = row, pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from alignment import trust
from alignment.ecc import Channel, refine_planes
from alignment.geometry import apply_homography
from alignment.local import SmoothField, TileChannel, measure_tiles, warp_channels

__all__ = ["RecoveredLayer", "recover_layers", "sharpness_ratio"]


@dataclass
class RecoveredLayer:
    """One recovered layer.

    homography: (3, 3) phone image px, radially undistorted by the global lens model
    -> DSLR px of the grid it was fitted on; region: (h, w) bool working px it owns
    (trusted); support: px of the moved region it was fitted to; agreement: share of
    the region's textured px that agree with it.
    """

    homography: np.ndarray
    region: np.ndarray
    support: int
    agreement: float


def _undistort(field: SmoothField, xy: np.ndarray) -> np.ndarray:
    """Phone image px moved by the global lens model alone (the radial part)."""
    return xy + field.radial_part(xy[:, 0], xy[:, 1])


def recover_layers(
    trust_map: trust.TrustMap,
    res: trust.DenseResidual,
    channels: list[Channel],
    model_map,
    lens: SmoothField,
    q_radial: np.ndarray,
    image_size: tuple[int, int],
    params: trust.TrustParams,
    *,
    min_area: float = 0.003,
    min_agreement: float = 0.6,
    max_layers: int = 6,
    gain_degree: int = 1,
    tile_px: float = 24.0,
    max_tile_px: float = 0.2,
    reference_correlation: float = 0.9,
    background_sharpness: float = 1.0,
    min_sharpness: float = 0.85,
) -> list[RecoveredLayer]:
    """Fit, refine and verify a homography per moved region (see the module docstring).

    trust_map / res: the final trust map and the dense residual it came from;
    channels: the fine stage's prepared channels (phone planes against the DSLR
    prediction, reduced DSLR grid); model_map: (N, 2) phone image px -> reduced DSLR
    px through the global model; lens: the global model's radial lens field (may be
    empty); q_radial: its coefficients for the Gauss-Newton; image_size: (W, H).
    tile_px / max_tile_px: side (phone px) and largest residual (phone px) of the
    tiles that verify a layer (a tile's residual is the mean over its px: where the
    layer's map is off by a slope, or the tile holds the edge of a touching object
    whose own motion differs, its far px are off by more; a layer's px are trusted at
    half a DSLR px, so the mean must stay well below it); reference_correlation: the
    background tiles' median correlation under the global model; background_sharpness: the background's
    :func:`sharpness_ratio`; a layer below ``min_sharpness`` times it is smeared.
    Returns the kept layers, largest first.
    """
    if trust_map.moved_core is None or not trust_map.moved_core.any():
        return []
    to_image = trust_map.to_image
    step = float(to_image[0, 0])
    h, w = trust_map.code.shape
    n_comp, labels, stats, _ = cv2.connectedComponentsWithStats(trust_map.moved_core.astype(np.uint8), connectivity=8)
    order = sorted(range(1, n_comp), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    ev = trust.evidence(res, step, params)
    fb_ok = res.valid & (res.fb_error * step <= params.max_fb_px)
    margin = params.margin_px / step
    layers: list[RecoveredLayer] = []
    for comp in order[:max_layers]:
        area = stats[comp, cv2.CC_STAT_AREA]
        if area < min_area * h * w:
            break
        region = labels == comp
        ys, xs = np.nonzero(region & ev.textured & fb_ok)
        if len(xs) < 50:
            continue
        pick = np.random.default_rng(0).permutation(len(xs))[:4000]
        ys, xs = ys[pick], xs[pick]
        src = apply_homography(to_image, np.stack([xs, ys], 1).astype(np.float64))
        flowed = np.stack([xs + res.flow[ys, xs, 0], ys + res.flow[ys, xs, 1]], 1).astype(np.float64)
        dst = model_map(apply_homography(to_image, flowed))
        src_und = _undistort(lens, src)
        hom, inl = cv2.findHomography(src_und, dst, cv2.USAC_MAGSAC, 1.5, maxIters=5000, confidence=0.999)
        if hom is None or inl is None or inl.sum() < 30:
            continue
        core = trust.grow(~region, margin) if margin > 0 else ~region
        fit_mask = region & ~core
        if fit_mask.sum() < 100:
            continue
        fitted = [ch.with_mask(ch.mask & fit_mask) for ch in channels]
        try:
            refined = refine_planes(None, None, None, hom / hom[2, 2], (image_size[1], image_size[0]),
                                    gain_degree=gain_degree, max_pixels=60_000, radial=0, q0=q_radial,
                                    channels=fitted).homography
        except (ValueError, np.linalg.LinAlgError):
            continue
        # measure the region again under its own model, in a window around it
        x0, y0, bw, bh = (stats[comp, k] for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                  cv2.CC_STAT_HEIGHT))
        pad = int(np.ceil(4 * margin)) + 8
        sl = (slice(max(0, y0 - pad), min(h, y0 + bh + pad)), slice(max(0, x0 - pad), min(w, x0 + bw + pad)))
        warped = warp_channels(channels, refined, lens)
        local = trust.dense_residual([c.template[sl] for c in warped], [c.warped[sl] for c in warped],
                                     [c.mask[sl] for c in warped])
        lev = trust.evidence(local, step, params)
        agree = lev.fits_model & ~lev.moved & ~lev.occluded
        reg = region[sl]
        textured = reg & lev.textured
        if not textured.any():
            continue
        agreement = float((agree & textured).sum() / textured.sum())
        if agreement < min_agreement:
            continue
        if sharpness_ratio(local, agree & textured) < min_sharpness * background_sharpness:
            continue  # the DSLR shows the region smeared (it moved during the exposure)
        # flat px belong to the layer only when joined (no image edge between) to px that
        # agree with it, not to those of another object in the same moved region
        markers = np.zeros(reg.shape, np.int32)
        markers[agree & textured] = 1
        markers[(~agree & textured) | ~reg] = 2
        flat_owned = np.zeros(reg.shape, bool)
        if (markers == 1).any() and (lev.flat & reg).any():
            flat_owned = (cv2.watershed(local.image, markers) == 1) & lev.flat
        owned = reg & ((agree & textured) | flat_owned)
        # no px of the boundary band: shrink by the margin
        owned &= ~trust.grow(~owned, margin)
        full = np.zeros((h, w), bool)
        full[sl] = owned
        # the sub-px check the dense measures cannot make: tile-wise Lucas-Kanade (the
        # local stage's) on the owned px; a tile must agree within ``max_tile_px`` and
        # correlate as well as the background's tiles do (a smeared object does not)
        tiles = measure_tiles([TileChannel(c.template, c.warped, c.mask & full, c.to_image, c.sampled) for c in warped],
                              tile_px)
        measured = np.isfinite(tiles.sigma)
        passed = tiles.reliable & (tiles.magnitude <= max_tile_px) & (tiles.correlation >= reference_correlation - 0.05)
        failed = measured & ~passed
        # a tile too little covered to be measured (the region's rim) goes with its measured
        # neighbours: kept next to a passed tile, never inside a failed one
        ok_area = _tile_area(passed, tiles.grid_shape, (h, w), tile_px / step)
        full &= ~_tile_area(failed, tiles.grid_shape, (h, w), tile_px / step)
        full &= trust.grow(ok_area, tile_px / step)
        if full.sum() < 50:
            continue
        layers.append(RecoveredLayer(refined / refined[2, 2], full, int(area), agreement))
    return layers


def sharpness_ratio(res: trust.DenseResidual, where: np.ndarray) -> float:
    """How sharp the prediction is against the phone over ``where``: the mean squared
    gradient of the locally normalised prediction over that of the phone (about the
    same for every correct region of a pair; lower where the DSLR smeared a moving
    object).  Needs the luminances kept by :func:`alignment.trust.dense_residual`."""
    if res.lum is None or where.sum() < 50:
        return float("nan")
    ratios = []
    normed = [trust.normalized(img, res.valid, 4.0) for img in res.lum]
    for dx, dy in ((1, 0), (0, 1), (1, 1), (1, -1)):  # a smear blurs along its own direction
        energy = []
        for n in normed:
            d = n - np.roll(np.roll(n, dy, axis=0), dx, axis=1)
            energy.append(float(np.mean((d * d)[where])))
        ratios.append(energy[1] / max(energy[0], 1e-12))
    return min(ratios)



def _tile_area(passed: np.ndarray, grid_shape: tuple[int, int], shape: tuple[int, int], tile: float) -> np.ndarray:
    """(h, w) bool: the working px of the tiles that passed (tiles of ``tile`` working px
    from the origin, as :func:`alignment.local.measure_tiles` lays them out)."""
    t = max(4, int(round(tile)))
    ny, nx = grid_shape
    out = np.zeros(shape, bool)
    grid = passed.reshape(ny, nx)
    out[: ny * t, : nx * t] = np.repeat(np.repeat(grid, t, axis=0), t, axis=1)
    return out
