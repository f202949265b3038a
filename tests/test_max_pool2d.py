import re

import pytest
import torch
import torch.nn.functional as TF
from helpers import (
    CUDA,
    DEVICE_DTYPES,
    assert_close,
    compile_fullgraph,
    noncontiguous,
    raises,
    requires_cuda,
)
from torch._prims_common import suggest_memory_format

import fastops
from fastops import functional as F

CONFIGS = {  # name: (input shape, kernel_size, stride, padding, dilation, ceil_mode)
    "lenet 2x2": ((2, 3, 8, 9), 2, None, 0, 1, False),
    # 2x2 at stride 2 is read in place 16 output columns at a time: two vectors and a tail per row
    "2x2 wide, odd sizes": ((2, 3, 7, 73), 2, 2, 0, 1, False),
    "2x2 ceil": ((1, 2, 5, 35), 2, 2, 0, 1, True),
    "overlapping 3x3 s2 p1": ((2, 3, 7, 9), 3, 2, 1, 1, False),
    "overlapping ceil": ((2, 3, 7, 10), 3, 2, 1, 1, True),
    "stride 1": ((1, 2, 6, 5), (3, 2), 1, (1, 1), 1, False),
    "dilated rectangular": ((1, 2, 11, 10), (3, 2), (2, 1), (1, 0), (2, 3), False),
    "dilated ceil": ((2, 2, 10, 11), (2, 3), (3, 2), (1, 1), (3, 2), True),
    "ceil drops the window in the padding": ((1, 2, 6, 6), 3, 3, 1, 1, True),
    # every window holds only padding: torch outputs -inf and reports the first window position
    # (outside the input) as index, and its backward scatters into that index, i.e. into another
    # input element (or the next plane); fastops gives those windows no gradient (see below).
    "padding-only window": ((1, 2, 3, 2), (1, 2), 1, (0, 1), (1, 3), False),
    "kernel larger than stride, ceil": ((2, 1, 5, 7), (4, 3), (3, 2), (2, 1), 1, True),
    "size 1": ((3, 4, 1, 1), 1, 1, 0, 1, False),
    "global": ((2, 3, 5, 6), (5, 6), None, 0, 1, False),
    "empty batch": ((0, 3, 6, 6), 3, 2, 1, 1, False),
    "unbatched": ((3, 7, 6), 3, 2, 1, 1, True),
}


def reference(input, config, return_indices=True):
    _, kernel_size, stride, padding, dilation, ceil_mode = config
    return TF.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def ours(input, config, return_indices=True):
    _, kernel_size, stride, padding, dilation, ceil_mode = config
    return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def op_window(config):
    """(kernel_size, stride, padding, dilation) of a config as the ops take them: pairs."""
    _, kernel_size, stride, padding, dilation, _ = config
    pair = torch.nn.modules.utils._pair
    return pair(kernel_size), pair(stride or kernel_size), pair(padding), pair(dilation)


def make_input(shape, values, device="cpu", dtype=torch.float32, seed=0):
    """randn values; "ties": few distinct integers, so most windows hold several maxima;
    "special": randn sprinkled with NaN and -inf (and windows of only -inf)."""
    g = torch.Generator().manual_seed(seed)
    if values == "ties":
        x = torch.randint(-2, 2, shape, generator=g).float()
    else:
        x = torch.randn(shape, generator=g)
    if values == "special":
        pick = torch.rand(shape, generator=g)
        x[pick < 0.1] = float("nan")
        x[(pick >= 0.1) & (pick < 0.5)] = float("-inf")
    return x.to(device, dtype)


def layout(x, name):
    if name == "channels_last":
        return x.to(memory_format=torch.channels_last)
    if name == "noncontiguous":
        return noncontiguous(x)
    return x


def expected_input_grad(ref_out, ref_x, grad, config):
    """torch's input gradient, except for windows of only padding, which have none (torch's
    backward writes out of bounds there, and can abort the process)."""
    if config == CONFIGS["padding-only window"]:
        return torch.zeros_like(ref_x, memory_format=suggest_memory_format(ref_x))
    return torch.autograd.grad(ref_out, ref_x, grad)[0]


