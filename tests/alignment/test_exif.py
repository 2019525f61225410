"""EXIF capture times: the one reader the raw decoder and the capture adapters share."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pytest

from alignment import batch, exif
from alignment.batch import PairJob


@pytest.mark.parametrize("tags, expected", [
    ({"EXIF DateTimeOriginal": "2026:11:30 10:20:30", "EXIF SubSecTimeOriginal": "042",
      "EXIF OffsetTimeOriginal": "+01:00"},
     _dt.datetime(2026, 11, 30, 10, 20, 30, 42000, tzinfo=_dt.timezone(_dt.timedelta(hours=1)))),
    ({"EXIF DateTimeOriginal": "2026:11:30 10:20:30", "EXIF SubSecTimeOriginal": "5"},
     _dt.datetime(2026, 11, 30, 10, 20, 30, 500000)),
    # a DNG writer's IFD0 copy, with a negative offset
    ({"Image DateTimeOriginal": "2026:11:30 10:20:30", "Image OffsetTimeOriginal": "-05:30"},
     _dt.datetime(2026, 11, 30, 10, 20, 30, tzinfo=_dt.timezone(-_dt.timedelta(hours=5, minutes=30)))),
    # an unparseable original date falls back to DateTime; a malformed offset is no offset
    ({"EXIF DateTimeOriginal": "    :  :     :  :  ", "Image DateTime": "2026:01:02 03:04:05",
      "EXIF OffsetTime": "+1:00"}, _dt.datetime(2026, 1, 2, 3, 4, 5)),
    ({}, None),
])
def test_capture_time_reads_the_original_date_subseconds_and_utc_offset(tags, expected):
    got = exif.capture_time(tags)
    assert got == expected and (got is None or (got.tzinfo is None) == (expected.tzinfo is None))


def test_a_file_without_exif_or_with_a_broken_block_has_no_tags(tmp_path):
    assert exif.read_tags(b"not an image at all") == {}
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00II*\x00garbage")
    assert exif.capture_time(exif.read_tags(tmp_path / "x.jpg")) is None


def test_time_matching_compares_clock_readings_when_one_camera_records_no_offset(tmp_path, monkeypatch):
    (tmp_path / "p").mkdir()
    (tmp_path / "d").mkdir()
    for name in ("p/a.dng", "p/b.dng", "d/x.jpg", "d/y.jpg"):
        (tmp_path / name).write_bytes(b"")
    plus_one = _dt.timezone(_dt.timedelta(hours=1))
    times = {"a.dng": _dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=plus_one),  # the phone records its offset
             "b.dng": _dt.datetime(2026, 1, 1, 12, 0, 10, tzinfo=plus_one),
             "x.jpg": _dt.datetime(2026, 1, 1, 12, 0, 0, 300000),  # the DSLR does not
             "y.jpg": _dt.datetime(2026, 1, 1, 12, 0, 9, 800000)}
    monkeypatch.setattr(batch, "_capture_time", lambda path: times[Path(path).name])
    jobs = batch.pairs_from_two_folders(tmp_path / "p", tmp_path / "d", match="time")
    assert [(j.pair_id, j.dslr.name) for j in jobs] == [("a", "x.jpg"), ("b", "y.jpg")]
    assert all(isinstance(j, PairJob) for j in jobs)
