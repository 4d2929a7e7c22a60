"""Every bad input gets a clear exception that names what was expected and what came in."""

import numpy as np
import pytest

import fastln

X = np.ones((4, 8), np.float32)


def _stats(x=X, n=8):
    return fastln.layer_norm_forward(x, n)[1:]


# ------------------------------------------------------------------------------------------
# forward


@pytest.mark.parametrize("nshape, match", [
    (7, r"normalized_shape=\(7,\), expected input with shape \(\*, 7\), but got input of "
        r"shape \(4, 8\)"),
    ((4, 7), r"expected input with shape \(\*, 4, 7\)"),
    ((2, 4, 8), r"expected input with shape \(\*, 2, 4, 8\)"),
])
def test_shape_mismatch(nshape, match):
    with pytest.raises(ValueError, match=match):
        fastln.layer_norm(X, nshape)


@pytest.mark.parametrize("nshape, exc", [
    ((), ValueError), (-8, ValueError), (8.0, TypeError), ("8", TypeError), (True, TypeError),
    ([8, None], TypeError), ((True,), TypeError), ({8}, TypeError), ({8: "a"}, TypeError),
    ((d for d in [8]), TypeError), (np.ones((1, 1), int), TypeError),
])
def test_bad_normalized_shape(nshape, exc):
    with pytest.raises(exc, match="normalized_shape"):
        fastln.layer_norm(X, nshape)


def test_normalized_shape_accepts_lists_and_numpy_ints():
    x = np.ones((2, 3, 4))
    np.testing.assert_array_equal(fastln.layer_norm(x, [3, 4]), fastln.layer_norm(x, (3, 4)))
    np.testing.assert_array_equal(fastln.layer_norm(x, np.int64(4)), fastln.layer_norm(x, 4))
    np.testing.assert_array_equal(fastln.layer_norm(x, np.array([3, 4])),
                                  fastln.layer_norm(x, (3, 4)))


def test_zero_width():
    with pytest.raises(ValueError, match="zero elements"):
        fastln.layer_norm(np.ones((3, 0), np.float32), 0)


def test_zero_d_input():
    with pytest.raises(ValueError, match="at least one dimension"):
        fastln.layer_norm(np.float32(3.0), 1)
    with pytest.raises(ValueError, match="at least one dimension"):
        fastln.layer_norm_backward(np.float32(1), np.float32(3.0), np.float32(0), np.float32(1))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64,
                                   np.complex128, np.longdouble, object, "U3", "S3"])
def test_unsupported_dtypes(dtype):
    x = np.ones((2, 4)).astype(dtype)
    with pytest.raises(TypeError, match=r"x must be a float32, float64, float16 or bfloat16 array, got dtype"):
        fastln.layer_norm(x, 4)
    with pytest.raises(TypeError, match=r"float32, float64, float16 or bfloat16"):
        fastln.layer_norm_backward(x, x, np.zeros(2), np.ones(2))


def test_integer_message_says_how_to_convert():
    with pytest.raises(TypeError, match=r"astype\(numpy.float32\)"):
        fastln.layer_norm(np.arange(8).reshape(2, 4), 4)


@pytest.mark.parametrize("name", ["weight", "bias"])
def test_param_wrong_shape(name):
    for shape in [(7,), (1, 8), (8, 1), ()]:
        with pytest.raises(ValueError, match=rf"{name} must have shape normalized_shape=\(8,\), "
                                             rf"got \({', '.join(map(str, shape))}"):
            fastln.layer_norm(X, 8, **{name: np.ones(shape, np.float32)})


@pytest.mark.parametrize("name", ["weight", "bias"])
def test_param_wrong_dtype(name):
    with pytest.raises(TypeError, match=rf"{name} has dtype float64 but x is float32"):
        fastln.layer_norm(X, 8, **{name: np.ones(8, np.float64)})
    with pytest.raises(TypeError, match=rf"{name} must be a float32, float64, float16 or bfloat16 array"):
        fastln.layer_norm(X, 8, **{name: np.ones(8, np.int32)})
    with pytest.raises(TypeError, match=rf"{name} must hold real numbers"):
        fastln.layer_norm(X, 8, **{name: [1j] * 8})


def test_param_of_python_ints_beyond_int64():
    """NumPy makes an object array of [2**64] * 8; it is taken as the numbers it holds."""
    want = fastln.layer_norm(X, 8, np.full(8, 2.0 ** 64, np.float32))
    np.testing.assert_array_equal(fastln.layer_norm(X, 8, [2 ** 64] * 8), want)
    with pytest.raises(TypeError, match=r"weight must hold real numbers, got dtype object"):
        fastln.layer_norm(X, 8, [2 ** 64] * 7 + ["1"])
    with pytest.raises(OverflowError):
        fastln.layer_norm(X, 8, [2 ** 1100] * 8)


@pytest.mark.parametrize("eps", [-1e-5, np.inf, -np.inf, np.nan])
def test_bad_eps_value(eps):
    with pytest.raises(ValueError, match=r"eps must be finite and >= 0"):
        fastln.layer_norm(X, 8, eps=eps)


