"""The fast path of fastln._ops: taken for plain input, never for anything else, same results.

Plain input (C-contiguous ndarrays of float32/float64, an int or a tuple of ints for
normalized_shape, a float eps) skips the general conversions; every other input goes through
them. Both must give bit-identical results, since they end in the same kernel call.
"""

import numpy as np
import pytest
from _helpers import DTYPES

import fastln
from fastln import _cpu, _ops


class Sub(np.ndarray):
    """An ndarray subclass: the same memory, but not a plain ndarray, so the general path."""


@pytest.fixture
def general_calls(monkeypatch):
    """How many times the general path has converted an x (a list holding one count)."""
    calls = [0]
    convert = _ops._float_array

    def counting(name, a):
        if name in ("x", "s"):          # s: the fused backward's sum
            calls[0] += 1
        return convert(name, a)

    monkeypatch.setattr(_ops, "_float_array", counting)
    return calls


def _strided(a):
    """`a`'s values in a non-contiguous view (every other element of a wider buffer)."""
    buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    view = buf[..., ::2]
    view[...] = a
    return view


def _not_plain(a):
    """`a`'s values in a strided view, or as a subclass where a view of it cannot be strided."""
    if a.ndim and not _strided(a).flags.c_contiguous:
        return _strided(a)
    return a.view(Sub)


CASES = [
    ((1, 768), 768),
    ((8, 768), 768),
    ((768,), 768),
    ((8, 768), (768,)),
    ((2, 3, 4, 5), (4, 5)),
    ((2, 3, 4, 5), (2, 3, 4, 5)),
    ((0, 6), 6),
]


def _slow_variants(x, nshape, w, b):
    """Ways to pass the same values that must each take the general path."""
    as_list = list(nshape) if isinstance(nshape, tuple) else [nshape]
    yield "x a subclass", x.view(Sub), nshape, w, b, 1e-5
    yield "x strided", _not_plain(x), nshape, w, b, 1e-5
    yield "normalized_shape a list", x, as_list, w, b, 1e-5
    yield "normalized_shape numpy ints", x, tuple(np.int64(d) for d in as_list), w, b, 1e-5
    yield "eps a numpy float", x, nshape, w, b, np.float64(1e-5)
    if w is not None:
        yield "weight strided", x, nshape, _not_plain(w), b, 1e-5
        yield "bias a subclass", x, nshape, w, b.view(Sub), 1e-5
        yield "weight a list", x, nshape, w.tolist(), b, 1e-5
    if x.dtype == np.float64 and x.size:     # a list of no rows loses the row width
        yield "x a list", x.tolist(), nshape, w, b, 1e-5


def _data(rng, shape, nshape, dtype, affine):
    """x, the weight's shape, and a weight (None unless `affine`)."""
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    wshape = (nshape,) if isinstance(nshape, int) else nshape
    w = rng.standard_normal(wshape).astype(dtype) if affine else None
    return x, wshape, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape, nshape", CASES)
