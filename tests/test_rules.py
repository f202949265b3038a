"""One message per bad call, whatever the backend.

Every fastops op checks its arguments and computes its output sizes once, in C++
(``<op>_rules`` in csrc/<op>/<op>.cpp). The same rules are the op's Meta kernel (what
torch.compile traces), run first in its CPU kernel, and run first in its Triton launcher
(``triton_kernels/_utils.checked_outputs``, a redispatch to the Meta key). This module checks
that this holds, on a table of bad raw-op calls: each case is a valid call (``VALID``) with one
or a few arguments changed, and must raise the same error, with the message naming the bad
argument, on every backend:

  cpu          torch.ops.fastops.<op> on CPU tensors;
  meta         the same call on meta tensors (the Meta kernel, torch.compile's fake kernel);
  interpreter  the op's Triton launcher called directly on the CPU tensors (TRITON_INTERPRET=1);
  cuda         torch.ops.fastops.<op> on CUDA tensors (only where a GPU is present).

A device-mismatch case puts one tensor on another device than the rest ("meta" beside CPU
tensors, which used to read uninitialised memory; "cpu" beside meta or CUDA tensors). A failed
call must not have run a kernel: the arguments an op writes in place (dropout_'s input,
batch_norm's running statistics) must be unchanged. The valid calls themselves are positive
controls: each must succeed on every backend with the same output shapes and dtypes, so the
table cannot pass by everything raising.
"""

import dataclasses
import importlib
import os
import re

import pytest
import torch
from helpers import raises, requires_cuda

import fastops

BACKENDS = ["cpu", "meta", "interpreter", "cuda"]
# Triton's interpreter runs the launchers' kernels on CPU tensors (set by conftest.py without a
# GPU); otherwise "interpreter" can only check that bad calls raise before any launch.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = {"cpu": "cpu", "meta": "meta", "interpreter": "cpu", "cuda": "cuda"}
# The device of the odd tensor in a device-mismatch case.
OTHER_DEVICE = {"cpu": "meta", "meta": "cpu", "interpreter": "meta", "cuda": "cpu"}
# Seeds are one-element int64 CPU tensors (meta ones too beside a meta input): a seed on these
# devices is wrong; beside a meta input no device is wrong (but CUDA, which we may not have).
SEED_DEVICE = {"cpu": "cpu", "meta": "meta", "interpreter": "cpu", "cuda": "cpu"}
OTHER_SEED_DEVICE = {"cpu": "meta", "meta": None, "interpreter": "meta", "cuda": "cuda"}

# The Triton launcher of each op, as fastops registered it for CUDA.
LAUNCHERS = fastops._cuda.LAUNCHERS


# --------------------------------------------------------------------------- argument specs

@dataclasses.dataclass(frozen=True)
class T:
    """A tensor argument, built for each backend: floating-point values from randn, integer
    ones below ``high``, or all ``fill``; ``other=True`` puts it on OTHER_DEVICE."""
    shape: tuple
    dtype: torch.dtype = torch.float32
    high: int = 3
    fill: float = None
    other: bool = False

    def build(self, backend):
        device = (OTHER_DEVICE if self.other else DEVICE)[backend]
        if device == "meta":
            return torch.empty(self.shape, dtype=self.dtype, device="meta")
        generator = torch.Generator().manual_seed(0)
        if self.fill is not None:
            tensor = torch.full(self.shape, self.fill, dtype=self.dtype)
        elif self.dtype.is_floating_point or self.dtype.is_complex:
            tensor = torch.randn(self.shape, generator=generator, dtype=self.dtype)
        elif self.dtype == torch.bool:
            tensor = torch.zeros(self.shape, dtype=torch.bool)
        else:
            tensor = torch.randint(self.high, self.shape, generator=generator, dtype=self.dtype)
        return tensor.to(device)


def f(*shape, **kwargs):
    """A float32 tensor argument (another dtype with dtype=...)."""
    return T(shape, **kwargs)


def i(*shape, dtype=torch.int64, **kwargs):
    """An integer tensor argument (int64 unless dtype=...)."""
    return T(shape, dtype=dtype, **kwargs)


@dataclasses.dataclass(frozen=True)
class Seed:
    """A dropout seed: a one-element int64 CPU tensor unless told otherwise."""
    dtype: torch.dtype = torch.int64
    numel: int = 1
    other: bool = False

    def build(self, backend):
        device = (OTHER_SEED_DEVICE if self.other else SEED_DEVICE)[backend]
        return torch.full((self.numel,), 7, dtype=self.dtype).to(device)


SEED = Seed()
WINDOW = dict(kernel_size=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1])
CONV = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1)


# ---------------------------------------------------------------- valid calls (the controls)

