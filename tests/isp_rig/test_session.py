"""The session folder: atomic files, append-only manifest, resume, faults, check."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest

from isp_rig.session import (MANIFEST, SESSION_TOML, Session, SessionError, check_session, read_manifest,
                             write_atomic)

RIG = {"name": "test-rig", "device": [{"name": "dslr", "profile": "nikon_z6"},
                                      {"name": "phone", "profile": "iphone_6s", "folder": "/tmp/x"}]}
REPO = Path(__file__).resolve().parents[2]


def _shot(session: Session, payloads: dict[str, tuple[str, bytes]], scene: str = "desk"):
    writer = session.begin_shot(scene, settings={"iso": "100"})
    for device, (name, data) in payloads.items():
        writer.add_file(device, name, data, device_path=f"/card/{name}")
    return writer.commit(fired={d: {"fired_monotonic_ns": 1} for d in payloads}, skew={"trigger_s": 0.001})


def test_new_session_writes_rig_toml_and_files_with_sha256(tmp_path):
    session = Session.open(tmp_path / "s", RIG)
    rec = _shot(session, {"dslr": ("DSC_0001.NEF", b"nef-bytes"), "phone": ("IMG_1.DNG", b"dng")})
    root = tmp_path / "s"
    assert tomllib.loads((root / SESSION_TOML).read_text())["rig"] == RIG
    assert (root / "shots" / "00001" / "dslr" / "DSC_0001.NEF").read_bytes() == b"nef-bytes"
    line = json.loads((root / MANIFEST).read_text().splitlines()[0])
    assert line["shot_id"] == "00001" and line["status"] == "ok" and line["scene"] == "desk"
    files = {f["name"]: f for f in line["files"]}
    assert files["IMG_1.DNG"]["sha256"] == hashlib.sha256(b"dng").hexdigest()
    assert files["IMG_1.DNG"]["size"] == 3 and files["IMG_1.DNG"]["source"] == "/card/IMG_1.DNG"
    assert rec.files[0].path == "shots/00001/dslr/DSC_0001.NEF"
    assert not list(root.rglob(".partial-*"))


def test_manifest_line_appears_only_at_commit(tmp_path):
    session = Session.open(tmp_path, RIG)
    writer = session.begin_shot("desk")
    writer.add_file("dslr", "a.jpg", b"x")
    assert read_manifest(session.manifest_path).records == []
    writer.commit()
    assert [r.shot_id for r in read_manifest(session.manifest_path).records] == ["00001"]


def test_existing_file_is_never_overwritten(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"original")
    with pytest.raises(SessionError, match="refusing to overwrite"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"original"
    session = Session.open(tmp_path / "s", RIG)
    writer = session.begin_shot("desk")
    writer.add_file("dslr", "same.jpg", b"first")
    with pytest.raises(SessionError, match="refusing to overwrite"):
        writer.add_file("dslr", "same.jpg", b"second")
    rec = writer.commit()
    assert rec.status == "failed" and "refusing to overwrite" in rec.reason
    assert (session.shots_dir / "00001" / "dslr" / "same.jpg").read_bytes() == b"first"


@pytest.mark.parametrize("bad", ["", "..", "a/b", ".partial-x"])
def test_bad_file_names_are_refused(tmp_path, bad):
    writer = Session.open(tmp_path, RIG).begin_shot("desk")
    with pytest.raises(SessionError, match="invalid file name"):
        writer.add_file("dslr", bad, b"x")


def test_resume_continues_numbering_and_refuses_other_rig(tmp_path):
    session = Session.open(tmp_path, RIG)
    _shot(session, {"dslr": ("a.jpg", b"1")})
    _shot(session, {"dslr": ("a.jpg", b"2")})
    again = Session.open(tmp_path, RIG)
    assert _shot(again, {"dslr": ("a.jpg", b"3")}).shot_id == "00003"
    assert Session.open(tmp_path).rig == RIG
    with pytest.raises(SessionError, match=r"different rig configuration \(changed: device, name\)"):
        Session.open(tmp_path, {"name": "other"})
    moved = {**RIG, "device": [RIG["device"][0], {**RIG["device"][1], "folder": "/tmp/y"}]}
    with pytest.raises(SessionError, match=r"changed: device\[1\]\.folder\)"):
        Session.open(tmp_path, moved)


def test_an_empty_session_takes_the_corrected_rig_and_one_with_shots_does_not(tmp_path):
    Session.open(tmp_path / "s", RIG)  # a start that then failed to connect: nothing captured
    fixed = {**RIG, "name": "fixed-rig"}
    assert Session.open(tmp_path / "s", fixed).rig == fixed
    assert Session.open(tmp_path / "s").rig == fixed
    _shot(Session.open(tmp_path / "s", fixed), {"dslr": ("a.jpg", b"1")})
    with pytest.raises(SessionError, match="different rig configuration"):
        Session.open(tmp_path / "s", RIG)
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("text, reason", [
    ("[session]\nformat_version = 1\n[rig\n", "unreadable session.toml"),
    ("[session]\nformat_version = 9\n[rig]\ndevice = []\n", "format_version 9"),
    ("[session]\nformat_version = 1\n", "needs a \\[session\\] and a \\[rig\\] table"),
    ("[session]\nformat_version = 1\n[rig]\ndevice = ['dslr']\n", "each with a name"),
])
def test_check_fails_a_session_toml_that_capture_could_not_use(tmp_path, text, reason):
    Session.open(tmp_path, RIG)
    (tmp_path / SESSION_TOML).write_text(text)
    report = check_session(tmp_path)
    assert not report.ok and any(re.search(reason, e) for e in report.errors), report.errors
    with pytest.raises(SessionError, match=reason):
        Session.open(tmp_path, RIG)


def test_non_session_folder_with_files_is_refused(tmp_path):
    (tmp_path / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(SessionError, match="not a session"):
        Session.open(tmp_path, RIG)
    assert (tmp_path / "holiday.jpg").read_bytes() == b"x"


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from isp_rig.session import Session
    s = Session.open(sys.argv[1], {"name": "test-rig"})
    for i in range(2):
        w = s.begin_shot("desk"); w.add_file("dslr", f"DSC_{i}.NEF", b"raw" * 1000); w.commit()
    w = s.begin_shot("desk"); w.add_file("dslr", "DSC_2.NEF", b"raw" * 1000)
    print("READY", flush=True)
    time.sleep(60)
""")


