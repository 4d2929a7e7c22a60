"""Where arrays sit in memory changes how the kernels sweep them (they start their vectors where
an output is aligned), never the result; fresh outputs are placed like their input."""

import numpy as np
import pytest
from _helpers import DTYPES, assert_close, placed

import fastln
from fastln import _cpu, _ops, reference


def _offsets(dtype):
    size = np.dtype(dtype).itemsize
    return [0, size, 16, 48 + size if size < 16 else 48]


def _all_ops(x, r, dy, w, b, n):
    y, mean, rstd = fastln.layer_norm_forward(x, n, w, b)
    yr, rrstd = fastln.rms_norm_forward(x, n, w)
    ya, sa = fastln.add_layer_norm(x, r, n, w, b)
    return {
        "layer_norm": y,
        "rms_norm": yr,
        "add_layer_norm": np.concatenate([ya, sa]),
        "layer_norm_backward": fastln.layer_norm_backward(dy, x, mean, rstd, w),
        "rms_norm_backward": fastln.rms_norm_backward(dy, x, rrstd, w),
    }


@pytest.mark.parametrize("n", [768, 1024, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_where_the_arrays_are(rng, simd_path, dtype, n):
    # 48 rows: above the size from which fresh outputs are placed like an input, so outputs
    # and inputs move together as well as apart.
    x, r, dy = (rng.standard_normal((48, n)).astype(dtype) for _ in range(3))
    w, b = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    want = _all_ops(x, r, dy, w, b, n)
    offsets = _offsets(dtype)
    for k, off in enumerate(offsets):
        other = offsets[(k + 1) % len(offsets)]
        for xo, dyo in ((off, off), (off, other)):
            got = _all_ops(placed(x, xo), placed(r, other), placed(dy, dyo),
                           placed(w, other), b, n)
            for name, value in want.items():
                for a, g in zip(value if isinstance(value, tuple) else (value,),
                                got[name] if isinstance(value, tuple) else (got[name],)):
                    np.testing.assert_array_equal(g, a, err_msg=f"{name} x@{xo} dy@{dyo}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_fresh_outputs_sit_like_their_input(rng, dtype):
    # The forward's outputs modulo 4 KiB, not only 64 bytes: y a few vectors ahead of x there
    # made the forward slower; the backward's dx modulo 64 bytes (see _ops._fresh).
    n = 1024
    x = rng.standard_normal((64, n)).astype(dtype)            # 128 to 512 KiB, not pooled
    for xo, dyo in ((16, 48), (48, 0), (0, 16), (2064, 80), (80, 3088)):
        xp, dyp = placed(x, xo, 4096), placed(x[::-1].copy(), dyo, 4096)
        y, mean, rstd = fastln.layer_norm_forward(xp, n)
        assert y.ctypes.data % 4096 == xo
        assert fastln.rms_norm(xp, n).ctypes.data % 4096 == xo
        ya, sa = fastln.add_layer_norm(xp, dyp, n)
        assert sa.ctypes.data % 4096 == xo                     # y 2 KiB from the sum
        assert ya.ctypes.data % 4096 == (xo + 2048) % 4096
        dx = fastln.layer_norm_backward(dyp, xp, mean, rstd)[0]
        assert dx.ctypes.data % 64 == dyo % 64                 # the kernel aligns to dy
        assert y.flags.c_contiguous and y.flags.writeable and dx.flags.aligned


def test_pooled_outputs_sit_like_their_input_modulo_4_kib(rng):
    fastln.set_output_pool(1 << 30)
    try:
        shape = (1024, 1024)                                  # 4 MiB of float32: pooled
        x, r, dy = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
        # The same offset modulo 64 bytes, not modulo 4 KiB.
        x16, x2064, r = placed(x, 16, 4096), placed(x, 2064, 4096), placed(r, 1040, 4096)
        _ops._pool.clear()
        y = fastln.layer_norm(x16, 1024)
        assert y.ctypes.data % 4096 == 16
        buf = y.base.ctypes.data                              # held, the array would not be free
        del y
        # The only free array, made for x16, is placed again in its buffer: fresh pages cost more.
        y = fastln.layer_norm(x2064, 1024)
        assert y.base.ctypes.data == buf and y.ctypes.data % 4096 == 2064
        z = fastln.layer_norm(x2064, 1024)                    # none free: a new one
        assert z.base.ctypes.data != buf and z.ctypes.data % 4096 == 2064
        assert len(_ops._pool[shape, np.dtype(np.float32)]) == 2
        del y, z
        # Both free, both made for x2064: the sum is placed again at x16's offset, y 2 KiB from
        # it finds one where it wants it.
        ya, sa = fastln.add_layer_norm(x16, r, 1024)
        assert sa.ctypes.data % 4096 == 16 and ya.ctypes.data % 4096 == 2064
        assert {id(ya.base), id(sa.base)} == {id(a.base) for a in
                                              _ops._pool[shape, np.dtype(np.float32)]}
        np.testing.assert_array_equal(ya, fastln.layer_norm(x + r, 1024))
        # Only one of the two given: the new one goes 2 KiB from it (y or the sum).
        out = placed(np.zeros(shape, np.float32), 3088, 4096)
        yo, so = fastln.add_layer_norm(x16, r, 1024, out=out)
        assert yo is out and so.ctypes.data % 4096 == (3088 + 2048) % 4096
        sum_out = placed(np.zeros(shape, np.float32), 528, 4096)
        ys, ss = fastln.add_layer_norm(x16, r, 1024, sum_out=sum_out)
        assert ss is sum_out and ys.ctypes.data % 4096 == 528 + 2048
        for got in (yo, ys):
            np.testing.assert_array_equal(got, ya)
        for got in (so, ss):
            np.testing.assert_array_equal(got, sa)
        _, mean, rstd = fastln.layer_norm_forward(x2064, 1024)
        dx = fastln.layer_norm_backward(placed(dy, 3088, 4096), x2064, mean, rstd)[0]
        assert dx.ctypes.data % 4096 == 3088                  # like dy
        np.testing.assert_array_equal(dx, fastln.layer_norm_backward(dy, x, mean, rstd)[0])
    finally:
        fastln.set_output_pool(1 << 30)


def test_near_placement_helpers():
    x = np.zeros((64, 64), np.float32)
    like = placed(x, 528, 4096)
    a = _cpu.empty_near(x, like, 4096)
    assert a.shape == x.shape and a.dtype == x.dtype and a.flags.c_contiguous
    assert a.ctypes.data % 4096 == 528 and a.base.nbytes == x.nbytes + 4096
    assert _cpu.same_offset(a, like, 4096) and not _cpu.same_offset(a, placed(x, 16, 4096), 4096)
    b = _cpu.moved_near(a, placed(x, 3600, 4096), 4096)
    assert b.base is a.base and b.ctypes.data % 4096 == 3600 and b.shape == x.shape
    assert _cpu.empty_near(x, like).ctypes.data % 64 == 528 % 64
    c = _cpu.empty_near(x, like, 4096, 2048)                 # 2 KiB further on
    assert c.ctypes.data % 4096 == 2576 and _cpu.same_offset(c, like, 4096, 2048)
    assert not _cpu.same_offset(c, like, 4096)
    c = _cpu.moved_near(c, like, 4096, 3600)
    assert c.ctypes.data % 4096 == (528 + 3600) % 4096 and c.base.nbytes == x.nbytes + 4096
    with pytest.raises(ValueError, match="not made by empty_near with a period of 64"):
        _cpu.moved_near(a, like, 64)
    with pytest.raises(ValueError, match="not made by empty_near"):
        _cpu.moved_near(x, like, 4096)
    for bad in (0, 32, 96):
        with pytest.raises(ValueError, match="power of two of 64 or more"):
            _cpu.empty_near(x, like, bad)


def _half_dtypes():
    out = [np.float16]
    try:
        out.append(fastln.bfloat16)
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("dtype", DTYPES + _half_dtypes(), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("offset", [16, 2])
@pytest.mark.parametrize("groups", ["rows_in_groups", "rows_of_4kib_one_by_one"])
def test_streamed_backward_rows_off_alignment_keep_their_bits(rng, simd_path, dtype, offset,
                                                              groups):
    """A backward large enough to stream dx starts each row's vectors where dx is aligned; the
    columns before and after them are computed as parts of whole vectors, and between two rows
    streamed as one vector (the tail of one row and the head of the next, across groups of rows
    too). Each row comes out as it does alone, and dweight and dbias as with aligned arrays, with
    rows that go through the exact double sweep (an rstd past 2^60) among them. Rows a multiple
    of 4 KiB long go one at a time (see norm_bwd), others in groups of two."""
    size = np.dtype(dtype).itemsize
    # 16-bit rows of 768 values: in groups, rows a whole number of KiB apart may not be streamed
    # on AVX2 (see the test below).
    grouped = groups == "rows_in_groups"
    n = {2: (768, 2048), 4: (1280, 1024), 8: (640, 1024)}[size][0 if grouped else 1]
    if offset % size:
        pytest.skip("rows of this dtype cannot start at this offset")
    rows = (16 << 20) // (3 * size * n) + 7                  # past the streaming threshold
    x, dy, dsum = (rng.standard_normal((rows, n)).astype(dtype) for _ in range(3))
    w = rng.standard_normal(n).astype(np.float32 if size == 2 else dtype)
    _, mean, rstd = fastln.layer_norm_forward(x, n, w)
    exact = [3, 4, 9, rows - 1]
    rstd[exact] = 2.0 ** -62
    xa, dya, dsa = (placed(a, 0) for a in (x, dy, dsum))        # NumPy's own sit at 16
    _ops._pool.clear()                    # dx fresh, placed like dy (a free pooled one may not be)
    want = fastln.layer_norm_backward(dya, xa, mean, rstd, w)
    want_rms = fastln.add_rms_norm_backward(dya, xa, rstd, w, dsa)
    assert want[0].ctypes.data % 64 == 0
    xp, dyp, dsp = (placed(a, offset) for a in (x, dy, dsum))
    _ops._pool.clear()
    got = fastln.layer_norm_backward(dyp, xp, mean, rstd, w)
    got_rms = fastln.add_rms_norm_backward(dyp, xp, rstd, w, dsp)
    assert got[0].ctypes.data % 64 == offset
    for a, g in zip(want + want_rms, got + got_rms):
        np.testing.assert_array_equal(g, a)
    for i in list(range(12)) + [rows - 2, rows - 1]:
        one = slice(i, i + 1)
        np.testing.assert_array_equal(
            got[0][i], fastln.layer_norm_backward(dyp[one], xp[one], mean[one], rstd[one], w)[0][0])
        np.testing.assert_array_equal(
            got_rms[0][i],
            fastln.add_rms_norm_backward(dyp[one], xp[one], rstd[one], w, dsp[one])[0][0])


@pytest.mark.parametrize("dtype", DTYPES + _half_dtypes(), ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", [768, 1024, 1040])
def test_backward_gives_the_same_bits_wherever_dx_is(rng, simd_path, dtype, n):
    """A backward large enough to stream dx writes it with plain stores instead where streamed
    ones would keep the CPU's write-combining buffers from filling (dx a little ahead of x or
    dy modulo 4 KiB, except in short float32 and float64 rows such as 768; on AVX2, 16-bit rows
    of a group of two that fall on nearly the same 4 KiB offset), and then aligns its vectors to
    dy rather than dx. dx, dweight and dbias come out the same either way."""
    size = np.dtype(dtype).itemsize
    rows = (16 << 20) // (3 * size * n) + 5                  # past the streaming threshold
    x, dy = (placed(rng.standard_normal((rows, n)).astype(dtype), 0, 4096) for _ in range(2))
    stat = np.float32 if size == 2 else dtype
    w = rng.standard_normal(n).astype(stat)
    _, mean, rstd = fastln.layer_norm_forward(x, n, w)
    results = []
    # dx where x and dy are in their pages; 16 and 64 bytes ahead of them; 2064 bytes ahead,
    # far enough to stream, with its vectors aligned 16 bytes from dy's.
    for dx_offset in (0, 16, 64, 2064):
        dx = placed(np.zeros_like(x), dx_offset, 4096)
        dw, db = np.empty(n, stat), np.empty(n, stat)
        _cpu.norm_backward(_ops._kind(x.dtype), dy, x, mean, rstd, w, None, dx, dw, db, False)
        results.append((dx, dw, db))
    for dx_offset, got in zip((16, 64, 2064), results[1:]):
        for name, a, g in zip(("dx", "dweight", "dbias"), results[0], got):
            np.testing.assert_array_equal(g, a, err_msg=f"{name}, dx {dx_offset} bytes on")
    want = fastln.layer_norm_backward(dy, x, mean, rstd, w)
    for a, g in zip(want, results[0]):
        np.testing.assert_array_equal(g, a)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
def test_fused_forward_gives_the_same_bits_wherever_its_outputs_are(rng, simd_path, dtype,
                                                                    rms):
    """A residual add + norm large enough to stream y and the sum writes them with plain stores
    instead where both would start just ahead of a row of x or r (modulo 4 KiB), which keeps
    the CPU's write-combining buffers from filling. y and the sum come out the same either
    way, and match the reference's norm of x + r."""
    n = 1024
    rows = (32 << 20) // (4 * np.dtype(dtype).itemsize * n) + 5   # past the streaming threshold
    x = placed(rng.standard_normal((rows, n)).astype(dtype), 2048, 4096)
    r = placed(rng.standard_normal((rows, n)).astype(dtype), 0, 4096)
    w = rng.standard_normal(n).astype(dtype)
    results = []
    # y and the sum where r is in its page, 48 bytes ahead of r (plain stores), 48 bytes ahead
    # of x, and apart: y 48 bytes ahead of r, the sum 1 KiB further.
    for y_offset, s_offset in ((0, 0), (48, 48), (2096, 2096), (48, 1072)):
        y = placed(np.zeros_like(x), y_offset, 4096)
        s = placed(np.zeros_like(x), s_offset, 4096)
        if rms:
            fastln.add_rms_norm(x, r, n, w, out=y, sum_out=s)
        else:
            fastln.add_layer_norm(x, r, n, w, out=y, sum_out=s)
        results.append((y, s))
    for offsets, got in zip(((48, 48), (2096, 2096), (48, 1072)), results[1:]):
        for name, a, g in zip(("y", "sum"), results[0], got):
            np.testing.assert_array_equal(g, a, err_msg=f"{name}, outputs at {offsets}")
    total = x + r
    np.testing.assert_array_equal(results[0][1], total)
    want = reference.rms_norm(total, n, w) if rms else reference.layer_norm(total, n, w)
    assert_close(results[0][0], want, dtype)
