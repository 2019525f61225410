"""The watched-folder adapter: a phone fired by hand or by a Bluetooth remote.

The phone writes its raw file (and, with RAW+JPEG, its own JPEG) into a
folder this host can read: a synced cloud folder, an MTP/SMB mount, an
``adb`` mirror. For each shot the adapter lists the folder before the
trigger (:meth:`arm`), then waits for a new raw file whose size has stopped
changing, and pairs it with the shot when its capture time lies within
``tolerance_s`` of the rig's trigger (host clock). Files are copied into the
session, never moved or deleted: the folder stays as the phone left it.

Capture time of a file: its EXIF DateTimeOriginal + SubSecTimeOriginal when
present (naive EXIF times are read as host local time), else its mtime;
``clock_offset_s`` (phone clock minus host clock) is subtracted either way.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from alignment import exif
from isp_rig.devices.base import (CaptureTimeout, CapturedFile, Device, DeviceConfigError, DeviceError, DeviceInfo,
                                  DeviceNotFound, FireRecord, timed_call)

RAW_EXTENSIONS = (".dng", ".nef", ".cr2", ".cr3", ".arw", ".raf", ".orf", ".rw2", ".srw")
COMPANION_EXTENSIONS = (".jpg", ".jpeg", ".heic")


@dataclass
class _Seen:
    size: int
    mtime_ns: int


def to_host_epoch(when: _dt.datetime, clock_offset_s: float = 0.0) -> float:
    """A device capture time as host epoch seconds.

    Aware datetimes are exact; naive ones are read as host local time. The
    device clock offset (device minus host, seconds) is removed.
    """
    return when.timestamp() - clock_offset_s


class WatchedFolder(Device):
    """A phone whose files appear in a folder.

    Args:
        name: device name in the rig.
        folder: the folder to watch (searched recursively when ``recursive``).
        model: the phone model, for describe() (from the profile).
        raw_extensions / companion_extensions: lowercase suffixes of the raw
            file and of the phone's own image written beside it (same stem).
        tolerance_s: a new raw file pairs with the shot when its capture time
            is within this many seconds of the trigger.
        clock_offset_s: phone clock minus host clock, seconds (0 for a phone
            on NTP; measure it once for one that is not).
        stable_s: a file must keep its size this long before it is read
            (a sync client may still be writing it).
        poll_s: folder listing interval.
        trigger: how to fire the phone from the host, or None when it is
            fired by hand / by a remote: an argv list run without a shell
            (a Bluetooth-remote tool, ``adb shell input keyevent 27``), or a
            callable taking no arguments.
    """

    adapter = "folder"

    def __init__(self, name: str, folder: Path | str, *, model: str = "unknown phone",
                 raw_extensions: Sequence[str] = RAW_EXTENSIONS,
                 companion_extensions: Sequence[str] = COMPANION_EXTENSIONS, tolerance_s: float = 2.0,
                 clock_offset_s: float = 0.0, stable_s: float = 0.2, poll_s: float = 0.05,
                 recursive: bool = True, trigger: Sequence[str] | Callable[[], Any] | None = None,
                 trigger_timeout_s: float = 10.0) -> None:
        super().__init__(name)
        self.trigger = trigger
        self.trigger_timeout_s = trigger_timeout_s
        self.folder = Path(folder)
        self.model = model
        self.raw_extensions = tuple(e.lower() for e in raw_extensions)
        self.companion_extensions = tuple(e.lower() for e in companion_extensions)
        self.tolerance_s = tolerance_s
        self.clock_offset_s = clock_offset_s
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.recursive = recursive
        self.last_fire: FireRecord | None = None
        self.unpaired: list[str] = []
        self._before: dict[Path, _Seen] = {}
        self._consumed: set[Path] = set()
        self._connected = False

    def connect(self) -> None:
        """Check the folder is there and readable."""
        if not self.folder.is_dir():
            raise DeviceNotFound(self.name, f"watched folder {self.folder} does not exist")
        if not os.access(self.folder, os.R_OK | os.X_OK):
            raise DeviceNotFound(self.name, f"watched folder {self.folder} is not readable")
        self._consumed = set(self._listing())  # files already there never belong to a shot
        self._connected = True

    def describe(self) -> DeviceInfo:
        """The configured model and clock offset (a folder cannot report either)."""
        return DeviceInfo(name=self.name, adapter=self.adapter, model=self.model, serial=None,
                          clock_offset_s=self.clock_offset_s,
                          extra={"folder": str(self.folder), "tolerance_s": self.tolerance_s,
                                 "raw_extensions": list(self.raw_extensions)})

    def configure(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """A watched folder cannot set exposure: any setting is refused with the reason."""
        if settings:
            raise DeviceConfigError(self.name, "a watched-folder phone has no remote settings "
                                               f"(got {sorted(settings)}); set them in the phone's camera app")
        return {}

    def _listing(self) -> dict[Path, _Seen]:
        out: dict[Path, _Seen] = {}
        walker = os.walk(self.folder) if self.recursive else [(str(self.folder), [], os.listdir(self.folder))]
        for dirpath, _dirs, names in walker:
            for n in names:
                path = Path(dirpath) / n
                try:
                    st = path.stat()
                except OSError:
                    continue  # vanished between listing and stat
                if path.is_file():
                    out[path] = _Seen(st.st_size, st.st_mtime_ns)
        return out

    def arm(self) -> None:
        """List the folder, so only files that appear after this belong to the shot."""
        if not self._connected:
            raise DeviceNotFound(self.name, "not connected (call connect() first)")
        self._before = self._listing()

    def fire(self) -> FireRecord:
        """Run the trigger (when there is one) and record the host time of the shot."""
        if self.trigger is None:
            record = timed_call(self.name, lambda: None,
                                notes=["watched folder: the phone is fired by hand or remote"])
        elif callable(self.trigger):
            record = timed_call(self.name, self.trigger)
        else:
            argv = list(self.trigger)
            try:
                record = timed_call(self.name, lambda: subprocess.run(
                    argv, check=True, capture_output=True, timeout=self.trigger_timeout_s))
            except (OSError, subprocess.SubprocessError) as err:
                detail = getattr(err, "stderr", b"") or b""
                raise DeviceError(self.name, f"trigger command {argv} failed: {err} "
                                             f"{detail.decode(errors='replace').strip()}") from err
        self.last_fire = record
        return record

    def capture_time(self, path: Path) -> tuple[_dt.datetime, str]:
        """(capture time on the device clock, 'exif' or 'mtime') of a file."""
        when = exif.capture_time(exif.read_tags(path))
        if when is not None:
            return when, "exif"
        return _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc), "mtime"

    def collect(self, timeout_s: float) -> list[CapturedFile]:
        """Wait for the new raw file of this shot (and its companion JPEG); copy nothing yet.

        Returns files pointing at the folder (``local_path``): the session
        copies them. Raises CaptureTimeout when none arrives in time; new raw
        files outside the time tolerance stay in the folder and are listed in
        ``unpaired`` and in the error.
        """
        if self.last_fire is None:
            raise CaptureTimeout(self.name, "collect() before fire()")
        reference = _dt.datetime.fromisoformat(self.last_fire.fired_wall).timestamp()
        deadline = time.monotonic() + timeout_s
        sizes: dict[Path, tuple[int, float]] = {}
        rejected: dict[Path, float] = {}
        while True:
            now = time.monotonic()
            listing = self._listing()
            candidates = []
            for path, seen in listing.items():
                if path in self._consumed or path.suffix.lower() not in self.raw_extensions:
                    continue
                if self._before.get(path) == seen:
                    continue
                if not self._stable(path, seen, sizes, now):
                    continue
                when, source = self.capture_time(path)
                delta = to_host_epoch(when, self.clock_offset_s) - reference
                if abs(delta) <= self.tolerance_s:
                    candidates.append((abs(delta), path, when, source))
                else:
                    rejected[path] = delta
            if candidates:
                _, raw, when, source = min(candidates, key=lambda c: c[0])
                files = [self._captured(raw, when, source)]
                for companion in self._companions(raw, listing, sizes):
                    files.append(self._captured(companion, *self.capture_time(companion)))
                self._consumed.update(Path(f.device_path) for f in files)
                return files
            if now >= deadline:
                self.unpaired = sorted(str(p) for p in rejected)
                extra = ""
                if rejected:
                    extra = "; new raw file(s) outside the ±%.1f s tolerance left in place: %s" % (
                        self.tolerance_s, ", ".join(f"{p.name} ({d:+.1f} s)" for p, d in sorted(rejected.items())))
                raise CaptureTimeout(self.name, f"no new raw file ({'/'.join(self.raw_extensions)}) in "
                                                f"{self.folder} within {timeout_s:.1f} s{extra}")
            time.sleep(self.poll_s)

    def _stable(self, path: Path, seen: _Seen, sizes: dict[Path, tuple[int, float]], now: float) -> bool:
        first = sizes.get(path)
        if first is None or first[0] != seen.size:
            sizes[path] = (seen.size, now)
            return self.stable_s <= 0 and seen.size > 0
        return seen.size > 0 and now - first[1] >= self.stable_s

    def _companions(self, raw: Path, listing: Mapping[Path, _Seen],
                    sizes: dict[Path, tuple[int, float]]) -> list[Path]:
        """Companion images of ``raw`` (same folder and stem) that are complete now or within 2*stable_s."""
        wanted = [p for p in listing if p.parent == raw.parent and p.stem == raw.stem
                  and p.suffix.lower() in self.companion_extensions and p not in self._consumed]
        out = []
        for path in wanted:
            end = time.monotonic() + 2 * self.stable_s + self.poll_s
            while time.monotonic() <= end:
                try:
                    seen = _Seen(path.stat().st_size, path.stat().st_mtime_ns)
                except OSError:
                    break
                if self._stable(path, seen, sizes, time.monotonic()):
                    out.append(path)
                    break
                time.sleep(self.poll_s)
        return out

    def _captured(self, path: Path, when: _dt.datetime, source: str) -> CapturedFile:
        return CapturedFile(name=path.name, device_path=str(path), local_path=path,
                            capture_time=when, capture_time_source=source)

    def close(self) -> None:
        """Nothing to release."""
        self._connected = False
