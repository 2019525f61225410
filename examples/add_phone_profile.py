"""Write a profile for a new phone from one of its raw files (the first step of
docs/new-phone.md), then read it back.

    python examples/add_phone_profile.py [SHOT.dng] OUT
"""

import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from click.testing import CliRunner

from isp_rig.cli import main as isp_rig


def main(shot: Path | None, out: Path) -> None:
    if shot is None:
        from isp_rig import simulate

        out.mkdir(parents=True, exist_ok=True)
        shot = out / "IMG_0001.DNG"
        simulate.write_dng(shot, simulate.simulate_pair(5, options=simulate.SimOptions(
            phone_size=(320, 240), dslr_size=(480, 320))).phone)
    result = CliRunner().invoke(isp_rig, ["phone", "add", "myphone", "--from-shot", str(shot), "--out", str(out)])
    print(result.output.strip())
    profile = tomllib.loads((out / "myphone.toml").read_text())
    raw = profile["raw"]
    print(f"profile: {raw['width']}x{raw['height']} {raw['cfa']}, white level {raw['white_level']:g}")


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    main(args[0] if len(args) == 2 else None, args[-1])
