"""BatchNorm parity against torch (over 500 lines: one op's parametrised tables, forward,
backward, running statistics, layouts, modules, kernels)."""

import copy
import re

import pytest
import torch
import torch.nn.functional as TF
from helpers import (
    CUDA,
    DEVICE_DTYPES,
    assert_close,
    compile_fullgraph,
    leaf,
    noncontiguous,
    raises,
    requires_cuda,
    unchanged,
)

import fastops
from fastops import functional as F

MODES = ["train", "train_no_stats", "eval"]
SHAPES = [(7, 3), (4, 5, 9), (3, 4, 5, 7), (2, 33, 3, 3), (0, 3, 4), (1, 2, 1, 3)]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def make(shape, device="cpu", dtype=torch.float32, param_dtype=None, affine="weight_bias", seed=0,
         layout="contiguous"):
    """Input of ``shape`` (mean 1.5, std 2, in ``layout``), weight, bias and running statistics."""
    param_dtype = param_dtype or dtype
    g = torch.Generator().manual_seed(seed)
    channels = shape[1]
    x = (torch.randn(shape, generator=g) * 2 + 1.5).to(device, dtype)
    if layout == "channels_last" and x.dim() > 2:  # channels innermost in memory
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    elif layout == "strided":
        x = noncontiguous(x)
    w = ((torch.rand(channels, generator=g) + 0.5).to(device, param_dtype) if affine != "none"
         else None)
    b = (torch.randn(channels, generator=g).to(device, param_dtype) if affine == "weight_bias"
         else None)
    rm = torch.randn(channels, generator=g).to(device, param_dtype)
    rv = (torch.rand(channels, generator=g) + 0.5).to(device, param_dtype)
    return x, w, b, rm, rv


def reference(x, rm, rv, w, b, training, momentum=0.1, eps=1e-5, activation=None, relu_mask=None):
    """torch's batch_norm (+ relu). With ``relu_mask`` the ReLU keeps where the mask is 1: in
    float16/bfloat16 a pre-activation within rounding of 0 may fall on either side of it in two
    correct implementations, so the gradients are compared under one mask (ours); the forward
    comparison still bounds every such value by the tolerance."""
    out = TF.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    if activation != "relu":
        return out
    return out * relu_mask if relu_mask is not None else torch.relu(out)


def run(fn, x, w, b, rm, rv, grad_seed=1):
    """fn(x, rm, rv, w, b) on fresh leaves / clones: (output, grads of x, w, b, rm, rv after)."""
    x, w, b = (leaf(t) if t is not None else None for t in (x, w, b))
    rm, rv = (t.clone() if t is not None else None for t in (rm, rv))
    out = fn(x, rm, rv, w, b)
    g = torch.Generator().manual_seed(grad_seed)
    grad_out = torch.randn(out.shape, generator=g).to(out)
    wanted = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(out, wanted, grad_out)
    return out, grads, rm, rv


def assert_same(fn, ref_fn, inputs, dtype, scale=1.0):
    """fn and ref_fn(*inputs, relu_mask=...) give the same output, gradients and running stats."""
    out, grads, rm, rv = run(fn, *inputs)
    reduced = dtype in (torch.float16, torch.bfloat16)
    relu_mask = (out.detach() > 0).to(out.dtype) if reduced else None
    ref_out, ref_grads, ref_rm, ref_rv = run(lambda *a: ref_fn(*a, relu_mask=relu_mask), *inputs)
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    assert_close(out, ref_out, dtype, scale)
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert_close(got, want, dtype, scale * 4)
    for got, want in ((rm, ref_rm), (rv, ref_rv)):
        if want is not None:
            assert_close(got, want, dtype, scale)


def mode_args(mode, rm, rv):
    training = mode != "eval"
    return training, (None, None) if mode == "train_no_stats" else (rm, rv)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("affine,activation", [("weight_bias", None), ("weight_bias", "relu"),
                                               ("none", "relu")])
def test_functional_parity(device, dtype, shape, layout, mode, affine, activation):
    x, w, b, rm, rv = make(shape, device, dtype, affine=affine, layout=layout)
    training, (rm, rv) = mode_args(mode, rm, rv)
    assert_same(lambda *a: F.batch_norm(*a, training=training, momentum=0.2, activation=activation),
                lambda *a, **k: reference(*a, training=training, momentum=0.2,
                                          activation=activation, **k),
                [x, w, b, rm, rv], dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("affine", ["weight_bias", "weight", "none"])
@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 2, 5)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_input_with_float32_parameters_and_statistics(mode, affine, shape, dtype):
    x, w, b, rm, rv = make(shape, dtype=dtype, param_dtype=torch.float32, affine=affine)
    training, (rm, rv) = mode_args(mode, rm, rv)
    assert_same(lambda *a: F.batch_norm_relu(*a, training=training),
                lambda *a, **k: reference(*a, training=training, activation="relu", **k),
                [x, w, b, rm, rv], dtype)


