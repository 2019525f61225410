"""Shared fixtures: the real public data beside the checkout (../shared/data), and a
tiny file system that fills up (a real full disk for the writers' tests)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("ISP_RIG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real public test files; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set ISP_RIG_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def tiny_disk(tmp_path):
    """A function ``mount(size) -> folder``: a fresh tmpfs of ``size`` (e.g. "64k"), so a
    write past it fails with ENOSPC as on a full disk.  Needs root; the test is skipped
    otherwise.  Unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                               capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)
