import pytest
import torch
import torch.nn.functional as TF
from helpers import (
    CUDA,
    DEVICE_DTYPES,
    assert_close,
    assert_same_forward_backward,
    compile_fullgraph,
    dropout_reference,
    noncontiguous,
    raises,
    requires_cuda,
    seeded,
)

import fastops
from fastops import functional as F


def reference(input, weight, bias=None, activation=None):
    out = TF.linear(input, weight, bias)
    return torch.relu(out) if activation == "relu" else out


def make(batch, in_features, out_features, bias, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, in_features, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(out_features, in_features, generator=g) / in_features**0.5).to(device, dtype)
    b = torch.randn(out_features, generator=g).to(device, dtype) if bias else None
    return x, w.requires_grad_(), b.requires_grad_() if bias else None


SHAPES = [  # (batch dims, in_features, out_features): odd sizes no block divides
    ((), 7, 3),
    ((1,), 1, 1),
    ((5,), 33, 17),
    ((0,), 6, 4),
    ((3, 4), 13, 65),
    ((2, 1, 3), 8, 5),
    ((130,), 70, 129),
]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("batch,in_features,out_features", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_parity(device, dtype, batch, in_features, out_features, bias, activation):
    inputs = make(batch, in_features, out_features, bias, device, dtype)
    assert_same_forward_backward(
        lambda x, w, b: F.linear(x, w, b, activation=activation),
        lambda x, w, b: reference(x, w, b, activation), list(inputs), dtype,
        scale=1 + in_features / 32)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_noncontiguous_inputs(activation):
    x, w, b = make((6, 3), 9, 5, True)
    x, w = noncontiguous(x.detach()).requires_grad_(), w.detach().t().contiguous().t()
    w.requires_grad_()
    assert not x.is_contiguous() and not w.is_contiguous()
    assert_same_forward_backward(lambda *a: F.linear(*a, activation=activation),
                                 lambda *a: reference(*a, activation), [x, w, b])


@pytest.mark.parametrize("batch", [(4,), (2, 3)])
def test_zero_in_features_gives_the_bias_like_torch(batch):
    # nn.Linear(0, 3): the output is the bias (zeros without one), and every gradient is defined
    x, w, b = make(batch, 0, 3, True)
    assert_same_forward_backward(lambda *a: F.linear_relu(*a), lambda *a: reference(*a, "relu"),
                                 [x, w, b])


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "mkldnn disabled"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "noncontiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_products(onednn, contiguous, dtype, monkeypatch):
    # Every GEMM here (forward, grad_input, grad_weight) has >= 2^25 multiply-adds: the CPU
    # kernels route them to oneDNN (in bfloat16 with the ReLU fused into the forward's), or to
    # at::mm when torch.backends.mkldnn is disabled.
    x, w, b = (t.detach().to(dtype).requires_grad_() for t in make((2, 131), 515, 257, True))
    if not contiguous:
        x = noncontiguous(x.detach()).requires_grad_()
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", onednn)
    assert_same_forward_backward(lambda *a: F.linear_relu(*a), lambda *a: reference(*a, "relu"),
                                 [x, w, b], scale=1 + 515 / 32)


@pytest.mark.parametrize("requires", [(True, False, False), (False, True, True),
                                      (False, False, True)])
def test_only_requested_gradients(requires):
    x, w, b = make((4,), 5, 3, True)
    for t, r in zip((x, w, b), requires, strict=True):
        t.requires_grad_(r)
    assert_same_forward_backward(F.linear_relu, lambda *a: reference(*a, "relu"), [x, w, b])


def test_vector_weight_and_broadcast_bias_like_torch():
    x = torch.randn(4, 6, requires_grad=True)
    assert_same_forward_backward(F.linear, TF.linear, [x, torch.randn(6, requires_grad=True)])
    assert_same_forward_backward(F.linear, TF.linear, [x[0], torch.randn(3, 6)])
    for bias in (torch.tensor([0.5]), torch.tensor(0.5), torch.randn(4, 3), torch.randn(1, 3)):
        w = torch.randn(3, 6)
        assert_same_forward_backward(F.linear, TF.linear, [x, w, bias.requires_grad_()])
        assert_same_forward_backward(F.linear_relu, lambda *a: reference(*a, "relu"), [x, w, bias])


def test_relu_keeps_nan_and_masks_gradient_like_torch():
    x = torch.tensor([[float("nan"), 1.0], [-1.0, 2.0]], requires_grad=True)
    w = torch.eye(2, requires_grad=True)
    assert_same_forward_backward(F.linear_relu, lambda *a: reference(*a, "relu"), [x, w, None])


@pytest.mark.parametrize("activation", ["none", "relu"])
def test_gradcheck(activation):
    x, w, b = make((3, 2), 5, 4, True, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: fastops.ops.linear(*a, activation), (x, w, b))
    assert torch.autograd.gradcheck(lambda *a: fastops.ops.linear(*a, None, activation), (x, w))


@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(activation, bias):
    x, w, b = make((3, 2), 5, 4, bias)
    torch.library.opcheck(fastops.ops.linear.default, (x, w, b, activation))
    torch.library.opcheck(fastops.ops.linear.default, (x.detach(), w.detach(), b, activation))


def test_double_backward_raises_a_clear_error():
    x, w, b = make((3,), 4, 2, True)
    with pytest.raises(RuntimeError, match="double backward through fastops ops is not supported"):
        torch.autograd.grad(F.linear_relu(x, w, b).sum(), x, create_graph=True)


def test_autocast_cpu_runs_in_bfloat16_like_nn_linear():
    x, w, b = make((4,), 8, 3, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = F.linear(x, w, b)
        ref = TF.linear(x, w, b)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert_close(out, ref)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_module_compile_fullgraph(activation):
    torch.manual_seed(0)
    model = torch.nn.Sequential(fastops.nn.Linear(6, 5, activation=activation),
                                fastops.nn.Linear(5, 2))
    x = torch.randn(3, 6, requires_grad=True)
    compiled = compile_fullgraph(model)
    assert_same_forward_backward(compiled, model, [x])


def test_module_matches_nn_linear_and_state_dict_loads_both_ways():
    torch.manual_seed(0)
    ours = fastops.nn.LinearReLU(7, 3)
    torch.manual_seed(0)
    theirs = torch.nn.Linear(7, 3)
    assert isinstance(ours, torch.nn.Linear)
    assert_close(ours.weight, theirs.weight)  # same initialisation from the same seed
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(fastops.nn.Linear(7, 3).state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 7)
    assert_close(ours(x), torch.relu(theirs(x)))
    assert "activation='relu'" in repr(ours)
    assert (repr(fastops.nn.Linear(7, 3, bias=False))
            == "Linear(in_features=7, out_features=3, bias=False)")


def test_bad_input_raises_clear_errors_and_changes_nothing():
    x, w, b = make((4,), 5, 3, True)
    state = (x, w, b)
    raises(RuntimeError, r"input.shape\[-1\] is 6.*in_features = 5", F.linear, torch.randn(4, 6),
           w, b, state=state)
    raises(RuntimeError, "weight to have the dtype of input", F.linear, x, w.double(), b,
           state=state)
    raises(RuntimeError, "bias to have the dtype of input", F.linear, x, w, b.double(), state=state)
    raises(RuntimeError, r"bias of shape \[3\]", F.linear, x, w, torch.randn(4), state=state)
    raises(RuntimeError, "a bias needs a 2-D weight", F.linear, x, w[0], b[0], state=state)
    raises(RuntimeError, "weight on the device of input", F.linear, x, w.to("meta"), b, state=state)
    raises(RuntimeError, "floating-point dtype", F.linear, x.long(), w.long(), state=state)
    raises(RuntimeError, "0-D", F.linear, torch.tensor(1.0), w, state=state)
    raises(ValueError, "activation must be None or one of", F.linear, x, w, b, activation="gelu",
           state=state)
    raises(ValueError, "activation must be None or one of", fastops.nn.Linear, 5, 3,
           activation="tanh")
    raises(TypeError, "expected input to be a Tensor", F.linear, [1.0], w)
    # the op itself validates too (direct calls bypass fastops.functional)
    raises(RuntimeError, "activation must be 'none' or 'relu'", fastops.ops.linear, x, w, b, "gelu",
           state=state)
    raises(RuntimeError, r"expected input.shape\[-1\] == 5", fastops.ops.linear, torch.randn(2, 4),
           w, b, "none")


# ------------------------------------------------------ fused dropout: Linear -> ReLU -> Dropout

P = 0.3  # the dropout probability of the fused tests


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("batch,in_features,out_features",
                         [((5,), 33, 17), ((0,), 6, 4), ((3, 4), 13, 65), ((1,), 1, 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_fused_dropout_matches_torch_with_the_same_mask(device, dtype, batch, in_features,
                                                        out_features, bias, activation):
    inputs = make(batch, in_features, out_features, bias, device, dtype)
    # the mask fastops' dropout draws for the output after the same manual_seed: the fused op's
    keep = seeded(F.dropout, 4)(torch.ones(*batch, out_features, device=device), P) != 0
    assert_same_forward_backward(
        seeded(lambda x, w, b: F.linear(x, w, b, activation=activation, dropout=P), 4),
        lambda x, w, b: dropout_reference(reference(x, w, b, activation), keep, P), list(inputs),
        dtype, scale=1 + in_features / 32)


def test_fused_dropout_equals_unfused_fastops_exactly_and_saves_no_mask():
    x, w, b = make((16,), 24, 40, True)
    fused, saved = fastops.saved_tensor_bytes(seeded(F.linear_relu, 2), x, w, b, dropout=0.5)
    unfused = seeded(lambda *a: F.dropout(F.linear_relu(*a), 0.5), 2)(x, w, b)
    assert torch.equal(fused, unfused)
    _, saved_without_dropout = fastops.saved_tensor_bytes(F.linear_relu, x, w, b)
    assert saved == saved_without_dropout  # x, w and the output: no mask
    grads = torch.autograd.grad(fused, (x, w, b), torch.ones_like(fused))
    want = torch.autograd.grad(unfused, (x, w, b), torch.ones_like(unfused))
    for got, expected in zip(grads, want, strict=True):
        assert_close(got, expected)


def test_fused_dropout_module_follows_train_and_eval():
    torch.manual_seed(0)
    layer = fastops.nn.Linear(8, 64, activation="relu", dropout=0.5)
    x = torch.randn(32, 8)
    plain = F.linear_relu(x, layer.weight, layer.bias)
    out = layer(x)
    dropped = (out == 0) & (plain > 0)
    assert dropped.any()
    assert_close(out[~dropped], plain[~dropped] * 2)
    layer.eval()
    assert torch.equal(layer(x), plain)
    assert repr(layer) == ("Linear(in_features=8, out_features=64, bias=True, activation='relu', "
                           "dropout=0.5)")
    assert "dropout=0.2" in repr(fastops.nn.LinearReLU(3, 2, dropout=0.2))
    assert layer.state_dict().keys() == torch.nn.Linear(8, 64).state_dict().keys()
    assert torch.equal(F.linear(x, layer.weight, layer.bias, dropout=0.5, training=False),
                       F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("activation", ["none", "relu"])
def test_fused_dropout_gradcheck_and_opcheck(activation):
    x, w, b = make((3, 2), 5, 4, True, dtype=torch.float64)
    seed = torch.tensor(987654321)
    assert torch.autograd.gradcheck(lambda *a: fastops.ops.linear(*a, activation, seed, 0.4),
                                    (x, w, b))
    x, w, b = make((3, 2), 5, 4, True)
    torch.library.opcheck(fastops.ops.linear.default, (x, w, b, activation, seed, 0.4))
    torch.library.opcheck(fastops.ops.linear.default, (x, w, None, activation, seed, 1.0))


def test_fused_dropout_module_compile_fullgraph():
    torch.manual_seed(0)
    model = torch.nn.Sequential(fastops.nn.LinearReLU(6, 16, dropout=0.5), fastops.nn.Linear(16, 2))
    x = torch.randn(5, 6, requires_grad=True)
    compiled = compile_fullgraph(model)
    assert_same_forward_backward(seeded(compiled, 1), seeded(model, 1), [x])


def test_fused_dropout_bad_input():
    x, w, b = make((4,), 5, 3, True)
    raises(ValueError, "dropout probability has to be between 0 and 1, but got 1.5", F.linear, x, w,
           b, dropout=1.5, state=(x, w, b))
    raises(ValueError, "dropout probability has to be between 0 and 1, but got -1",
           fastops.nn.Linear, 5, 3, dropout=-1)
    raises(RuntimeError, "expected seed to be a one-element int64 CPU tensor", fastops.ops.linear,
           x, w, b, "relu", torch.tensor(1.0), 0.5, state=(x, w, b))
    raises(RuntimeError, "between 0 and 1, but got 2", fastops.ops.linear, x, w, b, "relu",
           torch.tensor(1), 2.0)


# ----------------------------------------------------------- Triton kernels (interpreter on CPU)

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("batch,in_features,out_features",
                         [((5,), 33, 17), ((2, 3), 20, 40), ((0,), 4, 3)])
def test_triton_launchers_match_torch(bias, activation, batch, in_features, out_features):
    from fastops.triton_kernels.linear import linear_backward, linear_forward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, w, b = make(batch, in_features, out_features, bias, device)
    x = noncontiguous(x.detach())
    out = linear_forward(x, w.detach(), b.detach() if bias else None, activation)
    ref = reference(x, w, b, "relu" if activation == "relu" else None)
    assert_close(out, ref.detach(), scale=3)

    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [w, b] if bias else [w], grad)
    x.requires_grad_()
    want_x = torch.autograd.grad(reference(x, w, b, "relu" if activation == "relu" else None), x,
                                 grad)[0]
    gx, gw, gb = linear_backward(grad, x.detach(), w.detach(), out, activation, [True, True, bias])
    assert_close(gx, want_x, scale=3)
    assert_close(gw, want[0], scale=3)
    if bias:
        assert_close(gb, want[1], scale=3)
    else:
        assert gb.numel() == 0


@pytest.mark.parametrize("output_mask", [[False, False, True], [False, True, True]], ids=str)
@pytest.mark.parametrize("in_features", [0, 19])
def test_triton_bias_gradient_with_and_without_the_weight_gradient(output_mask, in_features):
    """The bias gradient is summed inside the weight-gradient matmul, or by the column-sum
    kernel when that product is not computed (or has no columns)."""
    from fastops.triton_kernels.linear import linear_backward, linear_forward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, w, b = (t.detach().to(device) for t in make((70,), in_features, 13, True))
    out = linear_forward(x, w, b, "relu")
    grad = torch.randn_like(out)
    _, gw, gb = linear_backward(grad, x, w, out, "relu", output_mask)
    assert_close(gb, torch.where(out > 0, grad, 0).sum(0), scale=3)
    assert gw.shape == (w.shape if output_mask[1] else (0,))


@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out_features", [37, 40])  # one Philox call per element, or per 4
def test_triton_launchers_with_dropout_match_the_cpu_op(activation, bias, out_features):
    from fastops.triton_kernels.linear import linear_backward, linear_forward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, w, b = (t.detach() if t is not None else None for t in make((6, 3), 20, out_features, bias))
    seed = torch.tensor(2**33 + 9)
    want = fastops.ops.linear(x, w, b, activation, seed, 0.4)
    got = linear_forward(x.to(device), w.to(device), b.to(device) if bias else None, activation,
                         seed, 0.4)
    assert torch.equal(got.cpu() == 0, want == 0)  # the CPU kernel's mask
    assert_close(got.cpu(), want, scale=3)
    grad = torch.randn_like(want)
    want_grads = fastops.ops.linear_backward(grad, x, w, want, activation, [True, True, bias], seed,
                                             0.4)
    got_grads = linear_backward(grad.to(device), x.to(device), w.to(device), got, activation,
                                [True, True, bias], seed, 0.4)
    for g, expected in zip(got_grads, want_grads, strict=True):
        assert g.shape == expected.shape
        assert_close(g.cpu(), expected, scale=3)


# ---------------------------------------------------------------------------- CUDA (real GPU)

@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision,scale", [("highest", 1), ("high", 30)])
def test_cuda_float32_follows_matmul_precision(precision, scale):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        inputs = make((64,), 256, 96, True, "cuda")
        assert_same_forward_backward(F.linear_relu, lambda *a: reference(*a, "relu"), list(inputs),
                                     scale=scale)
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_large_batch_matches(device):
    inputs = make((257,), 300, 130, True, device)
    assert_same_forward_backward(F.linear_relu, lambda *a: reference(*a, "relu"), list(inputs),
                                 scale=10)
