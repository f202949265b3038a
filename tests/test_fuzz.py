"""Differential fuzzing against torch, and a crash fuzz of the raw ops.

test_matches_torch[<op>-<seed>]
    One random case per seed of fastops.functional's linear / linear_relu (dropout p=0),
    cross_entropy, linear_cross_entropy, max_pool2d, conv2d / conv2d_relu, batch_norm /
    batch_norm_relu and dropout / dropout1d / 2d / 3d (p in {0, 1}) on the CPU kernels: shapes
    (size 1, odd sizes, empty dimensions), dtypes (float32, float64, some bfloat16; integer dtypes
    for max_pool2d), layouts (contiguous, channels-last, strided, reversed strides, slices with a
    storage offset, stride-0 expanded) and options, drawn from random.Random("<op>:<seed>"); the
    values from torch.Generator().manual_seed(seed). The output, the gradient of every input that
    requires grad and the running statistics are compared with torch's own function on the same
    values in float64 (helpers.assert_close at the case's dtype); a call torch rejects must raise
    the same exception type. A failure prints the seed, the case and how to replay it.
test_triton_launchers_match_torch[<op>-<seed>]
    A few cases per op lowered to the raw op arguments and run through the op's Triton launchers
    (fastops/triton_kernels, forward and backward) in Triton's interpreter: TRITON_INTERPRET=1,
    which conftest.py sets on a machine without a GPU; skipped where the interpreter is off.
test_raw_ops_survive_random_arguments
    Random, mostly invalid arguments to every torch.ops.fastops op (backward ops included), in a
    child process (this file run as a script): each call must return or raise RuntimeError,
    ValueError, IndexError, TypeError or NotImplementedError. One call in ten goes to the op's
    Triton launcher instead where the interpreter is on. The child writes each case to a log
    before calling, so a crash (a signal) fails the test naming the seed and the case; its
    address space is capped (a few GiB over what it holds) so a huge output fails to allocate.

Environment:
  FASTOPS_FUZZ_CASES=N         cases per op (default 40); launcher cases max(1, N // 8) per op;
                               raw-op calls 100 * N
  FASTOPS_FUZZ_SEED=S          the first seed (default 0)
  FASTOPS_FUZZ_REPLAY=ID       only the case ID, as a failure prints it: "conv2d:17",
                               "launcher:conv2d:3" or "raw:0:1234"
  FASTOPS_FUZZ_KNOWN=1         also draw the inputs of the known defects the default run leaves
                               out (KNOWN_DEFECTS below), to check their fixes
"""

import dataclasses
import importlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
import torch.nn.functional as TF
from helpers import assert_close

import fastops  # noqa: F401  (registers torch.ops.fastops)
from fastops import functional as F


def _env_int(name, default):
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


