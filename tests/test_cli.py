"""The command line: python -m fastln info | check | bench."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastln
from fastln import _bench, _check, _cpu, _ops, _report
from fastln.__main__ import main

RESULT_KEYS = {"workload", "impl", "op", "shape", "dtype", "threads", "simd_path", "median_s",
               "bytes", "gbps", "ratio_to_copy"}
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
    assert one == {"workload": "layer_norm", "shape": [4, 8], "dtype": "float32", "mb": 128e-6,
                   "fwd_out_x_copy": 1.1,
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


def test_bench_keeps_each_implementations_fastest_pass(monkeypatch):
    """Every implementation of a shape, the copy included, is timed in each of PASSES passes
    over the same arrays, and its fastest median is the one reported."""
    made, arrays = [], []
    implementations = _bench._implementations

    def tagged(a, *args, **kwargs):
        arrays.append(a)
        made.append(len(made))
        for impl, kind, _ in implementations(a, *args, **kwargs):
            yield impl, kind, (impl, made[-1])      # timed by the fake measure below

    # The copy is fastest in the first pass, everything else in the second.
    seconds = {("copy", 0): 2.0, ("copy", 1): 4.0, ("other", 0): 3.0, ("other", 1): 1.0}
    monkeypatch.setattr(_bench, "PASSES", 2)
    monkeypatch.setattr(_bench, "SETTLE_S", 0)
    monkeypatch.setattr(_bench, "_implementations", tagged)
    monkeypatch.setattr(_bench, "measure", lambda tag, **kwargs: seconds[
        "copy" if tag[0] == "copy" else "other", tag[1]])
    results = _bench.run_bench([(4, 64)], threads=1)
    assert made == [0, 1] and arrays[0] is arrays[1]
    assert {(r["impl"], r["op"]) for r in results} >= {("copy", "copy"), ("fastln", "backward")}
    for r in results:
        expected = 2.0 if r["op"] == "copy" else 1.0
        assert r["median_s"] == expected and r["ratio_to_copy"] == expected / 2.0


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


@pytest.mark.parametrize("op", ["layer_norm", "all"])
def test_bench_without_peers(op):
    """Peers that are missing are skipped, and said so once."""
    code = ("import sys\n"
            "for name in ('torch', 'onnxruntime', 'onnx'): sys.modules[name] = None\n"
            "from fastln.__main__ import main\n"
            f"sys.exit(main(['bench', '--op', {op!r}, '--shapes', '2x8', '--repeat', '2']))\n")
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
    (["bench", "--op", "softmax"], "invalid choice: 'softmax'"),
    (["bench", "--op"], "expected one argument"),
    (["bench", "--dtype", "float128"], "invalid choice: 'float128'"),
    (["bench", "--from-json", "b.json", "--op", "rms_norm"], "--from-json reports a saved run"),
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


# ---------------------------------------------------------------------------------------------
# fastln bench --op: RMSNorm, the fused add + norm, and 16-bit data

NEW_OPS = ["rms_norm", "add_layer_norm", "add_rms_norm"]
HAS_TORCH = _bench.peer("torch") is not None
HAS_ORT = _bench.peer("onnxruntime") is not None and _bench.peer("onnx") is not None
SAVED_RUN = Path(__file__).parents[1] / "benchmarks" / "results" / "cpu-2026-11-22.json"


@pytest.mark.parametrize("op", NEW_OPS)
def test_bench_op(op, tmp_path, capsys):
    """Each workload times fastln, the reference, its own peers and its copy floor."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--op", op, "--shapes", "2x8,3x16", "--repeat", "2", "--threads", "1",
                 "--json", str(out)]) == 0
    table, summary = capsys.readouterr().out.split("\nsummary\n")
    assert f"{op}: {_bench.WORKLOADS[op][0]}" in table.splitlines()
    rows = [line.split() for line in table.splitlines()]
    expected = {("copy", "copy"), ("forward", "fastln (out=)"), ("forward", "fastln"),
                ("backward", "fastln"), ("forward", "numpy reference")}
    if HAS_TORCH:
        expected |= {("forward", "torch"), ("backward", "torch autograd")}
    if HAS_ORT:
        expected.add(("forward", "onnxruntime"))
    for shape in ("2x8", "3x16"):
        assert {(row[1], " ".join(row[2:-3])) for row in rows if row[:1] == [shape]} == expected
    title = summary.splitlines()[0]
    assert title.startswith(f"{op}: {_bench.WORKLOADS[op][0]}")
    assert (_bench.WORKLOADS[op][1] in title) == HAS_TORCH
    assert (_bench.ONNX_OPS[op][0] in title) == HAS_ORT
    data = json.loads(out.read_text())
    assert data["run"]["op"] == op
    assert data["run"]["command"].startswith(f"fastln bench --op {op} --dtype float32")
    for res in data["results"]:
        assert set(res) == RESULT_KEYS and res["workload"] == op
        assert res["bytes"] == _bench.op_bytes(res["op"], res["shape"], "float32", op)
        if res["op"] == "copy":
            assert res["ratio_to_copy"] == 1.0