def test_forward_paths_agree(rng, general_calls, shape, nshape, dtype, affine):
    x, wshape, w = _data(rng, shape, nshape, dtype, affine)
    b = rng.standard_normal(wshape).astype(dtype) if affine else None

    y, mean, rstd = fastln.layer_norm_forward(x, nshape, w, b)
    out = np.full_like(x, np.nan)
    assert fastln.layer_norm(x, nshape, w, b, out=out) is out
    y_fresh = fastln.layer_norm(x, nshape, w, b)
    assert general_calls[0] == 0, "plain input left the fast path"
    np.testing.assert_array_equal(out, y)
    np.testing.assert_array_equal(y_fresh, y)
    assert mean.shape == rstd.shape == x.shape[:x.ndim - len(wshape)]

    for name, xs, ns, ws, bs, eps in _slow_variants(x, nshape, w, b):
        before = general_calls[0]
        y2, mean2, rstd2 = fastln.layer_norm_forward(xs, ns, ws, bs, eps)
        out2 = np.full_like(x, np.nan)
        fastln.layer_norm(xs, ns, ws, bs, eps, out=out2)
        assert general_calls[0] == before + 2, f"{name} took the fast path"
        for got, want in ((y2, y), (mean2, mean), (rstd2, rstd), (out2, y)):
            assert type(got) is np.ndarray and got.dtype == dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_and_awkward_out(rng, general_calls, dtype):
    x = rng.standard_normal((8, 64)).astype(dtype)
    want = fastln.layer_norm(x.view(Sub), 64)             # general path
    y = x.copy()
    assert fastln.layer_norm(y, 64, out=y) is y           # in place, fast path
    np.testing.assert_array_equal(y, want)
    y = x.copy()
    fastln.layer_norm(y, 64, out=y.view())                 # another view of the same bytes
    np.testing.assert_array_equal(y, want)
    out = _strided(np.zeros_like(x))                       # fast inputs, scratch for out
    fastln.layer_norm(x, 64, out=out)
    np.testing.assert_array_equal(out, want)
    assert general_calls[0] == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape, nshape", CASES)
def test_backward_paths_agree(rng, general_calls, shape, nshape, dtype, affine):
    x, wshape, w = _data(rng, shape, nshape, dtype, affine)
    dy = rng.standard_normal(shape).astype(dtype)
    _, mean, rstd = fastln.layer_norm_forward(x, nshape, w)
    base = general_calls[0]
    dx, dw, db = fastln.layer_norm_backward(dy, x, mean, rstd, w)
    assert general_calls[0] == base, "plain input left the fast path"
    variants = [("x a subclass", dy, x.view(Sub), mean, rstd, w),
                ("dy strided", _not_plain(dy), x, mean, rstd, w),
                ("mean a subclass", dy, x, mean.view(Sub), rstd, w),
                ("rstd strided", dy, x, mean, _not_plain(rstd), w)]
    if w is not None:
        variants.append(("weight strided", dy, x, mean, rstd, _not_plain(w)))
    for name, *args in variants:
        before = general_calls[0]
        dx2, dw2, db2 = fastln.layer_norm_backward(*args)
        assert general_calls[0] == before + 1, f"{name} took the fast path"
        np.testing.assert_array_equal(dx2, dx, err_msg=name)
        np.testing.assert_array_equal(db2, db, err_msg=name)
        if w is None:
            assert dw2 is None
        else:
            np.testing.assert_array_equal(dw2, dw, err_msg=name)


# Inputs that pass the fast path's identity tests but one, and must still raise.
@pytest.mark.parametrize("call, exc, match", [
    (lambda x: fastln.layer_norm(x, True), TypeError, "normalized_shape"),
    (lambda x: fastln.layer_norm(x, (8.0,)), TypeError, "normalized_shape"),
    (lambda x: fastln.layer_norm(x, (2, 8)), ValueError, "expected input with shape"),
    (lambda x: fastln.layer_norm(x, 0), ValueError, "expected input with shape"),
    (lambda x: fastln.layer_norm(x, 8, eps=float("nan")), ValueError, "eps must be finite"),
    (lambda x: fastln.layer_norm(x, 8, eps=-0.5), ValueError, "eps must be finite"),
    (lambda x: fastln.layer_norm(x, 8, np.ones(8)), TypeError, "weight has dtype float64"),
    (lambda x: fastln.layer_norm(x, 8, None, np.ones((1, 8), np.float32)), ValueError,
     "bias must have shape"),
    (lambda x: fastln.layer_norm(x, 8, out=np.empty((4, 8))), TypeError, "out must have dtype"),
    (lambda x: fastln.layer_norm(x, 8, out=np.empty(32, np.float32)), ValueError,
     "out must have shape"),
    (lambda x: fastln.layer_norm(x, 8, out=x.reshape(-1)[:-8].reshape(3, 8)), ValueError,
     "out must have shape"),
    (lambda x: fastln.layer_norm(x[1:], 8, out=x[:-1]), ValueError, "out overlaps x"),
    (lambda x: fastln.layer_norm(x, 8, out=np.empty((4, 8), np.float32).view(">f4")),
     TypeError, "out must have dtype"),
    (lambda x: fastln.layer_norm_backward(x, x, np.zeros(4, np.float32), np.ones(3, np.float32)),
     ValueError, "rstd must have the shape of mean"),
    (lambda x: fastln.layer_norm_backward(x[:, :0], x[:, :0], np.zeros(4, np.float32),
                                          np.ones(4, np.float32)), ValueError, "zero elements"),
    (lambda x: fastln.layer_norm_backward(x, x, None, np.ones(4, np.float32)), TypeError,
     "mean"),
    (lambda x: fastln.rms_norm_backward(x, x, np.ones(3, np.float32)), ValueError,
     "leading shape"),
    (lambda x: fastln.add_rms_norm_backward(x, x, np.ones(4, np.float32), None, np.ones((4, 8))),
     TypeError, "dsum"),
    (lambda x: fastln.add_layer_norm_backward(x, x, np.zeros(4, np.float32),
                                              np.ones(4, np.float32), None, x[:2]), ValueError,
     "dsum must have the shape"),
])
def test_plain_looking_bad_input_still_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call(np.ones((4, 8), np.float32))


