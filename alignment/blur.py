"""The phone's blur relative to the DSLR's, measured on the pair itself.

A phone has no anti-aliasing filter: each Bayer plane samples its colour every second
raw px through a blur of about half a raw px, so what lies between its samples is
aliased.  Blurring such a plane on its own grid (what the coarse stages do, to widen
the basin of convergence) is not the same as blurring the scene and sampling it: a
straight edge nearly along the grid keeps the sub-pixel phase of its samples along its
whole length, and the blurred samples place it off by a phase-dependent amount (the
"pixel locking" of sub-pixel estimators).  On the broadened benchmark this bias, not
noise, held the colour charts at 0.07 to 0.2 px at the corners (16 clean chart pairs:
0.040 px median pre-blurred, 0.017 compared unfiltered).  The fine stage therefore
compares the phone's samples unfiltered with the DSLR image blurred by the phone's own
blur relative to the DSLR's, which is unknown (optics, pixel aperture, binning, the
DSLR's own filter) and measured here.  The local stage and the trust map still measure
on pre-blurred planes (their tiles' statistics are calibrated so).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from alignment.ecc import _local_scale
from alignment.geometry import apply_homography
from alignment.threads import thread_map

#: the relative blurs tried, Gaussian sigma in phone target px (a Bayer plane's px: two raw
#: px); from none (the DSLR as blurred as the phone) to about the blur of a phone lens
#: focused a little off
CANDIDATE_SIGMAS = (0.0, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0)

#: the sharp channels are used only where the least misfit (:func:`estimate_relative_blur`:
#: the share of the planes' variance the best blurred DSLR leaves unexplained) is under
#: this: beyond it noise rules the planes (night scenes: 0.035 to 0.26 on the broadened
#: benchmark, day scenes 0.001 to 0.04), and the DSLR's own noise, sampled through a
#: blur that narrow, biases the fit more than the aliasing does; the pre-blurred
#: channels serve there.  Chosen on the tune half of the benchmark's sources
#: (docs/alignment.md, step 8)
SHARP_MAX_MISFIT = 0.15

#: the candidate (an index into :data:`CANDIDATE_SIGMAS`) whose misfit and its two
#: neighbours' are measured first: the least on 155 of the broadened benchmark's 180 pairs
#: (144 at 1 MP, 36 at 12 MP; the others' least lay one or two candidates away)
SEARCH_START = 2

#: samples per target: enough for the misfit to resolve a tenth of a px of blur on a scene
#: with a few hundred edge px, few enough to cost tens of ms
SAMPLES_PER_TARGET = 20_000


def _sample_points(values: np.ndarray, valid: np.ndarray, n: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Half of ``n`` target px with the largest gradient (where blur shows), half at random,
    inside ``valid`` eroded by 3 px -> (xs, ys) int arrays."""
    inner = cv2.erode(valid.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    ys, xs = np.nonzero(inner)
    if len(xs) <= n:
        return xs, ys
    v = values.astype(np.float32)
    energy = cv2.Sobel(v, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(v, cv2.CV_32F, 0, 1) ** 2
    e = energy[ys, xs]
    top = np.argpartition(-e, n // 2)[: n // 2]
    rest = np.ones(len(xs), bool)
    rest[top] = False
    rest = np.flatnonzero(rest)  # (the px not in top, in order)
    pick = np.concatenate([top, rng.choice(rest, n - len(top), replace=False)])
    return xs[pick], ys[pick]


def _misfit(t: np.ndarray, pred: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    """Relative misfit of the target samples ``t`` predicted by ``pred`` under a gain and
    an offset linear in the frame position (u, v): the mean of the smallest 90 % of the
    squared residuals over the variance of ``t``."""
    basis = np.stack([np.ones_like(u), u, v], axis=1)
    a = np.concatenate([basis * pred[:, None], basis], axis=1)
    coef = np.linalg.solve(a.T @ a + 1e-9 * np.eye(a.shape[1]), a.T @ t)
    r2 = (t - a @ coef) ** 2
    n = max(int(0.9 * len(r2)), 1)
    return float(np.partition(r2, n - 1)[:n].mean() / max(float(np.var(t)), 1e-12))


def estimate_relative_blur(
    targets: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    images: list[np.ndarray],
    image_mask: np.ndarray | None,
    h_image: np.ndarray,
    undistort: Callable[[np.ndarray], np.ndarray] | None = None,
    candidates: tuple[float, ...] = CANDIDATE_SIGMAS,
    samples: int = SAMPLES_PER_TARGET,
) -> tuple[float, list[float]]:
    """The Gaussian blur (sigma, target px) that, applied to the DSLR images, best predicts
    the phone targets sampled unfiltered under the model.

    targets: [(values (h, w), valid (h, w) bool, (3, 3) target px -> phone image px)]
    (Bayer planes); images: per target the (H, W) float32 DSLR image predicting it, on
    the DSLR working grid; image_mask: (H, W) bool of measured DSLR px or None; h_image:
    (3, 3) phone image px (undistorted by ``undistort``) -> DSLR working px.
    Each candidate sigma s blurs each image by s times the target's local scale (DSLR
    px, as :func:`alignment.ecc.prepare_channels` does); the misfit (:func:`_misfit`,
    averaged over the targets) is taken at ``samples`` px per target, and the least
    refined by a parabola through it and its neighbours.  The least is found by descent:
    the misfits at :data:`SEARCH_START` and its two neighbours first, then at the
    unmeasured neighbours of the least so far until both of its neighbours are
    measured (the same least as measuring every candidate wherever the misfit falls
    and then rises along the candidates, as it did on every pair of the broadened
    benchmark, in about half the blurs).
    The misregistration of a model a tenth of a px off changes the misfit as the
    gradient does, not as the blur does (odd against even about an edge), so the
    model need not be final.  Returns (sigma, the misfit per candidate, NaN for those
    the descent left unmeasured: :func:`least_misfit` gives the least); (0, NaNs) when
    no target has 64 samples inside the DSLR image.
    """
    rng = np.random.default_rng(2024)
    h_img, w_img = images[0].shape
    ok_mask = None if image_mask is None else cv2.erode(image_mask.astype(np.uint8), np.ones((9, 9), np.uint8))
    per_target = []  # (values, DSLR positions, frame coordinates, local scale, image) of the usable samples
    for (values, valid, t_k), img in zip(targets, images):
        xs, ys = _sample_points(values, valid, samples, rng)
        xy = apply_homography(t_k, np.stack([xs, ys], axis=1).astype(np.float64))
        if undistort is not None:
            xy = undistort(xy)
        m = apply_homography(h_image, xy).astype(np.float32)
        inside = (m[:, 0] >= 3) & (m[:, 1] >= 3) & (m[:, 0] <= w_img - 4) & (m[:, 1] <= h_img - 4)
        if ok_mask is not None:
            inside &= ok_mask[np.clip(m[:, 1].round().astype(int), 0, h_img - 1),
                              np.clip(m[:, 0].round().astype(int), 0, w_img - 1)] > 0
        if inside.sum() < 64:
            continue
        xy = xy[inside]
        uv = (xy - xy.mean(axis=0)) / max(float(np.ptp(xy, axis=0).max()), 1.0)
        per_target.append((values[ys[inside], xs[inside]].astype(np.float64), np.ascontiguousarray(m[inside]), uv,
                           _local_scale(h_image @ t_k, values.shape), img))
    if not per_target:
        return 0.0, [float("nan")] * len(candidates)

    def cost(sigma: float) -> float:
        total = 0.0
        blurred: dict = {}
        for t, m, uv, scale, img in per_target:
            key = (id(img), round(sigma * scale, 3))
            if key not in blurred:
                s_img = sigma * scale
                blurred[key] = img if s_img < 0.05 else cv2.GaussianBlur(img, (0, 0), s_img)
            # (a one-row map: OpenCV's remap runs ten times faster on it than on a column)
            pred = cv2.remap(blurred[key], m[None, :, 0], m[None, :, 1], cv2.INTER_CUBIC,
                             borderMode=cv2.BORDER_REPLICATE)[0].astype(np.float64)
            total += _misfit(t, pred, uv[:, 0], uv[:, 1])
        return total / len(targets)

    # the candidates of each round side by side (each blurs whole DSLR images: three
    # blurs of 4.6 MP at real size, most of this function's time)
    costs = [float("nan")] * len(candidates)
    measured: list[int] = []
    start = min(SEARCH_START, len(candidates) - 1)
    todo = [j for j in (start - 1, start, start + 1) if 0 <= j < len(candidates)]
    while todo:
        for j, c in zip(todo, thread_map(cost, [candidates[j] for j in todo])):
            costs[j] = c
        measured = sorted(measured + todo)
        # the least so far (the first of equal ones, as np.argmin over every candidate)
        k = min(measured, key=lambda j: (costs[j], j))
        todo = [j for j in (k - 1, k + 1) if 0 <= j < len(candidates) and j not in measured]
    sigma = float(candidates[k])
    if 0 < k < len(candidates) - 1:
        # a parabola through the three points about the least (in sigma)
        x = np.array(candidates[k - 1 : k + 2], np.float64)
        y = np.array(costs[k - 1 : k + 2], np.float64)
        a, b, _ = np.polyfit(x, y, 2)
        if a > 0:
            sigma = float(np.clip(-b / (2 * a), x[0], x[2]))
    return sigma, costs


def least_misfit(costs: list[float]) -> float:
    """The least of the misfits :func:`estimate_relative_blur` measured (NaN when it
    measured none)."""
    finite = [c for c in costs if np.isfinite(c)]
    return min(finite) if finite else float("nan")
