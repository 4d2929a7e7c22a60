"""The self-check behind ``python -m fastln check``: fastln against fastln.reference.

A battery of awkward shapes and hard rows (large means, constant rows), run for every op
(LayerNorm, RMSNorm, and each with the fused residual add) and every dtype (float32, float64,
float16, and bfloat16 where ml_dtypes is installed) on every SIMD path this CPU supports, plus a
test that 1 and 2 threads give the same bits. Tests reuse `cases` and `rel_err`.
"""

import sys
from dataclasses import dataclass

import numpy as np

import fastln
from fastln import _cpu, reference

TOLERANCE = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")


def _tolerances():
    """Relative error allowed per dtype: the float32/float64 bars, and one ulp of the largest
    output (rounding alone costs half) for the 16-bit types."""
    tol = dict(TOLERANCE)
    tol[np.dtype(np.float16)] = float(np.finfo(np.float16).eps)
    try:
        bf16 = fastln._ops.bfloat16_dtype()
    except ImportError:
        return tol
    tol[bf16] = float(fastln._ops._finfo(bf16).eps)
    return tol

# A reference computed in longdouble, where that is more precise than float64 (x86-64 Linux).
_LONGDOUBLE = np.finfo(np.longdouble).eps < np.finfo(np.float64).eps


@dataclass
class Case:
    name: str
    x: np.ndarray              # float64 values; each dtype's input is x.astype(dtype)
    affine: bool               # random weight and bias, or none
    offset: bool = False       # rows far from zero: float64 needs a longdouble reference


@dataclass
class Result:
    op: str
    case: str
    dtype: str
    path: str
    err_y: float
    err_dx: float
    err_dw: float              # nan when there is no weight
    err_db: float
    tol: float
    ok: bool


def cases(seed=0):
    """The battery: plain shapes with and without weight/bias, then the hard rows."""
    rng = np.random.default_rng(seed)
    for shape in [(1, 768), (3, 17), (7, 1), (2, 3, 1023), (4, 4097), (64, 4096)]:
        x = rng.standard_normal(shape)
        label = "x".join(map(str, shape))
        yield Case(f"randn {label}", x, affine=False)
        yield Case(f"randn {label} w,b", x, affine=True)
    hard = [
        ("1e4+randn 64x4096", 1e4 + rng.standard_normal((64, 4096))),
        ("1e5+randn 64x4096", 1e5 + rng.standard_normal((64, 4096))),
        ("1e4+0.1randn 64x768", 1e4 + 0.1 * rng.standard_normal((64, 768))),
        ("3e4+0.01randn 64x1024", 3e4 + 0.01 * rng.standard_normal((64, 1024))),
        ("[40000..40003]", np.array([[40000.0, 40001.0, 40002.0, 40003.0]])),
        # float64 only (beyond the other dtypes): squares of 1e180 overflow float64.
        ("2^600 x randn 8x1000", 2.0 ** 600 * rng.standard_normal((8, 1000))),
    ]
    for name, x in hard:
        yield Case(name, x, affine=False, offset=True)
        yield Case(name + " w,b", x, affine=True, offset=True)
    # Constant rows: xhat is 0, so y must equal the bias and dx stay finite (eps keeps rstd finite).
    const = np.repeat(np.array([[0.0], [1.0], [-3.7], [1e4 + 0.3], [3e4]]), 1024, axis=1)
    yield Case("constant rows 5x1024 w,b", const, affine=True, offset=True)


def rel_err(got, ref, scale=0.0):
    """max|got - ref| / max(max|ref|, scale) (the absolute error where both are zero); nan if
    got is None."""
    if got is None:
        return float("nan")
    ref = np.asarray(ref)
    diff = np.max(np.abs(np.asarray(got, dtype=ref.dtype) - ref))
    scale = max(np.max(np.abs(ref)), scale)
    return float(diff / scale if scale > 0 else diff)


def _inputs(op, case, dtype, rng):
    """(x, residual, weight, bias, dy) in `dtype` (16-bit: weight float32, bias the dtype), and
    the reference (y, dx, dw, db) of those same values; dx is the gradient of the sum for the
    fused ops, whose incoming dsum is the residual. Last, the scale dx's error is measured
    against: at least max|rstd * dy * w|, the size of the terms dx is the difference of (RMSNorm
    of one value, where dx is all cancellation, would otherwise fail every implementation)."""
    n = case.x.shape[-1]
    half = dtype.itemsize == 2
    x = case.x.astype(dtype)
    w = b = None
    if case.affine:
        w = rng.standard_normal(n).astype(np.float32 if half else dtype)
        b = rng.standard_normal(n).astype(dtype)
    r = rng.standard_normal(x.shape).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    fused, rms = op.startswith("add_"), op.endswith("rms_norm")
    s = reference._sum(x, r) if fused else x         # the sum, rounded to dtype as fastln does
    precise = np.longdouble if (dtype == np.float64 and case.offset and _LONGDOUBLE) else np.float64
    sr, dyr = s.astype(precise), dy.astype(precise)
    wr = None if w is None else w.astype(precise)
    br = None if b is None else b.astype(precise)
    if rms:
        y, rstd = reference.rms_norm_forward(sr, n, wr, reference._rms_eps(x, None))
        dx, dw = reference.rms_norm_backward(dyr, sr, rstd, wr)
        db = None
    else:
        y, mean, rstd = reference.layer_norm_forward(sr, n, wr, br)
        dx, dw, db = reference.layer_norm_backward(dyr, sr, mean, rstd, wr)
    lead = rstd.reshape(rstd.shape + (1,))
    dx_scale = float(np.max(np.abs(dyr * lead * (1 if wr is None else wr))))
    if fused:
        dx = dx + r.astype(precise)
    return (x, r, w, b, dy), (y, dx, dw, db), dx_scale


