"""Timing for ``fastln bench``: fastln beside a copy, the NumPy reference and its peers.

Four workloads, each an op with its peers: layer_norm (PyTorch's ``F.layer_norm``, ONNX Runtime's
``LayerNormalization``), rms_norm (``F.rms_norm``, ``SimplifiedLayerNormalization``) and the
fused residual add + norm, add_layer_norm (``F.layer_norm(x + r)``, ``SkipLayerNormalization``)
and add_rms_norm (``F.rms_norm(x + r)``, ``SkipSimplifiedLayerNormalization``).

Every figure is the median over many samples timed with ``time.perf_counter``. The
implementations are timed one after another, each after a warm-up, never sampled in turn: on a
machine with few cores the idle threads of one runtime (ONNX Runtime's spinning workers, the
OpenMP pools of fastln and PyTorch) slowed the next one down, and interleaved samples made
PyTorch's (32, 768) forward 10-1000x slower. Ratios divide by the time of copying the inputs
into preallocated arrays (x; x and the residual for add + norm), the memory-bandwidth floor of a
forward pass; the copy is timed before and after the other implementations of a shape, and the
faster figure is the floor. Each shape is timed in PASSES such passes over the same arrays, and
every implementation, the copy included, keeps its fastest median: other work on a shared
machine slows whatever runs while it does, and single passes had put single cells up to 1.8x
off (Zen 4, two threads, float32 LayerNorm 8192 x 768: backward 2.67x the copy and forward with
out= 1.39x in one run, 1.52x and 0.78x timed side by side minutes later). `fastln._report`
turns the results into tables and a plot; the benchmarks/ suite reuses `bench_arrays`, the
`*_calls` functions, `ThreadedCopy` and `op_bytes`.
"""

import datetime
import importlib
import math
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing

import numpy as np

import fastln
from fastln import _cpu, _ops, reference

# One token up to a large batch, at the widths of common models (BERT/GPT-2 768, 1024, 4096,
# 8192); float32 from 3 KB to 268 MB.
DEFAULT_SHAPES = [(1, 768), (8, 768), (32, 768), (512, 1024), (8192, 768), (4096, 4096),
                  (1024, 8192), (65536, 1024)]
EPS = 1e-5
# workload -> (what it computes, PyTorch's counterpart); ONNX_OPS holds ONNX Runtime's.
WORKLOADS = {
    "layer_norm": ("LayerNorm", "F.layer_norm"),
    "rms_norm": ("RMSNorm", "F.rms_norm"),
    "add_layer_norm": ("add + LayerNorm", "F.layer_norm(x + r)"),
    "add_rms_norm": ("add + RMSNorm", "F.rms_norm(x + r)"),
}
DTYPES = ("float32", "float64", "float16", "bfloat16")
SETTLE_S = 0.1
PASSES = 2            # passes over each shape's implementations (see the module docstring)
# The float64 NumPy reference takes seconds above this size of x; it is left out there.
REFERENCE_MAX_BYTES = 32 * 2**20
# Other work keeping this many CPUs busy makes threaded timings unreliable: a thread that
# waits at a barrier for a descheduled sibling waits a whole time slice.
BUSY_WARNING = 0.25

WARMUP_S = 0.01       # each implementation runs this long before it is timed
SAMPLE_S = 1e-3       # short calls are batched so that one sample lasts about this long
BUDGET_S = 0.2        # default seconds of sampling per implementation and shape
MIN_SAMPLES = 3
MAX_SAMPLES = 500


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


def format_shape(shape):
    return "x".join(map(str, shape))


def workloads(op):
    """The workloads ``--op`` names: one of WORKLOADS, or "all" of them."""
    if op == "all":
        return list(WORKLOADS)
    if op not in WORKLOADS:
        raise ValueError(f"unknown op {op!r}: expected one of {', '.join(WORKLOADS)} or all")
    return [op]


def dtype_name(dtype):
    """The name results carry: "float32", ... "bfloat16" (a name NumPy knows only once ml_dtypes
    is imported)."""
    return dtype if isinstance(dtype, str) and dtype == "bfloat16" else np.dtype(dtype).name


