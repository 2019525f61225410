"""The capture session folder: the one place capture output is written.

Layout (see shared/ARCHITECTURE.md)::

    DIR/session.toml                         the rig as configured (written once)
    DIR/manifest.jsonl                       one JSON line per shot, appended last
    DIR/shots/<shot-id>/<device>/<name>      every file exactly as the device named it

Guarantees:

* every file is written to a temporary name in its final folder, fsync'ed,
  read back and hashed, then linked to its final name, which must not exist
  (nothing is ever overwritten: an existing name raises ``SessionError``);
* a manifest line is appended (one ``write`` + ``fsync``) only after every
  file of the shot has been verified on disk, so a killed capture loses no
  completed shot and a listed file is always complete;
* shot ids are consecutive integers (``00001``, ``00002``...); reopening a
  session continues after the largest id found in the manifest *or* in
  ``shots/``, so the folder of a shot killed half-way is never reused: it is
  kept and reported by :func:`check_session` as incomplete;
* a write that fails (full disk, file size limit, permissions) fails the shot
  with the OS reason; the half-written temporary file of that one write is
  removed, every file written before it stays and is listed.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import os
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from tqdm import tqdm

from alignment.session_manifest import FORMAT_VERSION, MANIFEST, FileRecord, ShotRecord, read_manifest
from isp_rig.profiles import tomlw

SESSION_TOML = "session.toml"
SHOTS = "shots"
TMP_PREFIX = ".partial-"
_SHOT_ID = re.compile(r"^\d{5,}$")
_NAME_OK = re.compile(r"^[^/\\\x00]+$")
_CHUNK = 1 << 20


class SessionError(Exception):
    """A session folder problem, naming the path and the reason."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class SessionWriteError(SessionError):
    """Writing a file failed (disk full, file too large, permission...).

    ``errno`` holds the OS error number when the cause was an ``OSError``.
    """

    def __init__(self, path: Path | str, reason: str, err_no: int | None = None) -> None:
        super().__init__(path, reason)
        self.errno = err_no


