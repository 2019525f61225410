"""Image-quality metrics: PSNR, SSIM, and LPIPS (AlexNet) only with user-given weights.

All functions take display-referred sRGB tensors ``(N, 3, H, W)`` in ``[0, 1]``
and return one value per image ``(N,)``. An optional ``mask`` ``(N, 1, H, W)``
(1 = valid) restricts PSNR to valid pixels and SSIM to windows centred on
valid pixels.

LPIPS needs AlexNet and LPIPS linear-layer weights that this toolkit does not
ship or download: :func:`load_lpips` returns ``None`` without a path, and every
report then says LPIPS is unavailable (``None`` / ``null``); no other metric is
ever substituted for it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from learn.data import DataError


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image: 10 log10(range^2 / MSE) over all channels (and valid pixels)."""
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        mse = err.mean(dim=(1, 2, 3))
    else:
        m = mask.float().expand_as(err)
        mse = (err * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian ``(size,)``."""
    r = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, window: int = 11,
             sigma: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-structure maps ``(N, C, H-window+1, W-window+1)`` (Wang et al. 2004, K1=0.01, K2=0.03).

    'Valid' windows only (no padding), Gaussian-weighted as in the reference code.
    """
    g = gaussian_window(window, sigma, pred.device)
    x, y = pred.float(), target.float()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mx * mx
    syy = _blur(y * y, g) - my * my
    sxy = _blur(x * y, g) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return lum * cs, cs


def _masked_mean(m: torch.Tensor, mask: torch.Tensor | None, window: int) -> torch.Tensor:
    if mask is None:
        return m.mean(dim=(1, 2, 3))
    r = window // 2
    valid = mask.float()[..., r: r + m.shape[-2], r: r + m.shape[-1]].expand_as(m)
    return (m * valid).sum(dim=(1, 2, 3)) / valid.sum(dim=(1, 2, 3)).clamp_min(1)


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0,
         window: int = 11) -> torch.Tensor:
    """Mean SSIM per image over channels (Gaussian 11x11, sigma 1.5); images smaller than the window use a smaller one."""
    window = min(window, pred.shape[-1], pred.shape[-2])
    window -= 1 - window % 2
    s, _ = ssim_map(pred, target, data_range, window)
    return _masked_mean(s, mask, window)


class LPIPS(nn.Module):
    """LPIPS with the AlexNet trunk (Zhang et al. 2018), built from user-given weight files.

    Args:
        weights: a torch file holding the AlexNet convolution weights under
            ``features.{0,3,6,8,10}.{weight,bias}`` (torchvision's ``alexnet`` layout)
            and the LPIPS linear layers under ``lin{0..4}.model.1.weight`` (the
            ``lpips`` package's ``alex.pth`` layout); both may sit in one file.
        lin_weights: optional second file for the linear layers.
    """

    _CONV = [(3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]
    _IDX = [0, 3, 6, 8, 10]

    def __init__(self, weights: str | Path, lin_weights: str | Path | None = None) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in self._CONV])
        self.lins = nn.ModuleList([nn.Conv2d(c[1], 1, 1, bias=False) for c in self._CONV])
        state = _load_weights(weights)
        if lin_weights is not None:
            state.update(_load_weights(lin_weights))
        try:
            for conv, idx in zip(self.convs, self._IDX):
                conv.weight.data.copy_(state[f"features.{idx}.weight"])
                conv.bias.data.copy_(state[f"features.{idx}.bias"])
            for i, lin in enumerate(self.lins):
                lin.weight.data.copy_(state[f"lin{i}.model.1.weight"])
        except KeyError as err:
            raise DataError(weights, f"LPIPS weights lack {err.args[0]!r}") from None
        except RuntimeError as err:  # a tensor of another shape
            raise DataError(weights, f"not AlexNet / LPIPS weights ({err})") from None
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.eval()

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((2 * x - 1) - self.shift) / self.scale
        out = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(conv(h))
            out.append(h)
        return out

    @torch.no_grad()
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per image ``(N,)`` (lower is better)."""
        total = 0
        for fa, fb, lin in zip(self._features(pred.float()), self._features(target.float()), self.lins):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((na - nb) ** 2).mean(dim=(1, 2, 3))
        return total


def _load_weights(path: str | Path) -> dict:
    """A torch state dict from ``path``; :class:`learn.data.DataError` for anything else."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip, EOF or runtime errors of a foreign or cut file
        raise DataError(path, f"not a torch weights file ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise DataError(path, f"not a state dict of weights (a {type(state).__name__})")
    return dict(state)


def load_lpips(weights: str | Path | None, lin_weights: str | Path | None = None) -> LPIPS | None:
    """LPIPS from user-given weights, or ``None`` (LPIPS unavailable) when no path is given."""
    if weights is None:
        return None
    path = Path(weights)
    if not path.is_file():
        raise DataError(path, "LPIPS weights file not found")
    return LPIPS(path, lin_weights)
