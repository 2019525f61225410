"""The built-in virtual rig: libgphoto2's virtual camera as the DSLR and an
emulated phone, both showing one scene of a scene source (the rig simulator
unless another is handed in, see :data:`SceneSource`).

Nothing here is a mock of the adapters: the DSLR is driven by
:class:`~isp_rig.devices.gphoto.GPhotoCamera` over real PTP against the
virtual camera in the gphoto2 wheel, and the phone by
:class:`~isp_rig.devices.folder.WatchedFolder`, whose trigger asks the
:class:`EmulatedPhone` to "press the shutter": after its latency it writes a
real DNG (the simulator's phone raw, EXIF capture time = shutter time +
latency) into its camera folder, the way a phone synced to the host would.

Limits of the virtual camera that shape this module: it reads its folder
when a camera session opens and always captures a copy of the first JPEG
there, so one session shows one scene (the DSLR image is written before
``connect``); it answers in well under a millisecond, so ``dslr_latency_s``
adds a latency; it allows 26 captures per session (the adapter reopens).
``VCAMERADIR`` must be set before ``gphoto2`` is first imported:
:func:`prepare_vcamera_dir` does that and fails clearly when it is too late.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import os
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isp_rig.devices.folder import WatchedFolder
from isp_rig.devices.gphoto import GPhotoCamera, open_camera

DSLR_NAME = "dslr"
PHONE_NAME = "phone"


class VirtualRigError(Exception):
    """The virtual rig cannot be built here (e.g. gphoto2 imported too early)."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line


def scene_seed(scene: str) -> int:
    """A stable simulator seed for a scene name."""
    return zlib.crc32(scene.encode("utf-8"))


@functools.lru_cache(maxsize=8)
def scene_pair(scene: str):
    """The simulator's pair for a scene (small sizes: phone 320x240 raw, DSLR 480x320): the
    default scene source of the virtual rig."""
    from isp_rig import simulate

    options = simulate.SimOptions(phone_size=(320, 240), dslr_size=(480, 320), supersample=1, grid_points=200)
    return simulate.simulate_pair(scene_seed(scene), options=options, pair_id=scene)


#: A scene source: scene name -> an object with ``phone`` (an :class:`alignment.rawio.RawImage`,
#: what the phone's sensor records) and ``dslr_rgb`` ((H, W, 3) float sRGB in [0, 1], what
#: the DSLR shows), e.g. :class:`isp_rig.simulate.SimulatedPair`.  The devices are handed
#: one; :func:`scene_pair` (the simulator) is the default.
SceneSource = Callable[[str], Any]


