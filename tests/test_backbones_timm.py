"""The backbones timm builds (model.backbone.library=timm): taps where timm's feature_info says, at the
documented strides and channels; without timm, an error that names the extra to install; pretrained
weights from a local file, and offline an error that names the file to put where. Random weights,
128-px inputs, one CPU thread."""
import math
import sys

import pytest
import torch
from torch import nn

from ablate.models.backbones import build_backbone, build_body, pyramid_taps
# the shared checks of the torchvision backbones' tests
from test_backbones_more import backbone_config, check_documented_taps

# {level L (stride 2^L): channels} of every tap, as docs/backbones.md lists them.
TAPS = {
    "darknet53": {0: 32, 1: 64, 2: 128, 3: 256, 4: 512, 5: 1024},
    "cspdarknet53": {0: 32, 1: 64, 2: 128, 3: 256, 4: 512, 5: 1024},
    "cspresnext50": {1: 64, 2: 256, 3: 512, 4: 1024, 5: 2048},
}


def test_without_timm_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(ImportError, match=r"model.backbone=darknet53 is built by timm.*pip install -e '\.\[timm\]'"):
        build_body(backbone_config("darknet53"))


timm = pytest.importorskip("timm")


@pytest.mark.parametrize("name", TAPS)
def test_taps_are_timms_feature_taps_at_the_documented_strides_and_channels(name):
    body = check_documented_taps(name, TAPS[name])
    # each stage ends at timm's last feature tap of its stride (feature_info of the same model)
    with torch.device("meta"):
        info = timm.create_model(name, features_only=True).feature_info
    last_tap = {int(math.log2(r)): m.replace(".", "_") for r, m in zip(info.reduction(), info.module_name())}
    taps = pyramid_taps(body)
    assert {lv: list(getattr(body, child)._modules)[-1] for lv, (child, _) in taps.items()} == last_tap
    assert dict(zip(info.reduction(), info.channels())) == {2 ** lv: c for lv, c in TAPS[name].items()}


def test_an_unknown_timm_name_is_refused():
    cfg = backbone_config("cspresnext50")
    cfg.name = "darknet54"
    with pytest.raises(ValueError, match=r"model.backbone.name='darknet54' \(model.backbone.library=timm\) is no timm model"):
        build_body(cfg)


def test_pretrained_weights_load_from_the_local_file_weights_file_names(tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model("cspresnext50").state_dict()
    torch.save(reference, tmp_path / "cspresnext50.pth")
    cfg = backbone_config("cspresnext50", pretrained=True, weights_file=str(tmp_path / "cspresnext50.pth"))
    body = build_backbone(cfg, [3, 4, 5], 0, 16, False).body
    assert torch.equal(body.c4.stages_2.blocks[0].conv1.conv.weight, reference["stages.2.blocks.0.conv1.conv.weight"])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())  # frozen, as torchvision's pretrained
    # trainable_layers=3: c3-c5 (strides 8-32) train, the stem and c2 do not
    trainable = [name for name, stage in body.named_children() if any(p.requires_grad for p in stage.parameters())]
    assert trainable == ["c3", "c4", "c5"]


def test_pretrained_weights_offline_error_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    import timm.models._builder
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match=(
            r"pretrained=true needs timm's cspresnext50 weights, and loading them failed.*offline, download "
            r"https://huggingface.co/timm/cspresnext50.ra_in1k/resolve/main/model.safetensors, copy it to "
            rf"{tmp_path}/hub/checkpoints/cspresnext50.ra_in1k.safetensors.*model.backbone.weights_file=.*pretrained=false")):
        build_body(backbone_config("cspresnext50", pretrained=True))
    with pytest.raises(RuntimeError, match=r"model.backbone.weights_file=/nowhere.pth: timm could not load it"):
        build_body(backbone_config("cspresnext50", pretrained=True, weights_file="/nowhere.pth"))