def test_bench_all_ops(tmp_path):
    """--op all: one titled markdown table per workload, reported again from its --json."""
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--op", "all", "--shapes", "2x8", "--repeat", "2", "--threads", "1",
                "--json", str(out), "--markdown")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "LayerNorm, RMSNorm, add + LayerNorm, add + RMSNorm, float32, 1 thread(s)" in lines[0]
    assert ("`fastln bench --op all --dtype float32 --threads 1 --shapes 2x8 --repeat 2`"
            in lines[0])
    titles = [line for line in lines if line.startswith("`")]
    assert [t.split("`")[1] for t in titles] == list(_bench.WORKLOADS)
    assert sum(line.startswith("| shape | MB |") for line in lines) == 4
    assert sum(line.startswith("| 2x8 |") for line in lines) == 4
    assert lines[-1].startswith("x copy:")
    again = run_cli("bench", "--from-json", str(out), "--markdown")
    assert again.returncode == 0, again.stderr
    assert again.stdout == r.stdout
    for workload, (title, _) in _bench.WORKLOADS.items():
        assert f"{workload}: {title}\n" in again.stderr        # the timing table, titled


@pytest.mark.parametrize("dtype, op", [("float16", "add_rms_norm"), ("bfloat16", "layer_norm"),
                                       ("bfloat16", "add_layer_norm"),
                                       ("float64", "add_layer_norm")])
