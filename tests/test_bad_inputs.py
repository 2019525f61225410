"""Every command that reads a raw, given the header-only raw stubs of
../shared/data/bad_inputs (pixel data stripped): one line naming the file, the
documented exit status, no traceback, and nothing written."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from isp_rig.cli import main

STUBS = ["CanonRaw.cr2", "DNG.dng", "FujiFilm.raf", "Nikon.nef", "Panasonic.rw2"]


def _one_error_line(res, name: str) -> None:
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and name in lines[0], res.output
    assert "Traceback" not in res.output


@pytest.fixture
def stub(shared_data, tmp_path, request):
    """A copy of one stub in a folder of its own (so the test sees anything written beside it)."""
    folder = tmp_path / "in"
    folder.mkdir()
    target = folder / request.param
    target.write_bytes((shared_data / "bad_inputs" / request.param).read_bytes())
    return target


@pytest.mark.parametrize("stub", STUBS, indirect=True)
def test_align_pair_with_a_stub_is_exit_1_and_writes_no_report(stub, tmp_path):
    res = CliRunner().invoke(main, ["align", "pair", str(stub), str(stub), "--report", str(tmp_path / "report")])
    assert res.exit_code == 1
    _one_error_line(res, stub.name)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("stub", STUBS, indirect=True)
def test_phone_add_with_a_stub_is_exit_1_and_writes_no_profile(stub, tmp_path):
    res = CliRunner().invoke(main, ["phone", "add", "stubphone", "--from-shot", str(stub),
                                    "--out", str(tmp_path / "profiles")])
    assert res.exit_code == 1
    _one_error_line(res, stub.name)
    assert not list(tmp_path.rglob("*.toml"))


@pytest.mark.parametrize("stub", STUBS, indirect=True)
def test_dataset_import_of_a_stub_is_exit_1_and_records_nothing(stub, tmp_path, shared_data):
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / f"{stub.stem}.jpg").write_bytes((shared_data / "phone_vs_dslr" / "canon" / "0.jpg").read_bytes())
    res = CliRunner().invoke(main, ["dataset", "import", "--inputs", str(stub.parent), "--targets", str(targets),
                                    "--out", str(tmp_path / "ds")])
    assert res.exit_code == 1
    _one_error_line(res, stub.name)
    assert not (tmp_path / "ds" / "pairs.jsonl").exists() or (tmp_path / "ds" / "pairs.jsonl").read_text() == ""


def test_align_batch_over_the_stubs_records_each_as_failed_and_exits_1(shared_data, tmp_path):
    phones, dslrs = tmp_path / "phone", tmp_path / "dslr"
    phones.mkdir(), dslrs.mkdir()
    # the DNG stub: a two-folder source takes phone raws (.dng), not DSLR formats
    (phones / "DNG.dng").write_bytes((shared_data / "bad_inputs" / "DNG.dng").read_bytes())
    (dslrs / "DNG.jpg").write_bytes((shared_data / "phone_vs_dslr" / "canon" / "0.jpg").read_bytes())
    res = CliRunner().invoke(main, ["align", "batch", "--phone-dir", str(phones), "--dslr-dir", str(dslrs),
                                    "--out", str(tmp_path / "ds"), "--workers", "1", "--no-report", "--json"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    records = [json.loads(line) for line in (tmp_path / "ds" / "pairs.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["failed"] and records[0]["reason"].startswith("unreadable")
    assert "DNG.dng" in records[0]["message"] and not (tmp_path / "ds" / "pairs" / "DNG").exists()