def assert_same_pooling(input, config, dtype):
    """Output (exactly: max selects), indices and the input gradient match torch."""
    ours_x = input.detach().clone().requires_grad_(input.dtype.is_floating_point)
    ref_x = input.detach().clone().requires_grad_(input.dtype.is_floating_point)
    out, indices = ours(ours_x, config)
    ref_out, ref_indices = reference(ref_x, config)
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    assert out.stride() == ref_out.stride() and indices.stride() == ref_indices.stride()
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0, equal_nan=True)
    assert indices.dtype == torch.int64
    assert torch.equal(indices, ref_indices)
    if not input.dtype.is_floating_point:
        return
    grad = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(1)).to(ref_out)
    (got,) = torch.autograd.grad(out, ours_x, grad)
    want = expected_input_grad(ref_out, ref_x, grad, config)
    assert got.stride() == want.stride()
    assert_close(got, want, dtype)


def config_layouts(configs, layouts=("contiguous", "channels_last", "noncontiguous")):
    """(config, layout) pairs; channels-last is a 4-D layout, so not for unbatched inputs."""
    return [(c, m) for c in configs for m in layouts
            if not (m == "channels_last" and len(CONFIGS[c][0]) == 3)]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("config,memory", config_layouts(CONFIGS))
@pytest.mark.parametrize("values", ["randn", "ties", "special"])
def test_parity(device, dtype, config, memory, values):
    x = layout(make_input(CONFIGS[config][0], values, device, dtype), memory)
    assert_same_pooling(x, CONFIGS[config], dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.uint8, torch.int8, torch.int16,
                                   torch.int32, torch.int64])
@pytest.mark.parametrize("memory", ["contiguous", "channels_last"])
def test_other_cpu_dtypes_like_torch(dtype, memory):
    config = CONFIGS["padding-only window"]  # also checks the integer minimum of empty windows
    x = make_input(config[0], "ties").mul(40).to(dtype)
    assert_same_pooling(layout(x, memory), config, dtype)
    config = CONFIGS["overlapping ceil"]
    assert_same_pooling(layout(make_input(config[0], "ties").mul(40).to(dtype), memory), config,
                        dtype)


@pytest.mark.parametrize("return_indices", [False, True])
def test_return_indices_and_module(return_indices):
    x = torch.randn(2, 3, 9, 9)
    module = fastops.nn.MaxPool2d(3, 2, 1, return_indices=return_indices, ceil_mode=True)
    twin = torch.nn.MaxPool2d(3, 2, 1, return_indices=return_indices, ceil_mode=True)
    assert isinstance(module, torch.nn.MaxPool2d)
    assert repr(module) == repr(twin)
    got, want = module(x), twin(x)
    assert type(got) is type(want)
    if return_indices:
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    else:
        assert torch.equal(got, want)


def test_indices_feed_max_unpool2d():
    x = torch.randn(2, 3, 8, 8)
    out, indices = F.max_pool2d(x, 2, return_indices=True)
    ref_out, ref_indices = TF.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(TF.max_unpool2d(out, indices, 2), TF.max_unpool2d(ref_out, ref_indices, 2))


def test_module_state_dict_loads_both_ways():
    ours_module, twin = fastops.nn.MaxPool2d(2), torch.nn.MaxPool2d(2)
    assert ours_module.state_dict() == twin.state_dict() == {}
    ours_module.load_state_dict(twin.state_dict())
    twin.load_state_dict(ours_module.state_dict())


def test_argmax_dtype_by_window_size():
    for kernel, dtype in [((16, 16), torch.uint8), ((16, 17), torch.int16),
                          ((2, 16384), torch.int16), ((1, 32769), torch.int32)]:
        x = torch.randn(1, 1, kernel[0], kernel[1])
        out, argmax = fastops.ops.max_pool2d(x, kernel, kernel, (0, 0), (1, 1), False)
        assert argmax.dtype == dtype
        want, want_indices = TF.max_pool2d(x, kernel, return_indices=True)
        assert torch.equal(out, want)
        indices = fastops.ops.max_pool2d_indices(argmax, kernel[1], kernel, kernel, (0, 0), (1, 1))
        assert torch.equal(indices, want_indices)
        with torch._subclasses.FakeTensorMode():
            fake_argmax = fastops.ops.max_pool2d(torch.empty(x.shape), kernel, kernel, (0, 0),
                                                 (1, 1), False)[1]
        assert fake_argmax.dtype == dtype


