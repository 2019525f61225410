"""PAC: pixel-adaptive convolution (Su et al., "Pixel-Adaptive Convolutional Neural Networks", CVPR 2019).

A pixel-adaptive convolution modulates a spatially shared kernel W by a
Gaussian of guidance-feature differences:

    v'_i = sum_{j in window(i)} K(f_i, f_j) W[i - j] v_j + b,   K(f_i, f_j) = exp(-1/2 ||f_i - f_j||^2)

The network: a guidance branch (two 3x3 convolutions -> f, 8 channels), a
3x3 input convolution, two 5x5 PAC layers guided by f, and a 3x3 output
convolution to 3*upscale^2 channels with a depth-to-space.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from learn.models import register
from learn.models.blocks import to_image


def pac_conv2d(x: torch.Tensor, guide: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Pixel-adaptive convolution, 'same' size with replicate padding.

    Args:
        x: (N, C, H, W) input.  guide: (N, F, H, W) guidance features.
        weight: (O, C, k, k) shared kernel.  bias: (O,) or None.
    Returns:
        (N, O, H, W).
    """
    o, c, k = weight.shape[0], weight.shape[1], weight.shape[2]
    n, h, w = x.shape[0], x.shape[2], x.shape[3]
    p = k // 2
    xu = F.unfold(F.pad(x, (p, p, p, p), mode="replicate"), (k, k)).view(n, c, k * k, h, w)
    gu = F.unfold(F.pad(guide, (p, p, p, p), mode="replicate"), (k, k)).view(n, guide.shape[1], k * k, h, w)
    adapt = torch.exp(-0.5 * ((gu - guide.unsqueeze(2)) ** 2).sum(1))  # (N, k*k, H, W)
    y = torch.einsum("ock,nckhw->nohw", weight.view(o, c, k * k), xu * adapt.unsqueeze(1))
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y


class PacConv2d(nn.Module):
    """A pixel-adaptive convolution layer: ``(x (N,C,H,W), guide (N,F,H,W)) -> (N,O,H,W)``."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        return pac_conv2d(x, guide, self.weight, self.bias)


@register("pac")
class PACNet(nn.Module):
    """PAC baseline: ``(N, in_channels, H, W) -> (N, 3, upscale*H, upscale*W)`` in [0, 1]."""

    def __init__(self, in_channels: int = 4, upscale: int = 2, width: int = 32, guide_channels: int = 8,
                 kernel_size: int = 5) -> None:
        super().__init__()
        self.upscale = upscale
        self.guide = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(16, guide_channels, 3, padding=1),
        )
        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
        self.pac1 = PacConv2d(width, width, kernel_size)
        self.pac2 = PacConv2d(width, width, kernel_size)
        self.out = nn.Conv2d(width, 3 * upscale * upscale, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.size_multiple = 1
        self.receptive_radius = 2 + 2 * (kernel_size // 2) + 1 + 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.guide(x)
        h = self.act(self.inp(x))
        h = self.act(self.pac1(h, f))
        h = self.act(self.pac2(h, f))
        return to_image(self.out(h), self.upscale)
