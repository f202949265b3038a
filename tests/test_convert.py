import copy
import functools
import logging

import pytest
import torch
import torch.nn.functional as TF
from helpers import assert_close
from test_newcomer import BeginnerNet
from torch import nn

import fastops
from fastops.convert import FusedAway, twins
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


def test_keeps_the_users_class_leaves_relu_calls_in_forward_and_subclasses_alone(caplog):
    caplog.set_level(logging.INFO, logger="fastops.convert")
    torch.manual_seed(0)
    model = CustomForward()
    model.extra = SubclassedLinear(2, 2)
    converted = fastops.convert(model, verbose=False)
    assert type(converted) is CustomForward
    assert isinstance(converted.fc1, fastops.nn.Linear) and converted.fc1.activation is None
    assert converted.fc2.activation is None and converted.head.activation is None
    assert type(converted.extra) is SubclassedLinear
    assert converted.state_dict().keys() == model.state_dict().keys()
    # removing TF.relu / torch.relu would mean rewriting forward: said so
    unfused = [r for r in convert_records(caplog) if r.startswith("not fused")]
    assert unfused == [
        f"not fused {name}: the relu after it is a function call in forward ({call}), which "
        "convert cannot remove without rewriting forward; an nn.ReLU module there would be fused"
        for name, call in (("fc1", "F.relu"), ("fc2", "torch.relu"))]
    x = torch.randn(4, 5, requires_grad=True)
    assert_close(converted(x), model(x))
    back = fastops.unconvert(converted)
    assert type(back) is CustomForward and type(back.fc1) is nn.Linear
    assert_close(back(x), model(x))


def test_untraceable_forward_is_converted_without_fusion_and_says_why(caplog):
    caplog.set_level(logging.INFO, logger="fastops.convert")

    class DataDependent(CustomForward):
        def forward(self, x):
            return self.fc1(x) if x.sum() > 0 else self.head(x)

    model = DataDependent()
    converted = fastops.convert(model, verbose=False)
    assert type(converted) is DataDependent and converted.fc1.activation is None
    assert isinstance(converted.fc1, fastops.nn.Linear)
    assert convert_records(caplog)[-1] == (
        "not fused in DataDependent.forward: it is not traceable by torch.fx (symbolically traced "
        "variables cannot be used as inputs to control flow); only layers in nn.Sequential slots "
        "are fused")


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
    fastops.unconvert(fastops.convert(ModuleReLU()))
    assert "restored act: nn.ReLU" in convert_records(caplog)


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
    """One Linear object called twice: once followed by its ReLU module, then with or without
    it."""

    def __init__(self, relu_after_second=False):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.relu_after_second = relu_after_second

    def forward(self, x):
        y = self.fc(self.act(self.fc(x)))
        return self.act(y) if self.relu_after_second else y


def test_layer_called_twice_in_forward_is_fused_only_if_both_calls_are_followed_by_relu():
    for train in (False, True):
        converted = converted_matches(CalledTwice(), (3, 4), train=train)
        assert converted.fc.activation is None  # the second call has no ReLU after it
        assert type(converted.act) is nn.ReLU  # so the first ReLU must still run
        model = CalledTwice(relu_after_second=True)
        converted = converted_matches(model, (3, 4), train=train)
        assert type(converted) is CalledTwice and converted.fc.activation == "relu"
        assert isinstance(converted.act, FusedAway)
        back = fastops.unconvert(converted)
        assert type(back.fc) is nn.Linear and type(back.act) is nn.ReLU
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


class ModuleReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.act(self.fc(x)))


def test_relu_modules_called_in_forward_are_fused_and_what_is_not_fused_is_reported(caplog):
    caplog.set_level(logging.INFO, logger="fastops.convert")
    converted = converted_matches(ModuleReLU(), (3, 4))
    assert type(converted) is ModuleReLU and converted.fc.activation == "relu"
    assert "fused fc with act: fastops.nn.Linear(activation='relu')" in convert_records(caplog)
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
    # a relu call inside a block of an nn.Sequential model
    converted = converted_matches(nn.Sequential(CustomForward(), nn.Linear(3, 2)), (3, 5))
    assert type(converted[0]) is CustomForward and converted[0].fc1.activation is None
    assert any(r.startswith("not fused 0.fc1: the relu after it is a function call in forward "
                            "(F.relu)") for r in convert_records(caplog))


# -- unconvert gives back torch.nn classes only ----------------------------------------------------

def assert_only_torch_classes(back, model):
    """Every module of ``back`` has the class of the same module of ``model`` (torch's own), with
    the same settings and tensors."""
    assert [type(m) for m in back.modules()] == [type(m) for m in model.modules()]
    assert not [m for m in back.modules() if isinstance(m, (FusedAway, *twins().values()))]
    assert repr(back) == repr(model)
    assert back.state_dict().keys() == model.state_dict().keys()
    for key, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key


