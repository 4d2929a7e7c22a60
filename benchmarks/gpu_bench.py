"""fastln's GPU kernels beside a device copy and PyTorch, on one CUDA GPU.

Needs a GPU, CuPy (``pip install fastln[gpu]``) and, for the comparison, a CUDA build of PyTorch.
From a checkout:

    python benchmarks/gpu_bench.py                      # the default shapes, float32 and float16
    python benchmarks/gpu_bench.py --shapes 8192x8192 --dtypes float32 --repeat 200

What is timed, for each shape and dtype:

- copy: x copied into a preallocated array (cupy.copyto, and a device-to-device memcpy; the
  faster of the two is the copy bandwidth the others are measured against);
- fastln forward (``layer_norm`` with weight and bias) and backward (``layer_norm_backward``:
  dx, dweight, dbias);
- torch.nn.functional.layer_norm forward (under no_grad) and its autograd backward
  (``torch.autograd.grad`` of y for x, weight and bias).

Each timing is the GPU time of one call between two CUDA events, the median of --repeat calls
after warm-up. Before each call a 256 MiB buffer is zeroed, which evicts the inputs from L2 (every
byte then comes from memory, as for a layer in a real network), and a spin kernel keeps the GPU
busy while Python enqueues the call, so host overhead is not in the GPU time. The host's share is
reported on its own: ``call_us`` is the wall time per call of back-to-back calls.

Bytes moved: a copy and the forward read x and write y (2 x.nbytes); the backward reads x and dy
and writes dx (3 x.nbytes, 1.5x a copy's bytes). GB/s is those bytes over the GPU time;
``of_copy`` is that over the copy's GB/s; ``vs_torch`` is torch's time over fastln's.

The results, with the device, CuPy, CUDA and torch versions, are written to
benchmarks/results/gpu-<device-name>.json (or --json PATH).
"""

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

import numpy as np

DEFAULT_SHAPES = "8192x8192,4096x1024,32768x768"
FLUSH_BYTES = 256 << 20
SPIN_S = 200e-6
# (shape, dtype) -> (forward fraction of copy, backward fraction of copy), both also faster than
# torch; every other shape: no slower than torch.
TARGETS = {((8192, 8192), "float32"): (0.85, 0.70)}

