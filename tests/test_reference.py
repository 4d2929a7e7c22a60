"""fastln.reference is the specification: check it against calculus and plain formulas, in float64."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_less

from fastln import reference

LONGDOUBLE_IS_WIDER = np.finfo(np.longdouble).eps < np.finfo(np.float64).eps
needs_longdouble = pytest.mark.skipif(not LONGDOUBLE_IS_WIDER,
                                      reason="numpy.longdouble is no more precise than float64")


def _central_diff(f, a, h=1e-6):
    """d f(a) / d a by central differences: shape f(a).shape + a.shape."""
    a = np.array(a, dtype=np.float64)
    f0 = np.asarray(f(a))
    grad = np.empty(f0.shape + a.shape)
    for idx in np.ndindex(a.shape):
        up, down = a.copy(), a.copy()
        up[idx] += h
        down[idx] -= h
        grad[(Ellipsis,) + idx] = (np.asarray(f(up)) - np.asarray(f(down))) / (2 * h)
    return grad


def _offset_rows(rng, rows=4, n=64):
    return 3e4 + 0.01 * rng.standard_normal((rows, n))


# ---------------------------------------------------------------------------------------------
# the Jacobian

@pytest.mark.parametrize("eps", [1e-5, 0.1])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_jacobian_matches_finite_differences(n, with_weight, eps):
    rng = np.random.default_rng(100 * n + 10 * with_weight + int(eps > 1e-3))
    x = rng.standard_normal(n)
    w = rng.standard_normal(n) if with_weight else None
    jac = reference.layer_norm_jacobian(x, w, eps=eps)
    numeric = _central_diff(lambda a: reference.layer_norm(a, n, w, eps=eps), x)
    assert jac.shape == (n, n)
    assert_allclose(jac, numeric, rtol=1e-7, atol=1e-7 * max(1.0, np.abs(numeric).max()))


def test_jacobian_is_not_trivially_zero():
    x = np.random.default_rng(1).standard_normal(5)
    jac = reference.layer_norm_jacobian(x)
    assert np.abs(jac).max() > 0.1


@pytest.mark.parametrize("n", [2, 5, 17])
def test_jacobian_rows_sum_to_zero(n):
    x = np.random.default_rng(n).standard_normal(n) * 3 + 7
    jac = reference.layer_norm_jacobian(x)
    assert_allclose(jac.sum(axis=1), 0, atol=1e-12 * np.abs(jac).max())


@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("n", [2, 5, 17])
def test_jacobian_transpose_times_dy_is_backward(n, with_weight):
    rng = np.random.default_rng(7 * n + with_weight)
    x = rng.standard_normal(n)
    w = rng.standard_normal(n) if with_weight else None
    dy = rng.standard_normal(n)
    _, mean, rstd = reference.layer_norm_forward(x, n, w)
    dx, _, _ = reference.layer_norm_backward(dy, x, mean, rstd, w)
    jtdy = reference.layer_norm_jacobian(x, w).T @ dy
    scale = rstd * np.abs(dy if w is None else dy * w).max()
    assert_allclose(dx, jtdy, rtol=1e-12, atol=1e-12 * scale)
    if n > 2:
        assert np.abs(dx).max() > 1e-3        # zero row sums do not mean a zero gradient
    else:
        # a two-value row always normalizes to +-(1, -1): only eps lets any gradient through
        assert np.abs(dx).max() < 1e-3 * scale


def test_jacobian_rejects_more_than_one_row():
    with pytest.raises(ValueError, match="one row"):
        reference.layer_norm_jacobian(np.ones((2, 3)))


# ---------------------------------------------------------------------------------------------
# the backward against finite differences of a scalar loss

def test_backward_matches_finite_differences_of_the_loss():
    rng = np.random.default_rng(2024)
    shape, nshape = (3, 4, 5), (4, 5)
    x = rng.standard_normal(shape)
    w = rng.standard_normal(nshape)
    b = rng.standard_normal(nshape)
    dy = rng.standard_normal(shape)
    eps = 1e-3

    def loss(x_, w_, b_):
        return np.sum(dy * reference.layer_norm(x_, nshape, w_, b_, eps=eps))

    _, mean, rstd = reference.layer_norm_forward(x, nshape, w, b, eps=eps)
    assert mean.shape == (3,) and rstd.shape == (3,)
    dx, dw, db = reference.layer_norm_backward(dy, x, mean, rstd, w)
    assert dx.shape == shape and dw.shape == nshape and db.shape == nshape

    assert_allclose(dx, _central_diff(lambda a: loss(a, w, b), x), rtol=1e-6, atol=1e-7)
    assert_allclose(dw, _central_diff(lambda a: loss(x, a, b), w), rtol=1e-6, atol=1e-7)
    assert_allclose(db, _central_diff(lambda a: loss(x, w, a), b), rtol=1e-6, atol=1e-7)


def test_backward_without_weight_gives_no_dweight():
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((2, 6)), rng.standard_normal((2, 6))
    _, mean, rstd = reference.layer_norm_forward(x, 6)
    dx, dw, db = reference.layer_norm_backward(dy, x, mean, rstd)
    assert dw is None
    assert_allclose(db, dy.sum(axis=0), rtol=1e-14)
    # the same as a weight of ones
    dx1, dw1, _ = reference.layer_norm_backward(dy, x, mean, rstd, np.ones(6))
    assert_allclose(dx, dx1, rtol=1e-14, atol=1e-15)
    assert dw1 is not None


# ---------------------------------------------------------------------------------------------
# the forward

def test_forward_matches_the_textbook_formula():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 3, 7)) * 2 + 1
    w, b = rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    eps = 1e-5
    y, mean, rstd = reference.layer_norm_forward(x, (3, 7), w, b, eps=eps)
    mu = np.mean(x, axis=(1, 2), keepdims=True)
    var = np.var(x, axis=(1, 2), keepdims=True)
    expected = (x - mu) / np.sqrt(var + eps) * w + b
    assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    assert_allclose(mean, mu.reshape(6), rtol=1e-12, atol=1e-12)
    assert_allclose(rstd, 1 / np.sqrt(var.reshape(6) + eps), rtol=1e-12)


def test_forward_rows_have_mean_zero_and_variance_one():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((5, 33)) * 4 - 3
    y = reference.layer_norm(x, 33, eps=0.0)
    assert_allclose(y.mean(axis=1), 0, atol=1e-14)
    assert_allclose(y.var(axis=1), 1, rtol=1e-13)
    # with eps the variance is var / (var + eps), a little below one
    eps = 0.5
    y = reference.layer_norm(x, 33, eps=eps)
    var = x.var(axis=1)
    assert_allclose(y.var(axis=1), var / (var + eps), rtol=1e-13)
    assert_array_less(y.var(axis=1), 1)


def test_float32_input_is_computed_in_float64():
    x = np.random.default_rng(13).standard_normal((2, 8)).astype(np.float32)
    y, mean, rstd = reference.layer_norm_forward(x, 8)
    assert y.dtype == mean.dtype == rstd.dtype == np.float64
    assert_allclose(y, reference.layer_norm(x.astype(np.float64), 8), rtol=0, atol=0)


@needs_longdouble
def test_longdouble_in_longdouble_out():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 5)).astype(np.longdouble)
    w = rng.standard_normal(5).astype(np.longdouble)
    y, mean, rstd = reference.layer_norm_forward(x, 5, w, w)
    assert y.dtype == mean.dtype == rstd.dtype == np.longdouble
    dx, dw, db = reference.layer_norm_backward(np.ones_like(x), x, mean, rstd, w)
    assert dx.dtype == dw.dtype == db.dtype == np.longdouble
    assert reference.layer_norm_jacobian(x[0], w).dtype == np.longdouble


@needs_longdouble
def test_large_offset_rows_match_a_longdouble_computation():
    x = _offset_rows(np.random.default_rng(15))
    y = reference.layer_norm(x, x.shape[1])
    # textbook two-pass formula in longdouble on exactly the same float64 values
    xl = x.astype(np.longdouble)
    mu = xl.mean(axis=1, keepdims=True)
    var = ((xl - mu) ** 2).mean(axis=1, keepdims=True)
    expected = (xl - mu) / np.sqrt(var + np.longdouble(1e-5))
    err = np.abs(y - expected).max() / np.abs(expected).max()
    assert err < 1e-12, err


def test_large_offset_rows_do_not_lose_the_mean():
    # a check that works without longdouble: shifting the data by an exact offset changes nothing
    rng = np.random.default_rng(16)
    small = 0.01 * rng.standard_normal((4, 64))
    x = 3e4 + small
    centred = x - 3e4                          # exact (Sterbenz), the data actually normalized
    y = reference.layer_norm(x, 64)
    assert_allclose(y, reference.layer_norm(centred, 64), rtol=0, atol=1e-12)


def test_backward_accepts_a_float32_rounded_mean():
    rng = np.random.default_rng(17)
    x = _offset_rows(rng)
    n = x.shape[1]
    w, dy = rng.standard_normal(n), rng.standard_normal(x.shape)
    _, mean, rstd = reference.layer_norm_forward(x, n, w)
    mean32 = mean.astype(np.float32)
    # the rounding is large next to the rows' spread of 0.01, so the test would catch its use
    assert np.abs(mean32.astype(np.float64) - mean).max() > 1e-5
    dx, dw, db = reference.layer_norm_backward(dy, x, mean, rstd, w)
    dx32, dw32, db32 = reference.layer_norm_backward(dy, x, mean32, rstd, w)
    assert_allclose(dx32, dx, rtol=0, atol=1e-12 * np.abs(dx).max())
    assert_allclose(dw32, dw, rtol=0, atol=1e-12 * np.abs(dw).max())
    assert_allclose(db32, db, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e-160, 1e160, 1e200, 1e300])
def test_rms_norm_rows_whose_squares_leave_float64(scale):
    """With eps 0, RMSNorm ignores the scale of a row; squares of rows near float64's limits
    over- or underflow, and the reference scales them by their largest value first."""
    x = np.array([[3.0, -4.0, 0.5, 1.25], [1.0, 1.0, -1.0, 2.0]])
    want = reference.rms_norm(x, 4, eps=0.0)
    assert_allclose(reference.rms_norm(x * scale, 4, eps=0.0), want, rtol=1e-15)
    _, rstd = reference.rms_norm_forward(x * scale, 4, eps=0.0)
    assert_allclose(rstd * scale, reference.rms_norm_forward(x, 4, eps=0.0)[1], rtol=1e-15)
    if scale < 1:                                  # eps dwarfs the row: y = x / sqrt(eps)
        assert_allclose(reference.rms_norm(x * scale, 4, eps=1e-5), x * scale / np.sqrt(1e-5),
                        rtol=1e-15)
