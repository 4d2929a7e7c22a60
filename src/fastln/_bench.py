"""Timing for ``python -m fastln bench``: fastln beside a copy, the NumPy reference and its peers.

Every figure is the median of many calls, timed with ``time.perf_counter``; ratios divide by
the time of copying x into a preallocated array (the memory-bandwidth floor of a forward pass).
The benchmarks/ suite reuses `onnx_session`, `ThreadedCopy` and `op_bytes`.
"""

import importlib
import math
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import fastln
from fastln import _cpu, reference

DEFAULT_SHAPES = [(1, 768), (32, 768), (512, 1024), (8192, 768), (4096, 4096)]
EPS = 1e-5


def parse_shapes(text):
    """"8192x768,1x768" -> [(8192, 768), (1, 768)]; every dim a positive int."""
    shapes = []
    for item in text.split(","):
        dims = item.strip().lower().split("x")
        try:
            shape = tuple(int(d) for d in dims)
        except ValueError:
            raise ValueError(f"bad shape {item.strip()!r}: expected positive ints joined by 'x', "
                             f"like 8192x768") from None
        if not shape or any(d <= 0 for d in shape):
            raise ValueError(f"bad shape {item.strip()!r}: every dim must be a positive int")
        shapes.append(shape)
    return shapes


# ---------------------------------------------------------------------------------------------
# timing

