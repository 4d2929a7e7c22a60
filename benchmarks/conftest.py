"""Fixtures for the pytest-benchmark suite: threads, test arrays and a timing helper.

Run with ``python -m pytest benchmarks/ --benchmark-only -q`` (add ``--benchmark-json FILE``
for a report). Every library runs on fastln's thread count (OMP_NUM_THREADS sets it).
"""

import math
import time

import numpy as np
import pytest

import fastln
from fastln import _bench, _cpu

# One benchmark should take about this long in all; at least MIN_ROUNDS rounds.
TARGET_S = 0.3
MIN_ROUNDS = 3


@pytest.fixture(scope="session")
def threads():
    n = fastln.get_num_threads()
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        previous = torch.get_num_threads()
        torch.set_num_threads(n)
    yield n
    if torch is not None:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data(shape, dtype):
    """x, weight, bias, dy, a preallocated y, and the forward's mean and rstd, for one case."""
    rng = np.random.default_rng(0)
    n = shape[-1]
    x = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(n)).astype(dtype)
    b = (0.1 * rng.standard_normal(n)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    _, mean, rstd = fastln.layer_norm_forward(x, n, w, b)
    return {"x": x, "w": w, "b": b, "dy": dy, "y": np.empty_like(x), "mean": mean, "rstd": rstd}


def _plan(fn, setup):
    """(rounds, iterations) so that the run takes about TARGET_S; the probe also warms up."""
    t0 = time.perf_counter()
    fn(*setup()[0]) if setup else fn()
    once = max(time.perf_counter() - t0, 1e-8)
    # Batch sub-millisecond calls (not possible with a setup: each call needs its own).
    iterations = 1 if setup else max(1, math.ceil(1e-3 / once))
    rounds = max(MIN_ROUNDS, min(200, int(TARGET_S / (once * iterations))))
    return rounds, iterations


@pytest.fixture
def run(benchmark, threads):
    """run(op, shape, dtype, fn, setup=None, moves=op): time `fn` in the table of `op`.

    `setup`, if given, returns ``(args, kwargs)`` for one call and is not timed. `moves` names
    whose byte count applies ("copy" for the copy floor shown beside an op). Records threads,
    SIMD path, the bytes moved and the GB/s that makes in ``extra_info``.
    """
    def run(op, shape, dtype, fn, setup=None, moves=None):
        benchmark.group = f"{op} {'x'.join(map(str, shape))} {np.dtype(dtype).name}"
        nbytes = _bench.op_bytes(moves or op, shape, dtype)
        rounds, iterations = _plan(fn, setup)
        benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=iterations,
                           warmup_rounds=1 if rounds > MIN_ROUNDS else 0)
        benchmark.extra_info.update(threads=threads, simd_path=_cpu.simd_path(), bytes=nbytes)
        if benchmark.stats is not None:           # None under --benchmark-disable
            benchmark.extra_info["gbps"] = round(nbytes / benchmark.stats.stats.median / 1e9, 3)
    return run
