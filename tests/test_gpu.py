"""The CuPy backend (fastln._gpu) against fastln.reference, on a GPU and on the CPU emulator.

Tests that run kernels take the `gpu` fixture, which gives them a CuPy module twice:

- "cupy": CuPy itself on a real GPU; skipped, with the reason, where CuPy or a GPU is missing.
- "emulated": tests/fake_cupy.py in its place, which runs the same .cu source compiled for the CPU
  (tests/cuda_emulator.h), through the same fastln._gpu code. Skipped without a C++ compiler.
  The emulator also checks every memory access, every kernel argument's C type, and barriers.

Results are brought to the host (cupy.asnumpy) and compared with the float64 reference. The tests
at the end need no CuPy at all: the error without it, the dispatch test, the packaged sources.
"""

import importlib.resources
import importlib.util
import json
import math
import os
import subprocess
import sys

import fake_cupy
import numpy as np
import pytest
from _helpers import HARD_ROWS, precise, rel_err

from fastln import _gpu, reference

F32, F16 = np.dtype(np.float32), np.dtype(np.float16)
# Relative error allowed against the reference, as a fraction of max|reference|: float32 as on
# the CPU; float16 results are rounded to 11 bits, so about 2 ulp of the largest value.
TOL = {F32: 1e-6, F16: 1e-3}
# (data dtype, weight dtype) pairs the kernels take.
TYPES = [(F32, F32), (F16, F16), (F16, F32)]
TYPE_IDS = ["f32", "f16", "f16-w32"]
OPS = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"]


@pytest.fixture(scope="module", params=["cupy", "emulated"])
def gpu(request):
    """A CuPy module: the real one on a GPU, or fake_cupy running the kernels on the CPU."""
    if request.param == "cupy":
        cupy = pytest.importorskip("cupy", reason="CuPy is not installed: pip install fastln[gpu]")
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # no driver, or no device
            pytest.skip(f"CuPy sees no GPU: {str(exc).splitlines()[0]}")
        if count == 0:
            pytest.skip("CuPy sees no GPU")
        _clear_caches()
        yield cupy
        _clear_caches()
        return
    if fake_cupy.compiler() is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build the CUDA emulator")
    fake_cupy.build(_gpu.SOURCE, _gpu.kernel_names())
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = fake_cupy
    _clear_caches()
    try:
        yield fake_cupy
    finally:
        _clear_caches()
        if saved is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved


def _clear_caches():
    _gpu._kernel.cache_clear()
    _gpu._multiprocessors.cache_clear()


@pytest.fixture
def launches(monkeypatch):
    """The kernels launched during the test, as (name, grid, block) tuples."""
    seen = []
    launch = _gpu._launch

    def record(name, device, grid, block, args):
        seen.append((name, grid, block))
        launch(name, device, grid, block, args)

    monkeypatch.setattr(_gpu, "_launch", record)
    return seen


# ---------------------------------------------------------------------------------------------
# The reference for each op, on the host

def _f64(a):
    a = np.asarray(a)
    return a.astype(np.result_type(a.dtype, np.float64))


def _ref_rms_forward(x, normalized_shape, weight=None, eps=None):
    x = _f64(x)
    axes = tuple(range(x.ndim - (1 if np.ndim(normalized_shape) == 0 else len(normalized_shape)),
                       x.ndim))
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps)
    y = x * rstd
    if weight is not None:
        y = y * _f64(weight)
    return y, np.squeeze(rstd, axis=axes)


def _ref_rms_backward(dy, x, rstd, weight=None):
    dy, x, rstd = _f64(dy), _f64(x), _f64(rstd)
    axes = tuple(range(rstd.ndim, x.ndim))
    rstd = np.expand_dims(rstd, axes)
    xhat = x * rstd
    g = dy if weight is None else dy * _f64(weight)
    dx = rstd * (g - xhat * np.mean(g * xhat, axis=axes, keepdims=True))
    lead = tuple(range(x.ndim - len(axes)))
    dweight = None if weight is None else np.sum(dy * xhat, axis=lead)
    return dx, dweight


# fastln.reference's own RMSNorm where it has one (the CPU ops are being added beside these).
rms_forward = getattr(reference, "rms_norm_forward", _ref_rms_forward)
rms_backward = getattr(reference, "rms_norm_backward", _ref_rms_backward)


