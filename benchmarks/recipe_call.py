"""Time the built-in `svg2` recipe exactly as a user loads it (auto kernel, auto clusterer, input checks on), call by
call, at the Wan 2.1 720p shape, next to cuDNN dense attention in the same process.

    PYTHONPATH=$PWD python3 benchmarks/recipe_call.py [--calls 6]

Prints the time of every call (call 0 is cold: 50 k-means iterations and Triton compilation; later calls are warm:
2 iterations from the cached centroids), the density, and a per-stage profile of the last call. Calls alternate
between two inputs (the second: q and k plus 10% noise), as consecutive denoising steps differ: repeating one input
lets k-means converge, and its device-side stop test (tol 1e-4) would then skip the second warm iteration.
"""
import argparse

import torch

import sparseattn
from sparseattn import AttentionContext

from attention import SHAPES, clustered_qkv  # noqa: E402  (benchmarks/ is the script's folder)


def cuda_ms(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=6)
    args = parser.parse_args()
    q, k, v = clustered_qkv(SHAPES["wan"])
    gen = torch.Generator(device=q.device).manual_seed(1)
    noisy = [(x.float() + 0.1 * x.float().std() * torch.randn(x.shape, generator=gen, device=x.device)).to(x.dtype)
             for x in (q, k)]
    inputs = [(q, k, v), (*noisy, v)]
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        sdpa()
        dense_ms = min(cuda_ms(sdpa) for _ in range(3))
    strategy = sparseattn.load_strategy("svg2")
    ctx = AttentionContext(layer=5, num_layers=40, step=30, num_steps=50, grid=(21, 45, 80))
    print(f"card {torch.cuda.get_device_name()}; q/k/v {tuple(q.shape)} bf16; cuDNN dense {dense_ms:.1f} ms")
    for call in range(args.calls):
        ms = cuda_ms(lambda: strategy(*inputs[call % 2], ctx))
        print(f"svg2 recipe call {call}: {ms:9.1f} ms   ({dense_ms / ms:.2f}× cuDNN dense)")
    print(f"density of the last plan: {float(strategy.plan(q, k, ctx).density.mean()):.3f}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        strategy(q, k, v, ctx)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=50))


if __name__ == "__main__":
    main()