def test_large_mean_stays_accurate():
    """Shifted sums: a mean far above the spread does not cancel the variance."""
    x = torch.randn(64, 3, 40) + 1000  # E[x^2] - E[x]^2 in float32 would lose the variance
    rm, rv = torch.zeros(3), torch.ones(3)
    want_rm, want_rv = rm.double(), rv.double()
    want = reference(x.double(), want_rm, want_rv, None, None, True)
    for layout in (x, x.movedim(1, -1).contiguous().movedim(-1, 1)):
        got_rm, got_rv = rm.clone(), rv.clone()
        assert_close(F.batch_norm(layout, got_rm, got_rv, training=True), want.float(), scale=30)
        assert_close(got_rv, want_rv.float())


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_statistics_and_gradients_as_accurate_as_torchs(device, layout):
    """Against float64, no worse than twice torch's own float32 error (or float32's eps):
    ReLU'd channels of 4096 elements whose first element (the CPU kernel's shift) is an outlier.
    Float32 partial sums put invstd 1.8e-6 off (torch: 2.6e-8), 1.1e-5 channels-last (torch:
    3.3e-6), and every output and gradient with it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 32, 32, generator=g).relu()
    x[0, :, 0, 0] = -3.0
    grad = torch.randn(x.shape, generator=g)
    x, grad = x.to(device), grad.to(device)
    if layout == "channels_last":
        x, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad))
    weight, bias = torch.ones(8, device=device), torch.zeros(8, device=device)

    def run(op, dtype):
        inputs = [leaf(t.to(dtype)) for t in (x, weight, bias)]
        output, _, invstd = op(*inputs)
        output.backward(grad.to(dtype))
        return [invstd, output] + [t.grad for t in inputs]

    def fastops_op(x, weight, bias):
        return torch.ops.fastops.batch_norm(x, weight, bias, None, None, True, 0.1, 1e-5, "none")

    def torch_op(x, weight, bias):
        return torch.ops.aten.native_batch_norm(x, weight, bias, None, None, True, 0.1, 1e-5)

    want = run(torch_op, torch.float64)
    names = ["invstd", "output", "grad_input", "grad_weight", "grad_bias"]
    for name, ours, torchs, exact in zip(names, run(fastops_op, torch.float32),
                                         run(torch_op, torch.float32), want, strict=True):
        def error(t, exact=exact):
            return ((t.double() - exact).norm() / exact.norm()).item()

        assert error(ours) <= 2 * max(error(torchs), torch.finfo(torch.float32).eps), name


def test_relu_keeps_nan_and_masks_gradient_like_torch():
    x = torch.tensor([[float("nan"), 1.0], [-1.0, 2.0], [0.5, -3.0]])
    x, w, b, rm, rv = x, torch.ones(2), torch.zeros(2), torch.zeros(2), torch.ones(2)
    assert_same(lambda *a: F.batch_norm_relu(*a),
                lambda *a, **k: reference(*a, False, activation="relu", **k),
                [x, w, b, rm, rv], torch.float32)


INF, NAN = float("inf"), float("nan")
# Non-finite values written into channel 1 at [n, 1, 0, ...]: n = 0 is the channel's first
# element in memory in either layout (the CPU kernel's moments are shifted by it); n = 2 lands
# inside the second of three Triton row splits (splits=3), before a finite tile.
NONFINITE = {
    "inf": [(2, INF)],
    "-inf": [(2, -INF)],
    "nan": [(2, NAN)],
    "first inf": [(0, INF)],
    "inf and -inf": [(0, INF), (3, -INF)],
}
NONFINITE_SHAPES = [((4, 3, 5, 6), "contiguous"), ((4, 3, 5, 6), "channels_last"),
                    ((9, 3), "contiguous")]


def with_nonfinite(x, values):
    """A copy of x (same layout) with channel 1 holding ``values`` at [n, 1, 0, ...]."""
    x = x.clone()
    for n, value in values:
        x[(n, 1) + (0,) * (x.dim() - 2)] = value
    return x


@pytest.mark.parametrize("values", NONFINITE.values(), ids=NONFINITE.keys())
@pytest.mark.parametrize("shape,layout", NONFINITE_SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nonfinite_channel_matches_torch(values, shape, layout, mode, activation, dtype):
    """As torch: training on a channel holding inf, -inf or NaN gives it a NaN variance (NaN
    output, running_var and gradients, the ReLU keeping NaN, running_mean inf / -inf / NaN), and
    leaves the other channels as they were; evaluation normalises the values as they are."""
    x, w, b, rm, rv = make(shape, dtype=dtype, layout=layout)
    x = with_nonfinite(x, values)
    training, (rm, rv) = mode_args(mode, rm, rv)
    assert_same(lambda *a: F.batch_norm(*a, training=training, momentum=0.2, activation=activation),
                lambda *a, **k: reference(*a, training=training, momentum=0.2,
                                          activation=activation, **k),
                [x, w, b, rm, rv], dtype)


def test_bias_without_weight_gets_its_gradient():
    # an absent weight has no autograd edge: the bias gradient must still reach the bias
    x = torch.randn(6, 3, 4, requires_grad=True)
    for training in (True, False):
        bias = torch.randn(3, requires_grad=True)
        ours = torch.autograd.grad(
            F.batch_norm(x, torch.zeros(3), torch.ones(3), None, bias, training).sum(), [x, bias])
        theirs = torch.autograd.grad(
            TF.batch_norm(x, torch.zeros(3), torch.ones(3), None, bias, training).sum(), [x, bias])
        for got, want in zip(ours, theirs, strict=True):
            assert_close(got, want)


# --------------------------------------------------------------------------------------- modules

MODULES = {  # fastops module -> the torch modules it replaces (torch applies relu after)
    "BatchNorm1d": (fastops.nn.BatchNorm1d, torch.nn.BatchNorm1d, None, (6, 5)),
    "BatchNorm1d_3d": (fastops.nn.BatchNorm1d, torch.nn.BatchNorm1d, None, (4, 5, 3)),
    "BatchNorm1dReLU": (fastops.nn.BatchNorm1dReLU, torch.nn.BatchNorm1d, "relu", (6, 5)),
    "BatchNorm2d": (fastops.nn.BatchNorm2d, torch.nn.BatchNorm2d, None, (3, 5, 4, 3)),
    "BatchNorm2dReLU": (fastops.nn.BatchNorm2dReLU, torch.nn.BatchNorm2d, "relu", (3, 5, 4, 3)),
}
OPTIONS = [
    dict(),
    dict(momentum=None),
    dict(momentum=0.5, eps=1e-3),
    dict(affine=False),
    dict(bias=False),
    dict(track_running_stats=False),
    dict(momentum=None, track_running_stats=False, affine=False),
]


def paired(name, **options):
    cls, torch_cls, activation, shape = MODULES[name]
    ours, theirs = cls(shape[1], **options), torch_cls(shape[1], **options)
    with torch.no_grad():  # non-trivial parameters, the same in both
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            p.uniform_(0.5, 1.5)
            q.copy_(p)
    relu = torch.nn.ReLU() if activation == "relu" else torch.nn.Identity()
    return ours, torch.nn.Sequential(theirs, relu), shape


def assert_same_state(ours, theirs):
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for (key, got), want in zip(ours.state_dict().items(), theirs.state_dict().values(),
                                strict=True):
        assert got.dtype == want.dtype, key
        if got.is_floating_point():
            assert_close(got, want, msg=key)
        else:  # num_batches_tracked
            assert torch.equal(got, want), key


def step_matches_torch(ours, theirs, x, training):
    """One call of both modules in train or eval mode on ``x``: the output, the gradients of the
    input and parameters, and the module state (running statistics) equal torch's."""
    for module in (ours, theirs):
        module.train(training)
    xa, xb = leaf(x), leaf(x)
    out, ref = ours(xa), theirs(xb)
    assert_close(out, ref)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, [xa, *ours.parameters()], grad)
    want = torch.autograd.grad(ref, [xb, *theirs.parameters()], grad)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, scale=4)
    assert_same_state(ours, theirs[0])


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_module_matches_torch_over_several_steps(name, options):
    ours, theirs, shape = paired(name, **options)
    for step in range(3):
        x = make(shape, seed=step, layout="channels_last" if step == 1 else "contiguous")[0]
        step_matches_torch(ours, theirs, x, training=step != 2)  # two training steps, then eval


