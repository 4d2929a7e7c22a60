# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: language_level=3
"""CPU backend: splits rows into blocks and runs the C row kernels of _rows.h over them.

This is the only module that knows about threads. Its callers (fastln._ops) hand it C-contiguous
2-d arrays of one dtype (float32 or float64) with matching shapes; nothing here checks again.
"""

import os
import warnings

cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from fastln._openmp cimport FASTLN_OPENMP, omp_get_max_threads

cnp.import_array()

cdef extern from "_rows.h" nogil:
    ctypedef void (*fwd_f32_t)(const float *, const float *, const float *, float *, float *,
                               float *, Py_ssize_t, Py_ssize_t, double, int) noexcept nogil
    ctypedef void (*fwd_f64_t)(const double *, const double *, const double *, double *,
                               double *, double *, Py_ssize_t, Py_ssize_t, double,
                               int) noexcept nogil
    ctypedef void (*bwd_f32_t)(const float *, const float *, const float *, const float *,
                               const float *, float *, double *, double *, Py_ssize_t,
                               Py_ssize_t, int) noexcept nogil
    ctypedef void (*bwd_f64_t)(const double *, const double *, const double *, const double *,
                               const double *, double *, double *, double *, Py_ssize_t,
                               Py_ssize_t, int) noexcept nogil
    ctypedef void (*sum_f32_t)(double *, Py_ssize_t, Py_ssize_t, float *) noexcept nogil
    ctypedef void (*sum_f64_t)(double *, Py_ssize_t, Py_ssize_t, double *) noexcept nogil
    ctypedef struct fastln_kernels:
        const char *name
        fwd_f32_t ln_fwd_f32
        fwd_f64_t ln_fwd_f64
        bwd_f32_t ln_bwd_f32
        bwd_f64_t ln_bwd_f64
        sum_f32_t sum_blocks_f32
        sum_f64_t sum_blocks_f64
    const fastln_kernels fastln_paths[]
    int FASTLN_NPATHS
    int fastln_path_supported(int i)
    const fastln_kernels *fastln_current
    const char *FASTLN_BUILD_FLAGS

cdef extern from *:
    """
    #if defined(__clang__)
    #define FASTLN_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define FASTLN_COMPILER "gcc " __VERSION__
    #elif defined(_MSC_VER)
    #define FASTLN_COMPILER "msvc"
    #else
    #define FASTLN_COMPILER "unknown"
    #endif
    """
    const char *FASTLN_COMPILER

# Below this many elements a call runs on one thread: starting a parallel region costs
# microseconds, more than normalizing a few rows.
cdef Py_ssize_t MIN_PARALLEL_ELEMS = 32768
# Rows are split into a multiple of 8 blocks of about this many elements (see _block_rows).
cdef Py_ssize_t BLOCK_ELEMS = 16384
# The backward keeps one row of dweight/dbias partials per block, so it uses fewer, larger
# blocks than the forward and caps their number.
cdef Py_ssize_t MAX_BWD_BLOCKS = 64
cdef Py_ssize_t BWD_BLOCK_ELEMS = 65536
# Outputs this large are written with non-temporal stores: they would not stay in the cache
# anyway, and a plain store first reads every line it writes.
cdef Py_ssize_t STREAM_BYTES = 16 << 20

cdef int _requested_threads = 0


# ---------------------------------------------------------------------------------------------
# threads

def set_num_threads(n):
    """Use `n` threads in every later call; ``None`` goes back to OpenMP's default."""
    global _requested_threads
    _requested_threads = 0 if n is None else n


def get_num_threads():
    """The number of threads a large call will use."""
    return _num_threads()


def min_parallel_elements(n=None):
    """Return the size (elements) below which a call runs on one thread; set it when `n` is
    given. For measuring that threshold and for tests; returns the previous value."""
    global MIN_PARALLEL_ELEMS
    previous = MIN_PARALLEL_ELEMS
    if n is not None:
        MIN_PARALLEL_ELEMS = n
    return previous


def requested_num_threads():
    """The count given to `set_num_threads`, or None when OpenMP's default applies."""
    return _requested_threads if _requested_threads > 0 else None


cdef int _num_threads() noexcept:
    if not FASTLN_OPENMP:
        return 1
    if _requested_threads > 0:
        return _requested_threads
    return omp_get_max_threads()


