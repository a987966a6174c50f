"""Where the time of one warm SVG2 call goes at the Wan shape: GPU work vs the host issuing it.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/call_overhead.py [--density 0.15] [--profile 25]

The call is `Strategy` from the ``svg2`` recipe with budget ``density`` (as ``benchmarks/attention.py --sections
whole``), warm centroid cache, k-means tol 0 (both warm iterations always run), input checks off. Printed, all in one process on one card:

* ``cuDNN dense``: SDPA dense attention on the same q, k, v;
* ``call, synchronised``: CUDA-event time of one call started on an idle GPU and waited for (the way
  ``attention.py`` times it: the GPU idles whenever Python has not yet launched the next kernel);
* ``calls back to back``: ten calls issued without waiting, event time ÷ 10 (a model's layers run this way: the host
  queues kernels ahead of the GPU, so launch overhead is hidden when the host is faster than the GPU);
* ``host issue``: wall time Python spends inside one call while the GPU is kept busy beforehand (so no launch waits
  for the GPU): the host's cost per call;
* ``GPU kernels``: the sum of the call's CUDA kernel times (torch.profiler);
* a cProfile of one call's host side (the GPU kept busy), top functions by own time.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch

import attention as bench


def busy_gpu(ms: float) -> None:
    """Queue about ``ms`` milliseconds of GPU work (a spin kernel) so the host runs ahead of the GPU."""
    torch.cuda._sleep(int(ms * 1.4e6))  # ~1.4 GHz of spin cycles per ms; the exact length does not matter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--density", type=float, default=0.15)
    parser.add_argument("--profile", type=int, default=25, help="rows of the cProfile table (0: none)")
    args = parser.parse_args()

    from sparseattn import AttentionContext, load_strategy

    shape = bench.SHAPES["wan"]
    q, k, v = bench.clustered_qkv(shape)
    cudnn = bench.dense_times(q, k, v)["cudnn"]
    strategy = load_strategy(
        "svg2",
        permuter={"name": "kmeans", "q_clusters": shape["cq"], "k_clusters": shape["ck"], "iters_first": 20,
                  "iters_warm": 2, "tol": 0.0, "clusterer": "triton"},
        budget={"name": "density", "density": args.density},
    )
    strategy.check_inputs = False
    ctx = AttentionContext(layer=5, num_layers=40, step=30, num_steps=50, grid=shape["grid"])
    for _ in range(3):  # cold (fills the centroid cache), then the warm specialisations compile
        strategy(q, k, v, ctx)
    torch.cuda.synchronize()

    def call():
        strategy(q, k, v, ctx)

    synced = bench.timed(call, 3000)

    def back_to_back(calls=10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls

    back_to_back(2)
    streamed = statistics.median(back_to_back() for _ in range(3))

    issue = []
    for _ in range(7):
        busy_gpu(300)
        t0 = time.perf_counter()
        call()
        issue.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
    host_ms = statistics.median(issue)

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_ms = sum(e.device_time for e in kernels) / 1e3

    print(f"# One warm SVG2 call, Wan shape, budget density {args.density}, {torch.cuda.get_device_name()}")
    print(f"{'what':28} {'ms':>9} {'vs cuDNN dense':>15}")
    for label, ms in (("cuDNN dense", cudnn), ("call, synchronised", synced), ("calls back to back", streamed),
                      ("host issue (GPU busy)", host_ms), ("GPU kernels (sum)", gpu_ms)):
        print(f"{label:28} {ms:9.2f} {cudnn / ms:14.2f}×")
    print(f"kernel launches per call: {len(kernels)}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60))

    # The GPU's timeline over three calls issued back to back: busy time, span, and the largest gaps between kernels
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            call()
        torch.cuda.synchronize()
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    busy = sum(end - start for start, end, _ in spans) / 1e3
    span = (spans[-1][1] - spans[0][0]) / 1e3
    gaps = sorted(((spans[i + 1][0] - spans[i][1]) / 1e3, spans[i][2][:60], spans[i + 1][2][:60])
                  for i in range(len(spans) - 1))[::-1]
    print(f"three calls back to back: span {span:.2f} ms, kernels busy {busy:.2f} ms, "
          f"{len(spans)} kernels, idle {span - busy:.2f} ms")
    for gap, before, after in gaps[:15]:
        print(f"  gap {gap:7.3f} ms  after {before}  before {after}")
    small = [g for g, _, _ in gaps if g < 0.05]
    print(f"  gaps < 50 µs: {len(small)}, total {sum(small):.2f} ms")

    if args.profile:
        busy_gpu(600)
        profiler = cProfile.Profile()
        profiler.enable()
        call()
        profiler.disable()
        torch.cuda.synchronize()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.profile)
        print(text.getvalue())
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(args.profile)
        print(text.getvalue())


if __name__ == "__main__":
    main()