def itemsize(dtype):
    """Bytes per element of `dtype` or its name; needs no ml_dtypes for bfloat16."""
    return 2 if dtype_name(dtype) == "bfloat16" else np.dtype(dtype).itemsize


def data_dtype(dtype):
    """numpy.dtype of `dtype` or its name; bfloat16 is ml_dtypes' and raises ImportError saying
    what to install where ml_dtypes is missing."""
    if dtype_name(dtype) == "bfloat16":
        return _ops.bfloat16_dtype()
    return np.dtype(dtype)


def command(shapes=None, dtype="float32", threads=None, repeat=None, op="layer_norm"):
    """The ``fastln bench`` command line that measures these settings again."""
    parts = ["fastln", "bench"] + (["--op", op] if op != "layer_norm" else [])
    parts += ["--dtype", dtype_name(dtype)]
    if threads is not None:
        parts += ["--threads", str(threads)]
    if shapes is not None and [tuple(s) for s in shapes] != DEFAULT_SHAPES:
        parts += ["--shapes", ",".join(format_shape(s) for s in shapes)]
    if repeat is not None:
        parts += ["--repeat", str(repeat)]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# timing

def _batch(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - t0


def measure(fn, *, budget=BUDGET_S, repeat=None):
    """Median seconds per call of ``fn()``.

    Calls run for WARMUP_S first (at least one), which also estimates their time; short calls
    are then batched so that one sample lasts about SAMPLE_S (the clock and the loop then cost
    under 1%). Samples are taken until `budget` seconds have passed and there are MIN_SAMPLES,
    or exactly `repeat` of them: large shapes get few samples and small ones hundreds.
    """
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= WARMUP_S:
            break
    number = max(1, math.ceil(SAMPLE_S / (elapsed / calls)))
    samples = []
    start = time.perf_counter()
    while True:
        samples.append(_batch(fn, number) / number)
        if repeat is not None:
            if len(samples) >= repeat:
                break
        elif len(samples) >= MIN_SAMPLES and (time.perf_counter() - start >= budget
                                              or len(samples) >= MAX_SAMPLES):
            break
    return float(np.median(samples))


def copy_pairs(a):
    """(destination, source) of the copy floor for the arrays `a` of `bench_arrays`: x into out,
    and for add + norm the residual into sum_out too (two arrays in, two out, as the op)."""
    pairs = [(a["out"], a["x"])]
    if "r" in a:
        pairs.append((a["sum_out"], a["r"]))
    return pairs


def copy_call(pairs):
    """Copy each (dst, src) of `pairs` once, on one thread."""
    # A lambda per case, no loop: at one row the copy takes a few hundred ns and a loop's
    # overhead would lower the floor's speed.
    if len(pairs) == 1:
        (d, s), = pairs
        return lambda: np.copyto(d, s)
    (d1, s1), (d2, s2) = pairs
    return lambda: (np.copyto(d1, s1), np.copyto(d2, s2))


class ThreadedCopy:
    """``np.copyto(dst, src)`` split over `threads` threads (np.copyto releases the GIL).

    `dst` and `src` may be equal-length tuples of arrays: each thread then copies its share of
    every pair, as a fused kernel reads its block of rows from each input.
    """

    def __init__(self, dst, src, threads):
        if not isinstance(dst, (tuple, list)):
            dst, src = (dst,), (src,)
        self.chunks = [[] for _ in range(threads)]
        for d, s in zip(dst, src):
            d, s = d.reshape(-1), s.reshape(-1)
            bounds = np.linspace(0, d.size, threads + 1).astype(int)
            for chunk, a, b in zip(self.chunks, bounds[:-1], bounds[1:]):
                chunk.append((d[a:b], s[a:b]))
        self.pool = ThreadPoolExecutor(max(1, threads - 1))

    @staticmethod
    def _copy(chunk):
        for d, s in chunk:
            np.copyto(d, s)

    def __call__(self):
        futures = [self.pool.submit(self._copy, chunk) for chunk in self.chunks[1:]]
        self._copy(self.chunks[0])
        for f in futures:
            f.result()

    def close(self):
        self.pool.shutdown()


def op_bytes(op, shape, dtype, workload="layer_norm"):
    """Bytes an op of `workload` must move at the least.

    Arrays of `shape` are in `dtype`; weight, bias (N values each) and the per-row mean and rstd
    in float32 for 16-bit data, else in `dtype`.

    - layer_norm: copy reads x, writes y. forward reads x, weight and bias, writes y. backward
      reads x, dy, weight, mean and rstd, writes dx, dweight and dbias: 1.5x a copy's bytes, so
      a backward at the copy's bandwidth takes 1.5x its time.
    - rms_norm: as layer_norm, without bias and mean.
    - add_layer_norm: copy reads x and residual, writes y and s (two copies). forward reads x,
      residual, weight and bias, writes y and s. backward reads dy, s, dsum, weight, mean and
      rstd, writes ds (the gradient of x and of the residual), dweight and dbias: four arrays,
      the copy's bytes.
    - add_rms_norm: as add_layer_norm, without bias and mean.
    """
    workloads(workload)
    size, n = math.prod(shape), shape[-1]
    rows, item = size // n, itemsize(dtype)
    small = 4 if item == 2 else item
    fused, rms = workload.startswith("add_"), workload.endswith("rms_norm")
    # (arrays of x's shape, N-long weights, biases and their gradients, per-row statistics)
    arrays, params, stats = {
        "copy": (4 if fused else 2, 0, 0),
        "forward": (4 if fused else 2, 1 if rms else 2, 0),
        "backward": (4 if fused else 3, 2 if rms else 3, 1 if rms else 2),
    }[op]
    return item * arrays * size + small * (params * n + stats * rows)


# ---------------------------------------------------------------------------------------------
# peers

def peer(name):
    """The imported module, or None when it is not installed (or fails to import)."""
    try:
        return importlib.import_module(name)
    except Exception:  # a broken install counts as absent: the bench still runs
        return None


def missing_peers():
    """Names of the peers that are not installed."""
    return [name for name in ("torch", "onnxruntime", "onnx") if peer(name) is None]


# workload -> (ONNX Runtime's operator, its domain, the graph's inputs).
# SimplifiedLayerNormalization is a contrib op that ONNX Runtime registers in the default domain;
# the Skip ones are in com.microsoft, and their output 3, input_skip_bias_sum, is s.
ONNX_OPS = {
    "layer_norm": ("LayerNormalization", "", ("X", "Scale", "B")),
    "rms_norm": ("SimplifiedLayerNormalization", "", ("X", "Scale")),
    "add_layer_norm": ("SkipLayerNormalization", "com.microsoft", ("X", "Skip", "Scale", "B")),
    "add_rms_norm": ("SkipSimplifiedLayerNormalization", "com.microsoft", ("X", "Skip", "Scale")),
}


def onnx_session(n, dtype, threads, workload="layer_norm"):
    """An ONNX Runtime session of `workload`'s operator (ONNX_OPS) over the last axis of (rows, n).

    Opset 17. Inputs X (and Skip, the residual), Scale (and B) in `dtype`; outputs Y, and S
    (x + residual) for add + norm, so that ONNX Runtime writes both as fastln does. Raises if
    onnx/onnxruntime are missing or reject the operator or dtype.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    elem = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE,
            "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}[dtype_name(dtype)]
    op, domain, inputs = ONNX_OPS[workload]
    fused = "Skip" in inputs
    outputs = ["Y", "", "", "S"] if fused else ["Y"]
    attributes = {"epsilon": EPS} if fused else {"axis": -1, "epsilon": EPS}
    node = helper.make_node(op, list(inputs), outputs, domain=domain, **attributes)
    graph = helper.make_graph(
        [node], workload,
        [helper.make_tensor_value_info(name, elem, [n] if name in ("Scale", "B") else ["rows", n])
         for name in inputs],
        [helper.make_tensor_value_info(name, elem, ["rows", n]) for name in outputs if name])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = min(model.ir_version, 9)     # what older runtimes still load
    if workload == "layer_norm":                    # the checker knows standard operators only
        onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def onnx_feeds(workload, a):
    """The feeds of `onnx_session`'s model from the arrays `a` of `bench_arrays`.

    Weight and bias go in the data's dtype, as a 16-bit model holds them. ONNX Runtime takes no
    ml_dtypes arrays: bfloat16 goes in as OrtValues, to be run with ``run_with_ort_values``.
    """
    x = a["x"]
    n = x.shape[-1]
    arrays = {"X": x.reshape(-1, n), "Scale": a["w"].astype(x.dtype), "B": a["b"].astype(x.dtype)}
    if "r" in a:
        arrays["Skip"] = a["r"].reshape(-1, n)
    feeds = {name: arrays[name] for name in ONNX_OPS[workload][2]}
    if dtype_name(x.dtype) == "bfloat16":
        import onnxruntime as ort
        from onnx import TensorProto

        feeds = {name: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                     v.view(np.uint16), TensorProto.BFLOAT16) for name, v in feeds.items()}
    return feeds


def torch_tensor(torch, a):
    """ndarray `a` as a tensor sharing its memory; bfloat16 through an int16 view, since
    torch.from_numpy knows no ml_dtypes arrays."""
    if dtype_name(a.dtype) == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


# ---------------------------------------------------------------------------------------------
# the bench

def _normal(rng, shape, dtype):
    if itemsize(dtype) == 2:            # the generator draws float32 and float64 only
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    return rng.standard_normal(shape, dtype=dtype)


def bench_arrays(shape, dtype, workload="layer_norm", seed=0):
    """What the implementations of `workload` on one shape read and write, as a dict.

    x, dy: standard normal data; w, b: weight near 1 and bias near 0 (float32 for 16-bit data,
    as fastln's kernels take them; the peers get them in the data's dtype); out: an array to
    write y into. The forward's statistics for the backward: mean (LayerNorm) and rstd. For add
    + norm also r (the residual), dsum (the incoming gradient of s), s (the forward's x + r, read
    by the backward) and sum_out (where the forward with out= writes s).
    """
    dtype = data_dtype(dtype)
    workloads(workload)
    rng = np.random.default_rng(seed)
    n = shape[-1]
    param = np.dtype(np.float32) if dtype.itemsize == 2 else dtype
    a = {"x": _normal(rng, shape, dtype),
         "w": (1 + 0.1 * rng.standard_normal(n)).astype(param),
         "b": (0.1 * rng.standard_normal(n)).astype(param),
         "dy": _normal(rng, shape, dtype)}
    a["out"] = np.empty_like(a["x"])
    x, w, b = a["x"], a["w"], a["b"]
    if workload == "layer_norm":
        _, a["mean"], a["rstd"] = fastln.layer_norm_forward(x, n, w, b, EPS)
    elif workload == "rms_norm":
        _, a["rstd"] = fastln.rms_norm_forward(x, n, w, EPS)
    else:
        a["r"], a["dsum"] = _normal(rng, shape, dtype), _normal(rng, shape, dtype)
        a["sum_out"] = np.empty_like(x)
        if workload == "add_layer_norm":
            _, a["s"], a["mean"], a["rstd"] = fastln.add_layer_norm_forward(x, a["r"], n, w, b,
                                                                            EPS)
        else:
            _, a["s"], a["rstd"] = fastln.add_rms_norm_forward(x, a["r"], n, w, EPS)
    return a


def fastln_calls(workload, a):
    """fastln's callables on the arrays `a` of `bench_arrays`, as a tuple: the forward into
    preallocated outputs (out=, and sum_out= for add + norm), the forward into fresh ones, the
    backward (given dsum for add + norm), and the NumPy reference's forward."""
    x, w, b, dy, n = a["x"], a["w"], a["b"], a["dy"], a["x"].shape[-1]
    if workload == "layer_norm":
        mean, rstd, y = a["mean"], a["rstd"], a["out"]
        return (lambda: fastln.layer_norm(x, n, w, b, out=y),
                lambda: fastln.layer_norm(x, n, w, b),
                lambda: fastln.layer_norm_backward(dy, x, mean, rstd, w),
                lambda: reference.layer_norm(x, n, w, b))
    if workload == "rms_norm":
        rstd, y = a["rstd"], a["out"]
        return (lambda: fastln.rms_norm(x, n, w, EPS, out=y),
                lambda: fastln.rms_norm(x, n, w, EPS),
                lambda: fastln.rms_norm_backward(dy, x, rstd, w),
                lambda: reference.rms_norm(x, n, w, EPS))
    r, s, dsum, y, s_out = a["r"], a["s"], a["dsum"], a["out"], a["sum_out"]
    rstd = a["rstd"]
    if workload == "add_layer_norm":
        mean = a["mean"]
        return (lambda: fastln.add_layer_norm(x, r, n, w, b, EPS, out=y, sum_out=s_out),
                lambda: fastln.add_layer_norm(x, r, n, w, b, EPS),
                lambda: fastln.add_layer_norm_backward(dy, s, mean, rstd, w, dsum),
                lambda: reference.add_layer_norm(x, r, n, w, b, EPS))
    return (lambda: fastln.add_rms_norm(x, r, n, w, EPS, out=y, sum_out=s_out),
            lambda: fastln.add_rms_norm(x, r, n, w, EPS),
            lambda: fastln.add_rms_norm_backward(dy, s, rstd, w, dsum),
            lambda: reference.add_rms_norm(x, r, n, w, EPS))


def torch_calls(torch, workload, a):
    """PyTorch's (forward, backward) callables for `workload` on the arrays `a` of
    `bench_arrays`: ``F.layer_norm`` or ``F.rms_norm``, of ``x + r`` for add + norm, with weight
    and bias in the data's dtype.

    The backward alone: autograd.grad walks one recorded graph again and again (retain_graph
    keeps what it saved), and each call computes fresh gradients of x (and r), weight (and
    bias), as fastln's backward does; for add + norm given the gradients of both y and s (dy
    and dsum). The forward is not timed, nor is accumulating into .grad, and short calls are
    batched like every other implementation's.
    """
    F = torch.nn.functional
    x = a["x"]
    n, fused, rms = x.shape[-1], "r" in a, workload.endswith("rms_norm")

    def tensors(grad):
        t = {k: torch_tensor(torch, a[k].astype(x.dtype, copy=False)) for k in ("x", "w", "b")}
        if fused:
            t["r"] = torch_tensor(torch, a["r"])
        for v in t.values():
            v.requires_grad_(grad)
        return t

    def norm(t):
        s = t["x"] + t["r"] if fused else t["x"]
        y = F.rms_norm(s, (n,), t["w"], EPS) if rms else F.layer_norm(s, (n,), t["w"], t["b"], EPS)
        return y, s

    t = tensors(False)
    g = tensors(True)
    inputs = [g[k] for k in (("x", "r", "w") if fused else ("x", "w"))] + ([] if rms else [g["b"]])
    y, s = norm(g)
    outputs, grads = (y,), (torch_tensor(torch, a["dy"]),)
    if fused:
        outputs, grads = (y, s), grads + (torch_tensor(torch, a["dsum"]),)
    return (lambda: norm(t)[0],
            lambda: torch.autograd.grad(outputs, inputs, grads, retain_graph=True))


def _implementations(a, shape, dtype, threads, torch, ort_ok, stack, workload="layer_norm"):
    """Yield (impl, op, fn) of `workload` on the arrays `a` (`bench_arrays`) of one shape, each to
    be timed before the next is made.

    `stack` closes what they hold. The ONNX Runtime session comes last and lives only while it
    is timed: its idle workers spin.
    """
    # Candidates for the floor: one np.copyto (per input), and `threads` of them side by side.
    pairs = copy_pairs(a)
    copies = [copy_call(pairs)]
    if threads > 1:
        dst, src = zip(*pairs)
        copies.append(stack.enter_context(closing(ThreadedCopy(dst, src, threads))))
    for copy in copies:
        yield "copy", "copy", copy
    out, fresh, backward, ref = fastln_calls(workload, a)
    yield "fastln (out=)", "forward", out
    yield "fastln", "forward", fresh
    yield "fastln", "backward", backward
    if a["x"].nbytes <= REFERENCE_MAX_BYTES:
        yield "numpy reference", "forward", ref

    if torch is not None:
        forward, backward = torch_calls(torch, workload, a)
        yield "torch", "forward", forward
        yield "torch autograd", "backward", backward
        del forward, backward                       # and the recorded graph with them

    if ort_ok:
        try:
            sess = onnx_session(shape[-1], a["x"].dtype, threads, workload)
            feeds = onnx_feeds(workload, a)
        except Exception as exc:  # e.g. a runtime without this dtype's kernel
            print(f"onnxruntime: skipped {workload} {format_shape(shape)} {dtype_name(dtype)}: "
                  f"{str(exc).splitlines()[0][:120]}", file=sys.stderr)
        else:
            run = sess.run_with_ort_values if dtype_name(dtype) == "bfloat16" else sess.run
            yield "onnxruntime", "forward", lambda: run(None, feeds)
            del sess, run
    for copy in copies:
        yield "copy", "copy", copy


def run_bench(shapes=None, dtype="float32", threads=None, repeat=None, budget=BUDGET_S,
              log=None, op="layer_norm"):
    """Time every implementation of the workloads `op` names on every shape; return a list of
    result dicts.

    `op` is one of WORKLOADS or "all"; the results of one workload come together, shape by shape,
    each saying its "workload". `threads` (default: fastln's current count) is given to fastln,
    PyTorch, ONNX Runtime and the threaded copy. `log`, if given, is called with each result once
    its shape is done (the copy, timed first and last, is known only then).
    """
    shapes = DEFAULT_SHAPES if shapes is None else shapes
    dtype = data_dtype(dtype)
    names = workloads(op)
    threads = fastln.get_num_threads() if threads is None else threads
    torch = peer("torch")
    ort_ok = peer("onnxruntime") is not None and peer("onnx") is not None
    previous_torch_threads = torch.get_num_threads() if torch is not None else None
    previous_threads = _cpu.requested_num_threads()
    fastln.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    results = []
    try:
        for workload, shape in ((w, s) for w in names for s in shapes):
            best = {}
            a = bench_arrays(shape, dtype, workload)
            for _ in range(PASSES):
                with ExitStack() as stack:
                    for impl, kind, fn in _implementations(a, shape, dtype, threads, torch,
                                                           ort_ok, stack, workload):
                        # Let the previous runtime's spinning workers (OpenMP, ONNX Runtime's
                        # pool) go to sleep first: on 2 cores they would steal this one's time.
                        time.sleep(SETTLE_S)
                        seconds = measure(fn, budget=budget, repeat=repeat)
                        best[impl, kind] = min(seconds, best.get((impl, kind), math.inf))
            del a
            copy_s = best["copy", "copy"]
            for (impl, kind), seconds in best.items():
                nbytes = op_bytes(kind, shape, dtype, workload)
                result = {"workload": workload, "impl": impl, "op": kind, "shape": list(shape),
                          "dtype": dtype.name, "threads": threads, "simd_path": _cpu.simd_path(),
                          "median_s": seconds, "bytes": nbytes, "gbps": nbytes / seconds / 1e9,
                          "ratio_to_copy": seconds / copy_s}
                results.append(result)
                if log is not None:
                    log(result)
    finally:
        fastln.set_num_threads(previous_threads)
        if torch is not None:
            torch.set_num_threads(previous_torch_threads)
    return results


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_times():
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]          # total, idle + iowait


def busy_cpus(interval=0.25):
    """How many CPUs other work keeps busy (steal included), sampled while this process
    sleeps for `interval` seconds; None where /proc/stat cannot be read."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(interval)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


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


def bench_report(shapes=None, dtype="float32", threads=None, repeat=None, budget=BUDGET_S,
                 log=None, busy=None, op="layer_norm"):
    """`run_bench` wrapped in what a report needs: {"machine", "run", "results"}.

    "run" holds the date, the settings, the command that measures them again and how many CPUs
    other work kept busy just before (`busy`, measured when not given); this dict is what
    ``fastln bench --json`` writes and `fastln._report` reads.
    """
    threads = fastln.get_num_threads() if threads is None else threads
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    busy = busy_cpus() if busy is None else busy
    results = run_bench(shapes, dtype, threads, repeat, budget, log, op)
    shapes = DEFAULT_SHAPES if shapes is None else shapes
    return {"machine": machine_info(),
            "run": {"date": date, "op": op, "dtype": dtype_name(dtype), "threads": threads,
                    "shapes": [list(s) for s in shapes], "repeat": repeat,
                    "busy_cpus_before": busy,
                    "command": command(shapes, dtype, threads, repeat, op)},
            "results": results}
