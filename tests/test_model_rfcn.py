"""R-FCN (ablate/models/rfcn.py): position-sensitive pooling and voting on hand-made score maps, the
RoI losses on hand-set maps, shapes, eval output, an overfit, two-stage tricks on it, one smoke run."""
from __future__ import annotations

import json
import math

import pytest
import torch

from ablate.models import build_model
from ablate.models.losses import current_slot
from ablate.models.rfcn import AverageVote, PositionSensitivePool, RFCNRoIHeads
from ablate.testing import eval_detections, fixed_batch_history, IMAGE_SIZE, build_trick, model_config, really_on, tiny_batch, tiny_model
from conftest import ablate, paths

pytestmark = pytest.mark.usefixtures("single_thread")
K = 7


def pooler(num_classes: int = 2) -> PositionSensitivePool:
    """The pooler on P4 (stride 16, the paper's), k = 7."""
    return PositionSensitivePool(8, num_classes, "2", 16, K, head_convs=0, head_channels=8, sampling_ratio=2)


def test_each_bin_reads_its_own_map_and_the_bins_vote_by_their_mean():
    # channel (c*k + i)*k + j, bin (i, j) of output channel c, holds the constant 100c + 10i + j
    channels = 3
    values = torch.tensor([100.0 * c + 10 * i + j for c in range(channels) for i in range(K) for j in range(K)])
    maps = values[None, :, None, None].expand(1, -1, 12, 12).contiguous()
    pooled = pooler().pool(maps, [torch.tensor([[16.0, 32.0, 128.0, 160.0], [40.0, 8.0, 72.0, 60.0]])])
    assert pooled.shape == (2, channels, K, K)
    expected = values.view(channels, K, K)
    assert torch.allclose(pooled, expected.expand(2, -1, -1, -1), atol=1e-5)
    # voting: the mean over the 7 x 7 bins, 100c + 10 * 3 + 3 (i and j average to 3)
    assert torch.allclose(AverageVote()(pooled), torch.tensor([[33.0, 133.0, 233.0]] * 2), atol=1e-5)


def test_a_ramp_is_read_at_each_bins_centre_in_the_levels_frame():
    # every map is the x coordinate (in P4 cells); a RoI in image pixels maps to x * 1/16, and
    # ps_roi_align's sampling grid is shifted by half a cell (pixel centres, as RoIAlign aligned=True)
    width = 12
    maps = torch.arange(width, dtype=torch.float32).expand(1, 2 * K * K, width, width).contiguous()
    x1, y1, x2, y2 = 24.0, 16.0, 136.0, 128.0
    pooled = pooler(num_classes=2).pool(maps, [torch.tensor([[x1, y1, x2, y2]])])[0]
    start, bin_width = x1 / 16 - 0.5, (x2 - x1) / 16 / K
    centres = torch.tensor([start + (j + 0.5) * bin_width for j in range(K)])
    assert torch.allclose(pooled, centres.expand(2, K, K), atol=1e-5)
    # the vote of a ramp is the RoI's centre
    assert AverageVote()(pooled[None])[0].tolist() == pytest.approx([(x1 + x2) / 2 / 16 - 0.5] * 2, abs=1e-5)


def test_box_path_shapes_and_class_agnostic_deltas():
    model = tiny_model("rfcn", num_classes=2)  # 3 outputs: background and 2 classes
    heads = model.roi_heads
    assert isinstance(heads, RFCNRoIHeads) and heads.detector == "rfcn"
    pool = heads.box_roi_pool
    assert pool.stride == 16 and pool.feature_key == "2" and pool.k == K
    assert pool.cls_maps.out_channels == K * K * 3 and pool.box_maps.out_channels == K * K * 4
    images, _ = tiny_batch("rfcn")
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    assert features["2"].shape[-1] * 16 == batch.tensors.shape[-1]  # P4 is the stride-16 level
    proposals = [torch.tensor([[4.0, 4.0, 40.0, 50.0], [30.0, 20.0, 90.0, 60.0]]), torch.tensor([[8.0, 8.0, 60.0, 60.0]])]
    pooled = pool(features, proposals, batch.image_sizes)
    assert pooled.shape == (3, 3 + 4, K, K)
    logits, deltas = heads.box_predictor(heads.box_head(pooled))
    assert logits.shape == (3, 3) and deltas.shape == (3, 3 * 4)
    per_class = deltas.view(3, 3, 4)
    assert torch.equal(per_class[:, 0], per_class[:, 1]) and torch.equal(per_class[:, 0], per_class[:, 2])
    assert torch.equal(per_class[:, 0], pooled[:, 3:].mean(dim=(2, 3)))