def test_overlap_matches_numpy_bounds():
    buf = np.arange(60.0).reshape(6, 10)
    views = [buf, buf[1:], buf[:3], buf[3:], buf[:, ::2], buf[:, 1::2], buf[::-1], buf[::-1, 5:],
             buf.T, buf[2, 3:4], buf[0, :0], np.zeros(3)]
    for a in views:
        for b in views:
            meet = _cpu.overlap(a, b)
            assert bool(meet) == np.may_share_memory(a, b), (a.shape, a.strides, b.shape)
            same_bytes = (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
                          and a.nbytes == b.nbytes and a.flags.c_contiguous
                          and b.flags.c_contiguous)
            if a.flags.c_contiguous and b.flags.c_contiguous and a.size and b.size:
                assert (meet == 1) == same_bytes


def test_plain():
    x = np.ones((4, 8), np.float32)
    unaligned = np.frombuffer(np.zeros(33, np.uint8)[1:], np.float32)
    assert _cpu.plain(x, None, x[1:], np.array(1.0))
    assert _cpu.plain()
    for bad in (x[:, ::2], x.T, unaligned, [1.0], 1.0):
        assert not _cpu.plain(x, bad, None), bad


def test_empty():
    x = np.ones((2, 3, 4), np.float32)
    for start, stop in [(0, 3), (0, 2), (2, 3), (0, 0), (3, 3)]:
        a = _cpu.empty(x, start, stop)
        assert a.shape == x.shape[start:stop] and a.dtype == x.dtype and a.flags.c_contiguous
    with pytest.raises(ValueError):
        _cpu.empty(x, 2, 4)


