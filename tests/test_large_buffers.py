"""fastops' cache of large CPU buffers (csrc/shared/large_buffers.{h,cpp}): outputs and scratch
buffers of >= 4 MiB come from blocks that earlier calls freed, holding their old bytes. Every op
must write all of what it returns (a kernel that relied on a fresh mapping's zeros would read the
previous call's values), and such outputs behave as torch's own (resizable storage)."""

import pytest
import torch
import torch.nn.functional as TF
from helpers import assert_close, leaf

from fastops import functional as F


def _large(*shape):
    torch.manual_seed(sum(shape))
    return torch.randn(*shape)


# name: (fastops call, torch call, input shapes; every input gets a gradient unless noted).
# Each output or gradient is >= 4 MiB of float32.
CASES = {
    "linear relu": (lambda x, w: F.linear(x, w, activation="relu"),
                    lambda x, w: TF.relu(TF.linear(x, w)), [(1024, 256), (1536, 256)]),
    "conv2d relu": (lambda x, w: F.conv2d(x, w, padding=1, activation="relu"),
                    lambda x, w: TF.relu(TF.conv2d(x, w, padding=1)),
                    [(4, 8, 96, 96), (16, 8, 3, 3)]),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2), lambda x: TF.max_pool2d(x, 2),
                   [(4, 16, 192, 192)]),
    "batch_norm relu": (
        lambda x: F.batch_norm(x, None, None, training=True, activation="relu"),
        lambda x: TF.relu(TF.batch_norm(x, None, None, training=True)), [(4, 16, 96, 96)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, torch.arange(1024) % 1500, reduction="none"),
                      lambda x: TF.cross_entropy(x, torch.arange(1024) % 1500, reduction="none"),
                      [(1024, 1500)]),
}


def _run(fn, inputs, grad):
    out = fn(*inputs)
    return [out, *torch.autograd.grad(out, inputs, grad)]


@pytest.mark.parametrize("name", list(CASES))
def test_reused_blocks_are_written_in_full(name):
    ours, theirs, shapes = CASES[name]
    inputs = [leaf(_large(*shape)) for shape in shapes]
    with torch.no_grad():
        grad = torch.randn_like(theirs(*inputs))
    expected = _run(theirs, inputs, grad)
    first = _run(ours, inputs, grad)
    for g, e in zip(first, expected, strict=True):
        assert_close(g, e, scale=100)  # sums over 10^4-10^5 terms, in another order
    values = [g.detach().clone() for g in first]
    for g in first:  # the next call's outputs reuse these blocks
        g.detach().fill_(float("nan"))
    del first, g
    second = _run(ours, inputs, grad)
    for g, e in zip(second, values, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_a_large_output_is_resizable_like_torchs():
    x = _large(8, 16, 96, 96)
    out = F.batch_norm(x, None, None, training=True)
    assert out.untyped_storage().nbytes() >= 4 << 20
    head = out.flatten()[:10].clone()
    out.resize_(2 * out.numel())
    assert out.numel() == 2 * x.numel()
    assert_close(out[:10], head)