def test_roi_losses_of_hand_set_score_maps():
    # Zero conv weights: every class map is its bias, so every RoI's logits are b and its deltas d.
    # RoIs: the two ground-truth boxes, a background box, and the ground truth torchvision appends:
    # labels 1, 2, 0, 1, 2; all five sampled (fewer than 256); the positives' targets are 0.
    torch.manual_seed(0)
    model = tiny_model("rfcn", num_classes=2)
    pool = model.roi_heads.box_roi_pool
    b, d = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.05, -0.02, 0.1, 0.0])
    with torch.no_grad():
        for conv, bias in ((pool.cls_maps, b), (pool.box_maps, d)):
            conv.weight.zero_()
            conv.bias.copy_(bias.repeat_interleave(K * K))
    _, targets = tiny_batch("rfcn")
    gt = targets[0]["boxes"]
    features = {"2": torch.randn(1, 64, 6, 6)}
    model.roi_heads.train()
    _, losses = model.roi_heads(features, [torch.cat([gt, torch.tensor([[0.0, 70.0, 20.0, 90.0]])])],
                                [(IMAGE_SIZE, IMAGE_SIZE)], targets[:1])
    lse = math.log(sum(math.exp(v) for v in b.tolist()))
    expected_cls = sum(lse - b[label].item() for label in (1, 2, 0, 1, 2)) / 5
    # smooth L1 with beta 1/9 (all |d| < 1/9: 0.5 d^2 / beta), summed over 4 positives, / 5 sampled
    expected_box = 4 * sum(0.5 * v ** 2 * 9 for v in d.tolist()) / 5
    assert losses["loss_classifier"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["loss_box_reg"].item() == pytest.approx(expected_box, rel=1e-5)


def test_eval_output_is_torchvisions_detections():
    eval_detections("rfcn")


def test_trains_and_predicts_under_cpu_bfloat16_autocast():
    # train.amp=always: torchvision's CPU ps_roi_align has no bfloat16 kernel, the pooler runs in float32
    model = tiny_model("rfcn")
    images, targets = tiny_batch("rfcn")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
        sum(losses.values()).backward()
        detections = model.eval()(images)
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.roi_heads.box_roi_pool.cls_maps.weight.grad.abs().sum() > 0
    assert len(detections) == 2 and detections[0]["boxes"].shape[-1] == 4


def test_overfits_a_fixed_batch():
    history = fixed_batch_history("rfcn", steps=12, lr=3e-3)
    total = [sum(h.values()) for h in history]
    assert total[-1] < 0.5 * total[0], total
    assert history[-1]["loss_classifier"] < 0.5 * history[0]["loss_classifier"], history


def test_shares_faster_rcnns_pyramid_rpn_and_budgets():
    # docs/heads.md: rfcn and faster_rcnn differ in the RoI box path only
    rfcn, frcnn = model_config("rfcn"), model_config("faster_rcnn")
    shared = [k for k in frcnn if k not in ("_target_", "name", "representation_size")]
    assert {k: rfcn[k] for k in shared} == {k: frcnn[k] for k in shared}
    built = tiny_model("rfcn").rpn
    assert built._pre_nms_top_n == dict(training=rfcn.rpn_pre_nms_top_n_train, testing=rfcn.rpn_pre_nms_top_n_test)


def test_score_map_level_must_be_a_pyramid_level():
    from ablate.errors import UserInputError

    cfg = model_config("rfcn")
    cfg.score_map_level = 6
    with pytest.raises(UserInputError, match=r"model.score_map_level=6.*model.levels=\[2, 3, 4, 5\]"):
        build_model(cfg, num_classes=2, image_size=IMAGE_SIZE)


@pytest.mark.parametrize("name", ["ohem", "iou_balanced", "pisa"])
def test_two_stage_samplers_work_on_rfcn(name):
    spy = really_on(name, model="rfcn")
    assert spy.slot_calls["roi_sampler"] > 0


def test_loss_tricks_take_rfcns_loss_weight_and_label_smoothing_its_ce_form():
    giou = tiny_model("rfcn", tricks=[build_trick("giou", "rfcn")])
    assert current_slot(giou, "box_loss").factor == 10.0  # Faster R-CNN's: the same RoI normalisation
    smoothed = tiny_model("rfcn", tricks=[build_trick("label_smoothing", "rfcn")])
    assert type(current_slot(smoothed, "cls_loss")).__name__ == "CrossEntropyLoss"
    assert current_slot(smoothed, "cls_loss").label_smoothing > 0


def test_smoke_training_run_ends_ok(tmp_path, shapes_cache):
    dirs = {"runs": tmp_path / "runs", "reports": tmp_path / "reports"}
    res = ablate("train", "model=rfcn", "profile=smoke", *paths(dirs), env={"ABLATE_CACHE": str(shapes_cache)})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (record,) = dirs["runs"].glob("**/result.json")
    data = json.loads(record.read_text())
    assert data["status"] == "ok" and data["config"]["model"]["name"] == "rfcn"
    assert data["config"]["model"]["head_convs"] == 1 and data["config"]["model"]["backbone"]["width"] == 8


def test_group_norm_and_dropout_reach_rfcns_convolutional_roi_path():
    gn = tiny_model("rfcn", tricks=[build_trick("group_norm", "rfcn")]).roi_heads.box_roi_pool.reduce
    assert [type(m).__name__ for m in gn] == ["Conv2d", "GroupNorm", "ReLU"] and gn[1].num_groups == 32
    plain = tiny_model("rfcn", seed=3).eval()
    dropped = tiny_model("rfcn", seed=3, tricks=[build_trick("dropout", "rfcn")])
    assert isinstance(dropped.roi_heads.box_roi_pool.reduce[-1], torch.nn.Dropout2d)
    assert dropped.roi_heads.box_roi_pool.reduce[-1].p == 0.1  # conv_p: the maps' input, no fc layer
    features = {"2": torch.rand(1, 64, 6, 6)}
    boxes = [torch.tensor([[8.0, 8.0, 60.0, 70.0]])]
    assert torch.equal(dropped.eval().roi_heads.box_roi_pool(features, boxes, None),
                       plain.roi_heads.box_roi_pool(features, boxes, None))  # off in eval
    dropped.train()
    torch.manual_seed(0)
    assert not torch.equal(dropped.roi_heads.box_roi_pool(features, boxes, None),
                           plain.roi_heads.box_roi_pool(features, boxes, None))
