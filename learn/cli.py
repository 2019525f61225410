"""Click commands of the learning stage: ``isp-rig train``, ``isp-rig eval``, ``isp-rig render``.

``train`` also runs under ``torchrun --nproc_per_node=K $(which isp-rig) train ...`` (DDP, same code path).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np


def _data_config(data: Path | None, config: dict) -> dict:
    if data is None:
        if config["data"].get("kind", "dataset") == "dataset" and not config["data"].get("root"):
            raise click.UsageError("give --data DATASET (or data.root in the config file)")
        return config["data"]
    return {**config["data"], "kind": "dataset", "root": str(data)}


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder (isp-rig dataset build); overrides data.root of the config.")
@click.option("--val-data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder whose val (else test) split validates the run instead of --data's own "
                   "(needed for a dataset without one).")
@click.option("--also-data", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Another dataset folder whose train pairs join the training pairs (e.g. another phone's, "
                   "with a metadata input space); repeatable.")
@click.option("--model", "model_name", help="Model name (learn.models.available()); overrides the config.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder; an existing run is resumed from its last checkpoint.")
@click.option("--steps", type=click.IntRange(min=1), help="Training steps (overrides optim.steps).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Experiment config, TOML or JSON (sections model, data, optim, loss, train).")
@click.option("--seed", type=int, help="Seed for weights and crops (overrides train.seed).")
@click.option("--init-from", type=click.Path(exists=True, path_type=Path),
              help="Checkpoint or run folder whose weights start this run (fine-tuning for a new phone).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(data: Path | None, val_data: Path | None, also_data: tuple[Path, ...], model_name: str | None, out: Path,
          steps: int | None, config_path: Path | None, seed: int | None, init_from: Path | None,
          no_progress: bool) -> None:
    """Train a model on a dataset folder; resume a killed run by running the same command again."""
    from learn import models
    from learn.train import load_config
    from learn.train import train as run_training

    # a ConfigError or DataError carries exit_status: the CLI root prints it as one line
    cfg = load_config(config_path)
    if model_name is not None:
        if model_name not in models.available():
            raise click.BadParameter(f"unknown model {model_name!r}; available: {', '.join(models.available())}",
                                     param_hint="--model")
        if model_name != cfg["model"]["name"]:
            cfg["model"] = {"name": model_name, "kwargs": {}}
    cfg["data"] = _data_config(data, cfg)
    if val_data is not None:
        cfg["data"]["val_root"] = str(val_data)
    if also_data:
        cfg["data"]["also_roots"] = [str(p) for p in also_data]
    if steps is not None:
        cfg["optim"]["steps"] = steps
    if seed is not None:
        cfg["train"]["seed"] = seed
    summary = run_training(cfg, out, init_from=init_from, progress=not no_progress)
    if summary.get("val_psnr") is not None:
        click.echo(f"step {summary['step']}: val PSNR {summary['val_psnr']:.2f} dB, SSIM {summary['val_ssim']:.4f}")
    click.echo(f"run folder: {out}")


@click.command(name="eval")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder; default: the run's own data.")
@click.option("--run", "run", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print psnr, ssim, lpips (null when unavailable) as JSON.")
@click.option("--lpips-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="AlexNet + LPIPS linear weights (torch file); without it LPIPS is reported unavailable.")
@click.option("--tile", default=512, show_default=True, type=click.IntRange(min=16),
              help="Render tile size (input positions).")
def evaluate(data: Path | None, run: Path, as_json: bool, lpips_weights: Path | None, tile: int) -> None:
    """Score a trained run on the test split; writes RUN/eval/table.md and table.csv."""
    from learn.evaluate import evaluate_run, table_markdown

    res = evaluate_run(run, data, lpips_weights, tile, progress=not as_json)
    if as_json:
        out = {k: res[k] for k in ("model", "params", "images", "psnr", "ssim", "lpips", "builtin_isp")}
        click.echo(json.dumps(out))
    else:
        click.echo(table_markdown(res["table"]))
        if res["lpips"] is None:
            click.echo("LPIPS unavailable: give --lpips-weights to compute it.")
        click.echo(f"written: {run / 'eval' / 'table.md'}, {run / 'eval' / 'table.csv'}")


def _read_input(path: Path, in_channels: int, input_space: str = "raw",
                cfa_phase: str = "packed") -> tuple[np.ndarray, str | None]:
    """The model's input from a file: a packed .npy (taken as RGGB), an RGB image (3-channel
    models) or a camera raw brought into the run's ``input_space`` with the raw's own metadata
    and, for ``cfa_phase`` ``rggb``, shifted so R is first in every cell; with the CFA pattern
    it was shifted from (None: not shifted) for :func:`learn.cfa_phase.crop_to_raw`."""
    from learn.data import read_image, read_packed
    from learn.raw_space import MissingMetadata, raw_to_model_input

    if in_channels == 3 and path.suffix.lower() != ".npy":
        return read_image(path), None
    if path.suffix.lower() == ".npy":
        if input_space != "raw" and in_channels != 3:
            raise click.ClickException(f"{path}: a packed .npy carries no white balance or colour matrix, and the "
                                       f"model was trained on input space {input_space!r}: render the camera raw")
        return np.asarray(read_packed(path)), None
    from alignment.rawio import ImageReadError, read_raw

    try:
        return raw_to_model_input(read_raw(path), input_space, cfa_phase)
    except ImageReadError as err:
        raise click.ClickException(str(err)) from None
    except MissingMetadata as err:
        raise click.ClickException(f"{path}: {err} (the model was trained on input space {input_space!r})") from None


@click.command()
@click.argument("raw", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--run", "run", required=True, type=click.Path(exists=True, path_type=Path),
              help="Run folder or checkpoint.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output PNG.")
@click.option("--tile", default=768, show_default=True, type=click.IntRange(min=16),
              help="Tile size in input positions (memory bound).")
@click.option("--bits", type=click.Choice(["8", "16"]), default="8", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads.")
@click.option("--export-program", type=click.Path(dir_okay=False, path_type=Path),
              help="Also save the model as a torch.export program (.pt2) here: any batch and size, "
                   "run it with torch.export.load(FILE).module().")
@click.option("--export-onnx", type=click.Path(dir_okay=False, path_type=Path),
              help="Also save the model as ONNX here (the same program through torch's ONNX exporter; needs the "
                   "export extra: onnx, onnxscript).")
def render(raw: Path, run: Path, out: Path, tile: int, bits: str, threads: int | None,
           export_program: Path | None, export_onnx: Path | None) -> None:
    """Render a full-resolution phone RAW (any LibRaw format, or a packed .npy) to an sRGB PNG."""
    import time

    from learn.cfa_phase import LEGACY_PHASE, crop_to_raw
    from learn.data import write_image
    from learn.infer import export_onnx as to_onnx
    from learn.infer import export_program as to_program
    from learn.infer import exported_program
    from learn.infer import render as render_image
    from learn.train import load_model

    model, config = load_model(run)
    in_ch = int(config["model"].get("kwargs", {}).get("in_channels", 4))
    data = config.get("data", {})
    image, shifted = _read_input(raw, in_ch, data.get("input_space", "raw"), data.get("cfa_phase", LEGACY_PHASE))
    t = time.perf_counter()
    rgb = crop_to_raw(render_image(model, image, tile=tile, threads=threads, progress=True), shifted)
    dt = time.perf_counter() - t
    write_image(out, rgb, int(bits))
    click.echo(f"{out}: {rgb.shape[1]}x{rgb.shape[0]} rendered in {dt:.2f} s")
    program = exported_program(model, in_ch) if export_program or export_onnx else None  # exported once
    if export_program:
        click.echo(f"torch.export program: {to_program(program, export_program)}")
    if export_onnx:
        click.echo(f"ONNX: {to_onnx(program, export_onnx)}")
