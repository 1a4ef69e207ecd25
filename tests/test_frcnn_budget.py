"""Faster R-CNN's RPN budgets sized for the input and the reference's 256 RoIs
(conf/model/faster_rcnn.yaml): the ablate_area_scale rule, the numbers the composed config resolves
to at 160, 320, 640 and 800 px, and the model `ablate train` builds carrying them."""
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ablate.config import area_scaled, conf_dir, to_container
from ablate.models import build_model
from ablate.results import config_hash

BUDGETS = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
           "rpn_post_nms_top_n_test", "box_batch_size_per_image")
# The 800-px reference: RPN 2000/1000 proposals before/after NMS in training, 1000/500 at test, 256 RoIs.
REFERENCE = (2000, 1000, 1000, 500, 256)
# Below 566 px half the reference's proposals (the floor), area-scaled above; 256 RoIs at every size.
HALF = (1000, 500, 500, 250, 256)


def composed(*overrides):
    with initialize_config_dir(str(conf_dir()), version_base=None):
        return compose("config", ["model=faster_rcnn", *overrides])


def budgets(cfg):
    return tuple(cfg.model[k] for k in BUDGETS)


def test_area_scaled_goes_with_the_image_area_and_stops_at_its_floor():
    assert area_scaled(2000, 800, 800, 0.25) == 2000
    assert area_scaled(2000, 640, 800, 0.25) == 1280  # x0.64 = (640/800)^2, not x0.8 (the side)
    assert area_scaled(256, 640, 800, 0.25) == 164  # 163.84 rounded
    assert area_scaled(2000, 400, 800, 0.25) == 500  # (1/2)^2: where the floor starts
    assert area_scaled(2000, 320, 800, 0.25) == 500  # 0.16 < 0.25: the floor
    assert area_scaled(256, 160, 800, 0.25) == 64
    assert area_scaled(256, 160, 800, 0.01) == 10  # a lower floor lets the area rule through
    assert area_scaled(1000, 1600, 800, 0.25) == 4000  # larger images get more
    for bad in [(0, 160, 800, 0.25), (2000, 0, 800, 0.25), (2000, 160, 0, 0.25), (2000, 160, 800, 0),
                (2000, 160, 800, 1.5)]:
        with pytest.raises(ValueError, match="ablate_area_scale"):
            area_scaled(*bad)


@pytest.mark.parametrize("overrides,size,expected", [
    ([], 160, HALF),  # the embedded data
    (["data=coco", "data.root=/nowhere"], 320, HALF),  # COCO-format data's default size
    (["data.image_size=640"], 640, (1280, 640, 640, 320, 256)),
    (["data.image_size=800"], 800, REFERENCE),
])
def test_the_composed_config_resolves_the_budgets_from_data_image_size(overrides, size, expected):
    cfg = composed(*overrides)
    assert cfg.data.image_size == cfg.model.budget_image_size == size
    assert budgets(cfg) == expected
    # the resolved numbers, not the formula, go into the record's config
    model = to_container(cfg)["model"]
    assert tuple(model[k] for k in BUDGETS) == expected


def test_budget_keys_are_hashed_with_the_model():
    base = to_container(composed())
    assert config_hash(base) == config_hash(to_container(composed()))
    floor = to_container(composed("model.budget_min_factor=0.25"))
    assert floor["model"]["rpn_post_nms_top_n_train"] == 250
    assert config_hash(floor) != config_hash(base)


def test_the_model_file_on_its_own_has_the_reference_budgets():
    # Unit tests load conf/model/faster_rcnn.yaml without a data section: the reference size applies.
    cfg = OmegaConf.load(conf_dir() / "model" / "faster_rcnn.yaml")
    assert cfg.budget_image_size == 800
    assert tuple(cfg[k] for k in BUDGETS) == REFERENCE


def model_of(cfg):
    cfg.model.backbone.width = 8  # the budgets do not depend on the backbone: keep it small
    return build_model(cfg.model, num_classes=5, image_size=cfg.data.image_size)


@pytest.mark.parametrize("overrides,expected", [([], HALF), (["data.image_size=800"], REFERENCE)])
def test_the_built_model_carries_the_budgets(overrides, expected):
    model = model_of(composed(*overrides))
    pre_train, post_train, pre_test, post_test, rois = expected
    assert model.rpn._pre_nms_top_n == {"training": pre_train, "testing": pre_test}
    assert model.rpn._post_nms_top_n == {"training": post_train, "testing": post_test}
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == rois
    assert model.roi_heads.fg_bg_sampler.positive_fraction == 0.25


def test_a_training_forward_at_160_px_keeps_500_proposals_and_samples_256_rois_per_image():
    torch.manual_seed(0)
    model = model_of(composed())
    model.train()
    images = [torch.rand(3, 160, 160) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 80.0], [90.0, 40.0, 150.0, 120.0]]),
                "labels": torch.tensor([1, 2])} for _ in images]
    image_list, targets = model.transform(images, targets)
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features, targets)
    # 6,402 anchors at 160 px: far more than 500 survive NMS at first, so the budget is what stops them
    assert [len(p) for p in proposals] == [500, 500]
    sampled, _, labels, _ = model.roi_heads.select_training_samples([p.detach() for p in proposals], targets)
    assert [len(p) for p in sampled] == [256, 256]
    assert all(0 < int((lab > 0).sum()) <= 64 for lab in labels)  # positives: at most 25% of 256
