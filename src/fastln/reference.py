"""The specification: plain NumPy versions of every fastln op, computed in float64.

Each function here says what the fast kernels must compute, in the fewest lines that say it
clearly. They accept float32, float64 or longdouble input and compute in float64, or in the
input's own precision when that is higher (``numpy.longdouble``), so a test can ask for an even
more precise answer by passing longdouble. Nothing here validates input: that is ``fastln``'s job.

LayerNorm over the last dims of ``x`` (one "row" is everything in those dims, N values)::

    mean = sum(x) / N
    var  = sum((x - mean)**2) / N            # biased, as PyTorch and ONNX define it
    rstd = 1 / sqrt(var + eps)
    y    = (x - mean) * rstd * weight + bias

RMSNorm::

    rstd = 1 / sqrt(sum(x**2) / N + eps)      # eps None: finfo(x.dtype).eps of the input
    y    = x * rstd * weight

The fused residual add returns ``s = x + residual`` rounded to x's dtype and normalizes that s,
as ``layer_norm(x + residual)`` does. float16 and bfloat16 input is computed in float64 too.
"""

import numpy as np

__all__ = [
    "layer_norm",
    "layer_norm_forward",
    "layer_norm_backward",
    "layer_norm_jacobian",
    "rms_norm",
    "rms_norm_forward",
    "rms_norm_backward",
    "rms_norm_jacobian",
    "add_layer_norm",
    "add_layer_norm_forward",
    "add_layer_norm_backward",
    "add_rms_norm",
    "add_rms_norm_forward",
    "add_rms_norm_backward",
]


def _precise(a):
    """`a` as an array of float64, or of its own dtype if that is more precise."""
    a = np.asarray(a)
    return a.astype(np.result_type(a.dtype, np.float64), copy=False)


def _row_axes(x, normalized_ndim):
    return tuple(range(x.ndim - normalized_ndim, x.ndim))


def _normalized_ndim(normalized_shape):
    return 1 if np.ndim(normalized_shape) == 0 else len(normalized_shape)


def _rstd(d, axes, eps):
    """1 / sqrt(mean(d**2) + eps) over `axes` (kept). Rows whose squares over- or underflow
    (|d| beyond ~1e154, or below ~1e-154, in float64) are scaled first: mean(d**2) =
    scale**2 * mean((d / scale)**2) with scale = max |d|, the mean then in [1/n, 1]. Rows of
    zeros, and rows holding inf or NaN, keep the plain formula's result."""
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        square = np.mean(d * d, axis=axes, keepdims=True)
        rstd = 1.0 / np.sqrt(square + eps)
        scale = np.max(np.abs(d), axis=axes, keepdims=True)
        redo = ((scale > 0) & (scale < np.inf)
                & ~((square >= np.finfo(d.dtype).tiny) & (square < np.inf)))
        if np.any(redo):
            safe = np.where(redo, scale, 1.0)
            u = np.mean((d / safe) ** 2, axis=axes, keepdims=True)
            big = 1.0 / (safe * np.sqrt(u + eps / safe / safe))
            small = 1.0 / np.sqrt(safe * safe * u + eps) if eps else 1.0 / (safe * np.sqrt(u))
            rstd = np.where(redo, np.where(safe >= 1, big, small), rstd)
    return rstd


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Return ``(y, mean, rstd)``; mean and rstd have the shape of x without the normalized dims.

    The mean is computed about the row's first value and corrected by a second pass: in float64
    a row like ``3e4 + 0.01 * randn`` would otherwise lose its low digits to the offset.
    """
    x = _precise(x)
    axes = _row_axes(x, _normalized_ndim(normalized_shape))
    pivot = x[(Ellipsis,) + (slice(0, 1),) * len(axes)]
    centred = x - pivot                              # exact for values near the pivot
    shift = centred.mean(axis=axes, keepdims=True)
    xc = centred - shift                             # x - mean, without forming mean itself
    rstd = _rstd(xc, axes, eps)
    y = xc * rstd
    if weight is not None:
        y = y * _precise(weight)
    if bias is not None:
        y = y + _precise(bias)
    mean = pivot + shift
    return y, np.squeeze(mean, axis=axes), np.squeeze(rstd, axis=axes)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Return y = LayerNorm(x) over the trailing ``normalized_shape`` dims."""
    return layer_norm_forward(x, normalized_shape, weight, bias, eps)[0]


