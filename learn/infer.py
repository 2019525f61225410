"""Full-resolution rendering, tiled with overlap, and model export.

:func:`render` cuts the input into tiles whose origins are multiples of the
model's ``size_multiple`` and widens each by an overlap of at least the model's
``receptive_radius`` (rounded up to the multiple), runs the model on the
widened tile and keeps only the tile's own pixels. Every kept pixel therefore
sees exactly the input a whole-image pass would give it, so the tiled result
equals the full render (to float rounding) and no seam can appear, while
memory stays bounded by one widened tile. Per-image statistics of models with
a global path (ckisp's colour path) are accumulated over all tiles first;
they are means, so the accumulation is exact.

Export: :func:`export_program` (``torch.export``, a ``.pt2`` file that
:func:`load_program` runs without isp-rig's model code) and :func:`export_onnx`
write models whose output equals the PyTorch model's at any batch and image size
(checked by :func:`check_export`).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


def _overlap(model: torch.nn.Module, overlap: int | None) -> tuple[int, int]:
    m = int(getattr(model, "size_multiple", 1))
    r = int(getattr(model, "receptive_radius", 64)) if overlap is None else int(overlap)
    return m, int(math.ceil(r / m) * m)


def _starts(n: int, tile: int) -> list[int]:
    return list(range(0, n, tile))


@torch.inference_mode()
def image_statistics_tiled(model: torch.nn.Module, x: torch.Tensor, tile: int) -> torch.Tensor | None:
    """Whole-image statistics ``(N, S)`` of ``model.statistics`` accumulated over disjoint tiles, or None."""
    if getattr(model, "colour", None) is None or not hasattr(model, "statistics"):
        return None
    h, w = x.shape[-2:]
    acc = None
    for i in _starts(h, tile):
        for j in _starts(w, tile):
            part = x[..., i: i + tile, j: j + tile]
            s = model.statistics(part).double() * (part.shape[-2] * part.shape[-1])
            acc = s if acc is None else acc + s
    return (acc / (h * w)).float()


@torch.inference_mode()
def render_tensor(model: torch.nn.Module, x: torch.Tensor, tile: int = 512, overlap: int | None = None,
                  progress: bool = False, channels_last: bool = True) -> torch.Tensor:
    """Tiled rendering of ``x`` (N, C, H, W) -> (N, 3, s*H, s*W), s = the model's upscale.

    ``tile`` is rounded up to the model's ``size_multiple``; ``overlap`` defaults
    to the model's ``receptive_radius`` (rounded up to the multiple). ``channels_last``
    converts the model (in place) and each tile to NHWC memory order, which CPU
    convolutions run several times faster; the values are the same.
    """
    model.eval()
    if channels_last:  # oneDNN convolutions run several times faster on NHWC; values are unchanged
        model = model.to(memory_format=torch.channels_last)
    m, ov = _overlap(model, overlap)
    tile = int(math.ceil(tile / m) * m)
    s = int(getattr(model, "upscale", 1))
    n, _, h, w = x.shape
    stats = image_statistics_tiled(model, x, tile)
    out = torch.empty((n, 3, s * h, s * w), dtype=torch.float32)
    cells = [(i, j) for i in _starts(h, tile) for j in _starts(w, tile)]
    for i, j in tqdm(cells, desc="render", unit="tile", disable=not progress):
        i1, j1 = min(h, i + tile), min(w, j + tile)
        a0, b0 = max(0, i - ov), max(0, j - ov)
        a1, b1 = min(h, i1 + ov), min(w, j1 + ov)
        part = x[..., a0:a1, b0:b1]
        if channels_last:
            part = part.contiguous(memory_format=torch.channels_last)
        y = model(part, stats=stats) if stats is not None else model(part)
        out[..., s * i: s * i1, s * j: s * j1] = y[..., s * (i - a0): s * (i1 - a0), s * (j - b0): s * (j1 - b0)].float()
    return out


def render(model: torch.nn.Module, image: np.ndarray, tile: int = 512, overlap: int | None = None,
           threads: int | None = None, progress: bool = False) -> np.ndarray:
    """Render one image: packed raw ``(H/2, W/2, 4)`` (or RGB ``(H, W, 3)``) -> sRGB ``(H, W, 3)`` float32 in [0, 1]."""
    if threads:
        torch.set_num_threads(int(threads))
    arr = np.ascontiguousarray(image, dtype=np.float32)
    if not arr.flags.writeable:  # a memory-mapped packed raw: torch wants writable memory
        arr = arr.copy()
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    y = render_tensor(model, x, tile, overlap, progress)
    return y[0].permute(1, 2, 0).numpy()


class _Exportable(torch.nn.Module):
    """A model wrapper with a single tensor argument (what exporters want)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def exported_program(model: torch.nn.Module, in_channels: int = 4,
                     max_side: int = 16384) -> "torch.export.ExportedProgram":
    """``model`` through ``torch.export`` with dynamic batch (1-64), height and width (16 to
    ``max_side`` input positions): the program both :func:`export_program` and
    :func:`export_onnx` write.

    Shapes are traced symbolically; where the symbolic solver cannot prove that a
    size differs from 1 (the stride-2 levels of the encoder-decoders), the export is
    redone with sizes taken as at least 2 (``backed_size_oblivious``), which every
    input the range admits satisfies.  Raises RuntimeError when neither export works.
    """
    from torch.export import Dim
    from torch.fx.experimental import _config as fx_config

    # a copy made outside inference mode: a model that has rendered may hold inference tensors,
    # which the exporter may not mark for autograd
    wrapped = _Exportable(copy.deepcopy(model).eval())
    x = torch.rand(2, in_channels, 41, 57)  # batch > 1 and sizes no multiple: nothing specialises
    dims = {"x": {0: Dim("batch", min=1, max=64), 2: Dim("height", min=16, max=max_side),
                  3: Dim("width", min=16, max=max_side)}}
    with torch.no_grad():
        try:
            return torch.export.export(wrapped, (x,), dynamic_shapes=dims)
        except Exception:  # noqa: BLE001  a constraint the solver could not prove: try the oblivious sizes
            try:
                with fx_config.patch(backed_size_oblivious=True):
                    return torch.export.export(wrapped, (x,), dynamic_shapes=dims)
            except Exception as err:  # noqa: BLE001
                raise RuntimeError(f"torch.export could not export {type(model).__name__}: {err}") from err


