"""The NumPy-facing ops: validate, view as (rows, width), allocate, call the backend.

Every check lives in the helpers at the top and is shared by all ops; below this module nothing
validates again. Signatures follow ``torch.nn.functional``; habits (``out=``, array-likes in,
ndarrays out) follow NumPy.
"""

import math
import numbers
import operator
import sys
import threading
from functools import lru_cache

import numpy as np

from fastln import _cpu, _gpu

__all__ = ["add_layer_norm", "add_layer_norm_backward", "add_layer_norm_forward", "add_rms_norm",
           "add_rms_norm_backward", "add_rms_norm_forward", "layer_norm", "layer_norm_backward",
           "layer_norm_forward", "rms_norm", "rms_norm_backward", "rms_norm_forward",
           "set_output_pool"]

_F32, _F64, _F16 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)
_SUPPORTED_NAMES = "float32, float64, float16 or bfloat16"
_BF16_HELP = ("bfloat16 needs the ml_dtypes package, which is not installed: "
              "pip install ml_dtypes (or pip install fastln[bf16])")


@lru_cache(maxsize=1)
def _ml_dtypes():
    """The ml_dtypes module, or None where it is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return ml_dtypes


def bfloat16_dtype():
    """numpy.dtype of ml_dtypes.bfloat16; ImportError saying what to install without it."""
    mod = _ml_dtypes()
    if mod is None:
        raise ImportError(_BF16_HELP)
    return np.dtype(mod.bfloat16)


# dtype -> the kernels' code for it (fastln._cpu.KINDS); bfloat16 joins once it is seen. A dict
# of dtypes, since dtype.name costs microseconds.
_KINDS = {dt: _cpu.KINDS[dt.name] for dt in (_F32, _F64, _F16)}


def _kind(dtype):
    """The kernels' code for `dtype` (native byte order); None if they do not take it."""
    kind = _KINDS.get(dtype)
    if kind is None and dtype.name == "bfloat16":
        kind = _KINDS[dtype] = _cpu.KINDS["bfloat16"]
        _register_fast_path()
    return kind


def _is_half(dtype):
    return dtype.itemsize == 2


def _stat_dtype(dtype):
    """dtype of weight, bias, mean and rstd as the kernels use them for data of `dtype`:
    float32 for the 16-bit types, else the data's own."""
    return _F32 if _is_half(dtype) else dtype


def _finfo(dtype):
    """Machine limits of a float dtype, bfloat16 included (ml_dtypes' finfo knows it)."""
    mod = _ml_dtypes()
    return mod.finfo(dtype) if mod is not None else np.finfo(dtype)


@lru_cache(maxsize=16)
def _default_rms_eps(dtype):
    """RMSNorm's eps when none is given: finfo(dtype).eps, as in PyTorch."""
    return float(_finfo(dtype).eps)


# ---------------------------------------------------------------------------------------------
# checks shared by every op

def _normalized_shape(normalized_shape):
    """`normalized_shape` as a tuple of non-negative ints: an int, or a tuple, list or 1-d array
    of them (no bools, and no sets, whose order is arbitrary)."""
    items = normalized_shape
    if isinstance(items, np.ndarray) and items.ndim == 1:
        items = items.tolist()
    elif not isinstance(items, (tuple, list, np.ndarray)):
        items = (items,)
    try:
        if not isinstance(items, (tuple, list)) or any(isinstance(d, (bool, np.bool_))
                                                       for d in items):
            raise TypeError
        dims = tuple(operator.index(d) for d in items)
    except TypeError:
        raise TypeError("normalized_shape must be an int or a tuple of ints, "
                        f"got {normalized_shape!r}") from None
    if len(dims) == 0:
        raise ValueError("normalized_shape must name at least one dimension, got ()")
    if any(d < 0 for d in dims):
        raise ValueError(f"normalized_shape must not be negative, got {dims}")
    return dims


def _eps(eps):
    if isinstance(eps, np.ndarray) and eps.ndim == 0 and eps.dtype.kind in "fiu":
        eps = eps[()]                                    # a 0-d array, as NumPy's scalars
    if not isinstance(eps, numbers.Real) or isinstance(eps, (bool, np.bool_)):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return value


