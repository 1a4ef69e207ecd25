"""CPU bf16 autocast against float32: training step time, interleaved steps in one process.

    python benchmarks/cpu_amp.py                       # FCOS and Faster R-CNN, 30 pairs each
    python benchmarks/cpu_amp.py --models fcos --pairs 40

For each detector, the default `ablate train` config (tiny backbone, embedded data at 160 px,
batch 16) is built twice from the same seed, once as is (train.amp=cuda: float32 on a CPU) and
once with train.amp=always (its forward under torch.autocast("cpu", dtype=torch.bfloat16), as
ablate's autocast_for makes it; backward, gradient clipping and AdamW step outside autocast in
both, as ablate's loop does). They train alternately, one
step each, on the same batches (benchmarks/paired.py). The figure is the median over the pairs of
float32 step time / bf16 step time: above 1, bf16 is faster. The quartiles show the spread.
Also printed: the two arms' loss on the first batch (same weights, images and random draws: the
gap is bf16's rounding, for Faster R-CNN with the proposals and RoIs it changes) and their mean
loss over the run.
"""
from __future__ import annotations

import argparse
import platform
import statistics

from paired import Arm, interleave


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    isa = [f for f in flags if f.startswith("amx") or f in ("avx512_bf16", "avx512_fp16")]
    return f"{name} ({', '.join(isa) or 'no bf16 instructions'})"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["fcos", "faster_rcnn"])
    parser.add_argument("--pairs", type=int, default=30, help="timed pairs of steps per model")
    parser.add_argument("--cache", default=None, help="paths.cache (default: the config's)")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    for name in args.models:
        fp32 = Arm("fp32", [f"model={name}"])
        amp = Arm("bf16", [f"model={name}", "train.amp=always"])
        r = interleave(fp32, amp, args.pairs, args.cache)
        speedup = 1 / r["ratio"]
        first = (fp32.losses[0], amp.losses[0])
        rows.append((name, r, speedup, first, statistics.mean(fp32.losses), statistics.mean(amp.losses)))
        print(f"  {name}: fp32 / bf16 step time = {speedup:.3f} (median of {r['pairs']} pairs; quartiles "
              f"{1 / r['q3']:.3f}-{1 / r['q1']:.3f}); first-batch loss fp32 {first[0]:.4f}, bf16 {first[1]:.4f}",
              flush=True)
    print("\nmodel | image size, batch | fp32 / bf16 step time (median, quartiles) | pairs | first-batch loss fp32, bf16 | mean loss fp32, bf16")
    print("---|---|---|---|---|---")
    for name, r, speedup, first, m32, m16 in rows:
        print(f"{name} | {r['image_size']} px, {r['batch']} | {speedup:.3f} ({1 / r['q3']:.3f}-{1 / r['q1']:.3f}) | "
              f"{r['pairs']} | {first[0]:.4f}, {first[1]:.4f} | {m32:.4f}, {m16:.4f}")


if __name__ == "__main__":
    main()