def test_kill_mid_shot_loses_no_completed_shot_and_resume_skips_the_torn_one(tmp_path):
    root = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    session = Session.open(root, {"name": "test-rig"})
    assert [r.shot_id for r in session.records] == ["00001", "00002"]
    assert session.incomplete_shots() == ["00003"]
    report = check_session(root)
    assert report.ok and report.files_ok == 2
    assert report.unlisted == ["shots/00003/dslr/DSC_2.NEF"] and report.incomplete_shots == ["00003"]
    writer = session.begin_shot("desk")
    assert writer.shot_id == "00004"
    assert (root / "shots/00003/dslr/DSC_2.NEF").read_bytes() == b"raw" * 1000


FULL_SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    from isp_rig.session import Session, SessionWriteError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    s = Session.open(sys.argv[1], {"name": "test-rig"})
    limit = int(sys.argv[2])
    if limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    w = s.begin_shot("desk"); w.add_file("dslr", "small.jpg", b"s" * 1000); w.commit()
    w = s.begin_shot("desk"); w.add_file("phone", "ok.dng", b"p" * 1000)
    try:
        w.add_file("dslr", "big.nef", b"b" * 2_000_000)
    except SessionWriteError as err:
        print("ERR", err.errno, err.reason)
    rec = w.commit()
    print("STATUS", rec.status, rec.reason)
