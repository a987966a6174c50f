"""Experiment (not a registered kernel; timed in runs s9 1-2: no faster than gluon_ws, −4.4 to +2.2% on k-means
layouts): the persistent gluon_ws main pass with THREE consumer warpgroups (items of 1-3 granules of 64 query rows)
and 64-key tiles, ping-pong off, dynamic schedule. Every query row is in this kernel (no Triton tail launch): a query
block of g granules becomes ceil(g/3) items of balanced size (g = 4: 2 + 2; 5: 3 + 2). A consumer warpgroup without
rows in an item only waits on q_full and each tile's full barrier and arrives on q_empty / empty, so every barrier
keeps one count per warpgroup.

Plan: `granule_items` (below, a pure function, checked against brute force on the CPU by
`python gluon_ws3p.py --check`). Work item w: WORK_I[w] = query block (−1 unused slot), WORK_R[w] = first
granule · 4 + granules. Compile: `python gluon_ws3p.py` (ptxas registers and spills, as gluon_ws3.py).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # gluon_ws3 beside this file

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from gluon_ws3 import N_WG, PRODUCER_WARPS, WG_ROWS, _gather_tile64, _step3, _wait_stage3, ptxas_report
from sparseattn.kernels.gluon_attention import _softmax
from sparseattn.kernels.gluon_ws_attention import _claim, _publish, _read_item
from triton.experimental.gluon.language.nvidia.hopper import async_copy

GRANULE = 64


def granule_items(q_sizes: torch.Tensor, lens: torch.Tensor, n: int, max_granules: int = 3):
    """Work items [BH·slots] (block, first granule · 4 + granules) for query blocks of q_sizes [BH, Mq] rows: each
    block of g = ceil(rows/64) granules in ceil(g/3) items of balanced size; head-major, longest key list first
    within a head (as kernel triton's work lists); slots per head fixed from shapes (2·Mq + ceil(N/192)), so no
    host synchronisation."""
    bh, mq = q_sizes.shape
    int32 = torch.int32
    g = (q_sizes + GRANULE - 1) // GRANULE
    m = (g + max_granules - 1) // max_granules  # items per block (0 for an empty block)
    slots = 2 * mq + -(-n // (GRANULE * max_granules))
    incl = m.cumsum(-1)
    t = torch.arange(slots, device=q_sizes.device).expand(bh, slots)
    blk = torch.searchsorted(incl, t.contiguous(), right=True)
    valid = blk < mq
    blk_c = blk.clamp(max=mq - 1)
    j = t - (incl.gather(1, blk_c) - m.gather(1, blk_c))  # item index within its block
    gb, mb = g.gather(1, blk_c), m.gather(1, blk_c).clamp(min=1)
    base, extra = gb // mb, gb % mb
    granules = base + (j < extra).long()
    first = j * base + torch.minimum(j, extra)
    cost = torch.where(valid, lens.gather(1, blk_c).long(), torch.full_like(j, -1))
    order = torch.argsort(cost, dim=-1, descending=True)
    block = torch.where(valid, blk, torch.full_like(blk, -1)).gather(1, order)
    packed = (first * 4 + granules).gather(1, order)
    return block.to(int32).reshape(-1).contiguous(), packed.to(int32).reshape(-1).contiguous(), slots


def _check_granule_items():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        bh, mq = 2, int(torch.randint(1, 9, (1,), generator=gen))
        q_sizes = torch.randint(0, 700, (bh, mq), generator=gen)
        q_sizes[:, 0] = 0 if mq > 1 else q_sizes[:, 0]
        n = int(q_sizes.sum(-1).max()) + 1
        lens = torch.randint(0, 1000, (bh, mq), generator=gen)
        block, packed, slots = granule_items(q_sizes, lens, n)
        for h in range(bh):
            covered = {}
            rows = []
            for w in range(h * slots, (h + 1) * slots):
                b = int(block[w])
                if b < 0:
                    continue
                first, gran = int(packed[w]) // 4, int(packed[w]) % 4
                assert 1 <= gran <= 3
                start = first * GRANULE
                end = min(int(q_sizes[h, b]), start + gran * GRANULE)
                assert start < end, "an item without rows"
                assert end - start > (gran - 1) * GRANULE, "a warpgroup of the item would be idle"
                for r in range(start, end):
                    assert (b, r) not in covered
                    covered[(b, r)] = 1
                rows.append(int(lens[h, b]))
            assert len(covered) == int(q_sizes[h].sum()), "every query row exactly once"
            assert rows == sorted(rows, reverse=True)
            g = (q_sizes[h] + 63) // 64
            assert len(rows) == int(((g + 2) // 3).sum()), "ceil(g/3) items a block"
    print("granule_items: ok")


# ---------------------------------------------------------------------------------------------------- producer
@gluon.jit
def _item_rows(w, WORK_I, WORK_R, Q_OFF, SLOTS, MQ):
    """Work item w: (block, bh, q_start, q_end) from WORK_R = first granule · 4 + granules."""
    blk = gl.load(WORK_I + w)
    packed = gl.load(WORK_R + w)
    bh = w // SLOTS
    q_start = gl.load(Q_OFF + bh * (MQ + 1) + blk) + (packed // 4) * WG_ROWS
    q_end = gl.minimum(gl.load(Q_OFF + bh * (MQ + 1) + blk + 1), q_start + (packed % 4) * WG_ROWS)
    return blk, bh, q_start, q_end


@gluon.jit
def _gather_q3p(q_smem, q_full, Qh, Q_ROWS, q_start, q_end, row_base, sqn, offs_d, HAS_Q_ROWS: gl.constexpr,
                ld: gl.constexpr):
    for w in gl.static_range(N_WG):
        q_pos = q_start + w * WG_ROWS + gl.arange(0, WG_ROWS, layout=gl.SliceLayout(1, ld))
        q_live = q_pos < q_end
        if HAS_Q_ROWS:
            q_pos = gl.load(Q_ROWS + row_base + q_pos, mask=q_live, other=0)
        q_ptr = Qh + q_pos[:, None].to(gl.int64) * sqn + offs_d[None, :]
        async_copy.async_copy_global_to_shared(q_smem.index(w), q_ptr, mask=q_live[:, None])
    async_copy.mbarrier_arrive(q_full, increment_count=False)


@gluon.jit
def _producer3p(q_smem, k_smem, v_smem, q_full, q_empty, full, empty, item_smem, item_full, Q, K, V, Q_ROWS, Q_OFF,
                LENS, LIST_OFF, LIST, WORK_I, WORK_R, COUNTER, N, H, MQ, SLOTS, N_ITEMS,
                sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
                BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, HAS_Q_ROWS: gl.constexpr, NSTAGES: gl.constexpr,
                CHUNKS: gl.constexpr, ROW_THREADS: gl.constexpr):
    TPR: gl.constexpr = ROW_THREADS
    ld: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[32 // TPR, TPR],
                                        warps_per_cta=[gl.num_warps(), 1], order=[1, 0])
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, ld))
    g = 0
    it = 0
    w = _claim(COUNTER, WORK_I, N_ITEMS)
    while w < N_ITEMS:
        _publish(item_smem, item_full, it, w)
        blk, bh, q_start, q_end = _item_rows(w, WORK_I, WORK_R, Q_OFF, SLOTS, MQ)
        b = (bh // H).to(gl.int64)
        h = (bh % H).to(gl.int64)
        L = gl.load(LENS + bh * MQ + blk)
        lst = LIST + gl.load(LIST_OFF + bh * MQ + blk)
        Kh = K + b * skb + h * skh
        Vh = V + b * svb + h * svh
        n_tiles = gl.maximum((L + BLOCK_N - 1) // BLOCK_N, 1)
        _gather_tile64(0, g, k_smem, v_smem, full, empty, Kh, Vh, lst, L, skn, svn, offs_d, BLOCK_N, NSTAGES,
                       CHUNKS, ld)
        mbarrier.wait(q_empty, (it & 1) ^ 1)
        _gather_q3p(q_smem, q_full, Q + b * sqb + h * sqh, Q_ROWS, q_start, q_end, bh.to(gl.int64) * N, sqn, offs_d,
                    HAS_Q_ROWS, ld)
        for t in range(1, n_tiles):
            _gather_tile64(t, g + t, k_smem, v_smem, full, empty, Kh, Vh, lst, L, skn, svn, offs_d, BLOCK_N,
                           NSTAGES, CHUNKS, ld)
        g += n_tiles
        it += 1
        w = _claim(COUNTER, WORK_I, N_ITEMS)
    _publish(item_smem, item_full, it, N_ITEMS)


# ---------------------------------------------------------------------------------------------------- consumers
@gluon.jit
def _attend3p(WG: gl.constexpr, g, it, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, Oh, Q_ROWS, q_start,
              q_end, L, row_base, son, qk_scale, HAS_Q_ROWS: gl.constexpr, EARLY_RESCALE: gl.constexpr,
              BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, NSTAGES: gl.constexpr):
    """gluon_ws's _attend (persistent: ring position g, item phase it, q_empty after the last score product),
    ping-pong off, NSTAGES a parameter."""
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    q = q_smem.index(WG)
    _wait_stage3(full, g, NSTAGES)
    s_tok = warpgroup_mma(q, k_smem.index(g % NSTAGES).permute((1, 0)),
                          gl.zeros([WG_ROWS, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=[s_tok])
    m_i = gl.full([WG_ROWS], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([WG_ROWS], gl.float32, gl.SliceLayout(1, s_layout))
    p, m_i, l_i, alpha = _softmax(s, m_i, l_i, qk_scale, 0, L, True, BLOCK_N, s_layout)
    p_cur = gl.convert_layout(p.to(dtype), p_layout)
    o = gl.zeros([WG_ROWS, HEAD_DIM], gl.float32, o_layout)
    alpha_o = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
    n_tiles = gl.maximum((L + BLOCK_N - 1) // BLOCK_N, 1)
    n_full = L // BLOCK_N
    for j in range(1, n_full):
        o, m_i, l_i, p_cur, alpha_o = _step3(j, g + j, q, k_smem, v_smem, full, empty, L, o, m_i, l_i, p_cur,
                                             alpha_o, qk_scale, False, EARLY_RESCALE, BLOCK_N, NSTAGES,
                                             s_layout, o_layout, p_layout)
    if (n_full >= 1) & (n_full < n_tiles):
        o, m_i, l_i, p_cur, alpha_o = _step3(n_full, g + n_full, q, k_smem, v_smem, full, empty, L, o, m_i, l_i,
                                             p_cur, alpha_o, qk_scale, True, EARLY_RESCALE, BLOCK_N, NSTAGES,
                                             s_layout, o_layout, p_layout)
    mbarrier.arrive(q_empty)  # every score product of this item has retired: Q may be overwritten
    last = g + n_tiles - 1
    if EARLY_RESCALE:
        o = o * alpha_o[:, None]
    o_tok = warpgroup_mma(p_cur, v_smem.index(last % NSTAGES), o, is_async=True)
    o, p_cur = warpgroup_mma_wait(0, deps=[o_tok, p_cur])
    mbarrier.arrive(empty.index(last % NSTAGES))
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
    l_safe = gl.where(l_o > 0.0, l_o, 1.0)
    out = (o / l_safe[:, None]).to(dtype)
    offs_m = q_start + WG * WG_ROWS + gl.arange(0, WG_ROWS, layout=gl.SliceLayout(1, o_layout))
    mrow = offs_m < q_end
    if HAS_Q_ROWS:
        offs_m = gl.load(Q_ROWS + row_base + offs_m, mask=mrow, other=0)
    offs_do = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    gl.store(Oh + offs_m[:, None].to(gl.int64) * son + offs_do[None, :], out, mask=mrow[:, None])


@gluon.jit
def _consumer3p(WG: gl.constexpr, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, item_smem, item_full, O,
                Q_ROWS, Q_OFF, LENS, WORK_I, WORK_R, qk_scale, N, H, MQ, SLOTS, N_ITEMS, sob, soh, son,
                BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, HAS_Q_ROWS: gl.constexpr,
                EARLY_RESCALE: gl.constexpr, NSTAGES: gl.constexpr):
    g = 0
    it = 0
    w = _read_item(item_smem, item_full, it)
    while w < N_ITEMS:
        blk, bh, q_start, q_end = _item_rows(w, WORK_I, WORK_R, Q_OFF, SLOTS, MQ)
        L = gl.load(LENS + bh * MQ + blk)
        n_tiles = gl.maximum((L + BLOCK_N - 1) // BLOCK_N, 1)
        mbarrier.wait(q_full, it & 1)
        if q_start + WG * WG_ROWS < q_end:
            b = (bh // H).to(gl.int64)
            h = (bh % H).to(gl.int64)
            _attend3p(WG, g, it, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, O + b * sob + h * soh,
                      Q_ROWS, q_start, q_end, L, bh.to(gl.int64) * N, son, qk_scale, HAS_Q_ROWS, EARLY_RESCALE,
                      BLOCK_N, HEAD_DIM, NSTAGES)
        else:  # no rows for this warpgroup: keep one count per warpgroup on every barrier of the item
            mbarrier.arrive(q_empty)
            for j in range(n_tiles):
                mbarrier.wait(full.index((g + j) % NSTAGES), ((g + j) // NSTAGES) & 1)
                mbarrier.arrive(empty.index((g + j) % NSTAGES))
        g += n_tiles
        it += 1
        w = _read_item(item_smem, item_full, it)


# ---------------------------------------------------------------------------------------------------- kernel
@gluon.jit
def _gluon_ws3_persistent_kernel(
    Q, K, V, O, Q_ROWS,
    Q_OFF, LENS, LIST_OFF, LIST, WORK_I, WORK_R, COUNTER,
    qk_scale, N, H, MQ, SLOTS, N_ITEMS,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, HAS_Q_ROWS: gl.constexpr, EARLY_RESCALE: gl.constexpr,
    NSTAGES: gl.constexpr, CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr, CHUNKS: gl.constexpr = 2,
    ROW_THREADS: gl.constexpr = 8,
):
    gl.static_assert(gl.num_warps() == 4, "launch with num_warps=4")
    dtype: gl.constexpr = Q.dtype.element_ty
    smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128 if HEAD_DIM * 2 >= 128 else HEAD_DIM * 2,
                                                     element_bitwidth=16, rank=2)
    q_smem = gl.allocate_shared_memory(dtype, [N_WG, WG_ROWS, HEAD_DIM], smem_layout)
    k_smem = gl.allocate_shared_memory(dtype, [NSTAGES, BLOCK_N, HEAD_DIM], smem_layout)
    v_smem = gl.allocate_shared_memory(dtype, [NSTAGES, BLOCK_N, HEAD_DIM], smem_layout)
    q_full = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    full = gl.allocate_shared_memory(gl.int64, [NSTAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NSTAGES, 1], mbarrier.MBarrierLayout())
    item_smem = gl.allocate_shared_memory(gl.int32, [2, 1], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    item_full = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(item_full.index(0), count=1)
    mbarrier.init(item_full.index(1), count=1)
    mbarrier.init(q_full, count=PRODUCER_WARPS * 32)
    mbarrier.init(q_empty, count=N_WG)
    for s in gl.static_range(NSTAGES):
        mbarrier.init(full.index(s), count=PRODUCER_WARPS * 32)
        mbarrier.init(empty.index(s), count=N_WG)
    gl.warp_specialize(
        [(_consumer3p, (0, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, item_smem, item_full, O, Q_ROWS,
                        Q_OFF, LENS, WORK_I, WORK_R, qk_scale, N, H, MQ, SLOTS, N_ITEMS, sob, soh, son, BLOCK_N,
                        HEAD_DIM, HAS_Q_ROWS, EARLY_RESCALE, NSTAGES)),
         (_consumer3p, (1, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, item_smem, item_full, O, Q_ROWS,
                        Q_OFF, LENS, WORK_I, WORK_R, qk_scale, N, H, MQ, SLOTS, N_ITEMS, sob, soh, son, BLOCK_N,
                        HEAD_DIM, HAS_Q_ROWS, EARLY_RESCALE, NSTAGES)),
         (_consumer3p, (2, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, item_smem, item_full, O, Q_ROWS,
                        Q_OFF, LENS, WORK_I, WORK_R, qk_scale, N, H, MQ, SLOTS, N_ITEMS, sob, soh, son, BLOCK_N,
                        HEAD_DIM, HAS_Q_ROWS, EARLY_RESCALE, NSTAGES)),
         (_producer3p, (q_smem, k_smem, v_smem, q_full, q_empty, full, empty, item_smem, item_full, Q, K, V, Q_ROWS,
                        Q_OFF, LENS, LIST_OFF, LIST, WORK_I, WORK_R, COUNTER, N, H, MQ, SLOTS, N_ITEMS,
                        sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, BLOCK_N, HEAD_DIM, HAS_Q_ROWS, NSTAGES,
                        CHUNKS, ROW_THREADS))],
        [4, 4, PRODUCER_WARPS],
        [CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS],
    )


def compile_sm90(consumer_regs=152, producer_regs=56, stages=4, chunks=2, dtype="bf16", head_dim=128):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    ptr = f"*{dtype}"
    names = ["Q", "K", "V", "O", "Q_ROWS", "Q_OFF", "LENS", "LIST_OFF", "LIST", "WORK_I", "WORK_R", "COUNTER",
             "qk_scale", "N", "H", "MQ", "SLOTS", "N_ITEMS",
             "sqb", "sqh", "sqn", "skb", "skh", "skn", "svb", "svh", "svn", "sob", "soh", "son"]
    types = [ptr] * 4 + ["*i32", "*i32", "*i32", "*i64", "*i32", "*i32", "*i32", "*i32", "fp32"]
    types += ["i32"] * (len(names) - len(types))
    signature = dict(zip(names, types))
    constexprs = dict(BLOCK_N=64, HEAD_DIM=head_dim, HAS_Q_ROWS=True, EARLY_RESCALE=True, NSTAGES=stages,
                      CONSUMER_REGS=consumer_regs, PRODUCER_REGS=producer_regs, CHUNKS=chunks, ROW_THREADS=8)
    signature.update({k: "constexpr" for k in constexprs})
    aligned = [i for i, name in enumerate(names) if types[i].startswith("*") or name[0] == "s" and name != "SLOTS"]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = GluonASTSource(_gluon_ws3_persistent_kernel, signature=signature, attrs=attrs, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


if __name__ == "__main__":
    if "--check" in sys.argv:
        _check_granule_items()
        sys.exit(0)
    import json
    import tempfile

    folder = tempfile.mkdtemp(prefix="ws3p_")
    for regs, stages in (((152, 56), 4), ((152, 56), 5), ((160, 32), 4)):
        c = compile_sm90(*regs, stages=stages)
        r = ptxas_report(c.asm["ptx"], f"p_{regs[0]}_{regs[1]}_{stages}", folder)
        r.pop("report", None) if not r["warn"] and not r["rc"] else None
        r.update(regs_budget=regs, stages=stages, shared=c.metadata.shared)
        print(json.dumps(r), flush=True)