def test_bench_dtypes(dtype, op, tmp_path, capsys):
    """16-bit data are timed like the others; a peer that rejects a dtype is skipped, and said."""
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    out = tmp_path / "bench.json"
    assert main(["bench", "--op", op, "--dtype", dtype, "--shapes", "2x8", "--repeat", "2",
                 "--threads", "1", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    results = json.loads(out.read_text())["results"]
    assert {res["dtype"] for res in results} == {dtype}
    impls = {(res["impl"], res["op"]) for res in results}
    assert {("copy", "copy"), ("fastln (out=)", "forward"), ("fastln", "forward"),
            ("fastln", "backward"), ("numpy reference", "forward")} <= impls
    if HAS_TORCH:
        assert {("torch", "forward"), ("torch autograd", "backward")} <= impls
    if HAS_ORT:
        # ONNX Runtime's Skip operators take no float64; others may lack 16-bit kernels.
        skipped = f"onnxruntime: skipped {op} 2x8 {dtype}" in err
        assert skipped != (("onnxruntime", "forward") in impls)
        assert skipped or dtype != "float64"
    copy = next(res for res in results if res["op"] == "copy")
    assert copy["bytes"] == (4 if op.startswith("add_") else 2) * 16 * (
        8 if dtype == "float64" else 2)


def test_bench_bfloat16_without_ml_dtypes(monkeypatch, capsys):
    """Said at once, before anything is measured."""
    monkeypatch.setattr(_ops, "_ml_dtypes", lambda: None)
    assert main(["bench", "--dtype", "bfloat16", "--shapes", "2x8", "--repeat", "2"]) == 1
    captured = capsys.readouterr()
    assert "--dtype bfloat16" in captured.err and "pip install ml_dtypes" in captured.err
    assert captured.out == ""


def test_bench_from_old_json(tmp_path, capsys):
    """A file from before --op (no "workload", "bytes" or "run") reports as LayerNorm's, in the
    tables of then."""
    old = tmp_path / "old.json"
    results = [_result("copy", "copy", 1.0), _result("fastln", "forward", 1.5),
               _result("fastln", "backward", 2.0), _result("torch", "forward", 3.0)]
    old.write_text(json.dumps({"results": [{k: v for k, v in res.items() if k != "bytes"}
                                           for res in results]}))
    assert main(["bench", "--from-json", str(old), "--markdown"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert " LayerNorm, float32, 2 thread(s)" in lines[0]
    assert "`fastln bench --dtype float32 --threads 2 --shapes 4x8`" in lines[0]
    assert lines[2].startswith("| shape | MB | fwd fresh x copy | bwd x copy | fwd vs torch |")
    assert lines[4] == "| 4x8 | 0.000 | 1.50x | 2.00x | 2.00x |"
    assert captured.err.splitlines()[0] == _report.table_header()       # untitled
    assert main(["bench", "--from-json", str(old)]) == 0
    assert capsys.readouterr().out.split("\nsummary\n")[1].startswith("shape ")
    if SAVED_RUN.exists():                  # the README's table, from the saved run
        assert main(["bench", "--from-json", str(SAVED_RUN), "--markdown"]) == 0
        out = capsys.readouterr().out
        assert "| 65536x1024 | 268 | " in out
        assert "`fastln bench --dtype float32 --threads 2`" in out


def test_op_bytes():
    """Each workload's least bytes moved; 16-bit data keep float32 weights and statistics."""
    shape, size, n, rows = (6, 8), 48, 8, 6
    assert _bench.op_bytes("copy", shape, "float32") == 4 * 2 * size
    assert _bench.op_bytes("forward", shape, "float32") == 4 * (2 * size + 2 * n)
    assert _bench.op_bytes("backward", shape, "float64") == 8 * (3 * size + 3 * n + 2 * rows)
    assert _bench.op_bytes("forward", shape, "float32", "rms_norm") == 4 * (2 * size + n)
    assert (_bench.op_bytes("backward", shape, "float32", "rms_norm")
            == 4 * (3 * size + 2 * n + rows))
    for workload in ("add_layer_norm", "add_rms_norm"):
        assert _bench.op_bytes("copy", shape, "float32", workload) == 4 * 4 * size
    assert (_bench.op_bytes("forward", shape, "float32", "add_layer_norm")
            == 4 * (4 * size + 2 * n))
    assert (_bench.op_bytes("backward", shape, "float32", "add_rms_norm")
            == 4 * (4 * size + 2 * n + rows))
    assert (_bench.op_bytes("backward", shape, "bfloat16", "add_layer_norm")
            == 2 * 4 * size + 4 * (3 * n + 2 * rows))
    assert _bench.op_bytes("forward", shape, "float16") == 2 * 2 * size + 4 * 2 * n
    with pytest.raises(ValueError, match="unknown op 'softmax'"):
        _bench.op_bytes("copy", shape, "float32", "softmax")


def test_copy_floor_of_two_arrays():
    """The add + norm floor copies x into out and the residual into sum_out, threaded or not."""
    a = _bench.bench_arrays((5, 7), "float32", "add_rms_norm")
    pairs = _bench.copy_pairs(a)
    assert [(d is a["out"], s is a["x"]) for d, s in pairs[:1]] == [(True, True)]
    assert pairs[1][0] is a["sum_out"] and pairs[1][1] is a["r"]
    _bench.copy_call(pairs)()
    assert np.array_equal(a["out"], a["x"]) and np.array_equal(a["sum_out"], a["r"])
    y, s = np.zeros_like(a["x"]), np.zeros_like(a["r"])
    copy = _bench.ThreadedCopy((y, s), (a["x"], a["r"]), 3)
    try:
        copy()
    finally:
        copy.close()
    assert np.array_equal(y, a["x"]) and np.array_equal(s, a["r"])


def test_summary_per_workload(tmp_path):
    """A table per workload, titled with the peers' operators that were measured."""
    results = [_result("copy", "copy", 1.0), _result("fastln", "forward", 1.5),
               _result("torch", "forward", 3.0)]
    results += [dict(res, workload="add_rms_norm") for res in
                [_result("copy", "copy", 2.0), _result("fastln", "forward", 2.5),
                 _result("onnxruntime", "forward", 5.0)]]
    rows = _report.summary(results)
    assert [(row["workload"], row["fwd_fresh_x_copy"]) for row in rows] == [
        ("layer_norm", 1.5), ("add_rms_norm", 1.25)]
    text = _report.summary_text(results).splitlines()
    assert text[0] == "layer_norm: LayerNorm; vs torch: F.layer_norm"
    at = text.index("add_rms_norm: add + RMSNorm; vs ORT: SkipSimplifiedLayerNormalization")
    assert text[at + 1].split() == ["shape", "MB", "fwd", "fresh", "x", "copy", "fwd", "vs", "ORT"]
    assert text[at + 2].split() == ["4x8", "0.000", "1.25x", "2.00x"]
    md = _report.markdown({"results": results})
    assert "\n`layer_norm`: LayerNorm; vs torch: `F.layer_norm`\n" in md
    assert "| 4x8 | 0.000 | 1.25x | 2.00x |" in md
    if _bench.peer("matplotlib") is not None:
        png = tmp_path / "bench.png"
        _report.plot({"results": results}, png)
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
