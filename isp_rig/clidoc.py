"""The command reference of docs/cli.md, made from the click commands themselves.

``python -m isp_rig.clidoc`` rewrites the part of docs/cli.md between the
markers below; a test fails when the file and the commands disagree, so the
reference never drifts from ``isp-rig --help``.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click

BEGIN = "<!-- BEGIN GENERATED REFERENCE: python -m isp_rig.clidoc -->"
END = "<!-- END GENERATED REFERENCE -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _walk(cmd: click.Command, path: list[str], ctx: click.Context):
    yield path, cmd, ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, path + [name], click.Context(sub, info_name=name, parent=ctx))


def render_reference() -> str:
    """Markdown: one section per command with its usage, help text and options."""
    from isp_rig.cli import main

    root = click.Context(main, info_name="isp-rig")
    out = []
    for path, cmd, ctx in _walk(main, ["isp-rig"], root):
        if isinstance(cmd, click.Group) and len(path) > 1 and not cmd.params:
            out += [f"### {' '.join(path)}", "", inspect.cleandoc(cmd.help or "").split("\n\n")[0], ""]
            continue
        if len(path) == 1:
            continue
        out += [f"### {' '.join(path)}", "", "```", " ".join(path[:-1]) + " " + " ".join(
            [path[-1]] + cmd.collect_usage_pieces(ctx)), "```", ""]
        help_text = inspect.cleandoc(cmd.help or "")
        if help_text:
            out += [help_text, ""]
        rows = []
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                record = p.get_help_record(ctx)
                if record:
                    name, meaning = (part.replace("|", "\\|") for part in record)
                    rows.append(f"| `{name}` | {meaning} |")
        if rows:
            out += ["| option | meaning |", "| --- | --- |", *rows, ""]
    return "\n".join(out).rstrip() + "\n"


def updated_doc(text: str) -> str:
    """``text`` with the generated part replaced by the current reference."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"{DOC} lacks the generated-reference markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{render_reference()}\n{END}{tail}"


def main() -> None:
    DOC.write_text(updated_doc(DOC.read_text()))
    print(f"updated {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
