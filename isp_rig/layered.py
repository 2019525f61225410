"""Layered 2.5D scenes for the rig simulator: parallax, occlusion, motion and highlights.

A scene is a stack of textured planes seen by two pinhole cameras: the phone
(at the origin of the world frame, looking down +z) and the DSLR, whose centre
sits ``baseline_mm`` from the phone's, mostly to its right (up to 8 % of that
up or down and 15 % forward or back), slightly rotated.  Intrinsics: the phone's focal length in px is
``f35 * diagonal_px / 43.27`` (its 35 mm-equivalent focal length, as in EXIF)
with the principal point at the frame centre; the DSLR's is the phone's times
the framing scale (DSLR px per phone px on the background plane), so the DSLR
sees the phone's whole field with a margin.

Layers, back to front:

* the **background**: a plane at ``bg_depth_m`` (8-30 m), tilted a little,
  textured with the scene source (a real raw, a photo or a procedural scene);
* 2-4 **objects** (``--parallax``): planar cut-outs at ``object_depth_m``
  (1.5-5 m), tilted up to 30 degrees, textured with other scene material, with
  an anti-aliased outline (polygon or ellipse); without parallax, objects made
  for ``--motion`` lie on the background plane;
* **motion** (``--motion``): one or two objects translate in 3D between the two
  exposures by 3-15 DSLR px of image motion; with probability one half the
  DSLR (the longer exposure here) smears the object along its path.

Every layer is a plane, so phone px (undistorted) -> DSLR px of the same
material point is exactly a homography per layer (for a moving object, from its
position at the phone's exposure to its position at the middle of the DSLR's).
Textures live in the DSLR's frame at ``k`` times its resolution (scene px
``k x + (k - 1) / 2`` for DSLR px x, the simulator's convention), so the DSLR
renders them in place and the phone samples them through its layer homography.
Both cameras composite back to front with premultiplied alpha; the phone's
samples are low-passed to its pixel pitch first (anti-aliasing), the DSLR
averages ``k x k`` blocks.

Truth per phone px: the front-most layer whose alpha there is at least one half
owns the pixel; its homography gives the DSLR (x, y); the point is not visible
(NaN) when a layer in front of the owner covers that DSLR point with alpha at
least one half at the DSLR's exposure, or when it falls outside the DSLR frame.
``highlights`` (``--clipping``) add emitters far brighter than the scene's
white: small glints and a few larger lamps/windows, so the DSLR clips and the
phone sometimes does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

from alignment.geometry import apply_homography

__all__ = ["Layer", "LayeredScene", "RigCameras", "build_scene", "render_dslr", "render_phone", "truth_from_render"]


# --------------------------------------------------------------------- cameras


@dataclass
class RigCameras:
    """Two pinhole cameras.  World frame = the phone camera's frame (metres).

    k_phone: (3,3) intrinsics in phone raw px (full grid); k_dslr: (3,3) in DSLR px;
    rotation, translation: DSLR camera coordinates ``X_d = R X + t`` of a world point X;
    baseline_m: |DSLR centre - phone centre|.
    """

    k_phone: np.ndarray
    k_dslr: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    baseline_m: float

    def plane_homography(self, normal: np.ndarray, dist: float, motion: np.ndarray | None = None) -> np.ndarray:
        """(3,3) phone px (undistorted) -> DSLR px for points of the plane ``n . X = dist``.

        motion: (3,) world translation of the plane's material between the phone's
        exposure and the DSLR's (metres), or None.
        """
        n = np.asarray(normal, np.float64).reshape(3, 1)
        shift = self.translation.reshape(3, 1)
        if motion is not None:
            shift = shift + self.rotation @ np.asarray(motion, np.float64).reshape(3, 1)
        h = self.k_dslr @ (self.rotation + shift @ n.T / dist) @ np.linalg.inv(self.k_phone)
        return h / h[2, 2]


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = np.asarray(axis, np.float64)
    norm = np.linalg.norm(axis)
    if norm < 1e-12 or abs(angle) < 1e-15:
        return np.eye(3)
    return cv2.Rodrigues((axis / norm * angle).reshape(3, 1))[0]


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking direction a to direction b."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    axis = np.cross(a, b)
    return _rotation(axis, math.atan2(np.linalg.norm(axis), float(a @ b)))


def make_cameras(rng: np.random.Generator, phone_size: tuple[int, int], dslr_size: tuple[int, int],
                 focal_35mm: float, coverage: tuple[float, float], baseline_mm: float, max_roll_deg: float,
                 bg_depth: float, bg_normal: np.ndarray, margin_px: float = 8.0) -> RigCameras:
    """Cameras whose DSLR frame holds the phone's view of the background plane.

    The DSLR's roll is drawn within ``max_roll_deg``; its pan and tilt put the phone
    field's centre at a random place that keeps the whole phone frame (on the
    background plane) ``margin_px`` inside the DSLR frame.
    """
    pw, ph = phone_size
    dw, dh = dslr_size
    f_p = focal_35mm * math.hypot(pw, ph) / 43.27
    k_p = np.array([[f_p, 0, (pw - 1) / 2], [0, f_p, (ph - 1) / 2], [0, 0, 1.0]])
    scale = rng.uniform(*coverage) * dw / pw
    f_d = f_p * scale
    k_d = np.array([[f_d, 0, (dw - 1) / 2], [0, f_d, (dh - 1) / 2], [0, 0, 1.0]])
    # the DSLR beside the phone, a little higher or lower and forward or back: its centre
    # lies exactly ``baseline_mm`` from the phone's
    direction = np.array([1.0, rng.uniform(-0.08, 0.08), rng.uniform(-0.15, 0.15)])
    centre = direction / np.linalg.norm(direction) * baseline_mm / 1000.0
    roll = _rotation([0, 0, 1], math.radians(rng.uniform(-max_roll_deg, max_roll_deg)))
    dist = float(bg_normal[2]) * bg_depth
    corners = np.array([[0, 0], [pw - 1, 0], [pw - 1, ph - 1], [0, ph - 1]], np.float64)
    u = rng.uniform(0, 1, 2)
    rot = roll
    for _ in range(4):  # aim, then correct the small error of the linear aim
        cams = RigCameras(k_p, k_d, rot, -rot @ centre, float(np.linalg.norm(centre)))
        mapped = apply_homography(cams.plane_homography(bg_normal, dist), corners)
        lo = -mapped.min(axis=0) + margin_px
        hi = np.array([dw - 1, dh - 1]) - mapped.max(axis=0) - margin_px
        shift = np.where(hi > lo, lo + u * (hi - lo), (lo + hi) / 2)
        if np.all(np.abs(shift) < 0.01):
            break
        # turn the camera so that its image moves by `shift` px at the frame centre
        c_img = mapped.mean(axis=0)
        ray_now = np.linalg.inv(k_d) @ np.array([*c_img, 1.0])
        ray_new = np.linalg.inv(k_d) @ np.array([*(c_img + shift), 1.0])
        rot = _rotation_between(ray_now, ray_new) @ rot
    return RigCameras(k_p, k_d, rot, -rot @ centre, float(np.linalg.norm(centre)))


# ---------------------------------------------------------------------- layers


@dataclass
class Layer:
    """One textured plane.

    kind: "background" or "object".  normal (3,), dist: the plane ``n . X = dist``
    in the world (phone) frame at the phone's exposure, metres.
    homography: (3,3) phone px (undistorted) -> DSLR px of the same material
    point at the middle of the DSLR's exposure.
    texture: (h, w, 3) float32 linear colour; alpha: (h, w) float32 coverage or
    None (opaque); both on the scene canvas (k x the DSLR's resolution) with
    texture px (i, j) at canvas (origin[0] + j, origin[1] + i).
    motion_m: (3,) world translation between the exposures (zeros: static);
    motion_px: (2,) the image motion at the layer's centre, DSLR px;
    smear_px: (2,) DSLR-frame path covered during the DSLR exposure (zeros: sharp).
    """

    name: str
    kind: str
    normal: np.ndarray
    dist: float
    homography: np.ndarray
    texture: np.ndarray
    alpha: np.ndarray | None
    origin: tuple[int, int] = (0, 0)
    motion_m: np.ndarray = field(default_factory=lambda: np.zeros(3))
    motion_px: np.ndarray = field(default_factory=lambda: np.zeros(2))
    smear_px: np.ndarray = field(default_factory=lambda: np.zeros(2))
    centre_phone: tuple[float, float] = (0.0, 0.0)

    @property
    def depth_m(self) -> float:
        """Depth of the plane on the phone's optical axis (metres)."""
        return float(self.dist / self.normal[2])

    def describe(self) -> dict:
        """The layer's facts for truth.json (no pixel data)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "depth_m": round(self.depth_m, 4),
            "normal": np.round(self.normal, 6).tolist(),
            "phone_to_dslr": np.asarray(self.homography).tolist(),
            "moving": bool(np.any(self.motion_m != 0)),
            "motion_dslr_px": np.round(self.motion_px, 3).tolist(),
            "smear_dslr_px": np.round(self.smear_px, 3).tolist(),
        }


@dataclass
class LayeredScene:
    """Cameras and layers (back to front) of one simulated pair; ``k`` = supersampling."""

    cameras: RigCameras
    layers: list[Layer]
    k: int
    highlights: int = 0


def _tilted_normal(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a, b = np.tan(np.radians(rng.uniform(-max_deg, max_deg, 2)))
    n = np.array([a, b, 1.0])
    return n / np.linalg.norm(n)


def _outline(rng: np.random.Generator, centre: np.ndarray, radius: float) -> np.ndarray:
    """(N, 2) closed outline around ``centre`` (phone px): a random polygon or an ellipse."""
    kind = rng.integers(0, 3)
    if kind == 0:  # ellipse, finely sampled
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        ax = radius * rng.uniform(0.6, 1.2)
        ay = radius * rng.uniform(0.6, 1.2)
        rot = rng.uniform(0, np.pi)
        pts = np.stack([ax * np.cos(t), ay * np.sin(t)], 1)
    elif kind == 1:  # rotated rectangle
        w, h = radius * rng.uniform(0.7, 1.3, 2)
        rot = rng.uniform(0, np.pi)
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
    else:  # star-free random polygon: sorted angles, jittered radii
        n = int(rng.integers(5, 9))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = radius * rng.uniform(0.6, 1.15, n)
        rot = 0.0
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    c, s = math.cos(rot), math.sin(rot)
    return centre + pts @ np.array([[c, s], [-s, c]])


def _raster_alpha(outline_canvas: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Anti-aliased coverage of a polygon given in canvas px (4x supersampled, then averaged)."""
    ss = 4
    canvas = np.zeros((shape[0] * ss, shape[1] * ss), np.uint8)
    pts = np.round((outline_canvas * ss + (ss - 1) / 2.0) * 16).astype(np.int32)
    cv2.fillPoly(canvas, [pts], 255, cv2.LINE_8, shift=4)
    return cv2.resize(canvas.astype(np.float32) / 255.0, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def add_highlights(rng: np.random.Generator, texture: np.ndarray, k: int, count: int,
                   big: int = 0) -> None:
    """Add emitters to a linear texture in place: ``count`` small glints and ``big`` larger
    lamps or windows, 1.5 to 10 times the scene's white (1.0), with soft edges."""
    h, w = texture.shape[:2]
    for i in range(count + big):
        large = i >= count
        r = k * (rng.uniform(20, 60) if large else rng.uniform(2, 10))
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        level = float(np.exp(rng.uniform(np.log(1.5), np.log(10.0))))
        tint = np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.6, 1.0)], np.float32)
        x0, x1 = int(max(0, cx - 2 * r)), int(min(w, cx + 2 * r + 1))
        y0, y1 = int(max(0, cy - 2 * r)), int(min(h, cy + 2 * r + 1))
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        if large and rng.random() < 0.5:  # a window: a soft-edged rectangle
            d = np.maximum(np.abs(xx - cx) / rng.uniform(0.6, 1.4), np.abs(yy - cy))
        else:
            d = np.hypot(xx - cx, yy - cy)
        profile = np.clip((r - d) / (0.25 * r + k), 0.0, 1.0) ** 2  # a plateau with a soft rim
        texture[y0:y1, x0:x1] += (level * profile)[..., None] * tint


