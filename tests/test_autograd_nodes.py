"""The graph nodes of the fastops ops (csrc/shared/autograd.h's OpNode): what a torch user relies
on from an autograd node besides the gradient values, which each op's tests check. A second
backward raises torch's error unless the graph was retained; the saved tensors are released
after a backward; an input gradient nobody asked for is not computed; forward-mode AD (dual
tensors) raises instead of returning outputs without a tangent."""

import gc
import weakref

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as TF
from helpers import assert_close, leaf

from fastops import functional as F


def _inputs():
    torch.manual_seed(0)
    return {
        "image": torch.randn(2, 3, 6, 6),
        "conv_weight": torch.randn(4, 3, 3, 3),
        "rows": torch.randn(5, 8),
        "linear_weight": torch.randn(7, 8),
        "bias": torch.randn(7),
        "classes": torch.tensor([0, 3, 6, 1, 2]),
        "channel_weight": torch.randn(3),
    }


# name: (call of fastops.functional, names of its tensor inputs in _inputs() order of use;
# the first is the one that gets a gradient)
CALLS = {
    "linear relu": (lambda x, w, b: F.linear(x, w, b, activation="relu"),
                    ["rows", "linear_weight", "bias"]),
    "conv2d relu": (lambda x, w: F.conv2d(x, w, padding=1, activation="relu"),
                    ["image", "conv_weight"]),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2), ["image"]),
    "max_pool2d indices": (lambda x: F.max_pool2d(x, 2, return_indices=True)[0], ["image"]),
    "batch_norm relu": (lambda x, w: F.batch_norm(x, None, None, w, None, training=True,
                                                  activation="relu"),
                        ["image", "channel_weight"]),
    "cross_entropy": (lambda x: F.cross_entropy(x, _inputs()["classes"][:x.shape[0]]), ["rows"]),
    "linear_cross_entropy mean": (
        lambda x, w: F.linear_cross_entropy(x, w, _inputs()["classes"]),
        ["rows", "linear_weight"]),
    "linear_cross_entropy none": (
        lambda x, w: F.linear_cross_entropy(x, w, _inputs()["classes"], reduction="none"),
        ["rows", "linear_weight"]),
    "dropout": (lambda x: F.dropout(x, 0.5), ["rows"]),
}


def _call(name, requires_grad=True):
    fn, names = CALLS[name]
    inputs = [leaf(_inputs()[n], requires_grad) for n in names]
    return fn(*inputs), inputs


@pytest.mark.parametrize("name", list(CALLS))
def test_second_backward_raises_unless_the_graph_is_retained(name):
    out, inputs = _call(name)
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, inputs, grad, retain_graph=True)
    again = torch.autograd.grad(out, inputs, grad)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(out, inputs, grad)


class _Held:
    """A saved tensor as the pack hook hands it to autograd (weakly referenceable)."""

    def __init__(self, tensor):
        self.tensor = tensor


@pytest.mark.parametrize("name", list(CALLS))
def test_saved_tensors_are_released_after_backward(name):
    held = []

    def pack(tensor):
        box = _Held(tensor)
        held.append(weakref.ref(box))
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        out, inputs = _call(name)
    kept = out.grad_fn  # the node outlives the backward; its saved tensors must not
    torch.autograd.grad(out, inputs, torch.randn_like(out))
    gc.collect()
    assert kept is not None and all(ref() is None for ref in held)


@pytest.mark.parametrize("name", list(CALLS))
def test_only_the_requested_input_gradient(name):
    out, inputs = _call(name)
    (grad,) = torch.autograd.grad(out, inputs[:1], torch.randn_like(out))
    assert grad.shape == inputs[0].shape


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("requires_grad", [False, True], ids=["plain", "requires_grad"])
def test_forward_mode_ad_raises(name, requires_grad):
    fn, names = CALLS[name]
    inputs = [leaf(_inputs()[n], requires_grad) for n in names]
    with fwAD.dual_level():
        inputs[0] = fwAD.make_dual(inputs[0], torch.ones_like(inputs[0]))
        with pytest.raises(RuntimeError, match="Trying to use forward AD with fastops::"):
            fn(*inputs)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_probability_target_alone_requiring_grad_gets_its_gradient(reduction):
    """Only the target requires grad: the loss still records a graph, as torch's."""
    torch.manual_seed(0)
    logits, linear_weight = torch.randn(5, 8), torch.randn(7, 8)
    target = leaf(torch.softmax(torch.randn(5, 7), 1))
    for ours, theirs in [
        (F.cross_entropy(logits[:, :7], target, reduction=reduction),
         TF.cross_entropy(logits[:, :7], target, reduction=reduction)),
        (F.linear_cross_entropy(logits, linear_weight, target, reduction=reduction),
         TF.cross_entropy(TF.linear(logits, linear_weight), target, reduction=reduction)),
    ]:
        assert ours.requires_grad
        grad = torch.ones_like(theirs)
        assert_close(torch.autograd.grad(ours, target, grad)[0],
                     torch.autograd.grad(theirs, target, grad)[0])
