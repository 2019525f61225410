"""Fixtures for the learning stage: a tiny dataset folder written in the documented layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from learn.data import write_pair


def _smooth(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    coarse = rng.random((h // 4 + 2, w // 4 + 2, c)).astype(np.float32)
    up = np.kron(coarse, np.ones((4, 4, 1), np.float32))[:h, :w]
    return np.clip(0.7 * up + 0.3 * rng.random((h, w, c), dtype=np.float32), 0, 1)


def make_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A packed raw (h, w, 4) and a learnable target (2h, 2w, 3): a gamma-encoded colour mix of the planes."""
    raw = _smooth(rng, h, w, 4) * 0.8
    r, g, b = raw[..., 0], 0.5 * (raw[..., 1] + raw[..., 2]), raw[..., 3]
    rgb = np.stack([0.9 * r + 0.1 * g, g, 0.2 * g + 0.8 * b], -1) ** (1 / 2.2)
    return raw.astype(np.float32), np.kron(rgb, np.ones((2, 2, 1), np.float32)).clip(0, 1)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """4 train + 2 test pairs of 24x32 packed positions (targets 48x64), masks with an invalid band,
    phone JPEGs for the test pairs, and one record with status 'failed' that readers must skip."""
    root = tmp_path_factory.mktemp("dataset")
    rng = np.random.default_rng(7)
    for k in range(6):
        raw, target = make_pair(rng, 24, 32)
        mask = np.ones(target.shape[:2], bool)
        mask[:, :6] = False
        split = "train" if k < 4 else "test"
        jpeg = np.clip(target * 0.8 + 0.05, 0, 1) if split == "test" else None
        write_pair(root, f"p{k}", raw, target, mask, split=split, phone_jpeg=jpeg, phone_model="testphone")
    with open(root / "pairs.jsonl", "a") as f:
        f.write('{"id": "bad", "split": "train", "status": "failed", "reason": "alignment not ok"}\n')
    return root
