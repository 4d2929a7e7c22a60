"""``python -m fastln info | check | bench``: what you are running, whether it is right, how fast.

Also installed as the ``fastln`` console script.
"""

import argparse
import json
import os
import platform
import sys

import numpy as np

import fastln
from fastln import _bench, _check, _cpu


def _gpu_lines():
    """(CuPy status, GPU status) as printable strings."""
    try:
        import cupy
    except ImportError:
        return "not installed", "unknown (needs CuPy)"
    except Exception as exc:  # a CuPy that cannot find its CUDA libraries, say
        return f"import failed: {exc}", "unknown"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        names = [cupy.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(count)]
        gpu = f"{count} visible" + (f" ({', '.join(names)})" if names else "")
    except Exception as exc:  # no driver, no device
        gpu = f"none visible ({str(exc).splitlines()[0]})"
    return cupy.__version__, gpu


def cmd_info(args):
    build = _cpu.build_info()
    cupy, gpu = _gpu_lines()
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "FASTLN_SIMD")}
    lines = [
        ("fastln", f"{fastln.__version__} ({os.path.dirname(fastln.__file__)})"),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("NumPy", np.__version__),
        ("OpenMP", "on" if build["openmp"] else "off (serial build)"),
        ("compiler", build["compiler"]),
        ("flags", build["flags"]),
        ("threads", str(fastln.get_num_threads())),
        ("CPUs", f"{os.cpu_count()} ({_bench.cpu_model()})"),
        ("SIMD path", _cpu.simd_path()),
        ("SIMD supported", ", ".join(_cpu.simd_paths())),
        ("SIMD compiled", ", ".join(build["compiled_paths"])),
        *((k, "(unset)" if v is None else repr(v)) for k, v in env.items()),
        ("CuPy", cupy),
        ("GPU", gpu),
    ]
    width = max(len(k) for k, _ in lines) + 1
    for key, value in lines:
        print(f"{key + ':':<{width}} {value}")
    return 0


def cmd_check(args):
    return 0 if _check.check(failures_only=args.failures_only) else 1


def _shapes(text):
    try:
        return _bench.parse_shapes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def cmd_bench(args):
    threads = args.threads or fastln.get_num_threads()
    missing = _bench.missing_peers()
    print(f"fastln {fastln.__version__}, SIMD path {_cpu.simd_path()}, {threads} thread(s), "
          f"{args.dtype}; median of many calls; 'x copy' = time / time of copying x")
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}")
    print(_bench.table_header())
    results = _bench.run_bench(args.shapes, args.dtype, threads, args.repeat,
                               log=lambda r: print(_bench.table_row(r), flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": _bench.machine_info(), "results": results}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def parser():
    p = argparse.ArgumentParser(prog="fastln", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="{info,check,bench}")

    s = sub.add_parser("info", help="version, build, threads, SIMD path, GPU")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("check", help="compare the kernels with fastln.reference (1 on failure)")
    s.add_argument("--failures-only", action="store_true", help="print only failing rows")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("bench", help="time fastln beside a copy, NumPy, PyTorch and ONNX Runtime")
    s.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    s.add_argument("--shapes", type=_shapes, default=None,
                   help="comma-separated shapes, normalized over the last dim, e.g. 8192x768,1x768")
    s.add_argument("--repeat", type=_positive, default=None,
                   help="timed samples per measurement (default: as many as fit in ~0.15 s)")
    s.add_argument("--threads", type=_positive, default=None,
                   help="threads for fastln and its peers (default: fastln's current count)")
    s.add_argument("--json", metavar="FILE", help="also write the results and machine info here")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv=None):
    """Run the command line; return its exit code."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
