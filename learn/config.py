"""The experiment config of ``isp-rig train``: typed sections, checked before any work.

A config is five sections (TOML or JSON): ``model``, ``data``, ``optim``,
``loss`` and ``train``.  Each section but ``loss`` is a dataclass below whose
fields are the only keys it accepts; every value is checked for its type and
range.  ``loss`` maps names of :data:`learn.losses.LOSSES` to weights.
``model.kwargs`` must be keyword arguments of the chosen model's constructor.

The training code keeps working on the plain nested dict (:func:`to_dict`), the
form stored in ``config.json`` and in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from learn.cfa_phase import CFA_PHASES
from learn.raw_space import AUTO, INPUT_SPACES


class ConfigError(Exception):
    """A config file or value that cannot be used; names the file or key and the reason."""

    exit_status = 1  # isp_rig.cli.user_error: a user error, one line


def _spec(default: Any = dataclasses.MISSING, *, kind: str, lo: float | None = None, hi: float | None = None,
          choices: tuple | None = None, optional: bool = False, factory=None):
    """A field with its check: kind int / float / bool / str / list; ``lo`` / ``hi`` inclusive
    bounds; ``choices`` the allowed values; ``optional`` also allows null (JSON) or absence."""
    meta = {"kind": kind, "lo": lo, "hi": hi, "choices": choices, "optional": optional}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelSection:
    """Which network: ``name`` from :func:`learn.models.available`, ``kwargs`` for its constructor."""

    name: str = _spec("ckisp", kind="str")
    kwargs: dict = _spec(kind="dict", factory=dict)


@dataclass
class DataSection:
    """Where the pairs come from and how they are cut.

    kind "dataset": ``root`` is an ``isp-rig dataset build`` folder (validation on
    ``val_root``'s val, else test, split when given, else on its own, else off);
    ``also_roots``: more dataset folders whose train pairs join the training pairs
    (another phone's, in a camera-independent input space); kind
    "rgb_folders": ``input_dir`` / ``target_dir`` hold same-named RGB images, every
    ``test_every``-th name (sorted) is held out, ``exclude`` names are skipped.
    crop: training crop side in input positions (packed raw cells); batch_size:
    the global batch (divided among DDP processes); min_valid: least share of
    trusted target px in a crop; eval_tile: validation tile side (null: whole images);
    input_space: the metadata input stage for raw pairs (:data:`learn.raw_space.INPUT_SPACES`:
    "raw" as recorded, "white_balanced", "linear_srgb", "srgb"), applied with each pair's
    ``phone_raw`` metadata and again by evaluation and ``isp-rig render``; "auto" (the
    default) is "srgb" when every training pair carries the metadata, else "raw"
    (:func:`learn.raw_space.auto_input_space`), and the run stores what it became;
    cfa_phase: "rggb" (default) shifts every packed raw by its CFA pattern so that R is first in
    every cell (:mod:`learn.cfa_phase`; evaluation and ``isp-rig render`` shift alike and crop back),
    "packed" keeps each pattern's own cells (runs stored without the key were trained so).
    """

    kind: str = _spec("dataset", kind="str", choices=("dataset", "rgb_folders"))
    root: str | None = _spec(None, kind="str", optional=True)
    val_root: str | None = _spec(None, kind="str", optional=True)
    also_roots: list = _spec(kind="list", factory=list)
    crop: int = _spec(64, kind="int", lo=8)
    batch_size: int = _spec(16, kind="int", lo=1)
    workers: int = _spec(0, kind="int", lo=0)
    min_valid: float = _spec(0.5, kind="float", lo=0.0, hi=1.0)
    augment: bool = _spec(True, kind="bool")
    eval_tile: int | None = _spec(256, kind="int", lo=16, optional=True)
    input_dir: str | None = _spec(None, kind="str", optional=True)
    target_dir: str | None = _spec(None, kind="str", optional=True)
    exclude: list = _spec(kind="list", factory=list)
    drop_identical: bool = _spec(True, kind="bool")
    test_every: int = _spec(5, kind="int", lo=2)
    input_space: str = _spec(AUTO, kind="str", choices=(AUTO, *INPUT_SPACES))
    cfa_phase: str = _spec("rggb", kind="str", choices=CFA_PHASES)


@dataclass
class OptimSection:
    """Adam with a learning-rate schedule: ``steps`` optimiser steps, linear warm-up
    over ``warmup`` steps, then constant or cosine down to ``min_lr``; ``grad_clip``
    0 = off."""

    lr: float = _spec(1e-3, kind="float", lo=0.0)
    steps: int = _spec(3000, kind="int", lo=1)
    weight_decay: float = _spec(0.0, kind="float", lo=0.0)
    schedule: str = _spec("cosine", kind="str", choices=("cosine", "constant"))
    warmup: int = _spec(0, kind="int", lo=0)
    min_lr: float = _spec(0.0, kind="float", lo=0.0)
    grad_clip: float = _spec(0.0, kind="float", lo=0.0)


@dataclass
class TrainSection:
    """Seed, how often to checkpoint / validate / log (in steps), mixed precision on a
    GPU, CPU threads (null: torch's default), channels-last memory layout."""

    seed: int = _spec(0, kind="int")
    ckpt_every: int = _spec(500, kind="int", lo=1)
    eval_every: int = _spec(500, kind="int", lo=1)
    log_every: int = _spec(25, kind="int", lo=1)
    amp: bool = _spec(True, kind="bool")
    threads: int | None = _spec(None, kind="int", lo=1, optional=True)
    channels_last: bool = _spec(True, kind="bool")


SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "optim": OptimSection,
                             "train": TrainSection}
DEFAULT_LOSS: dict[str, float] = {"l1": 1.0}


def defaults() -> dict:
    """The default config as a nested dict."""
    out = {name: dataclasses.asdict(cls()) for name, cls in SECTIONS.items()}
    out["loss"] = dict(DEFAULT_LOSS)
    return out


def _near(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_value(where: str, value: Any, meta: dict) -> Any:
    kind = meta["kind"]
    if value is None:
        if meta["optional"]:
            return None
        raise ConfigError(f"{where}: a value is required (got null)")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
    elif kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    elif kind == "list":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        value = list(value)
    elif kind == "dict":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of keys, got {value!r}")
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, meta['choices']))}")
    if meta["lo"] is not None and value < meta["lo"]:
        raise ConfigError(f"{where}: {value!r} is below the least allowed value {meta['lo']}")
    if meta["hi"] is not None and value > meta["hi"]:
        raise ConfigError(f"{where}: {value!r} is above the largest allowed value {meta['hi']}")
    return value


