import copy
import logging

import pytest
import torch
import torch.nn.functional as TF
from helpers import assert_close
from torch import nn

import fastops
from fastops.convert import FusedAway
from fastops.models import NAMES, RECIPES, build


def sample(name, batch=3, seed=0):
    return torch.randn(batch, *RECIPES[name].input_shape,
                       generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_converted_tutorial_model_gives_the_same_outputs_and_state_dict(name):
    torch.manual_seed(0)
    model = build(name, "torch").eval()
    converted = fastops.convert(model, verbose=False)
    assert converted is not model
    assert converted.state_dict().keys() == model.state_dict().keys()
    x = sample(name)
    assert_close(converted(x), model(x), scale=10)
    # a checkpoint of either build loads into the other
    torch.manual_seed(1)
    other = build(name, "torch").eval()
    converted.load_state_dict(other.state_dict())
    assert_close(converted(x), other(x), scale=10)
    model.load_state_dict(converted.state_dict())
    assert_close(model(x), other(x))


def convert_records(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "fastops.convert" and r.levelno == logging.INFO]


def test_replaces_and_fuses_in_sequential_and_reports_it(caplog, capsys):
    caplog.set_level(logging.INFO, logger="fastops.convert")
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(6, 4), nn.ReLU(), nn.Identity(), nn.Sigmoid())
    converted = fastops.convert(model)
    assert capsys.readouterr().out == ""  # logged, not printed, by default
    records = convert_records(caplog)
    assert records == ["replaced 1: nn.Linear -> fastops.nn.Linear",
                       "replaced 3: nn.Dropout -> fastops.nn.Dropout",
                       "replaced 4: nn.Linear -> fastops.nn.Linear",
                       "fused 1 with 2, 3: fastops.nn.Linear(activation='relu', dropout=0.3)",
                       "fused 4 with 5: fastops.nn.Linear(activation='relu')"]
    assert isinstance(converted[1], fastops.nn.Linear) and converted[1].activation == "relu"
    assert converted[1].dropout == 0.3
    assert isinstance(converted[2], FusedAway) and isinstance(converted[3], FusedAway)
    # unknown: untouched
    assert type(converted[7]) is nn.Sigmoid and type(converted[0]) is nn.Flatten
    assert type(model[1]) is nn.Linear  # inplace=False leaves the original alone
    x = torch.randn(5, 8)
    assert_close(converted.eval()(x), model.eval()(x))


def test_is_idempotent_and_unconvert_goes_back():
    torch.manual_seed(0)
    model = build("lenet_bn", "torch").eval()
    once = fastops.convert(model, verbose=False)
    twice = fastops.convert(once, verbose=False)
    assert repr(once) == repr(twice)
    back = fastops.unconvert(twice)
    assert repr(back) == repr(model)
    x = sample("lenet_bn")
    assert_close(back(x), model(x))


class CustomForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.fc2 = nn.Linear(7, 3)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        hidden = TF.relu(self.fc1(x))
        return torch.relu(self.fc2(hidden)) + self.head(x)


class SubclassedLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


def test_fuses_relu_calls_of_a_traceable_forward_and_leaves_subclasses_alone():
    torch.manual_seed(0)
    model = CustomForward()
    model.extra = SubclassedLinear(2, 2)
    converted = fastops.convert(model, verbose=False)
    assert isinstance(converted, torch.fx.GraphModule)
    assert converted.fc1.activation == "relu" and converted.fc2.activation == "relu"
    assert converted.head.activation is None
    assert type(converted.extra) is SubclassedLinear
    assert converted.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(4, 5, requires_grad=True)
    assert_close(converted(x), model(x))
    back = fastops.unconvert(converted)
    assert type(back.fc1) is nn.Linear
    assert_close(back(x), model(x))


def test_untraceable_forward_is_converted_without_fusion():
    class DataDependent(CustomForward):
        def forward(self, x):
            return self.fc1(x) if x.sum() > 0 else self.head(x)

    model = DataDependent()
    converted = fastops.convert(model, verbose=False)
    assert type(converted) is DataDependent and converted.fc1.activation is None
    assert isinstance(converted.fc1, fastops.nn.Linear)


def test_converts_the_loss_too():
    loss = fastops.convert(nn.CrossEntropyLoss(label_smoothing=0.1), verbose=False)
    assert isinstance(loss, fastops.nn.CrossEntropyLoss) and loss.label_smoothing == 0.1
    logits, target = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    assert_close(loss(logits, target), TF.cross_entropy(logits, target, label_smoothing=0.1))
    assert copy.deepcopy(loss).label_smoothing == 0.1