def test_module_bfloat16_input_with_float32_module():
    ours, theirs, shape = paired("BatchNorm2dReLU")
    x = make(shape, dtype=torch.bfloat16)[0]
    for _ in range(2):
        out, ref = ours(x), theirs(x)
        assert out.dtype == torch.bfloat16
        assert_close(out, ref)
    assert_same_state(ours, theirs[0])


def test_reset_running_stats_and_parameters():
    ours, theirs, shape = paired("BatchNorm2d")
    ours(make(shape)[0])
    ours.reset_running_stats()
    assert ours.num_batches_tracked.item() == 0
    assert_close(ours.running_mean, torch.zeros(5))
    assert_close(ours.running_var, torch.ones(5))
    ours.reset_parameters()
    assert_close(ours.weight, torch.ones(5))


def test_state_dict_loads_both_ways_and_repr():
    ours, theirs = fastops.nn.BatchNorm2dReLU(4), torch.nn.BatchNorm2d(4)
    assert (isinstance(ours, torch.nn.BatchNorm2d)
            and isinstance(fastops.nn.BatchNorm1d(3), torch.nn.BatchNorm1d))
    ours(make((3, 4, 2, 2))[0])  # running statistics and num_batches_tracked move
    theirs.load_state_dict(ours.state_dict())
    assert_same_state(ours, theirs)
    theirs(make((3, 4, 2, 2), seed=1)[0])
    ours.load_state_dict(theirs.state_dict())
    assert_same_state(ours, theirs)
    assert repr(ours) == ("BatchNorm2dReLU(4, eps=1e-05, momentum=0.1, affine=True, bias=True, "
                          "track_running_stats=True, activation='relu')")
    assert (repr(fastops.nn.BatchNorm1d(3, affine=False))
            == repr(torch.nn.BatchNorm1d(3, affine=False)))


def test_autocast_keeps_the_input_dtype_and_float32_statistics_like_torch():
    ours, theirs, shape = paired("BatchNorm2d")
    x = make(shape)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for inp in (x, x.bfloat16()):
            out, ref = ours(inp), theirs(inp)
            assert out.dtype == ref.dtype == inp.dtype
            assert_close(out, ref)
    assert ours.running_mean.dtype == torch.float32
    assert_same_state(ours, theirs[0])


def test_running_statistics_update_bumps_their_version_counters():
    """So autograd notices a graph that saved the running statistics before they changed."""
    ours, _, shape = paired("BatchNorm1d")
    x = make(shape)[0]
    versions = (ours.running_mean._version, ours.running_var._version)
    ours(x)
    assert ((ours.running_mean._version, ours.running_var._version)
            == (versions[0] + 1, versions[1] + 1))
    ours.eval()(x)
    assert ((ours.running_mean._version, ours.running_var._version)
            == (versions[0] + 1, versions[1] + 1))


@pytest.mark.parametrize("name", ["BatchNorm1dReLU", "BatchNorm2d", "BatchNorm2dReLU"])
def test_module_after_a_nonfinite_batch_matches_torch(name):
    """A training batch with an inf leaves a NaN running_var: the next training step and
    evaluation match torch too."""
    ours, theirs, shape = paired(name)
    for step, (training, values) in enumerate([(True, NONFINITE["inf"]), (True, []),
                                               (False, [])]):
        x = make(shape, seed=step, layout="channels_last" if step == 1 else "contiguous")[0]
        x = with_nonfinite(x, values)
        step_matches_torch(ours, theirs, x, training)
    assert ours.running_var[1].isnan()


