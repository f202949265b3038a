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


def reference(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None):
    out = TF.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return torch.relu(out) if activation == "relu" else out


def make(batch, in_channels, out_channels, size, kernel, groups=1, bias=True, device="cpu",
         dtype=torch.float32, seed=0):
    """input [*batch, C, H, W], weight [O, C / groups, kH, kW] (unit-variance outputs), bias [O]."""
    g = torch.Generator().manual_seed(seed)
    fan_in = in_channels // groups * kernel[0] * kernel[1]
    x = torch.randn(*batch, in_channels, *size, generator=g).to(device, dtype)
    w = (torch.randn(out_channels, in_channels // groups, *kernel, generator=g)
         / max(1, fan_in) ** 0.5)
    b = torch.randn(out_channels, generator=g).to(device, dtype).requires_grad_() if bias else None
    return x.requires_grad_(), w.to(device, dtype).requires_grad_(), b


def scale_for(in_channels, groups, kernel):
    """Tolerance scale: grows with the length of the reductions."""
    return 1 + in_channels // groups * kernel[0] * kernel[1] / 32


CASES = [  # (batch, in_channels, out_channels, (H, W), (kH, kW), bias, conv options)
    ((2,), 3, 6, (9, 11), (3, 3), True, {}),
    ((1,), 1, 1, (1, 1), (1, 1), True, {}),
    ((3,), 6, 4, (10, 7), (3, 2), False, dict(stride=2, padding=1)),
    ((2,), 6, 6, (8, 9), (3, 3), True, dict(groups=6, padding=1)),
    ((2,), 6, 12, (7, 7), (3, 3), False, dict(groups=6, padding="same")),
    ((2,), 4, 6, (9, 10), (4, 2), True, dict(groups=2, padding="same", dilation=(1, 3))),
    ((2,), 3, 5, (13, 12), (3, 3), True, dict(dilation=2, stride=(2, 3), padding=(2, 0))),
    ((0,), 3, 4, (5, 5), (3, 3), True, {}),
    ((), 3, 4, (6, 7), (3, 3), True, dict(padding=1)),
    ((), 6, 3, (5, 8), (2, 3), False, dict(padding="same", dilation=2)),
    ((2,), 64, 8, (5, 6), (3, 3), True, dict(padding="valid", groups=2)),
    ((2,), 3, 8, (5, 5), (5, 5), True, {}),
    ((1,), 2, 3, (6, 6), (1, 1), False, dict(stride=3)),
    ((2,), 5, 7, (4, 9), (2, 3), True, dict(padding=(3, 1), stride=(1, 2))),
    ((1,), 64, 64, (6, 5), (3, 3), True, dict(padding=1, groups=64)),
    # the CPU direct kernel: two blocks of 16 output channels, rows wider than one row block
    ((2,), 3, 20, (5, 31), (3, 3), True, dict(stride=(2, 1), padding=1)),
    # the CPU direct input gradient: rows of two 16-pixel chunks, an odd number of rows
    ((2,), 6, 16, (7, 21), (5, 5), True, dict(padding=2)),
    # a ResNet-like deep layer: stride 1 with the plain im2col (padded planes would waste half)
    ((2,), 40, 40, (4, 4), (3, 3), True, dict(padding=1)),
]


def case_id(case):
    batch, c, o, size, kernel, bias, options = case
    return f"{batch}x{c}x{size}-{o}x{kernel}-{'bias' if bias else 'nobias'}-" + "-".join(
        f"{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_parity(device, dtype, case, activation):
    batch, in_channels, out_channels, size, kernel, bias, options = case
    groups = options.get("groups", 1)
    inputs = make(batch, in_channels, out_channels, size, kernel, groups, bias, device, dtype)
    assert_same_forward_backward(
        lambda x, w, b: F.conv2d(x, w, b, **options, activation=activation),
        lambda x, w, b: reference(x, w, b, **options, activation=activation), list(inputs), dtype,
        scale=scale_for(in_channels, groups, kernel))


@pytest.mark.parametrize("layout", ["channels_last_input", "channels_last_weight", "noncontiguous"])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_memory_layouts_match_torch(layout, activation):
    x, w, b = make((2,), 6, 5, (7, 9), (3, 3), groups=1)
    x, w = x.detach(), w.detach()
    if layout == "channels_last_input":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "channels_last_weight":
        w = w.contiguous(memory_format=torch.channels_last)
    else:
        x = noncontiguous(x)
    x.requires_grad_(), w.requires_grad_()
    options = dict(padding=1, stride=(1, 2))
    out = F.conv2d(x, w, b, **options, activation=activation)
    ref = reference(x, w, b, **options, activation=activation)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        assert (out.is_contiguous(memory_format=memory_format)
                == ref.is_contiguous(memory_format=memory_format))
    assert_same_forward_backward(lambda *a: F.conv2d(*a, **options, activation=activation),
                                 lambda *a: reference(*a, **options, activation=activation),
                                 [x, w, b])


def test_channels_last_gradient_of_a_strided_output():
    x, w, b = make((3,), 4, 6, (8, 8), (3, 3))
    x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    # the gradient reaching the op is a non-contiguous slice's scatter, in channels-last layout
    assert_same_forward_backward(lambda *a: F.conv2d_relu(*a)[:, ::2, 1:],
                                 lambda *a: reference(*a, activation="relu")[:, ::2, 1:], [x, w, b])


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "mkldnn disabled"])
def test_large_float32_gemms(onednn, monkeypatch):
    # 32 -> 128 channels, 3x3, 30x31 pixels: the forward GEMM of the CPU im2col path (too few
    # input channels for oneDNN's convolution) has >= 2^25 multiply-adds and goes to oneDNN's
    # matmul, or to ATen's mm when torch.backends.mkldnn is disabled.
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", onednn)
    inputs = make((2,), 32, 128, (30, 31), (3, 3))
    assert_same_forward_backward(lambda *a: F.conv2d_relu(*a, padding=1),
                                 lambda *a: reference(*a, padding=1, activation="relu"),
                                 list(inputs), scale=scale_for(32, 1, (3, 3)))


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "mkldnn disabled"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
@pytest.mark.parametrize("dtype,shape", [
    (torch.float32, ((2,), 128, 128, (8, 7), (3, 3))),   # deep layer: oneDNN both ways
    (torch.float32, ((2,), 64, 64, (30, 31), (3, 3))),   # oneDNN forward only (64 channels)
    (torch.float32, ((2,), 32, 128, (16, 16), (3, 3))),  # oneDNN backward only (32 inputs)
    (torch.bfloat16, ((4,), 64, 64, (16, 16), (3, 3))),  # bfloat16, 2^25 multiply-adds
], ids=["float32 deep", "float32 64 channels", "float32 16x16", "bfloat16"])
def test_onednn_convolutions_match_torch(dtype, shape, channels_last, onednn, monkeypatch):
    # oneDNN's convolution (ReLU fused) and its backward, or the im2col path with mkldnn disabled
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", onednn)
    x, w, b = (t.detach().to(dtype) for t in make(*shape))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for activation in ("relu", None):
        inputs = [t.clone().requires_grad_() for t in (x, w, b)]
        out = F.conv2d(*inputs, padding=1, activation=activation)
        assert out.is_contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert_same_forward_backward(lambda *a: F.conv2d(*a, padding=1, activation=activation),
                                     lambda *a: reference(*a, padding=1, activation=activation),
                                     inputs, scale=scale_for(shape[1], 1, (3, 3)))
    # only some gradients: the others are not computed
    inputs = [x.clone().requires_grad_(), w.clone(), b.clone().requires_grad_()]
    assert_same_forward_backward(lambda *a: F.conv2d_relu(*a, padding=1),
                                 lambda *a: reference(*a, padding=1, activation="relu"), inputs,
                                 scale=scale_for(shape[1], 1, (3, 3)))


