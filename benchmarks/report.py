"""Turns a pytest-benchmark JSON file into the report: markdown tables, ops and tutorial models
apart (one row per case: median time of each implementation, speed-up of fastops over torch
with its quartile range, saved-bytes ratio; the models also over torch.compile), PNG charts of
the speed-up per case (log scale, 1.0 marked), and summary.json, the compact machine-readable
results (medians, quartiles, the pairs' ratios and saved bytes per case: tens of KB, where
pytest-benchmark's JSON holds every timing sample, megabytes, and is not committed).

The speed-up is the median of the ratios torch / fastops of pairs of calls timed alternately
(benchmarks/common.py, ``_paired``), and its quartile range says how far single pairs stray.
A row whose range is wider than SPREAD_LIMIT of the median is flagged as not to be trusted.

    python benchmarks/report.py RESULTS.json OUT_DIR

RESULTS.json is pytest-benchmark's JSON or a summary.json written earlier (to re-render a
committed run's table and charts without rerunning it).
"""

import collections
import json
import math
import os
import sys

# Flag a row when (75th - 25th percentile of its per-pair ratios) / their median exceeds this.
# At 0.2 the middle half of the pairs spans about +-10 % around the median, the band this
# project's shared VM moves a ratio between runs anyway (README); wider, and single pairs
# disagree on whether fastops is faster, so one rerun may reverse the row's verdict.
SPREAD_LIMIT = 0.2
FLAG = "\u26a0"  # a warning sign, after the speed-up of a flagged row
# bench_models.py's implementation name of the fastops build under torch.compile.
FASTOPS_COMPILED = "fastops+torch.compile"


def _paired_speedup(paired):
    """{speedup, speedup_range, spread, flagged} of a case timed in pairs: the pairs' median
    ratio, its quartile range and that range relative to the median."""
    q1, ratio, q3 = paired["ratio"]
    spread = (q3 - q1) / ratio
    return dict(speedup=ratio, speedup_range=[q1, q3], spread=spread, flagged=spread > SPREAD_LIMIT)


def _derive(row):
    """Adds what follows from a row's measurements: speed-up (the pairs' median ratio, or for a
    case not timed in pairs the ratio of medians), its quartile range, spread, flag and
    memory ratio; ``vs_compile``: per implementation timed in pairs with torch.compile, the same
    four of that comparison."""
    median, paired = row["median"], row.get("paired")
    if paired:
        row.update(_paired_speedup(paired))
    else:
        row["speedup"] = (median["torch"] / median["fastops"]
                          if "torch" in median and "fastops" in median else None)
        row["speedup_range"] = row["spread"] = None
        row["flagged"] = False
    row["vs_compile"] = {impl: _paired_speedup(paired_compile)
                         for impl, paired_compile in row.setdefault("paired_compile", {}).items()}
    saved = row["saved"]
    row["memory_ratio"] = (saved["fastops"] / saved["torch"]
                           if saved.get("torch") and "fastops" in saved else None)
    return row


def _benchmark_rows(data):
    """One row per benchmark group of pytest-benchmark's JSON."""
    groups = collections.OrderedDict()
    for entry in data["benchmarks"]:
        info = entry["extra_info"]
        key = (info["op"], info["case"], info["pass_"], info["dtype"], info["device"])
        row = groups.setdefault(key, dict(op=key[0], case=key[1], pass_=key[2], dtype=key[3],
                                          device=key[4], median={}, quartiles={}, saved={},
                                          peak={}, paired_compile={}))
        stats = entry["stats"]
        row["median"][info["impl"]] = stats["median"]
        row["quartiles"][info["impl"]] = [stats["q1"], stats["q3"]]
        if "saved_bytes" in info:
            row["saved"][info["impl"]] = info["saved_bytes"]
        if "peak_cuda_bytes" in info:
            row["peak"][info["impl"]] = info["peak_cuda_bytes"]
        if info.get("paired"):
            row["paired"] = info["paired"]
        if info.get("paired_compile"):
            row["paired_compile"][info["impl"]] = info["paired_compile"]
    return list(groups.values())


def load_rows(path):
    """(rows, machine {node, cpu, count}, date, command or None) of a pytest-benchmark JSON file
    or of a summary.json. A row: {op, case, pass_, dtype, device, median[impl],
    quartiles[impl], saved[impl], peak[impl], paired (when timed in pairs with torch),
    paired_compile[impl] (the implementations timed in pairs with torch.compile)} and what
    ``_derive`` adds."""
    with open(path) as f:
        data = json.load(f)
    if "cases" in data:  # a summary.json
        return ([_derive(row) for row in data["cases"]], data["machine"], data["date"],
                data.get("command"))
    info = data.get("machine_info", {})
    cpu = info.get("cpu", {})
    machine = dict(node=info.get("node"), cpu=cpu.get("brand_raw") or info.get("processor"),
                   count=cpu.get("count"))
    return [_derive(row) for row in _benchmark_rows(data)], machine, data.get("datetime", ""), None


