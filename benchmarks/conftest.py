"""Fixtures for the pytest-benchmark suite: threads, test arrays and a timing helper.

Run with ``python -m pytest benchmarks/ --benchmark-only -q`` (add ``--benchmark-json FILE``
for a report; each benchmark there gets ``extra_info["ratio_to_copy"]``). Every library, and
the threaded copy, runs on fastln's thread count (OMP_NUM_THREADS sets it). The figures in each
group's table carry pytest-benchmark's factor to the fastest, mostly the copy.
"""

import math
import time

import pytest

import fastln
from fastln import _bench, _cpu

# One benchmark should take about this long in all; at least MIN_ROUNDS rounds, so that the
# largest shapes get a few.
TARGET_S = 0.3
MIN_ROUNDS = 3
MAX_ROUNDS = 200


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
def workload():
    """What a module times: layer_norm, unless it parametrizes `workload` itself."""
    return "layer_norm"


@pytest.fixture(scope="module")
def data(workload, shape, dtype):
    """`fastln._bench.bench_arrays` of one case: x, weight, bias, dy, a preallocated out, the
    forward's statistics, and for add + norm the residual, dsum, s and sum_out."""
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    return _bench.bench_arrays(shape, dtype, workload)


def _plan(fn):
    """(rounds, iterations) so that the run takes about TARGET_S.

    Calls run for _bench.WARMUP_S first, as in ``fastln bench``: the threads of whatever ran
    before may still hold the cores.
    """
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        once = max((time.perf_counter() - t0) / calls, 1e-8)
        if calls * once >= _bench.WARMUP_S:
            break
    iterations = max(1, math.ceil(_bench.SAMPLE_S / once))
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(TARGET_S / (once * iterations))))
    return rounds, iterations


@pytest.fixture
def run(benchmark, threads, workload):
    """run(op, shape, dtype, fn, moves=op, note=None): time ``fn()`` in the table of `op`.

    The group is "{op} {shape} {dtype}", after the workload's name for all but layer_norm
    ("rms_norm forward 8192x768 float32"). `moves` names whose byte count applies ("copy" for the
    copy floor shown beside an op). Records workload, threads, SIMD path, the bytes moved, the
    GB/s that makes and `note` in ``extra_info``.
    """
    def run(op, shape, dtype, fn, moves=None, note=None):
        group = f"{op} {'x'.join(map(str, shape))} {dtype}"
        benchmark.group = group if workload == "layer_norm" else f"{workload} {group}"
        nbytes = _bench.op_bytes(moves or op, shape, dtype, workload)
        rounds, iterations = _plan(fn)
        benchmark.pedantic(fn, rounds=rounds, iterations=iterations)
        benchmark.extra_info.update(workload=workload, threads=threads,
                                    simd_path=_cpu.simd_path(), bytes=nbytes)
        if note:
            benchmark.extra_info["note"] = note
        if benchmark.stats is not None:           # None under --benchmark-disable
            benchmark.extra_info["gbps"] = round(nbytes / benchmark.stats.stats.median / 1e9, 3)
    return run


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Give every benchmark its median / the group's copy floor (the faster copy test)."""
    floors = {}
    for b in output_json["benchmarks"]:
        if b["name"].startswith("test_copy"):
            floors[b["group"]] = min(b["stats"]["median"], floors.get(b["group"], math.inf))
    for b in output_json["benchmarks"]:
        if b["group"] in floors:
            b["extra_info"]["ratio_to_copy"] = round(b["stats"]["median"] / floors[b["group"]], 3)