def _batch(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - t0


def measure(fn, *, setup=None, budget=0.15, repeat=None):
    """Median seconds per call of ``fn()``, or of ``fn(*setup())`` with setup left untimed.

    Without setup, calls are batched so that one sample lasts about a millisecond (the clock
    and the loop then cost under 1%). Samples are taken until `budget` seconds have passed (at
    least 3), or exactly `repeat` of them.
    """
    if setup is None:
        est = _batch(fn, 1)                              # also the warm-up
        if est < 1e-3:
            est = _batch(fn, 10) / 10
        number = max(1, math.ceil(1e-3 / max(est, 1e-8)))
        sample = lambda: _batch(fn, number) / number     # noqa: E731
    else:
        fn(*setup())
        number = 1

        def sample():
            args = setup()
            t0 = time.perf_counter()
            fn(*args)
            return time.perf_counter() - t0
    samples = []
    start = time.perf_counter()
    while True:
        samples.append(sample())
        if repeat is not None:
            if len(samples) >= repeat:
                break
        elif len(samples) >= 3 and (time.perf_counter() - start >= budget or len(samples) >= 1000):
            break
    return float(np.median(samples))


class ThreadedCopy:
    """``np.copyto(dst, src)`` split over `threads` threads (np.copyto releases the GIL)."""

    def __init__(self, dst, src, threads):
        d, s = dst.reshape(-1), src.reshape(-1)
        bounds = np.linspace(0, d.size, threads + 1).astype(int)
        self.chunks = [(d[a:b], s[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        self.pool = ThreadPoolExecutor(max(1, threads - 1))

    def __call__(self):
        futures = [self.pool.submit(np.copyto, d, s) for d, s in self.chunks[1:]]
        np.copyto(*self.chunks[0])
        for f in futures:
            f.result()

    def close(self):
        self.pool.shutdown()


def op_bytes(op, shape, dtype):
    """Bytes an op must move at the least.

    copy: read x, write y. forward: read x, weight and bias, write y. backward: read x, dy,
    weight, mean and rstd, write dx, dweight and dbias.
    """
    size, n, item = math.prod(shape), shape[-1], np.dtype(dtype).itemsize
    rows = size // n
    return item * {"copy": 2 * size,
                   "forward": 2 * size + 2 * n,
                   "backward": 3 * size + 3 * n + 2 * rows}[op]


# ---------------------------------------------------------------------------------------------
# peers

def peer(name):
    """The imported module, or None when it is not installed (or fails to import)."""
    try:
        return importlib.import_module(name)
    except Exception:  # a broken install counts as absent: the bench still runs
        return None


def onnx_session(n, dtype, threads):
    """An ONNX Runtime session of one opset-17 LayerNormalization over the last axis of (rows, n).

    Inputs X, Scale, B; output Y. Raises if onnx/onnxruntime are missing or reject the dtype.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    elem = {np.dtype(np.float32): TensorProto.FLOAT,
            np.dtype(np.float64): TensorProto.DOUBLE}[np.dtype(dtype)]
    node = helper.make_node("LayerNormalization", ["X", "Scale", "B"], ["Y"], axis=-1,
                            epsilon=EPS)
    graph = helper.make_graph(
        [node], "layer_norm",
        [helper.make_tensor_value_info("X", elem, ["rows", n]),
         helper.make_tensor_value_info("Scale", elem, [n]),
         helper.make_tensor_value_info("B", elem, [n])],
        [helper.make_tensor_value_info("Y", elem, ["rows", n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)     # what older runtimes still load
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# the bench

def _workload(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    n = shape[-1]
    x = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(n)).astype(dtype)
    b = (0.1 * rng.standard_normal(n)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, dy


def _timings(shape, dtype, threads, torch, ort_ok, measure_kw):
    """(impl, op, median seconds) for every implementation on one shape."""
    x, w, b, dy = _workload(shape, dtype)
    n = shape[-1]
    y = np.empty_like(x)
    _, mean, rstd = fastln.layer_norm_forward(x, n, w, b)

    copy = ThreadedCopy(y, x, threads) if threads > 1 else None
    try:
        # The floor is the faster of one np.copyto and `threads` of them side by side.
        copy_s = measure(lambda: np.copyto(y, x), **measure_kw)
        if copy is not None:
            copy_s = min(copy_s, measure(copy, **measure_kw))
    finally:
        if copy is not None:
            copy.close()
    yield "copy", "copy", copy_s
    yield "fastln (out=)", "forward", measure(
        lambda: fastln.layer_norm(x, n, w, b, out=y), **measure_kw)
    yield "fastln", "forward", measure(lambda: fastln.layer_norm(x, n, w, b), **measure_kw)
    yield "fastln", "backward", measure(
        lambda: fastln.layer_norm_backward(dy, x, mean, rstd, w), **measure_kw)
    yield "numpy reference", "forward", measure(
        lambda: reference.layer_norm(x, n, w, b), **measure_kw)

    if torch is not None:
        F = torch.nn.functional
        xt, wt, bt, dyt = (torch.from_numpy(a) for a in (x, w, b, dy))
        yield "torch", "forward", measure(lambda: F.layer_norm(xt, (n,), wt, bt, EPS),
                                          **measure_kw)
        # Backward as a training step runs it: autograd's y.backward(dy) computing dx, dweight
        # and dbias. The forward that records the graph runs in the untimed setup before each
        # call, so only the backward (graph walk + kernel) is timed, one call per sample.
        xg, wg, bg = (t.detach().clone().requires_grad_(True) for t in (xt, wt, bt))

        def setup():
            xg.grad = wg.grad = bg.grad = None
            return (F.layer_norm(xg, (n,), wg, bg, EPS),)

        yield "torch autograd", "backward", measure(lambda out: out.backward(dyt), setup=setup,
                                                    **measure_kw)
    if ort_ok:
        try:
            sess = onnx_session(n, dtype, threads)
        except Exception as exc:  # e.g. a runtime without this dtype's kernel
            print(f"onnxruntime: skipped {'x'.join(map(str, shape))} {np.dtype(dtype).name}: "
                  f"{str(exc).splitlines()[0][:120]}", file=sys.stderr)
        else:
            feeds = {"X": x.reshape(-1, n), "Scale": w, "B": b}
            yield "onnxruntime", "forward", measure(lambda: sess.run(None, feeds), **measure_kw)


def run_bench(shapes=None, dtype="float32", threads=None, repeat=None, budget=0.15, log=None):
    """Time every implementation on every shape; return a list of result dicts.

    `threads` (default: fastln's current count) is given to fastln, PyTorch and ONNX Runtime.
    `log`, if given, is called with each result as it is measured.
    """
    shapes = DEFAULT_SHAPES if shapes is None else shapes
    dtype = np.dtype(dtype)
    threads = fastln.get_num_threads() if threads is None else threads
    torch = peer("torch")
    ort_ok = peer("onnxruntime") is not None and peer("onnx") is not None
    previous_torch_threads = torch.get_num_threads() if torch is not None else None
    fastln.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    results = []
    try:
        for shape in shapes:
            copy_s = None
            for impl, op, seconds in _timings(shape, dtype, threads, torch, ort_ok,
                                              {"budget": budget, "repeat": repeat}):
                if op == "copy":
                    copy_s = seconds
                nbytes = op_bytes(op, shape, dtype)
                result = {"impl": impl, "op": op, "shape": list(shape), "dtype": dtype.name,
                          "threads": threads, "simd_path": _cpu.simd_path(),
                          "median_s": seconds, "gbps": nbytes / seconds / 1e9,
                          "ratio_to_copy": seconds / copy_s}
                results.append(result)
                if log is not None:
                    log(result)
    finally:
        fastln.set_num_threads(None)
        if torch is not None:
            torch.set_num_threads(previous_torch_threads)
    return results


def missing_peers():
    """Names of the peers that are not installed."""
    return [name for name in ("torch", "onnxruntime", "onnx") if peer(name) is None]


def table_header():
    return f"{'shape':<12} {'op':<9} {'impl':<16} {'time (us)':>11} {'GB/s':>8} {'x copy':>7}"


def table_row(r):
    shape = "x".join(map(str, r["shape"]))
    return (f"{shape:<12} {r['op']:<9} {r['impl']:<16} {r['median_s'] * 1e6:>11.1f} "
            f"{r['gbps']:>8.2f} {r['ratio_to_copy']:>7.2f}")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    """What the figures were measured on."""
    info = {
        "fastln": fastln.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": fastln.get_num_threads(),
        "simd_path": _cpu.simd_path(),
        "simd_paths": _cpu.simd_paths(),
        "build": _cpu.build_info(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "FASTLN_SIMD")},
    }
    for name in ("torch", "onnxruntime"):
        module = peer(name)
        info[name] = None if module is None else module.__version__
    return info
