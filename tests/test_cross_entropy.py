"""cross_entropy and linear_cross_entropy parity against torch (over 500 lines: the two ops
share the loss references and target builders below)."""

import inspect
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as TF
from helpers import (
    CUDA,
    DEVICE_DTYPES,
    assert_close,
    assert_same_forward_backward,
    compile_fullgraph,
    noncontiguous,
    raises,
    requires_cuda,
)

import fastops
from fastops import functional as F


def reference(input, target, weight=None, **options):
    """torch's cross_entropy in float64, cast back to input's dtype (for reduced precision the
    fp32-accumulating kernels are closer to it than torch's own bf16 path)."""
    target64 = target.double() if target.is_floating_point() else target
    weight64 = weight.double() if weight is not None else None
    return TF.cross_entropy(input.double(), target64, weight64, **options).to(input.dtype)


def linear_reference(input, linear_weight, bias, target, weight=None, **options):
    """cross_entropy(linear(...)) in float64, cast back to input's dtype."""
    logits = TF.linear(input.double(), linear_weight.double(),
                       bias.double() if bias is not None else None)
    target64 = target.double() if target.is_floating_point() else target
    weight64 = weight.double() if weight is not None else None
    return TF.cross_entropy(logits, target64, weight64, **options).to(input.dtype)


def generator(seed):
    return torch.Generator().manual_seed(seed)


def make_logits(shape, device="cpu", dtype=torch.float32, seed=0, scale=3.0):
    return ((torch.randn(shape, generator=generator(seed)) * scale)
            .to(device, dtype).requires_grad_())


def make_target(shape, prob, device="cpu", dtype=torch.float32, ignore_index=-100, seed=1):
    """Class indices (every third one ignored) or soft probabilities for logits of ``shape``."""
    classes = shape[1] if len(shape) > 1 else shape[0]
    if prob:
        probs = torch.softmax(torch.randn(shape, generator=generator(seed)),
                              dim=1 if len(shape) > 1 else 0)
        return probs.to(device, dtype).requires_grad_()
    rows = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    target = torch.randint(0, max(classes, 1), rows, generator=generator(seed))
    target.view(-1)[::3] = ignore_index
    return target.to(device)


def make_weight(classes, device="cpu", dtype=torch.float32, seed=2):
    return (torch.rand(classes, generator=generator(seed)) + 0.1).to(device, dtype)


