import math
import warnings

import pytest
import torch
import torch.nn.functional as TF
import triton
import triton.language as tl
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

FUNCTIONS = {"dropout": F.dropout, "dropout1d": F.dropout1d, "dropout2d": F.dropout2d,
             "dropout3d": F.dropout3d}


def mask_of(fn, shape, device, seed):
    """The keep-mask that ``fn`` (a dropout function) draws for ``shape`` after
    manual_seed(seed)."""
    return seeded(fn, seed)(torch.ones(shape, device=device)) != 0


SHAPES = [(), (1,), (7,), (0, 3), (5, 13), (3, 4, 129), (2, 3, 5, 7)]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_parity_with_torch_arithmetic(device, dtype, shape, p):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1))
         .to(device, dtype).requires_grad_())
    keep = mask_of(lambda t: F.dropout(t, p), shape, device, seed=3)
    assert_same_forward_backward(seeded(lambda t: F.dropout(t, p), 3),
                                 lambda t: dropout_reference(t, keep, p), [x], dtype)


@pytest.mark.parametrize("name,shape,channel_dims", [
    ("dropout1d", (3, 4, 7), 2), ("dropout1d", (5, 9), 1),
    ("dropout2d", (2, 3, 5, 7), 2), ("dropout2d", (4, 6, 3), 2), ("dropout2d", (6, 5), 2),
    ("dropout3d", (2, 3, 2, 3, 5), 2), ("dropout3d", (3, 2, 3, 5), 1),
])
def test_channel_dropout_drops_whole_channels_like_torch(name, shape, channel_dims):
    fn, torch_fn = FUNCTIONS[name], getattr(TF, name)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout2d's 3-D warning: checked in its own test
        keep = mask_of(lambda t: fn(t, 0.4), shape, "cpu", seed=5)
        assert_same_forward_backward(seeded(lambda t: fn(t, 0.4), 5),
                                     lambda t: dropout_reference(t, keep, 0.4), [x])
        torch_keep = mask_of(lambda t: torch_fn(t, 0.4), shape, "cpu", seed=5)
    # whole channels, as torch: the mask is constant over the dimensions after the channel one
    for m in (keep, torch_keep):
        channels = m.reshape(*shape[:channel_dims], -1)
        assert (channels == channels[..., :1]).all()


def test_channel_dropout_warnings_and_errors_match_torch():
    for fn, torch_fn in ((F.dropout2d, TF.dropout2d), (F.dropout3d, TF.dropout3d)):
        for shape in ((2, 3, 4), (2, 3, 4, 5, 6, 7)):
            x = torch.ones(shape)
            with pytest.warns(UserWarning) as ours:
                fn(x, 0.5)
            with pytest.warns(UserWarning) as theirs:
                torch_fn(x, 0.5)
            assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
    x = torch.ones(2, 3, 4, 5)
    raises(RuntimeError, "Expected 2D or 3D input, but received a 4D input", F.dropout1d, x,
           state=[x])
    with pytest.warns(UserWarning):
        raises(RuntimeError, "Feature dropout requires at least 2 dimensions", F.dropout2d,
               torch.ones(3), 0.5)
        # as torch: p = 1 zeroes a 1-D input without the feature-shape check, eval returns it
        assert (F.dropout2d(torch.ones(3), 1.0) == 0).all()
        assert (F.dropout2d(torch.ones(3), 0.5, training=False) == 1).all()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_statistics_kept_fraction_and_mean(p):
    n = 200_000
    torch.manual_seed(0)
    out = F.dropout(torch.ones(n), p)
    kept = (out != 0).double().mean().item()
    bound = 5 * math.sqrt(p * (1 - p) / n)  # 5 sigma of the binomial
    assert abs(kept - (1 - p)) < bound
    assert abs(out.double().mean().item() - 1) < bound / (1 - p)
    assert set(out.unique().tolist()) == {0.0, torch.tensor(1 / (1 - p)).item()}


def test_gradient_is_mask_times_scale_and_backward_mask_is_forward_mask():
    x = (torch.rand(37, 53) + 0.5).requires_grad_()  # no zero: out != 0 is the mask
    out = F.dropout(x, 0.3)
    grad = torch.randn_like(out)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    keep = out != 0
    assert keep.any() and not keep.all()
    assert_close(grad_x, grad * keep / 0.7)
    assert_close(out, x.detach() * keep / 0.7)


