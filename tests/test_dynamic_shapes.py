"""torch.compile(dynamic=True) traces every op, forward and backward, through the ops' rules
(their C++ Meta kernels read symbolic sizes), and the compiled result matches eager for
several sizes without recompiling per size."""

import pytest
import torch
import torch._dynamo.testing
from helpers import assert_close

import fastops
from fastops import functional as F


def every_op(x, w, b, target, image, conv_weight, seed_p):
    """A function calling every public op (and so, through autograd, every backward op)."""
    hidden = F.linear(x, w, b, activation="relu", dropout=seed_p, training=True)
    loss = F.cross_entropy(hidden, target) + F.linear_cross_entropy(x, w, target, linear_bias=b)
    pooled, indices = F.max_pool2d(image, 2, return_indices=True)
    features = F.conv2d(pooled, conv_weight, padding=1, activation="relu")
    normed = F.batch_norm(features, None, None, training=True, activation="relu")
    dropped = F.dropout2d(normed, seed_p)
    return loss + dropped.sum() + indices.sum() * 0


def inputs(rows, height):
    generator = torch.Generator().manual_seed(rows)
    def randn(*shape):
        return torch.randn(*shape, generator=generator).requires_grad_()

    # No size equal to another across inputs: dynamo's duck sizing would tie them together.
    target = torch.randint(0, 5, (rows,), generator=generator)
    return (randn(rows, 7), randn(5, 7), randn(5), target, randn(rows, 3, height, 10),
            randn(4, 3, 3, 3), 0.0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_op_compiles_with_dynamic_shapes_and_matches_eager():
    torch._dynamo.reset()
    # aot_eager: AOTAutograd traces forward and backward on FakeTensors, as inductor would.
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(every_op, backend=counter, dynamic=True, fullgraph=True)
    frames = []
    for rows, height in [(6, 12), (9, 14), (11, 16)]:
        eager_args, compiled_args = inputs(rows, height), inputs(rows, height)
        expected, actual = every_op(*eager_args), compiled(*compiled_args)
        assert_close(actual, expected)
        expected.backward()
        actual.backward()
        for e, a in zip(eager_args, compiled_args, strict=True):
            if isinstance(e, torch.Tensor) and e.requires_grad:
                assert_close(a.grad, e.grad)
        frames.append(counter.frame_count)
    assert frames[0] == frames[-1]  # no recompilation for a new size


def test_converted_model_compiles_with_dynamic_shapes():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64, 10))
    converted = fastops.convert(model)
    compiled = torch.compile(converted, dynamic=True, fullgraph=True)
    for batch in (2, 3, 5):
        x = torch.randn(batch, 3, 10, 10)
        assert_close(compiled(x), converted(x))
        compiled(x).sum().backward()
