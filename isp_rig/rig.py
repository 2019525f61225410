"""The rig: fire every device together and write each shot through the session.

Firing (``mode``):

* ``'barrier'``: one thread per device; every thread is armed, then all are
  released by one :class:`threading.Barrier` and call ``fire()`` at once;
* ``'scheduled'``: as 'barrier', but after the release each device waits
  until one common instant minus its own trigger latency (from its profile
  or ``isp-rig calibrate-latency``), so slow and fast devices expose together;
* ``'sequential'``: one device after the other in the calling thread (the
  baseline the benchmark compares against).

Per device and shot the manifest records the host monotonic and wall time
of the trigger, how long the trigger call took, the device's own capture
time (EXIF SubSecTime, sensor timestamp or file time) mapped onto the host
clock where possible, and notes (retries, reopened sessions). ``skew``
holds the spread of the trigger times across devices (``trigger_s``, what
the software adds) and of the capture times (``capture_s``, where at least
two devices report one).
"""

from __future__ import annotations

import datetime as _dt
import statistics
import threading
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from isp_rig.clock import SYSTEM_CLOCK, Clock
from isp_rig.devices.base import CapturedFile, Device, DeviceError, DeviceInfo, FireRecord
from isp_rig.devices.folder import to_host_epoch
from isp_rig.session import Session, SessionError, ShotRecord

MODES = ("barrier", "scheduled", "sequential")
#: capture-time sources precise enough for the capture skew (a camera's file
#: time on its card has 1 s resolution and is left out).
SKEW_SOURCES = ("exif", "sensor", "mtime")