def test_saves_no_mask_only_the_seed():
    x = torch.randn(64, 256, requires_grad=True)
    _, saved = fastops.saved_tensor_bytes(lambda t: F.dropout(t, 0.5), x)
    assert saved == 0  # the seed is kept as a tensor attribute, not as a saved activation
    _, saved_torch = fastops.saved_tensor_bytes(lambda t: TF.dropout(t, 0.5), x)
    assert saved_torch >= x.numel()  # torch keeps a mask


def test_reproducible_under_manual_seed_and_different_across_calls():
    x = torch.randn(1000)
    torch.manual_seed(7)
    first, second = F.dropout(x, 0.5), F.dropout(x, 0.5)
    torch.manual_seed(7)
    assert torch.equal(F.dropout(x, 0.5), first)
    assert not torch.equal(first, second)
    torch.manual_seed(8)
    assert not torch.equal(F.dropout(x, 0.5), first)


def test_identity_cases_return_the_input_like_torch():
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    for name, fn in FUNCTIONS.items():
        t = x[0] if name == "dropout1d" else x
        assert fn(t, 0.5, training=False) is t
        assert fn(t, 0.0) is t
        assert fn(t, 0.0, inplace=True) is t
    empty = torch.randn(0, 3)
    assert F.dropout(empty, 0.5) is empty
    module = fastops.nn.Dropout(0.5).eval()
    assert module(x) is x
    # eval mode returns even an integer tensor unchanged, as torch
    ints = torch.arange(3)
    assert F.dropout(ints, 0.5, training=False) is ints


def test_p_one_zeroes_everything_like_torch_including_nan():
    x = torch.tensor([float("nan"), float("inf"), -2.0, 3.0], requires_grad=True)
    out = F.dropout(x, 1.0)
    torch.testing.assert_close(out, TF.dropout(x, 1.0), equal_nan=True)
    (grad,) = torch.autograd.grad(out, x, torch.ones(4))
    assert (grad == 0).all()
    # p=True: p=1
    torch.testing.assert_close(F.dropout(x, True), TF.dropout(x, True), equal_nan=True)


def test_nan_and_inf_inputs_propagate_like_torch_multiplication():
    x = torch.full((400,), float("nan"))
    assert F.dropout(x, 0.5).isnan().all()  # NaN * 0 is NaN, as torch's input * noise


def test_inplace_matches_out_of_place_and_bumps_the_version():
    base = torch.randn(6, 7, requires_grad=True)
    x = base * 1  # a non-leaf: in-place is allowed
    version = x._version
    want = seeded(F.dropout, 2)(x.detach().clone(), 0.4)
    out = seeded(F.dropout, 2)(x, 0.4, inplace=True)
    assert out is x and x._version > version
    assert torch.equal(x.detach(), want)
    (grad,) = torch.autograd.grad(x, base, torch.ones_like(x))
    assert torch.equal(grad, (want != 0) / 0.6)
    # a view of a non-leaf: the gradient flows through the slice only
    y = base * 1
    keep = seeded(F.dropout, 5)(torch.ones(6, 3), 0.4) != 0
    seeded(F.dropout, 5)(y[:, 2:5], 0.4, inplace=True)
    (grad,) = torch.autograd.grad(y, base, torch.ones_like(y))
    want = torch.ones(6, 7)
    want[:, 2:5] = keep / 0.6
    assert torch.equal(grad, want)
    module = fastops.nn.Dropout(0.4, inplace=True)
    y = torch.randn(5, 3)[:, ::2]  # non-contiguous: written back through a copy
    want = seeded(F.dropout, 4)(y.clone(), 0.4)
    assert seeded(module, 4)(y) is y and torch.equal(y, want)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_inplace_on_a_leaf_that_requires_grad_fails_like_torch(name):
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    if name == "dropout1d":
        x = torch.randn(2, 3, 4, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raises(RuntimeError,
               "a leaf Variable that requires grad is being used in an in-place operation",
               FUNCTIONS[name], x, 0.5, inplace=True, state=[x])
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):
            getattr(TF, name)(x, 0.5, inplace=True)
        raises(RuntimeError, "a view of a leaf Variable that requires grad", FUNCTIONS[name],
               x[:1], 0.5, inplace=True, state=[x])
        with torch.no_grad():  # allowed without grad mode, as torch
            assert FUNCTIONS[name](x, 0.5, inplace=True) is x


