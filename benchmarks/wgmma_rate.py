"""The tensor-core ceiling of the k-means assignment's product loop, without its copies, barriers and atomics: each
program loads one point tile (BLOCK_P × 128) and one centroid tile (BLOCK_C × 128, bf16) into shared memory once and
then runs ``--iters`` products of them on the tensor cores (wgmma, the points as the register operand as in
``clustering/gluon_kmeans.py``), one product in flight per program, as the assignment issues them.

    PYTHONPATH=$PWD:$PWD/benchmarks python3 benchmarks/wgmma_rate.py [--iters 4000]

Modes: ``chain`` accumulates every product into one accumulator (the products alone); ``rows`` is the assignment's
schedule (issue product t+1 into a fresh accumulator, fold product t with ‖c‖² and the packed index into a running
minimum per point and thread on the ALUs, wait), with no loads at all; ``fold`` the same with the running minimum per
(point, column slot) and the tile number in 4 low bits, the assignment until the seventh session (in this
microbenchmark ptxas spills it: 21 local loads and stores a tile). Rows: shape, mode, programs per SM; time by CUDA
events (median of 5), TFLOP/s counting 2·P·C·D per product, and the share of the dense bf16 rate that an 8192³
torch.matmul reaches in the same run. The difference between the ``rows`` row and the assignment's measured time is
what the copies, ‖c‖² loads, barriers, label stores and atomics cost.
"""
from __future__ import annotations

import argparse

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

import attention as bench
from sparseattn.clustering.gluon_kmeans import _pack, _row_min


@gluon.jit
def _fold_rows(s, csq, slots, t, BLOCK_P: gl.constexpr, BLOCK_C: gl.constexpr):
    """The assignment's own fold (``_pack`` and ``_row_min`` of clustering/gluon_kmeans.py), 10 index bits; the tile
    number wraps at 16 so the packed index stays in them."""
    return _row_min(_pack(s, csq, t & 15, slots, True, 10, BLOCK_C), BLOCK_P, BLOCK_C)


@gluon.jit
def _wgmma_rate_kernel(X, C, OUT, ITERS, BLOCK_P: gl.constexpr, BLOCK_C: gl.constexpr, BLOCK_D: gl.constexpr,
                       FOLD: gl.constexpr, ROWS: gl.constexpr = False):
    NW: gl.constexpr = gl.num_warps()
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1],
                                                         instr_shape=[16, BLOCK_C, 16])
    ld_layout: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [NW, 1], [1, 0])
    smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    x_smem = gl.allocate_shared_memory(X.dtype.element_ty, [BLOCK_P, BLOCK_D], smem_layout)
    c_smem = gl.allocate_shared_memory(C.dtype.element_ty, [BLOCK_C, BLOCK_D], smem_layout)
    cols = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, ld_layout))
    prow = gl.arange(0, BLOCK_P, layout=gl.SliceLayout(1, ld_layout))
    crow = gl.arange(0, BLOCK_C, layout=gl.SliceLayout(1, ld_layout))
    x_smem.store(gl.load(X + prow[:, None] * BLOCK_D + cols[None, :]))
    c_smem.store(gl.load(C + crow[:, None] * BLOCK_D + cols[None, :]))
    fence_async_shared()
    gl.thread_barrier()
    xa = x_smem.load(gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2))
    zeros = gl.zeros([BLOCK_P, BLOCK_C], gl.float32, acc_layout)
    slots = gl.arange(0, BLOCK_C, layout=gl.SliceLayout(0, acc_layout))
    csq = gl.load(OUT + slots)  # ‖c‖², any values: OUT holds zeros on entry
    if ROWS:  # the running minimum per row and thread: each thread's own columns reduced every tile
        tok = warpgroup_mma(xa, c_smem.permute((1, 0)), zeros, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=[tok])
        best = _fold_rows(s, csq, slots, 0, BLOCK_P, BLOCK_C)
        for t in range(1, ITERS):
            tok = warpgroup_mma(xa, c_smem.permute((1, 0)), zeros, use_acc=False, is_async=True)
            best = gl.minimum(best, _fold_rows(s, csq, slots, t, BLOCK_P, BLOCK_C))
            s = warpgroup_mma_wait(0, deps=[tok])
        acc = gl.convert_layout(gl.minimum(best, _fold_rows(s, csq, slots, 0, BLOCK_P, BLOCK_C)),
                                gl.BlockedLayout([1, 1], [8, 4], [NW, 1], [1, 0]))
    elif FOLD:
        tok = warpgroup_mma(xa, c_smem.permute((1, 0)), zeros, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=[tok])
        best = gl.full_like(zeros, float("inf"))
        for t in range(0, ITERS - 1):
            tok = warpgroup_mma(xa, c_smem.permute((1, 0)), zeros, use_acc=False, is_async=True)
            dist = s + csq[None, :]
            bits = dist.to(gl.int32, bitcast=True)
            best = gl.minimum(best, ((bits & ~15) | (t & 15)).to(gl.float32, bitcast=True))
            s = warpgroup_mma_wait(0, deps=[tok])
        acc = gl.minimum(best, s)
    else:
        acc = zeros
        for t in range(0, ITERS):
            tok = warpgroup_mma(xa, c_smem.permute((1, 0)), acc, use_acc=True, is_async=True)
            acc = warpgroup_mma_wait(0, deps=[tok])
    total = gl.sum(gl.sum(acc, 1), 0)
    gl.atomic_add(OUT + BLOCK_C, total)  # keeps the products live


def run(block_p, block_c, fold, programs, iters, rows=False):
    x = torch.randn(block_p, 128, device="cuda").to(torch.bfloat16) * 0.01
    c = torch.randn(block_c, 128, device="cuda").to(torch.bfloat16) * 0.01
    out = torch.zeros(block_c + 1, device="cuda")
    ms = bench.time_cuda(lambda: _wgmma_rate_kernel[(programs,)](x, c, out, iters, BLOCK_P=block_p, BLOCK_C=block_c,
                                                                  BLOCK_D=128, FOLD=fold, ROWS=rows, num_warps=4),
                         reps=5, warmup=1)
    return ms, 2.0 * block_p * block_c * 128 * iters * programs / ms / 1e9


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=4000)
    args = parser.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    end.synchronize()
    dense = 2 * 8192 ** 3 * 10 / start.elapsed_time(end) / 1e9
    print(f"{torch.cuda.get_device_name()}, {sms} SMs; torch.matmul 8192^3 bf16: {dense:.0f} TFLOP/s")
    print(f"{'points x centroids':20} {'mode':6} {'programs/SM':>11} {'ms':>8} {'TFLOP/s':>8} {'of matmul':>9}")
    for block_p, block_c, mode, per_sm in ((128, 64, "rows", 2), (128, 64, "fold", 2), (128, 64, "chain", 2),
                                           (128, 64, "chain", 1), (128, 64, "chain", 3), (128, 128, "chain", 1),
                                           (64, 128, "chain", 2), (64, 256, "chain", 1)):
        ms, tf = run(block_p, block_c, mode == "fold", per_sm * sms, args.iters, rows=mode == "rows")
        print(f"{block_p:>8} x {block_c:<9} {mode:6} {per_sm:11d} {ms:8.3f} {tf:8.0f} {tf / dense:9.1%}", flush=True)


if __name__ == "__main__":
    main()
