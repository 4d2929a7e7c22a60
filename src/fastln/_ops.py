"""The NumPy-facing ops: validate, view as (rows, width), allocate, call the backend.

Every check lives in the helpers at the top and is shared by all ops; below this module nothing
validates again. Signatures follow ``torch.nn.functional``; habits (``out=``, array-likes in,
ndarrays out) follow NumPy.
"""

import math
import numbers
import operator
from functools import lru_cache

import numpy as np

from fastln import _cpu

__all__ = ["layer_norm", "layer_norm_forward", "layer_norm_backward"]

_SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))
_SUPPORTED_NAMES = "float32 or float64"


# ---------------------------------------------------------------------------------------------
# checks shared by every op

def _normalized_shape(normalized_shape):
    """`normalized_shape` as a tuple of non-negative ints."""
    if isinstance(normalized_shape, (bool, np.bool_)):
        raise TypeError(f"normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}")
    try:
        dims = (operator.index(normalized_shape),)
    except TypeError:
        try:
            dims = tuple(operator.index(d) for d in normalized_shape)
        except TypeError:
            raise TypeError("normalized_shape must be an int or a tuple of ints, "
                            f"got {normalized_shape!r}") from None
    if len(dims) == 0:
        raise ValueError("normalized_shape must name at least one dimension, got ()")
    if any(d < 0 for d in dims):
        raise ValueError(f"normalized_shape must not be negative, got {dims}")
    return dims


def _eps(eps):
    if not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return value


def _float_array(name, a):
    """`a` as an ndarray of a supported dtype in native byte order (a view where possible)."""
    a = np.asarray(a)
    dtype = a.dtype
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        if not dtype.isnative:
            a = a.astype(dtype.newbyteorder("="))
        return a
    raise TypeError(f"{name} must be a {_SUPPORTED_NAMES} array, got dtype {dtype}"
                    + ("" if dtype.kind in "OSUV" else
                       f"; convert it with {name}.astype(numpy.float32)"))


def _cast_to(name, a, dtype, target):
    """Array-like `a` as `dtype`, cast only when no precision is lost (`target` names why)."""
    if isinstance(a, np.ndarray) or hasattr(a, "dtype"):
        a = _float_array(name, a)
        if a.dtype != dtype:
            if not np.can_cast(a.dtype, dtype, "safe"):
                raise TypeError(f"{name} has dtype {a.dtype} but {target} is {dtype}; casting "
                                f"would lose precision, so cast one of them explicitly")
            a = a.astype(dtype)
        return a
    # Python numbers and lists carry no precision of their own (like NumPy's scalars in NEP 50).
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(dtype)


def _split(x, normalized_shape):
    """(rows, n) for x normalized over its trailing `normalized_shape` dims."""
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    k = len(normalized_shape)
    if x.shape[x.ndim - k:] != normalized_shape or k > x.ndim:
        expected = "(*, " + ", ".join(map(str, normalized_shape)) + ")"
        raise ValueError(f"Given normalized_shape={normalized_shape}, expected input with shape "
                         f"{expected}, but got input of shape {x.shape}")
    n = math.prod(normalized_shape)
    if n == 0:
        raise ValueError(f"cannot normalize over zero elements: normalized_shape={normalized_shape}")
    return math.prod(x.shape[:x.ndim - k]), n


def _kernel_ready(a):
    return a.flags.c_contiguous and a.flags.aligned


def _rows_view(a, rows, n):
    """C-contiguous, aligned (rows, n) view of `a`, copying only if it is not already one."""
    if not _kernel_ready(a):
        a = np.ascontiguousarray(a) if a.flags.aligned else a.copy()
    return a.reshape(rows, n)


@lru_cache(maxsize=64)
def _constant(n, dtype, value):
    """A read-only vector of `value`: the weight or bias used when none is given."""
    a = np.full(n, value, dtype=dtype)
    a.flags.writeable = False
    return a


def _param(name, a, normalized_shape, dtype, default):
    """weight or bias as a contiguous (n,) vector of `dtype`; `default` fills it when None."""
    n = math.prod(normalized_shape)
    if a is None:
        return _constant(n, dtype, default)
    a = _cast_to(name, a, dtype, "x")
    if a.shape != normalized_shape:
        raise ValueError(f"{name} must have shape normalized_shape={normalized_shape}, "
                         f"got {a.shape}")
    return _rows_view(a, 1, n)[0]


def _output(out, shape, dtype, inputs):
    """(result, (rows, n) array the kernel writes, array to copy into `out` afterwards or None).

    `inputs` are the (name, array) pairs the kernel reads while it writes. An `out` that is the
    very same memory as x works in place; any other overlap with them is refused.
    """
    if out is None:
        result = np.empty(shape, dtype)
        return result, result, None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if not _kernel_ready(out):
        # The kernel writes a contiguous scratch array that is copied into out at the end.
        return out, np.empty(shape, dtype), out
    for name, a in inputs:
        if np.may_share_memory(out, a):
            same = (name == "x" and a.size == out.size
                    and a.__array_interface__["data"][0] == out.__array_interface__["data"][0])
            if not same:
                raise ValueError(f"out overlaps {name} without being the same array; pass "
                                 f"out={name} to work in place, or a separate array")
    return out, out, None


# ---------------------------------------------------------------------------------------------
# LayerNorm

