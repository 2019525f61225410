"""The verdict: which numbers accept a pair and which reason a rejection gets."""

from __future__ import annotations

import pytest

from alignment.quality import Quality, Thresholds, verdict


def _good(**changes) -> Quality:
    q = Quality(
        keypoints_phone=2000, keypoints_dslr=3000, matches=500, inliers=400, inlier_ratio=0.8, ecc_correlation=0.9,
        overlap_fraction=1.0, residual_median_px=0.05, residual_p90_px=0.2, residual_max_px=0.4, reliable_tiles=0.7,
        consistent_tiles=0.98, corner_sigma_px=0.2,
    )
    for k, v in changes.items():
        setattr(q, k, v)
    return q


_SPARSE = {"ecc_correlation": 0.25, "reliable_tiles": 0.05, "reliable_tile_count": 10, "reliable_cells": 5,
           "tile_correlation": 0.9, "corner_sigma_px": 0.3}


#: what the night Blackmagic homography pair 0 measured (0.12 px off its truth at every corner)
_PINNED_IN_PART = {"ecc_correlation": 0.41, "reliable_tiles": 0.16, "reliable_tile_count": 16, "reliable_cells": 2,
                   "tile_correlation": 0.92, "corner_sigma_px": 0.68, "pinned_fraction": 0.97, "inliers": 82}


@pytest.mark.parametrize(
    "changes, ok, reason",
    [
        ({}, True, None),
        ({"inliers": 10}, False, "too_few_matches"),
        ({"overlap_fraction": 0.1}, False, "overlap_too_small"),
        # weak correlation, but many inliers and tiles that agree: two exposures of one scene
        ({"ecc_correlation": 0.42}, True, None),
        # the same correlation without independent confirmation is rejected
        ({"ecc_correlation": 0.42, "inliers": 60}, False, "low_correlation"),
        ({"ecc_correlation": 0.42, "consistent_tiles": 0.5}, False, "low_correlation"),
        ({"ecc_correlation": 0.42, "reliable_tiles": 0.1}, False, "low_correlation"),
        # ... or with tiles that leave the frame corners free (a flat sky beyond them)
        ({"ecc_correlation": 0.42, "corner_sigma_px": 0.8}, False, "low_correlation"),
        # below the confirmed floor nothing is accepted on the correlation and the features alone
        ({"ecc_correlation": 0.2}, False, "low_correlation"),
        ({"consistent_tiles": 0.5}, False, "residual_too_large"),
        ({"residual_p90_px": 1.5}, False, "residual_too_large"),
        # few matches, but the coarse search found a start whose refined model the
        # correlation and the tiles confirm: kept
        ({"inliers": 10, "start": "coarse"}, True, None),
        # ... not when the tiles or the correlation do not confirm it
        ({"inliers": 10, "start": "coarse", "consistent_tiles": 0.5}, False, "too_few_matches"),
        ({"inliers": 10, "start": "coarse", "reliable_tiles": 0.1}, False, "too_few_matches"),
        ({"inliers": 10, "start": "coarse", "ecc_correlation": 0.5}, False, "too_few_matches"),
        # ... kept as a start from the features is when both confirm it, however loosely
        # the tiles alone pin the corners (a colour chart's lens terms)
        ({"inliers": 10, "start": "coarse", "corner_sigma_px": 1.7}, True, None),
        # a low-texture scene: a low correlation over its flat px and few reliable tiles,
        # but enough of them, spread over the frame, agreeing and correlating: kept
        ({**_SPARSE}, True, None),
        ({**_SPARSE, "reliable_cells": 2}, False, "low_correlation"),  # texture in one corner only
        ({**_SPARSE, "reliable_tile_count": 4}, False, "low_correlation"),
        ({**_SPARSE, "tile_correlation": 0.5}, False, "low_correlation"),
        ({**_SPARSE, "residual_p90_px": 1.5}, False, "low_correlation"),
        # tiles that leave the frame's corners free (a whiteboard's strokes in one band)
        ({**_SPARSE, "corner_sigma_px": 1.5}, False, "low_correlation"),
        ({**_SPARSE, "inliers": 5, "start": "coarse"}, True, None),  # a colour chart from the coarse search
        # ... but not, correlating weakly, on tiles that leave the corners free
        ({**_SPARSE, "inliers": 5, "start": "coarse", "corner_sigma_px": 1.5}, False, "too_few_matches"),
        # tiles on one straight edge that agree across it confirm; ones that do not, reject
        ({**_SPARSE, "edge_tile_count": 20, "edge_residual_p90_px": 0.3}, True, None),
        ({**_SPARSE, "edge_tile_count": 20, "edge_residual_p90_px": 1.5}, False, "low_correlation"),
        ({"ecc_correlation": 0.42, "edge_tile_count": 20, "edge_residual_p90_px": 1.5}, False, "low_correlation"),
        # a model whose tiles pin it over part of the frame (a night landscape's
        # texture below a flat sky): kept for that part, the rest unverified in the trust map
        ({**_PINNED_IN_PART}, True, None),
        ({**_PINNED_IN_PART, "pinned_fraction": 0.3}, False, "low_correlation"),  # pinned in a band only
        ({**_PINNED_IN_PART, "pinned_fraction": float("nan")}, False, "low_correlation"),  # not measured
        ({**_PINNED_IN_PART, "tile_correlation": 0.5}, False, "low_correlation"),
        ({**_PINNED_IN_PART, "consistent_tiles": 0.5}, False, "low_correlation"),
        # the whole frame's correlation is not asked for (a whiteboard's blank px correlate
        # as noise, 0.24 on a distortion pair 0.34 px off at the corners): the tiles decide
        ({**_PINNED_IN_PART, "ecc_correlation": 0.24}, True, None),
        ({**_PINNED_IN_PART, "ecc_correlation": 0.05}, True, None),
        ({**_PINNED_IN_PART, "reliable_tile_count": 2, "edge_tile_count": 3}, False, "low_correlation"),
        ({**_PINNED_IN_PART, "reliable_tile_count": 2, "edge_tile_count": 40}, True, None),  # a page's text lines
        # ... from the coarse search's start as well (a noisy night chart whose features
        # failed, pinned over 90 % of its frame with its faint tiles), unless pinned in a band only
        ({**_PINNED_IN_PART, "start": "coarse", "inliers": 6}, True, None),
        ({**_PINNED_IN_PART, "start": "coarse", "inliers": 6, "pinned_fraction": 0.3}, False, "too_few_matches"),
        ({**_PINNED_IN_PART, "start": "coarse", "inliers": 6, "consistent_tiles": 0.5}, False, "too_few_matches"),
        # tiles that pin the corners as well pin the part: no worse a verdict for a better pinned pair
        ({**_PINNED_IN_PART, "corner_sigma_px": 0.4, "pinned_fraction": 1.0}, True, None),
        # what the tiles leave unpinned is unverified, and the trust map must keep enough
        ({**_PINNED_IN_PART, "trusted_fraction": 0.3, "dropped": {"unverified": 0.7}}, False, "too_little_trusted"),
    ],
)
def test_verdict_accepts_weak_correlation_only_when_the_geometry_is_confirmed(changes, ok, reason):
    q = verdict(_good(**changes), Thresholds())
    assert q.ok is ok
    assert q.reason == reason
    assert q.message


