"""RMSNorm, the fused residual add + LayerNorm / RMSNorm, and 16-bit data: fastln beside a copy,
the NumPy reference, PyTorch and ONNX Runtime.

One benchmark group per workload, op, shape and dtype ("rms_norm forward 8192x768 float32";
LayerNorm's keep the names of test_bench_layer_norm.py's, "forward 8192x768 float16"), holding
fastln, its peers and the copy floor; for add + norm the floor copies x and the residual (two
arrays in, two out, as the op). The peers are PyTorch's ``F.rms_norm``, ``F.layer_norm(x + r)``
and ``F.rms_norm(x + r)``, and ONNX Runtime's SimplifiedLayerNormalization,
SkipLayerNormalization and SkipSimplifiedLayerNormalization (com.microsoft). Every callable is
``fastln bench``'s own (`fastln._bench`), so both time the same calls. A peer that is not
installed, or rejects a dtype (ONNX Runtime's Skip ops take no float64), is skipped. Run with
``python -m pytest benchmarks/test_bench_norms.py --benchmark-only -q``.
"""

import pytest

from fastln import _bench

SHAPES = [(512, 1024), (8192, 768), (65536, 1024)]
# The new workloads in float32, and every workload in the 16-bit types.
CASES = ([(w, s, "float32") for w in ("rms_norm", "add_layer_norm", "add_rms_norm")
          for s in SHAPES]
         + [(w, s, d) for w in _bench.WORKLOADS for d in ("float16", "bfloat16") for s in SHAPES])

# Module scope: pytest then runs every benchmark of one case before building the next one's
# arrays (the `data` fixture).
pytestmark = pytest.mark.parametrize(
    "workload, shape, dtype", CASES, scope="module",
    ids=[f"{w}-{'x'.join(map(str, s))}-{d}" for w, s, d in CASES])


def _backward_note(workload):
    if workload.startswith("add_"):
        return ("floor: copying x and the residual (4 x.nbytes); the backward moves the same "
                "bytes (dy, s, dsum in, ds out; target: 1.8x)")
    return ("floor: copying x (2 x.nbytes); the backward moves 1.5x those bytes, so a backward "
            "at the copy's bandwidth takes 1.5x its time (target: 1.8x)")


def _torch():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------------------------------------
# the floor

@pytest.mark.parametrize("op", ["forward", "backward"])
def test_copy(run, data, workload, shape, dtype, op):
    """np.copyto of the inputs into preallocated arrays: x (and the residual)."""
    copy = _bench.copy_call(_bench.copy_pairs(data))
    run(op, shape, dtype, copy, moves="copy",
        note=_backward_note(workload) if op == "backward" else None)


@pytest.mark.parametrize("op", ["forward", "backward"])
def test_copy_threaded(run, data, workload, shape, dtype, op, threads):
    """The same copies, each split over the thread count: the floor for threaded kernels."""
    if threads < 2:
        pytest.skip("one thread: the same as test_copy")
    if data["x"].nbytes < 1 << 20:
        pytest.skip("under 1 MB, waking threads costs more than the copy: see test_copy")
    dst, src = zip(*_bench.copy_pairs(data))
    copy = _bench.ThreadedCopy(dst, src, threads)
    try:
        run(op, shape, dtype, copy, moves="copy",
            note=_backward_note(workload) if op == "backward" else None)
    finally:
        copy.close()


# ---------------------------------------------------------------------------------------------
# forward

def test_forward_fastln_out(run, data, workload, shape, dtype):
    run("forward", shape, dtype, _bench.fastln_calls(workload, data)[0])


def test_forward_fastln_fresh(run, data, workload, shape, dtype):
    run("forward", shape, dtype, _bench.fastln_calls(workload, data)[1])


def test_forward_reference(run, data, workload, shape, dtype):
    if data["x"].nbytes > _bench.REFERENCE_MAX_BYTES:
        pytest.skip("the float64 NumPy reference takes seconds per call at this size")
    run("forward", shape, dtype, _bench.fastln_calls(workload, data)[3])


def test_forward_torch(run, data, workload, shape, dtype):
    forward, _ = _bench.torch_calls(_torch(), workload, data)
    run("forward", shape, dtype, forward)


# ---------------------------------------------------------------------------------------------
# backward

def test_backward_fastln(run, data, workload, shape, dtype):
    run("backward", shape, dtype, _bench.fastln_calls(workload, data)[2])


def test_backward_torch(run, data, workload, shape, dtype):
    """The backward alone, as fastln bench times it (see `fastln._bench.torch_calls`)."""
    _, backward = _bench.torch_calls(_torch(), workload, data)
    run("backward", shape, dtype, backward)


# ---------------------------------------------------------------------------------------------
# last in each case: ONNX Runtime's idle workers spin, slowing what runs next on few cores

def test_forward_onnxruntime(run, data, workload, shape, dtype, threads):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    try:
        sess = _bench.onnx_session(shape[-1], data["x"].dtype, threads, workload)
        feeds = _bench.onnx_feeds(workload, data)
    except Exception as exc:  # a runtime without this operator or dtype
        pytest.skip(f"onnxruntime cannot run {_bench.ONNX_OPS[workload][0]} in {dtype}: {exc}")
    call = sess.run_with_ort_values if dtype == "bfloat16" else sess.run
    run("forward", shape, dtype, lambda: call(None, feeds))
