"""Benchmark the model alone: the paper's F3R against torchvision's ResNet-50 classifier.

Run from the repository root::

    python benchmarks/model.py [--threads 2] [--batch 32] [--size 128] [--rounds 10]

Measures, side by side in one process, in inference mode with channels_last tensors and
weights, the throughput (images/s) at batch 32 and 128 x 128 pixels of

* ``f3r``: ``AffectFPN(AffectFPNConfig.paper(frozen_bn=False, trainable_layers=5))``, the
  paper's F3R (ResNet-50, 4-level FPN of width 256, three heads). The paper trains it with
  frozen BatchNorm and three trainable stages; neither changes what inference computes, and
  ordinary BatchNorm is what torchvision's ResNet-50 uses, so the comparison is like for like.
  ``--frozen-bn`` adds ``f3r (frozen BN)``, exactly ``AffectFPNConfig.paper()``, whose
  ``FrozenBatchNorm2d`` layers run as separate multiply and add kernels;
* ``f3r backbone only``: the same model's ResNet-50 trunk (C2..C5, no FPN, no heads): the
  difference to ``f3r`` is the time the neck, pooling and heads take;
* ``resnet50``: ``torchvision.models.resnet50()``, the plain classifier;
* ``mm``: a square float32 ``torch.mm`` (2048 x 2048; FLOPs per second), the machine's dense
  matmul ceiling with the same threads.

Floor: F3R's throughput is at least 0.95x ResNet-50's. Also printed: FLOPs per image of both
models (``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, the
additions of residuals and of the top-down path are not counted), the share of F3R's FLOPs per
part (backbone, FPN neck, heads), and each model's
fraction of the ceiling: FLOPs per image x images/s / matmul FLOP/s.
"""

import functools
from collections.abc import Callable