SHAPES = [  # logits: [N, C], [C], [N, C, d...]; odd sizes, C = 1, empty batch, large C
    (7, 10),
    (37, 16),  # two whole blocks of 16 short rows (the CPU row-block kernel) and a remainder
    (10,),
    (1, 1),
    (0, 4),
    (5, 1000),
    (3, 5, 4),
    (2, 6, 3, 5),
]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("weighted", [False, True], ids=["", "weight"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
def test_parity(device, dtype, shape, prob, weighted, reduction, label_smoothing):
    classes = shape[1] if len(shape) > 1 else shape[0]
    x = make_logits(shape, device, dtype)
    target = make_target(shape, prob, device, dtype)
    weight = make_weight(classes, device, dtype) if weighted else None
    options = dict(reduction=reduction, label_smoothing=label_smoothing)
    assert_same_forward_backward(
        lambda x, t: F.cross_entropy(x, t, weight, **options),
        lambda x, t: reference(x, t, weight, **options), [x, target], dtype,
        scale=1 + classes / 256)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
def test_33000_classes(reduction, prob):
    shape = (3, 33000)
    x, target, weight = make_logits(shape), make_target(shape, prob), make_weight(33000)
    options = dict(reduction=reduction, label_smoothing=0.1)
    assert_same_forward_backward(lambda x, t: F.cross_entropy(x, t, weight, **options),
                                 lambda x, t: reference(x, t, weight, **options), [x, target],
                                 scale=10)


@pytest.mark.parametrize("ignore_index", [2, -1])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_ignore_index_like_torch(ignore_index, label_smoothing):
    x = make_logits((9, 5))
    target = torch.tensor([0, 2, 4, 1, 2, 1, 3, 0, 2])
    target[[3, 7]] = ignore_index  # -1, or 2 which is also a class
    weight = make_weight(5)
    for reduction in ("none", "mean", "sum"):
        options = dict(ignore_index=ignore_index, reduction=reduction,
                       label_smoothing=label_smoothing)
        assert_same_forward_backward(lambda x: F.cross_entropy(x, target, weight, **options),
                                     lambda x: reference(x, target, weight, **options), [x])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_every_target_ignored_gives_torch_result(weighted, label_smoothing):
    x = make_logits((4, 3))
    target = torch.full((4,), -100)
    weight = make_weight(3) if weighted else None
    for reduction in ("none", "mean", "sum"):
        options = dict(reduction=reduction, label_smoothing=label_smoothing)
        ours = F.cross_entropy(x, target, weight, **options)
        assert_close(ours, TF.cross_entropy(x, target, weight, **options))  # NaN for "mean"
        grad, = torch.autograd.grad(ours.sum(), x)
        assert torch.equal(grad, torch.zeros_like(grad))


def test_uint8_targets_and_size_one_target_for_vector_input():
    x = make_logits((6, 4))
    target = torch.tensor([0, 3, 1, 2, 2, 0], dtype=torch.uint8)
    assert_same_forward_backward(
        lambda x: F.cross_entropy(x, target, ignore_index=3, reduction="none"),
        lambda x: reference(x, target, ignore_index=3, reduction="none"), [x])
    v = make_logits((5,))
    for reduction in ("none", "mean"):
        # torch accepts a [1] target for a [C] input but its backward fails: compare with []
        assert_close(F.cross_entropy(v, torch.tensor([2]), reduction=reduction),
                     TF.cross_entropy(v, torch.tensor([2]), reduction=reduction))
        assert_same_forward_backward(
            lambda v: F.cross_entropy(v, torch.tensor([2]), reduction=reduction),
            lambda v: reference(v, torch.tensor(2), reduction=reduction), [v])


@pytest.mark.parametrize("layout", ["noncontiguous", "channels_last", "transposed"])
def test_noncontiguous_inputs(layout):
    if layout == "noncontiguous":
        x = noncontiguous(make_logits((3, 4, 5)).detach())
    elif layout == "channels_last":
        x = make_logits((2, 5, 3, 4)).detach().contiguous(memory_format=torch.channels_last)
    else:
        x = make_logits((7, 6)).detach().t().contiguous().t()
    x.requires_grad_()
    assert not x.is_contiguous()
    index = make_target(tuple(x.shape), False)
    prob = noncontiguous(make_target(tuple(x.shape), True).detach()).requires_grad_()
    for target in (index, noncontiguous(index) if index.dim() else index, prob):
        assert_same_forward_backward(lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1),
                                     lambda x, t: reference(x, t, label_smoothing=0.1), [x, target])


def test_probability_target_dtype_promotes_like_torch():
    x = make_logits((3, 5))
    target = make_target((3, 5), True, dtype=torch.float64)
    weight = make_weight(5, dtype=torch.float64)
    ours, theirs = F.cross_entropy(x, target, weight), TF.cross_entropy(x, target, weight)
    assert ours.dtype == theirs.dtype == torch.float64
    assert_close(ours, theirs)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_numerically_stable_for_huge_and_infinite_logits(label_smoothing):
    x = make_logits((6, 7)).detach() * 1e4
    x[1, 3] = float("-inf")
    x[2, :] = float("-inf")
    x[2, 4] = 5.0
    x.requires_grad_()
    target = torch.tensor([0, 1, 4, 6, 2, 5])
    for reduction in ("none", "sum"):
        options = dict(reduction=reduction, label_smoothing=label_smoothing)
        ours = F.cross_entropy(x, target, **options)
        theirs = TF.cross_entropy(x.double(), target, **options)
        # -inf entries: torch gives inf (or NaN for an all -inf smoothing term), so do we
        assert_close(ours.double(), theirs, torch.float32)
    if label_smoothing == 0.0:
        assert_same_forward_backward(lambda x: F.cross_entropy(x, target),
                                     lambda x: reference(x, target), [x])


@pytest.mark.parametrize("classes", [10, 40], ids=["short rows", "long rows"])
def test_row_of_only_minus_inf_gives_nan_like_torch(classes):
    x = make_logits((20, classes)).detach()
    x[17] = float("-inf")
    x.requires_grad_()
    target = torch.arange(20) % classes
    assert_same_forward_backward(lambda x: F.cross_entropy(x, target, reduction="none"),
                                 lambda x: reference(x, target, reduction="none"), [x])


def test_infinite_logit_target_gives_inf_like_torch():
    x = torch.tensor([[0.0, float("-inf"), 1.0]], requires_grad=True)
    assert_close(F.cross_entropy(x, torch.tensor([1]), reduction="none"),
                 TF.cross_entropy(x, torch.tensor([1]), reduction="none"))


@pytest.mark.parametrize("weight_grad_prob", [False, True])
def test_gradcheck(weight_grad_prob):
    x = make_logits((3, 4, 2), dtype=torch.float64)
    weight = make_weight(4, dtype=torch.float64)
    index = make_target((3, 4, 2), False)
    prob = make_target((3, 4, 2), True, dtype=torch.float64)
    for target in (index, prob):
        for reduction in ("none", "mean", "sum"):
            def loss(x, *t, reduction=reduction):
                return fastops.ops.cross_entropy(x, t[0] if t else index, weight, reduction, -100,
                                                 0.2)[0]
            args = (x, target) if target.is_floating_point() else (x,)
            assert torch.autograd.gradcheck(loss, args)


def test_opcheck():
    x = make_logits((5, 4, 3))
    index, prob = make_target((5, 4, 3), False), make_target((5, 4, 3), True)
    class_weight = make_weight(4)
    for target, weight, reduction, smoothing in ((index, None, "mean", 0.0),
                                                 (index, class_weight, "none", 0.3),
                                                 (prob, class_weight, "sum", 0.1),
                                                 (prob, None, "none", 0.0)):
        args = (x, target, weight, reduction, -100, smoothing)
        torch.library.opcheck(fastops.ops.cross_entropy.default, args)
        torch.library.opcheck(fastops.ops.cross_entropy.default,
                              (x.detach(), target.detach(), *args[2:]))
        loss, lse, total = fastops.ops.cross_entropy(*args)
        torch.library.opcheck(fastops.ops.cross_entropy_backward.default,
                              (torch.ones_like(loss), x.detach(), target.detach(), weight, lse,
                               total, reduction, -100, smoothing,
                               [True, target.is_floating_point()]))


def test_saves_only_logsumexp_for_backward():
    x = make_logits((64, 100))
    target = make_target((64, 100), False)
    _, ours = fastops.saved_tensor_bytes(F.cross_entropy, x, target)
    _, theirs = fastops.saved_tensor_bytes(TF.cross_entropy, x, target)
    logits_bytes = x.numel() * x.element_size()
    # the logits + target + total_weight, and 64 log-sum-exps; torch keeps log_softmax(logits)
    # instead of the logits, the same size
    assert ours == logits_bytes + target.numel() * 8 + 4 + 64 * 4
    assert theirs == logits_bytes + target.numel() * 8 + 4


def test_double_backward_raises_a_clear_error():
    x = make_logits((3, 4))
    with pytest.raises(RuntimeError, match="double backward through fastops ops is not supported"):
        torch.autograd.grad(F.cross_entropy(x, torch.tensor([0, 1, 2])), x, create_graph=True)


def test_autocast_cpu_runs_in_float32_like_torch():
    x = make_logits((4, 6), dtype=torch.bfloat16)
    target, weight = torch.tensor([0, 5, 2, 1]), make_weight(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = F.cross_entropy(x, target, weight)
        theirs = TF.cross_entropy(x, target, weight)
    assert ours.dtype == theirs.dtype == torch.float32
    assert_close(ours, theirs)


def test_deprecated_size_average_and_reduce_like_torch():
    x, target = make_logits((5, 3)), torch.tensor([0, 1, 2, 1, 0])
    for size_average, reduce in ((False, None), (None, False), (True, True)):
        with pytest.warns(UserWarning):
            ours = F.cross_entropy(x, target, size_average=size_average, reduce=reduce)
        with pytest.warns(UserWarning):
            theirs = TF.cross_entropy(x, target, size_average=size_average, reduce=reduce)
        assert_close(ours, theirs)
    with pytest.warns(UserWarning):
        module = fastops.nn.CrossEntropyLoss(size_average=False)
    assert module.reduction == "sum"
    assert_close(module(x, target), TF.cross_entropy(x, target, reduction="sum"))


def test_module_matches_torch_and_state_dict_loads_both_ways():
    weight = make_weight(5)
    ours = fastops.nn.CrossEntropyLoss(weight=weight, ignore_index=1, label_smoothing=0.1)
    theirs = torch.nn.CrossEntropyLoss(weight=torch.ones(5), ignore_index=1, label_smoothing=0.1)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x, target = make_logits((6, 5)), torch.tensor([0, 1, 2, 3, 4, 1])
    assert_same_forward_backward(ours, theirs, [x, target])
    assert repr(ours) == repr(theirs)


def test_module_compile_fullgraph():
    model = torch.nn.Sequential(fastops.nn.Linear(6, 5))
    loss = fastops.nn.CrossEntropyLoss(weight=make_weight(5), label_smoothing=0.1)
    x, target = make_logits((4, 6)), torch.tensor([0, 4, 2, 1])
    compiled = compile_fullgraph(lambda x, t: loss(model(x), t))
    assert_same_forward_backward(compiled, lambda x, t: loss(model(x), t), [x, target])
    prob = make_target((4, 5), True)
    assert_same_forward_backward(compiled, lambda x, t: loss(model(x), t), [x, prob])


def test_bad_input_raises_clear_errors_and_changes_nothing():
    x, target, weight = make_logits((3, 5)), torch.tensor([1, 2, 4]), make_weight(5)
    state = (x, target, weight)
    ce = F.cross_entropy
    raises(IndexError, "Target 5 is out of bounds", ce, x, torch.tensor([1, 2, 5]), state=state)
    raises(IndexError, "Target -1 is out of bounds", ce, x, torch.tensor([1, -1, 0]), state=state)
    raises(RuntimeError, "expected target dtype to be Long or Byte", ce, x, target.int(),
           state=state)
    raises(RuntimeError, "Expected floating point type for target with class probabilities",
           ce, x, torch.zeros(3, 5, dtype=torch.long), state=state)
    raises(RuntimeError, "ignore_index is not supported for floating point target",
           ce, x, torch.rand(3, 5), ignore_index=0, state=state)
    raises(ValueError, r"Expected input batch_size \(3\) to match target batch_size \(2\)",
           ce, x, target[:2], state=state)
    raises(RuntimeError, "multi-target not supported", ce, x, target[:, None], state=state)
    raises(RuntimeError, r"Expected target size \[2, 4\], got \[2, 5\]",
           ce, torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long))
    raises(ValueError, "1D target must have size 1", ce, torch.randn(5), torch.tensor([1, 2]))
    raises(RuntimeError, r"weight tensor should be defined either for all 5 classes.*\[4\]",
           ce, x, target, weight[:4], state=state)
    raises(RuntimeError, "expected weight to have the dtype of input", ce, x, target,
           weight.double(), state=state)
    raises(RuntimeError, "expected target on the device of input", ce, x, target.to("meta"),
           state=state)
    raises(RuntimeError, "expected weight on the device of input", ce, x, target, weight.to("meta"),
           state=state)
    raises(RuntimeError, "label_smoothing must be between 0.0 and 1.0. Got: 1.5",
           ce, x, target, label_smoothing=1.5, state=state)
    raises(ValueError, "avg is not a valid value for reduction", ce, x, target, reduction="avg",
           state=state)
    raises(RuntimeError, "0-D", ce, torch.tensor(1.0), torch.tensor(0))
    raises(RuntimeError, "floating-point dtype", ce, x.long(), target)
    raises(TypeError, "expected target to be a Tensor", ce, x, [1, 2, 4])
    raises(RuntimeError, "not differentiable with respect to argument 'weight'",
           ce, x, target, weight.clone().requires_grad_(), state=state)
    # the ops validate too (direct calls bypass fastops.functional)
    op = fastops.ops.cross_entropy
    raises(RuntimeError, "reduction must be 'none', 'mean' or 'sum'", op, x, target, None, "avg",
           -100, 0.0)
    raises(RuntimeError, r"expected a class-index target of shape \[3\]", op, x, target[:2], None,
           "mean", -100, 0.0)
    raises(RuntimeError, r"expected weight of shape \[5\]", op, x, target, weight[:2], "mean", -100,
           0.0)
    raises(RuntimeError, "expected logits of shape", op, x[0], target[0], None, "mean", -100, 0.0)
    raises(RuntimeError, "label_smoothing must be between", op, x, target, None, "mean", -100, 2.0)


# ---------------------------------------------------------------- fused linear + cross-entropy

TORCH_LCE = hasattr(TF, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyLoss")
requires_torch_lce = pytest.mark.skipif(not TORCH_LCE,
                                        reason="torch has no linear_cross_entropy (< 2.13)")


def make_linear(rows, hidden, classes, bias=True, device="cpu", dtype=torch.float32, seed=3,
                out_features=()):
    g = generator(seed)
    x = torch.randn(*rows, hidden, generator=g).to(device, dtype).requires_grad_()
    w = ((torch.randn(classes, *out_features, hidden, generator=g) * 2 / hidden**0.5)
         .to(device, dtype).requires_grad_())
    b = (torch.randn(classes, *out_features, generator=g).to(device, dtype).requires_grad_()
         if bias else None)
    return x, w, b


LINEAR_SHAPES = [((7,), 9, 10), ((), 5, 6), ((1,), 3, 1), ((0,), 4, 5), ((13,), 33, 129)]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("rows,hidden,classes", LINEAR_SHAPES, ids=str)
@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", ""])
@pytest.mark.parametrize("reduction,label_smoothing,weighted",
                         [("mean", 0.0, False), ("sum", 0.2, True), ("none", 0.1, False),
                          ("mean", 0.3, True)])
def test_linear_parity(device, dtype, rows, hidden, classes, prob, bias, reduction, label_smoothing,
                       weighted):
    x, w, b = make_linear(rows, hidden, classes, bias, device, dtype)
    target = make_target((*rows, classes) if rows else (classes,), prob, device, dtype)
    weight = make_weight(classes, device, dtype) if weighted else None
    options = dict(reduction=reduction, label_smoothing=label_smoothing)
    assert_same_forward_backward(
        lambda x, w, b, t: F.linear_cross_entropy(x, w, t, linear_bias=b, weight=weight, **options),
        lambda x, w, b, t: linear_reference(x, w, b, t, weight, **options),
        [x, w, b, target], dtype, scale=2 + hidden / 16)


# rows, hidden, classes, out_features: odd sizes, vector input, empty batch, K-dimensional loss
TORCH_LCE_SHAPES = [((7,), 9, 10, ()), ((), 5, 6, ()), ((1,), 3, 1, ()), ((0,), 4, 5, ()),
                    ((13,), 33, 129, ()), ((5,), 6, 4, (3,)), ((4,), 7, 3, (2, 3)),
                    ((0,), 3, 4, (2,)), ((3,), 4, 5, (2, 0))]


@requires_torch_lce
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("rows,hidden,classes,out_features", TORCH_LCE_SHAPES, ids=str)
@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", ""])
@pytest.mark.parametrize("reduction,label_smoothing,weighted,ignore_index",
                         [("mean", 0.0, False, None), ("sum", 0.2, True, None),
                          ("none", 0.1, False, 2), ("mean", 0.3, True, 1),
                          ("mean", 0.0, True, -100)])
def test_linear_matches_torch_linear_cross_entropy(dtype, rows, hidden, classes, out_features, prob,
                                                   bias, reduction, label_smoothing, weighted,
                                                   ignore_index):
    x, w, b = make_linear(rows, hidden, classes, bias, dtype=dtype, out_features=out_features)
    logits_shape = (*rows, classes, *out_features) if rows else (classes,)
    target = make_target(logits_shape, prob, dtype=dtype,
                         ignore_index=-100 if ignore_index is None else ignore_index)
    kwargs = dict(weight=make_weight(classes, dtype=dtype) if weighted else None,
                  reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing)
    if prob and ignore_index is not None:  # torch: an error with class probabilities
        with pytest.raises(Exception) as expected:
            TF.linear_cross_entropy(x, w, target, linear_bias=b, **kwargs)
        with pytest.raises(expected.type):
            F.linear_cross_entropy(x, w, target, linear_bias=b, **kwargs)
        return
    assert_same_forward_backward(
        lambda x, w, b, t: F.linear_cross_entropy(x, w, t, linear_bias=b, **kwargs),
        lambda x, w, b, t: TF.linear_cross_entropy(x, w, t, linear_bias=b, **kwargs),
        [x, w, b, target], dtype, scale=2 + hidden / 16)


@requires_torch_lce
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_options_change_nothing_and_match_torch_chunked_path(reduction):
    # torch's chunked path (options given): int64 class indices, no label smoothing
    x, w, b = make_linear((37,), 8, 50)
    target = make_target((37, 50), False)
    weight = make_weight(50)
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=8)
    kwargs = dict(linear_bias=b, weight=weight, reduction=reduction)
    assert_same_forward_backward(
        lambda x, w: F.linear_cross_entropy(x, w, target, options=options, **kwargs),
        lambda x, w: TF.linear_cross_entropy(x, w, target, options=options, **kwargs),
        [x, w], scale=2)
    assert_same_forward_backward(
        lambda x, w: F.linear_cross_entropy(x, w, target, options=options, **kwargs),
        lambda x, w: F.linear_cross_entropy(x, w, target, **kwargs), [x, w], scale=0)


def _bare_signature(fn):
    """Names, kinds (positional / keyword-only) and defaults, without annotations."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@requires_torch_lce
def test_linear_signatures_are_torchs():
    assert _bare_signature(F.linear_cross_entropy) == _bare_signature(TF.linear_cross_entropy)
    assert _bare_signature(fastops.nn.LinearCrossEntropyLoss) == \
        _bare_signature(torch.nn.LinearCrossEntropyLoss)
    assert _bare_signature(fastops.nn.LinearCrossEntropyLoss.forward) == \
        _bare_signature(torch.nn.LinearCrossEntropyLoss.forward)
    assert issubclass(fastops.nn.LinearCrossEntropyLoss, torch.nn.LinearCrossEntropyLoss)


LCE_MODULE_CASES = [  # constructor keywords beyond (in_features, num_classes), forward shapes
    dict(),
    dict(bias=True, weight="weight", label_smoothing=0.1),
    dict(bias=True, reduction="sum", ignore_index=2),
    dict(reduction="none", weight="weight"),
    dict(out_features=(3,), bias=True, weight="weight", label_smoothing=0.2),
    dict(out_features=(2, 3), reduction="none", ignore_index=0),
]


def _module_kwargs(case, classes):
    return {k: make_weight(classes) if v == "weight" else v for k, v in case.items()}


@requires_torch_lce
@pytest.mark.parametrize("case", LCE_MODULE_CASES, ids=str)
@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("rows", [(5,), ()], ids=["batch", "vector"])
def test_linear_module_matches_torch_module(case, prob, rows):
    out_features = case.get("out_features", ())
    kwargs = _module_kwargs(case, 4)
    torch.manual_seed(0)
    theirs = torch.nn.LinearCrossEntropyLoss(6, 4, **kwargs)
    torch.manual_seed(0)
    ours = fastops.nn.LinearCrossEntropyLoss(6, 4, **kwargs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name  # same initialisation
    assert repr(ours) == repr(theirs)
    x = make_linear(rows, 6, 4)[0]
    target = make_target((*rows, 4, *out_features) if rows else (4,), prob,
                         ignore_index=case.get("ignore_index", -100))
    if prob and "ignore_index" in case or out_features and not rows:
        # ignore_index with probabilities, a K-dimensional loss of a vector: errors in both
        for module in (theirs, ours):
            with pytest.raises(RuntimeError,
                               match="ignore_index cannot be specified|batched input"):
                module(x, target)
        return
    assert_same_forward_backward(ours, theirs, [x, target])
    # and the parameters' gradients
    ours(x, target).sum().backward()
    theirs(x, target).sum().backward()
    for mine, other in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert_close(mine.grad, other.grad)


@requires_torch_lce
def test_linear_module_state_dict_loads_both_ways_with_torchs():
    torch.manual_seed(0)
    theirs = torch.nn.LinearCrossEntropyLoss(6, 4, out_features=(2,), bias=True,
                                             weight=make_weight(4))
    torch.manual_seed(1)
    ours = fastops.nn.LinearCrossEntropyLoss(6, 4, out_features=(2,), bias=True,
                                             weight=make_weight(4, seed=5))
    assert set(ours.state_dict()) == {"weight", "linear.weight", "linear.bias"}
    ours.load_state_dict(theirs.state_dict())
    x, target = make_linear((5,), 6, 4)[0], torch.tensor([[0, 3], [1, 2], [3, 3], [2, 0], [1, 1]])
    assert_same_forward_backward(ours, theirs, [x, target])
    torch.manual_seed(2)
    other = fastops.nn.LinearCrossEntropyLoss(6, 4, out_features=(2,), bias=True,
                                              weight=make_weight(4, seed=6))
    theirs.load_state_dict(other.state_dict())
    assert_same_forward_backward(other, theirs, [x, target])
    # a plain Linear head's checkpoint is the `linear` submodule's
    head = torch.nn.Linear(6, 8)
    ours.linear.load_state_dict(head.state_dict())
    assert torch.equal(ours.linear.weight, head.weight)


def test_linear_module_state_dict_and_compile():
    torch.manual_seed(0)
    ours = fastops.nn.LinearCrossEntropyLoss(6, 4, bias=True, weight=make_weight(4),
                                             label_smoothing=0.1)
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 4)
    assert_close(ours.linear.weight, head.weight)  # nn.Linear's initialisation from the same seed
    assert_close(ours.linear.bias, head.bias)
    assert set(ours.state_dict()) == {"weight", "linear.weight", "linear.bias"}
    x, target = make_linear((5,), 6, 4)[0], torch.tensor([0, 3, 1, 2, 3])
    loss = torch.nn.CrossEntropyLoss(weight=ours.weight, label_smoothing=0.1)
    assert_same_forward_backward(ours, lambda x, t: loss(head(x), t), [x, target])
    assert "num_classes=4" in repr(ours) and "out_features=()" in repr(ours)
    compiled = compile_fullgraph(ours)
    assert_same_forward_backward(compiled, ours, [x, target])
    kdim = fastops.nn.LinearCrossEntropyLoss(6, 4, out_features=(2,), bias=True)
    compiled = compile_fullgraph(kdim)
    assert_same_forward_backward(compiled, kdim,
                                 [x, torch.tensor([[0, 3], [1, 2], [3, 3], [2, 0], [1, 1]])])


_FALLBACK_SCRIPT = r"""
import torch
theirs_cls = torch.nn.LinearCrossEntropyLoss
del torch.nn.LinearCrossEntropyLoss  # what torch < 2.13 looks like
del torch.nn.LinearCrossEntropyOptions
import fastops
from fastops.nn.cross_entropy import _LinearCrossEntropyLossBase
cls = fastops.nn.LinearCrossEntropyLoss
assert cls.__mro__[1] is _LinearCrossEntropyLossBase, cls.__mro__
for kwargs in [dict(),
               dict(bias=True, weight=torch.rand(4) + 0.1, label_smoothing=0.1, reduction="sum"),
               dict(out_features=(2, 3), bias=True, ignore_index=1, reduction="none")]:
    torch.manual_seed(0)
    theirs = theirs_cls(6, 4, **kwargs)
    torch.manual_seed(0)
    ours = cls(6, 4, **kwargs)
    assert repr(ours) == repr(theirs), (repr(ours), repr(theirs))
    assert vars(ours).keys() == vars(theirs).keys()
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 6)
    target = torch.randint(0, 4, (5, *kwargs.get("out_features", ())))
    torch.testing.assert_close(ours(x, target), theirs(x, target))
