"""Each baseline builds from its config, trains one step on the CPU and predicts in the image frame."""
import pytest
import torch
from torchvision import models as tvm

from ablate.testing import model_config
from ablate.models import build_model, count_parameters, label_offset

MODELS = ["fcos", "retinanet", "faster_rcnn", "yolov3"]


def batch(size=96, offset=0):
    """Two images, one with two boxes of dataset labels 1 and 2 (shifted by the model's offset), one empty."""
    torch.manual_seed(0)
    images = [torch.rand(3, size, size), torch.rand(3, size - 16, size)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [40.0, 40.0, 80.0, 70.0]]),
                "labels": torch.tensor([1, 2]) - offset},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return images, targets


@pytest.mark.parametrize("name", MODELS)
def test_baseline_trains_one_step_and_predicts(name):
    torch.manual_seed(0)
    cfg = model_config(name, width=8)
    model = build_model(cfg, num_classes=2, image_size=96)
    offset = label_offset(cfg.family)
    images, targets = batch(offset=offset)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss) and loss > 0
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss.backward()
    opt.step()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed > len(before) // 2
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, img in zip(out, images):
        assert set(o) >= {"boxes", "scores", "labels"}
        if len(o["boxes"]):
            # no resize inside the model: boxes stay in the input image's frame
            assert o["boxes"][:, 2].max() <= img.shape[2] + 1e-3 and o["boxes"][:, 3].max() <= img.shape[1] + 1e-3
            assert o["labels"].min() >= 1 - offset and o["labels"].max() <= 2 - offset


def test_one_stage_heads_have_no_background_channel_two_stage_heads_have_one():
    fcos = build_model(model_config("fcos", width=8), num_classes=2, image_size=96)
    assert fcos.head.classification_head.num_classes == 2
    frcnn = build_model(model_config("faster_rcnn", width=8), num_classes=2, image_size=96)
    assert frcnn.roi_heads.box_predictor.cls_score.out_features == 3


def test_model_input_is_not_resized():
    model = build_model(model_config("fcos", width=8), num_classes=3, image_size=96)
    images, targets = batch()
    image_list, tgts = model.transform(images, [dict(t) for t in targets])
    assert image_list.image_sizes == [(96, 96), (80, 96)]
    assert torch.equal(tgts[0]["boxes"], targets[0]["boxes"])


def test_head_convs_and_fpn_channels_follow_the_config():
    cfg = model_config("fcos", width=8)
    cfg.head_convs, cfg.fpn_channels = 2, 32
    model = build_model(cfg, num_classes=3, image_size=96)
    assert len(model.head.classification_head.conv) == 2 * 3  # conv, GroupNorm, ReLU per block
    assert model.backbone.out_channels == 32
    small = count_parameters(model)
    cfg.head_convs = 4
    assert count_parameters(build_model(cfg, num_classes=3, image_size=96)) > small


def test_unknown_backbone_and_missing_level_are_clear():
    with pytest.raises(ValueError, match="model.backbone.name='vgg'"):
        cfg = model_config("fcos")
        cfg.backbone.name = "vgg"
        build_model(cfg, 3, 96)
    cfg = model_config("fcos", width=8)
    cfg.levels = [4, 5, 6]
    with pytest.raises(ValueError, match=r"model.levels=\[4, 5, 6\].*no level \[6\]"):
        build_model(cfg, 3, 96)


def test_pretrained_weights_load_from_torch_hub_cache(tmp_path, monkeypatch):
    """Offline here: the 'download' is a file put where torchvision looks first."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = tvm.ResNet18_Weights.IMAGENET1K_V1
    torch.manual_seed(1)
    reference = tvm.resnet18().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference, tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1])
    model = build_model(model_config("fcos", "resnet18", pretrained=True), num_classes=3, image_size=96)
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, reference["layer3.0.conv1.weight"])
    # torchvision's fine-tuning convention: frozen BN, early stages frozen (trainable_layers=3)
    assert type(body.layer1[0].bn1).__name__ == "FrozenBatchNorm2d"
    assert not body.layer1[0].conv1.weight.requires_grad
    assert body.layer4[0].conv1.weight.requires_grad


def test_pretrained_weights_offline_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, dst, *args, **kwargs):
        from urllib.error import URLError
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(RuntimeError, match=r"pretrained=true.*failed.*offline.*checkpoints/resnet18-.*pretrained=false"):
        build_model(model_config("fcos", "resnet18", pretrained=True), num_classes=3, image_size=96)


# ---------------------------------------------------------------- FCOS box regression

def fcos_with(box_regression):
    cfg = model_config("fcos", width=8)
    cfg.box_regression = box_regression
    torch.manual_seed(0)
    return build_model(cfg, num_classes=2, image_size=96)


def test_fcos_regression_is_the_papers_exp_of_a_scaled_output_per_level():
    """distance = exp(s_l x) in strides, s_l one trainable scalar per level (1 at start): with the
    last conv's weights at zero and its bias b, every location of level l predicts exp(s_l b)."""
    head = fcos_with("exp").head.regression_head
    assert head.scales.tolist() == [1.0] * 5 and head.scales.requires_grad
    torch.nn.init.zeros_(head.bbox_reg.weight)
    with torch.no_grad():
        head.bbox_reg.bias.copy_(torch.tensor([0.0, 0.5, -1.0, 2.0]))
        head.scales.copy_(torch.tensor([1.0, 2.0, 1.0, 1.0, 0.5]))
    features = [torch.rand(1, 8 * 8, s, s) for s in (12, 6, 3, 2, 1)]  # fpn_channels 64 at width 8
    regression, _ = head(features)
    first, second, last = regression[0, 0], regression[0, 144], regression[0, -1]
    b = torch.tensor([0.0, 0.5, -1.0, 2.0])
    assert torch.allclose(first, b.exp()) and torch.allclose(second, (2 * b).exp())
    assert torch.allclose(last, (0.5 * b).exp())


def test_a_negative_regression_output_dies_under_relu_and_recovers_under_exp():
    """The collapse: once the box branch's output is negative at every location, torchvision's ReLU
    gives zero-size boxes and no gradient, so no step can bring it back. exp keeps a gradient."""
    images, targets = batch(offset=1)
    grads = {}
    for kind in ("relu", "exp"):
        model = fcos_with(kind)
        reg = model.head.regression_head.bbox_reg
        with torch.no_grad():
            reg.bias.fill_(-5.0)  # every output negative: what one AdamW step did without warmup
        model.train()
        loss = model(images, targets)["bbox_regression"]
        loss.backward()
        grads[kind] = reg.bias.grad.abs().sum().item()
        model.eval()
        with torch.no_grad():
            boxes = model(images)[0]["boxes"]
        sizes = (boxes[:, 2:] - boxes[:, :2]).min(dim=1).values
        if kind == "relu":
            assert len(boxes) and (sizes == 0).all()  # zero-size boxes: the collapsed detector
        else:
            assert (sizes > 0).all()
    assert grads["relu"] == 0.0 and grads["exp"] > 0.0


def test_fcos_box_regression_relu_is_torchvisions_head_and_other_values_are_refused():
    from torchvision.models.detection.fcos import FCOSRegressionHead
    assert type(fcos_with("relu").head.regression_head) is FCOSRegressionHead
    with pytest.raises(ValueError, match="model.box_regression='softplus'"):
        fcos_with("softplus")