def test_noncontiguous_and_channels_last_inputs():
    x = torch.randn(2, 3, 5, 7)
    for fn in (F.dropout, F.dropout2d):
        want = seeded(fn, 9)(x, 0.3)
        for variant in (noncontiguous(x), x.contiguous(memory_format=torch.channels_last)):
            got = seeded(fn, 9)(variant, 0.3)
            assert torch.equal(got, want)
    cl = seeded(F.dropout, 9)(x.contiguous(memory_format=torch.channels_last), 0.3)
    assert cl.is_contiguous(memory_format=torch.channels_last)  # as torch keeps the layout
    x3 = torch.randn(2, 3, 2, 3, 5).contiguous(memory_format=torch.channels_last_3d)
    assert seeded(F.dropout3d, 1)(x3, 0.3).is_contiguous(memory_format=torch.channels_last_3d)


def test_gradcheck_and_double_backward():
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor(123456789)
    for channel_size in (1, 7):
        op = lambda t: fastops.ops.dropout(t, seed, 0.4, channel_size)  # noqa: E731
        assert torch.autograd.gradcheck(op, (x,))
        assert torch.autograd.gradgradcheck(op, (x,))


def test_opcheck():
    x = torch.randn(3, 5, 7, requires_grad=True)
    seed = torch.tensor(2**40 + 5)
    for channel_size in (1, 35):
        torch.library.opcheck(fastops.ops.dropout.default, (x, seed, 0.3, channel_size))
        torch.library.opcheck(fastops.ops.dropout_.default,
                              (x.detach().clone(), seed, 0.3, channel_size))


def test_module_compile_fullgraph_draws_the_same_masks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(fastops.nn.Linear(6, 8), fastops.nn.Dropout(0.5),
                                fastops.nn.Linear(8, 12), fastops.nn.Dropout(0.2, inplace=True),
                                torch.nn.Unflatten(1, (3, 2, 2)), fastops.nn.Dropout2d(0.3))
    x = torch.randn(4, 6, requires_grad=True)
    compiled = compile_fullgraph(model)
    assert_same_forward_backward(seeded(compiled, 3), seeded(model, 3), [x])
    assert not torch.equal(compiled(x), compiled(x))  # a fresh seed per call, not a constant
    model.eval()
    assert torch.equal(compiled(x), model(x))


def test_modules_subclass_torch_and_keep_its_interface():
    for name in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d"):
        ours, theirs = (getattr(fastops.nn, name)(0.2, inplace=True),
                        getattr(torch.nn, name)(0.2, inplace=True))
        assert isinstance(ours, type(theirs))
        assert repr(ours) == repr(theirs) == f"{name}(p=0.2, inplace=True)"
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        ours.load_state_dict(theirs.state_dict())
        theirs.load_state_dict(ours.state_dict())
        raises(ValueError, "dropout probability has to be between 0 and 1, but got 1.5",
               getattr(fastops.nn, name), 1.5)


def test_autocast_keeps_the_input_dtype_like_torch():
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.dropout(x, 0.5).dtype == TF.dropout(x, 0.5).dtype == torch.float32


def test_bad_input_raises_clear_errors_and_changes_nothing():
    x = torch.randn(4, 5)
    for p in (-0.1, 1.1):
        raises(ValueError, f"dropout probability has to be between 0 and 1, but got {p}",
               F.dropout, x, p, state=[x])
        raises(ValueError, "dropout probability", F.dropout2d, x, p, inplace=True, state=[x])
    raises(RuntimeError, "but got nan", F.dropout, x, float("nan"), inplace=True, state=[x])
    raises(RuntimeError, "but got nan", F.dropout, x, float("nan"), training=False)
    raises(RuntimeError, "floating-point dtype", F.dropout, torch.arange(4), 0.5)
    raises(TypeError, "expected input to be a Tensor", F.dropout, [1.0, 2.0], 0.5)
    # the ops validate too (direct calls bypass fastops.functional)
    seed = torch.tensor(1)
    raises(RuntimeError, "between 0 and 1, but got 2", fastops.ops.dropout_, x, seed, 2.0, 1,
           state=[x])
    raises(RuntimeError, "one-element int64 CPU tensor, got 1 element.*Int", fastops.ops.dropout, x,
           seed.int(), 0.5, 1)
    raises(RuntimeError, "one-element int64 CPU tensor, got 2 element", fastops.ops.dropout, x,
           torch.tensor([1, 2]), 0.5, 1)
    raises(RuntimeError, r"channel_size \(3\) to divide input.numel\(\) \(20\)",
           fastops.ops.dropout_, x, seed, 0.5, 3, state=[x])
    raises(RuntimeError, "channel_size >= 1, got 0", fastops.ops.dropout, x, seed, 0.5, 0)
    raises(RuntimeError, "floating-point tensor, got Long", fastops.ops.dropout, torch.arange(4),
           seed, 0.5, 1)


