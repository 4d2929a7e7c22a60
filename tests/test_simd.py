"""SIMD paths: the widest the CPU runs is chosen, FASTLN_SIMD narrows it, every path is right.

Correctness of each path against the reference is tested in test_ops.py through the
`simd_path` fixture; here, the choosing.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastln
from fastln import _cpu


def _path_in_subprocess(value):
    env = dict(os.environ, FASTLN_SIMD=value)
    out = subprocess.run([sys.executable, "-c", "from fastln import _cpu; print(_cpu.simd_path())"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip(), out.stderr


def test_widest_path_by_default():
    if "FASTLN_SIMD" in os.environ:
        pytest.skip("FASTLN_SIMD is set for this run")
    assert _cpu.simd_path() == _cpu.simd_paths()[-1]


@pytest.mark.parametrize("name", _cpu.simd_paths())
def test_env_forces_a_narrower_path(name):
    assert _path_in_subprocess(name)[0] == name


def test_unknown_env_value_warns_and_uses_the_widest():
    path, err = _path_in_subprocess("sse9")
    assert path == _cpu.simd_paths()[-1]
    assert "FASTLN_SIMD='sse9'" in err


def test_use_simd_path_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown SIMD path 'neon9'"):
        _cpu.use_simd_path("neon9")


def test_paths_agree_closely(rng):
    x = (rng.standard_normal((16, 1000)) + 50).astype(np.float32)
    results = []
    for name in _cpu.simd_paths():
        previous = _cpu.use_simd_path(name)
        try:
            results.append(fastln.layer_norm(x, 1000))
        finally:
            _cpu.use_simd_path(previous)
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=0, atol=1e-6)