def _float_array(name, a):
    """`a` as an ndarray of a supported dtype in native byte order (a view where possible)."""
    a = np.asarray(a)
    dtype = a.dtype
    if dtype.kind == "f" and dtype.itemsize in (2, 4, 8) or dtype.name == "bfloat16":
        if not dtype.isnative:
            a = a.astype(dtype.newbyteorder("="))
        return a
    raise TypeError(f"{name} must be a {_SUPPORTED_NAMES} array, got dtype {dtype}"
                    + ("" if dtype.kind in "OSUV" else
                       f"; convert it with {name}.astype(numpy.float32)"))


def _has_dtype(a):
    """`a` carries a dtype of its own (an array, a NumPy scalar), unlike Python numbers and
    lists."""
    return isinstance(a, np.ndarray) or hasattr(a, "dtype")


def _cast_to(name, a, dtype, target):
    """Array-like `a` as `dtype`, cast only when no precision is lost (`target` names why)."""
    if _has_dtype(a):
        a = _float_array(name, a)
        if a.dtype != dtype:
            if not np.can_cast(a.dtype, dtype, "safe"):
                raise TypeError(f"{name} has dtype {a.dtype} but {target} is {dtype}; casting "
                                f"would lose precision, so cast one of them explicitly")
            a = a.astype(dtype)
        return a
    # Python numbers and lists carry no precision of their own (like NumPy's scalars in NEP 50).
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiub" and not (
            arr.dtype == object and all(isinstance(v, numbers.Real) for v in arr.flat)):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    # Python ints beyond int64 come as an object array, which astype converts one by one.
    return arr.astype(dtype)


def _same_kind(name, a, dtype, target):
    """Array-like data `a` that must come as `dtype` (the residual; the gradients of 16-bit
    data): an array is taken in its own dtype, for the caller to check; Python numbers and lists
    become `dtype` (see _cast_to)."""
    if _has_dtype(a):
        return _float_array(name, a)
    return _cast_to(name, a, dtype, target)


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
    """A read-only vector of `value`: the weight or bias used when none is given (see
    _cpu.default_param, which keeps only the short ones here)."""
    a = np.full(n, value, dtype=dtype)
    a.flags.writeable = False
    return a


def _param(name, a, normalized_shape, dtype, default, no_rows, origin=""):
    """weight or bias for data of `dtype`, as a contiguous array of `_stat_dtype(dtype)`; when
    None, _cpu.default_param's (n,) vector of `default` (no_rows: the data has no rows). 16-bit
    parameters go with data of their own dtype only. `origin` says where normalized_shape came
    from, for the error on a weight of another shape."""
    kernel_dtype = _stat_dtype(dtype)
    if a is None:
        return _cpu.default_param(math.prod(normalized_shape), kernel_dtype, default, no_rows)
    pdtype = getattr(a, "dtype", None)
    if isinstance(pdtype, np.dtype) and _is_half(pdtype) and pdtype != dtype:
        raise TypeError(f"{name} has dtype {pdtype} but x is {dtype}; a {pdtype} {name} goes "
                        f"with {pdtype} data only: pass {name}.astype(numpy.{kernel_dtype})")
    if _is_half(dtype) and isinstance(pdtype, np.dtype) and pdtype not in (dtype, _F32):
        raise TypeError(f"{name} has dtype {pdtype} but x is {dtype}; for {dtype} data {name} "
                        f"must be float32 or {dtype}")
    if _is_half(dtype) and isinstance(pdtype, np.dtype) and pdtype == dtype:
        a = np.asarray(a).astype(_F32)
    a = _cast_to(name, a, kernel_dtype, "x" if kernel_dtype == dtype else f"{dtype}'s "
                 "statistics type")
    if a.shape != normalized_shape:
        raise ValueError(f"{name} must have shape normalized_shape={normalized_shape}{origin}, "
                         f"got {a.shape}")
    return _kernel_ready(a)


