"""ckisp: the conditional-kernel ISP (after Xing et al., SIGGRAPH 2022).

For an input X with c channels per position (packed raw: c = 4 at half
resolution), the output at every position i is

    Y_i = sum_{j in window(i)} W_i[i - j] X_j + b_i            (the kernel formula)

with the kernel W_i (c_out x c x k x k) and bias b_i predicted from the image
content. For packed raw c_out = 3 * 2 * 2: each packed position predicts the
three colours of its four full-resolution pixels, then a pixel shuffle gives
the (N, 3, 2H, 2W) image.

Factorisation (how W_i is predicted): a *per-pixel mix of a learned kernel
basis*,

    W_i = sum_{m=1..M} a_m(i) B_m,      b_i = sum_m a_m(i) beta_m,

where B_m / beta_m are M learned kernels with biases and the mixing weights
a(i) in R^M come from a light encoder-decoder (:class:`EncoderDecoder`) that
sees the whole neighbourhood (receptive field about 40 px). Implemented
exactly as sum_m a_m(i) (B_m * X)_i: one convolution with the M basis
kernels, then a per-pixel weighted sum, which equals the formula with
replicate padding at the image border (tested against the explicit sum).

Beside the per-pixel kernels runs a *global colour path*: a second-order
polynomial colour map of each position's channels (1, x, x_a x_b) whose
3 x T coefficient matrix is a learned base plus a correction predicted per
image from the image's statistics (means of the polynomial terms, and the
median, 90th, 99th and 99.5th percentile of its values, read off a cumulative
histogram), like an automatic white balance / tone choice: a camera's auto
exposure is set on the highlights, which the means hardly see. The output is

    image = clamp(pixel_shuffle(Y_kernel + repeat(colour(X))), 0, 1).

The statistics are means (the histogram is a mean of indicators), so a tiled
renderer computes them exactly for the whole image (:func:`learn.infer.render`). Default sizes: about 0.11 M
parameters (raw) / 0.10 M (RGB).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from learn.models import register
from learn.models.blocks import (
    EncoderDecoder,
    cumulative_histogram,
    crop_to,
    image_statistics,
    n_poly_terms,
    pad_to_multiple,
    poly_terms,
    quad_index,
    quantiles_from_histogram,
    to_image,
)

#: where the cumulative histogram of the input is taken: sRGB-encoded values run a little past 1
#: where the white balance lifts a highlight, and below 0 in noise; a quantile that falls past the
#: last threshold (a white-balanced highlight of the linear spaces can reach 2.4) reads as 1.55
HISTOGRAM_THRESHOLDS = torch.linspace(-0.05, 1.55, 129)

#: the quantiles of the input the colour path's correction reads beside the means: the median
#: and the highlights an auto exposure is set for (the raw benchmark of docs/learning.md)
DEFAULT_QUANTILES = (0.5, 0.9, 0.99, 0.995)


class ColourPath(nn.Module):
    """Per-image second-order colour map: ``(N, C, H, W) -> (N, 3, H, W)``.

    Coefficients = base (3 x T) + MLP(image statistics and ``quantiles`` of the values), the MLP's last layer
    starting at zero so training begins from the base map; ``hidden=0`` keeps the
    base alone (one global map for every image, as a fitted colour map).
    """

    def __init__(self, in_channels: int, hidden: int = 64, quantiles: tuple[float, ...] = ()) -> None:
        super().__init__()
        t = n_poly_terms(in_channels)
        quantiles = quantiles if hidden > 0 else ()  # one global map reads no statistics
        self.in_channels, self.terms = in_channels, t
        self.register_buffer("pairs", quad_index(in_channels), persistent=False)
        self.register_buffer("levels", torch.tensor(quantiles, dtype=torch.float32), persistent=False)
        self.register_buffer("thresholds", HISTOGRAM_THRESHOLDS.clone(), persistent=False)
        base = torch.zeros(3, t)
        if in_channels == 3:
            base[:, 1:4] = torch.eye(3)  # identity on RGB
        else:  # packed raw R, G1, G2, B: a rough linear start, learning shapes the rest
            base[0, 1], base[1, 2], base[1, 3], base[2, 4] = 1.0, 0.5, 0.5, 1.0
        self.base = nn.Parameter(base)
        self.mlp = None
        if hidden > 0:
            self.mlp = nn.Sequential(nn.Linear(t - 1 + len(quantiles), hidden), nn.LeakyReLU(0.2),
                                     nn.Linear(hidden, 3 * t))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def statistics(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, S)``: means of the polynomial terms, then (with quantiles) the
        cumulative histogram at :data:`HISTOGRAM_THRESHOLDS`; every entry additive over tiles."""
        means = image_statistics(x, self.pairs)
        if not self.levels.numel():
            return means
        return torch.cat([means, cumulative_histogram(x, self.thresholds)], 1)

    def coefficients(self, stats: torch.Tensor) -> torch.Tensor:
        """``(N, S)`` image statistics -> ``(N, 3, T)`` colour-map coefficients."""
        if self.mlp is None:
            return self.base.expand(stats.shape[0], -1, -1)
        features = stats[:, : self.terms - 1]
        if self.levels.numel():
            q = quantiles_from_histogram(stats[:, self.terms - 1:], self.thresholds, self.levels)
            features = torch.cat([features, q], 1)
        return self.base + self.mlp(features).view(-1, 3, self.terms)

    def forward(self, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        coef = self.coefficients(stats)
        return torch.einsum("not,nthw->nohw", coef, poly_terms(x, self.pairs))


@register("ckisp")
class CKISP(nn.Module):
    """The conditional-kernel ISP: ``(N, in_channels, H, W) -> (N, 3, upscale*H, upscale*W)`` in [0, 1].

    Args:
        in_channels: 4 for packed raw (R, G1, G2, B), 3 for an RGB input.
        upscale: 2 for packed raw (full-resolution output), 1 for RGB.
        kernel_size: k of the predicted k x k kernels (in input positions);
            default 3 for packed raw (a 6 x 6 raw footprint), 5 for RGB.
        n_basis: M, the number of basis kernels mixed per position.
        width: encoder-decoder width (channels at 1/2 resolution).
        colour_path: keep the global colour path beside the kernels.
        colour_hidden: width of the colour path's per-image correction (0: one global map).
        colour_quantiles: the quantiles of the input's values (all planes pooled) the correction
            reads beside the means; () for the means alone (checkpoints from before the
            quantiles load that way).
    """

    def __init__(
        self,
        in_channels: int = 4,
        upscale: int = 2,
        kernel_size: int | None = None,
        n_basis: int = 8,
        width: int = 16,
        colour_path: bool = True,
        colour_hidden: int = 64,
        colour_quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
    ) -> None:
        super().__init__()
        k = kernel_size if kernel_size is not None else (3 if upscale > 1 else 5)
        if k % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {k}")
        self.in_channels, self.upscale, self.kernel_size, self.n_basis = in_channels, upscale, k, n_basis
        self.cout = 3 * upscale * upscale
        self.basis = nn.Conv2d(in_channels, n_basis * self.cout, k)  # applied after replicate padding
        nn.init.normal_(self.basis.weight, std=0.01)
        nn.init.zeros_(self.basis.bias)
        self.mixer = EncoderDecoder(in_channels, n_basis, width)
        self.colour = ColourPath(in_channels, colour_hidden, tuple(colour_quantiles)) if colour_path else None
        self.size_multiple = EncoderDecoder.stride
        self.receptive_radius = EncoderDecoder.receptive_radius + k // 2

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A checkpoint trained before the histogram quantiles (its colour MLP reads the means
        # alone) is loaded into a colour path without them, so it renders as it was trained.
        first = state_dict.get(prefix + "colour.mlp.0.weight")
        path = self.colour
        if first is not None and path is not None and path.mlp is not None and path.levels.numel() \
                and first.shape[1] == path.terms - 1:
            self.colour = ColourPath(path.in_channels, path.mlp[0].out_features, ()).to(first.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- the pieces of the formula, exposed for tests and analysis ---------------------------

    def statistics(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image statistics ``(N, S)`` the colour path is conditioned on (additive over tiles)."""
        return image_statistics(x) if self.colour is None else self.colour.statistics(x)

    def mixing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """a(i): ``(N, C, H, W) -> (N, M, H, W)``, H and W multiples of 8."""
        return self.mixer(x)

    def kernels(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position kernels from mixing weights ``a`` (N, M, H, W).

        Returns ``W`` (N, H, W, c_out, c_in, k, k) with ``W[n, y, x, o, c, dy, dx]``
        multiplying ``X[n, c, y + dy - k//2, x + dx - k//2]``, and the bias ``b`` (N, c_out, H, W).
        """
        m, co = self.n_basis, self.cout
        basis = self.basis.weight.view(m, co, self.in_channels, self.kernel_size, self.kernel_size)
        w = torch.einsum("nmyx,mocij->nyxocij", a, basis)
        b = torch.einsum("nmyx,mo->noyx", a, self.basis.bias.view(m, co))
        return w, b

    def apply_kernels(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Y_i = sum_j W_i[i-j] X_j + b_i with W_i = sum_m a_m(i) B_m: ``(N, c_out, H, W)``.

        Computed as sum_m a_m(i) (B_m * X)_i, with X replicate-padded at the border.
        """
        p = self.kernel_size // 2
        xp = F.pad(x, (p, p, p, p), mode="replicate") if p else x
        responses = self.basis(xp)  # (N, M*c_out, H, W)
        n, _, h, w = responses.shape
        responses = responses.view(n, self.n_basis, self.cout, h, w)
        return torch.einsum("nmohw,nmhw->nohw", responses, a)

    def forward(self, x: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C, H, W) -> (N, 3, upscale*H, upscale*W)``; ``stats`` overrides the per-image statistics."""
        xp, size = pad_to_multiple(x, self.size_multiple)
        y = self.apply_kernels(xp, self.mixing_weights(xp))
        if self.colour is not None:
            s = self.statistics(x) if stats is None else stats
            c = self.colour(xp, s)
            y = y + c.repeat_interleave(self.upscale * self.upscale, dim=1)
        return crop_to(to_image(y, self.upscale), size, self.upscale)
