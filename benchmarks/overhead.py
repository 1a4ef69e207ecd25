"""Training-loop overhead: `ablate train` against a bare torchvision loop, side by side.

    python benchmarks/overhead.py                      # the embedded data and BCCD
    python benchmarks/overhead.py --data shapes --repeats 3

Both train the same model (built from the same config), on the same images at the same size
and batch size, for the same number of steps, each in a fresh process. The bare loop holds its
images as float tensors in memory and does nothing but forward, backward, gradient clipping and
the optimizer step. `ablate train` reads the files through its data pipeline (decode and RAM
cache, flips, collate) and runs its whole loop (tricks' hooks, schedule, logging, per-epoch
checkpoint). The pairs alternate (bare, ablate, bare, ablate...) so that a slow spell of the
machine hits both; the figure is the ratio of images/s, ablate over bare (target: >= 0.95),
by wall time and by CPU time of the process (steadier on a machine whose other tenants take
cycles: a process waiting for a core accrues no CPU time).
Each ablate record also splits its step time: forward, backward and optimizer step (the model)
against the rest (data wait, copies, tricks' hooks, schedule, logging), measured within the same
steps, so that share is free of the machine's noise; it bounds the harness's overhead from
above (target: <= 5%, i.e. >= 0.95 of the floor). `--no-cache-arm` adds `ablate train` with the
RAM cache off (images decoded every epoch).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BCCD, REPO, train_step, train_timings

DATA = {
    "shapes": ["data=shapes"],
    "bccd": ["data=coco", f"data.root={BCCD}"],
}
# A short run: enough steps that the first (oneDNN warm-up) is amortised, evaluation kept tiny.
COMMON = ["data.max_val_images=8", "eval.latency_images=1", "runtime.progress=false", "train.log_every=1000"]


def setup(overrides: list[str], cache: str, *extra: str):
    """The config, data, model and optimizer both arms train, and the training images already
    decoded, resized and turned to float in memory (untimed)."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ablate.config import conf_dir
    from ablate.data import build_data
    from ablate.models import build_model, label_offset

    with initialize_config_dir(str(conf_dir()), version_base=None):
        cfg = compose("config", overrides + [f"paths.cache={cache}", *extra])
    if cfg.runtime.num_threads:
        torch.set_num_threads(int(cfg.runtime.num_threads))
    torch.manual_seed(0)
    data = build_data(cfg.data, Path(cfg.paths.cache))
    offset = label_offset(cfg.model.family)
    data.train.set_epoch(0)  # the flips (data.flip_rng=sample)
    images = [data.train[i][0].float().div(255) for i in range(len(data.train))]
    targets = [{"boxes": t["boxes"], "labels": t["labels"] - offset} for t in (data.train[i][1] for i in range(len(data.train)))]
    model = build_model(cfg.model, len(data.classes), cfg.data.image_size)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.train.optimizer)(params)
    return cfg, data, offset, images, targets, model, params, optimizer


def bare_loop(overrides: list[str], cache: str) -> dict:
    """The floor: the same model and steps, tensors in memory, nothing else (the 40-line loop)."""
    import math

    import torch

    cfg, _, _, images, targets, model, params, optimizer = setup(overrides, cache, "data.cache_ram_mb=0")
    batch = cfg.data.batch_size
    steps = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for epoch in range(cfg.train.epochs):
        order = torch.randperm(len(images)).tolist()
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = train_step(model, params, optimizer, cfg.train.clip_grad_norm,
                              [images[j] for j in idx], [targets[j] for j in idx])
            steps += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if steps == 0:  # a warm-up call: data read, nothing trained
        return {"steps": 0}
    assert math.isfinite(loss)
    return {"images_per_s": len(images) * cfg.train.epochs / elapsed, "steps": steps, "train_s": elapsed,
            "images_per_cpu_s": len(images) * cfg.train.epochs / cpu}


