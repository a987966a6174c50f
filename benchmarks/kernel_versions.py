"""Time two versions of the Triton attention kernel side by side on the same data (same process, same card).

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/kernel_versions.py OLD_FILE

OLD_FILE is an earlier kernels/triton_attention.py (e.g. `git show REV:kernels/triton_attention.py` with its
@register line removed); it is loaded as a module of sparseattn.kernels. Both run on permuted q, k, v
(fuse_permutation "none" for the current one, which is what the old one did), at 15% density and on one block
holding every token, at the Wan 2.1 720p shape; cuDNN dense attention is timed in the same run.
"""
import importlib.util
import sys

import torch

import attention as bench
from sparseattn.interfaces import BlockMask
from sparseattn.kernels.triton_attention import TritonBlockSparse


def main():
    spec = importlib.util.spec_from_file_location("sparseattn.kernels._old_triton_attention", sys.argv[1])
    old_module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old_module  # dataclasses look their module up there
    spec.loader.exec_module(old_module)
    shape = bench.SHAPES["wan"]
    q, k, v = bench.clustered_qkv(shape)
    b, h, n, d = q.shape
    cudnn = bench.dense_times(q, k, v)["cudnn"]
    from sparseattn.clustering.triton_kmeans import TritonKMeans

    layout, _ = bench.kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=20)
    mask = bench.select_by_density(layout, 0.15, 0)
    one = bench.fixed_block_layout(b, h, n, d, n)
    full = BlockMask(torch.ones(b, h, 1, 1, dtype=torch.bool, device="cuda"))
    print(f"cuDNN dense {cudnn:.2f} ms")
    for label, kern in (("old", old_module.TritonBlockSparse()), ("new", TritonBlockSparse(fuse_permutation="none")),
                        ("new, default (q through its order)", TritonBlockSparse())):
        for case, lay, msk in (("15%", layout, mask), ("one block", one, full)):
            qp, kp, vp = kern.permute(q, k, v, lay)
            plan = kern.plan(lay, msk, qp)
            ms = bench.timed(lambda: kern.run(plan, qp, kp, vp), 2500)
            print(f"{label:38} {case:10} {ms:8.2f} ms  {cudnn / ms:5.2f}x cuDNN time")
            del qp, kp, vp, plan
            kern._buffers.clear()


if __name__ == "__main__":
    main()
