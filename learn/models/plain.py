"""plain: a plain CNN with ckisp's parameter count (does predicting the kernel matter?).

The same encoder-decoder as ckisp's mixing network, but its last layer writes
the output colours directly instead of kernel weights, with no kernel formula
and no global colour path. With an RGB input (``upscale=1``) the input is added
to the output (a residual), the usual plain-CNN enhancement design. ``width``
defaults to the width whose parameter count is closest to ckisp's default.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from learn.models import count_parameters, register
from learn.models.blocks import EncoderDecoder, crop_to, pad_to_multiple, to_image


def _param_count(in_channels: int, upscale: int, width: int) -> int:
    return count_parameters(EncoderDecoder(in_channels, 3 * upscale * upscale, width))


@register("plain")
class PlainCNN(nn.Module):
    """Plain CNN: ``(N, in_channels, H, W) -> (N, 3, upscale*H, upscale*W)`` in [0, 1].

    Args:
        width: encoder-decoder width; ``None`` matches ckisp's parameter count
            for the same ``in_channels`` / ``upscale``.
    """

    def __init__(self, in_channels: int = 4, upscale: int = 2, width: int | None = None) -> None:
        super().__init__()
        if width is None:
            from learn.models.ckisp import CKISP

            target = count_parameters(CKISP(in_channels=in_channels, upscale=upscale))
            width = min(range(8, 65), key=lambda w: abs(_param_count(in_channels, upscale, w) - target))
        self.upscale = upscale
        self.residual = in_channels == 3 and upscale == 1
        self.net = EncoderDecoder(in_channels, 3 * upscale * upscale, width)
        self.size_multiple = EncoderDecoder.stride
        self.receptive_radius = EncoderDecoder.receptive_radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, size = pad_to_multiple(x, self.size_multiple)
        y = self.net(xp)
        if self.residual:
            y = y + xp
        return crop_to(to_image(y, self.upscale), size, self.upscale)
