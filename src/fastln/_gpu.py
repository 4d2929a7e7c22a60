"""The CuPy backend: every fastln op on ``cupy.ndarray`` input, run by the kernels in cuda/.

fastln imports and works without CuPy; this module imports it only when a GPU op is called (or
``fastln info`` asks). Each op here has the signature of its NumPy twin in ``_ops.py`` and takes
CuPy arrays for every array argument. It validates its input, makes it C-contiguous on the
device, picks a kernel and its launch sizes, and launches. The kernels are compiled from
``cuda/layer_norm.cu`` with ``cupy.RawModule`` (NVRTC) the first time each is needed, and cached
by CuPy (in memory and in ``~/.cupy/kernel_cache``).

Data are float32 or float16 (CuPy has no bfloat16). Statistics and sums are float32; mean and
rstd come back as float32; weight and bias may be float32 or x's dtype; dweight and dbias have
the weight's dtype (dbias is float32 when there is no weight).
"""

import functools
import math
import os
import sys

import numpy as np

from fastln import _ops

__all__ = [
    "add_layer_norm",
    "add_layer_norm_backward",
    "add_layer_norm_forward",
    "add_rms_norm",
    "add_rms_norm_backward",
    "add_rms_norm_forward",
    "info",
    "is_gpu_array",
    "kernel_names",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "rms_norm",
    "rms_norm_backward",
    "rms_norm_forward",
    "wants_gpu",
]

INSTALL_HINT = ("pip install fastln[gpu] (it installs cupy-cuda12x; with a CUDA 13 driver "
                "install cupy-cuda13x instead)")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda", "layer_norm.cu")

_F32, _F16 = np.dtype(np.float32), np.dtype(np.float16)
_C_TYPE = {_F32: "float", _F16: "fastln::half_t"}
# (data dtype, weight dtype) pairs with kernels; a float16 weight with float32 data is cast.
_TYPE_PAIRS = ((_F32, _F32), (_F16, _F16), (_F16, _F32))
_NULL = np.uint64(0)  # a null pointer argument: CuPy passes numpy scalars by value, 8 bytes here

# Launch sizes (see the layout notes at the top of cuda/layer_norm.cu).
_FORWARD_ELEMS = 32       # values per thread held in registers, 16-byte vector path
_SCALAR_ELEMS = 8         # the same for the scalar path (unaligned rows)
_BACKWARD_ELEMS = 8       # the backward also holds dweight and dbias sums per value
_MAX_GROUP = 1024         # threads on one row; longer rows take the *_stream kernels
_WARP_ROWS = 4            # rows (warps) per block when a row takes one warp
_STREAM_THREADS = 512     # threads on one row in the *_stream kernels
_MIN_ROWS_PER_PART = 8    # the backward's partial rows: at most one per 8 rows of input
_REGISTERS_PER_SM = 65536
_THREADS_PER_SM = 2048


# ---------------------------------------------------------------------------------------------
# CuPy, the device and the kernels

def is_gpu_array(a):
    """True if `a` is a ``cupy.ndarray``. Never imports CuPy: if it is not imported yet, no
    array can be one."""
    cupy = sys.modules.get("cupy")
    ndarray = getattr(cupy, "ndarray", None)
    return ndarray is not None and isinstance(a, ndarray)


def wants_gpu(*arrays):
    """True if any of `arrays` is a ``cupy.ndarray``: the call belongs to this backend (which
    then refuses any host array among them, by name). A dict lookup when CuPy is not
    imported, a few type checks when it is."""
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return False
    ndarray = getattr(cupy, "ndarray", None)
    if ndarray is None:
        return False
    for a in arrays:
        if a is not None and type(a) is not np.ndarray and isinstance(a, ndarray):
            return True
    return False


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(f"fastln's GPU backend needs CuPy, which could not be imported "
                          f"({exc}); {INSTALL_HINT}") from exc
    return cupy


@functools.lru_cache(maxsize=1)
def _source():
    with open(SOURCE) as f:
        return f.read()


def _c_bool(flag):
    return "true" if flag else "false"


