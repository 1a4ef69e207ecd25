"""The backbone table: for each backbone config, FCOS built on it with random weights (as `ablate train
model/backbone=NAME model.backbone.pretrained=false` builds it), its parameters, FLOPs of one
inference forward (ablate.evaluate.count_flops) and training images/s, at 320 px, batch 4.

    python benchmarks/backbones.py                     # every conf/model/backbone/*.yaml
    python benchmarks/backbones.py --backbones tiny resnet18 "efficientnet model.backbone.size=b3"
    python benchmarks/backbones.py --backbones tiny --size 64 --batch 1 --steps 1 --warmup 1 --threads 1
    python benchmarks/backbones.py --models fcos retinanet yolov3 ssd centernet cornernet reppoints faster_rcnn rfcn \
        --backbones tiny resnet18                    # the README's baselines table (head x backbone)

A backbone is a conf/model/backbone/ name, optionally with overrides after it (one quoted
argument). Parameters and FLOPs are the backbone body's and the whole detector's (FPN and heads
included; FLOPs of the detector's inference forward on one image, NMS not counted). Images/s: the
median of `--steps` training steps (forward, backward, gradient clipping, the config's optimizer)
on random images with two boxes each, after `--warmup` steps (the first pays oneDNN's or cuDNN's
warm-up). The rows are measured one after another, so on a shared machine compare the images/s
of one run only, and run nothing else meanwhile (benchmarks/README.md). A backbone without the
detector's levels (squeezenet has no stride 32) is measured on its highest levels, as many as
the detector's; the levels column says which. A timm backbone without timm installed is skipped.
"""
from __future__ import annotations

import argparse
import statistics
import time

from common import train_step


def compose_model(backbone: str, model: str, overrides: list[str]):
    """cfg (whole run config) for FCOS (or `model`) on `backbone` ("name key=value ...")."""
    from hydra import compose, initialize_config_dir

    from ablate.config import conf_dir

    name, *extra = backbone.split()
    with initialize_config_dir(str(conf_dir()), version_base=None):
        return compose("config", [f"model={model}", f"model/backbone={name}", "model.backbone.pretrained=false",
                                  *extra, *overrides])


def fit_levels(cfg_model) -> None:
    """The detector's levels, or the backbone's highest ones (as many) when it lacks some."""
    from ablate.models.backbones import build_body, pyramid_taps

    offered = sorted(pyramid_taps(build_body(cfg_model.backbone)))
    if not set(cfg_model.levels) <= set(offered):
        cfg_model.levels = offered[-len(cfg_model.levels):]


def body_flops(body, size: int, device) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    body.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        body(torch.zeros(1, 3, size, size, device=device))
    return int(counter.get_total_flops())


def measure(cfg, size: int, batch: int, warmup: int, steps: int, device) -> dict:
    import torch
    from hydra.utils import instantiate

    from ablate.evaluate import count_flops
    from ablate.models import build_model, count_parameters, label_offset

    torch.manual_seed(0)
    fit_levels(cfg.model)
    model = build_model(cfg.model, num_classes=3, image_size=size).to(device)
    row = {"levels": list(cfg.model.levels),
           "body_params": count_parameters(model.backbone.body), "params": count_parameters(model),
           "body_flops": body_flops(model.backbone.body, size, device),
           "flops": count_flops(model, torch.randint(0, 256, (3, size, size), dtype=torch.uint8), device)}
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g).to(device) for _ in range(batch)]
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]) * size
    targets = [{"boxes": boxes.to(device), "labels": (torch.tensor([1, 2]) - label_offset(cfg.model.family)).to(device)}
               for _ in range(batch)]
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.train.optimizer)(params)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        train_step(model, params, optimizer, cfg.train.clip_grad_norm, images, targets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    row["images_per_s"] = batch / statistics.median(times)
    return row


def main() -> None:
    import torch

    from ablate.config import conf_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="*",
                        default=sorted(p.stem for p in (conf_dir() / "model" / "backbone").glob("*.yaml")))
    parser.add_argument("--models", nargs="*", default=["fcos"], help="the detectors (conf/model/), each on every backbone")
    parser.add_argument("--size", type=int, default=320, help="image side, px")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2, help="training steps before the timed ones")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (their median)")
    parser.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides for every row")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for model in args.models:
        for backbone in args.backbones:
            cfg = compose_model(backbone, model, args.overrides)
            try:
                r = measure(cfg, args.size, args.batch, args.warmup, args.steps, device)
            except ImportError as e:  # a timm backbone without timm
                print(f"  {backbone}: skipped ({e})", flush=True)
                continue
            rows.append((model, backbone, r))
            print(f"  {model} on {backbone}: levels {r['levels']}, body {r['body_params'] / 1e6:.2f} M params "
                  f"{r['body_flops'] / 1e9:.2f} GFLOPs; detector {r['params'] / 1e6:.2f} M params "
                  f"{r['flops'] / 1e9:.2f} GFLOPs; {r['images_per_s']:.2f} training images/s", flush=True)
    print(f"\nat {args.size} px, batch {args.batch}, {args.device}, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps")
    print("detector | backbone | levels | body params (M) | body GFLOPs | detector params (M) | detector GFLOPs "
          "| training images/s")
    print("---|---|---|---|---|---|---|---")
    for model, backbone, r in rows:
        print(f"{model} | {backbone} | {','.join(map(str, r['levels']))} | {r['body_params'] / 1e6:.2f} "
              f"| {r['body_flops'] / 1e9:.2f} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.2f} "
              f"| {r['images_per_s']:.2f}")


if __name__ == "__main__":
    main()
