"""fastln.LayerNorm: holds weights, normalizes when called, trains in a NumPy loop."""

import numpy as np
import pytest

import fastln
from fastln import reference


def test_defaults():
    ln = fastln.LayerNorm(8)
    assert ln.normalized_shape == (8,)
    assert ln.weight.dtype == np.float32 and (ln.weight == 1).all()
    assert ln.bias.dtype == np.float32 and (ln.bias == 0).all()
    assert "LayerNorm((8,)" in repr(ln)


def test_no_affine_and_no_bias():
    assert fastln.LayerNorm(4, elementwise_affine=False).weight is None
    assert fastln.LayerNorm(4, elementwise_affine=False).bias is None
    ln = fastln.LayerNorm((2, 4), bias=False, dtype=np.float64)
    assert ln.weight.shape == (2, 4) and ln.weight.dtype == np.float64 and ln.bias is None


def test_call_matches_function(rng):
    ln = fastln.LayerNorm(16, eps=1e-3)
    ln.weight[:] = rng.standard_normal(16)
    ln.bias[:] = rng.standard_normal(16)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_array_equal(ln(x), fastln.layer_norm(x, 16, ln.weight, ln.bias, 1e-3))
    out = np.empty_like(x)
    assert ln(x, out=out) is out


def test_backward_accumulates_until_zero_grad(rng):
    ln = fastln.LayerNorm(6, dtype=np.float64)
    ln.weight[:] = rng.standard_normal(6)
    x = rng.standard_normal((3, 6))
    dy = rng.standard_normal((3, 6))
    ln.forward(x)
    dx = ln.backward(dy)
    _, mean, rstd = reference.layer_norm_forward(x, 6)
    dx_ref, dw_ref, db_ref = reference.layer_norm_backward(dy, x, mean, rstd, ln.weight)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ln.grad_weight, dw_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ln.grad_bias, db_ref, rtol=1e-12, atol=1e-13)
    ln.forward(x)
    ln.backward(dy)
    np.testing.assert_allclose(ln.grad_weight, 2 * dw_ref, rtol=1e-12, atol=1e-13)
    ln.zero_grad()
    assert ln.grad_weight is None and ln.grad_bias is None


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        fastln.LayerNorm(4).backward(np.ones((1, 4), np.float32))


def test_training_loop_reduces_loss(rng):
    # Fit weight and bias so that LayerNorm(x) matches a target: a real NumPy training loop.
    ln = fastln.LayerNorm(8, dtype=np.float64)
    x = rng.standard_normal((64, 8)) * 3 + 1
    target = reference.layer_norm(x, 8, np.linspace(0.5, 2, 8), np.linspace(-1, 1, 8))
    losses = []
    for _ in range(200):
        y = ln.forward(x)
        diff = y - target
        losses.append(float(np.mean(diff ** 2)))
        ln.zero_grad()
        ln.backward(2 * diff / diff.size)
        ln.weight -= 0.5 * ln.grad_weight
        ln.bias -= 0.5 * ln.grad_bias
    assert losses[-1] < 1e-3 * losses[0]
    np.testing.assert_allclose(ln.weight, np.linspace(0.5, 2, 8), atol=1e-2)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"eps": -1.0}, ValueError, "eps must be finite and >= 0"),
    ({"dtype": np.int32}, TypeError, "dtype must be float32, float64, float16 or bfloat16"),
    ({"dtype": ">f4"}, TypeError, "native byte order"),
    ({"normalized_shape": 0}, ValueError, "zero elements"),
    ({"normalized_shape": (4, 0)}, ValueError, "zero elements"),
])
@pytest.mark.parametrize("layer", [fastln.LayerNorm, fastln.RMSNorm])
def test_bad_arguments(layer, kwargs, exc, match):
    kwargs = {"normalized_shape": 4, **kwargs}
    with pytest.raises(exc, match=match):
        layer(**kwargs)


@pytest.mark.parametrize("layer", [fastln.LayerNorm, fastln.RMSNorm])
def test_dtype_none_means_float32(layer):
    assert layer(4, dtype=None).weight.dtype == np.float32