cdef int _threads_for(Py_ssize_t elems, Py_ssize_t nblocks) noexcept:
    if elems < MIN_PARALLEL_ELEMS or nblocks < 2:
        return 1
    return <int>min(<Py_ssize_t>_num_threads(), nblocks)


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef Py_ssize_t _block_rows(Py_ssize_t rows, Py_ssize_t n, Py_ssize_t elems,
                            Py_ssize_t max_blocks) noexcept nogil:
    """Rows per block: a multiple of 8 blocks of about `elems` elements (at most `max_blocks`),
    so 2, 4 or 8 threads get even shares. It depends on the shape alone, never on threads."""
    cdef Py_ssize_t want = max(1, min(max_blocks, 8 * _ceil_div(rows * n, 8 * elems)))
    return max(1, _ceil_div(rows, want))


# ---------------------------------------------------------------------------------------------
# SIMD paths

def simd_paths():
    """Names of the compiled kernel paths this CPU can run, narrowest first."""
    return [fastln_paths[i].name.decode() for i in range(FASTLN_NPATHS)
            if fastln_path_supported(i)]


def simd_path():
    """Name of the kernel path in use."""
    return fastln_current.name.decode()


def use_simd_path(name):
    """Switch to the named path (one of `simd_paths()`); returns the previous name."""
    global fastln_current
    previous = simd_path()
    for i in range(FASTLN_NPATHS):
        if fastln_paths[i].name.decode() == name:
            if not fastln_path_supported(i):
                raise ValueError(f"this CPU cannot run the {name!r} kernels")
            fastln_current = &fastln_paths[i]
            return previous
    raise ValueError(f"unknown SIMD path {name!r}; expected one of {simd_paths()}")


cdef void _select_simd_path(str forced):
    """The widest path the CPU runs, or the widest not wider than `forced` (FASTLN_SIMD)."""
    global fastln_current
    names = [fastln_paths[i].name.decode() for i in range(FASTLN_NPATHS)]
    limit = FASTLN_NPATHS - 1
    if forced:
        if forced in names:
            limit = names.index(forced)
        else:
            warnings.warn(f"FASTLN_SIMD={forced!r} is not one of {names}; ignoring it",
                          RuntimeWarning, stacklevel=2)
    for i in range(limit, -1, -1):
        if fastln_path_supported(i):
            fastln_current = &fastln_paths[i]
            return


_select_simd_path(os.environ.get("FASTLN_SIMD", "").strip().lower())


def build_info():
    """How this extension was built: OpenMP, compiler and flags."""
    return {
        "openmp": bool(FASTLN_OPENMP),
        "compiler": FASTLN_COMPILER.decode(),
        "flags": FASTLN_BUILD_FLAGS.decode(),
        "compiled_paths": [fastln_paths[i].name.decode() for i in range(FASTLN_NPATHS)],
    }


# ---------------------------------------------------------------------------------------------
# kernels

cdef inline char *_data(object a):
    return NULL if a is None else <char *>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef void _fwd_rows(bint f64, char *x, char *w, char *b, char *y, char *mean, char *rstd,
                    Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n, double eps,
                    bint stream) noexcept nogil:
    """Forward of rows [r0, r1); `stream`: write y with non-temporal stores."""
    cdef Py_ssize_t size = 8 if f64 else 4
    cdef Py_ssize_t off = r0 * n * size
    if mean != NULL:
        mean = mean + r0 * size
        rstd = rstd + r0 * size
    if f64:
        fastln_current.ln_fwd_f64(<double *>(x + off), <double *>w, <double *>b,
                                  <double *>(y + off), <double *>mean, <double *>rstd,
                                  r1 - r0, n, eps, stream)
    else:
        fastln_current.ln_fwd_f32(<float *>(x + off), <float *>w, <float *>b,
                                  <float *>(y + off), <float *>mean, <float *>rstd,
                                  r1 - r0, n, eps, stream)