def _section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a section of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(f"{name}.{key}: unknown key{_near(key, fields)}; {name} has: {', '.join(fields)}")
    kwargs = {key: _check_value(f"{name}.{key}", val, fields[key].metadata) for key, val in values.items()}
    return cls(**kwargs)


def _check_loss(values: Any) -> dict[str, float]:
    from learn.losses import LOSSES

    if not isinstance(values, dict):
        raise ConfigError(f"loss: expected a table of loss names and weights, got {values!r}")
    out = {}
    for name, weight in values.items():
        if name not in LOSSES:
            raise ConfigError(f"loss.{name}: unknown loss{_near(name, LOSSES)}; available: {', '.join(sorted(LOSSES))}")
        out[name] = _check_value(f"loss.{name}", weight, {"kind": "float", "lo": 0.0, "hi": None, "choices": None,
                                                          "optional": False})
    if not any(w > 0 for w in out.values()):
        raise ConfigError("loss: no loss has a weight above 0")
    return out


def _check_model(model: ModelSection) -> None:
    from learn import models

    if model.name not in models.available():
        raise ConfigError(f"model.name: unknown model {model.name!r}{_near(model.name, models.available())}; "
                          f"available: {', '.join(models.available())}")
    params = inspect.signature(models.factory(model.name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in model.kwargs:
        if key not in allowed:
            raise ConfigError(f"model.kwargs.{key}: {model.name} takes no such argument{_near(key, allowed)}; "
                              f"it takes: {', '.join(allowed)}")


def validate(config: dict) -> dict:
    """Check a whole config (every section present or defaulted) and return it
    normalised as a nested dict (ints and floats as their declared types).

    Raises :class:`ConfigError` naming the first bad key: an unknown section or key
    (with the valid ones listed), a value of the wrong type or out of range, an
    unknown model or loss, a model argument its constructor does not take.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"expected sections {', '.join([*SECTIONS, 'loss'])}, got {config!r}")
    known = [*SECTIONS, "loss"]
    for key in config:
        if key not in known:
            raise ConfigError(f"{key}: unknown section{_near(key, known)}; expected: {', '.join(known)}")
    out = {}
    for name, cls in SECTIONS.items():
        section = _section(name, cls, config.get(name, {}))
        if name == "model":
            _check_model(section)
        out[name] = dataclasses.asdict(section)
    out["loss"] = _check_loss(config.get("loss", DEFAULT_LOSS))
    return out
