"""GPU: images/s and the share of time the GPU is busy, for the baseline with a ResNet-50, at 512
and 800 px, with and without torch.compile. Run it on a CUDA machine:

    python benchmarks/gpu.py
    python benchmarks/gpu.py --sizes 512 --steps 100 --model faster_rcnn

Each arm is a short `ablate train` run in this process (`ablate.train.train_and_evaluate`, the
code a sweep runs: AMP in bf16 where supported, channels_last, cudnn.benchmark, pinned memory and
non-blocking copies), on the embedded shapes set generated at the arm's size. A thread samples
NVML's utilization (the share of the last sample period in which a kernel ran) through
`nvidia-smi` every 100 ms; the figure is the mean over the training window (from the first step
to the end of the last epoch). Goal: busy >= 90%. `--device cpu` runs the same arms on the CPU
without the busy figure (to check the script).
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from pathlib import Path


class UtilizationSampler(threading.Thread):
    """(time, GPU utilization %) every `period` seconds from nvidia-smi, until stopped."""

    def __init__(self, index: int, period: float = 0.1):
        super().__init__(daemon=True)
        self.index, self.period = index, period
        self.samples: list[tuple[float, float]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        cmd = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
               f"--loop-ms={int(self.period * 1000)}"]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:
                if self._stop_event.is_set():
                    proc.terminate()
                    break
                try:
                    self.samples.append((time.perf_counter(), float(line.strip())))
                except ValueError:
                    continue

    def stop(self) -> None:
        self._stop_event.set()

    def mean(self, start: float, end: float) -> float:
        window = [u for t, u in self.samples if start <= t <= end]
        return sum(window) / len(window) if window else float("nan")


def arm(size: int, compile_: bool, args, work: Path) -> dict:
    from hydra import compose, initialize_config_dir

    from ablate.config import conf_dir
    from ablate.train import train_and_evaluate

    batch = args.batch_size
    images = batch * args.steps
    overrides = [f"model={args.model}", "model/backbone=resnet50", "model.backbone.pretrained=false",
                 "model.head_convs=4", f"data.image_size={size}", f"data.generator.image_size={size}",
                 f"data.generator.min_size={size // 16}", f"data.generator.max_size={size * 3 // 4}",
                 f"data.generator.num_train={images}", "data.generator.num_val=16", f"data.batch_size={batch}",
                 f"data.num_workers={args.workers}", "train.epochs=2", "eval.latency_images=5",
                 f"runtime.device={args.device}", f"runtime.compile={str(compile_).lower()}",
                 "runtime.progress=false", "runtime.checkpoint=false", f"paths.cache={work / 'cache'}"]
    if args.model != "fcos":
        overrides.remove("model.head_convs=4")
    with initialize_config_dir(str(conf_dir()), version_base=None):
        cfg = compose("config", overrides)
    sampler = None
    if args.device.startswith("cuda"):
        sampler = UtilizationSampler(int(args.device.split(":")[1]) if ":" in args.device else 0)
        sampler.start()
    start = time.perf_counter()
    record = train_and_evaluate(cfg, work / f"run-{size}-{compile_}")
    t = record.timings
    # From the first step to the end of training (cuDNN autotuning and compilation included).
    first = start + t["time_to_first_step_s"]
    busy = sampler.mean(first, first + t["train_s"]) if sampler else float("nan")
    if sampler:
        sampler.stop()
    return {"images_per_s": t["images_per_s"], "busy": busy, "first_step_s": t["time_to_first_step_s"],
            "device": record.device, "mAP": record.metrics.get("mAP", float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[512, 800])
    parser.add_argument("--model", default="fcos")
    parser.add_argument("--steps", type=int, default=60, help="training steps per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile-arm", action="store_true")
    args = parser.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA machine (or --device cpu to check the script)")
    print(f"{args.model}, ResNet-50 (random init), batch {args.batch_size}, {args.steps} steps x 2 epochs, "
          f"torch {torch.__version__}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for compile_ in ([False] if args.no_compile_arm else [False, True]):
                r = arm(size, compile_, args, Path(tmp))
                results[(size, compile_)] = r
                print(f"  {size} px, compile {'on' if compile_ else 'off'}: {r['images_per_s']:.1f} images/s, "
                      f"GPU busy {r['busy']:.1f}% of training, first step after {r['first_step_s']:.1f} s "
                      f"({r['device']})", flush=True)
    for size in args.sizes:
        if (size, True) in results:
            print(f"{size} px: torch.compile speed-up {results[(size, True)]['images_per_s'] / results[(size, False)]['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
