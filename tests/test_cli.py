"""The command line: python -m fastln info | check | bench."""

import json
import subprocess
import sys

import numpy as np
import pytest

import fastln
from fastln import _check, _cpu
from fastln.__main__ import main

RESULT_KEYS = {"impl", "op", "shape", "dtype", "threads", "simd_path", "median_s", "gbps",
               "ratio_to_copy"}


def run_cli(*args, code=None):
    """Run ``python -m fastln *args`` (or `code` with -c) in a fresh interpreter."""
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "fastln", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_info():
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "OpenMP:" in out and "SIMD path:" in out
    assert _cpu.simd_path() in out
    for path in _cpu.simd_paths():
        assert path in out
    assert fastln.__version__ in out
    assert "OMP_NUM_THREADS" in out and "FASTLN_SIMD" in out
    assert "CuPy:" in out
    keys = [line.split(":", 1)[0] for line in out.splitlines()]
    assert len(keys) == len(set(keys))


def test_check_passes():
    r = run_cli("check")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    header = r.stdout.splitlines()[0].split()
    assert header == ["case", "dtype", "path", "err_y", "err_dx", "err_dw", "err_db", "tol", "ok"]
    assert "1e5+randn" in r.stdout and "threads 1 vs 2" in r.stdout
    assert "FAIL" not in r.stdout
    assert "passed" in r.stdout.splitlines()[-1]


def test_check_in_process(capsys):
    path = _cpu.simd_path()
    assert main(["check", "--failures-only"]) == 0
    assert "checks passed" in capsys.readouterr().out
    assert _cpu.simd_path() == path          # the check switches paths and puts them back


@pytest.mark.parametrize("which", ["forward", "backward"])
def test_check_catches_a_wrong_kernel(monkeypatch, capsys, which):
    """A kernel off by 1e-3 (relative) must fail the check and give exit code 1."""
    if which == "forward":
        real = fastln.layer_norm_forward

        def wrong(*args, **kwargs):
            y, mean, rstd = real(*args, **kwargs)
            return y * (1 + 1e-3), mean, rstd

        monkeypatch.setattr(fastln, "layer_norm_forward", wrong)
    else:
        real = fastln.layer_norm_backward

        def wrong(*args, **kwargs):
            dx, dw, db = real(*args, **kwargs)
            return dx * (1 + 1e-3), dw, db

        monkeypatch.setattr(fastln, "layer_norm_backward", wrong)
    results = _check.run_checks(paths=[_cpu.simd_path()])
    failed = [r for r in results if not r.ok]
    assert failed
    if which == "forward":
        assert all(r.err_y > r.tol for r in failed if r.tol)
    assert main(["check", "--failures-only"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "FAILED" in out.splitlines()[-1]


def test_rel_err():
    assert _check.rel_err(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == 0.5
    assert _check.rel_err(np.array([1e-9]), np.zeros(1)) == 1e-9    # absolute where ref is 0
    assert _check.rel_err(None, np.ones(1)) != _check.rel_err(None, np.ones(1))   # nan
    assert not _check.rel_err(np.array([np.nan]), np.ones(1)) <= 1.0


def test_bench_prints_each_shape():
    r = run_cli("bench", "--shapes", "4x64,1x768", "--repeat", "3")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    shapes = {row[0] for row in rows if row}
    assert {"4x64", "1x768"} <= shapes
    for shape in ("4x64", "1x768"):
        impls = [" ".join(row[2:-3]) for row in rows if row and row[0] == shape]
        assert "copy" in impls and "fastln" in impls and "fastln (out=)" in impls


def test_bench_json(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--shapes", "4x64,1x768", "--repeat", "3", "--dtype", "float64",
                "--threads", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["machine"]["fastln"] == fastln.__version__
    assert data["machine"]["simd_path"] in data["machine"]["simd_paths"]
    results = data["results"]
    assert results and all(set(res) == RESULT_KEYS for res in results)
    assert {tuple(res["shape"]) for res in results} == {(4, 64), (1, 768)}
    assert {res["dtype"] for res in results} == {"float64"}
    assert {res["threads"] for res in results} == {1}
    assert {("fastln", "forward"), ("fastln", "backward"), ("copy", "copy")} <= {
        (res["impl"], res["op"]) for res in results}
    for res in results:
        assert res["median_s"] > 0 and res["gbps"] > 0 and res["ratio_to_copy"] > 0
        if res["op"] == "copy":
            assert res["ratio_to_copy"] == 1.0


def test_bench_without_peers():
    """Peers that are missing are skipped, and said so once."""
    code = ("import sys\n"
            "for name in ('torch', 'onnxruntime', 'onnx'): sys.modules[name] = None\n"
            "from fastln.__main__ import main\n"
            "sys.exit(main(['bench', '--shapes', '2x8', '--repeat', '2']))\n")
    r = run_cli(code=code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("not installed") == 1
    assert "torch, onnxruntime, onnx" in r.stdout
    assert "torch" not in r.stdout.split("not installed", 1)[1].split("\n", 1)[1]


@pytest.mark.parametrize("args, message", [
    (["bench", "--dtype", "int8"], "invalid choice: 'int8'"),
    (["bench", "--shapes", "0x"], "bad shape '0x'"),
    (["bench", "--shapes", "4x0"], "every dim must be a positive int"),
    (["bench", "--shapes", "8192by768"], "bad shape"),
    (["bench", "--repeat", "0"], "expected a positive int"),
    (["bench", "--threads", "two"], "expected a positive int"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "required"),
])
def test_bad_arguments(args, message, capsys):
    r = run_cli(*args)
    assert r.returncode == 2
    assert message in r.stderr and "usage: fastln" in r.stderr
    # main() returns the code instead of raising SystemExit
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_help_returns_zero(capsys):
    assert main(["--help"]) == 0
    assert "info" in capsys.readouterr().out