def _run(gpu, op, x, r, w, b, dy, dsum, nshape, eps):
    """Forward and backward of `op` on the GPU: dict of host arrays."""
    d = gpu.asarray
    dw_, db_ = (None if a is None else d(a) for a in (w, b))
    got = {}
    if op == "layer_norm":
        y, mean, rstd = _gpu.layer_norm_forward(d(x), nshape, dw_, db_, eps)
        dx, dweight, dbias = _gpu.layer_norm_backward(d(dy), d(x), mean, rstd, dw_)
        got.update(mean=mean, dbias=dbias)
        assert_same(_gpu.layer_norm(d(x), nshape, dw_, db_, eps), y)
    elif op == "rms_norm":
        y, rstd = _gpu.rms_norm_forward(d(x), nshape, dw_, eps)
        dx, dweight = _gpu.rms_norm_backward(d(dy), d(x), rstd, dw_)
        assert_same(_gpu.rms_norm(d(x), nshape, dw_, eps), y)
    elif op == "add_layer_norm":
        y, s, mean, rstd = _gpu.add_layer_norm_forward(d(x), d(r), nshape, dw_, db_, eps)
        dx, dweight, dbias = _gpu.add_layer_norm_backward(
            d(dy), s, mean, rstd, dw_, None if dsum is None else d(dsum))
        got.update(s=s, mean=mean, dbias=dbias)
        y2, s2 = _gpu.add_layer_norm(d(x), d(r), nshape, dw_, db_, eps)
        assert_same(y2, y)
        assert_same(s2, s)
    else:
        y, s, rstd = _gpu.add_rms_norm_forward(d(x), d(r), nshape, dw_, eps)
        dx, dweight = _gpu.add_rms_norm_backward(d(dy), s, rstd, dw_,
                                                 None if dsum is None else d(dsum))
        got["s"] = s
        y2, s2 = _gpu.add_rms_norm(d(x), d(r), nshape, dw_, eps)
        assert_same(y2, y)
        assert_same(s2, s)
    got.update(y=y, rstd=rstd, dx=dx, dweight=dweight)
    for key, value in got.items():
        assert value is None or type(value) is gpu.ndarray, key
    return {k: None if v is None else gpu.asnumpy(v) for k, v in got.items()}


def _expected(op, x, r, w, b, dy, dsum, nshape, eps):
    """The reference's answer for the same inputs, on the host in float64."""
    s = x if r is None else (x + r).astype(x.dtype)   # the sum rounded to x's dtype
    want = {}
    if op in ("layer_norm", "add_layer_norm"):
        y, mean, rstd = reference.layer_norm_forward(precise(s), nshape, w, b, eps)
        dx, dweight, dbias = reference.layer_norm_backward(precise(dy), precise(s), mean, rstd, w)
        want.update(mean=mean, dbias=dbias)
    else:
        y, rstd = rms_forward(precise(s), nshape, w, eps)
        dx, dweight = rms_backward(precise(dy), precise(s), rstd, w)
    # dx is rstd * g less terms that cancel it where dy lies along xhat (every dy, for RMSNorm
    # of one value): float32 can only promise its digits relative to rstd * g.
    g = _f64(dy) * (1.0 if w is None else _f64(w))
    scale = np.abs(np.expand_dims(rstd, tuple(range(np.ndim(rstd), dy.ndim))) * g).max(initial=0)
    if dsum is not None:
        dx = dx + dsum
        scale = max(scale, np.abs(dsum).max(initial=0))
    if r is not None:
        want["s"] = s
    want.update(y=y, rstd=rstd, dx=dx, dweight=dweight)
    want["scale"] = {"dx": max(scale, np.abs(dx).max(initial=0)), "mean": max(
        np.abs(want.get("mean", 0)).max(initial=0), (1 / rstd).max(initial=0))}
    return want


def assert_same(a, b):
    np.testing.assert_array_equal(fake_cupy.asnumpy(a) if isinstance(a, np.ndarray) else a.get(),
                                  fake_cupy.asnumpy(b) if isinstance(b, np.ndarray) else b.get())