@pytest.mark.parametrize("memory", ["contiguous", "channels_last"])
def test_wide_window_with_int16_argmax(memory):
    x = layout(torch.randn(1, 3, 2, 2**12 + 3), memory)
    assert_same_pooling(x, (x.shape, (2, 2**12), (1, 3), 0, 1, False), torch.float32)


def test_autograd_saves_only_the_compact_argmax():
    x = torch.randn(4, 6, 28, 28, requires_grad=True)
    out, saved = fastops.saved_tensor_bytes(F.max_pool2d, x, 2)
    assert saved == out.numel()  # one uint8 per output element
    _, torch_saved = fastops.saved_tensor_bytes(TF.max_pool2d, x, 2)
    assert saved * 4 <= torch_saved


@pytest.mark.parametrize("config,memory", config_layouts(
    ["overlapping ceil", "dilated ceil", "kernel larger than stride, ceil", "unbatched"],
    ["contiguous", "channels_last"]))
def test_gradcheck(config, memory):
    shape, *args = CONFIGS[config]
    x = layout(torch.randn(shape, dtype=torch.float64), memory).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: F.max_pool2d(t, *args), (x,))


@pytest.mark.parametrize("memory", ["contiguous", "channels_last"])
@pytest.mark.parametrize("config", ["overlapping ceil", "dilated rectangular", "empty batch"])
def test_opcheck(memory, config):
    shape, *_, ceil_mode = CONFIGS[config]
    window = op_window(CONFIGS[config])
    x = layout(torch.randn(shape), memory)
    for requires_grad in (True, False):
        torch.library.opcheck(fastops.ops.max_pool2d.default,
                              (x.detach().requires_grad_(requires_grad), *window, ceil_mode))
    out, argmax = fastops.ops.max_pool2d(x, *window, ceil_mode)
    torch.library.opcheck(fastops.ops.max_pool2d_backward.default,
                          (torch.randn_like(out), argmax, list(shape[-2:]), *window))
    torch.library.opcheck(fastops.ops.max_pool2d_indices.default, (argmax, shape[-1], *window))


# --------------------------------------------- max_pool2d_values: the output alone (inference)

def ops_called(fn, *args):
    """The fastops ops that fn(*args) reaches below autograd (a dispatch mode sees them there)."""
    seen = []

    class Log(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "fastops":
                seen.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    with Log():
        result = fn(*args)
    return result, seen


@pytest.mark.parametrize("config,memory", config_layouts(
    [c for c in CONFIGS if len(CONFIGS[c][0]) == 4]))
@pytest.mark.parametrize("requires_grad", [False, True])
def test_values_op_matches_torch(config, memory, requires_grad):
    """The raw op, every odd shape and layout: torch's output (values, NaN, strides); with an
    input that requires grad it records max_pool2d's graph, whose gradient is torch's."""
    shape, *_, ceil_mode = CONFIGS[config]
    x = layout(make_input(shape, "special"), memory).requires_grad_(requires_grad)
    ref_x = x.detach().clone().requires_grad_(requires_grad)
    out = fastops.ops.max_pool2d_values(x, *op_window(CONFIGS[config]), ceil_mode)
    want = reference(ref_x, CONFIGS[config], return_indices=False)
    assert out.stride() == want.stride() and out.requires_grad == requires_grad
    torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)
    if requires_grad:
        grad = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
        (got,) = torch.autograd.grad(out, x, grad)
        assert_close(got, expected_input_grad(want, ref_x, grad, CONFIGS[config]), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.uint8,
                                   torch.int8, torch.int16, torch.int32, torch.int64])