def interleaved(overrides: list[str], cache: str, steps: int) -> dict:
    """Step by step in one process, alternating: a batch through ablate's data pipeline (loader,
    RAM cache, flips, collate, copy to float) and its training step, then a bare batch (float
    tensors in memory) and the same step. A slow spell of the machine hits neighbouring steps
    alike, so the paired ratio is steady where whole-run ratios are not."""
    import torch

    from ablate.data import make_loader
    from ablate.train import to_device

    cfg, data, offset, images, targets, model, params, optimizer = setup(overrides, cache)
    batch, device = cfg.data.batch_size, torch.device("cpu")

    clip = cfg.train.clip_grad_norm

    ours, bare, epoch = [], [], 0
    while len(ours) < steps:
        data.train.set_epoch(epoch)
        it = iter(make_loader(data.train, batch, shuffle=True, num_workers=cfg.data.num_workers, seed=epoch))
        order = torch.randperm(len(images)).tolist()
        for k in range(len(order) // batch):
            start = time.perf_counter()
            imgs, tgts = to_device(*next(it), device, offset)
            train_step(model, params, optimizer, clip, imgs, tgts)
            ours.append(time.perf_counter() - start)
            idx = order[k * batch:(k + 1) * batch]
            start = time.perf_counter()
            train_step(model, params, optimizer, clip, [images[j] for j in idx], [targets[j] for j in idx])
            bare.append(time.perf_counter() - start)
        epoch += 1
    pairs = [b / o for o, b in zip(ours[1:], bare[1:])]  # the first step pays oneDNN's warm-up
    return {"paired_ratio": statistics.median(pairs), "steps": len(pairs)}


def ablate_train(overrides: list[str], cache: str, runs: Path, bare: subprocess.Popen | None = None) -> dict:
    """`ablate train` with these overrides; with `bare` (a started bare loop), side by side with it."""
    try:
        return train_timings(overrides, cache, runs)
    finally:
        if bare is not None:
            bare.wait()


def start_bare(overrides: list[str], cache: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--bare", json.dumps(overrides), "--cache", cache],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def bare_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.stderr.write(err[-3000:])
        raise SystemExit("the bare loop failed")
    return json.loads(out.strip().splitlines()[-1])


def compare(name: str, overrides: list[str], args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "cache")
        rows = []
        # The data set (for shapes: generated) and the disk cache warm before any timing.
        bare_result(start_bare(overrides + ["train.epochs=0"], cache))
        for r in range(args.repeats):
            if args.concurrent:
                # Both at once, one core each: whatever slows the machine slows both.
                proc = start_bare(overrides, cache)
                ours = ablate_train(overrides, cache, Path(tmp) / f"runs{r}", bare=proc)
                bare = bare_result(proc)
            else:
                bare = bare_result(start_bare(overrides, cache))
                ours = ablate_train(overrides, cache, Path(tmp) / f"runs{r}")
            # ablate's images/s counting the per-epoch checkpoints too (a cost of the harness).
            images = ours["images_per_s"] * ours["train_s"]
            row = {"bare": bare["images_per_s"], "ablate": images / (ours["train_s"] + ours["checkpoint_s"]),
                   "bare_cpu": bare["images_per_cpu_s"], "ablate_cpu": images / ours["train_cpu_s"],
                   "wait": ours["data_wait_fraction"], "first_step": ours["time_to_first_step_s"],
                   "harness": ours["harness_fraction"]}
            if args.no_cache_arm:
                row["ablate_nocache"] = ablate_train(overrides + ["data.cache_ram_mb=0"], cache,
                                                     Path(tmp) / f"nocache{r}")["images_per_s"]
            rows.append(row)
            print(f"  {name} run pair {r + 1}: bare {row['bare']:.1f} images/s, ablate {row['ablate']:.1f} images/s "
                  f"(ratio {row['ablate'] / row['bare']:.3f}; per CPU second {row['ablate_cpu'] / row['bare_cpu']:.3f}), "
                  f"harness {100 * row['harness']:.2f}% and data wait {100 * row['wait']:.2f}% of step time, "
                  f"first step after {row['first_step']:.1f} s"
                  + (f"; ablate without RAM cache {row['ablate_nocache']:.1f} images/s" if args.no_cache_arm else ""),
                  flush=True)
        inter = interleaved(overrides, cache, args.interleaved_steps) if args.interleaved_steps else None

    def med(key):
        return statistics.median(r[key] for r in rows)

    ratios = [r["ablate"] / r["bare"] for r in rows]
    harness = med("harness")
    print(f"{name}: whole runs, ablate / bare images/s = {statistics.median(ratios):.3f} (median of {len(rows)} "
          f"pairs: {', '.join(f'{x:.3f}' for x in ratios)}); images per CPU second "
          f"{statistics.median(r['ablate_cpu'] / r['bare_cpu'] for r in rows):.3f}")
    print(f"{name}: ablate's own split: {100 * harness:.2f}% of step time outside forward/backward/optimizer "
          f"step, of which data wait {100 * med('wait'):.2f}%"
          + (f"; RAM cache off / on = {statistics.median(r['ablate_nocache'] / r['ablate'] for r in rows):.3f}"
             if args.no_cache_arm else ""))
    if inter:
        print(f"{name}: interleaved steps, ablate's pipeline batch / bare batch speed = {inter['paired_ratio']:.3f} "
              f"(median of {inter['steps']} paired steps); estimate of ablate / bare images/s "
              f"= {inter['paired_ratio']:.3f} x (1 - {harness - med('wait'):.4f}) = "
              f"{inter['paired_ratio'] * (1 - (harness - med('wait'))):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=[*DATA, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=320, help="training images (first N of the split)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-cache-arm", action="store_true", help="also run ablate with the RAM cache off")
    parser.add_argument("--interleaved-steps", type=int, default=60,
                        help="paired steps of the interleaved measure (0: skip it)")
    parser.add_argument("--concurrent", action="store_true",
                        help="run each pair at the same time, one thread each (cores >= 2)")
    parser.add_argument("--bare", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        print(json.dumps(bare_loop(json.loads(args.bare), args.cache)))
        return
    names = list(DATA) if args.data == "all" else [args.data]
    for name in names:
        if name == "bccd" and not BCCD.is_dir():
            print(f"bccd: skipped, {BCCD} not found")
            continue
        overrides = DATA[name] + COMMON + [f"data.max_train_images={args.images}", f"train.epochs={args.epochs}"]
        if args.concurrent:
            overrides.append("runtime.num_threads=1")
        print(f"{name}: {args.images} images x {args.epochs} epochs, overrides {' '.join(overrides)}", flush=True)
        compare(name, overrides, args)


if __name__ == "__main__":
    main()