def layer_norm_backward(dy, x, mean, rstd, weight=None):
    """Return ``(dx, dweight, dbias)`` for the incoming gradient ``dy``.

    The normalized dims are the last ``x.ndim - mean.ndim``. With ``xhat = (x - mean) * rstd``
    and ``g = dy * weight``, the vector-Jacobian product is

        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))       (means over each row)

    and ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)`` over all rows. ``dweight`` is None
    when ``weight`` is None.

    ``mean`` is refined against ``x`` (one correction pass) before use, so a mean that was
    rounded to float32 still gives the gradient at the row's true mean; fastln does the same.
    """
    dy, x, mean, rstd = (_precise(a) for a in (dy, x, mean, rstd))
    axes = _row_axes(x, x.ndim - mean.ndim)
    lead = tuple(range(mean.ndim))
    mean = np.expand_dims(mean, axes)
    rstd = np.expand_dims(rstd, axes)
    centred = x - mean
    xc = centred - centred.mean(axis=axes, keepdims=True)
    xhat = xc * rstd
    g = dy if weight is None else dy * _precise(weight)
    dx = rstd * (g - g.mean(axis=axes, keepdims=True)
                 - xhat * np.mean(g * xhat, axis=axes, keepdims=True))
    dweight = None if weight is None else np.sum(dy * xhat, axis=lead)
    dbias = np.sum(dy, axis=lead)
    return dx, dweight, dbias


def layer_norm_jacobian(x, weight=None, eps=1e-5):
    """Return the N x N Jacobian ``J[i, j] = dy_i / dx_j`` of LayerNorm for one row ``x``.

    With ``xhat = (x - mean) * rstd`` and ``rstd = 1 / sqrt(var + eps)``::

        J[i, j] = weight_i * rstd * (delta_ij - 1/N - xhat_i * xhat_j / N)

    which for eps = 0 is the textbook ``(N delta_ij - 1 - xhat_i xhat_j) / (N sigma)``. Every row
    of J sums to zero (adding a constant to x changes nothing), yet ``J.T @ dy`` is the gradient
    ``layer_norm_backward`` returns. With eps = 0 it vanishes only when ``dy * weight`` is a
    constant plus a multiple of xhat; with eps > 0 the xhat direction keeps a small
    ``eps * rstd**3`` share.
    """
    x = _precise(x)
    if x.ndim != 1:
        raise ValueError(f"layer_norm_jacobian takes one row (a 1-d array), got shape {x.shape}")
    n = x.shape[0]
    xhat, _, rstd = layer_norm_forward(x, n, eps=eps)
    jac = rstd * (np.eye(n, dtype=x.dtype) - 1.0 / n - np.outer(xhat, xhat) / n)
    if weight is not None:
        jac = _precise(weight)[:, None] * jac
    return jac


def _rms_eps(x, eps):
    """eps, or finfo(x.dtype).eps of the input when it is None."""
    if eps is not None:
        return eps
    from fastln._ops import _default_rms_eps

    return _default_rms_eps(np.asarray(x).dtype)


def rms_norm_forward(x, normalized_shape, weight=None, eps=None):
    """Return ``(y, rstd)``; rstd has the shape of x without the normalized dims."""
    eps = _rms_eps(x, eps)
    x = _precise(x)
    axes = _row_axes(x, _normalized_ndim(normalized_shape))
    rstd = _rstd(x, axes, eps)
    y = x * rstd
    if weight is not None:
        y = y * _precise(weight)
    return y, np.squeeze(rstd, axis=axes)


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """Return y = RMSNorm(x) over the trailing ``normalized_shape`` dims."""
    return rms_norm_forward(x, normalized_shape, weight, eps)[0]


