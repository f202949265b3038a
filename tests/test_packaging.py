"""The package as a user meets it: the command line, the installed layout."""

import os
import re
import subprocess
import sys

import pytest
import torch

import fastops
from fastops import _extras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    result = subprocess.run([sys.executable, "-m", "fastops", *args], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_info_reports_versions_extension_and_backend_per_op():
    out = run("info")
    assert f"torch     {torch.__version__}" in out
    assert "C++ extension loaded" in out
    for op in ("fastops::linear", "fastops::conv2d", "fastops::max_pool2d", "fastops::batch_norm",
               "fastops::dropout", "fastops::cross_entropy", "fastops::linear_cross_entropy"):
        line = next(line for line in out.splitlines() if line.startswith(op))
        assert "C++ CPU" in line and "Triton CUDA" in line


def test_triton_kernels_and_benchmarks_install_inside_the_package():
    import fastops.benchmarks.report
    import fastops.triton_kernels.linear

    assert fastops.triton_kernels.linear.__name__ == "fastops.triton_kernels.linear"
    assert callable(fastops.benchmarks.report.write_report)


# Ops with integer results only: nothing to differentiate, so autograd falls through them.
NOT_DIFFERENTIABLE = {"fastops::max_pool2d_indices"}


def test_every_public_op_has_cpu_cuda_autograd_and_fake_kernels():
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastops::")]
    assert len(names) >= 12
    for name in names:
        differentiable = not name.endswith("_backward") and name not in NOT_DIFFERENTIABLE
        keys = ["CPU", "CUDA", "Meta"] + (["Autograd"] if differentiable else [])
        for key in keys:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), (name, key)


def test_top_level_api():
    assert callable(fastops.convert) and callable(fastops.unconvert)
    assert fastops.ops.linear is torch.ops.fastops.linear


def pyproject():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        return tomllib.load(file)["project"]


def test_license_file_matches_the_metadata():
    project = pyproject()
    assert project["license"] == "BSD-3-Clause"
    for name in project["license-files"]:
        with open(os.path.join(ROOT, name)) as file:
            assert file.readline().strip() == "BSD 3-Clause License"


def test_each_optional_module_is_installed_by_the_extra_named_in_its_message():
    extras = pyproject()["optional-dependencies"]
    for extra, modules in _extras.EXTRAS.items():
        packages = {re.split(r"[<>=\[ ]", spec)[0] for spec in extras[extra]}
        assert {_extras._PIP_NAMES.get(module, module) for module in modules} <= packages