def _forward(x, normalized_shape, weight, bias, eps, out, with_stats):
    x = _float_array("x", x)
    normalized_shape = _normalized_shape(normalized_shape)
    rows, n = _split(x, normalized_shape)
    eps = _eps(eps)
    w = _param("weight", weight, normalized_shape, x.dtype, 1)
    b = _param("bias", bias, normalized_shape, x.dtype, 0)
    x2 = _rows_view(x, rows, n)
    y, target, copy_to = _output(out, x.shape, x.dtype, (("x", x2), ("weight", w), ("bias", b)))
    lead = x.shape[:x.ndim - len(normalized_shape)]
    mean = rstd = None
    if with_stats:
        mean = np.empty(lead, x.dtype)
        rstd = np.empty(lead, x.dtype)
    _cpu.layer_norm_forward(x2, w, b, target.reshape(rows, n),
                            None if mean is None else mean.reshape(rows),
                            None if rstd is None else rstd.reshape(rows), eps)
    if copy_to is not None:
        copy_to[...] = target
    return y, mean, rstd


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None):
    """Layer normalization over the trailing dims of `x`, like ``torch.nn.functional.layer_norm``.

    Each "row" (the last ``len(normalized_shape)`` dims) is shifted to mean 0 and scaled to
    variance 1, then multiplied by `weight` and shifted by `bias`::

        y = (x - mean) / sqrt(var + eps) * weight + bias

    with the biased variance. Rows are normalized in parallel on all cores.

    Parameters
    ----------
    x : array_like
        Input of dtype float32 or float64, shape ``(*, *normalized_shape)``. Any layout works;
        C-contiguous input takes the fast path.
    normalized_shape : int or tuple of int
        The trailing dims to normalize over.
    weight, bias : array_like, optional
        Of shape `normalized_shape`; default 1 and 0. Cast to x's dtype when that loses nothing.
    eps : float, optional
        Added to the variance; finite and >= 0 (0 gives NaN/inf on constant rows).
    out : ndarray, optional
        Where to write y: shape and dtype of x. ``out=x`` normalizes in place.

    Returns
    -------
    y : ndarray
        Same shape and dtype as x.

    Examples
    --------
    >>> import numpy as np, fastln
    >>> x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    >>> fastln.layer_norm(x, 4).round(4)
    array([[-1.3416, -0.4472,  0.4472,  1.3416]], dtype=float32)
    """
    return _forward(x, normalized_shape, weight, bias, eps, out, False)[0]


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalization that also returns what the backward needs.

    Parameters are those of `layer_norm`.

    Returns
    -------
    y : ndarray
        As `layer_norm` returns it.
    mean, rstd : ndarray
        Per-row mean and ``1 / sqrt(var + eps)``, of shape ``x.shape[:-len(normalized_shape)]``
        and x's dtype.

    Examples
    --------
    >>> import numpy as np, fastln
    >>> y, mean, rstd = fastln.layer_norm_forward(np.arange(8.0).reshape(2, 4), 4)
    >>> mean
    array([1.5, 5.5])
    """
    return _forward(x, normalized_shape, weight, bias, eps, None, True)


def layer_norm_backward(dy, x, mean, rstd, weight=None):
    """Gradients of layer normalization, in one fused sweep over the rows.

    Computes the vector-Jacobian product ``dx = J^T dy`` row by row, together with the weight and
    bias gradients summed over all rows. See ``docs/derivation.md`` for the formula and why
    ``J``'s zero row sums do not make ``dx`` zero.

    Parameters
    ----------
    dy : array_like
        Gradient of the loss with respect to y; shape of x.
    x : array_like
        The forward's input, float32 or float64.
    mean, rstd : array_like
        As returned by `layer_norm_forward`. Their number of dims fixes the normalized dims:
        x's last ``x.ndim - mean.ndim``. The mean is refined against x, so its rounding to
        float32 costs no accuracy.
    weight : array_like, optional
        The forward's weight, if it had one.

    Returns
    -------
    dx : ndarray
        Shape and dtype of x.
    dweight : ndarray or None
        ``sum(dy * xhat)`` over the rows; None when `weight` is None.
    dbias : ndarray
        ``sum(dy)`` over the rows.

    Examples
    --------
    >>> import numpy as np, fastln
    >>> x = np.array([[1.0, 2.0, 4.0]])
    >>> y, mean, rstd = fastln.layer_norm_forward(x, 3)
    >>> dx, dw, db = fastln.layer_norm_backward(np.array([[1.0, 0.0, 0.0]]), x, mean, rstd)
    >>> bool(abs(dx.sum()) < 1e-12), db
    (True, array([1., 0., 0.]))
    """
    x = _float_array("x", x)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    mean = _cast_to("mean", mean, x.dtype, "x")
    rstd = _cast_to("rstd", rstd, x.dtype, "x")
    if mean.ndim >= x.ndim or mean.shape != x.shape[:mean.ndim]:
        raise ValueError(f"mean must have the leading shape of x (x.shape[:k] for some "
                         f"k < x.ndim={x.ndim}), got mean of shape {mean.shape} for x of shape "
                         f"{x.shape}")
    if rstd.shape != mean.shape:
        raise ValueError(f"rstd must have the shape of mean {mean.shape}, got {rstd.shape}")
    dy = _cast_to("dy", dy, x.dtype, "x")
    if dy.shape != x.shape:
        raise ValueError(f"dy must have the shape of x {x.shape}, got {dy.shape}")
    normalized_shape = x.shape[mean.ndim:]
    rows, n = _split(x, normalized_shape)
    w = _param("weight", weight, normalized_shape, x.dtype, 1)
    dx = np.empty(x.shape, x.dtype)
    dweight = None if weight is None else np.empty(normalized_shape, x.dtype)
    dbias = np.empty(normalized_shape, x.dtype)
    _cpu.layer_norm_backward(_rows_view(dy, rows, n), _rows_view(x, rows, n),
                             _rows_view(mean, rows, 1).reshape(rows),
                             _rows_view(rstd, rows, 1).reshape(rows), w,
                             dx.reshape(rows, n),
                             None if dweight is None else dweight.reshape(n),
                             dbias.reshape(n))
    return dx, dweight, dbias
