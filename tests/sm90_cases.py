"""The calls that tests/sm90.py compiles for sm_90: each op's Triton launchers, forward and
backward, in fp32 / fp16 / bf16, at the tutorial shapes and at large shapes. Tensors live on the
CPU and are never read (the compile driver launches nothing), so large shapes cost only address
space; ops that torch computes around a kernel (linear_cross_entropy's GEMMs) get shapes small
enough for the CPU.

``tutorial`` marks the cases whose launch counts are the launch budget (tests/test_sm90.py).
A backward case passes the forward's output as the incoming gradient too: values are never
read, only shapes, strides and dtypes matter.
"""

import dataclasses
import functools
from typing import Callable

import torch
from fastops.triton_kernels import batch_norm, conv2d, cross_entropy, dropout, linear, max_pool2d

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclasses.dataclass
class Case:
    op: str
    name: str
    phase: str        # "forward" or "backward"
    tutorial: bool    # counted in the launch budget
    run: Callable[[], object]


def _e(*shape, dtype=torch.float32, channels_last=False):
    t = torch.empty(shape, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _once(fn):
    """fn's result, computed at the first call: a backward case runs its forward once, so that
    the launches counted on its second call are the backward's alone."""
    return functools.cache(fn)


def _seed():
    return torch.tensor([1234], dtype=torch.int64)


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _linear_cases(dtype):
    d = _dtype_name(dtype)
    shapes = [("mlp fc1 256x784->256", 256, 784, 256, True),
              ("mlp head 256x256->10", 256, 256, 10, True),
              ("4096x1024->1024", 4096, 1024, 1024, False)]
    for label, m, k, n, tutorial in shapes:
        x, w, b = _e(m, k, dtype=dtype), _e(n, k, dtype=dtype), _e(n, dtype=dtype)
        out, g = _e(m, n, dtype=dtype), _e(m, n, dtype=dtype)
        yield Case("linear", f"{label} relu {d}", "forward", tutorial,
                   lambda x=x, w=w, b=b: linear.linear_forward(x, w, b, "relu"))
        yield Case("linear", f"{label} relu {d}", "backward", tutorial,
                   lambda g=g, x=x, w=w, out=out: linear.linear_backward(
                       g, x, w, out, "relu", [True, True, True]))
        # Linear -> ReLU -> Dropout fused (mlp's fc1 / fc2), N % 4 == 0 and not
        for n_drop in (n, n + 3):
            w2, b2 = _e(n_drop, k, dtype=dtype), _e(n_drop, dtype=dtype)
            out2, g2 = _e(m, n_drop, dtype=dtype), _e(m, n_drop, dtype=dtype)
            yield Case("linear", f"{label} relu+dropout N={n_drop} {d}", "forward", False,
                       lambda x=x, w2=w2, b2=b2: linear.linear_forward(
                           x, w2, b2, "relu", _seed(), 0.2))
            yield Case("linear", f"{label} relu+dropout N={n_drop} {d}", "backward", False,
                       lambda g2=g2, x=x, w2=w2, out2=out2: linear.linear_backward(
                           g2, x, w2, out2, "relu", [True, True, True], _seed(), 0.2))


def _dropout_cases(dtype):
    d = _dtype_name(dtype)
    shapes = [("256x256", (256, 256), 1, True), ("16Mi", (4096, 4096), 1, False),
              ("dropout2d 64x16x32x32", (64, 16, 32, 32), 1024, False)]
    for label, shape, channel, tutorial in shapes:
        x = _e(*shape, dtype=dtype)
        yield Case("dropout", f"{label} {d}", "forward", tutorial,
                   lambda x=x, channel=channel: dropout.dropout_forward(x, _seed(), 0.5, channel))
        yield Case("dropout", f"{label} inplace {d}", "forward", False,
                   lambda x=x, channel=channel: dropout.dropout_inplace(x, _seed(), 0.5, channel))


def _max_pool2d_cases(dtype):
    d = _dtype_name(dtype)
    shapes = [("lenet 64x6x24x24 k2", (64, 6, 24, 24), (2, 2), (2, 2), (0, 0), False, True),
              ("128x64x32x32 k2", (128, 64, 32, 32), (2, 2), (2, 2), (0, 0), False, False),
              ("128x64x32x32 k3s2p1 channels-last", (128, 64, 32, 32), (3, 3), (2, 2), (1, 1),
               True, False)]
    for label, shape, kernel, stride, padding, channels_last, tutorial in shapes:
        x = _e(*shape, dtype=dtype, channels_last=channels_last)

        def forward(x=x, kernel=kernel, stride=stride, padding=padding):
            return max_pool2d.max_pool2d_forward(x, kernel, stride, padding, (1, 1), False)

        backward_forward = _once(forward)

        def backward(x=x, kernel=kernel, stride=stride, padding=padding,
                     forward=backward_forward):
            out, argmax = forward()
            return max_pool2d.max_pool2d_backward(out, argmax, x.shape[2:], kernel, stride,
                                                  padding, (1, 1))

        indices_forward = _once(forward)

        def indices(x=x, kernel=kernel, stride=stride, padding=padding, forward=indices_forward):
            _, argmax = forward()
            return max_pool2d.max_pool2d_indices(argmax, x.shape[3], kernel, stride, padding,
                                                 (1, 1))

        def values(x=x, kernel=kernel, stride=stride, padding=padding):
            return max_pool2d.max_pool2d_values(x, kernel, stride, padding, (1, 1), False)

        yield Case("max_pool2d", f"{label} {d}", "forward", tutorial, forward)
        yield Case("max_pool2d", f"{label} values {d}", "forward", tutorial, values)
        yield Case("max_pool2d", f"{label} {d}", "backward", False, backward)
        yield Case("max_pool2d", f"{label} return_indices {d}", "forward", False, indices)


def _cross_entropy_cases(dtype):
    d = _dtype_name(dtype)
    shapes = [("256x10", 256, 10, True), ("4096x1000", 4096, 1000, False),
              ("4096x32000", 4096, 32000, False), ("64x128256", 64, 128256, False)]
    for label, rows, classes, tutorial in shapes:
        x = _e(rows, classes, dtype=dtype)
        index = torch.zeros(rows, dtype=torch.int64)
        probs = _e(rows, classes, dtype=dtype)
        class_weight = torch.ones(classes, dtype=dtype)
        variants = [("index", index, None, 0.0),
                    ("index weight smoothing", index, class_weight, 0.1),
                    ("probabilities weight", probs, class_weight, 0.0)]
        for variant, target, weight, smoothing in variants:
            counted = tutorial and variant == "index"

            def forward(x=x, target=target, weight=weight, smoothing=smoothing):
                return cross_entropy.cross_entropy_forward(x, target, weight, "mean", -100,
                                                           smoothing)

            forward_once, grad = _once(forward), torch.ones(())

            def backward(x=x, target=target, weight=weight, smoothing=smoothing,
                         forward=forward_once, grad=grad):
                _, lse, total_weight = forward()
                return cross_entropy.cross_entropy_backward(
                    grad, x, target, weight, lse, total_weight, "mean", -100, smoothing,
                    [True, target.is_floating_point()])

            yield Case("cross_entropy", f"{label} {variant} {d}", "forward", counted, forward)
            yield Case("cross_entropy", f"{label} {variant} {d}", "backward", counted, backward)
    # linear + cross-entropy: the CE kernels on chunks of logits that torch's GEMMs compute
    x, w, b = _e(64, 32, dtype=dtype), _e(32000, 32, dtype=dtype), _e(32000, dtype=dtype)
    target = torch.zeros(64, dtype=torch.int64)

    def lce_forward():
        return cross_entropy.linear_cross_entropy_forward(x, w, b, target, None, "mean", -100, 0.0)

    lce_forward_once, lce_grad = _once(lce_forward), torch.ones(())

    def lce_backward(forward=lce_forward_once, grad=lce_grad):
        _, lse, total_weight = forward()
        return cross_entropy.linear_cross_entropy_backward(
            grad, x, w, b, target, None, lse, total_weight, "mean", -100, 0.0,
            [True, True, True, False])

    def lce_with_grad():
        return cross_entropy.linear_cross_entropy_with_grad(x, w, b, target, None, "mean", -100,
                                                            0.0, [True, True, True])

    yield Case("linear_cross_entropy", f"64x32->32000 {d}", "forward", False, lce_forward)
    yield Case("linear_cross_entropy", f"64x32->32000 {d}", "backward", False, lce_backward)
    yield Case("linear_cross_entropy", f"64x32->32000 with grad {d}", "forward", False,
               lce_with_grad)


def _conv2d_cases(dtype):
    d = _dtype_name(dtype)
    shapes = [  # label, input, weight, stride, padding, groups, channels_last, tutorial
        ("lenet conv1 64x1x28x28 6x5x5", (64, 1, 28, 28), (6, 1, 5, 5), 1, 0, 1, False, True),
        ("lenet conv2 64x6x12x12 16x5x5", (64, 6, 12, 12), (16, 6, 5, 5), 1, 0, 1, False, True),
        ("128x64x32x32 64x3x3 p1", (128, 64, 32, 32), (64, 64, 3, 3), 1, 1, 1, False, False),
        ("128x64x32x32 64x3x3 p1 channels-last", (128, 64, 32, 32), (64, 64, 3, 3), 1, 1, 1, True,
         False),
        ("resnet down 128x64x32x32 128x3x3 s2", (128, 64, 32, 32), (128, 64, 3, 3), 2, 1, 1,
         False, False),
        ("depthwise 32x64x32x32 3x3", (32, 64, 32, 32), (64, 1, 3, 3), 1, 1, 64, False, False),
    ]
    for label, in_shape, w_shape, stride, padding, groups, channels_last, tutorial in shapes:
        x = _e(*in_shape, dtype=dtype, channels_last=channels_last)
        w = _e(*w_shape, dtype=dtype, channels_last=channels_last)
        b = _e(w_shape[0], dtype=dtype)
        conv = ((stride, stride), (padding, padding), (1, 1), groups)

        def forward(x=x, w=w, b=b, conv=conv):
            return conv2d.conv2d_forward(x, w, b, *conv, "relu")

        forward_once = _once(forward)

        def backward(x=x, w=w, conv=conv, forward=forward_once):
            out = forward()
            return conv2d.conv2d_backward(out, x, w, out, list(x.shape), *conv, "relu",
                                          [True, True, True])

        yield Case("conv2d", f"{label} relu {d}", "forward", tutorial, forward)
        yield Case("conv2d", f"{label} relu {d}", "backward", tutorial, backward)


def _batch_norm_cases(dtype):
    d = _dtype_name(dtype)
    shapes = [("lenet bn2d 256x6x24x24", (256, 6, 24, 24), False, True),
              ("lenet bn1d 256x120", (256, 120), False, True),
              ("128x64x32x32", (128, 64, 32, 32), False, False),
              ("128x64x32x32 channels-last", (128, 64, 32, 32), True, False)]
    for label, shape, channels_last, tutorial in shapes:
        x = _e(*shape, dtype=dtype, channels_last=channels_last)
        channels = shape[1]
        params = [torch.ones(channels) for _ in range(4)]  # weight, bias, running mean / var

        def forward(x=x, params=params, training=True):
            return batch_norm.batch_norm_forward(x, *params, training, 0.1, 1e-5, "relu")

        forward_once = _once(forward)

        def backward(x=x, params=params, forward=forward_once):
            out, mean, invstd = forward()
            return batch_norm.batch_norm_backward(out, x, params[0], out, mean, invstd, True,
                                                  "relu", [True, True, True])

        yield Case("batch_norm", f"{label} train relu {d}", "forward", tutorial, forward)
        yield Case("batch_norm", f"{label} eval relu {d}", "forward", False,
                   lambda forward=forward: forward(training=False))
        yield Case("batch_norm", f"{label} train relu {d}", "backward", tutorial, backward)


def _all_cases():
    for builder in (_linear_cases, _dropout_cases, _max_pool2d_cases, _cross_entropy_cases,
                    _conv2d_cases, _batch_norm_cases):
        for dtype in DTYPES:
            yield from builder(dtype)


CASES = list(_all_cases())