@pytest.mark.skipif(not hasattr(nn, "LinearCrossEntropyLoss"),
                    reason="torch has no LinearCrossEntropyLoss (< 2.13)")
def test_converts_linear_cross_entropy_loss_keeping_its_tensors():
    torch.manual_seed(0)
    head = nn.LinearCrossEntropyLoss(6, 5, out_features=(2,), bias=True, weight=torch.rand(5) + 0.1,
                                     label_smoothing=0.1, reduction="sum")
    model = nn.ModuleDict({"head": head})
    converted = fastops.convert(model, inplace=True, verbose=False)
    assert converted is model and type(head) is fastops.nn.LinearCrossEntropyLoss
    assert head.linear.weight is model.head.linear.weight  # the same parameters and buffer
    tensors = {name: t for name, t in head.state_dict(keep_vars=True).items()}
    assert set(tensors) == {"weight", "linear.weight", "linear.bias"}
    assert head.label_smoothing == 0.1 and head.reduction == "sum" and head.out_features == (2,)
    x, target = torch.randn(4, 6), torch.tensor([[0, 1], [4, 2], [3, 3], [1, 0]])
    want = TF.linear_cross_entropy(x, head.linear.weight.reshape(5, 2, 6), target,
                                   linear_bias=head.linear.bias.reshape(5, 2), weight=head.weight,
                                   reduction="sum", label_smoothing=0.1)
    assert_close(head(x, target), want)
    back = fastops.unconvert(model, inplace=True)
    assert type(back.head) is nn.LinearCrossEntropyLoss and type(back.head.linear) is nn.Linear
    assert all(back.head.state_dict(keep_vars=True)[name] is t for name, t in tensors.items())
    assert_close(back.head(x, target), want)
    # and a copy keeps equal values
    copied = fastops.convert(back, verbose=False)
    assert (type(copied.head) is fastops.nn.LinearCrossEntropyLoss
            and type(back.head) is nn.LinearCrossEntropyLoss)
    assert_close(copied.head(x, target), want)


def test_converts_channel_dropouts_and_unconvert_restores_them():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout2d(0.2), nn.Flatten(2),
                          nn.Dropout1d(0.3), nn.Unflatten(2, (1, 6, 6)),
                          nn.Dropout3d(0.4, inplace=True), nn.Flatten(), nn.Linear(4 * 36, 3),
                          nn.ReLU(), nn.Dropout1d(0.5))
    converted = fastops.convert(model, verbose=False)
    for index, twin, p in [(2, fastops.nn.Dropout2d, 0.2), (4, fastops.nn.Dropout1d, 0.3),
                           (6, fastops.nn.Dropout3d, 0.4), (10, fastops.nn.Dropout1d, 0.5)]:
        assert type(converted[index]) is twin and converted[index].p == p
    assert converted[6].inplace
    # channel dropout is not the Linear epilogue's elementwise dropout: only the ReLU is fused
    assert converted[8].activation == "relu" and converted[8].dropout == 0.0
    assert isinstance(converted[9], FusedAway) and type(converted[10]) is fastops.nn.Dropout1d
    x = torch.randn(2, 3, 8, 8)
    assert_close(converted.eval()(x), model.eval()(x))
    converted.train()
    assert converted(x).shape == (2, 3)
    back = fastops.unconvert(converted)
    assert repr(back) == repr(model)
    assert [type(m) for m in back] == [type(m) for m in model]


def test_verbose_prints_the_summary_and_unconvert_logs_what_it_restores(caplog, capsys):
    caplog.set_level(logging.INFO, logger="fastops.convert")
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout2d(0.1))
    converted = fastops.convert(model, verbose=True)
    out = capsys.readouterr().out
    assert out.startswith("fastops.convert:\n  replaced 0: nn.Linear -> fastops.nn.Linear\n")
    assert "replaced 2: nn.Dropout2d -> fastops.nn.Dropout2d" in out and "fused 0 with 1" in out
    assert len(convert_records(caplog)) == 3  # printed and logged
    caplog.clear()
    fastops.convert(nn.Sequential(nn.Tanh()), verbose=False)
    assert convert_records(caplog) == ["nothing to replace"] and capsys.readouterr().out == ""
    caplog.clear()
    fastops.unconvert(converted)
    assert sorted(convert_records(caplog)) == ["restored 0: fastops.nn.Linear -> nn.Linear",
                                               "restored 1: nn.ReLU",
                                               "restored 2: fastops.nn.Dropout2d -> nn.Dropout2d"]
    caplog.clear()
    traced = fastops.convert(CustomForward())
    fastops.unconvert(traced)
    assert "restored the relu after fc1 in forward (torch.fx)" in convert_records(caplog)


