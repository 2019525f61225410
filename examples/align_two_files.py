"""Align a DSLR image onto a phone raw and read the verdict.

    python examples/align_two_files.py [PHONE.dng DSLR.jpg]

Without arguments it simulates one pair first (the rig simulator, known truth).
"""

import sys
import tempfile
from pathlib import Path

from alignment import align_pair


def main(argv: list[str]) -> None:
    if len(argv) == 2:
        phone, dslr = map(Path, argv)
    else:
        from isp_rig import simulate

        folder = simulate.write_pair(simulate.simulate_pair(7, options=simulate.SimOptions(
            phone_size=(640, 480), dslr_size=(960, 640))), tempfile.mkdtemp(prefix="isp-rig-example-"))
        phone, dslr = folder / "phone.dng", folder / "dslr.jpg"
    alignment = align_pair(phone, dslr)
    q = alignment.quality
    if alignment.ok:
        print(f"kept: residual {q.residual_median_px:.3f} phone px, {q.trusted_fraction:.1%} of the px trusted")
    else:
        print(f"rejected: {q.reason} ({q.message})")
    # phone px (x, y) on the full raw grid -> DSLR px (x, y) of the same scene point
    print("phone px (100, 100) is DSLR px", alignment.map_points([[100.0, 100.0]])[0].round(2))


if __name__ == "__main__":
    main(sys.argv[1:])
