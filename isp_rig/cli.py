"""The ``isp-rig`` command: the root of every stage's subcommands.

Each stage keeps its own click commands next to its code; this root only
names them and imports a stage when one of its commands is used, so that
``isp-rig simulate`` never pays for importing torch.
"""

from __future__ import annotations

import errno
import importlib
import logging
import sys

import click

#: the packages whose loggers ``-v`` / ``-q`` set
LOGGERS = ("isp_rig", "alignment", "learn")

#: the exit status of a user error (docs/cli.md: 0 ok, 1 the work failed, 2 a usage error, 3 a rejected pair)
EXIT_FAILURE = 1


def user_error(err: BaseException) -> tuple[int, str] | None:
    """(exit status, one-line message) for an error the user can act on, else None.

    Every stage marks its user-facing errors with a class attribute ``exit_status``
    (their message names the file or key and the reason); a full disk and a refused
    permission are named with their path. Anything else is a bug and keeps its traceback.
    """
    status = getattr(type(err), "exit_status", None)
    if isinstance(status, int):
        return status, str(err)
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return EXIT_FAILURE, f"disk full: {err.filename or err}"
    if isinstance(err, PermissionError):
        return EXIT_FAILURE, f"{err.filename or err}: permission denied"
    return None

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

    def invoke(self, ctx: click.Context):
        """Run the subcommand; a user error that escaped it becomes ``Error: <what>: <reason>``
        and its exit status (``--debug`` shows the traceback instead)."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as err:
            known = user_error(err)
            if known is None or ctx.meta.get("isp_rig.debug"):
                raise
            click.echo(f"Error: {known[1]}", err=True)
            ctx.exit(known[0])

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
@click.option("-v", "--verbose", count=True, help="More progress text (-v: details, -vv: debugging).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings, errors and results: no progress text (progress "
              "bars have each command's own switch, e.g. --no-progress).")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error instead of one line.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """isp-rig: capture phone-raw / DSLR pairs, align them to a fraction of a
    pixel, and learn a phone ISP from them."""
    ctx.meta["isp_rig.debug"] = debug
    configure_logging(logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO,
                      detailed=verbose > 0)
    ctx.call_on_close(restore_logging)


def restore_logging() -> None:
    """Take :func:`configure_logging`'s handlers off again (many commands run in one
    process under tests): the loggers propagate as before."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if getattr(h, "isp_rig", False)]:
            logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def configure_logging(level: int, detailed: bool = False) -> None:
    """Send the stages' log records (loggers :data:`LOGGERS`) to stderr at ``level``:
    the message alone, or with level and logger name when ``detailed``.  Replaces the
    handler an earlier call installed (the tests run many commands in one process)."""
    fmt = "%(levelname)s %(name)s: %(message)s" if detailed else "%(message)s"
    restore_logging()
    for name in LOGGERS:
        logger = logging.getLogger(name)
        handler = logging.StreamHandler(sys.stderr)  # bound now: CliRunner swaps sys.stderr per command
        handler.isp_rig = True
        handler.setFormatter(logging.Formatter(fmt))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


if __name__ == "__main__":  # pragma: no cover
    main()
