"""Raw and image decoding: real raws, generated DNGs of every CFA phase, bad inputs."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from alignment import rawio
from isp_rig.simulate import write_dng

CFA_EXPECTED = {
    "RGGB": [(0, 0), (0, 1), (1, 0), (1, 1)],
    "GRBG": [(0, 1), (0, 0), (1, 1), (1, 0)],
    "GBRG": [(1, 0), (1, 1), (0, 0), (0, 1)],
    "BGGR": [(1, 1), (1, 0), (0, 1), (0, 0)],
}


def make_raw(cfa: str, h: int = 64, w: int = 96, seed: int = 0) -> rawio.RawImage:
    rng = np.random.default_rng(seed)
    mosaic = rng.integers(40, 1023, (h, w)).astype(np.uint16)
    exif = rawio.ExifInfo(make="Acme", model="Phone X", focal_length_mm=4.2, focal_length_35mm=26,
                          exposure_time_s=0.01, iso=200, capture_time=dt.datetime(2026, 5, 4, 3, 2, 1, 250000))
    return rawio.RawImage(mosaic=mosaic, cfa=cfa, black_levels=np.array([60, 62, 63, 61], np.float32),
                          white_level=1023.0, camera_wb=np.array([2.0, 1.0, 1.5], np.float32),
                          color_matrix=np.array([[1.5, -0.3, -0.2], [-0.2, 1.4, -0.2], [0.0, -0.4, 1.4]],
                                                np.float32), exif=exif)


@pytest.mark.parametrize("cfa", rawio.CFA_PATTERNS)
def test_cfa_positions_put_g1_on_the_red_row(cfa):
    assert rawio.cfa_positions(cfa) == CFA_EXPECTED[cfa]


@pytest.mark.parametrize("cfa", rawio.CFA_PATTERNS)
def test_pack_then_unpack_is_exact_and_planes_hold_the_right_colour(cfa):
    h, w = 8, 12
    colour_of = {"R": 1, "G": 2, "B": 3}
    mosaic = np.zeros((h, w), np.uint16)
    for (r, c), letter in zip([(0, 0), (0, 1), (1, 0), (1, 1)], cfa):
        mosaic[r::2, c::2] = colour_of[letter]
    planes = rawio.pack(mosaic, cfa)
    assert planes.shape == (h // 2, w // 2, 4)
    assert [int(planes[..., k].max()) for k in range(4)] == [1, 2, 2, 3]
    rng = np.random.default_rng(1)
    random_mosaic = rng.integers(0, 65535, (h, w)).astype(np.uint16)
    assert np.array_equal(rawio.unpack(rawio.pack(random_mosaic, cfa), cfa), random_mosaic)


@pytest.mark.parametrize("cfa", rawio.CFA_PATTERNS)
def test_generated_dng_round_trips_mosaic_levels_and_exif(tmp_path, cfa):
    raw = make_raw(cfa)
    path = tmp_path / f"{cfa}.dng"
    write_dng(path, raw)
    back = rawio.read_raw(path)
    assert back.cfa == cfa
    assert np.array_equal(back.mosaic, raw.mosaic)
    np.testing.assert_allclose(back.black_levels, raw.black_levels)
    assert back.white_level == 1023
    np.testing.assert_allclose(back.camera_wb, raw.camera_wb, rtol=1e-3)
    np.testing.assert_allclose(back.color_matrix, raw.color_matrix, atol=2e-3)
    assert np.array_equal(rawio.pack(back.mosaic, cfa), rawio.pack(raw.mosaic, cfa))
    e = back.exif
    assert (e.make, e.model, e.focal_length_35mm, e.iso) == ("Acme", "Phone X", 26, 200)
    assert e.focal_length_mm == pytest.approx(4.2) and e.exposure_time_s == pytest.approx(0.01)
    assert e.capture_time == dt.datetime(2026, 5, 4, 3, 2, 1, 250000)


def test_normalize_subtracts_black_and_divides_by_range():
    planes = np.array([[[60, 62, 1023, 542]]], np.uint16)
    out = rawio.normalize(planes, np.array([60, 62, 63, 61]), 1023)
    np.testing.assert_allclose(out[0, 0], [0, 0, 1, (542 - 61) / (1023 - 61)], rtol=1e-6)


@pytest.mark.parametrize("cfa", rawio.CFA_PATTERNS)
def test_demosaic_keeps_samples_and_reproduces_a_flat_colour(cfa):
    colour = np.array([0.2, 0.5, 0.8], np.float32)
    planes = np.empty((6, 7, 4), np.float32)
    planes[..., 0], planes[..., 1], planes[..., 2], planes[..., 3] = colour[0], colour[1], colour[1], colour[2]
    rgb = rawio.demosaic(planes, cfa)
    assert rgb.shape == (12, 14, 3)
    np.testing.assert_allclose(rgb, np.broadcast_to(colour, rgb.shape), atol=1e-6)


def test_demosaic_interpolates_a_linear_ramp_exactly_inside():
    # A horizontal ramp: bilinear interpolation is exact away from the border.
    h, w = 16, 20
    ramp = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    planes = rawio.pack(ramp, "RGGB")
    rgb = rawio.demosaic(planes, "RGGB")
    for c in range(3):
        np.testing.assert_allclose(rgb[2:-2, 2:-2, c], ramp[2:-2, 2:-2], atol=1e-5)


def test_srgb_curves_are_inverse():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(rawio.linear_to_srgb(rawio.srgb_to_linear(x)), x, atol=1e-5)


def test_luminance_of_raw_is_on_the_full_and_half_grid():
    raw = make_raw("GBRG", 32, 48)
    assert rawio.luminance(raw).shape == (32, 48)
    assert rawio.luminance(raw, resolution="half").shape == (16, 24)
    assert rawio.srgb_preview(raw, max_side=20).shape[:2] == (13, 20)


def test_luminance_of_srgb_white_is_one():
    assert rawio.luminance(np.ones((2, 2, 3), np.float32)) == pytest.approx(np.ones((2, 2)))


# ---------------------------------------------------------------- real files


@pytest.mark.parametrize(
    "name, cfa, black, white",
    [("Blackmagic.dng", "RGGB", 512, 65535), ("RAW_KODAK_DC50.KDC", "GRBG", 0, 16383)],
)
def test_real_raws_decode_with_the_file_pattern_and_levels(shared_data, name, cfa, black, white):
    raw = rawio.read_raw(shared_data / "raw" / name)
    assert raw.cfa == cfa
    assert raw.white_level == white
    np.testing.assert_array_equal(raw.black_levels, [black] * 4)
    assert raw.mosaic.shape[0] % 2 == 0 and raw.mosaic.shape[1] % 2 == 0
    packed = raw.packed()
    assert packed.shape == (raw.mosaic.shape[0] // 2, raw.mosaic.shape[1] // 2, 4)
    assert 0.0 < float(np.median(packed)) < 1.0
    preview = rawio.srgb_preview(raw, max_side=256)
    assert preview.dtype == np.uint8 and max(preview.shape[:2]) == 256 and preview.std() > 10


def test_kodak_exif_facts_are_read(shared_data):
    exif = rawio.read_raw(shared_data / "raw" / "RAW_KODAK_DC50.KDC").exif
    assert exif.make == "Eastman Kodak Company"
    assert exif.focal_length_mm == pytest.approx(37.0)
    assert exif.capture_time == dt.datetime(1997, 4, 23, 8, 0, 47)


def test_a_real_dng_gives_its_colour_calibration_and_other_raws_none(shared_data):
    meta = rawio.read_raw(shared_data / "raw" / "Blackmagic.dng").metadata()
    dng = meta["dng"]
    assert (dng["calibration_illuminant_1"], dng["calibration_illuminant_1_name"]) == (17, "Standard light A")
    assert (dng["calibration_illuminant_2"], dng["calibration_illuminant_2_name"]) == (21, "D65")
    # a forward matrix takes camera neutral to the D50 white point: its rows sum to D50's XYZ
    for key in ("forward_matrix_1", "forward_matrix_2"):
        np.testing.assert_allclose(np.sum(dng[key], axis=1), [0.9642, 1.0, 0.8249], atol=2e-3)
    assert np.shape(dng["color_matrix_1"]) == np.shape(dng["color_matrix_2"]) == (3, 3)
    assert dng["as_shot_neutral"][1] == 1.0 and dng["baseline_exposure"] == pytest.approx(2.65412, abs=1e-4)
    # white balance from the DNG's own neutral, as LibRaw reads it: the reciprocal
    np.testing.assert_allclose(meta["as_shot_wb"], 1 / np.asarray(dng["as_shot_neutral"]), rtol=1e-3)
    json.dumps(meta)  # a record field: plain JSON
    assert rawio.read_raw(shared_data / "raw" / "RAW_KODAK_DC50.KDC").metadata()["dng"] is None


def test_real_phone_patch_unpacks_to_a_mosaic_and_back(shared_data):
    planes = np.load(shared_data / "raw" / "phone_patch_x90_rggb_512.npy")
    mosaic = rawio.unpack(planes, "RGGB")
    assert mosaic.shape == (1024, 1024)
    assert np.array_equal(rawio.pack(mosaic, "RGGB"), planes)


@pytest.mark.parametrize("name", ["iphone/0.jpg", "canon/0.jpg", "hd/0.png"])
def test_real_photos_read_as_rgb_in_unit_range(shared_data, name):
    img = rawio.read_rgb(shared_data / "phone_vs_dslr" / name)
    assert img.rgb.ndim == 3 and img.rgb.shape[2] == 3 and img.bit_depth == 8
    assert 0.0 <= img.rgb.min() and img.rgb.max() <= 1.0


# ---------------------------------------------------------------- bad input

BAD_INPUTS = {
    "CanonRaw.cr2": "corrupt",
    "DNG.dng": "no_image_data",
    "FujiFilm.raf": "truncated",
    "Nikon.nef": "corrupt",
    "Panasonic.rw2": "no_image_data",
}


@pytest.mark.parametrize("name, reason", sorted(BAD_INPUTS.items()))
def test_header_only_stubs_raise_a_typed_error_naming_the_file(shared_data, tmp_path, name, reason):
    path = shared_data / "bad_inputs" / name
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(rawio.ImageReadError) as info:
        rawio.read_any(path)
    assert info.value.reason == reason
    assert str(path) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_every_bad_input_file_is_refused(shared_data):
    stubs = [p for p in (shared_data / "bad_inputs").iterdir() if p.suffix.lower() in rawio.RAW_EXTENSIONS]
    assert stubs
    for path in stubs:
        with pytest.raises(rawio.ImageReadError):
            rawio.read_raw(path)


def test_truncated_real_dng_is_reported_truncated(shared_data, tmp_path):
    data = (shared_data / "raw" / "Blackmagic.dng").read_bytes()
    path = tmp_path / "cut.dng"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(rawio.ImageReadError) as info:
        rawio.read_raw(path)
    assert info.value.reason == "truncated"


@pytest.mark.parametrize(
    "content, reason",
    [(None, "missing"), (b"", "truncated"), (b"hello, not an image", "not_an_image")],
)
def test_missing_empty_and_non_image_files(tmp_path, content, reason):
    path = tmp_path / "thing.dng"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(rawio.ImageReadError) as info:
        rawio.read_any(path)
    assert info.value.reason == reason and info.value.path == path


def test_truncated_jpeg_is_refused(tmp_path):
    import cv2

    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8))
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(rawio.ImageReadError) as info:
        rawio.read_rgb(path)
    assert info.value.reason == "truncated"


def test_sixteen_bit_tiff_keeps_its_precision(tmp_path):
    import tifffile

    data = np.random.default_rng(0).integers(0, 65535, (10, 12, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", data, photometric="rgb")
    img = rawio.read_rgb(tmp_path / "t.tif")
    assert img.bit_depth == 16
    np.testing.assert_allclose(img.rgb, data / 65535.0, atol=1e-7)


def _write_cfa_dng(path, pattern_dim, pattern):
    import tifffile

    mosaic = np.random.default_rng(0).integers(100, 4000, (36, 36)).astype(np.uint16)
    tags = [(33421, "H", 2, pattern_dim, True), (33422, "B", len(pattern), pattern, True),
            (50706, "B", 4, (1, 4, 0, 0), True), (50708, "s", 0, "Test", True), (50717, "H", 1, (4095,), True),
            (50721, "2i", 9, [1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1], True)]
    tifffile.imwrite(path, mosaic, photometric=32803, extratags=tags, metadata=None, subfiletype=0)


def test_xtrans_six_by_six_cfa_is_refused_as_unsupported(tmp_path):
    xtrans = (1, 1, 0, 1, 1, 2, 1, 1, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1, 1, 1, 2, 1, 1, 0, 1, 1, 0, 1, 1, 2,
              0, 2, 1, 2, 0, 1)
    path = tmp_path / "xtrans.dng"
    _write_cfa_dng(path, (6, 6), xtrans)
    with pytest.raises(rawio.ImageReadError) as info:
        rawio.read_raw(path)
    assert info.value.reason == "unsupported"


def test_linear_three_channel_dng_is_refused_as_unsupported(tmp_path):
    import tifffile

    data = np.random.default_rng(0).integers(100, 4000, (16, 16, 3)).astype(np.uint16)
    tags = [(50706, "B", 4, (1, 4, 0, 0), True), (50708, "s", 0, "Scanner", True), (50717, "H", 1, (4095,), True),
            (50721, "2i", 9, [1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1], True)]
    path = tmp_path / "linear.dng"
    tifffile.imwrite(path, data, photometric=34892, extratags=tags, metadata=None, subfiletype=0)
    with pytest.raises(rawio.ImageReadError) as info:
        rawio.read_raw(path)
    assert info.value.reason == "unsupported"
