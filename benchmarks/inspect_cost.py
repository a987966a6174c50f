"""What TensorBoard inspection costs per logged call, at the size of a real model's attention.

    PYTHONPATH=$PWD python benchmarks/inspect_cost.py                      # Wan 2.1 1.3B, 480p: 21×30×52, 12 heads
    PYTHONPATH=$PWD python benchmarks/inspect_cost.py --frames 21 --height 45 --width 80   # 720p: 75,600 tokens

Times, on a synthetic video-like workload (`sparseattn.workloads.synthetic_video`), with SVG2 warm-started as at a
mid-generation step: the plain strategy call; the same call through `Inspector.attend` logging it (scalars for every
head, images for one head); and the parts of the logging — the dense reference output (for the relative error),
the exact attention recall of every head, and the pooled maps of one head. Medians of ``--repeat`` runs; a call that
is not logged costs exactly the plain call (the inspector only checks the (layer, step) selection).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import sparseattn
from sparseattn import metrics
from sparseattn.inspect import Inspector, Selection, attention_maps
from sparseattn.strategy import dense_attention
from sparseattn.workloads import synthetic_video


def timed(fn, device: torch.device, repeat: int) -> float:
    """Median wall milliseconds of ``fn()`` over ``repeat`` runs (synchronised on CUDA)."""
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=21)
    parser.add_argument("--height", type=int, default=30)
    parser.add_argument("--width", type=int, default=52)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--strategy", default="svg2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    work = synthetic_video(frames=args.frames, height=args.height, width=args.width, heads=args.heads,
                           head_dim=args.head_dim).to(device, dtype)
    q, k, v = work.q, work.k, work.v
    strategy = sparseattn.load_strategy(args.strategy)
    cache = sparseattn.StateCache()

    def ctx(step: int) -> sparseattn.AttentionContext:
        return sparseattn.AttentionContext(layer=20, num_layers=40, step=step, num_steps=50, grid=work.grid,
                                           cache=cache)

    strategy(q, k, v, ctx(20))  # cold k-means once; later calls warm-start, as in a generation
    plain = timed(lambda: strategy(q, k, v, ctx(21)), device, args.repeat)
    plan = strategy.plan(q, k, ctx(21))
    steps = iter(range(22, 50))
    with Inspector(tempfile.mkdtemp(prefix="inspect-cost-"), Selection(layers="all", steps="all")) as inspector:
        inspector.attend(strategy, q, k, v, ctx(next(steps)))  # the first logged call opens the event file
        logged = timed(lambda: inspector.attend(strategy, q, k, v, ctx(next(steps))), device, args.repeat)
    parts = {
        "dense reference (SDPA)": timed(lambda: dense_attention(q, k, v), device, args.repeat),
        f"recall, all {args.heads} heads": timed(lambda: metrics.attention_recall(q, k, plan), device, args.repeat),
        "pooled maps, one head": timed(lambda: attention_maps(q, k, plan), device, args.repeat),
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, {args.strategy}, q/k/v {tuple(q.shape)} {dtype}, density {float(plan.density.mean()):.3f}")
    print(f"  strategy call, not logged        {plain:9.1f} ms")
    print(f"  strategy call, logged (1 head)   {logged:9.1f} ms")
    for part, ms in parts.items():
        print(f"    of which {part:<22} {ms:9.1f} ms")


if __name__ == "__main__":
    main()
