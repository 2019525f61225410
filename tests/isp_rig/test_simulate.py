"""The rig simulator: faithful files, self-consistent ground truth, determinism."""

from __future__ import annotations

import errno
import hashlib
import json
import math

import cv2
import numpy as np
import pytest
import rawpy
from click.testing import CliRunner

from alignment import rawio
from isp_rig import simulate as sim
from isp_rig.cli import main

SMALL = sim.SimOptions(phone_size=(320, 240), dslr_size=(480, 320))


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    plain = sim.simulate_pairs(out / "plain", 2, seed=3, options=SMALL, progress=False)
    distorted = sim.simulate_pairs(
        out / "dist", 2, seed=4, options=sim.SimOptions(phone_size=(320, 240), dslr_size=(480, 320), distortion=True),
        progress=False,
    )
    return plain + distorted


def test_phone_dng_opens_in_rawpy_with_exactly_the_written_mosaic(tmp_path):
    pair = sim.simulate_pair(7, options=SMALL)
    folder = sim.write_pair(pair, tmp_path)
    with rawpy.imread(str(folder / "phone.dng")) as r:
        assert np.array_equal(r.raw_image_visible, pair.phone.mosaic)
    back = rawio.read_raw(folder / "phone.dng")
    assert back.cfa == pair.phone.cfa
    np.testing.assert_allclose(back.black_levels, pair.phone.black_levels)
    assert back.white_level == pair.phone.white_level
    np.testing.assert_allclose(back.camera_wb, pair.phone.camera_wb, rtol=1e-3)
    np.testing.assert_allclose(back.color_matrix, pair.phone.color_matrix, atol=2e-3)


def test_pair_folder_has_the_three_files_and_truth_fields(small_pairs):
    for folder in small_pairs:
        assert sorted(p.name for p in folder.iterdir()) == ["dslr.jpg", "phone.dng", "truth.json"]
        truth = sim.load_truth(folder)
        assert truth.phone_to_dslr.shape == (3, 3)
        assert truth.grid.shape[1] == 4 and len(truth.grid) > 1000


def _dslr_on_phone_grid(folder, shift=(0.0, 0.0)):
    truth = sim.load_truth(folder)
    dslr = rawio.luminance(rawio.read_rgb(folder / "dslr.jpg"))
    w, h = truth.phone_size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    xy = np.stack([xs.ravel() + shift[0], ys.ravel() + shift[1]], axis=1)
    mapped = truth.map_points(xy).astype(np.float32)
    warped = cv2.remap(dslr, mapped[:, 0].reshape(h, w), mapped[:, 1].reshape(h, w), cv2.INTER_CUBIC)
    return warped


def _correlation(a, b, margin=8):
    a = a[margin:-margin, margin:-margin].ravel()
    b = b[margin:-margin, margin:-margin].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_dslr_warped_by_the_truth_matches_the_phone_raw_and_shifts_make_it_worse(small_pairs):
    for folder in small_pairs:
        phone = rawio.luminance(rawio.read_raw(folder / "phone.dng"))
        phone = cv2.GaussianBlur(phone, (0, 0), 1.0)
        at_truth = _correlation(phone, cv2.GaussianBlur(_dslr_on_phone_grid(folder), (0, 0), 1.0))
        assert at_truth > 0.9, folder
        for shift in ((0.25, 0.0), (0.0, 0.25), (-0.25, 0.0), (0.0, -0.25)):
            shifted = cv2.GaussianBlur(_dslr_on_phone_grid(folder, shift), (0, 0), 1.0)
            assert _correlation(phone, shifted) < at_truth, (folder, shift)


def test_grid_agrees_with_homography_and_distortion_to_a_hundredth_of_a_pixel(small_pairs):
    for folder in small_pairs:
        truth = sim.load_truth(folder)
        phone, dslr = truth.grid[:, :2], truth.grid[:, 2:]
        # Independent direction: DSLR -> undistorted phone by the inverse homography, then the forward lens model.
        undistorted = sim.apply_homography(np.linalg.inv(truth.phone_to_dslr), dslr)
        back = truth.distortion.distort(undistorted) if truth.distortion else undistorted
        assert np.abs(back - phone).max() < 0.01


