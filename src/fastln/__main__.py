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
from fastln import _bench, _check, _cpu, _gpu, _report


def cmd_info(args):
    build = _cpu.build_info()
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
        *_gpu.info(),  # CuPy, CUDA, GPU, and whether the GPU kernels compiled (or why not)
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


def _load(path):
    """A report written by ``fastln bench --json``."""
    with open(path) as f:
        report = json.load(f)
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise ValueError("not a `fastln bench --json` file (no list of results)")
    for r in report["results"]:
        missing = {"impl", "op", "shape", "dtype", "median_s", "gbps", "ratio_to_copy"} - set(r)
        if missing:
            raise ValueError(f"a result lacks {', '.join(sorted(missing))}")
        r.setdefault("workload", _report.DEFAULT_WORKLOAD)
        r.setdefault("bytes", _bench.op_bytes(r["op"], r["shape"], r["dtype"], r["workload"]))
    return report


class _TableLog:
    """Prints results as rows of the timing table, under a header per workload; titled with the
    workload unless the rows are LayerNorm's alone (which print as before there were others)."""

    def __init__(self, file, titled):
        self.file, self.titled, self.workload = file, titled, None

    def header(self, workload):
        if self.titled:
            if self.workload is not None:
                print(file=self.file)
            print(f"{workload}: {_bench.WORKLOADS.get(workload, (workload,))[0]}", file=self.file)
        if self.titled or self.workload is None:
            print(_report.table_header(), file=self.file, flush=True)
        self.workload = workload

    def __call__(self, r):
        if _report.workload_of(r) != self.workload:
            self.header(_report.workload_of(r))
        print(_report.table_row(r), file=self.file, flush=True)


def cmd_bench(args):
    # With --markdown, stdout carries the table alone (`fastln bench --markdown > table.md`).
    log = sys.stderr if args.markdown else sys.stdout
    if args.plot:
        try:
            _report.require_matplotlib()
        except ImportError as exc:
            print(f"fastln bench: error: {exc}", file=sys.stderr)
            return 1
    if args.from_json:
        try:
            report = _load(args.from_json)
            table = _TableLog(log, _report.titled(_report.by_workload(report["results"])))
            for r in report["results"]:
                table(r)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"fastln bench: error: cannot read {args.from_json}: {exc}", file=sys.stderr)
            return 1
    else:
        dtype = args.dtype or "float32"
        op = args.op or "layer_norm"
        try:
            _bench.data_dtype(dtype)
        except ImportError as exc:      # bfloat16 without ml_dtypes
            print(f"fastln bench: error: --dtype {dtype}: {exc}", file=sys.stderr)
            return 1
        threads = args.threads or fastln.get_num_threads()
        missing = _bench.missing_peers()
        print(f"fastln {fastln.__version__}, SIMD path {_cpu.simd_path()}, {threads} thread(s), "
              f"{dtype}; the faster median of {_bench.PASSES} passes of many calls; 'x copy' = "
              f"time / time of copying the inputs "
              f"(x, and the residual for add + norm)", file=log)
        if missing:
            print(f"not installed, skipped: {', '.join(missing)}", file=log)
        busy = _bench.busy_cpus()
        if busy is not None and busy > _bench.BUSY_WARNING:
            print(f"warning: {_report.busy_note(busy)}", file=log)
        table = _TableLog(log, op != _report.DEFAULT_WORKLOAD)
        table.header(_bench.workloads(op)[0])   # now, before the first shape is done
        report = _bench.bench_report(args.shapes, dtype, threads, args.repeat, log=table,
                                     busy=busy, op=op)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}", file=log)
    if args.plot:
        _report.plot(report, args.plot)
        print(f"wrote {args.plot}", file=log)
    if args.markdown:
        print(_report.markdown(report))
    else:
        print("\nsummary\n" + _report.summary_text(report["results"]))
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
    s.add_argument("--op", choices=[*_bench.WORKLOADS, "all"], default=None,
                   help="what to time (default layer_norm): layer_norm, rms_norm, the fused "
                        "residual add + norm add_layer_norm and add_rms_norm, or all of them; "
                        "each beside its own PyTorch and ONNX Runtime operators")
    s.add_argument("--dtype", choices=list(_bench.DTYPES), default=None,
                   help="data type (default float32; bfloat16 needs ml_dtypes); the copy floor "
                        "copies the same bytes")
    s.add_argument("--shapes", type=_shapes, default=None,
                   help="comma-separated shapes, normalized over the last dim, e.g. 8192x768,1x768 "
                        "(default: 1x768 up to 65536x1024)")
    s.add_argument("--repeat", type=_positive, default=None,
                   help="timed samples per implementation, shape and pass (default: as many "
                        f"as fit in ~{_bench.BUDGET_S} s, at least {_bench.MIN_SAMPLES}); each "
                        f"shape is timed in {_bench.PASSES} passes and the faster median kept")
    s.add_argument("--threads", type=_positive, default=None,
                   help="threads for fastln, PyTorch, ONNX Runtime and the copy (default: "
                        "fastln's current count)")
    s.add_argument("--json", metavar="FILE", help="also write the results and machine info here")
    s.add_argument("--plot", metavar="FILE.png",
                   help="also draw GB/s against bytes moved (needs matplotlib)")
    s.add_argument("--markdown", action="store_true",
                   help="print the summary as a GitHub markdown table (the timing table goes "
                        "to stderr)")
    s.add_argument("--from-json", metavar="FILE",
                   help="report the results in FILE (from --json) instead of measuring")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv=None):
    """Run the command line; return its exit code."""
    try:
        p = parser()
        args = p.parse_args(argv)
        if args.command == "bench" and args.from_json:
            given = [f"--{k}" for k in ("op", "dtype", "shapes", "repeat", "threads")
                     if getattr(args, k) is not None]
            if given:
                p.error(f"--from-json reports a saved run: {', '.join(given)} cannot be changed")
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
