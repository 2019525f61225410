"""The companion-app adapter against the reference bridge server over real HTTP."""

from __future__ import annotations

import datetime as _dt
import http.client
import json
from pathlib import Path

import pytest

from isp_rig.devices.base import CaptureTimeout, DeviceConfigError, DeviceError, DeviceNotFound
from isp_rig.devices.companion import PROTOCOL, CompanionPhone
from isp_rig.devices.companion_server import CompanionServer, simulator_capture
from isp_rig.rig import Rig
from isp_rig.session import Session, check_session


@pytest.fixture
def server(tmp_path):
    """Factory: a running reference server on a free port; stopped after the test."""
    running = []

    def make(**kw) -> CompanionServer:
        srv = CompanionServer(tmp_path / "camera", **kw)
        srv.start()
        running.append(srv)
        return srv

    yield make
    for srv in running:
        srv.stop()


def raw_and_jpeg(folder: Path, stem: str, when: _dt.datetime) -> list[Path]:
    """A capture hook writing RAW+JPEG like an app set to both."""
    paths = simulator_capture(folder, stem, when)
    jpeg = folder / f"{stem}.jpg"
    jpeg.write_bytes(b"\xff\xd8 app jpeg " + stem.encode() + b"\xff\xd9")
    return paths + [jpeg]


def test_hello_gives_model_and_clock_offset(server):
    srv = server(clock_offset_s=-4.25)
    with CompanionPhone("phone", srv.url) as phone:
        info = phone.describe()
    assert info.model == "Apple iPhone 6s" and info.serial == "companion-1"
    assert info.extra["protocol"] == PROTOCOL
    assert abs(info.clock_offset_s + 4.25) < info.extra["clock_round_trip_s"] + 0.01


def test_fire_returns_sensor_time_and_files_verified_by_sha256(server):
    srv = server(capture=raw_and_jpeg, latency_s=0.03)
    with CompanionPhone("phone", srv.url) as phone:
        phone.arm()
        fired = phone.fire()
        files = phone.collect(3.0)
    assert [f.name for f in files] == ["IMG_0001.dng", "IMG_0001.jpg"]
    assert files[0].data == (srv.folder / "IMG_0001.dng").read_bytes()
    assert files[0].capture_time_source == "sensor"
    assert fired.returned_monotonic_ns - fired.fired_monotonic_ns >= 0.03e9  # fire answers after the exposure
    assert phone.last_answer["sensor_timestamp_ns"] > 0
    assert srv.armed and "POST /fire" in srv.requests


def test_download_that_does_not_match_the_listing_fails(server):
    srv = server()
    with CompanionPhone("phone", srv.url) as phone:
        phone.arm()
        phone.fire()
        real_listing = srv.listing

        def lying_listing():
            answer = real_listing()
            for f in answer["files"]:
                f["sha256"] = "0" * 64
            return answer

        srv.listing = lying_listing
        with pytest.raises(DeviceError, match="does not match the app's sha256"):
            phone.collect(2.0)


def test_files_that_never_complete_time_out(server):
    srv = server()
    with CompanionPhone("phone", srv.url) as phone:
        phone.arm()
        phone.fire()
        srv._writing.add("IMG_0001")  # the app is still writing the file
        with pytest.raises(CaptureTimeout, match=r"\['IMG_0001.dng'\] not complete"):
            phone.collect(0.3)


def test_failing_camera_reports_the_apps_error(server):
    def broken(folder, stem, when):
        raise RuntimeError("camera session lost")

    srv = server(capture=broken)
    with CompanionPhone("phone", srv.url) as phone:
        with pytest.raises(DeviceError, match="HTTP 500: capture failed: RuntimeError: camera session lost"):
            phone.fire()


def test_bad_requests_get_json_errors(server):
    srv = server()
    conn = http.client.HTTPConnection(*srv.httpd.server_address[:2], timeout=5)
    conn.request("POST", "/fire", body=b"[1]", headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 400 and "JSON object" in json.loads(response.read())["error"]
    conn.request("GET", "/files/..%2Fescape")
    response = conn.getresponse()
    assert response.status == 404 and "no such file" in json.loads(response.read())["error"]
    conn.close()


def test_unreachable_app_and_bad_settings_are_clear_errors(server):
    srv = server()
    url = srv.url
    srv.stop()
    with pytest.raises(DeviceNotFound, match="unreachable"):
        CompanionPhone("phone", url, request_timeout_s=1).connect()
    with pytest.raises(DeviceConfigError, match="http://host:port"):
        CompanionPhone("phone", "ftp://x")


def test_rig_with_companion_phone_and_virtual_dslr(server, tmp_path, vcamera_dir):
    from isp_rig.devices.gphoto import GPhotoCamera

    srv = server(clock_offset_s=2.0, latency_s=0.02)
    devices = [GPhotoCamera("dslr", model="D750", event_timeout_s=3.0), CompanionPhone("iphone", srv.url)]
    session = Session.open(tmp_path / "s", {"name": "dslr+companion"})
    with Rig(devices, collect_timeout_s=3.0) as rig:
        record, _ = rig.shoot(session, "desk")
    assert record.status == "ok", record.reason
    assert record.fired["iphone"]["capture_time_source"] == "sensor"
    assert 0.0 <= record.fired["iphone"]["capture_minus_trigger_s"] < 0.3  # phone clock offset removed
    assert check_session(tmp_path / "s").ok
