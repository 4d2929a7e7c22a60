"""Property tests: any finite input, any shape, any scale agrees with the reference."""

import numpy as np
from _helpers import assert_close, precise
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastln
from fastln import reference

# float64 stops at 1e300, where x - mean cannot overflow (fastln returns NaN where it does).
LIMIT = {np.float32: float(np.finfo(np.float32).max), np.float64: 1e300}
FLOATS = {np.float32: st.floats(-LIMIT[np.float32], LIMIT[np.float32], width=32),
          np.float64: st.floats(-LIMIT[np.float64], LIMIT[np.float64])}


@st.composite
def rows(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40))
    x = draw(hnp.arrays(dtype, shape, elements=FLOATS[dtype]))
    # A common offset and scale, to reach the rows whose mean dwarfs their spread.
    offset = draw(st.sampled_from([0.0, 1.0, 1e4, -3e4, 1e7]))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e-30, 1e10]))
    with np.errstate(over="ignore"):
        moved = x.astype(np.float64) * scale + offset
    if np.abs(moved).max() <= LIMIT[dtype]:
        x = moved
    k = draw(st.integers(1, len(shape)))
    eps = draw(st.sampled_from([1e-5, 0.0, 1.0]))
    return x.astype(dtype), shape[len(shape) - k:], eps


@settings(max_examples=300, deadline=None)
@given(rows())
def test_forward_and_backward_agree_with_reference(case):
    x, nshape, eps = case
    if eps == 0 and x.dtype == np.float64:
        # Without eps, a float64 spread of subnormals has no rstd in float64 (inf out).
        spread = np.abs(x - x.reshape(-1, np.prod(nshape))[:, :1].reshape(
            x.shape[:x.ndim - len(nshape)] + (1,) * len(nshape)))
        assume(((spread == 0) | (spread > 1e-290)).all())
    y, mean, rstd = fastln.layer_norm_forward(x, nshape, eps=eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        y_ref, mean_ref, rstd_ref = reference.layer_norm_forward(precise(x), nshape, eps=eps)
    if not np.isfinite(rstd_ref).all():
        return          # eps = 0 on a constant row: no finite answer to compare
    assert_close(y, y_ref, x.dtype)
    if not np.isfinite(rstd).all():
        return          # rstd beyond the dtype's range (eps = 0, subnormal spread): no backward
    dy = np.linspace(-1, 1, x.size).reshape(x.shape).astype(x.dtype)
    dx = fastln.layer_norm_backward(dy, x, mean, rstd)[0]
    with np.errstate(over="ignore", invalid="ignore"):
        dx_ref = reference.layer_norm_backward(precise(dy), precise(x), mean_ref, rstd_ref)[0]
    if np.isfinite(dx_ref).all():
        # dx can be tiny next to its terms (dy nearly along xhat): then the float32 rstd's
        # rounding alone moves it by ~1e-7 * rstd * |dy|, so that is the scale to judge it on.
        scale = max(np.abs(dx_ref).max(), np.abs(rstd_ref).max() * np.abs(dy).max())
        assert_close(dx, dx_ref, x.dtype, scale=scale)
