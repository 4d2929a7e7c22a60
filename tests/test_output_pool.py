"""Large outputs are made in arrays fastln made before, but only once nobody holds them."""

import inspect
import sys
import threading

import numpy as np
import pytest
from _helpers import placed

import fastln
from fastln import _ops

BIG = (2048, 4096)          # float32: 32 MiB, well above the smallest pooled size (4 MiB)


@pytest.fixture
def pool():
    fastln.set_output_pool(1 << 30)
    yield
    fastln.set_output_pool(1 << 30)


def _address(a):
    return a.__array_interface__["data"][0]


def _x(seed):
    # Every input at the same place modulo 4 KiB, so that the outputs made for one suit the
    # next where they are (see test_placement.py for inputs placed otherwise).
    return placed(np.random.default_rng(seed).standard_normal(BIG, dtype=np.float32), 16, 4096)


def test_dropped_result_is_reused_and_right(pool):
    x1, x2 = _x(1), _x(2)
    y1 = fastln.layer_norm(x1, BIG[1])
    first = _address(y1)
    del y1
    y2 = fastln.layer_norm(x2, BIG[1])
    spares = _ops._pool[BIG, np.dtype(np.float32)]
    assert len(spares) == 1 and spares[0] is y2          # made in y1's array, not a new one
    assert _address(y2) == first
    fastln.set_output_pool(0)                           # a fresh array for the comparison
    np.testing.assert_array_equal(y2, fastln.layer_norm(x2, BIG[1]))


def test_held_result_or_view_is_never_reused(pool):
    x1, x2 = _x(3), _x(4)
    y1 = fastln.layer_norm(x1, BIG[1])
    keep = y1.copy()
    y2 = fastln.layer_norm(x2, BIG[1])
    assert _address(y2) != _address(y1)
    np.testing.assert_array_equal(y1, keep)
    view = y1[:5]
    del y1
    y3 = fastln.layer_norm(x1, BIG[1])                # y2 is held too: a third array
    assert _address(y3) not in (_address(view), _address(y2))
    np.testing.assert_array_equal(view, keep[:5])


def test_backward_dx_is_pooled_too(pool):
    x = _x(5)
    _, mean, rstd = fastln.layer_norm_forward(x, BIG[1])
    dx = fastln.layer_norm_backward(x, x, mean, rstd)[0]
    first = _address(dx)
    want = dx.copy()
    spares = _ops._pool[BIG, np.dtype(np.float32)]
    kept = len(spares)                   # the forward's y (still held as `_`) and dx
    del dx
    dx = fastln.layer_norm_backward(x, x, mean, rstd)[0]
    assert len(spares) == kept and any(a is dx for a in spares)
    assert _address(dx) == first
    np.testing.assert_array_equal(dx, want)


def test_small_outputs_are_not_kept(pool):
    fastln.layer_norm(np.ones((4, 8), np.float32), 8)
    assert _ops._pooled_bytes() == 0


def test_zero_turns_it_off_and_frees(pool):
    fastln.layer_norm(_x(6), BIG[1])
    assert _ops._pooled_bytes() > 0
    fastln.set_output_pool(0)
    assert _ops._pooled_bytes() == 0
    fastln.layer_norm(_x(6), BIG[1])
    assert _ops._pooled_bytes() == 0


@pytest.mark.parametrize("value, exc", [(-1, ValueError), (1.5, TypeError), (None, TypeError),
                                        (True, TypeError)])
def test_bad_limit(value, exc):
    with pytest.raises(exc, match="max_bytes"):
        fastln.set_output_pool(value)


def test_fused_outputs_pooled_together(pool):
    """A loop over add_layer_norm holds the old y and s while the new ones are made: the pool
    keeps enough arrays that, once warm, no call needs a fresh one."""
    x = _x(1)
    r = _x(2)
    y, s = fastln.add_layer_norm(x, r, BIG[-1])
    y, s = fastln.add_layer_norm(x, r, BIG[-1])       # the first pair is still held until here
    ids = {id(y), id(s)}
    for _ in range(3):
        y2, s2 = fastln.add_layer_norm(x, r, BIG[-1])
        y, s = y2, s2
        ids |= {id(y), id(s)}
    spares = _ops._pool[BIG, np.dtype(np.float32)]
    assert len(spares) == 4 and ids <= {id(a) for a in spares}
    np.testing.assert_array_equal(s, x + r)


def test_full_pool_makes_room_for_the_shape_in_use(pool):
    """Arrays kept for a shape no longer in use give way to the current one, so that a loop over
    a new shape does not fault in a fresh output every call once the pool is full."""
    other = (BIG[0] // 2, BIG[1])                                   # half BIG's bytes
    fastln.set_output_pool(2 * _x(0).nbytes)
    ones = placed(np.ones(other, np.float32), 16)
    held = [fastln.layer_norm(ones, other[1]) for _ in range(2)]
    fastln.layer_norm(ones, other[1])
    assert len(_ops._pool[other, np.dtype(np.float32)]) == 3     # two held, one free
    x = _x(7)
    y = fastln.layer_norm(x, BIG[1])
    first = _address(y)
    assert (other, np.dtype(np.float32)) not in _ops._pool           # made room for BIG
    del y
    for _ in range(3):
        y = fastln.layer_norm(x, BIG[1])
        assert _address(y) == first
        del y
    assert _ops._pooled_bytes() <= 2 * x.nbytes
    for h in held:                                                     # still the caller's
        assert h.shape == other and np.all(h == 0)


def test_two_threads_never_take_the_same_array(pool):
    """A call that has found a free array made for an input placed otherwise goes on to move
    it into place (_cpu.moved_near), and holds no reference to it in between; another thread
    that looks for an array in that moment must not find the same one free. Here the other
    thread runs at exactly that point (the line that takes the array) and is given 0.5 s to
    finish before the first goes on: the pool's lock keeps it waiting."""
    shape = (1024, 1024)                                  # float32: 4 MiB, the least pooled
    rng = np.random.default_rng(12)
    xa, xb, xc = (placed(rng.standard_normal(shape, dtype=np.float32), offset, 4096)
                  for offset in (16, 1040, 2064))
    y1 = fastln.layer_norm(xa, shape[1])
    y2 = fastln.layer_norm(xa, shape[1])                  # held, and looked at after y1's
    del y1                                                # free, at xa's offset
    lines, first = inspect.getsourcelines(_ops._pooled)
    take = [first + i for i, line in enumerate(lines) if "moved_near(" in line]
    assert len(take) == 1
    results = {}
    other = threading.Thread(target=lambda: results.update(c=fastln.layer_norm(xc, shape[1])))

    def in_pooled(frame, event, arg):
        if event == "line" and frame.f_lineno == take[0] and other.ident is None:
            other.start()
            other.join(0.5)
        return in_pooled

    sys.settrace(lambda frame, event, arg: in_pooled if frame.f_code is _ops._pooled.__code__
                 else None)
    try:
        yb = fastln.layer_norm(xb, shape[1])
    finally:
        sys.settrace(None)
    other.join()
    assert other.ident is not None                        # the other thread did run there
    yc = results["c"]
    assert not np.shares_memory(yb, yc)
    assert not np.shares_memory(yb, y2) and not np.shares_memory(yc, y2)
    fastln.set_output_pool(0)
    np.testing.assert_array_equal(yb, fastln.layer_norm(xb, shape[1]))
    np.testing.assert_array_equal(yc, fastln.layer_norm(xc, shape[1]))