def test_distortion_variant_bends_the_grid_away_from_any_homography(small_pairs):
    distorted = [f for f in small_pairs if sim.load_truth(f).distortion is not None]
    assert distorted
    for folder in distorted:
        grid = sim.load_truth(folder).grid
        best, _ = cv2.findHomography(grid[:, :2], grid[:, 2:], 0)
        residual = np.linalg.norm(sim.apply_homography(best, grid[:, :2]) - grid[:, 2:], axis=1)
        assert residual.max() > 0.5


def test_phone_field_lies_inside_the_dslr_image(small_pairs):
    for folder in small_pairs:
        truth = sim.load_truth(folder)
        dw, dh = truth.dslr_size
        xy = truth.grid[:, 2:]
        assert xy.min() >= 0 and (xy[:, 0] <= dw - 1).all() and (xy[:, 1] <= dh - 1).all()
        assert dw * dh > truth.phone_size[0] * truth.phone_size[1]


def test_exif_facts_match_a_phone_and_a_nikon_z6_and_give_the_scale(small_pairs):
    for folder in small_pairs:
        phone = rawio.read_raw(folder / "phone.dng").exif
        dslr = rawio.read_rgb(folder / "dslr.jpg").exif
        assert phone.focal_length_mm and phone.focal_length_35mm == 26
        assert (dslr.make, dslr.model) == ("NIKON CORPORATION", "NIKON Z 6")
        truth = sim.load_truth(folder)
        scale = math.sqrt(abs(np.linalg.det(truth.phone_to_dslr[:2, :2])))
        expected = phone.focal_length_35mm * scale * math.hypot(*truth.phone_size) / math.hypot(*truth.dslr_size)
        assert dslr.focal_length_mm == pytest.approx(expected, rel=1e-3)
        assert abs((dslr.capture_time - phone.capture_time).total_seconds()) < 0.05


def test_all_four_cfa_phases_and_both_bit_depths_occur():
    tiny = sim.SimOptions(phone_size=(64, 48), dslr_size=(96, 64))
    phases = {sim.simulate_pair(seed, options=tiny).phone.cfa for seed in range(24)}
    assert phases == set(rawio.CFA_PATTERNS)
    assert sim.simulate_pair(1, options=tiny, phone=sim.PhoneModel(bits=12)).phone.white_level == 4095
    assert sim.simulate_pair(1, options=tiny).phone.white_level == 1023


def test_a_phone_profile_fixes_cfa_colour_response_and_bits_for_every_pair_and_two_phones_differ():
    from isp_rig.profiles import load_profile

    tiny = sim.SimOptions(phone_size=(64, 48), dslr_size=(96, 64))
    raws = {}
    for name in ("iphone_6s", "mi_3"):
        phone, size = sim.phone_from_profile(load_profile(name), name)
        raws[name] = [sim.simulate_pair(seed, options=tiny, phone=phone).phone for seed in (1, 2, 3)]
        first = raws[name][0]
        assert all(r.cfa == first.cfa and np.array_equal(r.color_matrix, first.color_matrix) for r in raws[name])
        assert len({float(r.camera_wb[0]) for r in raws[name]}) == 3  # the light still changes per shot
        assert size is not None and size[0] % 2 == 0
    a, b = raws["iphone_6s"][0], raws["mi_3"][0]
    assert (a.cfa, a.white_level, a.exif.model) == ("RGGB", 4095.0, "iPhone 6s")
    assert (b.cfa, b.white_level, b.exif.model) == ("BGGR", 1023.0, "MI 3")
    assert np.abs(a.color_matrix - b.color_matrix).max() > 0.05


@pytest.mark.parametrize("table, match", [
    (None, "no \\[simulation\\] table"),
    ({"cfa": "RGBG"}, "cfa = 'RGBG' is not one of"),
    ({"bits": 14}, "bits = 14"),
    ({"read_noise": 2.0}, "unknown key\\(s\\) read_noise"),
    ({"raw_size": [1023, 768]}, "raw_size"),
    ({"full_well_e": "lots"}, "full_well_e = 'lots' is not a float"),
])
def test_a_profile_that_cannot_say_how_to_simulate_its_phone_is_refused_naming_the_key(table, match):
    from isp_rig.profiles import ProfileError

    profile = {"profile": {"name": "p"}} | ({"simulation": table} if table is not None else {})
    with pytest.raises(ProfileError, match=match):
        sim.phone_from_profile(profile, "p")