def test_eps_as_a_zero_d_array():
    """A 0-d array is taken as NumPy's scalars are."""
    np.testing.assert_array_equal(fastln.layer_norm(X, 8, eps=np.array(0.25)),
                                  fastln.layer_norm(X, 8, eps=0.25))


@pytest.mark.parametrize("eps", ["1e-5", None, [1e-5], True, np.bool_(False), np.array([1e-5])])
def test_bad_eps_type(eps):
    with pytest.raises(TypeError, match="eps must be a real number"):
        fastln.layer_norm(X, 8, eps=eps)


def test_out_wrong_shape_dtype_type():
    with pytest.raises(ValueError, match=r"out must have shape \(4, 8\), got \(8, 4\)"):
        fastln.layer_norm(X, 8, out=np.empty((8, 4), np.float32))
    with pytest.raises(TypeError, match=r"out must have dtype float32, got float64"):
        fastln.layer_norm(X, 8, out=np.empty((4, 8), np.float64))
    with pytest.raises(TypeError, match=r"out must have dtype float32 in native byte order, "
                                        r"got >f4"):
        fastln.layer_norm(X, 8, out=np.empty((4, 8), ">f4"))
    with pytest.raises(TypeError, match=r"out must be a numpy.ndarray, got list"):
        fastln.layer_norm(X, 8, out=[[0.0] * 8] * 4)


def test_out_read_only():
    out = np.empty((4, 8), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        fastln.layer_norm(X, 8, out=out)


def test_out_partly_overlapping_x():
    buf = np.arange(40, dtype=np.float32)
    x = buf[:32].reshape(4, 8)
    out = buf[8:].reshape(4, 8)             # x shifted by one row: reads would see new values
    before = buf.copy()
    with pytest.raises(ValueError, match="out overlaps x without being the same array"):
        fastln.layer_norm(x, 8, out=out)
    np.testing.assert_array_equal(buf, before)


@pytest.mark.parametrize("name", ["weight", "bias"])
def test_out_overlapping_weight_or_bias(name):
    buf = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match=f"out overlaps {name}"):
        fastln.layer_norm(X, 8, **{name: buf[1]}, out=buf)


def test_no_positional_out():
    with pytest.raises(TypeError):
        fastln.layer_norm(X, 8, None, None, 1e-5, np.empty_like(X))


# ------------------------------------------------------------------------------------------
# backward


def test_backward_mean_shape():
    mean, rstd = _stats()
    with pytest.raises(ValueError, match=r"mean must have the leading shape of x"):
        fastln.layer_norm_backward(X, X, mean[:3], rstd)
    with pytest.raises(ValueError, match=r"mean must have the leading shape of x"):
        fastln.layer_norm_backward(X, X, X, X)
    with pytest.raises(ValueError, match=r"rstd must have the shape of mean \(4,\), got \(3,\)"):
        fastln.layer_norm_backward(X, X, mean, rstd[:3])


def test_backward_dy_shape_and_dtype():
    mean, rstd = _stats()
    with pytest.raises(ValueError, match=r"dy must have the shape of x \(4, 8\), got \(4, 7\)"):
        fastln.layer_norm_backward(X[:, :7], X, mean, rstd)
    with pytest.raises(TypeError, match=r"dy has dtype float64 but x is float32"):
        fastln.layer_norm_backward(X.astype(np.float64), X, mean, rstd)
    with pytest.raises(TypeError, match=r"mean has dtype float64 but x is float32"):
        fastln.layer_norm_backward(X, X, mean.astype(np.float64), rstd)


def test_backward_weight_shape():
    mean, rstd = _stats()
    with pytest.raises(ValueError, match=r"weight must have shape normalized_shape=\(8,\)"):
        fastln.layer_norm_backward(X, X, mean, rstd, np.ones(4, np.float32))
    # The saved statistics fix the normalized dims: those of one row make the whole x one row.
    with pytest.raises(ValueError, match=r"normalized_shape=\(4, 8\) \(x's dims after the 0 "
                                         r"of mean, whose shape is \(\)\), got \(8,\)"):
        fastln.layer_norm_backward(X, X, mean[0], rstd[0], np.ones(8, np.float32))


def test_backward_zero_width():
    with pytest.raises(ValueError, match="zero elements"):
        fastln.layer_norm_backward(np.ones((3, 0)), np.ones((3, 0)), np.zeros(3), np.ones(3))


# ------------------------------------------------------------------------------------------
# threads


@pytest.mark.parametrize("n, exc", [(0, ValueError), (-2, ValueError), (1025, ValueError),
                                    (2**31, ValueError), (2**64, ValueError), (1.5, TypeError),
                                    ("2", TypeError), (True, TypeError)])
def test_bad_thread_count(n, exc):
    with pytest.raises(exc, match="positive int( up to 1024)? or None"):
        fastln.set_num_threads(n)
