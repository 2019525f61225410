"""A small TOML writer for the plain data isp-rig stores (session.toml, profiles).

Supports tables (nested dicts), arrays of tables (lists of dicts), and values
that are str, bool, int, float, datetime or lists of those. Output parses back
with :mod:`tomllib` to the same data (tested). Anything else raises TypeError.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from typing import Any, Mapping

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are a subset of TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, Mapping) for v in value):
            return "[" + ", ".join(_inline_table(v) for v in value) + "]"
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return _inline_table(value)
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


def _inline_table(table: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in table.items() if v is not None) + "}"


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _emit(table: Mapping[str, Any], prefix: list[str], out: list[str]) -> None:
    scalars = [(k, v) for k, v in table.items()
               if v is not None and not isinstance(v, Mapping) and not _is_table_array(v)]
    for k, v in scalars:
        out.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        if isinstance(v, Mapping):
            path = prefix + [_key(k)]
            out.append("")
            out.append("[" + ".".join(path) + "]")
            _emit(v, path, out)
        elif _is_table_array(v):
            path = prefix + [_key(k)]
            for item in v:
                out.append("")
                out.append("[[" + ".".join(path) + "]]")
                _emit(item, path, out)


def dumps(data: Mapping[str, Any]) -> str:
    """Serialise ``data`` (a mapping) as a TOML document; ``None`` values are left out."""
    out: list[str] = []
    _emit(data, [], out)
    return "\n".join(out).lstrip("\n") + "\n"
