"""Capture commands: ``isp-rig capture``, ``session check``, ``calibrate-latency``, ``phone add``.

Exit codes: 0 success; 1 a shot failed, a check found problems, or the rig
could not start (the message names the device and the reason); 2 bad usage.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from isp_rig.devices.base import DeviceError
from isp_rig.profiles import ProfileError, tomlw
from isp_rig.rig import MODES, Rig, RigError, RigSpec, estimate_latency, load_rig
from isp_rig.session import ShotRecord, Session, SessionError, check_session, write_atomic

VIRTUAL = "virtual"


def _virtual_spec(mode: str | None) -> RigSpec:
    return RigSpec(name=VIRTUAL, options={"mode": mode or "barrier", "collect_timeout_s": 5.0},
                   devices=[{"name": "dslr", "kind": "dslr", "adapter": "gphoto",
                             "virtual": "libgphoto2 virtual camera (Nikon DSC D750), simulator scene"},
                            {"name": "phone", "kind": "phone", "adapter": "folder",
                             "virtual": "emulated phone writing the simulator's DNG"}])


def _open_rig(rig_arg: str, scene: str, mode: str | None, workdir: Path) -> tuple[RigSpec, Rig]:
    """The spec (for session.toml) and the rig, for a rig file or the virtual rig."""
    if rig_arg == VIRTUAL:
        from isp_rig.devices.virtual import virtual_devices

        spec = _virtual_spec(mode)
        devices, _emulator = virtual_devices(workdir, scene)
        return spec, Rig(devices, **spec.options)
    spec = load_rig(rig_arg)
    if mode:
        spec.options["mode"] = mode
    return spec, spec.build()


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def shot_line(rec: ShotRecord) -> str:
    """The live line printed per shot: id, scene, status, skew, files."""
    skew = rec.skew.get("trigger_s")
    parts = [rec.shot_id, rec.scene, rec.status.upper(),
             f"skew {skew * 1e3:.1f} ms" if skew is not None else "skew -"]
    if rec.skew.get("capture_s") is not None:
        parts.append(f"capture skew {rec.skew['capture_s'] * 1e3:.1f} ms")
    by_device: dict[str, list[str]] = {}
    for f in rec.files:
        by_device.setdefault(f.device, []).append(f"{f.name} ({_size(f.size)})")
    parts += [f"{d}: {', '.join(v)}" for d, v in by_device.items()]
    line = " | ".join(parts)
    return line + (f" | {rec.reason}" if rec.reason else "")


@click.command()
@click.option("--rig", "rig_arg", required=True, metavar="RIG.toml|virtual",
              help="A rig file, or 'virtual' for libgphoto2's virtual camera plus an emulated phone.")
@click.option("--session", "session_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Session folder: created, or resumed (numbering continues).")
@click.option("--scene", required=True, help="Scene name recorded with every shot.")
@click.option("--shots", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--interval", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds from one shot's start to the next.")
@click.option("--mode", type=click.Choice(MODES), default=None, help="Override the rig's firing mode.")
def capture(rig_arg: str, session_dir: Path, scene: str, shots: int, interval: float, mode: str | None) -> None:
    """Fire every device of the rig together, SHOTS times, into a session folder."""
    with tempfile.TemporaryDirectory(prefix="isp-rig-virtual-") as workdir:
        try:
            spec, rig = _open_rig(rig_arg, scene, mode, Path(workdir))
            session = Session.open(session_dir, spec.to_dict())
        except (RigError, SessionError, DeviceError, ProfileError) as err:
            raise click.ClickException(str(err)) from err
        for shot_id in session.incomplete_shots():
            click.echo(f"note: shot {shot_id} has no manifest line (an interrupted capture); its files are "
                       f"kept and not listed", err=True)
        failed = 0
        try:
            info = rig.connect()
        except (DeviceError, RigError) as err:
            raise click.ClickException(str(err)) from err
        try:
            for name, dev in info.items():
                click.echo(f"{name}: {dev.adapter} {dev.model}"
                           + (f" serial {dev.serial}" if dev.serial else "")
                           + (f" clock {dev.clock_offset_s:+.1f} s" if dev.clock_offset_s is not None else ""))
            for i in range(shots):
                start = time.monotonic()
                record, _ = rig.shoot(session, scene)
                failed += record.status != "ok"
                click.echo(shot_line(record))
                if i + 1 < shots:
                    time.sleep(max(0.0, interval - (time.monotonic() - start)))
        except SessionError as err:
            raise click.ClickException(f"session write failed, stopping: {err}") from err
        finally:
            rig.close()
    click.echo(f"{shots - failed}/{shots} shots ok in {session_dir}")
    if failed:
        sys.exit(1)


@click.group()
def session() -> None:
    """Inspect capture session folders."""


@session.command("check")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def session_check(directory: Path, as_json: bool) -> None:
    """Verify every listed file against its sha256; exit 0 only when all are intact."""
    report = check_session(directory, progress=True)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        click.echo(f"{directory}: {report.shots} shots ({report.shots_failed} failed), "
                   f"{report.files_ok} files intact")
        for path in report.missing:
            click.echo(f"MISSING   {path}")
        for item in report.corrupt:
            click.echo(f"CORRUPT   {item['path']}" + (f" ({item['reason']})" if "reason" in item else
                                                      f" (size {item['size']} != {item['expected_size']} "
                                                      "or sha256 differs)"))
        for line in report.bad_manifest_lines:
            click.echo(f"MANIFEST  line {line['line']}: {line['reason']}")
        for shot_id in report.incomplete_shots:
            click.echo(f"INCOMPLETE shot {shot_id} (no manifest line; files kept)")
        for path in report.unlisted:
            click.echo(f"UNLISTED  {path}")
        for err in report.errors:
            click.echo(f"ERROR     {err}")
        click.echo("OK" if report.ok else "PROBLEMS FOUND")
    sys.exit(0 if report.ok else 1)


@click.command("calibrate-latency")
@click.option("--rig", "rig_arg", required=True, metavar="RIG.toml|virtual")
@click.option("--shots", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--scene", default="calibration", show_default=True)
@click.option("--write/--no-write", default=True, show_default=True,
              help="Write latency_s into the rig file (the old file is kept as a .bak copy).")
def calibrate_latency(rig_arg: str, shots: int, scene: str, write: bool) -> None:
    """Estimate each device's trigger latency from repeated shots.

    A device whose files carry a precise capture time (EXIF SubSecTime, a
    sensor timestamp, the phone file's time) is measured from trigger to
    capture on the host clock (its clock offset removed); one without is
    measured by how long its trigger call takes, and the table says so.
    Files stay on the devices; nothing is stored.
    """
    with tempfile.TemporaryDirectory(prefix="isp-rig-virtual-") as workdir:
        try:
            spec, rig = _open_rig(rig_arg, scene, "barrier", Path(workdir))
            rig.connect()
        except (RigError, DeviceError, ProfileError) as err:
            raise click.ClickException(str(err)) from err
        samples: dict[str, dict[str, list[float]]] = {d.name: {"capture": [], "call": []} for d in rig.devices}
        try:
            for _ in range(shots):
                results = rig.fire_all()
                fired, _skew = rig.timing(results)
                for name, entry in fired.items():
                    if "error" in entry:
                        click.echo(f"{name}: {entry['error']}", err=True)
                        continue
                    if entry.get("capture_time_source") in ("exif", "sensor", "mtime"):
                        samples[name]["capture"].append(entry["capture_minus_trigger_s"])
                    samples[name]["call"].append(entry["trigger_call_s"])
        finally:
            rig.close()
    latencies: dict[str, float] = {}
    for name, got in samples.items():
        kind = "capture" if got["capture"] else "call"
        if not got[kind]:
            click.echo(f"{name}: no successful shot, no estimate")
            continue
        est = estimate_latency(got[kind])
        latencies[name] = round(est["median_s"], 4)
        how = "trigger -> capture time" if kind == "capture" else "trigger call duration (no precise capture time)"
        click.echo(f"{name}: latency {est['median_s'] * 1e3:.1f} ms ± {est['mad_s'] * 1e3:.1f} ms "
                   f"(median ± MAD of {est['n']}, {how})")
    if write and rig_arg != VIRTUAL and latencies:
        import tomlkit  # edits the user's file in place: comments, order and layout are kept

        path = Path(rig_arg)
        doc = tomlkit.parse(path.read_text("utf-8"))
        for entry in doc.get("device", []):
            if entry.get("name") in latencies:
                entry["latency_s"] = latencies[entry["name"]]
        stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        write_atomic(path.with_name(f"{path.name}.{stamp}.bak"), path.read_bytes())
        tmp = path.with_name(f".{path.name}.new")
        tmp.write_text(tomlkit.dumps(doc), "utf-8")
        os.replace(tmp, path)
        click.echo(f"wrote latency_s into {path} (comments kept; previous version kept beside it as .bak)")


PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@click.group()
def phone() -> None:
    """Phone profiles."""


@phone.command("add")
@click.argument("name")
@click.option("--from-shot", "shot", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A real raw file (DNG...) from the phone.")
@click.option("--out", "out_dir", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for NAME.toml (load it in a rig file with profile = \"path/NAME.toml\").")
def phone_add(name: str, shot: Path, out_dir: Path) -> None:
    """Write a phone profile NAME.toml with the facts of a real raw file of that phone.

    NAME is a plain file name (letters, digits, '.', '_', '-'); an existing NAME.toml
    is never overwritten."""
    # Raw decoding has one home, alignment.rawio; only this command needs it.
    from alignment import rawio
    from isp_rig.session import sha256_file

    if not PROFILE_NAME.fullmatch(name):
        raise click.BadParameter(f"{name!r} is not a plain file name (letters, digits, '.', '_', '-'; "
                                 "no folders): the profile is written as --out/NAME.toml", param_hint="NAME")

    try:
        raw = rawio.read_raw(shot)
    except rawio.ImageReadError as err:
        raise click.ClickException(str(err)) from err
    height, width = raw.mosaic.shape
    exif = raw.exif
    facts: dict[str, Any] = {
        "cfa": raw.cfa, "width": int(width), "height": int(height),
        "black_levels": [float(b) for b in raw.black_levels], "white_level": float(raw.white_level),
        "bits": int(math.ceil(math.log2(raw.white_level + 1))),
        "focal_length_mm": exif.focal_length_mm, "focal_length_35mm": exif.focal_length_35mm,
        "from_file": shot.name, "from_file_sha256": sha256_file(shot)[0],
    }
    doc = {"profile": {"name": name, "kind": "phone", "adapter": "folder", "make": exif.make or "",
                       "model": exif.model or name},
           "folder": {"raw_extensions": [shot.suffix.lower()], "companion_extensions": [".jpg", ".jpeg", ".heic"],
                      "tolerance_s": 2.0, "stable_s": 0.5},
           "raw": facts, "latency": {"trigger_s": 0.0}}
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.toml"
    try:
        write_atomic(target, tomlw.dumps(doc).encode("utf-8"))
    except SessionError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {target}: {exif.make or 'no Make tag'} {exif.model or '(no Model tag)'}, {width}x{height} {raw.cfa}, "
               f"white {raw.white_level:g}, black {facts['black_levels']}")