def _as_program(model, in_channels: int) -> "torch.export.ExportedProgram":
    return model if isinstance(model, torch.export.ExportedProgram) else exported_program(model, in_channels)


def export_program(model, path: Path | str, in_channels: int = 4) -> Path:
    """Save :func:`exported_program` of ``model`` (a module, or the program itself when it
    was exported already) to ``path`` (``.pt2``); run it with :func:`load_program`, no
    isp-rig model code needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(_as_program(model, in_channels), str(path))
    return path


def load_program(path: Path | str) -> torch.nn.Module:
    """A module that runs the program :func:`export_program` saved: ``(N, C, H, W) -> (N, 3, sH, sW)``."""
    return torch.export.load(str(path)).module()


def export_onnx(model, path: Path | str, in_channels: int = 4) -> Path:
    """Export ``model`` (a module, or its :func:`exported_program`) to ONNX through the
    ``torch.export``-based exporter (``onnxscript``): dynamic batch, height and width;
    input ``input`` (N, C, H, W), output ``rgb``."""
    import logging
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = _as_program(model, in_channels)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed": not ours
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, dynamo=True, input_names=["input"], output_names=["rgb"],
                                             verbose=False)
    finally:
        quiet.setLevel(level)
    onnx_program.save(str(path))
    return path


def check_export(model: torch.nn.Module, path: Path | str, x: torch.Tensor) -> float:
    """Largest absolute difference between ``model(x)`` and the exported model at ``path`` (.pt2 or .onnx)."""
    path = Path(path)
    with torch.inference_mode():
        ref = model.eval()(x).numpy()
        if path.suffix == ".onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = sess.run(None, {"input": x.numpy()})[0]
        else:
            got = load_program(path)(x).numpy()
    return float(np.abs(got - ref).max())
