"""The SID U-Net (Chen, Chen, Xu, Koltun, "Learning to See in the Dark", CVPR 2018).

Four 2x2 max-pool levels (widths 32, 64, 128, 256, 512 by default), two 3x3
convolutions with LeakyReLU(0.2) per level, 2x2 transposed convolutions up,
skip concatenation, a 1x1 output convolution to 12 channels and a depth-to-space
to the full-resolution sRGB image, as in the paper's raw-to-sRGB network.
About 7.8 M parameters at the default width.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from learn.models import register
from learn.models.blocks import crop_to, pad_to_multiple, to_image


def _double(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
    )


@register("unet")
class SIDUNet(nn.Module):
    """SID U-Net: ``(N, in_channels, H, W) -> (N, 3, upscale*H, upscale*W)`` in [0, 1].

    Args:
        in_channels: 4 (packed raw) or 3 (RGB).
        upscale: 2 for packed raw, 1 for RGB.
        base: width of the first level (32 in the paper).
    """

    def __init__(self, in_channels: int = 4, upscale: int = 2, base: int = 32) -> None:
        super().__init__()
        w = [base * 2**i for i in range(5)]
        self.upscale = upscale
        self.downs = nn.ModuleList([_double(in_channels, w[0])] + [_double(w[i - 1], w[i]) for i in range(1, 5)])
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList([nn.ConvTranspose2d(w[i], w[i - 1], 2, stride=2) for i in range(4, 0, -1)])
        self.decs = nn.ModuleList([_double(2 * w[i - 1], w[i - 1]) for i in range(4, 0, -1)])
        self.out = nn.Conv2d(w[0], 3 * upscale * upscale, 1)
        self.size_multiple = 16
        self.receptive_radius = 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, self.size_multiple)
        skips = []
        h = x
        for i, down in enumerate(self.downs):
            h = down(h)
            if i < 4:
                skips.append(h)
                h = self.pool(h)
        for up, dec in zip(self.ups, self.decs):
            h = dec(torch.cat([up(h), skips.pop()], 1))
        return crop_to(to_image(self.out(h), self.upscale), size, self.upscale)
