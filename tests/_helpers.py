"""Helpers shared by the tests (on sys.path through pytest's `pythonpath` setting)."""

import numpy as np

# Relative error allowed against the float64 reference, as a fraction of max|reference|.
TOL = {np.float32: 1e-6, np.float64: 1e-12}

DTYPES = [np.float32, np.float64]

# Rows whose mean dwarfs their spread, where other libraries lose digits (ANCHORS.md).
HARD_ROWS = [
    ("1e4+randn", 1e4, 1.0, 4096),
    ("1e5+randn", 1e5, 1.0, 4096),
    ("1e4+0.1randn", 1e4, 0.1, 768),
    ("3e4+0.01randn", 3e4, 0.01, 1024),
]


def rel_err(got, want, scale=None):
    """max|got - want| / max|want| (or / `scale`), NaN-aware (NaN must match NaN)."""
    got = np.asarray(got, dtype=np.longdouble)
    want = np.asarray(want, dtype=np.longdouble)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite])
    if not finite.any():
        return 0.0
    if scale is None:
        scale = np.abs(want[finite]).max()
    diff = np.abs(got[finite] - want[finite]).max()
    return float(diff / scale) if scale > 0 else float(diff)


def assert_close(got, want, dtype, scale=None):
    """rel_err within TOL; scales below the dtype's normal range count as its smallest normal,
    since subnormal results cannot carry relative precision."""
    tol = TOL[np.dtype(dtype).type]
    finite = np.abs(np.asarray(want, dtype=np.longdouble))
    finite = finite[np.isfinite(finite)]
    if scale is None:
        scale = finite.max() if finite.size else 0.0
    err = rel_err(got, want, max(scale, np.finfo(dtype).tiny))
    assert err <= tol, f"relative error {err:.3g} > {tol}"


def precise(a):
    """What to hand the reference: longdouble where it is more precise than float64."""
    a = np.asarray(a)
    if a.dtype == np.float64 and np.finfo(np.longdouble).eps < np.finfo(np.float64).eps:
        return a.astype(np.longdouble)
    return a


def placed(a, offset, boundary=64):
    """A copy of `a` whose data starts `offset` bytes past a `boundary`-byte boundary (64: a
    cache line; 4096: a page)."""
    buf = np.empty(a.nbytes + 2 * boundary, np.uint8)
    start = (-buf.ctypes.data) % boundary + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % boundary == offset
    return out
