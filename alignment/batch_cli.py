"""``isp-rig align batch`` and the ``isp-rig dataset`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import click

from alignment.cli_options import option_flag, parse_options


def _jobs(source: Path | None, pairs_csv: Path | None, phone_dir: Path | None, dslr_dir: Path | None, match: str):
    from alignment import batch

    given = [source is not None, pairs_csv is not None, phone_dir is not None or dslr_dir is not None]
    if sum(given) != 1:
        raise click.UsageError("give exactly one of SOURCE, --pairs CSV, or --phone-dir with --dslr-dir")
    try:
        if source is not None:
            return batch.find_pairs(source)
        if pairs_csv is not None:
            return batch.pairs_from_csv(pairs_csv)
        if phone_dir is None or dslr_dir is None:
            raise click.UsageError("--phone-dir and --dslr-dir go together")
        jobs = batch.pairs_from_two_folders(phone_dir, dslr_dir, match=match)
        for what, names in zip(("phone raw(s) without a DSLR image", "DSLR image(s) without a phone raw"),
                               batch.unpaired_files(phone_dir, dslr_dir, jobs)):
            if names:
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                click.echo(f"left out {len(names)} {what} (by {match}): {shown}", err=True)
        return jobs
    except batch.BatchSourceError as err:
        raise click.ClickException(str(err)) from None


def _batch_options(f):
    decorators = [
        click.argument("source", required=False, type=click.Path(exists=True, path_type=Path)),
        click.option("--pairs", "pairs_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="CSV with columns phone, dslr [, id, scene, phone_jpeg, truth]."),
        click.option("--phone-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="Folder of phone raws (with --dslr-dir)."),
        click.option("--dslr-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="Folder of DSLR images (with --phone-dir)."),
        click.option("--match", type=click.Choice(["name", "time"]), default="name", show_default=True,
                     help="How --phone-dir and --dslr-dir files are paired: file name or EXIF capture time."),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="The dataset folder (created, or resumed)."),
        click.option("--workers", type=click.IntRange(min=1), help="Local worker processes (default: cores, "
                     "bounded by free memory)."),
        click.option("--scheduler", help="Address of a Dask scheduler: run the pairs on that cluster instead."),
        click.option("--split-seed", default=0, show_default=True, help="Seed of the scene split."),
        click.option("--test-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 1),
                     help="Fraction of scenes in the test split."),
        click.option("--phone-profile", help="Phone profile name recorded in dataset.json."),
        click.option("--report/--no-report", default=True, show_default=True,
                     help="Write report/ (residual histogram, rejected pairs, overlays)."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
        click.option("--save-maps", is_flag=True,
                     help="Also write pairs/<id>/map.npy: float32 HxWx2, the DSLR (x, y) at which each target "
                          "px was sampled."),
        option_flag,
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def _run(source, pairs_csv, phone_dir, dslr_dir, match, out_dir, workers, scheduler, split_seed, test_fraction,
         phone_profile, report, as_json, save_maps, align_options):
    from alignment import batch
    from alignment.dataset import DatasetError, DatasetMeta

    options = parse_options(align_options)

    jobs = _jobs(source, pairs_csv, phone_dir, dslr_dir, match)
    meta = DatasetMeta(phone_profile=phone_profile, split_seed=split_seed, test_fraction=test_fraction,
                       provenance={"source": str(source or pairs_csv or f"{phone_dir} + {dslr_dir}")})
    try:
        if scheduler:
            with batch.dask_client(scheduler) as client:
                summary = batch.run_batch(jobs, out_dir, executor=client.get_executor(), meta=meta,
                                          options=options, save_maps=save_maps)
        else:
            summary = batch.run_batch(jobs, out_dir, workers=workers, meta=meta, options=options,
                                      save_maps=save_maps)
    except DatasetError as err:
        raise click.ClickException(str(err)) from None
    if report:
        from alignment.batch_report import write_batch_report

        write_batch_report(out_dir)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=1))
        _exit_on_failures(summary)
        return
    click.echo(f"{summary.total} pairs: {summary.kept} kept, {sum(summary.rejected.values())} rejected, "
               f"{sum(summary.failed.values())} failed ({summary.skipped} already done) in {summary.seconds:.1f} s")
    for label, counts in (("rejected", summary.rejected), ("failed", summary.failed)):
        for reason, n in sorted(counts.items()):
            click.echo(f"  {label}: {reason}: {n}")
    if summary.residual_px:
        r = summary.residual_px
        click.echo(f"  residual (phone px): median {r['p50']:.3f}, p90 {r['p90']:.3f}, max {r['max']:.3f}")
    if summary.trusted_fraction:
        t = summary.trusted_fraction
        click.echo(f"  trusted px per kept pair: median {t['p50']:.1%}, lowest {t['min']:.1%}")
    if summary.truth_error_px:
        t = summary.truth_error_px
        click.echo(f"  error against ground truth over trusted px (DSLR px, per-pair medians): median {t['p50']:.3f}, "
                   f"max {t['max']:.3f}")
    if summary.truth_trust:
        t = summary.truth_trust
        click.echo(f"  trust map against ground truth (per-pair medians): precision at 0.5 px "
                   f"{t['precision_05']['p50']:.4f}, coverage {t['coverage']['p50']:.3f}, clipped px trusted "
                   f"{t['clipped_trusted']['p50']:.2%}")
    click.echo(f"dataset: {out_dir}")
    _exit_on_failures(summary)


def _exit_on_failures(summary) -> None:
    """Exit status 1 when some pair failed (unreadable, an error): the work found a
    problem; rejected pairs are verdicts, not failures (status 0)."""
    if summary.failed:
        raise SystemExit(1)


@click.command("batch")
@_batch_options
def batch_command(**kwargs) -> None:
    """Align many pairs and build the dataset (the same step as `isp-rig dataset build`).

    SOURCE is a capture session folder (manifest.jsonl), a folder of pair
    folders (phone.<raw> + dslr.<image>, as `isp-rig simulate` writes), or use
    --pairs CSV or --phone-dir/--dslr-dir (the files left unpaired are counted
    and named on stderr). Resumable: pairs already kept or rejected in --out are
    skipped; failed pairs are tried again; an --out made from other files is
    refused. Exit status 0 when every pair was kept or rejected, 1 when some
    pair failed.
    """
    _run(**kwargs)


@click.group()
def dataset() -> None:
    """Build, export and import paired datasets."""


@dataset.command("build")
@_batch_options
def build(**kwargs) -> None:
    """Align pairs and build the dataset: the same step as `isp-rig align batch`."""
    _run(**kwargs)


@dataset.command("export")
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--layout", type=click.Choice(["patches"]), default="patches", show_default=True)
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=2), help="Patch side (even).")
@click.option("--stride", type=click.IntRange(min=2), help="Step between patches (default: --size).")
@click.option("--force", is_flag=True, help="Replace an earlier export in --out (a folder of other files is "
              "always refused).")
def export(dataset_dir: Path, out_dir: Path, layout: str, size: int, stride: int | None, force: bool) -> None:
    """Write fixed patches (Bayer mosaic PNG + RGB target PNG) of every kept pair."""
    from alignment.dataset import DatasetError
    from alignment.exchange import export_patches

    try:
        n = export_patches(dataset_dir, out_dir, size=size, stride=stride, force=force)
    except (DatasetError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {n} patches to {out_dir}")


@dataset.command("import")
@click.option("--inputs", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Inputs: raws, packed .npy planes, 16-bit Bayer PNGs, or RGB images (a phone's JPEGs).")
@click.option("--targets", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Aligned RGB targets with the same file names.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["train", "test"]), help="Put every pair in this split "
              "(default: split by name with --split-seed).")
@click.option("--cfa", default="RGGB", show_default=True, type=click.Choice(["RGGB", "GRBG", "GBRG", "BGGR"]),
              help="CFA phase of 16-bit Bayer PNG inputs.")
@click.option("--white-level", type=float, help="White level of integer raw inputs (.npy planes, Bayer PNGs), "
              "black already subtracted; raws read through LibRaw take theirs from the file.")
@click.option("--split-seed", default=0, show_default=True)
def import_(inputs: Path, targets: Path, out_dir: Path, split: str | None, cfa: str, white_level: float | None,
            split_seed: int) -> None:
    """Import already aligned pairs with matching file names into a dataset folder."""
    from alignment import rawio
    from alignment.dataset import DatasetError
    from alignment.exchange import import_aligned, unmatched_files

    try:
        n = import_aligned(inputs, targets, out_dir, split=split, cfa=cfa, seed=split_seed, white_level=white_level)
    except (DatasetError, rawio.ImageReadError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"imported {n} pairs into {out_dir}")
    for what, names in zip(("input(s) without a target", "target(s) without an input"),
                           unmatched_files(inputs, targets)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            click.echo(f"left out {len(names)} {what}: {shown}")