@pytest.mark.parametrize("requires", [(True, False, False), (False, True, False),
                                      (False, False, True), (False, True, True)])
@pytest.mark.parametrize("groups", [1, 2])  # 1: the CPU direct weight-gradient kernel
# bfloat16 with <= 4 input channels: the CPU backward runs in float32 and rounds what was asked
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_only_requested_gradients(requires, groups, dtype):
    x, w, b = make((2,), 4, 6, (7, 6), (3, 3), groups=groups, dtype=dtype)
    for t, r in zip((x, w, b), requires, strict=True):
        t.requires_grad_(r)
    options = dict(stride=(2, 1), groups=groups)
    assert_same_forward_backward(lambda *a: F.conv2d_relu(*a, **options),
                                 lambda *a: reference(*a, **options, activation="relu"), [x, w, b])


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding,kernel,dilation", [(2, 3, 1), ("same", (4, 3), (1, 2)),
                                                     ((1, 2), (2, 3), 1)])
@pytest.mark.parametrize("batched", [True, False])
def test_module_matches_nn_conv2d_for_every_padding_mode(padding_mode, padding, kernel, dilation,
                                                         batched):
    torch.manual_seed(0)
    ours = fastops.nn.Conv2d(4, 6, kernel, padding=padding, dilation=dilation, groups=2,
                             padding_mode=padding_mode)
    theirs = torch.nn.Conv2d(4, 6, kernel, padding=padding, dilation=dilation, groups=2,
                             padding_mode=padding_mode)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(*((2,) if batched else ()), 4, 7, 9, requires_grad=True)
    assert_same_forward_backward(lambda x, w, b: ours._conv_forward(x, w, b),
                                 lambda x, w, b: theirs._conv_forward(x, w, b),
                                 [x, ours.weight, ours.bias])
    assert_close(ours(x), theirs(x))