def same_outcome(ours, theirs, state=()):
    """ours() raises the error of theirs() (type and whole message), changing nothing in
    ``state``, or gives the same result."""
    try:
        want = theirs()
    except Exception as error:  # any error of torch's is the reference
        raises(type(error), f"^{re.escape(str(error))}$", ours, state=state)
        return
    assert_close(ours(), want)


@pytest.mark.parametrize("name", ["BatchNorm1d", "BatchNorm2dReLU"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_from_inference_mode_raises_like_torch_and_changes_nothing(name, momentum):
    """A module created under torch.inference_mode() (inference buffers and parameters), run
    outside it: training raises torch's error (from incrementing num_batches_tracked, before the
    running statistics are touched), evaluation with autograd too (the parameters cannot be
    saved for backward); no buffer changes, num_batches_tracked included (torch's add_ has
    written it when it raises). Without autograd, and under inference mode, it runs as torch."""
    with torch.inference_mode():
        ours, theirs, shape = paired(name, momentum=momentum)
    x = make(shape)[0]
    buffers = [ours.running_mean, ours.running_var, ours.num_batches_tracked]
    for grad_mode in (True, False):
        for training in (True, False):
            ours.train(training), theirs.train(training)
            with torch.set_grad_enabled(grad_mode):
                same_outcome(lambda: ours(x), lambda: theirs(x), state=buffers)
    assert ours.num_batches_tracked.item() == 0
    ours.train(), theirs.train()
    with torch.inference_mode():
        theirs[0].num_batches_tracked.zero_()  # undo torch's half-done steps
        same_outcome(lambda: ours(x), lambda: theirs(x))
    assert_same_state(ours, theirs[0])


@pytest.mark.parametrize("grad_mode", [True, False])
@pytest.mark.parametrize("inference", [("running_mean", "running_var"), ("running_var",),
                                       ("input",), ("weight",)], ids=str)
def test_functional_inference_tensors_like_torch(grad_mode, inference):
    """Tensors created under torch.inference_mode(), used outside it: torch updates inference
    running statistics when it records no graph, and raises before writing them when it does
    (input, weight and running statistics cannot be saved for backward); so do we (the op used
    to write them, then raise)."""
    x, w, b, rm, rv = make((4, 3, 5))

    def args():  # the bias requires grad: a graph is recorded when grad_mode is on
        tensors = dict(input=x, running_mean=rm, running_var=rv, weight=w)
        with torch.inference_mode():
            tensors.update({name: tensors[name].clone() for name in inference})
        tensors = {k: t if k in inference else t.clone() for k, t in tensors.items()}
        return [*tensors.values(), leaf(b)]
    ours, theirs = args(), args()
    with torch.set_grad_enabled(grad_mode):
        same_outcome(lambda: F.batch_norm(*ours, training=True),
                     lambda: TF.batch_norm(*theirs, training=True), state=ours[1:3])
    for got, want in zip(ours[1:3], theirs[1:3], strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("training", [True, False])
def test_module_compile_fullgraph(training):
    torch.manual_seed(0)
    model = torch.nn.Sequential(fastops.nn.BatchNorm2dReLU(3), torch.nn.Flatten(),
                                fastops.nn.BatchNorm1d(12))
    model.train(training)
    reference_model = copy.deepcopy(model)
    compiled = compile_fullgraph(model)
    x = make((4, 3, 2, 2))[0]
    xa, xb = leaf(x), leaf(x)
    out, ref = compiled(xa), reference_model(xb)
    assert_close(out, ref)
    grad = torch.randn_like(ref)
    for g, w in zip(torch.autograd.grad(out, [xa, *model.parameters()], grad),
                    torch.autograd.grad(ref, [xb, *reference_model.parameters()], grad),
                    strict=True):
        assert_close(g, w, scale=4)
    assert_same_state(model, reference_model)


# ------------------------------------------------------------------------ gradcheck, opcheck

@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck(training, activation, layout):
    x, w, b, rm, rv = make((3, 4, 2, 3), dtype=torch.float64, layout=layout)
    x, w, b = leaf(x), leaf(w), leaf(b)

    def fn(x, w, b):  # fresh running statistics each call: the op updates them in place
        return fastops.ops.batch_norm(x, w, b, rm.clone(), rv.clone(), training, 0.1, 1e-5,
                                      activation)[0]
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradcheck(lambda x: fn(x, None, None), (x,))


@pytest.mark.parametrize("training,stats,activation,affine", [
    (True, True, "relu", True), (True, False, "none", False), (False, True, "relu", False),
    (False, True, "none", True)])
def test_opcheck(training, stats, activation, affine):
    x, w, b, rm, rv = make((3, 4, 5), layout="channels_last")
    x, w, b = leaf(x), leaf(w) if affine else None, leaf(b) if affine else None
    rm, rv = (rm, rv) if stats else (None, None)
    torch.library.opcheck(fastops.ops.batch_norm.default,
                          (x, w, b, rm, rv, training, 0.1, 1e-5, activation))
    torch.library.opcheck(fastops.ops.batch_norm.default,
                          (x.detach(), w, b, rm, rv, training, 0.1, 1e-5, activation))


@pytest.mark.parametrize("training", [True, False])
def test_opcheck_backward(training):
    x, w, _, rm, rv = make((3, 4, 5))
    out, mean, invstd = fastops.ops.batch_norm(x, w, None, rm, rv, training, 0.1, 1e-5, "relu")
    torch.library.opcheck(fastops.ops.batch_norm_backward.default,
                          (torch.randn_like(out), x, w, out, mean, invstd, training, "relu",
                           [True, True, True]))
    torch.library.opcheck(fastops.ops.batch_norm_backward.default,
                          (torch.randn_like(out), None, w, None, mean, invstd, False, "none",
                           [True, False, True]))


def test_double_backward_raises_a_clear_error():
    x, w, b, rm, rv = make((4, 3))
    x = leaf(x)
    with pytest.raises(RuntimeError, match="double backward through fastops ops is not supported"):
        torch.autograd.grad(F.batch_norm(x, rm, rv, w, b, training=True).pow(2).sum(), x,
                            create_graph=True)


# --------------------------------------------------------------------------------------- folding

def folding_model(relu_module=fastops.nn.BatchNorm2dReLU):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1, bias=False), relu_module(6),
        torch.nn.Sequential(torch.nn.Conv2d(6, 4, 3, groups=2),
                            torch.nn.BatchNorm2d(4, affine=False)),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 8), fastops.nn.BatchNorm1d(8),
        torch.nn.ReLU(), torch.nn.Linear(8, 5), torch.nn.BatchNorm1d(5, track_running_stats=False),
    )
    with torch.no_grad():  # trained-looking statistics and affine parameters
        for _ in range(3):
            model(torch.randn(8, 3, 6, 6))
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.affine:
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_fold_batchnorm_gives_the_same_eval_outputs():
    model = folding_model()
    x = torch.randn(5, 3, 6, 6)
    state = copy.deepcopy(model.state_dict())
    folded = fastops.fold_batchnorm(model)
    assert_close(folded(x), model(x), scale=10)
    kinds = [type(m) for m in folded.modules()]
    assert kinds.count(torch.nn.Identity) == 2 and torch.nn.ReLU in kinds
    # the BatchNorm with batch statistics is kept; the original model is untouched
    assert isinstance(folded[-1], torch.nn.BatchNorm1d)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_fold_batchnorm_needs_eval_mode_and_a_module():
    model = folding_model().train()
    raises(RuntimeError, "must be in evaluation mode", fastops.fold_batchnorm, model)
    raises(TypeError, "expected a torch.nn.Module", fastops.fold_batchnorm, [model])


