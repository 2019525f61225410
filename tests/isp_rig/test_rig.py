"""The rig end to end: libgphoto2's virtual camera + an emulated phone into a session."""

from __future__ import annotations

import threading
from typing import Any, Mapping

import pytest

from isp_rig.devices.base import CapturedFile, Device, DeviceInfo, FireRecord, timed_call
from isp_rig.devices.folder import WatchedFolder
from isp_rig.devices.virtual import virtual_devices
from isp_rig.devices import DeviceConfigError, build_device, resolve_entry
from isp_rig.profiles import ProfileError
from isp_rig.rig import Rig, RigError, load_rig
from isp_rig.session import Session, check_session


@pytest.fixture
def virtual(tmp_path, monkeypatch, vcamera_dir):
    """Factory: (devices, emulator) of the virtual rig for a scene; VCAMERADIR restored after."""
    monkeypatch.setenv("VCAMERADIR", str(vcamera_dir))

    def make(scene="desk", **kw):
        return virtual_devices(tmp_path / "work", scene, **kw)

    return make


def _rig_config(devices):
    return {"name": "virtual", "device": [{"name": d.name, "adapter": d.adapter} for d in devices]}


class VirtualClock:
    """An injected :class:`isp_rig.clock.Clock` whose time is virtual and per thread: every
    thread starts at 0 and only its own sleeps move it on (so a barrier releases every
    device at exactly 0, and sequential calls in one thread add up).  Each sleep is
    recorded under the thread's name."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.slept: dict[str, list[float]] = {}

    def monotonic_ns(self) -> int:
        return getattr(self._local, "now", 0)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._local.now = self.monotonic_ns() + round(seconds * 1e9)
            self.slept.setdefault(threading.current_thread().name, []).append(seconds)


class ClockedDevice(Device):
    """A device whose trigger takes ``trigger_s`` and whose download ``download_s`` on a
    :class:`VirtualClock`, delivering one small file per shot (no hardware, no sleeping)."""

    adapter = "clocked"

    def __init__(self, name: str, clock: VirtualClock, trigger_s: float = 0.0, download_s: float = 0.0) -> None:
        super().__init__(name)
        self.clock, self.trigger_s, self.download_s, self.shots = clock, trigger_s, download_s, 0

    def connect(self) -> None:
        pass

    def describe(self) -> DeviceInfo:
        return DeviceInfo(self.name, self.adapter, "virtual-clock device")

    def configure(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return dict(settings)

    def arm(self) -> None:
        pass

    def fire(self) -> FireRecord:
        self.shots += 1
        return timed_call(self.name, lambda: self.clock.sleep(self.trigger_s), clock=self.clock)

    def collect(self, timeout_s: float) -> list[CapturedFile]:
        self.clock.sleep(self.download_s)
        return [CapturedFile(f"{self.name}_{self.shots:04d}.raw", f"/{self.name}/{self.shots}", data=b"raw")]

    def close(self) -> None:
        pass


def _clocked_rig(tmp_path, **rig_kw):
    """(session, rig, clock) of a DSLR with a 50 ms trigger and a phone with none, on a virtual clock."""
    clock = VirtualClock()
    devices = [ClockedDevice("dslr", clock, trigger_s=0.05, download_s=0.3), ClockedDevice("phone", clock)]
    session = Session.open(tmp_path / "s", _rig_config(devices))
    return session, Rig(devices, clock=clock, **rig_kw), clock


def test_paired_shots_land_in_the_session_with_skew(tmp_path, virtual):
    devices, emulator = virtual(dslr_latency_s=0.02, phone_latency_s=0.02)
    session = Session.open(tmp_path / "s", _rig_config(devices))
    with Rig(devices, collect_timeout_s=5.0) as rig:
        records = [rig.shoot(session, "desk")[0] for _ in range(3)]
    assert [r.status for r in records] == ["ok"] * 3, [r.reason for r in records]
    for rec in records:
        assert sorted(f.device for f in rec.files) == ["dslr", "phone"]
        assert set(rec.skew["trigger_offsets_s"]) == {"dslr", "phone"} and rec.skew["trigger_s"] >= 0.0
        assert rec.fired["phone"]["capture_time_source"] == "exif"
        assert rec.fired["phone"]["capture_minus_trigger_s"] >= 0.0  # the phone exposed after its trigger
        assert rec.fired["dslr"]["fired_wall"] and rec.fired["dslr"]["trigger_call_s"] >= 0.02
    assert [f.path for f in records[0].files if f.device == "phone"] == ["shots/00001/phone/IMG_0001.DNG"]
    report = check_session(tmp_path / "s")
    assert report.ok and report.files_ok == 6 and not report.unlisted
    assert not emulator.errors


def test_phone_that_never_delivers_fails_the_shot_and_keeps_the_dslr_file(tmp_path, virtual):
    devices, _ = virtual(phone_delivers=False)
    session = Session.open(tmp_path / "s", _rig_config(devices))
    with Rig(devices, collect_timeout_s=0.5) as rig:
        rec, results = rig.shoot(session, "desk")
    assert rec.status == "failed"
    assert "phone: collect: no new raw file" in rec.reason
    assert [f.device for f in rec.files] == ["dslr"]
    assert rec.missing[0]["device"] == "phone"
    assert results["phone"].error_type == "CaptureTimeout"
    assert check_session(tmp_path / "s").ok  # the DSLR file is listed and intact


def test_barrier_releases_every_device_at_one_instant(tmp_path):
    session, rig, clock = _clocked_rig(tmp_path)
    with rig:
        rec, results = rig.shoot(session, "desk")
    assert rec.status == "ok" and rec.skew["trigger_s"] == 0.0
    assert rec.skew["trigger_offsets_s"] == {"dslr": 0.0, "phone": 0.0}
    assert rec.fired["dslr"]["trigger_call_s"] == pytest.approx(0.05)
    assert results["dslr"].collect_s == pytest.approx(0.3) and results["phone"].collect_s == 0.0


def test_scheduled_mode_triggers_the_slower_device_earlier_by_the_latency_difference(tmp_path):
    session, rig, clock = _clocked_rig(tmp_path, mode="scheduled", latency_s={"dslr": 0.08, "phone": 0.0},
                                       schedule_lead_s=0.01)
    with rig:
        rec, _ = rig.shoot(session, "desk")
    # the common instant is lead + largest latency after the release; each waits that minus its own
    assert clock.slept["fire-dslr"][0] == pytest.approx(0.01)
    assert clock.slept["fire-phone"][0] == pytest.approx(0.09)
    assert rec.skew["trigger_offsets_s"] == pytest.approx({"dslr": 0.0, "phone": 0.08})
    assert rec.skew["trigger_s"] == pytest.approx(0.08)


def test_sequential_mode_adds_the_first_devices_whole_shot_to_the_skew(tmp_path):
    session, rig, _ = _clocked_rig(tmp_path, mode="sequential")
    with rig:
        rec, _ = rig.shoot(session, "desk")
    # the phone fires after the DSLR's trigger (50 ms) and its download (300 ms)
    assert rec.status == "ok" and rec.skew["trigger_s"] == pytest.approx(0.35)


def test_a_shot_over_max_skew_is_failed_with_the_skew_and_keeps_its_files(tmp_path):
    session, rig, _ = _clocked_rig(tmp_path, mode="sequential", max_skew_s=0.1)
    with rig:
        rec, _ = rig.shoot(session, "desk")
    assert rec.status == "failed" and rec.reason == "trigger skew 350.0 ms exceeds max_skew_s 100.0 ms"
    assert sorted(f.device for f in rec.files) == ["dslr", "phone"]
    assert check_session(tmp_path / "s").ok


def test_scheduled_mode_fires_the_real_virtual_rig(tmp_path, virtual):
    devices, _ = virtual(dslr_latency_s=0.0, phone_latency_s=0.0)
    session = Session.open(tmp_path / "s", _rig_config(devices))
    with Rig(devices, mode="scheduled", latency_s={"dslr": 0.08, "phone": 0.0}) as rig:
        rec, _ = rig.shoot(session, "desk")
    assert rec.status == "ok" and sorted(f.device for f in rec.files) == ["dslr", "phone"]
    assert set(rec.skew["trigger_offsets_s"]) == {"dslr", "phone"}


@pytest.mark.parametrize("names, mode, match", [
    ([], "barrier", "at least one"),
    (["phone", "phone"], "barrier", "unique"),
    (["phone"], "bogus", "mode must be"),
])
def test_bad_rig_is_refused(tmp_path, names, mode, match):
    devices = [WatchedFolder(n, tmp_path) for n in names]
    with pytest.raises(RigError, match=match):
        Rig(devices, mode=mode)


RIG_TOML = """
[rig]
name = "bench"
mode = "scheduled"