def utc_now_iso() -> str:
    """The host wall clock now, ISO 8601 with microseconds, UTC."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_name(kind: str, name: str) -> None:
    if not name or name in (".", "..") or not _NAME_OK.match(name) or name.startswith(TMP_PREFIX):
        raise SessionError(name or "<empty>", f"invalid {kind} name {name!r}")


def write_atomic(final: Path, source: bytes | BinaryIO | Path) -> tuple[str, int]:
    """Write ``source`` to ``final`` without ever exposing a partial file.

    The bytes go to a temporary file in the same folder, are fsync'ed, read
    back and hashed, then hard-linked to ``final`` (which fails if ``final``
    exists: nothing is overwritten) and the temporary name is removed.
    Returns (sha256 hex, size). Raises ``SessionError`` if ``final`` exists,
    ``SessionWriteError`` on an OS failure (the temporary file is removed).
    """
    final = Path(final)
    if final.exists() or final.is_symlink():
        raise SessionError(final, "refusing to overwrite an existing file")
    tmp = final.with_name(f"{TMP_PREFIX}{os.getpid()}-{final.name}")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "xb") as out:
            if isinstance(source, (bytes, bytearray, memoryview)):
                view = memoryview(source)
                digest.update(view)
                size = len(view)
                out.write(view)
            else:
                fh: BinaryIO
                opened = isinstance(source, (str, Path))
                fh = open(source, "rb") if opened else source  # type: ignore[arg-type]
                try:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                finally:
                    if opened:
                        fh.close()
            out.flush()
            os.fsync(out.fileno())
        expected = digest.hexdigest()
        actual, actual_size = sha256_file(tmp)
        if actual != expected or actual_size != size:
            raise SessionWriteError(final, f"read-back mismatch: wrote {size} bytes sha256 {expected}, "
                                           f"read {actual_size} bytes sha256 {actual}")
        _publish(tmp, final)
        _fsync_dir(final.parent)
        return expected, size
    except OSError as err:
        _remove_quietly(tmp)
        raise SessionWriteError(final, _os_reason(err), err.errno) from err
    except BaseException:
        _remove_quietly(tmp)
        raise


_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def _publish(tmp: Path, final: Path) -> None:
    """Give ``tmp`` its final name without replacing an existing file.

    A hard link fails atomically when ``final`` exists. File systems without
    hard links (FAT/exFAT cards, some network shares) answer EPERM/ENOTSUP;
    there the temporary file is renamed after checking ``final`` is absent
    (the shot folder belongs to this writer alone, so nothing races it).
    """
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise SessionError(final, "refusing to overwrite an existing file") from None
    except OSError as err:
        if err.errno not in _NO_HARD_LINKS:
            raise
        if final.exists() or final.is_symlink():
            raise SessionError(final, "refusing to overwrite an existing file") from None
        os.rename(tmp, final)
        return
    os.unlink(tmp)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _os_reason(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "disk full (ENOSPC: no space left on device)"
    if err.errno == errno.EFBIG:
        return "file too large for this file system or process limit (EFBIG)"
    if err.errno == errno.EDQUOT:
        return "disk quota exceeded (EDQUOT)"
    return f"{type(err).__name__}: {err.strerror or err}"


class Session:
    """An open session folder. Create or resume with :meth:`open`.

    ``rig`` is the rig configuration (a TOML-serialisable mapping) stored in
    ``session.toml``; resuming with a different rig raises ``SessionError``.
    """

    def __init__(self, root: Path, rig: dict[str, Any], created: str) -> None:
        self.root = Path(root)
        self.rig = rig
        self.created = created
        contents = read_manifest(self.manifest_path)
        self.records: list[ShotRecord] = contents.records
        self.bad_lines = contents.bad_lines
        self._last_index = self._scan_last_index()

    # -- opening -----------------------------------------------------------
    @classmethod
    def open(cls, root: Path | str, rig: Mapping[str, Any] | None = None) -> "Session":
        """Create a new session folder, or resume an existing one.

        A new folder needs ``rig``. An existing one (it has ``session.toml``)
        is resumed; when ``rig`` is given it must equal the stored rig.
        A folder that exists, is not empty and has no ``session.toml`` is refused.
        """
        root = Path(root)
        toml_path = root / SESSION_TOML
        if toml_path.exists():
            stored = read_session_toml(toml_path)
            stored_rig = stored.get("rig", {})
            if rig is not None and _normalise(rig) != _normalise(stored_rig):
                if _holds_no_shot(root):
                    # nothing was captured with the stored rig (a start that failed to connect):
                    # the corrected rig takes its place, no file is lost
                    doc = {"session": stored.get("session", {}), "rig": _normalise(rig)}
                    _replace_file(toml_path, tomlw.dumps(doc).encode("utf-8"))
                    return cls(root, _normalise(rig), stored.get("session", {}).get("created", ""))
                changed = ", ".join(_differences(stored_rig, _normalise(rig))[:6])
                raise SessionError(toml_path, "this session was captured with a different rig configuration "
                                              f"(changed: {changed}); use a new session folder or the same rig")
            return cls(root, stored_rig, stored.get("session", {}).get("created", ""))
        if rig is None:
            raise SessionError(root, "not a session folder (no session.toml) and no rig given to create one")
        if root.exists() and any(root.iterdir()):
            raise SessionError(root, "folder exists, is not empty and is not a session: refusing to write into it")
        root.mkdir(parents=True, exist_ok=True)
        (root / SHOTS).mkdir(exist_ok=True)
        created = utc_now_iso()
        doc = {"session": {"format_version": FORMAT_VERSION, "created": created,
                           "tool": "isp-rig"}, "rig": _normalise(rig)}
        write_atomic(toml_path, tomlw.dumps(doc).encode("utf-8"))
        _fsync_dir(root)
        return cls(root, _normalise(rig), created)

    # -- paths -------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        """``DIR/manifest.jsonl``."""
        return self.root / MANIFEST

    @property
    def shots_dir(self) -> Path:
        """``DIR/shots``."""
        return self.root / SHOTS

    def _scan_last_index(self) -> int:
        last = max((r.index for r in self.records), default=0)
        if self.shots_dir.is_dir():
            for entry in self.shots_dir.iterdir():
                if _SHOT_ID.match(entry.name):
                    last = max(last, int(entry.name))
        return last

    def incomplete_shots(self) -> list[str]:
        """Shot folders that have no manifest line (a capture killed mid-shot)."""
        listed = {r.shot_id for r in self.records}
        if not self.shots_dir.is_dir():
            return []
        return sorted(e.name for e in self.shots_dir.iterdir() if e.is_dir() and e.name not in listed)

    # -- writing -----------------------------------------------------------
    def begin_shot(self, scene: str, settings: Mapping[str, Any] | None = None) -> "ShotWriter":
        """Reserve the next shot id (its folder is created exclusively) and return its writer."""
        self.shots_dir.mkdir(exist_ok=True)
        while True:
            self._last_index += 1
            shot_id = f"{self._last_index:05d}"
            try:
                (self.shots_dir / shot_id).mkdir()
            except FileExistsError:
                continue  # another writer or an old incomplete shot: never reuse
            _fsync_dir(self.shots_dir)
            return ShotWriter(self, shot_id, self._last_index, scene, dict(settings or {}))

    def _append(self, record: ShotRecord) -> None:
        line = (record.to_json() + "\n").encode("utf-8")
        path = self.manifest_path
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # Never glue a new line onto a torn one left by a crash.
            if os.fstat(fd).st_size > 0:
                with open(path, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        line = b"\n" + line
            view = memoryview(line)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError as err:
            raise SessionWriteError(path, "manifest append failed: " + _os_reason(err), err.errno) from err
        finally:
            os.close(fd)
        self.records.append(record)


class ShotWriter:
    """Writes the files of one shot, then its manifest line (:meth:`commit`).

    Files are stored as ``shots/<shot_id>/<device>/<name>``. A failed write is
    recorded in ``missing`` with its reason and fails the shot at commit.
    """

    def __init__(self, session: Session, shot_id: str, index: int, scene: str, settings: dict[str, Any]) -> None:
        self.session = session
        self.shot_id = shot_id
        self.index = index
        self.scene = scene
        self.settings = settings
        self.started_wall = utc_now_iso()
        self.files: list[FileRecord] = []
        self.missing: list[dict[str, Any]] = []
        self.committed: ShotRecord | None = None

    @property
    def folder(self) -> Path:
        """``DIR/shots/<shot_id>``."""
        return self.session.shots_dir / self.shot_id

    def add_file(self, device: str, name: str, source: bytes | BinaryIO | Path, *,
                 device_path: str | None = None, capture_time: str | None = None,
                 capture_time_source: str | None = None) -> FileRecord:
        """Store one file of ``device`` under its original ``name``; returns its record.

        Raises ``SessionError`` for a name that exists already, and
        ``SessionWriteError`` when the OS refuses the write; in both cases the
        failure is also recorded in ``missing`` so :meth:`commit` fails the shot.
        """
        _check_name("device", device)
        _check_name("file", name)
        folder = self.folder / device
        final = folder / name
        try:
            folder.mkdir(exist_ok=True)
            sha, size = write_atomic(final, source)
        except SessionError as err:
            self.missing.append({"device": device, "name": name, "source": device_path, "reason": err.reason})
            raise
        except OSError as err:  # mkdir
            self.missing.append({"device": device, "name": name, "source": device_path, "reason": _os_reason(err)})
            raise SessionWriteError(final, _os_reason(err), err.errno) from err
        record = FileRecord(device=device, name=name, path=final.relative_to(self.session.root).as_posix(),
                            size=size, sha256=sha, source=device_path, capture_time=capture_time,
                            capture_time_source=capture_time_source)
        self.files.append(record)
        return record

    def note_missing(self, device: str, reason: str, name: str | None = None) -> None:
        """Record that ``device`` delivered no file (or not this one) and why."""
        self.missing.append({"device": device, "name": name, "source": None, "reason": reason})

    def verify(self) -> list[str]:
        """Re-hash every stored file; returns the problems found (empty when all match)."""
        problems = []
        for rec in self.files:
            path = self.session.root / rec.path
            try:
                sha, size = sha256_file(path)
            except OSError as err:
                problems.append(f"{rec.path}: unreadable after write ({err.strerror})")
                continue
            if sha != rec.sha256 or size != rec.size:
                problems.append(f"{rec.path}: changed on disk after write")
        return problems

    def commit(self, *, status: str = "ok", reason: str | None = None,
               fired: Mapping[str, Mapping[str, Any]] | None = None,
               skew: Mapping[str, Any] | None = None) -> ShotRecord:
        """Verify the shot's files and append its manifest line (fsync'ed).

        The status becomes 'failed' when any file is missing or fails
        verification, with every reason joined into ``reason``.
        """
        if self.committed is not None:
            raise SessionError(self.folder, "shot already committed")
        problems = self.verify()
        reasons = [reason] if reason else []
        reasons += [f"{m['device']}: {m['reason']}" for m in self.missing if f"{m['device']}: {m['reason']}" not in reasons]
        reasons += problems
        if status == "ok" and (self.missing or problems):
            status = "failed"
        if status not in ("ok", "failed"):
            raise ValueError(f"status must be 'ok' or 'failed', not {status!r}")
        record = ShotRecord(shot_id=self.shot_id, index=self.index, scene=self.scene, status=status,
                            reason="; ".join(r for r in reasons if r) or None,
                            started_wall=self.started_wall, finished_wall=utc_now_iso(),
                            fired={k: dict(v) for k, v in (fired or {}).items()}, skew=dict(skew or {}),
                            files=list(self.files), missing=list(self.missing), settings=self.settings)
        self.session._append(record)
        self.committed = record
        return record


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two plain-data values differ (list items by index)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += _differences(a, b, f"{prefix}[{i}]")
        return out
    return [] if old == new else [prefix or "<root>"]


def _normalise(value: Any) -> Any:
    """A plain-data copy (dicts, lists, str, int, float, bool) for comparison and TOML."""
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# -- checking ----------------------------------------------------------------
@dataclass
class CheckReport:
    """What :func:`check_session` found. ``ok`` is True only when every listed
    file is present with its recorded size and sha256 and the manifest parses."""

    root: str
    shots: int = 0
    shots_failed: int = 0
    files_ok: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[dict[str, Any]] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    incomplete_shots: list[str] = field(default_factory=list)
    bad_manifest_lines: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every listed file intact and every manifest line readable."""
        return not (self.missing or self.corrupt or self.bad_manifest_lines or self.errors)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict including ``ok``."""
        out = asdict(self)
        out["ok"] = self.ok
        return out


def _replace_file(final: Path, data: bytes) -> None:
    """Replace ``final`` whole (temporary file, fsync, rename, folder fsync): the one place
    the session rewrites a file, its ``session.toml`` while it holds no shot.  Raises
    ``SessionWriteError`` (the temporary file removed) on an OS failure."""
    tmp = final.with_name(f"{TMP_PREFIX}{os.getpid()}-{final.name}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as err:
        _remove_quietly(tmp)
        raise SessionWriteError(final, f"cannot be rewritten: {_os_reason(err)}") from err
    _fsync_dir(final.parent)


def read_session_toml(path: Path) -> dict[str, Any]:
    """``session.toml`` as a dict, checked as :meth:`Session.open` and ``capture`` need
    it: readable TOML, a ``[session]`` table of a known ``format_version``, a ``[rig]``
    table whose ``device`` entries (if any) are tables with a ``name``.  Raises :class:`SessionError` naming the file."""
    try:
        doc = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SessionError(path, f"unreadable session.toml: {err}") from err
    head, rig = doc.get("session"), doc.get("rig")
    if not isinstance(head, dict) or not isinstance(rig, dict):
        raise SessionError(path, "session.toml needs a [session] and a [rig] table")
    version = head.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise SessionError(path, f"session format_version {version!r} is not one this isp-rig reads "
                                 f"(1..{FORMAT_VERSION})")
    devices = rig.get("device", [])
    if not isinstance(devices, list) or not all(isinstance(d, dict) and "name" in d for d in devices):
        raise SessionError(path, "rig.device must be a list of [[rig.device]] tables, each with a name")
    return doc


def _holds_no_shot(root: Path) -> bool:
    """No manifest line and nothing under ``shots/``: a session nothing was captured into."""
    manifest = root / MANIFEST
    if manifest.exists() and manifest.stat().st_size > 0:
        return False
    shots = root / SHOTS
    return not (shots.is_dir() and any(shots.iterdir()))


def check_session(root: Path | str, progress: bool = False) -> CheckReport:
    """Verify every file listed in ``manifest.jsonl`` against its sha256 and size.

    Reports missing and corrupt listed files, files under ``shots/`` that no
    manifest line lists (``unlisted``, including leftovers of a killed shot),
    shot folders without a manifest line, and unreadable manifest lines.
    Never modifies the folder. ``progress`` shows a tqdm bar (bytes hashed)
    on a terminal.
    """
    root = Path(root)
    report = CheckReport(root=str(root))
    if not (root / SESSION_TOML).is_file():
        report.errors.append(f"{root}: no {SESSION_TOML}: not a session folder")
        return report
    try:
        read_session_toml(root / SESSION_TOML)
    except SessionError as err:
        report.errors.append(str(err))
    contents = read_manifest(root / MANIFEST)
    report.bad_manifest_lines = [{"line": n, "reason": r} for n, r in contents.bad_lines]
    listed: set[str] = set()
    total = sum(f.size for rec in contents.records for f in rec.files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="check", disable=None if progress else True) as bar:
        for rec in contents.records:
            report.shots += 1
            report.shots_failed += rec.status != "ok"
            for f in rec.files:
                listed.add(f.path)
                bar.update(f.size)
                path = root / f.path
                if not path.is_file():
                    report.missing.append(f.path)
                    continue
                try:
                    sha, size = sha256_file(path)
                except OSError as err:
                    report.corrupt.append({"path": f.path, "reason": f"unreadable: {err.strerror}"})
                    continue
                if size != f.size or sha != f.sha256:
                    report.corrupt.append({"path": f.path, "expected_size": f.size, "size": size,
                                           "expected_sha256": f.sha256, "sha256": sha})
                else:
                    report.files_ok += 1
    shot_ids = {r.shot_id for r in contents.records}
    shots_dir = root / SHOTS
    if shots_dir.is_dir():
        for dirpath, _dirs, names in os.walk(shots_dir):
            for name in names:
                rel = (Path(dirpath) / name).relative_to(root).as_posix()
                if rel not in listed:
                    report.unlisted.append(rel)
        report.incomplete_shots = sorted(e.name for e in shots_dir.iterdir()
                                         if e.is_dir() and e.name not in shot_ids)
    report.unlisted.sort()
    return report
