"""The README and the docs pages link each other and the committed reports: every relative link must
lead to a file that exists (a moved section or a renamed report must not leave a dead link), and every
anchor to a heading of the page it names."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_relative_link_of_the_readme_and_docs_resolves():
    dead = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path) if path else page
            if not file.exists():
                dead.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                dead.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not dead, dead


def test_the_readme_stays_a_five_minute_read():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines: move detail to docs/"
    first_screen = "\n".join(lines[:40])
    assert "pip install -e . && ablate sweep quick" in first_screen
    assert "pip install -e '.[test]' && pytest" in first_screen
    assert "profile=smoke" in first_screen and "minutes on 2 CPU cores" in first_screen


def test_the_readmes_first_paragraph_is_true_to_conf():
    """It names every detector of conf/model/ and counts the tricks of conf/tricks/."""
    intro = (ROOT / "README.md").read_text().split("## ", 1)[0]
    names = {"fcos": "FCOS", "retinanet": "RetinaNet", "faster_rcnn": "Faster R-CNN", "rfcn": "R-FCN",
             "yolov3": "YOLOv3", "ssd": "SSD", "centernet": "CenterNet", "cornernet": "CornerNet",
             "reppoints": "RepPoints"}
    models = {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")}
    assert models == set(names), "a detector was added or removed: name it in the README and here"
    assert all(names[m] in intro for m in models)
    tricks = len(list((ROOT / "conf" / "tricks").glob("*.yaml")))
    assert f"any of {tricks} toggleable tricks" in intro
    listed = set(re.findall(r"`(\w+)`", (ROOT / "README.md").read_text().split("## Tricks", 1)[1].split("## ", 1)[0]))
    assert {p.stem for p in (ROOT / "conf" / "tricks").glob("*.yaml")} <= listed
