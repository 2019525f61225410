"""The ADB adapter against the real adb server (adbutils' binary, own port) and
the device-side emulator in tests/isp_rig/adb_emulator.py."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from isp_rig.devices.adb import AdbPhone
from isp_rig.devices.base import CaptureTimeout, DeviceConfigError, DeviceError, DeviceNotFound
from isp_rig.rig import Rig
from isp_rig.session import Session, check_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adb_emulator import AdbDeviceEmulator  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def adb_server():
    """A real adb server on its own port, killed after the module."""
    from adbutils._utils import adb_path

    adb = adb_path()
    port = _free_port()
    env = dict(os.environ, ANDROID_ADB_SERVER_PORT=str(port))
    started = subprocess.run([adb, "-P", str(port), "start-server"], env=env, capture_output=True, text=True,
                             timeout=60)
    if started.returncode != 0:  # adbutils ships the binary: a server that cannot start is a broken install
        pytest.fail(f"the adb binary shipped with adbutils cannot start here: {started.stderr.strip()}")
    yield port
    subprocess.run([adb, "-P", str(port), "kill-server"], env=env, capture_output=True, timeout=30)


@pytest.fixture
def phone(tmp_path, adb_server):
    """Factory: start an emulated phone and return (emulator, adapter)."""
    started = []

    def make(**kw):
        adapter_kw = {k: kw.pop(k) for k in ("delete_after_copy", "trigger", "stable_s") if k in kw}
        emulator = AdbDeviceEmulator(tmp_path / "sdcard", **kw)
        port = emulator.start()
        started.append((emulator, port))
        adapter_kw.setdefault("stable_s", 0.05)
        device = AdbPhone("phone", address=f"127.0.0.1:{port}", adb_port=adb_server, poll_s=0.02, **adapter_kw)
        return emulator, device

    yield make
    import adbutils

    client = adbutils.AdbClient(port=adb_server)
    for emulator, port in started:
        emulator.stop()
        try:
            client.disconnect(f"127.0.0.1:{port}")
        except adbutils.AdbError:
            pass


def test_connect_reads_model_serial_and_phone_clock(phone):
    _emulator, device = phone(model="MI 3", serial="ABC123", clock_offset_s=12.5)
    with device:
        info = device.describe()
    assert info.model == "MI 3" and info.serial == "ABC123" and info.adapter == "adb"
    assert info.extra["manufacturer"] == "Xiaomi"
    assert abs(info.clock_offset_s - 12.5) < info.extra["clock_round_trip_s"] + 0.01


def test_shot_pulls_raw_and_jpeg_verified_against_the_phone(phone, tmp_path):
    emulator, device = phone(latency_s=0.05)
    with device:
        device.arm()
        fired = device.fire()
        files = device.collect(5.0)
    assert [Path(f.name).suffix for f in files] == [".dng", ".jpg"]
    on_phone = tmp_path / "sdcard" / "DCIM" / "Camera" / files[0].name
    assert files[0].data == on_phone.read_bytes()
    assert files[0].device_path == f"/sdcard/DCIM/Camera/{files[0].name}"
    assert files[0].capture_time_source == "exif"
    assert "input keyevent 27" in emulator.commands and fired.notes == ["adb: input keyevent 27"]
    assert any(c.startswith("sha256sum /sdcard/DCIM/Camera/") for c in emulator.commands)
    assert not emulator.errors


def test_a_bad_pull_is_retried_and_a_persistent_one_fails(phone):
    emulator, device = phone(corrupt_reads=1, jpeg=False)
    with device:
        device.arm()
        device.fire()
        files = device.collect(5.0)  # first pull corrupted, second verified
        assert hashlib.sha256(files[0].data).hexdigest() == device.phone_sha256(files[0].device_path)
        emulator.corrupt_reads = 2
        device.arm()
        device.fire()
        with pytest.raises(DeviceError, match="no verified copy after 2 pulls"):
            device.collect(5.0)


def test_phone_that_never_writes_times_out(phone):
    _emulator, device = phone(deliver=False)
    with device:
        device.arm()
        device.fire()
        with pytest.raises(CaptureTimeout, match="no new raw file"):
            device.collect(0.5)


@pytest.mark.parametrize("delete", [False, True])
def test_phone_copy_is_deleted_only_when_asked_and_after_the_shot_is_stored(phone, tmp_path, delete):
    _emulator, device = phone(delete_after_copy=delete)
    session = Session.open(tmp_path / "s", {"name": "adb"})
    with Rig([device], collect_timeout_s=5.0) as rig:
        record, _ = rig.shoot(session, "desk")
    assert record.status == "ok" and len(record.files) == 2
    left = sorted(p.name for p in (tmp_path / "sdcard" / "DCIM" / "Camera").iterdir())
    assert left == ([] if delete else sorted(f.name for f in record.files))
    assert check_session(tmp_path / "s").ok


def test_unknown_trigger_command_is_reported(phone):
    _emulator, device = phone(trigger=[["am", "broadcast", "-a", "com.example.SHOOT"]])
    with device:
        device.arm()
        with pytest.raises(DeviceError, match="inaccessible or not found"):
            device.fire()


def test_settings_and_missing_phone_are_clear_errors(phone, adb_server):
    _emulator, device = phone()
    with device:
        with pytest.raises(DeviceConfigError, match="set them in the app"):
            device.configure({"iso": 100})
    with pytest.raises(DeviceNotFound, match="not online"):
        AdbPhone("ghost", serial="no-such-phone", adb_port=adb_server).connect()


def test_rig_pairs_the_virtual_dslr_with_the_adb_phone(phone, tmp_path, vcamera_dir):
    from isp_rig.devices.gphoto import GPhotoCamera

    _emulator, device = phone(clock_offset_s=-3.0, latency_s=0.04)
    dslr = GPhotoCamera("dslr", model="D750", event_timeout_s=3.0)
    session = Session.open(tmp_path / "s", {"name": "dslr+adb"})
    with Rig([dslr, device], collect_timeout_s=5.0) as rig:
        records = [rig.shoot(session, "desk")[0] for _ in range(2)]
    for record in records:
        assert record.status == "ok", record.reason
        assert sorted({f.device for f in record.files}) == ["dslr", "phone"]
        # the phone's EXIF time is on its own clock (3 s behind); on the host timeline it
        # lands just after the trigger
        assert 0.0 <= record.fired["phone"]["capture_minus_trigger_s"] < 0.5
    assert check_session(tmp_path / "s").ok