# For each op, every argument of a valid call by schema name, and the (shape, dtype) of each
# output (None for an op that returns nothing). Every bad case below changes a few of them.
FLOAT, LONG, BYTE, BF16 = torch.float32, torch.int64, torch.uint8, torch.bfloat16
VALID = {
    "linear": (
        dict(input=f(3, 4), weight=f(5, 4), bias=f(5), activation="relu", dropout_seed=SEED,
             dropout_p=0.25),
        ((3, 5), FLOAT)),
    "linear_backward": (
        dict(grad_output=f(3, 5), input=f(3, 4), weight=f(5, 4), output=f(3, 5), activation="relu",
             output_mask=[True, True, True], dropout_seed=SEED, dropout_p=0.25),
        [((3, 4), FLOAT), ((5, 4), FLOAT), ((5,), FLOAT)]),
    "dropout": (
        dict(input=f(3, 4), seed=SEED, p=0.25, channel_size=2),
        ((3, 4), FLOAT)),
    "dropout_": (
        dict(input=f(3, 4), seed=SEED, p=0.25, channel_size=2),
        None),
    "max_pool2d": (
        dict(input=f(2, 3, 8, 8), **WINDOW, ceil_mode=False),
        [((2, 3, 4, 4), FLOAT), ((2, 3, 4, 4), BYTE)]),
    "max_pool2d_values": (
        dict(input=f(2, 3, 8, 8), **WINDOW, ceil_mode=False),
        ((2, 3, 4, 4), FLOAT)),
    "max_pool2d_backward": (
        dict(grad_output=f(2, 3, 4, 4), argmax=i(2, 3, 4, 4, dtype=BYTE, high=4), input_size=[8, 8],
             **WINDOW),
        ((2, 3, 8, 8), FLOAT)),
    "max_pool2d_indices": (
        dict(argmax=i(2, 3, 4, 4, dtype=BYTE, high=4), input_width=8, **WINDOW),
        ((2, 3, 4, 4), LONG)),
    "cross_entropy": (
        dict(input=f(4, 5), target=i(4, high=5), weight=f(5), reduction="mean", ignore_index=-100,
             label_smoothing=0.1),
        [((), FLOAT), ((4,), FLOAT), ((), FLOAT)]),
    "cross_entropy_backward": (
        dict(grad_loss=f(), input=f(4, 5), target=i(4, high=5), weight=f(5), logsumexp=f(4),
             total_weight=f(fill=4.0), reduction="mean", ignore_index=-100, label_smoothing=0.1,
             output_mask=[True, False]),
        [((4, 5), FLOAT), ((0,), FLOAT)]),
    "linear_cross_entropy": (
        dict(input=f(4, 8), linear_weight=f(5, 8), bias=f(5), target=i(4, high=5), weight=f(5),
             reduction="mean", ignore_index=-100, label_smoothing=0.1, loss_dtype=None),
        [((), FLOAT), ((4,), FLOAT), ((), FLOAT)]),
    "linear_cross_entropy_backward": (
        dict(grad_loss=f(), input=f(4, 8), linear_weight=f(5, 8), bias=f(5), target=i(4, high=5),
             weight=f(5), logsumexp=f(4), total_weight=f(fill=4.0), reduction="mean",
             ignore_index=-100, label_smoothing=0.1, output_mask=[True, True, True, False],
             loss_dtype=None),
        [((4, 8), FLOAT), ((5, 8), FLOAT), ((5,), FLOAT), ((0,), FLOAT)]),
    "linear_cross_entropy_with_grad": (
        dict(input=f(4, 8), linear_weight=f(5, 8), bias=f(5), target=i(4, high=5), weight=f(5),
             reduction="mean", ignore_index=-100, label_smoothing=0.1,
             output_mask=[True, True, False], loss_dtype=None),
        [((), FLOAT), ((4,), FLOAT), ((), FLOAT), ((4, 8), FLOAT), ((5, 8), FLOAT),
         ((0,), FLOAT)]),
    "conv2d": (
        dict(input=f(2, 3, 8, 8), weight=f(4, 3, 3, 3), bias=f(4), **CONV, activation="relu"),
        ((2, 4, 8, 8), FLOAT)),
    "conv2d_backward": (
        dict(grad_output=f(2, 4, 8, 8), input=f(2, 3, 8, 8), weight=f(4, 3, 3, 3),
             output=f(2, 4, 8, 8), input_size=[2, 3, 8, 8], **CONV, activation="relu",
             output_mask=[True, True, True]),
        [((2, 3, 8, 8), FLOAT), ((4, 3, 3, 3), FLOAT), ((4,), FLOAT)]),
    "batch_norm": (
        dict(input=f(4, 3, 5), weight=f(3), bias=f(3), running_mean=f(3),
             running_var=f(3, fill=1.0), training=True, momentum=0.1, eps=1e-5, activation="relu"),
        [((4, 3, 5), FLOAT), ((3,), FLOAT), ((3,), FLOAT)]),
    "batch_norm_backward": (
        dict(grad_output=f(4, 3, 5), input=f(4, 3, 5), weight=f(3), output=f(4, 3, 5),
             save_mean=f(3), save_invstd=f(3, fill=1.0), training=True, activation="relu",
             output_mask=[True, True, True]),
        [((4, 3, 5), FLOAT), ((3,), FLOAT), ((3,), FLOAT)]),
}


