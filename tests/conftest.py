"""Shared test fixtures. Keep this file small and generic."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


def assert_imports_without(module: str, *forbidden: str) -> None:
    """Importing `module` in a fresh interpreter loads none of the `forbidden` modules."""
    code = (f"import {module}, sys; bad = [m for m in {forbidden!r} if m in sys.modules]; assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def ablate(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """`ablate ARGS` in a fresh process, as a user runs it, with `env` added to the environment."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ablate.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO_ROOT, timeout=600)


def paths(d) -> list[str]:
    """The overrides that keep a test's runs and reports in its own folders."""
    return [f"paths.runs={d['runs']}", f"paths.reports={d['reports']}"]


def smoke_record(model: str, tmp_path: Path, cache: Path) -> dict:
    """`ablate train model=MODEL profile=smoke` in tmp_path (the data cache `cache`), asserted to exit 0;
    its record (result.json)."""
    d = {"runs": tmp_path / "runs", "reports": tmp_path / "reports"}
    run_dir = tmp_path / "runs" / "one"
    res = ablate("train", f"model={model}", "profile=smoke", f"hydra.run.dir={run_dir}", *paths(d),
                 env={"ABLATE_CACHE": str(cache)})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((run_dir / "result.json").read_text())


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny-model tests (ablate.testing.one_thread says why);
    use with pytestmark = pytest.mark.usefixtures("single_thread")."""
    from ablate.testing import one_thread

    with one_thread():
        yield


@pytest.fixture
def load_conf():
    """load_conf("data/shapes", key=value, ...): a conf/*.yaml file with dotted-key overrides."""

    def load(name: str, **overrides):
        cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
        for key, value in overrides.items():
            OmegaConf.update(cfg, key, value, merge=False)
        return cfg

    return load


def write_test_image(path: Path, width: int, height: int, seed: int = 0) -> np.ndarray:
    """A small RGB image with a left-right ramp plus noise (so flips and resizes show); returns its pixels."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = np.clip(ramp + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def coco_set_factory(tmp_path):
    """make(images=[{"id", "file_name", "width", "height"}], annotations=[...], categories=[...],
    name="instances_train.json", root=tmp_path/"coco"): writes the images (PNG or JPEG by suffix)
    under root/images and the json under root/annotations; returns the json path."""

    def make(images, annotations, categories=None, name="instances_train.json", root=None, write_images=True):
        root = Path(root) if root is not None else tmp_path / "coco"
        if categories is None:
            categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
        if write_images:
            for im in images:
                write_test_image(root / "images" / im["file_name"], im["width"], im["height"], seed=im["id"])
        ann = root / "annotations" / name
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        return ann

    return make


@pytest.fixture(scope="session")
def shapes_cache(tmp_path_factory):
    """One cache folder (paths.cache / ABLATE_CACHE) for the whole session: the smoke profile's
    shapes set is generated once and reused by every test that trains."""
    return tmp_path_factory.mktemp("ablate_cache")