class EmulatedPhone:
    """A phone camera that writes a simulated DNG into ``folder`` per shutter press.

    Args:
        folder: the phone's camera folder as the host sees it.
        scene: scene name (picks the simulated pair).
        latency_s: shutter press -> exposure; the file appears after it plus rendering.
        clock_offset_s: phone clock minus host clock, written into EXIF times.
        deliver: False emulates a phone that never delivers (a failed sync).
        scenes: where the scene's raw comes from (:data:`SceneSource`; the simulator).
    """

    def __init__(self, folder: Path | str, scene: str, *, latency_s: float = 0.03,
                 clock_offset_s: float = 0.0, deliver: bool = True, scenes: SceneSource = scene_pair) -> None:
        self.folder = Path(folder)
        self.scene = scene
        self.scenes = scenes
        self.latency_s = latency_s
        self.clock_offset_s = clock_offset_s
        self.deliver = deliver
        self.count = 0
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def pair(self):
        """This scene's pair, from the scene source."""
        return self.scenes(self.scene)

    def shutter(self) -> None:
        """Press the shutter: returns at once; the DNG is written in the background."""
        pressed = time.time()
        with self._lock:
            self.count += 1
            number = self.count
        thread = threading.Thread(target=self._expose, args=(pressed, number), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _expose(self, pressed: float, number: int) -> None:
        from isp_rig import simulate

        try:
            time.sleep(self.latency_s)
            if not self.deliver:
                return
            pair = self.pair()
            when = _dt.datetime.fromtimestamp(pressed + self.latency_s + self.clock_offset_s)  # naive local
            raw = dataclasses.replace(pair.phone, exif=dataclasses.replace(pair.phone.exif, capture_time=when))
            folder = self.folder / "DCIM" / "100PHONE"
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"IMG_{number:04d}.DNG"
            tmp = folder / f".IMG_{number:04d}.DNG.sync"
            simulate.write_dng(tmp, raw)
            os.replace(tmp, final)
        except Exception as err:  # noqa: BLE001  reported through errors, like a phone's log
            self.errors.append(f"{type(err).__name__}: {err}")

    def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Wait for every pending exposure to be written."""
        end = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))


def prepare_vcamera_dir(workdir: Path | str, scene: str, scenes: SceneSource = scene_pair) -> Path:
    """Write the scene's DSLR image (from ``scenes``) for the virtual camera and point
    ``VCAMERADIR`` at it.

    Raises VirtualRigError when ``gphoto2`` was already imported with another
    (or no) ``VCAMERADIR``: libgphoto2 only sees the variable at import.
    """
    folder = Path(workdir) / "vcamera"
    folder.mkdir(parents=True, exist_ok=True)
    pair = scenes(scene)
    # No capture time in this JPEG: the virtual camera would hand the same
    # EXIF time out for every shot, which is not a capture time.
    import cv2

    bgr = (pair.dslr_rgb[..., ::-1].clip(0, 1) * 255 + 0.5).astype("uint8")
    for old in folder.glob("*.jpg"):
        old.unlink()
    if not cv2.imwrite(str(folder / f"{scene_seed(scene):08x}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise VirtualRigError(f"could not write the virtual camera's scene into {folder}")
    if "gphoto2" in sys.modules and "VCAMERADIR" not in os.environ:
        raise VirtualRigError("gphoto2 was imported before VCAMERADIR was set: run the virtual rig in a "
                              "fresh process")
    os.environ["VCAMERADIR"] = str(folder)
    return folder


def virtual_devices(workdir: Path | str, scene: str, *, dslr_latency_s: float = 0.02,
                    phone_latency_s: float = 0.03, phone_delivers: bool = True,
                    collect_timeout_s: float = 5.0,
                    scenes: SceneSource = scene_pair) -> tuple[list[Any], EmulatedPhone]:
    """The DSLR and phone devices of the virtual rig, and the phone emulator behind the folder.

    ``dslr_latency_s`` is injected before each trigger of the virtual camera
    (a real body takes tens of milliseconds).  ``scenes``: what both cameras see
    (:data:`SceneSource`; the simulator by default).
    """
    workdir = Path(workdir)
    prepare_vcamera_dir(workdir, scene, scenes)
    phone_dir = workdir / "phone"
    phone_dir.mkdir(parents=True, exist_ok=True)
    emulator = EmulatedPhone(phone_dir, scene, latency_s=phone_latency_s, deliver=phone_delivers, scenes=scenes)

    def factory(model: str | None, port: str | None):
        return _LatentCamera(open_camera(model, port), dslr_latency_s)

    dslr = GPhotoCamera(DSLR_NAME, model="D750", camera_factory=factory, event_timeout_s=collect_timeout_s)
    phone = WatchedFolder(PHONE_NAME, phone_dir, model="SimPhone 12 (emulated)", raw_extensions=(".dng",),
                          trigger=emulator.shutter, tolerance_s=1.0, stable_s=0.05, poll_s=0.02)
    return [dslr, phone], emulator


class _LatentCamera:
    """A real gphoto2 camera whose trigger takes ``latency_s`` longer, like a real body."""

    def __init__(self, camera: Any, latency_s: float) -> None:
        self._camera = camera
        self._latency_s = latency_s

    def trigger_capture(self) -> Any:
        time.sleep(self._latency_s)
        return self._camera.trigger_capture()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._camera, name)