# More valid calls: with an empty dimension (batch, features, classes, channels), where the
# output sizes are easiest to get wrong and kernels have nothing to launch. (op, name, changes
# to VALID[op], expected outputs).
EMPTY = [
    ("linear", "empty batch", dict(input=f(0, 4)), ((0, 5), FLOAT)),
    ("linear", "no in_features", dict(input=f(3, 0), weight=f(5, 0)), ((3, 5), FLOAT)),
    ("linear", "no out_features", dict(weight=f(0, 4), bias=f(0)), ((3, 0), FLOAT)),
    ("linear_backward", "empty batch", dict(grad_output=f(0, 5), input=f(0, 4), output=f(0, 5)),
     [((0, 4), FLOAT), ((5, 4), FLOAT), ((5,), FLOAT)]),
    ("linear_backward", "no out_features",
     dict(grad_output=f(3, 0), weight=f(0, 4), output=f(3, 0)),
     [((3, 4), FLOAT), ((0, 4), FLOAT), ((0,), FLOAT)]),
    ("dropout", "empty", dict(input=f(0, 4)), ((0, 4), FLOAT)),
    ("dropout_", "empty", dict(input=f(0, 4)), None),
    ("max_pool2d", "empty batch", dict(input=f(0, 3, 8, 8)),
     [((0, 3, 4, 4), FLOAT), ((0, 3, 4, 4), BYTE)]),
    ("max_pool2d_values", "empty batch", dict(input=f(0, 3, 8, 8)), ((0, 3, 4, 4), FLOAT)),
    ("max_pool2d_backward", "empty batch",
     dict(grad_output=f(0, 3, 4, 4), argmax=i(0, 3, 4, 4, dtype=BYTE)), ((0, 3, 8, 8), FLOAT)),
    ("max_pool2d_indices", "empty batch", dict(argmax=i(0, 3, 4, 4, dtype=BYTE)),
     ((0, 3, 4, 4), LONG)),
    ("cross_entropy", "empty batch", dict(input=f(0, 5), target=i(0)),
     [((), FLOAT), ((0,), FLOAT), ((), FLOAT)]),
    ("cross_entropy", "no classes, every target ignored",
     dict(input=f(4, 0), target=i(4, fill=-100), weight=None),
     [((), FLOAT), ((4,), FLOAT), ((), FLOAT)]),
    ("cross_entropy", "no classes, probability target",
     dict(input=f(4, 0), target=f(4, 0), weight=None),
     [((), FLOAT), ((4,), FLOAT), ((), FLOAT)]),
    ("cross_entropy_backward", "empty batch", dict(input=f(0, 5), target=i(0), logsumexp=f(0)),
     [((0, 5), FLOAT), ((0,), FLOAT)]),
    ("cross_entropy_backward", "no classes, probability target",
     dict(input=f(4, 0), target=f(4, 0), weight=None, output_mask=[True, True]),
     [((4, 0), FLOAT), ((4, 0), FLOAT)]),
    ("linear_cross_entropy", "empty batch", dict(input=f(0, 8), target=i(0)),
     [((), FLOAT), ((0,), FLOAT), ((), FLOAT)]),
    ("linear_cross_entropy", "no hidden features", dict(input=f(4, 0), linear_weight=f(5, 0)),
     [((), FLOAT), ((4,), FLOAT), ((), FLOAT)]),
    ("linear_cross_entropy", "no classes, probability target",
     dict(linear_weight=f(0, 8), bias=f(0), target=f(4, 0), weight=None),
     [((), FLOAT), ((4,), FLOAT), ((), FLOAT)]),
    ("linear_cross_entropy", "float32 loss of bfloat16 logits",
     dict(input=f(4, 8, dtype=BF16), linear_weight=f(5, 8, dtype=BF16), bias=f(5, dtype=BF16),
          target=f(4, 5), loss_dtype=FLOAT),
     [((), FLOAT), ((4,), FLOAT), ((), FLOAT)]),
    ("linear_cross_entropy_backward", "float32 loss of bfloat16 logits",
     dict(input=f(4, 8, dtype=BF16), linear_weight=f(5, 8, dtype=BF16), bias=f(5, dtype=BF16),
          target=f(4, 5), loss_dtype=FLOAT, output_mask=[True, True, True, True]),
     [((4, 8), BF16), ((5, 8), BF16), ((5,), BF16), ((4, 5), FLOAT)]),
    ("linear_cross_entropy_backward", "empty batch",
     dict(input=f(0, 8), target=i(0), logsumexp=f(0)),
     [((0, 8), FLOAT), ((5, 8), FLOAT), ((5,), FLOAT), ((0,), FLOAT)]),
    ("linear_cross_entropy_backward", "no hidden features",
     dict(input=f(4, 0), linear_weight=f(5, 0)),
     [((4, 0), FLOAT), ((5, 0), FLOAT), ((5,), FLOAT), ((0,), FLOAT)]),
    ("linear_cross_entropy_with_grad", "empty batch", dict(input=f(0, 8), target=i(0)),
     [((), FLOAT), ((0,), FLOAT), ((), FLOAT), ((0, 8), FLOAT), ((5, 8), FLOAT), ((0,), FLOAT)]),
    ("linear_cross_entropy_with_grad", "no classes, probability target",
     dict(linear_weight=f(0, 8), bias=f(0), target=f(4, 0), weight=None,
          output_mask=[True, True, True]),
     [((), FLOAT), ((4,), FLOAT), ((), FLOAT), ((4, 8), FLOAT), ((0, 8), FLOAT), ((0,), FLOAT)]),
    ("linear_cross_entropy_with_grad", "float32 loss of bfloat16 logits, sum",
     dict(input=f(4, 8, dtype=BF16), linear_weight=f(5, 8, dtype=BF16), bias=f(5, dtype=BF16),
          target=f(4, 5), loss_dtype=FLOAT, reduction="sum"),
     [((), FLOAT), ((4,), FLOAT), ((), FLOAT), ((4, 8), BF16), ((5, 8), BF16), ((0,), BF16)]),
    ("conv2d", "empty batch", dict(input=f(0, 3, 8, 8)), ((0, 4, 8, 8), FLOAT)),
    ("conv2d", "no input channels", dict(input=f(2, 0, 8, 8), weight=f(4, 0, 3, 3)),
     ((2, 0, 8, 8), FLOAT)),  # as torch: no output channel either
    ("conv2d_backward", "empty batch",
     dict(grad_output=f(0, 4, 8, 8), input=f(0, 3, 8, 8), output=f(0, 4, 8, 8),
          input_size=[0, 3, 8, 8]),
     [((0, 3, 8, 8), FLOAT), ((4, 3, 3, 3), FLOAT), ((4,), FLOAT)]),
    ("conv2d_backward", "no input channels",
     dict(grad_output=f(2, 0, 8, 8), input=f(2, 0, 8, 8), weight=f(4, 0, 3, 3),
          output=f(2, 0, 8, 8), input_size=[2, 0, 8, 8]),
     [((2, 0, 8, 8), FLOAT), ((4, 0, 3, 3), FLOAT), ((4,), FLOAT)]),
    ("batch_norm", "empty batch", dict(input=f(0, 3, 5)),
     [((0, 3, 5), FLOAT), ((3,), FLOAT), ((3,), FLOAT)]),
    ("batch_norm", "no channels",
     dict(input=f(4, 0, 5), weight=f(0), bias=f(0), running_mean=f(0), running_var=f(0)),
     [((4, 0, 5), FLOAT), ((0,), FLOAT), ((0,), FLOAT)]),
    ("batch_norm_backward", "empty batch",
     dict(grad_output=f(0, 3, 5), input=f(0, 3, 5), output=f(0, 3, 5)),
     [((0, 3, 5), FLOAT), ((3,), FLOAT), ((3,), FLOAT)]),
    ("batch_norm_backward", "no channels",
     dict(grad_output=f(4, 0, 5), input=f(4, 0, 5), output=f(4, 0, 5), weight=f(0),
          save_mean=f(0), save_invstd=f(0)),
     [((4, 0, 5), FLOAT), ((0,), FLOAT), ((0,), FLOAT)]),
]


# ------------------------------------------------------------------------------ bad calls

