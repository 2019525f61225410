"""``isp-rig simulate``: write simulated phone-raw / DSLR pairs with ground truth."""

from __future__ import annotations

import errno
from pathlib import Path

import click


def _size(value: str, hint: str, smallest: int = 32) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT, got {value!r}", param_hint=hint) from None
    if w < smallest or h < smallest:
        raise click.BadParameter(f"{value}: each side must be at least {smallest} px", param_hint=hint)
    return w, h


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write DIR/<pair-id>/{phone.dng, dslr.jpg|dslr.tif, truth.json}.")
@click.option("--pairs", "n_pairs", default=4, show_default=True, type=click.IntRange(min=1), help="Number of pairs.")
@click.option("--seed", default=0, show_default=True, type=int, help="Everything random comes from this seed.")
@click.option("--source", type=click.Path(path_type=Path),
              help="A real raw or photo, or a folder of them, as the scene (default: procedural scenes).")
@click.option("--distortion", is_flag=True, help="Give the phone lens radial distortion.")
@click.option("--phone-size", help="Phone raw WIDTHxHEIGHT (even).  [default: the profile's raw_size, else 1024x768]")
@click.option("--dslr-size", default="1536x1024", show_default=True, help="DSLR image WIDTHxHEIGHT.")
@click.option("--dslr-format", type=click.Choice(["jpg", "tif"]), default="jpg", show_default=True,
              help="DSLR JPEG (quality 92) or 16-bit TIFF.")
@click.option("--phone-bits", type=click.Choice(["10", "12"]),
              help="Phone raw bit depth.  [default: the profile's bits, else 10]")
@click.option("--phone-profile", help="Simulate this phone: a profile name or .toml path whose [simulation] table "
                                      "fixes its CFA, colour response, noise, bit depth and raw size (default: "
                                      "a generic phone whose CFA and colour response are drawn per pair).")
@click.option("--parallax", is_flag=True,
              help="2.5D scene: a background plane at 8-30 m and 2-4 textured objects at 1.5-5 m, seen by two "
                   "pinhole cameras BASELINE apart (parallax and occlusion follow from depth).")
@click.option("--motion", is_flag=True,
              help="One or two objects move 3-15 DSLR px between the exposures (half of them smeared in the DSLR).")
@click.option("--clipping", is_flag=True, help="Highlights that clip the DSLR and sometimes the phone.")
@click.option("--shading", is_flag=True, help="Per-colour lens shading of the phone (colour vignetting).")
@click.option("--baseline-mm", default=60.0, show_default=True, type=click.FloatRange(min=0.0, max=1000.0),
              help="Distance between the two cameras' centres (layered scenes).")
@click.option("--photometry", type=click.Choice(["mild", "hard"]), default="mild", show_default=True,
              help="hard: the DSLR up to a stop brighter or darker, strong S tone curves and saturation, 3x3 colour "
                   "crosstalk of the phone, vignetting 0-30 %, JPEG quality 80-95, one pair in four a noisy night "
                   "scene (what the alignment benchmark draws from).")
@click.option("--force", is_flag=True,
              help="Replace an earlier simulation with other settings in OUT (never a folder of other files).")
def simulate(out_dir: Path, n_pairs: int, seed: int, source: Path | None, distortion: bool, phone_size: str | None,
             dslr_size: str, dslr_format: str, phone_bits: str | None, phone_profile: str | None, parallax: bool,
             motion: bool, clipping: bool, shading: bool, baseline_mm: float, photometry: str, force: bool) -> None:
    """Simulate phone-raw / DSLR pairs of the same scene with exact ground truth.

    OUT is new, empty, or an earlier run of the same simulation (resumed:
    finished pairs are kept); a folder of anything else is refused, an earlier
    simulation with other settings too unless --force. OUT/simulation.json
    records the settings. Each pair folder holds phone.dng (a Bayer raw rawpy opens), dslr.jpg or
    dslr.tif (Nikon Z6 EXIF) and truth.json (phone_to_dslr homography,
    distortion, and a dense grid of phone-pixel to DSLR-pixel correspondences).
    With --parallax, --motion or --clipping the scene is layered and each folder
    also holds truth_map.npy (float32 H x W x 2: the DSLR (x, y) of every phone
    raw pixel's scene point, NaN where the DSLR does not see it) and
    truth_clipped.png (255 where either camera clipped).
    """
    from dataclasses import replace

    from isp_rig import simulate as sim
    from isp_rig.profiles import load_profile

    phone, profile_size = sim.PhoneModel(), None
    if phone_profile:
        phone, profile_size = sim.phone_from_profile(load_profile(phone_profile), phone_profile)
    if phone_bits:
        phone = replace(phone, bits=int(phone_bits))
    pw, ph = _size(phone_size, "--phone-size") if phone_size else (profile_size or (1024, 768))
    if pw % 2 or ph % 2:
        raise click.BadParameter("the phone raw size must be even", param_hint="--phone-size")
    dw, dh = _size(dslr_size, "--dslr-size")
    supersample = 2 if dw * dh <= 8_000_000 else 1
    options = sim.SimOptions(phone_size=(pw, ph), dslr_size=(dw, dh), distortion=distortion,
                             dslr_format=dslr_format, supersample=supersample, parallax=parallax, motion=motion,
                             clipping=clipping, shading=shading, baseline_mm=baseline_mm, photometry=photometry)
    try:
        folders = sim.simulate_pairs(out_dir, n_pairs, seed, source=source, options=options,
                                     phone=phone, force=force)
    except (sim.SourceError, sim.OutputFolderError) as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:
        reason = "disk full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        raise click.ClickException(f"{err.filename or out_dir}: {reason}") from None
    click.echo(f"wrote {len(folders)} pairs to {out_dir}")