def build_scene(rng: np.random.Generator, *, phone_size: tuple[int, int], dslr_size: tuple[int, int], k: int,
                focal_35mm: float, coverage: tuple[float, float], max_roll_deg: float, baseline_mm: float,
                parallax: bool, motion: bool, clipping: bool, background, material) -> LayeredScene:
    """Draw the cameras and the layers of one scene.

    background: callable (h, w) -> (h, w, 3) float32 linear texture for the
    background (the scene source); material: callable (h, w) -> texture for the
    objects (other scene material).  Sizes are (width, height).
    """
    pw, ph = phone_size
    dw, dh = dslr_size
    bg_depth = rng.uniform(8.0, 30.0)
    bg_normal = _tilted_normal(rng, 10.0)
    cams = make_cameras(rng, phone_size, dslr_size, focal_35mm, coverage, baseline_mm, max_roll_deg, bg_depth,
                        bg_normal)
    bg_dist = float(bg_normal[2] * bg_depth)
    bg_tex = background(dh * k, dw * k).astype(np.float32)
    highlights = 0
    if clipping:
        highlights = int(rng.integers(6, 16))
        add_highlights(rng, bg_tex, k, highlights, big=int(rng.integers(1, 4)))
    h_bg = cams.plane_homography(bg_normal, bg_dist)
    bg = Layer("background", "background", bg_normal, bg_dist, h_bg, bg_tex, None, (0, 0),
               centre_phone=((pw - 1) / 2, (ph - 1) / 2))
    layers = [bg]
    n_obj = int(rng.integers(2, 5)) if parallax else (int(rng.integers(1, 3)) if motion else 0)
    n_moving = min(n_obj, int(rng.integers(1, 3))) if motion else 0
    moving = set(rng.choice(n_obj, n_moving, replace=False).tolist()) if n_moving else set()
    objects = []
    for i in range(n_obj):
        depth = rng.uniform(1.5, 5.0) if parallax else bg_depth * (1.0 - 1e-4 * (i + 1))
        normal = _tilted_normal(rng, 30.0) if parallax else bg_normal
        centre = np.array([rng.uniform(0.12, 0.88) * (pw - 1), rng.uniform(0.12, 0.88) * (ph - 1)])
        ray = np.linalg.inv(cams.k_phone) @ np.array([*centre, 1.0])
        point = ray * depth  # the object's centre, on the phone's ray through `centre`
        dist = float(normal @ point)
        motion_m = np.zeros(3)
        if i in moving:
            # image motion of 3-15 DSLR px in a random direction, as a translation parallel to the sensor
            px = rng.uniform(3.0, 15.0)
            ang = rng.uniform(0, 2 * np.pi)
            f_d = cams.k_dslr[0, 0]
            motion_m = np.array([math.cos(ang), math.sin(ang), 0.0]) * px * depth / f_d
            motion_m[2] = rng.uniform(-0.01, 0.01) * depth
        hom = cams.plane_homography(normal, dist, motion_m if i in moving else None)
        radius = rng.uniform(0.05, 0.12) * pw
        outline_phone = _outline(rng, centre, radius)
        outline_dslr = apply_homography(hom, outline_phone)
        canvas = outline_dslr * k + (k - 1) / 2.0
        x0, y0 = np.floor(canvas.min(axis=0)).astype(int) - 2 * k
        x1, y1 = np.ceil(canvas.max(axis=0)).astype(int) + 2 * k
        alpha = _raster_alpha(canvas - [x0, y0], (y1 - y0, x1 - x0))
        tex = material(y1 - y0, x1 - x0).astype(np.float32)
        if clipping and rng.random() < 0.4:
            add_highlights(rng, tex, k, int(rng.integers(1, 4)))
            highlights += 1
        c_d = apply_homography(hom, centre[None])[0]
        c_static = apply_homography(cams.plane_homography(normal, dist), centre[None])[0]
        smear = np.zeros(2)
        if i in moving and rng.random() < 0.5:
            smear = (c_d - c_static) * rng.uniform(0.2, 0.6)
        objects.append(Layer(f"object_{i + 1}", "object", normal, dist, hom, tex, alpha, (int(x0), int(y0)),
                             motion_m, c_d - c_static, smear, (float(centre[0]), float(centre[1]))))
    objects.sort(key=lambda lay: -lay.depth_m)  # far to near
    layers += objects
    return LayeredScene(cams, layers, k, highlights)