@dataclasses.dataclass(frozen=True)
class Bad:
    """VALID[op] with ``changes``: must raise ``error`` whose message starts "fastops::<op>: "
    (or "fastops::<named>: ": max_pool2d_values shares max_pool2d's rules and their messages)
    and goes on with ``match``, literal text or a compiled pattern; a pattern starting with "^"
    is the whole message (for a torch-worded one without the op's name)."""
    op: str
    name: str
    match: object
    changes: dict
    error: type = RuntimeError
    named: str = None

    @property
    def pattern(self):
        prefix = re.escape(f"fastops::{self.named or self.op}: ")
        if isinstance(self.match, str):
            return prefix + re.escape(self.match)
        pattern = self.match.pattern
        return pattern if pattern.startswith("^") else prefix + pattern


CASES = []


def bad(op, name, match, error=RuntimeError, named=None, **changes):
    CASES.append(Bad(op, name, match, changes, error, named))


def activation_and_dtype_cases(op, first):
    """The checks every op with an activation and a floating-point first tensor makes."""
    bad(op, "gelu activation", "activation must be 'none' or 'relu', got 'gelu'",
        activation="gelu")
    shape = VALID[op][0][first].shape
    bad(op, f"int {first}", f"expected {first} to be a floating-point tensor, got Int",
        **{first: i(*shape, dtype=torch.int32)})


def same_dtype_device_cases(op, name, ref):
    """``name`` of a dtype other than ``ref``'s, and on another device."""
    spec = VALID[op][0][name]
    bad(op, f"float64 {name}", f"expected {name} to have the dtype of {ref} (Float), got Double",
        **{name: dataclasses.replace(spec, dtype=torch.float64)})
    bad(op, f"{name} on another device", f"expected {name} on the device of {ref}",
        **{name: dataclasses.replace(spec, other=True)})


def seed_cases(op, ref):
    """check_dropout_seed (csrc/dropout/dropout.cpp) of a seed beside tensor ``ref``."""
    seed = "seed" if op.startswith("dropout") else "dropout_seed"
    p = "p" if op.startswith("dropout") else "dropout_p"
    expected = "expected seed to be a one-element int64 CPU tensor, got "
    bad(op, "float seed", expected + "1 element(s) of Float", **{seed: Seed(dtype=torch.float32)})
    bad(op, "int32 seed", expected + "1 element(s) of Int", **{seed: Seed(dtype=torch.int32)})
    bad(op, "2-element seed", expected + "2 element(s) of Long", **{seed: Seed(numel=2)})
    bad(op, "empty seed", expected + "0 element(s) of Long", **{seed: Seed(numel=0)})
    bad(op, f"seed on another device than {ref}", expected + "1 element(s) of Long on ",
        **{seed: Seed(other=True)})
    for value in (1.5, -0.5):
        bad(op, f"p={value}", f"dropout probability has to be between 0 and 1, but got {value}",
            **{p: value})


# linear -------------------------------------------------------------------------------------
activation_and_dtype_cases("linear", "input")
bad("linear", "1-D weight", "expected weight to be 2-D, got a 1-D tensor of shape [4]",
    weight=f(4))
bad("linear", "3-D weight", "expected weight to be 2-D, got a 3-D tensor", weight=f(1, 5, 4))
same_dtype_device_cases("linear", "weight", "input")
bad("linear", "0-D input", "expected input to have at least 1 dimension, got 0", input=f())
bad("linear", "in_features", "expected input.shape[-1] == 4 (weight.shape[1]), got 3",
    input=f(3, 3))
same_dtype_device_cases("linear", "bias", "input")
bad("linear", "bias of the wrong length", "expected bias of shape [5], got [4]", bias=f(4))
bad("linear", "2-D bias", "expected bias of shape [5], got [1, 5]", bias=f(1, 5))
seed_cases("linear", "input")

# linear_backward ----------------------------------------------------------------------------
activation_and_dtype_cases("linear_backward", "grad_output")
bad("linear_backward", "0-D grad_output",
    "expected grad_output to have at least 1 dimension, got 0", grad_output=f())
bad("linear_backward", "relu without output", "activation 'relu' needs the forward output",
    output=None)
bad("linear_backward", "grad_input without weight", "grad_input needs weight", weight=None)
bad("linear_backward", "grad_weight without input", "grad_weight needs input", input=None)
bad("linear_backward", "1-D weight", "expected weight to be 2-D, got a 1-D tensor", weight=f(4))
same_dtype_device_cases("linear_backward", "weight", "grad_output")
bad("linear_backward", "weight rows",
    "expected weight of shape [5, in_features] (grad_output.shape[-1] rows), got [6, 4]",
    weight=f(6, 4))
same_dtype_device_cases("linear_backward", "input", "grad_output")
# (the expected rows print as a nested list: "[[3], in_features]")
INPUT_ROWS = "expected input of grad_output's leading sizes [3] and in_features last, got "
bad("linear_backward", "input rows", INPUT_ROWS + "[2, 4]", input=f(2, 4))
bad("linear_backward", "input rank", INPUT_ROWS + "[1, 3, 4]", input=f(1, 3, 4))
bad("linear_backward", "input in_features",
    "expected input.shape[-1] == 4 (weight.shape[1]), got 3", input=f(3, 3))
same_dtype_device_cases("linear_backward", "output", "grad_output")
bad("linear_backward", "output shape",
    "expected output of grad_output's shape [2000, 2000], got [1, 1]",
    grad_output=f(2000, 2000), input=f(2000, 30), weight=f(2000, 30), output=f(1, 1))
bad("linear_backward", "output shape without relu",
    "expected output of grad_output's shape [3, 5], got [5, 3]", activation="none",
    output=f(5, 3))
seed_cases("linear_backward", "grad_output")

# dropout, dropout_ --------------------------------------------------------------------------
for op in ("dropout", "dropout_"):
    bad(op, "int input", "expected input to be a floating-point tensor, got Int",
        input=i(3, 4, dtype=torch.int32))
    seed_cases(op, "input")
    bad(op, "channel_size 0", "expected channel_size >= 1, got 0", channel_size=0)
    bad(op, "channel_size -2", "expected channel_size >= 1, got -2", channel_size=-2)
    bad(op, "channel_size not dividing numel",
        "expected channel_size (5) to divide input.numel() (12)", channel_size=5)


BOUND = "expected kernel_size, stride, padding and dilation below 2**31 in magnitude, got "