def test_leaves_logging_configuration_to_the_application(capsys):
    # no handler or level of its own, INFO records only: silent under logging's default WARNING
    fastops.convert(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    logger = logging.getLogger("fastops.convert")
    assert logger.handlers == [] and logger.level == logging.NOTSET and logger.propagate
    assert capsys.readouterr().out == ""


# -- fusion only where every use of the layer object is followed by the ReLU ---------------------

def converted_matches(model, *shapes, train=False):
    """convert(model) gives model's outputs (and input gradients); returns the converted model."""
    torch.manual_seed(0)
    model.train(train)
    converted = fastops.convert(model, verbose=False)
    inputs = [torch.randn(*shape, requires_grad=True) for shape in shapes]
    expected = model(*inputs)
    expected_grads = torch.autograd.grad(expected.sum(), inputs)
    actual = converted(*inputs)
    assert_close(actual, expected)
    for got, want in zip(torch.autograd.grad(actual.sum(), inputs), expected_grads, strict=True):
        assert_close(got, want)
    return converted


class CalledTwice(nn.Module):
    """One Linear object called twice: once followed by a ReLU, once not."""

    def __init__(self, relu_after_second=False):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.relu_after_second = relu_after_second

    def forward(self, x):
        y = self.fc(TF.relu(self.fc(x)))
        return torch.relu(y) if self.relu_after_second else y


def test_layer_called_twice_in_forward_is_fused_only_if_both_calls_are_followed_by_relu():
    converted = converted_matches(CalledTwice(), (3, 4))
    assert converted.fc.activation is None  # the second call has no ReLU after it
    model = CalledTwice(relu_after_second=True)
    converted = converted_matches(model, (3, 4))
    assert isinstance(converted, torch.fx.GraphModule) and converted.fc.activation == "relu"
    assert not any(n.target in (torch.relu, TF.relu) for n in converted.graph.nodes)
    back = fastops.unconvert(converted)
    assert type(back.fc) is nn.Linear
    x = torch.randn(2, 4)
    assert_close(back(x), model(x))


def test_layer_shared_by_two_sequentials_counts_both_occurrences():
    shared = nn.Linear(4, 4)
    # once followed by a ReLU, once by Tanh: left unfused
    model = nn.Sequential(nn.Sequential(shared, nn.ReLU()), nn.Sequential(shared, nn.Tanh()))
    converted = converted_matches(model, (3, 4))
    assert converted[0][0] is converted[1][0] and converted[0][0].activation is None
    assert type(converted[0][1]) is nn.ReLU
    # twice in the same Sequential, the second time last
    model = nn.Sequential(shared, nn.ReLU(), shared)
    converted = converted_matches(model, (3, 4))
    assert converted[0].activation is None and type(converted[1]) is nn.ReLU
    # followed by a ReLU everywhere: fused, and both slots are placeholders
    model = nn.Sequential(nn.Sequential(shared, nn.ReLU()), nn.Linear(4, 4),
                          nn.Sequential(shared, nn.ReLU(inplace=True)))
    converted = converted_matches(model, (3, 4))
    assert converted[0][0] is converted[2][0] and converted[0][0].activation == "relu"
    assert isinstance(converted[0][1], FusedAway) and isinstance(converted[2][1], FusedAway)
    back = fastops.unconvert(converted)
    assert repr(back) == repr(model) and back[0][0] is back[2][0]


def test_layer_in_a_sequential_and_called_directly_is_not_fused():
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.branch = nn.Sequential(self.fc, nn.ReLU())

        def forward(self, x):
            return self.branch(x) + self.fc(x)

    converted = converted_matches(Both(), (3, 4))
    assert converted.fc.activation is None and type(converted.branch[1]) is nn.ReLU


def test_untraceable_forward_fuses_only_layers_that_live_in_sequentials_alone():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.branch = nn.Sequential(self.fc, nn.ReLU())
            self.other = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

        def forward(self, x):
            if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
                return self.other(self.branch(x))
            return self.other(self.fc(x))

    model = Untraceable()
    converted = converted_matches(model, (3, 4))
    assert type(converted) is Untraceable
    assert converted.fc.activation is None  # also an attribute: forward may call it directly
    assert converted.other[0].activation == "relu"
    x = -torch.ones(2, 4) * 10  # the other branch
    assert_close(converted(x), model(x))


def test_layers_and_relus_with_hooks_are_not_fused_and_their_hooks_see_torchs_values():
    seen = {}

    def remember(name):
        def hook(module, args, output):
            seen[name] = output.detach().clone()
        return hook

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
                          nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU())
    model[0].register_forward_hook(remember("layer"))  # the layer's output, before the ReLU
    model[3].register_forward_pre_hook(lambda module, args: seen.update(relu_in=args[0]))
    model[4].register_full_backward_hook(lambda module, grad_in, grad_out: seen.update(grad=1))
    torch.manual_seed(0)
    x = torch.randn(5, 4)
    model(x)
    want = dict(seen)
    converted = fastops.convert(model, verbose=False)
    assert [converted[i].activation for i in (0, 2, 4, 6)] == [None, None, None, "relu"]
    assert [type(converted[i]) for i in (1, 3, 5)] == [nn.ReLU] * 3
    seen.clear()
    converted(x)
    assert (seen["layer"] < 0).any()  # what torch's Linear returns, not the ReLU's output
    assert_close(seen["layer"], want["layer"])
    assert_close(seen["relu_in"], want["relu_in"])
    x.requires_grad_()
    converted(x).sum().backward()
    assert seen["grad"] == 1


