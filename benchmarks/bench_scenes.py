"""Scene material of kinds the shared data lacks, made here: a colour chart, a printed
document, a whiteboard, foliage, a mosaic of small real patches and a real photo
shrunk to a small original.  Each is a linear RGB scene, (h, w, 3) float32 in
[0, 1], as :func:`isp_rig.simulate.load_source` returns, for ``simulate_pair``'s
``source``; deterministic for a seed.

Used by ``bench_alignment.py`` so that no single kind of scene dominates its figures.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from alignment import rawio

#: sRGB (0-255) of the 24 patches of a classic colour checker, row by row
CHECKER = [(115, 82, 68), (194, 150, 130), (98, 122, 157), (87, 108, 67), (133, 128, 177), (103, 189, 170),
           (214, 126, 44), (80, 91, 166), (193, 90, 99), (94, 60, 108), (157, 188, 64), (224, 163, 46),
           (56, 61, 150), (70, 148, 73), (175, 54, 60), (231, 199, 31), (187, 86, 149), (8, 133, 161),
           (243, 243, 242), (200, 200, 200), (160, 160, 160), (122, 122, 121), (85, 85, 85), (52, 52, 52)]


def _linear(srgb_u8: np.ndarray) -> np.ndarray:
    return np.clip(rawio.srgb_to_linear(srgb_u8.astype(np.float32) / 255.0), 0, 1).astype(np.float32)


def colour_chart(seed: int, size: tuple[int, int] = (1500, 1000)) -> np.ndarray:
    """A colour checker (4 x 6 flat patches with black gaps) on a mid-grey card under a
    soft light gradient: flat regions, edges only."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.full((h, w, 3), 110, np.float32)
    pw, ph = w // 7, h // 5
    x0, y0 = (w - 6 * pw) // 2, (h - 4 * ph) // 2
    for k, c in enumerate(CHECKER):
        r, q = divmod(k, 6)
        g = int(0.08 * pw)
        img[y0 + r * ph + g:y0 + (r + 1) * ph - g, x0 + q * pw + g:x0 + (q + 1) * pw - g] = c
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 1.0 - 0.25 * ((xx / w - rng.uniform(0.2, 0.8)) ** 2 + (yy / h - rng.uniform(0.2, 0.8)) ** 2)
    return np.clip(_linear(np.clip(img, 0, 255)) * light[..., None], 0, 1)


def document(seed: int, size: tuple[int, int] = (1600, 1200)) -> np.ndarray:
    """A printed page: lines of text in a Hershey font on white paper, a heading and a
    ruled table; sharp, repetitive, high contrast, mostly white."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.full((h, w, 3), 245, np.uint8)
    letters = "abcdefghijklmnopqrstuvwxyz"
    cv2.putText(img, "Quarterly report " + str(int(rng.integers(1, 99))), (120, 150), cv2.FONT_HERSHEY_DUPLEX,
                2.0, (20, 20, 20), 3, cv2.LINE_AA)
    y = 240
    while y < h - 300:
        x = 120
        while x < w - 220:
            word = "".join(rng.choice(list(letters), int(rng.integers(2, 9))))
            cv2.putText(img, word, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (30, 30, 30), 2, cv2.LINE_AA)
            x += 22 * len(word) + 25
        y += 46
    for k in range(5):
        cv2.line(img, (120, h - 260 + 40 * k), (w - 120, h - 260 + 40 * k), (60, 60, 60), 2, cv2.LINE_AA)
    return _linear(img)


def whiteboard(seed: int, size: tuple[int, int] = (1600, 1200)) -> np.ndarray:
    """A whiteboard: an off-white board under uneven light with a few marker strokes, a
    box and a short line of writing: large blank areas, few features."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.full((h, w, 3), 232, np.uint8)
    colours = [(30, 40, 160), (20, 20, 20), (170, 30, 30), (30, 120, 40)]
    for _ in range(int(rng.integers(3, 6))):
        pts = np.cumsum(rng.normal(0, 40, (int(rng.integers(4, 9)), 2)), axis=0) + rng.uniform([200, 200],
                                                                                            [w - 200, h - 200])
        cv2.polylines(img, [pts.astype(np.int32)], False, colours[int(rng.integers(0, 4))], int(rng.integers(4, 8)),
                      cv2.LINE_AA)
    x, y = rng.uniform([150, 150], [w - 600, h - 450]).astype(int)
    cv2.rectangle(img, (x, y), (x + 400, y + 250), (20, 20, 20), 5, cv2.LINE_AA)
    cv2.putText(img, "todo: align", (x + 20, y + 140), cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, 2.0, (30, 40, 160), 4,
                cv2.LINE_AA)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 0.8 + 0.2 * np.cos((xx / w - rng.uniform(0, 1)) * 2.5) * np.cos((yy / h - rng.uniform(0, 1)) * 2.0)
    return np.clip(_linear(img) * light[..., None], 0, 1)


def foliage(seed: int, size: tuple[int, int] = (1500, 1000)) -> np.ndarray:
    """Leaves: thousands of overlapping green-to-olive ellipses of many sizes and
    orientations, darker below: fine, repetitive, self-similar texture."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (25, 45, 20)
    for _ in range(6000):
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        a = int(rng.uniform(4, 22))
        g = int(rng.uniform(60, 200))
        colour = (int(g * rng.uniform(0.3, 0.7)), g, int(g * rng.uniform(0.1, 0.4)))
        cv2.ellipse(img, (cx, cy), (a, max(2, a // 3)), float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    shade = np.linspace(1.0, 0.55, h, dtype=np.float32)[:, None, None]
    return np.clip(_linear(img) * shade, 0, 1)


def patch_mosaic(folder: Path, seed: int, grid: tuple[int, int] = (8, 6)) -> np.ndarray:
    """A grid of 100 x 100 real photo patches (the DPED Canon patches of ``folder``), drawn
    by the seed: small originals that the simulator enlarges several times."""
    rng = np.random.default_rng(seed)
    files = sorted(folder.glob("*.jpg"))
    pick = rng.choice(len(files), grid[0] * grid[1], replace=False)
    tiles = [cv2.imread(str(files[i]), cv2.IMREAD_COLOR)[..., ::-1] for i in pick]
    rows = [np.concatenate(tiles[r * grid[0]:(r + 1) * grid[0]], axis=1) for r in range(grid[1])]
    return _linear(np.concatenate(rows, axis=0))


def small_original(path: Path, factor: float = 0.3) -> np.ndarray:
    """A real photo shrunk to ``factor`` of its size (INTER_AREA): a small original that
    the simulator enlarges, soft where it is magnified."""
    rgb = rawio.srgb_to_linear(rawio.read_rgb(path).rgb)
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(16, int(w * factor)), max(16, int(h * factor))), interpolation=cv2.INTER_AREA)
    return np.clip(small, 0, 1).astype(np.float32)