def _forward_name(t, w, vec, elems, rms, residual):
    return (f"fastln::forward<{_C_TYPE[t]}, {_C_TYPE[w]}, {vec}, {elems}, {_c_bool(rms)}, "
            f"{_c_bool(residual)}>")


def _forward_stream_name(t, w, rms, residual):
    return (f"fastln::forward_stream<{_C_TYPE[t]}, {_C_TYPE[w]}, {_c_bool(rms)}, "
            f"{_c_bool(residual)}>")


def _backward_name(t, w, vec, elems, rms):
    return f"fastln::backward<{_C_TYPE[t]}, {_C_TYPE[w]}, {vec}, {elems}, {_c_bool(rms)}>"


def _backward_stream_name(t, w, rms):
    return f"fastln::backward_stream<{_C_TYPE[t]}, {_C_TYPE[w]}, {_c_bool(rms)}>"


def _column_sum_name(out):
    return f"fastln::column_sum<{_C_TYPE[out]}>"


def _vector(dtype):
    """Elements in one 16-byte vector of `dtype`."""
    return 16 // dtype.itemsize


def kernel_names():
    """Every kernel instantiation this backend may launch, as CuPy's name expressions (the CI
    compiles each of them with nvcc and NVRTC)."""
    names = []
    for t, w in _TYPE_PAIRS:
        for rms in (False, True):
            for residual in (False, True):
                names.append(_forward_name(t, w, _vector(t), _FORWARD_ELEMS, rms, residual))
                names.append(_forward_name(t, w, 1, _SCALAR_ELEMS, rms, residual))
                names.append(_forward_stream_name(t, w, rms, residual))
            names.append(_backward_name(t, w, _vector(t), _BACKWARD_ELEMS, rms))
            names.append(_backward_name(t, w, 1, _BACKWARD_ELEMS, rms))
            names.append(_backward_stream_name(t, w, rms))
    names += [_column_sum_name(_F32), _column_sum_name(_F16)]
    return names


@functools.cache
def _kernel(name, device):
    """The compiled kernel `name` (a name expression) for `device` (its id)."""
    cupy = _cupy()
    module = cupy.RawModule(code=_source(), name_expressions=[name])
    return module.get_function(name)


@functools.cache
def _multiprocessors(device):
    return int(_cupy().cuda.Device(device).attributes["MultiProcessorCount"])


def _launch(name, device, grid, block, args):
    _kernel(name, device)((int(grid),), (int(block),), args)