# The fast path. On a row or a few the kernels take well under a microsecond, several times less
# than the conversions above. Input that needs none of them -- C-contiguous, aligned ndarrays of
# one native float dtype in the expected shapes, normalized_shape an int or a tuple of ints, eps
# a float -- is recognised by identity tests in C (_cpu.plain_forward and plain_backward) and
# skips them. Anything else, every input that must raise included, takes the general path, which
# checks it in full; both paths end in the same out= check and the same kernel call. Where the
# outputs are small and new, or `out` takes the result as it is, _cpu.forward and _cpu.backward
# do the whole call in C: on a row of 768 float32 values the Python around the kernel had cost
# more than the kernel itself.

def _register_fast_path():
    """Tells the fast path which dtypes it takes (those of _KINDS), where default weights come
    from, and from which size _fresh places outputs (which the fast path then leaves to it)."""
    _cpu.set_fast_path(tuple((dt, _stat_dtype(dt), kind, _default_rms_eps(dt))
                             for dt, kind in _KINDS.items()), _constant, _NEAR_MIN_BYTES)


# Outputs of 4 MiB and more. glibc serves such sizes with fresh pages (a new mmap, or heap it
# trimmed and grows again), so every call would pay for the kernel zeroing them: about one more
# write of the output, and up to 10x that when two such outputs are made at once (measured here:
# two fresh 25 MB arrays took 9.5 ms to fill, one 0.9 ms, as only the first got huge pages).
# Like ONNX Runtime's arena, fastln keeps a few such outputs once the caller has dropped them and
# hands them out again; `set_output_pool` bounds or disables what it keeps. A new array that
# does not fit drops the arrays of the shapes used longest ago: a full pool of earlier shapes
# had made every fused add at 65536 x 1024 float32 fault in a new output (1.4x the time).
_POOL_MIN_BYTES = 4 << 20
# A loop `y, s = add_layer_norm(x, r, ...)` holds the old y and s while making the new ones.
_POOL_PER_SHAPE = 4
_pool_max_bytes = 1 << 30
# (shape, dtype) -> arrays that results were made in, the shape used longest ago first
_pool = {}
# Held while a call looks for a free array and takes it: between its check that no one holds
# an array and the reference it then keeps, another thread could find the same array free, and
# both results would be one buffer.
_pool_lock = threading.Lock()


# Outputs of this size and more are placed like an input (see _fresh). On smaller ones the
# extra allocation would cost more than misaligned vectors do.
_NEAR_MIN_BYTES = 64 << 10
# They sit where their input does modulo 4 KiB, or a given shift past it (the backward's dx
# under 4 MiB modulo 64 bytes; see _fresh).
_POOL_PERIOD = 4096

_register_fast_path()


def _fresh(x, like=None, shift=0, period=_POOL_PERIOD):
    """An uninitialized array of x's shape and dtype, reused from the pool when one is free.

    From _NEAR_MIN_BYTES to _POOL_MIN_BYTES, its data sits at the same address modulo `period`
    bytes (4 KiB unless given; the backward's dx asks for 64) as like's (x's when None), or
    `shift` bytes past it: the kernels start their vector sweeps where the output (dx: dy) is
    aligned, and then read the input aligned too. On Zen 5, float32 rows of 1024, one thread,
    arrays 16 bytes off a 64-byte boundary took 1.3x the backward's time and 1.1x the forward's
    when they were not placed alike. Modulo 4 KiB rather than 64 bytes, so that no output sits
    a few vectors ahead of its input there, where the CPU takes a load for the store before it
    (see fwd_pair_cols in _rows_impl.h): on Zen 4, one thread, cached float32 LayerNorm
    512 x 1024 with y 64 bytes ahead of x took 1.25-1.45x the time of y at x's offset (other
    cached shapes 1.1-1.4x). The backward's dx at dy's offset modulo 4 KiB gained as much as it
    lost (Zen 4, two threads, 512 x 1024, three pairs of processes, against modulo 64 bytes:
    RMSNorm 0.73-0.89x the time, float64 LayerNorm 1.07-1.16x, float32 add + LayerNorm
    1.07-1.14x), so it keeps to 64.

    Pooled outputs (_POOL_MIN_BYTES on) sit at like's address modulo 4 KiB whatever `period`
    says, the part of an address the CPU compares first: a free pooled array made for an input
    placed otherwise is placed again in its buffer (4 KiB larger), not replaced by fresh pages,
    which cost more. One left where it was could sit a few dozen bytes ahead of the input
    (modulo 4 KiB), where the kernels write with plain stores instead of streaming ones
    (just_ahead in _rows_impl.h); the residual add's forward took 1.2-1.35x the time there
    (Zen 3, float32 1024 x 8192, two threads).
    Outputs of that size that the pool cannot hold are placed modulo 4 KiB too. `shift` moves
    an output that many bytes further on: the residual add's y goes 2 KiB from its sum (and a
    new sum 2 KiB from a given y), which the kernels otherwise write in two sweeps when they
    stream (see fwd_rows).
    """
    nbytes = x.nbytes
    if nbytes < _NEAR_MIN_BYTES:
        return _cpu.empty(x, 0, x.ndim)
    like = x if like is None else like
    if nbytes < _POOL_MIN_BYTES:
        return _cpu.empty_near(x, like, period, shift)
    if nbytes * 2 > _pool_max_bytes:
        return _cpu.empty_near(x, like, _POOL_PERIOD, shift)
    with _pool_lock:
        return _pooled(x, like, shift, nbytes)