_SPIN_SOURCE = r"""
extern "C" __global__ void spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=DEFAULT_SHAPES,
                   help=f"comma-separated ROWSxN shapes (default {DEFAULT_SHAPES})")
    p.add_argument("--dtypes", default="float32,float16", help="float32 and/or float16")
    p.add_argument("--repeat", type=int, default=100, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls first")
    p.add_argument("--calls", type=int, default=200,
                   help="back-to-back calls timed on the host for call_us")
    p.add_argument("--eps", type=float, default=1e-5)
    p.add_argument("--json", help="where to write the results (default "
                                  "benchmarks/results/gpu-<device>.json)")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    return p.parse_args(argv)


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class Timer:
    """GPU time of a call, measured as the module docstring says."""

    def __init__(self, cupy, repeat, warmup, calls):
        self.cupy, self.repeat, self.warmup, self.calls = cupy, repeat, warmup, calls
        self.flush = cupy.empty(FLUSH_BYTES, np.uint8)
        self.spin = cupy.RawKernel(_SPIN_SOURCE, "spin")
        clock_khz = cupy.cuda.Device().attributes["ClockRate"]
        self.cycles = np.int64(SPIN_S * clock_khz * 1e3)
        self.start, self.end = cupy.cuda.Event(), cupy.cuda.Event()

    def gpu_s(self, fn):
        cupy = self.cupy
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeat):
            self.flush.fill(0)
            self.spin((1,), (1,), (self.cycles,))
            self.start.record()
            fn()
            self.end.record()
            self.end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(self.start, self.end) * 1e-3)
        return statistics.median(times)

    def call_s(self, fn):
        """Wall time per call of back-to-back calls (host overhead included)."""
        cupy = self.cupy
        fn()
        cupy.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(self.calls):
            fn()
        cupy.cuda.Device().synchronize()
        return (time.perf_counter() - t0) / self.calls


def environment(cupy, torch):
    runtime = cupy.cuda.runtime
    device = cupy.cuda.Device()
    props = runtime.getDeviceProperties(device.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])

    def version(v):
        return f"{v // 1000}.{v % 1000 // 10}"

    env = {
        "device": name,
        "compute_capability": f"{props['major']}.{props['minor']}",
        "multiprocessors": props["multiProcessorCount"],
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "cupy": cupy.__version__,
        "cuda_runtime": version(runtime.runtimeGetVersion()),
        "cuda_driver": version(runtime.driverGetVersion()),
        "torch": None if torch is None else torch.__version__,
        "torch_cuda": None if torch is None else torch.version.cuda,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    return env


def rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / scale) if scale else float(np.abs(a - b).max())


def bench_shape(cupy, torch, timer, shape, dtype, eps):
    from fastln import _gpu

    n = shape[-1]
    rng = cupy.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(dtype)
    b = (0.1 * rng.standard_normal(n, dtype=np.float32)).astype(dtype)
    nbytes = x.nbytes
    rows = []

    def record(impl, op, fn, moved):
        seconds = timer.gpu_s(fn)
        rows.append({"impl": impl, "op": op, "shape": list(shape), "dtype": dtype,
                     "gpu_s": seconds, "bytes": moved, "gbps": moved / seconds / 1e9,
                     "call_us": timer.call_s(fn) * 1e6})
        return rows[-1]

    dst = cupy.empty_like(x)
    record("cupy", "copy (copyto)", lambda: cupy.copyto(dst, x), 2 * nbytes)
    record("cupy", "copy (memcpy)",
           lambda: dst.data.copy_from_device_async(x.data, nbytes), 2 * nbytes)
    copy_gbps = max(r["gbps"] for r in rows)

    y, mean, rstd = _gpu.layer_norm_forward(x, n, w, b, eps)
    record("fastln", "forward", lambda: _gpu.layer_norm(x, n, w, b, eps), 2 * nbytes)
    grads = _gpu.layer_norm_backward(dy, x, mean, rstd, w)
    record("fastln", "backward", lambda: _gpu.layer_norm_backward(dy, x, mean, rstd, w),
           3 * nbytes)

    checks = {}
    if torch is not None:
        F = torch.nn.functional
        xt, dyt = torch.from_dlpack(x), torch.from_dlpack(dy)
        wt, bt = torch.from_dlpack(w), torch.from_dlpack(b)

        def torch_forward():
            with torch.no_grad():
                return F.layer_norm(xt, (n,), wt, bt, eps)

        record("torch", "forward", torch_forward, 2 * nbytes)
        xg = xt.detach().clone().requires_grad_()
        wg = wt.detach().clone().requires_grad_()
        bg = bt.detach().clone().requires_grad_()
        yg = F.layer_norm(xg, (n,), wg, bg, eps)
        record("torch", "backward",
               lambda: torch.autograd.grad(yg, (xg, wg, bg), dyt, retain_graph=True), 3 * nbytes)
        # fastln beside torch, both in float32 on the host: a wrong kernel shows here first.
        t_grads = torch.autograd.grad(yg, (xg, wg, bg), dyt, retain_graph=True)
        checks = {
            "y": rel_diff(cupy.asnumpy(y), torch_forward().float().cpu().numpy()),
            "dx": rel_diff(cupy.asnumpy(grads[0]), t_grads[0].float().cpu().numpy()),
            "dweight": rel_diff(cupy.asnumpy(grads[1]), t_grads[1].float().cpu().numpy()),
            "dbias": rel_diff(cupy.asnumpy(grads[2]), t_grads[2].float().cpu().numpy()),
        }

    for r in rows:
        r["of_copy"] = r["gbps"] / copy_gbps
        peer = next((p for p in rows if p["impl"] == "torch" and p["op"] == r["op"]), None)
        if r["impl"] == "fastln" and peer is not None:
            r["vs_torch"] = peer["gpu_s"] / r["gpu_s"]
    return rows, checks


def verdicts(results):
    """(text, passed) for each target this run can judge."""
    out = []
    by_key = {(tuple(r["shape"]), r["dtype"], r["impl"], r["op"]): r for r in results}
    for (shape, dtype, impl, op), r in sorted(by_key.items()):
        if impl != "fastln":
            continue
        target = TARGETS.get((shape, dtype))
        name = f"{'x'.join(map(str, shape))} {dtype} {op}"
        if target is not None:
            need = target[0] if op == "forward" else target[1]
            out.append((f"{name}: {r['of_copy']:.0%} of copy bandwidth (target {need:.0%})",
                        r["of_copy"] >= need))
        if "vs_torch" in r:
            strict = target is not None
            ok = r["vs_torch"] > 1.0 if strict else r["vs_torch"] >= 1.0
            out.append((f"{name}: {r['vs_torch']:.2f}x torch's speed (target "
                        f"{'faster' if strict else 'no slower'})", ok))
    return out


def main(argv=None):
    args = parse_args(argv)
    import cupy

    torch = None
    if not args.no_torch:
        try:
            import torch
            if not torch.cuda.is_available():
                print("torch has no CUDA here: compared with the copy only", file=sys.stderr)
                torch = None
        except ImportError:
            print("torch is not installed: compared with the copy only", file=sys.stderr)
    env = environment(cupy, torch)
    print(f"{env['device']} (sm_{env['compute_capability'].replace('.', '')}, "
          f"{env['multiprocessors']} SMs), CuPy {env['cupy']}, CUDA runtime "
          f"{env['cuda_runtime']} / driver {env['cuda_driver']}, torch {env['torch']}")
    timer = Timer(cupy, args.repeat, args.warmup, args.calls)
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]
    dtypes = args.dtypes.split(",")
    results, checks = [], {}
    header = (f"{'shape':>12} {'dtype':>8} {'impl':>7} {'op':>14} {'GPU us':>9} {'GB/s':>7} "
              f"{'of copy':>8} {'vs torch':>9} {'call us':>8}")
    print(header)
    for dtype in dtypes:
        for shape in shapes:
            rows, check = bench_shape(cupy, torch, timer, shape, dtype, args.eps)
            checks[f"{'x'.join(map(str, shape))} {dtype}"] = check
            for r in rows:
                vs = f"{r['vs_torch']:.2f}x" if "vs_torch" in r else ""
                print(f"{'x'.join(map(str, shape)):>12} {dtype:>8} {r['impl']:>7} {r['op']:>14} "
                      f"{r['gpu_s'] * 1e6:9.1f} {r['gbps']:7.0f} {r['of_copy']:8.0%} {vs:>9} "
                      f"{r['call_us']:8.1f}", flush=True)
            results += rows
            if check:
                print(f"{'':>12} fastln vs torch, max|diff|/max|torch|: "
                      + ", ".join(f"{k} {v:.1e}" for k, v in check.items()))
    print()
    judged = verdicts(results)
    for text, ok in judged:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    report = {"environment": env, "method": __doc__.split("What is timed")[1].strip(),
              "results": results, "fastln_vs_torch_rel_diff": checks,
              "targets": [{"target": t, "passed": ok} for t, ok in judged]}
    path = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                     f"gpu-{slug(env['device'])}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
