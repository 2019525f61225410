"""glibc's malloc thresholds and numpy's huge-page advice: set for a process that aligns
large images, unless the environment chose them (each case in a fresh interpreter:
mallopt and numpy's switch are process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "from alignment.malloc import keep_large_arrays as k; print(k())"


def _run(env_changes: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_large_arrays_sets_the_thresholds_when_the_environment_does_not():
    assert _run({}) == "True"


@pytest.mark.parametrize("variable", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"])
def test_keep_large_arrays_leaves_thresholds_the_user_set(variable):
    assert _run({variable: "131072"}) == "False"


HEAP_CODE = """
import ctypes, threading
SETUP
import numpy as np
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
seen = []
before = libc.mallinfo2().hblkhd
def make():  # a 300 MB array in a worker thread, as the pipeline's thread_map makes them
    a = np.ones(300 << 20, np.uint8)
    seen.append((libc.mallinfo2().hblkhd - before) >> 20)
t = threading.Thread(target=make); t.start(); t.join()
print(seen[0])
"""


def _has_mallinfo2() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _has_mallinfo2(), reason="glibc >= 2.33's mallinfo2")
@pytest.mark.parametrize("setup", [
    "from alignment.malloc import keep_large_arrays; print(keep_large_arrays())",
    "from alignment.batch import pin_threads; pin_threads(); print(True)",  # a batch worker's set-up
])
def test_keep_large_arrays_serves_a_worker_threads_large_array_from_the_heap(setup):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", HEAP_CODE.replace("SETUP", setup)], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["True", "0"]  # no MB more in fresh mappings: the thread used the main arena's heap


def test_a_batch_worker_under_dask_undoes_the_nannys_trim_threshold_instead():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["MALLOC_TRIM_THRESHOLD_"] = "65536"  # what Dask's nannies set
    code = "import os; from alignment.batch import pin_threads; pin_threads(); print(os.environ['MALLOC_TRIM_THRESHOLD_'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(256 << 20)


ADVICE_CODE = """
SETUP
try:
    from numpy._core.multiarray import _get_madvise_hugepage
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _get_madvise_hugepage
print(_get_madvise_hugepage())
"""


def _advice_after(setup: str, env_changes: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", ADVICE_CODE.replace("SETUP", setup)], env=env, capture_output=True,
                          text=True, check=True).stdout.split()


@pytest.mark.parametrize("setup", [
    "from alignment.malloc import skip_hugepage_advice; skip_hugepage_advice()",
    "from alignment.batch import pin_threads; pin_threads()",  # a batch worker's set-up
])
def test_an_aligning_process_stops_numpys_huge_page_advice(setup):
    assert _advice_after(setup, {}) == ["False"]


def test_skip_hugepage_advice_leaves_the_choice_the_user_set():
    setup = "from alignment.malloc import skip_hugepage_advice; print(skip_hugepage_advice())"
    assert _advice_after(setup, {"NUMPY_MADVISE_HUGEPAGE": "1"}) == ["False", "True"]
