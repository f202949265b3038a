"""How fastops.functional calls its ops: fastops._C.call in eager mode (same results and errors
as torch.ops), torch.ops where torch function overrides are active; _C.call's own argument
errors."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

import fastops
from fastops import _C
from fastops._dispatch import operator


def linear_args():
    torch.manual_seed(0)
    return torch.randn(4, 8), torch.randn(3, 8), torch.randn(3), "relu", None, 0.0


def test_fast_call_equals_torch_ops():
    args = linear_args()
    torch.testing.assert_close(operator("linear")(*args), torch.ops.fastops.linear(*args),
                               rtol=0, atol=0)


def test_fast_call_fills_trailing_defaults():
    x, w, b, activation, _, _ = linear_args()
    torch.testing.assert_close(operator("linear")(x, w, b, activation),
                               torch.ops.fastops.linear(x, w, b, activation), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [
    lambda x, w, b: (x, w[:, :5], b, "none"),  # shapes do not match
    lambda x, w, b: (x, w.double(), b, "none"),  # dtypes differ
    lambda x, w, b: (x, w, b, "gelu"),  # unknown activation
])
def test_fast_call_raises_the_errors_of_torch_ops(bad):
    args = bad(*linear_args()[:3])
    with pytest.raises(Exception) as expected:
        torch.ops.fastops.linear(*args)
    with pytest.raises(type(expected.value)) as got:
        operator("linear")(*args)
    assert str(got.value) == str(expected.value)


def test_torch_function_mode_sees_the_torch_ops_call():
    seen = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Record():
        fastops.functional.linear(*linear_args()[:3])
    assert torch.ops.fastops.linear.default in seen


@pytest.mark.parametrize("call, error, message", [
    (lambda h, a: _C.call(h, *a, 1.0), TypeError, "expected at most 6 arguments, got 7"),
    (lambda h, a: _C.call(h, *a[:2]), TypeError, "missing argument 'bias'"),
    (lambda h, a: _C.call(10**6, *a), RuntimeError, "unknown handle"),
    (lambda h, a: _C.call("linear", *a), RuntimeError, "expected a handle first"),
    (lambda h, a: _C.call(h, *a[:3], object()), TypeError, "unsupported argument type object"),
    (lambda h, a: _C.call(h, a[0], a[1], [1.5], *a[3:]), TypeError, "expected a list of ints"),
    (lambda h, a: _C.op_handle("fastops::no_such_op"), RuntimeError, "no_such_op"),
])
def test_c_call_rejects_bad_calls(call, error, message):
    handle = _C.op_handle("fastops::linear")
    with pytest.raises(error, match=message):
        call(handle, linear_args())


def test_one_handle_per_operator():
    assert _C.op_handle("fastops::linear") == _C.op_handle("fastops::linear")
    assert _C.op_handle("fastops::linear") != _C.op_handle("fastops::dropout")
