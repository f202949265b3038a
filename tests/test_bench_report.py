"""The benchmark report writer, the bench command's results folder and the --quick suite
(issues: make bench; honest quick benchmarks). Only the last test runs benchmarks; the others
feed synthetic pytest-benchmark data to the report and the command."""

import glob
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from fastops.benchmarks.common import MIN_PAIRS, ROUNDS, _paired
from fastops.benchmarks.report import FASTOPS_COMPILED, FLAG, SPREAD_LIMIT, load_rows, write_report

from fastops.__main__ import device_name, main

MACHINE = dict(node="box", cpu=dict(brand_raw="Test CPU", count=2))


def entry(impl, median, saved=None, case="small", pass_="fwd+bwd", op="linear_relu",
          paired=None, paired_compile=None):
    """One pytest-benchmark entry as the suite records it; ``paired`` = (torch median, [25th,
    50th, 75th percentile of the ratios]) for a fastops case timed in pairs with torch,
    ``paired_compile`` the same with torch.compile."""
    info = dict(op=op, case=case, impl=impl, pass_=pass_, dtype="float32", device="cpu")
    if saved is not None:
        info["saved_bytes"] = saved
    if paired:
        info["paired"] = dict(pairs=21, torch_median=paired[0], ratio=paired[1])
    if paired_compile:
        info["paired_compile"] = dict(pairs=7, compile_median=paired_compile[0],
                                      ratio=paired_compile[1])
    return dict(extra_info=info, stats=dict(median=median, q1=0.9 * median, q3=1.2 * median))


def recorded(tmp_path, *benchmarks):
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(dict(machine_info=MACHINE, datetime="2026-11-23T00:00:00",
                                    benchmarks=list(benchmarks))))
    return path


def table_row(text, case, pass_):
    return next(line for line in text.splitlines() if line.startswith(f"| linear_relu | {case} "
                                                                       f"| {pass_} |"))


def test_report_table_and_chart_from_recorded_json(tmp_path):
    path = recorded(tmp_path,
                    entry("torch", 2.2e-3, 4096), entry("torch.compile", 1.5e-3, 2048),
                    entry("fastops", 1e-3, 1024, paired=(2e-3, [1.9, 2.0, 2.1])),
                    entry("torch", 1e-3, case="large", pass_="fwd"),
                    entry("fastops", 4e-3, case="large", pass_="fwd"))
    rows, machine, date, command = load_rows(path)
    assert (machine, date, command) == (dict(node="box", cpu="Test CPU", count=2),
                                        "2026-11-23T00:00:00", None)
    # Paired: the pairs' median ratio, not the ratio of medians (2.2); unpaired: medians.
    assert [r["speedup"] for r in rows] == [2.0, 0.25]
    assert rows[0]["speedup_range"] == [1.9, 2.1] and rows[1]["speedup_range"] is None
    assert rows[0]["memory_ratio"] == 0.25 and rows[1]["memory_ratio"] is None

    text, written = write_report(path, tmp_path / "out", command="python -m fastops bench --quick")
    assert "Test CPU, 2 logical CPUs" in text and "2026-11-23" in text
    assert "python -m fastops bench --quick" in text
    # The torch column of a paired row is the pairs' torch median.
    assert table_row(text, "small", "fwd+bwd") == (
        "| linear_relu | small | fwd+bwd | float32 | 2 ms | 1 ms | 1.5 ms | 2.00x | 1.90 - 2.10x "
        "| 1 KiB / 4 KiB |")
    assert table_row(text, "large", "fwd") == (
        "| linear_relu | large | fwd | float32 | 1 ms | 4 ms | - | 0.25x | - | - |")
    assert FLAG not in text  # no row too spread
    assert written == ["report.md", "summary.json", "speedup-ops.png"]
    assert (tmp_path / "out" / "report.md").read_text() == text
    assert (tmp_path / "out" / "speedup-ops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "out" / "speedup-models.png").exists()  # no model cases recorded
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["command"] == "python -m fastops bench --quick"
    small = summary["cases"][0]
    assert small["median"]["fastops"] == 1e-3
    assert small["quartiles"]["fastops"] == [0.9 * 1e-3, 1.2 * 1e-3]
    assert small["paired"] == dict(pairs=21, torch_median=2e-3, ratio=[1.9, 2.0, 2.1])
    assert small["saved"] == {"torch": 4096, "fastops": 1024, "torch.compile": 2048}


def test_report_flags_rows_whose_pairs_spread_too_wide(tmp_path):
    wide = [0.9, 1.0, 0.9 + SPREAD_LIMIT + 0.01]  # range just over SPREAD_LIMIT of the median
    path = recorded(tmp_path,
                    entry("fastops", 1e-3, case="wide", paired=(1e-3, wide)),
                    entry("fastops", 1e-3, case="within", paired=(1e-3, [0.92, 1.0, 1.1])),
                    entry("fastops", 1e-3, case="narrow", paired=(1e-3, [0.99, 1.0, 1.01])))
    rows = load_rows(path)[0]
    assert [r["flagged"] for r in rows] == [True, False, False]
    text = write_report(path, tmp_path / "out")[0]
    assert f"| 1.00x {FLAG} | 0.90 - 1.11x |" in table_row(text, "wide", "fwd+bwd")
    assert "| 1.00x | 0.92 - 1.10x |" in table_row(text, "within", "fwd+bwd")
    # The footnote explains the marker and counts the flagged rows.
    assert f"{FLAG} 1 of 3 rows: the pairs' 25th-75th percentile range is wider than 20%" in text


def test_report_renders_a_summary_from_before_pairing(tmp_path):
    """The committed summary.json of a run without pairs still renders: ratio of medians, no
    range, no flag, its own command."""
    path = tmp_path / "summary.json"
    case = dict(op="model", case="mlp batch 256", pass_="train step", dtype="float32",
                device="cpu", median=dict(torch=4e-3, fastops=2e-3), quartiles={}, saved={},
                peak={}, speedup=2.0, memory_ratio=None)
    path.write_text(json.dumps(dict(machine=dict(node="vm", cpu="AMD EPYC"), date="2026-11-23",
                                    command="python -m fastops bench", cases=[case])))
    text, written = write_report(path, tmp_path / "out")
    assert "vm (AMD EPYC, ? logical CPUs)" in text and "`python -m fastops bench`" in text
    assert ("| mlp batch 256 | train step | float32 | 4 ms | 2 ms | - | - | 2.00x | - | - | - | - "
            "| - | - |" in text)
    assert "not timed in pairs" in text and FLAG not in text
    assert written == ["report.md", "summary.json", "speedup-models.png"]


@pytest.mark.parametrize("summary", sorted(glob.glob(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "results", "*",
    "summary.json"))))
