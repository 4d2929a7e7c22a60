"""What ``fastln bench`` prints and draws from its results: tables, a summary, markdown, a plot.

Everything here reads the dict that `fastln._bench.bench_report` returns and ``fastln bench
--json`` writes ({"machine", "run", "results"}), so a saved run can be reported again with
``fastln bench --from-json FILE --markdown`` (the README's tables) or ``--plot FILE.png``.
Results are reported per workload (layer_norm, rms_norm, add_layer_norm, add_rms_norm); those
of files written before there were several lack "workload" and are layer_norm's.
"""

import math
import os

from fastln import _bench

PLOT_HINT = 'fastln bench --plot needs matplotlib: pip install "fastln[plot]"'

# (key, title, numerator, denominator): each a (impl, op) of one workload's results. Ratios to
# copy are time / copy time (lower is better; see `_bench.op_bytes` for what each moves).
# Speed-ups are peer time / fastln time (higher is better), against fastln with a fresh output
# for the forward, since the peers allocate theirs. "torch" and "onnxruntime" are each
# workload's own peer operator (`_bench.WORKLOADS`, `_bench.ONNX_OPS`).
COLUMNS = [
    ("fwd_out_x_copy", "fwd out= x copy", ("fastln (out=)", "forward"), ("copy", "copy")),
    ("fwd_fresh_x_copy", "fwd fresh x copy", ("fastln", "forward"), ("copy", "copy")),
    ("bwd_x_copy", "bwd x copy", ("fastln", "backward"), ("copy", "copy")),
    ("fwd_vs_torch", "fwd vs torch", ("torch", "forward"), ("fastln", "forward")),
    ("fwd_vs_onnxruntime", "fwd vs ORT", ("onnxruntime", "forward"), ("fastln", "forward")),
    ("bwd_vs_torch", "bwd vs torch", ("torch autograd", "backward"), ("fastln", "backward")),
]
LEGEND = ("x copy: time / time of copying the inputs into preallocated arrays (x; x and the "
          "residual for add + norm), the memory-bandwidth floor (lower is better; the backward "
          "moves 1.5x the copy's bytes for LayerNorm and RMSNorm and 1x for add + norm, target "
          "1.8x). vs peer: peer time / fastln time (higher is better; forward against fastln with "
          "a fresh output, as the peers allocate theirs).")
DEFAULT_WORKLOAD = "layer_norm"     # of results written before there were several


# ---------------------------------------------------------------------------------------------
# tables

def table_header():
    return f"{'shape':<12} {'op':<9} {'impl':<16} {'time (us)':>11} {'GB/s':>8} {'x copy':>7}"


def table_row(r):
    return (f"{_bench.format_shape(r['shape']):<12} {r['op']:<9} {r['impl']:<16} "
            f"{r['median_s'] * 1e6:>11.1f} {r['gbps']:>8.2f} {r['ratio_to_copy']:>7.2f}")


def workload_of(result):
    return result.get("workload", DEFAULT_WORKLOAD)


def by_workload(results):
    """[(workload, its results)] in the order measured."""
    parts = {}
    for r in results:
        parts.setdefault(workload_of(r), []).append(r)
    return list(parts.items())


def titled(parts):
    """Whether tables get a title per workload: not for a report of LayerNorm alone, whose
    tables read as they did before there were other workloads."""
    return [w for w, _ in parts] != [DEFAULT_WORKLOAD]


def workload_title(workload, columns, code=str):
    """"rms_norm: RMSNorm; vs torch: F.rms_norm, vs ORT: SimplifiedLayerNormalization", naming
    the peers of `columns` only; `code` formats the workload's and the operators' names."""
    title, torch_op = _bench.WORKLOADS.get(workload, (workload, "?"))
    ort_op = _bench.ONNX_OPS.get(workload, ("?",))[0]
    keys = {key for key, *_ in columns}
    peers = [f"{label}: {code(name)}" for key, label, name in
             (("fwd_vs_torch", "vs torch", torch_op), ("fwd_vs_onnxruntime", "vs ORT", ort_op))
             if key in keys]
    return f"{code(workload)}: {title}" + ("; " + ", ".join(peers) if peers else "")


