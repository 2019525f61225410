"""Built-in device profiles (``*.toml`` beside this file) and TOML helpers.

A profile describes one device model: which adapter drives it, how to find it,
and the facts of its raw files. A rig file names devices and their profiles.
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path
from typing import Any

PROFILE_DIR = Path(__file__).resolve().parent


class ProfileError(Exception):
    """A profile that is missing or unreadable; names the profile and the reason."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"profile {name!r}: {reason}")
        self.name = name
        self.reason = reason


def list_profiles() -> list[str]:
    """Names of the built-in profiles, sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path) -> dict[str, Any]:
    """A profile as a dict: a built-in name (``nikon_z6``) or a path to a TOML file."""
    path = Path(name_or_path)
    if not path.suffix == ".toml":
        path = PROFILE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ProfileError(str(name_or_path), f"no such profile (built in: {', '.join(list_profiles())})")
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ProfileError(str(name_or_path), f"{path}: not valid TOML: {err}") from err