def test_cli_phone_profile_gives_the_raw_size_and_an_explicit_option_wins(tmp_path):
    result = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path / "a"), "--pairs", "1",
                                       "--phone-profile", "mi_3", "--dslr-size", "1440x960", "--phone-bits", "12"])
    assert result.exit_code == 0, result.output
    raw = rawio.read_raw(tmp_path / "a" / "pair_0000" / "phone.dng")
    assert raw.shape == (720, 960) and raw.cfa == "BGGR" and raw.white_level == 4095


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path):
    tiny = sim.SimOptions(phone_size=(128, 96), dslr_size=(192, 128))
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        sim.simulate_pairs(tmp_path / name, 2, seed=seed, options=tiny, progress=False)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert _digests(tmp_path / "a") != _digests(tmp_path / "c")


def test_tiff_dslr_target_is_sixteen_bit(tmp_path):
    opts = sim.SimOptions(phone_size=(128, 96), dslr_size=(192, 128), dslr_format="tif")
    folder = sim.simulate_pairs(tmp_path, 1, seed=2, options=opts, progress=False)[0]
    image = rawio.read_rgb(folder / "dslr.tif")
    assert image.bit_depth == 16 and image.shape == (128, 192)
    assert image.exif.model == "NIKON Z 6"


@pytest.mark.parametrize("name", ["Blackmagic.dng", "RAW_KODAK_DC50.KDC"])
def test_real_raw_source_makes_a_consistent_pair(shared_data, tmp_path, name):
    folders = sim.simulate_pairs(tmp_path, 1, seed=1, source=shared_data / "raw" / name, options=SMALL,
                                 progress=False)
    phone = cv2.GaussianBlur(rawio.luminance(rawio.read_raw(folders[0] / "phone.dng")), (0, 0), 1.0)
    assert _correlation(phone, cv2.GaussianBlur(_dslr_on_phone_grid(folders[0]), (0, 0), 1.0)) > 0.9


def test_cli_writes_the_pairs(tmp_path):
    result = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path), "--pairs", "2", "--seed", "1",
                                       "--phone-size", "128x96", "--dslr-size", "192x128", "--distortion"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair_0000", "pair_0001", "simulation.json"]
    assert sim.load_truth(tmp_path / "pair_0001").distortion is not None


@pytest.mark.parametrize("content", [None, b"not an image at all"])
def test_cli_unreadable_source_exits_nonzero_with_one_line_naming_it(tmp_path, content):
    source = tmp_path / "scene.jpg"
    if content is not None:
        source.write_bytes(content)
    result = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path / "out"), "--source", str(source)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(source) in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ layered scenes

LAYERED = sim.SimOptions(phone_size=(320, 240), dslr_size=(480, 320), parallax=True, motion=True, clipping=True,
                         shading=True)


@pytest.fixture(scope="module")
def layered_pairs(tmp_path_factory):
    return sim.simulate_pairs(tmp_path_factory.mktemp("layered"), 3, seed=8, options=LAYERED, progress=False)


def test_cli_layered_pair_has_a_truth_map_and_a_clipped_map_on_the_phone_grid(tmp_path):
    result = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path), "--pairs", "1", "--seed", "2",
                                       "--phone-size", "160x120", "--dslr-size", "240x160", "--parallax",
                                       "--motion", "--clipping", "--shading", "--baseline-mm", "80"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "pair_0000"
    assert sorted(p.name for p in folder.iterdir()) == [
        "dslr.jpg", "phone.dng", "truth.json", "truth_clipped.png", "truth_map.npy"]
    truth_map = np.load(folder / "truth_map.npy")
    clipped = cv2.imread(str(folder / "truth_clipped.png"), cv2.IMREAD_UNCHANGED)
    assert truth_map.dtype == np.float32 and truth_map.shape == (120, 160, 2)
    assert clipped.dtype == np.uint8 and clipped.shape == (120, 160) and set(np.unique(clipped)) <= {0, 255}
    facts = sim.load_truth(folder).facts
    assert facts["baseline_mm"] == 80 and facts["scene"] == "layered"
    assert facts["effects"] == ["parallax", "motion", "clipping", "shading"]


