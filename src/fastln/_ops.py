"""The NumPy-facing ops: validate, view as (rows, width), allocate, call the backend.

Every check lives in the helpers at the top and is shared by all ops; below this module nothing
validates again. Signatures follow ``torch.nn.functional``; habits (``out=``, array-likes in,
ndarrays out) follow NumPy.
"""

import math
import numbers
import operator
import sys
from functools import lru_cache

import numpy as np

from fastln import _cpu

__all__ = ["layer_norm", "layer_norm_forward", "layer_norm_backward", "set_output_pool"]

_SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))
_F32, _F64 = _SUPPORTED
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


def _check_shape(x, normalized_shape):
    """Raise unless x ends in the (non-empty) `normalized_shape` dims."""
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    k = len(normalized_shape)
    if x.shape[x.ndim - k:] != normalized_shape or k > x.ndim:
        expected = "(*, " + ", ".join(map(str, normalized_shape)) + ")"
        raise ValueError(f"Given normalized_shape={normalized_shape}, expected input with shape "
                         f"{expected}, but got input of shape {x.shape}")
    if math.prod(normalized_shape) == 0:
        raise ValueError(f"cannot normalize over zero elements: normalized_shape={normalized_shape}")


def _kernel_ready(a):
    """`a` as the kernels read it: C-contiguous and aligned, copied only if it is not already."""
    if _cpu.plain(a):
        return a
    return np.ascontiguousarray(a) if a.flags.aligned else a.copy()


@lru_cache(maxsize=64)
def _constant(n, dtype, value):
    """A read-only vector of `value`: the weight or bias used when none is given."""
    a = np.full(n, value, dtype=dtype)
    a.flags.writeable = False
    return a


def _param(name, a, normalized_shape, dtype, default):
    """weight or bias as a contiguous array of `dtype`; a (n,) vector of `default` when None."""
    if a is None:
        return _constant(math.prod(normalized_shape), dtype, default)
    a = _cast_to(name, a, dtype, "x")
    if a.shape != normalized_shape:
        raise ValueError(f"{name} must have shape normalized_shape={normalized_shape}, "
                         f"got {a.shape}")
    return _kernel_ready(a)


# The fast path. On a row or a few the kernels take well under a microsecond, several times less
# than the conversions above. Input that needs none of them -- C-contiguous, aligned ndarrays of
# one native float dtype in the expected shapes, normalized_shape an int or a tuple of ints, eps
# a float -- is recognised by the cheap identity tests below and skips them. Anything else, every
# input that must raise included, takes the general path, which checks it in full; both paths
# end in the same out= check and the same kernel call.

def _plain_forward_inputs(x, normalized_shape, weight, bias, eps):
    """(normalized_shape as a tuple, weight, bias) as the general path makes them, if it would
    convert nothing; else None."""
    if not (type(x) is np.ndarray and type(eps) is float and 0.0 <= eps < math.inf):
        return None
    dtype, shape = x.dtype, x.shape
    if not (dtype is _F32 or dtype is _F64):
        return None
    if type(normalized_shape) is int:
        nshape = shape[-1:]
        if normalized_shape <= 0 or nshape != (normalized_shape,):
            return None
    elif (type(normalized_shape) is tuple and 0 < len(normalized_shape) <= len(shape)
            and shape[len(shape) - len(normalized_shape):] == normalized_shape):
        nshape = normalized_shape
        for d in nshape:                # equal to x's dims, but True and 8.0 compare equal too
            if type(d) is not int or d == 0:
                return None
    else:
        return None
    w = _plain_param(weight, nshape, dtype, 1)
    b = _plain_param(bias, nshape, dtype, 0)
    if w is None or b is None or not _cpu.plain(x, w, b):
        return None
    return nshape, w, b


def _plain_backward_inputs(dy, x, mean, rstd, weight):
    """(normalized shape, weight) as the general path of the backward makes them, if it would
    convert nothing; else None."""
    if not (type(x) is np.ndarray and type(dy) is np.ndarray and type(mean) is np.ndarray
            and type(rstd) is np.ndarray):
        return None
    dtype, shape, lead = x.dtype, x.shape, mean.shape
    if not ((dtype is _F32 or dtype is _F64) and dy.dtype is dtype and mean.dtype is dtype
            and rstd.dtype is dtype and dy.shape == shape and rstd.shape == lead
            and len(lead) < len(shape) and shape[:len(lead)] == lead):
        return None
    nshape = shape[len(lead):]
    if 0 in nshape:
        return None
    w = _plain_param(weight, nshape, dtype, 1)
    if w is None or not _cpu.plain(dy, x, mean, rstd, w):
        return None
    return nshape, w


def _plain_param(a, nshape, dtype, default):
    """weight or bias as `_param` makes it, if that converts nothing; else None."""
    if a is None:
        return _constant(math.prod(nshape), dtype, default)
    if type(a) is np.ndarray and a.dtype is dtype and a.shape == nshape:
        return a
    return None


# Outputs of 32 MiB and more. glibc serves such sizes with a fresh mmap and unmaps them on free,
# so every call would pay for the kernel zeroing new pages (about one more write of the output).
# Like ONNX Runtime's arena, fastln keeps a couple of such outputs once the caller has dropped
# them and hands them out again; `set_output_pool` bounds or disables what it keeps.
_POOL_MIN_BYTES = 32 << 20
_POOL_PER_SHAPE = 2                 # a loop `y = f(x)` holds the old y while making the new one
_pool_max_bytes = 1 << 30
_pool = {}                          # (shape, dtype) -> arrays that results were made in


