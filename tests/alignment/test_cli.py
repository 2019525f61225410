"""``isp-rig align pair`` (alignment.cli) and the QA pictures (alignment.report)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from alignment import Alignment
from isp_rig import simulate as sim
from isp_rig.cli import main


def test_align_pair_prints_json_and_writes_the_report(tmp_path):
    pair = sim.simulate_pair(21, None, sim.SimOptions(phone_size=(512, 384), dslr_size=(768, 512)))
    folder = sim.write_pair(pair, tmp_path / "sim")
    res = CliRunner().invoke(main, ["align", "pair", str(folder / "phone.dng"), str(folder / "dslr.jpg"),
                                    "--json", "--report", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    a = Alignment.from_json(json.loads(res.output))
    assert a.ok and a.phone_path.endswith("phone.dng")
    corners = np.array([[0, 0], [511, 383]], float)
    assert np.abs(a.map_points(corners) - pair.truth.map_points(corners)).max() < 0.2
    for name in ("checkerboard.png", "difference.png", "residuals.png", "trust.png"):
        img = cv2.imread(str(tmp_path / "report" / name))
        assert img is not None and img.shape[0] == 384


def test_align_pair_exits_3_with_the_reason_for_a_rejected_pair(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):  # flat grey with independent noise: nothing to align
        flat = np.clip(128 + rng.normal(0, 1, (384, 512, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / name), flat)
    res = CliRunner().invoke(main, ["align", "pair", str(tmp_path / "a.png"), str(tmp_path / "b.png")])
    assert res.exit_code == 3
    assert "rejected (too_few_matches)" in res.output


def test_align_pair_names_an_unreadable_file(tmp_path):
    res = CliRunner().invoke(main, ["align", "pair", str(tmp_path / "missing.dng"), str(tmp_path / "x.jpg")])
    assert res.exit_code != 0
    assert "missing.dng" in res.output


def test_align_pair_passes_alignment_options_through(tmp_path):
    folder = sim.write_pair(sim.simulate_pair(5, None, sim.SimOptions(phone_size=(512, 384), dslr_size=(768, 512))),
                            tmp_path)
    res = CliRunner().invoke(main, ["align", "pair", str(folder / "phone.dng"), str(folder / "dslr.jpg"), "--json",
                                    "-o", "local=false", "-o", "max_plane_pixels=20000"])
    assert res.exit_code == 0, res.output
    options = json.loads(res.output)["options"]
    assert options["local"] is False and options["max_plane_pixels"] == 20000


def test_unknown_alignment_option_is_a_usage_error_listing_the_known_ones(tmp_path):
    res = CliRunner().invoke(main, ["align", "pair", "a.dng", "b.jpg", "-o", "no_such=1"])
    assert res.exit_code == 2
    assert "no_such" in res.output and "max_plane_pixels" in res.output


@pytest.mark.parametrize("option", ["min_trusted=abc", "min_trusted=1.5", "trust_margin_px=-3", "fine=fast",
                                    "trust=maybe", "feature_layers=0", "fine_filter=soft",
                                    "phone_blur_sigma=-0.2", "restore_chroma=sometimes",
                                    "fine_noise_px=0"])
def test_a_bad_option_value_is_a_usage_error_before_any_work(tmp_path, option):
    result = CliRunner().invoke(main, ["align", "batch", str(tmp_path), "--out", str(tmp_path / "ds"), "-o", option])
    assert result.exit_code == 2, result.output
    assert option.split("=")[0] in result.output and "Traceback" not in result.output
    assert not (tmp_path / "ds").exists()
