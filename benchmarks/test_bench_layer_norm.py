"""LayerNorm forward and backward: fastln beside a copy, the NumPy reference, PyTorch, ONNX Runtime.

Each workload is one benchmark group ("forward 8192x768 float32"), so pytest-benchmark prints
every implementation of it in one table. ``extra_info`` carries threads, SIMD path, the bytes
the op must move and GB/s.
"""

import numpy as np
import pytest

import fastln
from fastln import _bench, reference

SHAPES = [(1, 768), (32, 768), (512, 1024), (8192, 768), (4096, 4096)]
DTYPES = ["float32", "float64"]
EPS = _bench.EPS

# Module scope: pytest then runs every benchmark of one case before building the next one's
# arrays (the `data` fixture), instead of rebuilding 100+ MB of them for each test.
pytestmark = [
    pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)), scope="module"),
    pytest.mark.parametrize("dtype", DTYPES, scope="module"),
]


def _torch():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------------------------------------
# the floor

@pytest.mark.parametrize("op", ["forward", "backward"])
def test_copy(run, data, shape, dtype, op):
    """np.copyto of x into a preallocated array: read x, write y."""
    x, y = data["x"], data["y"]
    run(op, shape, dtype, lambda: np.copyto(y, x), moves="copy")


@pytest.mark.parametrize("op", ["forward", "backward"])
def test_copy_threaded(run, data, shape, dtype, op, threads):
    """The same copy split over the thread count: the floor for threaded kernels."""
    if threads < 2:
        pytest.skip("one thread: the same as test_copy")
    if data["x"].nbytes < 1 << 20:
        pytest.skip("under 1 MB, waking threads costs more than the copy: see test_copy")
    copy = _bench.ThreadedCopy(data["y"], data["x"], threads)
    try:
        run(op, shape, dtype, copy, moves="copy")
    finally:
        copy.close()


# ---------------------------------------------------------------------------------------------
# forward

def test_forward_fastln_out(run, data, shape, dtype):
    x, w, b, y = data["x"], data["w"], data["b"], data["y"]
    n = shape[-1]
    run("forward", shape, dtype, lambda: fastln.layer_norm(x, n, w, b, out=y))


def test_forward_fastln_fresh(run, data, shape, dtype):
    x, w, b = data["x"], data["w"], data["b"]
    n = shape[-1]
    run("forward", shape, dtype, lambda: fastln.layer_norm(x, n, w, b))


def test_forward_reference(run, data, shape, dtype):
    x, w, b = data["x"], data["w"], data["b"]
    n = shape[-1]
    run("forward", shape, dtype, lambda: reference.layer_norm(x, n, w, b))


def test_forward_torch(run, data, shape, dtype):
    torch = _torch()
    x, w, b = (torch.from_numpy(data[k]) for k in ("x", "w", "b"))
    n = shape[-1]
    layer_norm = torch.nn.functional.layer_norm
    run("forward", shape, dtype, lambda: layer_norm(x, (n,), w, b, EPS))


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


# ---------------------------------------------------------------------------------------------
# backward

def test_backward_fastln(run, data, shape, dtype):
    dy, x, mean, rstd, w = (data[k] for k in ("dy", "x", "mean", "rstd", "w"))
    run("backward", shape, dtype, lambda: fastln.layer_norm_backward(dy, x, mean, rstd, w))


def test_backward_reference(run, data, shape, dtype):
    dy, x, w = data["dy"], data["x"], data["w"]
    _, mean, rstd = reference.layer_norm_forward(x, shape[-1], w, data["b"])
    run("backward", shape, dtype, lambda: reference.layer_norm_backward(dy, x, mean, rstd, w))


def test_backward_torch(run, data, shape, dtype):
    """Autograd's y.backward(dy), giving dx, dweight and dbias.

    The forward that records the graph runs in the untimed setup before every call, so only the
    backward is timed (graph walk and kernel), one call per round.
    """
    torch = _torch()
    x, w, b = (torch.from_numpy(data[k]).clone().requires_grad_(True) for k in ("x", "w", "b"))
    dy = torch.from_numpy(data["dy"])
    n = shape[-1]
    layer_norm = torch.nn.functional.layer_norm

    def setup():
        x.grad = w.grad = b.grad = None
        return (layer_norm(x, (n,), w, b, EPS),), {}

    run("backward", shape, dtype, lambda y: y.backward(dy), setup=setup)
