"""Builds fastops._C from csrc/ and installs triton_kernels/ and benchmarks/ as
fastops.triton_kernels and fastops.benchmarks.

Install with ``pip install --no-build-isolation [-e] .`` so the extension is compiled against the
torch that is already installed (a build-isolated install would fetch a second torch).
"""

import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def extension():
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    # at::parallel_for is implemented with OpenMP pragmas in torch's headers: compile and link
    # with OpenMP as torch itself does, or every parallel loop runs on one thread.
    # -fno-trapping-math: no kernel reads floating-point exception flags, and without it GCC
    # keeps the selects of branch-free loops (exp, ReLU masks) as branches and does not
    # vectorise them.
    # TORCH_ASSERT_ONLY_METHOD_OPERATORS: a source that includes ATen/ATen.h (every operator's
    # declaration, about 20 s of parsing per file) fails to compile; each file includes the
    # ATen/ops/<op>.h headers of the operators it calls.
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math", "-DTORCH_ASSERT_ONLY_METHOD_OPERATORS"]
    # No debug info unless asked: it is 95% of the library's size and a third of compile time.
    cxx_flags.append("-g" if os.environ.get("FASTOPS_DEBUG", "0") == "1" else "-g0")
    if os.environ.get("FASTOPS_NATIVE", "0") == "1":
        cxx_flags.append("-march=native")
    return CppExtension(
        name="fastops._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


class BuildExtensionInTree(BuildExtension.with_options(use_ninja=True)):
    """Compiles into the source tree's build/ folder, whoever runs the build: pip's editable
    install would otherwise compile in a temporary folder and throw the objects away, so the
    first `setup.py build_ext --inplace` after it (an edit) recompiled every source."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(ROOT, "build", "temp")


setup(
    packages=find_packages(include=["fastops", "fastops.*"])
    + ["fastops.triton_kernels", "fastops.benchmarks"],
    # Top-level folders installed inside the package: a top-level "triton_kernels" module would
    # collide with the Triton project's triton-kernels package.
    package_dir={"fastops.triton_kernels": "triton_kernels", "fastops.benchmarks": "benchmarks"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtensionInTree},
)