def test_fold_batchnorm_keeps_pairs_it_cannot_fold():
    torch.manual_seed(0)
    model = torch.nn.Sequential(fastops.nn.LinearReLU(4, 3), torch.nn.BatchNorm1d(3),
                                torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(3)).eval()
    folded = fastops.fold_batchnorm(model)
    assert [type(m) for m in folded] == [type(m) for m in model]


# ----------------------------------------------------------------------------------- bad input

def test_bad_input_raises_torch_errors_and_changes_nothing():
    x, w, b, rm, rv = make((4, 3, 2))
    state = (x, w, b, rm, rv)
    bn = F.batch_norm
    raises(RuntimeError, r"expected running_mean of shape \[4\]", bn, torch.randn(2, 4), rm, rv,
           training=True, state=state)
    raises(RuntimeError, r"expected weight of shape \[3\].*got \[4\]", bn, x, rm, rv, torch.ones(4),
           state=state)
    raises(ValueError,
           r"Expected more than 1 value per channel when training, got input size "
           r"torch.Size\(\[1, 3, 1\]\)",
           bn, torch.randn(1, 3, 1), rm, rv, w, b, True, state=state)
    raises(ValueError, "eps must be positive during training", bn, x, rm, rv, training=True,
           eps=0.0, state=state)
    raises(ValueError, "eps must be non-negative", bn, x, rm, rv, eps=-1.0, state=state)
    raises(ValueError, "must either both be None or neither", bn, x, rm, None, training=True,
           state=state)
    raises(RuntimeError, "running_mean must be defined in evaluation mode", bn, x, None, None,
           state=state)
    raises(RuntimeError, "running_var must be defined in evaluation mode", bn, x, rm, None,
           state=state)
    raises(TypeError, "expected momentum to be a float", bn, x, rm, rv, training=True,
           momentum=None, state=state)
    raises(NotImplementedError, "not implemented for torch.int64", bn, x.long(), rm, rv,
           state=state)
    raises(RuntimeError, r"at least 2-D", bn, torch.randn(3), rm, rv, state=state)
    raises(RuntimeError, "expected running_var to have the dtype of input", bn, x, rm, rv.double(),
           state=state)
    raises(RuntimeError, r"bfloat16\) or float32, got torch.float64", bn, x.bfloat16(), rm,
           rv.double(), state=state)
    raises(RuntimeError, "share one dtype", bn, x.bfloat16(), rm, rv, w.bfloat16(), state=state)
    raises(RuntimeError, "weight on the device of input", bn, x, rm, rv, w.to("meta"), state=state)
    raises(RuntimeError, r"expected running_mean of shape \[3\].*got \[3, 1\]", bn, x, rm[:, None],
           rv, state=state)
    raises(ValueError, "activation must be None or one of", bn, x, rm, rv, activation="gelu",
           state=state)
    raises(TypeError, "expected input to be a Tensor", bn, [1.0], rm, rv)
    raises(TypeError, "expected weight to be a Tensor", bn, x, rm, rv, [1.0] * 3, state=state)
    # the op itself validates too (direct calls bypass fastops.functional)
    op = fastops.ops.batch_norm
    raises(RuntimeError, "activation must be 'none' or 'relu'", op, x, w, b, rm, rv, True, 0.1,
           1e-5, "gelu", state=state)
    raises(RuntimeError, r"expected running_var of shape \[4\]", op, torch.randn(2, 4), None, None,
           torch.zeros(4), rv, True, 0.1, 1e-5, "none", state=state)
    raises(ValueError, "Expected more than 1 value per channel", op, torch.randn(1, 3), w, b, rm,
           rv, True, 0.1, 1e-5, "none", state=state)
    raises(ValueError, "expected eps > 0 in training", op, x, w, b, rm, rv, True, 0.1, 0.0, "none",
           state=state)
    raises(RuntimeError, "must be given in evaluation mode", op, x, w, b, None, None, False, 0.1,
           1e-5, "none", state=state)
    raises(RuntimeError, "float32, got Double", op, x.bfloat16(), w.double(), b, rm, rv, True, 0.1,
           1e-5, "none", state=state)
    raises(RuntimeError, "share one dtype, got BFloat16 and Float", op, x.bfloat16(), w.bfloat16(),
           b, rm, rv, False, 0.1, 1e-5, "none", state=state)


