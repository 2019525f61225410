"""A small model registry: a model is a name plus keyword arguments.

Every registered model follows one contract:

* built with the defaults (``in_channels=4, upscale=2``) it maps a batch of
  packed phone raw ``(N, 4, H, W)`` (planes R, G1, G2, B, black-subtracted and
  divided by white - black) to display-referred sRGB ``(N, 3, 2H, 2W)`` in
  ``[0, 1]`` on the full-resolution raw grid;
* built with ``in_channels=3, upscale=1`` it maps RGB ``(N, 3, H, W)`` in
  ``[0, 1]`` to sRGB ``(N, 3, H, W)`` (e.g. a phone's own JPEG to the DSLR look).

Each model also exposes ``size_multiple`` (H and W of a tile should be a
multiple of it for tiled rendering to equal a full render) and
``receptive_radius`` (input pixels each side that an output pixel depends on,
an upper bound used as the tile overlap).

>>> import learn.models as lm
>>> net = lm.create("ckisp")
>>> sorted(lm.available())[:2]
['ckisp', 'pac']
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator: make ``create(name, **kwargs)`` build this model."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return wrap


def create(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs``.

    Raises ``KeyError`` naming the available models when ``name`` is unknown.
    """
    try:
        build = factory(name)
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available())}") from None
    return build(**kwargs)


def factory(name: str) -> Callable[..., nn.Module]:
    """The class or function registered as ``name`` (``KeyError`` when unknown)."""
    return _REGISTRY[name]


def available() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_REGISTRY)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Registration happens on import of each model module.
from learn.models import ckisp as _ckisp  # noqa: E402,F401
from learn.models import pac as _pac  # noqa: E402,F401
from learn.models import plain as _plain  # noqa: E402,F401
from learn.models import unet as _unet  # noqa: E402,F401
