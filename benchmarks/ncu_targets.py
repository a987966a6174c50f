"""The kernels that limit issue 3's targets, each launched once inside a profiler range, for Nsight Compute's hardware
counters (docs/performance.md, "Hardware counters"):

    ncu --clock-control none --profile-from-start off --set full --import-source no -o prof \\
        python3 benchmarks/ncu_targets.py            # PYTHONPATH=$PWD:$PWD/benchmarks

At the Wan 2.1 720p shape (B 1, H 40, N 75,600, D 128, bf16; data, warm centroids and the 15% selection as in
benchmarks/attention.py), in this order: SDPA cuDNN dense; kernel ``gluon_ws`` on one block of all tokens (dense
through the sparse path: no waste, no tails); ``gluon_ws`` on the k-means layout at 15% (its persistent main pass,
then the Triton tail launch of the ≤ 64-row remainders); one k-means iteration for k (1,000 clusters: assignment and
update) and for q (300); ``--targets 3,4``: only those. Everything is compiled and run once before the range, so only
warm launches are profiled. Prints the order and each target's time outside the profiler.
"""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import attention as bench
from sparseattn.clustering.triton_kmeans import TritonKMeans
from sparseattn.interfaces import BlockMask
from sparseattn.kernels.gluon_ws_attention import GluonWSBlockSparse


def main():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", default="all", help="'all', or comma-separated target numbers (0-4, order above)")
    args = parser.parse_args()
    shape = bench.SHAPES["wan"]
    q, k, v = bench.clustered_qkv(shape)
    b, h, n, d = q.shape
    layout, (cq, ck) = bench.kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=20)
    mask = bench.select_by_density(layout, 0.15, shape["text"])
    kern = GluonWSBlockSparse()
    qp, kp, vp = kern.permute(q, k, v, layout)
    plan = kern.plan(layout, mask, qp)
    one_kern = GluonWSBlockSparse()
    one = bench.fixed_block_layout(b, h, n, d, n)
    full = BlockMask(torch.ones(b, h, 1, 1, dtype=torch.bool, device="cuda"))
    one_plan = one_kern.plan(one, full, q)
    km = TritonKMeans()
    xq, xk = q.reshape(b * h, n, d), k.reshape(b * h, n, d)

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    targets = [
        ("SDPA cuDNN dense", cudnn),
        ("gluon_ws, one block of all tokens", lambda: one_kern.run(one_plan, q, k, v)),
        ("gluon_ws, k-means layout 15% (main pass, tail launch)", lambda: kern.run(plan, qp, kp, vp)),
        ("k-means k, 1,000 clusters, one iteration", lambda: km.fit(xk, ck, 1)),
        ("k-means q, 300 clusters, one iteration", lambda: km.fit(xq, cq, 1)),
    ]
    if args.targets != "all":
        targets = [targets[int(i)] for i in args.targets.split(",")]
    computed, useful = kern.computed_pairs(plan).tolist()
    print(f"{torch.cuda.get_device_name()}; 15% plan: {useful / (b * h * n * n):.1%} density, waste "
          f"{1 - useful / computed:.1%}")
    for name, fn in targets:
        ms = bench.timed(fn, 600)
        print(f"{name}: {ms:.2f} ms (CUDA events, outside the profiler)", flush=True)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for i, (name, fn) in enumerate(targets):
        print(f"profiled target {i}: {name}", flush=True)
        fn()
        torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
