"""The loss slots: every detector has the slots the docs name (docs/adding-a-trick.md), a slot it
lacks or a loss-like attribute that is no slot is an error naming the detector and its slots, and
what a box loss receives is the form it declares."""
import pytest
import torch
from torch import nn

from ablate.models.losses import (GIoUBoxLoss, LossSlotError, ScaledLoss, current_slot, set_slot, slot_holders)
from ablate.testing import build_trick, tiny_batch, tiny_model
from ablate.tricks import SLOTS, Trick, TrickConflictError, check_compatible

pytestmark = pytest.mark.usefixtures("single_thread")

MODELS = ["fcos", "retinanet", "faster_rcnn", "yolov3"]
EXPECTED = {"fcos": {"cls_loss", "box_loss"}, "retinanet": {"cls_loss", "box_loss", "sample_weighting"},
            "faster_rcnn": {"cls_loss", "box_loss", "roi_sampler", "sample_weighting"}, "yolov3": {"cls_loss", "box_loss"}}
BOX_KEY = {"fcos": "bbox_regression", "retinanet": "bbox_regression", "faster_rcnn": "loss_box_reg",
           "yolov3": "bbox_regression"}


def losses(model, name, weights=None, seed=0):
    images, targets = tiny_batch(name, weights=weights)
    torch.manual_seed(seed)  # the samplers draw at random
    model.train()
    return {k: float(v.detach()) for k, v in model(images, targets).items()}


class Recording(nn.Module):
    """A box loss that keeps what it was given (and returns 0 times the prediction)."""

    def __init__(self, space):
        super().__init__()
        self.space, self.seen = space, []

    def forward(self, pred, target, box_weights, normalizer, levels):
        self.seen.append((pred.detach(), target.detach(), box_weights, normalizer, levels))
        return pred.sum() * 0


@pytest.mark.parametrize("name", MODELS)
def test_each_detector_has_the_slots_of_the_docs_table(name):
    assert set(slot_holders(tiny_model(name))) == EXPECTED[name]
    assert EXPECTED[name] <= set(SLOTS)


def test_a_slot_the_detector_lacks_is_an_error_naming_it_and_its_slots():
    with pytest.raises(LossSlotError, match=r"^fcos has no 'roi_sampler' slot; its slots: cls_loss, box_loss$"):
        set_slot(tiny_model("fcos"), "roi_sampler", object())
    with pytest.raises(LossSlotError, match=r"^retinanet has no 'box-loss' slot"):
        current_slot(tiny_model("retinanet"), "box-loss")


@pytest.mark.parametrize("name", MODELS)
def test_setting_a_loss_attribute_that_is_no_slot_raises(name):
    model = tiny_model(name)
    holder = model.roi_heads if name == "faster_rcnn" else model.head
    with pytest.raises(LossSlotError, match=rf"^{name} has no loss slot 'bbox_loss'.*its slots: cls_loss"):
        holder.bbox_loss = GIoUBoxLoss()
    holder.box_loss = GIoUBoxLoss()  # the slot itself is settable


def test_a_box_loss_must_say_which_form_it_takes():
    class NoSpace(nn.Module):
        def forward(self, *args):
            return 0

    with pytest.raises(LossSlotError, match="space = 'deltas' or 'boxes'"):
        set_slot(tiny_model("fcos"), "box_loss", NoSpace())


@pytest.mark.parametrize("name", MODELS)
def test_the_baseline_losses_set_in_their_slots_give_torchvisions_numbers(name):
    """current_slot is the baseline's loss: putting it in the slot (our code path) gives the losses
    torchvision's own code gives with no slot set."""
    model = tiny_model(name)
    reference = losses(model, name)
    for slot in ("cls_loss", "box_loss"):
        set_slot(model, slot, current_slot(model, slot))
    assert losses(model, name) == pytest.approx(reference, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", MODELS)
def test_a_scaled_box_loss_scales_only_the_box_term(name):
    model = tiny_model(name)
    reference = losses(model, name)
    set_slot(model, "box_loss", ScaledLoss(current_slot(model, "box_loss"), 2.0))
    scaled = losses(model, name)
    for key, value in reference.items():
        assert scaled[key] == pytest.approx(2 * value if key == BOX_KEY[name] else value, rel=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_a_boxes_loss_gets_decoded_predictions_and_the_matched_ground_truth_boxes(name):
    model = tiny_model(name)
    loss = Recording("boxes")
    set_slot(model, "box_loss", loss)
    losses(model, name, weights=[1.0, 0.25])
    (pred, target, box_weights, normalizer, levels), = loss.seen
    gt = tiny_batch(name)[1][0]["boxes"]
    assert len(pred) == len(target) > 0 and pred.shape[1] == 4
    # every target is one of the ground-truth boxes (the first image's two), in pixels
    assert all(any(torch.equal(row, box) for box in gt) for row in target)
    # and its weight is that box's: 1.0 for the first, 0.25 for the second
    assert set(box_weights.tolist()) <= {1.0, 0.25} and 0.25 in box_weights.tolist()
    assert all(torch.equal(row, gt[1]) == (w == 0.25) for row, w in zip(target, box_weights.tolist()))
    # decoded predictions are boxes around the image, not deltas near zero
    assert float(pred[:, 2:].mean()) > 20
    assert len(normalizer) == len(levels) == len(pred)


@pytest.mark.parametrize("name", MODELS)
def test_a_deltas_loss_gets_the_heads_encoding_of_the_matched_boxes(name):
    model = tiny_model(name)
    recording = Recording("deltas")
    set_slot(model, "box_loss", recording)
    losses(model, name)
    (_, target_deltas, *_), = recording.seen
    boxes = Recording("boxes")
    set_slot(model, "box_loss", boxes)
    losses(model, name)
    (_, target_boxes, *_), = boxes.seen
    # the same samples in both forms: decoding nothing here, so check sizes and that deltas are small
    assert target_deltas.shape == target_boxes.shape
    assert float(target_deltas.abs().mean()) < float(target_boxes.abs().mean())


def test_claiming_a_slot_that_does_not_exist_lists_the_slots():
    class Typo(Trick):
        claims = ("box-loss",)

    trick = Typo()
    trick.name = "typo"
    with pytest.raises(TrickConflictError, match=r"trick 'typo' .* claims unknown slot\(s\) 'box-loss'; the slots are "
                                                 r"lr_warmup, lr_schedule, .*box_loss"):
        check_compatible([trick], "one_stage", "fcos")


def test_every_built_in_trick_claims_known_slots():
    for name, model in [("mixup", "fcos"), ("cutmix", "fcos"), ("label_smoothing", "fcos"), ("warmup", "fcos"),
                        ("ghm", "fcos"), ("ghm_r", "retinanet"), ("iou_balanced", "faster_rcnn"),
                        ("dropblock", "fcos"), ("mish", "fcos")]:
        assert set(build_trick(name, model).claims) <= set(SLOTS)
