"""Independent pieces of one alignment on the cores OpenCV may use.

The Bayer planes, the two directions of an optical flow and the candidate models
of one pair are independent, and the libraries that do their work (numpy, scipy's
``map_coordinates`` and spline filters, OpenCV) release the GIL: on a
``concurrent.futures.ThreadPoolExecutor`` they run side by side.  The pool has as
many threads as OpenCV's own (``cv2.getNumThreads()``), so the batch's workers,
which pin OpenCV to one thread (:func:`alignment.batch.pin_threads`), run every
piece in turn and do not oversubscribe the cores their processes already share.
A piece that itself asks for a map runs it in turn (no pool inside the pool).
:func:`submit` starts one piece that the caller needs only later (the caller goes
on meanwhile).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import cv2

T = TypeVar("T")
R = TypeVar("R")

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_lock = threading.Lock()
_inside = threading.local()


def workers() -> int:
    """Threads a map may use now: OpenCV's thread count (1 when pinned)."""
    return max(1, int(cv2.getNumThreads()))


def _executor(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="isp-rig-align")
            _pool_size = n
        return _pool


def _marked(fn: Callable[[T], R]) -> Callable[[T], R]:
    def run(item: T) -> R:
        _inside.active = True
        try:
            return fn(item)
        finally:
            _inside.active = False

    return run


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]``, the calls spread over :func:`workers` threads.

    Results come back in the order of ``items``; of the calls that raise, the first
    in the order of ``items`` has its exception raised here (after every call has
    ended).  Serial with one worker, with one item, or when called from inside
    another map.
    """
    items = list(items)
    n = min(workers(), len(items))
    if n <= 1 or getattr(_inside, "active", False):
        return [fn(x) for x in items]
    futures = [_executor(workers()).submit(_marked(fn), x) for x in items]
    errors = [f.exception() for f in futures]
    for err in errors:
        if err is not None:
            raise err
    return [f.result() for f in futures]


def submit(fn: Callable[[], R]) -> Future:
    """Start ``fn()`` on the pool and return its ``Future`` (the caller goes on and asks
    for ``.result()`` when it needs it); with one worker, or from inside the pool,
    ``fn`` runs now and the returned future is already done."""
    if workers() <= 1 or getattr(_inside, "active", False):
        done: Future = Future()
        try:
            done.set_result(fn())
        except Exception as err:  # noqa: BLE001 - handed to the caller through the future
            done.set_exception(err)
        return done
    return _executor(workers()).submit(_marked(lambda _: fn()), None)
