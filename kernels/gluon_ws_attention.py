"""Variable-block sparse attention forward for Hopper (sm_90), warp-specialised, in Gluon (kernel ``gluon_ws``).

Same plan, semantics and tail pass as kernel ``gluon`` (kernels/gluon_attention.py, itself kernel ``triton``'s plan):
per query block a token-packed list of key indices, work items (query block, 128-row tile) head-major, q, k, v read
and the output written through the plan's query rows and the tensors' strides. Only the main pass changes.

Why: in kernel ``gluon`` the compute warps also issue the K/V gathers and both warpgroups run in lockstep between
CTA barriers, so the score product is never overlapped and the gather issue sits on the critical path (it stops near
0.73× cuDNN on one dense block). This kernel splits each program (one work item: 128 query rows) into three
partitions with ``gl.warp_specialize``, FlashAttention-3 style:

  * producer (4 warps, few registers: setmaxnreg down): loads the key indices of tile t from the list, gathers K_t
    and V_t (rows by index, 16-byte cp.async, rows past the list end zero-filled) into stage t % STAGES of two
    rings, and signals the stage's "full" mbarrier with ``cp.async.mbarrier.arrive.noinc`` (the arrival fires when
    the thread's copies have landed; the barrier expects one arrival per producer thread). Before reusing a stage it
    waits on the stage's "empty" mbarrier. It also gathers the Q tile (through the query order when fused).
  * two consumer warpgroups (4 warps each, rows 0–63 and 64–127, setmaxnreg up): per key tile S = Q·Kᵀ and O += P·V
    with async wgmma, the next score product issued together with the previous P·V (intra-warpgroup overlap, as in
    kernel ``gluon``), O rescaled between the two issues so the multiply runs under the score product
    (FlashAttention-3's order, ``early_rescale``), online softmax in fp32 with exp2 and the scale folded into one
    FMA. Optionally (``pingpong``) the two warpgroups issue their products in strict alternation, enforced with two
    "turn" mbarriers, so one warpgroup's softmax runs under the other's products (FlashAttention-3's inter-warpgroup
    schedule). It is off by default: it was slower (below).

Proxy fence: cp.async writes shared memory through the generic proxy while wgmma reads it through the async proxy.
The producer cannot fence its own writes (they complete after it has moved on), so each consumer thread, after its
mbarrier wait has made the copies visible to it, issues ``fence.proxy.async.shared::cta`` before the wgmma that reads
them. (CUTLASS's cp.async warp-specialised GEMM mainloop and FlashInfer's sparse Hopper mainloop issue no fence at
this point; the fence is a few cycles per tile and follows the PTX memory model.)

A stage is freed (the empty barrier, two arrivals: one per consumer warpgroup) only after the P·V product that reads
its V has retired, which is after the score product reading its K has retired; the producer gathers K_t and V_t
together, so one full and one empty barrier per stage suffice. Shared memory at D 128: Q 32 KB + 3 · (32 + 32) KB =
224 KB (one program per SM).

An empty list (L = 0) still runs one (all-masked, zero-filled) tile and outputs zeros; the last key tile of a list
may be partial (scores masked to −inf, rows zero-filled); query rows ≥ q_end are not stored. Outputs equal kernel
``gluon``'s (bit for bit with ``early_rescale=False``, which keeps its order of operations).

Registers (ptxas, sm_90a, no spills): launched at 168 per thread (12 warps); the producer drops to 64, consumer
warpgroup 0 (the default partition) rises to 224 and warpgroup 1 to 216. The producer spilled at 40–56.

Measured (H100 SXM, Wan 2.1 720p B1 H40 N75600 D128 bf16, benchmarks/gluon_ws_dev.py, cuDNN SDPA in the same process,
benchmarks/results/h100-2026-11-27-s3-gluonws-run2.log): one block holding every token 233.9 ms = 500 TFLOP/s,
0.83× cuDNN (195.3 ms), against 269.8 ms (triton) and 275.5 ms (gluon); k-means layouts at 10/15/30% 30.3/43.0/86.0 ms
(triton 31.7/45.7/90.8, gluon 33.7/48.3/96.6), 0.66–0.69× cuDNN in effective TFLOP/s with 11–12% tile waste. With
``pingpong`` one block took 251.2 ms (0.78×): the hand-over through an mbarrier (a warpgroup barrier, an arrive, a
try_wait poll) sits on every iteration's critical path, while the unsynchronised warpgroups already interleave on
the tensor cores; FlashAttention-3 hands over with named barriers (bar.sync/bar.arrive), which Gluon does not expose.
``early_rescale=False`` took 236.8 ms. The sparse cases gain less than the dense one: there the Triton tail pass,
each program's prologue (Q and the first tile, not overlapped: one work item per program) and the uneven list
lengths remain.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from torch import Tensor

from sparseattn.registry import register

from .gluon_attention import GluonBlockSparse, _softmax
from .triton_attention import LOG2E, TritonPlan

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    async_copy,
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

STAGES = gl.constexpr(3)  # K/V ring depth: the producer runs up to two tiles ahead of the slower consumer warpgroup
WG_ROWS = gl.constexpr(64)  # query rows per consumer warpgroup (one wgmma row block)
PRODUCER_WARPS = gl.constexpr(4)
# Registers per thread after setmaxnreg (64K per SM; 12 warps launch at ⌊65536/384⌋ → 168). Triton gives the default
# partition (consumer 0) what the workers leave: 168 − (216 − 168) + (168 − 64) = 224, so consumers get 224/216 and
# the producer 64: 128·(224 + 216 + 64) = 64 512. The producer spilled at 40–56 (its chunked gathers still hold 16
# key indices and 64-bit addresses); the consumers need no more than 216 (ptxas: no spills).
PRODUCER_REGS = gl.constexpr(64)
CONSUMER_REGS = gl.constexpr(216)


# ----------------------------------------------------------------------------------------------------------------
# Producer partition
# ----------------------------------------------------------------------------------------------------------------
@gluon.jit
def _producer(q_smem, k_smem, v_smem, q_full, full, empty,
              Qh, Kh, Vh, Q_ROWS, lst, q_start, q_end, L, row_base, sqn, skn, svn,
              HAS_Q_ROWS: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Gathers Q once, then K_t and V_t of every key tile t into stage t % STAGES (see the module docstring)."""
    # 8 contiguous elements (one 16-byte cp.async) per thread, a row spread over HEAD_DIM/8 lanes
    TPR: gl.constexpr = HEAD_DIM // 8
    ld: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[32 // TPR, TPR],
                                        warps_per_cta=[gl.num_warps(), 1], order=[1, 0])
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, ld))

    # Q, as two 64-row halves (one per consumer warpgroup), through the query order when the permutation is fused
    for w in gl.static_range(2):
        q_pos = q_start + w * WG_ROWS + gl.arange(0, WG_ROWS, layout=gl.SliceLayout(1, ld))
        q_live = q_pos < q_end
        if HAS_Q_ROWS:
            q_pos = gl.load(Q_ROWS + row_base + q_pos, mask=q_live, other=0)
        q_ptr = Qh + q_pos[:, None].to(gl.int64) * sqn + offs_d[None, :]
        async_copy.async_copy_global_to_shared(q_smem.index(w), q_ptr, mask=q_live[:, None])
    async_copy.mbarrier_arrive(q_full, increment_count=False)

    n_tiles = gl.maximum((L + BLOCK_N - 1) // BLOCK_N, 1)  # an empty list still runs one (all-masked) tile
    # A tile is gathered in four row chunks: the 64-bit source addresses of a whole tile (16 rows per thread at D 128)
    # do not fit the producer's register budget (ptxas spilled), a chunk's do.
    CH: gl.constexpr = BLOCK_N // 4
    offs_c = gl.arange(0, CH, layout=gl.SliceLayout(1, ld))
    for t in range(n_tiles):
        # Key indices of tile t, loaded before the stage wait so their L2 latency hides behind it. They are not
        # prefetched a tile ahead in registers (as kernel 'gluon' does): the producer runs up to two tiles ahead of
        # the consumers, which hides this latency, and two tiles of indices do not fit its register budget.
        p0 = t * BLOCK_N + offs_c
        i0 = gl.load(lst + p0, mask=p0 < L, other=0)
        i1 = gl.load(lst + p0 + CH, mask=p0 + CH < L, other=0)
        i2 = gl.load(lst + p0 + 2 * CH, mask=p0 + 2 * CH < L, other=0)
        i3 = gl.load(lst + p0 + 3 * CH, mask=p0 + 3 * CH < L, other=0)
        s = t % STAGES
        # a fresh barrier counts as having completed the phase before its first, so round 0 passes at once
        mbarrier.wait(empty.index(s), ((t // STAGES) & 1) ^ 1)
        ks = k_smem.index(s)
        vs = v_smem.index(s)
        _gather_kv(ks.slice(0, CH), vs.slice(0, CH), Kh, Vh, i0, p0 < L, skn, svn, offs_d)
        _gather_kv(ks.slice(CH, CH), vs.slice(CH, CH), Kh, Vh, i1, p0 + CH < L, skn, svn, offs_d)
        _gather_kv(ks.slice(2 * CH, CH), vs.slice(2 * CH, CH), Kh, Vh, i2, p0 + 2 * CH < L, skn, svn, offs_d)
        _gather_kv(ks.slice(3 * CH, CH), vs.slice(3 * CH, CH), Kh, Vh, i3, p0 + 3 * CH < L, skn, svn, offs_d)
        async_copy.mbarrier_arrive(full.index(s), increment_count=False)


@gluon.jit
def _gather_kv(k_dst, v_dst, Kh, Vh, idx, live, skn, svn, offs_d):
    """cp.async key rows idx of K and of V into k_dst and v_dst (rows past the list end zero-filled)."""
    key_rows = idx[:, None].to(gl.int64)
    async_copy.async_copy_global_to_shared(k_dst, Kh + key_rows * skn + offs_d[None, :], mask=live[:, None])
    async_copy.async_copy_global_to_shared(v_dst, Vh + key_rows * svn + offs_d[None, :], mask=live[:, None])


# ----------------------------------------------------------------------------------------------------------------
# Consumer partitions
# ----------------------------------------------------------------------------------------------------------------
@gluon.jit
def _wait_stage(full, j):
    """Wait until tile j's K and V have landed, then order those generic-proxy writes before our wgmma reads."""
    mbarrier.wait(full.index(j % STAGES), (j // STAGES) & 1)
    fence_async_shared()


@gluon.jit
def _step(j, WG: gl.constexpr, q, k_smem, v_smem, full, empty, turn, L, o, m_i, l_i, p_cur, alpha_o, qk_scale,
          MASKED: gl.constexpr, PINGPONG: gl.constexpr, EARLY_RESCALE: gl.constexpr, BLOCK_N: gl.constexpr,
          s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr):
    """Key tile j ≥ 1: S_j = Q·K_jᵀ and O += P_{j−1}·V_{j−1} in flight together, softmax(S_j) under the P·V and
    under the other warpgroup's products.

    alpha_o: the rescale factor of O from softmax(S_{j−1}). With EARLY_RESCALE (FlashAttention-3's order) O is
    rescaled between issuing the score product and the P·V product, so the multiply runs under the score product;
    otherwise O is rescaled by softmax(S_j)'s factor after the P·V product retired, on the critical path."""
    _wait_stage(full, j)
    # ping-pong: issue only in our turn, then hand the tensor cores to the other warpgroup
    if PINGPONG:
        mbarrier.wait(turn.index(WG), (j - 1) & 1)
    s_tok = warpgroup_mma(q, k_smem.index(j % STAGES).permute((1, 0)),
                          gl.zeros([WG_ROWS, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
    if EARLY_RESCALE:
        o = o * alpha_o[:, None]
    o_tok = warpgroup_mma(p_cur, v_smem.index((j - 1) % STAGES), o, is_async=True)
    if PINGPONG:
        mbarrier.arrive(turn.index(1 - WG))

    s = warpgroup_mma_wait(1, deps=[s_tok])  # the score product retired; P·V keeps running
    p, m_i, l_i, alpha = _softmax(s, m_i, l_i, qk_scale, j * BLOCK_N, L, MASKED, BLOCK_N, s_layout)
    p_next = gl.convert_layout(p.to(p_cur.dtype), p_layout)

    o, p_cur = warpgroup_mma_wait(0, deps=[o_tok, p_cur])  # p_cur stays live until its product retires
    mbarrier.arrive(empty.index((j - 1) % STAGES))  # K_{j−1} and V_{j−1} are no longer read
    alpha_o = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
    if not EARLY_RESCALE:
        o = o * alpha_o[:, None]
    return o, m_i, l_i, p_next, alpha_o


@gluon.jit
def _consumer(WG: gl.constexpr, q_smem, k_smem, v_smem, q_full, full, empty, turn,
              Oh, Q_ROWS, q_start, q_end, L, row_base, son, qk_scale,
              HAS_Q_ROWS: gl.constexpr, PINGPONG: gl.constexpr, EARLY_RESCALE: gl.constexpr, BLOCK_N: gl.constexpr,
              HEAD_DIM: gl.constexpr):
    """Rows WG·64 … WG·64 + 63 of the work item's tile: the attention loop and the output store."""
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    # P feeds the P·V product from registers: the score accumulator and the A-operand layout hold the same rows
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    q = q_smem.index(WG)

    mbarrier.wait(q_full, 0)
    _wait_stage(full, 0)
    # Tile 0 (masked: it may be the only, partial, or empty tile), outside the ping-pong.
    s_tok = warpgroup_mma(q, k_smem.index(0).permute((1, 0)),
                          gl.zeros([WG_ROWS, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=[s_tok])
    m_i = gl.full([WG_ROWS], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([WG_ROWS], gl.float32, gl.SliceLayout(1, s_layout))
    p, m_i, l_i, alpha = _softmax(s, m_i, l_i, qk_scale, 0, L, True, BLOCK_N, s_layout)
    p_cur = gl.convert_layout(p.to(dtype), p_layout)
    o = gl.zeros([WG_ROWS, HEAD_DIM], gl.float32, o_layout)
    alpha_o = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))  # 0 or 1 here; O is still zero

    n_tiles = gl.maximum((L + BLOCK_N - 1) // BLOCK_N, 1)
    n_full = L // BLOCK_N
    for j in range(1, n_full):  # full key tiles: no masking
        o, m_i, l_i, p_cur, alpha_o = _step(j, WG, q, k_smem, v_smem, full, empty, turn, L, o, m_i, l_i, p_cur,
                                            alpha_o, qk_scale, False, PINGPONG, EARLY_RESCALE, BLOCK_N, s_layout,
                                            o_layout, p_layout)
    if (n_full >= 1) & (n_full < n_tiles):  # a partial last tile after at least one full one
        o, m_i, l_i, p_cur, alpha_o = _step(n_full, WG, q, k_smem, v_smem, full, empty, turn, L, o, m_i, l_i,
                                            p_cur, alpha_o, qk_scale, True, PINGPONG, EARLY_RESCALE, BLOCK_N,
                                            s_layout, o_layout, p_layout)

    # Epilogue: O += P·V_{T−1} (its stage was waited for with K_{T−1}; for an empty list P = 0 and V_0 is zeros).
    last = n_tiles - 1
    if EARLY_RESCALE:
        o = o * alpha_o[:, None]
    o_tok = warpgroup_mma(p_cur, v_smem.index(last % STAGES), o, is_async=True)
    o, p_cur = warpgroup_mma_wait(0, deps=[o_tok, p_cur])
    mbarrier.arrive(empty.index(last % STAGES))

    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
    l_safe = gl.where(l_o > 0.0, l_o, 1.0)
    out = (o / l_safe[:, None]).to(dtype)
    offs_m = q_start + WG * WG_ROWS + gl.arange(0, WG_ROWS, layout=gl.SliceLayout(1, o_layout))
    mrow = offs_m < q_end
    if HAS_Q_ROWS:
        offs_m = gl.load(Q_ROWS + row_base + offs_m, mask=mrow, other=0)
    offs_do = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    gl.store(Oh + offs_m[:, None].to(gl.int64) * son + offs_do[None, :], out, mask=mrow[:, None])


# ----------------------------------------------------------------------------------------------------------------
# Attention kernel (main pass)
# ----------------------------------------------------------------------------------------------------------------
@gluon.jit
def _gluon_ws_sparse_attn_fwd_kernel(
    Q, K, V, O, Q_ROWS,
    Q_OFF, LENS, LIST_OFF, LIST, WORK_I, WORK_R,
    qk_scale, N, H, MQ, SLOTS,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, HAS_Q_ROWS: gl.constexpr,
    PINGPONG: gl.constexpr, EARLY_RESCALE: gl.constexpr,
):
    """Arguments as kernel ``gluon``'s ``_gluon_sparse_attn_fwd_kernel`` (PINGPONG: alternate the two consumer
    warpgroups' products; EARLY_RESCALE: rescale O under the score product, see _step). Launched with num_warps=4
    (the default partition is consumer warpgroup 0); warp_specialize adds consumer warpgroup 1 and the producer."""
    gl.static_assert(BLOCK_M == 2 * WG_ROWS, "two consumer warpgroups of 64 rows")
    gl.static_assert(gl.num_warps() == 4, "launch with num_warps=4")
    dtype: gl.constexpr = Q.dtype.element_ty
    smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128 if HEAD_DIM * 2 >= 128 else HEAD_DIM * 2,
                                                     element_bitwidth=16, rank=2)

    pid = gl.program_id(0)
    blk = gl.load(WORK_I + pid)
    if blk >= 0:
        r = gl.load(WORK_R + pid)
        bh = (pid // SLOTS).to(gl.int64)
        b = bh // H
        h = bh % H
        q_start = gl.load(Q_OFF + bh * (MQ + 1) + blk) + r * BLOCK_M
        q_end = gl.load(Q_OFF + bh * (MQ + 1) + blk + 1)
        L = gl.load(LENS + bh * MQ + blk)
        lst = LIST + gl.load(LIST_OFF + bh * MQ + blk)
        row_base = bh * N

        q_smem = gl.allocate_shared_memory(dtype, [2, WG_ROWS, HEAD_DIM], smem_layout)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], smem_layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], smem_layout)
        q_full = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        # full/q_full: one cp.async arrival per producer thread; empty: one arrival per consumer warpgroup (Triton
        # lowers mbarrier.arrive to a barrier of the partition's warps and one elected thread's arrive); turn: one
        # arrival from the other warpgroup
        mbarrier.init(q_full, count=PRODUCER_WARPS * 32)
        for s in gl.static_range(STAGES):
            mbarrier.init(full.index(s), count=PRODUCER_WARPS * 32)
            mbarrier.init(empty.index(s), count=2)
        mbarrier.init(turn.index(0), count=1)
        mbarrier.init(turn.index(1), count=1)
        mbarrier.arrive(turn.index(0))  # warpgroup 0 issues first (with PINGPONG; unused otherwise)

        Oh = O + b * sob + h * soh
        gl.warp_specialize(
            [(_consumer, (0, q_smem, k_smem, v_smem, q_full, full, empty, turn, Oh, Q_ROWS, q_start, q_end, L,
                          row_base, son, qk_scale, HAS_Q_ROWS, PINGPONG, EARLY_RESCALE, BLOCK_N, HEAD_DIM)),
             (_consumer, (1, q_smem, k_smem, v_smem, q_full, full, empty, turn, Oh, Q_ROWS, q_start, q_end, L,
                          row_base, son, qk_scale, HAS_Q_ROWS, PINGPONG, EARLY_RESCALE, BLOCK_N, HEAD_DIM)),
             (_producer, (q_smem, k_smem, v_smem, q_full, full, empty, Q + b * sqb + h * sqh, K + b * skb + h * skh,
                          V + b * svb + h * svh, Q_ROWS, lst, q_start, q_end, L, row_base, sqn, skn, svn,
                          HAS_Q_ROWS, BLOCK_N, HEAD_DIM))],
            [4, PRODUCER_WARPS],
            [CONSUMER_REGS, PRODUCER_REGS],
        )


# ----------------------------------------------------------------------------------------------------------------
# The SparseKernel
# ----------------------------------------------------------------------------------------------------------------
@register("kernel", "gluon_ws")
@dataclass
class GluonWSBlockSparse(GluonBlockSparse):
    """Kernel ``gluon`` with a warp-specialised main pass (a producer partition gathering K/V, two consumer
    warpgroups; see the module docstring). Same requirements: an sm_90 GPU, bf16/fp16, head dim 64 or 128,
    ``block_m`` 128, ``block_n`` 64 or 128; the tail pass is kernel ``triton``'s. ``pingpong``: the two consumer
    warpgroups issue their products in strict alternation (default off: each issues as soon as its data is there,
    measured 7% faster on one dense block); ``early_rescale``: O is rescaled under the score product
    (FlashAttention-3's order, default) instead of after the P·V product."""

    pingpong: bool = False
    early_rescale: bool = True

    def run(self, plan: TritonPlan, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        reasons = self.why_unsupported(q, k, v)
        if reasons:
            raise ValueError("kernel 'gluon_ws' cannot run these inputs: " + "; ".join(reasons))
        # As kernel 'gluon': the Triton parent runs the tail pass (and checks the plan) with an empty main pass.
        main = plan.passes[0]
        idle = replace(main, block=main.block[:0], row_tile=main.row_tile[:0])
        out = super(GluonBlockSparse, self).run(replace(plan, passes=[idle, *plan.passes[1:]]), q, k, v)
        b, h, n, d = q.shape
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))  # as the parent reads them
        q_rows = plan.q_rows
        _gluon_ws_sparse_attn_fwd_kernel[(main.block.numel(),)](
            q, k, v, out, q_rows if q_rows is not None else main.block,
            plan.q_off, plan.lens, plan.list_off, plan.lists, main.block, main.row_tile,
            LOG2E / math.sqrt(d), n, h, plan.num_q_blocks, main.slots,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            BLOCK_M=main.block_m, BLOCK_N=main.block_n, HEAD_DIM=d, HAS_Q_ROWS=q_rows is not None,
            PINGPONG=self.pingpong, EARLY_RESCALE=self.early_rescale, num_warps=4,
        )
        return out


def compile_sm90(head_dim: int = 128, block_n: int = 128, dtype: str = "bf16", has_q_rows: bool = True,
                 pingpong: bool = False, early_rescale: bool = True):
    """Compile the main-pass kernel for sm_90 without a GPU (for inspection and the CPU test); as kernel
    ``gluon``'s ``compile_sm90``: ``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata.shared``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    ptr = f"*{dtype}"
    names = ["Q", "K", "V", "O", "Q_ROWS", "Q_OFF", "LENS", "LIST_OFF", "LIST", "WORK_I", "WORK_R", "qk_scale", "N",
             "H", "MQ", "SLOTS", "sqb", "sqh", "sqn", "skb", "skh", "skn", "svb", "svh", "svn", "sob", "soh", "son"]
    types = [ptr] * 4 + ["*i32", "*i32", "*i32", "*i64", "*i32", "*i32", "*i32", "fp32"] + ["i32"] * 16
    signature = dict(zip(names, types))
    signature.update(BLOCK_M="constexpr", BLOCK_N="constexpr", HEAD_DIM="constexpr", HAS_Q_ROWS="constexpr",
                     PINGPONG="constexpr", EARLY_RESCALE="constexpr")
    # as the launcher specialises them: pointers 16-byte aligned, strides (multiples of D) divisible by 16
    aligned = [i for i, name in enumerate(names) if types[i].startswith("*") or name[0] == "s" and name != "SLOTS"]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = GluonASTSource(_gluon_ws_sparse_attn_fwd_kernel, signature=signature, attrs=attrs,
                         constexprs={"BLOCK_M": 128, "BLOCK_N": block_n, "HEAD_DIM": head_dim,
                                     "HAS_Q_ROWS": has_q_rows, "PINGPONG": pingpong,
                                     "EARLY_RESCALE": early_rescale})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
