"""benchmarks/house.py (issue 26) on a tiny package whose rooms, circles and cfg walk are known."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

HOUSE = Path(__file__).resolve().parents[1] / "benchmarks" / "house.py"

FILES = {
    "__init__.py": '"""The fake package."""\n',
    # the hub: walks cfg out to data, on to helpers, back to itself
    "train.py": """
        from . import helpers
        from .data import build


        def train_and_evaluate(cfg):
            model = cfg.model
            build(cfg.data, 3)
            helpers.log(1)
            helpers.log(cfg["train"])
            finish(model)


        def finish(settings):
            train_and_evaluate(settings)
        """,
    "data.py": """
        from .helpers import check


        def build(cfg_data, size):
            check(size)
            check(cfg_data.size)
        """,
    # top-level: data <-> helpers; lazy: helpers -> train closes train -> helpers -> data -> helpers
    "helpers.py": """
        from . import data


        def check(value):
            return value


        def log(value):
            from .train import finish
            return value


        def longest():
            a = 1
            b = 2
            c = 3
            d = 4
            e = 5
            f = 6
            g = 7
            h = 8
            return a + b + c + d + e + f + g + h
        """,
    "tricks/__init__.py": "",
    "tricks/one.py": """
        class Trick:
            def apply(self, cfg):
                return self.other(cfg)

            def other(self, cfg):
                return cfg
        """,
}


def _house():
    spec = importlib.util.spec_from_file_location("benchmark_house", HOUSE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _package(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def test_house_finds_the_rooms_circles_longest_function_and_cfg_walk(tmp_path):
    data = _house().measure(_package(tmp_path), "pkg.train:train_and_evaluate")

    assert data["modules"] == 6
    assert data["modules_per_folder"] == {"pkg": 4, "pkg.tricks": 2}
    assert data["largest"][0] == {"module": "pkg.helpers", "folder": "pkg", "lines": 22}
    assert data["longest_functions"][0] == {"function": "pkg.helpers:longest", "lines": 10, "line": 13}
    assert [t["modules"] for t in data["tricks_tree"]] == [2]

    assert [c["modules"] for c in data["circles"]["top_level"]] == [["pkg.data", "pkg.helpers"]]
    assert [c["modules"] for c in data["circles"]["all"]] == [["pkg.data", "pkg.helpers", "pkg.train"]]

    walk = data["cfg_walk"]

    def stays(node):
        return [f"{node['module']}:{node['function']}"] + [s for child in node["children"] for s in stays(child)]
    # helpers.log(1) carries no cfg; finish(model) does (model = cfg.model); finish's call back into
    # train_and_evaluate is a cycle and is not entered again
    assert stays(walk["tree"]) == ["pkg.train:train_and_evaluate", "pkg.data:build", "pkg.helpers:check",
                                   "pkg.helpers:log", "pkg.train:finish"]
    figures = walk["rooms"], walk["stays"], walk["returns_to_entry_room"], walk["climbs_back_to_entry_room"]
    assert figures == (3, 5, 1, 2)

    method = _house().measure(_package(tmp_path), "pkg.tricks.one:Trick.apply")["cfg_walk"]
    assert stays(method["tree"]) == ["pkg.tricks.one:Trick.apply", "pkg.tricks.one:Trick.other"]


def test_house_command_line_writes_json(tmp_path):
    out = tmp_path / "house.json"
    run = subprocess.run([sys.executable, str(HOUSE), str(_package(tmp_path)), "--json", str(out), "--verbose"],
                         capture_output=True, text=True, check=True)
    assert "3 rooms in 5 stays, 1 returns to the entry's room, 2 climbs back into it" in run.stdout
    assert json.loads(out.read_text())["cfg_walk"]["stays"] == 5