def layer_norm_forward(cnp.ndarray x, cnp.ndarray w, cnp.ndarray b, cnp.ndarray y,
                       object mean, object rstd, double eps):
    """y[:] = layer norm of the rows of x; mean[:] and rstd[:] too unless they are None.

    A row is w.size consecutive elements. x, y: (*, *w.shape); w, b: n = w.size >= 1 elements;
    mean, rstd: (*) or None; all C-contiguous, one dtype. Any shapes with those sizes work, so
    callers never need a reshaped view.
    """
    cdef Py_ssize_t n = cnp.PyArray_SIZE(w), rows = cnp.PyArray_SIZE(x) // n
    cdef bint f64 = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT64
    cdef char *xp = _data(x)                      # IN
    cdef char *wp = _data(w)                      # IN
    cdef char *bp = _data(b)                      # IN
    cdef char *yp = _data(y)                      # OUT (may be xp)
    cdef char *mp = _data(mean)                   # OUT, optional
    cdef char *rp = _data(rstd)                   # OUT, optional
    cdef Py_ssize_t block = _block_rows(rows, n, BLOCK_ELEMS, max(rows, 1))
    cdef Py_ssize_t nblocks = _ceil_div(rows, block)
    cdef int nthreads = _threads_for(rows * n, nblocks)
    cdef bint stream = rows * n * cnp.PyArray_ITEMSIZE(x) >= STREAM_BYTES
    cdef Py_ssize_t blk
    with nogil:
        if nthreads == 1:
            _fwd_rows(f64, xp, wp, bp, yp, mp, rp, 0, rows, n, eps, stream)
        else:
            for blk in prange(nblocks, num_threads=nthreads, schedule="static"):
                _fwd_rows(f64, xp, wp, bp, yp, mp, rp, blk * block,
                          min(rows, (blk + 1) * block), n, eps, stream)


cdef void _bwd_block(bint f64, char *dy, char *x, char *mean, char *rstd, char *w, char *dx,
                     double *parts, Py_ssize_t blk, Py_ssize_t nblocks, Py_ssize_t block,
                     Py_ssize_t rows, Py_ssize_t n, bint stream) noexcept nogil:
    """Backward of block `blk`: its dx rows, and its dweight/dbias partials in `parts`."""
    cdef Py_ssize_t size = 8 if f64 else 4
    cdef Py_ssize_t r0 = blk * block
    cdef Py_ssize_t nr = min(rows, r0 + block) - r0
    cdef Py_ssize_t off = r0 * n * size
    cdef double *dw_part = parts + blk * n
    cdef double *db_part = parts + (nblocks + blk) * n
    if f64:
        fastln_current.ln_bwd_f64(<double *>(dy + off), <double *>(x + off),
                                  <double *>(mean + r0 * size), <double *>(rstd + r0 * size),
                                  <double *>w, <double *>(dx + off), dw_part, db_part, nr, n,
                                  stream)
    else:
        fastln_current.ln_bwd_f32(<float *>(dy + off), <float *>(x + off),
                                  <float *>(mean + r0 * size), <float *>(rstd + r0 * size),
                                  <float *>w, <float *>(dx + off), dw_part, db_part, nr, n,
                                  stream)


cdef void _sum_blocks(bint f64, double *parts, Py_ssize_t nblocks, Py_ssize_t n,
                      char *out) noexcept nogil:
    if f64:
        fastln_current.sum_blocks_f64(parts, nblocks, n, <double *>out)
    else:
        fastln_current.sum_blocks_f32(parts, nblocks, n, <float *>out)


def layer_norm_backward(cnp.ndarray dy, cnp.ndarray x, cnp.ndarray mean, cnp.ndarray rstd,
                        cnp.ndarray w, cnp.ndarray dx, object dw, cnp.ndarray db):
    """dx[:], dw[:] (unless None) and db[:] of layer norm, in one fused sweep per block.

    A row is w.size consecutive elements. dy, x, dx: (*, *w.shape); mean, rstd: (*); w, dw, db:
    n = w.size >= 1 elements; C-contiguous, one dtype.
    Blocks depend on (rows, n) only and their partials are summed in block order, so the result
    is the same for any number of threads.
    """
    cdef Py_ssize_t n = cnp.PyArray_SIZE(w), rows = cnp.PyArray_SIZE(x) // n
    cdef bint f64 = cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT64
    cdef char *dyp = _data(dy)                    # IN
    cdef char *xp = _data(x)                      # IN
    cdef char *mp = _data(mean)                   # IN
    cdef char *rp = _data(rstd)                   # IN
    cdef char *wp = _data(w)                      # IN
    cdef char *dxp = _data(dx)                    # OUT
    cdef char *dwp = _data(dw)                    # OUT, optional
    cdef char *dbp = _data(db)                    # OUT
    cdef Py_ssize_t block = _block_rows(rows, n, BWD_BLOCK_ELEMS, MAX_BWD_BLOCKS)
    cdef Py_ssize_t nblocks = _ceil_div(rows, block)
    cdef int nthreads = _threads_for(rows * n, nblocks)
    cdef Py_ssize_t blk
    cdef double *parts
    cdef bint stream = rows * n * cnp.PyArray_ITEMSIZE(x) >= STREAM_BYTES
    if rows == 0:
        memset(dbp, 0, n * cnp.PyArray_ITEMSIZE(db))
        if dwp != NULL:
            memset(dwp, 0, n * cnp.PyArray_ITEMSIZE(db))
        return
    parts = <double *>malloc(2 * nblocks * n * sizeof(double))
    if parts == NULL:
        raise MemoryError(f"cannot allocate {2 * nblocks * n * 8} bytes of partial sums")
    try:
        with nogil:
            if nthreads == 1:
                for blk in range(nblocks):
                    _bwd_block(f64, dyp, xp, mp, rp, wp, dxp, parts, blk, nblocks, block,
                               rows, n, stream)
            else:
                for blk in prange(nblocks, num_threads=nthreads, schedule="static"):
                    _bwd_block(f64, dyp, xp, mp, rp, wp, dxp, parts, blk, nblocks, block,
                               rows, n, stream)
            if dwp != NULL:
                _sum_blocks(f64, parts, nblocks, n, dwp)
            _sum_blocks(f64, parts + nblocks * n, nblocks, n, dbp)
    finally:
        free(parts)