# ----------------------------------------------------------- Triton kernels (interpreter on CPU)

@triton.jit
def _tl_rand4x_kernel(out_ptr, seed, n_counters, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    inside = offs < n_counters
    u0, u1, u2, u3 = tl.rand4x(seed, offs)
    tl.store(out_ptr + offs * 4, u0, mask=inside)
    tl.store(out_ptr + offs * 4 + 1, u1, mask=inside)
    tl.store(out_ptr + offs * 4 + 2, u2, mask=inside)
    tl.store(out_ptr + offs * 4 + 3, u3, mask=inside)


@pytest.mark.parametrize("seed", [0, 12345, 2**40 + 77, 2**63 - 2])
def test_cpu_mask_is_tl_rand(seed):
    """The documented generator: unit u is kept when output u % 4 of tl.rand4x(seed, u // 4)
    >= p."""
    n = 4 * 50
    uniforms = torch.empty(n, device="cuda" if torch.cuda.is_available() else "cpu")
    _tl_rand4x_kernel[(1,)](uniforms, seed, n // 4, BLOCK=64)
    for p in (0.2, 0.5, 0.7):
        keep = fastops.ops.dropout(torch.ones(n), torch.tensor(seed), p, 1) != 0
        assert torch.equal(keep, uniforms.cpu() >= p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape,channel_size", [((1,), 1), ((7, 13), 1), ((3, 1025), 1),
                                                ((6, 5, 7), 35), ((6, 5, 7), 7), ((0, 4), 1)])
@pytest.mark.parametrize("seed", [3, 2**35 + 11])
def test_triton_launchers_match_the_cpu_kernel(dtype, shape, channel_size, seed):
    from fastops.triton_kernels.dropout import dropout_forward, dropout_inplace

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(shape).to(dtype)
    seed_tensor = torch.tensor(seed)
    want = fastops.ops.dropout(x, seed_tensor, 0.35, channel_size)
    got = dropout_forward(noncontiguous(x.to(device)), seed_tensor, 0.35, channel_size).cpu()
    assert torch.equal(got != 0, want != 0)  # the same mask, bit for bit
    # fp32/fp64 equal too; bf16 rounds the scale where torch's CPU dropout does
    if dtype == torch.bfloat16:
        assert_close(got, want, dtype)
    else:
        assert torch.equal(got, want)
    inplace = x.to(device)
    dropout_inplace(inplace, seed_tensor, 0.35, channel_size)
    assert torch.equal(inplace.cpu(), got)


def test_triton_launcher_p_one_and_bad_arguments():
    from fastops.triton_kernels.dropout import dropout_forward

    x = torch.tensor([float("nan"), 1.0, -2.0])
    assert torch.equal(dropout_forward(x, torch.tensor(1), 1.0, 1).isnan(), x.isnan())
    assert (dropout_forward(x[1:], torch.tensor(1), 1.0, 1) == 0).all()
    raises(RuntimeError, "between 0 and 1", dropout_forward, x, torch.tensor(1), 1.5, 1)
    raises(RuntimeError, "one-element int64 CPU tensor", dropout_forward, x, torch.tensor(1.0),
           0.5, 1)
    raises(RuntimeError, r"channel_size \(2\) to divide input.numel\(\)", dropout_forward, x,
           torch.tensor(1), 0.5, 2)


# ---------------------------------------------------------------------------- CUDA (real GPU)

@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [F.dropout, F.dropout2d])
def test_cuda_and_cpu_draw_the_same_mask(dtype, fn):
    x = torch.randn(8, 16, 33, 65)
    cpu = seeded(fn, 11)(x.to(dtype), 0.25)
    cuda = seeded(fn, 11)(x.to("cuda", dtype), 0.25)
    assert torch.equal(cuda.cpu() != 0, cpu != 0)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_large_tensor_statistics_and_gradient(device):
    x = torch.randn(64, 4, 128, 128, device=device, requires_grad=True)
    out = F.dropout(x, 0.5)
    (noise,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(out, x * noise)  # the backward noise is the forward noise
    assert set(noise.unique().tolist()) == {0.0, 2.0}
    assert abs((noise != 0).float().mean().item() - 0.5) < 5 * 0.5 / math.sqrt(x.numel())
