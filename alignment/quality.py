"""Quality of an alignment and the verdict: keep the pair, or reject it with a reason.

Reasons (``Quality.reason``), checked in this order:

- ``too_few_matches``: fewer than ``min_inliers`` feature matches agree on a
  homography, or their inlier ratio is below ``min_inlier_ratio`` (textureless
  or different scenes), and the coarse search (:mod:`alignment.coarse`) found no
  start from which ECC reaches ``min_correlation`` with tiles that pass the
  reliable, consistent and residual checks (as a start from the features must), nor
  one whose few tiles confirm it as a low-texture scene's do (below);
- ``overlap_too_small``: the phone frame covers too little of the DSLR frame;
- ``low_correlation``: after refinement the two images do not look alike
  (correlation of the locally normalised luminances below ``min_correlation``),
  unless the scene has little texture and the few tiles it has confirm the model
  (``min_reliable_count`` reliable tiles in ``min_reliable_cells`` of the frame's
  3 x 3 cells, consistent, within ``max_residual_px``, median tile correlation at
  least ``min_correlation``, pinning the frame corners to ``max_corner_sigma_px``), or
  the model (a homography, with or without a lens model) started from the features
  and its tiles agree with it, correlate at ``min_correlation`` and pin it within
  ``max_corner_sigma_px`` over at least ``min_trusted`` of the measurable frame
  (``pinned_fraction``; the px they leave unpinned are unverified in the trust map),
  ``min_reliable_count`` of them at least (reliable both ways or across one straight
  edge);
- ``residual_too_large``: tiles still disagree with the model: fewer than
  ``min_consistent`` of the textured tiles agree within ``max_residual_px``
  (phone px), or the 90th percentile of the reliable tiles' residual exceeds it:
  parallax, a non-planar scene, moving objects or a wrong model;
- ``too_little_trusted``: with a trust map, less than ``min_trusted`` of the phone
  frame's measurable px (neither outside the DSLR frame nor clipped) can be trusted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

__all__ = ["Quality", "Thresholds", "REASONS", "verdict"]

REASONS = ("too_few_matches", "overlap_too_small", "low_correlation", "residual_too_large", "too_little_trusted")


@dataclass
class Thresholds:
    """Acceptance thresholds of :func:`verdict`."""

    min_inliers: int = 20
    min_inlier_ratio: float = 0.1
    min_overlap: float = 0.2
    min_correlation: float = 0.6
    max_residual_px: float = 1.0
    min_reliable_tiles: float = 0.2
    min_consistent: float = 0.8
    #: a correlation between this floor and ``min_correlation`` is accepted when the
    #: geometry is confirmed independently: at least ``confirm_inliers`` feature
    #: inliers and tiles that pass the reliable, consistent and residual checks and
    #: pin the frame corners to ``max_corner_sigma_px``
    #: (two exposures of one scene under different light correlate weakly, yet
    #: their structure agrees everywhere)
    min_correlation_confirmed: float = 0.3
    confirm_inliers: int = 100
    #: with a trust map, the least fraction of the phone frame's measurable px (those
    #: neither outside the DSLR frame nor clipped) whose target can be trusted: what
    #: moved, is occluded or cannot be verified counts against the geometry; a DSLR
    #: clipped in half the frame does not (it has no colour there to be wrong about)
    min_trusted: float = 0.5
    #: a low-texture scene (a whiteboard, a colour chart, a soft landscape) has few tiles
    #: with a reliable residual and a low correlation over its flat px; its geometry is
    #: still confirmed by at least ``min_reliable_count`` reliable tiles spread over at
    #: least ``min_reliable_cells`` of the frame's 3 x 3 cells that pass the consistent and
    #: residual checks and whose median correlation reaches ``min_correlation``
    min_reliable_count: int = 6
    min_reliable_cells: int = 4
    #: ... and the model those tiles fix (its lens terms too) pins the frame's corners to this standard
    #: error (phone px; ``Quality.corner_sigma_px``): half the 1 px that makes a wrong keep
    max_corner_sigma_px: float = 0.5


@dataclass
class Quality:
    """Numbers that say how far to trust an alignment.

    keypoints_phone / keypoints_dslr: SIFT keypoints found; matches: tentative
    matches after the ratio test; inliers / inlier_ratio: agreeing with the
    homography; ecc_correlation: correlation of the locally normalised phone
    luminance with the DSLR luminance warped by the final model, over the
    overlap; overlap_fraction: fraction of the phone frame that lands inside the
    DSLR frame; residual_*_px: magnitude of the tile-wise residual displacement
    under the final model (phone px), over reliable tiles; reliable_tiles:
    fraction of tiles with enough texture for a residual (both ways, or across one
    straight edge: the edge tiles below); consistent_tiles: fraction of textured
    tiles that agree with the final model within ``max_residual_px`` (an edge tile:
    across its edge); reliable_tile_count / reliable_cells / tile_correlation:
    how many tiles have a reliable residual, in how many of the frame's 3 x 3 cells,
    and their median correlation (the textured evidence of a low-texture scene);
    corner_sigma_px: the standard error at the frame corners of the model (homography,
    lens terms and lens centre as fitted) fixed by those tiles, the tiles measured
    across one straight edge and the faint tiles
    (:func:`alignment.pipeline.corner_uncertainty`, phone px); pinned_fraction: the
    share of the frame's measurable px where those tiles pin the global model within
    ``max_corner_sigma_px`` (the rest is unverified in the trust map,
    :func:`alignment.pipeline._mark_unpinned`; 0 when they fix it nowhere; NaN
    without reliable tiles or a trust map); edge_tile_count /
    edge_residual_p90_px: how many such one-way tiles, and the 90th percentile of
    their residual across their edge (phone px; the confirmations need it within
    ``max_residual_px``); faint_tile_count: how many tiles are measured both ways but
    less precisely than a reliable tile (noise: ``TileResiduals.faint``), which help
    pin the model (corner_sigma_px, pinned_fraction) without counting as reliable;
    fine_samples / fine_sigma_px: how many samples the fine stage's last pass used (or
    its last step on every sample: the option ``fine_full_step``), and the standard
    error that their noise leaves at the frame corners (DSLR working px:
    ``alignment.ecc.EccResult.corner_sigma_px``; a pass whose noise left more than the
    option ``fine_noise_px`` was run again on more samples; NaN: no fine stage);
    start: where ECC started, "features" (the matches'
    homography) or "coarse" (too few matches: :mod:`alignment.coarse`, whose
    correlation at the chosen placement is coarse_score); coarse_contenders: how many
    placements that search weighed by their levels as well (2 or more: a periodic
    scene; 0: no search); ecc_restarts: how many more starts ECC on the luminance ran
    from because its result from the background start explained under
    ``pipeline.ECC_RESTART_SHARE`` of what that start explains (0: none needed);
    field_degree: degree
    of the local polynomial field (-1: none); radial_corner_px: displacement of
    the frame corner by the radial lens model kept (phone px, 0: none);
    phone_blur_sigma: the phone's blur relative to the DSLR's (Gaussian sigma, phone
    plane px: two raw px; measured on the pair unless given, :mod:`alignment.blur`;
    None: ``fine_filter="blur"`` asked); phone_blur_misfit: the share of the planes'
    variance the DSLR blurred by the measured blur leaves unexplained (noise, mostly;
    None: not measured); fine_filter: what the fine stage compared, "sharp" (the planes
    unfiltered against the DSLR blurred by phone_blur_sigma) or "blur" (both
    pre-blurred: asked, or a misfit of ``blur.SHARP_MAX_MISFIT`` or more);
    ok / reason / message: the verdict.
    """

    keypoints_phone: int = 0
    keypoints_dslr: int = 0
    matches: int = 0
    inliers: int = 0
    inlier_ratio: float = 0.0
    ecc_correlation: float = float("nan")
    overlap_fraction: float = float("nan")
    residual_median_px: float = float("nan")
    residual_p90_px: float = float("nan")
    residual_max_px: float = float("nan")
    reliable_tiles: float = float("nan")
    consistent_tiles: float = float("nan")
    field_degree: int = -1
    radial_corner_px: float = float("nan")
    trusted_fraction: float = float("nan")
    dropped: dict = field(default_factory=dict)
    prefit_outliers: float = float("nan")
    radiometric_refit: bool = False
    phone_blur_sigma: float | None = None
    phone_blur_misfit: float | None = None
    fine_filter: str | None = None
    trust_refit: bool = False
    reliable_tile_count: int = 0
    reliable_cells: int = 0
    tile_correlation: float = float("nan")
    corner_sigma_px: float = float("nan")
    pinned_fraction: float = float("nan")
    edge_tile_count: int = 0
    edge_residual_p90_px: float = float("nan")
    faint_tile_count: int = 0
    fine_samples: int = 0
    fine_sigma_px: float = float("nan")
    start: str = "features"
    coarse_score: float = float("nan")
    coarse_contenders: int = 0
    ecc_restarts: int = 0
    ok: bool = False
    reason: str | None = None
    message: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not np.isfinite(v):
                d[k] = None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Quality":
        names = {f.name: f for f in fields(cls)}
        kw = {}
        for k, v in d.items():
            if k in names:
                if v is None and names[k].type in ("float",):
                    v = float("nan")
                kw[k] = v
        q = cls(**kw)
        for f in fields(cls):
            if f.type == "float" and getattr(q, f.name) is None:
                setattr(q, f.name, float("nan"))
        return q


def verdict(q: Quality, t: Thresholds) -> Quality:
    """Set ``q.ok``, ``q.reason`` and ``q.message`` from the numbers and thresholds
    (a note already in ``q.message``, e.g. why a stage failed, is kept after it)."""
    note = q.message
    # the tiles measured across one straight edge only must agree across it as well
    edges_agree = not (q.edge_residual_p90_px > t.max_residual_px)
    residuals_agree = (q.consistent_tiles >= t.min_consistent and q.residual_p90_px <= t.max_residual_px
                       and edges_agree)
    tiles_agree = q.reliable_tiles >= t.min_reliable_tiles and residuals_agree
    # a low-texture scene: few reliable tiles, but spread over the frame, agreeing with
    # the model and correlating well where there is texture to correlate
    sparse_confirmed = (
        q.reliable_tile_count >= t.min_reliable_count
        and q.reliable_cells >= t.min_reliable_cells
        and residuals_agree
        and q.tile_correlation >= t.min_correlation
        and q.corner_sigma_px <= t.max_corner_sigma_px
    )
    # ... and the tiles must pin the frame's corners: a model right where the texture is
    # can be pixels off in a flat sky (a sky-heavy pair with parallax was kept 3.3 px off
    # at its corners, correlation 0.56, its lens model fitted to the near buildings)
    geometry_confirmed = (q.inliers >= t.confirm_inliers and tiles_agree
                          and q.corner_sigma_px <= t.max_corner_sigma_px)
    # a model the tiles pin over part of the frame only (a soft landscape at night, its
    # texture below a flat sky; a page's lines of text; a whiteboard's strokes): kept for
    # that part when the tiles there agree with it and correlate, as a low-texture scene's
    # tiles confirm it above, the rest of its px unverified in the trust map
    # (pinned_fraction: what they pin, at least min_trusted of the measurable frame).
    # Over px pinned so, no model of the broadened benchmark was more than 0.61 px off
    # its truth (a lens model 0.52 px, once its centre was estimated and counted; held
    # at the frame centre, 1.6 px).  The whole frame's correlation is not asked for, as
    # the sparse confirmation does not ask: over a whiteboard's blank px it measures the
    # noise (0.20-0.24 on pairs 0.14-0.53 px off at their corners)
    pinned_in_part = (
        q.pinned_fraction >= t.min_trusted
        and q.reliable_tile_count + q.edge_tile_count >= t.min_reliable_count
        and residuals_agree
        and q.tile_correlation >= t.min_correlation
    )
    # few matches are no reason when the direct method found the geometry and both the
    # correlation and the tiles confirm it, as they confirm a start from the features;
    # or, correlating weakly, when the sparse tiles pin the corners as above.  (A colour
    # chart placed one patch off by the coarse search was kept 400 px off on tiles that
    # agreed: its edges repeat.  The search tells such placements apart by their levels,
    # alignment.coarse; the corner test that stood here in the meantime rejected
    # charts 0.4 px off, their lens terms unpinned at the corners.)  Or when the tiles
    # pin it over part of the frame as above: the search's levels place a start as the
    # sparse confirmation trusts them to (a noisy night chart under a lens whose
    # features failed, pinned over 90 % of its frame with its 22 faint tiles, is kept
    # 0.065 px off over its grid on average, its corners 0.18 px, 0.37 at most)
    found_directly = q.start == "coarse" and ((tiles_agree and q.ecc_correlation >= t.min_correlation)
                                              or sparse_confirmed or pinned_in_part)
    correlation_floor = t.min_correlation_confirmed if geometry_confirmed else t.min_correlation
    # the two low_correlation checks without the pinned-in-part path (a pair that needs it
    # is told so when kept)
    correlates = q.ecc_correlation >= correlation_floor or sparse_confirmed
    tiles_usable = q.reliable_tiles >= t.min_reliable_tiles or sparse_confirmed
    in_part = "" if not np.isfinite(q.pinned_fraction) else (
        f"; the tiles pin the model within {t.max_corner_sigma_px} px over {q.pinned_fraction:.0%} of the "
        f"measurable frame (need {t.min_trusted:.0%})")
    # the px a target could be measured at: the trust map's other reasons (moved, occluded,
    # unverified) are the geometry's to answer for
    measurable = max(0.0, 1.0 - q.dropped.get("outside", 0.0) - q.dropped.get("clipped", 0.0))
    trusted_share = q.trusted_fraction / measurable if measurable > 0 else 0.0
    checks = [
        (
            (q.inliers < t.min_inliers or q.inlier_ratio < t.min_inlier_ratio) and not found_directly,
            "too_few_matches",
            f"{q.inliers} inlier matches of {q.matches} (ratio {q.inlier_ratio:.2f}); "
            f"need >= {t.min_inliers} and ratio >= {t.min_inlier_ratio}",
        ),
        (
            not (q.overlap_fraction >= t.min_overlap),
            "overlap_too_small",
            f"phone frame overlap {q.overlap_fraction:.2f} < {t.min_overlap}",
        ),
        (
            not (correlates or pinned_in_part),
            "low_correlation",
            f"correlation {q.ecc_correlation:.3f} < {correlation_floor}"
            + ("" if geometry_confirmed else " (and the tiles do not confirm the geometry)") + in_part,
        ),
        (
            not (tiles_usable or pinned_in_part),
            "low_correlation",
            f"only {q.reliable_tiles:.0%} of tiles have a reliable residual (< {t.min_reliable_tiles:.0%}), "
            f"{q.reliable_tile_count} in {q.reliable_cells} of 9 frame cells (need {t.min_reliable_count} in "
            f"{t.min_reliable_cells}, median tile correlation >= {t.min_correlation})" + in_part,
        ),
        (
            not (q.consistent_tiles >= t.min_consistent),
            "residual_too_large",
            f"only {q.consistent_tiles:.0%} of textured tiles agree with the model within {t.max_residual_px} px "
            f"(need {t.min_consistent:.0%}): parallax, a non-planar scene or a wrong model",
        ),
        (
            not (q.residual_p90_px <= t.max_residual_px),
            "residual_too_large",
            f"90th-percentile tile residual {q.residual_p90_px:.3f} px > {t.max_residual_px} px",
        ),
        (
            bool(np.isfinite(q.trusted_fraction)) and q.trusted_fraction < t.min_trusted * measurable,
            "too_little_trusted",
            f"only {q.trusted_fraction:.0%} of the phone frame can be trusted, {trusted_share:.0%} of its "
            f"{measurable:.0%} neither outside the DSLR frame nor clipped (need {t.min_trusted:.0%}); "
            + ", ".join(f"{k} {v:.0%}" for k, v in sorted(q.dropped.items(), key=lambda kv: -kv[1]) if v >= 0.005),
        ),
    ]
    for failed, reason, message in checks:
        if failed:
            q.ok, q.reason, q.message = False, reason, f"{message} ({note})" if note else message
            return q
    q.ok, q.reason = True, None
    by_part = not (correlates and tiles_usable)
    q.message = (
        f"ok: {q.inliers} inliers, correlation {q.ecc_correlation:.3f}, "
        f"residual median {q.residual_median_px:.3f} px, p90 {q.residual_p90_px:.3f} px"
        + (f"; kept for the {q.pinned_fraction:.0%} of the measurable frame its tiles pin within "
           f"{t.max_corner_sigma_px} px, the rest unverified" if by_part else "")
    )
    return q