def _truth_correlation(folder, shift=(0.0, 0.0), owner_only=None):
    """Correlation of the band-passed phone luminance with the DSLR sampled at the truth
    map (+ shift), band-passed alike, over finite, unclipped px away from any layer edge
    (optionally one layer's): the band (sigma 1 to 3 px) is where a px of error shows."""
    truth = sim.load_truth(folder)

    def band(img):
        return cv2.GaussianBlur(img, (0, 0), 1.0) - cv2.GaussianBlur(img, (0, 0), 3.0)

    phone = band(np.log(rawio.luminance(rawio.read_raw(folder / "phone.dng")).clip(1e-3)))
    dslr = rawio.luminance(rawio.read_rgb(folder / "dslr.jpg"))
    good = np.isfinite(truth.dense[..., 0]) & ~truth.clipped
    if owner_only is not None:
        good &= owner_only
    good = cv2.erode(good.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    at = np.nan_to_num(truth.dense).astype(np.float32) + np.float32(shift)
    warped = band(np.log(cv2.remap(dslr, at[..., 0], at[..., 1], cv2.INTER_CUBIC).clip(1e-3)))
    return float(np.corrcoef(phone[good], warped[good])[0, 1])


def test_dslr_warped_by_the_truth_map_matches_the_phone_and_a_one_pixel_error_drops_it(layered_pairs):
    for folder in layered_pairs:
        at_truth = _truth_correlation(folder)
        assert at_truth > 0.9, folder
        for shift in ((1.0, 0.0), (0.0, 1.0), (-0.7, 0.7)):
            assert _truth_correlation(folder, shift) < at_truth - 0.05, (folder, shift)


def _owners(folder):
    """Per px: which layer's homography the truth map follows (-1: none, hidden)."""
    truth = sim.load_truth(folder)
    h, w = truth.dense.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    xy = np.stack([xs.ravel(), ys.ravel()], 1).astype(float)
    owner = np.full(h * w, -1)
    for i, layer in enumerate(truth.facts["layers"]):
        mapped = sim.apply_homography(np.array(layer["phone_to_dslr"]), xy)
        owner[np.linalg.norm(mapped - truth.dense.reshape(-1, 2), axis=1) < 1e-3] = i
    return owner.reshape(h, w), truth


def test_objects_are_where_the_background_homography_is_wrong_and_their_own_is_right(layered_pairs):
    for folder in layered_pairs:
        owner, truth = _owners(folder)
        objects = owner > 0
        assert 0.02 < objects.mean() < 0.5, folder
        # the truth of an object px is its layer's homography, not the background's
        ys, xs = np.nonzero(objects)
        bg = truth.map_points(np.stack([xs, ys], 1).astype(float))
        assert np.median(np.linalg.norm(bg - truth.dense[ys, xs], axis=1)) > 1.0
        # and the DSLR image agrees with the phone on the object under the truth map
        assert _truth_correlation(folder, owner_only=objects) > 0.9, folder


def test_parallax_grows_with_the_baseline_and_vanishes_without_one():
    opts = dict(phone_size=(160, 120), dslr_size=(240, 160), parallax=True)
    shifts = {}
    for baseline in (0.0, 60.0, 120.0):
        truth = sim.simulate_pair(4, options=sim.SimOptions(baseline_mm=baseline, **opts)).truth
        h, w = truth.dense.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w]
        bg = truth.map_points(np.stack([xs.ravel(), ys.ravel()], 1).astype(float)).reshape(h, w, 2)
        shifts[baseline] = np.linalg.norm(truth.dense - bg, axis=-1)  # object px off the background plane
    assert np.nanmax(shifts[0.0]) < 1e-3  # two cameras at one point see no parallax (float32 truth)
    both = np.isfinite(shifts[60.0]) & np.isfinite(shifts[120.0]) & (shifts[60.0] > 0.5)
    assert both.sum() > 100 and np.nanmax(shifts[60.0]) > 2.0
    # the same objects, twice the baseline: twice the parallax
    assert np.median(shifts[120.0][both] / shifts[60.0][both]) == pytest.approx(2.0, rel=0.1)


def test_motion_moves_an_object_by_a_few_to_fifteen_dslr_px():
    moved = []
    for seed in range(4):
        pair = sim.simulate_pair(seed, options=sim.SimOptions(phone_size=(160, 120), dslr_size=(240, 160),
                                                              motion=True))
        moved += [np.hypot(*layer["motion_dslr_px"]) for layer in pair.truth.facts["layers"] if layer["moving"]]
    assert moved and all(2.5 < m < 16 for m in moved)


