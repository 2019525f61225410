"""glibc's malloc thresholds and numpy's huge-page advice in a process that aligns large images (Linux only).

An alignment allocates and frees arrays of one to a hundred MB many times.  glibc
serves every block above its mmap threshold with a fresh mapping, whose pages the
kernel faults in and zeroes again on each use; the threshold adapts upwards only
to 32 MB and not at all once ``MALLOC_TRIM_THRESHOLD_`` or
``MALLOC_MMAP_THRESHOLD_`` is set.  Two cases:

- :func:`relax_malloc_trim`: Dask's nannies start workers with
  ``MALLOC_TRIM_THRESHOLD_=65536``, which turns the adaptation off (a pair took
  about 45 % more CPU); the batch's tasks raise the thresholds again.
- :func:`keep_large_arrays`: ``isp-rig align pair`` (one real-size pair in a fresh
  process) and the batch's workers (:func:`alignment.batch.pin_threads`) serve
  every block up to 512 MB from one heap, the main arena, which
  it never trims below 2 GB: a freed array's pages are reused by the next one
  instead of being faulted in and zeroed again.  Blocks up to 64 MB in the heap
  saved about 0.3 s of 5.5 on a 12 MP + 24 MP pair; one arena and 512 MB saved
  about 0.3-0.6 s more (the kernel's page clearing, 1.4 -> 0.6 s of system time)
  and lowered the peak from about 1060 to 900 MB.  The worker threads would
  otherwise each take an arena of their own, whose heaps are at most 64 MB, so
  that their large arrays were fresh mappings whatever the threshold.  Two batch
  workers of one thread each over six real-size pairs: 26.1 s against 29.0 s
  (medians of three runs each, system time 2.1 against 7.8 s, the same peak per
  worker); a worker then holds its peak heap between pairs.

- :func:`skip_hugepage_advice`: numpy asks the kernel for transparent huge pages
  (``madvise(MADV_HUGEPAGE)``) on every array of 4 MB and more.  Where the kernel's
  ``defrag`` policy is ``madvise`` (the usual default), each such page fault may
  first compact memory synchronously to find a free 2 MB page, and on a machine
  whose memory is fragmented it often fails after that and falls back to 4 KB
  pages: all of the cost, none of the gain.  ``isp-rig align pair`` and the
  batch's workers turn numpy's advice off (numpy's own switch, the one its
  ``NUMPY_MADVISE_HUGEPAGE=0`` sets at import).

All leave alone what the user set in the environment.
"""

from __future__ import annotations

import functools
import os

__all__ = ["relax_malloc_trim", "keep_large_arrays", "skip_hugepage_advice"]


#: glibc's ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library (``ctypes.CDLL``), looked up once per process (``find_library``
    may run ``ldconfig``; the batch sets its workers up before every pair); None where
    there is none to load."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _mallopt_one(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; False where it refuses or there is no glibc."""
    libc = _libc()
    if libc is None:
        return False
    try:
        return libc.mallopt(param, value) == 1
    except AttributeError:  # not glibc
        return False


def _mallopt(trim_bytes: int, mmap_bytes: int) -> bool:
    """M_TRIM_THRESHOLD and M_MMAP_THRESHOLD through glibc's ``mallopt``; False where
    there is no glibc."""
    return _mallopt_one(M_TRIM_THRESHOLD, trim_bytes) and _mallopt_one(M_MMAP_THRESHOLD, mmap_bytes)


def relax_malloc_trim(trim_bytes: int = 256 << 20, mmap_bytes: int = 64 << 20) -> bool:
    """Undo a tiny glibc trim threshold in this process.

    Dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also
    turns off glibc's adaptive mmap threshold: every array above 128 KiB is then a
    fresh mapping whose pages are faulted in and zeroed again, and a pair takes
    about 45 % more CPU (measured: 8.5 s against 5.8 s for one default-size pair).
    When that variable is set below ``trim_bytes``, ``mallopt`` raises the trim
    threshold to ``trim_bytes`` and the mmap threshold to ``mmap_bytes``.  Returns
    whether it changed anything.
    """
    value = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    if value is None or not value.isdigit() or int(value) >= trim_bytes:
        return False
    ok = _mallopt(trim_bytes, mmap_bytes)
    if ok:
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(trim_bytes)
    return ok


def keep_large_arrays(trim_bytes: int = 2 << 30, mmap_bytes: int = 512 << 20) -> bool:
    """Serve blocks up to ``mmap_bytes`` from the heap and return freed memory to the
    system only above ``trim_bytes``, all threads from one arena (for a process that
    aligns one large pair), unless the environment sets either threshold.  Call it
    before the process starts threads (a thread keeps the arena it was given); the
    arena count is left alone when ``MALLOC_ARENA_MAX`` is set.  Returns whether it
    changed anything."""
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    if "MALLOC_ARENA_MAX" not in os.environ and not _mallopt_one(M_ARENA_MAX, 1):
        return False
    return _mallopt(trim_bytes, mmap_bytes)


def skip_hugepage_advice() -> bool:
    """Stop numpy advising transparent huge pages for new arrays in this process,
    unless ``NUMPY_MADVISE_HUGEPAGE`` is set (then numpy's import already followed
    it).  Arrays made before keep their advice.  Returns whether it changed anything
    (False too where numpy has no such switch)."""
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return False
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    switch = getattr(multiarray, "_set_madvise_hugepage", None)
    if switch is None:
        return False
    return bool(switch(False))
