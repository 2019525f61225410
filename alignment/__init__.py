"""Sub-pixel registration of DSLR images onto the phone's raw sensor grid.

``align_pair(phone_path, dslr_path, **options)`` and ``align_images(phone, dslr,
**options)`` return an :class:`Alignment` (see :mod:`alignment.pipeline`).
Submodules are imported lazily so that ``import alignment.rawio`` stays light.
"""

from __future__ import annotations

__all__ = ["align_pair", "align_images", "Alignment", "AlignOptions"]


def __getattr__(name: str):
    if name in __all__:
        from alignment import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'alignment' has no attribute {name!r}")