def _pooled(x, like, shift, nbytes):
    """_fresh's pooled output (see there); the caller holds _pool_lock."""
    key = (x.shape, x.dtype)
    # Moved to the end as the shape used last (pop and insert: another thread may drop it).
    spares = _pool.pop(key, [])
    _pool[key] = spares
    free = None
    for i in range(len(spares)):
        a = spares[i]
        # Free when held by `spares`, by `a` and by this call only, and its buffer only by it
        # (NumPy makes the buffer the base of every view of `a`).
        if sys.getrefcount(a) == 3 and sys.getrefcount(a.base) == 2:
            if _cpu.same_offset(a, like, _POOL_PERIOD, shift):
                return a
            free = i if free is None else free
    if free is not None:
        a = spares[free] = _cpu.moved_near(spares[free], like, _POOL_PERIOD, shift)
        return a
    a = _cpu.empty_near(x, like, _POOL_PERIOD, shift)
    if len(spares) < _POOL_PER_SHAPE:
        for old in list(_pool):
            if _pooled_bytes() + nbytes <= _pool_max_bytes:
                break
            if old != key:
                _pool.pop(old, None)    # freed unless the caller still holds them
        if _pooled_bytes() + nbytes <= _pool_max_bytes:
            spares.append(a)
    return a


def _pooled_bytes():
    return sum(a.nbytes for spares in list(_pool.values()) for a in spares)


