"""The scripts in examples/ run as a user would run them and say what they did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_align_two_files_keeps_a_simulated_pair():
    out = _run(EXAMPLES / "align_two_files.py")
    assert out.startswith("kept: residual") and "DSLR px" in out


def test_dataset_train_and_render_examples_chain(tmp_path):
    out = _run(EXAMPLES / "dataset_from_two_folders.py", tmp_path / "a")
    assert out.startswith("2 kept") and (tmp_path / "a" / "dataset" / "pairs.jsonl").is_file()
    out = _run(EXAMPLES / "train_and_render.py", tmp_path / "a" / "dataset", tmp_path / "b", "4")
    assert "trained 4 steps" in out and (tmp_path / "b" / "render.png").stat().st_size > 0


def test_add_phone_profile_writes_a_readable_profile(tmp_path):
    out = _run(EXAMPLES / "add_phone_profile.py", tmp_path)
    assert "profile: 320x240" in out and (tmp_path / "myphone.toml").is_file()


def test_every_example_is_run_by_a_test():
    tested = Path(__file__).read_text()
    assert all(p.name in tested for p in EXAMPLES.glob("*.py"))
