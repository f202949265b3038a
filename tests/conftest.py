import os

import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. The variable must be
# set before triton is imported (it is read when kernels are decorated).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests check results, not speed: on a GPU, one config per kernel and key, untimed (compiling
# and timing every config would take most of a short GPU lease). Read when kernels are defined.
os.environ.setdefault("FASTOPS_AUTOTUNE", "first")

import fastops  # noqa: E402,F401  (registers the ops for every test module)
