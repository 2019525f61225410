"""``-o/--option KEY=VALUE``: alignment options on the command line (shared by
``isp-rig align pair``, ``align batch`` and ``dataset build``)."""

from __future__ import annotations

import json

import click


def parse_options(pairs: tuple[str, ...]) -> dict:
    """``("max_plane_pixels=400000", "local=false")`` -> keyword options of
    :func:`alignment.align_images` (values read as JSON, else as text); an unknown
    name is a usage error that lists the known ones."""
    from dataclasses import fields

    from alignment.pipeline import AlignOptions

    known = {f.name for f in fields(AlignOptions)}
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--option")
        if key not in known:
            raise click.BadParameter(f"unknown alignment option {key!r} (known: {', '.join(sorted(known))})",
                                     param_hint="--option")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    try:  # types and ranges, before any work starts
        AlignOptions.from_kwargs(**out)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--option") from None
    return out


#: ``-o/--option KEY=VALUE``, repeatable: any field of AlignOptions
option_flag = click.option(
    "-o", "--option", "align_options", multiple=True, metavar="KEY=VALUE",
    help="An alignment option (repeatable), e.g. -o max_plane_pixels=400000 -o dslr_oversample=2; "
    "every field of alignment.AlignOptions (docs/alignment.md).",
)
