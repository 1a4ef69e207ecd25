"""The code fingerprint in the reuse key: what it covers, and what a changed file does to a run's
record (trained again unless asked otherwise, the earlier record kept aside)."""
import json
import sys

import pytest

from ablate import fingerprint
from ablate.fingerprint import code_changes, code_fingerprint, summarize
from ablate.results import read_record
from conftest import ablate, paths

MIXUP = {"tricks": {"mixup": {"_target_": "ablate.tricks.data.mixup.MixUp", "alpha": 1.5}}}


def test_the_fingerprint_covers_the_core_the_selected_tricks_and_torch():
    plain, mixed = code_fingerprint({"tricks": {}}), code_fingerprint(MIXUP)
    for core in ("ablate/train.py", "ablate/models/losses/__init__.py", "ablate/models/losses/slots.py", "ablate/data/dataset.py", "ablate/tricks/base.py"):
        assert core in plain["files"]
    assert "ablate/tricks/data/mixup.py" in mixed["files"] and "ablate/tricks/data/mixup.py" not in plain["files"]
    assert "ablate/tricks/data/cutmix.py" not in mixed["files"]  # another trick's edit retrains nothing here
    assert "ablate/report/markdown.py" not in plain["files"]  # decides no number of a run
    assert set(plain["versions"]) == {"torch", "torchvision"}
    assert plain["fingerprint"] != mixed["fingerprint"]
    assert code_fingerprint(MIXUP) == mixed  # stable


def test_editing_a_tricks_source_changes_the_fingerprint_and_says_which_file(tmp_path, monkeypatch):
    (tmp_path / "my_tricks.py").write_text("class Gray:\n    p = 0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = {"tricks": {"gray": {"_target_": "my_tricks.Gray"}}}
    before = code_fingerprint(cfg)
    (tmp_path / "my_tricks.py").write_text("class Gray:\n    p = 0.2\n")
    after = code_fingerprint(cfg)
    assert before["fingerprint"] != after["fingerprint"]
    assert code_changes(before, after) == [f"{(tmp_path / 'my_tricks.py').as_posix()} changed"]
    assert code_changes({}, after) == ["made before code fingerprints"]


def test_a_new_torch_changes_the_fingerprint(monkeypatch):
    before = code_fingerprint({"tricks": {}})
    real = fingerprint.metadata.version
    monkeypatch.setattr(fingerprint.metadata, "version", lambda d: "9.9" if d == "torch" else real(d))
    after = code_fingerprint({"tricks": {}})
    assert before["fingerprint"] != after["fingerprint"]
    assert code_changes(before, after) == ["torch changed"]
    assert summarize(["a", "b", "c", "d", "e", "f"]) == "a, b, c, d and 2 more"


@pytest.fixture
def one_run(tmp_path, shapes_cache):
    """`ablate train` of the smoke profile into one fixed folder."""
    d = {"runs": tmp_path / "runs", "reports": tmp_path / "reports", "env": {"ABLATE_CACHE": str(shapes_cache)}}
    run_dir = tmp_path / "runs" / "one"

    def train(*extra):
        res = ablate("train", "profile=smoke", f"hydra.run.dir={run_dir}", *paths(d), *extra, env=d["env"])
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout + res.stderr

    return run_dir, train


def make_it_old(run_dir):
    """The record as an earlier version of the code would have left it."""
    path = run_dir / "result.json"
    data = json.loads(path.read_text())
    data["code"] = {**data["code"], "fingerprint": "0ld0ld0ld0ld",
                    "files": {**data["code"]["files"], "ablate/tricks/base.py": "0ld"}}
    path.write_text(json.dumps(data))
    return path.read_bytes()


def test_a_record_of_other_code_is_trained_again_any_code_reuses_it_and_force_always_trains(one_run):
    run_dir, train = one_run
    train()
    first = (run_dir / "result.json").read_bytes()
    assert "not training again" in train() and (run_dir / "result.json").read_bytes() == first

    old = make_it_old(run_dir)
    log = train()
    assert "made by other code (ablate/tricks/base.py changed)" in log and "training again" in log
    assert (run_dir / "result.0ld0ld0ld0ld.json").read_bytes() == old  # kept aside, not lost
    fresh = read_record(run_dir / "result.json")
    assert fresh.code["fingerprint"] != "0ld0ld0ld0ld" and fresh.status == "ok"

    old = make_it_old(run_dir)
    log = train("runtime.reuse=any_code")
    assert "reusing a record made by other code" in log
    assert (run_dir / "result.json").read_bytes() == old

    log = train("--force")
    assert "complete record found" not in log and "training baseline (seed 0)" in log
    (aside,) = run_dir.glob("result.forced-*.json")
    assert aside.read_bytes() == old and list(run_dir.glob("last.forced-*.pt"))
    assert read_record(run_dir / "result.json").code == fresh.code


def test_a_trick_file_without_its_package_line_stops_before_any_run_folder(tmp_path, shapes_cache):
    import shutil

    from ablate.config import conf_dir

    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    (conf / "tricks" / "gray.yaml").write_text("_target_: ablate.tricks.data.mixup.MixUp\nalpha: 1.5\n")
    env = {"ABLATE_CACHE": str(shapes_cache), "ABLATE_CONF": str(conf)}
    d = {"runs": tmp_path / "runs", "reports": tmp_path / "reports"}
    res = ablate("train", "profile=smoke", "tricks=[mixup,gray]", *paths(d), env=env, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"ablate: error: {conf / 'tricks' / 'gray.yaml'}: the trick file must start with the "
                                  "line '# @package tricks.gray': it keeps the options of several selected tricks "
                                  "apart (cfg.tricks.gray.<arg>); add it as the first line")
    assert "Traceback" not in res.stderr and not d["runs"].exists() and not (tmp_path / "outputs").exists()
    sweep = tmp_path / "mine.yaml"
    sweep.write_text("tricks: [gray]\nseeds: 1\n")
    res = ablate("sweep", str(sweep), "profile=smoke", *paths(d), env=env, cwd=tmp_path)
    assert res.returncode == 2 and "# @package tricks.gray" in res.stderr and not d["runs"].exists()
    (conf / "tricks" / "gray.yaml").write_text("# @package tricks.gray\n_target_: [oops\n")
    res = ablate("train", "tricks=[gray]", *paths(d), env=env, cwd=tmp_path)
    assert res.returncode == 2 and "gray.yaml: not valid YAML" in res.stderr and not d["runs"].exists()


def test_an_argument_out_of_range_is_named_as_the_user_types_it(tmp_path, shapes_cache):
    d = {"runs": tmp_path / "runs", "reports": tmp_path / "reports"}
    res = ablate("train", "profile=smoke", "tricks=[mixup]", "tricks.mixup.prob=1.5", *paths(d),
                 env={"ABLATE_CACHE": str(shapes_cache)})
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert "tricks.mixup.prob=1.5: must be a number in [0, 1] (conf/tricks/mixup.yaml" in out
    assert "Traceback" not in out and "raise " not in out


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


def test_timms_version_is_fingerprinted_only_for_a_timm_backbone():
    def versions(backbone):
        return set(code_fingerprint({"tricks": {}, "model": {"backbone": backbone}})["versions"])

    assert versions({"library": "timm", "name": "darknet53"}) == {"torch", "torchvision", "timm"}
    assert versions({"name": "resnet18"}) == {"torch", "torchvision"}