def test_a_relu_object_shared_between_slots_stays_where_it_is_not_fused():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), nn.Tanh(), relu,
                          nn.MaxPool1d(1), relu)
    converted = converted_matches(model, (3, 4))
    assert converted[0].activation == "relu" and isinstance(converted[1], FusedAway)
    assert converted[2].activation is None
    assert type(converted[4]) is nn.ReLU and converted[4] is converted[6]
    back = fastops.unconvert(converted)
    assert repr(back) == repr(model) and back[1] is back[4] is back[6]

    class Shared(nn.Module):  # the same ReLU module after a layer and after an add
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()
            self.seq = nn.Sequential(nn.Linear(4, 4), self.act)

        def forward(self, x):
            return self.act(self.fc(x) + 1) + self.seq(x)

    converted = converted_matches(Shared(), (3, 4))
    assert converted.fc.activation is None and converted.seq[0].activation == "relu"
    assert converted.act is converted.seq[1].original and type(converted.act) is nn.ReLU


def test_relu_modules_called_in_forward_are_fused_and_what_is_not_fused_is_reported(caplog):
    caplog.set_level(logging.INFO, logger="fastops.convert")

    class ModuleReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.act(self.fc(x)))

    converted = converted_matches(ModuleReLU(), (3, 4))
    assert isinstance(converted, torch.fx.GraphModule) and converted.fc.activation == "relu"
    assert "fused fc with the relu in forward (torch.fx)" in convert_records(caplog)
    assert set(converted.state_dict()) == set(ModuleReLU().state_dict())
    caplog.clear()
    converted_matches(CalledTwice(), (3, 4))
    assert convert_records(caplog)[-1] == (
        "not fused fc: a call of fc in forward is not followed by a ReLU")
    caplog.clear()
    shared = nn.Linear(4, 4)
    converted_matches(nn.Sequential(nn.Sequential(shared, nn.ReLU()), shared), (3, 4))
    assert convert_records(caplog)[-1] == "not fused 0.0: 1 is not followed by a ReLU"
    caplog.clear()
    hooked = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU())
    hooked[0].register_forward_hook(lambda module, args, output: None)
    hooked[3].register_forward_pre_hook(lambda module, args: None)
    converted_matches(hooked, (3, 4))
    assert convert_records(caplog)[-2:] == [
        "not fused 0: its forward or backward hooks would see the ReLU's output",
        "not fused 2: the ReLU after 2 has hooks"]
    caplog.clear()
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, output: None)
    try:
        converted_matches(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), (3, 4))
    finally:
        handle.remove()
    assert convert_records(caplog)[-1] == (
        "not fused 0: global module hooks are registered (they would see the ReLU's output)")
    caplog.clear()
    # a relu call inside a block of an nn.Sequential model: the model stays an nn.Sequential
    converted = converted_matches(nn.Sequential(CustomForward(), nn.Linear(3, 2)), (3, 5))
    assert type(converted) is nn.Sequential and converted[0].fc1.activation is None
    assert convert_records(caplog)[-2] == (
        "not fused 0.fc1: the relu after 0.fc1 is not the next slot of an nn.Sequential, and "
        "convert does not rewrite an nn.Sequential's forward")


# -- TorchScript: one clear error; trace, export and compile work --------------------------------

