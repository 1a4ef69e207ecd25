import json
import os

import pytest

from ablate.results import (RECORD_NAME, RecordError, RunRecord, atomic_write_text, base_hash, config_hash,
                            find_records, read_record, write_record)


def make_record(**kw):
    config = {"seed": 0, "data": {"name": "shapes"}, "model": {"name": "fcos"}, "tricks": {}, "train": {}, "eval": {}}
    base = dict(status="ok", variant="baseline", sweep="quick", tricks=[], seed=0, config=config,
                config_hash=config_hash(config), base_hash=base_hash(config),
                metrics={"mAP": 0.5, "AP50": 0.8}, per_class_ap={"circle": 0.6}, curve=[{"epoch": 1, "loss": 1.0}],
                timings={"wall_s": 10.0}, inference_ms_per_image=3.5, params=1000, flops=2000)
    base.update(kw)
    return RunRecord(**base)


def test_record_round_trip(tmp_path):
    rec = make_record()
    path = write_record(rec, tmp_path)
    assert path.name == RECORD_NAME
    back = read_record(path)
    assert back == rec
    assert json.loads(path.read_text())["schema_version"] == 1


def test_truncated_record_is_an_error_naming_the_file(tmp_path):
    path = write_record(make_record(), tmp_path)
    path.write_text(path.read_text()[:50])
    with pytest.raises(RecordError, match=f"{path}.*not valid JSON"):
        read_record(path)


def test_record_of_another_schema_or_missing_keys(tmp_path):
    data = make_record().to_dict()
    data["schema_version"] = 99
    (tmp_path / RECORD_NAME).write_text(json.dumps(data))
    with pytest.raises(RecordError, match="schema_version 99"):
        read_record(tmp_path / RECORD_NAME)
    data = make_record().to_dict()
    del data["metrics"], data["status"]
    (tmp_path / RECORD_NAME).write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"missing keys \['status'\]"):
        read_record(tmp_path / RECORD_NAME)


def test_bad_status_is_refused():
    with pytest.raises(RecordError, match="status 'great'"):
        make_record(status="great")


def test_atomic_write_leaves_old_content_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write_text(path, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary file left behind


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_a_new_file_gets_under_the_umask(tmp_path, umask, mode):
    # mkstemp makes 0600 files: a team sharing a sweep's folder could not read its records or checkpoints.
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "result.json", "{}")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives under this umask
    finally:
        os.umask(old)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == mode == plain.stat().st_mode & 0o777


def test_hashes_ignore_runtime_and_paths_and_base_hash_ignores_tricks_and_seed():
    a = {"seed": 0, "data": {"x": 1}, "model": {}, "tricks": {}, "train": {}, "eval": {}, "runtime": {"device": "cpu"}}
    b = dict(a, runtime={"device": "cuda"}, paths={"runs": "elsewhere"})
    assert config_hash(a) == config_hash(b)
    c = dict(a, tricks={"mixup": {"alpha": 1.5}}, seed=3)
    assert config_hash(a) != config_hash(c)
    assert base_hash(a) == base_hash(c)
    assert base_hash(a) != base_hash(dict(a, data={"x": 2}))


def test_find_records_reports_corrupt_ones(tmp_path):
    write_record(make_record(), tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / RECORD_NAME).write_text("{")
    found, errors = find_records(tmp_path)
    assert [p.parent.name for p, _ in found] == ["a"]
    assert len(errors) == 1 and "b/result.json" in str(errors[0])
