"""train.amp: true (mixed precision on CUDA only, the default), always (bf16 autocast on CPU too),
false. What autocast_for gives on the CPU, that the training loop's forward follows it, and that the
key is part of the config hash while the default's hash stays what it was."""
import pytest
import torch
from hydra import compose, initialize_config_dir

import ablate.run as run_mod
from ablate.config import conf_dir, to_container
from ablate.results import base_hash, config_hash
from ablate.train import autocast_for, train_and_evaluate

CPU = torch.device("cpu")


def conv_output_dtype(context) -> torch.dtype:
    conv = torch.nn.Conv2d(3, 4, 3)
    with context():
        return conv(torch.rand(1, 3, 8, 8)).dtype


def test_always_gives_a_cpu_bf16_autocast():
    context = autocast_for(CPU, "always")
    assert conv_output_dtype(context) == torch.bfloat16
    with context():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("amp", [True, False])
def test_true_and_false_keep_the_cpu_in_float32(amp):
    context = autocast_for(CPU, amp)
    assert conv_output_dtype(context) == torch.float32
    with context():
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("amp", ["off", "bf16", "true", None, 1])
def test_other_values_are_refused(amp):
    with pytest.raises(ValueError, match="train.amp=.*choose true, false or always"):
        autocast_for(CPU, amp)


def composed(*overrides):
    with initialize_config_dir(str(conf_dir()), version_base=None):
        return compose("config", list(overrides))


def test_the_default_is_float32_on_cpu():
    assert composed().train.amp is True
    assert conv_output_dtype(autocast_for(CPU, composed().train.amp)) == torch.float32


def test_the_key_is_part_of_the_config_hash_and_the_base():
    default = to_container(composed())
    amp = to_container(composed("train.amp=always"))
    assert amp["train"]["amp"] == "always"
    assert config_hash(amp) != config_hash(default)
    # not a trick: runs in bf16 and in float32 are two baselines, never compared as a variant of one
    assert base_hash(amp) != base_hash(default)
    # the device is not hashed: only the key tells the two apart
    assert config_hash(to_container(composed("runtime.device=cpu"))) == config_hash(default)


@pytest.mark.parametrize("amp,dtype", [("always", torch.bfloat16), (True, torch.float32)])
def test_the_training_loop_runs_its_forward_in_the_key_s_precision(tmp_path, shapes_cache, monkeypatch, amp, dtype):
    seen = []
    real_build = run_mod.build_model

    def build_and_watch(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.backbone.register_forward_hook(
            lambda module, inputs, output: seen.append((module.training, next(iter(output.values())).dtype)))
        return model

    monkeypatch.setattr(run_mod, "build_model", build_and_watch)
    # 128 px, not the smoke profile's 64: there FCOS's P7 conv (stride 2) sees a 1x1 P6, where oneDNN's
    # bf16 weight gradient is nondeterministic, at times inf, on the development CPU (conf/train/default.yaml)
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", ["profile=smoke", f"paths.cache={shapes_cache}", "data.image_size=128",
                                 "runtime.device=cpu", "runtime.checkpoint=false", f"train.amp={amp}"])
    record = train_and_evaluate(cfg, tmp_path)
    assert record.status == "ok" and record.config["train"]["amp"] == amp
    training = [d for is_training, d in seen if is_training]
    evaluation = [d for is_training, d in seen if not is_training]
    assert set(training) == {dtype}
    # the val predictions and the latency forwards too (the FLOP count's forward runs without autocast)
    assert evaluation.count(dtype) >= 1 + cfg.eval.latency_images
