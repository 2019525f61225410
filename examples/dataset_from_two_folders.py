"""Build a paired dataset from a folder of phone raws and a folder of DSLR images
matched by file name (the same as `isp-rig align batch --phone-dir P --dslr-dir D --out DS`).

    python examples/dataset_from_two_folders.py OUT
"""

import shutil
import sys
from pathlib import Path

from alignment import batch
from isp_rig import simulate


def main(out: Path) -> None:
    phones, dslrs = out / "phone", out / "dslr"
    phones.mkdir(parents=True), dslrs.mkdir()
    options = simulate.SimOptions(phone_size=(480, 360), dslr_size=(720, 480))
    for folder in simulate.simulate_pairs(out / "sim", 2, seed=3, options=options, progress=False):
        shutil.copy(folder / "phone.dng", phones / f"{folder.name}.dng")
        shutil.copy(folder / "dslr.jpg", dslrs / f"{folder.name}.jpg")
    jobs = batch.pairs_from_two_folders(phones, dslrs, match="name")
    summary = batch.run_batch(jobs, out / "dataset", workers=1, progress=False)
    print(f"{summary.kept} kept, rejected {summary.rejected or 'none'}, failed {summary.failed or 'none'}, "
          f"median residual {summary.residual_px.get('median', float('nan')):.3f} px -> {out / 'dataset'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
