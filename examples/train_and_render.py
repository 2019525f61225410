"""Train a model from a shipped config on a dataset folder, then render a raw with it.

    python examples/train_and_render.py DATASET OUT [STEPS]

DATASET is a folder written by `isp-rig align batch` (e.g. the one
dataset_from_two_folders.py builds).
"""

import sys
from pathlib import Path

import numpy as np

from learn.data import DatasetFolder, read_packed, write_image
from learn.infer import render
from learn.train import load_config, load_model, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main(dataset: Path, out: Path, steps: int) -> None:
    config = load_config(CONFIGS / "ckisp.toml", overrides={
        "data": {"root": str(dataset), "crop": 32, "batch_size": 4, "eval_tile": 64},
        "optim": {"steps": steps}, "train": {"ckpt_every": steps, "eval_every": steps, "threads": 1}})
    summary = train(config, out / "run", progress=False)
    print(f"trained {summary['step']} steps: validation PSNR {summary['val_psnr']:.2f} dB")
    model, _ = load_model(out / "run")
    folder = DatasetFolder(dataset)
    record = (folder.split("test") or folder.split("train"))[0]
    rgb = render(model, np.asarray(read_packed(record.raw)), tile=256, progress=False)
    write_image(out / "render.png", rgb)
    print(f"rendered {rgb.shape[1]}x{rgb.shape[0]} -> {out / 'render.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 200)