CHANNEL_ARGS = {  # the per-channel arguments given: running_mean, running_var, weight, bias
    "none": (False, False, False, False), "running": (True, True, False, False),
    "weight": (False, False, True, False), "bias": (False, False, False, True),
    "all": (True, True, True, True),
}


@pytest.mark.parametrize("given", CHANNEL_ARGS.values(), ids=CHANNEL_ARGS.keys())
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_empty_1d_input_is_returned_like_torch(given, training, activation):
    """torch.nn.functional.batch_norm returns an empty 1-D input as it is (a copy times
    weight[0] plus bias[0]), unchecked against the per-channel arguments and with the running
    statistics untouched."""
    g = torch.Generator().manual_seed(0)
    rm, rv, w, b = (torch.rand(5, generator=g) + 0.5 if wanted else None for wanted in given)

    def args():  # input, weight and bias as fresh leaves; the running statistics themselves
        return [leaf(torch.randn(0)), rm, rv, *(leaf(t) if t is not None else None for t in (w, b))]
    ours, theirs = args(), args()
    with unchanged(*[t for t in (rm, rv, w, b) if t is not None]):
        out = F.batch_norm(*ours, training=training, activation=activation)
        ref = TF.batch_norm(*theirs, training=training)
    assert out.shape == ref.shape == (0,) and out.dtype == ref.dtype
    wanted = [i for i in (0, 3, 4) if ours[i] is not None]
    got = torch.autograd.grad(out, [ours[i] for i in wanted], torch.ones(0))
    want = torch.autograd.grad(ref, [theirs[i] for i in wanted], torch.ones(0))
    for a, b_ in zip(got, want, strict=True):
        assert a.shape == b_.shape and torch.equal(a, b_)


@pytest.mark.parametrize("shape", [(3,), (1,), ()], ids=str)
@pytest.mark.parametrize("given", CHANNEL_ARGS.values(), ids=CHANNEL_ARGS.keys())
@pytest.mark.parametrize("training", [True, False])
def test_input_without_channels_raises_the_error_type_of_torch(shape, given, training):
    """A non-empty 0-D or 1-D input: torch raises IndexError, ValueError (one value per channel
    in training) or RuntimeError depending on the mode and the arguments; so do we, changing
    nothing."""
    channel = [torch.rand(3) + 0.5 if wanted else None for wanted in given]
    x = torch.randn(shape)
    with pytest.raises(Exception) as torch_error:
        TF.batch_norm(x, *channel, training=training)
    error = type(torch_error.value)
    assert error in (IndexError, ValueError, RuntimeError)
    match = "Expected more than 1 value per channel" if error is ValueError else "at least 2-D"
    raises(error, match, F.batch_norm, x, *channel, training=training,
           state=[t for t in [x, *channel] if t is not None])


@pytest.mark.parametrize("name", ["BatchNorm1d", "BatchNorm2dReLU"])
def test_module_bad_input_leaves_buffers_and_parameters_unchanged(name):
    ours, _, shape = paired(name)
    state = list(ours.state_dict().values())
    raises(ValueError, "Expected more than 1 value per channel", ours,
           torch.randn(1, shape[1], *[1] * (len(shape) - 2)), state=state)
    raises(RuntimeError, r"expected running_mean of shape \[6\]", ours,
           torch.randn(2, 6, *shape[2:]), state=state)
    raises(ValueError, "expected .*D input", ours, torch.randn(shape[1]), state=state)
    raises(ValueError, "activation must be None or one of", fastops.nn.BatchNorm2d, 3,
           activation="tanh")
    ours.momentum = None  # the cumulative average is guarded the same way
    raises(ValueError, "Expected more than 1 value per channel", ours,
           torch.randn(1, shape[1], *[1] * (len(shape) - 2)), state=state)


def test_empty_batch_leaves_running_statistics_unchanged_like_torch():
    ours, theirs, _ = paired("BatchNorm1d_3d")
    for x in (torch.randn(0, 5, 3), torch.randn(2, 5, 0)):
        xa, xb = leaf(x), leaf(x)
        with unchanged(ours.running_mean, ours.running_var):
            out, ref = ours(xa), theirs(xb)
        assert out.shape == ref.shape
        got = torch.autograd.grad(out.sum(), [xa, *ours.parameters()])
        want = torch.autograd.grad(ref.sum(), [xb, *theirs.parameters()])
        for g, w in zip(got, want, strict=True):
            assert_close(g, w)
        assert_same_state(ours, theirs[0])


# ----------------------------------------------------------- Triton kernels (interpreter on CPU)

