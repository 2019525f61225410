"""The capture command line: capture, session check, calibrate-latency, phone add."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from isp_rig.cli import main
from isp_rig.devices.gphoto import GPhotoCamera, walk_widgets, widget_choices
from isp_rig.devices.virtual import scene_pair
from isp_rig.session import Session, check_session, read_manifest


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _capture_process(session: Path, scene: str, shots: int) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("VCAMERADIR", None)  # the virtual rig sets it itself, before gphoto2 is imported
    return subprocess.Popen([sys.executable, "-m", "isp_rig.cli", "capture", "--rig", "virtual",
                             "--session", str(session), "--scene", scene, "--shots", str(shots)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_thirty_paired_shots_survive_a_kill_and_check_intact(tmp_path):
    """The issue's acceptance run: two scenes, 30 paired shots, a kill in the middle."""
    session = tmp_path / "session"
    proc = _capture_process(session, "kitchen", 15)
    lines = []
    while len(lines) < 6:  # 2 device lines, then shot lines
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        lines.append(line)
    proc.send_signal(signal.SIGKILL)  # mid-capture, possibly mid-shot
    proc.wait(10)
    done = len([r for r in read_manifest(session / "manifest.jsonl").records if r.status == "ok"])
    assert done >= 4
    for scene, shots in (("kitchen", 15 - done), ("garden", 15)):
        proc = _capture_process(session, scene, shots)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    records = read_manifest(session / "manifest.jsonl").records
    assert [r.index for r in records] == sorted(r.index for r in records)  # numbering continued
    assert len({r.shot_id for r in records}) == len(records) == 30
    assert all(r.status == "ok" for r in records)
    assert {r.scene for r in records} == {"kitchen", "garden"}
    assert all(sorted(f.device for f in r.files) == ["dslr", "phone"] for r in records)
    result = subprocess.run([sys.executable, "-m", "isp_rig.cli", "session", "check", str(session), "--json"],
                            capture_output=True, text=True)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"] and report["files_ok"] == 60
    assert report["missing"] == [] and report["corrupt"] == []


def test_session_check_exit_code_follows_file_integrity(tmp_path):
    s = Session.open(tmp_path, {"name": "t"})
    w = s.begin_shot("desk")
    w.add_file("dslr", "a.jpg", b"abc")
    w.commit()
    ok = _run("session", "check", str(tmp_path))
    assert ok.exit_code == 0 and "1 files intact" in ok.output
    (tmp_path / "shots/00001/dslr/a.jpg").write_bytes(b"abd")
    bad = _run("session", "check", str(tmp_path), "--json")
    assert bad.exit_code == 1
    assert json.loads(bad.output)["corrupt"][0]["path"] == "shots/00001/dslr/a.jpg"
    assert "CORRUPT   shots/00001/dslr/a.jpg" in _run("session", "check", str(tmp_path)).output


def _rig_file(tmp_path: Path, settings: dict[str, str]) -> Path:
    phone_dir = tmp_path / "phone"
    src = tmp_path / "IMG_0001.DNG"
    from isp_rig import simulate

    raw = scene_pair("cli").phone
    simulate.write_dng(src, dataclasses.replace(raw, exif=dataclasses.replace(
        raw.exif, capture_time=_dt.datetime.now())))
    phone_dir.mkdir()
    trigger = [sys.executable, "-c",
               "import shutil,sys,time,os; d=sys.argv[2]; n=len(os.listdir(d))+1; "
               "shutil.copy(sys.argv[1], os.path.join(d, f'IMG_{n:04d}.DNG'))", str(src), str(phone_dir)]
    lines = ["[rig]", 'name = "bench"', "collect_timeout_s = 3.0", "",
             "[[device]]", 'name = "dslr"', 'profile = "nikon_z6"', 'model = "D750"', "event_timeout_s = 3.0",
             "[device.settings]"] + [f'{json.dumps(k)} = {json.dumps(v)}' for k, v in settings.items()] + [
             "", "[[device]]", 'name = "phone"', 'profile = "iphone_6s"', f"folder = {json.dumps(str(phone_dir))}",
             "stable_s = 0.05", "tolerance_s = 30.0", f"trigger = {json.dumps(trigger)}"]
    path = tmp_path / "rig.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_capture_with_a_rig_file_applies_profile_settings(tmp_path, vcamera_dir):
    with GPhotoCamera("probe", model="D750") as cam:
        choices = widget_choices(walk_widgets(cam.camera.get_config())["f-number"])
    rig = _rig_file(tmp_path, {"aperture": choices[-1]})  # 'aperture' -> 'f-number' via the nikon_z6 profile
    result = _run("capture", "--rig", str(rig), "--session", str(tmp_path / "s"), "--scene", "desk",
                  "--shots", "2")
    assert result.exit_code == 0, result.output
    assert result.output.count(" | OK | ") == 2
    stored = tomllib.loads((tmp_path / "s" / "session.toml").read_text())["rig"]
    assert stored["device"][0]["settings"] == {"aperture": choices[-1]}
    record = read_manifest(tmp_path / "s" / "manifest.jsonl").records[0]
    assert record.settings["devices"]["dslr"] == {"f-number": choices[-1]}
    assert check_session(tmp_path / "s").ok


