"""``isp-rig simulate``: write simulated phone-raw / DSLR pairs with ground truth."""

from __future__ import annotations

from pathlib import Path

import click


def _size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT, got {value!r}") from None
    return w, h


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write DIR/<pair-id>/{phone.dng, dslr.jpg|dslr.tif, truth.json}.")
@click.option("--pairs", "n_pairs", default=4, show_default=True, type=click.IntRange(min=1), help="Number of pairs.")
@click.option("--seed", default=0, show_default=True, type=int, help="Everything random comes from this seed.")
@click.option("--source", type=click.Path(path_type=Path),
              help="A real raw or photo, or a folder of them, as the scene (default: procedural scenes).")
@click.option("--distortion", is_flag=True, help="Give the phone lens radial distortion.")
@click.option("--phone-size", default="1024x768", show_default=True, help="Phone raw WIDTHxHEIGHT (even).")
@click.option("--dslr-size", default="1536x1024", show_default=True, help="DSLR image WIDTHxHEIGHT.")
@click.option("--dslr-format", type=click.Choice(["jpg", "tif"]), default="jpg", show_default=True,
              help="DSLR JPEG (quality 92) or 16-bit TIFF.")
@click.option("--phone-bits", type=click.Choice(["10", "12"]), default="10", show_default=True,
              help="Phone raw bit depth.")
def simulate(out_dir: Path, n_pairs: int, seed: int, source: Path | None, distortion: bool, phone_size: str,
             dslr_size: str, dslr_format: str, phone_bits: str) -> None:
    """Simulate phone-raw / DSLR pairs of the same scene with exact ground truth.

    Each pair folder holds phone.dng (a Bayer raw rawpy opens), dslr.jpg or
    dslr.tif (Nikon Z6 EXIF) and truth.json (phone_to_dslr homography,
    distortion, and a dense grid of phone-pixel to DSLR-pixel correspondences).
    """
    from isp_rig import simulate as sim

    pw, ph = _size(phone_size)
    if pw % 2 or ph % 2:
        raise click.BadParameter("the phone raw size must be even", param_hint="--phone-size")
    dw, dh = _size(dslr_size)
    supersample = 2 if dw * dh <= 8_000_000 else 1
    options = sim.SimOptions(phone_size=(pw, ph), dslr_size=(dw, dh), distortion=distortion,
                             dslr_format=dslr_format, supersample=supersample)
    try:
        folders = sim.simulate_pairs(out_dir, n_pairs, seed, source=source, options=options,
                                     phone=sim.PhoneModel(bits=int(phone_bits)))
    except sim.SourceError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {len(folders)} pairs to {out_dir}")