@pytest.mark.parametrize("shape,layout", [((6, 5), "contiguous"), ((3, 4, 5, 7), "contiguous"),
                                          ((3, 4, 5, 7), "channels_last"), ((2, 3, 9), "strided"),
                                          ((0, 3, 2), "contiguous")], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", ["none", "relu"])
def test_triton_launchers_match_torch(shape, layout, mode, activation):
    from fastops.triton_kernels.batch_norm import batch_norm_backward, batch_norm_forward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, w, b, rm, rv = make(shape, device, layout=layout)
    training, (rm, rv) = mode_args(mode, rm, rv)
    relu = "relu" if activation == "relu" else None
    ref_stats = [t.clone() if t is not None else None for t in (rm, rv)]
    xr, wr, br = leaf(x), leaf(w), leaf(b)
    ref = reference(xr, *ref_stats, wr, br, training, 0.2, 1e-5, relu)
    # three row ranges per channel: the split reduction and its combination run (some ranges
    # are empty for the smallest shapes)
    out, mean, invstd = batch_norm_forward(x, w, b, rm, rv, training, 0.2, 1e-5, activation,
                                           splits=3)
    assert out.stride() == torch.empty_like(x).stride() or not x.is_contiguous()
    assert_close(out, ref.detach(), scale=3)
    for got, want in zip((rm, rv), ref_stats, strict=True):
        if want is not None:
            assert_close(got, want)

    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [xr, wr, br], grad)
    got = batch_norm_backward(grad, x, w, out, mean, invstd, training, activation,
                              [True, True, True], splits=3)
    for g, w_ in zip(got, want, strict=True):
        assert_close(g, w_, scale=4)


@pytest.mark.parametrize("dtype,param_dtype", [(torch.bfloat16, torch.float32),
                                               (torch.float64, torch.float64)])
def test_triton_dtypes_and_partial_gradients(dtype, param_dtype):
    from fastops.triton_kernels.batch_norm import batch_norm_backward, batch_norm_forward

    x, w, b, rm, rv = make((4, 3, 2, 5), dtype=dtype, param_dtype=param_dtype)
    ref_rm, ref_rv = rm.clone(), rv.clone()
    xr = leaf(x)
    ref = reference(xr, ref_rm, ref_rv, w, b, True, activation="relu")
    out, mean, invstd = batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5, "relu")
    assert out.dtype == dtype and mean.dtype == param_dtype
    assert_close(out, ref.detach(), dtype)
    assert_close(rm, ref_rm, dtype)
    assert_close(rv, ref_rv, dtype)
    grad_input, grad_weight, grad_bias = batch_norm_backward(torch.ones_like(out), None, w, out,
                                                             mean, invstd, True, "relu",
                                                             [False, False, True])
    assert grad_input.numel() == 0 and grad_weight.numel() == 0 and grad_bias.dtype == param_dtype
    assert_close(grad_bias, (out > 0).to(param_dtype).sum((0, 2, 3)), dtype)
    if dtype == torch.float64:  # the input gradient to float64 precision (eval: no x needed)
        grad = torch.randn_like(out)
        out, mean, invstd = batch_norm_forward(x, w, b, rm, rv, False, 0.1, 1e-5, "relu")
        want = torch.autograd.grad(reference(xr, rm, rv, w, b, False, activation="relu"), xr,
                                   grad)[0]
        got = batch_norm_backward(grad, None, w, out, mean, invstd, False, "relu",
                                  [True, False, False])[0]
        assert_close(got, want)


@pytest.mark.parametrize("values", NONFINITE.values(), ids=NONFINITE.keys())
@pytest.mark.parametrize("shape,layout", NONFINITE_SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("activation", ["none", "relu"])
def test_triton_nonfinite_channel_matches_torch(values, shape, layout, training, activation):
    """test_nonfinite_channel_matches_torch on the launchers, with three row splits: the partial
    moments of tiles and splits combine an infinite mean into torch's (CPU) running_mean. The
    reference is torch on the CPU (whose running_mean of an inf channel is inf)."""
    from fastops.triton_kernels.batch_norm import batch_norm_backward, batch_norm_forward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, w, b, rm, rv = make(shape, layout=layout)
    x = with_nonfinite(x, values)
    ref_stats = [rm.clone(), rv.clone()]
    xr, wr, br = leaf(x), leaf(w), leaf(b)
    ref = reference(xr, *ref_stats, wr, br, training, 0.2, 1e-5,
                    "relu" if activation == "relu" else None)
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [xr, wr, br], grad)
    x, w, b, rm, rv, grad = (t.to(device) for t in (x, w, b, rm, rv, grad))
    out, mean, invstd = batch_norm_forward(x, w, b, rm, rv, training, 0.2, 1e-5, activation,
                                           splits=3)
    assert_close(out.cpu(), ref.detach(), scale=3)
    for got, want_stat in zip((rm, rv), ref_stats, strict=True):
        assert_close(got.cpu(), want_stat)
    got = batch_norm_backward(grad, x, w, out, mean, invstd, training, activation,
                              [True, True, True], splits=3)
    for g, w_ in zip(got, want, strict=True):
        assert_close(g.cpu(), w_, scale=4)


def test_triton_updates_inference_mode_buffers_like_torch():
    from fastops.triton_kernels.batch_norm import batch_norm_forward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, w, b, rm, rv = make((4, 3, 5), device)
    with torch.inference_mode():
        ours, theirs = [rm.clone(), rv.clone()], [rm.clone(), rv.clone()]
    out = batch_norm_forward(x, w, b, *ours, True, 0.1, 1e-5, "none")[0]
    assert_close(out, TF.batch_norm(x, *theirs, w, b, True))
    for got, want in zip(ours, theirs, strict=True):
        assert_close(got, want)


# ---------------------------------------------------------------------------- CUDA (real GPU)