[[device]]
name = "dslr"
profile = "nikon_z6"
port = "usb:001,004"
[device.settings]
shutter = "1/125"

[[device]]
name = "iphone"
profile = "iphone_6s"
folder = "/media/sync"
latency_s = 0.12

[[device]]
name = "mi3"
profile = "mi_3"
address = "192.168.1.20:5555"
"""


def test_rig_file_merges_entries_over_profiles(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text(RIG_TOML)
    spec = load_rig(path)
    dslr, iphone, mi3 = spec.devices
    assert spec.name == "bench" and spec.options == {"mode": "scheduled"}
    assert (dslr["kind"], dslr["adapter"]) == ("dslr", "gphoto")
    assert dslr["options"]["model"] == "Nikon Z6" and dslr["options"]["port"] == "usb:001,004"
    assert dslr["options"]["settings_map"]["shutter"] == "shutterspeed"
    assert dslr["settings"] == {"shutter": "1/125"}
    assert (iphone["kind"], iphone["adapter"], iphone["latency_s"]) == ("phone", "folder", 0.12)
    assert iphone["options"]["folder"] == "/media/sync" and iphone["options"]["model"] == "iPhone 6s"
    assert mi3["adapter"] == "adb" and mi3["options"]["trigger"] == [["input", "keyevent", "27"]]
    rig = spec.build()
    assert [type(d).__name__ for d in rig.devices] == ["GPhotoCamera", "WatchedFolder", "AdbPhone"]
    assert rig.latency_s == {"dslr": 0.0, "iphone": 0.12, "mi3": 0.0} and rig.mode == "scheduled"


@pytest.mark.parametrize("entry, error, match", [
    ('name = "x"\nprofile = "nikon_z6"\nshutter = "1/125"', DeviceConfigError, r"unknown option\(s\) \['shutter'\]"),
    ('name = "x"\nadapter = "bluetooth"', DeviceConfigError, "unknown adapter 'bluetooth'"),
    ('name = "x"\nprofile = "no_such_phone"', ProfileError, "no such profile"),
    ('profile = "iphone_6s"', DeviceConfigError, "needs a name"),
])
def test_bad_rig_file_entries_name_the_problem(tmp_path, entry, error, match):
    path = tmp_path / "rig.toml"
    path.write_text(f"[[device]]\n{entry}\n")
    with pytest.raises(error, match=match):
        load_rig(path)


@pytest.mark.parametrize("text, match", [("", "no \\[\\[device\\]\\]"), ("[rig]\nspeed = 1\n", "unknown \\[rig\\] key"),
                                         ("[[device]\n", "not valid TOML")])
def test_bad_rig_file_is_refused_with_the_file_named(tmp_path, text, match):
    path = tmp_path / "rig.toml"
    path.write_text(text)
    with pytest.raises(RigError, match=match):
        load_rig(path)


@pytest.mark.parametrize("entry, match", [({"name": "p", "adapter": "folder"}, "needs `folder"),
                                          ({"name": "p", "adapter": "companion"}, "needs `url")])
def test_device_without_its_address_is_refused(entry, match):
    with pytest.raises(DeviceConfigError, match=match):
        build_device(resolve_entry(entry))


def test_the_capture_path_imports_neither_torch_nor_the_alignment_stack():
    import subprocess
    import sys

    code = ("import sys; import isp_rig.rig, isp_rig.capture_cli, isp_rig.devices.folder, isp_rig.devices.adb, "
            "isp_rig.devices.companion, isp_rig.devices.gphoto; "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('alignment', 'learn', 'torch', 'cv2', 'scipy', 'rawpy'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    # only alignment's two standard-library leaves: the EXIF reader and the session manifest
    assert loaded == ["alignment", "alignment.exif", "alignment.session_manifest"]
