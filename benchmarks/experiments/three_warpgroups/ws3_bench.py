"""Experiment (H100): gluon_ws's one-item-per-program main pass with three consumer warpgroups (192 query
rows) and 64-key tiles (gluon_ws3.py), against gluon_ws (persistent default and one-item-per-program), at the
Wan shape: one block, k-means layouts 10/15/30%. The plan is kernel triton's with block_m 192: remainders ≤ 64 rows go
to the Triton tail launch (or, with tail_block_m=0, into 192-row items whose idle warpgroups only keep the ring's
counts); "ws3 persistent (draft)": gluon_ws3p.py, every row in items of 1-3 granules, no tail launch. Runs
s9 1-2 (H100): docs/performance.md, "What limits the kernel".

    PYTHONPATH=$PWD:$PWD/benchmarks:$PWD/benchmarks/experiments/three_warpgroups \\
        timeout 330 python3 benchmarks/experiments/three_warpgroups/ws3_bench.py [--rounds 2] [--stages 4]
        [--regs 152,56] [--skip-draft | --draft-only] [--only NAMES]
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace

import torch

import attention as bench
from gluon_ws_dev import run_case
from gluon_ws3 import _gluon_ws3_fwd_kernel
from sparseattn.interfaces import BlockMask
from sparseattn.kernels.gluon_attention import GluonBlockSparse
from sparseattn.kernels.gluon_ws_attention import GluonWSBlockSparse
from sparseattn.kernels.triton_attention import LOG2E, FUSE_MODES, TritonBlockSparse


@dataclass
class GluonWS3(GluonWSBlockSparse):
    block_m: int = 192
    block_n: int = 64
    persistent: bool = False
    stages: int = 4
    consumer_regs: int = 152
    producer_regs: int = 56

    def __post_init__(self) -> None:  # the parents insist on power-of-two / 128-row tiles
        assert self.block_m == 192 and self.block_n == 64 and self.fuse_permutation in FUSE_MODES

    def run(self, plan, q, k, v):
        main = plan.passes[0]
        idle = replace(main, block=main.block[:0], row_tile=main.row_tile[:0], block_m=64, block_n=64)
        out = super(GluonBlockSparse, self).run(replace(plan, passes=[idle, *plan.passes[1:]]), q, k, v)
        b, h, n, d = q.shape
        items = main.block.numel()
        if items:
            _gluon_ws3_fwd_kernel[(items,)](
                q, k, v, out, plan.q_rows if plan.q_rows is not None else main.block,
                plan.q_off, plan.lens, plan.list_off, plan.lists, main.block, main.row_tile,
                LOG2E / math.sqrt(d), n, h, plan.num_q_blocks, main.slots,
                *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
                BLOCK_M=192, BLOCK_N=64, HEAD_DIM=d, HAS_Q_ROWS=plan.q_rows is not None, EARLY_RESCALE=True,
                NSTAGES=self.stages, CONSUMER_REGS=self.consumer_regs, PRODUCER_REGS=self.producer_regs,
                num_warps=4,
            )
        return out

    def computed_pairs(self, plan, real_rows=False):
        """As the parent's, with a main item's rows rounded up to whole 64-row warpgroups (idle ones compute none)."""
        q_sizes = (plan.q_off[:, 1:] - plan.q_off[:, :-1]).to(torch.float64)
        lens = plan.lens.to(torch.float64)
        computed = torch.zeros((), dtype=torch.float64, device=lens.device)
        for index, work in enumerate(plan.passes):
            valid = work.block >= 0
            bh_index = torch.arange(work.block.numel(), device=lens.device) // work.slots
            blk = work.block.clamp_min(0).long()
            keys = lens[bh_index, blk]
            rows = (q_sizes[bh_index, blk] - work.row_tile.to(torch.float64) * work.block_m).clamp(0, work.block_m)
            if not real_rows:
                rows = torch.ceil(rows / 64) * 64 if index == 0 else torch.full_like(rows, float(work.block_m))
            computed += (valid * rows * torch.ceil(keys / work.block_n) * work.block_n).sum()
        return torch.stack([computed, (q_sizes * lens).sum()])


@dataclass
class GluonWS3P(GluonWS3):
    """The persistent draft (gluon_ws3p.py): every query row in items of 1-3 granules, no tail launch."""

    def plan(self, layout, mask, q):
        from gluon_ws3p import granule_items
        from sparseattn.kernels.triton_attention import WorkList

        plan = TritonBlockSparse.plan(self, layout, mask, q)  # key lists; its passes are replaced below
        q_sizes = plan.q_off[:, 1:] - plan.q_off[:, :-1]
        block, packed, slots = granule_items(q_sizes.long(), plan.lens, q.shape[2])
        return replace(plan, passes=[WorkList(block, packed, slots, 64, 64)])

    def run(self, plan, q, k, v):
        from gluon_ws3p import _gluon_ws3_persistent_kernel
        from sparseattn.kernels.gluon_ws_attention import _sm_count

        b, h, n, d = q.shape
        out = torch.empty(b, h, n, d, dtype=q.dtype, device=q.device)
        work = plan.passes[0]
        items = work.block.numel()
        if items == 0:
            return out
        _gluon_ws3_persistent_kernel[(min(items, _sm_count(q.device)),)](
            q, k, v, out, plan.q_rows if plan.q_rows is not None else work.block,
            plan.q_off, plan.lens, plan.list_off, plan.lists, work.block, work.row_tile,
            torch.zeros(1, dtype=torch.int32, device=q.device),
            LOG2E / math.sqrt(d), n, h, plan.num_q_blocks, work.slots, items,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            BLOCK_N=64, HEAD_DIM=d, HAS_Q_ROWS=plan.q_rows is not None, EARLY_RESCALE=True, NSTAGES=self.stages,
            CONSUMER_REGS=self.consumer_regs, PRODUCER_REGS=self.producer_regs, num_warps=4,
        )
        return out

    def computed_pairs(self, plan, real_rows=False):
        work = plan.passes[0]
        valid = work.block >= 0
        bh_index = torch.arange(work.block.numel(), device=work.block.device) // work.slots
        blk = work.block.clamp_min(0).long()
        keys = plan.lens[bh_index, blk].to(torch.float64)
        q_sizes = (plan.q_off[:, 1:] - plan.q_off[:, :-1]).to(torch.float64)
        first, granules = (work.row_tile // 4).to(torch.float64), (work.row_tile % 4).to(torch.float64)
        rows = (q_sizes[bh_index, blk] - first * 64).clamp(min=0).minimum(granules * 64)
        if not real_rows:
            rows = torch.ceil(rows / 64) * 64
        computed = (valid * rows * torch.ceil(keys / 64) * 64).sum()
        return torch.stack([computed, (q_sizes * plan.lens.to(torch.float64)).sum()])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--regs", default="152,56")
    parser.add_argument("--densities", default="0.15,0.10,0.30")
    parser.add_argument("--shape", default="wan")
    parser.add_argument("--skip-draft", action="store_true",
                        help="leave out the persistent draft (run it in its own process under `timeout`: a barrier "
                             "bug there hangs the GPU)")
    parser.add_argument("--draft-only", action="store_true", help="triton (the error reference) and the draft only")
    parser.add_argument("--only", default="", help="comma-separated name substrings (triton always runs)")
    args = parser.parse_args()
    consumer_regs, producer_regs = (int(x) for x in args.regs.split(","))
    shape = bench.SHAPES[args.shape]
    q, k, v = bench.clustered_qkv(shape)
    b, h, n, d = q.shape
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_ms = bench.timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), 2500)
    cudnn_tf = 4 * d * b * h * n * n / cudnn_ms / 1e9
    bench.log(f"{torch.cuda.get_device_name()}; {args.shape}; cuDNN dense {cudnn_ms:.2f} ms {cudnn_tf:.0f} TFLOP/s")
    ws3 = dict(stages=args.stages, consumer_regs=consumer_regs, producer_regs=producer_regs)
    kernels = [("triton", TritonBlockSparse()), ("gluon_ws one per item", GluonWSBlockSparse(persistent=False)),
               ("gluon_ws (persistent)", GluonWSBlockSparse()),
               ("ws3 one per item, tails", GluonWS3(**ws3)),
               ("ws3 one per item, no tails", GluonWS3(tail_block_m=0, **ws3)),
               ("ws3 persistent (draft)", GluonWS3P(**ws3))][: 5 if args.skip_draft else 6]
    if args.draft_only:
        kernels = [kernels[0], kernels[-1]]
    if args.only:
        kernels = [kernels[0]] + [kv for kv in kernels[1:] if any(o in kv[0] for o in args.only.split(","))]
    rows = [("SDPA cudnn dense", cudnn_ms, cudnn_tf, 1.0, 0.0, 0.0, True)]
    one = bench.fixed_block_layout(b, h, n, d, n)
    full = BlockMask(torch.ones(b, h, 1, 1, dtype=torch.bool, device="cuda"))
    run_case("one block", kernels, q, k, v, one, full, d, rows, cudnn_tf, 2000, args.rounds, True)
    from sparseattn.clustering.triton_kmeans import TritonKMeans

    layout, _ = bench.kmeans_layout(q, k, shape, TritonKMeans(), iters_cold=20)
    for density in (float(x) for x in args.densities.split(",")):
        mask = bench.select_by_density(layout, density, shape["text"])
        run_case(f"k-means {density:.0%}", kernels, q, k, v, layout, mask, d, rows, cudnn_tf, 1500, args.rounds, True)
    bench.log(f"\n{'method':44} {'time ms':>9} {'eff TFLOP/s':>12} {'vs cuDNN':>9} {'waste':>6} {'err vs triton':>14}")
    for name, ms, tf, ratio, waste, err, finite in rows:
        bench.log(f"{name:44} {ms:9.2f} {tf:12.0f} {ratio:9.3f} {waste:6.1%} {err:14.2e}"
                  + ("" if finite else "  NOT FINITE"))


if __name__ == "__main__":
    main()