# ------------------------------------------------------------------- rendering


def _smeared(layer: Layer, k: int, steps: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """(premultiplied colour, alpha) of a layer on its own box, averaged over its DSLR smear."""
    alpha = layer.alpha if layer.alpha is not None else np.ones(layer.texture.shape[:2], np.float32)
    pre = layer.texture * alpha[..., None]
    if not np.any(layer.smear_px):
        return pre, alpha
    acc_c = np.zeros_like(pre)
    acc_a = np.zeros_like(alpha)
    h, w = alpha.shape
    for s in np.linspace(-0.5, 0.5, steps):
        dx, dy = layer.smear_px * k * s
        m = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
        acc_c += cv2.warpAffine(pre, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        acc_a += cv2.warpAffine(alpha, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return acc_c / steps, acc_a / steps


def render_dslr(scene: LayeredScene, dslr_size: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The DSLR's linear image and each object's coverage at DSLR resolution.

    Returns (image (dh, dw, 3) float32 linear, [alpha (dh, dw) float32 per layer,
    None for the opaque background]): the k-res composite averaged in k x k blocks.
    """
    dw, dh = dslr_size
    k = scene.k
    canvas = scene.layers[0].texture.copy()
    coverage: list[np.ndarray | None] = [None]
    for layer in scene.layers[1:]:
        pre, alpha = _smeared(layer, k)
        x0, y0 = layer.origin
        h, w = alpha.shape
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, dw * k), min(y0 + h, dh * k)
        full = np.zeros((dh * k, dw * k), np.float32)
        if cx1 > cx0 and cy1 > cy0:
            sl = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
            a = alpha[sl]
            region = canvas[cy0:cy1, cx0:cx1]
            region *= (1.0 - a)[..., None]
            region += pre[sl]
            full[cy0:cy1, cx0:cx1] = a
        coverage.append(cv2.resize(full, (dw, dh), interpolation=cv2.INTER_AREA) if k > 1 else full)
    image = cv2.resize(canvas, (dw, dh), interpolation=cv2.INTER_AREA) if k > 1 else canvas
    return image, coverage


def _jacobian_scale(h: np.ndarray, xy: tuple[float, float]) -> float:
    x, y = xy
    p = apply_homography(h, np.array([[x, y], [x + 1, y], [x, y + 1]], np.float64))
    return float(math.sqrt(abs(np.linalg.det(np.stack([p[1] - p[0], p[2] - p[0]], 1)))))


def render_phone(scene: LayeredScene, phone_size: tuple[int, int], undistort) -> tuple[np.ndarray, list[np.ndarray]]:
    """The phone's linear RGB on its full raw grid and each layer's coverage there.

    undistort: callable (N, 2) observed phone px -> (N, 2) undistorted px (identity
    without a lens model).  Each layer is low-passed to the phone's pixel pitch
    (sigma = 0.45 pitch in scene px) and sampled with cubic splines at its
    homography's exact positions.  Returns (rgb (ph, pw, 3) float32,
    [alpha (ph, pw) float32 per layer, ones for the background]).
    """
    pw, ph = phone_size
    k = scene.k
    ys, xs = np.mgrid[0:ph, 0:pw].astype(np.float64)
    und = undistort(np.stack([xs.ravel(), ys.ravel()], axis=1))
    out = np.zeros((ph * pw, 3), np.float32)
    alphas = []
    for layer in scene.layers:
        xy = apply_homography(layer.homography, und) * k + (k - 1) / 2.0
        xy -= layer.origin
        sigma = 0.45 * k * _jacobian_scale(layer.homography, layer.centre_phone)
        th, tw = layer.texture.shape[:2]
        if layer.alpha is None:
            sel = np.arange(len(xy))
            alpha = np.ones(len(xy), np.float32)
        else:
            sel = np.nonzero((xy[:, 0] > -3 * sigma - 2) & (xy[:, 1] > -3 * sigma - 2)
                             & (xy[:, 0] < tw + 3 * sigma + 1) & (xy[:, 1] < th + 3 * sigma + 1))[0]
            alpha = np.zeros(len(xy), np.float32)
        if len(sel) == 0:
            alphas.append(alpha.reshape(ph, pw))
            continue
        pts = [xy[sel, 1], xy[sel, 0]]
        if layer.alpha is not None:
            a_img = cv2.GaussianBlur(np.pad(layer.alpha, 2), (0, 0), sigma)
            pts_pad = [pts[0] + 2, pts[1] + 2]
            alpha[sel] = np.clip(ndimage.map_coordinates(a_img, pts_pad, order=1, mode="constant"), 0, 1)
            pre_src = np.pad(layer.texture * layer.alpha[..., None], ((2, 2), (2, 2), (0, 0)))
        else:
            pre_src = layer.texture
            pts_pad = pts
        a = alpha[sel]
        for c in range(3):
            blurred = cv2.GaussianBlur(np.ascontiguousarray(pre_src[..., c]), (0, 0), sigma)
            mode = "mirror" if layer.alpha is None else "constant"
            coeffs = ndimage.spline_filter(blurred, order=3, output=np.float32, mode=mode)
            val = ndimage.map_coordinates(coeffs, pts_pad, order=3, prefilter=False, mode=mode)
            out[sel, c] = out[sel, c] * (1.0 - a) + np.clip(val, 0, None)
        alphas.append(alpha.reshape(ph, pw))
    return np.clip(out, 0, None).reshape(ph, pw, 3), alphas


def truth_from_render(scene: LayeredScene, phone_size: tuple[int, int], dslr_size: tuple[int, int], undistort,
                      phone_alpha: list[np.ndarray], dslr_alpha: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per phone px: the DSLR (x, y) of its scene point and the index of the owning layer.

    Returns (truth_map (ph, pw, 2) float32, NaN where the point is hidden in the
    DSLR or outside its frame; owner (ph, pw) int8, the front-most layer with
    coverage >= 0.5 at the phone px).
    """
    pw, ph = phone_size
    dw, dh = dslr_size
    owner = np.zeros((ph, pw), np.int8)
    for i, a in enumerate(phone_alpha):
        owner[a >= 0.5] = i
    ys, xs = np.mgrid[0:ph, 0:pw].astype(np.float64)
    und = undistort(np.stack([xs.ravel(), ys.ravel()], axis=1))
    truth = np.full((ph * pw, 2), np.nan, np.float64)
    own = owner.ravel()
    for i, layer in enumerate(scene.layers):
        sel = np.nonzero(own == i)[0]
        if len(sel) == 0:
            continue
        xy = apply_homography(layer.homography, und[sel])
        visible = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] <= dw - 1) & (xy[:, 1] <= dh - 1)
        for j in range(i + 1, len(scene.layers)):  # layers in front of the owner
            cov = dslr_alpha[j]
            if cov is None:
                continue
            a = ndimage.map_coordinates(cov, [xy[:, 1], xy[:, 0]], order=1, mode="constant", cval=0.0)
            visible &= a < 0.5
        xy[~visible] = np.nan
        truth[sel] = xy
    return truth.reshape(ph, pw, 2).astype(np.float32), owner
