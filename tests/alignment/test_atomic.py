"""The one writer of the stages: whole files or none, and a full disk named in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alignment import atomic


def _hidden(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("write, read", [
    (lambda p: atomic.write_text(p / "a.txt", "héllo"), lambda p: (p / "a.txt").read_text("utf-8") == "héllo"),
    (lambda p: atomic.write_json(p / "a.json", {"x": [1, None]}), lambda p: json.loads((p / "a.json").read_text())
     == {"x": [1, None]}),
    (lambda p: atomic.write_npy(p / "a.npy", np.arange(6.0).reshape(2, 3)),
     lambda p: np.array_equal(np.load(p / "a.npy"), np.arange(6.0).reshape(2, 3))),
    (lambda p: atomic.write_image(p / "a.png", np.full((4, 5, 3), 7, np.uint16)),
     lambda p: (p / "a.png").read_bytes()[:4] == b"\x89PNG"),
])
def test_each_writer_leaves_the_whole_file_and_no_temporary(tmp_path, write, read):
    write(tmp_path / "sub")
    assert read(tmp_path / "sub") and _hidden(tmp_path / "sub") == []


def test_a_writer_that_fails_midway_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.csv"
    atomic.write_text(target, "old")

    def half(fh):
        fh.write(b"new, half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic.write_bytes(target, half)
    assert target.read_text() == "old" and _hidden(tmp_path) == []


def test_json_refuses_nan_and_an_image_the_encoder_cannot_write_is_named(tmp_path):
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "a.json", {"x": float("nan")})
    with pytest.raises(atomic.WriteError, match="b.xyz: cannot encode"):
        atomic.write_image(tmp_path / "b.xyz", np.zeros((4, 4, 3), np.uint8))  # no encoder for it
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_named_and_leaves_the_old_file(tiny_disk):
    disk = tiny_disk("64k")
    atomic.write_text(disk / "summary.json", "{}")
    with pytest.raises(atomic.WriteError, match=r"summary.json: disk full"):
        atomic.write_bytes(disk / "summary.json", b"x" * (1 << 20))
    assert (disk / "summary.json").read_text() == "{}" and _hidden(disk) == []


def test_dataset_export_onto_a_full_disk_is_one_line_and_leaves_no_csv(tiny_disk, tmp_path):
    from click.testing import CliRunner

    from alignment.dataset import DatasetMeta, DatasetWriter, write_pair_files
    from isp_rig.cli import main

    rng = np.random.default_rng(0)
    files = write_pair_files(tmp_path / "ds", "p1", rng.random((128, 128, 4)).astype(np.float32),
                             rng.random((256, 256, 3)).astype(np.float32), np.ones((256, 256), bool))
    with DatasetWriter(tmp_path / "ds", DatasetMeta()) as writer:
        writer.append({"id": "p1", "scene": "s", "split": "train", "status": "ok", "files": files})
    out = tiny_disk("96k") / "patches"
    res = CliRunner().invoke(main, ["dataset", "export", str(tmp_path / "ds"), "--out", str(out), "--size", "32"])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "disk full" in lines[0] and "Traceback" not in res.output
    assert not (out / "patches.csv").exists()
    assert json.loads((out / "export.json").read_text())["complete"] is False


def test_a_write_error_is_an_os_error_naming_the_path(tmp_path, monkeypatch):
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # a full disk where no tmpfs can be mounted
    with pytest.raises(OSError) as info:
        atomic.write_text(tmp_path / "a.txt", "x")
    assert isinstance(info.value, atomic.WriteError) and info.value.errno == errno.ENOSPC
    assert str(info.value) == f"{tmp_path / 'a.txt'}: disk full" and info.value.filename == str(tmp_path / "a.txt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, temporary", [(".dataset.json.1234.tmp", True), (".summary.json.7.tmp", True),
                                             ("notes.tmp", False), (".hidden", False), ("dataset.json", False)])
def test_temporary_names_are_told_apart_from_a_users_files(name, temporary):
    assert atomic.is_temporary(name) is temporary