def _time(seconds):
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _bytes(n):
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _speedup(comparison):
    """(speed-up, its 25th-75th percentile) cells of a row or of one of its ``vs_compile``."""
    if not comparison or comparison["speedup"] is None:
        return "-", "-"
    text = f"{comparison['speedup']:.2f}x" + (f" {FLAG}" if comparison["flagged"] else "")
    quartiles = comparison["speedup_range"]
    return text, f"{quartiles[0]:.2f} - {quartiles[1]:.2f}x" if quartiles else "-"


def _torch_time(row):
    """The torch column: the median of torch's calls in the pairs, else its own."""
    return _time(row["paired"]["torch_median"] if row.get("paired") else row["median"].get("torch"))


def _saved(row):
    saved = row["saved"]
    return f"{_bytes(saved.get('fastops'))} / {_bytes(saved.get('torch'))}" if saved else "-"


def _ops_table(rows):
    lines = [
        "| op | case | pass | dtype | torch | fastops | torch.compile | speed-up | 25th-75th "
        "percentile | saved fastops / torch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["median"]
        speedup, quartiles = _speedup(row)
        lines.append(f"| {row['op']} | {row['case']} | {row['pass_']} | {row['dtype']} | "
                     f"{_torch_time(row)} | {_time(m.get('fastops'))} | "
                     f"{_time(m.get('torch.compile'))} | {speedup} | {quartiles} | {_saved(row)} |")
    return lines


def _models_table(rows):
    lines = [
        "| model | pass | dtype | torch | fastops | torch.compile | fastops in torch.compile | "
        "speed-up | 25th-75th percentile | fastops vs torch.compile | 25th-75th percentile | "
        "fastops in torch.compile vs torch.compile | 25th-75th percentile | "
        "saved fastops / torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        # torch.compile's calls in the pairs: with eager fastops where timed, else with compiled.
        paired_compile = (row["paired_compile"].get("fastops")
                          or row["paired_compile"].get(FASTOPS_COMPILED))
        compile_time = paired_compile and paired_compile["compile_median"]
        cells = [*_speedup(row), *_speedup(row["vs_compile"].get("fastops")),
                 *_speedup(row["vs_compile"].get(FASTOPS_COMPILED))]
        lines.append(f"| {row['case']} | {row['pass_']} | {row['dtype']} | {_torch_time(row)} | "
                     f"{_time(row['median'].get('fastops'))} | {_time(compile_time)} | "
                     f"{_time(row['median'].get(FASTOPS_COMPILED))} | {' | '.join(cells)} | "
                     f"{_saved(row)} |")
    return lines


def _flagged(row):
    return row["flagged"] or any(c["flagged"] for c in row["vs_compile"].values())


def markdown(rows, machine, date, command):
    """The report: the run's machine, date and command, the ops' and the models' tables and
    their footnotes."""
    device = rows[0]["device"] if rows else "?"
    lines = [
        f"Machine: {machine.get('node') or '?'} ({machine.get('cpu') or 'unknown CPU'}, "
        f"{machine.get('count') or '?'} logical CPUs); device: {device}; date: {date}; "
        f"command: `{command}`",
        "",
        "Speed-up = torch time / fastops time (> 1: fastops faster): the median over pairs of "
        "calls timed alternately in this run, and the 25th-75th percentile of the pairs' ratios. "
        "torch, fastops: median times (torch's of the pairs); torch.compile (of the torch code, "
        "compile time excluded): its median, timed apart. Saved = bytes autograd keeps for "
        "backward (fastops / torch).",
    ]
    ops = [row for row in rows if row["op"] != "model"]
    models = [row for row in rows if row["op"] == "model"]
    if ops:
        lines += ["", *_ops_table(ops)]
    if models:
        lines += [
            "",
            "Tutorial models: one training step (forward, loss, backward, optimiser step) and one "
            "inference step of the torch.nn build and of the fastops build (`fastops.convert`, "
            "fused), same weights and batch. torch.compile: the torch build as "
            "`torch.compile(model, fullgraph=True)`, the loss, backward and optimiser step left "
            "eager; fastops in torch.compile: the fastops build compiled the same way (its ops "
            "are custom ops, opaque to inductor). Compile time excluded: each compiled model is "
            "compiled and run once before timing. The speed-ups over torch.compile are medians "
            "of per-pair ratios as above: the fastops build is timed in pairs with "
            "torch.compile, then in pairs with torch (apart, so that no compiled call changes "
            "the caches the torch pairs start from); the compiled fastops build in pairs with "
            "torch.compile. torch.compile: the median of its calls in those pairs. "
            "bfloat16 autocast: forward and loss under `torch.autocast(dtype=torch.bfloat16)` "
            "from float32 weights.",
            "",
            *_models_table(models),
        ]
    flagged = sum(map(_flagged, rows))
    if flagged:
        lines += ["", f"{FLAG} {flagged} of {len(rows)} rows: the pairs' 25th-75th percentile "
                  f"range is wider than {SPREAD_LIMIT:.0%} of their median, so single pairs "
                  "disagree too much to trust that speed-up (a rerun may reverse it); time it "
                  "again on a quieter machine, e.g. with `--filter`."]
    if any(row["speedup"] and not row["speedup_range"] for row in rows):
        lines += ["", "A speed-up without a percentile range was not timed in pairs (results "
                  "from before pairing): it is the ratio of medians timed apart, and unflagged."]
    return "\n".join(lines) + "\n"


def write_summary(rows, machine, date, command, path):
    """summary.json: the run's machine, date and command, and per case the medians and
    quartiles (seconds) and saved bytes of every implementation, the pairs' summary and the
    speed-up with its range."""
    with open(path, "w") as f:
        json.dump(dict(machine=machine, date=date, command=command, cases=rows), f, indent=1)


def chart(rows, path, title, baseline="torch"):
    """A bar per row with a speed-up over ``baseline`` (its quartile range as an error bar;
    flagged rows hatched and marked), written to ``path``; False (nothing written) when no row
    has a speed-up."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["speedup"]]
    if not rows:
        return False
    labels = [f"{r['op']} {r['case']} {r['pass_']} {r['dtype']}" + (f" {FLAG}" if r["flagged"]
                                                                      else "") for r in rows]
    values = [r["speedup"] for r in rows]
    # Quartiles of the pairs' ratios; a row not timed in pairs has none (no whisker).
    ranges = [r["speedup_range"] or [r["speedup"]] * 2 for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.5))
    colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
    whiskers = [[v - q1 for v, (q1, _) in zip(values, ranges, strict=True)],
                [q3 - v for v, (_, q3) in zip(values, ranges, strict=True)]]
    bars = ax.barh(range(len(rows)), values, color=colors, xerr=whiskers,
                   error_kw=dict(ecolor="black", elinewidth=0.8, capsize=2))
    for bar, row in zip(bars, rows, strict=True):
        if row["flagged"]:
            bar.set_alpha(0.45)
            bar.set_hatch("///")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    low = min([q1 for q1, _ in ranges] + [1.0])
    high = max([q3 for _, q3 in ranges] + [1.0])
    ax.set_xlim(2 ** math.floor(math.log2(low) - 0.5), 2 ** math.ceil(math.log2(high) + 0.5))
    # Ticks at powers of two, labelled as plain ratios (log scale's minor labels overlap).
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=2))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axvline(1.0, color="black", linewidth=1)
    if any(row["flagged"] for row in rows):
        ax.legend(handles=[matplotlib.patches.Patch(
            facecolor="white", edgecolor="black", hatch="///",
            label=f"{FLAG} spread > {SPREAD_LIMIT:.0%} of the median: not to be trusted")],
            loc="lower right", fontsize=8)
    ax.set_xlabel(f"speed-up over {baseline}, log scale\n(median of per-pair ratios; whiskers: "
                  "25th-75th percentile)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _compile_chart_rows(rows):
    """A chart row per speed-up over torch.compile of the model rows, the build in its label."""
    builds = {"fastops": "fastops", FASTOPS_COMPILED: "fastops in torch.compile"}
    return [{**row, **comparison, "dtype": f"{row['dtype']}, {builds[impl]}"}
            for row in rows if row["op"] == "model"
            for impl, comparison in row["vs_compile"].items()]


def write_report(json_path, out_dir, command=None):
    """Writes report.md, summary.json and the charts into out_dir: speedup-ops.png (the op
    cases), speedup-models.png (the tutorial models' steps) and speedup-models-compile.png (the
    models' fastops builds, eager and compiled, over torch.compile), each only when the run has
    such cases; a chart this run does not have is removed from out_dir, so none there is left
    from an earlier run. ``command`` defaults to a summary.json's own, else `python -m fastops
    bench`. Returns (the markdown, the names of the files written)."""
    rows, machine, date, recorded_command = load_rows(json_path)
    command = command or recorded_command or "python -m fastops bench"
    os.makedirs(out_dir, exist_ok=True)
    text = markdown(rows, machine, date, command)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text)
    write_summary(rows, machine, date, command, os.path.join(out_dir, "summary.json"))
    written = ["report.md", "summary.json"]
    device = rows[0]["device"] if rows else "?"
    parts = {"speedup-ops.png": ([r for r in rows if r["op"] != "model"],
                                 f"fastops vs torch on {device}: ops", "torch"),
             "speedup-models.png": ([r for r in rows if r["op"] == "model"],
                                    f"fastops vs torch on {device}: tutorial models "
                                    "(fastops build / torch build)", "torch"),
             "speedup-models-compile.png": (_compile_chart_rows(rows),
                                            f"fastops vs torch.compile on {device}: tutorial "
                                            "models", "torch.compile")}
    for name, (part, title, baseline) in parts.items():
        path = os.path.join(out_dir, name)
        if chart(part, path, title, baseline):
            written.append(name)
        elif os.path.exists(path):
            os.remove(path)
    return text, written


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(write_report(sys.argv[1], sys.argv[2])[0])