def test_values_op_other_dtypes_like_torch(dtype):
    for name in ("padding-only window", "overlapping ceil"):
        config = CONFIGS[name]
        for memory in ("contiguous", "channels_last"):
            x = layout(make_input(config[0], "ties").mul(40).to(dtype), memory)
            out = fastops.ops.max_pool2d_values(x, *op_window(config), config[-1])
            assert torch.equal(out, reference(x, config, return_indices=False))


def test_inference_computes_no_argmax():
    """Without a graph to record (no_grad, or no input requiring grad) F.max_pool2d reaches
    only the values-only op; with one, max_pool2d (its argmax feeds the backward)."""
    x = torch.randn(2, 3, 8, 8)
    _, seen = ops_called(F.max_pool2d, x, 2)
    assert seen == ["max_pool2d_values"]
    with torch.no_grad():
        _, seen = ops_called(F.max_pool2d, x.requires_grad_(), 2)
    assert seen == ["max_pool2d_values"]
    out, seen = ops_called(F.max_pool2d, x, 2)
    assert seen == ["max_pool2d"] and out.requires_grad
    _, seen = ops_called(lambda t: F.max_pool2d(t, 2, return_indices=True), x)
    assert seen == ["max_pool2d", "max_pool2d_indices"]


def test_values_op_fake_tensor_and_opcheck():
    config = CONFIGS["dilated ceil"]
    window = op_window(config)
    with torch._subclasses.FakeTensorMode():
        fake = fastops.ops.max_pool2d_values(
            torch.empty(config[0]).to(memory_format=torch.channels_last), *window, True)
    want = reference(torch.randn(config[0]).to(memory_format=torch.channels_last), config,
                     return_indices=False)
    assert fake.shape == want.shape and fake.stride() == want.stride()
    for memory in ("contiguous", "channels_last"):
        x = layout(torch.randn(config[0]), memory)
        for requires_grad in (True, False):
            torch.library.opcheck(fastops.ops.max_pool2d_values.default,
                                  (x.detach().requires_grad_(requires_grad), *window, True))


def test_values_op_validates_like_max_pool2d():
    """The same rules, so the same errors as max_pool2d (the full table is in test_rules.py)."""
    x = torch.randn(1, 2, 6, 6)
    for args in [(x, (3, 3), (2, 2), (2, 2), (2, 2), False), (x[0], (2, 2), (2, 2), (0, 0),
                                                               (1, 1), False),
                 (x, (7, 7), (1, 1), (0, 0), (1, 1), False), (x, (2, 2), (0, 2), (0, 0),
                                                               (1, 1), False)]:
        with pytest.raises(RuntimeError) as want:
            fastops.ops.max_pool2d(*args)
        raises(RuntimeError, re.escape(str(want.value).splitlines()[0]),
               fastops.ops.max_pool2d_values, *args, state=(x,))


def test_double_backward_raises_a_clear_error():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward through fastops ops is not supported"):
        torch.autograd.grad(F.max_pool2d(x, 2).pow(2).sum(), x, create_graph=True)


def test_autocast_keeps_the_input_dtype_like_torch():
    x = torch.randn(2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = F.max_pool2d(x, 2), TF.max_pool2d(x, 2)
    assert out.dtype == ref.dtype == torch.float32
    assert torch.equal(out, ref)


@pytest.mark.parametrize("return_indices", [False, True])
def test_module_compile_fullgraph(return_indices):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3),
                                fastops.nn.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.ReLU())
    x = torch.randn(2, 3, 11, 10, requires_grad=True)
    compiled = compile_fullgraph(model)
    out, ref = compiled(x), model(x)
    assert_close(out, ref)
    grad = torch.randn_like(ref)
    assert_close(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(ref, x, grad)[0])
    pool = compile_fullgraph(lambda t: F.max_pool2d(t, 2, return_indices=return_indices))
    got, want = pool(x), TF.max_pool2d(x, 2, return_indices=return_indices)
    if return_indices:
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    else:
        assert torch.equal(got, want)


