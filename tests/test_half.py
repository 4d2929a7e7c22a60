"""float16 and bfloat16 data: every op within 1 ulp of the correctly rounded float64 result in
99.9% of elements and within 2 ulps everywhere, statistics in float32, and the dtype rules."""

import numpy as np
import pytest
from _helpers import HARD_ROWS, placed

import fastln
from fastln import _ops, reference

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 tests need ml_dtypes")
HALF = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]


def _ordered(a):
    """16-bit patterns as integers in the order of the values they encode."""
    bits = np.asarray(a).view(np.uint16).astype(np.int32)
    return np.where(bits & 0x8000, 0x8000 - bits, bits)


def assert_ulps(got, want, dtype):
    """got within 1 ulp of want (float64) rounded to dtype in 99.9% of elements, 2 everywhere."""
    assert got.dtype == dtype
    want = np.asarray(want, np.float64).astype(dtype)
    np.testing.assert_array_equal(np.isnan(got.astype(np.float32)),
                                  np.isnan(want.astype(np.float32)))
    ulps = np.abs(_ordered(got) - _ordered(want))
    assert ulps.max() <= 2, f"{ulps.max()} ulps"
    assert np.mean(ulps <= 1) >= 0.999, f"{np.mean(ulps > 1):.2%} beyond 1 ulp"


def assert_rounded(got, want, dtype):
    """got within one ulp of max|want| of want: what rounding a sum of float32 terms to dtype
    allows when it cancels."""
    want = np.asarray(want, np.float64)
    err = np.abs(got.astype(np.float64) - want).max()
    assert err <= float(np.spacing(dtype.type(np.abs(want).max()))), err


