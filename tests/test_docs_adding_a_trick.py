"""docs/adding-a-trick.md's five worked examples, taken from the page as a reader copies them:
each file is valid, each trick builds from its YAML, refuses a bad argument naming
tricks.<name>.<arg>, and really changes training on the detectors it claims to fit."""
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from ablate.config import TrickFileError, check_trick_file, conf_dir
from ablate.testing import batch_context, build_trick, really_on, tiny_model
from ablate.tricks import TrickConfigError

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-trick.md"
FILE_BLOCK = re.compile(r"File `((?:ablate|conf)/tricks/(?:(\w+)/)?(\w+)\.(py|yaml))`:\n\n```\w+\n(.*?)```", re.S)


def doc_files() -> dict[str, dict[str, str]]:
    """{trick name: {"py": source, "yaml": text, "kind": its folder under ablate/tricks/}} of the page's examples."""
    found: dict[str, dict[str, str]] = {}
    for _path, folder, name, ext, text in FILE_BLOCK.findall(DOC.read_text()):
        found.setdefault(name, {})[ext] = text
        if ext == "py":
            found[name]["kind"] = folder
    return found


EXAMPLES = doc_files()
# what each example is, and a bad value of one of its arguments
KINDS = {"random_grayscale": ("on_batch", "p", 1.5), "box_loss_scale": ("on_model", "factor", 0),
         "frozen_bn": ("on_model", "where", "neck"), "se_c5": ("on_model", "reduction", 0),
         "poly_lr": ("on_lr_factor", "power", -1)}
# the folder of each (ablate/tricks/<kind>/), the kind of what it changes
FOLDERS = {"random_grayscale": "data", "box_loss_scale": "loss", "frozen_bn": "network", "se_c5": "network",
           "poly_lr": "schedule"}


@pytest.fixture
def doc_tricks(tmp_path, monkeypatch):
    """The page's YAML files in a copy of conf/, its modules importable as ablate.tricks.<kind>.<name>."""
    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    monkeypatch.setenv("ABLATE_CONF", str(conf))
    for name, files in EXAMPLES.items():
        (conf / "tricks" / f"{name}.yaml").write_text(files["yaml"])
        module = types.ModuleType(f"ablate.tricks.{files['kind']}.{name}")
        module.__package__ = f"ablate.tricks.{files['kind']}"
        exec(compile(files["py"], f"docs/adding-a-trick.md:{name}.py", "exec"), module.__dict__)
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return conf


def test_the_page_has_one_example_of_each_kind():
    assert set(EXAMPLES) == set(KINDS)
    assert all(set(files) == {"py", "yaml", "kind"} for files in EXAMPLES.values())
    assert {name: files["kind"] for name, files in EXAMPLES.items()} == FOLDERS
    for name, files in EXAMPLES.items():
        assert f"_target_: ablate.tricks.{files['kind']}.{name}." in files["yaml"]


@pytest.mark.parametrize("name", sorted(KINDS))
def test_example_builds_refuses_a_bad_argument_and_changes_training(doc_tricks, name):
    hook, arg, bad = KINDS[name]
    check_trick_file(name, doc_tricks / "tricks")
    trick = build_trick(name)
    assert type(trick).__dict__.get(hook) is not None, f"{name} should override {hook}"
    with pytest.raises(TrickConfigError, match=rf"tricks\.{name}\.{arg}={bad!r}: "):
        build_trick(name, **{arg: bad})
    overrides = {"p": 1.0} if name == "random_grayscale" else {}
    spy = really_on(name, model="fcos", **overrides)
    assert spy.calls[hook] >= 1


def test_the_loss_example_works_on_every_detector(doc_tricks):
    for model in ("retinanet", "faster_rcnn"):
        spy = really_on("box_loss_scale", model=model)
        assert spy.slot_calls == {"box_loss": 3}


def test_the_examples_definitions(doc_tricks):
    # random grayscale: pure red becomes its luma, 0.299, in every channel
    img = torch.zeros(3, 2, 2)
    img[0] = 1.0
    (out,), _ = build_trick("random_grayscale", p=1.0).on_batch([img], [{}], batch_context())
    assert torch.allclose(out, torch.full((3, 2, 2), 0.299))
    # poly: (1 - t/T)^0.9
    factor = build_trick("poly_lr").on_lr_factor(lambda step: 1.0, 10)
    assert [factor(t) for t in (0, 5, 10)] == pytest.approx([1.0, 0.5 ** 0.9, 0.0])
    # frozen BN: no BatchNorm2d left in the backbone, and none of its parameters trains
    model = tiny_model("fcos", tricks=[build_trick("frozen_bn")])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    # SE on C5: the last stage the FPN reads ends with the block; the FPN's features keep their shapes
    from ablate.models.backbones import tap_features

    for detector in ("fcos", "faster_rcnn", "yolov3"):
        plain = tiny_model(detector)
        se = tiny_model(detector, tricks=[build_trick("se_c5", model=detector)])
        last = list(se.backbone.body.return_layers)[-1]
        assert type(getattr(se.backbone.body, last)[-1]).__name__ == "SqueezeExcite"
        assert ({k: v.shape for k, v in tap_features(se.backbone.body).items()}
                == {k: v.shape for k, v in tap_features(plain.backbone.body).items()})


def test_a_file_without_its_package_line_is_named_with_the_fix(doc_tricks):
    path = doc_tricks / "tricks" / "random_grayscale.yaml"
    path.write_text("\n".join(EXAMPLES["random_grayscale"]["yaml"].splitlines()[1:]))
    with pytest.raises(TrickFileError, match=r"random_grayscale.yaml: the trick file must start with the line "
                                             r"'# @package tricks.random_grayscale'"):
        check_trick_file("random_grayscale", doc_tricks / "tricks")