def set_output_pool(max_bytes):
    """Bound the memory fastln keeps for reusing large outputs (4 MiB and more).

    A new result of that size is made in an array fastln made before, once the caller holds no
    reference to it (nor to any view of it), which saves the operating system's zeroing of
    fresh pages. When a new one would not fit, the arrays kept for the shapes used longest ago
    are let go. ``set_output_pool(0)`` turns this off and frees what is kept.

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
    with _pool_lock:
        _pool_max_bytes = int(max_bytes)
        _pool.clear()


def _output(out, x, w, b, name="out", same_ok=None, apart=None):
    """(result, array the kernel writes, array to copy into `out` afterwards or None).

    The result has x's shape and dtype. The kernel reads x, w and b while it writes: an `out`
    that is the very same memory as x works in place; any other overlap with them is refused.
    `same_ok` ({name: array}) replaces x as the inputs `out` may be exactly, `apart` ({name:
    array}) adds outputs it must not meet (the fused add's two outputs).
    """
    if out is None:
        result = _fresh(x)
        return result, result, None
    if (same_ok is None and apart is None and isinstance(out, np.ndarray)
            and _cpu.can_write(out, x, w, w if b is None else b)):
        return out, out, None                # the usual case, recognised in one call
    shape, dtype = x.shape, x.dtype
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        order = " in native byte order" if out.dtype.newbyteorder("=") == dtype else ""
        raise TypeError(f"{name} must have dtype {dtype}{order}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    same_ok = {"x": x} if same_ok is None else same_ok
    for other, a in (apart or {}).items():
        if isinstance(a, np.ndarray) and _cpu.overlap(out, a):
            raise ValueError(f"{name} overlaps {other}; the two outputs need separate arrays")
    if not _cpu.plain(out):
        # The kernel writes a contiguous scratch array that is copied into out at the end.
        return out, np.empty(shape, dtype), out
    for other, a in same_ok.items():
        if _cpu.overlap(out, a) == 2:
            raise ValueError(f"{name} overlaps {other} without being the same array; pass "
                             f"{name}={other} to work in place, or a separate array")
    for other, a in (("weight", w), ("bias", b)):
        if a is not None and _cpu.overlap(out, a):
            raise ValueError(f"{name} overlaps {other}; pass a separate array")
    return out, out, None


# ---------------------------------------------------------------------------------------------
# LayerNorm

def _checked_inputs(x, normalized_shape, weight, bias, eps, rms, residual=None):
    """The general path's validation and conversion of a forward's inputs:
    (x, normalized shape, w, b, eps, residual), ready for the kernels."""
    x = _float_array("x", x)
    nshape = _normalized_shape(normalized_shape)
    _check_shape(x, nshape)
    if residual is not None:
        residual = _same_kind("residual", residual, x.dtype, "x")
        if residual.dtype != x.dtype:
            raise TypeError(f"residual must have the dtype of x ({x.dtype}), got "
                            f"{residual.dtype}")
        if residual.shape != x.shape:
            raise ValueError(f"residual must have the shape of x {x.shape}, got "
                             f"{residual.shape}")
        residual = _kernel_ready(residual)
    eps = _default_rms_eps(x.dtype) if rms and eps is None else _eps(eps)
    w = _param("weight", weight, nshape, x.dtype, 1, x.size == 0)
    b = None if rms else _param("bias", bias, nshape, x.dtype, 0, x.size == 0)
    return _kernel_ready(x), nshape, w, b, eps, residual


def _stats(x, nshape, rms):
    """Fresh (mean, rstd) for the rows of x (mean None for RMSNorm)."""
    lead, stat = x.ndim - len(nshape), _stat_dtype(x.dtype)
    return None if rms else _cpu.empty(x, 0, lead, stat), _cpu.empty(x, 0, lead, stat)


def _forward(x, normalized_shape, weight, bias, eps, out, with_stats, rms=False):
    """The forward of LayerNorm, or (rms) RMSNorm: (y, mean, rstd), the statistics None unless
    with_stats, mean for RMSNorm."""
    done = _cpu.forward(x, None, normalized_shape, weight, bias, eps, out, None, with_stats, rms)
    if done is not None:
        return done[0], done[2], done[3]
    if rms and eps is None and isinstance(x, np.ndarray) and _kind(x.dtype) is not None:
        eps = _default_rms_eps(x.dtype)
    plain = _cpu.plain_forward(x, normalized_shape, weight, bias, eps)
    if plain is not None:
        nshape, w, b = plain
    elif _gpu.wants_gpu(x, weight, bias, out):          # CuPy arrays: the GPU kernels
        y, _, mean, rstd = _gpu._forward(x, None, normalized_shape, weight, bias, eps, rms=rms,
                                         stats=with_stats, out=out)
        return y, mean, rstd
    else:
        x, nshape, w, b, eps, _ = _checked_inputs(x, normalized_shape, weight, bias, eps, rms)
    y, target, copy_to = _output(out, x, w, b)
    mean, rstd = _stats(x, nshape, rms) if with_stats else (None, None)
    _cpu.norm_forward(_kind(x.dtype), x, None, w, b, None, target, mean, rstd, eps, rms)
    if copy_to is not None:
        copy_to[...] = target
    return y, mean, rstd


def _fused_forward(x, residual, normalized_shape, weight, bias, eps, out, sum_out, rms):
    """The forward of the fused residual add + norm: (y, s, mean, rstd)."""
    if residual is None:
        raise TypeError("residual must be an array of x's shape and dtype, got None")
    done = _cpu.forward(x, residual, normalized_shape, weight, bias, eps, out, sum_out, True, rms)
    if done is not None:
        return done
    if rms and eps is None and isinstance(x, np.ndarray) and _kind(x.dtype) is not None:
        eps = _default_rms_eps(x.dtype)
    plain = _cpu.plain_forward(x, normalized_shape, weight, bias, eps, residual)
    if plain is not None:
        nshape, w, b = plain
    elif _gpu.wants_gpu(x, residual, weight, bias, out, sum_out):
        return _gpu._forward(x, residual, normalized_shape, weight, bias, eps, rms=rms,
                             stats=True, out=out, sum_out=sum_out)
    else:
        x, nshape, w, b, eps, residual = _checked_inputs(x, normalized_shape, weight, bias, eps,
                                                         rms, residual)
    inputs = {"x": x, "residual": residual}
    copy_s = copy_to = None
    if sum_out is not None:
        s, target_s, copy_s = _output(sum_out, x, w, b, "sum_out", inputs, {"out": out})
    if out is not None:
        y, target, copy_to = _output(out, x, w, b, "out", inputs, {"sum_out": sum_out})
    # New outputs: the sum placed like x, y 2 KiB from the sum (given or new; see _fresh).
    if sum_out is None:
        s = target_s = _fresh(x) if out is None else _fresh(x, target, _POOL_PERIOD // 2)
    if out is None:
        y = target = _fresh(x, target_s, _POOL_PERIOD // 2)
    mean, rstd = _stats(x, nshape, rms)
    _cpu.norm_forward(_kind(x.dtype), x, residual, w, b, target_s, target, mean, rstd, eps, rms)
    for dst, src in ((copy_to, target), (copy_s, target_s)):
        if dst is not None:
            dst[...] = src
    return y, s, mean, rstd


def _backward(dy, x, mean, rstd, weight, dsum=None, rms=False, fused=False):
    """The backward of every op; returns (dx, dweight, dbias); dbias is None for RMSNorm."""
    done = _cpu.backward(dy, x, mean, rstd, weight, dsum, rms)
    if done is not None:
        return done
    # A LayerNorm without a mean goes to the general path, which says what is missing.
    plain = (None if rms != (mean is None)
             else _cpu.plain_backward(dy, x, mean, rstd, weight, dsum))
    ds = None
    if plain is not None:
        nshape, w = plain
        ds = dsum
    elif _gpu.wants_gpu(dy, x, mean, rstd, weight, dsum):
        return _gpu._backward(dy, x, mean, rstd, weight, dsum, rms=rms,
                              xname="s" if fused else "x")
    else:
        xname = "s" if fused else "x"
        x = _float_array(xname, x)
        if x.ndim == 0:
            raise ValueError(f"{xname} must have at least one dimension, got a 0-d array")
        stat = _stat_dtype(x.dtype)
        target = f"the statistics of {x.dtype} data" if _is_half(x.dtype) else xname
        rstd = _cast_to("rstd", rstd, stat, target)
        lead_name, lead = ("rstd", rstd) if rms else ("mean", mean)
        if not rms:
            mean = lead = _cast_to("mean", mean, stat, target)
        if lead.ndim >= x.ndim or lead.shape != x.shape[:lead.ndim]:
            raise ValueError(f"{lead_name} must have the leading shape of {xname} "
                             f"({xname}.shape[:k] for some k < {xname}.ndim={x.ndim}), got "
                             f"{lead_name} of shape {lead.shape} for {xname} of shape {x.shape}")
        if rstd.shape != lead.shape:
            raise ValueError(f"rstd must have the shape of mean {lead.shape}, got {rstd.shape}")
        for name, g in (("dy", dy), ("dsum", dsum)):
            if g is None and name == "dsum":
                continue
            g = (_same_kind(name, g, x.dtype, xname) if _is_half(x.dtype)
                 else _cast_to(name, g, x.dtype, xname))
            if g.dtype != x.dtype:
                raise TypeError(f"{name} must have the dtype of {xname} ({x.dtype}), got "
                                f"{g.dtype}")
            if g.shape != x.shape:
                raise ValueError(f"{name} must have the shape of {xname} {x.shape}, got "
                                 f"{g.shape}")
            if name == "dy":
                dy = _kernel_ready(g)
            else:
                ds = _kernel_ready(g)
        nshape = x.shape[lead.ndim:]
        _check_shape(x, nshape)
        w = _param("weight", weight, nshape, x.dtype, 1, x.size == 0,
                   f" ({xname}'s dims after the {lead.ndim} of {lead_name}, whose shape is "
                   f"{lead.shape})")
        x, rstd = _kernel_ready(x), _kernel_ready(rstd)
        mean = None if rms else _kernel_ready(mean)
    ndim, lead = x.ndim, x.ndim - len(nshape)
    stat = _stat_dtype(x.dtype)
    dx = _fresh(x, dy, period=64)
    dweight = None if weight is None else _cpu.empty(x, lead, ndim, stat)
    dbias = None if rms else _cpu.empty(x, lead, ndim, stat)
    _cpu.norm_backward(_kind(x.dtype), dy, x, mean, rstd, w, ds, dx, dweight, dbias, rms)
    if _is_half(x.dtype):
        # Gradients of 16-bit data come back in the weight's dtype (float32 without one).
        pdtype = getattr(weight, "dtype", _F32)
        pdtype = pdtype if pdtype == x.dtype else _F32
        dweight = None if dweight is None else dweight.astype(pdtype, copy=False)
        dbias = None if dbias is None else dbias.astype(pdtype, copy=False)
    return dx, dweight, dbias


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None):
    """Layer normalization over the trailing dims of `x`, like ``torch.nn.functional.layer_norm``.

    Each "row" (the last ``len(normalized_shape)`` dims) is shifted to mean 0 and scaled to
    variance 1, then multiplied by `weight` and shifted by `bias`::

        y = (x - mean) / sqrt(var + eps) * weight + bias

    with the biased variance. Rows are normalized in parallel on all cores.

    Parameters
    ----------
    x : array_like
        Input of dtype float32, float64, float16 or bfloat16 (with ml_dtypes), shape
        ``(*, *normalized_shape)``. Any layout works; C-contiguous input takes the fast path.
    normalized_shape : int or tuple of int
        The trailing dims to normalize over.
    weight, bias : array_like, optional
        Of shape `normalized_shape`; default 1 and 0. Cast to x's dtype when that loses nothing
        (to float32 for 16-bit x, whose weight and bias may be float32 or x's dtype).
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
        and x's dtype (float32 for float16 and bfloat16 x).

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
        The forward's input: float32, float64, float16 or bfloat16.
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
    return _backward(dy, x, mean, rstd, weight)


# ---------------------------------------------------------------------------------------------
# RMSNorm

def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None):
    """Root-mean-square normalization, like ``torch.nn.functional.rms_norm``::

        y = x / sqrt(mean(x**2) + eps) * weight

    over the trailing `normalized_shape` dims of `x` (no mean is subtracted, no bias added).

    Parameters
    ----------
    x : array_like
        float32, float64, float16 or bfloat16 (with ml_dtypes), shape ``(*, *normalized_shape)``.
    normalized_shape : int or tuple of int
        The trailing dims to normalize over.
    weight : array_like, optional
        Of shape `normalized_shape`; default 1. float32 or x's dtype for 16-bit x.
    eps : float, optional
        Added to the mean square; None means ``finfo(x.dtype).eps``, as in PyTorch.
    out : ndarray, optional
        Where to write y: shape and dtype of x; ``out=x`` works in place.

    Returns
    -------
    y : ndarray
        Same shape and dtype as x.

    Examples
    --------
    >>> import numpy as np, fastln
    >>> fastln.rms_norm(np.array([[3.0, 4.0]]), 2, eps=0.0)
    array([[0.84852814, 1.13137085]])
    """
    return _forward(x, normalized_shape, weight, None, eps, out, False, True)[0]


def rms_norm_forward(x, normalized_shape, weight=None, eps=None):
    """RMS normalization that also returns what the backward needs: ``(y, rstd)``.

    rstd is ``1 / sqrt(mean(x**2) + eps)`` per row, of shape
    ``x.shape[:-len(normalized_shape)]`` and x's dtype (float32 for 16-bit x). Parameters are
    those of `rms_norm`.
    """
    y, _, rstd = _forward(x, normalized_shape, weight, None, eps, None, True, True)
    return y, rstd


def rms_norm_backward(dy, x, rstd, weight=None):
    """Gradients of RMS normalization: ``(dx, dweight)``, in one fused sweep over the rows.

    With ``xhat = x * rstd`` and ``g = dy * weight``::

        dx = rstd * (g - xhat * mean(g * xhat))        (mean over each row)

    and ``dweight = sum(dy * xhat)`` over the rows (None when `weight` is None). rstd's number
    of dims fixes the normalized dims: x's last ``x.ndim - rstd.ndim``.
    """
    dx, dweight, _ = _backward(dy, x, None, rstd, weight, rms=True)
    return dx, dweight


# ---------------------------------------------------------------------------------------------
# Fused residual add + norm (the pre-norm transformer block)

def add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, *,
                   out=None, sum_out=None):
    """``s = x + residual`` and ``y = layer_norm(s)`` in one sweep: returns ``(y, s)``.

    s is rounded to x's dtype, and y normalizes that rounded s, exactly as
    ``layer_norm(x + residual)`` would; s feeds the next block's residual. Reads x and residual
    once and writes y and s once.

    Parameters
    ----------
    x, residual : array_like
        Same shape and dtype (float32, float64, float16 or bfloat16).
    normalized_shape, weight, bias, eps
        As in `layer_norm`.
    out, sum_out : ndarray, optional
        Where to write y and s. Each may be x or residual itself (in place); they must not
        overlap each other.

    Examples
    --------
    >>> import numpy as np, fastln
    >>> y, s = fastln.add_layer_norm(np.array([[1.0, 2.0]]), np.array([[1.0, 4.0]]), 2)
    >>> s, y.round(3)
    (array([[2., 6.]]), array([[-1.,  1.]]))
    """
    return _fused_forward(x, residual, normalized_shape, weight, bias, eps, out, sum_out,
                          False)[:2]


