"""Training losses. Every loss maps ``(pred, target, mask=None) -> scalar``.

``pred`` and ``target`` are sRGB ``(N, 3, H, W)`` in [0, 1]; ``mask`` ``(N, 1, H, W)``
marks valid target pixels (1) so pixels outside the warped DSLR frame or
flagged by alignment never count.

* ``l1``: masked mean absolute error.
* ``l2``: masked mean squared error, the loss PSNR measures (PSNR = -10 log10 of it).
* ``ssim``: 1 - SSIM;  ``ms_ssim``: 1 - MS-SSIM (as many scales as the crop allows, at most 5).
* ``colour``: mean angle (radians) between blurred RGB vectors: colour, not detail.
* ``shift_l1``: misalignment-tolerant L1, per image the minimum over integer
  shifts of the target within +-``max_shift`` pixels (computed on the interior
  so every shift sees the same pixels), tolerating the residual misalignment left by alignment.
* ``perceptual``: not built in; a VGG loss needs user-given weights and is not
  substituted when absent.

:func:`build_loss` combines them with weights from a config, e.g. ``{"l1": 1, "ssim": 0.2}``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from learn.metrics import _blur, gaussian_window, ssim_map

LossFn = Callable[..., torch.Tensor]


def _mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype).expand_as(x)
    return (x * m).sum() / m.sum().clamp_min(1)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Masked L1."""
    return _mean((pred - target).abs(), mask)


def l2_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Masked mean squared error (the quantity PSNR is a logarithm of)."""
    return _mean((pred - target).square(), mask)


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - mean SSIM (Gaussian 11x11 windows, valid windows only; masked by window centre)."""
    win = min(11, pred.shape[-1], pred.shape[-2])
    win -= 1 - win % 2
    s, _ = ssim_map(pred, target, 1.0, win)
    r = win // 2
    m = None if mask is None else mask[..., r: r + s.shape[-2], r: r + s.shape[-1]]
    return 1 - _mean(s, m)


def ms_ssim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                 weights: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)) -> torch.Tensor:
    """1 - MS-SSIM (Wang et al. 2003) with as many of the 5 scales as fit the crop (>= 11 px at the coarsest)."""
    levels = max(1, min(len(weights), 1 + int(math.log2(max(min(pred.shape[-2:]) / 11, 1)))))
    w = torch.tensor(weights[:levels], device=pred.device)
    w = w / w.sum()
    x, y, m = pred.float(), target.float(), None if mask is None else mask.float()
    value = 1.0
    for i in range(levels):
        win = min(11, x.shape[-1], x.shape[-2])
        win -= 1 - win % 2
        s, cs = ssim_map(x, y, 1.0, win)
        r = win // 2
        mm = None if m is None else m[..., r: r + s.shape[-2], r: r + s.shape[-1]]
        term = _mean(s if i == levels - 1 else cs, mm).clamp_min(1e-6)
        value = value * term ** w[i]
        if i < levels - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
            m = None if m is None else (F.avg_pool2d(m, 2) > 0.999).float()
    return 1 - value


def colour_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                sigma: float = 3.0) -> torch.Tensor:
    """Mean angle in radians between Gaussian-blurred RGB vectors (insensitive to detail and brightness)."""
    size = int(2 * round(2 * sigma) + 1)
    g = gaussian_window(size, sigma, pred.device)
    p = F.pad(pred.float(), [size // 2] * 4, mode="replicate")
    t = F.pad(target.float(), [size // 2] * 4, mode="replicate")
    bp, bt = _blur(p, g), _blur(t, g)
    cos = F.cosine_similarity(bp.double(), bt.double(), dim=1, eps=1e-8).clamp(-1 + 1e-12, 1 - 1e-12)
    return _mean(torch.acos(cos).unsqueeze(1), mask).to(pred.dtype)


def shift_l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                  max_shift: int = 2) -> torch.Tensor:
    """Misalignment-tolerant L1: mean over images of min over shifts |s| <= max_shift of the L1 on the interior."""
    s = max_shift
    h, w = pred.shape[-2:]
    if h <= 2 * s or w <= 2 * s:
        raise ValueError(f"crop {h}x{w} too small for max_shift {s}")
    p = pred[..., s: h - s, s: w - s]
    best = None
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            t = target[..., s + dy: h - s + dy, s + dx: w - s + dx]
            err = (p - t).abs()
            if mask is None:
                per = err.mean(dim=(1, 2, 3))
            else:
                m = mask[..., s + dy: h - s + dy, s + dx: w - s + dx].to(err.dtype).expand_as(err)
                per = (err * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1)
            best = per if best is None else torch.minimum(best, per)
    return best.mean()


LOSSES: dict[str, LossFn] = {
    "l1": l1_loss,
    "l2": l2_loss,
    "ssim": ssim_loss,
    "ms_ssim": ms_ssim_loss,
    "colour": colour_loss,
    "shift_l1": shift_l1_loss,
}


def build_loss(weights: dict[str, float]) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """Weighted sum of named losses, e.g. ``{"l1": 1.0, "ms_ssim": 0.2}``; unknown names raise ``KeyError``."""
    if "perceptual" in weights or "vgg" in weights:
        raise KeyError("a perceptual (VGG) loss needs user-given weights and is not built in")
    unknown = set(weights) - set(LOSSES)
    if unknown:
        raise KeyError(f"unknown loss(es) {sorted(unknown)}; available: {sorted(LOSSES)}")
    terms = [(LOSSES[name], float(w)) for name, w in weights.items() if float(w) != 0]
    if not terms:
        raise ValueError("the loss config gives no non-zero weight")

    def loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return sum(w * fn(pred, target, mask) for fn, w in terms)

    return loss
