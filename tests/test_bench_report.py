"""The benchmark report writer and the --quick suite (issue: make bench)."""

import json
import os
import subprocess
import sys

from fastops.benchmarks.report import load_rows, write_report


def entry(impl, median, saved=None, case="small", pass_="fwd+bwd"):
    info = dict(op="linear_relu", case=case, impl=impl, pass_=pass_, dtype="float32", device="cpu")
    if saved is not None:
        info["saved_bytes"] = saved
    return dict(extra_info=info, stats=dict(median=median, q1=0.9 * median, q3=1.2 * median))


def test_report_table_and_chart_from_recorded_json(tmp_path):
    recorded = dict(machine_info=dict(node="box", cpu=dict(brand_raw="Test CPU", count=2)),
                    datetime="2026-11-23T00:00:00",
                    benchmarks=[entry("torch", 2e-3, 4096), entry("fastops", 1e-3, 1024),
                                entry("torch.compile", 1.5e-3, 2048),
                                entry("torch", 1e-3, case="large", pass_="fwd"),
                                entry("fastops", 4e-3, case="large", pass_="fwd")])
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(recorded))
    rows, _, _ = load_rows(path)
    assert [round(r["speedup"], 3) for r in rows] == [2.0, 0.25]
    assert rows[0]["memory_ratio"] == 0.25 and rows[1]["memory_ratio"] is None

    text = write_report(path, tmp_path / "out", command="python -m fastops bench --quick")
    assert "Test CPU" in text and "2026-11-23" in text and "python -m fastops bench --quick" in text
    assert ("| linear_relu | small | fwd+bwd | float32 | 2 ms | 1 ms | 1.5 ms | 2.00x "
            "| 1 KiB / 4 KiB |") in text
    assert "| linear_relu | large | fwd | float32 | 1 ms | 4 ms | - | 0.25x | - |" in text
    assert (tmp_path / "out" / "report.md").read_text() == text
    assert (tmp_path / "out" / "speedup-ops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "out" / "speedup-models.png").exists()  # no model cases recorded
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["command"] == "python -m fastops bench --quick"
    small = summary["cases"][0]
    assert small["median"]["fastops"] == 1e-3
    assert small["quartiles"]["fastops"] == [0.9 * 1e-3, 1.2 * 1e-3]
    assert small["saved"] == {"torch": 4096, "fastops": 1024, "torch.compile": 2048}


def test_quick_bench_command_writes_json_table_and_chart(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="0")
    result = subprocess.run(
        [sys.executable, "-m", "fastops", "bench", "--quick", "--device", "cpu",
         "--filter", "linear and fwd and not bwd", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"benchmark.json", "report.md", "speedup-ops.png"} <= set(os.listdir(tmp_path))
    rows, _, _ = load_rows(tmp_path / "benchmark.json")
    assert rows and all(r["speedup"] > 0 for r in rows)