@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_reduced_input_with_float32_module(dtype):
    ours, theirs, shape = paired("BatchNorm2dReLU")
    ours, theirs = ours.cuda(), theirs.cuda()
    for step in range(3):
        x = make((32, 5, 17, 13), "cuda", dtype, seed=step,
                 layout="channels_last" if step else "contiguous")[0]
        assert_close(ours(x), theirs(x))
    assert_same_state(ours, theirs[0])


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_large_batch_matches(device):
    x, w, b, rm, rv = make((64, 16, 33, 31), device)
    assert_same(lambda *a: F.batch_norm_relu(*a, training=True),
                lambda *a, **k: reference(*a, True, activation="relu", **k),
                [x, w, b, rm, rv], torch.float32, scale=4)
    assert_same(lambda *a: F.batch_norm_relu(*a, training=True),
                lambda *a, **k: reference(*a, True, activation="relu", **k),
                [x.movedim(1, -1).contiguous().movedim(-1, 1), w, b, rm, rv], torch.float32,
                scale=4)


# --------------------------------------------- Triton launch grids and index width (wide / large)

CUDA_GRID_LIMITS = (2**31 - 1, 65535, 65535)


@pytest.mark.parametrize("rows,channels", [(256, 70000), (4, 2**20), (2**33, 1), (2**31, 64),
                                           (128 * 32 * 32, 64), (2, 2**31 - 1)])
def test_triton_grids_stay_within_cuda_limits(rows, channels):
    """A BatchNorm1d over 70000+ features has more channel blocks than grid axis 1 or 2 take,
    a large batch more row blocks: every grid keeps them on axis 0."""
    from fastops.triton_kernels import batch_norm as kernels

    def check(grid):
        assert all(0 < size <= limit
                   for size, limit in zip(grid, CUDA_GRID_LIMITS, strict=False)), grid

    for splits in (1, 3, kernels._splits(rows, channels, False, torch.device("cpu"))):
        for config in kernels._REDUCE_CONFIGS:
            if channels * splits < 2**31:
                check(kernels._reduce_grid(channels, splits)(config.kwargs))
    named_args = {"M": rows, "C": channels}
    kept = kernels._prune_elementwise(kernels._ELEMENTWISE_CONFIGS, named_args)
    assert kept
    for config in kept:
        check(kernels._elementwise_grid(rows, channels)(config.kwargs))


def test_triton_index_width_is_32_bit_unless_an_index_can_pass_int32():
    from fastops.triton_kernels.batch_norm import _index_64

    assert not _index_64(256 * 24 * 24, 6, 8)
    assert not _index_64(128 * 32 * 32, 64, 528)
    assert not _index_64(256, 70000)
    assert not _index_64(2**31 - 2**16, 1, 528)
    assert _index_64(2**31, 1)
    assert _index_64(2**31 - 1024, 1)   # the last row block overruns
    assert _index_64(2**31 - 4096, 1, 2**12)  # so does the start of the last split
    assert _index_64(2, 2**31 - 1)
    assert _index_64(2**12, 2**20, 2**11)  # the [splits, C] buffers of the reductions


@pytest.mark.parametrize("shape,layout", [((70, 50), "contiguous"), ((3, 37, 2, 5), "contiguous"),
                                          ((3, 37, 2, 5), "channels_last")], ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_triton_row_and_channel_blocks_match_torch(shape, layout, training):
    """Several row blocks and channel blocks, which the programs decode from a 1-D grid (a
    BatchNorm1d over 70000 features would show the same, but takes minutes in the
    interpreter)."""
    from fastops.triton_kernels.batch_norm import batch_norm_backward, batch_norm_forward

    x, w, b, rm, rv = make(shape, layout=layout)
    ref_stats = [rm.clone(), rv.clone()]
    xr, wr, br = leaf(x), leaf(w), leaf(b)
    ref = reference(xr, *ref_stats, wr, br, training, 0.1, 1e-5, "relu")
    out, mean, invstd = batch_norm_forward(x, w, b, rm, rv, training, 0.1, 1e-5, "relu",
                                           splits=2)
    assert_close(out, ref.detach(), scale=3)
    assert_close(rm, ref_stats[0])
    assert_close(rv, ref_stats[1])
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [xr, wr, br], grad)
    got = batch_norm_backward(grad, x, w, out, mean, invstd, training, "relu", [True, True, True],
                              splits=2)
    for g, w_ in zip(got, want, strict=True):
        assert_close(g, w_, scale=4)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_64_bit_indices_match_torch(monkeypatch, layout):
    """The kernels' int64 row / channel indices (INDEX_64, for tensors past 2**31 rows), forced
    on a small input."""
    from fastops.triton_kernels import batch_norm as kernels

    monkeypatch.setattr(kernels, "_index_64", lambda *args: True)
    x, w, b, rm, rv = make((3, 4, 5, 7), layout=layout)
    ref_stats = [rm.clone(), rv.clone()]
    xr, wr, br = leaf(x), leaf(w), leaf(b)
    ref = reference(xr, *ref_stats, wr, br, True, 0.2, 1e-5, "relu")
    out, mean, invstd = kernels.batch_norm_forward(x, w, b, rm, rv, True, 0.2, 1e-5, "relu",
                                                   splits=3)
    assert_close(out, ref.detach(), scale=3)
    assert_close(rm, ref_stats[0])
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [xr, wr, br], grad)
    got = kernels.batch_norm_backward(grad, x, w, out, mean, invstd, True, "relu",
                                      [True, True, True], splits=3)
    for g, w_ in zip(got, want, strict=True):
        assert_close(g, w_, scale=4)