def summary(results):
    """One dict per (workload, shape, dtype) in the order measured: workload, shape, dtype, mb
    (of x) and a ratio under each key of COLUMNS, None where an implementation was not
    measured."""
    times = {}
    for r in results:
        case = times.setdefault((workload_of(r), tuple(r["shape"]), r["dtype"]), {})
        case[r["impl"], r["op"]] = r["median_s"]
    rows = []
    for (workload, shape, dtype), t in times.items():
        row = {"workload": workload, "shape": list(shape), "dtype": dtype,
               "mb": math.prod(shape) * _bench.itemsize(dtype) / 1e6}
        for key, _, num, den in COLUMNS:
            row[key] = t[num] / t[den] if num in t and den in t else None
        rows.append(row)
    return rows


def _columns(rows):
    """The COLUMNS that have a value in some row: a peer that was not installed gets none."""
    return [c for c in COLUMNS if any(row[c[0]] is not None for row in rows)]


def _cells(row, columns):
    mb = row["mb"]
    mb = f"{mb:.3f}" if mb < 1 else f"{mb:.1f}" if mb < 10 else f"{mb:.0f}"
    return [_bench.format_shape(row["shape"]), mb] + [
        "-" if row[key] is None else f"{row[key]:.2f}x" for key, *_ in columns]


def summary_text(results):
    """The summary as plain-text tables, one per workload, with the legend."""
    parts = by_workload(results)
    lines = []
    for workload, part in parts:
        rows = summary(part)
        columns = _columns(rows)
        titles = ["shape", "MB"] + [title for _, title, *_ in columns]
        cells = [_cells(row, columns) for row in rows]
        widths = [max(len(t), *(len(c[i]) for c in cells)) for i, t in enumerate(titles)]
        if titled(parts):
            lines.append(workload_title(workload, columns))
        lines.append("  ".join(t.ljust(w) if i == 0 else t.rjust(w)
                               for i, (t, w) in enumerate(zip(titles, widths))))
        lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
        if titled(parts):
            lines.append("")
    return "\n".join(lines + [LEGEND])


def busy_note(busy):
    return (f"other work kept {busy:.1f} of {os.cpu_count()} CPUs busy just before this run; "
            f"threaded timings then wait for descheduled threads and read slow")


def _settings(report):
    """(date, dtype, threads, command) of a report; older files lack "run"."""
    results = report["results"]
    run = report.get("run", {})

    def one(key):
        values = sorted({str(r[key]) for r in results})
        return ", ".join(values) if values else "?"

    shapes = list(dict.fromkeys(tuple(r["shape"]) for r in results))
    names = [w for w, _ in by_workload(results)]
    op = names[0] if len(names) == 1 else "all"
    dtype, threads = run.get("dtype", one("dtype")), run.get("threads", one("threads"))
    cmd = run.get("command") or _bench.command(shapes, dtype, threads, op=op)
    return str(run.get("date", "date unknown"))[:10], dtype, threads, cmd


def _what(parts):
    """"LayerNorm" or "LayerNorm, RMSNorm, add + LayerNorm, add + RMSNorm": what a report
    measured."""
    return ", ".join(_bench.WORKLOADS.get(w, (w,))[0] for w, _ in parts)


def markdown(report):
    """The summary as GitHub markdown tables, one per workload (titled, naming the peers' operators,
    unless the report is LayerNorm's alone), after a line saying where, when and how."""
    date, dtype, threads, cmd = _settings(report)
    machine = report.get("machine", {})
    parts = by_workload(report["results"])
    head = (f"fastln {machine.get('fastln', '?')} {_what(parts)}, {dtype}, {threads} thread(s), "
            f"{machine.get('cpu', 'CPU unknown')} (SIMD path {machine.get('simd_path', '?')}), "
            f"{date}. Reproduce with `{cmd}`.")
    busy = report.get("run", {}).get("busy_cpus_before")
    if busy is not None and busy > _bench.BUSY_WARNING:
        head += f" Note: {busy_note(busy)}."
    lines = [head]
    for workload, part in parts:
        rows = summary(part)
        columns = _columns(rows)
        if titled(parts):
            lines += ["", workload_title(workload, columns, code=lambda name: f"`{name}`")]
        titles = ["shape", "MB"] + [title for _, title, *_ in columns]
        lines += ["",
                  "| " + " | ".join(titles) + " |",
                  "| --- | " + " | ".join("---:" for _ in titles[1:]) + " |"]
        lines += ["| " + " | ".join(_cells(row, columns)) + " |" for row in rows]
    return "\n".join(lines + ["", LEGEND])


