"""The package as a user meets it: the command line, the installed layout."""

import subprocess
import sys

import torch

import fastops


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
