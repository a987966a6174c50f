"""Gluon k-means assignment variants side by side in one process at the Wan 2.1 720p shape (40 groups × 75,600
points × 128, bf16): the default (persistent, points as the products' register operand) against the variants named
by ``--variants`` (``VARIANTS`` below). (Commit db24811 also timed ‖c‖² added by the tensor cores, ``_csq_mma``, with
this script: no faster, removed.)

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/kmeans_dev.py [--rounds 3] [--variants "default,smem A"]

Data and warm centroids from benchmarks/attention.py (``clustered_qkv``, ``kmeans_layout``): q with 300 clusters, k
with 1,000, as the recipe clusters them. Per variant and cluster count:
  * labels and centroids after one iteration from the warm centroids, against the first variant's, and labels
    against the float32 reference (``precision="ieee"``: exact float32 distances, exact argmin);
  * per launch: the assign and update kernels' mean device time from torch.profiler (three 3-iteration fits, so
    ≥ 9 launches);
  * marginal iteration: (3-iteration fit − 1-iteration fit) / 2, medians of CUDA-event timings (tol 0: every
    iteration runs).
Timings run in interleaved rounds (A B, A B, …); the table prints every round, the summary the means.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import attention as bench
from sparseattn.clustering.triton_kmeans import TritonKMeans

VARIANTS = {
    "default": dict(),  # persistent, 128 points × 64 centroids, one warpgroup, points as the register operand
    "smem A": dict(_a_regs=False),  # the points read from shared memory by every product (the default until s6)
    "one per item": dict(_persistent=False),
    "csq global": dict(_csq_smem=False),  # ‖c‖² loaded from global memory in the product loop (the default until s8)
    "128x128 8w": dict(block_centroids=128, num_warps=8),  # N = 128 products, two warpgroups share the tiles
}


def profile_kernels(km, x, init, fits=3, iters=3):
    """Mean device time (ms) per launch of the assign and update kernels over `fits` fits of `iters` iterations."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(fits):
            km.fit(x, init, iters)
        torch.cuda.synchronize()
    out = {}
    for avg in prof.key_averages():
        for key, name in (("assign", "_gluon_assign_kernel"), ("update", "_update_kernel")):
            if name in avg.key:
                total = getattr(avg, "device_time_total", None) or getattr(avg, "cuda_time_total", 0.0)
                out[key] = (total / avg.count / 1e3, avg.count)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--variants", default="default,smem A,one per item",
                        help=f"comma-separated, the first is the baseline: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = {name: VARIANTS[name] for name in args.variants.split(",")}
    t0 = time.perf_counter()
    shape = bench.SHAPES["wan"]
    props = torch.cuda.get_device_properties(0)
    print(f"{torch.cuda.get_device_name()}, {props.multi_processor_count} SMs, torch {torch.__version__}")
    q, k, _ = bench.clustered_qkv(shape)
    b, h, n, d = q.shape
    _, (cq, ck) = bench.kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=20)
    cases = [(f"q ({shape['cq']})", q.reshape(b * h, n, d), cq), (f"k ({shape['ck']})", k.reshape(b * h, n, d), ck)]
    print(f"data + warm centroids: {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for label, x, warm in cases:
        ref = TritonKMeans(precision="ieee").fit(x, warm, 1)
        res = {name: TritonKMeans(assign_kernel="gluon", **kw).fit(x, warm, 1) for name, kw in variants.items()}
        torch.cuda.synchronize()
        names = list(variants)
        for name in names:
            r = res[name]
            vs_ref = float((r.labels == ref.labels).float().mean())
            same = float((r.labels == res[names[0]].labels).float().mean())
            sizes_ok = int(r.sizes.sum()) == x.shape[0] * x.shape[1]
            cent = float((r.centroids - res[names[0]].centroids).norm() / res[names[0]].centroids.norm())
            print(f"{label} {name:16}: labels equal to fp32 reference {vs_ref:.6f}, to {names[0]} {same:.6f}; "
                  f"centroids vs {names[0]} {cent:.2e}; sizes sum ok {sizes_ok}", flush=True)
        kms = {name: TritonKMeans(assign_kernel="gluon", **kw) for name, kw in variants.items()}
        for km in kms.values():  # compiled and warm
            km.fit(x, warm, 3)
        for rnd in range(args.rounds):
            for name, km in kms.items():
                prof = profile_kernels(km, x, warm)
                one = bench.time_cuda(lambda: km.fit(x, warm, 1), args.reps, warmup=1)
                three = bench.time_cuda(lambda: km.fit(x, warm, 3), args.reps, warmup=1)
                rows.append((label, name, rnd, prof["assign"][0], prof["assign"][1], prof["update"][0],
                             (three - one) / 2, one))
                print(f"{label} r{rnd} {name:16}: assign {prof['assign'][0]:.3f} ms/launch ({prof['assign'][1]} "
                      f"launches), update {prof['update'][0]:.3f}, marginal it {(three - one) / 2:.3f} ms, "
                      f"1-it fit {one:.3f} ms", flush=True)
        del kms, res, ref
    print(f"[total {time.perf_counter() - t0:.1f} s]")
    print(f"\n{'clusters':10} {'variant':16} {'assign ms':>10} {'update ms':>10} {'marginal it':>12} {'1-it fit':>9}"
          f"   (means over {args.rounds} rounds; rounds of assign: …)")
    for label, *_ in cases:
        for name in variants:
            sel = [r for r in rows if r[0] == label and r[1] == name]
            mean = [statistics.mean(r[i] for r in sel) for i in (3, 5, 6, 7)]
            print(f"{label:10} {name:16} {mean[0]:10.3f} {mean[1]:10.3f} {mean[2]:12.3f} {mean[3]:9.3f}   "
                  f"{', '.join(f'{r[3]:.3f}' for r in sel)}")


if __name__ == "__main__":
    main()