# ---------------------------------------------------------------------------------------------
# for the fast path of fastln._ops: memory layout and allocation in C
#
# On a row or a few the kernel takes well under a microsecond, while NumPy's reshape, .flags and
# __array_interface__ cost 0.1 to 1.4 us each from Python; these do the same work in C.

def plain(*arrays):
    """True if every argument is an ndarray the kernels can read as it is: C-contiguous, aligned."""
    for a in arrays:
        if not (isinstance(a, cnp.ndarray) and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
                and cnp.PyArray_ISALIGNED(<cnp.ndarray>a)):
            return False
    return True


cdef bint _byte_bounds(cnp.ndarray a, char **lo, char **hi) noexcept:
    """[lo, hi) spans every byte of `a`; False when `a` has no elements."""
    cdef int i
    cdef Py_ssize_t extent
    if cnp.PyArray_SIZE(a) == 0:
        return False
    lo[0] = hi[0] = <char *>cnp.PyArray_DATA(a)
    for i in range(cnp.PyArray_NDIM(a)):
        extent = (cnp.PyArray_DIM(a, i) - 1) * cnp.PyArray_STRIDE(a, i)
        if extent < 0:
            lo[0] += extent
        else:
            hi[0] += extent
    hi[0] += cnp.PyArray_ITEMSIZE(a)
    return True


cdef int _overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    cdef char *alo
    cdef char *ahi
    cdef char *blo
    cdef char *bhi
    if not (_byte_bounds(a, &alo, &ahi) and _byte_bounds(b, &blo, &bhi)):
        return 0
    if ahi <= blo or bhi <= alo:
        return 0
    return 1 if alo == blo and ahi == bhi else 2


def overlap(cnp.ndarray a, cnp.ndarray b):
    """0 if a's and b's bytes lie apart, 1 if they span the same range, 2 if they meet otherwise.

    Bounds only, like numpy.may_share_memory: interleaved views of one buffer count as meeting.
    """
    return _overlap(a, b)


def can_write(cnp.ndarray out, cnp.ndarray x, *inputs):
    """True if a kernel reading x and `inputs` may write its result for x into `out` as it is.

    That is: out has x's shape and dtype, is C-contiguous, aligned and writeable, and its bytes
    are either exactly x's (the kernels work in place) or apart from x's, and apart from every
    input's.
    """
    cdef int i
    if not (cnp.PyArray_NDIM(out) == cnp.PyArray_NDIM(x)
            and cnp.PyArray_EquivArrTypes(out, x)
            and cnp.PyArray_IS_C_CONTIGUOUS(out) and cnp.PyArray_ISALIGNED(out)
            and cnp.PyArray_ISWRITEABLE(out)):
        return False
    for i in range(cnp.PyArray_NDIM(x)):
        if cnp.PyArray_DIM(out, i) != cnp.PyArray_DIM(x, i):
            return False
    if _overlap(out, x) == 2:
        return False
    for a in inputs:
        if _overlap(out, <cnp.ndarray?>a):
            return False
    return True


def empty(cnp.ndarray a, int start, int stop):
    """A new C-contiguous array of a's dtype and shape ``a.shape[start:stop]``, contents unset.

    numpy.empty(a.shape[start:stop], a.dtype) without the Python-level shape and dtype parsing,
    which costs more than the forward kernel on a row of 768.
    """
    if not 0 <= start <= stop <= cnp.PyArray_NDIM(a):
        raise ValueError(f"dims [{start}:{stop}] of a {cnp.PyArray_NDIM(a)}-d array")
    return cnp.PyArray_EMPTY(stop - start, cnp.PyArray_DIMS(a) + start, cnp.PyArray_TYPE(a), 0)
