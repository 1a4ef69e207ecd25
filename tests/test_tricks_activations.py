"""The activation tricks (leaky_relu, prelu, relu6, selu, swish, hard_swish; mish in
test_tricks_model.py): each one's values against its paper's formula on given inputs, where it goes
in each detector, and a few training steps with it really in the forward path."""
import math

import pytest
import torch
from torch import nn

from ablate.testing import build_trick, really_on, tiny_batch, tiny_model
from ablate.tricks import TrickConfigError
from ablate.tricks.network.activation import ACTIVATIONS, KINDS, ActP6P7, ActTwoMLPHead

pytestmark = pytest.mark.usefixtures("single_thread")

NEW = ["leaky_relu", "prelu", "relu6", "selu", "swish", "hard_swish"]
X = [-2.0, -0.5, 0.0, 1.0, 7.0]
SELU_L, SELU_A = 1.0507009873554805, 1.6732632423543772  # Klambauer et al. 2017, eq. 2 constants
PAPER = {
    "leaky_relu": lambda x: x if x > 0 else 0.1 * x,
    "prelu": lambda x: x if x > 0 else 0.25 * x,
    "relu6": lambda x: min(max(x, 0.0), 6.0),
    "selu": lambda x: SELU_L * (x if x > 0 else SELU_A * (math.exp(x) - 1)),
    "swish": lambda x: x / (1 + math.exp(-x)),
    "hard_swish": lambda x: x * min(max(x + 3, 0.0), 6.0) / 6,
    "mish": lambda x: x * math.tanh(math.log1p(math.exp(x))),
}


@pytest.mark.parametrize("name", NEW + ["mish"])
def test_each_activation_computes_its_papers_formula(name):
    act = build_trick(name).make()
    got = act.double()(torch.tensor(X, dtype=torch.float64)).tolist()
    assert got == pytest.approx([PAPER[name](x) for x in X], rel=1e-6, abs=1e-9)


def test_every_kind_has_a_yaml_and_its_own_module_per_place():
    assert set(KINDS) == set(NEW) | {"mish"}
    trick = build_trick("prelu", "faster_rcnn")
    model = tiny_model("faster_rcnn", tricks=[trick])
    slopes = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert len(slopes) > 10 and len({id(m.weight) for m in slopes}) == len(slopes)  # one a per layer
    assert all(float(m.weight.detach()) == 0.25 for m in slopes)
    # a PReLU's slope is trained: it is among the model's parameters the optimizer gets
    assert any(p is slopes[0].weight for p in model.parameters())


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("model_name", ["fcos", "retinanet", "faster_rcnn"])
def test_everywhere_the_baseline_had_an_activation_and_outputs_change(name, model_name):
    expected = type(build_trick(name).make())
    model = tiny_model(model_name, tricks=[build_trick(name, model_name)])
    base = tiny_model(model_name)
    # no other activation is left, backbone, neck and heads
    assert all(isinstance(m, expected) for m in model.modules() if isinstance(m, ACTIVATIONS))
    assert sum(isinstance(m, expected) for m in model.modules()) >= sum(isinstance(m, ACTIVATIONS)
                                                                        for m in base.modules())
    if model_name == "faster_rcnn":
        assert isinstance(model.roi_heads.box_head, ActTwoMLPHead)
    else:
        assert isinstance(model.backbone.fpn.extra_blocks, ActP6P7)
    images, _ = tiny_batch(model_name)
    model.eval(), base.eval()
    with torch.no_grad():
        out = model(images[:1])
    assert len(out) == 1 and set(out[0]) == {"boxes", "scores", "labels"}
    x = images[0][None] * (100 if name == "relu6" else 1)  # ReLU6 is ReLU below 6
    with torch.no_grad():
        feats, ref_feats = model.backbone(x), base.backbone(x)
    assert not torch.allclose(feats["0"], ref_feats["0"])


@pytest.mark.parametrize("name", NEW)
def test_activation_trains_with_the_new_modules_in_the_forward_path(name):
    if name != "relu6":  # ReLU6 is ReLU below 6, where the tiny model's activations stay: same losses
        really_on(name, model="fcos")  # the loss history differs from the baseline's
    trick = build_trick(name, "fcos")
    calls, make = [], trick.make

    def hooked():
        module = make()
        module.register_forward_hook(lambda *_: calls.append(1))
        return module
    trick.make = hooked
    model = tiny_model("fcos", tricks=[trick])
    images, targets = tiny_batch("fcos")
    model.train()
    model(images, targets)
    assert len(calls) > 10


def test_arguments_are_checked_by_kind():
    with pytest.raises(TrickConfigError, match=r"tricks.leaky_relu.negative_slope=1.5: must be a number in \[0, 1\]"):
        build_trick("leaky_relu", negative_slope=1.5)
    with pytest.raises(TrickConfigError, match=r"tricks.swish.kind='gelu': choose one of"):
        build_trick("swish", kind="gelu")


@pytest.mark.parametrize("order", [["leaky_relu", "dropout"], ["dropout", "leaky_relu"]])
def test_an_activation_trick_and_dropout_keep_each_other_in_the_box_head(order):
    model = tiny_model("faster_rcnn", tricks=[build_trick(name, "faster_rcnn") for name in order])
    head = model.roi_heads.box_head
    assert isinstance(head.act6, nn.LeakyReLU) and isinstance(head.act7, nn.LeakyReLU)
    assert any(isinstance(m, nn.Dropout) for m in head.modules())
