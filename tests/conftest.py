"""Fixtures shared by the tests."""

import zlib

import numpy as np
import pytest

import fastln
from fastln import _cpu


@pytest.fixture
def rng(request):
    # One seed per test, stable across runs and independent of test order.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(params=_cpu.simd_paths())
def simd_path(request):
    """Run the test once per SIMD path this CPU supports."""
    previous = _cpu.use_simd_path(request.param)
    yield request.param
    _cpu.use_simd_path(previous)


@pytest.fixture
def threads():
    """Restore fastln's thread setting after the test."""
    yield fastln.set_num_threads
    fastln.set_num_threads(None)
