"""Test helpers shared by every tests/test_<op>.py."""

import contextlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])

CPU_DTYPES = [torch.float32, torch.float64, torch.bfloat16]
CUDA_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEVICE_DTYPES = [("cpu", d) for d in CPU_DTYPES] + [
    pytest.param("cuda", d, marks=[pytest.mark.cuda, requires_cuda]) for d in CUDA_DTYPES
]

_TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def tolerance(dtype, scale=1.0):
    tol = _TOLERANCES[dtype]
    return dict(atol=tol["atol"] * scale, rtol=tol["rtol"] * scale)


def assert_close(actual, expected, dtype=None, scale=1.0, **kwargs):
    """torch.testing.assert_close with fastops' per-dtype tolerances;
    ``scale`` widens them for long reductions."""
    dtype = dtype or expected.dtype
    kwargs.setdefault("equal_nan", True)
    torch.testing.assert_close(actual, expected, **tolerance(dtype, scale), **kwargs)


def noncontiguous(tensor):
    """The same values in a tensor whose last dimension has stride 2 (a strided view)."""
    wide = torch.empty((*tensor.shape[:-1], tensor.shape[-1] * 2), dtype=tensor.dtype,
                       device=tensor.device) if tensor.dim() else None
    if wide is None:
        return tensor.clone()
    wide[..., ::2] = tensor
    view = wide[..., ::2]
    assert not view.is_contiguous() or view.numel() <= 1
    return view


def leaf(tensor, requires_grad=True):
    return tensor.detach().clone().requires_grad_(requires_grad)


def grads(outputs, inputs, grad_outputs):
    """Gradients of ``outputs`` w.r.t. the inputs that require grad (None for the others)."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True))
    return [next(got) if t is not None and t.requires_grad else None for t in inputs]


def assert_same_forward_backward(fn, reference, inputs, dtype=None, scale=1.0, seed=0):
    """Runs ``fn`` and ``reference`` on clones of ``inputs`` (a list of tensors or None) and
    compares the output and the gradient of every input that requires grad."""
    ours = [leaf(t, t.requires_grad) if isinstance(t, torch.Tensor) else t for t in inputs]
    theirs = [leaf(t, t.requires_grad) if isinstance(t, torch.Tensor) else t for t in inputs]
    out = fn(*ours)
    ref = reference(*theirs)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert_close(out, ref, dtype, scale)
    if not ref.requires_grad:
        return
    generator = torch.Generator(device="cpu").manual_seed(seed)
    grad_out = torch.randn(ref.shape, generator=generator, dtype=torch.float32).to(ref)
    tensors = [t if isinstance(t, torch.Tensor) else None for t in ours]
    ref_tensors = [t if isinstance(t, torch.Tensor) else None for t in theirs]
    for got, want in zip(grads(out, tensors, grad_out), grads(ref, ref_tensors, grad_out),
                         strict=True):
        if want is None:
            assert got is None
        else:
            assert_close(got, want, dtype, scale)


@contextlib.contextmanager
def unchanged(*tensors):
    """Asserts that the tensors (inputs, parameters, buffers) hold the same values after the
    block: a rejected call must not change state."""
    before = [t.detach().clone() for t in tensors]
    yield
    for t, b in zip(tensors, before, strict=True):
        torch.testing.assert_close(t.detach(), b, rtol=0, atol=0, equal_nan=True)


def raises(error, match, fn, *args, state=(), **kwargs):
    """``fn(*args)`` raises ``error`` matching ``match`` and leaves ``state`` unchanged."""
    with unchanged(*state), pytest.raises(error, match=match):
        fn(*args, **kwargs)


def compile_fullgraph(fn):
    """torch.compile without graph breaks; aot_eager traces every fake kernel and the autograd
    registration (what fullgraph needs) without paying inductor's C++ code generation."""
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def seeded(fn, seed):
    """``fn`` with torch's default generator reset to ``seed`` before every call, so the random
    ops inside it (dropout) draw the same values on every call."""
    def call(*args, **kwargs):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)
    return call


def dropout_reference(x, keep, p):
    """torch's dropout arithmetic for a given boolean mask ``keep``: on the CPU x * noise with
    noise = mask / (1 - p) in x's dtype, on CUDA x * mask * (1 / (1 - p)) in float32 (float64
    for float64)."""
    if x.device.type == "cpu":
        return x * keep.to(x.dtype).div_(1 - p)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.to(compute) * keep.to(compute) * (1 / (1 - p))).to(x.dtype)
