"""Timing for ``fastln bench``: fastln beside a copy, the NumPy reference and its peers.

Every figure is the median over many samples timed with ``time.perf_counter``. The
implementations are timed one after another, each after a warm-up, never sampled in turn: on a
machine with few cores the idle threads of one runtime (ONNX Runtime's spinning workers, the
OpenMP pools of fastln and PyTorch) slowed the next one down, and interleaved samples made
PyTorch's (32, 768) forward 10-1000x slower. Ratios divide by the time of copying x into a
preallocated array, the memory-bandwidth floor of a forward pass; the copy is timed before and
after the other implementations of a shape, and the faster figure is the floor.
`fastln._report` turns the results into tables and a plot; the benchmarks/ suite reuses
`onnx_session`, `ThreadedCopy` and `op_bytes`.
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
from fastln import _cpu, reference

# One token up to a large batch, at the widths of common models (BERT/GPT-2 768, 1024, 4096,
# 8192); float32 from 3 KB to 268 MB.
DEFAULT_SHAPES = [(1, 768), (8, 768), (32, 768), (512, 1024), (8192, 768), (4096, 4096),
                  (1024, 8192), (65536, 1024)]
EPS = 1e-5
SETTLE_S = 0.1
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


def command(shapes=None, dtype="float32", threads=None, repeat=None):
    """The ``fastln bench`` command line that measures these settings again."""
    parts = ["fastln", "bench", "--dtype", np.dtype(dtype).name]
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
    weight, mean and rstd, write dx, dweight and dbias: 1.5x a copy's bytes, so a backward at
    the copy's bandwidth takes 1.5x its time.
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


def missing_peers():
    """Names of the peers that are not installed."""
    return [name for name in ("torch", "onnxruntime", "onnx") if peer(name) is None]


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

def workload(shape, dtype, seed=0):
    """x, weight, bias, dy for one shape: standard normal data, weight near 1, bias near 0."""
    rng = np.random.default_rng(seed)
    n = shape[-1]
    x = rng.standard_normal(shape, dtype=dtype)
    w = (1 + 0.1 * rng.standard_normal(n)).astype(dtype)
    b = (0.1 * rng.standard_normal(n)).astype(dtype)
    dy = rng.standard_normal(shape, dtype=dtype)
    return x, w, b, dy


def _implementations(shape, dtype, threads, torch, ort_ok, stack):
    """Yield (impl, op, fn) for one shape, each to be timed before the next is made.

    `stack` closes what they hold. The ONNX Runtime session comes last and lives only while it
    is timed: its idle workers spin.
    """
    x, w, b, dy = workload(shape, dtype)
    n = shape[-1]
    y = np.empty_like(x)
    _, mean, rstd = fastln.layer_norm_forward(x, n, w, b)

    # Candidates for the floor: one np.copyto, and `threads` of them side by side.
    copies = [lambda: np.copyto(y, x)]
    if threads > 1:
        copies.append(stack.enter_context(closing(ThreadedCopy(y, x, threads))))
    for copy in copies:
        yield "copy", "copy", copy
    yield "fastln (out=)", "forward", lambda: fastln.layer_norm(x, n, w, b, out=y)
    yield "fastln", "forward", lambda: fastln.layer_norm(x, n, w, b)
    yield "fastln", "backward", lambda: fastln.layer_norm_backward(dy, x, mean, rstd, w)
    if x.nbytes <= REFERENCE_MAX_BYTES:
        yield "numpy reference", "forward", lambda: reference.layer_norm(x, n, w, b)

    if torch is not None:
        F = torch.nn.functional
        xt, wt, bt, dyt = (torch.from_numpy(a) for a in (x, w, b, dy))
        yield "torch", "forward", lambda: F.layer_norm(xt, (n,), wt, bt, EPS)
        # The backward alone: autograd.grad walks one recorded graph again and again
        # (retain_graph keeps its saved x, mean and rstd), and each call runs
        # native_layer_norm_backward into fresh dx, dweight and dbias, as
        # fastln.layer_norm_backward does. The forward is not timed, nor is accumulating into
        # .grad, and short calls are batched like every other implementation's.
        xg, wg, bg = (torch.from_numpy(a).requires_grad_(True) for a in (x, w, b))
        yg = F.layer_norm(xg, (n,), wg, bg, EPS)
        yield ("torch autograd", "backward",
               lambda: torch.autograd.grad(yg, (xg, wg, bg), dyt, retain_graph=True))
        del yg

    if ort_ok:
        try:
            sess = onnx_session(n, dtype, threads)
        except Exception as exc:  # e.g. a runtime without this dtype's kernel
            print(f"onnxruntime: skipped {format_shape(shape)} {np.dtype(dtype).name}: "
                  f"{str(exc).splitlines()[0][:120]}", file=sys.stderr)
        else:
            feeds = {"X": x.reshape(-1, n), "Scale": w, "B": b}
            yield "onnxruntime", "forward", lambda: sess.run(None, feeds)
            del sess
    for copy in copies:
        yield "copy", "copy", copy


def run_bench(shapes=None, dtype="float32", threads=None, repeat=None, budget=BUDGET_S,
              log=None):
    """Time every implementation on every shape; return a list of result dicts.

    `threads` (default: fastln's current count) is given to fastln, PyTorch, ONNX Runtime and
    the threaded copy. `log`, if given, is called with each result once its shape is done
    (the copy, timed first and last, is known only then).
    """
    shapes = DEFAULT_SHAPES if shapes is None else shapes
    dtype = np.dtype(dtype)
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
        for shape in shapes:
            best = {}
            with ExitStack() as stack:
                for impl, op, fn in _implementations(shape, dtype, threads, torch, ort_ok,
                                                     stack):
                    # Let the previous runtime's spinning workers (OpenMP, ONNX Runtime's
                    # pool) go to sleep first: on 2 cores they would steal this one's time.
                    time.sleep(SETTLE_S)
                    seconds = measure(fn, budget=budget, repeat=repeat)
                    best[impl, op] = min(seconds, best.get((impl, op), math.inf))
            copy_s = best["copy", "copy"]
            for (impl, op), seconds in best.items():
                nbytes = op_bytes(op, shape, dtype)
                result = {"impl": impl, "op": op, "shape": list(shape), "dtype": dtype.name,
                          "threads": threads, "simd_path": _cpu.simd_path(),
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
                 log=None, busy=None):
    """`run_bench` wrapped in what a report needs: {"machine", "run", "results"}.

    "run" holds the date, the settings, the command that measures them again and how many CPUs
    other work kept busy just before (`busy`, measured when not given); this dict is what
    ``fastln bench --json`` writes and `fastln._report` reads.
    """
    threads = fastln.get_num_threads() if threads is None else threads
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    busy = busy_cpus() if busy is None else busy
    results = run_bench(shapes, dtype, threads, repeat, budget, log)
    shapes = DEFAULT_SHAPES if shapes is None else shapes
    return {"machine": machine_info(),
            "run": {"date": date, "dtype": np.dtype(dtype).name, "threads": threads,
                    "shapes": [list(s) for s in shapes], "repeat": repeat,
                    "busy_cpus_before": busy,
                    "command": command(shapes, dtype, threads, repeat)},
            "results": results}