def test_clipped_truth_marks_saturated_phone_cells_and_white_dslr_px(layered_pairs):
    for folder in layered_pairs:
        truth = sim.load_truth(folder)
        raw = rawio.read_raw(folder / "phone.dng")
        saturated = raw.mosaic >= raw.white_level - 1
        assert truth.clipped.any()
        assert truth.clipped[saturated].all()  # every saturated raw px is clipped in the truth
        dslr = rawio.read_rgb(folder / "dslr.jpg").rgb.max(axis=-1)
        ys, xs = np.nonzero(truth.clipped & np.isfinite(truth.dense[..., 0]) & ~saturated)
        at = truth.dense[ys, xs]
        near_white = cv2.dilate((dslr >= 0.95).astype(np.uint8), np.ones((5, 5), np.uint8))
        hits = near_white[np.round(at[:, 1]).astype(int), np.round(at[:, 0]).astype(int)]
        assert hits.mean() > 0.9  # clipped only in the DSLR: the DSLR is white there


def test_colour_shading_darkens_the_corners_of_each_colour_plane_differently():
    pair = sim.simulate_pair(3, options=sim.SimOptions(phone_size=(320, 240), dslr_size=(480, 320), shading=True))
    shade = sim._shading(np.random.default_rng(0), 320, 240)
    assert shade[120, 160].min() > 0.95
    corner = shade[5, 5]
    assert corner.max() < 0.85 and corner.max() - corner.min() > 0.05
    assert pair.phone.mosaic.shape == (240, 320)


def test_foreground_objects_are_textured_even_when_most_of_the_material_is_sky():
    rng = np.random.default_rng(0)
    source = np.full((400, 600, 3), 0.6, np.float32)  # three quarters flat sky ...
    source[300:] = rng.random((100, 600, 3)).astype(np.float32)  # ... over a textured strip
    make = sim._material(np.random.default_rng(1), [source])
    levels = [sim.texture_level(make(90, 120)) for _ in range(12)]
    assert min(levels) >= sim.MIN_OBJECT_TEXTURE, levels
    assert sim.texture_level(source[:250]) < 0.001  # a crop of the sky alone would not do
    # material without any texture still gives an object (the most textured crop)
    flat = sim._material(np.random.default_rng(2), [np.full((100, 100, 3), 0.5, np.float32)])(40, 60)
    assert flat.shape == (40, 60, 3)


def test_layered_pairs_are_the_same_for_the_same_seed(tmp_path):
    tiny = sim.SimOptions(phone_size=(128, 96), dslr_size=(192, 128), parallax=True, motion=True, clipping=True,
                          shading=True)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        sim.simulate_pairs(tmp_path / name, 1, seed=seed, options=tiny, progress=False)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert _digests(tmp_path / "a") != _digests(tmp_path / "c")


# ------------------------------------------------------------------ the output folder

TINY = ["--phone-size", "128x96", "--dslr-size", "192x128"]


def _simulate(out, *extra):
    return CliRunner().invoke(main, ["simulate", "--out", str(out), *TINY, *extra])


def _one_line_error(result, *words):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    assert all(w in lines[-1] for w in words), lines[-1]


