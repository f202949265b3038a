"""Turns a pytest-benchmark JSON file into the report: a markdown table (one row per case:
median time of each implementation, speed-up = torch / fastops, saved-bytes ratio), PNG
charts of the speed-up per case, ops and tutorial models apart (log scale, 1.0 marked), and
summary.json, the compact machine-readable results (medians, quartiles, saved bytes per case:
tens of KB, where pytest-benchmark's JSON holds every timing sample, megabytes, and is not
committed).

    python benchmarks/report.py RESULTS.json OUT_DIR
"""

import collections
import json
import math
import os
import sys

IMPLS = ("torch", "fastops", "torch.compile")


def load_rows(json_path):
    """One row per benchmark group: {op, case, pass, dtype, device, median[impl], saved[impl]}."""
    with open(json_path) as f:
        data = json.load(f)
    groups = collections.OrderedDict()
    for entry in data["benchmarks"]:
        info = entry["extra_info"]
        key = (info["op"], info["case"], info["pass_"], info["dtype"], info["device"])
        row = groups.setdefault(key, dict(op=key[0], case=key[1], pass_=key[2], dtype=key[3],
                                          device=key[4], median={}, quartiles={}, saved={},
                                          peak={}))
        stats = entry["stats"]
        row["median"][info["impl"]] = stats["median"]
        row["quartiles"][info["impl"]] = [stats["q1"], stats["q3"]]
        if "saved_bytes" in info:
            row["saved"][info["impl"]] = info["saved_bytes"]
        if "peak_cuda_bytes" in info:
            row["peak"][info["impl"]] = info["peak_cuda_bytes"]
    for row in groups.values():
        median = row["median"]
        row["speedup"] = (median["torch"] / median["fastops"]
                          if "torch" in median and "fastops" in median else None)
        saved = row["saved"]
        row["memory_ratio"] = (saved["fastops"] / saved["torch"]
                               if saved.get("torch") and "fastops" in saved else None)
    return list(groups.values()), data.get("machine_info", {}), data.get("datetime", "")


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


def markdown(rows, machine, date, command):
    cpu = machine.get("cpu", {}).get("brand_raw") or machine.get("processor") or "unknown CPU"
    lines = [
        f"Machine: {machine.get('node', '?')} ({cpu}, {machine.get('cpu', {}).get('count', '?')} "
        f"logical CPUs); device: {rows[0]['device'] if rows else '?'}; date: {date}; "
        f"command: `{command}`",
        "",
        "Speed-up = torch median / fastops median (> 1: fastops faster), measured side by side in "
        "this run. Saved = bytes autograd keeps for backward (fastops / torch).",
        "",
        "| op | case | pass | dtype | torch | fastops | torch.compile | speed-up "
        "| saved fastops / torch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["median"]
        speedup = f"{row['speedup']:.2f}x" if row["speedup"] else "-"
        saved = (f"{_bytes(row['saved'].get('fastops'))} / {_bytes(row['saved'].get('torch'))}"
                 if row["saved"] else "-")
        lines.append(f"| {row['op']} | {row['case']} | {row['pass_']} | {row['dtype']} | "
                     f"{_time(m.get('torch'))} | {_time(m.get('fastops'))} | "
                     f"{_time(m.get('torch.compile'))} | {speedup} | {saved} |")
    return "\n".join(lines) + "\n"


def write_summary(rows, machine, date, command, path):
    """summary.json: the run's machine, date and command, and per case the medians and
    quartiles (seconds), speed-up and saved bytes of every implementation."""
    cpu = machine.get("cpu", {}).get("brand_raw") or machine.get("processor")
    with open(path, "w") as f:
        json.dump(dict(machine=dict(node=machine.get("node"), cpu=cpu), date=date,
                       command=command, cases=rows), f, indent=1)


def chart(rows, path, title):
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["speedup"]]
    if not rows:
        return None
    labels = [f"{r['op']} {r['case']} {r['pass_']} {r['dtype']}" for r in rows]
    values = [r["speedup"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.5))
    colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
    ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    low, high = min(values + [1.0]), max(values + [1.0])
    ax.set_xlim(2 ** math.floor(math.log2(low) - 0.5), 2 ** math.ceil(math.log2(high) + 0.5))
    # Ticks at powers of two, labelled as plain ratios (log scale's minor labels overlap).
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=2))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("speed-up over torch (torch median / fastops median, log scale)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(json_path, out_dir, command="python -m fastops bench"):
    """Writes report.md, summary.json and the charts into out_dir: speedup-ops.png (the op
    cases) and speedup-models.png (the tutorial models' steps), each only when the run has such
    cases. Returns the markdown."""
    rows, machine, date = load_rows(json_path)
    os.makedirs(out_dir, exist_ok=True)
    text = markdown(rows, machine, date, command)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text)
    write_summary(rows, machine, date, command, os.path.join(out_dir, "summary.json"))
    device = rows[0]["device"] if rows else "?"
    ops = [r for r in rows if r["op"] != "model"]
    models = [r for r in rows if r["op"] == "model"]
    chart(ops, os.path.join(out_dir, "speedup-ops.png"), f"fastops vs torch on {device}: ops")
    chart(models, os.path.join(out_dir, "speedup-models.png"),
          f"fastops vs torch on {device}: tutorial models (fastops build / torch build)")
    return text


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(write_report(sys.argv[1], sys.argv[2]))
