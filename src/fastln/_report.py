"""What ``fastln bench`` prints and draws from its results: tables, a summary, markdown, a plot.

Everything here reads the dict that `fastln._bench.bench_report` returns and ``fastln bench
--json`` writes ({"machine", "run", "results"}), so a saved run can be reported again with
``fastln bench --from-json FILE --markdown`` (the README's table) or ``--plot FILE.png``.
"""

import math
import os

import numpy as np

from fastln import _bench

PLOT_HINT = 'fastln bench --plot needs matplotlib: pip install "fastln[plot]"'

# (key, title, numerator, denominator): each a (impl, op) of the results. Ratios to copy are
# time / copy time (lower is better; a backward moves 1.5x a copy's bytes, its target is 1.8x).
# Speed-ups are peer time / fastln time (higher is better), against fastln with a fresh output
# for the forward, since the peers allocate theirs.
COLUMNS = [
    ("fwd_out_x_copy", "fwd out= x copy", ("fastln (out=)", "forward"), ("copy", "copy")),
    ("fwd_fresh_x_copy", "fwd fresh x copy", ("fastln", "forward"), ("copy", "copy")),
    ("bwd_x_copy", "bwd x copy", ("fastln", "backward"), ("copy", "copy")),
    ("fwd_vs_torch", "fwd vs torch", ("torch", "forward"), ("fastln", "forward")),
    ("fwd_vs_onnxruntime", "fwd vs ORT", ("onnxruntime", "forward"), ("fastln", "forward")),
    ("bwd_vs_torch", "bwd vs torch", ("torch autograd", "backward"), ("fastln", "backward")),
]
LEGEND = ("x copy: time / time of copying x into a preallocated array (lower is better; the "
          "backward moves 1.5x the bytes, target 1.8x). vs peer: peer time / fastln time "
          "(higher is better; forward against fastln with a fresh output, as the peers allocate "
          "theirs).")


# ---------------------------------------------------------------------------------------------
# tables

def table_header():
    return f"{'shape':<12} {'op':<9} {'impl':<16} {'time (us)':>11} {'GB/s':>8} {'x copy':>7}"


def table_row(r):
    return (f"{_bench.format_shape(r['shape']):<12} {r['op']:<9} {r['impl']:<16} "
            f"{r['median_s'] * 1e6:>11.1f} {r['gbps']:>8.2f} {r['ratio_to_copy']:>7.2f}")


def summary(results):
    """One dict per (shape, dtype) in the order measured: shape, dtype, mb (of x) and a ratio
    under each key of COLUMNS, None where an implementation was not measured."""
    times = {}
    for r in results:
        case = times.setdefault((tuple(r["shape"]), r["dtype"]), {})
        case[r["impl"], r["op"]] = r["median_s"]
    rows = []
    for (shape, dtype), t in times.items():
        row = {"shape": list(shape), "dtype": dtype,
               "mb": math.prod(shape) * np.dtype(dtype).itemsize / 1e6}
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
    """The summary as a plain-text table, with its legend."""
    rows = summary(results)
    columns = _columns(rows)
    titles = ["shape", "MB"] + [title for _, title, *_ in columns]
    cells = [_cells(row, columns) for row in rows]
    widths = [max(len(t), *(len(c[i]) for c in cells)) for i, t in enumerate(titles)]
    lines = ["  ".join(t.ljust(w) if i == 0 else t.rjust(w)
                       for i, (t, w) in enumerate(zip(titles, widths)))]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
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
    dtype, threads = run.get("dtype", one("dtype")), run.get("threads", one("threads"))
    cmd = run.get("command") or _bench.command(shapes, dtype, threads)
    return str(run.get("date", "date unknown"))[:10], dtype, threads, cmd


def markdown(report):
    """The summary as a GitHub markdown table, after a line saying where, when and how."""
    date, dtype, threads, cmd = _settings(report)
    machine = report.get("machine", {})
    rows = summary(report["results"])
    columns = _columns(rows)
    head = (f"fastln {machine.get('fastln', '?')} LayerNorm, {dtype}, {threads} thread(s), "
            f"{machine.get('cpu', 'CPU unknown')} (SIMD path {machine.get('simd_path', '?')}), "
            f"{date}. Reproduce with `{cmd}`.")
    busy = report.get("run", {}).get("busy_cpus_before")
    if busy is not None and busy > _bench.BUSY_WARNING:
        head += f" Note: {busy_note(busy)}."
    titles = ["shape", "MB"] + [title for _, title, *_ in columns]
    lines = [head, "",
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


def plot(report, path):
    """Write a PNG of GB/s against bytes moved: forward and backward panels, copy as the floor.

    Drawn with matplotlib's Agg canvas directly, so no pyplot state or GUI backend is touched.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    date, dtype, threads, _ = _settings(report)
    machine = report.get("machine", {})
    results = report["results"]
    fig = Figure(figsize=(13, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    panels = [("forward", "forward: read x, weight, bias; write y"),
              ("backward", "backward: read x, dy, weight; write dx, dweight, dbias")]
    copies = sorted((r for r in results if r["op"] == "copy"), key=lambda r: r["bytes"])
    for ax, (op, title) in zip(axes, panels):
        ax.plot([r["bytes"] for r in copies], [r["gbps"] for r in copies], color="black",
                linestyle="--", label="copy x into y (memory-bandwidth floor)")
        previous = 0
        for r in copies:
            # Shapes of nearly the same size would print over each other: step those up.
            lift = 14 if r["bytes"] < 1.6 * previous else 4
            previous = r["bytes"]
            ax.annotate(_bench.format_shape(r["shape"]), (r["bytes"], r["gbps"]),
                        textcoords="offset points", xytext=(0, lift), ha="center", fontsize=7)
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
    fig.suptitle(f"fastln {machine.get('fastln', '?')} LayerNorm, {dtype}: "
                 f"{machine.get('cpu', 'CPU unknown')}, {threads} thread(s), {date}")
    fig.savefig(path, dpi=120)