# max_pool2d, max_pool2d_backward, max_pool2d_indices ----------------------------------------
WINDOW_CASES = [  # parse_window, shared by the three ops
    ("kernel_size of 1 int", "expected kernel_size of 2 ints, got [2]", dict(kernel_size=[2])),
    ("stride of 3 ints", "expected stride of 2 ints, got [2, 2, 2]", dict(stride=[2, 2, 2])),
    ("padding of 1 int", "expected padding of 2 ints, got [0]", dict(padding=[0])),
    ("empty dilation", "expected dilation of 2 ints, got []", dict(dilation=[])),
    ("zero kernel", "kernel size should be greater than zero, but got kH: 0 kW: 2",
     dict(kernel_size=[0, 2])),
    ("negative kernel", "kernel size should be greater than zero, but got kH: 2 kW: -1",
     dict(kernel_size=[2, -1])),
    ("zero dilation", "dilation should be greater than zero, but got dilationH: 1 dilationW: 0",
     dict(dilation=[1, 0])),
    ("negative dilation", "dilation should be greater than zero, but got dilationH: -1 "
     "dilationW: 1", dict(dilation=[-1, 1])),
    # bounded before (kernel_size - 1) * dilation is computed: it used to overflow
    ("dilation 2**61", re.compile(re.escape(BOUND) + r"kernel_size=\[2, 2\], .*"
                                  r"dilation=\[2305843009213693952, 1\]"),
     dict(dilation=[2**61, 1])),
    ("dilation -2**61", re.compile(re.escape(BOUND) + r".*dilation=\[1, -2305843009213693952\]"),
     dict(dilation=[1, -2**61])),
    ("kernel 2**40", re.compile(re.escape(BOUND) + r"kernel_size=\[2, 1099511627776\]"),
     dict(kernel_size=[2, 2**40])),
    # the output size used to overflow for a stride near 2**63
    ("stride 2**63 - 1", re.compile(re.escape(BOUND) + r".*stride=\[9223372036854775807, 1\]"),
     dict(stride=[2**63 - 1, 1])),
    ("zero stride", "stride should not be zero", dict(stride=[0, 2])),
    ("negative stride", "stride should be greater than zero, but got dH: 2 dW: -1",
     dict(stride=[2, -1])),
    ("negative padding", "pad must be non-negative, but got pad: -1", dict(padding=[-1, 0])),
    ("padding over half the dilated kernel",
     "pad should be at most half of effective kernel size, but got pad=2, kernel_size=2 and "
     "dilation=1", dict(padding=[0, 2])),
    ("padding over half the kernel",
     "pad should be smaller than or equal to half of kernel size, but got padW = 2, padH = 2, "
     "kW = 3, kH = 3", dict(kernel_size=[3, 3], dilation=[3, 3], padding=[2, 2])),
    ("2**31-element window", "the window must have fewer than 2**31 elements, got [50000, 50000]",
     dict(kernel_size=[50000, 50000])),
]
# max_pool2d_values runs max_pool2d's rules: the same errors, naming max_pool2d.
NAMED = {"max_pool2d_values": "max_pool2d"}
for op in ("max_pool2d", "max_pool2d_values", "max_pool2d_backward", "max_pool2d_indices"):
    for name, match, changes in WINDOW_CASES:
        bad(op, name, match, named=NAMED.get(op), **changes)

EMPTY_PLANE = ("Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, "
               "but got: ")
for op in ("max_pool2d", "max_pool2d_values"):
    named = NAMED.get(op)
    bad(op, "3-D input", "expected a 4-D input [N, C, H, W], got a 3-D tensor of shape "
        "[3, 8, 8]", named=named, input=f(3, 8, 8))
    bad(op, "bool input", "expected a real input, got Bool", named=named,
        input=i(2, 3, 8, 8, dtype=torch.bool))
    bad(op, "complex input", "expected a real input, got ComplexFloat", named=named,
        input=f(2, 3, 8, 8, dtype=torch.complex64))
    bad(op, "no channels", EMPTY_PLANE + "[2, 0, 8, 8]", named=named, input=f(2, 0, 8, 8))
    bad(op, "no width", EMPTY_PLANE + "[2, 3, 8, 0]", named=named, input=f(2, 3, 8, 0))
    bad(op, "window larger than the input",
        "Given input size: (3x8x8). Calculated output size: (3x0x0). Output size is too small",
        named=named, kernel_size=[9, 9], stride=[1, 1])

ARGMAX = VALID["max_pool2d_backward"][0]["argmax"]
for op in ("max_pool2d_backward", "max_pool2d_indices"):
    bad(op, "3-D argmax", "expected argmax to be 4-D, got a 3-D tensor",
        argmax=i(3, 4, 4, dtype=BYTE))
    bad(op, "int64 argmax", "expected argmax of dtype Byte for a window of 4 elements, got Long",
        argmax=dataclasses.replace(ARGMAX, dtype=torch.int64))
    bad(op, "int16 argmax for a 3x3 window",
        "expected argmax of dtype Byte for a window of 9 elements, got Short",
        argmax=dataclasses.replace(ARGMAX, dtype=torch.int16), kernel_size=[3, 3])

bad("max_pool2d_backward", "argmax on another device",
    "expected argmax on the device of grad_output", argmax=dataclasses.replace(ARGMAX, other=True))
bad("max_pool2d_backward", "grad_output shape",
    "expected grad_output of the argmax shape [2, 3, 4, 4], got [2, 3, 4, 5]",
    grad_output=f(2, 3, 4, 5))
bad("max_pool2d_backward", "int grad_output", "expected a floating-point grad_output, got Int",
    grad_output=i(2, 3, 4, 4, dtype=torch.int32))
bad("max_pool2d_backward", "input_size of 3 ints",
    "expected input_size of 2 ints (H, W), got [8, 8, 8]", input_size=[8, 8, 8])
bad("max_pool2d_backward", "input_size not matching argmax",
    "argmax of spatial size [4, 4] is not the pooling of an input of size [12, 8] with "
    "kernel_size=[2, 2], stride=[2, 2], padding=[0, 0], dilation=[1, 1]", input_size=[12, 8])
bad("max_pool2d_backward", "input_size 0",
    "argmax of spatial size [4, 4] is not the pooling of an input of size [8, 0]",
    input_size=[8, 0])