def test_capture_refuses_a_setting_the_camera_does_not_offer(tmp_path, vcamera_dir):
    rig = _rig_file(tmp_path, {"aperture": "f/99"})
    result = CliRunner().invoke(main, ["capture", "--rig", str(rig), "--session", str(tmp_path / "s"),
                                       "--scene", "desk"])
    assert result.exit_code == 1
    assert "f-number='f/99' is not offered; valid choices: f/2.8" in result.output


def test_calibrate_latency_on_the_virtual_rig(tmp_path, monkeypatch, vcamera_dir):
    monkeypatch.setenv("VCAMERADIR", str(vcamera_dir))
    result = _run("calibrate-latency", "--rig", "virtual", "--shots", "3")
    assert result.exit_code == 0, result.output
    assert "phone: latency" in result.output and "trigger -> capture time" in result.output
    assert "dslr: latency" in result.output and "trigger call duration" in result.output


def test_calibrate_latency_writes_the_rig_file_keeping_comments_and_the_old_one(tmp_path, vcamera_dir):
    rig = _rig_file(tmp_path, {})
    rig.write_text("# bench rig, left of the window\n" + rig.read_text().replace(
        'name = "phone"', 'name = "phone"  # the test phone'))
    before = rig.read_text()
    result = _run("calibrate-latency", "--rig", str(rig), "--shots", "2")
    assert result.exit_code == 0, result.output
    text = rig.read_text()
    devices = tomllib.loads(text)["device"]
    assert all("latency_s" in d for d in devices)
    assert text.startswith("# bench rig, left of the window\n") and 'name = "phone"  # the test phone' in text
    backups = list(tmp_path.glob("rig.toml.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == before


def test_phone_add_writes_a_profile_from_a_real_dng(tmp_path):
    from isp_rig import simulate

    raw = scene_pair("phone-add").phone
    shot = tmp_path / "IMG_0001.DNG"
    simulate.write_dng(shot, raw)
    result = _run("phone", "add", "simphone", "--from-shot", str(shot), "--out", str(tmp_path / "profiles"))
    assert result.exit_code == 0, result.output
    profile = tomllib.loads((tmp_path / "profiles" / "simphone.toml").read_text())
    assert profile["raw"]["cfa"] == raw.cfa
    assert (profile["raw"]["width"], profile["raw"]["height"]) == (raw.mosaic.shape[1], raw.mosaic.shape[0])
    assert profile["raw"]["white_level"] == pytest.approx(raw.white_level)
    assert profile["profile"]["model"] == raw.exif.model
    again = CliRunner().invoke(main, ["phone", "add", "simphone", "--from-shot", str(shot),
                                      "--out", str(tmp_path / "profiles")])
    assert again.exit_code == 1 and "refusing to overwrite" in again.output


def test_virtual_session_is_read_by_the_alignment_stage(tmp_path, monkeypatch, vcamera_dir):
    """The session folder contract: alignment's batch source finds every paired shot."""
    from alignment.batch import pairs_from_session

    monkeypatch.setenv("VCAMERADIR", str(vcamera_dir))
    result = _run("capture", "--rig", "virtual", "--session", str(tmp_path / "s"), "--scene", "desk",
                  "--shots", "2")
    assert result.exit_code == 0, result.output
    jobs = pairs_from_session(tmp_path / "s")
    assert [j.pair_id for j in jobs] == ["00001-phone", "00002-phone"]
    assert all(j.phone.suffix == ".DNG" and j.dslr.suffix == ".JPG" for j in jobs)


@pytest.mark.parametrize("name", ["../../x", "a/b", "", ".hidden", "name with space"])
def test_phone_add_refuses_a_name_that_is_not_a_plain_file_name(tmp_path, name):
    from isp_rig import simulate

    shot = tmp_path / "IMG_0001.DNG"
    simulate.write_dng(shot, scene_pair("phone-add").phone)
    out = tmp_path / "a" / "b" / "profiles"
    result = _run("phone", "add", name, "--from-shot", str(shot), "--out", str(out))
    assert result.exit_code == 2 and "plain file name" in result.output
    assert not (tmp_path / "a").exists() and not list(tmp_path.rglob("*.toml"))