def test_bad_input_raises_torch_errors_and_changes_nothing():
    x = torch.randn(2, 3, 7, 7)
    state = (x,)
    cases = [  # (error, message, args, kwargs): torch raises the same type with the same text
        (RuntimeError, "pad should be at most half of effective kernel size, but got pad=2, "
         "kernel_size=3 and dilation=1", (x, 3), dict(padding=2)),
        (RuntimeError, "pad should be smaller than or equal to half of kernel size, but got "
         "padW = 2, padH = 2, kW = 3, kH = 3", (x, 3), dict(padding=2, dilation=2)),
        (RuntimeError, "pad must be non-negative, but got pad: -1", (x, 3), dict(padding=-1)),
        (RuntimeError, "stride should not be zero", (x, 3), dict(stride=(0, 1))),
        (RuntimeError, "stride should not be zero", (x, (3, 0)), {}),
        (RuntimeError, "stride should be greater than zero, but got dH: -1 dW: -1", (x, 3),
         dict(stride=-1)),
        (RuntimeError, "kernel size should be greater than zero, but got kH: -1 kW: -1",
         (x, -1), {}),
        (RuntimeError, "dilation should be greater than zero, but got dilationH: 1 dilationW: -1",
         (x, 3), dict(dilation=(1, -1))),
        (RuntimeError, r"Given input size: \(3x7x7\). Calculated output size: \(3x0x0\). Output "
         "size is too small", (x, 8), {}),
        (RuntimeError, "kernel_size must either be a single int, or a tuple of two ints",
         (x, (3, 3, 3)), {}),
        (RuntimeError, "stride must either be omitted, a single int, or a tuple of two ints",
         (x, 3), dict(stride=(1, 1, 1))),
        (RuntimeError, "padding must either be a single int, or a tuple of two ints", (x, 3),
         dict(padding=(1, 1, 1))),
        (RuntimeError, "dilation must either be a single int, or a tuple of two ints", (x, 3),
         dict(dilation=())),
        (RuntimeError, "non-empty 3D or 4D", (torch.randn(7, 7), 3), {}),
        (RuntimeError, "non-empty 3D or 4D", (torch.randn(1, 2, 3, 7, 7), 3), {}),
        (RuntimeError, r"Expected 3D or 4D \(batch mode\) tensor with optional 0 dim batch size",
         (torch.randn(2, 0, 7, 7), 3), {}),
        (RuntimeError, r"Expected 3D or 4D \(batch mode\) tensor with optional 0 dim batch size",
         (torch.randn(0, 7, 7), 3), {}),
        (NotImplementedError, '"max_pool2d" not implemented for torch.bool', (x.bool(), 3), {}),
        (NotImplementedError, '"max_pool2d" not implemented for torch.complex64',
         (x.to(torch.complex64), 3), {}),
        (TypeError, "argument 'kernel_size' must be an int or a tuple of ints, not float",
         (x, 3.0), {}),
        (TypeError, "argument 'padding' must be an int or a tuple of ints, not float", (x, 3),
         dict(padding=(1, 1.0))),
        (TypeError, "argument 'ceil_mode' must be bool, not int", (x, 3), dict(ceil_mode=1)),
        (TypeError, "expected input to be a Tensor", ([1.0], 3), {}),
    ]
    for error, message, args, kwargs in cases:
        with pytest.raises(error):  # torch raises the same exception type
            TF.max_pool2d(*args, **kwargs)
        raises(error, message, F.max_pool2d, *args, state=state, **kwargs)
    raises(TypeError, "argument 'kernel_size'", fastops.nn.MaxPool2d(2.5), x, state=state)