def dropouts_in_a_row():
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.1), nn.Dropout(0.3, inplace=True))


def every_converted_layer():
    """A model with a torch.nn layer of each class that convert replaces."""
    layers = nn.ModuleDict({
        "features": nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Dropout2d(0.2), nn.Conv2d(4, 4, 1),
                                  nn.ReLU(inplace=True), nn.Flatten(2), nn.Dropout1d(0.1),
                                  nn.Unflatten(2, (1, 3, 3)), nn.Dropout3d(0.3), nn.Flatten(),
                                  nn.Dropout(0.1)),
        "head": nn.Sequential(nn.Linear(36, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8),
                              nn.ReLU(), nn.Dropout(0.4), nn.Linear(8, 3)),
        "loss": nn.CrossEntropyLoss(label_smoothing=0.1),
    })
    if hasattr(nn, "LinearCrossEntropyLoss"):  # torch >= 2.13
        layers["head_loss"] = nn.LinearCrossEntropyLoss(8, 3, bias=True)
    return layers


@pytest.mark.parametrize("make", [*(functools.partial(build, name) for name in NAMES),
                                  dropouts_in_a_row, every_converted_layer],
                         ids=[*NAMES, "dropouts_in_a_row", "every_converted_layer"])
def test_unconvert_gives_back_only_torch_classes(make):
    torch.manual_seed(0)
    model = make()
    converted = fastops.convert(model)
    back = fastops.unconvert(converted)
    assert_only_torch_classes(back, model)
    assert_only_torch_classes(fastops.unconvert(converted, inplace=True), model)


def test_every_layer_convert_creates_is_a_fastops_twin():
    created = {type(m) for m in fastops.convert(every_converted_layer()).modules()}
    assert set(twins().values()) <= created


def test_unconvert_restores_fused_dropouts_in_the_models_mode():
    converted = fastops.convert(dropouts_in_a_row()).eval()
    back = fastops.unconvert(converted)
    assert [m.training for m in back.modules()] == [False] * 5
    assert (back[2].p, back[3].p, back[3].inplace) == (0.1, 0.3, True)


def test_unconvert_refuses_a_fused_layer_that_convert_did_not_fuse():
    model = nn.Sequential(fastops.nn.Linear(4, 4), fastops.nn.Conv2d(1, 1, 1))
    back = fastops.unconvert(model)
    assert [type(m) for m in back] == [nn.Linear, nn.Conv2d]
    for layer in (fastops.nn.LinearReLU(4, 4), fastops.nn.Linear(4, 4, dropout=0.1),
                  fastops.nn.BatchNorm2dReLU(4)):
        model = nn.Sequential(nn.Tanh(), layer)
        with pytest.raises(ValueError, match=r"^fastops.unconvert: 1 \(fastops.nn.\w+\(.*\)\) "
                                             r"has nn.\w+\(.*\) fused into it, which no torch.nn "
                                             "layer has"):
            fastops.unconvert(model, inplace=True)
        assert model[1] is layer and type(layer).__module__.startswith("fastops")  # untouched


# -- a user's own model class: kept, ReLU modules fused where that keeps forward exact -------------

class BeginnerNetWithReLUModule(BeginnerNet):
    """The blitz Net with one nn.ReLU module shared by every layer instead of F.relu."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(self.relu(self.fc2(x)))


def test_the_beginners_net_keeps_its_class_and_says_why_its_relu_calls_stay(caplog):
    caplog.set_level(logging.INFO, logger="fastops.convert")
    for train in (False, True):
        converted = converted_matches(BeginnerNet(), (2, 3, 32, 32), train=train)
        assert type(converted) is BeginnerNet and converted.predict.__func__ is BeginnerNet.predict
        assert [getattr(converted, n).activation for n in ("conv1", "conv2", "fc1", "fc2")] == [
            None] * 4
    assert [r.split(":")[0] for r in convert_records(caplog) if r.startswith("not fused")] == [
        f"not fused {name}" for name in ("conv1", "conv2", "fc1", "fc2")] * 2


def test_a_shared_relu_module_in_a_custom_forward_is_fused_into_every_layer_it_follows(caplog):
    caplog.set_level(logging.INFO, logger="fastops.convert")
    for train in (False, True):
        caplog.clear()
        model = BeginnerNetWithReLUModule()
        converted = converted_matches(model, (2, 3, 32, 32), train=train)
        assert type(converted) is BeginnerNetWithReLUModule and isinstance(converted.relu,
                                                                           FusedAway)
        assert [getattr(converted, n).activation for n in ("conv1", "conv2", "fc1", "fc2")] == [
            "relu"] * 4
        assert [r for r in convert_records(caplog) if r.startswith("fused")] == [
            f"fused {name} with relu: fastops.nn.{cls}(activation='relu')"
            for name, cls in (("conv1", "Conv2d"), ("conv2", "Conv2d"), ("fc1", "Linear"),
                              ("fc2", "Linear"))]
        back = fastops.unconvert(converted)
        assert_only_torch_classes(back, model)
        assert type(back) is BeginnerNetWithReLUModule and back.relu.training is train


class Stack(nn.Module):
    """Layers in an nn.ModuleList, run by a loop in forward."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
                                     nn.Linear(4, 2)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_relu_modules_after_layers_anywhere_in_a_traced_forward_are_fused(caplog):
    caplog.set_level(logging.INFO, logger="fastops.convert")
    converted = converted_matches(Stack(), (3, 4), train=True)
    assert [type(m) for m in converted.layers] == [fastops.nn.Linear, FusedAway] * 2 + [
        fastops.nn.Linear]
    # the ReLU in a Sequential after the Sequential that holds the layer
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4)), nn.ReLU(), nn.Linear(4, 2))
    converted = converted_matches(model, (3, 4))
    assert converted[0][0].activation == "relu" and isinstance(converted[1], FusedAway)
    assert convert_records(caplog)[-1] == "fused 0.0 with 1: fastops.nn.Linear(activation='relu')"
    assert_only_torch_classes(fastops.unconvert(converted), model)