def _blocks_per_sm(name, device, block):
    """How many blocks of `block` threads of kernel `name` fit on a multiprocessor at once."""
    regs = max(1, int(_kernel(name, device).num_regs))
    regs = -(-regs // 8) * 8  # registers are allotted in units of 8 per thread
    return max(1, min(_THREADS_PER_SM // block, _REGISTERS_PER_SM // (block * regs)))


# ---------------------------------------------------------------------------------------------
# Checks (the shared ones -- normalized_shape, eps, x's shape -- are _ops's)

def _describe(a):
    if isinstance(a, np.ndarray):
        return "a numpy.ndarray"
    return f"a {type(a).__module__}.{type(a).__qualname__}"


def _on_gpu(cupy, named):
    """Raise unless every non-None value of `named` ((name, value) pairs) is a cupy.ndarray on
    one device."""
    on_gpu = [name for name, a in named if isinstance(a, cupy.ndarray)]
    for name, a in named:
        if a is not None and not isinstance(a, cupy.ndarray):
            other = f" while {on_gpu[0]} is a cupy.ndarray" if on_gpu else ""
            raise TypeError(f"{name} is {_describe(a)}{other}: pass every array as a "
                            f"cupy.ndarray to run on the GPU (cupy.asarray({name})), or every "
                            f"array as a NumPy array to run on the CPU")
    devices = {a.device.id for _, a in named if a is not None}
    if len(devices) > 1:
        where = ", ".join(f"{name} on GPU {a.device.id}" for name, a in named if a is not None)
        raise ValueError(f"all arrays must be on one GPU, got {where}")


def _data(name, a):
    """`a`'s dtype must be one the kernels take."""
    if a.dtype not in (_F32, _F16):
        hint = (f"; convert it with {name}.astype(cupy.float32)" if a.dtype.kind in "fiub"
                else "")
        raise TypeError(f"{name} must be a float32 or float16 cupy.ndarray for the GPU kernels, "
                        f"got dtype {a.dtype}{hint} (bfloat16 is not supported: CuPy cannot "
                        f"hold it)")
    return a


def _like(name, a, x, xname):
    """`a` (dy, residual, dsum) with x's shape and dtype, cast only when nothing is lost."""
    if a.shape != x.shape:
        raise ValueError(f"{name} must have the shape of {xname} {x.shape}, got {a.shape}")
    return _cast(name, a, x.dtype, xname)


def _cast(name, a, dtype, target):
    if a.dtype == dtype:
        return a
    if a.dtype.kind != "f" or not np.can_cast(a.dtype, dtype, "safe"):
        raise TypeError(f"{name} has dtype {a.dtype} but {target} is {dtype}; casting would lose "
                        f"precision, so cast one of them explicitly")
    return a.astype(dtype)


def _params(x, nshape, named):
    """weight/bias (`named`: (name, array or None) pairs) as contiguous arrays of one dtype the
    kernels take with x's dtype: x's own or float32 (float16 with float32 x is cast up)."""
    given = [(name, a) for name, a in named if a is not None]
    for name, a in given:
        if a.shape != nshape:
            raise ValueError(f"{name} must have shape normalized_shape={nshape}, got {a.shape}")
        if a.dtype not in (_F32, _F16):
            raise TypeError(f"{name} must be float32 or float16, got dtype {a.dtype}")
    dtypes = {a.dtype for _, a in given}
    wdtype = x.dtype if dtypes <= {x.dtype} else _F32
    cupy = _cupy()
    return wdtype, [None if a is None else cupy.ascontiguousarray(a.astype(wdtype, copy=False))
                    for _, a in named]


def _stat(name, a, lead):
    """mean or rstd: float32 (float16 is cast), of shape `lead`."""
    if a.shape != lead:
        raise ValueError(f"{name} must have shape {lead}, got {a.shape}")
    if a.dtype == _F32:
        return a
    return _cast(name, a, _F32, "the kernels' statistics")


def _span(a):
    return a.data.ptr, a.data.ptr + a.nbytes


def _output(name, out, x, inputs, taken):
    """(result, array the kernel writes, array to copy the result into afterwards or None).

    `out` may be None (a new array), or a cupy.ndarray of x's shape and dtype. A C-contiguous
    `out` is written directly: it may be the very memory of x or residual (in place), but must
    not otherwise overlap `inputs` ((name, array) pairs) nor the arrays in `taken` (the other
    output). Any other `out` gets a contiguous scratch array, copied into it at the end.
    """
    cupy = _cupy()
    if out is None:
        result = cupy.empty(x.shape, x.dtype)
        return result, result, None
    if not isinstance(out, cupy.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray, got {_describe(out)}")
    if out.shape != x.shape:
        raise ValueError(f"{name} must have shape {x.shape}, got {out.shape}")
    if out.dtype != x.dtype:
        raise TypeError(f"{name} must have dtype {x.dtype}, got {out.dtype}")
    if out.device.id != x.device.id:
        raise ValueError(f"{name} must be on GPU {x.device.id} with x, got GPU {out.device.id}")
    if not out.flags.c_contiguous:
        return out, cupy.empty(x.shape, x.dtype), out
    lo, hi = _span(out)
    for other, a in inputs + taken:
        if a is None or a.nbytes == 0:
            continue
        a_lo, a_hi = _span(a)
        if lo < a_hi and a_lo < hi:
            if other in ("x", "residual") and (a_lo, a_hi) == (lo, hi):
                continue  # in place: each value is read before its place is written
            raise ValueError(f"{name} overlaps {other}; pass a separate array (only x or the "
                             f"residual may be overwritten, by passing the very same array)")
    return out, out, None


def _row_width(nshape):
    """Values per row; the kernels index a row with 32-bit ints."""
    n = math.prod(nshape)
    if n >= 2**31:
        raise ValueError(f"rows of 2**31 values or more are not supported on the GPU, got "
                         f"normalized_shape={nshape}")
    return n


def _aligned(n, vec, arrays):
    """The 16-byte vector path applies: whole vectors per row, every array 16-byte aligned."""
    return vec > 1 and n % vec == 0 and all(a.data.ptr % 16 == 0 for a in arrays if a is not None)


def _group(n, vec, elems):
    """Threads on one row (a multiple of 32) when each holds at most `elems` of its n values."""
    threads = -(-(n // vec) // (elems // vec))
    return 32 * -(-threads // 32)


def _ptr(a):
    return _NULL if a is None else a


# ---------------------------------------------------------------------------------------------
# Forward and backward, shared by the four ops

def _forward(x, residual, normalized_shape, weight, bias, eps, *, rms, stats, out=None,
             sum_out=None):
    """(y, s or None, mean or None, rstd or None) for LayerNorm or RMSNorm of x (or of
    x + residual); mean and rstd only if `stats`."""
    cupy = _cupy()
    _on_gpu(cupy, [("x", x), ("residual", residual), ("weight", weight), ("bias", bias),
                   ("out", out), ("sum_out", sum_out)])
    x = _data("x", x)
    nshape = _ops._normalized_shape(normalized_shape)
    _ops._check_shape(x, nshape)
    n = _row_width(nshape)
    if rms and eps is None:
        eps = _ops._default_rms_eps(np.dtype(x.dtype))
    eps = _ops._eps(eps)
    wdtype, (w, b) = _params(x, nshape, [("weight", weight), ("bias", bias)])
    x = cupy.ascontiguousarray(x)
    r = None
    if residual is not None:
        r = cupy.ascontiguousarray(_like("residual", residual, x, "x"))
    inputs = [("x", x), ("residual", r), ("weight", w), ("bias", b)]
    s = s_target = s_copy = None
    if r is not None:
        s, s_target, s_copy = _output("sum_out", sum_out, x, inputs, [])
    y, y_target, y_copy = _output("out", out, x, inputs, [("sum_out", s_target)])
    lead = x.shape[:x.ndim - len(nshape)]
    mean = cupy.empty(lead, _F32) if stats and not rms else None
    rstd = cupy.empty(lead, _F32) if stats else None
    rows = x.size // n
    if rows:
        device = x.device.id
        vec = _vector(x.dtype)
        arrays = (x, r, s_target, w, b, y_target)
        if _aligned(n, vec, arrays):
            elems = _FORWARD_ELEMS
        else:
            vec, elems = 1, _SCALAR_ELEMS
        group = _group(n, vec, elems)
        if group <= _MAX_GROUP:
            name = _forward_name(x.dtype, wdtype, vec, elems, rms, r is not None)
            per_block = _WARP_ROWS if group == 32 else 1
        else:
            name = _forward_stream_name(x.dtype, wdtype, rms, r is not None)
            group, per_block = _STREAM_THREADS, 1
        grid = min(-(-rows // per_block), 2**31 - 1)
        _launch(name, device, grid, group * per_block,
                (x, _ptr(r), _ptr(s_target), _ptr(w), _ptr(b), y_target, _ptr(mean), _ptr(rstd),
                 np.int64(rows), np.int32(n), np.int32(group), np.float32(eps)))
    if s_copy is not None:
        s_copy[...] = s_target
    if y_copy is not None:
        y_copy[...] = y_target
    return y, s, mean, rstd


def _backward(dy, x, mean, rstd, weight, dsum, *, rms, xname):
    """(dx + dsum, dweight or None, dbias or None (RMSNorm)); `xname` is "x" or "s"."""
    cupy = _cupy()
    stats = [("rstd", rstd)] if rms else [("mean", mean), ("rstd", rstd)]
    _on_gpu(cupy, [("dy", dy), (xname, x), *stats, ("weight", weight), ("dsum", dsum)])
    x = _data(xname, x)
    if x.ndim == 0:
        raise ValueError(f"{xname} must have at least one dimension, got a 0-d array")
    first = stats[0][1]
    if first.ndim >= x.ndim or first.shape != x.shape[:first.ndim]:
        raise ValueError(f"{stats[0][0]} must have the leading shape of {xname} "
                         f"({xname}.shape[:k] for some k < {xname}.ndim={x.ndim}), got "
                         f"{stats[0][0]} of shape {first.shape} for {xname} of shape {x.shape}")
    lead = first.shape
    mean = None if rms else _stat("mean", mean, lead)
    rstd = _stat("rstd", rstd, lead)
    dy = _like("dy", dy, x, xname)
    if dsum is not None:
        dsum = _like("dsum", dsum, x, xname)
    nshape = x.shape[len(lead):]
    _ops._check_shape(x, nshape)
    n = _row_width(nshape)
    wdtype, (w,) = _params(x, nshape, [("weight", weight)])
    out_dtype = weight.dtype if weight is not None else _F32
    dy, x, mean, rstd, dsum = (None if a is None else cupy.ascontiguousarray(a)
                               for a in (dy, x, mean, rstd, dsum))
    rows = x.size // n
    dx = cupy.empty(x.shape, x.dtype)
    dweight = None if weight is None else cupy.empty(nshape, out_dtype)
    dbias = None if rms else cupy.empty(nshape, out_dtype)
    if rows == 0:
        for a in (dweight, dbias):
            if a is not None:
                a[...] = 0
        return dx, dweight, dbias

    device = x.device.id
    vec = _vector(x.dtype)
    if not _aligned(n, vec, (dy, x, w, dsum, dx)):
        vec = 1
    group = _group(n, vec, _BACKWARD_ELEMS)
    if group <= _MAX_GROUP:
        name = _backward_name(x.dtype, wdtype, vec, _BACKWARD_ELEMS, rms)
        per_block = _WARP_ROWS if group == 32 else 1
    else:
        name = _backward_stream_name(x.dtype, wdtype, rms)
        group, per_block = _STREAM_THREADS, 1
    block = group * per_block
    resident = _multiprocessors(device) * _blocks_per_sm(name, device, block) * per_block
    groups = max(1, min(resident, -(-rows // _MIN_ROWS_PER_PART)))
    grid = -(-groups // per_block)
    parts = grid * per_block
    part_w = None if weight is None else cupy.empty((parts, n), _F32)
    part_b = None if rms else cupy.empty((parts, n), _F32)
    _launch(name, device, grid, block,
            (dy, x, _ptr(mean), rstd, _ptr(w), _ptr(dsum), dx, _ptr(part_w), _ptr(part_b),
             np.int64(rows), np.int32(n), np.int32(group)))
    if part_w is not None or part_b is not None:
        _launch(_column_sum_name(out_dtype), device, -(-n // 32), 1024,
                (_ptr(part_w), _ptr(part_b), _ptr(dweight), _ptr(dbias), np.int32(parts),
                 np.int32(n)))
    return dx, dweight, dbias


# ---------------------------------------------------------------------------------------------
# The ops

def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None):
    """`fastln.layer_norm` for CuPy arrays: y = (x - mean) / sqrt(var + eps) * weight + bias.

    Parameters
    ----------
    x : cupy.ndarray
        float32 or float16, shape ``(*, *normalized_shape)``; non-contiguous input is copied.
    normalized_shape : int or tuple of int
        The trailing dims to normalize over.
    weight, bias : cupy.ndarray, optional
        Of shape `normalized_shape`, float32 or x's dtype.
    eps : float, optional
        Added to the variance.
    out : cupy.ndarray, optional
        Where to write y (x's shape and dtype); ``out=x`` works in place.

    Returns
    -------
    y : cupy.ndarray

    Examples
    --------
    >>> import cupy, fastln
    >>> x = cupy.arange(8, dtype=cupy.float32).reshape(2, 4)
    >>> fastln.layer_norm(x, 4).round(4)
    array([[-1.3416, -0.4472,  0.4472,  1.3416],
           [-1.3416, -0.4472,  0.4472,  1.3416]], dtype=float32)
    """
    y, _, _, _ = _forward(x, None, normalized_shape, weight, bias, eps, rms=False, stats=False,
                          out=out)
    return y


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """`layer_norm` that also returns the float32 ``mean`` and ``rstd`` the backward needs.

    Returns
    -------
    y : cupy.ndarray
    mean, rstd : cupy.ndarray
        float32, of shape ``x.shape[:-len(normalized_shape)]``.

    Examples
    --------
    >>> y, mean, rstd = fastln.layer_norm_forward(x, 4)
    """
    y, _, mean, rstd = _forward(x, None, normalized_shape, weight, bias, eps, rms=False, stats=True)
    return y, mean, rstd


def layer_norm_backward(dy, x, mean, rstd, weight=None):
    """Gradients of `layer_norm` in one fused pass over the rows.

    Parameters
    ----------
    dy, x : cupy.ndarray
        The incoming gradient and the forward's input, of one shape and dtype.
    mean, rstd : cupy.ndarray
        From `layer_norm_forward`; their dims are x's leading dims. The mean is refined against
        x, so its rounding costs no accuracy.
    weight : cupy.ndarray, optional
        The forward's weight.

    Returns
    -------
    dx : cupy.ndarray
    dweight : cupy.ndarray or None
        ``sum(dy * xhat)`` over the rows, in weight's dtype; None without a weight.
    dbias : cupy.ndarray
        ``sum(dy)`` over the rows, in weight's dtype (float32 without a weight).

    Examples
    --------
    >>> dx, dw, db = fastln.layer_norm_backward(cupy.ones_like(y), x, mean, rstd)
    """
    return _backward(dy, x, mean, rstd, weight, None, rms=False, xname="x")


def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None):
    """RMS normalization for CuPy arrays: y = x / sqrt(mean(x**2) + eps) * weight.

    `eps` None means ``numpy.finfo(x.dtype).eps``, as in ``torch.nn.functional.rms_norm``.
    The other parameters are those of `layer_norm`.

    Examples
    --------
    >>> y = fastln.rms_norm(x, 4)
    """
    return _forward(x, None, normalized_shape, weight, None, eps, rms=True, stats=False, out=out)[0]


def rms_norm_forward(x, normalized_shape, weight=None, eps=None):
    """`rms_norm` that also returns the float32 ``rstd`` the backward needs.

    Examples
    --------
    >>> y, rstd = fastln.rms_norm_forward(x, 4)
    """
    y, _, _, rstd = _forward(x, None, normalized_shape, weight, None, eps, rms=True, stats=True)
    return y, rstd


def rms_norm_backward(dy, x, rstd, weight=None):
    """Gradients of `rms_norm`: ``(dx, dweight or None)``.

    Examples
    --------
    >>> dx, dw = fastln.rms_norm_backward(cupy.ones_like(y), x, rstd)
    """
    dx, dweight, _ = _backward(dy, x, None, rstd, weight, None, rms=True, xname="x")
    return dx, dweight


def add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None,
                   sum_out=None):
    """Fused residual add and LayerNorm: ``s = x + residual`` (rounded to x's dtype) and
    ``y = layer_norm(s)``, reading x and residual once.

    Parameters
    ----------
    x, residual : cupy.ndarray
        Of one shape; residual is cast to x's dtype when nothing is lost.
    out, sum_out : cupy.ndarray, optional
        Where to write y and s. Either may be x or residual itself (in place), not each other.
    Others as in `layer_norm`.

    Returns
    -------
    y, s : cupy.ndarray

    Examples
    --------
    >>> y, s = fastln.add_layer_norm(x, r, 4)
    """
    y, s, _, _ = _forward(x, residual, normalized_shape, weight, bias, eps, rms=False, stats=False,
                          out=out, sum_out=sum_out)
    return y, s


def add_layer_norm_forward(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5):
    """`add_layer_norm` that also returns ``mean`` and ``rstd`` of s: ``(y, s, mean, rstd)``.

    Examples
    --------
    >>> y, s, mean, rstd = fastln.add_layer_norm_forward(x, r, 4)
    """
    return _forward(x, residual, normalized_shape, weight, bias, eps, rms=False, stats=True)


def add_layer_norm_backward(dy, s, mean, rstd, weight=None, dsum=None):
    """Gradients of `add_layer_norm`: ``(grad_s, dweight or None, dbias)``.

    ``grad_s`` is the LayerNorm gradient of s plus `dsum`, the gradient that reaches s along
    other paths (the residual stream); it is the gradient of both x and residual.

    Examples
    --------
    >>> grad_s, dw, db = fastln.add_layer_norm_backward(dy, s, mean, rstd, dsum=ds)
    """
    return _backward(dy, s, mean, rstd, weight, dsum, rms=False, xname="s")


def add_rms_norm(x, residual, normalized_shape, weight=None, eps=None, *, out=None,
                 sum_out=None):
    """Fused residual add and RMSNorm: ``(y, s)`` with ``s = x + residual``, ``y = rms_norm(s)``.

    Examples
    --------
    >>> y, s = fastln.add_rms_norm(x, r, 4)
    """
    y, s, _, _ = _forward(x, residual, normalized_shape, weight, None, eps, rms=True, stats=False,
                          out=out, sum_out=sum_out)
    return y, s


def add_rms_norm_forward(x, residual, normalized_shape, weight=None, eps=None):
    """`add_rms_norm` that also returns ``rstd`` of s: ``(y, s, rstd)``.

    Examples
    --------
    >>> y, s, rstd = fastln.add_rms_norm_forward(x, r, 4)
    """
    y, s, _, rstd = _forward(x, residual, normalized_shape, weight, None, eps, rms=True, stats=True)
    return y, s, rstd


def add_rms_norm_backward(dy, s, rstd, weight=None, dsum=None):
    """Gradients of `add_rms_norm`: ``(grad_s, dweight or None)``, grad_s including `dsum`.

    Examples
    --------
    >>> grad_s, dw = fastln.add_rms_norm_backward(dy, s, rstd, dsum=ds)
    """
    grad_s, dweight, _ = _backward(dy, s, None, rstd, weight, dsum, rms=True, xname="s")
    return grad_s, dweight


# ---------------------------------------------------------------------------------------------
# fastln info

def info():
    """(label, text) pairs for ``fastln info``: CuPy, CUDA, the GPU, and whether the kernels
    compile here (or why not)."""
    try:
        cupy = _cupy()
    except ImportError:
        return [("CuPy", f"not installed; {INSTALL_HINT}"), ("GPU", "unknown (needs CuPy)"),
                ("GPU kernels", "not compiled: CuPy is not installed")]
    except Exception as exc:  # a CuPy that cannot find its CUDA libraries, say
        return [("CuPy", f"import failed: {_first_line(exc)}"), ("GPU", "unknown"),
                ("GPU kernels", "not compiled: CuPy could not be imported")]
    runtime = cupy.cuda.runtime
    versions = []
    for what, get in (("runtime", runtime.runtimeGetVersion), ("driver", runtime.driverGetVersion)):
        try:
            versions.append(f"{what} {_cuda_version(get())}")
        except Exception as exc:
            versions.append(f"{what} unknown ({_first_line(exc)})")
    lines = [("CuPy", cupy.__version__), ("CUDA", ", ".join(versions))]
    try:
        count = runtime.getDeviceCount()
        if count == 0:
            raise RuntimeError("the driver reports no device")
        device = cupy.cuda.Device()
        props = runtime.getDeviceProperties(device.id)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        lines.append(("GPU", f"{name} (sm_{props['major']}{props['minor']}, "
                             f"{props['multiProcessorCount']} SMs; {count} visible)"))
    except Exception as exc:  # no driver, no device
        lines += [("GPU", f"none visible ({_first_line(exc)})"),
                  ("GPU kernels", "not compiled: no GPU visible")]
        return lines
    name = _forward_name(_F32, _F32, _vector(_F32), _FORWARD_ELEMS, False, False)
    try:
        _kernel(name, device.id)
        lines.append(("GPU kernels", f"compiled with NVRTC from {SOURCE}"))
    except Exception as exc:
        lines.append(("GPU kernels", f"not compiled: {_first_line(exc)}"))
    return lines


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cuda_version(v):
    return f"{v // 1000}.{v % 1000 // 10}" if v else "none"