def test_ops_validate_their_arguments():
    """Direct op calls bypass fastops.functional: the CPU kernels check what they rely on."""
    x = torch.randn(1, 2, 6, 6)
    window = ((3, 3), (2, 2), (1, 1), (1, 1))
    raises(RuntimeError, "fastops::max_pool2d: pad should be smaller than or equal to half",
           fastops.ops.max_pool2d, x, (3, 3), (2, 2), (2, 2), (2, 2), False, state=(x,))
    raises(RuntimeError, "fastops::max_pool2d: expected a 4-D input", fastops.ops.max_pool2d,
           x[0], *window, False)
    raises(RuntimeError, "Output size is too small", fastops.ops.max_pool2d, x, (7, 7), (1, 1),
           (0, 0), (1, 1), False)
    out, argmax = fastops.ops.max_pool2d(x, *window, False)
    raises(RuntimeError, "expected argmax of dtype Byte for a window of 9 elements, got Long",
           fastops.ops.max_pool2d_backward, out, argmax.long(), [6, 6], *window)
    raises(RuntimeError, "expected grad_output of the argmax shape",
           fastops.ops.max_pool2d_backward, out[:, :1], argmax, [6, 6], *window)
    raises(RuntimeError, "expected a floating-point grad_output", fastops.ops.max_pool2d_backward,
           argmax.int(), argmax, [6, 6], *window)
    raises(RuntimeError, "expected argmax to be 4-D", fastops.ops.max_pool2d_indices, argmax[0], 6,
           *window)
    corrupt = argmax.clone()
    corrupt[0, 1, 2, 0] = 200
    for memory in ("contiguous", "channels_last"):
        raises(RuntimeError, "argmax holds 200, not a position of the 9-element window",
               fastops.ops.max_pool2d_backward, out, layout(corrupt, memory), [6, 6], *window)


# ----------------------------------------------------------- Triton kernels (interpreter on CPU)

TRITON_CONFIGS = ["overlapping ceil", "dilated ceil", "padding-only window", "empty batch"]


@pytest.mark.parametrize("config", TRITON_CONFIGS)
@pytest.mark.parametrize("memory", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_launchers_match_torch(config, memory, dtype):
    from fastops.triton_kernels.max_pool2d import (
        max_pool2d_backward,
        max_pool2d_forward,
        max_pool2d_indices,
        max_pool2d_values,
    )

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape, *_, ceil_mode = CONFIGS[config]
    window = op_window(CONFIGS[config])
    x = layout(make_input(shape, "special", device, dtype), memory).requires_grad_()
    want, want_indices = reference(x, CONFIGS[config])
    out, argmax = max_pool2d_forward(x.detach(), *window, ceil_mode)
    assert out.stride() == want.stride()
    torch.testing.assert_close(out, want.detach(), rtol=0, atol=0, equal_nan=True)
    values = max_pool2d_values(x.detach(), *window, ceil_mode)  # the kernel without argmax
    assert values.stride() == want.stride()
    torch.testing.assert_close(values, want.detach(), rtol=0, atol=0, equal_nan=True)
    assert torch.equal(max_pool2d_indices(argmax, shape[-1], *window), want_indices)
    grad = noncontiguous(torch.randn(want.shape, dtype=dtype, device=device))
    want_grad = expected_input_grad(want, x, grad, CONFIGS[config])
    got_grad = max_pool2d_backward(grad, argmax, shape[-2:], *window)
    assert got_grad.stride() == want_grad.stride()
    assert_close(got_grad, want_grad, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.uint8, torch.int8,
                                   torch.int16, torch.int32, torch.int64])
def test_triton_forward_other_dtypes_match_torch(dtype):
    """Also the integer minimum for windows of only padding, as torch; with and without the
    argmax."""
    from fastops.triton_kernels.max_pool2d import max_pool2d_forward, max_pool2d_values

    for name in ("padding-only window", "overlapping ceil"):
        config = CONFIGS[name]
        x = make_input(config[0], "ties").mul(40).to(dtype)
        out, _ = max_pool2d_forward(x, *op_window(config), config[-1])
        want = reference(x, config, return_indices=False)
        assert torch.equal(out, want)
        assert torch.equal(max_pool2d_values(x, *op_window(config), config[-1]), want)


def test_triton_argmax_int16_window():
    from fastops.triton_kernels.max_pool2d import max_pool2d_forward, max_pool2d_indices

    x = torch.randn(1, 2, 1, 300)
    out, argmax = max_pool2d_forward(x, (1, 257), (1, 40), (0, 0), (1, 1), False)
    want, want_indices = TF.max_pool2d(x, (1, 257), (1, 40), return_indices=True)
    assert argmax.dtype == torch.int16
    assert torch.equal(out, want)
    indices = max_pool2d_indices(argmax, 300, (1, 257), (1, 40), (0, 0), (1, 1))
    assert torch.equal(indices, want_indices)


