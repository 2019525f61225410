"""The Android adapter: a phone over ADB (adbutils talking to the adb server).

Per shot: list the profile's camera folder (:meth:`arm`), run the trigger
commands the profile gives (a key event to a camera app set to RAW, an
intent), wait for the new raw file (and the phone's own JPEG when the app
writes RAW+JPEG) to appear and stop growing, pull each file and verify the
copy: its size against the phone's listing and its sha256 against the
phone's own ``sha256sum``. A copy that does not match is pulled once more,
then the shot fails. A phone file is deleted only when the profile says so
(``delete_after_copy``) and only after the session stored a copy whose
sha256 equals the phone's (:meth:`after_stored`).

The phone clock is measured against the host clock at connect
(``date +%s.%N`` round trips, the one with the shortest round trip wins),
so phone capture times land on the host timeline.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import posixpath
import shlex
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from alignment import exif
from isp_rig.devices.base import (CaptureTimeout, CapturedFile, ClockSample, Device, DeviceConfigError, DeviceDisconnected,
                                  DeviceError, DeviceInfo, DeviceNotFound, FireRecord, timed_call)

DEFAULT_TRIGGER = (("input", "keyevent", "27"),)  # KEYCODE_CAMERA to the open camera app


@dataclass(frozen=True)
class _Entry:
    size: int
    mtime: float


class AdbPhone(Device):
    """An Android phone over ADB.

    Args:
        name: device name in the rig.
        serial: the adb serial (``adb devices``); with ``address`` it defaults to it.
        address: ``host:port`` to ``adb connect`` first (wireless debugging).
        adb_host, adb_port: the adb server (default 127.0.0.1 and
            ``$ANDROID_ADB_SERVER_PORT`` or 5037).
        camera_folder: where the camera app writes.
        raw_extensions, companion_extensions: lowercase suffixes.
        trigger: shell commands (argv lists) run at the trigger, in order.
        delete_after_copy: delete the phone's files after a verified, stored copy.
        stable_s: a new file must keep its size this long before it is pulled.
        poll_s: listing interval while waiting.
        clock_samples: ``date`` round trips used to measure the clock.
    """

    adapter = "adb"

    def __init__(self, name: str, *, serial: str | None = None, address: str | None = None,
                 adb_host: str = "127.0.0.1", adb_port: int | None = None,
                 camera_folder: str = "/sdcard/DCIM/Camera", raw_extensions: Sequence[str] = (".dng",),
                 companion_extensions: Sequence[str] = (".jpg", ".jpeg", ".heic"),
                 trigger: Sequence[Sequence[str]] = DEFAULT_TRIGGER, delete_after_copy: bool = False,
                 stable_s: float = 0.3, poll_s: float = 0.05, clock_samples: int = 5,
                 model: str | None = None) -> None:
        super().__init__(name)
        self.serial = serial or address
        self.address = address
        self.adb_host = adb_host
        self.adb_port = adb_port
        self.camera_folder = camera_folder.rstrip("/")
        self.raw_extensions = tuple(e.lower() for e in raw_extensions)
        self.companion_extensions = tuple(e.lower() for e in companion_extensions)
        self.trigger = [list(cmd) for cmd in trigger]
        self.delete_after_copy = delete_after_copy
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.clock_samples = clock_samples
        self.profile_model = model
        self.device: Any = None
        self.clock: ClockSample | None = None
        self.last_fire: FireRecord | None = None
        self._before: dict[str, _Entry] = {}
        self._taken: set[str] = set()
        self._phone_sha: dict[str, str] = {}

    # -- session -----------------------------------------------------------
    def connect(self) -> None:
        """Reach the adb server, ``adb connect`` when an address is given, find the phone, read its clock."""
        import adbutils

        try:
            client = adbutils.AdbClient(host=self.adb_host, port=self.adb_port)
            if self.address:
                answer = client.connect(self.address, timeout=10)
                if "connected" not in answer:
                    raise DeviceNotFound(self.name, f"adb connect {self.address}: {answer.strip()}")
            serials = [d.serial for d in client.list() if d.state == "device"]
        except adbutils.AdbError as err:
            raise DeviceNotFound(self.name, f"adb server at {self.adb_host}:{client.port}: {err}") from err
        if self.serial is None:
            if len(serials) != 1:
                raise DeviceNotFound(self.name, f"give the phone's serial: adb sees {serials or 'no device'}")
            self.serial = serials[0]
        elif self.serial not in serials:
            raise DeviceNotFound(self.name, f"phone {self.serial} not online; adb sees {serials or 'no device'}")
        self.device = client.device(serial=self.serial)
        self.clock = self.measure_clock()
        self._taken = set(self._listing())  # files already on the phone never belong to a shot

    def close(self) -> None:
        """Forget the phone (the adb server keeps its own connection)."""
        self.device = None

    def _shell(self, argv: Sequence[str] | str, timeout: float = 10.0) -> str:
        import adbutils

        if self.device is None:
            raise DeviceError(self.name, "not connected (call connect() first)")
        command = argv if isinstance(argv, str) else shlex.join(argv)
        try:
            return self.device.shell(command, timeout=timeout)
        except (adbutils.AdbError, OSError) as err:
            raise DeviceDisconnected(self.name, f"adb shell {command!r} failed: {err}") from err

    def measure_clock(self) -> ClockSample:
        """Phone clock minus host clock from ``date +%s.%N`` round trips (shortest round trip wins)."""
        best: ClockSample | None = None
        for _ in range(max(1, self.clock_samples)):
            t0 = time.time()
            out = self._shell(["date", "+%s.%N"]).strip()
            t1 = time.time()
            try:
                phone = float(out)
            except ValueError:
                raise DeviceError(self.name, f"cannot read the phone clock: `date +%s.%N` said {out!r}") from None
            sample = ClockSample(offset_s=phone - (t0 + t1) / 2, round_trip_s=t1 - t0)
            if best is None or sample.round_trip_s < best.round_trip_s:
                best = sample
        return best

    def describe(self) -> DeviceInfo:
        """Model, manufacturer and serial from getprop; the measured clock offset."""
        model = self._shell(["getprop", "ro.product.model"]).strip()
        return DeviceInfo(name=self.name, adapter=self.adapter, model=model or (self.profile_model or "?"),
                          serial=self._shell(["getprop", "ro.serialno"]).strip() or self.serial,
                          clock_offset_s=self.clock.offset_s if self.clock else None,
                          extra={"manufacturer": self._shell(["getprop", "ro.product.manufacturer"]).strip(),
                                 "adb_serial": self.serial, "camera_folder": self.camera_folder,
                                 "clock_round_trip_s": self.clock.round_trip_s if self.clock else None})

    def configure(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Camera apps take no settings over ADB: any setting is refused with the reason."""
        if settings:
            raise DeviceConfigError(self.name, "settings cannot be sent to an Android camera app over adb "
                                               f"(got {sorted(settings)}); set them in the app")
        return {}

    # -- shooting ----------------------------------------------------------
    def _listing(self) -> dict[str, _Entry]:
        import adbutils

        if self.device is None:
            raise DeviceError(self.name, "not connected (call connect() first)")
        try:
            entries = self.device.sync.list(self.camera_folder)
        except (adbutils.AdbError, OSError) as err:
            raise DeviceDisconnected(self.name, f"cannot list {self.camera_folder}: {err}") from err
        out = {}
        for e in entries:
            name = posixpath.basename(e.path)
            if name in (".", "..") or name.startswith(".") or not e.mode & 0o100000:
                continue  # hidden files are still being written (MediaStore .pending-)
            out[name] = _Entry(e.size, e.mtime.timestamp() if e.mtime else 0.0)
        return out

    def arm(self) -> None:
        """List the camera folder so only files appearing after this belong to the shot."""
        self._before = self._listing()

    def fire(self) -> FireRecord:
        """Run the profile's trigger commands; the record times the whole sequence."""
        def run() -> None:
            for argv in self.trigger:
                out = self._shell(argv).strip()
                if "not found" in out or "Error" in out or "Exception" in out:
                    raise DeviceError(self.name, f"trigger {shlex.join(argv)!r} failed: {out}")

        record = timed_call(self.name, run, notes=[f"adb: {shlex.join(a)}" for a in self.trigger])
        self.last_fire = record
        return record

    def collect(self, timeout_s: float) -> list[CapturedFile]:
        """Wait for the new raw file (plus the phone's JPEG), pull and verify each."""
        deadline = time.monotonic() + timeout_s
        seen: dict[str, tuple[_Entry, float]] = {}
        while True:
            now = time.monotonic()
            listing = self._listing()
            fresh = {n: e for n, e in listing.items() if n not in self._taken and self._before.get(n) != e}
            stable = []
            for name, entry in fresh.items():
                prev = seen.get(name)
                if prev is None or prev[0] != entry:
                    seen[name] = (entry, now)
                elif entry.size > 0 and now - prev[1] >= self.stable_s:
                    stable.append(name)
            raws = sorted(n for n in stable if posixpath.splitext(n)[1].lower() in self.raw_extensions)
            if raws:
                stems = {posixpath.splitext(n)[0] for n in raws}
                companions = [n for n in fresh if posixpath.splitext(n)[0] in stems
                              and posixpath.splitext(n)[1].lower() in self.companion_extensions]
                # a companion still being written gets the rest of the time to settle
                if all(n in stable for n in companions) or now >= deadline:
                    names = raws + sorted(n for n in companions if n in stable)
                    files = [self._pull(n, listing[n]) for n in names]
                    self._taken.update(names)
                    return files
            if now >= deadline:
                raise CaptureTimeout(self.name, f"no new raw file ({'/'.join(self.raw_extensions)}) in "
                                                f"{self.camera_folder} within {timeout_s:.1f} s of the trigger")
            time.sleep(self.poll_s)

    def phone_sha256(self, path: str) -> str:
        """The phone's own ``sha256sum`` of ``path``."""
        out = self._shell(["sha256sum", path], timeout=60).strip()
        digest = out.split()[0] if out else ""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DeviceError(self.name, f"sha256sum {path} on the phone said {out!r}")
        return digest

    def _pull(self, name: str, entry: _Entry) -> CapturedFile:
        import adbutils

        path = f"{self.camera_folder}/{name}"
        expected = self.phone_sha256(path)
        problems = []
        for _attempt in range(2):
            try:
                data = self.device.sync.read_bytes(path)
            except (adbutils.AdbError, OSError) as err:
                problems.append(f"pull failed: {err}")
                continue
            got = hashlib.sha256(data).hexdigest()
            if len(data) == entry.size and got == expected:
                self._phone_sha[path] = expected
                when = exif.capture_time(exif.read_tags(data))
                source = "exif"
                if when is None:
                    when, source = _dt.datetime.fromtimestamp(entry.mtime, _dt.timezone.utc), "mtime"
                return CapturedFile(name=name, device_path=path, data=data, capture_time=when,
                                    capture_time_source=source)
            problems.append(f"copy has {len(data)} bytes sha256 {got[:12]}..., the phone lists {entry.size} "
                            f"bytes sha256 {expected[:12]}...")
        raise DeviceError(self.name, f"{path}: no verified copy after 2 pulls ({'; '.join(problems)}); "
                                     "the file stays on the phone")

    def after_stored(self, captured: CapturedFile, sha256: str) -> None:
        """Delete the phone's file when the profile says so and the stored copy matches the phone's sha256."""
        if not self.delete_after_copy:
            return
        expected = self._phone_sha.get(captured.device_path)
        if expected is None or expected != sha256:
            raise DeviceError(self.name, f"{captured.device_path}: stored copy not verified against the phone; "
                                         "not deleting it")
        out = self._shell(["rm", captured.device_path]).strip()
        if out:
            raise DeviceError(self.name, f"rm {captured.device_path}: {out}")
