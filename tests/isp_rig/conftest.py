"""Fixtures for the capture tests: libgphoto2's virtual camera, fed per test.

python-gphoto2 loads libgphoto2's port drivers when it is first imported,
and only then sees ``VCAMERADIR``; so this conftest sets it before any test
module can import ``gphoto2``. libgphoto2 re-reads the folder at every camera
init, so each test points ``VCAMERADIR`` at its own folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

if "gphoto2" not in sys.modules:
    _BOOT_DIR = Path(tempfile.mkdtemp(prefix="isp-rig-vcam-"))
    os.environ.setdefault("VCAMERADIR", str(_BOOT_DIR))


def write_scene_jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (120, 160)) -> Path:
    """A small real JPEG (random texture) for the virtual camera to 'capture'."""
    rng = np.random.default_rng(seed)
    image = cv2.resize((rng.random((size[0] // 8, size[1] // 8, 3)) * 255).astype(np.uint8),
                       (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise OSError(f"could not write {path}")
    return path


@pytest.fixture
def vcamera_dir(tmp_path, monkeypatch) -> Path:
    """A folder holding one JPEG, set as VCAMERADIR for cameras opened in this test."""
    folder = tmp_path / "vcamera"
    folder.mkdir()
    write_scene_jpeg(folder / "scene.jpg")
    monkeypatch.setenv("VCAMERADIR", str(folder))
    import gphoto2  # noqa: F401  (after VCAMERADIR is set)
    from isp_rig.devices.gphoto import autodetect

    found = autodetect()
    if not any("D750" in model for model, _port in found):
        pytest.fail(f"libgphoto2's virtual camera was not found ({found}): gphoto2 was imported before "
                    "tests/isp_rig/conftest.py could set VCAMERADIR")
    return folder
