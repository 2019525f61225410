"""The rig end to end: libgphoto2's virtual camera + an emulated phone into a session."""

from __future__ import annotations

import pytest

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


def test_paired_shots_land_in_the_session_with_skew(tmp_path, virtual):
    devices, emulator = virtual(dslr_latency_s=0.02, phone_latency_s=0.02)
    session = Session.open(tmp_path / "s", _rig_config(devices))
    with Rig(devices, collect_timeout_s=5.0) as rig:
        records = [rig.shoot(session, "desk")[0] for _ in range(3)]
    assert [r.status for r in records] == ["ok"] * 3, [r.reason for r in records]
    for rec in records:
        assert sorted(f.device for f in rec.files) == ["dslr", "phone"]
        assert rec.skew["trigger_s"] < 0.05  # both released by one barrier
        assert rec.fired["phone"]["capture_time_source"] == "exif"
        assert 0.0 <= rec.fired["phone"]["capture_minus_trigger_s"] < 0.5
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


def test_scheduled_mode_compensates_trigger_latency(tmp_path, virtual):
    devices, _ = virtual(dslr_latency_s=0.0, phone_latency_s=0.0)
    session = Session.open(tmp_path / "s", _rig_config(devices))
    with Rig(devices, mode="scheduled", latency_s={"dslr": 0.08, "phone": 0.0}) as rig:
        rec, _ = rig.shoot(session, "desk")
    offsets = rec.skew["trigger_offsets_s"]
    # the slower DSLR is triggered 80 ms before the phone
    assert offsets["dslr"] == 0.0 and 0.06 < offsets["phone"] < 0.12


def test_sequential_mode_adds_the_first_devices_whole_shot_to_the_skew(tmp_path, virtual):
    devices, _ = virtual(dslr_latency_s=0.05)
    session = Session.open(tmp_path / "s", _rig_config(devices))
    with Rig(devices, mode="sequential") as rig:
        rec, _ = rig.shoot(session, "desk")
    assert rec.status == "ok" and rec.skew["trigger_s"] >= 0.05


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