bad("max_pool2d_indices", "input_width 0", "expected input_width >= 1, got 0", input_width=0)
bad("max_pool2d_indices", "negative input_width", "expected input_width >= 1, got -8",
    input_width=-8)


# cross_entropy, cross_entropy_backward, linear_cross_entropy(_backward) ----------------------
def loss_cases(op, rows=4, classes=5):
    """check_loss: the checks of every loss op against logits [rows, classes]."""
    bad(op, "reduction 'avg'", "reduction must be 'none', 'mean' or 'sum', got 'avg'",
        reduction="avg")
    for value in (1.5, -0.1):
        bad(op, f"label_smoothing={value}",
            f"label_smoothing must be between 0.0 and 1.0, got {value}", label_smoothing=value)
    bad(op, "target on another device", "expected target on the device of input",
        target=i(rows, high=classes, other=True))
    bad(op, "int32 target", "expected target dtype to be Long or Byte, got Int",
        target=i(rows, high=classes, dtype=torch.int32))
    bad(op, "bool target", "expected target dtype to be Long or Byte, got Bool",
        target=i(rows, dtype=torch.bool))
    bad(op, "class-index target of the wrong length",
        f"expected a class-index target of shape [{rows}], got [{rows + 1}]",
        target=i(rows + 1, high=classes))
    bad(op, "2-D class-index target",
        f"expected a class-index target of shape [{rows}], got [{rows}, 1]",
        target=i(rows, 1, high=classes))
    bad(op, "float64 probability target", "expected target to have the dtype of input (Float), "
        "got Double", target=f(rows, classes, dtype=torch.float64))
    bad(op, "probability target shape",
        f"expected a probability target of the logits' shape [{rows}, {classes}], got "
        f"[{rows}, {classes + 1}]", target=f(rows, classes + 1))
    same_dtype_device_cases(op, "weight", "input")
    bad(op, "weight of the wrong length",
        f"expected weight of shape [{classes}], got [{classes - 1}]", weight=f(classes - 1))
    bad(op, "2-D weight", f"expected weight of shape [{classes}], got [1, {classes}]",
        weight=f(1, classes))


def loss_backward_cases(op, rows=4):
    """check_loss_backward: the saved forward results and grad_loss."""
    for name in ("grad_loss", "logsumexp", "total_weight"):
        spec = VALID[op][0][name]
        bad(op, f"int {name}", f"expected {name} to be a floating-point tensor, got Int",
            **{name: dataclasses.replace(spec, dtype=torch.int32)})
        bad(op, f"{name} on another device", f"expected {name} on the device of input",
            **{name: dataclasses.replace(spec, other=True)})
    bad(op, "per-row grad_loss of a mean", f"expected grad_loss with 1 values, got {rows}",
        grad_loss=f(rows))
    bad(op, "scalar grad_loss of reduction 'none'",
        f"expected grad_loss with {rows} values, got 1", reduction="none")
    bad(op, "logsumexp of the wrong length",
        f"expected logsumexp with {rows} values, got {rows - 1}", logsumexp=f(rows - 1))
    bad(op, "scalar logsumexp", f"expected logsumexp with {rows} values, got 1", logsumexp=f())
    bad(op, "2-element total_weight", "expected a one-element total_weight, got [2]",
        total_weight=f(2))
    mask = list(VALID[op][0]["output_mask"])
    mask[-1] = True
    bad(op, "gradient of a class-index target", "a class-index target has no gradient",
        output_mask=mask)


for op in ("cross_entropy", "cross_entropy_backward"):
    loss_cases(op)
    bad(op, "int input", "expected input to be a floating-point tensor, got Int",
        input=i(4, 5, dtype=torch.int32))
    bad(op, "1-D input", "expected logits of shape [N, C] or [N, C, d1, ...], got [5]",
        input=f(5), target=i())
    bad(op, "class-index target of a 3-D input",
        "expected a class-index target of shape [4, 6], got [4]", input=f(4, 5, 6))
loss_backward_cases("cross_entropy_backward")

for op in ("linear_cross_entropy", "linear_cross_entropy_backward",
           "linear_cross_entropy_with_grad"):
    loss_cases(op)
    bad(op, "3-D input", "expected input to be 2-D, got a 3-D tensor of shape [1, 4, 8]",
        input=f(1, 4, 8))
    bad(op, "1-D linear_weight", "expected linear_weight to be 2-D, got a 1-D tensor",
        linear_weight=f(8))
    same_dtype_device_cases(op, "linear_weight", "input")
    bad(op, "hidden size", "expected input.shape[1] == 8 (linear_weight.shape[1]), got 7",
        input=f(4, 7))
    bad(op, "int input and linear_weight", "expected input to be a floating-point tensor, got Int",
        input=i(4, 8, dtype=torch.int32), linear_weight=i(5, 8, dtype=torch.int32), bias=None)
    same_dtype_device_cases(op, "bias", "input")
    bad(op, "bias of the wrong length", "expected bias of shape [5], got [4]", bias=f(4))
    narrower = ("expected loss_dtype to be None or a floating-point dtype at least as wide as "
                "input's (Float), got ")
    bad(op, "loss_dtype narrower than input", narrower + "BFloat16", loss_dtype=BF16)
    bad(op, "int loss_dtype", narrower + "Long", loss_dtype=LONG)
    for name in ("weight", "target"):
        bad(op, f"{name} not of loss_dtype",
            f"expected {name} to have the dtype of the loss (loss_dtype Double), got Float",
            loss_dtype=torch.float64, **({"target": f(4, 5)} if name == "target" else {}))
loss_backward_cases("linear_cross_entropy_backward")
bad("linear_cross_entropy_with_grad", "reduction 'none'",
    "expected reduction 'mean' or 'sum' (a per-row loss has no gradient before its grad_loss "
    "is known), got 'none'", reduction="none")