def add_layer_norm_forward(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, *,
                           out=None, sum_out=None):
    """`add_layer_norm` that also returns the statistics of s: ``(y, s, mean, rstd)``."""
    return _fused_forward(x, residual, normalized_shape, weight, bias, eps, out, sum_out, False)


def add_layer_norm_backward(dy, s, mean, rstd, weight=None, dsum=None):
    """Gradients of `add_layer_norm`: ``(ds, dweight, dbias)``.

    ``ds = layer_norm_backward(dy, s, ...)[0] + dsum`` is the gradient of the sum, and so of
    both x and residual. `dsum`, the incoming gradient of s (the next block's use of it), may be
    None. One fused sweep.
    """
    return _backward(dy, s, mean, rstd, weight, dsum, fused=True)


def add_rms_norm(x, residual, normalized_shape, weight=None, eps=None, *, out=None,
                 sum_out=None):
    """``s = x + residual`` and ``y = rms_norm(s)`` in one sweep: returns ``(y, s)``.

    As `add_layer_norm`, with RMSNorm (eps None means ``finfo(x.dtype).eps``).

    Examples
    --------
    >>> import numpy as np, fastln
    >>> y, s = fastln.add_rms_norm(np.array([[1.0, 2.0]]), np.array([[2.0, 2.0]]), 2, eps=0.0)
    >>> s, y
    (array([[3., 4.]]), array([[0.84852814, 1.13137085]]))
    """
    return _fused_forward(x, residual, normalized_shape, weight, None, eps, out, sum_out,
                          True)[:2]


def add_rms_norm_forward(x, residual, normalized_shape, weight=None, eps=None, *, out=None,
                         sum_out=None):
    """`add_rms_norm` that also returns rstd of s: ``(y, s, rstd)``."""
    y, s, _, rstd = _fused_forward(x, residual, normalized_shape, weight, None, eps, out,
                                   sum_out, True)
    return y, s, rstd


def add_rms_norm_backward(dy, s, rstd, weight=None, dsum=None):
    """Gradients of `add_rms_norm`: ``(ds, dweight)``, ds being the gradient of the sum (of x
    and of residual) including the incoming `dsum` when given."""
    ds, dweight, _ = _backward(dy, s, None, rstd, weight, dsum, rms=True, fused=True)
    return ds, dweight
