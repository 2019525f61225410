"""A device's own capture time from a file's EXIF (JPEG, TIFF/DNG, NEF, CR2...)."""

from __future__ import annotations

import datetime as _dt
import io
import logging
from pathlib import Path

import exifread

_TAGS = (("EXIF DateTimeOriginal", "EXIF SubSecTimeOriginal", "EXIF OffsetTimeOriginal"),
         # DNG writers may put the EXIF date tags straight into IFD0
         ("Image DateTimeOriginal", "Image SubSecTimeOriginal", "Image OffsetTimeOriginal"),
         ("Image DateTime", "EXIF SubSecTime", "EXIF OffsetTime"))


def exif_capture_time(source: bytes | Path) -> _dt.datetime | None:
    """DateTimeOriginal with SubSecTimeOriginal (and OffsetTimeOriginal when present).

    Returns a naive datetime on the device clock, or an aware one when the
    file records its UTC offset; None when the file has no usable date.
    Never raises for a file without EXIF or with a broken EXIF block.
    """
    logging.getLogger("exifread").setLevel(logging.ERROR)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            tags = exifread.process_file(io.BytesIO(source), details=False)
        else:
            with open(source, "rb") as fh:
                tags = exifread.process_file(fh, details=False)
    except Exception:  # exifread raises many kinds on damaged files
        return None
    for date_tag, sub_tag, offset_tag in _TAGS:
        value = tags.get(date_tag)
        if value is None:
            continue
        try:
            stamp = _dt.datetime.strptime(str(value).strip(), "%Y:%m:%d %H:%M:%S")
        except ValueError:
            continue
        sub = str(tags.get(sub_tag, "")).strip()
        if sub.isdigit():
            stamp = stamp.replace(microsecond=int((sub + "000000")[:6]))
        offset = str(tags.get(offset_tag, "")).strip()
        if len(offset) == 6 and offset[0] in "+-" and offset[3] == ":":
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            sign = 1 if offset[0] == "+" else -1
            stamp = stamp.replace(tzinfo=_dt.timezone(sign * _dt.timedelta(hours=hours, minutes=minutes)))
        return stamp
    return None