def rms_norm_backward(dy, x, rstd, weight=None):
    """Return ``(dx, dweight)``: with ``xhat = x * rstd`` and ``g = dy * weight``,

        dx = rstd * (g - xhat * mean(g * xhat))       (mean over each row)

    and ``dweight = sum(dy * xhat)`` over all rows (None when ``weight`` is None). The
    normalized dims are the last ``x.ndim - rstd.ndim``.
    """
    dy, x, rstd = (_precise(a) for a in (dy, x, rstd))
    axes = _row_axes(x, x.ndim - rstd.ndim)
    rstd = np.expand_dims(rstd, axes)
    xhat = x * rstd
    g = dy if weight is None else dy * _precise(weight)
    dx = rstd * (g - xhat * np.mean(g * xhat, axis=axes, keepdims=True))
    dweight = None if weight is None else np.sum(dy * xhat, axis=tuple(range(rstd.ndim -
                                                                            len(axes))))
    return dx, dweight


def rms_norm_jacobian(x, weight=None, eps=None):
    """Return the N x N Jacobian of RMSNorm for one row ``x``::

        J[i, j] = weight_i * rstd * (delta_ij - xhat_i * xhat_j / N)

    Unlike LayerNorm's, its rows do not sum to zero: RMSNorm does not ignore a constant shift.
    """
    eps = _rms_eps(x, eps)
    x = _precise(x)
    if x.ndim != 1:
        raise ValueError(f"rms_norm_jacobian takes one row (a 1-d array), got shape {x.shape}")
    n = x.shape[0]
    xhat, rstd = rms_norm_forward(x, n, eps=eps)
    jac = rstd * (np.eye(n, dtype=x.dtype) - np.outer(xhat, xhat) / n)
    if weight is not None:
        jac = _precise(weight)[:, None] * jac
    return jac


def _sum(x, residual):
    """x + residual rounded once to x's dtype (the float64 sum of two float32 is exact)."""
    x = np.asarray(x)
    return (_precise(x) + _precise(residual)).astype(x.dtype)


def add_layer_norm_forward(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Return ``(y, s, mean, rstd)``: s = x + residual in x's dtype, the rest of LayerNorm(s)."""
    s = _sum(x, residual)
    y, mean, rstd = layer_norm_forward(s, normalized_shape, weight, bias, eps)
    return y, s, mean, rstd


def add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Return ``(y, s)`` with s = x + residual (in x's dtype) and y = LayerNorm(s)."""
    return add_layer_norm_forward(x, residual, normalized_shape, weight, bias, eps)[:2]


def add_layer_norm_backward(dy, s, mean, rstd, weight=None, dsum=None):
    """Return ``(ds, dweight, dbias)``; ds, the gradient of the sum (so of x and of residual),
    is LayerNorm's dx plus the incoming gradient `dsum` of s when given."""
    ds, dweight, dbias = layer_norm_backward(dy, s, mean, rstd, weight)
    return (ds if dsum is None else ds + _precise(dsum)), dweight, dbias


def add_rms_norm_forward(x, residual, normalized_shape, weight=None, eps=None):
    """Return ``(y, s, rstd)``: s = x + residual in x's dtype, y and rstd of RMSNorm(s)."""
    s = _sum(x, residual)
    y, rstd = rms_norm_forward(s, normalized_shape, weight, _rms_eps(x, eps))
    return y, s, rstd


def add_rms_norm(x, residual, normalized_shape, weight=None, eps=None):
    """Return ``(y, s)`` with s = x + residual (in x's dtype) and y = RMSNorm(s)."""
    return add_rms_norm_forward(x, residual, normalized_shape, weight, eps)[:2]


def add_rms_norm_backward(dy, s, rstd, weight=None, dsum=None):
    """Return ``(ds, dweight)``: RMSNorm's dx plus `dsum` when given, and dweight."""
    ds, dweight = rms_norm_backward(dy, s, rstd, weight)
    return (ds if dsum is None else ds + _precise(dsum)), dweight
