"""Atomic, checked file writes: the one helper every writer of the alignment and
learning stages (and the simulator and demo) uses.

A file is written under a temporary name in its own folder (``.<name>.<pid>.tmp``),
flushed and fsync'ed, then renamed over its final name, and the folder is
fsync'ed: a reader sees the old file or the whole new one, never a part, and a
process killed mid-write leaves at most a hidden temporary file.  Every failure
(a full disk, a refused permission, an image the encoder cannot write) removes the
temporary file and raises :class:`WriteError`, whose message names the path and
the reason ("disk full" for ENOSPC / EDQUOT).

The capture session (``isp_rig.session.write_atomic``) keeps its own stricter
writer: it never replaces a file, and the capture code imports neither stage.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np


class WriteError(OSError):
    """A file could not be written; ``str(err)`` is ``"<path>: <reason>"``.  An ``OSError``
    (``errno``, ``filename``, ``strerror`` = the reason), so code that handles write
    failures as OS errors handles it too."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line

    def __init__(self, path: Path | str, reason: str, code: int = errno.EIO) -> None:
        super().__init__(code, reason, str(path))
        self.path, self.reason = Path(path), reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


#: the name a writer here gives its temporary file: ``.<name>.<pid>.tmp``
TEMPORARY_NAME = re.compile(r"^\..+\.\d+\.tmp$")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of this module's temporary names (left by a killed
    writer): folder checks count it as the writer's own, not as a user's file."""
    return bool(TEMPORARY_NAME.match(name))


def foreign_entries(folder: Path, own: Callable[[str], bool]) -> list[str]:
    """Sorted names of the entries of ``folder`` that a writer did not leave there: neither
    ``own(name)`` nor one of this module's temporary names ([] when ``folder`` is no folder)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not own(p.name) and not is_temporary(p.name))


def some_names(names: list[str], most: int = 3) -> str:
    """The first ``most`` names, comma-separated, with " ..." when there are more."""
    return ", ".join(names[:most]) + (" ..." if len(names) > most else "")


def _reason(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    return err.strerror or str(err)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a platform or file system without directory handles
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: Path | str, data: bytes | Callable[[BinaryIO], Any], sync: bool = True) -> Path:
    """Write ``data`` (bytes, or a function that writes into a binary file object) to
    ``path`` atomically, creating its folder; returns the path.  ``sync=False`` skips
    the two fsyncs (still whole or absent; for many small files whose completeness a
    later synced file records, e.g. patch exports).

    Raises :class:`WriteError` naming ``path`` (the temporary file is removed)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, _reason(err), err.errno or errno.EIO) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_dir(path.parent)
    return path


def write_text(path: Path | str, text: str) -> Path:
    """UTF-8 text, atomically (see :func:`write_bytes`)."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any, indent: int | None = 1) -> Path:
    """Strict JSON (no NaN: raises ``ValueError``), atomically."""
    return write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def write_image(path: Path | str, img: np.ndarray, sync: bool = True) -> Path:
    """An image in the format its suffix names (OpenCV: BGR channel order, uint8 or
    uint16), encoded in memory and checked, then written atomically (``sync``: see
    :func:`write_bytes`)."""
    import cv2

    path = Path(path)
    try:
        ok, buf = cv2.imencode(path.suffix or ".png", img)
    except cv2.error as err:
        raise WriteError(path, f"cannot encode the image ({err.msg.strip() if hasattr(err, 'msg') else err})") from None
    if not ok or buf is None or buf.size == 0:
        raise WriteError(path, "cannot encode the image")
    return write_bytes(path, buf.tobytes(), sync=sync)


def write_npy(path: Path | str, array: np.ndarray) -> Path:
    """A ``.npy`` array, atomically."""
    return write_bytes(path, lambda fh: np.save(fh, array))


def write_figure(path: Path | str, figure: Any, **savefig: Any) -> Path:
    """A matplotlib figure, rendered in memory then written atomically."""
    path = Path(path)
    buf = io.BytesIO()
    figure.savefig(buf, format=path.suffix.lstrip(".") or "png", **savefig)
    return write_bytes(path, buf.getvalue())
