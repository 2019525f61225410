"""The alignment's thread pool: results in order, errors raised, serial when OpenCV is
pinned to one thread (the batch's workers) and inside the pool, pieces that run side by
side, and ``submit`` for a piece needed later."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from alignment import threads


def test_results_come_back_in_the_order_of_the_items(two_threads):
    def slow_square(i: int) -> int:
        time.sleep(0.01 * (5 - i))  # the first items finish last
        return i * i

    assert threads.thread_map(slow_square, range(5)) == [0, 1, 4, 9, 16]


def test_the_first_error_in_item_order_is_raised(two_threads):
    def fails_on_odd(i: int) -> int:
        if i % 2:
            raise ValueError(f"item {i}")
        return i

    with pytest.raises(ValueError, match="item 1"):
        threads.thread_map(fails_on_odd, range(4))


def test_pieces_run_on_two_threads_side_by_side(two_threads):
    barrier = threading.Barrier(2, timeout=5)

    def meet(_: int) -> str:
        barrier.wait()  # only passes when both pieces run at once
        return threading.current_thread().name

    names = threads.thread_map(meet, range(2))
    assert len(set(names)) == 2


def test_pinned_opencv_runs_every_piece_in_the_calling_thread():
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)  # what batch.pin_threads does in a worker
    try:
        names = threads.thread_map(lambda _: threading.current_thread().name, range(4))
    finally:
        cv2.setNumThreads(before)
    assert set(names) == {threading.current_thread().name}


def test_a_map_inside_the_pool_runs_in_turn_and_does_not_wait_on_the_pool(two_threads):
    def outer(i: int) -> list[int]:
        return threads.thread_map(lambda j: i * 10 + j, range(3))

    assert threads.thread_map(outer, range(4)) == [[i * 10 + j for j in range(3)] for i in range(4)]


def test_submit_returns_a_future_of_the_result_and_of_the_error(two_threads):
    assert threads.submit(lambda: np.arange(3).sum()).result(timeout=5) == 3
    with pytest.raises(ZeroDivisionError):
        threads.submit(lambda: 1 / 0).result(timeout=5)


def test_submit_with_one_thread_has_already_run():
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        ran = []
        future = threads.submit(lambda: ran.append(1) or "done")
        assert ran == [1] and future.done() and future.result() == "done"
    finally:
        cv2.setNumThreads(before)


def test_a_map_runs_on_two_threads_while_a_submitted_piece_holds_a_pool_thread(two_threads):
    release = threading.Event()
    held = threads.submit(lambda: release.wait(5))  # one of the pool's two threads is busy
    barrier = threading.Barrier(2, timeout=5)
    try:
        names = threads.thread_map(lambda _: (barrier.wait(), threading.current_thread().name)[1], range(2))
    finally:
        release.set()
    held.result(timeout=5)
    assert threading.current_thread().name in names and len(set(names)) == 2  # the caller and the free thread


def test_a_map_runs_in_the_caller_while_every_pool_thread_is_busy(two_threads):
    release = threading.Event()
    held = [threads.submit(lambda: release.wait(5)) for _ in range(2)]
    started = time.perf_counter()
    try:
        names = threads.thread_map(lambda _: threading.current_thread().name, range(3))
    finally:
        release.set()
    for h in held:
        h.result(timeout=5)
    assert time.perf_counter() - started < 4  # it did not wait for the pool
    assert set(names) == {threading.current_thread().name}