def test_relu_keeps_nan_and_masks_gradient_like_torch():
    x = torch.tensor([[[[float("nan"), 1.0, -2.0], [-1.0, 2.0, 3.0]]]], requires_grad=True)
    w = torch.ones(1, 1, 1, 1, requires_grad=True)
    b = torch.tensor([-1.5], requires_grad=True)
    assert_same_forward_backward(F.conv2d_relu, lambda *a: reference(*a, activation="relu"),
                                 [x, w, b])


@pytest.mark.parametrize("backend", ["cpu", "interpreter"])
def test_no_input_channels_give_no_output_channels_like_torch(backend):
    x = torch.randn(2, 0, 8, 8, requires_grad=True)
    w = torch.randn(4, 0, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    expected = TF.conv2d(x, w, b)  # torch: [2, 0, 6, 6]
    if backend == "cpu":
        out = F.conv2d(x, w, b)
        assert out.shape == expected.shape
        grads = torch.autograd.grad(out.sum(), [x, w, b])
    else:
        from fastops.triton_kernels.conv2d import conv2d_backward, conv2d_forward

        out = conv2d_forward(x.detach(), w.detach(), b.detach(), [1, 1], [0, 0], [1, 1], 1, "none")
        assert out.shape == expected.shape
        grads = conv2d_backward(torch.ones_like(out), x.detach(), w.detach(), None, list(x.shape),
                                [1, 1], [0, 0], [1, 1], 1, "none", [True, True, True])
    for got, want in zip(grads, torch.autograd.grad(expected.sum(), [x, w, b]), strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("stride,padding,dilation,groups", [((1, 1), (0, 0), (1, 1), 1),
                                                            ((2, 1), (1, 2), (2, 1), 2)])
def test_gradcheck(activation, stride, padding, dilation, groups):
    x, w, b = make((2,), 2, 4, (4, 3), (2, 2), groups, dtype=torch.float64)
    args = (stride, padding, dilation, groups, activation)
    assert torch.autograd.gradcheck(lambda x, w, b: fastops.ops.conv2d(x, w, b, *args), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: fastops.ops.conv2d(x, w, None, *args), (x, w))


@pytest.mark.parametrize("activation,bias,channels_last", [("none", True, False),
                                                           ("relu", False, True),
                                                           ("relu", True, False)])
def test_opcheck(activation, bias, channels_last):
    x, w, b = make((2,), 4, 6, (7, 6), (3, 3), groups=2, bias=bias)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    args = ((2, 1), (1, 0), (1, 2), 2, activation)
    torch.library.opcheck(fastops.ops.conv2d.default, (x, w, b, *args))
    torch.library.opcheck(fastops.ops.conv2d.default, (x.detach(), w.detach(), b, *args))


def test_double_backward_raises_a_clear_error():
    x, w, b = make((1,), 2, 3, (4, 4), (3, 3))
    with pytest.raises(RuntimeError, match="double backward through fastops ops is not supported"):
        torch.autograd.grad(F.conv2d_relu(x, w, b).sum(), x, create_graph=True)


def test_autocast_cpu_runs_in_bfloat16_like_nn_conv2d():
    x, w, b = make((2,), 3, 4, (6, 6), (3, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = F.conv2d(x, w, b, padding=1)
        ref = TF.conv2d(x, w, b, padding=1)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert_close(out, ref)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_module_compile_fullgraph(activation):
    torch.manual_seed(0)
    model = torch.nn.Sequential(fastops.nn.Conv2d(3, 4, 3, padding="same", activation=activation),
                                fastops.nn.Conv2dReLU(4, 2, (2, 3), stride=2,
                                                      padding_mode="reflect", padding=1))
    x = torch.randn(2, 3, 7, 8, requires_grad=True)
    compiled = compile_fullgraph(model)
    assert_same_forward_backward(compiled, model, [x])


def test_module_matches_nn_conv2d_and_state_dict_loads_both_ways():
    torch.manual_seed(0)
    ours = fastops.nn.Conv2dReLU(4, 6, 3, stride=2, padding=1, groups=2)
    torch.manual_seed(0)
    theirs = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    assert isinstance(ours, torch.nn.Conv2d)
    assert_close(ours.weight, theirs.weight)  # same initialisation from the same seed
    assert_close(ours.bias, theirs.bias)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(fastops.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, 9, 9)
    assert_close(ours(x), torch.relu(theirs(x)))
    assert "activation='relu'" in repr(ours)
    assert repr(fastops.nn.Conv2d(3, 5, 3, bias=False, padding_mode="reflect")) == repr(
        torch.nn.Conv2d(3, 5, 3, bias=False, padding_mode="reflect"))


def test_bad_input_raises_clear_errors_and_changes_nothing():
    x, w, b = make((2,), 4, 6, (9, 9), (3, 3))
    state = (x, w, b)
    raises(RuntimeError,
           r"expected input\[\[2, 4, 9, 9\]\] to have groups \* weight.shape\[1\] = 12 "
           r"channels.*got 4",
           F.conv2d, x, w, b, groups=3, state=state)
    raises(RuntimeError, "to have groups \\* weight.shape\\[1\\] = 4 channels.*got 3", F.conv2d,
           x[:, :3], w, b, state=state)
    raises(RuntimeError, "positive multiple of groups=4", F.conv2d, x, w[:, :1], b, groups=4,
           state=state)
    raises(RuntimeError, "non-positive groups", F.conv2d, x, w, b, groups=0, state=state)
    raises(RuntimeError, "non-positive stride", F.conv2d, x, w, b, stride=(1, 0), state=state)
    raises(RuntimeError, "negative padding", F.conv2d, x, w, b, padding=-1, state=state)
    raises(RuntimeError, "non-positive dilation", F.conv2d, x, w, b, dilation=0, state=state)
    raises(RuntimeError, r"padded input size per channel: \(9 x 9\).*\(11 x 3\).*can't be greater",
           F.conv2d, x, w, b, dilation=(5, 1), state=state)
    raises(RuntimeError, "padding='same' is not supported for strided convolutions",
           F.conv2d, x, w, b, stride=2, padding="same", state=state)
    raises(RuntimeError, "expected padding to be 'same', 'valid'", F.conv2d, x, w, b,
           padding="full", state=state)
    raises(RuntimeError, r"a list of 2 values.*stride=\[1, 1, 1\]", F.conv2d, x, w, b,
           stride=(1, 1, 1), state=state)
    raises(TypeError, "expected padding to be an int or a tuple of ints", F.conv2d, x, w, b,
           padding=1.0, state=state)
    raises(TypeError, "expected groups to be an int", F.conv2d, x, w, b, groups=2.0, state=state)
    raises(RuntimeError, r"bias of shape \[6\]", F.conv2d, x, w, b[:5], state=state)
    raises(RuntimeError, r"bias of shape \[6\]", F.conv2d, x, w, b.view(6, 1), state=state)
    raises(RuntimeError, "weight to have the dtype of input", F.conv2d, x, w.double(), b,
           state=state)
    raises(RuntimeError, "bias to have the dtype of input", F.conv2d, x, w, b.double(), state=state)
    raises(RuntimeError, "weight on the device of input", F.conv2d, x, w.to("meta"), b, state=state)
    raises(RuntimeError, "floating-point dtype", F.conv2d, x.long(), w.long(), state=state)
    raises(RuntimeError, r"3-D \(unbatched\) or 4-D \(batched\) input, got input of shape \[9, 9\]",
           F.conv2d, x[0, 0], w, b, state=state)
    raises(RuntimeError, r"expected weight to be 4-D.*got shape \[6, 4, 3\]", F.conv2d, x,
           w[..., 0], b, state=state)
    raises(ValueError, "activation must be None or one of", F.conv2d, x, w, b, activation="gelu",
           state=state)
    raises(ValueError, "activation must be None or one of", fastops.nn.Conv2d, 4, 6, 3,
           activation="tanh")
    raises(TypeError, "expected input to be a Tensor", F.conv2d, [1.0], w)
    # torch's own module-construction errors pass through unchanged
    raises(ValueError, "in_channels must be divisible by groups", fastops.nn.Conv2d, 4, 6, 3,
           groups=3)
    raises(ValueError, "padding_mode must be one of", fastops.nn.Conv2dReLU, 4, 6, 3,
           padding_mode="mirror")
    module = fastops.nn.Conv2d(4, 6, 3)
    raises(RuntimeError, "to have groups \\* weight.shape\\[1\\] = 4 channels", module, x[:, :2],
           state=(x, *module.parameters()))
    # the op itself validates too (direct calls bypass fastops.functional)
    args = ((1, 1), (0, 0), (1, 1), 1)
    raises(RuntimeError, "activation must be 'none' or 'relu'", fastops.ops.conv2d, x, w, b, *args,
           "gelu", state=state)
    raises(RuntimeError, "expected input to be 4-D", fastops.ops.conv2d, x[0], w, b, *args, "none",
           state=state)
    raises(RuntimeError, "expected stride to have 2 values", fastops.ops.conv2d, x, w, b, (1, 1, 1),
           *args[1:], "none")
    raises(RuntimeError, "expected a kernel of at least 1x1", fastops.ops.conv2d, x, w[..., :0], b,
           *args, "none")
    raises(RuntimeError,
           "fastops::conv2d: expected input.*to have groups \\* weight.shape\\[1\\] = 12 channels",
           fastops.ops.conv2d, x, w, b, *args[:3], 3, "none", state=state)
    raises(RuntimeError, "fastops::conv2d: calculated padded input size per channel",
           fastops.ops.conv2d, x, w, b, (1, 1), (0, 0), (5, 1), 1, "none", state=state)
    raises(RuntimeError, r"fastops::conv2d: expected bias of shape \[6\]", fastops.ops.conv2d, x, w,
           b[:2], *args, "none", state=state)
    raises(RuntimeError, "fastops::conv2d: non-positive groups", fastops.ops.conv2d, x, w, b,
           *args[:3], 0, "none")


# ----------------------------------------------------------- Triton kernels (interpreter on CPU)

TRITON_CASES = [  # (batch, C, O, (H, W), (kH, kW), stride, padding, dilation, groups)
    (2, 3, 5, (7, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (1, 4, 6, (9, 8), (3, 2), (2, 3), (2, 0), (1, 2), 2),
    (2, 4, 4, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1), 4),
    (0, 3, 2, (4, 4), (3, 3), (1, 1), (0, 0), (1, 1), 1),
    # sizes no tile divides, stride and dilation 2, groups: ragged channel blocks and masked taps
    (2, 20, 18, (11, 13), (3, 3), (2, 2), (2, 1), (2, 2), 2),
    # two channel blocks per tap (the second ragged) in the forward and the input gradient
    (1, 40, 36, (7, 9), (3, 3), (1, 2), (1, 1), (1, 1), 1),
]


@pytest.mark.parametrize("bias,channels_last", [(True, False), (False, True)])
@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("case", TRITON_CASES)
def test_triton_launchers_match_torch(bias, activation, channels_last, case):
    from fastops.triton_kernels.conv2d import conv2d_backward, conv2d_forward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch, c, o, size, kernel, stride, padding, dilation, groups = case
    x, w, b = make((batch,), c, o, size, kernel, groups, bias, device)
    x = (x.detach().contiguous(memory_format=torch.channels_last) if channels_last
         else noncontiguous(x.detach()))
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    act = "relu" if activation == "relu" else None
    out = conv2d_forward(x, w.detach(), b.detach() if bias else None, stride, padding, dilation,
                         groups, activation)
    x.requires_grad_()
    ref = reference(x, w, b, **options, activation=act)
    assert (out.is_contiguous(memory_format=torch.channels_last)
            == ref.is_contiguous(memory_format=torch.channels_last))
    assert_close(out, ref.detach(), scale=3)

    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [x, w, b] if bias else [x, w], grad)
    for mask in ([True, True, bias], [False, False, bias], [True, False, False],
                 [False, True, False]):
        got = conv2d_backward(grad, x.detach(), w.detach(), out, list(x.shape), stride, padding,
                              dilation, groups, activation, mask)
        for needed, g, expected in zip(mask, got, list(want) + [None], strict=False):
            if needed:
                assert_close(g, expected, scale=3)
            else:
                assert g.numel() == 0


def test_triton_int64_indexing_only_past_int32():
    from fastops.triton_kernels.conv2d import _needs_int64

    small = torch.empty(2, 3, 8, 8)
    assert not _needs_int64(2 * 8 * 8, small)
    assert not _needs_int64(2**30, small)
    # a pixel index (batch * OH * OW, or batch * H * W) that reaches 2**31
    assert _needs_int64(2**31, small)
    assert _needs_int64(2**15 * 256 * 256, small)
    # a tensor spanning 2**31 elements or more, with few pixels (meta tensors: no memory)
    assert _needs_int64(4096, small, torch.empty(1, 2**15, 256, 256, device="meta"))
    assert _needs_int64(4096, torch.empty(2**15, 64, 32, 32, device="meta"))
    # strides count, not the number of elements: a strided view spans its whole storage
    assert _needs_int64(1, torch.empty(2**20, 2**12, device="meta")[:, :1])
    # an expanded tensor (stride 0) spans one element per row, however large its shape
    assert not _needs_int64(64, torch.empty(1, 3, 8, 8).expand(2**24, 3, 8, 8))


@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_int64_indexing_matches_torch(channels_last, monkeypatch):
    # the 64-bit variant of every kernel (tensors that large do not fit a test): forced on
    from fastops.triton_kernels import conv2d as kernels

    monkeypatch.setattr(kernels, "_needs_int64", lambda *args: True)
    x, w, b = make((2,), 4, 6, (9, 7), (3, 3), 2, True)
    x = x.detach().contiguous(memory_format=torch.channels_last) if channels_last else x.detach()
    conv = ((2, 1), (1, 1), (1, 2), 2)
    out = kernels.conv2d_forward(x, w.detach(), b.detach(), *conv, "relu")
    x.requires_grad_()
    ref = reference(x, w, b, *conv, activation="relu")
    assert_close(out, ref.detach(), scale=3)
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [x, w, b], grad)
    got = kernels.conv2d_backward(grad, x.detach(), w.detach(), out, list(x.shape), *conv, "relu",
                                  [True, True, True])
    for g, expected in zip(got, want, strict=True):
        assert_close(g, expected, scale=3)


def test_triton_float32_precision_is_the_convolution_setting(monkeypatch):
    # TF32 for float32 where torch's convolutions use it (cudnn.allow_tf32), not the matmul setting
    from fastops.triton_kernels import conv2d as kernels

    ops = []
    precision = kernels.fp32_dot_precision
    monkeypatch.setattr(kernels, "fp32_dot_precision",
                        lambda dtype, op="matmul": ops.append(op) or precision(dtype, op))
    x, w, b = (t.detach() for t in make((2,), 3, 4, (6, 5), (3, 3)))
    conv = ((1, 1), (1, 1), (1, 1), 1)
    out = kernels.conv2d_forward(x, w, b, *conv, "none")
    kernels.conv2d_backward(torch.ones_like(out), x, w, out, list(x.shape), *conv, "none",
                            [True, True, True])
    assert ops and set(ops) == {"conv"}


# ----------------------------------------------------------------------------- CUDA (real GPU)

@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("allow_tf32", [False, True])
def test_cuda_float32_follows_cudnn_allow_tf32(allow_tf32):
    # torch's fp32 convolutions run in TF32 while torch.backends.cudnn.allow_tf32 (the default),
    # whatever the matmul precision: the Triton kernels follow the same switch.
    previous = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = allow_tf32
    try:
        in_channels, kernel = 32, (3, 3)
        inputs = make((8,), in_channels, 48, (17, 19), kernel, device="cuda")
        # TF32 keeps 10 mantissa bits (~5e-4 relative per product): ~3e-4 scaled by the length of
        # the reductions (as scale_for, in units of the fp32 tolerance 1e-5)
        scale = 30 * scale_for(in_channels, 1, kernel) if allow_tf32 else 3
        assert_same_forward_backward(lambda *a: F.conv2d_relu(*a, padding=1),
                                     lambda *a: reference(*a, padding=1, activation="relu"),
                                     list(inputs), scale=scale)
    finally:
        torch.set_float32_matmul_precision(previous[0])
        torch.backends.cudnn.allow_tf32 = previous[1]


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("channels_last", [False, True])
def test_lenet_and_resnet_shapes_match(device, channels_last):
    for batch, c, o, size, kernel, options in [(16, 3, 6, (32, 32), (5, 5), {}),
                                               (16, 6, 16, (14, 14), (5, 5), {}),
                                               (4, 64, 64, (16, 16), (3, 3), dict(padding=1))]:
        x, w, b = make((batch,), c, o, size, kernel, device=device)
        if channels_last:
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        assert_same_forward_backward(lambda *a: F.conv2d_relu(*a, **options),
                                     lambda *a: reference(*a, **options, activation="relu"),
                                     [x, w, b], scale=10)  # grad_weight sums batch * pixels terms


def test_triton_fp32_precision_reads_torch_new_and_legacy_tf32_flags():
    """conv follows cuDNN's conv setting, linear the matmul one, whether set with the legacy flags
    or torch's fp32_precision API (reading the legacy flags raises once the two are mixed)."""
    from fastops.triton_kernels._utils import fp32_dot_precision

    settings = [torch.backends.cudnn.conv, torch.backends.cudnn, torch.backends.cuda.matmul]
    saved = [s.fp32_precision for s in settings]
    try:
        assert fp32_dot_precision(torch.float16, "conv") == "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"  # new API: conv IEEE, matmul unchanged
        assert fp32_dot_precision(torch.float32, "conv") == "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        assert fp32_dot_precision(torch.float32) == "tf32"
        torch.backends.cudnn.allow_tf32 = True  # legacy API
        assert fp32_dot_precision(torch.float32, "conv") == "tf32"
        torch.set_float32_matmul_precision("highest")
        assert fp32_dot_precision(torch.float32) == "ieee"
    finally:
        for setting, value in zip(settings, saved, strict=True):
            setting.fp32_precision = value
