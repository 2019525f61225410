"""The watched-folder phone adapter against a real folder and real DNG files."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import sys
import threading
import time
from pathlib import Path

import pytest

from isp_rig.devices.base import CaptureTimeout, DeviceConfigError, DeviceError, DeviceNotFound
from isp_rig.devices.folder import WatchedFolder
from isp_rig.devices.virtual import scene_pair


def write_phone_dng(path: Path, when: _dt.datetime) -> Path:
    """A real DNG from the rig simulator whose EXIF capture time is ``when`` (naive local)."""
    from isp_rig import simulate

    raw = scene_pair("folder-test").phone
    raw = dataclasses.replace(raw, exif=dataclasses.replace(raw.exif, capture_time=when))
    path.parent.mkdir(parents=True, exist_ok=True)
    simulate.write_dng(path, raw)
    return path


def _phone(folder: Path, **kw) -> WatchedFolder:
    kw.setdefault("stable_s", 0.05)
    kw.setdefault("poll_s", 0.01)
    dev = WatchedFolder("phone", folder, **kw)
    dev.connect()
    return dev


def test_new_raw_within_tolerance_is_collected_with_its_jpeg(tmp_path):
    old = write_phone_dng(tmp_path / "DCIM" / "IMG_0001.DNG", _dt.datetime.now())
    dev = _phone(tmp_path)
    dev.arm()
    fired = dev.fire()
    new = write_phone_dng(tmp_path / "DCIM" / "IMG_0002.DNG", _dt.datetime.now())
    (tmp_path / "DCIM" / "IMG_0002.JPG").write_bytes(b"\xff\xd8 phone jpeg")
    files = dev.collect(2.0)
    assert [f.name for f in files] == ["IMG_0002.DNG", "IMG_0002.JPG"]
    assert files[0].local_path == new and files[0].capture_time_source == "exif"
    assert abs(files[0].capture_time.timestamp() - time.time()) < 2
    assert fired.notes and "by hand" in fired.notes[0]
    assert old.exists() and new.exists()  # copied later by the session, never moved


def test_file_already_there_is_never_taken(tmp_path):
    write_phone_dng(tmp_path / "IMG_0001.DNG", _dt.datetime.now())
    dev = _phone(tmp_path)
    dev.arm()
    dev.fire()
    with pytest.raises(CaptureTimeout, match="no new raw file"):
        dev.collect(0.3)


def test_raw_outside_the_tolerance_is_left_in_place_and_named(tmp_path):
    dev = _phone(tmp_path, tolerance_s=1.0)
    dev.arm()
    dev.fire()
    stale = write_phone_dng(tmp_path / "IMG_0009.DNG", _dt.datetime.now() - _dt.timedelta(seconds=30))
    with pytest.raises(CaptureTimeout, match=r"IMG_0009.DNG \(-3\d\.\d s\)"):
        dev.collect(0.4)
    assert stale.exists() and dev.unpaired == [str(stale)]


def test_clock_offset_moves_phone_times_onto_the_host_clock(tmp_path):
    dev = _phone(tmp_path, tolerance_s=1.0, clock_offset_s=30.0)  # phone clock runs 30 s ahead
    dev.arm()
    dev.fire()
    write_phone_dng(tmp_path / "IMG_0001.DNG", _dt.datetime.now() + _dt.timedelta(seconds=30))
    assert [f.name for f in dev.collect(2.0)] == ["IMG_0001.DNG"]


def test_growing_file_is_read_only_when_complete(tmp_path):
    src = write_phone_dng(tmp_path / "src" / "IMG_0001.DNG", _dt.datetime.now())
    data = src.read_bytes()
    watched = tmp_path / "watched"
    watched.mkdir()
    dev = _phone(watched, stable_s=0.15)
    dev.arm()
    dev.fire()

    def sync_slowly() -> None:  # a sync client writing in pieces
        with open(watched / "IMG_0001.DNG", "wb") as fh:
            for i in range(0, len(data), len(data) // 4 + 1):
                fh.write(data[i:i + len(data) // 4 + 1])
                fh.flush()
                time.sleep(0.08)

    writer = threading.Thread(target=sync_slowly)
    writer.start()
    files = dev.collect(3.0)
    writer.join()
    assert files[0].local_path.read_bytes() == data
    assert files[0].local_path.stat().st_size == len(data)


def test_trigger_command_is_run_without_a_shell(tmp_path):
    src = write_phone_dng(tmp_path / "src" / "IMG_0005.DNG", _dt.datetime.now())
    watched = tmp_path / "watched"
    watched.mkdir()
    command = [sys.executable, "-c", "import shutil,sys; shutil.copy2(sys.argv[1], sys.argv[2])",
               str(src), str(watched / "IMG_0005.DNG")]
    dev = _phone(watched, trigger=command)
    dev.arm()
    dev.fire()
    assert [f.name for f in dev.collect(2.0)] == ["IMG_0005.DNG"]


def test_failing_trigger_command_is_a_device_error(tmp_path):
    dev = _phone(tmp_path, trigger=[sys.executable, "-c", "import sys; sys.exit('remote not paired')"])
    with pytest.raises(DeviceError, match="remote not paired"):
        dev.fire()


def test_missing_folder_and_settings_are_clear_errors(tmp_path):
    with pytest.raises(DeviceNotFound, match="does not exist"):
        WatchedFolder("phone", tmp_path / "nope").connect()
    with pytest.raises(DeviceConfigError, match="no remote settings"):
        _phone(tmp_path).configure({"iso": 100})
    assert not (tmp_path / "nope").exists()


def test_the_emulated_phone_writes_the_raw_of_the_scene_source_it_is_handed(tmp_path):
    import numpy as np

    from alignment import rawio
    from isp_rig.devices.virtual import EmulatedPhone

    base = scene_pair("folder-test")
    rows, cols = np.indices(base.phone.mosaic.shape)
    mosaic = (100 + (rows * 7 + cols * 3) % 500).astype(np.uint16)  # a scene no simulator would render
    mine = dataclasses.replace(base, phone=dataclasses.replace(base.phone, mosaic=mosaic))
    asked = []

    def scenes(name):
        asked.append(name)
        return mine

    phone = EmulatedPhone(tmp_path, "my-scene", latency_s=0.0, scenes=scenes)
    phone.shutter()
    phone.wait_idle()
    assert phone.errors == [] and asked == ["my-scene"]
    written = rawio.read_raw(tmp_path / "DCIM" / "100PHONE" / "IMG_0001.DNG")
    np.testing.assert_array_equal(written.mosaic, mosaic)
    assert written.exif.capture_time is not None  # the shutter time, as a phone writes it