def test_the_messages_say_how_much_of_the_frame_the_tiles_pin():
    kept = verdict(_good(**_PINNED_IN_PART), Thresholds())
    assert kept.ok and "kept for the 97% of the measurable frame" in kept.message
    short = verdict(_good(**{**_PINNED_IN_PART, "pinned_fraction": 0.3}), Thresholds())
    assert not short.ok and "over 30% of the measurable frame (need 50%)" in short.message
    assert "pin" not in verdict(_good(), Thresholds()).message


def test_rejection_message_says_the_tiles_did_not_confirm():
    q = verdict(_good(ecc_correlation=0.42, inliers=60), Thresholds())
    assert "do not confirm" in q.message


@pytest.mark.parametrize(
    "trusted, dropped, ok",
    [
        (0.44, {"clipped": 0.53, "occluded": 0.03}, True),  # a clipped half costs the pair nothing
        (0.44, {"moved": 0.53, "occluded": 0.03}, False),  # a moved half is the geometry's failure
        (0.30, {"outside": 0.2, "clipped": 0.2, "moved": 0.3}, False),  # 30 % of the measurable 60 %
        (0.35, {"outside": 0.2, "clipped": 0.2, "moved": 0.25}, True),
    ],
)
def test_too_little_trusted_counts_only_the_measurable_px(trusted, dropped, ok):
    q = verdict(_good(trusted_fraction=trusted, dropped=dropped), Thresholds())
    assert q.ok is ok
    assert ok or (q.reason == "too_little_trusted" and "nor clipped" in q.message)