def _rows(rng, dtype):
    """Random rows and the ANCHORS hard rows scaled to the dtype's range: float16 cannot hold
    1e4 + randn's spread, so its hard rows keep ~the ratio of mean to spread it can resolve."""
    rows = [("randn", 0.0, 1.0, 1024), ("3+randn", 3.0, 1.0, 768)]
    if dtype == np.float16:
        rows += [("300+randn", 300.0, 1.0, 1024), ("1000+4randn", 1000.0, 4.0, 768),
                 ("2e4+64randn", 2e4, 64.0, 1024)]        # |x| > 256: squares beyond float16
    else:
        rows += [(name, offset, spread * offset / 64, n) for name, offset, spread, n in HARD_ROWS]
    return [(name, (offset + spread * rng.standard_normal((16, n))).astype(dtype))
            for name, offset, spread, n in rows]


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_forward_ops_within_ulps(rng, simd_path, dtype):
    for name, x in _rows(rng, dtype):
        n = x.shape[-1]
        r = (0.5 * rng.standard_normal(x.shape)).astype(dtype)
        w = rng.standard_normal(n).astype(np.float32)
        b = rng.standard_normal(n).astype(dtype)
        y, mean, rstd = fastln.layer_norm_forward(x, n, w, b)
        assert mean.dtype == rstd.dtype == np.float32
        y_ref, mean_ref, rstd_ref = reference.layer_norm_forward(x, n, w, b)
        assert_ulps(y, y_ref, dtype)
        np.testing.assert_allclose(rstd, rstd_ref, rtol=1e-6, err_msg=name)
        # the mean to 1e-6 of the larger of itself and the row's spread
        scale = np.maximum(np.abs(mean_ref), 1 / rstd_ref)
        assert np.all(np.abs(mean - mean_ref) <= 1e-6 * scale), name
        y, rstd = fastln.rms_norm_forward(x, n, w)
        assert rstd.dtype == np.float32
        assert_ulps(y, reference.rms_norm(x, n, w), dtype)
        y, s = fastln.add_layer_norm(x, r, n, w, b)
        y_ref, s_ref = reference.add_layer_norm(x, r, n, w, b)
        np.testing.assert_array_equal(s, s_ref)
        assert_ulps(y, y_ref, dtype)
        y, s = fastln.add_rms_norm(x, r, n, w)
        assert_ulps(y, reference.add_rms_norm(x, r, n, w)[0], dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_backward_ops_within_ulps(rng, simd_path, dtype):
    for name, x in _rows(rng, dtype)[:3]:
        n = x.shape[-1]
        dy, dsum = (rng.standard_normal(x.shape).astype(dtype) for _ in range(2))
        w = rng.standard_normal(n).astype(dtype)
        _, mean, rstd = fastln.layer_norm_forward(x, n, w)
        dx, dw, db = fastln.layer_norm_backward(dy, x, mean, rstd, w)
        dx_ref, dw_ref, db_ref = reference.layer_norm_backward(dy, x, mean, rstd, w)
        assert_ulps(dx, dx_ref, dtype)
        assert dw.dtype == db.dtype == dtype              # the weight's dtype
        # Sums over rows can cancel to values far below their terms: judged against the largest
        assert_rounded(dw, dw_ref, dtype)
        assert_rounded(db, db_ref, dtype)
        ds, _, _ = fastln.add_layer_norm_backward(dy, x, mean, rstd, w, dsum)
        assert_ulps(ds, reference.add_layer_norm_backward(dy, x, mean, rstd, w, dsum)[0], dtype)
        _, rstd = fastln.rms_norm_forward(x, n)
        dx, dw = fastln.rms_norm_backward(dy, x, rstd)
        assert dw is None
        assert_ulps(dx, reference.rms_norm_backward(dy, x, rstd)[0], dtype)
        ds, dw = fastln.add_rms_norm_backward(dy, x, rstd, w.astype(np.float32), dsum)
        assert dw.dtype == np.float32
        assert_ulps(ds, reference.add_rms_norm_backward(dy, x, rstd, w, dsum)[0], dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_bit_identical_across_threads(rng, threads, dtype):
    fastln._cpu.min_parallel_elements(0)
    try:
        x, dy = (rng.standard_normal((200, 300)).astype(dtype) for _ in range(2))
        results = []
        for n in (1, 2, 3):
            threads(n)
            y, mean, rstd = fastln.layer_norm_forward(x, 300)
            results.append((y, mean, rstd, *fastln.layer_norm_backward(dy, x, mean, rstd)[::2]))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    finally:
        fastln._cpu.min_parallel_elements(32768)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("offset", [0, 2, 16])
def test_half_large_calls_stream_with_the_same_bits(rng, simd_path, dtype, offset):
    """Calls large enough to stream write y (in rows of 4 KiB and more) and dx (in rows of whole
    vectors) with non-temporal stores, from the column where the output is aligned; each row
    comes out with the bits it has alone, not streamed, from column 0. The fused add's backward
    (RMSNorm here) streams too, with dsum added."""
    n = 2048
    shape = ((16 << 20) // (2 * n) + 3, n)            # 16 MiB per array
    x, dy, r = (placed(rng.standard_normal(shape).astype(dtype), offset) for _ in range(3))
    w = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    y, mean, rstd = fastln.layer_norm_forward(x, n, w, b)
    dx = fastln.layer_norm_backward(dy, x, mean, rstd, w)[0]
    ya, s, _, rs = fastln.add_layer_norm_forward(x, r, n, w, b)
    ds = fastln.add_rms_norm_backward(dy, s, rs, w, r)[0]         # dsum: r
    for i in (0, 1, shape[0] - 1):
        one = slice(i, i + 1)
        np.testing.assert_array_equal(y[i], fastln.layer_norm(x[one], n, w, b)[0])
        np.testing.assert_array_equal(
            dx[i], fastln.layer_norm_backward(dy[one], x[one], mean[one], rstd[one], w)[0][0])
        ya1, s1 = fastln.add_layer_norm(x[one], r[one], n, w, b)
        np.testing.assert_array_equal(ya[i], ya1[0])
        np.testing.assert_array_equal(s[i], s1[0])
        np.testing.assert_array_equal(
            ds[i], fastln.add_rms_norm_backward(dy[one], s[one], rs[one], w, r[one])[0][0])
    assert_ulps(y[:2], reference.layer_norm(x[:2], n, w, b), dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("rows, n", [(9, 770), (9, 1027), ((11 << 20) // (2 * 1027) + 3, 1027),
                                     ((16 << 20) // (2 * 1027) + 3, 1027),
                                     ((11 << 20) // (2 * 770) + 3, 770)])
def test_half_rows_written_in_pieces_keep_their_bits(rng, simd_path, dtype, rows, n):
    """Rows of 512 values and more are written in pieces between the blocks of the next row's
    statistics: float16 LayerNorm in small calls, every norm in calls from memory whose rows are
    too short to stream (under 4 KiB), fetched ahead (x of 11 MiB: fetched but not streamed at
    any row length; 16 MiB: the fused add streams too). Every row comes out as it does alone,
    with no next row; the rows start off the vector alignment. Cached rows of 512 to 1600
    values are read back from a scratch row in float32 (two of them, used in turn; not float16
    on the avx2 path), rows from memory from the input: the calls from memory check that both
    give the same bits."""
    x = rng.standard_normal(rows * n + 1).astype(dtype)[1:].reshape(rows, n)
    r = rng.standard_normal((rows, n)).astype(dtype)
    w = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    calls = [lambda a, s: fastln.layer_norm(a, n, w, b),
             lambda a, s: fastln.rms_norm(a, n, w),
             lambda a, s: fastln.add_layer_norm(a, s, n, w, b)[0],
             lambda a, s: fastln.add_rms_norm(a, s, n, w)[0]]
    for f in calls:
        whole = f(x, r)
        for i in (0, 1, 2, rows - 1):
            np.testing.assert_array_equal(whole[i].view(np.uint16),
                                          f(x[i:i + 1], r[i:i + 1])[0].view(np.uint16))
    assert_ulps(fastln.layer_norm(x[:2], n, w, b), reference.layer_norm(x[:2], n, w, b), dtype)


def test_conversions_round_to_nearest_even(simd_path):
    """The kernels widen every 16-bit value exactly and narrow float32 like NumPy and ml_dtypes
    (nearest, ties to even), overflow, subnormals, inf and NaN included."""
    rng = np.random.default_rng(0)
    for dtype in HALF:
        values = np.arange(1 << 16, dtype=np.uint16).view(dtype)
        x = values[np.isfinite(values.astype(np.float32))].reshape(1, -1)
        _, s = fastln.add_rms_norm(x, np.zeros_like(x), x.size)       # s = x + 0 round trip
        np.testing.assert_array_equal(s.astype(np.float32), x.astype(np.float32))
        exps = rng.integers(-30, 20, 4096).astype(np.float32)
        wide = rng.standard_normal(4096).astype(np.float32) * np.float32(2.0) ** exps
        finite = x.ravel()[::16].astype(np.float32)
        ulp = np.spacing(finite.astype(dtype)).astype(np.float32)
        ties = finite + ulp / 2                                   # exact midpoints
        # float32 subnormals (bfloat16 has them too; AVX512_BF16's rounding takes them as zero),
        # alone and among normal values in a vector
        sign = rng.integers(0, 2, 64, dtype=np.uint32) << 31
        sub = rng.integers(1, 1 << 23, 64, dtype=np.uint32) | sign
        sub = np.concatenate([sub, [1, 0x7fffff, 0x807fffff, 0x7f8000, 0x8000]]).astype(np.uint32)
        f32 = np.concatenate([wide, ties, finite + ulp / 3, [np.nan, np.inf, -np.inf, 7e4, -7e4,
                                                          65519.0, 65520.0, 1e-8, -3e-8],
                              sub.view(np.float32), wide[:7]])
        f32 = f32.astype(np.float32)
        want = f32.astype(dtype)
        nan = np.isnan(want.astype(np.float32))
        # One long row, and rows of 1024 (read back from a scratch row); the output sweeps of
        # both round two vectors at a time on the avx512bf16 path
        for width in (None, 1024):
            got = _narrow_via_kernels(f32, dtype, width)
            np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), nan)
            np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])
        # The backward's dx, whose rows of 1024 are rounded likewise
        finite = np.isfinite(f32)
        got = _narrow_via_backward(f32[finite], dtype)
        np.testing.assert_array_equal(got.view(np.uint16), want[finite].view(np.uint16))


def _narrow_via_kernels(f32, dtype, width=None):
    """f32 rounded to dtype by the kernels: RMSNorm of a row of ones with eps 0 has rstd 1, so
    y = weight, rounded once to dtype on output. In one row, or in rows of `width` values (the
    last padded with ones), one call each."""
    width = width or f32.size
    padded = np.ones(-(-f32.size // width) * width, np.float32)
    padded[:f32.size] = f32
    out = np.empty(padded.size, dtype)
    for start in range(0, padded.size, width):
        fastln._cpu.norm_forward(_ops._kind(np.dtype(dtype)), np.ones((1, width), dtype), None,
                                 padded[start:start + width], None, None,
                                 out[start:start + width].reshape(1, width), None, None, 0.0,
                                 True)
    return out[:f32.size]


def _narrow_via_backward(f32, dtype, n=1024):
    """Finite f32 rounded to dtype by the backward: RMSNorm's dx, rstd * (g - xhat * c) with
    g = dy * w, is w wherever x is 0 and dy and rstd are 1, rounded once to dtype. Each call's
    row holds n / 2 values of f32 in its first half (the last padded with ones), and x = 1
    (and w = 1) in the second."""
    half = n // 2
    values = np.ones(-(-f32.size // half) * half, np.float32)
    values[:f32.size] = f32
    x = np.ones((1, n), dtype)
    x[0, :half] = 0
    got = []
    for start in range(0, values.size, half):
        w = np.concatenate([values[start:start + half], np.ones(n - half, np.float32)])
        dx, _ = fastln.rms_norm_backward(np.ones((1, n), dtype), x, np.ones(1, np.float32), w)
        got.append(dx[0, :half])
    return np.concatenate(got)[:f32.size]


def test_dtype_rules(rng):
    x16 = rng.standard_normal((2, 8)).astype(np.float16)
    x64 = rng.standard_normal((2, 8))
    with pytest.raises(TypeError, match="weight has dtype float16 but x is float64"):
        fastln.layer_norm(x64, 8, np.ones(8, np.float16))
    with pytest.raises(TypeError, match="bias has dtype float64 but x is float16; for float16 "
                                        "data bias must be float32 or float16"):
        fastln.layer_norm(x16, 8, None, np.zeros(8))
    with pytest.raises(TypeError, match="weight has dtype bfloat16 but x is float16"):
        fastln.rms_norm(x16, 8, np.ones(8, ml_dtypes.bfloat16))
    with pytest.raises(TypeError, match="residual must have the dtype of x"):
        fastln.add_layer_norm(x16, x16.astype(ml_dtypes.bfloat16), 8)
    with pytest.raises(TypeError, match="dy must have the dtype of x"):
        _, mean, rstd = fastln.layer_norm_forward(x16, 8)
        fastln.layer_norm_backward(x16.astype(np.float32), x16, mean, rstd)
    y = fastln.layer_norm(x16, 8, [1.0] * 8, 0.0 * np.ones(8, np.float16))   # lists are fine
    assert y.dtype == np.float16


def test_bfloat16_without_ml_dtypes_says_what_to_install(monkeypatch):
    monkeypatch.setattr(_ops, "_ml_dtypes", lambda: None)
    with pytest.raises(ImportError, match="pip install ml_dtypes"):
        _ = fastln.bfloat16
    assert fastln.layer_norm(np.ones((1, 4), np.float16), 4).dtype == np.float16


def test_fastln_bfloat16_is_ml_dtypes():
    assert fastln.bfloat16 == np.dtype(ml_dtypes.bfloat16)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("op", ["add_layer_norm", "add_rms_norm"])
def test_half_fused_in_place(rng, simd_path, dtype, op):
    """The 16-bit fused ops store the sum first and normalize it from there: out and sum_out
    may still be x or residual themselves."""
    x, r = (rng.standard_normal((6, 77)).astype(dtype) for _ in range(2))
    fn = getattr(fastln, op)
    y_want, s_want = fn(x, r, 77)
    for out_is, sum_is in (("x", "residual"), ("residual", "x")):
        xc, rc = x.copy(), r.copy()
        arrays = {"x": xc, "residual": rc}
        y, s = fn(xc, rc, 77, out=arrays[out_is], sum_out=arrays[sum_is])
        assert y is arrays[out_is] and s is arrays[sum_is]
        np.testing.assert_array_equal(y.view(np.uint16), y_want.view(np.uint16))
        np.testing.assert_array_equal(s.view(np.uint16), s_want.view(np.uint16))


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float64)] + HALF, ids=str)
def test_lists_take_the_dtype_of_x(rng, dtype):
    """A residual, dy or dsum given as a list has no dtype of its own and becomes x's, as a
    weight does; an array of another dtype is refused (see test_bad_input.py)."""
    x, r, dy, dsum = (rng.standard_normal((3, 8)).astype(dtype) for _ in range(4))
    y, s = fastln.add_layer_norm(x, r.tolist(), 8)
    y_want, s_want = fastln.add_layer_norm(x, r, 8)
    np.testing.assert_array_equal(y, y_want)
    np.testing.assert_array_equal(s, s_want)
    _, mean, rstd = fastln.layer_norm_forward(x, 8)
    for got, want in zip(fastln.layer_norm_backward(dy.tolist(), x, mean, rstd),
                         fastln.layer_norm_backward(dy, x, mean, rstd)):
        np.testing.assert_array_equal(got, want)
    got = fastln.add_rms_norm_backward(dy.tolist(), x, rstd, None, dsum.tolist())[0]
    np.testing.assert_array_equal(got, fastln.add_rms_norm_backward(dy, x, rstd, None, dsum)[0])
