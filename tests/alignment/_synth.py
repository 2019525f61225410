"""Synthetic phone-raw / DSLR pairs with an exact, known mapping, for alignment tests.

A real image (linearised) is the scene. The phone view and the DSLR view are
homographies into the scene; each camera pixel integrates its square footprint
(supersampled box), the phone additionally sees an optional radial distortion,
vignetting and noise and is mosaicked (RGGB) into packed planes; the DSLR is
sRGB-encoded and JPEG-compressed. The truth maps an observed phone pixel on the
full raw grid to DSLR pixels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def srgb_encode(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def srgb_decode(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4))


@dataclass
class SynthPair:
    packed: np.ndarray  # (h, w, 4) float32 R, G1, G2, B, normalised
    dslr: np.ndarray  # (H, W, 3) uint8 sRGB
    a_phone: np.ndarray  # ideal phone px -> scene px
    a_dslr: np.ndarray  # DSLR px -> scene px
    k1: float
    k2: float
    phone_size: tuple[int, int]  # full raw grid (W, H)

    def _ideal(self, xy: np.ndarray) -> np.ndarray:
        w, h = self.phone_size
        c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        f = 0.5 * np.hypot(w, h)
        n = (xy - c) / f
        r2 = (n * n).sum(1, keepdims=True)
        return c + f * n * (1 + self.k1 * r2 + self.k2 * r2 * r2)

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """Observed phone raw px (N,2) -> DSLR px (N,2), exact."""
        u = self._ideal(np.asarray(xy, np.float64))
        h = np.linalg.inv(self.a_dslr) @ self.a_phone
        p = np.c_[u, np.ones(len(u))] @ h.T
        return p[:, :2] / p[:, 2:]

    @property
    def homography(self) -> np.ndarray:
        h = np.linalg.inv(self.a_dslr) @ self.a_phone
        return h / h[2, 2]


def _render(scene: np.ndarray, map_fn, shape: tuple[int, int], ss: int = 3, sigma_scene: float = 0.0) -> np.ndarray:
    """Box-integrate the scene over each output pixel: map_fn(x, y) -> scene (X, Y)."""
    rows, cols = shape
    src = cv2.GaussianBlur(scene, (0, 0), sigma_scene) if sigma_scene > 0 else scene
    acc = np.zeros((rows, cols, scene.shape[2]), np.float64)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    for i in range(ss):
        for j in range(ss):
            ox = (j + 0.5) / ss - 0.5
            oy = (i + 0.5) / ss - 0.5
            X, Y = map_fn(xx + ox, yy + oy)
            acc += cv2.remap(src, X.astype(np.float32), Y.astype(np.float32), cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    return (acc / (ss * ss)).astype(np.float32)


def _hmap(a: np.ndarray):
    def f(x, y):
        w = a[2, 0] * x + a[2, 1] * y + a[2, 2]
        return (a[0, 0] * x + a[0, 1] * y + a[0, 2]) / w, (a[1, 0] * x + a[1, 1] * y + a[1, 2]) / w

    return f


def make_pair(
    scene_srgb: np.ndarray,
    seed: int = 0,
    phone_size: tuple[int, int] = (640, 480),
    dslr_size: tuple[int, int] = (1000, 750),
    distortion: float = 0.0,
    noise: float = 0.002,
    vignetting: float = 0.3,
    jpeg_quality: int = 92,
    perspective: float = 1.0,
) -> SynthPair:
    """Build a pair from an sRGB-encoded scene image (H, W, 3) uint8 or float in [0,1]."""
    rng = np.random.default_rng(seed)
    scene = scene_srgb.astype(np.float32)
    if scene_srgb.dtype == np.uint8:
        scene = scene / 255.0
    scene = srgb_decode(scene).astype(np.float32)
    sh, sw = scene.shape[:2]
    # DSLR sees 90 % of the scene; the phone sees a smaller, rotated, tilted part
    dw, dh = dslr_size
    s_d = 0.9 * min(sw / dw, sh / dh)
    a_d = np.array([[s_d, 0, (sw - s_d * dw) / 2], [0, s_d, (sh - s_d * dh) / 2], [0, 0, 1.0]])
    pw, ph = phone_size
    ang = rng.uniform(-4, 4) * np.pi / 180
    s_p = 0.55 * dw * s_d / pw * rng.uniform(0.9, 1.1)
    c, s = np.cos(ang), np.sin(ang)
    tx = sw / 2 + rng.uniform(-0.05, 0.05) * sw
    ty = sh / 2 + rng.uniform(-0.05, 0.05) * sh
    centre = np.array([[1, 0, -(pw - 1) / 2], [0, 1, -(ph - 1) / 2], [0, 0, 1.0]])
    persp = np.eye(3)
    persp[2, 0] = perspective * rng.uniform(-1, 1) * 0.06 / pw
    persp[2, 1] = perspective * rng.uniform(-1, 1) * 0.06 / ph
    a_p = np.array([[s_p * c, -s_p * s, tx], [s_p * s, s_p * c, ty], [0, 0, 1.0]]) @ persp @ centre
    pair = SynthPair(
        packed=np.zeros(1), dslr=np.zeros(1), a_phone=a_p, a_dslr=a_d, k1=distortion, k2=0.0, phone_size=(pw, ph)
    )
    hp = _hmap(a_p)

    def phone_map(x, y):
        xy = np.stack([x.ravel(), y.ravel()], 1)
        u = pair._ideal(xy)
        X, Y = hp(u[:, 0], u[:, 1])
        return X.reshape(x.shape), Y.reshape(x.shape)

    rgb_p = _render(scene, phone_map, (ph, pw), sigma_scene=0.4 * s_p)
    rgb_d = _render(scene, _hmap(a_d), (dh, dw), sigma_scene=0.4 * s_d)
    # phone: vignetting, colour response, mosaic, noise, 10-bit quantisation
    yy, xx = np.mgrid[0:ph, 0:pw]
    r2 = ((xx - pw / 2) ** 2 + (yy - ph / 2) ** 2) / ((pw / 2) ** 2 + (ph / 2) ** 2)
    vig = (1 - vignetting * r2).astype(np.float32)
    resp = np.array([[0.55, 0.35, 0.1], [0.15, 0.7, 0.15], [0.05, 0.3, 0.65]], np.float32)  # camera RGB mix
    cam = (rgb_p @ resp.T) * vig[..., None] * 0.8
    mosaic = np.empty((ph, pw), np.float32)
    mosaic[0::2, 0::2] = cam[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = cam[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = cam[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = cam[1::2, 1::2, 2]
    mosaic = mosaic + rng.normal(0, 1, mosaic.shape).astype(np.float32) * np.sqrt(noise**2 + 0.002 * np.maximum(mosaic, 0) / 100)
    mosaic = np.round(np.clip(mosaic, 0, 1) * 1023) / 1023
    packed = np.stack([mosaic[0::2, 0::2], mosaic[0::2, 1::2], mosaic[1::2, 0::2], mosaic[1::2, 1::2]], -1)
    enc = (srgb_encode(np.clip(rgb_d * 1.1, 0, 1)) * 255 + 0.5).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", enc[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    dslr = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()
    pair.packed = packed.astype(np.float32)
    pair.dslr = dslr
    return pair
