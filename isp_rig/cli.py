"""The ``isp-rig`` command: the root of every stage's subcommands.

Each stage keeps its own click commands next to its code; this root only
names them and imports a stage when one of its commands is used, so that
``isp-rig simulate`` never pays for importing torch.
"""

from __future__ import annotations

import importlib

import click

#: command name -> "module:attribute" of the click command or group.
COMMANDS: dict[str, str] = {
    "simulate": "isp_rig.simulate_cli:simulate",
    "capture": "isp_rig.capture_cli:capture",
    "session": "isp_rig.capture_cli:session",
    "calibrate-latency": "isp_rig.capture_cli:calibrate_latency",
    "phone": "isp_rig.capture_cli:phone",
    "align": "alignment.cli:align",
    "dataset": "alignment.batch_cli:dataset",
    "train": "learn.cli:train",
    "eval": "learn.cli:evaluate",
    "render": "learn.cli:render",
    "demo": "isp_rig.demo:demo",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            # A stage that is not built yet is simply not listed; a missing
            # third-party dependency inside a built stage is a real error.
            if err.name == module_name:
                return None
            raise
        return getattr(module, attr, None)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="isp-rig")
def main() -> None:
    """isp-rig: capture phone-raw / DSLR pairs, align them to a fraction of a
    pixel, and learn a phone ISP from them."""


if __name__ == "__main__":  # pragma: no cover
    main()
