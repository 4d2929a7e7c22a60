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
from libc.stdint cimport uint16_t
from libc.stdlib cimport calloc, free
from libc.math cimport INFINITY
from libc.string cimport memset
from cpython.ref cimport Py_INCREF

from fastln._openmp cimport FASTLN_OPENMP, omp_get_max_threads

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyTypeObject:
        pass
    PyTypeObject PyArray_Type
    # Steals a reference to descr.
    object PyArray_NewFromDescr(PyTypeObject *subtype, void *descr, int nd, cnp.npy_intp *dims,
                                cnp.npy_intp *strides, void *data, int flags, object obj)

cdef extern from "_rows.h" nogil:
    ctypedef void (*fwd_f32_t)(const float *, const float *, const float *, const float *,
                               float *, float *, float *, float *, Py_ssize_t, Py_ssize_t,
                               double, int) noexcept nogil
    ctypedef void (*fwd_f64_t)(const double *, const double *, const double *, const double *,
                               double *, double *, double *, double *, Py_ssize_t, Py_ssize_t,
                               double, int) noexcept nogil
    ctypedef void (*bwd_f32_t)(const float *, const float *, const float *, const float *,
                               const float *, const float *, float *, double *, double *,
                               Py_ssize_t, Py_ssize_t, int) noexcept nogil
    ctypedef void (*bwd_f64_t)(const double *, const double *, const double *, const double *,
                               const double *, const double *, double *, double *, double *,
                               Py_ssize_t, Py_ssize_t, int) noexcept nogil
    ctypedef void (*sum_f32_t)(double *, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                               float *) noexcept nogil
    ctypedef void (*sum_f64_t)(double *, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                               double *) noexcept nogil
    ctypedef void (*fastln_fwd_half)(const uint16_t *, const uint16_t *, const float *, const float *,
                                uint16_t *, uint16_t *, float *, float *, Py_ssize_t,
                                Py_ssize_t, double, int) noexcept nogil
    ctypedef void (*fastln_bwd_half)(const uint16_t *, const uint16_t *, const float *,
                                const float *, const float *, const uint16_t *, uint16_t *,
                                double *, double *, Py_ssize_t, Py_ssize_t, int) noexcept nogil
    ctypedef struct fastln_kernels:
        const char *name
        fwd_f32_t norm_fwd_f32
        fwd_f64_t norm_fwd_f64
        fastln_fwd_half norm_fwd_f16
        fastln_fwd_half norm_fwd_bf16
        bwd_f32_t norm_bwd_f32
        bwd_f64_t norm_bwd_f64
        fastln_bwd_half norm_bwd_f16
        fastln_bwd_half norm_bwd_bf16
        sum_f32_t sum_blocks_f32
        sum_f64_t sum_blocks_f64
    const fastln_kernels fastln_paths[]
    int FASTLN_NPATHS
    int fastln_path_supported(int i)
    const fastln_kernels *fastln_current
    const char *FASTLN_BUILD_FLAGS
    int FASTLN_STREAM
    int FASTLN_RMS
    int FASTLN_IN_L2
    int FASTLN_FETCH

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
# blocks than the forward and caps their number (see _bwd_block_rows).
cdef Py_ssize_t MAX_BWD_BLOCKS = 64
cdef Py_ssize_t BWD_BLOCK_ELEMS = 65536
# Long rows take fewer, down to 8, so that their partials (16 bytes per column and block) stay
# within BWD_PARTIAL_BYTES: 64 blocks of rows of 8192 zeroed, filled and summed 8 MiB of them.
# Zen 3, two threads, against 64 blocks: float32 1024 x 8192 (8 blocks) took 0.7-0.77x the
# time, float16 0.65-0.7x, float32 256 x 16384 0.4-0.5x, float16 4096 x 4096 (16 blocks)
# 0.8-0.92x; float32 4096 x 4096 (16) and 8192 x 2048 (32) 0.85-1.15x, as 16384 x 1024, which
# did not change.
cdef Py_ssize_t BWD_PARTIAL_BYTES = 1 << 20
# Calls whose arrays (inputs and outputs, per-row statistics aside) add up to this many bytes
# write their outputs with non-temporal stores and fetch their inputs ahead (FASTLN_STREAM): the
# data would not stay in the cache anyway, and a plain store first reads every line it writes.
# A forward qualifies from 32 MiB (x and y of 16 MiB; with the residual add, four arrays of
# 8 MiB), the backward from 16 MiB (dy, x and dx of 5.3 MiB). Measured on Zen 5 (32 MiB L3), one
# thread: the add's forward at 2048 x 1024 float32 (32 MiB) took 0.57x the time streamed, the
# backward 0.63x at 1536 x 1024 (18 MiB) and 0.5x at 2048 x 1024; the plain forward at
# 2048 x 1024 gained nothing.
cdef Py_ssize_t FWD_STREAM_BYTES = 32 << 20
cdef Py_ssize_t BWD_STREAM_BYTES = 16 << 20
# A forward without the residual add qualifies from 20 MiB (x and y of 10 MiB) in float32 and
# float64. 16-bit data fetches its input ahead from there (FASTLN_FETCH) but streams only from
# 32 MiB. Zen 3 (32 MiB L3 shared with other work), two threads, C harness, against neither:
# float32 4096 x 768 (24 MiB) took 0.63x the time streamed (0.81x fetched only; 0.87x from
# Python), 2560 x 1024 (20 MiB) 0.77x, 2048 x 1024 (16 MiB) 0.9-1.05x; float16 8192 x 768
# fetched 0.88x, 3072 x 2048 0.96x (1.28x streamed, rows of 4 KiB), 2048 x 2048 the same
# (1.5x streamed). The residual add's forward at 16-24 MiB took 0.85-1.45x the time streamed,
# so it keeps 32 MiB.
cdef Py_ssize_t FWD_FETCH_BYTES = 20 << 20
# Forward calls whose arrays fit in the L2 caches of the threads that run them, at L2_BYTES
# each (Zen 5's 1 MiB), write each row in pieces between the blocks of the next row's
# statistics (FASTLN_IN_L2; see norm_fwd in _rows_impl.h). Whether a call qualifies depends on
# the thread count; the results do not.
cdef Py_ssize_t L2_BYTES = 1 << 20

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
    so 2, 4 or 8 threads get even shares; one block for calls too small to run on more than one
    thread (the backward's partial sums are then one row, not eight). It depends on the shape
    alone, never on threads."""
    if rows * n < MIN_PARALLEL_ELEMS:
        return max(1, rows)
    cdef Py_ssize_t want = max(1, min(max_blocks, 8 * _ceil_div(rows * n, 8 * elems)))
    return max(1, _ceil_div(rows, want))


cdef Py_ssize_t _bwd_block_rows(Py_ssize_t rows, Py_ssize_t n) noexcept nogil:
    """Rows per block of the backward: as _block_rows, with at most MAX_BWD_BLOCKS blocks and
    no more than 8 beyond BWD_PARTIAL_BYTES of partials, but 1, 2 or 4 blocks where 8 would hold
    fewer than MIN_PARALLEL_ELEMS / 2 elements each. Each block zeroes, fills and hands back a
    row of dweight and dbias partials; at 32 x 1024 float32, one thread, blocks of 4 rows took
    1.5x the time of one block, blocks of 16 rows the same as one."""
    cdef Py_ssize_t most = min(MAX_BWD_BLOCKS, BWD_PARTIAL_BYTES // (16 * max(1, n))) // 8 * 8
    cdef Py_ssize_t block = _block_rows(rows, n, BWD_BLOCK_ELEMS, max(8, most))
    cdef Py_ssize_t nblocks = _ceil_div(rows, block)
    cdef Py_ssize_t fit = rows * n // max(1, MIN_PARALLEL_ELEMS // 2)
    if nblocks <= fit:
        return block
    nblocks = 4 if fit >= 4 else 2 if fit >= 2 else 1
    return _ceil_div(rows, nblocks)


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


# The data kinds the kernels take (fastln._ops passes one). float16 and bfloat16 data is widened
# to float32 as the kernels load it and rounded as they store it; its weight, bias, statistics
# and weight gradients are float32.
cdef enum:
    KIND_F32 = 0
    KIND_F64 = 1
    KIND_F16 = 2
    KIND_BF16 = 3
KINDS = {"float32": KIND_F32, "float64": KIND_F64, "float16": KIND_F16, "bfloat16": KIND_BF16}


cdef inline Py_ssize_t _itemsize(int kind) noexcept nogil:
    return 8 if kind == KIND_F64 else 4 if kind == KIND_F32 else 2


cdef inline char *_at(char *p, Py_ssize_t offset) noexcept nogil:
    return NULL if p == NULL else p + offset


cdef struct FwdArgs:
    int kind
    int flags
    char *x
    char *r
    char *w
    char *b
    char *s
    char *y
    char *mean
    char *rstd
    Py_ssize_t n
    double eps


cdef void _fwd_rows(const FwdArgs *a, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Forward of rows [r0, r1)."""
    cdef Py_ssize_t n = a.n
    cdef Py_ssize_t off = r0 * n * _itemsize(a.kind), stat = r0 * (8 if a.kind == KIND_F64 else 4)
    cdef fastln_fwd_half half
    if a.kind == KIND_F64:
        fastln_current.norm_fwd_f64(<double *>(a.x + off), <double *>_at(a.r, off),
                                    <double *>a.w, <double *>a.b, <double *>_at(a.s, off),
                                    <double *>(a.y + off), <double *>_at(a.mean, stat),
                                    <double *>_at(a.rstd, stat), r1 - r0, n, a.eps, a.flags)
    elif a.kind == KIND_F32:
        fastln_current.norm_fwd_f32(<float *>(a.x + off), <float *>_at(a.r, off),
                                    <float *>a.w, <float *>a.b, <float *>_at(a.s, off),
                                    <float *>(a.y + off), <float *>_at(a.mean, stat),
                                    <float *>_at(a.rstd, stat), r1 - r0, n, a.eps, a.flags)
    else:
        half = fastln_current.norm_fwd_f16 if a.kind == KIND_F16 else fastln_current.norm_fwd_bf16
        half(<uint16_t *>(a.x + off), <uint16_t *>_at(a.r, off), <float *>a.w, <float *>a.b,
             <uint16_t *>_at(a.s, off), <uint16_t *>(a.y + off), <float *>_at(a.mean, stat),
             <float *>_at(a.rstd, stat), r1 - r0, n, a.eps, a.flags)


cpdef norm_forward(int kind, cnp.ndarray x, object r, cnp.ndarray w, object b, object s,
                 cnp.ndarray y, object mean, object rstd, double eps, bint rms):
    """y[:] = layer norm (RMS norm if `rms`) of the rows of x, or of s = x + r when r is given,
    writing s[:] too; mean[:] (LayerNorm) and rstd[:] too unless they are None.

    A row is w.size consecutive elements. x, r, s, y: (*, *w.shape) of the data kind; w, b:
    n = w.size >= 1 elements (b None for RMSNorm); mean, rstd: (*) or None; w, b, mean and rstd
    float32 for 16-bit data, else of the data's dtype; all C-contiguous. Any shapes with those
    sizes work, so callers never need a reshaped view.
    """
    cdef FwdArgs a
    cdef Py_ssize_t n = cnp.PyArray_SIZE(w), rows = cnp.PyArray_SIZE(x) // n
    a.kind = kind
    a.n = n
    a.eps = eps
    a.x = _data(x)                         # IN
    a.r = _data(r)                         # IN, optional
    a.w = _data(w)                         # IN
    a.b = _data(b)                         # IN (LayerNorm)
    a.s = _data(s)                         # OUT with r (may be x or r)
    a.y = _data(y)                         # OUT (may be x or r)
    a.mean = _data(mean)                   # OUT, optional
    a.rstd = _data(rstd)                   # OUT, optional
    cdef Py_ssize_t block = _block_rows(rows, n, BLOCK_ELEMS, max(rows, 1))
    cdef Py_ssize_t nblocks = _ceil_div(rows, block)
    cdef int nthreads = _threads_for(rows * n, nblocks)
    cdef Py_ssize_t nbytes = rows * n * _itemsize(kind) * (2 if r is None else 4)
    a.flags = FASTLN_RMS if rms else 0
    cdef bint fetch = r is None and nbytes >= FWD_FETCH_BYTES    # see FWD_FETCH_BYTES
    if nbytes >= FWD_STREAM_BYTES or (fetch and _itemsize(kind) >= 4):
        a.flags |= FASTLN_STREAM
    elif fetch:
        a.flags |= FASTLN_FETCH
    elif nbytes <= L2_BYTES * nthreads:
        a.flags |= FASTLN_IN_L2
    cdef Py_ssize_t blk
    with nogil:
        if nthreads == 1:
            _fwd_rows(&a, 0, rows)
        else:
            for blk in prange(nblocks, num_threads=nthreads, schedule="static"):
                _fwd_rows(&a, blk * block, min(rows, (blk + 1) * block))


cdef struct BwdArgs:
    int kind
    int flags
    char *dy
    char *x
    char *mean
    char *rstd
    char *w
    char *ds
    char *dx
    double *parts                  # block b: dweight partials at parts + 2*b*ld, dbias at + ld
    Py_ssize_t ld
    Py_ssize_t n
    Py_ssize_t rows
    Py_ssize_t block
    Py_ssize_t nblocks


cdef void _bwd_block(const BwdArgs *a, Py_ssize_t blk) noexcept nogil:
    """Backward of block `blk`: its dx rows, and its dweight/dbias partials in `parts`."""
    cdef Py_ssize_t n = a.n
    cdef Py_ssize_t r0 = blk * a.block
    cdef Py_ssize_t r1 = min(a.rows, r0 + a.block)
    cdef Py_ssize_t off = r0 * n * _itemsize(a.kind), stat = r0 * (8 if a.kind == KIND_F64 else 4)
    cdef double *dw_part = a.parts + 2 * blk * a.ld
    cdef double *db_part = dw_part + a.ld
    cdef fastln_bwd_half half
    if a.kind == KIND_F64:
        fastln_current.norm_bwd_f64(<double *>(a.dy + off), <double *>(a.x + off),
                                    <double *>_at(a.mean, stat), <double *>(a.rstd + stat),
                                    <double *>a.w, <double *>_at(a.ds, off),
                                    <double *>(a.dx + off), dw_part, db_part, r1 - r0, n,
                                    a.flags)
    elif a.kind == KIND_F32:
        fastln_current.norm_bwd_f32(<float *>(a.dy + off), <float *>(a.x + off),
                                    <float *>_at(a.mean, stat), <float *>(a.rstd + stat),
                                    <float *>a.w, <float *>_at(a.ds, off),
                                    <float *>(a.dx + off), dw_part, db_part, r1 - r0, n,
                                    a.flags)
    else:
        half = fastln_current.norm_bwd_f16 if a.kind == KIND_F16 else fastln_current.norm_bwd_bf16
        half(<uint16_t *>(a.dy + off), <uint16_t *>(a.x + off), <float *>_at(a.mean, stat),
             <float *>(a.rstd + stat), <float *>a.w, <uint16_t *>_at(a.ds, off),
             <uint16_t *>(a.dx + off), dw_part, db_part, r1 - r0, n, a.flags)


cdef void _sum_blocks(int kind, double *parts, Py_ssize_t nblocks, Py_ssize_t n,
                      Py_ssize_t stride, char *out) noexcept nogil:
    if kind == KIND_F64:
        fastln_current.sum_blocks_f64(parts, nblocks, n, stride, <double *>out)
    else:
        fastln_current.sum_blocks_f32(parts, nblocks, n, stride, <float *>out)


cdef double *_partials(BwdArgs *a, double **raw, Py_ssize_t *nbytes) noexcept nogil:
    """Zeroed dweight and dbias partial rows for every block of `a`, in *raw of *nbytes bytes
    (a.ld is set; free *raw).

    float32 and float64 rows of a multiple of 64 bytes, and 16-bit ones of 32 that stream,
    start the kernel's second sweep at the column `head` where dy (dx when it streams) is
    aligned to the vectors it stores, 64 bytes (32 for 16-bit data; half that on narrower paths,
    which that also covers; see norm_bwd). Each partial row is placed so that its column
    `head` is 64-byte aligned too: 512-bit loads and stores of partials across two cache lines
    took about 1.15x the time of the whole float32 backward (Zen 5, rows of 1024). A block's
    dbias row starts ld doubles after its dweight row, never a multiple of 4 KiB, so that a
    store to one does not look like one to the other to the CPU's store-to-load check.
    """
    cdef Py_ssize_t size = _itemsize(a.kind), n = a.n, head = 0
    cdef char *anchor = a.dx if a.flags & FASTLN_STREAM else a.dy
    cdef Py_ssize_t vec = 64 if size >= 4 else 32
    if (n * size) % vec == 0 and (size >= 4 or a.flags & FASTLN_STREAM):
        head = ((vec - <size_t>anchor % vec) % vec) // size
    a.ld = _ceil_div(n, 8) * 8 + 8
    if (a.ld * 8) % 4096 == 0:
        a.ld += 8
    nbytes[0] = (2 * a.nblocks * a.ld + 8) * sizeof(double)
    raw[0] = <double *>calloc(nbytes[0], 1)
    if raw[0] == NULL:
        return NULL
    cdef double *base = <double *>(<size_t>raw[0] + (64 - <size_t>raw[0] % 64) % 64)
    return base + (8 - head % 8) % 8


cpdef norm_backward(int kind, cnp.ndarray dy, cnp.ndarray x, object mean, cnp.ndarray rstd,
                  cnp.ndarray w, object ds, cnp.ndarray dx, object dw, object db, bint rms):
    """dx[:], dw[:] and db[:] (each unless None) of layer norm (RMS norm if `rms`), in one fused
    sweep per block; dx also gets `ds` added (the fused add's incoming gradient) when given.

    A row is w.size consecutive elements. dy, x, ds, dx: (*, *w.shape) of the data kind;
    mean (LayerNorm; None for RMSNorm), rstd: (*); w, dw, db: n = w.size >= 1 elements; w, mean,
    rstd, dw and db are float32 for 16-bit data, else of the data's dtype; all C-contiguous.
    Blocks depend on (rows, n) only and their partials are summed in block order, so the result
    is the same for any number of threads.
    """
    cdef BwdArgs a
    cdef Py_ssize_t n = cnp.PyArray_SIZE(w), rows = cnp.PyArray_SIZE(x) // n
    cdef char *dwp = _data(dw)                    # OUT, optional
    cdef char *dbp = _data(db)                    # OUT, optional
    cdef Py_ssize_t stat_size = 8 if kind == KIND_F64 else 4
    a.kind = kind
    a.n = n
    a.rows = rows
    a.dy = _data(dy)                              # IN
    a.x = _data(x)                                # IN
    a.mean = _data(mean)                          # IN (LayerNorm)
    a.rstd = _data(rstd)                          # IN
    a.w = _data(w)                                # IN
    a.ds = _data(ds)                              # IN, optional
    a.dx = _data(dx)                              # OUT
    a.flags = FASTLN_RMS if rms else 0
    if rows * n * _itemsize(kind) * (3 if ds is None else 4) >= BWD_STREAM_BYTES:
        a.flags |= FASTLN_STREAM
    a.block = _bwd_block_rows(rows, n)
    a.nblocks = _ceil_div(rows, a.block)
    cdef int nthreads = _threads_for(rows * n, a.nblocks)
    cdef Py_ssize_t blk
    if rows == 0:
        if dwp != NULL:
            memset(dwp, 0, n * stat_size)
        if dbp != NULL:
            memset(dbp, 0, n * stat_size)
        return
    cdef double *raw = NULL
    cdef Py_ssize_t raw_bytes = 0
    a.parts = _partials(&a, &raw, &raw_bytes)
    if a.parts == NULL:
        raise MemoryError(f"cannot allocate {raw_bytes} bytes of partial sums")
    try:
        with nogil:
            if nthreads == 1:
                for blk in range(a.nblocks):
                    _bwd_block(&a, blk)
            else:
                for blk in prange(a.nblocks, num_threads=nthreads, schedule="static"):
                    _bwd_block(&a, blk)
            if dwp != NULL:
                _sum_blocks(kind, a.parts, a.nblocks, n, 2 * a.ld, dwp)
            if dbp != NULL:
                _sum_blocks(kind, a.parts + a.ld, a.nblocks, n, 2 * a.ld, dbp)
    finally:
        free(raw)


# ---------------------------------------------------------------------------------------------
# for the fast path of fastln._ops: memory layout and allocation in C
#
# On a row or a few the kernel takes well under a microsecond, while NumPy's reshape, .flags and
# __array_interface__ cost 0.1 to 1.4 us each from Python; these do the same work in C.

def plain(*arrays):
    """True if every argument but None is an ndarray the kernels can read as it is:
    C-contiguous, aligned."""
    for a in arrays:
        if a is not None and not (isinstance(a, cnp.ndarray)
                                  and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
                                  and cnp.PyArray_ISALIGNED(<cnp.ndarray>a)):
            return False
    return True


# The fast path, for fastln._ops (see the comment there). plain_forward and plain_backward
# repeat in C the checks of the general path for input that needs no conversion: 0.28 us
# against 1.07 as Python (a row of 768), on calls whose kernel takes 0.4 us. forward and
# backward do the whole call for such input where nothing is left for fastln._ops to place or
# check.
# fastln._ops registers the dtypes they take, its cache of default weights, and the size from
# which it places outputs itself.
cdef tuple _fast_dtypes = ()          # ((data dtype, statistics dtype, kind, RMSNorm eps), ...)
cdef object _fast_constant = None     # (n, dtype, value) -> read-only vector of `value`
# Default weights and biases of up to this many bytes are kept for later calls (_fast_constant,
# an lru_cache), longer ones made afresh (its __wrapped__): a cache of rows of millions of values
# would hold their memory for good.
cdef Py_ssize_t _KEEP_CONSTANT_BYTES = 1 << 20
KEEP_CONSTANT_BYTES = _KEEP_CONSTANT_BYTES
cdef Py_ssize_t _fast_max_bytes = 0   # forward and backward make outputs of fewer bytes only


def set_fast_path(tuple dtypes, constant, Py_ssize_t max_bytes):
    """Registers what the fast path takes: `dtypes`, tuples (data dtype, dtype of its weight,
    bias and statistics, its kind in KINDS, RMSNorm's default eps for it), matched by identity;
    `constant(n, dtype, value)`, the weight or bias used when none is passed (a
    functools.lru_cache: vectors of more than KEEP_CONSTANT_BYTES come from the function it
    wraps, and are not kept); and `max_bytes`:
    forward and backward make outputs under this size only."""
    global _fast_dtypes, _fast_constant, _fast_max_bytes
    _fast_dtypes, _fast_constant, _fast_max_bytes = dtypes, constant, max_bytes


cdef tuple _fast_entry(cnp.ndarray x):
    """The entry registered for x's dtype; None if it has none."""
    cdef object dtype = <object>cnp.PyArray_DESCR(x)
    for entry in _fast_dtypes:
        if (<tuple>entry)[0] is dtype:
            return <tuple>entry
    return None


cdef inline bint _plain1(object a) noexcept:
    """a is an ndarray, not a subclass, that the kernels read as it is."""
    return (type(a) is cnp.ndarray and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISALIGNED(<cnp.ndarray>a))


cdef bint _dims_are(object a, cnp.ndarray x, int start, int stop) noexcept:
    """a (an ndarray) has the shape x.shape[start:stop]."""
    cdef int i
    if cnp.PyArray_NDIM(<cnp.ndarray>a) != stop - start:
        return False
    for i in range(start, stop):
        if cnp.PyArray_DIM(<cnp.ndarray>a, i - start) != cnp.PyArray_DIM(x, i):
            return False
    return True


cdef inline bint _same_dtype(object a, object dtype) noexcept:
    return <object>cnp.PyArray_DESCR(<cnp.ndarray>a) is dtype


cpdef object default_param(Py_ssize_t n, object dtype, int value, bint no_rows):
    """The weight (value 1) or bias (0) used when none is passed: a read-only vector of n
    `value`s of `dtype`. Vectors of up to KEEP_CONSTANT_BYTES are kept for later calls (the
    registered lru_cache), longer ones made for the call; for data with no rows (no_rows), whose
    kernels read no weight, a longer one is a read-only view of one value, so that a (0, 10**12)
    input asks for no memory it does not use."""
    if n * (<cnp.dtype>dtype).itemsize <= _KEEP_CONSTANT_BYTES:
        return _fast_constant(n, dtype, value)
    if no_rows:
        import numpy
        return numpy.broadcast_to(numpy.array(value, dtype), (n,))
    return _fast_constant.__wrapped__(n, dtype, value)


cdef object _plain_param(object a, cnp.ndarray x, int lead, object dtype, int default):
    """weight or bias for rows x.shape[lead:], as the general path makes it if that converts
    nothing; else None."""
    cdef int i
    cdef Py_ssize_t n = 1
    if a is None:
        for i in range(lead, cnp.PyArray_NDIM(x)):
            n *= cnp.PyArray_DIM(x, i)
        return default_param(n, dtype, default, cnp.PyArray_SIZE(x) == 0)
    if _plain1(a) and _same_dtype(a, dtype) and _dims_are(a, x, lead, cnp.PyArray_NDIM(x)):
        return a
    return None


cdef tuple _plain_fwd(object x, object normalized_shape, object weight, object bias, object eps,
                      object residual, bint rms):
    """(normalized shape, weight, bias, x's entry, number of leading dims, eps) for plain_forward
    and forward; eps None is RMSNorm's default with `rms`."""
    if not _plain1(x):
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int ndim = cnp.PyArray_NDIM(xa), k, i
    entry = _fast_entry(xa)
    if entry is None:
        return None
    if eps is None and rms:
        eps = entry[3]
    if type(eps) is not float:
        return None
    cdef double e = eps
    if not (0.0 <= e < INFINITY):
        return None
    dtype, pdtype = entry[0], entry[1]
    if residual is not None and not (_plain1(residual) and _same_dtype(residual, dtype)
                                     and _dims_are(residual, xa, 0, ndim)):
        return None
    if type(normalized_shape) is int:
        if ndim == 0 or not 0 < normalized_shape == cnp.PyArray_DIM(xa, ndim - 1):
            return None
        k, nshape = 1, (normalized_shape,)
    elif type(normalized_shape) is tuple:
        k = len(<tuple>normalized_shape)
        if not 0 < k <= ndim:
            return None
        for i in range(k):
            d = (<tuple>normalized_shape)[i]
            # Equal to x's dims, but True and 8.0 compare equal too.
            if type(d) is not int or d == 0 or d != cnp.PyArray_DIM(xa, ndim - k + i):
                return None
        nshape = normalized_shape
    else:
        return None
    w = _plain_param(weight, xa, ndim - k, pdtype, 1)
    if w is None:
        return None
    b = _plain_param(bias, xa, ndim - k, pdtype, 0)
    if b is None:
        return None
    return nshape, w, b, entry, ndim - k, eps


def plain_forward(x, normalized_shape, weight, bias, eps, residual=None):
    """(normalized_shape as a tuple, weight, bias) as the general path of a forward makes them,
    if it would convert nothing; else None. A `residual` must match x exactly."""
    plain = _plain_fwd(x, normalized_shape, weight, bias, eps, residual, False)
    return None if plain is None else plain[:3]


cdef tuple _plain_bwd(object dy, object x, object mean, object rstd, object weight,
                      object dsum):
    """(normalized shape, weight, x's entry, number of leading dims) for plain_backward and
    backward."""
    if not (_plain1(x) and _plain1(dy) and _plain1(rstd) and (mean is None or _plain1(mean))
            and (dsum is None or _plain1(dsum))):
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int ndim = cnp.PyArray_NDIM(xa), lead = cnp.PyArray_NDIM(<cnp.ndarray>rstd), i
    entry = _fast_entry(xa)
    if entry is None:
        return None
    dtype, stat = entry[0], entry[1]
    if not (_same_dtype(dy, dtype) and _same_dtype(rstd, stat) and _dims_are(dy, xa, 0, ndim)
            and lead < ndim and _dims_are(rstd, xa, 0, lead)
            and (mean is None or (_same_dtype(mean, stat) and _dims_are(mean, xa, 0, lead)))
            and (dsum is None or (_same_dtype(dsum, dtype) and _dims_are(dsum, xa, 0, ndim)))):
        return None
    for i in range(lead, ndim):
        if cnp.PyArray_DIM(xa, i) == 0:
            return None
    w = _plain_param(weight, xa, lead, stat, 1)
    if w is None:
        return None
    return x.shape[lead:], w, entry, lead


def plain_backward(dy, x, mean, rstd, weight, dsum=None):
    """(normalized shape, weight) as the general path of a backward makes them, if it would
    convert nothing; else None. mean is None for RMSNorm; a `dsum` must match dy exactly."""
    plain = _plain_bwd(dy, x, mean, rstd, weight, dsum)
    return None if plain is None else plain[:2]


cdef inline object _new(cnp.ndarray x, int start, int stop, object dtype):
    """empty(x, start, stop, dtype) for a dtype of the fast path."""
    return cnp.PyArray_EMPTY(stop - start, cnp.PyArray_DIMS(x) + start,
                             (<cnp.dtype>dtype).type_num, 0)


def forward(x, residual, normalized_shape, weight, bias, eps, out, sum_out, bint with_stats,
            bint rms):
    """The whole forward of LayerNorm (RMSNorm if `rms`; with the residual add when `residual`
    is not None) for input that plain_forward takes: (y, s, mean, rstd), s the sum (None
    without a residual), the statistics None unless `with_stats` (mean None for RMSNorm; the
    fused add wants them). eps None is RMSNorm's default.

    y goes into `out` and s into `sum_out` where can_write takes them as they are (apart from
    the residual and from each other), or else, when they are None, into new arrays if those
    have fewer bytes than set_fast_path's limit. Otherwise, and for any other input, it does
    nothing and returns None: fastln._ops then checks and places the outputs.
    """
    plain = _plain_fwd(x, normalized_shape, weight, bias, eps, residual, rms)
    if plain is None:
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int ndim = cnp.PyArray_NDIM(xa), lead = plain[4]
    cdef bint small = cnp.PyArray_NBYTES(xa) < _fast_max_bytes
    w, b, stat = plain[1], plain[2], plain[3][1]
    inputs = (w, b) if residual is None else (residual, w, b)
    s = mean = rstd = None
    if out is None and small:
        y = _new(xa, 0, ndim, plain[3][0])
    elif isinstance(out, cnp.ndarray) and _can_write(out, xa, inputs):
        y = out
    else:
        return None
    if residual is not None:
        if sum_out is None and small:
            s = _new(xa, 0, ndim, plain[3][0])
        elif (isinstance(sum_out, cnp.ndarray) and _can_write(sum_out, xa, inputs)
              and (out is None or not _overlap(out, sum_out))):
            s = sum_out
        else:
            return None
    if with_stats:
        mean = None if rms else _new(xa, 0, lead, stat)
        rstd = _new(xa, 0, lead, stat)
    norm_forward(plain[3][2], xa, residual, w, b, s, y, mean, rstd, plain[5], rms)
    return y, s, mean, rstd


def backward(dy, x, mean, rstd, weight, dsum, bint rms):
    """The whole backward (see norm_backward) for input that plain_backward takes and a dx of
    fewer bytes than set_fast_path's limit: (dx, dweight, dbias), dweight None without a
    weight, dbias None for RMSNorm. Otherwise it does nothing and returns None. A LayerNorm
    (not `rms`) needs a mean, RMSNorm none."""
    if rms != (mean is None):
        return None
    plain = _plain_bwd(dy, x, mean, rstd, weight, dsum)
    if plain is None:
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    if cnp.PyArray_NBYTES(xa) >= _fast_max_bytes:
        return None
    cdef int ndim = cnp.PyArray_NDIM(xa), lead = plain[3]
    stat = plain[2][1]
    dx = _new(xa, 0, ndim, plain[2][0])
    dweight = None if weight is None else _new(xa, lead, ndim, stat)
    dbias = None if rms else _new(xa, lead, ndim, stat)
    norm_backward(plain[2][2], dy, xa, mean, rstd, plain[1], dsum, dx, dweight, dbias, rms)
    return dx, dweight, dbias


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
    return _can_write(out, x, inputs)


cdef bint _can_write(cnp.ndarray out, cnp.ndarray x, tuple inputs) except -1:
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


def empty(cnp.ndarray a, int start, int stop, object dtype=None):
    """A new C-contiguous array of shape ``a.shape[start:stop]`` and a's dtype (or `dtype`, a
    numpy.dtype), contents unset.

    numpy.empty(a.shape[start:stop], a.dtype) without the Python-level shape and dtype parsing,
    which costs more than the forward kernel on a row of 768.
    """
    if not 0 <= start <= stop <= cnp.PyArray_NDIM(a):
        raise ValueError(f"dims [{start}:{stop}] of a {cnp.PyArray_NDIM(a)}-d array")
    if dtype is None:
        return cnp.PyArray_EMPTY(stop - start, cnp.PyArray_DIMS(a) + start, cnp.PyArray_TYPE(a), 0)
    return cnp.PyArray_EMPTY(stop - start, cnp.PyArray_DIMS(a) + start,
                             (<cnp.dtype?>dtype).type_num, 0)


cdef cnp.ndarray _view_near(cnp.ndarray buf, cnp.ndarray a, cnp.ndarray like, size_t period,
                            size_t shift):
    """An array of a's shape and dtype in `buf` (uint8, a.nbytes + period bytes or more), its data
    at like's address + `shift` modulo `period` (a power of two)."""
    cdef size_t item = <size_t>cnp.PyArray_ITEMSIZE(a)
    cdef size_t want = (<size_t>cnp.PyArray_DATA(like) + shift) % period
    cdef size_t have = <size_t>cnp.PyArray_DATA(buf) % period
    want -= want % item
    cdef char *data = <char *>cnp.PyArray_DATA(buf) + (want + period - have) % period
    cdef cnp.PyArray_Descr *descr = cnp.PyArray_DESCR(a)
    Py_INCREF(<object>descr)
    cdef cnp.ndarray out = PyArray_NewFromDescr(&PyArray_Type, <void *>descr, cnp.PyArray_NDIM(a),
                                                cnp.PyArray_DIMS(a), NULL, data,
                                                cnp.NPY_ARRAY_CARRAY, None)
    cnp.set_array_base(out, buf)
    return out


cdef size_t _period(object period) except 0:
    cdef Py_ssize_t p = period
    if p < 64 or p & (p - 1):
        raise ValueError(f"period must be a power of two of 64 or more, got {period}")
    return <size_t>p


def empty_near(cnp.ndarray a, cnp.ndarray like, period=64, shift=0):
    """empty(a, 0, a.ndim) with its data at the same address modulo `period` bytes (a power of
    two, 64 or more) as like's data, or `shift` bytes past it.

    A kernel that starts its vector sweep where one array is aligned (see norm_fwd and norm_bwd
    in _rows_impl.h) then finds the other aligned too; modulo 4 KiB, where the CPU compares
    addresses first, none of them sits just ahead of the other (see just_ahead there). The
    result is a view of a uint8 buffer `period` bytes larger (its .base), which `moved_near` can
    place again.
    """
    cdef size_t p = _period(period)
    cdef cnp.npy_intp size = cnp.PyArray_NBYTES(a) + p
    return _view_near(cnp.PyArray_EMPTY(1, &size, cnp.NPY_UINT8, 0), a, like, p, shift)


def moved_near(cnp.ndarray a, cnp.ndarray like, period, shift=0):
    """An array like `a` (made by empty_near with this period) in a's buffer, at the same address
    modulo `period` as like's data, or `shift` bytes past it; its values are unset."""
    cdef size_t p = _period(period)
    buf = (<object>a).base
    if not (isinstance(buf, cnp.ndarray) and cnp.PyArray_TYPE(<cnp.ndarray>buf) == cnp.NPY_UINT8
            and cnp.PyArray_NBYTES(<cnp.ndarray>buf) == cnp.PyArray_NBYTES(a) + p):
        raise ValueError(f"the array was not made by empty_near with a period of {p}")
    return _view_near(<cnp.ndarray>buf, a, like, p, shift)


def same_offset(cnp.ndarray a, cnp.ndarray b, period=64, shift=0):
    """True if a's data sit at the same address modulo `period` bytes (a power of two) as b's,
    or `shift` bytes past it."""
    cdef size_t p = _period(period)
    return <size_t>cnp.PyArray_DATA(a) % p == (<size_t>cnp.PyArray_DATA(b) + <size_t>shift) % p
