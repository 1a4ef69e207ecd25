"""Faster R-CNN checkpoints evaluated again with other test-time proposal budgets: how much of a
budget's effect on mAP is at test time (the rest is in training).

    python benchmarks/frcnn_test_budget.py RUNS_DIR [--budgets 250/125 1000/500]

RUNS_DIR holds Faster R-CNN runs (result.json and last.pt, e.g. runs/bag_of_tricks/faster_rcnn/baseline);
each is rebuilt from its record's config, its weights loaded, and the val set scored once per
budget (RPN proposals before/after NMS at test), one thread.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--budgets", nargs="+", default=["250/125", "1000/500"])
    args = ap.parse_args(argv)

    import torch
    from omegaconf import OmegaConf

    from ablate.config import conf_dir  # noqa: F401 (registers the resolvers)
    from ablate.data import build_data
    from ablate.models import build_model
    from ablate.results import find_records
    from ablate.train import autocast_for, evaluate_model

    torch.set_num_threads(1)
    found, _ = find_records(args.runs)
    for path, record in sorted(found, key=lambda f: f[1].seed):
        ckpt = path.parent / "last.pt"
        if record.status != "ok" or not ckpt.is_file():
            print(f"{path.parent}: no ok record with its last.pt, skipped")
            continue
        cfg = OmegaConf.create(record.config)
        data = build_data(cfg.data, Path(cfg.paths.cache))
        weights = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
        line = [f"seed {record.seed}: recorded {100 * record.metrics['mAP']:.1f}"]
        for budget in args.budgets:
            pre, post = (int(x) for x in budget.split("/"))
            c = OmegaConf.merge(cfg, {"model": {"rpn_pre_nms_top_n_test": pre, "rpn_post_nms_top_n_test": post}})
            model = build_model(c.model, len(data.classes), c.data.image_size)
            model.load_state_dict(weights)
            device = torch.device("cpu")
            metrics, _, _ = evaluate_model(model, data, c, device, autocast_for(device, c.train.amp))
            line.append(f"test {budget}: {100 * metrics['mAP']:.1f}")
        print(", ".join(line), flush=True)


if __name__ == "__main__":
    main()
