import pytest

from ablate.config import sweeps_dir
from ablate.sweep import SweepFileError, load_sweep, resolve_sweep_path
from ablate.sweep.design import DESIGNS


def sweep_file(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_sweep(path)


def test_one_at_a_time(tmp_path):
    s = sweep_file(tmp_path, "design: one_at_a_time\ntricks: [a, b]\nseeds: 2\n")
    assert s.variants() == [(), ("a",), ("b",)]
    jobs = s.jobs()
    # seed by seed: a sweep cut short leaves whole tables of fewer seeds
    assert [(j.variant, j.seed) for j in jobs] == [("baseline", 0), ("a", 0), ("b", 0), ("baseline", 1), ("a", 1),
                                                   ("b", 1)]
    assert jobs[0].overrides() == ["tricks=[]", "seed=0", "variant=baseline"]
    assert jobs[1].overrides() == ["tricks=[a]", "seed=0", "variant=a"]


def test_cumulative_leave_one_out_factorial(tmp_path):
    assert sweep_file(tmp_path, "design: cumulative\ntricks: [a, b, c]\n").variants() == [
        (), ("a",), ("a", "b"), ("a", "b", "c")]
    assert sweep_file(tmp_path, "design: leave_one_out\ntricks: [a, b, c]\n").variants() == [
        (), ("a", "b", "c"), ("b", "c"), ("a", "c"), ("a", "b")]
    fact = sweep_file(tmp_path, "design: factorial\ntricks: [a, b, c]\nseeds: [5]\n")
    assert len(fact.variants()) == 8 and fact.seeds == (5,)


def test_bad_sweep_files_name_the_file_and_key(tmp_path):
    with pytest.raises(SweepFileError, match="s.yaml: design 'random'"):
        sweep_file(tmp_path, "design: random\ntricks: [a]\n")
    with pytest.raises(SweepFileError, match=r"s.yaml: unknown keys \['trick'\]"):
        sweep_file(tmp_path, "trick: [a]\n")
    with pytest.raises(SweepFileError, match="s.yaml: seeds must be"):
        sweep_file(tmp_path, "tricks: [a]\nseeds: 0\n")
    with pytest.raises(SweepFileError, match="no sweep file .*nope.yaml; sweeps in .*quick"):
        resolve_sweep_path("nope")


def test_shipped_sweeps_load_and_there_is_one_per_design():
    from ablate.config import conf_dir

    shipped = [load_sweep(path) for path in sweeps_dir().glob("*.yaml")]
    for sweep in shipped:
        assert sweep.jobs()
        for trick in sweep.tricks:
            assert (conf_dir() / "tricks" / f"{trick}.yaml").is_file(), (sweep.path, trick)
    assert {s.design for s in shipped} == set(DESIGNS)
    assert resolve_sweep_path("quick").name == "quick.yaml"


def test_several_named_baselines_each_get_every_variant(tmp_path):
    s = sweep_file(tmp_path, "tricks: [a]\nseeds: 1\nbaselines:\n  fcos: [model=fcos]\n"
                             "  frcnn: [model=faster_rcnn, train.epochs=2]\n")
    jobs = s.jobs()
    assert [j.variant for j in jobs] == ["fcos/baseline", "fcos/a", "frcnn/baseline", "frcnn/a"]
    assert jobs[3].base == ("model=faster_rcnn", "train.epochs=2")
    assert jobs[3].overrides() == ["tricks=[a]", "seed=0", "variant=frcnn/a"]
    with pytest.raises(SweepFileError, match="either baseline .* or baselines"):
        sweep_file(tmp_path, "tricks: [a]\nbaseline: []\nbaselines: {x: []}\n")
    with pytest.raises(SweepFileError, match="baselines.x must be a list"):
        sweep_file(tmp_path, "tricks: [a]\nbaselines: {x: model=fcos}\n")


def test_a_baseline_may_ablate_only_some_tricks(tmp_path):
    s = sweep_file(tmp_path, "tricks: [a, b]\nseeds: 1\nbaselines:\n  fcos: [model=fcos]\n"
                             "  frcnn:\n    overrides: [model=faster_rcnn]\n    tricks: [b]\n")
    assert [j.variant for j in s.jobs()] == ["fcos/baseline", "fcos/a", "fcos/b", "frcnn/baseline", "frcnn/b"]
    assert s.jobs()[-1].base == ("model=faster_rcnn",)
    with pytest.raises(SweepFileError, match=r"baselines.frcnn.tricks must list some of the sweep's tricks"):
        sweep_file(tmp_path, "tricks: [a]\nbaselines:\n  frcnn: {overrides: [], tricks: [c]}\n")
    with pytest.raises(SweepFileError, match=r"baselines.frcnn has unknown keys \['trick'\]"):
        sweep_file(tmp_path, "tricks: [a]\nbaselines:\n  frcnn: {overrides: [], trick: [a]}\n")


def test_the_everything_sweep_lists_every_trick_file():
    from ablate.config import conf_dir

    every = load_sweep(sweeps_dir() / "everything.yaml")
    files = {p.stem for p in (conf_dir() / "tricks").glob("*.yaml")}
    assert set(every.tricks) == files, f"not in sweeps/everything.yaml: {sorted(files - set(every.tricks))}"
    assert set(every.baselines) == {p.stem for p in (conf_dir() / "model").glob("*.yaml")}


def test_the_bag_of_freebies_sweep_stacks_its_tricks_on_yolov3_and_every_row_fits():
    # Zhang et al. 2019, Table 3 (YOLOv3): cumulative, in the paper's order; each row's tricks fit
    # YOLOv3 (a misfit would make that row and every later one n/a).
    from ablate.config import compose
    from ablate.tricks import build_tricks

    sweep = load_sweep(sweeps_dir() / "bag_of_freebies.yaml")
    assert sweep.design == "cumulative"
    assert sweep.tricks[-3:] == ("cosine", "label_smoothing", "mixup")
    last = [j for j in sweep.jobs() if j.seed == 0][-1]
    assert last.tricks == tuple(sweep.tricks)
    cfg = compose([*last.base, *last.overrides()])
    assert cfg.model.name == "yolov3" and cfg.model.family == "yolo"
    assert [t.name for t in build_tricks(cfg.tricks, cfg.model)] == list(sweep.tricks)