class RigError(Exception):
    """A rig-level problem (no devices, bad mode, a device that cannot connect)."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line


@dataclass
class DeviceShot:
    """What one device did in one shot: its trigger, its files, or the error."""

    device: str
    fire: FireRecord | None = None
    files: list[CapturedFile] = field(default_factory=list)
    error: str | None = None
    error_type: str | None = None
    collect_s: float | None = None


class Rig:
    """Devices fired together.

    Args:
        devices: the devices, each with a unique ``name``.
        settings: device name -> settings for :meth:`Device.configure`.
        collect_timeout_s: how long each device may take to deliver its files.
        mode: 'barrier', 'scheduled' or 'sequential' (see module doc).
        latency_s: device name -> trigger latency in seconds ('scheduled' mode).
        schedule_lead_s: in 'scheduled' mode, the common instant is this long
            after the release plus the largest latency.
        max_skew_s: when set, a shot whose trigger skew exceeds it is failed.
        clock: what the scheduled waits and the collect times run on (the host's by
            default; tests hand in a virtual one).
    """

    def __init__(self, devices: Sequence[Device], *, settings: Mapping[str, Mapping[str, Any]] | None = None,
                 collect_timeout_s: float = 15.0, mode: str = "barrier",
                 latency_s: Mapping[str, float] | None = None, schedule_lead_s: float = 0.01,
                 max_skew_s: float | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        if not devices:
            raise RigError("a rig needs at least one device")
        names = [d.name for d in devices]
        if len(set(names)) != len(names):
            raise RigError(f"device names must be unique: {names}")
        if mode not in MODES:
            raise RigError(f"mode must be one of {MODES}, not {mode!r}")
        self.devices = list(devices)
        self.settings = {k: dict(v) for k, v in (settings or {}).items()}
        self.collect_timeout_s = collect_timeout_s
        self.mode = mode
        self.latency_s = dict(latency_s or {})
        self.schedule_lead_s = schedule_lead_s
        self.max_skew_s = max_skew_s
        self.clock = clock
        self.info: dict[str, DeviceInfo] = {}
        self.applied: dict[str, dict[str, Any]] = {}

    # -- lifecycle ---------------------------------------------------------
    def connect(self) -> dict[str, DeviceInfo]:
        """Connect, describe and configure every device; closes all on any failure."""
        try:
            for device in self.devices:
                device.connect()
                self.applied[device.name] = device.configure(self.settings.get(device.name, {}))
                self.info[device.name] = device.describe()
        except BaseException:
            self.close()
            raise
        return self.info

    def close(self) -> None:
        """Close every device (errors while closing are ignored)."""
        for device in self.devices:
            try:
                device.close()
            except Exception:  # noqa: BLE001  closing must reach every device
                pass

    def __enter__(self) -> "Rig":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- firing ------------------------------------------------------------
    def fire_all(self) -> dict[str, DeviceShot]:
        """Arm every device, fire them (per ``mode``) and collect their files."""
        results = {d.name: DeviceShot(d.name) for d in self.devices}
        for device in self.devices:
            try:
                device.arm()
            except Exception as err:  # noqa: BLE001  recorded per device
                _record_error(results[device.name], err, "arm")
        armed = [d for d in self.devices if results[d.name].error is None]
        if self.mode == "sequential":
            for device in armed:
                self._fire_and_collect(device, results[device.name], 0.0)
            return results
        barrier = threading.Barrier(len(armed)) if armed else None
        max_latency = max((self.latency_s.get(d.name, 0.0) for d in armed), default=0.0)

        def run(device: Device) -> None:
            shot = results[device.name]
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                shot.error, shot.error_type = "rig barrier broken before the trigger", "RigError"
                return
            delay = 0.0
            if self.mode == "scheduled":
                delay = self.schedule_lead_s + max_latency - self.latency_s.get(device.name, 0.0)
            self._fire_and_collect(device, shot, delay)

        threads = [threading.Thread(target=run, args=(d,), name=f"fire-{d.name}", daemon=True) for d in armed]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    def _fire_and_collect(self, device: Device, shot: DeviceShot, delay_s: float) -> None:
        self.clock.sleep(delay_s)
        try:
            shot.fire = device.fire()
        except Exception as err:  # noqa: BLE001  recorded per device
            _record_error(shot, err, "fire")
            return
        start = self.clock.monotonic_ns()
        try:
            shot.files = device.collect(self.collect_timeout_s)
        except Exception as err:  # noqa: BLE001
            _record_error(shot, err, "collect")
        finally:
            shot.collect_s = (self.clock.monotonic_ns() - start) / 1e9
            # a device may have re-fired inside collect (e.g. reopened after StoreFull)
            shot.fire = getattr(device, "last_fire", None) or shot.fire

    # -- shooting into a session ---------------------------------------------
    def shoot(self, session: Session, scene: str) -> tuple[ShotRecord, dict[str, DeviceShot]]:
        """One shot: fire, collect, store every file, append the manifest line.

        A device that fails or delivers nothing fails the shot with its reason;
        every file the other devices delivered is stored and listed anyway.
        """
        writer = session.begin_shot(scene, settings={"mode": self.mode, "devices": self.applied})
        results = self.fire_all()
        for name, shot in results.items():
            if shot.error is not None:
                writer.note_missing(name, shot.error)
                continue
            if not shot.files:
                writer.note_missing(name, "device returned no file")
            for captured in shot.files:
                try:
                    writer.add_file(name, captured.name, captured.source(), device_path=captured.device_path,
                                    capture_time=_iso(captured.capture_time),
                                    capture_time_source=captured.capture_time_source)
                except SessionError:
                    continue  # recorded in writer.missing; keep storing the other files
        fired, skew = self.timing(results)
        reason = None
        if self.max_skew_s is not None and skew.get("trigger_s") is not None and skew["trigger_s"] > self.max_skew_s:
            reason = f"trigger skew {skew['trigger_s'] * 1e3:.1f} ms exceeds max_skew_s {self.max_skew_s * 1e3:.1f} ms"
        record = writer.commit(status="failed" if reason else "ok", reason=reason, fired=fired, skew=skew)
        self._release(record, results)
        return record, results

    def _release(self, record: ShotRecord, results: Mapping[str, DeviceShot]) -> None:
        """Tell each device which of its files are stored (it may then free its own copy)."""
        stored = {(f.device, f.source): f.sha256 for f in record.files}
        for device in self.devices:
            for captured in results[device.name].files:
                sha = stored.get((device.name, captured.device_path))
                if sha is None:
                    continue
                try:
                    device.after_stored(captured, sha)
                except DeviceError as err:
                    results[device.name].error = results[device.name].error or f"after store: {err.reason}"

    def timing(self, results: Mapping[str, DeviceShot]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """Per-device manifest timing and the skew summary of one shot (seconds)."""
        fired: dict[str, dict[str, Any]] = {}
        triggers: dict[str, int] = {}
        captures: dict[str, float] = {}
        for name, shot in results.items():
            entry: dict[str, Any] = shot.fire.to_dict() if shot.fire else {}
            if shot.error:
                entry["error"] = shot.error
                entry["error_type"] = shot.error_type
            if shot.collect_s is not None:
                entry["collect_s"] = round(shot.collect_s, 6)
            if shot.fire:
                triggers[name] = shot.fire.fired_monotonic_ns
            timed = [f for f in shot.files if f.capture_time is not None]
            if timed:
                first = timed[0]
                offset = self.info[name].clock_offset_s if name in self.info else None
                host = to_host_epoch(first.capture_time, offset or 0.0)
                entry["capture_time"] = _iso(first.capture_time)
                entry["capture_time_source"] = first.capture_time_source
                entry["capture_time_host"] = _dt.datetime.fromtimestamp(host, _dt.timezone.utc).isoformat()
                entry["clock_offset_s"] = offset
                if shot.fire:
                    wall = _dt.datetime.fromisoformat(shot.fire.fired_wall).timestamp()
                    entry["capture_minus_trigger_s"] = round(host - wall, 6)
                if first.capture_time_source in SKEW_SOURCES:
                    captures[name] = host
            fired[name] = entry
        skew: dict[str, Any] = {"mode": self.mode}
        if len(triggers) >= 2:
            skew["trigger_s"] = (max(triggers.values()) - min(triggers.values())) / 1e9
            first = min(triggers.values())
            skew["trigger_offsets_s"] = {k: (v - first) / 1e9 for k, v in triggers.items()}
        if len(captures) >= 2:
            skew["capture_s"] = max(captures.values()) - min(captures.values())
            skew["capture_devices"] = sorted(captures)
        return fired, skew


def _record_error(shot: DeviceShot, err: BaseException, stage: str) -> None:
    if isinstance(err, DeviceError):
        shot.error = f"{stage}: {err.reason}"
    else:  # a bug or an unexpected library error: keep its type and message
        shot.error = f"{stage}: unexpected {type(err).__name__}: {err}"
    shot.error_type = type(err).__name__


def _iso(when: _dt.datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def estimate_latency(samples: Sequence[float]) -> dict[str, float]:
    """Summary of trigger-to-capture delays in seconds: median, spread (MAD), n."""
    if not samples:
        raise ValueError("no latency samples")
    median = statistics.median(samples)
    mad = statistics.median(abs(s - median) for s in samples)
    return {"median_s": median, "mad_s": mad, "n": len(samples)}


# -- rig files ----------------------------------------------------------------
RIG_KEYS = {"name", "mode", "collect_timeout_s", "max_skew_s", "schedule_lead_s"}


@dataclass
class RigSpec:
    """A rig file, resolved: rig options and each device's entry merged over its profile."""

    name: str
    options: dict[str, Any]
    devices: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """The plain form stored in ``session.toml`` (the rig as configured)."""
        return {"name": self.name, **self.options, "device": self.devices}

    def build(self) -> Rig:
        """Devices and a :class:`Rig` for this spec (not yet connected)."""
        from isp_rig.devices import build_device

        devices = [build_device(d) for d in self.devices]
        return Rig(devices, settings={d["name"]: d["settings"] for d in self.devices},
                   latency_s={d["name"]: d["latency_s"] for d in self.devices}, **self.options)


def load_rig(path: str | Path) -> RigSpec:
    """Read a rig TOML file: ``[rig]`` options and ``[[device]]`` entries.

    Raises RigError naming the file for unreadable TOML, unknown ``[rig]``
    keys or no devices; device entries raise DeviceConfigError.
    """
    from isp_rig.devices import resolve_entry

    file = Path(path)
    try:
        doc = tomllib.loads(file.read_text("utf-8"))
    except FileNotFoundError:
        raise RigError(f"{file}: rig file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise RigError(f"{file}: not valid TOML: {err}") from err
    rig = dict(doc.get("rig", {}))
    unknown = sorted(set(rig) - RIG_KEYS)
    if unknown:
        raise RigError(f"{file}: unknown [rig] key(s) {unknown}; valid: {sorted(RIG_KEYS)}")
    entries = doc.get("device", [])
    if not entries:
        raise RigError(f"{file}: no [[device]] entries")
    name = str(rig.pop("name", file.stem))
    return RigSpec(name=name, options=rig, devices=[resolve_entry(e) for e in entries])
