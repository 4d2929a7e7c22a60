"""RMSNorm and the fused residual add + norm, against fastln.reference, on every SIMD path."""

import numpy as np
import pytest
from _helpers import DTYPES, HARD_ROWS, assert_close, precise

import fastln
from fastln import reference

SHAPES = [((1, 7), 7), ((3, 768), 768), ((5, 33), 33), ((2, 3, 4, 5), (4, 5)), ((64, 1024), 1024)]


def _data(rng, shape, dtype, offset=0.0, spread=1.0):
    return (offset + spread * rng.standard_normal(shape)).astype(dtype)


def _hard(rng, dtype):
    """The ANCHORS rows with a large mean, one row each, padded to a common width."""
    return [(name, _data(rng, (2, n), dtype, offset, spread)) for name, offset, spread, n
            in HARD_ROWS]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, nshape", SHAPES)
def test_rms_norm_matches_reference(rng, simd_path, shape, nshape, dtype):
    x = _data(rng, shape, dtype, 0.5)
    k = 1 if isinstance(nshape, int) else len(nshape)
    w = _data(rng, shape[-k:], dtype)
    dy = _data(rng, shape, dtype)
    for weight in (None, w):
        y, rstd = fastln.rms_norm_forward(x, nshape, weight)
        y_ref, rstd_ref = reference.rms_norm_forward(precise(x), nshape, weight, np.finfo(dtype).eps)
        assert y.dtype == rstd.dtype == dtype and rstd.shape == shape[:-k]
        assert_close(y, y_ref, dtype)
        assert_close(rstd, rstd_ref, dtype)
        np.testing.assert_array_equal(fastln.rms_norm(x, nshape, weight), y)
        out = np.full_like(x, np.nan)
        assert fastln.rms_norm(x, nshape, weight, out=out) is out
        np.testing.assert_array_equal(out, y)
        xc = x.copy()
        fastln.rms_norm(xc, nshape, weight, out=xc)                 # in place
        np.testing.assert_array_equal(xc, y)
        dx, dw = fastln.rms_norm_backward(dy, x, rstd, weight)
        dx_ref, dw_ref = reference.rms_norm_backward(precise(dy), precise(x), rstd_ref, weight)
        assert_close(dx, dx_ref, dtype)
        assert (dw is None) == (weight is None)
        if weight is not None:
            assert_close(dw, dw_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_hard_and_extreme_rows(rng, simd_path, dtype):
    big = np.finfo(dtype).max / 4
    rows = [x for _, x in _hard(rng, dtype)] + [
        np.array([[big, -big, big / 2, 0.0]], dtype),                  # squares overflow
        np.array([[1e-30, -2e-30, 3e-30, 0.0]], dtype),                # squares underflow
        np.zeros((1, 5), dtype),
    ]
    for x in rows:
        for eps in (None, 0.0, 1e-6):
            y = fastln.rms_norm(x, x.shape[-1], eps=eps)
            want = reference.rms_norm(precise(x), x.shape[-1], eps=reference._rms_eps(x, eps))
            assert_close(y, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("shape, nshape", SHAPES)
def test_add_norm_matches_reference(rng, simd_path, shape, nshape, dtype, rms):
    x, r, dy, dsum = (_data(rng, shape, dtype) for _ in range(4))
    k = 1 if isinstance(nshape, int) else len(nshape)
    w, b = _data(rng, shape[-k:], dtype), _data(rng, shape[-k:], dtype)
    if rms:
        y, s, rstd = fastln.add_rms_norm_forward(x, r, nshape, w)
        y_ref, _, rstd_ref = reference.add_rms_norm_forward(x, r, nshape, w)
        stats, stats_ref = (rstd,), (rstd_ref,)
    else:
        y, s, mean, rstd = fastln.add_layer_norm_forward(x, r, nshape, w, b)
        y_ref, _, mean_ref, rstd_ref = reference.add_layer_norm_forward(x, r, nshape, w, b)
        stats, stats_ref = (mean, rstd), (mean_ref, rstd_ref)
    np.testing.assert_array_equal(s, x + r)           # rounded once to x's dtype
    assert_close(y, y_ref, dtype)
    for got, want in zip(stats, stats_ref):
        assert_close(got, want, dtype)
    # y normalizes the rounded sum: the same bits as the unfused op on s
    plain = fastln.rms_norm(s, nshape, w) if rms else fastln.layer_norm(s, nshape, w, b)
    np.testing.assert_array_equal(y, plain)
    for incoming in (None, dsum):
        if rms:
            ds, dw = fastln.add_rms_norm_backward(dy, s, rstd, w, incoming)
            ds_ref, dw_ref = reference.add_rms_norm_backward(dy, s, rstd_ref, w, incoming)
            grads, grads_ref = (ds, dw), (ds_ref, dw_ref)
        else:
            ds, dw, db = fastln.add_layer_norm_backward(dy, s, mean, rstd, w, incoming)
            grads_ref = reference.add_layer_norm_backward(dy, s, mean_ref, rstd_ref, w, incoming)
            grads = (ds, dw, db)
        for got, want in zip(grads, grads_ref):
            assert_close(got, want, dtype)


@pytest.mark.parametrize("op", ["layer", "rms"])
def test_add_norm_in_place_and_outputs(rng, op):
    x, r = _data(rng, (6, 40), np.float32), _data(rng, (6, 40), np.float32)
    fn = fastln.add_layer_norm if op == "layer" else fastln.add_rms_norm
    y_want, s_want = fn(x, r, 40)
    xc, rc = x.copy(), r.copy()
    y, s = fn(xc, rc, 40, out=xc, sum_out=rc)          # the residual stream updated in place
    assert y is xc and s is rc
    np.testing.assert_array_equal(y, y_want)
    np.testing.assert_array_equal(s, s_want)
    out, sum_out = np.empty_like(x), np.empty_like(x)
    fn(x, r, 40, out=out, sum_out=sum_out)
    np.testing.assert_array_equal(out, y_want)
    np.testing.assert_array_equal(sum_out, s_want)
    strided = np.empty((6, 80), np.float32)[:, ::2]    # not contiguous: written through scratch
    fn(x, r, 40, sum_out=strided)
    np.testing.assert_array_equal(strided, s_want)


def test_add_norm_bad_input(rng):
    x, r = _data(rng, (4, 8), np.float32), _data(rng, (4, 8), np.float32)
    with pytest.raises(ValueError, match=r"residual must have the shape of x \(4, 8\), got \(4, 7\)"):
        fastln.add_layer_norm(x, r[:, :7], 8)
    with pytest.raises(TypeError, match="residual must have the dtype of x \\(float32\\), got float64"):
        fastln.add_rms_norm(x, r.astype(np.float64), 8)
    out = np.empty_like(x)
    with pytest.raises(ValueError, match="sum_out overlaps out"):
        fastln.add_layer_norm(x, r, 8, out=out, sum_out=out)
    with pytest.raises(ValueError, match="overlaps x without being the same array"):
        big = np.zeros(40, np.float32)
        fastln.add_layer_norm(big[:32].reshape(4, 8), r, 8, sum_out=big[1:33].reshape(4, 8))
    with pytest.raises(TypeError, match="sum_out must have dtype float32"):
        fastln.add_rms_norm(x, r, 8, sum_out=np.empty((4, 8)))
    with pytest.raises(TypeError, match="dsum has dtype float64 but s is float32"):
        s = x + r
        _, _, mean, rstd = fastln.add_layer_norm_forward(x, r, 8)
        fastln.add_layer_norm_backward(x, s, mean, rstd, dsum=s.astype(np.float64))
    with pytest.raises(TypeError, match=r"dy must hold real numbers, got dtype object"):
        fastln.add_rms_norm_backward(None, s, np.ones(4, np.float32))
    with pytest.raises(TypeError, match=r"out must be a numpy.ndarray, got list"):
        fastln.add_rms_norm(x, r, 8, out=[0.0] * 32, sum_out=np.empty_like(x))
    with pytest.raises(TypeError, match=r"residual must be an array of x's shape and dtype"):
        fastln.add_layer_norm(x, None, 8)
    with pytest.raises(ValueError, match=r"dsum must have the shape of s"):
        fastln.add_rms_norm_backward(x, s, np.ones(4, np.float32), dsum=s[:, :4])


def test_inputs_not_modified(rng):
    x, r = _data(rng, (4, 16), np.float32), _data(rng, (4, 16), np.float32)
    xc, rc = x.copy(), r.copy()
    _, s, rstd = fastln.add_rms_norm_forward(x, r, 16)
    fastln.add_rms_norm_backward(xc, s, rstd, dsum=rc)
    np.testing.assert_array_equal(x, xc)
    np.testing.assert_array_equal(r, rc)


@pytest.mark.parametrize("op", ["rms", "add_layer", "add_rms"])
def test_new_ops_bit_identical_across_threads(rng, threads, op):
    fastln._cpu.min_parallel_elements(0)
    try:
        x, r, dy = (_data(rng, (300, 257), np.float32, 3.0) for _ in range(3))
        w = _data(rng, 257, np.float32)
        results = []
        for n in (1, 2, 3):
            threads(n)
            if op == "rms":
                y, rstd = fastln.rms_norm_forward(x, 257, w)
                results.append((y, rstd, *fastln.rms_norm_backward(dy, x, rstd, w)))
            elif op == "add_layer":
                y, s, mean, rstd = fastln.add_layer_norm_forward(x, r, 257, w)
                results.append((y, s, *fastln.add_layer_norm_backward(dy, s, mean, rstd, w, r)))
            else:
                y, s, rstd = fastln.add_rms_norm_forward(x, r, 257, w)
                results.append((y, s, *fastln.add_rms_norm_backward(dy, s, rstd, w, r)))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                np.testing.assert_array_equal(a, b)
    finally:
        fastln._cpu.min_parallel_elements(32768)


def test_rms_norm_module(rng):
    norm = fastln.RMSNorm(16)
    x, dy = _data(rng, (3, 16), np.float32), _data(rng, (3, 16), np.float32)
    y = norm.forward(x)
    np.testing.assert_array_equal(y, fastln.rms_norm(x, 16, norm.weight))
    dx = norm.backward(dy)
    _, rstd = fastln.rms_norm_forward(x, 16)
    want_dx, want_dw = fastln.rms_norm_backward(dy, x, rstd, norm.weight)
    np.testing.assert_array_equal(dx, want_dx)
    norm.backward(dy)
    np.testing.assert_allclose(norm.grad_weight, 2 * want_dw, rtol=1e-6)
    norm.zero_grad()
    assert norm.grad_weight is None
    with pytest.raises(RuntimeError, match="before forward"):
        fastln.RMSNorm(4).backward(dy)


def test_rms_jacobian_gives_the_backward(rng):
    x, dy, w = (rng.standard_normal(9) for _ in range(3))
    jac = reference.rms_norm_jacobian(x, w, eps=1e-6)
    _, rstd = reference.rms_norm_forward(x, 9, w, 1e-6)
    dx, _ = reference.rms_norm_backward(dy, x, rstd, w)
    np.testing.assert_allclose(jac.T @ dy, dx, rtol=1e-12, atol=1e-12)
    h = 1e-6                                           # and J is the derivative of y
    e0 = np.eye(9)[0]
    fd = (reference.rms_norm(x + h * e0, 9, w, 1e-6) - reference.rms_norm(x - h * e0, 9, w, 1e-6))
    np.testing.assert_allclose(fd / (2 * h), jac[:, 0], rtol=1e-6, atol=1e-8)
