#!/usr/bin/python3
"""Charts and tables from bnorm_bench JSON output.

    bnorm_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
        --benchmark_out=run.json --benchmark_out_format=json
    bench/plot.py run.json [other-cpu.json ...] --out docs/ratio_to_copy.png
    bench/plot.py run.json --table          # markdown table of the ratios

One chart per operation: the time of each implementation (bnorm on each ISA
target, oneDNN's plain and blocked paths) divided by the time of a parallel
copy of the same bytes measured in the same loop, per shape and layout. Lower
is better; 1.0 is the memory roofline. Several JSON files (several CPUs) give
one bar per file and implementation. Uses Debian's python3-matplotlib.

The table adds, per layout, bnorm's time over the time of oneDNN's fastest
path for the same data in the same run (for NCHW data the faster of its plain
and nChw16c rows): below 1 bnorm is faster. It compares times directly, so it
does not depend on the copies of the two rows measuring alike.
"""
import argparse
import collections
import json
import os
import sys

# Rows and charts follow this order; ops a file does not have are left out.
OPS = ["forward_inference", "forward_training", "backward", "forward_split", "backward_split",
       "forward_inference_add_relu", "forward_training_add_relu", "backward_add_relu"]


def present_ops(keys):
    """The ops of OPS that some (op, shape, layout, impl) key has, in OPS order."""
    found = {k[0] for k in keys}
    return [op for op in OPS if op in found]


def load(path, field="ratio_to_copy"):
    """Returns {(op, shape, layout, impl): field} (median when repeated) and a label."""
    with open(path) as f:
        data = json.load(f)
    ratios = {}
    medians = {}
    for b in data["benchmarks"]:
        if b.get("error_occurred"):
            continue
        parts = b["name"].split("/")
        if len(parts) < 4 or field not in b:
            continue
        key = tuple(parts[:4])
        if b.get("aggregate_name") == "median":
            medians[key] = b[field]
        elif b.get("run_type", "iteration") == "iteration":
            ratios.setdefault(key, b[field])
    ratios.update(medians)
    ctx = data.get("context", {})
    label = "%s, %s threads" % (ctx.get("host_name", os.path.basename(path)),
                                ctx.get("bnorm_threads", "?"))
    return ratios, label


def versus_onednn(times, op, shape, layout):
    """bnorm's (fastest target's) time over oneDNN's fastest path for the same data, or None."""
    def best(prefix):
        found = [t for (o, s, l, impl), t in times.items()
                 if o == op and s == shape and l == layout and impl.startswith(prefix)]
        return min(found) if found else None
    ours, theirs = best("bnorm_"), best("onednn_")
    return ours / theirs if ours and theirs else None


def table(ratios, times):
    """Markdown: one row per op and shape, one column per layout x implementation."""
    impls = sorted({k[3] for k in ratios})
    layouts = [l for l in ("NCHW", "NHWC") if any(k[2] == l for k in ratios)]
    versus = {l: any(k[2] == l and k[3].startswith("onednn_") for k in times) for l in layouts}
    cols = []
    for layout in layouts:
        cols += [(layout, impl) for impl in impls
                 if any(k[2] == layout and k[3] == impl for k in ratios)]
        if versus[layout]:
            cols.append((layout, None))
    lines = ["| op | shape | " + " | ".join(
        "%s %s" % (layout, impl or "bnorm / oneDNN best (time)") for layout, impl in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    shapes = list(collections.OrderedDict.fromkeys(k[1] for k in ratios))
    for op in present_ops(ratios):
        for shape in shapes:
            cells = []
            for layout, impl in cols:
                if impl is None:
                    r = versus_onednn(times, op, shape, layout)
                else:
                    r = ratios.get((op, shape, layout, impl))
                cells.append("%.2f" % r if r is not None else "")
            if any(cells):
                lines.append("| %s | %s | %s |" % (op, shape, " | ".join(cells)))
    return "\n".join(lines)


def chart(runs, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    series = collections.OrderedDict()  # (label, impl) -> {(op, shape, layout): ratio}
    groups = collections.OrderedDict()  # (shape, layout) in order of appearance
    for ratios, label in runs:
        for (op, shape, layout, impl), r in ratios.items():
            name = impl if len(runs) == 1 else "%s (%s)" % (impl, label)
            series.setdefault(name, {})[(op, shape, layout)] = r
            groups[(shape, layout)] = None
    groups = list(groups)
    ops = present_ops([k for ratios, _ in runs for k in ratios])
    fig, axes = plt.subplots(len(ops), 1, figsize=(max(12, len(groups) * 0.9), 4 * len(ops)),
                             squeeze=False)
    width = 0.8 / max(1, len(series))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, op in enumerate(ops):
        ax = axes[row][0]
        for i, (name, values) in enumerate(series.items()):
            xs, ys = [], []
            for g, (shape, layout) in enumerate(groups):
                r = values.get((op, shape, layout))
                if r is not None:
                    xs.append(g + (i - (len(series) - 1) / 2) * width)
                    ys.append(r)
            if xs:  # one colour per series in every chart; no legend entry without bars
                ax.bar(xs, ys, width, label=name, color=colors[i % len(colors)])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        # Plain numbers on the log axis: matplotlib labels only powers of ten,
        # and a panel whose bars all lie between 0.7 and 2 showed one label.
        lo, hi = ax.get_ylim()
        ticks = [t for t in (0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1, 1.1, 1.2, 1.3, 1.5, 1.6, 2, 2.5,
                             3, 4, 5, 7, 10, 20, 30, 50, 100) if lo <= t <= hi]
        dense = len(ticks) <= 12
        ticks = [t for t in ticks if dense or t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)]
        ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylabel("time / copy time")
        ax.set_title(op + " (lower is better; 1 = a copy of the same bytes)")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(["%s\n%s" % g for g in groups], fontsize=7)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print("wrote", out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", nargs="+", help="bnorm_bench --benchmark_out files")
    parser.add_argument("--out", default="ratio_to_copy.png", help="PNG to write")
    parser.add_argument("--table", action="store_true", help="print a markdown table instead")
    args = parser.parse_args()
    runs = [load(p) for p in args.json]
    if args.table:
        for path, (ratios, label) in zip(args.json, runs):
            times, _ = load(path, "real_time")
            print("### " + label + "\n\n" + table(ratios, times) + "\n")
        return 0
    chart(runs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
