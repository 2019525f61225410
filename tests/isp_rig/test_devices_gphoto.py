"""The DSLR adapter against libgphoto2's real virtual camera (PTP 'Nikon DSC D750')."""

from __future__ import annotations

import time

import pytest

from isp_rig.devices.base import CaptureTimeout, DeviceBusy, DeviceConfigError, DeviceDisconnected
from isp_rig.devices.gphoto import (GPhotoCamera, gphoto2_module, open_camera, pick_raw_plus_jpeg,
                                    walk_widgets, widget_choices)


class InjectedCamera:
    """The real virtual camera with injected trigger latency and busy answers.

    libgphoto2's virtual camera answers in well under a millisecond and is
    never busy; a real body takes tens of milliseconds and sometimes is.
    """

    def __init__(self, camera, latency_s: float = 0.0, busy_times: int = 0) -> None:
        self._camera = camera
        self.latency_s = latency_s
        self.busy_left = busy_times

    def trigger_capture(self):
        gp = gphoto2_module()
        if self.busy_left > 0:
            self.busy_left -= 1
            raise gp.GPhoto2Error(gp.GP_ERROR_CAMERA_BUSY)
        time.sleep(self.latency_s)
        return self._camera.trigger_capture()

    def __getattr__(self, name):
        return getattr(self._camera, name)


def _camera(**kwargs) -> GPhotoCamera:
    kwargs.setdefault("event_timeout_s", 3.0)
    return GPhotoCamera("dslr", model="D750", **kwargs)


def test_connect_describes_the_virtual_nikon(vcamera_dir):
    with _camera() as cam:
        info = cam.describe()
        target = walk_widgets(cam.camera.get_config())["capturetarget"].get_value()
    assert info.model == "Nikon DSC D750" and info.adapter == "gphoto"
    assert info.serial  # read from the camera's serialnumber widget
    assert info.clock_offset_s is not None and abs(info.clock_offset_s) < 5
    assert "card" in target.lower()
    # the virtual camera has no image format widget: recorded, one file per shot expected
    assert "no image format" in info.extra["image_format"] and info.extra["expected_files_per_shot"] == 1


def test_configure_sets_a_choice_read_from_the_camera(vcamera_dir):
    with _camera() as cam:
        widget = walk_widgets(cam.camera.get_config())["f-number"]
        other = next(c for c in widget_choices(widget) if c != widget.get_value())
        assert cam.configure({"f-number": other}) == {"f-number": other}
        assert walk_widgets(cam.camera.get_config())["f-number"].get_value() == other


def test_configure_by_profile_name_maps_to_the_widget(vcamera_dir):
    with _camera(settings_map={"aperture": "f-number"}) as cam:
        choice = widget_choices(walk_widgets(cam.camera.get_config())["f-number"])[-1]
        assert cam.configure({"aperture": choice}) == {"f-number": choice}


def test_configure_rejects_bad_value_listing_the_choices(vcamera_dir):
    with _camera() as cam:
        choices = widget_choices(walk_widgets(cam.camera.get_config())["shutterspeed"])
        with pytest.raises(DeviceConfigError) as err:
            cam.configure({"shutterspeed": "no-such-speed"})
    assert err.value.choices == choices
    assert choices[0] in str(err.value)


def test_configure_rejects_unknown_setting_listing_the_names(vcamera_dir):
    with _camera() as cam:
        with pytest.raises(DeviceConfigError, match="no setting 'iso'") as err:
            cam.configure({"iso": "100"})
    assert "f-number" in err.value.choices


def test_fire_and_collect_download_the_captured_file(vcamera_dir):
    source = (vcamera_dir / "scene.jpg").read_bytes()
    with _camera() as cam:
        cam.arm()
        fired = cam.fire()
        files = cam.collect(3.0)
    assert len(files) == 1 and files[0].name.upper().endswith(".JPG")
    assert files[0].data == source
    assert files[0].device_path.startswith("/store_") and files[0].capture_time is not None
    assert fired.returned_monotonic_ns >= fired.fired_monotonic_ns and fired.attempts == 1


def test_session_survives_the_virtual_camera_capture_limit(vcamera_dir):
    """The virtual camera stops after 26 captures per session; a reopen resets it."""
    with _camera() as cam:
        names = []
        for _ in range(30):
            cam.arm()
            cam.fire()
            names += [f.name for f in cam.collect(3.0)]
        assert len(names) == 30
        assert cam.reopens == 1  # one StoreFull after 26 captures, one reopen


def test_injected_trigger_latency_shows_in_the_fire_record(vcamera_dir):
    factory = lambda model, port: InjectedCamera(open_camera(model, port), latency_s=0.05)  # noqa: E731
    with _camera(camera_factory=factory) as cam:
        cam.arm()
        fired = cam.fire()
        cam.collect(3.0)
    assert (fired.returned_monotonic_ns - fired.fired_monotonic_ns) / 1e9 >= 0.05


@pytest.mark.parametrize("busy_times, outcome", [(2, "ok"), (4, "busy")])
def test_busy_camera_gets_a_bounded_retry(vcamera_dir, busy_times, outcome):
    factory = lambda model, port: InjectedCamera(open_camera(model, port), busy_times=busy_times)  # noqa: E731
    with _camera(camera_factory=factory, busy_retries=3, busy_backoff_s=0.001) as cam:
        cam.arm()
        if outcome == "ok":
            fired = cam.fire()
            assert fired.attempts == 1 + busy_times and "busy" in fired.notes[0]
            assert len(cam.collect(3.0)) == 1
        else:
            with pytest.raises(DeviceBusy, match="busy after 3 retries"):
                cam.fire()


def test_vanished_camera_is_reopened_once_then_reported(vcamera_dir):
    scene = vcamera_dir / "scene.jpg"
    data = scene.read_bytes()
    with _camera() as cam:
        cam.arm()
        cam.fire()
        assert len(cam.collect(3.0)) == 1
        scene.unlink()  # from now on the camera fails every capture
        cam.arm()
        cam.fire()
        with pytest.raises(DeviceDisconnected, match="lost the camera while waiting"):
            cam.collect(3.0)
        assert cam.reopens == 1
        cam.arm()
        with pytest.raises(DeviceDisconnected, match="reopened, failed again"):
            cam.fire()
        assert cam.reopens == 2
        scene.write_bytes(data)  # back again: the next shot reopens and works
        cam.arm()
        fired = cam.fire()
        assert len(cam.collect(3.0)) == 1 and fired.attempts == 2 and "reopened" in fired.notes[0]


def test_no_file_after_trigger_times_out(vcamera_dir):
    with _camera(event_timeout_s=0.3) as cam:
        cam.arm()
        with pytest.raises(CaptureTimeout, match="no FILE_ADDED"):
            cam.collect()  # never fired


@pytest.mark.parametrize("choices, expected", [
    (["JPEG Basic", "JPEG Normal", "JPEG Fine", "NEF (Raw)", "NEF+Basic", "NEF+Normal", "NEF+Fine"], "NEF+Fine"),
    (["Large Fine JPEG", "RAW", "RAW + Small Normal JPEG", "RAW + Large Fine JPEG"], "RAW + Large Fine JPEG"),
    (["JPEG Fine", "JPEG Normal"], None),
])
def test_raw_plus_jpeg_choice_is_read_from_the_widget(choices, expected):
    assert pick_raw_plus_jpeg(choices) == expected
