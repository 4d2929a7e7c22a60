"""fastln's backward in float64 against central finite differences of its own forward."""

import numpy as np
import pytest

import fastln


def _loss(x, w, b, dy, nshape, eps):
    return float(np.sum(dy * fastln.layer_norm(x, nshape, w, b, eps)))


def _numeric_grad(f, a, h=1e-6):
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        keep = a[idx]
        a[idx] = keep + h
        up = f()
        a[idx] = keep - h
        down = f()
        a[idx] = keep
        grad[idx] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("shape, nshape", [((3, 5), 5), ((2, 3, 4), (3, 4)), ((1, 17), 17),
                                           ((4, 2), 2)])
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_backward_matches_finite_differences(rng, shape, nshape, eps):
    x = rng.standard_normal(shape) * 2 + 1
    nshape_t = (nshape,) if np.ndim(nshape) == 0 else nshape
    w = rng.standard_normal(nshape_t)
    b = rng.standard_normal(nshape_t)
    dy = rng.standard_normal(shape)
    _, mean, rstd = fastln.layer_norm_forward(x, nshape, w, b, eps)
    dx, dw, db = fastln.layer_norm_backward(dy, x, mean, rstd, w)
    loss = lambda: _loss(x, w, b, dy, nshape, eps)  # noqa: E731
    np.testing.assert_allclose(dx, _numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, _numeric_grad(loss, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, _numeric_grad(loss, b), rtol=1e-6, atol=1e-8)


def test_gradient_is_not_zero_although_jacobian_rows_sum_to_zero(rng):
    x = rng.standard_normal(6)
    jac = fastln.reference.layer_norm_jacobian(x)
    np.testing.assert_allclose(jac.sum(axis=1), 0, atol=1e-12)
    dy = rng.standard_normal(6)
    _, mean, rstd = fastln.layer_norm_forward(x[None], 6)
    dx = fastln.layer_norm_backward(dy[None], x[None], mean, rstd)[0][0]
    assert np.abs(dx).max() > 1e-3
    np.testing.assert_allclose(dx, jac.T @ dy, rtol=1e-10, atol=1e-12)


def test_gradient_vanishes_for_constant_dy_and_dy_along_xhat(rng):
    # With eps = 0, sum(xhat**2) = N exactly, which makes xhat a null vector of J^T.
    x = rng.standard_normal((1, 9))
    xhat, mean, rstd = fastln.layer_norm_forward(x, 9, eps=0.0)
    for dy in (np.full((1, 9), 3.0), 2.5 * xhat):
        dx = fastln.layer_norm_backward(dy, x, mean, rstd)[0]
        np.testing.assert_allclose(dx, 0, atol=1e-12)
