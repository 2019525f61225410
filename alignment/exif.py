"""EXIF of any file, and its capture time: the one home of both.

:func:`read_tags` gives exifread's tags of a file or of bytes in memory (a
download not yet stored); :func:`capture_time` reads DateTimeOriginal with
SubSecTimeOriginal and, where the file records it, OffsetTimeOriginal.  The raw
reader (:func:`alignment.rawio.read_exif`) and the capture adapters (a device's
own capture time of a file it delivered) both read through here.  Imports only
the standard library and exifread, so the capture path stays light.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import os
from typing import Union

import exifread

#: (date, sub-second, UTC offset) tag triples, tried in order
_TIME_TAGS = (("EXIF DateTimeOriginal", "EXIF SubSecTimeOriginal", "EXIF OffsetTimeOriginal"),
              # DNG writers may put the EXIF date tags straight into IFD0
              ("Image DateTimeOriginal", "Image SubSecTimeOriginal", "Image OffsetTimeOriginal"),
              ("Image DateTime", "EXIF SubSecTime", "EXIF OffsetTime"))


def read_tags(source: Union[bytes, bytearray, memoryview, str, os.PathLike]) -> dict:
    """exifread's tags (name -> tag) of a file path or of a file's bytes; {} when it has
    no readable EXIF (exifread raises many kinds on damaged or foreign files)."""
    logging.getLogger("exifread").setLevel(logging.ERROR)  # "no EXIF in PNG" is not news
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return dict(exifread.process_file(io.BytesIO(bytes(source)), details=False))
        with open(source, "rb") as fh:
            return dict(exifread.process_file(fh, details=False))
    except Exception:  # noqa: BLE001  EXIF is optional: a file without it has no capture time
        return {}


def text(value) -> str | None:
    """An exifread tag (or any value) as stripped text, None when empty."""
    if value is None:
        return None
    s = str(value.printable if hasattr(value, "printable") else value).strip().strip("\x00").strip()
    return s or None


def capture_time(tags: dict) -> _dt.datetime | None:
    """The capture time recorded in ``tags`` (see :func:`read_tags`).

    DateTimeOriginal (else the IFD0 copy a DNG writer may use, else DateTime) with
    the microseconds of its sub-second tag; an aware datetime when the file records
    its UTC offset (OffsetTimeOriginal, "+HH:MM"), else naive on the camera's clock.
    None when no date tag parses.
    """
    for date_tag, sub_tag, offset_tag in _TIME_TAGS:
        stamp = text(tags.get(date_tag))
        if not stamp:
            continue
        try:
            when = _dt.datetime.strptime(stamp[:19], "%Y:%m:%d %H:%M:%S")
        except ValueError:
            continue
        digits = "".join(ch for ch in (text(tags.get(sub_tag)) or "") if ch.isdigit())
        if digits:
            when = when.replace(microsecond=int((digits + "000000")[:6]))
        offset = text(tags.get(offset_tag)) or ""
        if len(offset) == 6 and offset[0] in "+-" and offset[3] == ":" and (offset[1:3] + offset[4:]).isdigit():
            sign = 1 if offset[0] == "+" else -1
            delta = _dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
            when = when.replace(tzinfo=_dt.timezone(sign * delta))
        return when
    return None