def _compare(got, want, dtype, wdtype):
    """Each output within its tolerance, with the dtype it must have."""
    scales = want.pop("scale")
    for key, ref in want.items():
        value = got[key]
        if ref is None:
            assert value is None, key
            continue
        assert value.shape == np.shape(ref), (key, value.shape, np.shape(ref))
        if key == "s":
            np.testing.assert_array_equal(value, ref)
            continue
        want_dtype = {"mean": F32, "rstd": F32, "dweight": wdtype, "dbias": wdtype}.get(key, dtype)
        assert value.dtype == want_dtype, (key, value.dtype)
        tol = TOL[np.dtype(value.dtype)]
        # the mean is exact to ~1e-7 of the row's spread, not of the mean itself
        err = rel_err(value, ref, scales.get(key))
        assert err <= tol, f"{key}: relative error {err:.3g} > {tol}"


def _inputs(rng, op, shape, nshape, dtype, wdtype, affine=True, offset=0.0, scale=1.0):
    n_shape = (nshape,) if np.ndim(nshape) == 0 else tuple(nshape)
    x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype) if op.startswith("add") else None
    w = rng.standard_normal(n_shape).astype(wdtype) if affine else None
    b = rng.standard_normal(n_shape).astype(wdtype) if affine and "layer" in op else None
    dy = rng.standard_normal(shape).astype(dtype)
    dsum = rng.standard_normal(shape).astype(dtype) if op.startswith("add") else None
    return x, r, w, b, dy, dsum


def _check(gpu, rng, op, shape, nshape, dtype, wdtype, affine=True, eps=1e-5, **kw):
    x, r, w, b, dy, dsum = _inputs(rng, op, shape, nshape, dtype, wdtype, affine, **kw)
    got = _run(gpu, op, x, r, w, b, dy, dsum, nshape, eps)
    want = _expected(op, x, r, w, b, dy, dsum, nshape, eps)
    _compare(got, want, dtype, wdtype if affine else F32)
    return got


# ---------------------------------------------------------------------------------------------
# Every op against the reference

SHAPES = [
    ((1, 1), 1),
    ((3, 17), 17),             # not a whole number of vectors: the scalar kernels
    ((2, 3, 64), 64),          # several leading dims; rows of one warp, 16-byte vectors
    ((9, 768), 768),           # more rows than a block of warps takes
    ((2, 3, 4), (3, 4)),       # several normalized dims
    ((2, 4100), 4100),         # a block of 5 warps per row
    ((2, 2049), 2049),         # scalar, a block of 9 warps
]


