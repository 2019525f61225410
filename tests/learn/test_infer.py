"""Tiled rendering equals a whole-image pass (no seams); exported models give the same output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import learn.models as lm
from learn.infer import check_export, export_onnx, export_program, render, render_tensor


def _perturbed(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = lm.create(name, **kwargs).eval()
    with torch.no_grad():  # move off the initialisation so every path (kernels, colour) contributes
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("name", ["ckisp", "plain", "pac"])
@pytest.mark.parametrize("kwargs,cin", [({}, 4), ({"in_channels": 3, "upscale": 1}, 3)])
def test_tiled_render_equals_the_full_render(name, kwargs, cin):
    model = _perturbed(name, **kwargs)
    x = torch.rand(1, cin, 99, 141) * 0.8
    with torch.no_grad():
        full = model(x)
    tiled = render_tensor(model, x, tile=32)
    assert tiled.shape == full.shape
    torch.testing.assert_close(tiled, full, rtol=0, atol=2e-5)


def test_tiled_render_of_the_sid_unet_equals_the_full_render():
    model = _perturbed("unet", in_channels=3, upscale=1, base=4)
    model.receptive_radius = 96
    x = torch.rand(1, 3, 80, 300)
    with torch.no_grad():
        full = model(x)
    torch.testing.assert_close(render_tensor(model, x, tile=64), full, rtol=0, atol=2e-5)


def test_too_small_an_overlap_shows_seams():
    """The overlap is what removes seams: with none, tile borders differ from the full render."""
    model = _perturbed("ckisp")
    x = torch.rand(1, 4, 64, 64)
    with torch.no_grad():
        full = model(x)
    assert float((render_tensor(model, x, tile=32, overlap=0) - full).abs().max()) > 1e-3


def test_render_takes_and_returns_numpy_images():
    model = _perturbed("ckisp")
    out = render(model, np.random.default_rng(0).random((20, 30, 4), dtype=np.float32), tile=16)
    assert out.shape == (40, 60, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("name", lm.available())
def test_torch_export_program_gives_the_same_output_at_any_batch_and_size(name, tmp_path):
    model = _perturbed(name) if name != "unet" else lm.create("unet", base=4).eval()
    path = export_program(model, tmp_path / "m.pt2")
    for shape in ((1, 4, 21, 35), (3, 4, 32, 48), (1, 4, 16, 17)):  # odd, multiples of 16, the smallest
        assert check_export(model, path, torch.rand(*shape)) < 1e-5, shape


@pytest.mark.parametrize("name", lm.available())
def test_onnx_export_gives_the_same_output_at_any_batch_and_size(name, tmp_path):
    import onnx  # noqa: F401  (the test extra installs both: missing is a broken install, not a skip)
    import onnxruntime  # noqa: F401
    model = _perturbed(name) if name != "unet" else lm.create("unet", base=4).eval()
    path = export_onnx(model, tmp_path / "m.onnx", in_channels=4)
    for shape in ((1, 4, 21, 35), (3, 4, 32, 48), (1, 4, 16, 17)):  # odd, multiples of 16, the smallest
        assert check_export(model, path, torch.rand(*shape)) < 1e-5, shape
