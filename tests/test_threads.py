"""Threads: the same bits for any thread count, and the counts users set are honoured."""

import os
import subprocess
import sys

import numpy as np
import pytest
from _helpers import DTYPES

import fastln
from fastln import _cpu

OPENMP = _cpu.build_info()["openmp"]
needs_openmp = pytest.mark.skipif(not OPENMP, reason="fastln was built without OpenMP")


def _run_all(x, n, w, b, dy):
    y, mean, rstd = fastln.layer_norm_forward(x, n, w, b)
    return (y, mean, rstd) + fastln.layer_norm_backward(dy, x, mean, rstd, w)


@pytest.mark.parametrize("dtype", DTYPES)
# (47, 1024) and (100, 768): backwards of 2 and 4 blocks, too small for 8; (200, 8192): 8 blocks,
# not 32, for the size of their partials (see _bwd_block_rows).
@pytest.mark.parametrize("shape", [(4096, 1024), (1000, 33), (65, 4097), (20000, 3), (47, 1024),
                                   (100, 768), (200, 8192)])
def test_same_bits_for_any_thread_count(rng, threads, simd_path, shape, dtype):
    x = (rng.standard_normal(shape) + 100).astype(dtype)
    w = rng.standard_normal(shape[1]).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    threads(1)
    want = _run_all(x, shape[1], w, b, dy)
    for n in (2, 3, 7):
        threads(n)
        got = _run_all(x, shape[1], w, b, dy)
        for g, e in zip(got, want):
            np.testing.assert_array_equal(g, e)   # bit for bit, dweight and dbias included


def test_set_and_get(threads):
    default = fastln.get_num_threads()
    assert default >= 1
    threads(3)
    assert fastln.get_num_threads() == (3 if OPENMP else 1)
    threads(None)
    assert fastln.get_num_threads() == default


def _threads_in_subprocess(env_extra, code="import fastln; print(fastln.get_num_threads())"):
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1])


@needs_openmp
@pytest.mark.parametrize("count", [1, 3])
def test_omp_num_threads_is_honoured(count):
    assert _threads_in_subprocess({"OMP_NUM_THREADS": str(count)}) == count


@needs_openmp
def test_threadpoolctl_limits_are_honoured(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    threads(None)
    outside = fastln.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert fastln.get_num_threads() == 1
    assert fastln.get_num_threads() == outside


@needs_openmp
def test_explicit_count_beats_threadpoolctl(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    threads(2)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert fastln.get_num_threads() == 2


@pytest.fixture
def parallel_always():
    """Run even tiny calls in parallel, so their thread split is exercised too."""
    previous = _cpu.min_parallel_elements(0)
    yield
    _cpu.min_parallel_elements(previous)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5), (3, 17), (64, 768), (9, 4097)])
def test_small_shapes_split_over_threads_give_the_same_bits(rng, threads, parallel_always, shape,
                                                            dtype):
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(shape[1]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    threads(1)
    want = _run_all(x, shape[1], w, w, dy)
    threads(2)
    for g, e in zip(_run_all(x, shape[1], w, w, dy), want):
        np.testing.assert_array_equal(g, e)


def test_backward_from_many_python_threads_at_once(rng):
    # Calls of several sizes at once, each with its own partial sums, give what they give alone.
    from concurrent.futures import ThreadPoolExecutor

    cases = []
    for n in (1024, 768, 8, 1024):
        x, dy = (rng.standard_normal((64, n)).astype(np.float32) for _ in range(2))
        w = rng.standard_normal(n).astype(np.float32)
        _, mean, rstd = fastln.layer_norm_forward(x, n, w)
        cases.append((dy, x, mean, rstd, w))
    want = [fastln.layer_norm_backward(*c) for c in cases]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: fastln.layer_norm_backward(*cases[i % 4]), range(64)))
    for i, g in enumerate(got):
        for a, b in zip(g, want[i % 4]):
            np.testing.assert_array_equal(a, b)