@pytest.mark.parametrize("dtype, wdtype", TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("shape, nshape", SHAPES, ids=[str(s) for s, _ in SHAPES])
@pytest.mark.parametrize("op", OPS)
def test_matches_reference(gpu, rng, op, shape, nshape, dtype, wdtype):
    _check(gpu, rng, op, shape, nshape, dtype, wdtype)


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("op", OPS)
def test_without_weight(gpu, rng, op, dtype):
    got = _check(gpu, rng, op, (5, 96), 96, dtype, dtype, affine=False)
    assert got["dweight"] is None
    if "layer" in op:
        assert got["dbias"].dtype == F32


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("op", OPS)
def test_long_rows(gpu, rng, op, dtype):
    # 8192: forward 256 threads per row (f32), backward 1024 threads
    _check(gpu, rng, op, (2, 8192), 8192, dtype, dtype)


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("op", OPS)
def test_rows_too_long_for_registers(gpu, rng, monkeypatch, launches, op, dtype):
    monkeypatch.setattr(_gpu, "_MAX_GROUP", 32)   # all but the shortest rows take *_stream
    for shape in ((3, 100), (2, 1031)):
        _check(gpu, rng, op, shape, shape[-1], dtype, dtype)
    assert any("forward_stream" in name for name, _, _ in launches)
    assert any("backward_stream" in name for name, _, _ in launches)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name, offset, scale, n", HARD_ROWS)
def test_rows_with_a_large_mean(gpu, rng, op, name, offset, scale, n):
    # The pivot keeps the digits that a plain float32 sum of x would lose to the offset.
    _check(gpu, rng, op, (3, n), n, F32, F32, offset=offset, scale=scale)


def test_float16_rows_with_a_large_mean(gpu, rng):
    _check(gpu, rng, "layer_norm", (4, 1024), 1024, F16, F32, offset=1000.0, scale=1.0)


def test_reference_tolerance_is_tight(gpu, rng):
    """The float32 kernels are as accurate as the CPU's: y and dx within 2e-7 on plain rows."""
    x, _, w, b, dy, _ = _inputs(rng, "layer_norm", (16, 1024), 1024, F32, F32)
    got = _run(gpu, "layer_norm", x, None, w, b, dy, None, 1024, 1e-5)
    want = _expected("layer_norm", x, None, w, b, dy, None, 1024, 1e-5)
    assert rel_err(got["y"], want["y"]) < 2e-7
    assert rel_err(got["dx"], want["dx"]) < 3e-7


def test_rms_eps_defaults_to_the_dtype_eps(gpu, rng):
    x = rng.standard_normal((3, 64)).astype(np.float16)
    y = gpu.asnumpy(_gpu.rms_norm(gpu.asarray(x), 64))
    want, _ = rms_forward(precise(x), 64, None, float(np.finfo(np.float16).eps))
    assert rel_err(y, want) <= TOL[F16]


def test_constant_and_non_finite_rows(gpu):
    x = np.zeros((4, 64), np.float32)
    x[0] = 3.0
    x[1, 5] = np.nan
    x[2, 7] = np.inf
    x[3] = np.arange(64)
    b = np.full(64, 0.5, np.float32)
    y = gpu.asnumpy(_gpu.layer_norm(gpu.asarray(x), 64, None, gpu.asarray(b)))
    np.testing.assert_array_equal(y[0], b)     # a constant row normalizes to the bias
    assert np.isnan(y[1]).all() and np.isnan(y[2]).all()
    np.testing.assert_allclose(y[3], reference.layer_norm(x[3], 64, None, b), atol=1e-6)


def test_empty_leading_dims(gpu):
    x = gpu.asarray(np.zeros((0, 3, 8), np.float32))
    w = gpu.asarray(np.ones(8, np.float32))
    y, mean, rstd = _gpu.layer_norm_forward(x, 8, w)
    assert y.shape == (0, 3, 8) and mean.shape == rstd.shape == (0, 3)
    dx, dw, db = _gpu.layer_norm_backward(gpu.asarray(np.zeros((0, 3, 8), np.float32)), x, mean,
                                          rstd, w)
    assert dx.shape == (0, 3, 8)
    np.testing.assert_array_equal(gpu.asnumpy(dw), 0)
    np.testing.assert_array_equal(gpu.asnumpy(db), 0)


# ---------------------------------------------------------------------------------------------
# Layouts, outputs, dtypes

@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_input_is_copied_on_the_device(gpu, rng, op):
    big = rng.standard_normal((6, 2, 80)).astype(np.float32)
    x_host = big[::2, 0, ::2]                           # (3, 40), strided both ways
    x = gpu.asarray(big)[::2, 0, ::2]
    assert not x.flags.c_contiguous
    r = gpu.asarray(np.ones((3, 40), np.float32))
    w = gpu.asarray(rng.standard_normal(40).astype(np.float32))
    if op == "layer_norm":
        got, want = _gpu.layer_norm(x, 40, w), _gpu.layer_norm(gpu.asarray(x_host), 40, w)
    elif op == "rms_norm":
        got, want = _gpu.rms_norm(x, 40, w), _gpu.rms_norm(gpu.asarray(x_host), 40, w)
    else:
        f = getattr(_gpu, op)
        got, want = f(x, r, 40, w)[0], f(gpu.asarray(x_host), r, 40, w)[0]
    assert_same(got, want)


def test_transposed_input_and_stats(gpu, rng):
    x_host = rng.standard_normal((32, 5)).astype(np.float32)
    x = gpu.asarray(x_host).T                       # (5, 32), F-ordered
    y, mean, rstd = _gpu.layer_norm_forward(x, 32)
    np.testing.assert_allclose(gpu.asnumpy(y), reference.layer_norm(x_host.T, 32), atol=2e-6)
    dy = gpu.asarray(rng.standard_normal((32, 5)).astype(np.float32)).T
    dx, _, db = _gpu.layer_norm_backward(dy, x, mean[::1], rstd)
    want, _, want_db = reference.layer_norm_backward(gpu.asnumpy(dy), x_host.T, gpu.asnumpy(mean),
                                                     gpu.asnumpy(rstd))
    assert rel_err(gpu.asnumpy(dx), want) < 1e-6 and rel_err(gpu.asnumpy(db), want_db) < 1e-6


def test_unaligned_rows_take_the_scalar_kernels(gpu, rng, launches):
    # A view one element into a buffer: contiguous, but not 16-byte aligned.
    buf = gpu.asarray(rng.standard_normal(4 * 64 + 1).astype(np.float32))
    x = buf[1:].reshape(4, 64)
    assert x.data.ptr % 16 != 0 and x.flags.c_contiguous
    y, mean, rstd = _gpu.layer_norm_forward(x, 64)
    dy = rng.standard_normal((4, 64)).astype(np.float32)
    dx, _, _ = _gpu.layer_norm_backward(gpu.asarray(dy), x, mean, rstd)
    host = gpu.asnumpy(x)
    assert rel_err(gpu.asnumpy(y), reference.layer_norm(host, 64)) <= 1e-6
    want = reference.layer_norm_backward(dy, host, gpu.asnumpy(mean), gpu.asnumpy(rstd))[0]
    assert rel_err(gpu.asnumpy(dx), want) <= 1e-6
    assert [name.split("<")[1].split(",")[2].strip() for name, _, _ in launches[:2]] == ["1", "1"]


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_out_and_in_place(gpu, rng, op):
    f = getattr(_gpu, op)
    x_host = rng.standard_normal((3, 48)).astype(np.float32)
    want = gpu.asnumpy(f(gpu.asarray(x_host), 48))
    out = gpu.asarray(np.zeros((3, 48), np.float32))
    assert f(gpu.asarray(x_host), 48, out=out) is out
    np.testing.assert_array_equal(gpu.asnumpy(out), want)
    x = gpu.asarray(x_host)
    assert f(x, 48, out=x) is x                        # in place
    np.testing.assert_array_equal(gpu.asnumpy(x), want)
    wide = gpu.asarray(np.zeros((3, 96), np.float32))
    f(gpu.asarray(x_host), 48, out=wide[:, ::2])       # a strided out: written through a copy
    np.testing.assert_array_equal(gpu.asnumpy(wide)[:, ::2], want)
    np.testing.assert_array_equal(gpu.asnumpy(wide)[:, 1::2], 0)
    x = gpu.asarray(np.concatenate([x_host.ravel(), np.zeros(1, np.float32)]))
    with pytest.raises(ValueError, match="out overlaps x"):
        f(x[:-1].reshape(3, 48), 48, out=x[1:].reshape(3, 48))
    with pytest.raises(TypeError, match="out must have dtype float32"):
        f(gpu.asarray(x_host), 48, out=gpu.asarray(np.zeros((3, 48), np.float16)))
    with pytest.raises(ValueError, match=r"out must have shape \(3, 48\)"):
        f(gpu.asarray(x_host), 48, out=gpu.asarray(np.zeros((48, 3), np.float32)))
    with pytest.raises(TypeError, match="out is a numpy.ndarray"):
        f(gpu.asarray(x_host), 48, out=np.zeros((3, 48), np.float32))


@pytest.mark.parametrize("op", ["add_layer_norm", "add_rms_norm"])
def test_fused_add_outputs(gpu, rng, op):
    f = getattr(_gpu, op)
    x_host = rng.standard_normal((3, 64)).astype(np.float16)
    r_host = rng.standard_normal((3, 64)).astype(np.float16)
    y_want, s_want = (gpu.asnumpy(a) for a in f(gpu.asarray(x_host), gpu.asarray(r_host), 64))
    np.testing.assert_array_equal(s_want, x_host + r_host)   # rounded to float16, as x + r is
    x, r = gpu.asarray(x_host), gpu.asarray(r_host)
    y, s = f(x, r, 64, out=r, sum_out=x)                     # the residual stream in place
    assert y is r and s is x
    np.testing.assert_array_equal(gpu.asnumpy(y), y_want)
    np.testing.assert_array_equal(gpu.asnumpy(s), s_want)
    x = gpu.asarray(x_host)
    with pytest.raises(ValueError, match="out overlaps sum_out"):
        f(x, gpu.asarray(r_host), 64, out=x, sum_out=x)
    with pytest.raises(ValueError, match="residual must have the shape of x"):
        f(x, gpu.asarray(r_host[:2]), 64)
    with pytest.raises(TypeError, match="residual has dtype float32 but x is float16"):
        f(x, gpu.asarray(r_host.astype(np.float32)), 64)


def test_residual_of_lower_precision_is_cast(gpu, rng):
    x = rng.standard_normal((2, 32)).astype(np.float32)
    r = rng.standard_normal((2, 32)).astype(np.float16)
    _, s = _gpu.add_layer_norm(gpu.asarray(x), gpu.asarray(r), 32)
    np.testing.assert_array_equal(gpu.asnumpy(s), x + r.astype(np.float32))


def test_float16_weight_with_float32_data(gpu, rng):
    x = rng.standard_normal((4, 64)).astype(np.float32)
    w = rng.standard_normal(64).astype(np.float16)
    y, mean, rstd = _gpu.layer_norm_forward(gpu.asarray(x), 64, gpu.asarray(w))
    assert rel_err(gpu.asnumpy(y), reference.layer_norm(x, 64, w)) <= 1e-6
    dy = rng.standard_normal((4, 64)).astype(np.float32)
    dx, dw, db = _gpu.layer_norm_backward(gpu.asarray(dy), gpu.asarray(x), mean, rstd,
                                          gpu.asarray(w))
    assert dw.dtype == db.dtype == F16          # the weight's dtype
    _, dw_ref, db_ref = reference.layer_norm_backward(dy, x, gpu.asnumpy(mean), gpu.asnumpy(rstd),
                                                      w)
    assert rel_err(gpu.asnumpy(dw), dw_ref) <= TOL[F16]
    assert rel_err(gpu.asnumpy(db), db_ref) <= TOL[F16]


def test_float16_statistics_are_accepted(gpu, rng):
    x = gpu.asarray(rng.standard_normal((3, 32)).astype(np.float16))
    dy = gpu.asarray(rng.standard_normal((3, 32)).astype(np.float16))
    y, mean, rstd = _gpu.layer_norm_forward(x, 32)
    assert mean.dtype == rstd.dtype == F32
    a = _gpu.layer_norm_backward(dy, x, mean, rstd)[0]
    b = _gpu.layer_norm_backward(dy, x, mean.astype(np.float16), rstd.astype(np.float16))[0]
    assert rel_err(gpu.asnumpy(a), gpu.asnumpy(b)) < 1e-2


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_backward_is_deterministic(gpu, rng, op):
    x = gpu.asarray(rng.standard_normal((64, 256)).astype(np.float32))
    dy = gpu.asarray(rng.standard_normal((64, 256)).astype(np.float32))
    w = gpu.asarray(rng.standard_normal(256).astype(np.float32))
    forward, backward = getattr(_gpu, op + "_forward"), getattr(_gpu, op + "_backward")
    stats = forward(x, 256, w)[1:]
    first = [gpu.asnumpy(a) for a in backward(dy, x, *stats, w)]
    second = [gpu.asnumpy(a) for a in backward(dy, x, *stats, w)]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_backward_splits_rows_into_partials(gpu, rng, launches):
    # 4 multiprocessors (emulated) or many: each partial row sums at least 8 rows of input.
    x = gpu.asarray(rng.standard_normal((200, 64)).astype(np.float32))
    _, mean, rstd = _gpu.layer_norm_forward(x, 64)
    launches.clear()
    _gpu.layer_norm_backward(x, x, mean, rstd, gpu.asarray(np.ones(64, np.float32)))
    (bwd, grid, block), (col, col_grid, col_block) = launches
    assert "backward<" in bwd and "column_sum<float>" in col
    per_block = block // 32 if block == 32 * _gpu._WARP_ROWS else 1
    assert 1 <= grid * per_block < math.ceil(200 / 8) + per_block
    assert (col_grid, col_block) == (2, 1024)


# ---------------------------------------------------------------------------------------------
# Bad input on the GPU side

def test_arrays_of_another_kind_are_named(gpu, rng):
    x = gpu.asarray(np.ones((2, 8), np.float32))
    w_host = np.ones(8, np.float32)
    with pytest.raises(TypeError, match="weight is a numpy.ndarray while x is a cupy.ndarray"):
        _gpu.layer_norm(x, 8, w_host)
    with pytest.raises(TypeError, match=r"x is a numpy.ndarray while weight is a cupy.ndarray"):
        _gpu.layer_norm(np.ones((2, 8), np.float32), 8, gpu.asarray(w_host))
    with pytest.raises(TypeError, match="residual is a builtins.list"):
        _gpu.add_rms_norm(x, [[1.0] * 8] * 2, 8)
    _, mean, rstd = _gpu.layer_norm_forward(x, 8)
    with pytest.raises(TypeError, match="rstd is a numpy.ndarray"):
        _gpu.layer_norm_backward(x, x, mean, gpu.asnumpy(rstd))
    with pytest.raises(TypeError, match="dsum is a numpy.ndarray"):
        _gpu.add_layer_norm_backward(x, x, mean, rstd, None, np.ones((2, 8), np.float32))


def test_bad_dtypes_and_shapes(gpu):
    x64 = gpu.asarray(np.ones((2, 8), np.float64))
    with pytest.raises(TypeError, match="x must be a float32 or float16 cupy.ndarray.*float64.*"
                                        "bfloat16"):
        _gpu.layer_norm(x64, 8)
    x = gpu.asarray(np.ones((2, 8), np.float32))
    with pytest.raises(TypeError, match="weight must be float32 or float16, got dtype float64"):
        _gpu.rms_norm(x, 8, x64[0])
    with pytest.raises(ValueError, match=r"weight must have shape normalized_shape=\(8,\)"):
        _gpu.layer_norm(x, 8, x[:, :4])
    with pytest.raises(ValueError, match=r"expected input with shape \(\*, 4\)"):
        _gpu.layer_norm(x, 4)
    with pytest.raises(ValueError, match="eps must be finite"):
        _gpu.rms_norm(x, 8, eps=-1.0)
    with pytest.raises(TypeError, match="normalized_shape must be an int"):
        _gpu.layer_norm(x, "8")
    _, mean, rstd = _gpu.layer_norm_forward(x, 8)
    with pytest.raises(ValueError, match="mean must have the leading shape of x"):
        _gpu.layer_norm_backward(x, x, x, rstd)
    with pytest.raises(ValueError, match=r"rstd must have shape \(2,\)"):
        _gpu.layer_norm_backward(x, x, mean, rstd[:1])
    with pytest.raises(ValueError, match="dy must have the shape of x"):
        _gpu.layer_norm_backward(x[:1], x, mean, rstd)
    with pytest.raises(TypeError, match="dy has dtype float64 but x is float32"):
        _gpu.layer_norm_backward(x64, x, mean, rstd)
    with pytest.raises(TypeError, match="mean has dtype float64"):
        _gpu.layer_norm_backward(x, x, mean.astype(np.float64), rstd)
    with pytest.raises(ValueError, match="dsum must have the shape of s"):
        _gpu.add_rms_norm_backward(x, x, rstd, None, x[:1])


def test_gpu_bench_runs(gpu, tmp_path, monkeypatch):
    bench = _load_gpu_bench()
    monkeypatch.setattr(bench, "FLUSH_BYTES", 1 << 20)
    path = tmp_path / "run.json"
    assert bench.main(["--shapes", "4x64,3x40", "--repeat", "2", "--warmup", "1", "--calls", "2",
                       "--no-torch",
                       "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["environment"]["cupy"] == gpu.__version__
    ops = {(r["impl"], r["op"], r["dtype"]) for r in report["results"]}
    assert ("fastln", "backward", "float16") in ops and ("cupy", "copy (memcpy)", "float32") in ops
    assert all(r["gbps"] > 0 and r["of_copy"] > 0 for r in report["results"])


def _load_gpu_bench():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "gpu_bench.py")
    spec = importlib.util.spec_from_file_location("gpu_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_info_reports_compiled_kernels(gpu):
    lines = dict(_gpu.info())
    assert lines["CuPy"] == gpu.__version__
    assert lines["GPU kernels"].startswith("compiled"), lines


# ---------------------------------------------------------------------------------------------
# Without CuPy

@pytest.fixture
def no_cupy(monkeypatch):
    """`import cupy` fails, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "cupy", None)


def test_gpu_ops_without_cupy_say_what_to_install(no_cupy):
    for call in (lambda: _gpu.layer_norm(np.ones((2, 4), np.float32), 4),
                 lambda: _gpu.add_rms_norm_backward(None, None, None)):
        with pytest.raises(ImportError, match=r"needs CuPy.*pip install fastln\[gpu\]"):
            call()


def test_rows_wider_than_int32_are_refused():
    with pytest.raises(ValueError, match="rows of 2\\*\\*31 values or more"):
        _gpu._row_width((2**16, 2**15))
    assert _gpu._row_width((2**16, 2**15 - 1)) == 2**31 - 2**16


def test_is_gpu_array_without_cupy(no_cupy):
    assert not _gpu.is_gpu_array(np.ones(3))
    assert not _gpu.wants_gpu(np.ones(3), None, 1.0)


def test_info_without_cupy(no_cupy):
    lines = dict(_gpu.info())
    assert "not installed" in lines["CuPy"] and "pip install fastln[gpu]" in lines["CuPy"]
    assert lines["GPU kernels"] == "not compiled: CuPy is not installed"


def test_numpy_input_never_imports_cupy():
    code = """if True:
        import sys
        import numpy as np
        import fastln
        from fastln import _gpu
        x = np.ones((2, 8), np.float32)
        fastln.layer_norm(x, 8)
        fastln.layer_norm_backward(x, x, *fastln.layer_norm_forward(x, 8)[1:])
        assert not _gpu.is_gpu_array(x) and not _gpu.wants_gpu(x, None)
        assert "cupy" not in sys.modules, "cupy was imported"
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_public_ops_dispatch_cupy_arrays(gpu, rng):
    """fastln's public ops hand CuPy input to this backend, and a mix of host and device arrays
    is refused by name, in either direction."""
    import fastln
    x_host = rng.standard_normal((3, 64)).astype(np.float32)
    x, r, w = gpu.asarray(x_host), gpu.asarray(x_host[::-1].copy()), gpu.asarray(np.ones(64, F32))
    calls = {
        "layer_norm": (x, 64, w), "layer_norm_forward": (x, 64, w), "rms_norm": (x, 64, w),
        "rms_norm_forward": (x, 64, w), "add_layer_norm": (x, r, 64, w),
        "add_layer_norm_forward": (x, r, 64, w), "add_rms_norm": (x, r, 64, w),
        "add_rms_norm_forward": (x, r, 64, w),
    }
    checked = 0
    for name, args in calls.items():
        got, want = getattr(fastln, name)(*args), getattr(_gpu, name)(*args)
        for a, b in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,), strict=True):
            assert type(a) is gpu.ndarray
            assert_same(a, b)
        checked += 1
    assert checked == len(calls)
    _, mean, rstd = fastln.layer_norm_forward(x, 64, w)
    for a, b in zip(fastln.layer_norm_backward(x, x, mean, rstd, w),
                    _gpu.layer_norm_backward(x, x, mean, rstd, w), strict=True):
        assert_same(a, b)
    with pytest.raises(TypeError, match="weight is a numpy.ndarray while x is a cupy.ndarray"):
        fastln.layer_norm(x, 64, np.ones(64, np.float32))
    with pytest.raises(TypeError, match="x is a numpy.ndarray while weight is a cupy.ndarray"):
        fastln.layer_norm(x_host, 64, w)
    with pytest.raises(TypeError, match="dy is a numpy.ndarray while x is a cupy.ndarray"):
        fastln.layer_norm_backward(x_host, x, mean, rstd)


def test_kernel_sources_are_installed():
    source = importlib.resources.files("fastln") / "cuda" / "layer_norm.cu"
    assert source.is_file()
    assert source.read_text() == open(_gpu.SOURCE).read()
    assert "fastln::forward<float, float, 4, 32, false, false>" in _gpu.kernel_names()


def test_every_launch_plan_names_a_listed_kernel():
    names = set(_gpu.kernel_names())
    for t, w in _gpu._TYPE_PAIRS:
        for rms in (False, True):
            for vec, elems in ((_gpu._vector(t), _gpu._FORWARD_ELEMS), (1, _gpu._SCALAR_ELEMS)):
                for residual in (False, True):
                    assert _gpu._forward_name(t, w, vec, elems, rms, residual) in names
            for vec in (_gpu._vector(t), 1):
                assert _gpu._backward_name(t, w, vec, _gpu._BACKWARD_ELEMS, rms) in names
    assert len(names) == len(_gpu.kernel_names())


@pytest.mark.parametrize("n, vec, elems, group", [
    (1, 1, 8, 32), (256, 1, 8, 32), (257, 1, 8, 64), (768, 4, 32, 32), (1024, 4, 32, 32),
    (8192, 4, 32, 256), (8192, 8, 32, 256), (8192, 4, 8, 1024), (8192, 8, 8, 1024),
    (32768, 4, 32, 1024), (32772, 4, 32, 1056),
])
def test_threads_per_row(n, vec, elems, group):
    assert _gpu._group(n, vec, elems) == group
