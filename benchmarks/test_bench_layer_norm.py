"""LayerNorm forward and backward: fastln beside a copy, the NumPy reference, PyTorch, ONNX Runtime.

Each workload is one benchmark group ("forward 8192x768 float32"), so pytest-benchmark prints
every implementation of it in one table, beside the copy floor. ``extra_info`` carries threads,
SIMD path, the bytes the op must move and GB/s. Run with
``python -m pytest benchmarks/ --benchmark-only -q`` (about 3 minutes on 2 cores).
"""

import numpy as np
import pytest

import fastln
from fastln import _bench, reference

# fastln bench's shapes in float32 (3 KB to 268 MB), and a few of them in float64.
CASES = ([(shape, "float32") for shape in _bench.DEFAULT_SHAPES]
         + [(shape, "float64") for shape in [(1, 768), (512, 1024), (8192, 768)]])
EPS = _bench.EPS
BACKWARD_NOTE = ("floor: copying x (2 x.nbytes); the backward moves 1.5x those bytes, so a "
                 "backward at the copy's bandwidth takes 1.5x its time (target: 1.8x)")

# Module scope: pytest then runs every benchmark of one case before building the next one's
# arrays (the `data` fixture), instead of rebuilding 100+ MB of them for each test.
pytestmark = pytest.mark.parametrize(
    "shape, dtype", CASES, scope="module",
    ids=[f"{'x'.join(map(str, s))}-{d}" for s, d in CASES])


def _torch():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------------------------------------
# the floor

@pytest.mark.parametrize("op", ["forward", "backward"])
def test_copy(run, data, shape, dtype, op):
    """np.copyto of x into a preallocated array: read x, write y."""
    x, y = data["x"], data["out"]
    run(op, shape, dtype, lambda: np.copyto(y, x), moves="copy",
        note=BACKWARD_NOTE if op == "backward" else None)


@pytest.mark.parametrize("op", ["forward", "backward"])
def test_copy_threaded(run, data, shape, dtype, op, threads):
    """The same copy split over the thread count: the floor for threaded kernels."""
    if threads < 2:
        pytest.skip("one thread: the same as test_copy")
    if data["x"].nbytes < 1 << 20:
        pytest.skip("under 1 MB, waking threads costs more than the copy: see test_copy")
    copy = _bench.ThreadedCopy(data["out"], data["x"], threads)
    try:
        run(op, shape, dtype, copy, moves="copy",
            note=BACKWARD_NOTE if op == "backward" else None)
    finally:
        copy.close()


# ---------------------------------------------------------------------------------------------
# forward

def test_forward_fastln_out(run, data, shape, dtype):
    x, w, b, y = data["x"], data["w"], data["b"], data["out"]
    n = shape[-1]
    run("forward", shape, dtype, lambda: fastln.layer_norm(x, n, w, b, out=y))


def test_forward_fastln_fresh(run, data, shape, dtype):
    x, w, b = data["x"], data["w"], data["b"]
    n = shape[-1]
    run("forward", shape, dtype, lambda: fastln.layer_norm(x, n, w, b))


def test_forward_reference(run, data, shape, dtype):
    x, w, b = data["x"], data["w"], data["b"]
    if x.nbytes > _bench.REFERENCE_MAX_BYTES:
        pytest.skip("the float64 NumPy reference takes seconds per call at this size")
    n = shape[-1]
    run("forward", shape, dtype, lambda: reference.layer_norm(x, n, w, b))


def test_forward_torch(run, data, shape, dtype):
    torch = _torch()
    x, w, b = (torch.from_numpy(data[k]) for k in ("x", "w", "b"))
    n = shape[-1]
    layer_norm = torch.nn.functional.layer_norm
    run("forward", shape, dtype, lambda: layer_norm(x, (n,), w, b, EPS))


# ---------------------------------------------------------------------------------------------
# backward

def test_backward_fastln(run, data, shape, dtype):
    dy, x, mean, rstd, w = (data[k] for k in ("dy", "x", "mean", "rstd", "w"))
    run("backward", shape, dtype, lambda: fastln.layer_norm_backward(dy, x, mean, rstd, w))


def test_backward_torch(run, data, shape, dtype):
    """The backward alone, as fastln bench times it (see `fastln._bench`).

    torch.autograd.grad walks one recorded graph again and again (retain_graph keeps its saved
    x, mean and rstd); each call runs native_layer_norm_backward into fresh dx, dweight and
    dbias, as fastln.layer_norm_backward does. The forward is not timed.
    """
    torch = _torch()
    x, w, b = (torch.from_numpy(data[k]).requires_grad_(True) for k in ("x", "w", "b"))
    dy = torch.from_numpy(data["dy"])
    y = torch.nn.functional.layer_norm(x, (shape[-1],), w, b, EPS)
    run("backward", shape, dtype,
        lambda: torch.autograd.grad(y, (x, w, b), dy, retain_graph=True))


# ---------------------------------------------------------------------------------------------
# last in each case: ONNX Runtime's idle workers spin, slowing what runs next on few cores

def test_forward_onnxruntime(run, data, shape, dtype, threads):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    n = shape[-1]
    try:
        sess = _bench.onnx_session(n, dtype, threads)
    except Exception as exc:  # a runtime without this dtype's kernel
        pytest.skip(f"onnxruntime cannot run LayerNormalization in {dtype}: {exc}")
    feeds = {"X": data["x"], "Scale": data["w"], "B": data["b"]}
    run("forward", shape, dtype, lambda: sess.run(None, feeds))
