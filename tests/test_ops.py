"""fastln's LayerNorm forward and backward against the float64 reference."""

import numpy as np
import pytest
from _helpers import DTYPES, HARD_ROWS, assert_close, placed, precise, rel_err

import fastln
from fastln import reference

SHAPES = [
    ((1,), 1),
    ((5, 1), 1),
    ((7, 3), 3),
    ((2, 17), 17),
    ((3, 1023), 1023),
    ((2, 4097), 4097),
    ((768,), 768),                 # a single row, 1-d
    ((1, 768), 768),
    ((2, 3, 4, 5), (4, 5)),        # several trailing dims
    ((2, 3, 4, 5), (3, 4, 5)),
    ((300, 64), 64),               # enough rows for several blocks
]


def _inputs(rng, shape, normalized_shape, dtype, affine):
    x = rng.standard_normal(shape).astype(dtype)
    nshape = (normalized_shape,) if np.ndim(normalized_shape) == 0 else normalized_shape
    w = rng.standard_normal(nshape).astype(dtype) if affine else None
    b = rng.standard_normal(nshape).astype(dtype) if affine else None
    return x, w, b


def _check_forward_backward(x, nshape, w, b, dtype, dy=None, rng=None):
    y, mean, rstd = fastln.layer_norm_forward(x, nshape, w, b)
    y_ref, mean_ref, rstd_ref = reference.layer_norm_forward(precise(x), nshape, w, b)
    assert y.dtype == dtype and mean.dtype == dtype and rstd.dtype == dtype
    assert y.shape == x.shape and mean.shape == mean_ref.shape == rstd.shape
    assert_close(y, y_ref, dtype)
    # A float32 mean is formed from float32 block sums: it is exact to ~1e-8 of the row's spread,
    # which is how far it may move y; near zero that is more than 1e-6 of the mean itself.
    assert_close(mean, mean_ref, dtype, scale=max(np.abs(mean_ref).max(initial=0),
                                                  (1 / rstd_ref).max(initial=0)))
    assert_close(rstd, rstd_ref, dtype)
    np.testing.assert_array_equal(fastln.layer_norm(x, nshape, w, b), y)

    if dy is None:
        dy = rng.standard_normal(x.shape).astype(dtype)
    dx, dw, db = fastln.layer_norm_backward(dy, x, mean, rstd, w)
    dx_ref, dw_ref, db_ref = reference.layer_norm_backward(precise(dy), precise(x), mean_ref,
                                                           rstd_ref, w)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert_close(dx, dx_ref, dtype)
    assert_close(db, db_ref, dtype)
    if w is None:
        assert dw is None
    else:
        assert dw.shape == w.shape and dw.dtype == dtype
        assert_close(dw, dw_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape, normalized_shape", SHAPES)
def test_matches_reference(rng, simd_path, shape, normalized_shape, dtype, affine):
    x, w, b = _inputs(rng, shape, normalized_shape, dtype, affine)
    _check_forward_backward(x, normalized_shape, w, b, dtype, rng=rng)


@pytest.mark.parametrize("rows, n", [(87, 1000), (45, 200)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_grads_sum_every_row(rng, simd_path, dtype, rows, n):
    # The backward sums dweight and dbias in float32 over a few rows at a time before adding
    # them up in double: rows past several such stages and into a part of one, columns outside
    # the vector sweep (dy one element past a cache line), and a float32 row that is finished
    # in double (values near 1e20: its rstd is beyond 2^-60) between the others.
    size = np.dtype(dtype).itemsize
    x = rng.standard_normal((rows, n)).astype(dtype)
    x[rows // 2] *= 1e20
    dy = placed(rng.standard_normal((rows, n)).astype(dtype), size)
    w, b = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    _check_forward_backward(placed(x, size), n, w, b, dtype, dy=dy)
    y, rstd = fastln.rms_norm_forward(x, n, w)
    dx, dw = fastln.rms_norm_backward(dy, x, rstd, w)
    dx_ref, dw_ref = reference.rms_norm_backward(precise(dy), precise(x), rstd, w)
    assert_close(dx, dx_ref, dtype)
    assert_close(dw, dw_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, offset, scale, n", HARD_ROWS)
def test_rows_with_a_large_mean(rng, simd_path, name, offset, scale, n, dtype):
    x = (offset + scale * rng.standard_normal((64, n))).astype(dtype)
    _, w, b = _inputs(rng, (64, n), n, dtype, True)
    _check_forward_backward(x, n, None, None, dtype, rng=rng)
    _check_forward_backward(x, n, w, b, dtype, rng=rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_whose_first_values_sit_apart(rng, simd_path, dtype):
    # The forward centres each lane of a row on the mean of its first values. Where those sit
    # far from the rest (the first 64 values shifted, or one huge value among them), one pass
    # about them would lose digits in float32: such rows are measured again in two passes.
    n = 8192
    x = np.zeros((8, n))
    x[:4, :64] = 1e4 + 0.3               # one pass: y off by over 1e-6 of max|y| in float32
    x[4:, 3] = 1e4 + 0.3
    x[6:] += 1e-3 * rng.standard_normal((2, n))
    x = x.astype(dtype)
    _check_forward_backward(x, n, None, None, dtype, rng=rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_four_consecutive_integers_far_from_zero(dtype):
    x = np.array([[40000, 40001, 40002, 40003]], dtype=dtype)
    y, mean, rstd = fastln.layer_norm_forward(x, 4, eps=0.0)
    expected = np.array([-3, -1, 1, 3]) / np.sqrt(5.0)   # (x - 40001.5) / sqrt(1.25)
    assert mean[0] == 40001.5
    tol = 1e-7 if dtype == np.float32 else 1e-15
    assert rel_err(y[0], expected) < tol
    assert np.isfinite(y).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_rows(rng, simd_path, dtype):
    x = np.repeat(rng.standard_normal((5, 1)) * 1e3, 777, axis=1).astype(dtype)
    w = rng.standard_normal(777).astype(dtype)
    b = rng.standard_normal(777).astype(dtype)
    y, mean, rstd = fastln.layer_norm_forward(x, 777, w, b)
    np.testing.assert_array_equal(y, np.broadcast_to(b, x.shape))   # exactly the bias
    np.testing.assert_array_equal(mean, x[:, 0])
    assert_close(rstd, np.full(5, 1 / np.sqrt(1e-5)), dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx, dw, db = fastln.layer_norm_backward(dy, x, mean, rstd, w)
    dx_ref, dw_ref, db_ref = reference.layer_norm_backward(dy, x, mean, rstd, w)
    assert_close(dx, dx_ref, dtype)
    np.testing.assert_array_equal(dw, np.zeros(777, dtype))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_value_spoils_only_its_row(rng, bad, dtype):
    x = rng.standard_normal((4, 100)).astype(dtype)
    x[2, 37] = bad
    y, mean, rstd = fastln.layer_norm_forward(x, 100)
    assert np.isfinite(np.delete(y, 2, axis=0)).all()
    assert not np.isfinite(y[2]).all()
    clean = np.delete(x, 2, axis=0)
    np.testing.assert_array_equal(np.delete(y, 2, axis=0), fastln.layer_norm(clean, 100))
    dx, _, _ = fastln.layer_norm_backward(np.ones_like(x), x, mean, rstd)
    assert np.isfinite(np.delete(dx, 2, axis=0)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_rows(dtype):
    x = np.empty((0, 3, 8), dtype)
    y, mean, rstd = fastln.layer_norm_forward(x, 8)
    assert y.shape == (0, 3, 8) and mean.shape == (0, 3) and rstd.shape == (0, 3)
    w = np.ones(8, dtype)
    dx, dw, db = fastln.layer_norm_backward(x, x, mean, rstd, w)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dw, np.zeros(8, dtype))
    np.testing.assert_array_equal(db, np.zeros(8, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_eps_zero_and_large_eps(rng, dtype):
    x = rng.standard_normal((3, 50)).astype(dtype)
    for eps in (0.0, 0.5, 1e3):
        y = fastln.layer_norm(x, 50, eps=eps)
        assert_close(y, reference.layer_norm(precise(x), 50, eps=eps), dtype)


# ------------------------------------------------------------------------------------------
# layouts


def _views(rng, dtype):
    base = rng.standard_normal((40, 60)).astype(dtype)
    yield "transposed", base.T, 40
    yield "column slice", base[:, 5:45], 40
    yield "strided rows", base[::3], 60
    yield "strided cols", base[:, ::2], 30
    yield "negative stride", base[::-1, ::-1], 60
    yield "fortran", np.asfortranarray(base), 60
    unaligned = np.frombuffer(b"\0" + base.tobytes(), dtype=dtype, offset=1).reshape(base.shape)
    yield "unaligned", unaligned, 60
    yield "byte-swapped", base.astype(base.dtype.newbyteorder(">")), 60


@pytest.mark.parametrize("dtype", DTYPES)
def test_any_layout(rng, dtype):
    for name, x, n in _views(rng, dtype):
        w = rng.standard_normal(n).astype(dtype)
        y = fastln.layer_norm(x, n, w[::-1], None)
        want = fastln.layer_norm(np.ascontiguousarray(x, dtype=dtype), n, w[::-1].copy())
        np.testing.assert_array_equal(y, want, err_msg=name)
        assert y.flags.c_contiguous
        y2, mean, rstd = fastln.layer_norm_forward(x, n)
        dy = x[::-1] if x.ndim == 2 else x
        dx = fastln.layer_norm_backward(dy, x, mean, rstd)[0]
        dx_want = fastln.layer_norm_backward(np.ascontiguousarray(dy), np.ascontiguousarray(x),
                                             mean, rstd)[0]
        np.testing.assert_array_equal(dx, dx_want, err_msg=name)


def test_array_likes():
    rows = [[1.0, 2.0, 3.0], [4.0, 6.0, 9.0]]
    y = fastln.layer_norm(rows, 3, weight=[1, 2, 3], bias=(0.0, 0.5, 1.0))
    assert isinstance(y, np.ndarray) and y.dtype == np.float64
    want = reference.layer_norm(np.array(rows), 3, np.array([1, 2, 3]), np.array([0, 0.5, 1]))
    assert_close(y, want, np.float64)


def test_float32_weight_with_float64_input(rng):
    x = rng.standard_normal((4, 8))
    w = rng.standard_normal(8).astype(np.float32)
    y = fastln.layer_norm(x, 8, w)
    assert y.dtype == np.float64
    assert_close(y, reference.layer_norm(x, 8, w), np.float64)


# ------------------------------------------------------------------------------------------
# out=


@pytest.mark.parametrize("dtype", DTYPES)
def test_out(rng, dtype):
    x = rng.standard_normal((6, 33)).astype(dtype)
    out = np.full_like(x, np.nan)
    y = fastln.layer_norm(x, 33, out=out)
    assert y is out
    np.testing.assert_array_equal(out, fastln.layer_norm(x, 33))


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_non_contiguous(rng, dtype):
    x = rng.standard_normal((6, 33)).astype(dtype)
    buf = np.zeros((6, 66), dtype)
    out = buf[:, ::2]
    y = fastln.layer_norm(x, 33, out=out)
    assert y is out
    np.testing.assert_array_equal(out, fastln.layer_norm(x, 33))
    assert (buf[:, 1::2] == 0).all()          # the gaps are untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_is_x_works_in_place(rng, dtype):
    x = rng.standard_normal((9, 100)).astype(dtype) + 5
    want = fastln.layer_norm(x, 100, eps=1e-3)
    y = fastln.layer_norm(x, 100, eps=1e-3, out=x)
    assert y is x
    np.testing.assert_array_equal(x, want)


def test_out_interleaved_with_x_is_safe(rng):
    # out and x share a buffer but not elements: x is copied first, so no overlap remains.
    buf = rng.standard_normal((5, 40)).astype(np.float32)
    x, out = buf[:, ::2], buf[:, 1::2]
    want = fastln.layer_norm(x.copy(), 20)
    fastln.layer_norm(x, 20, out=out)
    np.testing.assert_array_equal(out, want)


# ------------------------------------------------------------------------------------------
# inputs are never modified


@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_untouched(rng, dtype):
    x = rng.standard_normal((8, 16)).astype(dtype)
    w = rng.standard_normal(16).astype(dtype)
    b = rng.standard_normal(16).astype(dtype)
    dy = rng.standard_normal((8, 16)).astype(dtype)
    copies = [a.copy() for a in (x, w, b, dy)]
    y, mean, rstd = fastln.layer_norm_forward(x, 16, w, b)
    stats = (mean.copy(), rstd.copy())
    fastln.layer_norm(x, 16, w, b)
    fastln.layer_norm_backward(dy, x, mean, rstd, w)
    for a, c in zip((x, w, b, dy), copies):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(mean, stats[0])
    np.testing.assert_array_equal(rstd, stats[1])


def test_default_weight_is_not_exposed():
    # The cached ones/zeros used for a missing weight are read-only, so no call can change them.
    x = np.ones((2, 4), np.float32)
    y1 = fastln.layer_norm(x * [1, 2, 3, 4], 4)
    y2 = fastln.layer_norm(x * [1, 2, 3, 4], 4)
    np.testing.assert_array_equal(y1, y2)
    from fastln._ops import _constant
    assert not _constant(4, np.dtype(np.float32), 1).flags.writeable


@pytest.mark.parametrize("rows", [0, 2])
def test_long_default_weights_are_not_kept(rows):
    """Default weights and biases of up to 1 MiB are kept for later calls; longer ones, for
    rows of over 262144 float32 values, are made for the call and let go after it."""
    from fastln import _cpu
    from fastln._ops import _constant
    n = _cpu.KEEP_CONSTANT_BYTES // 4 + 16
    x = np.random.default_rng(0).standard_normal((rows, n)).astype(np.float32)
    kept = _constant.cache_info().currsize
    y = fastln.layer_norm(x, n)                            # the plain path (C)
    y2 = fastln.layer_norm(x, [n], eps=np.float64(1e-5))   # the general path (Python)
    dx = fastln.layer_norm_backward(x, x, *fastln.layer_norm_forward(x, n)[1:])[0]
    assert _constant.cache_info().currsize == kept
    np.testing.assert_array_equal(y, y2)
    assert y.shape == dx.shape == (rows, n)
    small = 1000 + rows
    fastln.layer_norm(x[:, :small], small)
    hits = _constant.cache_info().hits
    fastln.layer_norm(x[:, :small], small)
    assert _constant.cache_info().hits == hits + 2          # weight and bias, kept


@pytest.mark.parametrize("general", [False, True])
def test_rows_of_a_trillion_values_without_rows_ask_for_no_weight(general):
    """A (0, 10**12) input has no rows to normalize; the default weight and bias its kernels
    would never read (4 TB each) are not made. The general path is taken with eps a NumPy
    scalar."""
    n = 10 ** 12
    x = np.empty((0, n), np.float32)
    eps = np.float32(1e-5) if general else 1e-5
    y, mean, rstd = fastln.layer_norm_forward(x, n, eps=eps)
    assert y.shape == x.shape and mean.shape == rstd.shape == (0,)
    assert fastln.rms_norm(x, (n,), eps=eps).shape == x.shape
    y, s = fastln.add_layer_norm(x, x, n, eps=eps)
    assert y.shape == s.shape == x.shape


def test_float32_extremes_do_not_overflow(rng):
    big = np.float32(3e38)
    x = np.array([[big, -big, big, -big], [1e-40, -1e-40, 2e-40, 0.0]], np.float32)
    for eps in (1e-5, 0.0):
        y = fastln.layer_norm(x, 4, eps=eps)
        want = reference.layer_norm(x, 4, eps=eps)
        assert np.isfinite(y).all()
        assert_close(y, want, np.float32)


@pytest.mark.parametrize("scale, eps", [(2.0 ** 600, 1e-5), (2.0 ** 1000, 1e-5), (2.0 ** -600, 0.0),
                                        (2.0 ** -1000, 0.0), (2.0 ** -540, 1e-300)])
def test_float64_rows_whose_squares_leave_its_range(rng, simd_path, scale, eps):
    # Squared deviations of 1e180 or 1e-180 over- or underflow float64 (to inf, NaN, 0 or a
    # subnormal with few digits left); such rows are measured again, scaled, and the backward
    # keeps rstd^2 out of its products, so they agree with the reference as other rows do.
    n = 100
    x = (rng.standard_normal((3, n)) + 0.5) * scale
    dy, w, b = rng.standard_normal((3, n)), rng.standard_normal(n), rng.standard_normal(n)
    y, mean, rstd = fastln.layer_norm_forward(x, n, w, b, eps=eps)
    y_ref, mean_ref, rstd_ref = reference.layer_norm_forward(precise(x), n, w, b, eps=eps)
    for got, want in zip((y, mean, rstd), (y_ref, mean_ref, rstd_ref)):
        assert_close(got, want, np.float64)
    got = fastln.layer_norm_backward(dy, x, mean, rstd, w)
    want = reference.layer_norm_backward(precise(dy), precise(x), mean_ref, rstd_ref, w)
    for g, r in zip(got, want):
        assert_close(g, r, np.float64)
    y, rstd = fastln.rms_norm_forward(x, n, w, eps=eps)
    y_ref, rstd_ref = reference.rms_norm_forward(precise(x), n, w, eps=eps)
    assert_close(y, y_ref, np.float64)
    assert_close(rstd, rstd_ref, np.float64)
    got = fastln.rms_norm_backward(dy, x, rstd, w)
    want = reference.rms_norm_backward(precise(dy), precise(x), rstd_ref, w)
    for g, r in zip(got, want):
        assert_close(g, r, np.float64)
    y, s = fastln.add_layer_norm(x, x / 4, n, w, b, eps=eps)
    assert_close(y, reference.layer_norm(precise(s), n, w, b, eps=eps), np.float64)


def test_float64_rows_measured_again_keep_their_digits():
    # One value of 1.5 * 2^520 among 100000 of 1.3 * 2^503: its square leaves float64's range,
    # and the row is measured again, scaled. RMSNorm's small squares, added one by one, each
    # lost digits against the large one (rstd off by 3e-12); LayerNorm's row came out NaN.
    x = np.full((2, 100000), 1.3 * 2.0 ** 503)
    x[0, 1] = x[1, 7] = 1.5 * 2.0 ** 520
    y, mean, rstd = fastln.layer_norm_forward(x, x.shape[1])
    y_ref, _, rstd_ref = reference.layer_norm_forward(precise(x), x.shape[1])
    assert_close(rstd, rstd_ref, np.float64)
    assert_close(y, y_ref, np.float64)
    y, rstd = fastln.rms_norm_forward(x, x.shape[1])
    y_ref, rstd_ref = reference.rms_norm_forward(precise(x), x.shape[1])
    assert_close(rstd, rstd_ref, np.float64)
    assert_close(y, y_ref, np.float64)


def test_float64_deviations_beyond_its_range_give_nan_not_a_number_that_looks_right():
    big = np.finfo(np.float64).max
    x = np.array([[0.0, big / 2, -big / 2, 1.0], [big, -big, 0.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    y = fastln.layer_norm(x, 4)
    # Squares of 1e308 overflow, the deviations from the first value do not: the right answer.
    assert_close(y[0], reference.layer_norm(precise(x[0]), 4), np.float64)
    # Measured from the first value, big, -big lies beyond float64: NaN, not the bias.
    assert np.isnan(y[1]).all()
    assert_close(y[2], reference.layer_norm(x[2], 4), np.float64)


@pytest.mark.parametrize("n", [1027, 4099])
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_outputs_written_with_streaming_stores(rng, dtype, n):
    # x of 16 MiB (32 MiB with y) is written with non-temporal stores, from every row
    # alignment (n odd: rows start at every offset mod 64), and fetched ahead: rows of 1027
    # values row by row, rows of over 16 KiB (4099 float32 values) within the row.
    x = rng.standard_normal(((16 << 20) // (n * np.dtype(dtype).itemsize) + 3, n)).astype(dtype)
    y = fastln.layer_norm(x, n)
    for r in (0, 1, 2, 3, 5, x.shape[0] - 1):
        assert_close(y[r], reference.layer_norm(precise(x[r]), n), dtype)
    # A row alone is not streamed, so other columns fall to the vector and the one-at-a-time
    # code: each value must come out the same bits either way.
    w, b = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    y = fastln.layer_norm(x, n, w, b)
    for r in range(8):
        np.testing.assert_array_equal(y[r], fastln.layer_norm(x[r:r + 1], n, w, b)[0])


def test_large_fused_add_streams_with_the_same_bits(rng):
    # With the residual add the forward's four arrays reach the streaming size at 8 MiB each;
    # every row comes out as it does alone (not streamed).
    n = 1027
    x = rng.standard_normal(((8 << 20) // (4 * n) + 3, n)).astype(np.float32)
    r = rng.standard_normal(x.shape).astype(np.float32)
    y, s = fastln.add_layer_norm(x, r, n)
    for i in (0, 1, 2, x.shape[0] - 1):
        y1, s1 = fastln.add_layer_norm(x[i:i + 1], r[i:i + 1], n)
        np.testing.assert_array_equal(y[i], y1[0])
        np.testing.assert_array_equal(s[i], s1[0])


@pytest.mark.parametrize("op", ["add_layer_norm", "add_rms_norm"])
def test_large_fused_add_into_outputs_that_meet_modulo_4_kib(rng, op):
    # Streamed y and sum within 256 bytes of each other modulo 4 KiB are written in two sweeps,
    # the one that is an input (in place) second; both in place, in one. Same bits every way.
    n = 1024
    shape = ((8 << 20) // (4 * n) + 3, n)
    x = placed(rng.standard_normal(shape).astype(np.float32), 16, 4096)
    r = placed(rng.standard_normal(shape).astype(np.float32), 16, 4096)
    fn = getattr(fastln, op)
    y0, s0 = fn(x, r, n)
    for y_at, s_at in [(16, 16), (528, 592), (592, 528), (16, 2064)]:
        out, sum_out = placed(np.zeros(shape, np.float32), y_at, 4096), placed(
            np.zeros(shape, np.float32), s_at, 4096)
        y, s = fn(x, r, n, out=out, sum_out=sum_out)
        assert y is out and s is sum_out
        np.testing.assert_array_equal(y, y0, err_msg=f"y at {y_at}, sum at {s_at}")
        np.testing.assert_array_equal(s, s0, err_msg=f"y at {y_at}, sum at {s_at}")
    for name, out, sum_out in [("y into x", "x", "new"), ("the sum into r", "new", "r"),
                               ("y into r, the sum into x", "r", "x")]:
        arrays = {"x": placed(x, 16, 4096), "r": placed(r, 16, 4096),
                  "new": placed(np.zeros(shape, np.float32), 16, 4096)}
        y, s = fn(arrays["x"], arrays["r"], n, out=arrays[out], sum_out=arrays[sum_out])
        assert y is arrays[out] and s is arrays[sum_out]
        np.testing.assert_array_equal(y, y0, err_msg=name)
        np.testing.assert_array_equal(s, s0, err_msg=name)


@pytest.mark.parametrize("n", [256, 770, 1027])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cached_rows_written_in_pieces_keep_their_bits(rng, dtype, n):
    # Small float32 and float64 calls write each row in pieces between the blocks of the next
    # row's statistics. Every row, those finished in double among them (huge values, a
    # subnormal spread), comes out as it does alone, with no next row; the rows start off the
    # vector alignment.
    rows = 9
    x = rng.standard_normal(rows * n + 1).astype(dtype)[1:].reshape(rows, n)
    x[2] *= np.finfo(dtype).max / 8
    x[5] *= np.finfo(dtype).smallest_normal * 4
    r = rng.standard_normal((rows, n)).astype(dtype)
    w, b = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    calls = [lambda a, s: fastln.layer_norm(a, n, w, b),
             lambda a, s: fastln.rms_norm(a, n, w),
             lambda a, s: fastln.add_layer_norm(a, s, n, w, b)[0],
             lambda a, s: fastln.add_rms_norm(a, s, n, w)[0]]
    for f in calls:
        with np.errstate(all="ignore"):
            whole = f(x, r)
            for i in range(rows):
                np.testing.assert_array_equal(whole[i], f(x[i:i + 1], r[i:i + 1])[0])
    if dtype == np.float32:        # and right, not only the same
        y = fastln.layer_norm(x, n, w, b)
        for i in (2, 5):
            assert_close(y[i], reference.layer_norm(precise(x[i]), n, w, b), dtype)


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "off_alignment"])
@pytest.mark.parametrize("dtype, n", [(np.float32, 1024), (np.float64, 512)])
def test_cached_rows_normalized_in_pairs_keep_their_bits(rng, simd_path, threads, dtype, n,
                                                         offset):
    # Cached calls of more than 1 MiB per thread whose rows are a whole number of vectors on
    # every path are normalized two rows at a time, the weight and bias loaded once for both.
    # Every row comes out as it does alone, its mean and rstd too: float32 rows finished in
    # double as the second row of a pair (1) and as the first (4), the last row of the call
    # left alone, rows whose vectors start `offset` values off alignment.
    threads(1)
    rows = (1 << 20) // (2 * n * np.dtype(dtype).itemsize) + 3 + (dtype == np.float32)
    x = rng.standard_normal((rows, n)).astype(dtype)
    if dtype == np.float32:
        x[1] *= np.finfo(dtype).max / 8
        x[4] *= np.finfo(dtype).smallest_normal * 4
    x = placed(x, offset * x.itemsize)
    w, b = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    calls = [lambda a: fastln.layer_norm_forward(a, n, w, b),
             lambda a: fastln.rms_norm_forward(a, n, w)]
    for f in calls:
        whole = f(x)
        for i in range(rows):
            one = f(x[i:i + 1])
            for got, want in zip(whole, one):
                np.testing.assert_array_equal(got[i], want[0], err_msg=f"row {i}")
    if dtype == np.float32:        # and right, not only the same
        y = fastln.layer_norm(x, n, w, b)
        for i in (0, 1, 4, rows - 1):
            assert_close(y[i], reference.layer_norm(precise(x[i]), n, w, b), dtype)


@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
@pytest.mark.parametrize("n", [512, 768, 1000, 1024, 1027])
def test_large_backward_written_with_streaming_stores(rng, n, rms):
    # dx is streamed once dy, x and dx come to 16 MiB, when a row is a whole number of vectors
    # (n = 512, 768, 1000, 1024), a cache line of each row at a time (rows of 1000 float32
    # values are 32 bytes off the first row's line boundaries every other row); rows go in
    # groups of 2, the next group fetched ahead, short ones (512, 768) with no float32 stage
    # for dweight and dbias, rows of 4 KiB (1024) one at a time.
    x = rng.standard_normal(((16 << 20) // (3 * 4 * n) + 5, n)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    if rms:
        _, rstd = fastln.rms_norm_forward(x, n, w)
        dx, dw = fastln.rms_norm_backward(dy, x, rstd, w)
        _, rstd_ref = reference.rms_norm_forward(x, n, w)
        want_dx, want_dw = reference.rms_norm_backward(dy, x, rstd_ref, w)
    else:
        _, mean, rstd = fastln.layer_norm_forward(x, n, w)
        dx, dw, db = fastln.layer_norm_backward(dy, x, mean, rstd, w)
        _, mean_ref, rstd_ref = reference.layer_norm_forward(x, n, w)
        want_dx, want_dw, want_db = reference.layer_norm_backward(dy, x, mean_ref, rstd_ref, w)
        assert_close(db, want_db, np.float32)
    for r in (0, 1, 2, x.shape[0] - 1):
        assert_close(dx[r:r + 1], want_dx[r:r + 1], np.float32)
    assert_close(dw, want_dw, np.float32)