def test_a_folder_of_other_files_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = _simulate(tmp_path, "--pairs", "1")
    assert result.exit_code == 1
    _one_line_error(result, str(tmp_path), "notes.txt", "not a simulation folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert _simulate(tmp_path, "--pairs", "1", "--force").exit_code == 1  # --force never deletes other files


def test_an_earlier_simulation_with_other_settings_is_refused_unless_forced(tmp_path):
    assert _simulate(tmp_path, "--pairs", "2", "--seed", "1").exit_code == 0
    before = _digests(tmp_path)
    result = _simulate(tmp_path, "--pairs", "2", "--seed", "2")
    assert result.exit_code == 1
    _one_line_error(result, "seed 1 vs 2", "--force")
    assert _digests(tmp_path) == before
    assert _simulate(tmp_path, "--pairs", "1", "--seed", "2", "--force").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair_0000", "simulation.json"]
    assert json.loads((tmp_path / "simulation.json").read_text())["seed"] == 2


def test_the_same_simulation_resumes_keeping_finished_pairs_and_redoing_partial_ones(tmp_path):
    assert _simulate(tmp_path, "--pairs", "2").exit_code == 0
    kept = (tmp_path / "pair_0000" / "phone.dng").stat().st_mtime_ns
    (tmp_path / "pair_0001" / "truth.json").unlink()  # a pair left half-done
    (tmp_path / ".pair_0002.partial").mkdir()  # a temporary folder left by a kill
    assert _simulate(tmp_path, "--pairs", "3").exit_code == 0
    assert (tmp_path / "pair_0000" / "phone.dng").stat().st_mtime_ns == kept
    assert (tmp_path / "pair_0001" / "truth.json").is_file() and (tmp_path / "pair_0002" / "truth.json").is_file()
    assert not list(tmp_path.glob(".*.partial"))
    fresh = tmp_path.parent / "fresh"
    assert _simulate(fresh, "--pairs", "3").exit_code == 0
    assert _digests(tmp_path) == _digests(fresh)  # resuming gives the bytes of one run


@pytest.mark.parametrize("option, value", [("--phone-size", "0x0"), ("--phone-size", "15x16"),
                                           ("--dslr-size", "axb"), ("--phone-size", "129x96")])
def test_a_bad_size_is_a_usage_error_before_anything_is_written(tmp_path, option, value):
    sizes = {"--phone-size": "128x96", "--dslr-size": "192x128", option: value}
    args = [item for pair in sizes.items() for item in pair]
    result = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_full_disk_leaves_no_pair_folder_and_says_so_in_one_line(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    assert _simulate(tmp_path, "--pairs", "1").exit_code == 0
    monkeypatch.setattr(sim, "write_dslr", full)
    result = _simulate(tmp_path, "--pairs", "2")
    assert result.exit_code == 1
    _one_line_error(result, "disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair_0000", "simulation.json"]  # nothing half-written


def test_hard_photometry_changes_the_responses_not_the_geometry_and_records_its_draws(tmp_path):
    hard_opts = sim.SimOptions(phone_size=(320, 240), dslr_size=(480, 320), photometry="hard")
    mild, hard = sim.simulate_pair(7, None, SMALL), sim.simulate_pair(7, None, hard_opts)
    np.testing.assert_array_equal(mild.truth.phone_to_dslr, hard.truth.phone_to_dslr)
    assert not np.array_equal(mild.phone.mosaic, hard.phone.mosaic)
    drawn = hard.truth.facts["photometry"]
    assert -1 <= drawn["dslr_stops"] <= 1 and 80 <= hard.options.jpeg_quality <= 95
    assert drawn["jpeg_quality"] == hard.options.jpeg_quality
    crosstalk = np.array(drawn["crosstalk"])
    np.testing.assert_allclose(crosstalk.sum(axis=1), 1.0)
    assert (np.diag(crosstalk) < 0.96).all()  # every filter passes some of its neighbours' light
    assert "photometry" not in mild.truth.facts
    again = sim.simulate_pair(7, None, hard_opts)
    np.testing.assert_array_equal(again.phone.mosaic, hard.phone.mosaic)
    # the camera still correlates with the DSLR through the truth (only photometry changed)
    folder = sim.write_pair(hard, tmp_path)
    phone = cv2.GaussianBlur(rawio.luminance(rawio.read_raw(folder / "phone.dng")), (0, 0), 1.0)
    assert _correlation(phone, cv2.GaussianBlur(_dslr_on_phone_grid(folder), (0, 0), 1.0)) > 0.8


def test_one_hard_pair_in_about_four_is_a_night_scene():
    nights = [sim._hard_photometry(seed)["night"] for seed in range(200)]
    assert 0.15 < np.mean(nights) < 0.35


def test_an_unknown_photometry_is_refused():
    with pytest.raises(ValueError, match="photometry"):
        sim.simulate_pair(0, None, sim.SimOptions(phone_size=(320, 240), dslr_size=(480, 320), photometry="harsh"))


def test_cli_photometry_hard_records_its_draws_in_the_truth(tmp_path):
    result = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path), "--pairs", "1", "--seed", "2",
                                       "--phone-size", "128x96", "--dslr-size", "192x128", "--photometry", "hard"])
    assert result.exit_code == 0, result.output
    facts = json.loads((tmp_path / "pair_0000" / "truth.json").read_text())
    assert set(facts["photometry"]) >= {"dslr_stops", "crosstalk", "jpeg_quality", "night"}
