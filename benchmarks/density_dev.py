"""The density budget's two backends side by side: torch (argsort) and Triton (radix select), at the Wan 2.1 and
HunyuanVideo 720p shapes on k-means layouts of benchmarks/attention.py's data, with centroid scores.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/density_dev.py [--copies 4,16,32]

Per shape and density: ms per select (CUDA events, attention.timed: launches issued from Python included), whether
the masks are equal, and for the Triton backend each ``copies`` value (copies of the first histogram level, which
spread same-bucket atomic adds). Then a profile of one Triton select (GPU time per kernel).
"""
from __future__ import annotations

import argparse

import torch

import attention as bench
from sparseattn.budgets import FixedDensity
from sparseattn.clustering.triton_kmeans import TritonKMeans
from sparseattn.identifiers import CentroidIdentifier
from sparseattn.kernels.triton_density import density_mask


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", default="4,16,32")
    parser.add_argument("--densities", default="0.10,0.15,0.30")
    args = parser.parse_args()
    copies = [int(c) for c in args.copies.split(",")]
    bench.log(f"{torch.cuda.get_device_name()}")
    for key in ("wan", "hunyuan"):
        shape = bench.SHAPES[key]
        q, k, _ = bench.clustered_qkv(shape)
        layout, _ = bench.kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=20)
        del q, k
        scores = CentroidIdentifier().score(None, None, layout)
        bench.log(f"\n## {shape['name']}: scores {tuple(scores.shape)} {scores.dtype}")
        bench.log(f"{'density':>8} {'backend':24} {'ms':>8} {'same mask as torch':>19}")
        for density in (float(x) for x in args.densities.split(",")):
            reference = FixedDensity(density, backend="torch")
            expected = reference.select(scores, layout).selected
            ms = bench.timed(lambda: reference.select(scores, layout), 500)
            bench.log(f"{density:8.2f} {'torch (argsort)':24} {ms:8.3f}")
            for c in copies:
                def select(c=c):
                    return density_mask(scores, layout.q_sizes, layout.k_sizes, density, copies=c)
                same = torch.equal(select(), expected)
                ms = bench.timed(select, 500)
                bench.log(f"{density:8.2f} {f'triton, copies {c}':24} {ms:8.3f} {str(same):>19}")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            FixedDensity(0.15).select(scores, layout)
            torch.cuda.synchronize()
        bench.log(prof.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=40))


if __name__ == "__main__":
    main()