def _fresh(x):
    """An uninitialized array of x's shape and dtype, reused from the pool when one is free."""
    nbytes = x.nbytes
    if nbytes < _POOL_MIN_BYTES or nbytes * _POOL_PER_SHAPE > _pool_max_bytes:
        return _cpu.empty(x, 0, x.ndim)
    spares = _pool.setdefault((x.shape, x.dtype), [])
    for a in spares:
        if sys.getrefcount(a) == 3:   # held by `spares`, by `a` and by this call only
            return a
    a = np.empty(x.shape, x.dtype)
    if len(spares) < _POOL_PER_SHAPE and _pooled_bytes() + nbytes <= _pool_max_bytes:
        spares.append(a)
    return a


def _pooled_bytes():
    return sum(a.nbytes for spares in _pool.values() for a in spares)


def set_output_pool(max_bytes):
    """Bound the memory fastln keeps for reusing large outputs (32 MiB and more).

    A new result of that size is made in an array fastln made before, once the caller holds no
    reference to it (nor to any view of it), which saves the operating system's zeroing of
    fresh pages. ``set_output_pool(0)`` turns this off and frees what is kept.

    Parameters
    ----------
    max_bytes : int
        Most bytes kept (default 1 GiB).

    Examples
    --------
    >>> import fastln
    >>> fastln.set_output_pool(0)
    >>> fastln.set_output_pool(1 << 30)
    """
    global _pool_max_bytes
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral):
        raise TypeError(f"max_bytes must be an int, got {max_bytes!r}")
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    _pool_max_bytes = int(max_bytes)
    _pool.clear()


def _output(out, x, w, b):
    """(result, array the kernel writes, array to copy into `out` afterwards or None).

    The result has x's shape and dtype. The kernel reads x, w and b while it writes: an `out`
    that is the very same memory as x works in place; any other overlap with them is refused.
    """
    if out is None:
        result = _fresh(x)
        return result, result, None
    if isinstance(out, np.ndarray) and _cpu.can_write(out, x, w, b):
        return out, out, None                # the usual case, recognised in one call
    shape, dtype = x.shape, x.dtype
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if not _cpu.plain(out):
        # The kernel writes a contiguous scratch array that is copied into out at the end.
        return out, np.empty(shape, dtype), out
    name = "x" if _cpu.overlap(out, x) == 2 else "weight" if _cpu.overlap(out, w) else "bias"
    raise ValueError(f"out overlaps {name} without being the same array; pass "
                     f"out={name} to work in place, or a separate array")


# ---------------------------------------------------------------------------------------------
# LayerNorm

def _forward(x, normalized_shape, weight, bias, eps, out, with_stats):
    plain = _plain_forward_inputs(x, normalized_shape, weight, bias, eps)
    if plain is not None:
        nshape, w, b = plain
    else:
        x = _float_array("x", x)
        nshape = _normalized_shape(normalized_shape)
        _check_shape(x, nshape)
        eps = _eps(eps)
        w = _param("weight", weight, nshape, x.dtype, 1)
        b = _param("bias", bias, nshape, x.dtype, 0)
        x = _kernel_ready(x)
    y, target, copy_to = _output(out, x, w, b)
    mean = rstd = None
    if with_stats:
        mean = _cpu.empty(x, 0, x.ndim - len(nshape))
        rstd = _cpu.empty(x, 0, x.ndim - len(nshape))
    _cpu.layer_norm_forward(x, w, b, target, mean, rstd, eps)
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
    plain = _plain_backward_inputs(dy, x, mean, rstd, weight)
    if plain is not None:
        nshape, w = plain
    else:
        x = _float_array("x", x)
        if x.ndim == 0:
            raise ValueError("x must have at least one dimension, got a 0-d array")
        mean = _cast_to("mean", mean, x.dtype, "x")
        rstd = _cast_to("rstd", rstd, x.dtype, "x")
        if mean.ndim >= x.ndim or mean.shape != x.shape[:mean.ndim]:
            raise ValueError(f"mean must have the leading shape of x (x.shape[:k] for some "
                             f"k < x.ndim={x.ndim}), got mean of shape {mean.shape} for x of "
                             f"shape {x.shape}")
        if rstd.shape != mean.shape:
            raise ValueError(f"rstd must have the shape of mean {mean.shape}, got {rstd.shape}")
        dy = _cast_to("dy", dy, x.dtype, "x")
        if dy.shape != x.shape:
            raise ValueError(f"dy must have the shape of x {x.shape}, got {dy.shape}")
        nshape = x.shape[mean.ndim:]
        _check_shape(x, nshape)
        w = _param("weight", weight, nshape, x.dtype, 1)
        dy, x, mean, rstd = (_kernel_ready(a) for a in (dy, x, mean, rstd))
    ndim, lead = x.ndim, x.ndim - len(nshape)
    dx = _fresh(x)
    dweight = None if weight is None else _cpu.empty(x, lead, ndim)
    dbias = _cpu.empty(x, lead, ndim)
    _cpu.layer_norm_backward(dy, x, mean, rstd, w, dx, dweight, dbias)
    return dx, dweight, dbias
