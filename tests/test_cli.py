"""python -m fastops: what info reports and how it lays it out; a missing optional dependency."""

import os
import re

import pytest
import torch

from fastops import _extras
from fastops.__main__ import _avx512_text, main

AVX512_FLAGS = "avx512f avx512vl avx512dq avx512bw"  # what csrc/shared/isa.h checks


def cell_starts(line):
    """Where each cell of a table line starts (cells hold single spaces, columns more)."""
    return [match.start() for match in re.finditer(r"\S+(?: \S+)*", line)]


@pytest.fixture
def info_tables(capsys):
    """(fields, op table): the lines of info's two blocks."""
    assert main(["info"]) == 0
    fields, ops = capsys.readouterr().out.rstrip("\n").split("\n\n")
    return fields.splitlines(), ops.splitlines()


def test_info_columns_align(info_tables):
    fields, ops = info_tables
    assert len({cell_starts(line)[1] for line in fields}) == 1  # every value in one column
    header, *rows = ops
    assert header.split() == ["op", "CPU", "CUDA"]
    assert "fastops::linear_cross_entropy" in [row.split()[0] for row in rows]  # the longest
    for row in rows:
        assert cell_starts(row) == cell_starts(header), row


def test_info_says_whether_avx512_was_detected(info_tables):
    fields, _ = info_tables
    line = next(line for line in fields if line.startswith("AVX-512"))
    if os.environ.get("ATEN_CPU_CAPABILITY") is None:  # which would cap torch's own choice
        # torch detects AVX-512 from the same CPUID flags (and fma, which every such CPU has)
        uses_avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
        assert line.split()[1].startswith("yes" if uses_avx512 else "no"), line
    assert f"torch's ATen: {torch.backends.cpu.get_cpu_capability()}" in line


@pytest.mark.parametrize("flags,expected", [
    (f"fpu sse2 avx2 {AVX512_FLAGS} avx512cd", r"yes: the CPU has avx512f, avx512vl, avx512dq, "
                                                r"avx512bw \(/proc/cpuinfo\)"),
    ("fpu sse2 avx2 avx512f avx512vl avx512dq", "no: the CPU lacks avx512bw"),
    ("fpu sse2 avx2", "no: the CPU lacks avx512f, avx512vl, avx512dq, avx512bw"),
])
def test_avx512_detection_reads_the_flags_the_kernels_check(tmp_path, monkeypatch, flags,
                                                            expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\n")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert re.match(expected, _avx512_text(str(cpuinfo)).replace(str(cpuinfo), "/proc/cpuinfo"))
    assert _avx512_text(str(tmp_path / "none")).startswith("unknown")


@pytest.mark.parametrize("command, extra, module", [
    (["bench", "--quick"], "bench", "pytest_benchmark"),
    (["train", "--model", "mlp"], "models", "sklearn"),
])
def test_a_missing_optional_dependency_names_its_extra(monkeypatch, capsys, command, extra,
                                                       module):
    find_spec = _extras.importlib.util.find_spec
    monkeypatch.setattr(_extras.importlib.util, "find_spec",
                        lambda name: None if name == module else find_spec(name))
    assert main(command) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1  # one line, no traceback
    assert f"pip install 'fastops[{extra}]'" in error
    assert _extras._PIP_NAMES.get(module, module) in error