loss = fastops.convert(theirs_cls(6, 4), verbose=False)  # nothing to swap: left alone
assert type(loss) is theirs_cls
try:
    cls(6, 4, options=object())
except TypeError as error:
    assert "LinearCrossEntropyOptions" in str(error)
else:
    raise AssertionError("options accepted")
print("fallback ok")
"""


@requires_torch_lce  # compares with torch's module
def test_linear_module_without_torchs_module_has_the_same_attributes_and_state():
    # a fresh interpreter in which torch.nn has no LinearCrossEntropyLoss (torch < 2.13)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0 and "fallback ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_linear_k_dimensional_loss(prob, reduction):
    # also without torch's linear_cross_entropy: against linear + cross_entropy in float64
    x, w, b = make_linear((5,), 6, 4, out_features=(3, 2))
    target = make_target((5, 4, 3, 2), prob)
    weight = make_weight(4)

    def reference(x, w, b, t):
        logits = TF.linear(x.double(), w.double().reshape(24, 6),
                           b.double().reshape(24)).reshape(5, 4, 3, 2)
        t64 = t.double() if prob else t
        return TF.cross_entropy(logits, t64, weight.double(), reduction=reduction,
                                label_smoothing=0.1).float()

    assert_same_forward_backward(
        lambda x, w, b, t: F.linear_cross_entropy(x, w, t, linear_bias=b, weight=weight,
                                                  reduction=reduction, label_smoothing=0.1),
        reference, [x, w, b, target], scale=2)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "mkldnn disabled"])
def test_linear_large_float32_products(onednn, monkeypatch):
    # 65 x 513 x 1025 >= 2^25 multiply-adds per GEMM: the CPU kernel routes them to oneDNN, or to
    # ATen's addmm / mm when torch.backends.mkldnn is disabled.
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", onednn)
    x, w, b = make_linear((65,), 513, 1025, True)
    target = make_target((65, 1025), False)
    assert_same_forward_backward(
        lambda x, w, b: F.linear_cross_entropy(x, w, target, linear_bias=b),
        lambda x, w, b: linear_reference(x, w, b, target), [x, w, b], scale=2 + 513 / 16)


@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
def test_linear_several_chunks_and_33000_classes(prob):
    # 300 rows of 33000 logits: the CPU kernel handles them in two chunks of rows (254 + 46)
    x, w, b = make_linear((300,), 3, 33000)
    target = make_target((300, 33000), prob)
    assert_same_forward_backward(
        lambda x, w, b, t: F.linear_cross_entropy(x, w, t, linear_bias=b, label_smoothing=0.1),
        lambda x, w, b, t: linear_reference(x, w, b, t, label_smoothing=0.1), [x, w, b, target],
        scale=20)


def test_linear_keeps_no_logits_for_backward():
    x, w, b = make_linear((256,), 32, 2000)
    target = make_target((256, 2000), False)
    lce = lambda x, w, b, t: F.linear_cross_entropy(x, w, t, linear_bias=b)  # noqa: E731
    _, ours = fastops.saved_tensor_bytes(lce, x, w, b, target)
    _, theirs = fastops.saved_tensor_bytes(lambda *a: TF.cross_entropy(TF.linear(*a[:3]), a[3]),
                                           x, w, b, target)
    parameters = (x.numel() + w.numel() + b.numel()) * 4
    # a reduced loss: the gradients of x, w and b, which its forward computed
    assert ours == parameters
    assert theirs >= (x.numel() + w.numel()) * 4 + 256 * 2000 * 4  # x, weight, log_softmax
    # a per-row loss: x, w, b, the target, the log-sum-exp and total_weight
    _, per_row = fastops.saved_tensor_bytes(
        lambda *a: F.linear_cross_entropy(*a[:2], a[3], linear_bias=a[2], reduction="none"),
        x, w, b, target)
    assert per_row == parameters + target.numel() * 8 + 256 * 4 + 4


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("needs_grad", [(True, True, True), (True, False, False),
                                        (False, True, False), (False, False, True)],
                         ids=["all", "input", "weight", "bias"])
def test_linear_gradients_from_the_forward_scale_with_grad_loss(reduction, needs_grad):
    # the forward of a reduced loss computes the gradients for grad_loss = 1; backward scales
    # them, as new tensors each time (retain_graph: a second backward gets the same values)
    x, w, b = (t.detach().requires_grad_(needed)
               for t, needed in zip(make_linear((37,), 5, 11), needs_grad, strict=True))
    target = make_target((37, 11), False)
    target[3] = -100
    weight = make_weight(11)
    loss = F.linear_cross_entropy(x, w, target, linear_bias=b, weight=weight, reduction=reduction,
                                  label_smoothing=0.1)
    want = linear_reference(x, w, b, target, weight=weight, reduction=reduction,
                            label_smoothing=0.1)
    assert_close(loss, want)
    wanted = [t for t in (x, w, b) if t.requires_grad]
    grad = torch.tensor(-2.5)
    first = torch.autograd.grad(loss, wanted, grad, retain_graph=True)
    second = torch.autograd.grad(loss, wanted, grad)
    for got, again, expected in zip(first, second, torch.autograd.grad(want, wanted, grad),
                                    strict=True):
        assert_close(got, expected)
        assert torch.equal(got, again) and got.data_ptr() != again.data_ptr()


def test_linear_gradcheck_and_opcheck():
    x, w, b = make_linear((4,), 3, 5, dtype=torch.float64)
    index, prob = make_target((4, 5), False), make_target((4, 5), True, dtype=torch.float64)
    weight = make_weight(5, dtype=torch.float64)
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda *a: fastops.ops.linear_cross_entropy(*a[:3], index, weight, reduction, -100,
                                                        0.2)[0],
            (x, w, b))
        assert torch.autograd.gradcheck(
            lambda *a: fastops.ops.linear_cross_entropy(*a[:3], a[3], None, reduction, -100,
                                                        0.1)[0],
            (x, w, b, prob))
    x32, w32, b32 = make_linear((4,), 3, 5)
    for target in (index, prob.float().detach().requires_grad_()):
        for bias in (b32, None):
            torch.library.opcheck(fastops.ops.linear_cross_entropy.default,
                                  (x32, w32, bias, target, None, "mean", -100, 0.1))
            torch.library.opcheck(  # not differentiable itself: what autograd runs
                fastops.ops.linear_cross_entropy_with_grad.default,
                (x32.detach(), w32.detach(), None if bias is None else bias.detach(),
                 target.detach(), None, "sum", -100, 0.1, [True, True, bias is not None]))
    # the K-dimensional loss: one op call per position, differentiable as a whole
    x, w, b = make_linear((3,), 2, 3, dtype=torch.float64, out_features=(2,))
    target = make_target((3, 3, 2), False)
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda x, w, b: F.linear_cross_entropy(x, w, target, linear_bias=b, weight=weight[:3],
                                                   reduction=reduction, label_smoothing=0.1),
            (x, w, b))


def test_linear_bad_input():
    x, w, b = make_linear((3,), 4, 5)
    target = torch.tensor([0, 4, 1])
    state = (x, w, b)
    lce = F.linear_cross_entropy

    def call(x, w, b, t, **kwargs):
        return lce(x, w, t, linear_bias=b, **kwargs)

    raises(RuntimeError, "input.shape\\[-1\\] is 3, linear_weight expects in_features = 4", call,
           x[:, :3], w, b, target, state=state)
    raises(RuntimeError, "expected linear_weight to have the dtype of input", call, x, w.double(),
           b, target, state=state)
    raises(RuntimeError, "expected linear_weight of shape \\(C, H\\) or", call, x, w[0], None,
           target, state=state)
    raises(RuntimeError, r"expected linear_bias of shape \[5\]", call, x, w, b[:4], target,
           state=state)
    raises(RuntimeError, r"expected linear_bias of shape \[5, 1\]", call, x, w[:, None], b,
           target[:, None], state=state)
    raises(RuntimeError, "expected input of shape \\(N, H\\)", call, x[None], w, b, target,
           state=state)
    raises(RuntimeError, "K-dimensional loss .* needs batched input", call, x[0], w[:, None],
           b[:, None], target[0], state=state)
    raises(IndexError, "Target 5 is out of bounds", call, x, w, b, torch.tensor([0, 5, 1]),
           state=state)
    raises(ValueError, "to match target batch_size", call, x, w, b, target[:2], state=state)
    raises(RuntimeError, "expected target to have the dtype of input", call, x, w, b,
           torch.rand(3, 5, dtype=torch.float64), state=state)
    raises(RuntimeError, "ignore_index cannot be specified when target contains probabilities",
           call, x, w, b, torch.rand(3, 5), ignore_index=-100, state=state)
    raises(RuntimeError, r"Expected target size \[3, 2\], got \[3\]", call, x,
           torch.stack([w, w], 1), None, target, state=state)
    raises(ValueError, "avg is not a valid value for reduction", call, x, w, b, target,
           reduction="avg", state=state)
    raises(TypeError,
           "expected options to be None or a torch.nn.LinearCrossEntropyOptions, got dict", call,
           x, w, b, target, options={"batch_chunk_size": 2}, state=state)
    # torch's keyword-only bias
    raises(TypeError, "takes 3 positional arguments", lce, x, w, b, target)
    # the module fails at construction
    module = fastops.nn.LinearCrossEntropyLoss
    raises(ValueError, "avg is not a valid value for reduction", module, 3, 2, reduction="avg")
    raises(TypeError, "expected options to be None", module, 3, 2, options="chunked")
    raises(RuntimeError, r"expected weight shape to be \(2,\)", module, 3, 2, weight=torch.ones(3))
    raises(RuntimeError, "expected label_smoothing to be in range", module, 3, 2,
           label_smoothing=2.0)


# ----------------------------------------------------------- Triton kernels (interpreter on CPU)

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape,layout", [((5, 10), "contiguous"), ((3, 37), "transposed"),
                                          ((2, 5, 6), "contiguous"),
                                          ((2, 3, 2, 3), "channels_last"), ((4,), "vector")],
                         ids=str)
@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("reduction,label_smoothing,weighted",
                         [("mean", 0.0, False), ("none", 0.2, True), ("sum", 0.1, False),
                          ("mean", 0.3, True)])
def test_triton_launchers_match_torch(shape, layout, prob, reduction, label_smoothing, weighted):
    from fastops.triton_kernels.cross_entropy import cross_entropy_backward, cross_entropy_forward

    x = make_logits(shape, TRITON_DEVICE).detach()
    if layout == "transposed":
        x = x.t().contiguous().t()
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    target = make_target(shape, prob, TRITON_DEVICE).detach()
    if len(shape) == 1:
        x, target = x[None], target[None] if prob else target.reshape(1)
    classes = x.shape[1]
    weight = make_weight(classes, TRITON_DEVICE) if weighted else None
    options = dict(reduction=reduction, label_smoothing=label_smoothing)
    loss, lse, total_weight = cross_entropy_forward(x, target, weight, reduction, -100,
                                                    label_smoothing)
    assert_close(lse, torch.logsumexp(x, 1))
    x.requires_grad_()
    target.requires_grad_(prob)
    want = reference(x, target, weight, **options)
    assert_close(loss, want.detach())
    grad = torch.randn_like(want)
    wanted = [x, target] if prob else [x]
    want_grads = torch.autograd.grad(want, wanted, grad)
    grad_x, grad_target = cross_entropy_backward(grad, x.detach(), target.detach(), weight, lse,
                                                 total_weight, reduction, -100, label_smoothing,
                                                 [True, prob])
    assert_close(grad_x, want_grads[0])
    if prob:
        assert_close(grad_target, want_grads[1])
    else:
        assert grad_target.numel() == 0


@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_triton_linear_launchers_match_torch(monkeypatch, prob, reduction):
    from fastops.triton_kernels import cross_entropy as kernels

    monkeypatch.setattr(kernels, "_LINEAR_CHUNK_ELEMENTS", 40)  # 3 rows per chunk: 3 chunks
    x, w, b = make_linear((7,), 6, 13, device=TRITON_DEVICE)
    target = make_target((7, 13), prob, TRITON_DEVICE)
    options = dict(reduction=reduction, label_smoothing=0.1)
    loss, lse, total_weight = kernels.linear_cross_entropy_forward(
        x.detach(), w.detach(), b.detach(), target.detach(), None, reduction, -100, 0.1)
    want = linear_reference(x, w, b, target, **options)
    assert_close(loss, want.detach())
    grad = torch.randn_like(want)
    wanted = [x, w, b, target] if prob else [x, w, b]
    want_grads = torch.autograd.grad(want, wanted, grad)
    grads = kernels.linear_cross_entropy_backward(
        grad, x.detach(), w.detach(), b.detach(), target.detach(), None, lse, total_weight,
        reduction, -100, 0.1, [True, True, True, prob])
    for got, expected in zip(grads, want_grads, strict=False):
        assert_close(got, expected, scale=2)


@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_elements", [40, 1 << 25], ids=["3 chunks", "1 chunk"])
def test_triton_linear_with_grad_launcher_matches_torch(monkeypatch, prob, reduction,
                                                        chunk_elements):
    from fastops.triton_kernels import cross_entropy as kernels

    monkeypatch.setattr(kernels, "_LINEAR_CHUNK_ELEMENTS", chunk_elements)
    x, w, b = make_linear((7,), 6, 13, device=TRITON_DEVICE)
    target = make_target((7, 13), prob, TRITON_DEVICE)
    if not prob:
        target[2] = -100
    weight = make_weight(13, device=TRITON_DEVICE)
    options = dict(weight=weight, reduction=reduction, label_smoothing=0.1)
    want = linear_reference(x, w, b, target, **options)
    want_grads = torch.autograd.grad(want, [x, w, b])
    loss, lse, total_weight, *grads = kernels.linear_cross_entropy_with_grad(
        x.detach(), w.detach(), b.detach(), target, weight, reduction, -100, 0.1,
        [True, True, True])
    assert_close(loss, want.detach())
    _, want_lse, want_total_weight = kernels.linear_cross_entropy_forward(
        x.detach(), w.detach(), b.detach(), target, weight, reduction, -100, 0.1)
    assert_close(lse, want_lse) and assert_close(total_weight, want_total_weight)
    for got, expected in zip(grads, want_grads, strict=True):
        assert_close(got, expected, scale=2)
    only_bias = kernels.linear_cross_entropy_with_grad(
        x.detach(), w.detach(), b.detach(), target, weight, reduction, -100, 0.1,
        [False, False, True])[3:]
    assert [g.numel() for g in only_bias[:2]] == [0, 0]
    assert_close(only_bias[2], want_grads[2], scale=2)


# ------------------------------------ numerics: NaN, infinities, large logits (CPU and Triton)

NAN, INF = float("nan"), float("inf")
BACKENDS = ["cpu", "triton"]  # fastops' ops on CPU tensors; the Triton launchers (interpreter)


class _TritonCrossEntropy(torch.autograd.Function):
    """cross_entropy through the Triton launchers (as fastops.functional on CUDA tensors)."""

    @staticmethod
    def forward(ctx, x, target, weight, reduction, ignore_index, label_smoothing):
        from fastops.triton_kernels.cross_entropy import cross_entropy_forward

        loss, lse, total_weight = cross_entropy_forward(x, target, weight, reduction, ignore_index,
                                                        label_smoothing)
        ctx.save_for_backward(x, target, weight, lse, total_weight)
        ctx.options = (reduction, ignore_index, label_smoothing)
        return loss

    @staticmethod
    def backward(ctx, grad):
        from fastops.triton_kernels.cross_entropy import cross_entropy_backward

        x, target, weight, lse, total_weight = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:2])
        grad_x, grad_target = cross_entropy_backward(grad, x, target, weight, lse, total_weight,
                                                     *ctx.options, mask)
        return (grad_x if mask[0] else None, grad_target if mask[1] else None, None, None, None,
                None)


class _TritonLinearCrossEntropy(torch.autograd.Function):
    """linear_cross_entropy through the Triton launchers."""

    @staticmethod
    def forward(ctx, x, w, b, target, weight, reduction, ignore_index, label_smoothing,
                loss_dtype):
        from fastops.triton_kernels.cross_entropy import linear_cross_entropy_forward

        loss, lse, total_weight = linear_cross_entropy_forward(
            x, w, b, target, weight, reduction, ignore_index, label_smoothing, loss_dtype)
        ctx.save_for_backward(x, w, b, target, weight, lse, total_weight)
        ctx.options = (reduction, ignore_index, label_smoothing)
        ctx.loss_dtype = loss_dtype
        return loss

    @staticmethod
    def backward(ctx, grad):
        from fastops.triton_kernels.cross_entropy import linear_cross_entropy_backward

        x, w, b, target, weight, lse, total_weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[i] for i in range(4)]
        grads = linear_cross_entropy_backward(grad, x, w, b, target, weight, lse, total_weight,
                                              *ctx.options, mask, ctx.loss_dtype)
        return (*(g if needed else None for g, needed in zip(grads, mask, strict=True)),
                None, None, None, None, None)


def loss_on(backend):
    """F.cross_entropy's [N, C] call on ``backend``: (input, target, weight=None, *,
    ignore_index, reduction, label_smoothing)."""
    if backend == "cpu":
        return F.cross_entropy

    def triton_loss(x, target, weight=None, ignore_index=-100, reduction="mean",
                    label_smoothing=0.0):
        return _TritonCrossEntropy.apply(x, target, weight, reduction, ignore_index,
                                         label_smoothing)
    return triton_loss


def linear_loss_on(backend):
    """F.linear_cross_entropy's [N, H] call on ``backend``."""
    if backend == "cpu":
        return F.linear_cross_entropy

    def triton_loss(x, w, target, linear_bias=None, weight=None, reduction="mean",
                    label_smoothing=0.0):
        return _TritonLinearCrossEntropy.apply(x, w, linear_bias, target, weight, reduction, -100,
                                               label_smoothing, None)
    return triton_loss