def test_a_composed_run_config_builds_fcos_on_timm_and_fingerprints_timms_version():
    """As `ablate train model/backbone=cspresnext50` composes it (Hydra's struct config)."""
    from hydra import compose, initialize_config_dir

    from ablate.config import conf_dir, to_container
    from ablate.fingerprint import code_fingerprint
    from ablate.models import build_model

    with initialize_config_dir(str(conf_dir()), version_base=None):
        cfg = compose("config", ["model/backbone=cspresnext50"])
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=2, image_size=128).eval()
    with torch.no_grad():
        assert set(model([torch.rand(3, 128, 128)])[0]) >= {"boxes", "scores", "labels"}
    assert code_fingerprint(to_container(cfg))["versions"]["timm"] == timm.__version__


def activations(module: nn.Module) -> int:
    return sum(isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.Mish)) or type(m).__name__.startswith("Mish")
               for m in module.modules())


def test_norm_tricks_keep_the_activation_timms_batchnormact_applies_itself():
    """timm's BatchNormAct2d normalises and activates in one layer: GN, FRN and SyncBN replace the norm
    and keep the activation after it (a bare replacement left cspdarknet53 without any of its 67)."""
    from timm.layers import BatchNormAct2d

    from ablate.tricks.network.frn import FilterResponseNorm2d, replace_with_frn
    from ablate.tricks.network.group_norm import replace_batchnorms
    from ablate.tricks.network.sync_bn import to_sync_batchnorm

    x = torch.randn(2, 4, 5, 5)
    leaky = nn.Sequential(BatchNormAct2d(4, act_layer=nn.LeakyReLU))
    assert replace_batchnorms(leaky, 2) == 1
    assert torch.allclose(leaky(x), nn.functional.leaky_relu(nn.functional.group_norm(x, 2, eps=1e-5)))
    leaky, relu = nn.Sequential(BatchNormAct2d(4, act_layer=nn.LeakyReLU)), nn.Sequential(BatchNormAct2d(4))
    assert replace_with_frn(leaky, 1e-6) == replace_with_frn(relu, 1e-6) == 1
    frn = FilterResponseNorm2d(4, 1e-6, tlu=False)
    assert torch.allclose(leaky(x), nn.functional.leaky_relu(frn(x)))  # FRN, then its LeakyReLU
    assert relu[0][0].tau is not None and activations(relu) == 0  # BN+ReLU became FRN+TLU, as the paper's
    synced, n = to_sync_batchnorm(nn.Sequential(BatchNormAct2d(4, act_layer=nn.LeakyReLU)))
    assert n == 1 and isinstance(synced[0], nn.SyncBatchNorm) and isinstance(synced[0].act, nn.LeakyReLU)

    body = timm.create_model("cspdarknet53", features_only=True)
    before = activations(body)
    assert before == 67 and replace_batchnorms(body, 32) == 67 and activations(body) == before


def test_cbn_replaces_the_bn_of_timms_conv_norm_act_blocks_and_keeps_their_activation():
    from ablate.models import build_model
    from ablate.testing import build_trick, model_config
    from ablate.tricks.network.cbn import CrossIterationBatchNorm2d

    torch.manual_seed(0)
    model = build_model(model_config("fcos", backbone="cspdarknet53"), 2, 96)
    body = model.backbone.body
    before = activations(body)
    assert before == 67
    build_trick("cbn").on_model(model)
    assert sum(isinstance(m, CrossIterationBatchNorm2d) for m in body.modules()) == 67
    assert activations(body) == before


def test_a_pretrained_timm_bodys_frozen_norms_are_seen_by_the_norm_tricks(tmp_path):
    from ablate.tricks import TrickConflictError
    from ablate.tricks.network.frn import refuse_frozen_bn

    torch.save(timm.create_model("cspresnext50").state_dict(), tmp_path / "w.pth")
    cfg = backbone_config("cspresnext50", pretrained=True, weights_file=str(tmp_path / "w.pth"))
    body = build_backbone(cfg, [3, 4, 5], 0, 16, False).body
    assert any(type(m).__name__ == "FrozenBatchNormAct2d" for m in body.modules())
    with pytest.raises(TrickConflictError, match="does not fit a pretrained backbone"):
        refuse_frozen_bn(body, "frn", "FRN")
