"""The one interface every capture device implements, and its typed errors.

A device's life in a capture::

    dev.connect()                    # open the session with the device (once)
    info = dev.describe()            # model, serial, clock offset
    dev.configure({"iso": "100"})    # exposure and format settings, by name
    for each shot:
        dev.arm()                    # get ready: e.g. list the files already there
        fired = dev.fire()           # trigger now; returns the host times of the trigger
        files = dev.collect(timeout) # wait for and fetch the files this shot made
    dev.close()

``fire`` and ``collect`` are separate so the rig can release every device's
trigger at one instant (threads behind a barrier) before any slow download.

Times: ``monotonic_ns`` values come from the host clock (:mod:`isp_rig.clock`,
:func:`time.monotonic_ns` unless a test injects another; comparable within one
process only); wall times are host UTC. A device's own
capture time (EXIF, sensor timestamp) is on the device clock, and
``DeviceInfo.clock_offset_s`` (device clock minus host clock, seconds) maps it
onto the host timeline when the device reports its clock.
"""

from __future__ import annotations

import abc
import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from isp_rig.clock import SYSTEM_CLOCK, Clock


class DeviceError(Exception):
    """A device failed; ``device`` names it and ``reason`` says why."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(f"{device}: {reason}")
        self.device = device
        self.reason = reason


class DeviceNotFound(DeviceError):
    """No device matched the model / port / folder asked for."""


class DeviceConfigError(DeviceError):
    """A setting has no such name or no such value; ``choices`` lists the valid ones."""

    def __init__(self, device: str, reason: str, choices: Sequence[str] = ()) -> None:
        super().__init__(device, reason)
        self.choices = list(choices)


class DeviceBusy(DeviceError):
    """The device stayed busy through every retry."""


class DeviceDisconnected(DeviceError):
    """The device went away and could not be reopened."""


class CaptureTimeout(DeviceError):
    """The device was fired but delivered no file in time."""


@dataclass
class DeviceInfo:
    """What a connected device says about itself.

    ``clock_offset_s``: device clock minus host wall clock in seconds, None
    when the device does not report its clock. ``extra``: adapter facts
    (port, firmware, available settings...).
    """

    name: str
    adapter: str
    model: str
    serial: str | None = None
    clock_offset_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClockSample:
    """One reading of a device clock: offset (device - host) and the round trip, seconds."""

    offset_s: float
    round_trip_s: float


@dataclass
class FireRecord:
    """Host times of one trigger.

    ``fired_monotonic_ns`` / ``fired_wall``: just before the trigger call
    (host monotonic ns, host UTC ISO 8601); ``returned_monotonic_ns``: when
    the trigger call returned. ``attempts``: trigger calls made (retries
    after a busy or reopened device count). ``notes``: what went wrong on
    the way, for the manifest.
    """

    device: str
    fired_monotonic_ns: int
    fired_wall: str
    returned_monotonic_ns: int
    attempts: int = 1
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The manifest form."""
        return {"fired_monotonic_ns": self.fired_monotonic_ns, "fired_wall": self.fired_wall,
                "returned_monotonic_ns": self.returned_monotonic_ns,
                "trigger_call_s": (self.returned_monotonic_ns - self.fired_monotonic_ns) / 1e9,
                "attempts": self.attempts, "notes": list(self.notes)}


@dataclass
class CapturedFile:
    """One file a device produced for a shot.

    Exactly one of ``data`` (bytes downloaded into memory) and ``local_path``
    (a file on the host that is copied, never moved) is set. ``name`` is the
    device's original file name; ``device_path`` where the device holds it.
    ``capture_time``: the device's own capture time (device clock, naive or
    aware datetime) and ``capture_time_source`` ('exif', 'sensor', 'mtime').
    """

    name: str
    device_path: str
    data: bytes | None = None
    local_path: Path | None = None
    capture_time: _dt.datetime | None = None
    capture_time_source: str | None = None

    def source(self) -> bytes | Path:
        """What :meth:`isp_rig.session.ShotWriter.add_file` should read."""
        if self.data is not None:
            return self.data
        if self.local_path is None:
            raise ValueError(f"{self.name}: captured file has neither data nor a local path")
        return self.local_path


def wall_now() -> str:
    """Host UTC now, ISO 8601 with microseconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def timed_call(device: str, call, attempts: int = 1, notes: Sequence[str] = (),
               clock: Clock = SYSTEM_CLOCK) -> FireRecord:
    """Run ``call()`` and return the host times around it (``clock``) as a FireRecord."""
    wall = wall_now()
    start = clock.monotonic_ns()
    call()
    end = clock.monotonic_ns()
    return FireRecord(device, start, wall, end, attempts, list(notes))


class Device(abc.ABC):
    """One capture device. Subclasses implement the abstract methods.

    ``name`` is the device's name in the rig (the folder name in a shot).
    Methods raise :class:`DeviceError` subclasses, never bare library errors.
    """

    adapter: str = "base"

    def __init__(self, name: str) -> None:
        self.name = name

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the device; raises DeviceNotFound when it is not there."""

    @abc.abstractmethod
    def describe(self) -> DeviceInfo:
        """Model, serial and clock of the connected device."""

    @abc.abstractmethod
    def configure(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Apply settings by name; returns the values now in effect.

        Raises DeviceConfigError naming the valid names or choices.
        """

    @abc.abstractmethod
    def arm(self) -> None:
        """Prepare for the next shot (called before the rig's barrier)."""

    @abc.abstractmethod
    def fire(self) -> FireRecord:
        """Trigger the capture now; returns the host times of the trigger."""

    @abc.abstractmethod
    def collect(self, timeout_s: float) -> list[CapturedFile]:
        """Wait up to ``timeout_s`` seconds for this shot's files and fetch them.

        Raises CaptureTimeout when nothing arrived.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device; safe to call twice."""

    def after_stored(self, captured: CapturedFile, sha256: str) -> None:
        """Called once the file is stored in the session and its shot committed.

        ``sha256`` is the stored copy's hash. Adapters that may delete the
        device's copy (when their profile says so) do it here, and only when
        it matches what the device reported; the default keeps everything.
        """

    def __enter__(self) -> "Device":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
