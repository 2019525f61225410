"""The dataset folder: scene splits, warping onto the phone grid, atomic pair files,
patch export and import, and that the learning stage reads what is written."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from alignment import rawio
from alignment.dataset import (DatasetError, DatasetMeta, DatasetWriter, latest_records, read_records, scene_split,
                               warp_to_phone_grid, write_pair_files)
from alignment.exchange import export_patches, import_aligned
from isp_rig import simulate as sim


def test_scene_split_is_a_pure_function_of_seed_and_scene_with_the_asked_fraction():
    scenes = [f"scene{i}" for i in range(2000)]
    splits = [scene_split(s, 3, 0.2) for s in scenes]
    assert splits == [scene_split(s, 3, 0.2) for s in scenes]
    assert 0.17 < splits.count("test") / len(scenes) < 0.23
    assert splits != [scene_split(s, 4, 0.2) for s in scenes]


def test_warping_the_dslr_by_the_truth_reproduces_the_phone_view():
    pair = sim.simulate_pair(11, options=sim.SimOptions(phone_size=(320, 240), dslr_size=(480, 320)))
    warp = warp_to_phone_grid(pair.dslr_rgb, pair.truth.map_points, pair.phone.shape)
    target, valid = warp.target, warp.valid
    assert target.shape == (240, 320, 3) and valid.all()
    phone = cv2.GaussianBlur(rawio.luminance(pair.phone), (0, 0), 1.0)
    warped = cv2.GaussianBlur(rawio.luminance(target), (0, 0), 1.0)
    assert np.corrcoef(phone[8:-8, 8:-8].ravel(), warped[8:-8, 8:-8].ravel())[0, 1] > 0.9


def test_warp_marks_points_outside_the_dslr_image_invalid():
    dslr = np.random.default_rng(0).random((100, 100, 3)).astype(np.float32)
    warp = warp_to_phone_grid(dslr, lambda xy: xy + [60.0, 0.0], (40, 80))
    target, valid = warp.target, warp.valid
    assert valid[1:-1, :39].all() and not valid[:, 39:].any() and not valid[0].any()
    np.testing.assert_allclose(target[5:-5, 5:30], dslr[5:35, 65:90], atol=1e-5)


def test_warp_records_where_each_target_px_was_sampled_and_where_the_dslr_clipped():
    dslr = np.full((100, 100, 3), 0.5, np.float32)
    dslr[40:50, 70:80] = 1.0  # a clipped highlight at DSLR x 70..79, y 40..49
    warp = warp_to_phone_grid(dslr, lambda xy: xy + [60.0, 0.0], (60, 30), clip_level=0.99, keep_map=True)
    ys, xs = np.mgrid[0:60, 0:30]
    np.testing.assert_allclose(warp.mapped[..., 0], xs + 60.0)
    np.testing.assert_allclose(warp.mapped[..., 1], ys)
    # phone x 10..19, y 40..49 read the highlight; one DSLR px of dilation plus the bilinear reach
    assert warp.clipped[40:50, 10:20].all()
    assert not warp.clipped[:37].any() and not warp.clipped[53:].any() and not warp.clipped[:, :7].any()


def _write_one(root, pid="p1", h=32, w=48):
    rng = np.random.default_rng(0)
    planes = rng.random((h // 2, w // 2, 4)).astype(np.float32)
    target = rng.random((h, w, 3)).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[:, :4] = False
    return planes, target, valid, write_pair_files(root, pid, planes, target, valid, phone_rgb=target)


def test_pair_files_round_trip_and_leave_no_temporary_folder(tmp_path):
    planes, target, valid, files = _write_one(tmp_path)
    assert np.array_equal(np.load(tmp_path / files["raw"]), planes)
    stored = cv2.imread(str(tmp_path / files["target"]), cv2.IMREAD_UNCHANGED)[..., ::-1] / 65535.0
    np.testing.assert_allclose(stored, target, atol=1 / 65535)
    assert np.array_equal(cv2.imread(str(tmp_path / files["mask"]), cv2.IMREAD_GRAYSCALE) > 127, valid)
    assert sorted(p.name for p in (tmp_path / "pairs").iterdir()) == ["p1"]


def test_writer_locks_resumes_repairs_a_torn_line_and_refuses_another_split_rule(tmp_path):
    writer = DatasetWriter(tmp_path, DatasetMeta(split_seed=1))
    writer.append({"id": "a", "status": "ok"})
    writer.append({"id": "b", "status": "failed", "reason": "error"})
    with pytest.raises(DatasetError, match="another batch"):
        DatasetWriter(tmp_path, DatasetMeta(split_seed=1))
    writer.close()
    with open(tmp_path / "pairs.jsonl", "a") as fh:
        fh.write('{"id": "c", "sta')  # a kill in the middle of a line
    (tmp_path / "pairs" / ".tmp-c-123").mkdir(parents=True)  # a half-written pair folder
    again = DatasetWriter(tmp_path, DatasetMeta(split_seed=1))
    assert again.done("a") and not again.done("b") and not again.done("c")
    again.append({"id": "c", "status": "rejected", "reason": "low_correlation"})
    assert [r["id"] for r in read_records(tmp_path)] == ["a", "b", "c"]
    assert not (tmp_path / "pairs" / ".tmp-c-123").exists()
    again.close()
    with pytest.raises(DatasetError, match="move scenes between splits"):
        DatasetWriter(tmp_path, DatasetMeta(split_seed=2))


def test_writer_refuses_other_alignment_options_and_a_folder_of_other_files(tmp_path):
    with DatasetWriter(tmp_path / "ds", DatasetMeta(align_options={"min_trusted": 0.5})):
        pass
    with DatasetWriter(tmp_path / "ds", DatasetMeta(align_options={"min_trusted": 0.5})):
        pass  # the same options resume
    with DatasetWriter(tmp_path / "ds", DatasetMeta()):
        pass  # options not recorded (an import): not compared
    with pytest.raises(DatasetError, match=r"other options \(max_plane_pixels: default -> 400000, "
                                           r"min_trusted: 0.5 -> 0.8\)"):
        DatasetWriter(tmp_path / "ds", DatasetMeta(align_options={"min_trusted": 0.8, "max_plane_pixels": 400000}))
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ".dataset.json.4242.tmp").write_bytes(b"{")  # a first write that was killed: still ours
    DatasetWriter(killed, DatasetMeta()).close()
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "IMG_1.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="holds IMG_1.jpg and no dataset.json: not a dataset folder"):
        DatasetWriter(photos, DatasetMeta())
    assert sorted(p.name for p in photos.iterdir()) == ["IMG_1.jpg"]


def test_learning_stage_reads_the_pairs_the_alignment_stage_writes(tmp_path):
    import learn.data as learn_data
    planes, target, valid, files = _write_one(tmp_path)
    writer = DatasetWriter(tmp_path, DatasetMeta(phone_profile="sim"))
    writer.append({"id": "p1", "scene": "s1", "split": "train", "status": "ok", "files": files})
    writer.append({"id": "p2", "scene": "s2", "split": "train", "status": "rejected", "reason": "low_correlation"})
    writer.close()
    folder = learn_data.DatasetFolder(tmp_path)
    assert [r.id for r in folder.split("train")] == ["p1"]
    assert np.array_equal(learn_data.read_packed(folder.records[0].raw), planes)


def test_export_writes_only_fully_valid_patches_in_rggb_order(tmp_path):
    planes, target, valid, files = _write_one(tmp_path / "ds", h=64, w=96)
    writer = DatasetWriter(tmp_path / "ds", DatasetMeta())
    writer.append({"id": "p1", "scene": "s", "split": "test", "status": "ok", "files": files})
    writer.close()
    n = export_patches(tmp_path / "ds", tmp_path / "patches", size=32)
    assert n == 2 * 3 - 2  # the first column of patches touches the invalid strip
    raw = cv2.imread(str(tmp_path / "patches/test/raw/p1_000_001.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (32, 32)
    expected = np.round(np.clip(planes[0:16, 16:32], 0, 1) * 4095).astype(np.uint16)
    assert np.array_equal(rawio.pack(raw, "RGGB"), expected)
    rows = (tmp_path / "patches/patches.csv").read_text().splitlines()
    assert rows[0] == "split,raw,rgb,pair_id,x,y" and len(rows) == n + 1


def _one_pair_dataset(root):
    planes, target, valid, files = _write_one(root, h=64, w=96)
    writer = DatasetWriter(root, DatasetMeta())
    writer.append({"id": "p1", "scene": "s", "split": "test", "status": "ok", "files": files})
    writer.close()
    return files


def test_export_refuses_a_folder_of_other_files_and_replaces_an_earlier_export_only_with_force(tmp_path):
    _one_pair_dataset(tmp_path / "ds")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not empty and not an isp-rig patch export"):
        export_patches(tmp_path / "ds", other, size=32)
    assert [p.name for p in other.iterdir()] == ["a.jpg"]
    out = tmp_path / "patches"
    assert export_patches(tmp_path / "ds", out, size=32) == 4
    with pytest.raises(DatasetError, match="holds an earlier export .*32 px patches.*--force"):
        export_patches(tmp_path / "ds", out, size=16)
    n = export_patches(tmp_path / "ds", out, size=16, force=True)
    names = {p.name for p in (out / "test" / "raw").iterdir()}
    assert len(names) == n and all(cv2.imread(str(out / "test" / "raw" / k), cv2.IMREAD_UNCHANGED).shape == (16, 16)
                                   for k in names)  # no 32 px patch of the earlier export left beside
    assert json.loads((out / "export.json").read_text())["complete"] is True


@pytest.mark.parametrize("part, damage, reason", [
    ("raw", b"", "not a .npy array"),
    ("target", b"\x89PNG\r\n", "not a readable image"),
    ("mask", None, "missing"),
])
def test_export_of_a_damaged_pair_file_names_it(tmp_path, part, damage, reason):
    files = _one_pair_dataset(tmp_path / "ds")
    path = tmp_path / "ds" / files[part]
    if damage is None:
        path.unlink()
    else:
        path.write_bytes(damage)
    with pytest.raises(DatasetError, match=reason) as err:
        export_patches(tmp_path / "ds", tmp_path / "patches", size=32)
    assert str(path) in str(err.value)
    assert not (tmp_path / "patches" / "patches.csv").exists()


def test_import_of_real_phone_jpegs_and_dslr_targets(shared_data, tmp_path):
    src = shared_data / "phone_vs_dslr"
    inputs, targets = tmp_path / "in", tmp_path / "tg"
    inputs.mkdir(), targets.mkdir()
    for name in ("0.jpg", "1.jpg", "2.jpg"):
        (inputs / name).write_bytes((src / "iphone" / name).read_bytes())
        (targets / name).write_bytes((src / "canon" / name).read_bytes())
    assert import_aligned(inputs, targets, tmp_path / "ds", split="test") == 3
    assert import_aligned(inputs, targets, tmp_path / "ds", split="test") == 0  # already there
    records = latest_records(tmp_path / "ds")
    assert {r["split"] for r in records.values()} == {"test"}
    assert all(r["input_kind"] == "rgb" and "input" in r["files"] for r in records.values())
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["input"] == ["rgb"]


def test_import_of_packed_raw_planes_checks_the_target_size(shared_data, tmp_path):
    inputs, targets = tmp_path / "in", tmp_path / "tg"
    inputs.mkdir(), targets.mkdir()
    planes = np.load(shared_data / "raw" / "phone_patch_x90_rggb_512.npy")[:64, :64]
    np.save(inputs / "a.npy", planes)
    cv2.imwrite(str(targets / "a.png"), np.zeros((128, 128, 3), np.uint8))
    with pytest.raises(DatasetError, match="white level"):
        import_aligned(inputs, targets, tmp_path / "ds")
    assert import_aligned(inputs, targets, tmp_path / "ds", white_level=4095) == 1
    stored = np.load(tmp_path / "ds" / latest_records(tmp_path / "ds")["a"]["files"]["raw"])
    np.testing.assert_allclose(stored, planes / 4095.0, rtol=1e-6)
    cv2.imwrite(str(targets / "b.png"), np.zeros((100, 128, 3), np.uint8))
    np.save(inputs / "b.npy", planes)
    with pytest.raises(DatasetError, match="does not fit"):
        import_aligned(inputs, targets, tmp_path / "ds2", white_level=4095)


def test_import_of_a_camera_raw_records_its_metadata(tmp_path):
    inputs, targets = tmp_path / "in", tmp_path / "tg"
    inputs.mkdir(), targets.mkdir()
    raw = sim.simulate_pair(3, options=sim.SimOptions(phone_size=(64, 48), dslr_size=(96, 64))).phone
    sim.write_dng(inputs / "a.dng", raw)
    cv2.imwrite(str(targets / "a.png"), np.zeros((48, 64, 3), np.uint8))
    assert import_aligned(inputs, targets, tmp_path / "ds") == 1
    meta = latest_records(tmp_path / "ds")["a"]["phone_raw"]
    assert meta["cfa"] == raw.cfa and meta["white_level"] == pytest.approx(raw.white_level)
    assert meta["as_shot_wb"] == pytest.approx(list(raw.camera_wb), rel=1e-4)  # DNG rationals
    assert meta["dng"]["as_shot_neutral"] == pytest.approx(list(1 / raw.camera_wb), rel=1e-3)


def test_import_of_packed_planes_takes_the_raw_metadata_of_their_side_file(tmp_path):
    inputs, targets = tmp_path / "in", tmp_path / "tg"
    inputs.mkdir(), targets.mkdir()
    planes = np.random.default_rng(0).random((24, 32, 4)).astype(np.float32)
    side = {"cfa": "RGGB", "as_shot_wb": [2.0, 1.0, 1.6], "color_matrix": [[1.5, -0.3, -0.2], [-0.2, 1.4, -0.2],
                                                                         [0.0, -0.4, 1.4]]}
    for stem, meta in (("a", side), ("b", None)):
        np.save(inputs / f"{stem}.npy", planes)
        cv2.imwrite(str(targets / f"{stem}.png"), np.zeros((48, 64, 3), np.uint8))
        if meta is not None:
            (inputs / f"{stem}.json").write_text(json.dumps(meta))
    assert import_aligned(inputs, targets, tmp_path / "ds") == 2  # the side file is no input of its own
    records = latest_records(tmp_path / "ds")
    assert records["a"]["phone_raw"] == side and "phone_raw" not in records["b"]
    (inputs / "a.json").write_text(json.dumps({**side, "color_matrix": [1, 2, 3]}))
    with pytest.raises(DatasetError, match=r"a\.json: color_matrix must be 3x3"):
        import_aligned(inputs, targets, tmp_path / "ds2")
    (inputs / "a.json").write_text(json.dumps({"as_shot_white": [1, 1, 1]}))
    with pytest.raises(DatasetError, match="unknown key"):
        import_aligned(inputs, targets, tmp_path / "ds3")


def test_import_refuses_to_mix_input_kinds_or_pairs_from_other_files(shared_data, tmp_path):
    src = shared_data / "phone_vs_dslr"
    rgb_in, raw_in, other_in, targets = (tmp_path / n for n in ("rgb", "raw", "other", "tg"))
    for d in (rgb_in, raw_in, other_in, targets):
        d.mkdir()
    (rgb_in / "0.jpg").write_bytes((src / "iphone" / "0.jpg").read_bytes())
    (other_in / "0.jpg").write_bytes((src / "iphone" / "1.jpg").read_bytes())
    (targets / "0.jpg").write_bytes((src / "canon" / "0.jpg").read_bytes())
    assert import_aligned(rgb_in, targets, tmp_path / "ds") == 1
    before = (tmp_path / "ds" / "pairs.jsonl").read_bytes()
    with pytest.raises(DatasetError, match="pair 0 here was made from .*rgb/0.jpg, not .*other/0.jpg"):
        import_aligned(other_in, targets, tmp_path / "ds")
    planes = np.zeros((8, 8, 4), np.float32)
    np.save(raw_in / "r.npy", planes)
    cv2.imwrite(str(targets / "r.png"), np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(DatasetError, match="is a raw input, and .* holds rgb pairs"):
        import_aligned(raw_in, targets, tmp_path / "ds")
    assert (tmp_path / "ds" / "pairs.jsonl").read_bytes() == before


def test_import_cli_lists_the_files_it_left_out(shared_data, tmp_path):
    from click.testing import CliRunner

    from isp_rig.cli import main

    src = shared_data / "phone_vs_dslr"
    inputs, targets = tmp_path / "in", tmp_path / "tg"
    inputs.mkdir(), targets.mkdir()
    for name in ("0.jpg", "1.jpg"):
        (inputs / name).write_bytes((src / "iphone" / name).read_bytes())
    for name in ("1.jpg", "2.jpg"):
        (targets / name).write_bytes((src / "canon" / name).read_bytes())
    res = CliRunner().invoke(main, ["dataset", "import", "--inputs", str(inputs), "--targets", str(targets),
                                    "--out", str(tmp_path / "ds")])
    assert res.exit_code == 0, res.output
    assert "imported 1 pairs" in res.output
    assert "left out 1 input(s) without a target: 0.jpg" in res.output
    assert "left out 1 target(s) without an input: 2.jpg" in res.output


def test_records_are_strict_json_with_null_for_non_finite_numbers(tmp_path):
    with DatasetWriter(tmp_path, DatasetMeta()) as writer:
        writer.append({"id": "p1", "status": "rejected", "quality": {"residual_median_px": float("nan")},
                       "scores": [1.0, float("inf")]})
    line = (tmp_path / "pairs.jsonl").read_text().strip()
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert record["quality"]["residual_median_px"] is None and record["scores"] == [1.0, None]