CASES = _env_int("FASTOPS_FUZZ_CASES", 40)
FIRST_SEED = _env_int("FASTOPS_FUZZ_SEED", 0)
REPLAY = os.environ.get("FASTOPS_FUZZ_REPLAY", "").strip()
KNOWN = os.environ.get("FASTOPS_FUZZ_KNOWN", "0").strip() not in ("", "0")
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
LAUNCHER_CASES = max(1, CASES // 8)
RAW_CALLS = 100 * CASES

# Defects known and being fixed elsewhere: the default run draws none of these inputs (each is
# gated on KNOWN where it is drawn), so that it stays green; FASTOPS_FUZZ_KNOWN=1 draws them.
KNOWN_DEFECTS = {
    "launcher_logits": "the cross_entropy Triton launchers (interpreter) with huge or NaN logits "
                       "can differ from torch (an inf where torch is finite); the CPU op matches",
    # found by this module (reported, not yet fixed):
    "linear_vector_bias": "linear with a 1-D weight rejects every bias; torch takes one that "
                          "broadcasts to the output (a 0-D bias for a 1-D input, [] or [d0, d1] "
                          "for an input [d0, d1, in])",
    "cross_entropy_no_classes": "cross_entropy of a K-dimensional input with 0 classes (a "
                                "probability target [N, 0, d...]) raises where torch returns",
    "linear_cross_entropy_no_classes": "linear_cross_entropy, K-dimensional (linear_weight "
                                       "[0, d..., H]), reduction 'mean', probability target: "
                                       "fastops gives 0, torch NaN",
    "zero_total_weight": "cross_entropy / linear_cross_entropy, reduction 'mean' with label "
                         "smoothing, class weights and kept targets whose weights sum to 0: "
                         "fastops gives inf, torch NaN (0 / 0)",
    "prob_ignore_index": "cross_entropy with class probabilities rejects a negative ignore_index "
                         "other than -100; torch takes any negative one (it only rejects >= 0)",
    "launcher_float64": "the Triton launchers in float64 (interpreter): linear and conv2d give "
                        "wrong values, cross_entropy, linear_cross_entropy and max_pool2d's "
                        "backward float32-level errors",
    "launcher_strided_params": "batch_norm's Triton launcher reads a strided weight, bias or "
                               "running statistic as if contiguous (NaN / wrong values)",
    "launcher_no_classes": "the cross_entropy / linear_cross_entropy launchers give NaN for 0 "
                           "classes (a probability target [N, 0]) where torch and the CPU op "
                           "give 0 (reductions 'none' and 'sum')",
}

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
NAN, INF = float("nan"), float("inf")
OPS = ["linear", "cross_entropy", "linear_cross_entropy", "max_pool2d", "conv2d", "batch_norm",
       "dropout"]
# The Triton launcher of each op, as fastops registered it for CUDA.
LAUNCHERS = fastops._cuda.LAUNCHERS


def seeds(prefix, count):
    """The seeds of the cases named "<prefix>:<seed>": FASTOPS_FUZZ_REPLAY's alone when it names
    one of them, none when it names another case, else count seeds from FASTOPS_FUZZ_SEED."""
    if REPLAY:
        head, _, seed = REPLAY.rpartition(":")
        return [int(seed)] if head == prefix else []
    return list(range(FIRST_SEED, FIRST_SEED + count))


def launcher(op):
    module, function = LAUNCHERS[op]
    return getattr(importlib.import_module(f"fastops.triton_kernels.{module}"), function)


# ---------------------------------------------------------------------- drawing a case

ODD_SIZES = (1, 2, 3, 5, 7, 8, 9, 13, 16, 17, 31, 33, 40)


def size(rng, low, high, zero=0.0):
    """A dimension in [low, high]: its ends and odd sizes often; 0 with probability ``zero``."""
    if rng.random() < zero:
        return 0
    return rng.choice([low, high, rng.randint(low, high), rng.randint(low, high),
                       *[s for s in ODD_SIZES if low <= s <= high]])


def float_dtype(rng, bf16=0.12):
    r = rng.random()
    return BF16 if r < bf16 else F32 if r < bf16 + (1 - bf16) * 0.6 else F64


LAYOUTS = ["contiguous", "contiguous", "channels_last", "strided", "transposed", "sliced",
           "expanded"]


def relayout(t, layout):
    """A new tensor (no autograd history) of ``t``'s values in the memory ``layout``:
    channels_last (channels innermost), strided (every other element of a wider last
    dimension), transposed (all strides reversed), sliced (the middle of a tensor 2 larger in
    every dimension: a storage offset), expanded (stride 0 along dimension 0: the values of
    t[0] repeated, so this one changes the values). The memory around a view is NaN (or a large
    integer), so a kernel that reads outside the view shows it."""
    t = t.detach()
    if t.dim() == 0 or layout == "contiguous" or t.numel() == 0 and layout == "expanded":
        return t.clone(memory_format=torch.contiguous_format)
    if layout == "channels_last":
        if t.dim() < 2:
            return t.clone()
        return t.movedim(1, -1).contiguous().movedim(-1, 1)
    if layout == "transposed":
        order = list(reversed(range(t.dim())))
        return t.permute(order).contiguous().permute(order)
    if layout == "expanded":
        return t[:1].clone().expand(t.shape)
    fill = NAN if t.is_floating_point() else torch.iinfo(t.dtype).max
    if layout == "strided":
        wide = t.new_full((*t.shape[:-1], 2 * t.shape[-1]), fill)
        wide[..., ::2] = t
        return wide[..., ::2]
    if layout == "sliced":
        big = t.new_full([s + 2 for s in t.shape], fill)
        middle = tuple(slice(1, s + 1) for s in t.shape)
        big[middle] = t
        return big[middle]
    raise ValueError(layout)


STANDARD_LAYOUTS = ("contiguous", "channels_last")


@dataclasses.dataclass
class Arg:
    """A tensor argument: its values (already in the case's dtype), layout and whether its
    gradient is compared. fastops gets them in the layout; torch's reference gets them in
    float64, contiguous unless channels-last (torch's CPU kernels are not all right for every
    layout: batch_norm's backward reads a strided weight and an eval-mode input with reversed
    strides wrongly in torch 2.13)."""
    values: torch.Tensor
    layout: str = "contiguous"
    grad: bool = False
    # (channels-last: torch's memory format for 4-D / 5-D tensors, the one fastops keeps; for
    # other ranks a permutation like "transposed")

    def build(self, reference, grad=True):
        values, layout = self.values, self.layout
        if reference:
            if values.is_floating_point():
                values = values.double()
            if layout == "expanded":  # its values, in a plain tensor
                values, layout = relayout(values, layout), "contiguous"
            elif layout != "channels_last" or values.dim() not in (4, 5):
                layout = "contiguous"
        t = relayout(values, layout)
        return t.requires_grad_(self.grad and grad and t.is_floating_point())

    def __repr__(self):
        return (f"Arg({list(self.values.shape)}, {str(self.values.dtype)[6:]}, {self.layout}"
                f"{', grad' if self.grad else ''})")


def generator(seed):
    return torch.Generator().manual_seed(seed)


def randn(gen, shape, dtype, scale=1.0, shift=0.0):
    return (torch.randn(shape, generator=gen, dtype=F64) * scale + shift).to(dtype)


def sprinkle(gen, values, specials, fraction=0.15):
    """``values`` with a ``fraction`` of its elements replaced by ``specials`` (NaN, inf, ...)."""
    values = values.clone()
    flat = values.view(-1)
    pick = torch.rand(flat.shape, generator=gen) < fraction
    which = torch.randint(0, len(specials), flat.shape, generator=gen)
    for i, special in enumerate(specials):
        flat[pick & (which == i)] = special
    return values


# ----------------------------------------------------------------- differential check

def as_tuple(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def same_values(got, want, dtype, scale, exact, what):
    try:
        if exact or not got.is_floating_point():
            torch.testing.assert_close(got, want.to(got.dtype), rtol=0, atol=0, equal_nan=True)
        else:
            assert_close(got, want.to(got.dtype), dtype, scale)
    except AssertionError as error:
        raise AssertionError(f"{what} differs from torch: {error}") from None


def expect_rejection(ours_fn, ours, error):
    """torch raised ``error``: fastops must raise the same exception type."""
    try:
        ours_fn(**ours)
    except Exception as mine:
        if type(mine) is not type(error):
            raise AssertionError(
                f"torch raises {type(error).__name__}({error}), fastops raises "
                f"{type(mine).__name__}({mine})") from None
        return
    raise AssertionError(f"torch raises {type(error).__name__}({error}), fastops returns a result")


def differential(ours_fn, ref_fn, args, dtype, scale=1.0, grad_scale=None, exact=False,
                 mutated=(), backward=None, seed=0, check_layout=False):
    """Calls ``ours_fn`` and torch's ``ref_fn`` (keyword arguments ``args``: Arg or plain
    values) and compares the outputs (``exact``: bit for bit), the ``mutated`` arguments after the
    call and the gradients of the Args with grad=True under one seeded cotangent per output:
    from autograd, or from ``backward(ours, outputs, cotangents) -> {name: gradient}`` (the raw
    ops). ``check_layout``: 4-D and 5-D outputs are channels-last where torch's are."""
    ours = {k: a.build(False, backward is None) if isinstance(a, Arg) else a
            for k, a in args.items()}
    refs = {k: a.build(True) if isinstance(a, Arg) else a for k, a in args.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            want = ref_fn(**refs)
        except Exception as error:  # torch rejects the call: so must fastops
            expect_rejection(ours_fn, ours, error)
            return "rejected"
        try:
            got = ours_fn(**ours)
        except Exception as error:
            # torch in float64 takes it: does torch in the case's dtype (a bfloat16 gap)?
            plain = {k: a.build(False, False) if isinstance(a, Arg) else a
                     for k, a in args.items()}
            try:
                ref_fn(**plain)
            except type(error):
                return "rejected"
            except Exception:
                pass
            raise AssertionError(f"fastops raises {type(error).__name__}({error}), torch returns "
                                 "a result") from error
    gots, wants = as_tuple(got), as_tuple(want)
    assert len(gots) == len(wants), f"{len(gots)} outputs, torch gives {len(wants)}"
    for i, (g, w) in enumerate(zip(gots, wants, strict=True)):
        what = f"output {i}"
        assert g.shape == w.shape, f"{what}: shape {list(g.shape)}, torch {list(w.shape)}"
        want_dtype = dtype if w.is_floating_point() else w.dtype
        assert g.dtype == want_dtype, f"{what}: dtype {g.dtype}, torch {want_dtype}"
        same_values(g, w, dtype, scale, exact, what)
        if check_layout and g.dim() in (4, 5) and g.numel() > 1:
            fmt = torch.channels_last if g.dim() == 4 else torch.channels_last_3d
            assert g.is_contiguous(memory_format=fmt) == w.is_contiguous(memory_format=fmt), (
                f"{what}: strides {g.stride()}, torch's {w.stride()} (channels-last "
                f"{w.is_contiguous(memory_format=fmt)})")
    for name in mutated:
        if isinstance(args[name], Arg):
            same_values(ours[name], refs[name], dtype, scale, False, f"{name} after the call")
    names = [k for k, a in args.items() if isinstance(a, Arg) and a.grad
             and a.values.is_floating_point()]
    outputs = [(g, w) for g, w in zip(gots, wants, strict=True) if w.requires_grad]
    if not names or not outputs:
        return "forward"
    gen = generator(seed + 7919)
    cotangents = [torch.randn(w.shape, generator=gen, dtype=F64).to(g.dtype) for g, w in outputs]
    want_grads = torch.autograd.grad([w for _, w in outputs], [refs[n] for n in names],
                                     [c.double() for c in cotangents], allow_unused=True)
    if backward is None:
        for i, (g, _) in enumerate(outputs):
            assert g.requires_grad, f"output {i} does not require grad, torch's does"
        got_grads = torch.autograd.grad([g for g, _ in outputs], [ours[n] for n in names],
                                        cotangents, allow_unused=True)
    else:
        got_grads = [backward(ours, gots, cotangents).get(n) for n in names]
    grad_scale = scale if grad_scale is None else grad_scale
    for name, g, w in zip(names, got_grads, want_grads, strict=True):
        if w is None:
            w = torch.zeros(refs[name].shape, dtype=F64)
        if g is None:
            g = torch.zeros(ours[name].shape, dtype=ours[name].dtype)
        assert g.shape == w.shape, f"grad of {name}: shape {list(g.shape)}, torch {list(w.shape)}"
        # (a raw backward op may return a gradient in another dtype than its input's, which
        # autograd casts: batch_norm_backward's grad_bias, which never sees the bias)
        assert g.dtype == ours[name].dtype or backward is not None, (
            f"grad of {name}: dtype {g.dtype}, {name} {ours[name].dtype}")
        same_values(g, w, dtype, grad_scale, False, f"grad of {name}")
    return "forward+backward"


# ------------------------------------------------------------------------------ linear

def gen_linear(rng, raw=False):
    dtype = float_dtype(rng)
    batch = [size(rng, 1, 6, zero=0.05) for _ in range(rng.choice([0, 1, 1, 1, 2, 3]))]
    if raw and not batch:
        batch = [size(rng, 1, 6)]
    vector = not raw and rng.random() < 0.08
    bias = rng.choice(["none", "vector"] if raw else
                      ["none", "vector", "vector", "scalar", "one", "row"])
    out_features = size(rng, 1, 40, zero=0.03)
    if bias == "row" and (not batch or out_features == 1):
        # (a bias [d, 1]: torch's linear fails to broadcast it to an input of 3 or more
        # dimensions, a torch limitation; fastops takes it)
        bias = "vector"
    if vector and not KNOWN:
        bias = "none"  # KNOWN_DEFECTS["linear_vector_bias"]
    return dict(dtype=dtype, batch=batch, in_features=size(rng, 1, 40, zero=0.05),
                out_features=out_features, vector_weight=vector, bias=bias,
                relu=dtype != BF16 and rng.random() < 0.5, training=rng.random() < 0.5,
                x_layout=rng.choice(LAYOUTS),
                w_layout=rng.choice(["contiguous", "transposed", "strided", "sliced"]),
                grads=[rng.random() < 0.8 for _ in range(3)])


def check_linear(case, seed, launch=None):
    gen = generator(seed)
    dtype, batch = case["dtype"], case["batch"]
    in_features, out_features = case["in_features"], case["out_features"]
    grad_x, grad_w, grad_b = case["grads"]
    x = Arg(randn(gen, (*batch, in_features), dtype), case["x_layout"], grad_x)
    w_shape = (in_features,) if case["vector_weight"] else (out_features, in_features)
    w = Arg(randn(gen, w_shape, dtype, 1 / max(1, in_features) ** 0.5), case["w_layout"], grad_w)
    b_shape = {"none": None, "vector": (out_features,), "scalar": (), "one": (1,),
               "row": (batch[-1] if batch else 1, out_features)}[case["bias"]]
    b = None if b_shape is None else Arg(randn(gen, b_shape, dtype), "contiguous", grad_b)
    relu = case["relu"]

    def reference(x, w, b):
        out = TF.linear(x, w, b)
        return torch.relu(out) if relu else out

    scale = 1 + (in_features + math.prod(batch)) / 32
    args = dict(x=x, w=w, b=b)
    if launch is None:
        fn = F.linear_relu if relu else F.linear
        return differential(lambda x, w, b: fn(x, w, b, dropout=0.0, training=case["training"]),
                            reference, args, dtype, scale, seed=seed)
    activation = "relu" if relu else "none"

    def backward(t, outputs, cotangents):
        mask = [grad_x, grad_w, b is not None and grad_b]
        grads = launch("linear_backward")(cotangents[0], t["x"], t["w"], outputs[0], activation,
                                          mask)
        return dict(zip(("x", "w", "b"), grads, strict=True))

    return differential(lambda x, w, b: launch("linear")(x, w, b, activation), reference, args,
                        dtype, scale, backward=backward, seed=seed)


# ----------------------------------------------------------------------- cross-entropy

def gen_loss_options(rng, classes, prob, uint8_ok=True):
    """Target, class weight, ignore_index, label smoothing and reduction of a loss case."""
    ignore_index = rng.choice([-100, -100, -100, -1, rng.randrange(max(classes, 1)), 255])
    if prob and (rng.random() > 0.03 or ignore_index < 0 and not KNOWN):
        # rarely: ignore_index >= 0 with probabilities (an error; KNOWN_DEFECTS[
        # "prob_ignore_index"] for a negative one)
        ignore_index = -100
    ignored = rng.choice([0.0, 0.0, 0.3, 1.0])
    if classes == 0:
        ignored = 1.0
    smoothing = rng.choice([0.0, 0.0, 0.0, 0.05, 0.3, 1.0, round(rng.random(), 3)])
    # uint8 class indices: torch takes them only without label smoothing (gather() wants int64)
    uint8 = (uint8_ok and not prob and not smoothing and classes <= 256
             and (ignored == 0 or 0 <= ignore_index <= 255) and rng.random() < 0.2)
    return dict(
        prob=prob, prob_kind=rng.choice(["softmax", "softmax", "uniform", "randn"]),
        target_dtype="uint8" if uint8 else "int64", ignore_index=ignore_index, ignored=ignored,
        # rarely a class index out of [0, C): torch raises IndexError in the forward
        out_of_range=not prob and classes > 0 and rng.random() < 0.03,
        weighted=rng.random() < 0.4, zero_weights=rng.random() < 0.2, label_smoothing=smoothing,
        reduction=rng.choice(["none", "mean", "sum"]),
        target_layout=rng.choice(["contiguous", "strided", "sliced", "expanded", "transposed"]),
        grad_target=prob and rng.random() < 0.4)


def make_target(gen, case, logits_shape, dtype, vector, ignore_index):
    """The target Arg of a loss case: class probabilities of ``logits_shape`` or class indices."""
    classes = logits_shape[0] if vector else logits_shape[1]
    layout = case["target_layout"]
    if case["prob"]:
        kind = case["prob_kind"]
        values = torch.randn(logits_shape, generator=gen, dtype=F64)
        if kind == "softmax":
            values = torch.softmax(values * 2, 0 if vector else 1)
        elif kind == "uniform":
            values = torch.rand(logits_shape, generator=gen, dtype=F64)
        return Arg(values.to(dtype), layout, case["grad_target"])
    rows = () if vector else (logits_shape[0], *logits_shape[2:])
    target = torch.randint(0, max(classes, 1), rows, generator=gen)
    target[torch.rand(rows, generator=gen) < case["ignored"]] = ignore_index
    if case["out_of_range"] and target.numel():
        target.view(-1)[0] = classes + 3 if target.numel() % 2 else -5
    return Arg(target.to(torch.uint8 if case["target_dtype"] == "uint8" else torch.int64), layout)


def class_weight(gen, case, classes, dtype, target, ignore_index):
    if not case["weighted"]:
        return None
    weight = torch.rand(classes, generator=gen, dtype=F64) + 0.1
    if case["zero_weights"]:
        weight[torch.rand(classes, generator=gen) < 0.3] = 0
        t = relayout(target.values, target.layout).long()
        kept = t[(t != ignore_index) & (t >= 0) & (t < classes)]
        if (not KNOWN and not case["prob"] and case["reduction"] == "mean"
                and case["label_smoothing"] > 0 and kept.numel() and not weight[kept].any()):
            weight[kept[0]] = 0.5  # KNOWN_DEFECTS["zero_total_weight"]
    return Arg(weight.to(dtype))


def gen_cross_entropy(rng, raw=False):
    dtype = float_dtype(rng)
    form = rng.choice(["2d", "2d", "2d", "kdim"] + ([] if raw else ["vector"]))
    prob = rng.random() < 0.35
    classes = 0 if prob and rng.random() < 0.03 else \
        rng.choice([size(rng, 1, 40), size(rng, 1, 40), 64, 100, 257])
    if classes == 0 and form == "kdim" and not KNOWN:
        classes = 1  # KNOWN_DEFECTS["cross_entropy_no_classes"]
    logits = rng.choice(["randn"] * 8 + ["huge", "nan"])
    return dict(dtype=dtype, form=form, classes=classes, rows=size(rng, 1, 9, zero=0.05),
                spatial=[size(rng, 1, 4) for _ in range(rng.choice([1, 1, 2]))]
                if form == "kdim" else [],
                logits=logits, logit_scale=rng.choice([0.01, 1.0, 3.0, 10.0, 30.0]),
                layout=rng.choice(LAYOUTS), grad_input=rng.random() < 0.85,
                # torch's K-dimensional nll_loss takes no uint8 class indices
                **gen_loss_options(rng, classes, prob, uint8_ok=form != "kdim"))


def check_cross_entropy(case, seed, launch=None):
    gen = generator(seed)
    dtype, classes, vector = case["dtype"], case["classes"], case["form"] == "vector"
    shape = (classes,) if vector else (case["rows"], classes, *case["spatial"])
    values = randn(gen, shape, F64, case["logit_scale"])
    if case["logits"] == "huge":
        values = sprinkle(gen, values, [1e30, -1e30, 3e38, 1e4])
    elif case["logits"] == "nan":
        values = sprinkle(gen, values, [NAN, INF, -INF])
    x = Arg(values.to(dtype), case["layout"], case["grad_input"])
    ignore_index, smoothing, reduction = (case["ignore_index"], case["label_smoothing"],
                                          case["reduction"])
    target = make_target(gen, case, shape, dtype, vector, ignore_index)
    weight = class_weight(gen, case, classes, dtype, target, ignore_index)
    options = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    args = dict(x=x, t=target, w=weight)
    scale = 2 + classes / 64

    def reference(x, t, w):
        return TF.cross_entropy(x, t, w, **options)

    if launch is None:
        return differential(lambda x, t, w: F.cross_entropy(x, t, w, **options), reference, args,
                            dtype, scale, seed=seed)
    saved = {}

    def forward(x, t, w):
        loss, saved["lse"], saved["total_weight"] = launch("cross_entropy")(
            x, t, w, reduction, ignore_index, smoothing)
        return loss

    def backward(t, outputs, cotangents):
        mask = [x.grad, target.grad]
        grads = launch("cross_entropy_backward")(
            cotangents[0], t["x"], t["t"], t["w"], saved["lse"], saved["total_weight"],
            reduction, ignore_index, smoothing, mask)
        return dict(zip(("x", "t"), grads, strict=True))

    return differential(forward, reference, args, dtype, scale, backward=backward, seed=seed)


def gen_linear_cross_entropy(rng, raw=False):
    dtype = float_dtype(rng, bf16=0.08)
    vector = not raw and rng.random() < 0.1
    out_features = [] if vector or raw or rng.random() < 0.8 else \
        [size(rng, 1, 3) for _ in range(rng.choice([1, 1, 2]))]
    prob = rng.random() < 0.35
    classes = 0 if prob and rng.random() < 0.03 else size(rng, 1, 40)
    # no uint8 class indices: torch's linear_cross_entropy rejects them in most of its paths
    options = gen_loss_options(rng, classes, prob, uint8_ok=False)
    if classes == 0 and out_features and options["reduction"] == "mean" and not KNOWN:
        classes = 1  # KNOWN_DEFECTS["linear_cross_entropy_no_classes"]
    ignore_index = options.pop("ignore_index")
    if prob and ignore_index == -100 or not prob and rng.random() < 0.5:
        ignore_index = None  # torch's default (-100 for class indices); with probabilities
        # torch rejects any other value, even -100
    return dict(dtype=dtype, vector=vector, rows=size(rng, 1, 9, zero=0.05),
                hidden=size(rng, 1, 40, zero=0.05), classes=classes, out_features=out_features,
                bias=rng.random() < 0.5, ignore_index=ignore_index,
                layout=rng.choice(LAYOUTS),
                w_layout=rng.choice(["contiguous", "transposed", "strided", "sliced"]),
                grads=[rng.random() < 0.8 for _ in range(3)], **options)


def check_linear_cross_entropy(case, seed, launch=None):
    gen = generator(seed)
    dtype, hidden, classes = case["dtype"], case["hidden"], case["classes"]
    out_features, vector = case["out_features"], case["vector"]
    grad_x, grad_w, grad_b = case["grads"]
    x_shape = (hidden,) if vector else (case["rows"], hidden)
    x = Arg(randn(gen, x_shape, dtype), case["layout"], grad_x)
    w_shape = (classes, *out_features, hidden)
    w = Arg(randn(gen, w_shape, dtype, 2 / max(1, hidden) ** 0.5), case["w_layout"], grad_w)
    b = Arg(randn(gen, w_shape[:-1], dtype), "contiguous", grad_b) if case["bias"] else None
    ignore_index = case["ignore_index"]
    logits_shape = (classes,) if vector else (case["rows"], classes, *out_features)
    target = make_target(gen, case, logits_shape, dtype, vector,
                         -100 if ignore_index is None else ignore_index)
    weight = class_weight(gen, case, classes, dtype, target,
                          -100 if ignore_index is None else ignore_index)
    smoothing, reduction = case["label_smoothing"], case["reduction"]
    options = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    args = dict(x=x, w=w, b=b, t=target, cw=weight)
    scale = 2 + hidden / 16 + classes / 64

    def reference(x, w, b, t, cw):
        return TF.linear_cross_entropy(x, w, t, linear_bias=b, weight=cw, **options)

    if launch is None:
        return differential(
            lambda x, w, b, t, cw: F.linear_cross_entropy(x, w, t, linear_bias=b, weight=cw,
                                                          **options),
            reference, args, dtype, scale, seed=seed)
    raw_ignore_index = -100 if ignore_index is None else ignore_index
    saved = {}

    def forward(x, w, b, t, cw):
        loss, saved["lse"], saved["total_weight"] = launch("linear_cross_entropy")(
            x, w, b, t, cw, reduction, raw_ignore_index, smoothing)
        return loss

    def backward(t, outputs, cotangents):
        mask = [grad_x, grad_w, b is not None and grad_b, target.grad]
        grads = launch("linear_cross_entropy_backward")(
            cotangents[0], t["x"], t["w"], t["b"], t["t"], t["cw"], saved["lse"],
            saved["total_weight"], reduction, raw_ignore_index, smoothing, mask)
        return dict(zip(("x", "w", "b", "t"), grads, strict=True))

    return differential(forward, reference, args, dtype, scale, backward=backward, seed=seed)


# -------------------------------------------------------------------------- max_pool2d

INT_DTYPES = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8]


def int_pair_form(rng, pair):
    """An int, a 1-tuple, a tuple or a list, as torch's int-or-pair arguments take them."""
    a, b = pair
    if a == b:
        return rng.choice([a, a, (a,), (a, a), [a, a]])
    return rng.choice([(a, b), [a, b]])


def gen_max_pool2d(rng, raw=False):
    dtype = rng.choice([F32, F32, F32, F64, F64, BF16] + ([] if raw else
                                                         [rng.choice(INT_DTYPES)]))
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    if rng.random() < 0.5:
        kernel = (kernel[0], kernel[0])
    stride = None if rng.random() < 0.3 and not raw else (rng.randint(1, 4), rng.randint(1, 4))
    # torch: padding at most half the kernel; rarely more (an error)
    padding = tuple(rng.randint(0, k // 2 + (rng.random() < 0.05)) for k in kernel)
    dilation = (rng.randint(1, 3), rng.randint(1, 3)) if rng.random() < 0.4 else (1, 1)
    # mostly an input the dilated window fits in (else an error)
    fits = [d * (k - 1) + 1 - 2 * p if rng.random() < 0.9 else 1
            for k, p, d in zip(kernel, padding, dilation, strict=True)]
    return dict(dtype=dtype, batched=raw or rng.random() < 0.85,
                batch=size(rng, 1, 3, zero=0.05), channels=size(rng, 1, 5),
                height=max(fits[0], size(rng, 1, 12)), width=max(fits[1], size(rng, 1, 12)),
                kernel=kernel, stride=stride,
                padding=padding, dilation=dilation, ceil_mode=rng.random() < 0.4,
                return_indices=rng.random() < 0.5,
                values=rng.choice(["randn", "randn", "ties", "special"]),
                layout=rng.choice(LAYOUTS), grad=rng.random() < 0.85,
                forms=[rng.random() for _ in range(4)])


def check_max_pool2d(case, seed, launch=None):
    gen = generator(seed)
    dtype = case["dtype"]
    shape = (case["batch"],) * case["batched"] + (case["channels"], case["height"], case["width"])
    if not dtype.is_floating_point:
        low, high = (0, 256) if dtype == torch.uint8 else (-100, 100)
        values = torch.randint(low, high, shape, generator=gen).to(dtype)
    elif case["values"] == "ties":  # few distinct values: ties pick the first maximum
        values = torch.randint(-2, 3, shape, generator=gen).to(dtype)
    else:
        values = randn(gen, shape, F64)
        if case["values"] == "special":
            values = sprinkle(gen, values, [NAN, -INF, INF])
        values = values.to(dtype)
    kernel, stride, padding, dilation = (case["kernel"], case["stride"], case["padding"],
                                         case["dilation"])
    ceil_mode, indices = case["ceil_mode"], case["return_indices"]
    # torch's backward corrupts the heap when a window lies wholly in the padding (a dilated
    # window stepping over a small input): its index points outside the plane. No gradient
    # against torch then (fastops' gradient is zeros, its forward -inf and torch's index).
    grad = case["grad"] and dtype.is_floating_point and not any(
        window_in_padding(n, *w, ceil_mode) for n, w in zip(
            shape[-2:], zip(kernel, stride or kernel, padding, dilation, strict=True),
            strict=True))
    x = Arg(values, case["layout"], grad)
    forms = [rng_form(f, v) for f, v in zip(case["forms"], (kernel, stride, padding, dilation),
                                             strict=True)]

    def reference(x):
        return TF.max_pool2d(x, *forms, ceil_mode, indices)

    args = dict(x=x)
    if launch is None:
        return differential(lambda x: F.max_pool2d(x, *forms, ceil_mode, indices), reference,
                            args, dtype, 2.0, exact=True, seed=seed,
                            check_layout=case["layout"] in STANDARD_LAYOUTS)
    saved = {}

    def forward(x):
        out, saved["argmax"] = launch("max_pool2d")(x, kernel, stride, padding, dilation,
                                                    ceil_mode)
        if not indices:
            return out
        return out, launch("max_pool2d_indices")(saved["argmax"], x.shape[-1], kernel, stride,
                                                 padding, dilation)

    def backward(t, outputs, cotangents):
        return dict(x=launch("max_pool2d_backward")(cotangents[0], saved["argmax"],
                                                    list(t["x"].shape[-2:]), kernel, stride,
                                                    padding, dilation))

    return differential(forward, reference, args, dtype, 2.0, exact=True, backward=backward,
                        seed=seed)


def window_in_padding(size, kernel, stride, padding, dilation, ceil_mode):
    """Whether a max_pool2d window along a dimension of ``size`` reads only padding."""
    extent = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - extent + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return any(all(not 0 <= o * stride - padding + j * dilation < size for j in range(kernel))
               for o in range(out))


def rng_form(draw, pair):
    """int_pair_form with a stored draw in [0, 1) (so a case holds plain numbers)."""
    if pair is None:
        return None
    return int_pair_form(random.Random(draw), pair)


# ------------------------------------------------------------------------------ conv2d

def gen_conv2d(rng, raw=False):
    dtype = float_dtype(rng)
    groups = rng.choice([1, 1, 1, 2, 3, "depthwise"])
    per_group = size(rng, 1, 3, zero=0.05)
    if groups == "depthwise":
        groups = rng.randint(1, 4)
        per_group = 1
    if per_group == 0:
        groups = 1
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    stride = (rng.randint(1, 3), rng.randint(1, 3)) if rng.random() < 0.4 else (1, 1)
    dilation = (rng.randint(1, 3), rng.randint(1, 3)) if rng.random() < 0.3 else (1, 1)
    padding = rng.choice(["int", "pair", "pair", "same", "valid"])
    if raw and padding in ("same", "valid"):
        padding = "pair"
    if padding == "same" and stride != (1, 1) and rng.random() < 0.8:
        stride = (1, 1)  # else an error
    padding = {"int": rng.randint(0, 2), "pair": (rng.randint(0, 3), rng.randint(0, 3))}.get(
        padding, padding)
    pads = (0, 0) if isinstance(padding, str) else \
        (padding,) * 2 if isinstance(padding, int) else padding
    # mostly an input the dilated kernel fits in (else an error)
    fits = [d * (k - 1) + 1 - 2 * p if rng.random() < 0.9 and padding != "same" else 1
            for k, p, d in zip(kernel, pads, dilation, strict=True)]
    return dict(dtype=dtype, unbatched=not raw and rng.random() < 0.15,
                batch=size(rng, 1, 3, zero=0.05), groups=groups, per_group=per_group,
                out_per_group=rng.randint(1, 3), height=max(fits[0], size(rng, 1, 10)),
                width=max(fits[1], size(rng, 1, 10)), kernel=kernel, stride=stride,
                padding=padding,
                dilation=dilation, bias=rng.random() < 0.6,
                relu=dtype != BF16 and rng.random() < 0.4, layout=rng.choice(LAYOUTS),
                w_layout=rng.choice(["contiguous", "channels_last", "transposed", "strided"]),
                grads=[rng.random() < 0.8 for _ in range(3)],
                forms=[rng.random() for _ in range(3)])


def check_conv2d(case, seed, launch=None):
    gen = generator(seed)
    dtype, groups = case["dtype"], case["groups"]
    in_channels = groups * case["per_group"]
    out_channels = groups * case["out_per_group"]
    batch = () if case["unbatched"] else (case["batch"],)
    x_shape = (*batch, in_channels, case["height"], case["width"])
    fan_in = case["per_group"] * case["kernel"][0] * case["kernel"][1]
    grad_x, grad_w, grad_b = case["grads"]
    x = Arg(randn(gen, x_shape, dtype), case["layout"], grad_x)
    w = Arg(randn(gen, (out_channels, case["per_group"], *case["kernel"]), dtype,
                  1 / max(1, fan_in) ** 0.5), case["w_layout"], grad_w)
    b = Arg(randn(gen, (out_channels,), dtype), "contiguous", grad_b) if case["bias"] else None
    stride, padding, dilation = case["stride"], case["padding"], case["dilation"]
    forms = [rng_form(f, v) for f, v in zip(case["forms"][:2], (stride, dilation), strict=True)]
    relu = case["relu"]
    pad = padding if isinstance(padding, (str, int)) else rng_form(case["forms"][2], padding)

    def reference(x, w, b):
        out = TF.conv2d(x, w, b, forms[0], pad, forms[1], groups)
        return torch.relu(out) if relu else out

    args = dict(x=x, w=w, b=b)
    scale = 2 + (fan_in + math.prod(batch) * case["height"] * case["width"]) / 32
    if launch is None:
        fn = F.conv2d_relu if relu else F.conv2d
        return differential(lambda x, w, b: fn(x, w, b, forms[0], pad, forms[1], groups),
                            reference, args, dtype, scale, seed=seed,
                            check_layout=case["layout"] in STANDARD_LAYOUTS
                            and case["w_layout"] in STANDARD_LAYOUTS)
    activation = "relu" if relu else "none"
    padding = [padding] * 2 if isinstance(padding, int) else list(padding)

    def forward(x, w, b):
        return launch("conv2d")(x, w, b, stride, padding, dilation, groups, activation)

    def backward(t, outputs, cotangents):
        mask = [grad_x, grad_w, b is not None and grad_b]
        grads = launch("conv2d_backward")(cotangents[0], t["x"], t["w"], outputs[0],
                                          list(t["x"].shape), stride, padding, dilation, groups,
                                          activation, mask)
        return dict(zip(("x", "w", "b"), grads, strict=True))

    return differential(forward, reference, args, dtype, scale, backward=backward, seed=seed)


# -------------------------------------------------------------------------- batch_norm

def gen_batch_norm(rng, raw=False):
    dtype = float_dtype(rng)
    spatial = [size(rng, 1, 5) for _ in range(rng.choice([0, 1, 2, 2, 3]))]
    mode = rng.choice(["train", "train", "train_no_stats", "eval"])
    values = rng.choice(["randn"] * 6 + ["special"])
    layout = rng.choice(LAYOUTS)
    if layout == "expanded" and math.prod(spatial) <= 1:
        layout = "contiguous"  # identical samples: a channel of variance 0, ill-conditioned
    return dict(dtype=dtype, param_dtype=F32 if dtype == BF16 and rng.random() < 0.5 else dtype,
                # no 0 channels: torch's batch_norm raises IndexError on them (fastops takes them)
                batch=size(rng, 1, 6, zero=0.03), channels=size(rng, 1, 7),
                spatial=spatial, mode=mode, affine=rng.choice(["both", "both", "weight", "bias",
                                                               "none"]),
                momentum=rng.choice([0.1, 0.1, 0.0, 1.0, round(rng.random(), 3)]),
                eps=rng.choice([1e-5, 1e-5, 1e-3, 0.5]),
                scale=rng.choice([0.01, 1.0, 1.0, 5.0]),
                shift=rng.choice([0.0, 0.0, 1.5, -3.0, 10.0]),  # the mean, in units of the std
                values=values, relu=dtype != BF16 and rng.random() < 0.4, layout=layout,
                param_layout=rng.choice(["contiguous", "strided", "sliced"]),
                grads=[rng.random() < 0.8 for _ in range(3)])


def check_batch_norm(case, seed, launch=None):
    gen = generator(seed)
    dtype, param_dtype, channels = case["dtype"], case["param_dtype"], case["channels"]
    shape = (case["batch"], channels, *case["spatial"])
    values = randn(gen, shape, F64, case["scale"], case["shift"] * case["scale"])
    if case["values"] == "special":
        values = sprinkle(gen, values, [NAN, INF, -INF], 0.05)
    grad_x, grad_w, grad_b = case["grads"]
    x = Arg(values.to(dtype), case["layout"], grad_x)
    affine, layout = case["affine"], case["param_layout"]
    weight = (Arg((torch.rand(channels, generator=gen, dtype=F64) + 0.5).to(param_dtype), layout,
                  grad_w) if affine in ("both", "weight") else None)
    bias = (Arg(randn(gen, (channels,), param_dtype), layout, grad_b)
            if affine in ("both", "bias") else None)
    stats = case["mode"] != "train_no_stats"
    running_mean = Arg(randn(gen, (channels,), param_dtype)) if stats else None
    running_var = (Arg((torch.rand(channels, generator=gen, dtype=F64) + 0.5).to(param_dtype))
                   if stats else None)
    training, momentum, eps, relu = (case["mode"] != "eval", case["momentum"], case["eps"],
                                     case["relu"])

    def reference(x, rm, rv, w, b):
        out = TF.batch_norm(x, rm, rv, w, b, training, momentum, eps)
        return torch.relu(out) if relu else out

    args = dict(x=x, rm=running_mean, rv=running_var, w=weight, b=bias)
    scale = 1 + math.prod(shape) / max(1, channels) / 256
    if training and x.values.numel():
        # |mean| / std of a channel: the digits any float32 / bfloat16 batch_norm loses (as torch's)
        # to the cancellation in x - mean; a few samples can make it large
        plain = x.build(True, False).transpose(0, 1).reshape(channels, -1)
        ratio = (plain.mean(1).abs() / (plain.var(1, correction=0) + eps).sqrt()).max().item()
        scale *= 1 + (ratio if math.isfinite(ratio) else 0)  # (inf / NaN values: no bound)
    common = dict(grad_scale=4 * scale, mutated=("rm", "rv"), seed=seed)
    if launch is None:
        fn = F.batch_norm_relu if relu else F.batch_norm
        return differential(lambda x, rm, rv, w, b: fn(x, rm, rv, w, b, training, momentum, eps),
                            reference, args, dtype, scale,
                            check_layout=case["layout"] in STANDARD_LAYOUTS, **common)
    activation = "relu" if relu else "none"
    saved = {}

    def forward(x, rm, rv, w, b):
        out, saved["mean"], saved["invstd"] = launch("batch_norm")(
            x, w, b, rm, rv, training, momentum, eps, activation)
        return out

    def backward(t, outputs, cotangents):
        mask = [grad_x, weight is not None and grad_w, bias is not None and grad_b]
        grads = launch("batch_norm_backward")(cotangents[0], t["x"], t["w"], outputs[0],
                                              saved["mean"], saved["invstd"], training,
                                              activation, mask)
        return dict(zip(("x", "w", "b"), grads, strict=True))

    return differential(forward, reference, args, dtype, scale, backward=backward, **common)


# ----------------------------------------------------------------------------- dropout

DROPOUT_RANKS = {"dropout": [0, 1, 2, 3, 4], "dropout1d": [2, 3], "dropout2d": [3, 4, 4],
                 "dropout3d": [4, 5, 5]}


def gen_dropout(rng, raw=False):
    fn = "dropout" if raw else rng.choice(list(DROPOUT_RANKS))
    rank = rng.choice(DROPOUT_RANKS[fn])
    if raw:
        rank = max(rank, 1)
    return dict(fn=fn, dtype=float_dtype(rng),
                shape=[size(rng, 1, 6, zero=0.05) for _ in range(rank)],
                p=rng.choice([0.0, 1.0]), training=raw or rng.random() < 0.7,
                inplace=rng.random() < 0.4, special=rng.random() < 0.3,
                layout=rng.choice(LAYOUTS), grad=not raw and rng.random() < 0.8)


def check_dropout(case, seed, launch=None):
    gen = generator(seed)
    dtype, p, training, inplace = case["dtype"], case["p"], case["training"], case["inplace"]
    layout = case["layout"]
    if inplace and layout == "expanded":
        layout = "contiguous"  # one memory location for many elements: no in-place write
    values = randn(gen, tuple(case["shape"]), F64)
    if case["special"]:
        values = sprinkle(gen, values, [NAN, INF, -INF])
    x = Arg(values.to(dtype), layout, case["grad"])
    aliases = {}

    def call(fn, x, name):
        if inplace:  # in place on a tensor of x's layout that autograd tracks (x is a leaf)
            y = relayout(torch.zeros_like(x.detach()), layout)
            y.copy_(x)
            x = y
        out = fn(x, p, training, inplace)
        aliases[name] = (out is x, out.untyped_storage().data_ptr()
                         == x.untyped_storage().data_ptr() and x.numel() > 0)
        return out

    if launch is None:
        result = differential(lambda x: call(getattr(F, case["fn"]), x, "ours"),
                              lambda x: call(getattr(TF, case["fn"]), x, "torch"), dict(x=x),
                              dtype, exact=True, seed=seed,
                              check_layout=layout in STANDARD_LAYOUTS)
        if result != "rejected":  # in place: the input itself; else a view of it where torch's
            is_input, shares = aliases["ours"]
            assert (is_input if inplace else shares) == aliases["torch"][0 if inplace else 1], (
                f"the result is the input: {is_input}, shares its memory: {shares}; torch's "
                f"{aliases['torch']}")
        return result
    seed_tensor = torch.tensor(seed, dtype=torch.int64)

    def forward(x):
        if not inplace:
            return launch("dropout")(x, seed_tensor, p, 1)
        launch("dropout_")(x, seed_tensor, p, 1)
        return x

    return differential(forward, lambda x: TF.dropout(x, p, True), dict(x=x), dtype, exact=True,
                        seed=seed)


# ------------------------------------------------------------------------ the fuzz tests

CHECKS = {"linear": (gen_linear, check_linear),
          "cross_entropy": (gen_cross_entropy, check_cross_entropy),
          "linear_cross_entropy": (gen_linear_cross_entropy, check_linear_cross_entropy),
          "max_pool2d": (gen_max_pool2d, check_max_pool2d),
          "conv2d": (gen_conv2d, check_conv2d),
          "batch_norm": (gen_batch_norm, check_batch_norm),
          "dropout": (gen_dropout, check_dropout)}
assert list(CHECKS) == OPS


def launcher_case(op, case):
    """What the launcher cases leave out (in place)."""
    dtype = case["dtype"]
    if dtype == F64 and not KNOWN:
        dtype = F32  # KNOWN_DEFECTS["launcher_float64"]
    if dtype == BF16 and op in ("linear", "conv2d"):
        # the interpreter's bfloat16 tl.dot gives garbage (its limitation: test_linear.py and
        # test_conv2d.py check these launchers in bfloat16 on a GPU)
        dtype = F32
    if dtype != case["dtype"]:
        case["dtype"] = case["param_dtype"] = dtype
    if op == "batch_norm" and not KNOWN:
        case["param_layout"] = "contiguous"  # KNOWN_DEFECTS["launcher_strided_params"]
    if "out_of_range" in case:
        # a kernel cannot raise: the launchers give NaN for such a target (by design, tested in
        # test_cross_entropy.py)
        case["out_of_range"] = False
    if case.get("classes") == 0 and not KNOWN:
        case["classes"] = 1  # KNOWN_DEFECTS["launcher_no_classes"]
    if case.get("logits") in ("huge", "nan") and not KNOWN:
        case["logits"] = "randn"  # KNOWN_DEFECTS["launcher_logits"]
    if case.get("prob") and case["ignore_index"] not in (-100, None):
        # rejected by fastops.functional (as by torch), not by the raw op
        case["ignore_index"] = None if op == "linear_cross_entropy" else -100


def run_case(case_id, op, seed, launch=None):
    gen_case, check = CHECKS[op]
    case = gen_case(random.Random(case_id), raw=launch is not None)
    if launch is not None:
        launcher_case(op, case)
    try:
        return check(case, seed, launch)
    except Exception as error:
        raise AssertionError(
            f"fuzz case {case_id} failed; replay: FASTOPS_FUZZ_REPLAY={case_id} "
            f"python -m pytest tests/test_fuzz.py\ncase: {case}\n{type(error).__name__}: {error}"
        ) from error


@pytest.mark.parametrize("op,seed", [(op, s) for op in OPS for s in seeds(op, CASES)],
                         ids=lambda v: str(v))
def test_matches_torch(op, seed):
    run_case(f"{op}:{seed}", op, seed)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning",
                            "ignore:invalid value:RuntimeWarning")  # numpy, in the interpreter
@pytest.mark.skipif(not INTERPRETING,
                    reason="TRITON_INTERPRET is off: the launchers cannot run on CPU tensors")
@pytest.mark.parametrize("op,seed", [(op, s) for op in OPS
                                     for s in seeds(f"launcher:{op}", LAUNCHER_CASES)],
                         ids=lambda v: str(v))
def test_triton_launchers_match_torch(op, seed):
    run_case(f"launcher:{op}:{seed}", op, seed, launch=launcher)


# ------------------------------------------------------------- raw ops, random arguments

RAW_OPS = sorted(LAUNCHERS)
ALLOWED = (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError)
LAUNCHER_SHARE = 0.1  # of the raw-op calls, made to the launcher instead (interpreter only)
ALL_DTYPES = [F32, F64, BF16, torch.float16, torch.int64, torch.int32, torch.int8, torch.uint8,
              torch.bool, torch.complex64]
BAD_INTS = [0, -1, 1, 2, 3, 7, 255, 256, 2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**61, 2**63 - 1,
            -2**31, -2**61, -2**63]
BAD_FLOATS = [NAN, INF, -INF, -1.0, -0.0, 0.0, 0.5, 1.0, 1.0 + 1e-9, 2.0, 1e-300, 1e300]
BAD_STRINGS = ["", "none", "relu", "mean", "sum", "gelu", "RELU", "Mean", "sum ", "none\0",
               "\u00e9", "x" * 300]


def _t(gen, *shape, dtype=F32):
    return torch.randn(shape, generator=gen).to(dtype)


def _i(gen, high, *shape, dtype=torch.int64):
    return torch.randint(0, max(high, 1), shape, generator=gen).to(dtype)


def _mask(rng, n):
    return [rng.random() < 0.7 for _ in range(n)]


def _pool_window(rng, h, w):
    """A max_pool2d window (kernel, stride, padding, dilation, ceil_mode) valid for [h, w]."""
    while True:
        k = [rng.randint(1, 3), rng.randint(1, 3)]
        s = [rng.randint(1, 3), rng.randint(1, 3)]
        p = [rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2)]
        d = [rng.randint(1, 2), rng.randint(1, 2)]
        ceil = rng.random() < 0.3
        if all(n + 2 * p[j] >= d[j] * (k[j] - 1) + 1 for j, n in enumerate((h, w))):
            return k, s, p, d, ceil


def _loss_args(rng, gen, rows, classes):
    prob = rng.random() < 0.35
    target = (torch.softmax(_t(gen, rows, classes), 1) if prob else _i(gen, classes, rows))
    weight = torch.rand(classes, generator=gen) + 0.1 if rng.random() < 0.4 else None
    return target, weight, dict(reduction=rng.choice(["none", "mean", "sum"]), ignore_index=-100,
                                label_smoothing=rng.choice([0.0, 0.1]))


def raw_valid_call(op, rng, gen):
    """A valid call of the raw op ``op`` on small random CPU tensors: {argument: value}. The
    arguments of a backward op come from a call of its forward op."""
    ops = torch.ops.fastops
    n, c = rng.randint(0, 3), rng.randint(1, 4)
    if op.startswith("linear_cross_entropy"):
        hidden, classes = rng.randint(0, 5), rng.randint(1, 5)
        x, w = _t(gen, n, hidden), _t(gen, classes, hidden)
        b = _t(gen, classes) if rng.random() < 0.5 else None
        target, weight, o = _loss_args(rng, gen, n, classes)
        forward = dict(input=x, linear_weight=w, bias=b, target=target, weight=weight, **o)
        if op == "linear_cross_entropy":
            return forward
        if op == "linear_cross_entropy_with_grad":
            if forward["reduction"] == "none":
                forward["reduction"] = rng.choice(["mean", "sum"])
            return dict(**forward, output_mask=_mask(rng, 3))
        loss, lse, total = ops.linear_cross_entropy(*forward.values())
        return dict(grad_loss=_t(gen, *loss.shape), input=x, linear_weight=w, bias=b,
                    target=target, weight=weight, logsumexp=lse, total_weight=total, **o,
                    output_mask=[*_mask(rng, 3), target.is_floating_point() and rng.random() < .5])
    if op.startswith("linear"):
        i, o = rng.randint(0, 5), rng.randint(0, 5)
        x, w = _t(gen, n, i), _t(gen, o, i)
        b = _t(gen, o) if rng.random() < 0.7 else None
        activation = rng.choice(["none", "relu"])
        seed, p = ((torch.tensor(rng.randrange(2**62)), rng.random()) if rng.random() < 0.3
                   else (None, 0.0))
        if op == "linear":
            return dict(input=x, weight=w, bias=b, activation=activation, dropout_seed=seed,
                        dropout_p=p)
        out = ops.linear(x, w, b, activation, seed, p)
        return dict(grad_output=_t(gen, *out.shape), input=x, weight=w, output=out,
                    activation=activation, output_mask=_mask(rng, 3), dropout_seed=seed,
                    dropout_p=p)
    if op.startswith("dropout"):
        shape = [rng.randint(0, 4) for _ in range(rng.randint(1, 4))]
        channel = max(1, math.prod(shape[2:])) if len(shape) > 2 and rng.random() < 0.5 else 1
        return dict(input=_t(gen, *shape), seed=torch.tensor([rng.randrange(2**62)]),
                    p=rng.choice([0.0, 0.5, 1.0, rng.random()]), channel_size=channel)
    if op.startswith("max_pool2d"):
        h, w = rng.randint(1, 7), rng.randint(1, 7)
        x = _t(gen, n, c, h, w)
        k, s, p, d, ceil = _pool_window(rng, h, w)
        if op in ("max_pool2d", "max_pool2d_values"):
            return dict(input=x, kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
        out, argmax = ops.max_pool2d(x, k, s, p, d, ceil)
        window = dict(kernel_size=k, stride=s, padding=p, dilation=d)
        if op == "max_pool2d_indices":
            return dict(argmax=argmax, input_width=w, **window)
        return dict(grad_output=_t(gen, *out.shape), argmax=argmax, input_size=[h, w], **window)
    if op.startswith("cross_entropy"):
        classes = rng.randint(1, 5)
        x = _t(gen, n, classes)
        target, weight, o = _loss_args(rng, gen, n, classes)
        if op == "cross_entropy":
            return dict(input=x, target=target, weight=weight, **o)
        loss, lse, total = ops.cross_entropy(x, target, weight, *o.values())
        return dict(grad_loss=_t(gen, *loss.shape), input=x, target=target, weight=weight,
                    logsumexp=lse, total_weight=total, **o,
                    output_mask=[rng.random() < 0.8,
                                 target.is_floating_point() and rng.random() < 0.5])
    if op.startswith("conv2d"):
        groups = rng.choice([1, 1, 2])
        h, w = rng.randint(1, 6), rng.randint(1, 6)
        x = _t(gen, n, c * groups, h, w)
        weight = _t(gen, groups * rng.randint(1, 3), c, rng.randint(1, min(h, 3)),
                    rng.randint(1, min(w, 3)))
        b = _t(gen, weight.shape[0]) if rng.random() < 0.6 else None
        window = dict(stride=[rng.randint(1, 2), rng.randint(1, 2)],
                      padding=[rng.randint(0, 1), rng.randint(0, 1)], dilation=[1, 1],
                      groups=groups, activation=rng.choice(["none", "relu"]))
        if op == "conv2d":
            return dict(input=x, weight=weight, bias=b, **window)
        out = ops.conv2d(x, weight, b, *window.values())
        activation = window.pop("activation")
        return dict(grad_output=_t(gen, *out.shape), input=x, weight=weight, output=out,
                    input_size=list(x.shape), **window, activation=activation,
                    output_mask=_mask(rng, 3))
    if op.startswith("batch_norm"):
        x = _t(gen, rng.randint(2, 4), c, *[rng.randint(1, 3) for _ in range(rng.randint(0, 2))])
        w = _t(gen, c) if rng.random() < 0.7 else None
        b = _t(gen, c) if rng.random() < 0.7 else None
        training = rng.random() < 0.7
        stats = not training or rng.random() < 0.5
        rm, rv = (_t(gen, c), torch.rand(c, generator=gen) + 0.5) if stats else (None, None)
        activation = rng.choice(["none", "relu"])
        forward = dict(input=x, weight=w, bias=b, running_mean=rm, running_var=rv,
                       training=training, momentum=0.1, eps=1e-5, activation=activation)
        if op == "batch_norm":
            return forward
        out, mean, invstd = ops.batch_norm(*forward.values())
        return dict(grad_output=_t(gen, *out.shape), input=x, weight=w, output=out,
                    save_mean=mean, save_invstd=invstd, training=training, activation=activation,
                    output_mask=_mask(rng, 3))
    raise ValueError(op)


def bad_values(rng, t):
    """``t`` with a few elements set to values out of every valid range (indices, seeds, NaN)."""
    if t.device.type == "meta" or t.numel() == 0:
        return t
    t = t.clone(memory_format=torch.contiguous_format)
    if t.is_floating_point():
        specials = [NAN, INF, -INF, 1e38 if t.dtype != torch.float16 else 6e4, -0.0]
    elif t.dtype == torch.bool:
        specials = [True]
    else:
        info = torch.iinfo(t.dtype)
        specials = [v for v in (-1, -100, 7, 255, 256, 2**31 - 1, 2**40, info.min, info.max)
                    if info.min <= v <= info.max]
    for _ in range(rng.randint(1, 3)):
        t.view(-1)[rng.randrange(t.numel())] = rng.choice(specials) if specials else 0
    return t


def bad_tensor(rng, gen, t):
    """A mutation of the tensor argument ``t`` (None for an optional one left out)."""
    if t is None:
        t = _t(gen, *[rng.randint(0, 4) for _ in range(rng.randint(0, 4))])
        if rng.random() < 0.5:
            return t
    kind = rng.choice(["none", "dtype", "dtype", "rank", "shape", "shape", "empty", "meta",
                       "meta", "noncontiguous", "channels_last", "expanded", "values", "values",
                       "values", "scalar", "transposed"])
    if kind == "none":
        return None
    if kind == "dtype":
        return t.to(rng.choice(ALL_DTYPES))
    if kind == "rank":
        return _t(gen, *[rng.randint(0, 4) for _ in range(rng.choice([0, 1, 2, 3, 4, 5]))],
                  dtype=t.dtype).to(t.device)
    if kind in ("shape", "empty") and t.dim() > 0:
        shape = list(t.shape)
        d = rng.randrange(len(shape))
        shape[d] = 0 if kind == "empty" else max(0, shape[d] + rng.choice([-1, 1, 2, 5]))
        return _t(gen, *shape).to(t.dtype).to(t.device)
    if kind == "meta":
        return t.to("meta")
    if kind == "noncontiguous" and t.dim() > 0:
        return relayout(t, "strided") if t.device.type != "meta" else t
    if kind == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "expanded" and t.dim() > 0:
        return t[:1].expand(t.shape) if t.shape[0] > 0 else t
    if kind == "values":
        return bad_values(rng, t)
    if kind == "scalar":
        return torch.tensor(rng.choice([0, 1, 5, -1, 2.5]), dtype=t.dtype).to(t.device)
    if kind == "transposed" and t.dim() > 1:
        return t.transpose(0, 1)
    return bad_values(rng, t)


def bad_int_list(rng, values):
    values = list(values) if isinstance(values, (list, tuple)) else [1, 1]
    kind = rng.choice(["length", "element", "element", "all"])
    if kind == "length":
        return [rng.choice([1, 2, 3])] * rng.choice([0, 1, 3, 5])
    if kind == "all":
        return [rng.choice(BAD_INTS) for _ in values]
    if values:
        values[rng.randrange(len(values))] = rng.choice(BAD_INTS)
    return values


WRONG_TYPES = [None, "1", 1.5, [1, 2], (1,), True, 3, NAN, torch.zeros(2), torch.tensor(1)]


def bad_value(rng, gen, argument, value):
    """A mutation of one argument, by its schema type."""
    kind = str(argument.type)
    if rng.random() < 0.06:
        return rng.choice(WRONG_TYPES)
    if "Tensor" in kind:
        return bad_tensor(rng, gen, value)
    if kind in ("int", "SymInt"):
        return rng.choice(BAD_INTS + [value + rng.randint(-3, 3)] if isinstance(value, int)
                          else BAD_INTS)
    if kind in ("List[int]", "List[SymInt]"):
        return bad_int_list(rng, value)
    if kind == "float":
        return rng.choice(BAD_FLOATS)
    if kind == "str":
        return rng.choice(BAD_STRINGS)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "List[bool]":
        return [rng.random() < 0.5 for _ in range(rng.choice([0, 1, 2, 3, 4, 5]))]
    if argument.name == "loss_dtype":  # ScalarType? (linear_cross_entropy)
        return rng.choice([torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.float32])
    raise ValueError(kind)


def raw_case(op, rng, gen):
    """(arguments in schema order, what was changed) of one random call of ``op``."""
    args = raw_valid_call(op, rng, gen)
    arguments = getattr(torch.ops.fastops, op).default._schema.arguments
    for argument in arguments[len(args):]:  # trailing arguments with defaults (e.g. loss_dtype)
        if argument.has_default_value():
            args[argument.name] = argument.default_value
    assert list(args) == [a.name for a in arguments], (op, list(args))
    changed = rng.sample(arguments, min(len(arguments), rng.choice([0, 1, 1, 1, 2, 2, 3])))
    for argument in changed:
        args[argument.name] = bad_value(rng, gen, argument, args[argument.name])
    notes = [a.name for a in changed]
    if rng.random() < 0.05:  # every tensor on the meta device: the Meta kernel (the rules)
        args = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        notes.append("all meta")
    # a few calls go to the op's Triton launcher instead (in the interpreter), on CPU tensors
    # and values of the schema's types: what the dispatcher hands a CUDA kernel
    via_launcher = (rng.random() < LAUNCHER_SHARE and INTERPRETING
                    and all(schema_typed(a, args[a.name]) for a in arguments))
    if via_launcher:
        notes.append("via the Triton launcher")
    return args, notes, via_launcher


def schema_typed(argument, value):
    """Whether ``value`` is what the dispatcher passes a kernel for ``argument``: a CPU tensor
    (or None where optional), an int, a float, a str, a bool or a list of them."""
    kind = str(argument.type)
    if argument.name == "loss_dtype":  # ScalarType? (linear_cross_entropy)
        return value is None or isinstance(value, torch.dtype)
    if "Tensor" in kind:
        return (value is None and kind.startswith("Optional")
                or isinstance(value, torch.Tensor) and value.device.type == "cpu")
    if kind.startswith("List"):
        element = bool if "bool" in kind else int
        return isinstance(value, list) and all(type(v) is element for v in value)
    return type(value) is {"int": int, "SymInt": int, "float": float, "str": str,
                           "bool": bool}[kind]


def describe(value):
    if isinstance(value, torch.Tensor):
        text = (f"T({list(value.shape)}, {str(value.dtype)[6:]}, {value.device.type}, "
                f"stride={list(value.stride())}")
        if value.device.type != "meta" and value.numel() <= 12:
            text += f", {value.tolist()}"
        return text + ")"
    if isinstance(value, str) and len(value) > 20:
        return repr(value[:20] + "...")
    return repr(value)


def raw_fuzz_child(seed, start, count, log_path):
    """The child process: ``count`` random raw-op calls from index ``start``, each written to
    ``log_path`` before it runs; prints a JSON summary; exits 1 on an exception of another type
    than ALLOWED."""
    import resource

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
    # A huge output must fail to allocate (a RuntimeError), not take the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (vm + 3 * 2**30, resource.RLIM_INFINITY))
    counts = {op: {} for op in RAW_OPS}
    unexpected, slow = [], []
    with open(log_path, "w") as log:
        for index in range(start, start + count):
            op = RAW_OPS[index % len(RAW_OPS)]
            rng = random.Random(f"raw:{seed}:{index}")
            gen = generator(rng.randrange(2**62))
            args, notes, via_launcher = raw_case(op, rng, gen)
            line = (f"{index} {op}({', '.join(f'{k}={describe(v)}' for k, v in args.items())})"
                    f" changed={notes}")
            log.write(line + "\n")
            log.flush()
            began = time.perf_counter()
            try:
                (launcher(op) if via_launcher else getattr(torch.ops.fastops, op))(
                    *args.values())
                outcome = "ok"
            except ALLOWED as error:
                outcome = type(error).__name__
            except Exception as error:
                outcome = f"UNEXPECTED {type(error).__name__}"
                unexpected.append(f"{line}\n  -> {type(error).__name__}: {error}")
            took = time.perf_counter() - began
            if took > 1.0:
                slow.append(f"{took:.1f} s: {line}")
            if via_launcher:
                outcome = f"launcher {outcome}"
            counts[op][outcome] = counts[op].get(outcome, 0) + 1
    print(json.dumps(dict(counts=counts, unexpected=unexpected, slow=slow)))
    sys.exit(1 if unexpected else 0)


def test_raw_ops_survive_random_arguments(tmp_path):
    seed, start, count = FIRST_SEED, 0, RAW_CALLS
    if REPLAY:
        head, _, index = REPLAY.rpartition(":")
        if not head.startswith("raw:"):
            pytest.skip(f"FASTOPS_FUZZ_REPLAY={REPLAY} names another case")
        seed, start, count = int(head[4:]), int(index), 1
    log = tmp_path / "raw_calls.log"
    command = [sys.executable, os.path.abspath(__file__), "--raw-fuzz", str(seed), str(start),
               str(count), str(log)]
    limit = 120 + count * 0.05

    def last_case():
        lines = log.read_text().splitlines() if log.exists() else []
        if not lines:
            return "no case started", None
        return lines[-1], lines[-1].split(" ", 1)[0]

    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        case, index = last_case()
        pytest.fail(f"raw-op fuzz (seed {seed}) ran over {limit:.0f} s; the case running: "
                    f"{case}\nreplay: FASTOPS_FUZZ_REPLAY=raw:{seed}:{index}")
    if child.returncode < 0:
        case, index = last_case()
        pytest.fail(f"raw-op fuzz (seed {seed}) died by {signal.Signals(-child.returncode).name} "
                    f"in the case: {case}\nreplay: FASTOPS_FUZZ_REPLAY=raw:{seed}:{index}\n"
                    f"stderr: {child.stderr[-2000:]}")
    output = child.stdout.strip().splitlines()
    assert output, f"raw-op fuzz printed nothing (exit {child.returncode}): {child.stderr[-3000:]}"
    summary = json.loads(output[-1])
    assert child.returncode == 0 and not summary["unexpected"], (
        f"raw-op fuzz (seed {seed}): calls raised exceptions of other types than "
        f"{[e.__name__ for e in ALLOWED]} (replay one with FASTOPS_FUZZ_REPLAY=raw:{seed}:"
        f"<index>):\n" + "\n".join(summary["unexpected"][:20]))
    counts = summary["counts"]
    print(f"raw-op fuzz, seed {seed}, {count} calls:")
    for op, outcomes in counts.items():
        print(f"  {op}: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    for line in summary["slow"]:
        print(f"  slow: {line}")
    if count >= 40 * len(RAW_OPS):  # every op both ran and rejected calls
        for op, outcomes in counts.items():
            assert outcomes.get("ok", 0) > 0, f"{op}: no call succeeded: {outcomes}"
            assert sum(outcomes.get(e.__name__, 0) for e in ALLOWED), f"{op}: none raised"


if __name__ == "__main__" and sys.argv[1:2] == ["--raw-fuzz"]:
    raw_fuzz_child(*map(int, sys.argv[2:5]), sys.argv[5])
