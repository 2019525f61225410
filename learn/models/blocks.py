"""Building blocks shared by the models: padding to a size multiple, the
light encoder-decoder, second-order colour terms and additive image statistics.

Tensor layout everywhere: ``(N, C, H, W)``, float32, values in ``[0, 1]`` for
images (packed raw may exceed 1 slightly: it is not clipped).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad ``x`` (N, C, H, W) at the bottom/right so H and W are multiples of ``multiple``.

    Returns the padded tensor and the original ``(H, W)`` for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    if multiple > 1:  # unconditional so a traced / exported graph pads every input size
        # the padded size as multiple * ceil(size / multiple) (the same as size + (-size) % multiple):
        # in this form torch.export can prove every later halving exact for any input size
        ph = (h + multiple - 1) // multiple * multiple - h
        pw = (w + multiple - 1) // multiple * multiple - w
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def crop_to(y: torch.Tensor, size: tuple[int, int], scale: int = 1) -> torch.Tensor:
    """Crop ``y`` (N, C, H', W') to ``(scale*size[0], scale*size[1])`` from the top-left."""
    return y[..., : size[0] * scale, : size[1] * scale]


def to_image(y: torch.Tensor, upscale: int) -> torch.Tensor:
    """Turn ``(N, 3*upscale**2, H, W)`` into the image ``(N, 3, upscale*H, upscale*W)`` clamped to [0, 1]
    (straight through: the gradient is that of the unclamped values).

    Channel ``c*upscale**2 + s`` holds colour ``c`` at sub-pixel ``s`` (row-major in
    the ``upscale x upscale`` cell), as ``torch.nn.functional.pixel_shuffle`` expects.
    For packed raw (upscale 2) sub-pixel 0, 1, 2, 3 are the raw pixels at
    (row, col) offsets (0,0), (0,1), (1,0), (1,1) of the 2x2 CFA cell.
    """
    if upscale > 1:
        y = F.pixel_shuffle(y, upscale)
    # straight-through clamp: the values of clamp(y), the gradient of y.  A hard clamp
    # passes no gradient where an untrained net starts out of range, and a raw-input
    # U-Net starts with most of its output below 0: it would never recover
    return y + (y.clamp(0.0, 1.0) - y).detach()


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    """A ``k x k`` convolution with zero 'same' padding."""
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


class EncoderDecoder(nn.Module):
    """A light U-shaped network: three stride-2 levels down, bilinear up with skips.

    ``(N, in_channels, H, W) -> (N, out_channels, H, W)``, H and W multiples of 8.
    Widths are ``width/2, width, 2*width, 4*width`` at scales 1, 1/2, 1/4, 1/8;
    almost all computation runs at 1/2 resolution or lower, and the full-resolution
    output is a 1x1 convolution over the upsampled features plus a thin
    full-resolution feature layer, so the cost per pixel stays small.
    """

    stride = 8
    receptive_radius = 40

    def __init__(self, in_channels: int, out_channels: int, width: int = 16) -> None:
        super().__init__()
        c0, c1, c2, c3 = max(width // 2, 4), width, 2 * width, 4 * width
        self.f0 = conv(in_channels, c0)
        self.f1 = conv(c0, c1, stride=2)
        self.f2a, self.f2b = conv(c1, c2, stride=2), conv(c2, c2)
        self.f3a, self.f3b = conv(c2, c3, stride=2), conv(c3, c3)
        self.d2 = conv(c3 + c2, c2)
        self.d1 = conv(c2 + c1, c1)
        self.head = nn.Conv2d(c1 + c0, out_channels, 1)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act
        f0 = a(self.f0(x))
        f1 = a(self.f1(f0))
        f2 = a(self.f2b(a(self.f2a(f1))))
        f3 = a(self.f3b(a(self.f3a(f2))))
        d2 = a(self.d2(torch.cat([self._up(f3, f2), f2], 1)))
        d1 = a(self.d1(torch.cat([self._up(d2, f1), f1], 1)))
        return self.head(torch.cat([self._up(d1, f0), f0], 1))


def n_poly_terms(channels: int) -> int:
    """Number of terms of :func:`poly_terms`: 1 + C + C(C+1)/2."""
    return 1 + channels + channels * (channels + 1) // 2


def quad_index(channels: int) -> torch.Tensor:
    """``(2, C(C+1)/2)`` channel index pairs (a, b), a <= b, row-major upper triangle."""
    return torch.triu_indices(channels, channels)


def poly_terms(x: torch.Tensor, pairs: torch.Tensor | None = None) -> torch.Tensor:
    """Second-order polynomial terms of each pixel's channels.

    ``(N, C, H, W) -> (N, T, H, W)`` with T = 1 + C + C(C+1)/2, in the order
    1, x_0..x_{C-1}, then x_a*x_b for the pairs of :func:`quad_index` (pass them
    precomputed as ``pairs`` to keep the function export-friendly).
    """
    if pairs is None:
        pairs = quad_index(x.shape[1]).to(x.device)
    ones = torch.ones_like(x[:, :1])
    quad = x[:, pairs[0]] * x[:, pairs[1]]
    return torch.cat([ones, x, quad], 1)


def image_statistics(x: torch.Tensor, pairs: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image means of the non-constant polynomial terms: ``(N, C, H, W) -> (N, T-1)``.

    Means are additive over disjoint tiles (weight each tile by its pixel count),
    so a tiled renderer can compute exactly the statistics of the whole image.
    """
    if pairs is None:
        pairs = quad_index(x.shape[1]).to(x.device)
    flat = x.flatten(2)  # (N, C, HW)
    gram = torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[-1]  # (N, C, C) means of x_a * x_b
    return torch.cat([flat.mean(-1), gram[:, pairs[0], pairs[1]]], 1)


def cumulative_histogram(x: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Share of all values of each image (channels pooled) at or below each threshold: ``(N, C, H, W) -> (N, K)``.

    ``thresholds`` (K,) ascending.  Each entry is a mean of indicators, so, like
    :func:`image_statistics`, it is additive over disjoint tiles weighted by their pixel count.
    """
    flat = x.flatten(1)
    bins = torch.bucketize(flat, thresholds)  # index of the first threshold >= the value
    counts = torch.zeros(flat.shape[0], thresholds.numel() + 1, dtype=x.dtype, device=x.device)
    counts.scatter_add_(1, bins, torch.ones_like(flat))
    return counts[:, :-1].cumsum(1) / flat.shape[1]


def quantiles_from_histogram(cdf: torch.Tensor, thresholds: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Quantiles ``(N, Q)`` at ``levels`` (Q,) in (0, 1) from a cumulative histogram ``(N, K)`` at ``thresholds``.

    Linear interpolation between the two thresholds whose shares bracket the level; a level
    below the first share gives the first threshold, above the last share the last.
    """
    k = (cdf[:, None, :] < levels[None, :, None]).sum(-1).clamp(1, thresholds.numel() - 1)  # (N, Q)
    lo, hi = cdf.gather(1, k - 1), cdf.gather(1, k)
    frac = ((levels[None] - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    t0, t1 = thresholds[k - 1], thresholds[k]
    return t0 + frac * (t1 - t0)