import torch
import torchvision
from _common import (
    Timing,
    compare,
    finish,
    make_parser,
    paired_ratio,
    print_table,
    setup,
    verdict,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from affectfpn import AffectFPN, AffectFPNConfig

FLOOR = 0.95


def count_flops(model: nn.Module, size: int) -> tuple[int, dict[str, dict[object, int]]]:
    """FLOPs of one image's forward pass, in total and per module."""
    counter = FlopCounterMode(display=False)
    x = torch.zeros(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    with counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops(), counter.get_flop_counts()


def _module_flops(counts: dict[str, dict[object, int]], name: str) -> int:
    return int(sum(counts.get(name, {}).values()))


def f3r_breakdown(model: AffectFPN, size: int) -> tuple[int, list[tuple[str, int]]]:
    """F3R's FLOPs per image and their split into backbone, FPN neck, heads.

    The neck is what is left: its pooled path (``FeaturePyramid.pooled``) uses the laterals'
    and smoothing kernels' weights in matrix products, not as modules, so it is counted as
    the total less the backbone and the heads.
    """
    total, counts = count_flops(model, size)
    root = type(model).__name__
    backbone = _module_flops(counts, f"{root}.backbone")
    heads = [
        (f"head {task}", _module_flops(counts, f"{root}.heads.{task}"))
        for task in model.config.tasks
    ]
    neck = total - backbone - sum(flops for _, flops in heads)
    parts = [
        ("backbone (ResNet-50 trunk)", backbone),
        ("FPN neck (pooled path)", neck),
        *heads,
    ]
    return total, parts


def main(argv: list[str] | None = None) -> None:
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="images per forward pass")
    parser.add_argument("--size", type=int, default=128, help="input side in pixels")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds")
    parser.add_argument(
        "--min-seconds", type=float, default=1.0, help="shortest timed sample per candidate"
    )
    parser.add_argument("--mm-size", type=int, default=2048, help="side of the ceiling's matmul")
    parser.add_argument(
        "--frozen-bn", action="store_true", help="also time F3R exactly as paper() (frozen BN)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.rounds = 4, 64, 2
        args.min_seconds, args.mm_size = 0.05, 512
    setup(args)

    torch.manual_seed(0)
    config = AffectFPNConfig.paper(frozen_bn=False, trainable_layers=5, input_size=(args.size,) * 2)
    f3r = AffectFPN(config).eval().to(memory_format=torch.channels_last)
    resnet = torchvision.models.resnet50().eval().to(memory_format=torch.channels_last)
    models: dict[str, nn.Module] = {
        "f3r": f3r,
        "f3r backbone only": f3r.backbone,
        "resnet50": resnet,
    }
    if args.frozen_bn:
        frozen = AffectFPNConfig.paper(input_size=(args.size,) * 2)
        models["f3r (frozen BN)"] = AffectFPN(frozen).eval().to(memory_format=torch.channels_last)
    print(
        f"setting:  batch {args.batch}, {args.size}x{args.size}, float32, inference_mode, "
        f"channels_last; {args.rounds} rounds"
    )

    # ------------------------------------------------------------------ FLOPs
    f3r_total, parts = f3r_breakdown(f3r, args.size)
    resnet_total, resnet_counts = count_flops(resnet, args.size)
    resnet_fc = _module_flops(resnet_counts, "ResNet.fc")
    flops = {name: count_flops(m, args.size)[0] for name, m in models.items()}
    print("\nFLOPs per image (FlopCounterMode: conv + matmul, 1 multiply-add = 2 FLOPs):")
    trunk_flops = resnet_total - resnet_fc
    print(
        f"  resnet50   {resnet_total / 1e9:7.3f} GFLOP (trunk {trunk_flops / 1e9:.3f}, "
        f"fc {resnet_fc / 1e9:.3f})"
    )
    print(f"  f3r        {f3r_total / 1e9:7.3f} GFLOP = {f3r_total / resnet_total:.3f}x resnet50")
    print(f"  {'part of f3r':30s} {'GFLOP':>8s} {'share':>7s}")
    for name, value in parts:
        print(f"  {name:30s} {value / 1e9:8.3f} {100 * value / f3r_total:6.1f}%")
    bound = resnet_total / f3r_total
    print(
        f"  at equal FLOP/s the model-only ratio would be {bound:.3f} "
        f"(resnet50 FLOPs / f3r FLOPs); the floor {FLOOR} needs F3R to run "
        f"{FLOOR / bound:.2f}x more FLOP/s than ResNet-50"
    )

    # ------------------------------------------------------------------ timing
    batch = torch.randn(args.batch, 3, args.size, args.size).contiguous(
        memory_format=torch.channels_last
    )
    n = args.mm_size
    a, b = torch.randn(n, n), torch.randn(n, n)

    def forward(model: nn.Module) -> int:
        with torch.inference_mode():
            model(batch)
        return args.batch

    def matmul() -> int:
        with torch.inference_mode():
            torch.mm(a, b)
        return 2 * n**3

    candidates: dict[str, Callable[[], int]] = {
        name: functools.partial(forward, m) for name, m in models.items()
    }
    candidates[f"mm {n}x{n}"] = matmul
    print(f"\ntiming ({args.rounds} rounds, order rotated each round):")
    timings: dict[str, Timing] = compare(
        candidates, rounds=args.rounds, min_seconds=args.min_seconds
    )
    ceiling = timings[f"mm {n}x{n}"].median
    print(f"\nthroughput (median of rounds), batch {args.batch}, {args.threads} thread(s):")
    print_table(timings, baseline="resnet50", names=list(models))
    print(f"\nceiling:  float32 torch.mm {n}x{n}: {ceiling / 1e9:.1f} GFLOP/s")
    print(f"  {'model':20s} {'GFLOP/img':>9s} {'GFLOP/s':>8s} {'of ceiling':>10s}")
    for name in models:
        achieved = flops[name] * timings[name].median
        print(
            f"  {name:20s} {flops[name] / 1e9:9.3f} {achieved / 1e9:8.1f} "
            f"{100 * achieved / ceiling:9.1f}%"
        )
    full = 1 / timings["f3r"].median
    trunk = 1 / timings["f3r backbone only"].median
    neck_flops = f3r_total - flops["f3r backbone only"]
    print(
        f"\nf3r time per image: {1000 * full:.2f} ms, of which the trunk {1000 * trunk:.2f} ms "
        f"({100 * trunk / full:.0f}%) and neck + pooling + heads {1000 * (full - trunk):.2f} ms "
        f"({100 * (full - trunk) / full:.0f}% of the time for "
        f"{100 * neck_flops / f3r_total:.0f}% of the FLOPs)"
    )
    if args.frozen_bn:
        ratio = paired_ratio(timings, "f3r (frozen BN)", "f3r")
        print(f"f3r with frozen BN (paper() as is) / f3r with BatchNorm: {ratio:.3f}")
    print()
    verdict("f3r / resnet50 throughput", paired_ratio(timings, "f3r", "resnet50"), FLOOR)
    finish()


if __name__ == "__main__":
    main()