def test_report_renders_the_committed_summaries(tmp_path, summary):
    text, written = write_report(summary, tmp_path)
    rows = load_rows(summary)[0]
    assert rows and all(r["speedup"] for r in rows if "fastops" in r["median"])
    tables = len({r["op"] == "model" for r in rows})  # the ops' and the models' (a header each)
    assert text.count("\n| ") == len(rows) + tables and "speedup-ops.png" in written


def test_report_models_table_has_the_speedups_over_torch_compile(tmp_path):
    """A model row: the fastops build timed in pairs with torch and torch.compile, the compiled
    fastops build with torch.compile; the torch.compile column is its median in the pairs with
    the eager fastops build."""
    model = dict(op="model", case="mnist_cnn batch 64", pass_="train step")
    wide = [0.9, 1.0, 0.9 + SPREAD_LIMIT + 0.01]
    # In pytest-benchmark's order (by name: "fastops+" before "fastops-").
    path = recorded(tmp_path, entry(FASTOPS_COMPILED, 5e-3, paired_compile=(7e-3, wide), **model),
                    entry("fastops", 4e-3, 1024, paired=(8e-3, [1.9, 2.0, 2.1]),
                          paired_compile=(6e-3, [1.4, 1.5, 1.6]), **model),
                    entry("torch", 8e-3, 4096, **model))
    row = load_rows(path)[0][0]
    assert row["speedup"] == 2.0 and not row["flagged"]
    assert row["vs_compile"]["fastops"]["speedup_range"] == [1.4, 1.6]
    assert row["vs_compile"][FASTOPS_COMPILED]["flagged"]

    text, written = write_report(path, tmp_path / "out")
    assert ("| mnist_cnn batch 64 | train step | float32 | 8 ms | 4 ms | 6 ms | 5 ms | 2.00x | "
            f"1.90 - 2.10x | 1.50x | 1.40 - 1.60x | 1.00x {FLAG} | 0.90 - 1.11x | "
            "1 KiB / 4 KiB |") in text
    assert "compile time excluded" in text and "fullgraph=True" in text
    assert f"{FLAG} 1 of 1 rows" in text  # flagged by its speed-up over torch.compile
    assert written == ["report.md", "summary.json", "speedup-models.png",
                       "speedup-models-compile.png"]
    assert "| op | case |" not in text  # no op rows, no ops table


def test_report_removes_a_chart_the_run_has_no_rows_for(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "speedup-models.png").write_bytes(b"stale chart of an earlier run")
    path = recorded(tmp_path, entry("torch", 2e-3), entry("fastops", 1e-3))
    assert write_report(path, out)[1] == ["report.md", "summary.json", "speedup-ops.png"]
    assert sorted(os.listdir(out)) == ["report.md", "speedup-ops.png", "summary.json"]


def fake_suite(benchmarks, calls):
    """Stands in for pytest.main: records its arguments and writes the given results where
    --benchmark-json asks, as the suite would."""
    def run(args):
        calls.append(args)
        json_path = next(a for a in args if a.startswith("--benchmark-json=")).split("=", 1)[1]
        with open(json_path, "w") as f:
            json.dump(dict(machine_info=MACHINE, datetime="2026-11-23", benchmarks=benchmarks), f)
        return 0
    return run


