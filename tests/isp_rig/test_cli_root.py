"""The command-line root: every command loads, docs/cli.md stays in step with it, and one
place turns a user error into one line and its exit status."""

from __future__ import annotations

import errno

import click
import pytest
from click.testing import CliRunner

from isp_rig import cli, clidoc
from isp_rig.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_named_command_is_built_and_answers_help(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_docs_cli_reference_matches_the_commands():
    text = clidoc.DOC.read_text()
    assert text == clidoc.updated_doc(text), "docs/cli.md is stale: run `python -m isp_rig.clidoc`"


class _Failing(Exception):
    exit_status = 3


@pytest.fixture
def failing_command(monkeypatch):
    """A subcommand that raises whatever the test puts in ``raised[0]``."""
    raised: list[BaseException] = []

    @click.command()
    def boom() -> None:
        raise raised[0]

    monkeypatch.setattr(cli.LazyGroup, "_load", staticmethod(lambda name: boom if name == "boom" else None))
    return raised


@pytest.mark.parametrize("err, status, line", [
    (_Failing("pair p1: rejected"), 3, "Error: pair p1: rejected"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/ds/pairs/p1/target.png"), 1,
     "Error: disk full: /data/ds/pairs/p1/target.png"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), 1, "Error: /root/x: permission denied"),
])
def test_a_user_error_becomes_one_line_and_its_exit_status(failing_command, err, status, line):
    failing_command.append(err)
    res = CliRunner().invoke(cli.main, ["boom"])
    assert res.exit_code == status
    assert res.output.strip() == line and "Traceback" not in res.output


def test_a_bug_keeps_its_traceback_and_debug_shows_a_user_errors_traceback(failing_command):
    failing_command.append(ZeroDivisionError("a bug"))
    res = CliRunner().invoke(cli.main, ["boom"])
    assert isinstance(res.exception, ZeroDivisionError)  # not dressed up as a user error
    failing_command[0] = _Failing("named")
    res = CliRunner().invoke(cli.main, ["--debug", "boom"])
    assert isinstance(res.exception, _Failing)


#: exceptions that never reach a command: where each is caught and turned into a user error
CAUGHT_INSIDE = {
    "alignment.pipeline._StageFailed": "alignment.pipeline._align -> the pair's rejection reason",
    "alignment.ecc.EccStopped": "alignment.pipeline._EccAhead -> only in a run ahead whose result is dropped",
    "learn.raw_space.MissingMetadata": "learn.data.PackedPairs / learn.cli render -> DataError / one line",
}


def _defined_exceptions():
    """Every exception class defined in the three packages, as 'module.Name' -> class."""
    import importlib
    import inspect
    import pkgutil

    found = {}
    for package in ("alignment", "learn", "isp_rig"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                    found[f"{info.name}.{name}"] = obj
    return found


def test_every_exception_a_stage_defines_is_a_one_line_user_error_or_caught_inside():
    found = _defined_exceptions()
    assert set(CAUGHT_INSIDE) <= set(found)  # the list names what still exists
    for qualname, cls in found.items():
        if qualname in CAUGHT_INSIDE:
            continue
        # cli.user_error reads the class attribute: a user error (status 1, one line), not a traceback
        assert getattr(cls, "exit_status", None) == 1, f"{qualname} would reach the user as a traceback"


@pytest.mark.parametrize("flags, shown, hidden", [
    ([], ["pairs to align"], ["detail", "INFO"]),
    (["-q"], [], ["pairs to align", "detail"]),
    (["-vv"], ["INFO alignment.batch: pairs to align", "DEBUG alignment.batch: detail"], []),
])
def test_verbose_and_quiet_set_the_stages_progress_text(monkeypatch, flags, shown, hidden):
    import logging

    @click.command()
    def talk() -> None:
        log = logging.getLogger("alignment.batch")
        log.info("pairs to align")
        log.debug("detail")
        click.echo("result")

    monkeypatch.setattr(cli.LazyGroup, "_load", staticmethod(lambda name: talk if name == "talk" else None))
    res = CliRunner().invoke(cli.main, [*flags, "talk"])
    assert res.exit_code == 0 and "result" in res.output
    assert all(s in res.output for s in shown) and not any(h in res.output for h in hidden), res.output