# ---------------------------------------------------------------------------------------------
# the plot

def require_matplotlib():
    """Raise ImportError with PLOT_HINT when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(PLOT_HINT) from exc


# impl -> (label, plot style); colours match between the two panels.
_STYLES = {
    "fastln (out=)": ("fastln, out=", dict(color="C0", marker="o")),
    "fastln": ("fastln", dict(color="C1", marker="s")),
    "numpy reference": ("NumPy reference", dict(color="C7", marker="x", linestyle=":")),
    "torch": ("PyTorch", dict(color="C3", marker="^")),
    "torch autograd": ("PyTorch autograd", dict(color="C3", marker="^")),
    "onnxruntime": ("ONNX Runtime", dict(color="C2", marker="v")),
}


# workload -> (what its copy floor copies, what the forward moves, what the backward moves)
_PANELS = {
    "layer_norm": ("x into y", "read x, weight, bias; write y",
                   "read x, dy, weight; write dx, dweight, dbias"),
    "rms_norm": ("x into y", "read x, weight; write y", "read x, dy, weight; write dx, dweight"),
    "add_layer_norm": ("x, r into y, s", "read x, r, weight, bias; write y, s",
                       "read dy, s, dsum, weight; write ds, dweight, dbias"),
    "add_rms_norm": ("x, r into y, s", "read x, r, weight; write y, s",
                     "read dy, s, dsum, weight; write ds, dweight"),
}


def plot(report, path):
    """Write a PNG of GB/s against bytes moved: forward and backward panels, copy as the floor;
    a row of them per workload.

    Drawn with matplotlib's Agg canvas directly, so no pyplot state or GUI backend is touched.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    date, dtype, threads, _ = _settings(report)
    machine = report.get("machine", {})
    parts = by_workload(report["results"])
    fig = Figure(figsize=(13, 6.5 * len(parts)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(parts), 2, sharey="row", squeeze=False)
    for axes, (workload, results) in zip(grid, parts):
        copied, forward, backward = _PANELS.get(workload, ("the inputs", "", ""))
        prefix = f"{_bench.WORKLOADS.get(workload, (workload,))[0]} " if titled(parts) else ""
        panels = [("forward", f"{prefix}forward: {forward}"),
                  ("backward", f"{prefix}backward: {backward}")]
        copies = sorted((r for r in results if r["op"] == "copy"), key=lambda r: r["bytes"])
        for ax, (op, title) in zip(axes, panels):
            ax.plot([r["bytes"] for r in copies], [r["gbps"] for r in copies], color="black",
                    linestyle="--", label=f"copy {copied} (memory-bandwidth floor)")
            previous = 0
            for r in copies:
                # Shapes of nearly the same size would print over each other: step those up.
                lift = 14 if r["bytes"] < 1.6 * previous else 4
                previous = r["bytes"]
                ax.annotate(_bench.format_shape(r["shape"]), (r["bytes"], r["gbps"]),
                            textcoords="offset points", xytext=(0, lift), ha="center",
                            fontsize=7)
            for impl, (label, style) in _STYLES.items():
                points = sorted((r["bytes"], r["gbps"]) for r in results
                                if r["op"] == op and r["impl"] == impl)
                if points:
                    if op == "forward" and impl == "fastln":
                        label = "fastln, fresh output"
                    ax.plot(*zip(*points), label=label, **style)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("bytes moved")
            ax.grid(True, which="both", alpha=0.3)
            ax.margins(x=0.08)
            low, high = ax.get_ylim()
            ax.set_ylim(low, high * 2)              # room for the shape labels
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
        axes[0].set_ylabel("GB/s (bytes moved / median time)")
    fig.suptitle(f"fastln {machine.get('fastln', '?')} {_what(parts)}, {dtype}: "
                 f"{machine.get('cpu', 'CPU unknown')}, {threads} thread(s), {date}")
    fig.savefig(path, dpi=120)
