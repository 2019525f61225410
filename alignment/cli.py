"""``isp-rig align``: register DSLR images onto phone raws.

``isp-rig align pair PHONE DSLR [--report DIR] [--json]`` aligns one pair;
``isp-rig align batch ...`` (from :mod:`alignment.batch_cli`) runs many pairs and
builds a dataset (the same step as ``isp-rig dataset build``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from alignment.cli_options import option_flag, parse_options


@click.group()
def align() -> None:
    """Register DSLR images onto the phone's raw sensor grid (sub-pixel, with a verdict)."""


@align.command("pair")
@click.argument("phone", type=click.Path(path_type=Path))
@click.argument("dslr", type=click.Path(path_type=Path))
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write QA pictures here: checkerboard.png, difference.png, residuals.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the Alignment as JSON (homography phone -> DSLR, "
              "field, quality, verdict).")
@click.option("--no-local", is_flag=True, help="Skip the local (tile-wise) refinement.")
@option_flag
def pair(phone: Path, dslr: Path, report_dir: Path | None, as_json: bool, no_local: bool,
         align_options: tuple[str, ...]) -> None:
    """Align the DSLR image DSLR onto the phone image PHONE (raw or RGB).

    Exit status 0 when the pair is kept, 3 when it is rejected (the reason is
    printed), 1 when a file cannot be read.
    """
    from concurrent.futures import ThreadPoolExecutor

    from alignment import rawio
    from alignment.malloc import keep_large_arrays, skip_hugepage_advice

    keep_large_arrays()  # this process aligns one pair: large arrays stay in the heap
    skip_hugepage_advice()
    # the two files are decoded (in C, the GIL released) while the pipeline's modules are
    # imported (about 0.6 s, scipy's half of it): a 12 MP + 24 MP pair's decoding, about
    # 0.2 s, no longer waits for them
    with ThreadPoolExecutor(2) as pool:
        reading = [pool.submit(rawio.read_any, path) for path in (phone, dslr)]
        from alignment.pipeline import align_images

        options = parse_options(align_options)  # (a usage error still comes before any result is used)
        if no_local:
            options["local"] = False
        errors = [r.exception() for r in reading]  # the phone's error first, as pipeline.read_pair
    for err in errors:
        if isinstance(err, rawio.ImageReadError):
            raise click.ClickException(str(err)) from None
        if err is not None:
            raise err
    ph, ds = (r.result() for r in reading)
    try:
        a = align_images(ph, ds, **options)
    except (TypeError, ValueError) as err:
        raise click.ClickException(f"alignment options: {err}") from None
    a.phone_path, a.dslr_path = str(phone), str(dslr)
    if report_dir is not None:
        from alignment.report import write_pair_report

        paths = write_pair_report(a, ph, ds, report_dir)
        if not as_json:
            for name, p in paths.items():
                click.echo(f"{name}: {p}")
    if as_json:
        click.echo(a.to_json(indent=1))
    else:
        q = a.quality
        verdict = "kept" if q.ok else f"rejected ({q.reason})"
        click.echo(f"{phone.name} -> {dslr.name}: {verdict}: {q.message}")
        if q.ok:
            h = a.homography
            click.echo("homography phone -> DSLR:\n" + "\n".join("  " + " ".join(f"{v: .8g}" for v in row) for row in h))
            click.echo(f"seconds: {json.dumps({k: round(v, 2) for k, v in a.seconds.items()})}")
    if not a.ok:
        raise SystemExit(3)


def _attach_batch() -> None:
    try:
        from alignment.batch_cli import batch_command
    except ImportError:  # the batch stage is optional
        return
    align.add_command(batch_command, "batch")


_attach_batch()
