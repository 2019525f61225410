"""Batch alignment into a dataset: every source kind, any executor, rejection and
failure with a reason, resume without redoing work, survival of a kill."""

from __future__ import annotations

import concurrent.futures as cf
import csv
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from alignment import batch
from alignment.batch_report import write_batch_report
from alignment.dataset import latest_records, read_records
from isp_rig import simulate as sim

SMALL = sim.SimOptions(phone_size=(480, 360), dslr_size=(720, 480))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Three simulator pairs, one textureless pair and one with a truncated phone raw."""
    root = tmp_path_factory.mktemp("pairs")
    sim.simulate_pairs(root, 3, seed=21, options=SMALL, progress=False)
    flat = sim.simulate_pair(5, options=SMALL, pair_id="pair_flat")
    flat.phone.mosaic[:] = np.uint16(300) + np.random.default_rng(0).integers(0, 3, flat.phone.mosaic.shape,
                                                                               dtype=np.uint16)
    flat.dslr_rgb[:] = 0.5
    sim.write_pair(flat, root)
    broken = sim.write_pair(sim.simulate_pair(6, options=SMALL, pair_id="pair_broken"), root)
    data = (broken / "phone.dng").read_bytes()
    (broken / "phone.dng").write_bytes(data[: len(data) // 3])
    return root


def _statuses(dataset):
    return {k: (r["status"], r.get("reason")) for k, r in latest_records(dataset).items()}


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "dataset"
    with cf.ThreadPoolExecutor(2) as pool:
        summary = batch.run_batch(batch.find_pairs(source), out, executor=pool, progress=False)
    return out, summary


def test_batch_keeps_good_pairs_and_says_why_the_others_are_not(built):
    out, summary = built
    status = _statuses(out)
    assert all(status[f"pair_{i:04d}"] == ("ok", None) for i in range(3))
    assert status["pair_flat"][0] == "rejected" and status["pair_flat"][1] in (
        "too_few_matches", "low_correlation", "overlap_too_small", "residual_too_large")
    assert status["pair_broken"] == ("failed", "unreadable_truncated")
    assert summary.kept == 3 and sum(summary.rejected.values()) == 1 and summary.failed == {"unreadable_truncated": 1}


def test_records_carry_what_the_phone_raw_says_about_its_rendering(built, source):
    from alignment import rawio

    out, _ = built
    rec = latest_records(out)["pair_0000"]
    raw = rawio.read_raw(source / "pair_0000" / "phone.dng")
    meta = rec["phone_raw"]
    assert meta["cfa"] == raw.cfa and meta["white_level"] == pytest.approx(raw.white_level)
    assert meta["black_levels"] == pytest.approx(list(raw.black_levels))
    assert meta["as_shot_wb"] == pytest.approx(list(raw.camera_wb), rel=1e-6)
    assert np.allclose(meta["color_matrix"], raw.color_matrix, atol=1e-6) and meta["model"] == raw.exif.model
    # the DNG's own calibration, as the simulator wrote it (ColorMatrix1 under D65, AsShotNeutral)
    assert meta["dng"]["calibration_illuminant_1_name"] == "D65"
    assert np.shape(meta["dng"]["color_matrix_1"]) == (3, 3)
    assert meta["as_shot_wb"] == pytest.approx(1 / np.asarray(meta["dng"]["as_shot_neutral"]), rel=1e-3)


def test_kept_pairs_have_their_files_and_a_small_error_against_ground_truth(built):
    out, _ = built
    for rec in latest_records(out).values():
        if rec["status"] != "ok":
            assert "files" not in rec and rec["message"]
            continue
        assert {"raw", "target", "mask"} <= set(rec["files"])
        assert all((out / path).is_file() for path in rec["files"].values())
        assert np.load(out / rec["files"]["raw"]).shape == (180, 240, 4)
        assert rec["truth_error_px"]["median"] < 0.5
        assert rec["split"] in ("train", "test")


def test_resume_skips_finished_pairs_and_retries_failed_ones(built, source):
    out, _ = built
    raw_file = out / latest_records(out)["pair_0000"]["files"]["raw"]
    stamp = raw_file.stat().st_mtime_ns
    lines_before = len(read_records(out))
    summary = batch.run_batch(batch.find_pairs(source), out, executor=cf.ThreadPoolExecutor(1), progress=False)
    assert summary.skipped == 4 and summary.kept == 3
    assert raw_file.stat().st_mtime_ns == stamp
    assert len(read_records(out)) == lines_before + 1  # only the failed pair ran again


def test_report_has_the_histogram_the_pictures_and_the_rejected_reasons(built):
    out, _ = built
    report = write_batch_report(out)
    text = report.read_text()
    assert (out / "report" / "residuals.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "report" / "pairs").iterdir()) == [f"pair_{i:04d}.png" for i in range(3)]
    assert "pair_broken" in text and "unreadable_truncated" in text and "pair_flat" in text
    # each pair picture has four panels: board, difference and the trust map (the widest of the old two)
    picture = cv2.imread(str(out / "report" / "pairs" / "pair_0000.png"))
    assert picture.shape[1] > 2.5 * picture.shape[0]
    assert "trust map" in text and "trusted px per kept pair" in text


def test_kept_pairs_carry_their_trust_map_reasons_and_fractions(built):
    out, _ = built
    for rec in latest_records(out).values():
        if rec["status"] != "ok":
            continue
        reasons = cv2.imread(str(out / rec["files"]["reasons"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / rec["files"]["mask"]), cv2.IMREAD_UNCHANGED)
        assert reasons.dtype == np.uint8 and np.array_equal(reasons == 0, mask == 255)
        assert rec["trusted_fraction"] == pytest.approx((mask == 255).mean())
        assert rec["trusted_fraction"] > 0.95  # planar simulator pairs keep their px


def test_default_process_pool_aligns_pairs(source, tmp_path):
    jobs = [j for j in batch.find_pairs(source) if j.pair_id in ("pair_0001", "pair_0002")]
    summary = batch.run_batch(jobs, tmp_path / "ds", workers=2, progress=False)
    assert summary.kept == 2


def test_dask_cluster_runs_the_batch(source, tmp_path):
    import distributed  # the test extra installs it: a missing one is a broken install, not a skip
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        with batch.dask_client(c.scheduler_address) as client:
            jobs = [j for j in batch.find_pairs(source) if j.pair_id == "pair_0000"]
            assert batch.run_batch(jobs, tmp_path / "ds", executor=client.get_executor(), progress=False).kept == 1


def test_workers_are_bounded_by_memory(source, monkeypatch):
    jobs = batch.find_pairs(source)
    per_pair = batch.estimate_pair_memory(jobs[0])
    monkeypatch.setattr(batch, "available_memory_bytes", lambda: int(per_pair * 1.5))
    assert batch.default_workers(jobs, requested=8) == 1


def test_csv_and_two_folder_sources_list_the_same_pairs(source, tmp_path):
    folders = batch.pairs_from_pair_folders(source)
    with open(tmp_path / "pairs.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "phone", "dslr", "scene"])
        for j in folders:
            w.writerow([j.pair_id, os.path.relpath(j.phone, tmp_path), str(j.dslr), j.scene])
    from_csv = batch.pairs_from_csv(tmp_path / "pairs.csv")
    assert [(j.pair_id, j.phone, j.dslr) for j in from_csv] == [(j.pair_id, j.phone, j.dslr) for j in folders]
    phones, dslrs = tmp_path / "phone", tmp_path / "dslr"
    phones.mkdir(), dslrs.mkdir()
    for j in folders[:3]:
        (phones / f"{j.pair_id}.dng").symlink_to(j.phone)
        (dslrs / f"{j.pair_id}.jpg").symlink_to(j.dslr)
    by_name = batch.pairs_from_two_folders(phones, dslrs, match="name")
    by_time = batch.pairs_from_two_folders(phones, dslrs, match="time", tolerance_s=0.05)
    assert [j.pair_id for j in by_name] == [j.pair_id for j in by_time] == [j.pair_id for j in folders[:3]]
    (phones / "lonely.dng").symlink_to(folders[3].phone)
    (dslrs / "other.jpg").symlink_to(folders[3].dslr)
    jobs = batch.pairs_from_two_folders(phones, dslrs, match="name")
    assert batch.unpaired_files(phones, dslrs, jobs) == (["lonely.dng"], ["other.jpg"])  # counted, not dropped


def test_a_killed_batch_resumes_without_redoing_finished_pairs(source, tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "isp_rig.cli", "dataset", "build", str(source), "--out", str(out), "--workers", "1",
           "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(read_records(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = read_records(out)
    assert 1 <= len(first) < 5, "the kill should land mid-batch"
    done_before = {r["id"]: r for r in first if r["status"] in ("ok", "rejected")}
    stamps = {k: (out / r["files"]["raw"]).stat().st_mtime_ns for k, r in done_before.items() if r["status"] == "ok"}
    result = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr  # pair_broken fails (unreadable): exit status 1
    summary = json.loads(result.stdout)
    assert summary["kept"] == 3 and summary["skipped"] == len(done_before)
    final = [r for r in read_records(out) if r["status"] in ("ok", "rejected")]
    assert sorted(r["id"] for r in final) == sorted({r["id"] for r in final})  # no pair finished twice
    assert all((out / latest_records(out)[k]["files"]["raw"]).stat().st_mtime_ns == t for k, t in stamps.items())
    assert not list((out / "pairs").glob(".tmp-*"))


def test_a_dataset_is_resumed_only_with_its_own_pairs_identified_by_content(tmp_path):
    import shutil

    from alignment.dataset import DatasetError

    first, other = tmp_path / "first", tmp_path / "other"
    sim.simulate_pairs(first, 1, seed=31, options=SMALL, progress=False)
    sim.simulate_pairs(other, 1, seed=32, options=SMALL, progress=False)  # the same pair id, other scene
    out = tmp_path / "ds"
    with cf.ThreadPoolExecutor(1) as pool:
        batch.run_batch(batch.find_pairs(first), out, executor=pool, progress=False)
        before = (out / "pairs.jsonl").read_bytes()
        with pytest.raises(DatasetError, match="holds pairs made from other files: pair pair_0000: its phone file was"):
            batch.run_batch(batch.find_pairs(other), out, executor=pool, progress=False)
        assert (out / "pairs.jsonl").read_bytes() == before  # nothing merged
        moved = tmp_path / "moved"
        shutil.move(first, moved)  # the same files elsewhere: the same pairs
        summary = batch.run_batch(batch.find_pairs(moved), out, executor=pool, progress=False)
        assert summary.skipped == 1
        dng = moved / "pair_0000" / "phone.dng"
        data = dng.read_bytes()
        dng.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same path, same size, other content
        with pytest.raises(DatasetError, match="its phone file was .*first.*phone.dng, now .*moved.*phone.dng"):
            batch.run_batch(batch.find_pairs(moved), out, executor=pool, progress=False)


def test_only_options_that_differ_from_the_defaults_identify_a_dataset():
    assert batch.options_that_differ({"min_trusted": 0.5, "max_plane_pixels": 400_000}) == {"max_plane_pixels": 400_000}


def test_a_pair_that_cannot_be_written_is_a_write_error_naming_the_file(source, tmp_path, monkeypatch):
    import errno

    from alignment.atomic import WriteError

    def full(root, pair_id, *args, **kwargs):
        raise WriteError(root / "pairs" / pair_id / "target.png", "disk full", errno.ENOSPC)

    monkeypatch.setattr(batch, "write_pair_files", full)
    job = next(j for j in batch.find_pairs(source) if j.pair_id == "pair_0000")
    record = batch.process_pair(job, str(tmp_path), "train", {})
    assert (record["status"], record["reason"]) == ("failed", "write_error")
    assert record["message"].endswith("pair_0000/target.png: disk full")


def test_a_missing_source_is_unreadable_not_a_write_error(source, tmp_path):
    job = batch.PairJob("gone", tmp_path / "gone.dng", source / "pair_0000" / "dslr.jpg", "gone")
    record = batch.process_pair(job, str(tmp_path), "train", {})
    assert record["status"] == "failed" and record["reason"].startswith("unreadable")


def _descendants(pid: int) -> set[int]:
    """Processes below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _running(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc to list the workers")
def test_pool_workers_stop_when_the_driver_is_killed(source, tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "isp_rig.cli", "dataset", "build", str(source), "--out", str(out), "--workers", "2",
           "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None and len(workers) < 3:  # fork server + 2 workers
            workers = _descendants(proc.pid)
            time.sleep(0.05)
        assert proc.poll() is None and len(workers) >= 3, "the batch should be running its pool"
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: its workers must notice by themselves
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(p) for p in workers):
            time.sleep(0.1)
        assert not [p for p in workers if _running(p)], "workers outlived their driver"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_tiny_malloc_trim_threshold_of_dask_workers_is_raised():
    import subprocess
    import sys

    code = "from alignment.batch import relax_malloc_trim as r; import os; print(r(), os.environ['MALLOC_TRIM_THRESHOLD_'])"
    small = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"},
                           capture_output=True, text=True, check=True).stdout.split()
    assert small == ["True", str(256 << 20)]
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    unset = subprocess.run([sys.executable, "-c", "from alignment.batch import relax_malloc_trim as r; print(r())"],
                           env=env, capture_output=True, text=True, check=True).stdout.split()
    assert unset == ["False"]


def test_cli_exits_1_when_a_pair_failed_and_0_when_pairs_are_only_rejected(source, tmp_path):
    from click.testing import CliRunner

    from isp_rig.cli import main

    out = tmp_path / "ds"
    result = CliRunner().invoke(main, ["align", "batch", str(source), "--out", str(out), "--workers", "1",
                                       "--no-report"])
    assert result.exit_code == 1, result.output  # pair_broken failed (unreadable)
    assert "failed: unreadable_truncated: 1" in result.output and "Traceback" not in result.output
    good = tmp_path / "good.csv"
    good.write_text("phone,dslr,id\n" + "".join(
        f"{source / p / 'phone.dng'},{source / p / 'dslr.jpg'},{p}\n" for p in ("pair_0000", "pair_flat")))
    result = CliRunner().invoke(main, ["align", "batch", "--pairs", str(good), "--out", str(tmp_path / "ds2"),
                                       "--workers", "1", "--no-report"])
    assert result.exit_code == 0, result.output  # one kept, one rejected: no failure
    assert "rejected" in result.output
