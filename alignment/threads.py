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

    The calling thread takes items too, beside ``min(workers, len(items)) - 1``
    threads of the pool: each thread takes the next item not yet taken.  So a map
    started while a piece from :func:`submit` holds a pool thread still runs on two
    threads (the caller's and the free one), and one started while the pool is busy
    runs in the caller instead of waiting for it.  Results come back in the order of
    ``items``; of the calls that raise, the first in the order of ``items`` has its
    exception raised here (after every call has ended).  Serial with one worker,
    with one item, or when called from inside another map.
    """
    items = list(items)
    n = min(workers(), len(items))
    if n <= 1 or getattr(_inside, "active", False):
        return [fn(x) for x in items]
    results: list = [None] * len(items)
    errors: list[BaseException | None] = [None] * len(items)
    order = iter(range(len(items)))
    taking = threading.Lock()

    def take_items(_: object = None) -> None:
        while True:
            with taking:
                i = next(order, None)
            if i is None:
                return
            try:
                results[i] = fn(items[i])
            except Exception as err:  # noqa: BLE001 - raised below, in the order of the items
                errors[i] = err

    helpers = [_executor(workers()).submit(_marked(take_items), None) for _ in range(n - 1)]
    _marked(take_items)(None)  # (marked: a map inside fn runs in turn, as in the pool)
    for helper in helpers:
        if not helper.cancel():  # (one that has not started has nothing left to take)
            helper.result()
    for err in errors:
        if err is not None:
            raise err
    return results


def runs_beside() -> bool:
    """Whether :func:`submit` starts a piece beside its caller now: more than one worker,
    and the caller not itself a piece on the pool (else the piece runs at once)."""
    return workers() > 1 and not getattr(_inside, "active", False)


def submit(fn: Callable[[], R]) -> Future:
    """Start ``fn()`` on the pool and return its ``Future`` (the caller goes on and asks
    for ``.result()`` when it needs it); with one worker, or from inside the pool,
    ``fn`` runs now and the returned future is already done."""
    if not runs_beside():
        done: Future = Future()
        try:
            done.set_result(fn())
        except Exception as err:  # noqa: BLE001 - handed to the caller through the future
            done.set_exception(err)
        return done
    return _executor(workers()).submit(_marked(lambda _: fn()), None)
