"""A trick written against the paths of before the redesign (issue 26) still builds and trains:
ablate.tricks.base's contract, ablate.models.losses' slots, trick modules by their flat names
(ablate.tricks.mixup, now ablate.tricks.data.mixup) as imports and as YAML _target_s."""
import shutil
import textwrap

import pytest
from omegaconf import OmegaConf

from ablate.config import conf_dir
from ablate.fingerprint import code_fingerprint
from ablate.testing import really_on
from ablate.tricks import build_tricks

USER_TRICK = textwrap.dedent('''
    from ablate.models.losses import ScaledLoss, current_slot, set_slot
    from ablate.tricks.base import BatchContext, Trick, check_number
    from ablate.tricks.mixup import MixUp


    class HalfBoxLoss(Trick):
        """The detector's own box loss, halved: the box_loss slot through the old paths."""
        claims = ("box_loss",)

        def __init__(self, factor: float = 0.5):
            self.factor = check_number("factor", factor, 0, low_open=True)

        def on_model(self, model):
            set_slot(model, "box_loss", ScaledLoss(current_slot(model, "box_loss"), self.factor))
            return model


    class AlwaysMixUp(MixUp):
        """MixUp subclassed through its old module path."""

        def on_batch(self, images, targets, ctx: BatchContext):
            return super().on_batch(images, targets, ctx)
''')


@pytest.fixture
def user_conf(tmp_path, monkeypatch):
    """A copy of conf/ with three trick files: a user's module outside the package, and a built-in
    class named by its old _target_."""
    (tmp_path / "old_style_tricks.py").write_text(USER_TRICK)
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    monkeypatch.setenv("ABLATE_CONF", str(conf))
    mixup = (conf / "tricks" / "mixup.yaml").read_text().split("\n", 1)[1]  # without its package line
    files = {"half_box": "_target_: old_style_tricks.HalfBoxLoss\nfactor: 0.5\n",
             "old_mixup": mixup.replace("ablate.tricks.data.mixup.MixUp", "ablate.tricks.mixup.MixUp"),
             "user_mixup": mixup.replace("ablate.tricks.data.mixup.MixUp", "old_style_tricks.AlwaysMixUp")}
    for name, text in files.items():
        (conf / "tricks" / f"{name}.yaml").write_text(f"# @package tricks.{name}\n{text}")
    return conf


def test_a_trick_written_against_the_old_paths_builds_and_changes_training(user_conf):
    spy = really_on("half_box", model="retinanet")
    assert spy.slot_calls == {"box_loss": 3}
    for name in ("old_mixup", "user_mixup"):
        assert really_on(name, model="fcos", prob=1.0).calls["on_batch"] >= 1


def test_an_old_module_path_is_the_module_at_its_new_place():
    import ablate.tricks.data.mixup as new
    import ablate.tricks.mixup as old
    from ablate.tricks.frn import refuse_frozen_bn
    from ablate.tricks.network.frn import refuse_frozen_bn as moved

    assert old is new and refuse_frozen_bn is moved


def test_an_old_target_builds_the_same_trick_with_the_same_fingerprint():
    model = OmegaConf.create({"family": "one_stage", "name": "fcos"})
    new = OmegaConf.create({"mixup": OmegaConf.load(conf_dir() / "tricks" / "mixup.yaml")})
    old = OmegaConf.merge(new, {"mixup": {"_target_": "ablate.tricks.mixup.MixUp"}})
    assert type(build_tricks(old, model)[0]) is type(build_tricks(new, model)[0])
    fingerprints = [code_fingerprint({"tricks": OmegaConf.to_container(c)}) for c in (old, new)]
    assert fingerprints[0]["fingerprint"] == fingerprints[1]["fingerprint"]
    assert "ablate/tricks/data/mixup.py" in fingerprints[0]["files"]


def test_records_and_checkpoints_made_before_the_move_keep_their_config_hash():
    """Where a trick's class lives is no part of the hash: the committed records, whose configs name
    the tricks by their flat paths (or, made after the move, by their folders' paths), hash the same
    with the other paths (so they are reused, their
    checkpoints resume, and a report puts old and new runs of a variant in one row)."""
    import copy
    from pathlib import Path

    from ablate.results import config_hash, read_record, tricks_hash
    from ablate.tricks import MOVED

    records = [read_record(p) for p in sorted(Path(__file__).resolve().parents[1].glob("reports/*/runs/**/result.json"))]
    with_tricks = [r for r in records if r.config.get("tricks")]
    assert with_tricks
    for record in with_tricks:
        moved = copy.deepcopy(record.config)
        for node in moved["tricks"].values():
            parts = node["_target_"].split(".")
            if parts[2] in MOVED:  # a record of before the move: its flat path, moved
                parts[2:3] = [MOVED[parts[2]], parts[2]]
            else:  # a record made after the move: its folder's path, made flat
                del parts[2]
            node["_target_"] = ".".join(parts)
        assert moved["tricks"] != record.config["tricks"]
        assert config_hash(moved) == config_hash(record.config) == record.config_hash
        assert tricks_hash(moved) == tricks_hash(record.config)
