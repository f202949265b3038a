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