# ---------------------------------------------------------------------------- CUDA (real GPU)

@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("memory", ["contiguous", "channels_last"])
def test_resnet_stem_shape_matches(device, memory):
    x = layout(make_input((8, 16, 33, 31), "randn", device), memory)
    assert_same_pooling(x, ((8, 16, 33, 31), 3, 2, 1, 1, False), torch.float32)


@requires_cuda
@pytest.mark.cuda
def test_cuda_module_compile_fullgraph():
    model = torch.nn.Sequential(fastops.nn.MaxPool2d(3, 2, 1), fastops.nn.MaxPool2d(2)).cuda()
    x = torch.randn(4, 8, 32, 32, device="cuda", requires_grad=True)
    compiled = compile_fullgraph(model)
    assert torch.equal(compiled(x), model(x))


# ------------------------------------------- Triton index width (32-bit geometry where it fits)

def test_triton_index_width_is_32_bit_unless_an_index_can_pass_int32():
    """The launchers compile the window geometry in int32 (no 64-bit division subroutines in
    the SASS) unless a flat offset or a window coordinate can pass int32."""
    from fastops.triton_kernels.max_pool2d import _index_64

    k2 = ((2, 2), (2, 2), (0, 0), (1, 1))
    k3 = ((3, 3), (2, 2), (1, 1), (1, 1))
    # the tutorial pools, forward (output elements) and backward (input elements)
    assert not _index_64(64 * 6 * 12 * 12, (24, 24), (12, 12), *k2)
    assert not _index_64(64 * 6 * 24 * 24, (24, 24), (12, 12), *k2)
    assert not _index_64(128 * 64 * 32 * 32, (32, 32), (16, 16), *k2)
    assert not _index_64(128 * 64 * 16 * 16, (32, 32), (16, 16), *k3)
    assert not _index_64(2**31 - 4096, (2**15, 2**15), (2**14, 2**14), *k2)
    # past int32: the elements, or a coordinate of a very long row (with its padding)
    assert _index_64(2**31, (2**16, 2**16), (2**15, 2**15), *k2)
    assert _index_64(2**31 - 1, (2**16, 2**16), (2**15, 2**15), *k2)  # the last block overruns
    assert _index_64(2**20, (1, 2**31 - 2), (1, 2**30), *k2)
    assert _index_64(2**20, (1, 2**31 - 8), (1, 2**30), *k3)


WIDTH_CONFIGS = {  # odd shapes, both index widths run through the interpreter
    "3x3 s2 p1 odd": ((3, 5, 9, 11), 3, 2, 1, 1, False),
    "1x5 s(1,3) ceil": ((2, 3, 4, 17), (1, 5), (1, 3), (0, 2), 1, True),
    "4x1 dilated": ((1, 7, 13, 3), (4, 1), (2, 1), (1, 0), (3, 1), False),
}


@pytest.mark.parametrize("index_64", [False, True])
@pytest.mark.parametrize("memory", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("config", WIDTH_CONFIGS)
def test_triton_launchers_match_torch_at_both_index_widths(monkeypatch, config, memory,
                                                           index_64):
    from fastops.triton_kernels import max_pool2d as kernels

    monkeypatch.setattr(kernels, "_index_64", lambda *args: index_64)
    config = WIDTH_CONFIGS[config]
    shape, *_, ceil_mode = config
    window = op_window(config)
    x = layout(make_input(shape, "ties", seed=3), memory).requires_grad_()
    want, want_indices = reference(x, config)
    out, argmax = kernels.max_pool2d_forward(x.detach(), *window, ceil_mode)
    assert torch.equal(out, want)
    assert torch.equal(kernels.max_pool2d_values(x.detach(), *window, ceil_mode), want)
    assert torch.equal(kernels.max_pool2d_indices(argmax, shape[-1], *window), want_indices)
    grad = torch.randn(want.shape, generator=torch.Generator().manual_seed(2))
    got_grad = kernels.max_pool2d_backward(grad, argmax, shape[-2:], *window)
    assert_close(got_grad, torch.autograd.grad(want, x, grad)[0], torch.float32)
