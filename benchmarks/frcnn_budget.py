"""Faster R-CNN's training step with the 800-px budgets against the budgets sized for the input.

    python benchmarks/frcnn_budget.py                  # embedded data at 160 px, 30 pairs
    python benchmarks/frcnn_budget.py --pairs 40 --overrides data.image_size=320

Two Faster R-CNNs are built from the same seed with the default `ablate train model=faster_rcnn`
config (tiny backbone, batch 16): one with the budgets conf/model/faster_rcnn.yaml derives from
data.image_size (ablate_area_scale), one with their 800-px reference values (RPN 2000/1000 proposals
before/after NMS in training, 1000/500 at test, 256 RoIs per image). They train alternately, one
step each, on the same batches (benchmarks/paired.py). The figure is the median over the pairs of
reference step time / sized step time: how many times faster the sized budgets make a step.
"""
from __future__ import annotations

import argparse

from paired import Arm, interleave

BUDGETS = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
           "rpn_post_nms_top_n_test", "box_batch_size_per_image")
# The rule's reference, the values for 800-px images (the first argument of each budget's
# ablate_area_scale in conf/model/faster_rcnn.yaml).
REFERENCE = (2000, 1000, 1000, 500, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=30, help="timed pairs of steps")
    parser.add_argument("--overrides", nargs="*", default=[], help="more config overrides for both arms")
    parser.add_argument("--cache", default=None, help="paths.cache (default: the config's)")
    args = parser.parse_args()
    base = ["model=faster_rcnn", *args.overrides]
    reference = Arm("800-px budgets", [*base, *(f"model.{k}={v}" for k, v in zip(BUDGETS, REFERENCE))])
    sized = Arm("sized budgets", base)
    r = interleave(reference, sized, args.pairs, args.cache)
    for arm in (reference, sized):
        print(f"  {arm.name}: " + ", ".join(f"{k}={arm.cfg.model[k]}" for k in BUDGETS))
    print(f"Faster R-CNN at {r['image_size']} px, batch {r['batch']}: 800-px budgets / sized budgets step time = "
          f"{1 / r['ratio']:.3f} (median of {r['pairs']} interleaved pairs; quartiles "
          f"{1 / r['q3']:.3f}-{1 / r['q1']:.3f})")


if __name__ == "__main__":
    main()