@pytest.mark.parametrize("argv, folder", [
    ([], ""), (["--quick"], "-quick"), (["--filter", "linear"], "-filtered"),
    (["--quick", "--filter", "linear"], "-quick-filtered")])
def test_bench_writes_ad_hoc_runs_outside_the_committed_results(tmp_path, monkeypatch, capsys,
                                                                argv, folder):
    calls = []
    monkeypatch.setattr(pytest, "main", fake_suite([entry("fastops", 1e-3, paired=(2e-3, [
        1.9, 2.0, 2.1]))], calls))
    monkeypatch.chdir(tmp_path)
    machine = device_name("cpu")
    stale = tmp_path / "runs" / "bench" / (machine + folder) / "speedup-models.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale chart of an earlier run")

    assert main(["bench", "--device", "cpu", *argv]) == 0
    out = os.path.join("runs", "bench", machine + folder)
    assert f"--benchmark-json={os.path.join(out, 'benchmark.json')}" in calls[0]
    assert not (tmp_path / "benchmarks").exists()
    assert sorted(os.listdir(out)) == ["benchmark.json", "report.md", "speedup-ops.png",
                                       "summary.json"]
    printed = capsys.readouterr().out
    assert f"results go to {out}/" in printed
    # It names what it wrote (no models chart: the run had no model rows) and how to commit.
    assert f"results: {out}/ (report.md, summary.json, speedup-ops.png;" in printed
    assert "speedup-models.png" not in printed
    assert f"--out {os.path.join('benchmarks', 'results', machine)}" in printed


def test_bench_out_writes_where_told(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(pytest, "main", fake_suite([entry("fastops", 1e-3)], calls))
    out = tmp_path / "benchmarks" / "results" / "box"
    assert main(["bench", "--device", "cpu", "--out", str(out)]) == 0
    assert f"--benchmark-json={out / 'benchmark.json'}" in calls[0]
    assert (out / "report.md").exists()
    assert "not committed (runs/" not in capsys.readouterr().out


def test_quick_bench_command_writes_json_table_and_chart(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="0")
    result = subprocess.run(
        [sys.executable, "-m", "fastops", "bench", "--quick", "--device", "cpu",
         "--filter", "linear_relu and fwd and not bwd and not dropout", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"benchmark.json", "report.md", "speedup-ops.png"} <= set(os.listdir(tmp_path))
    rows = load_rows(tmp_path / "benchmark.json")[0]
    assert rows and all(r["speedup"] > 0 for r in rows)
    # The fastops case was timed in pairs with torch: the speed-up has its quartile range.
    assert all(r["paired"]["pairs"] >= 7 and r["speedup_range"] for r in rows)


class _FakeBenchmark:
    """The part of pytest-benchmark's fixture that benchmarks/common.py's pairs use."""

    disabled = False

    def pedantic(self, run, setup, rounds):
        self.stats = SimpleNamespace(stats=SimpleNamespace(data=[]))
        for _ in range(rounds):
            setup()
            start = time.perf_counter()
            run()
            self.stats.stats.data.append(time.perf_counter() - start + 1e-6)


def _recorded_pairs(benchmark):
    """_paired over torch, compile and fastops calls that only record their names: (its result,
    the names in call order)."""
    calls = []

    def implementation(name):
        return lambda: calls.append(name)

    result = _paired(benchmark, {"torch": implementation("torch"),
                                 "compile": implementation("compile")},
                     implementation("fastops"))
    return result, calls


def test_pairs_alternate_and_each_baseline_is_timed_apart(monkeypatch):
    """Every timed baseline call is followed by a fastops call, and no torch.compile call falls
    among the torch pairs (it would change the caches those calls start from)."""
    monkeypatch.setitem(ROUNDS, "max_time", 1e-9)  # the fewest pairs: MIN_PAIRS
    summaries, calls = _recorded_pairs(_FakeBenchmark())
    assert calls[:2] == ["torch", "compile"]  # warm-up
    timed = calls[2:]
    first_torch = timed.index("torch")
    assert set(timed[:first_torch]) == {"compile", "fastops"}
    assert "compile" not in timed[first_torch:]
    assert timed[0::2] == (["compile"] * (first_torch // 2)
                           + ["torch"] * ((len(timed) - first_torch) // 2))
    assert set(timed[1::2]) == {"fastops"}
    assert list(summaries) == ["torch", "compile"]
    for name, summary in summaries.items():
        assert summary["pairs"] >= MIN_PAIRS
        assert set(summary) == {"pairs", f"{name}_median", "ratio"}


def test_pairs_time_nothing_under_benchmark_disable():
    """--benchmark-disable: fastops runs once (pytest-benchmark's check that it works), the
    baselines only their warm-up call, and there is no summary."""
    class Disabled(_FakeBenchmark):
        disabled = True

        def pedantic(self, run, rounds, setup=None):
            assert rounds == 1 and setup is None
            run()

    assert _recorded_pairs(Disabled()) == (None, ["torch", "compile", "fastops"])
