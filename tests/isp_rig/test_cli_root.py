"""The command-line root: every command loads, and docs/cli.md stays in step with it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from isp_rig import clidoc
from isp_rig.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_named_command_is_built_and_answers_help(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_docs_cli_reference_matches_the_commands():
    text = clidoc.DOC.read_text()
    assert text == clidoc.updated_doc(text), "docs/cli.md is stale: run `python -m isp_rig.clidoc`"
