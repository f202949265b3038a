import copy

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import fastops
from fastops.convert import FusedAway
from fastops.models import NAMES, RECIPES, build
from helpers import assert_close


def sample(name, batch=3, seed=0):
    return torch.randn(batch, *RECIPES[name].input_shape, generator=torch.Generator().manual_seed(seed))


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


def test_replaces_and_fuses_in_sequential_and_reports_it(capsys):
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 4),
                          nn.ReLU(), nn.Identity(), nn.Sigmoid())
    converted = fastops.convert(model)
    out = capsys.readouterr().out
    assert "replaced 1: nn.Linear -> fastops.nn.Linear" in out and "fused 1 with 2, 3" in out
    assert "fused 4 with 5" in out
    assert isinstance(converted[1], fastops.nn.Linear) and converted[1].activation == "relu"
    assert converted[1].dropout == 0.3
    assert isinstance(converted[2], FusedAway) and isinstance(converted[3], FusedAway)
    assert type(converted[7]) is nn.Sigmoid and type(converted[0]) is nn.Flatten  # unknown: untouched
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
