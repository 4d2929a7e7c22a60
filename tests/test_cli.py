"""The command line: python -m fastln info | check | bench."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import fastln
from fastln import _bench, _check, _cpu, _report
from fastln.__main__ import main

RESULT_KEYS = {"impl", "op", "shape", "dtype", "threads", "simd_path", "median_s", "bytes",
               "gbps", "ratio_to_copy"}
SUMMARY_TITLES = ["shape", "MB", "fwd out= x copy", "fwd fresh x copy", "bwd x copy",
                  "fwd vs torch", "fwd vs ORT", "bwd vs torch"]


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
    assert header == ["op", "case", "dtype", "path", "err_y", "err_dx", "err_dw", "err_db", "tol",
                      "ok"]
    assert "1e5+randn" in r.stdout and "threads 1 vs 2" in r.stdout
    for op in ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"):
        for dtype in ("float32", "float64", "float16", "bfloat16"):
            assert any(line.split()[:1] == [op] and f" {dtype} " in line
                       for line in r.stdout.splitlines()), (op, dtype)
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
    table, summary = r.stdout.split("\nsummary\n")
    rows = [line.split() for line in table.splitlines()]
    shapes = {row[0] for row in rows if row}
    assert {"4x64", "1x768"} <= shapes
    for shape in ("4x64", "1x768"):
        impls = [" ".join(row[2:-3]) for row in rows if row and row[0] == shape]
        assert "copy" in impls and "fastln" in impls and "fastln (out=)" in impls
    # The summary: a header, one row per shape, a legend.
    lines = summary.splitlines()
    assert lines[0].split()[:2] == ["shape", "MB"] and "bwd x copy" in lines[0]
    assert [line.split()[0] for line in lines[1:3]] == ["4x64", "1x768"]
    assert lines[3].startswith("x copy:")


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


def test_bench_markdown():
    r = run_cli("bench", "--shapes", "4x64,1x768", "--repeat", "2", "--threads", "1",
                "--markdown")
    assert r.returncode == 0, r.stderr
    assert "fastln (out=)" in r.stderr            # the timing table, off stdout
    lines = r.stdout.splitlines()
    head = lines[0]
    assert re.search(r"\b\d{4}-\d{2}-\d{2}\b", head)
    assert _bench.cpu_model() in head and "1 thread(s)" in head and "float32" in head
    assert "`fastln bench --dtype float32 --threads 1 --shapes 4x64,1x768 --repeat 2`" in head
    assert lines[1] == ""
    titles = [c.strip() for c in lines[2].strip("|").split("|")]
    assert titles[:5] == SUMMARY_TITLES[:5]
    assert set(titles) <= set(SUMMARY_TITLES)
    assert set(lines[3].replace("|", " ").split()) <= {"---", "---:"}
    rows = [line for line in lines[4:] if line.startswith("|")]
    assert [row.split("|")[1].strip() for row in rows] == ["4x64", "1x768"]
    for row in rows:
        cells = row.strip("|").split("|")
        assert len(cells) == len(titles)
        assert all(re.fullmatch(r"\d+\.\d\dx|-", c.strip()) for c in cells[2:])


def test_bench_from_json(tmp_path):
    """A --json file is reported again, without measuring, as the run printed it."""
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--shapes", "2x8,3x16", "--repeat", "2", "--threads", "1",
                "--json", str(out), "--markdown")
    assert r.returncode == 0, r.stderr
    again = run_cli("bench", "--from-json", str(out), "--markdown")
    assert again.returncode == 0, again.stderr
    assert again.stdout == r.stdout == _report.markdown(json.loads(out.read_text())) + "\n"
    bad = tmp_path / "bad.json"
    bad.write_text('{"results": [{"impl": "copy"}]}')
    r = run_cli("bench", "--from-json", str(bad))
    assert r.returncode == 1 and "cannot read" in r.stderr and "median_s" in r.stderr


def _result(impl, op, seconds, shape=(4, 8)):
    return {"impl": impl, "op": op, "shape": list(shape), "dtype": "float32", "threads": 2,
            "simd_path": "avx2", "median_s": seconds,
            "bytes": _bench.op_bytes(op, shape, "float32"), "gbps": 1.0, "ratio_to_copy": 1.0}


def test_summary_ratios():
    """Ratios to copy are time / copy time; speed-ups are peer time / fastln time."""
    results = [_result("copy", "copy", 1.0), _result("fastln (out=)", "forward", 1.1),
               _result("fastln", "forward", 1.25), _result("fastln", "backward", 1.5),
               _result("torch", "forward", 5.0), _result("torch autograd", "backward", 6.0),
               _result("onnxruntime", "forward", 2.5),
               _result("copy", "copy", 2.0, (2, 4)), _result("fastln", "forward", 3.0, (2, 4))]
    one, two = _report.summary(results)
    assert one == {"shape": [4, 8], "dtype": "float32", "mb": 128e-6, "fwd_out_x_copy": 1.1,
                   "fwd_fresh_x_copy": 1.25, "bwd_x_copy": 1.5, "fwd_vs_torch": 4.0,
                   "fwd_vs_onnxruntime": 2.0, "bwd_vs_torch": 4.0}
    assert two["fwd_fresh_x_copy"] == 1.5 and two["fwd_vs_torch"] is None
    text = _report.summary_text(results).splitlines()
    assert text[0].split("  ")[0].strip() == "shape" and "fwd vs ORT" in text[0]
    assert text[1].split() == ["4x8", "0.000", "1.10x", "1.25x", "1.50x", "4.00x", "2.00x",
                               "4.00x"]
    assert text[2].split()[:4] == ["2x4", "0.000", "-", "1.50x"]
    # Without a peer's results its columns go.
    text = _report.summary_text([r for r in results if "torch" not in r["impl"]])
    assert "torch" not in text and "fwd vs ORT" in text


def test_bench_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    r = run_cli("bench", "--shapes", "2x8,4x64", "--repeat", "2", "--threads", "1",
                "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert f"wrote {png}" in r.stdout
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_bench_plot_without_matplotlib(tmp_path):
    """Missing matplotlib is said at once, before anything is measured."""
    png = tmp_path / "bench.png"
    code = ("import sys\n"
            "sys.modules['matplotlib'] = None\n"
            "from fastln.__main__ import main\n"
            f"sys.exit(main(['bench', '--shapes', '2x8', '--plot', {str(png)!r}]))\n")
    r = run_cli(code=code)
    assert r.returncode == 1
    assert 'pip install "fastln[plot]"' in r.stderr
    assert r.stdout == "" and not png.exists()


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
    (["bench", "--from-json", "b.json", "--threads", "2"], "--from-json reports a saved run"),
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