# conv2d, conv2d_backward --------------------------------------------------------------------
def conv_window_cases(op):
    """output_size (csrc/conv2d/conv2d.cpp): the convolution arguments, shared by both ops."""
    for name in ("stride", "padding", "dilation"):
        bad(op, f"{name} of 1 value", f"expected {name} to have 2 values, got [1]", **{name: [1]})
    bad(op, "groups 0", "non-positive groups is not supported, got groups=0", groups=0)
    bad(op, "zero stride", "non-positive stride is not supported, got stride=[1, 0]",
        stride=[1, 0])
    bad(op, "negative stride", "non-positive stride is not supported, got stride=[-1, 1]",
        stride=[-1, 1])
    bad(op, "negative padding", "negative padding is not supported, got padding=[1, -1]",
        padding=[1, -1])
    bad(op, "zero dilation", "non-positive dilation is not supported, got dilation=[0, 1]",
        dilation=[0, 1])
    for name, value in (("dilation", [2**61, 1]), ("stride", [1, 2**40]), ("padding", [2**40, 1])):
        bad(op, f"{name} {value}", "expected stride, padding and dilation below 2**31",
            **{name: value})
    bad(op, "out_channels not a multiple of groups", "expected weight.shape[0] (out_channels) to "
        "be a positive multiple of groups=3, got weight of shape [4, 1, 3, 3]",
        weight=f(4, 1, 3, 3), groups=3)
    bad(op, "in_channels", "expected input[2, 3, 8, 8] to have groups * weight.shape[1] = 2 "
        "channels (groups=1, weight of shape [4, 2, 3, 3]), got 3 channels", weight=f(4, 2, 3, 3))
    bad(op, "in_channels with groups", "expected input[2, 3, 8, 8] to have groups * "
        "weight.shape[1] = 6 channels (groups=2, weight of shape [4, 3, 3, 3]), got 3 channels",
        groups=2)
    bad(op, "0x3 kernel", "expected a kernel of at least 1x1 and below 2**31, got weight of shape "
        "[4, 3, 0, 3]", weight=f(4, 3, 0, 3))
    bad(op, "3-D weight", "expected weight to be 4-D, got a 3-D tensor", weight=f(4, 3, 3))
    bad(op, "kernel larger than the padded input",
        "calculated padded input size per channel: (10 x 10). Kernel size (dilated): (11 x 11). "
        "Kernel size can't be greater than actual input size", dilation=[5, 5])


activation_and_dtype_cases("conv2d", "input")
bad("conv2d", "3-D input", "expected input to be 4-D, got a 3-D tensor of shape [3, 8, 8]",
    input=f(3, 8, 8))
same_dtype_device_cases("conv2d", "weight", "input")
conv_window_cases("conv2d")
same_dtype_device_cases("conv2d", "bias", "input")
bad("conv2d", "bias of the wrong length", "expected bias of shape [4] (weight.shape[0]), got [3]",
    bias=f(3))

activation_and_dtype_cases("conv2d_backward", "grad_output")
bad("conv2d_backward", "relu without output", "activation 'relu' needs the forward output",
    output=None)
bad("conv2d_backward", "grad_weight without input", "grad_weight needs input", input=None)
same_dtype_device_cases("conv2d_backward", "weight", "grad_output")
bad("conv2d_backward", "input_size of 3 values",
    "expected input to be 4-D [N, C, H, W], got shape [2, 3, 8]", input_size=[2, 3, 8])
conv_window_cases("conv2d_backward")
bad("conv2d_backward", "grad_output shape",
    "expected grad_output of shape [2, 4, 8, 8], got [2, 4, 6, 6]", grad_output=f(2, 4, 6, 6),
    output=f(2, 4, 6, 6))
bad("conv2d_backward", "grad_output shape for a stride",
    "expected grad_output of shape [2, 4, 4, 4], got [2, 4, 8, 8]", stride=[2, 2])
same_dtype_device_cases("conv2d_backward", "input", "grad_output")
bad("conv2d_backward", "input not of input_size",
    "expected input of shape [2, 3, 8, 8], got [2, 3, 8, 9]", input=f(2, 3, 8, 9))
same_dtype_device_cases("conv2d_backward", "output", "grad_output")
bad("conv2d_backward", "output shape", "expected output of shape [2, 4, 8, 8], got [2, 4, 8, 7]",
    output=f(2, 4, 8, 7))


# batch_norm, batch_norm_backward ------------------------------------------------------------
def channel_cases(op, name, ref):
    """check_channels: a per-channel tensor of input [*, 3, *] (or grad_output)."""
    spec = VALID[op][0][name]
    bad(op, f"int {name}", f"expected {name} to be a floating-point tensor, got Int",
        **{name: dataclasses.replace(spec, dtype=torch.int32)})
    bad(op, f"{name} on another device", f"expected {name} on the device of {ref}",
        **{name: dataclasses.replace(spec, other=True)})
    bad(op, f"{name} of the wrong length",
        f"expected {name} of shape [3] (the channels of {ref}), got [4]", **{name: f(4)})
    bad(op, f"2-D {name}", f"expected {name} of shape [3] (the channels of {ref}), got [1, 3]",
        **{name: f(1, 3)})
    bad(op, f"float64 {name}", f"expected {name} to have the dtype of {ref} (Float), got Double",
        **{name: dataclasses.replace(spec, dtype=torch.float64)})


activation_and_dtype_cases("batch_norm", "input")
bad("batch_norm", "1-D input", "expected input of shape [N, C, *] (at least 2-D), got a 1-D "
    "tensor of shape [3]", input=f(3))
for name in ("running_mean", "running_var", "weight", "bias"):
    channel_cases("batch_norm", name, "input")
bad("batch_norm", "float32 running_mean of a float64 input",
    "expected running_mean to have the dtype of input (Double), got Float",
    input=f(4, 3, 5, dtype=torch.float64), weight=f(3, dtype=torch.float64),
    bias=f(3, dtype=torch.float64), running_var=f(3, dtype=torch.float64, fill=1.0))
bad("batch_norm", "float16 weight of a bfloat16 input",
    "expected weight to have the dtype of input (BFloat16) or float32, got Half",
    input=f(4, 3, 5, dtype=torch.bfloat16), weight=f(3, dtype=torch.float16))
for given, missing in (("running_mean", "running_var"), ("running_var", "running_mean")):
    bad("batch_norm", f"{given} without {missing}",
        "running_mean and running_var must both be given or both be None", **{missing: None})
bad("batch_norm", "evaluation without running stats",
    "running_mean and running_var must be given in evaluation mode",
    training=False, running_mean=None, running_var=None)
