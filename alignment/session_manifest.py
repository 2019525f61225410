"""The capture session's manifest: its records and its one reader.

``DIR/manifest.jsonl`` holds one JSON line per shot (:class:`ShotRecord`, with a
:class:`FileRecord` per stored file), appended by :mod:`isp_rig.session` only after
every file of the shot is verified on disk.  This module is the format's one
home: the session writes and reads it through these classes, and the batch
aligner (:func:`alignment.batch.pairs_from_session`) reads a session with
:func:`read_manifest`.  It imports nothing but the standard library, so the
capture path can use it without the alignment stack.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

#: the session folder format this isp-rig writes (session.toml and manifest lines)
FORMAT_VERSION = 1
MANIFEST = "manifest.jsonl"


@dataclass
class FileRecord:
    """One stored file of a shot.

    ``path`` is relative to the session folder, POSIX separators.
    ``size`` in bytes, ``sha256`` lowercase hex. ``capture_time`` is the
    device's own capture time (ISO 8601, device clock) where known and
    ``capture_time_source`` says where it came from ('exif', 'sensor',
    'mtime', ...). ``source`` is where the device held the file.
    """

    device: str
    name: str
    path: str
    size: int
    sha256: str
    source: str | None = None
    capture_time: str | None = None
    capture_time_source: str | None = None


@dataclass
class ShotRecord:
    """One manifest line: everything known about one shot."""

    shot_id: str
    index: int
    scene: str
    status: str  # 'ok' | 'failed'
    reason: str | None
    started_wall: str  # ISO 8601 UTC, host clock
    finished_wall: str
    fired: dict[str, dict[str, Any]] = field(default_factory=dict)
    skew: dict[str, Any] = field(default_factory=dict)
    files: list[FileRecord] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """One line of JSON (no newline), keys in a stable order."""
        return json.dumps(asdict(self), sort_keys=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ShotRecord":
        """Build from a parsed manifest line; raises KeyError/TypeError on a malformed one."""
        values = dict(data)
        values["files"] = [FileRecord(**f) for f in values.get("files", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class ManifestContents:
    """A parsed manifest: the records and the lines that could not be read."""

    records: list[ShotRecord]
    bad_lines: list[tuple[int, str]]  # (1-based line number, reason)


def read_manifest(path: Path) -> ManifestContents:
    """Parse ``manifest.jsonl``; a torn or invalid line is reported, not fatal."""
    records: list[ShotRecord] = []
    bad: list[tuple[int, str]] = []
    if not path.exists():
        return ManifestContents(records, bad)
    with open(path, "rb") as fh:
        raw = fh.read()
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(ShotRecord.from_dict(json.loads(line.decode("utf-8"))))
        except (ValueError, KeyError, TypeError) as err:
            torn = number == len(lines) and not raw.endswith(b"\n")
            bad.append((number, ("torn last line (no newline): " if torn else "") + f"{type(err).__name__}: {err}"))
    return ManifestContents(records, bad)