def device_of(backend):
    return "cpu" if backend == "cpu" else TRITON_DEVICE


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("classes", [1, 10, 16, 17, 40, 1500])  # short (CPU row blocks), long
@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_nan_logit_gives_nan_like_torch(backend, classes, prob, label_smoothing):
    device = device_of(backend)
    x = make_logits((8, classes), device).detach()
    x[1, classes // 2] = NAN  # a counted row
    x[3, 0] = NAN  # ignored for class indices (every third row), counted for probabilities
    x[4] = NAN
    x.requires_grad_()
    target = make_target((8, classes), prob, device)
    weight = make_weight(classes, device)
    for reduction in ("none", "mean"):
        options = dict(reduction=reduction, label_smoothing=label_smoothing)
        loss = loss_on(backend)(x, target, weight, **options)
        assert loss[[1, 4]].isnan().all() if reduction == "none" else loss.isnan()
        # torch's gradient is NaN in the rows of a NaN, ignored ones too, and nowhere else
        assert_same_forward_backward(lambda x, t: loss_on(backend)(x, t, weight, **options),
                                     lambda x, t: reference(x, t, weight, **options), [x, target],
                                     scale=1 + classes / 256)


def large_logits(classes, big, dtype, device):
    """Rows of large, close logits: two tied at big (the rest 0), big plus a few ulps each, two
    tied at -big with the rest far below, and an ordinary row."""
    ulp = (torch.nextafter(torch.tensor(big, dtype=dtype), torch.tensor(INF, dtype=dtype))
           - big).item()
    x = torch.zeros(4, classes, dtype=dtype)
    x[0, :2] = big
    x[1] = big + ulp * (torch.arange(classes, dtype=dtype) % 5)
    x[2] = -2 * big
    x[2, :2] = -big
    x[3] = torch.randn(classes, generator=generator(0), dtype=dtype)
    return x.to(device).requires_grad_()


# The Triton kernels compute in float32 (float64 is no CUDA dtype of fastops): 1e30 is CPU only.
@pytest.mark.parametrize("backend,dtype,big", [
    (backend, dtype, big) for backend in BACKENDS
    for dtype, big in [(torch.float32, 1e7), (torch.float32, 1e8), (torch.float64, 1e30)]
    if backend == "cpu" or dtype != torch.float64], ids=str)
@pytest.mark.parametrize("classes", [3, 40, 1500])
@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_large_logits_keep_their_precision(backend, dtype, big, classes, prob, label_smoothing):
    device = device_of(backend)
    x = large_logits(classes, big, dtype, device)
    target = (make_target((4, classes), True, device, dtype) if prob
              else torch.tensor([0, 1, 0, 2 % classes], device=device))
    options = dict(reduction="none", label_smoothing=label_smoothing)
    loss = loss_on(backend)(x, target, **options)
    if not prob and label_smoothing == 0.0:
        assert loss[0].item() == pytest.approx(math.log(2), rel=1e-6)  # not 1.0, nor 0.0
    grad, = torch.autograd.grad(loss.sum(), x)
    assert grad.sum(1).abs().max() < 1e-6  # the softmax still sums to 1
    assert_same_forward_backward(lambda x, t: loss_on(backend)(x, t, **options),
                                 lambda x, t: reference(x, t, **options), [x, target], dtype,
                                 scale=1 + classes / 256)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
def test_linear_large_logits_keep_their_precision(backend, prob):
    device = device_of(backend)
    g = generator(4)
    # small integers: the logits are exact integers near 1e7 in float32 as in float64
    x = torch.randint(-2, 3, (5, 4), generator=g).float().to(device).requires_grad_()
    w = torch.randint(-2, 3, (6, 4), generator=g).float().to(device).requires_grad_()
    b = torch.tensor([1e7, 1e7, 1e7 - 3, 0.0, -1e7, 1e7 + 2], device=device).requires_grad_()
    target = make_target((5, 6), prob, device)
    fn = linear_loss_on(backend)
    for options in (dict(reduction="none"), dict(reduction="mean", label_smoothing=0.1)):
        assert_same_forward_backward(
            lambda x, w, b, t: fn(x, w, t, linear_bias=b, **options),
            lambda x, w, b, t: linear_reference(x, w, b, t, **options), [x, w, b, target],
            scale=2)
    logits = TF.linear(x, w, b).detach()
    if not prob:
        loss = fn(x, w, torch.tensor([0, 1, 2, 3, 4], device=device), linear_bias=b,
                  reduction="none")
        assert_close(loss, TF.cross_entropy(logits, torch.arange(5, device=device),
                                            reduction="none"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("classes", [3, 1500])
@pytest.mark.parametrize("weighted", [False, True], ids=["", "weight"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_non_finite_probability_targets_like_torch(backend, classes, weighted, label_smoothing):
    device = device_of(backend)
    x = make_logits((8, classes), device).detach()
    x[5, 1:] = -1e4  # log_softmax exactly 0 at class 0: inf * 0 is NaN in torch's sum
    x.requires_grad_()
    target = make_target((8, classes), True, device).detach()
    target[0, 0] = INF
    target[1, classes - 1] = INF
    target[2, 0] = -INF
    target[3, 1 % classes] = NAN
    target[4, 0], target[4, 1] = INF, -INF
    target[5, 0] = INF
    target.requires_grad_()
    weight = make_weight(classes, device) if weighted else None
    for reduction in ("none", "mean", "sum"):
        options = dict(reduction=reduction, label_smoothing=label_smoothing)
        loss = loss_on(backend)(x, target, weight, **options)
        expected = reference(x, target, weight, **options)
        if reduction == "none":  # inf, inf, -inf, NaN, NaN, NaN, finite, finite
            assert loss[:2].isposinf().all() and loss[2].isneginf() and loss[3:6].isnan().all()
        assert_same_forward_backward(lambda x, t: loss_on(backend)(x, t, weight, **options),
                                     lambda x, t: reference(x, t, weight, **options),
                                     [x, target], scale=1 + classes / 256)
        assert_close(loss, expected.detach())


@pytest.mark.parametrize("classes", [10, 40], ids=["short rows", "long rows"])
@pytest.mark.parametrize("weighted", [False, True], ids=["", "weight"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_backward_checks_class_indices(classes, weighted, label_smoothing):
    # the raw backward ops read the class weight and the logit of each target: a target out of
    # range raises torch's IndexError there too, not only in the forward (no bad read)
    x = make_logits((4, classes)).detach()
    weight = make_weight(classes) if weighted else None
    target = torch.tensor([0, 1, 2, 3])
    ignore = classes + 5  # out of [0, C): not a class index, and fine
    loss, lse, total_weight = fastops.ops.cross_entropy(x, target, weight, "mean", ignore,
                                                        label_smoothing)
    xl, w, b = (t.detach() for t in make_linear((4,), 3, classes))
    _, linear_lse, linear_total = fastops.ops.linear_cross_entropy(xl, w, b, target, weight,
                                                                   "mean", ignore, label_smoothing)
    grad = torch.ones(())

    def backward(target):
        return fastops.ops.cross_entropy_backward(grad, x, target, weight, lse, total_weight,
                                                  "mean", ignore, label_smoothing, [True, False])

    def linear_backward(target):
        return fastops.ops.linear_cross_entropy_backward(
            grad, xl, w, b, target, weight, linear_lse, linear_total, "mean", ignore,
            label_smoothing, [True, True, True, False])

    for bad in (10**12, classes, classes + 2, -1, -(10**12)):
        for fn in (backward, linear_backward):
            raises(IndexError, f"^Target {bad} is out of bounds.$", fn,
                   torch.tensor([0, 1, 2, bad]))
    ignored = backward(torch.tensor([0, 1, 2, ignore]))[0]
    assert torch.equal(ignored[3], torch.zeros(classes)) and ignored[:3].isfinite().all()
    assert linear_backward(torch.tensor([0, 1, 2, ignore]))[0].isfinite().all()


@pytest.mark.parametrize("linear", [False, True], ids=["cross_entropy", "linear"])
def test_target_changed_after_forward_raises_in_backward(linear):
    # torch's autograd misses a change made through .data: the backward kernels check (a
    # reduced linear_cross_entropy reads no target in backward: see the next test)
    x, w, b = make_linear((4,), 3, 10)
    logits = make_logits((4, 10))
    target = torch.tensor([0, 1, 2, 3])
    loss = (F.linear_cross_entropy(x, w, target, linear_bias=b, weight=make_weight(10),
                                   reduction="none").sum() if linear
            else F.cross_entropy(logits, target, make_weight(10)))
    target.data[3] = 10**12
    with pytest.raises(IndexError, match="Target 1000000000000 is out of bounds."):
        loss.backward()


def test_linear_reduced_loss_backward_reads_no_target():
    # its gradients come from the forward: a target changed afterwards does not change them
    x, w, b = make_linear((4,), 3, 10)
    target = torch.tensor([0, 1, 2, 3])
    loss = F.linear_cross_entropy(x, w, target, linear_bias=b)
    want = torch.autograd.grad(linear_reference(x, w, b, target.clone()), (x, w, b))
    target.data[3] = 10**12
    for got, expected in zip(torch.autograd.grad(loss, (x, w, b)), want, strict=True):
        assert_close(got, expected)


def test_triton_out_of_range_target_gives_nan_not_a_bad_read():
    from fastops.triton_kernels.cross_entropy import cross_entropy_backward, cross_entropy_forward

    x = make_logits((4, 4), TRITON_DEVICE).detach()
    weight = make_weight(4, TRITON_DEVICE)
    target = torch.tensor([0, 7, -5, 10**12], device=TRITON_DEVICE)
    for label_smoothing in (0.0, 0.1):
        loss, lse, total_weight = cross_entropy_forward(x, target, weight, "none", -100,
                                                        label_smoothing)
        assert not loss[0].isnan() and loss[1:].isnan().all()
        grad_x, _ = cross_entropy_backward(torch.ones(4, device=TRITON_DEVICE), x, target, weight,
                                           lse, total_weight, "none", -100, label_smoothing,
                                           [True, False])
        assert grad_x[0].isfinite().all() and grad_x[1:].isnan().all()


def test_linear_autocast_cpu_computes_the_loss_in_float32_like_torch():
    # torch: Linear in bfloat16, cross_entropy in float32 (the bfloat16 logits cast to float32,
    # the class weight and a probability target kept in float32), a float32 loss
    x, w, b = make_linear((9,), 16, 12)
    weight = make_weight(12)
    for target in (make_target((9, 12), False), make_target((9, 12), True)):
        for reduction in ("mean", "none"):
            options = dict(weight=weight, reduction=reduction, label_smoothing=0.1)

            def ours(x, w, b, t, options=options):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return F.linear_cross_entropy(x, w, t, linear_bias=b, **options)

            def theirs(x, w, b, t, options=options):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return TF.cross_entropy(TF.linear(x, w, b), t, **options)

            assert ours(x, w, b, target).dtype == torch.float32
            # the same bfloat16 logits (up to the GEMMs' rounding), then float32 throughout
            assert_same_forward_backward(ours, theirs, [x, w, b, target], torch.bfloat16)
            if TORCH_LCE:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    want = TF.linear_cross_entropy(x, w, target, linear_bias=b, **options)
                assert want.dtype == torch.float32
                assert_close(ours(x, w, b, target), want, torch.bfloat16)
    # the op's loss_dtype, which the autocast kernel passes: schema, autograd, fake tensors
    xb, wb, bb = (t.detach().bfloat16().requires_grad_() for t in (x, w, b))
    for target in (make_target((9, 12), False), make_target((9, 12), True)):
        torch.library.opcheck(fastops.ops.linear_cross_entropy.default,
                              (xb, wb, bb, target, weight, "mean", -100, 0.1, torch.float32))


def test_triton_linear_launchers_compute_the_loss_in_loss_dtype():
    # what the autocast kernel asks of the CUDA kernels: bfloat16 GEMMs, the loss in float32
    x, w, b = (t.detach().bfloat16().requires_grad_()
               for t in make_linear((7,), 6, 13, device=TRITON_DEVICE))
    target = make_target((7, 13), True, TRITON_DEVICE)
    options = dict(reduction="mean", label_smoothing=0.1)

    def theirs(x, w, b, t):
        return TF.cross_entropy(TF.linear(x, w, b).float(), t, **options)

    assert_same_forward_backward(
        lambda x, w, b, t: _TritonLinearCrossEntropy.apply(x, w, b, t, None, "mean", -100, 0.1,
                                                           torch.float32),
        theirs, [x, w, b, target], torch.bfloat16)


# ---------------------------------------------------------------------------- CUDA (real GPU)

@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
def test_large_rows_match(device, prob):
    shape = (64, 4099)
    x, target, weight = (make_logits(shape, device), make_target(shape, prob, device),
                         make_weight(4099, device))
    assert_same_forward_backward(lambda x, t: F.cross_entropy(x, t, weight, label_smoothing=0.1),
                                 lambda x, t: reference(x, t, weight, label_smoothing=0.1),
                                 [x, target], scale=10)


@requires_cuda
@pytest.mark.cuda
def test_cuda_autocast_runs_in_float32_like_torch():
    x, target = make_logits((8, 100), "cuda"), torch.randint(0, 100, (8,), device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        ours = F.cross_entropy(x.half(), target)
        theirs = TF.cross_entropy(x.half(), target)
    assert ours.dtype == theirs.dtype == torch.float32
    assert_close(ours, theirs)


@requires_cuda
@pytest.mark.cuda
def test_cuda_linear_autocast_computes_the_loss_in_float32_like_torch():
    x, w, b = make_linear((8,), 16, 100, device="cuda")
    target = torch.randint(0, 100, (8,), device="cuda")

    def ours(x, w, b):
        with torch.autocast("cuda", dtype=torch.float16):
            return F.linear_cross_entropy(x, w, target, linear_bias=b, label_smoothing=0.1)

    def theirs(x, w, b):
        with torch.autocast("cuda", dtype=torch.float16):
            return TF.cross_entropy(TF.linear(x, w, b), target, label_smoothing=0.1)

    assert ours(x, w, b).dtype == theirs(x, w, b).dtype == torch.float32
    assert_same_forward_backward(ours, theirs, [x, w, b], torch.float16)