bad("batch_norm", "eps 0 in training", "expected eps > 0 in training, got 0", ValueError, eps=0.0)
bad("batch_norm", "negative eps in training", "expected eps > 0 in training, got -1", ValueError,
    eps=-1.0)
bad("batch_norm", "negative eps in evaluation", "expected eps >= 0, got -1", ValueError,
    eps=-1.0, training=False)
ONE_VALUE = r"^Expected more than 1 value per channel when training, got input size "
bad("batch_norm", "one value per channel (2-D)", re.compile(ONE_VALUE + r"\[1, 3\]"), ValueError,
    input=f(1, 3))
bad("batch_norm", "one value per channel (4-D)", re.compile(ONE_VALUE + r"\[1, 3, 1, 1\]"),
    ValueError, input=f(1, 3, 1, 1))

activation_and_dtype_cases("batch_norm_backward", "grad_output")
bad("batch_norm_backward", "relu without output", "activation 'relu' needs the forward output",
    output=None)
bad("batch_norm_backward", "grad_weight without input",
    "grad_weight and the training grad_input need input", input=None,
    output_mask=[False, True, False])
bad("batch_norm_backward", "training grad_input without input",
    "grad_weight and the training grad_input need input", input=None,
    output_mask=[True, False, True])
bad("batch_norm_backward", "1-D grad_output", "expected grad_output of shape [N, C, *], got [3]",
    grad_output=f(3), input=f(3), output=f(3))
for name in ("input", "output"):
    same_dtype_device_cases("batch_norm_backward", name, "grad_output")
    bad("batch_norm_backward", f"{name} shape",
        f"expected {name} of the shape of grad_output [4, 3, 5], got [4, 3, 6]",
        **{name: f(4, 3, 6)})
for name in ("save_mean", "save_invstd"):
    spec = VALID["batch_norm_backward"][0][name]
    bad("batch_norm_backward", f"int {name}",
        f"expected {name} to be a floating-point tensor, got Int",
        **{name: dataclasses.replace(spec, dtype=torch.int32)})
    bad("batch_norm_backward", f"{name} on another device",
        f"expected {name} on the device of grad_output",
        **{name: dataclasses.replace(spec, other=True)})
    bad("batch_norm_backward", f"{name} of the wrong length",
        f"expected {name} of shape [3], got [4]", **{name: f(4)})
channel_cases("batch_norm_backward", "weight", "grad_output")


# ----------------------------------------------------------------------------------- tests

def schema(op):
    return getattr(torch.ops.fastops, op).default._schema


def build(op, backend, changes=None):
    """The positional arguments of VALID[op] with ``changes``, for ``backend``, and the
    arguments the op writes in place (per its schema)."""
    spec = {**VALID[op][0], **(changes or {})}
    args, written = [], []
    for argument in schema(op).arguments:
        value = spec[argument.name]
        value = value.build(backend) if hasattr(value, "build") else value
        args.append(value)
        if argument.alias_info is not None and argument.alias_info.is_write and value is not None:
            written.append(value)
    return args, written


def function(op, backend):
    """The raw op, or for "interpreter" its Triton launcher (imported here: Triton is heavy)."""
    if backend == "interpreter":
        module, launcher = LAUNCHERS[op]
        return getattr(importlib.import_module(f"fastops.triton_kernels.{module}"), launcher)
    return getattr(torch.ops.fastops, op)


def signature(result):
    """The (shape, dtype) of each output."""
    if isinstance(result, (tuple, list)):
        return [signature(r) for r in result]
    return None if result is None else (tuple(result.shape), result.dtype)


def applies(value, backend):
    """Whether a case exists on ``backend``: beside a meta input a seed on any device is valid,
    so a seed on "another device" is no bad call there."""
    changes = value.changes.values() if isinstance(value, Bad) else ()
    return not (OTHER_SEED_DEVICE[backend] is None
                and any(isinstance(v, Seed) and v.other for v in changes))


def backend_params(items):
    """pytest params (value, backend) for ``items`` of (id, value) × BACKENDS; "cuda" runs only
    where a GPU is present."""
    params = []
    for name, value in items:
        for backend in BACKENDS:
            if not applies(value, backend):
                continue
            marks = [pytest.mark.cuda, requires_cuda] if backend == "cuda" else []
            params.append(pytest.param(value, backend, marks=marks,
                                       id=f"{name}-{backend}".replace(" ", "_")))
    return params


def test_every_op_has_a_valid_call_a_launcher_and_bad_calls():
    ops = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
           if name.startswith("fastops::")}
    assert ops == set(VALID) == set(LAUNCHERS)
    for op in ops:
        assert set(VALID[op][0]) == {a.name for a in schema(op).arguments}, op
        assert sum(case.op == op for case in CASES) >= 10, op
    for op, changes in [(c.op, c.changes) for c in CASES] + [(e[0], e[2]) for e in EMPTY]:
        assert set(changes) <= set(VALID[op][0]), (op, changes)
    ids = [(case.op, case.name) for case in CASES]
    assert len(ids) == len(set(ids))


VALID_CALLS = [(op, "valid", {}, expected) for op, (_, expected) in VALID.items()] + EMPTY


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # means of nothing
@pytest.mark.parametrize("call,backend", backend_params(
    (f"{op}-{name}", (op, changes, expected)) for op, name, changes, expected in VALID_CALLS))
def test_valid_call(call, backend):
    op, changes, expected = call
    if backend == "interpreter" and not INTERPRETING:
        pytest.skip("TRITON_INTERPRET is off: Triton kernels cannot run on CPU tensors")
    args, _ = build(op, backend, changes)
    result = function(op, backend)(*args)
    assert signature(result) == expected
    tensors = result if isinstance(result, (tuple, list)) else [result]
    assert all(t.device.type == DEVICE[backend] for t in tensors if t is not None)


@pytest.mark.parametrize("case,backend", backend_params(
    (f"{case.op}-{case.name}", case) for case in CASES))
def test_bad_call_raises_the_same_error_on_every_backend(case, backend):
    args, written = build(case.op, backend, case.changes)
    state = [t for t in written if t.device.type != "meta"]  # meta tensors hold no values
    raises(case.error, case.pattern, function(case.op, backend), *args, state=state)
