"""The Gluon k-means assignment against an earlier revision's kernel, side by side in one process
(``benchmarks/kmeans_dev.py``'s rounds, data and checks, with one more variant, ``baseline``):

    git show d2d7bda:clustering/gluon_kmeans.py > /tmp/gluon_kmeans_old.py
    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/kmeans_baseline.py /tmp/gluon_kmeans_old.py \\
        --rounds 6 --variants "default,baseline"

The old file must have the launch signature of revisions up to d2d7bda (``TILE_BITS``: the tile number in the low
bits of the distance, one program per SM pair, persistent, points as the register operand). Run s7 3 used it to time
the seventh session's assignment against d2d7bda's (docs/performance.md).
"""
from __future__ import annotations

import importlib.util
import sys

import torch
import triton

import kmeans_dev
from sparseattn.clustering import triton_kmeans


def main():
    spec = importlib.util.spec_from_file_location("gluon_kmeans_baseline", sys.argv.pop(1))
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)

    class BaselineKMeans(triton_kmeans.TritonKMeans):
        """TritonKMeans whose Gluon assignment is the old file's kernel (its persistent default launch)."""

        def _launch_gluon(self, x, cd, csq, labels, sums, counts, shift, it, tol, max_it, low_bits, fold):
            groups, n, d = x.shape
            c = cd.shape[1]
            bp, bc, warps = 128, 64, 4
            props = torch.cuda.get_device_properties(x.device)
            smem = (bp + int(old.STAGES) * bc) * d * x.element_size() + 2048
            per_sm = min(props.shared_memory_per_multiprocessor // smem, 65536 // (32 * warps * 256))
            grid = (min(triton.cdiv(n, bp) * groups, props.multi_processor_count * max(1, per_sm)),)
            old._gluon_assign_kernel[grid](
                x, cd, csq, labels, sums, counts, shift, it, float(tol), n, c, groups, x.stride(0), x.stride(1),
                BLOCK_P=bp, BLOCK_C=bc, BLOCK_D=d, MAX_IT=max_it, USE_TOL=tol > 0,
                TILE_BITS=max(1, (triton.cdiv(c, bc) - 1).bit_length()), FOLD=fold, ACCUMULATE=self._accumulate,
                COPIES=sums.shape[0], PERSISTENT=True, A_REGS=True, num_warps=warps)

    def factory(**kw):
        return BaselineKMeans(**kw) if kw.pop("_baseline", False) else triton_kmeans.TritonKMeans(**kw)

    kmeans_dev.TritonKMeans = factory
    kmeans_dev.VARIANTS["baseline"] = dict(_baseline=True)
    kmeans_dev.main()


if __name__ == "__main__":
    main()
