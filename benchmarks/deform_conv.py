"""The deformable convolution alone, forward + backward: torchvision's CPU kernel against the
grid_sample path (ablate/models/deform_conv.py), interleaved calls in one process.

    python benchmarks/deform_conv.py                     # RepPoints' P3 at 320 px: [4, 64, 40, 40]
    python benchmarks/deform_conv.py --shape 4 64 20 20 --pairs 30

A 3x3 convolution, 64 -> 64 channels, no bias, padding 1 (RepPoints' cls_dcn and refine_dcn), offsets
of a few pixels (randn x 2), gradients of the input, the offsets and the weight. The two run
alternately (A B, B A, ...) on the same tensors; the figure is the median over the pairs of
torchvision's time / the grid path's time (above 1: the grid path is faster).
"""
from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    import torch
    from torchvision.ops import deform_conv2d

    from ablate.models.deform_conv import deform_conv2d_grid

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[4, 64, 40, 40], metavar=("B", "C", "H", "W"))
    parser.add_argument("--pairs", type=int, default=20)
    args = parser.parse_args()
    b, c, h, w = args.shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, h, w, generator=g, requires_grad=True)
    offset = (torch.randn(b, 18, h, w, generator=g) * 2).requires_grad_(True)
    weight = (torch.randn(c, c, 3, 3, generator=g) * 0.05).requires_grad_(True)
    upstream = torch.randn(b, c, h, w, generator=g)
    arms = {"torchvision": lambda: deform_conv2d(x, offset, weight, padding=1),
            "grid": lambda: deform_conv2d_grid(x, offset, weight, padding=1)}

    def timed(name: str) -> float:
        start = time.perf_counter()
        torch.autograd.grad((arms[name]() * upstream).sum(), [x, offset, weight])
        return time.perf_counter() - start

    for name in arms:  # warm-up
        timed(name)
    times = {name: [] for name in arms}
    for i in range(args.pairs):
        for name in (list(arms) if i % 2 == 0 else list(arms)[::-1]):
            times[name].append(timed(name))
    ratios = sorted(a / b for a, b in zip(times["torchvision"], times["grid"]))
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    print(f"deform conv 3x3 {c}->{c} on {args.shape}, forward + backward, {torch.get_num_threads()} threads, "
          f"{args.pairs} interleaved pairs: torchvision {statistics.median(times['torchvision']) * 1000:.1f} ms, "
          f"grid {statistics.median(times['grid']) * 1000:.1f} ms (medians); torchvision / grid = {median:.2f} "
          f"(quartiles {q1:.2f}-{q3:.2f})")


if __name__ == "__main__":
    main()