def test_a_sequentials_relu_that_forward_also_calls_directly_stays(caplog):
    caplog.set_level(logging.INFO, logger="fastops.convert")

    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

        def forward(self, x):
            return self.seq(x) + self.seq[1](x - 1)  # the slot's ReLU on another value

    converted = converted_matches(Direct(), (3, 4))
    assert converted.seq[0].activation is None and type(converted.seq[1]) is nn.ReLU
    assert convert_records(caplog)[-1] == (
        "not fused seq.0: the nn.ReLU module seq.1 is also called on other values in forward")

class Twice(nn.Module):
    """fc1 -> relu, fc2 -> relu, and the relu module called once more as ``forward`` says."""

    def __init__(self, third_call):
        super().__init__()
        self.fc1, self.fc2, self.relu = nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU()
        self.third_call = third_call

    def forward(self, x):
        y = self.relu(self.fc2(self.relu(self.fc1(x))))
        return self.third_call(self, y)


def inplace_relu_of_a_layer_output_used_again(self, y):
    z = self.fc1(y)
    self.relu_inplace(z)  # changes z, which the sum below reads
    return z + y


@pytest.mark.parametrize("change, why", [
    (lambda m: setattr(m, "third_call", lambda self, y: self.relu(y - 1)),
     "not fused fc1: the nn.ReLU module relu is also called on other values in forward"),
    (lambda m: setattr(m, "alias", m.relu),
     "not fused fc1: the nn.ReLU module relu is also registered as alias"),
    (lambda m: m.relu.register_forward_hook(lambda module, args, output: None),
     "not fused fc1: the nn.ReLU module relu has hooks"),
    (lambda m: m.fc2.register_forward_hook(lambda module, args, output: None),
     "not fused fc1: the nn.ReLU module relu also follows fc2, which is not fused"),
    (lambda m: setattr(m, "third_call", lambda self, y: self.fc1(y)),
     "not fused fc1: a call of fc1 in forward is not followed by a ReLU"),
    (lambda m: (setattr(m, "relu_inplace", nn.ReLU(inplace=True)),
                setattr(m, "third_call", inplace_relu_of_a_layer_output_used_again)),
     "not fused fc1: its output in forward goes elsewhere too, not only to the relu after it"),
    (lambda m: setattr(m, "third_call", lambda self, y: TF.relu(self.fc1(y), inplace=True)),
     "not fused fc1: the relu after it is a function call in forward (F.relu(inplace=True)), "
     "which convert cannot remove without rewriting forward; an nn.ReLU module there would be "
     "fused"),
], ids=["called-elsewhere", "registered-twice", "relu-hooks", "other-layer-hooks", "reused-layer",
        "inplace-relu-output-reused", "functional-inplace"])
def test_a_relu_module_that_must_keep_running_stays_and_the_report_says_why(change, why, caplog):
    caplog.set_level(logging.INFO, logger="fastops.convert")
    model = Twice(lambda self, y: y)
    converted = converted_matches(model, (3, 4))
    assert isinstance(converted.relu, FusedAway)  # fused without the change
    model = Twice(lambda self, y: y)
    change(model)
    caplog.clear()
    for train in (False, True):
        converted = converted_matches(model, (3, 4), train=train)
        assert type(converted.relu) is nn.ReLU and converted.fc1.activation is None
    assert why in convert_records(caplog)


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