""")


@pytest.mark.parametrize("how", ["rlimit_fsize", "tiny_tmpfs"])
def test_full_disk_fails_the_shot_with_reason_and_keeps_earlier_files(tmp_path, tiny_disk, how):
    if how == "tiny_tmpfs":
        mount = tiny_disk("1m")
        limit = 0
    else:
        mount = tmp_path / "disk"
        mount.mkdir()
        limit = 500_000
    root = mount / "s"
    out = subprocess.run([sys.executable, "-c", FULL_SCRIPT, str(root), str(limit)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "STATUS failed" in out.stdout
    assert ("EFBIG" in out.stdout) if how == "rlimit_fsize" else ("disk full" in out.stdout)
    records = read_manifest(root / MANIFEST).records
    assert [r.status for r in records] == ["ok", "failed"]
    assert [f.name for f in records[1].files] == ["ok.dng"]
    assert records[1].missing[0]["name"] == "big.nef"
    report = check_session(root)
    assert report.ok and report.files_ok == 2 and report.unlisted == []


def test_check_reports_missing_corrupt_and_unlisted_files(tmp_path):
    session = Session.open(tmp_path, RIG)
    _shot(session, {"dslr": ("a.jpg", b"aaaa"), "phone": ("p.dng", b"pppp")})
    _shot(session, {"dslr": ("b.jpg", b"bbbb")})
    assert check_session(tmp_path).ok
    (tmp_path / "shots/00001/dslr/a.jpg").write_bytes(b"aaab")  # same size, other bytes
    (tmp_path / "shots/00001/phone/p.dng").unlink()
    (tmp_path / "shots/00002/dslr/stray.txt").write_text("?")
    report = check_session(tmp_path)
    assert not report.ok
    assert report.missing == ["shots/00001/phone/p.dng"]
    assert [c["path"] for c in report.corrupt] == ["shots/00001/dslr/a.jpg"]
    assert report.unlisted == ["shots/00002/dslr/stray.txt"]
    assert report.files_ok == 1


def test_torn_manifest_line_is_reported_and_not_glued_to_the_next(tmp_path):
    session = Session.open(tmp_path, RIG)
    _shot(session, {"dslr": ("a.jpg", b"a")})
    with open(session.manifest_path, "ab") as fh:
        fh.write(b'{"shot_id": "0000')  # a crash in the middle of an append
    again = Session.open(tmp_path, RIG)
    assert _shot(again, {"dslr": ("c.jpg", b"c")}).shot_id == "00002"
    contents = read_manifest(session.manifest_path)
    assert [r.shot_id for r in contents.records] == ["00001", "00002"]
    assert len(contents.bad_lines) == 1
    assert not check_session(tmp_path).ok


def test_write_atomic_streams_from_a_path(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    sha, size = write_atomic(tmp_path / "dst.bin", src)
    assert size == 3 << 20 and sha == hashlib.sha256(src.read_bytes()).hexdigest()


def test_file_system_without_hard_links_still_never_overwrites(tmp_path, monkeypatch):
    """FAT/exFAT cards refuse hard links with EPERM; os.link is made to answer the same way."""
    import errno as _errno

    def no_links(src, dst):
        raise PermissionError(_errno.EPERM, "Operation not permitted", str(dst))

    monkeypatch.setattr(os, "link", no_links)
    session = Session.open(tmp_path / "s", RIG)
    rec = _shot(session, {"dslr": ("DSC_0001.NEF", b"nef")})
    assert rec.status == "ok" and (tmp_path / "s/shots/00001/dslr/DSC_0001.NEF").read_bytes() == b"nef"
    with pytest.raises(SessionError, match="refusing to overwrite"):
        write_atomic(tmp_path / "s/shots/00001/dslr/DSC_0001.NEF", b"other")
    assert (tmp_path / "s/shots/00001/dslr/DSC_0001.NEF").read_bytes() == b"nef"
    assert check_session(tmp_path / "s").ok and not list((tmp_path / "s").rglob(".partial-*"))