def _fastln(op, x, r, w, b, dy):
    # Looked up on the package at call time, so a test can swap in a broken kernel.
    n = x.shape[-1]
    if op == "layer_norm":
        y, mean, rstd = fastln.layer_norm_forward(x, n, w, b)
        return (y, *fastln.layer_norm_backward(dy, x, mean, rstd, w))
    if op == "rms_norm":
        y, rstd = fastln.rms_norm_forward(x, n, w)
        return (y, *fastln.rms_norm_backward(dy, x, rstd, w), None)
    if op == "add_layer_norm":
        y, s, mean, rstd = fastln.add_layer_norm_forward(x, r, n, w, b)
        return (y, *fastln.add_layer_norm_backward(dy, s, mean, rstd, w, r))
    y, s, rstd = fastln.add_rms_norm_forward(x, r, n, w)
    return (y, *fastln.add_rms_norm_backward(dy, s, rstd, w, r), None)


def _accuracy(paths, seed):
    rng = np.random.default_rng(seed + 1)
    tolerances = _tolerances()
    for case in cases(seed):
        for op in OPS:
            for dtype, tol in tolerances.items():
                if np.abs(case.x).max() > float(fastln._ops._finfo(dtype).max) / 2:
                    continue                       # 1e5 + randn is beyond float16
                inputs, ref, dx_scale = _inputs(op, case, dtype, rng)
                for path in paths:
                    _cpu.use_simd_path(path)
                    got = _fastln(op, *inputs)
                    errs = [rel_err(g, r, dx_scale if i == 1 else 0.0)
                            for i, (g, r) in enumerate(zip(got, ref))]
                    # No weight (or RMSNorm's bias): no gradient; that error is nan by design.
                    checked = [e for e, r in zip(errs, ref) if r is not None]
                    ok = (all(e <= tol for e in checked)
                          and all((g is None) == (r is None) for g, r in zip(got, ref)))
                    yield Result(op, case.name, dtype.name, path, *errs, tol, ok)


def _determinism(paths, shape=(4096, 1024), seed=0):
    """1 and 2 threads must give the same bits (errors here are max |difference|)."""
    rng = np.random.default_rng(seed + 2)
    x64, r64, dy64 = (rng.standard_normal(shape) + 3.0 for _ in range(3))
    w64, b64 = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
    for op in OPS:
        for dtype in _tolerances():
            x, r, dy = (a.astype(dtype) for a in (x64, r64, dy64))
            w = w64.astype(np.float32 if dtype.itemsize == 2 else dtype)
            b = b64.astype(dtype)
            for path in paths:
                _cpu.use_simd_path(path)
                runs = []
                for threads in (1, 2):
                    fastln.set_num_threads(threads)
                    runs.append([np.asarray(a, np.float64) for a in _fastln(op, x, r, w, b, dy)
                                 if a is not None])
                diffs = [float(np.max(np.abs(r1 - r2))) for r1, r2 in zip(*runs)]
                diffs += [float("nan")] * (4 - len(diffs))
                same = all(np.array_equal(r1, r2) for r1, r2 in zip(*runs))
                yield Result(op, f"threads 1 vs 2 {shape[0]}x{shape[1]}", dtype.name, path,
                             *diffs, 0.0, same)


def run_checks(paths=None, seed=0):
    """All results, for every SIMD path in `paths` (default: all this CPU runs).

    The SIMD path and thread count in use are restored afterwards.
    """
    paths = _cpu.simd_paths() if paths is None else list(paths)
    previous = _cpu.simd_path()
    previous_threads = _cpu.requested_num_threads()
    try:
        results = list(_accuracy(paths, seed))
        results += list(_determinism(paths, seed=seed))
    finally:
        _cpu.use_simd_path(previous)
        fastln.set_num_threads(previous_threads)
    return results


def _fmt(e):
    return "-" if e != e else f"{e:.1e}"


def format_table(results, failures_only=False):
    head = ("op", "case", "dtype", "path", "err_y", "err_dx", "err_dw", "err_db", "tol", "ok")
    rows = [(r.op, r.case, r.dtype, r.path, _fmt(r.err_y), _fmt(r.err_dx), _fmt(r.err_dw),
             _fmt(r.err_db), f"{r.tol:.0e}" if r.tol else "bits", "ok" if r.ok else "FAIL")
            for r in results if not (failures_only and r.ok)]
    if not rows:
        return "(no failures)" if failures_only else ""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [head, *rows]]
    return "\n".join(lines)


def check(file=None, failures_only=False):
    """Run the checks, print the table and a summary to `file`; return True if all passed."""
    file = sys.stdout if file is None else file
    results = run_checks()
    print(format_table(results, failures_only), file=file)
    failed = [r for r in results if not r.ok]
    worst = {}
    for r in results:
        if r.tol:
            errs = [e for e in (r.err_y, r.err_dx, r.err_dw, r.err_db) if e == e]
            worst[r.dtype] = max(worst.get(r.dtype, 0.0), max(errs) / r.tol)
    summary = ", ".join(f"{dt} worst {v:.2f} x tol" for dt, v in worst.items())
    paths = ", ".join(_cpu.simd_paths())
    verdict = "FAILED" if failed else "passed"
    print(f"\n{len(results) - len(failed)}/{len(results)} checks passed on SIMD paths [{paths}] "
          f"({summary}): {verdict}", file=file)
    return not failed