@pytest.mark.parametrize("op", ["rms_norm", "add_layer_norm", "add_rms_norm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_new_ops_fast_path_matches_general(rng, general_calls, op, dtype):
    x, r = (rng.standard_normal((8, 96)).astype(dtype) for _ in range(2))
    w = rng.standard_normal(96).astype(np.float32 if dtype == np.float16 else dtype)
    fused = op.startswith("add_")
    fn = getattr(fastln, op)
    args = (x, r) if fused else (x,)
    fast = fn(*args, 96, w)
    assert general_calls[0] == 0, "plain input left the fast path"
    slow = fn(*(a.view(Sub) for a in args), 96, list(w))
    assert general_calls[0] == 1
    for got, want in zip(fast if fused else (fast,), slow if fused else (slow,)):
        assert type(got) is np.ndarray and got.dtype == dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_fast_path_matches_general(rng, general_calls, name):
    dtype = np.dtype(np.float16) if name == "float16" else fastln.bfloat16
    x, dy = (rng.standard_normal((8, 96)).astype(dtype) for _ in range(2))
    w, b = (rng.standard_normal(96).astype(np.float32) for _ in range(2))
    y0, mean0, rstd0 = fastln.layer_norm_forward(x.view(Sub), 96, w, b)   # general path first
    grads0 = fastln.layer_norm_backward(dy.view(Sub), x, mean0, rstd0, w)
    base = general_calls[0]
    y, mean, rstd = fastln.layer_norm_forward(x, 96, w, b)
    grads = fastln.layer_norm_backward(dy, x, mean, rstd, w)
    assert general_calls[0] == base, "plain 16-bit input left the fast path"
    for got, want in zip((y, mean, rstd, *grads), (y0, mean0, rstd0, *grads0)):
        assert type(got) is np.ndarray and got.dtype == want.dtype
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("op, with_dsum", [("rms_norm", False), ("add_layer_norm", False),
                                           ("add_layer_norm", True), ("add_rms_norm", False),
                                           ("add_rms_norm", True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_new_ops_backward_fast_path_matches_general(rng, general_calls, op, dtype, with_dsum):
    fused, rms = op.startswith("add_"), op.endswith("rms_norm")
    x, r, dy, dsum = (rng.standard_normal((8, 96)).astype(dtype) for _ in range(4))
    w = rng.standard_normal(96).astype(np.float32 if dtype == np.float16 else dtype)
    dsum = dsum if with_dsum else None
    if fused:
        _, s, *stats = getattr(fastln, op + "_forward")(x, r, 96, w)
    else:
        s = x
        stats = list(getattr(fastln, op + "_forward")(x, 96, w)[1:])
    backward = getattr(fastln, op + "_backward")

    def call(dy, s, stats, w, dsum):
        return backward(dy, s, *stats, w, dsum) if fused else backward(dy, s, *stats, w)

    base = general_calls[0]
    fast = call(dy, s, stats, w, dsum)
    assert general_calls[0] == base, "plain input left the fast path"
    variants = [("s a subclass", dy, s.view(Sub), stats, w, dsum),
                ("dy strided", _not_plain(dy), s, stats, w, dsum),
                ("rstd a subclass", dy, s, stats[:-1] + [stats[-1].view(Sub)], w, dsum),
                ("weight a list", dy, s, stats, list(w), dsum)]
    if not rms:
        variants.append(("mean strided", dy, s, [_not_plain(stats[0])] + stats[1:], w, dsum))
    if with_dsum:
        variants.append(("dsum strided", dy, s, stats, w, _not_plain(dsum)))
    for name, *args in variants:
        before = general_calls[0]
        slow = call(*args)
        assert general_calls[0] == before + 1, f"{name} took the fast path"
        assert len(slow) == len(fast) == (2 if rms else 3)
        for got, want in zip(slow, fast):
            assert type(got) is np.ndarray and got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)
    if with_dsum:       # dsum is added to dx: the gradient without it differs by dsum
        without = call(dy, s, stats, w, None)
        np.testing.assert_allclose(fast[0].astype(np.float64),
                                   without[0].astype(np.float64) + dsum,
                                   rtol=1e-2 if dtype == np.float16 else 1e-5, atol=1e-2)



def test_plain_forward_takes_only_what_needs_no_conversion():
    x = np.ones((4, 8), np.float32)
    w = np.ones(8, np.float32)
    nshape, w1, b1 = _cpu.plain_forward(x, 8, None, None, 1e-5)
    assert nshape == (8,) and w1.dtype == b1.dtype == np.float32
    assert (w1 == 1).all() and (b1 == 0).all() and not w1.flags.writeable
    assert _cpu.plain_forward(x, (4, 8), np.ones((4, 8), np.float32), None, 0.0)[0] == (4, 8)
    assert _cpu.plain_forward(x, 8, w, w, 1e-5, x)[1] is w
    assert _cpu.plain_forward(x.astype(np.float16), 8, w, None, 1e-5)[1] is w
    refused = {          # name: (x, normalized_shape, weight, bias, eps, residual)
        "shape a float": (x, 8.0, None, None, 1e-5, None),
        "shape a bool": (x, True, None, None, 1e-5, None),
        "shape a list": (x, [8], None, None, 1e-5, None),
        "shape of numpy ints": (x, (np.int64(8),), None, None, 1e-5, None),
        "shape not x's": (x, 4, None, None, 1e-5, None),
        "shape not x's trailing dims": (x, (8, 8), None, None, 1e-5, None),
        "shape longer than x's": (x, (2, 4, 8), None, None, 1e-5, None),
        "shape 0": (x, 0, None, None, 1e-5, None),
        "eps an int": (x, 8, None, None, 1, None),
        "eps inf": (x, 8, None, None, float("inf"), None),
        "eps nan": (x, 8, None, None, float("nan"), None),
        "eps negative": (x, 8, None, None, -1e-5, None),
        "eps a numpy float": (x, 8, None, None, np.float64(1e-5), None),
        "weight float64": (x, 8, w.astype(np.float64), None, 1e-5, None),
        "bias of another shape": (x, 8, None, w[None], 1e-5, None),
        "weight reversed": (x, 8, w[::-1], None, 1e-5, None),
        "weight a subclass": (x, 8, w.view(Sub), None, 1e-5, None),
        "weight float16 for float16 x": (x.astype(np.float16), 8, w.astype(np.float16), None,
                                         1e-5, None),
        "x big-endian": (x.astype(">f4"), 8, None, None, 1e-5, None),
        "x int32": (x.astype(np.int32), 8, None, None, 1e-5, None),
        "x a numpy scalar": (np.float32(1.0), 1, None, None, 1e-5, None),
        "x 0-d": (x[0, 0], 1, None, None, 1e-5, None),
        "residual float64": (x, 8, None, None, 1e-5, x.astype(np.float64)),
        "residual of another shape": (x, 8, None, None, 1e-5, x[:2]),
        "residual Fortran-ordered": (x, 8, None, None, 1e-5, np.asfortranarray(x)),
        "residual a list": (x, 8, None, None, 1e-5, x.tolist()),
    }
    for name, args in refused.items():
        assert _cpu.plain_forward(*args) is None, name


def test_plain_backward_takes_only_what_needs_no_conversion():
    x = np.ones((2, 4, 8), np.float32)
    mean, rstd = np.zeros((2, 4), np.float32), np.ones((2, 4), np.float32)
    nshape, w = _cpu.plain_backward(x, x, mean, rstd, None, x)
    assert nshape == (8,) and w.dtype == np.float32 and (w == 1).all()
    assert _cpu.plain_backward(x, x, None, np.ones(2, np.float32), None)[0] == (4, 8)
    assert _cpu.plain_backward(x, x, mean, rstd, w)[1] is w
    half = x.astype(np.float16)
    assert _cpu.plain_backward(half, half, mean, rstd, w)[1] is w
    refused = {          # name: (dy, x, mean, rstd, weight, dsum)
        "dy of another shape": (x[:1], x, mean, rstd, None, None),
        "dy float64": (x.astype(np.float64), x, mean, rstd, None, None),
        "mean float64": (x, x, mean.astype(np.float64), rstd, None, None),
        "rstd of another shape": (x, x, mean, rstd[:1], None, None),
        "mean of another shape": (x, x, mean[:, :1], rstd, None, None),
        "rstd as long as x": (x, x, mean, x, None, None),
        "weight float64": (x, x, mean, rstd, x[0, 0].astype(np.float64), None),
        "weight of another shape": (x, x, mean, rstd, x[0], None),
        "weight a list": (x, x, mean, rstd, [1.0] * 8, None),
        "dsum float64": (x, x, mean, rstd, None, x.astype(np.float64)),
        "dsum of another shape": (x, x, mean, rstd, None, x[:1]),
        "dsum a subclass": (x, x, mean, rstd, None, x.view(Sub)),
        "mean a subclass": (x, x, mean.view(Sub), rstd, None, None),
        "rows of no elements": (x[..., :0], x[..., :0], mean, rstd, None, None),
        "weight float16 for float16 x": (half, half, mean, rstd, half[0, 0], None),
        "x big-endian": (x.astype(">f4"), x.astype(">f4"), mean, rstd, None, None),
    }
    for name, args in refused.items():
        assert _cpu.plain_backward(*args) is None, name


def test_whole_call_in_c_only_where_nothing_is_left_to_place():
    limit = _ops._NEAR_MIN_BYTES
    small = np.ones((4, 8), np.float32)
    large = np.ones((limit // 32, 8), np.float32)        # exactly the limit
    buf = np.ones((5, 8), np.float32)
    w = np.full(8, 2.0, np.float32)

    def forward(x, r=None, out=None, sum_out=None, eps=1e-5, stats=True, rms=False, weight=w):
        return _cpu.forward(x, r, 8, weight, None, eps, out, sum_out, stats, rms)

    y, s, mean, rstd = forward(small)
    assert s is None and y.shape == small.shape and mean.shape == rstd.shape == (4,)
    np.testing.assert_array_equal(y, fastln.layer_norm(small.view(Sub), 8, w))
    assert forward(small, stats=False)[2:] == (None, None)
    y, s, mean, rstd = forward(small, small + 1, eps=None, rms=True, weight=None)
    assert mean is None and (s == 3).all() and rstd.dtype == np.float32
    out, sums = np.empty_like(small), np.empty_like(small)
    assert forward(small, out=out)[0] is out
    inplace = small.copy()
    assert forward(inplace, out=inplace)[0] is inplace
    y, s = forward(small, small + 1, out=out, sum_out=sums)[:2]
    assert y is out and s is sums and (s == 3).all()
    y, s = forward(small, small + 1, out=out)[:2]
    assert y is out and (s == 3).all()
    assert forward(large, out=np.empty_like(large)) is not None
    assert forward(large, large, out=np.empty_like(large), sum_out=np.empty_like(large))
    residual = small + 1
    left = {  # name: (x, residual, out, sum_out, eps)
        "large new output": (large, None, None, None, 1e-5),
        "large new sum": (large, large, np.empty_like(large), None, 1e-5),
        "out strided": (small, None, np.empty((4, 16), np.float32)[:, ::2], None, 1e-5),
        "out of another dtype": (small, None, np.empty((4, 8)), None, 1e-5),
        "out overlapping x": (buf[1:], None, buf[:-1], None, 1e-5),
        "out a list": (small, None, [0.0] * 32, None, 1e-5),
        "out the residual": (small, residual, residual, None, 1e-5),
        "sum_out the residual": (small, residual, None, residual, 1e-5),
        "out and sum_out the same": (small, residual, out, out, 1e-5),
        "sum_out read-only": (small, residual, None, np.broadcast_to(small, small.shape), 1e-5),
        "eps None for LayerNorm": (small, None, None, None, None),
        "x a subclass": (small.view(Sub), None, None, None, 1e-5),
    }
    for name, (x, r, o, so, eps) in left.items():
        assert forward(x, r, o, so, eps) is None, name
    _, mean, rstd = fastln.layer_norm_forward(small, 8)
    dx, dw, db = _cpu.backward(small, small, mean, rstd, w, None, False)
    assert dx.shape == small.shape and dw.shape == db.shape == (8,)
    assert _cpu.backward(small, small, None, rstd, None, small, True)[1:] == (None, None)
    assert _cpu.backward(small, small, None, rstd, w, None, False) is None   # no mean
    assert _cpu.backward(small, small, mean, rstd, w, None, True) is None    # RMSNorm, a mean
    assert _cpu.backward(large, large, np.zeros(len(large), np.float32),
                         np.ones(len(large), np.float32), w, None, False) is None