FASTOPS_MODULES = {
    "BatchNorm1d": lambda: fastops.nn.BatchNorm1d(3),
    "BatchNorm1dReLU": lambda: fastops.nn.BatchNorm1dReLU(3),
    "BatchNorm2d": lambda: fastops.nn.BatchNorm2d(3),
    "BatchNorm2dReLU": lambda: fastops.nn.BatchNorm2dReLU(3),
    "Conv2d": lambda: fastops.nn.Conv2d(3, 4, 3),
    "Conv2dReLU": lambda: fastops.nn.Conv2dReLU(3, 4, 3),
    "CrossEntropyLoss": lambda: fastops.nn.CrossEntropyLoss(),
    "Dropout": lambda: fastops.nn.Dropout(),
    "Dropout1d": lambda: fastops.nn.Dropout1d(),
    "Dropout2d": lambda: fastops.nn.Dropout2d(),
    "Dropout3d": lambda: fastops.nn.Dropout3d(),
    "Linear": lambda: fastops.nn.Linear(3, 4),
    "LinearCrossEntropyLoss": lambda: fastops.nn.LinearCrossEntropyLoss(3, 4),
    "LinearReLU": lambda: fastops.nn.LinearReLU(3, 4),
    "MaxPool2d": lambda: fastops.nn.MaxPool2d(2),
}
NOT_SCRIPTABLE = (r"cannot be compiled by torch.jit.script: TorchScript is not supported by "
                  r"fastops.nn modules .* Use torch.jit.trace\(model, example_inputs\), "
                  r"torch.export.export\(model, args\) or torch.compile\(model\) instead, or "
                  r"script fastops.unconvert\(model\)")


def assert_refuses_torchscript(module, name):
    for _ in range(3):  # the same error every time (no "Can't redefine method" the 2nd time)
        with pytest.raises(RuntimeError, match=f"^fastops.nn.{name} {NOT_SCRIPTABLE}"):
            torch.jit.script(module)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 deprecates torch.jit
def test_every_fastops_module_refuses_torchscript_with_one_clear_error():
    assert sorted(FASTOPS_MODULES) == sorted(fastops.nn.__all__)
    for name, make in FASTOPS_MODULES.items():
        assert_refuses_torchscript(make(), name)

    class Mine(fastops.nn.Linear):
        pass

    with pytest.raises(RuntimeError, match=r"^.*Mine \(a fastops.nn module\) " + NOT_SCRIPTABLE):
        torch.jit.script(Mine(2, 2))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["lenet_bn", "resnet18"])
def test_converted_models_refuse_torchscript_and_script_once_unconverted(name):
    torch.manual_seed(0)
    model = build(name, "torch").eval()
    converted = fastops.convert(model)
    first = "Conv2d"
    assert_refuses_torchscript(converted, first)
    assert_refuses_torchscript(nn.ModuleDict({"tanh": nn.Tanh(), "model": converted}), first)
    traced_forward = fastops.convert(CustomForward())  # a torch.fx.GraphModule
    assert_refuses_torchscript(traced_forward, "Linear")
    scripted = torch.jit.script(fastops.unconvert(converted))
    x = sample(name)
    assert_close(scripted(x), model(x))


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::torch.jit.TracerWarning",
                            "ignore::DeprecationWarning")  # torch 2.13 deprecates torch.jit
@pytest.mark.parametrize("name", ["lenet_bn", "mlp"])
def test_trace_export_and_compile_run_a_converted_tutorial_model(name):
    torch.manual_seed(0)
    model = build(name, "torch").eval()
    converted = fastops.convert(model)
    x = sample(name, batch=4)
    expected = model(x)

    traced = torch.jit.trace(converted, (x,))
    assert_close(traced(x), expected, scale=10)
    other = sample(name, batch=7, seed=1)  # the checks are not in the trace, the op's rules are
    assert_close(traced(other), model(other), scale=10)
    assert any("fastops::" in str(n.kind()) for n in traced.inlined_graph.nodes())

    exported = torch.export.export(converted, (x,))
    assert_close(exported.module()(x), expected, scale=10)
    assert any(str(n.target).startswith("fastops.") for n in exported.graph.nodes)

    torch._dynamo.reset()
    compiled = torch.compile(converted, backend="aot_eager", fullgraph=True)
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    actual = compiled(x_compiled)
    assert_close(actual, expected, scale=10)
    actual.square().sum().backward()
    model(x_eager).square().sum().backward()
    assert_close(x_compiled.grad, x_eager.grad, scale=10)
