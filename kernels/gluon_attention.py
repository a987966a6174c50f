"""Variable-block sparse attention forward for Hopper (sm_90) in Gluon (kernel ``gluon``).

Same plan and semantics as kernel ``triton`` (kernels/triton_attention.py): per query block a token-packed list of
key indices, work items (query block, row tile) head-major, longest list first; q, k, v read (and the output
written) through the plan's query rows and the tensors' strides exactly as that kernel does. Only the main pass
(128-row tiles) changes; the tail pass (short row tiles) still runs the Triton kernel, through the parent's `run`.

Why a second kernel: Triton 3.6 waits for every wgmma right after issuing it (``wgmma.wait_group 0``), so inside a
program the softmax exponentials never overlap the tensor cores and the Triton kernel stops near 430 TFLOP/s on an
H100 (benchmarks/NOTES.md). Gluon exposes the asynchronous wgmma directly, so this kernel pipelines the two products
inside each warpgroup the way FlashAttention-3 does ("intra-warpgroup overlap"):

    S_0 = Q·K_0ᵀ ; P, m, l = softmax(S_0)
    for j in 1 … T−1:
        issue S = Q·K_jᵀ (async) ; issue O += P·V_{j−1} (async)
        wait until one product is left   -> S is ready, P·V still runs on the tensor cores
        softmax(S) -> P', alpha          (exp2 on the MUFU overlaps the P·V product)
        wait for P·V ; O *= alpha ; P = P'
    O += P·V_{T−1} ; O /= l

Program: one work item (128 query rows, 8 warps = two warpgroups of 64 rows each, both reading the same K/V tiles).
K/V rows are gathered by index (each row a contiguous D-vector) with cp.async into two shared-memory rings of three
stages (K and V apart, since V_j is read one iteration after K_j). Copy group g_t = {K_{t+1}, V_t} is issued during
iteration t−1 and awaited at the top of iteration t+1, i.e. two iterations of prefetch; a stage is overwritten only
after the CTA barrier that follows the wgmma wait of its last reader. Shared memory: Q 32 KB + 3·32 KB K + 3·32 KB
V = 224 KB at D 128 (one program per SM, as for the Triton kernel).

The key indices of tile t are loaded from the list two iterations before the gather of V_t and one before that of
K_t, and carried in registers: ptxas hoists the gather's address arithmetic above the wgmma issue, so an index
loaded in the same iteration stalled every iteration on its L2 latency (that version ran at 0.83× Triton).

Measured (H100, Wan 720p, benchmarks/attention.py run 6, docs/performance.md): equal to kernel ``triton`` on
k-means layouts at 10/15/30% (33.8/50.9/97.9 ms vs 34.2/50.5/97.6 ms); with one block holding every token 430 vs
406 TFLOP/s in that run (that Triton build was ~6% slow; the final Triton kernel reaches ~430 too). The PTX keeps one product in flight during the softmax
(``wgmma.wait_group 1``), but both warpgroups run in lockstep between CTA barriers, the score product itself is
never overlapped, and the compute warps also issue the gathers. Next steps: a producer warp for the gathers
(warp_specialize, cp.async completing on mbarriers, setmaxnreg) and ping-pong of the two consumer warpgroups.

Semantics equal the Triton kernel (bit-identical outputs in the device checks): the last key tile of a list may be
partial (positions ≥ L are masked to −inf in the scores and their rows zero-filled by the copy), query rows ≥ q_end
are not stored, an empty list (L = 0) outputs zeros, and the scale LOG2E/√D is folded into the exp2 argument (one
FMA per score).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from sparseattn.registry import register

from .triton_attention import LOG2E, TritonBlockSparse, TritonPlan
from .triton_permute import interpreter_active, interpreting

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    async_copy,
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_wait,
)

STAGES = 3  # ring depth of K and of V; the prefetch scheme below needs exactly three
NUM_WARPS = 8  # two warpgroups of 64 rows: one wgmma row block each


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------
@gluon.jit
def _row_index(lst, pos0, L, offs_n):
    """Key indices of list positions pos0 … pos0 + BLOCK_N and which of them exist (positions ≥ L do not)."""
    pos = pos0 + offs_n
    live = pos < L
    idx = gl.load(lst + pos, mask=live, other=0)
    return idx, live


@gluon.jit
def _gather_rows(dst, src, idx, live, stride, offs_d):
    """cp.async rows src[idx·stride …] into the shared tile dst (16-byte copies; rows that do not exist are
    zero-filled)."""
    ptr = src + idx[:, None].to(gl.int64) * stride + offs_d[None, :]
    async_copy.async_copy_global_to_shared(dst, ptr, mask=live[:, None])


@gluon.jit
def _softmax(s, m_i, l_i, qk_scale, pos0, L, MASKED: gl.constexpr, BLOCK_N: gl.constexpr,
             s_layout: gl.constexpr):
    """Online-softmax update with one score tile: probabilities, new running max and sum, and the rescale factor.

    Only the last (partial) key tile of a list is masked, so full tiles skip the compare-and-select."""
    if MASKED:
        cols = pos0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        s = gl.where((cols < L)[None, :], s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)  # running max in the scaled (log2) domain
    # an all-masked tile only happens for an empty list; a zero max keeps exp2 away from (−inf) − (−inf) = NaN
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_use)
    p = gl.exp2(s * qk_scale - m_use[:, None])  # one FMA per score
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, m_new, l_i, alpha


@gluon.jit
def _step(j, q_smem, k_smem, v_smem, Kh, Vh, skn, svn, lst, L, o, m_i, l_i, p_cur, idx1, idx2, qk_scale, offs_n,
          offs_d, MASKED: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
          s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr):
    """Iteration j ≥ 1: S_j = Q·K_jᵀ and O += P_{j−1}·V_{j−1} in flight together, softmax(S_j) under the P·V.

    idx1, idx2: key indices of tiles j+1 and j+2, loaded in earlier iterations. The indices are loaded one
    iteration before their first use because ptxas hoists the gather's address arithmetic above the wgmma issue:
    an index loaded in the same iteration stalled every iteration on its L2 latency (measured: 0.83× Triton)."""
    # key indices of tile j+3, used next iteration (K_{j+3}) and the one after (V_{j+3})
    idx3, _ = _row_index(lst, (j + 3) * BLOCK_N, L, offs_n)
    # Copy group g_{j−1} = {K_j, V_{j−1}} landed (g_j may still be in flight). Each thread waits for its own copies,
    # fences them into the async proxy the wgmma reads through, then the barrier publishes every thread's rows;
    # it also orders every warpgroup's previous wait for P·V_{j−2} before the copies below reuse that stage.
    async_copy.wait_group(1)
    fence_async_shared()
    gl.thread_barrier()

    s_tok = warpgroup_mma(q_smem, k_smem.index(j % 3).permute((1, 0)),
                          gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
    o_tok = warpgroup_mma(p_cur, v_smem.index((j - 1) % 3), o, is_async=True)

    s = warpgroup_mma_wait(1, deps=[s_tok])  # the score product retired; P·V keeps running
    p, m_i, l_i, alpha = _softmax(s, m_i, l_i, qk_scale, j * BLOCK_N, L, MASKED, BLOCK_N, s_layout)
    p_next = gl.convert_layout(p.to(p_cur.dtype), p_layout)

    # K_{j+2} replaces K_{j−1} (read by S_{j−1}, retired before this iteration's barrier); V_{j+1} replaces V_{j−2}
    # (read by P·V_{j−2}, retired at the end of iteration j−1, before the barrier).
    _gather_rows(k_smem.index((j + 2) % 3), Kh, idx2, (j + 2) * BLOCK_N + offs_n < L, skn, offs_d)
    _gather_rows(v_smem.index((j + 1) % 3), Vh, idx1, (j + 1) * BLOCK_N + offs_n < L, svn, offs_d)
    async_copy.commit_group()

    o, p_cur = warpgroup_mma_wait(0, deps=[o_tok, p_cur])  # p_cur stays live until its product retires
    o = o * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
    return o, m_i, l_i, p_next, idx2, idx3


# ----------------------------------------------------------------------------------------------------------------
# Attention kernel (main pass)
# ----------------------------------------------------------------------------------------------------------------
@gluon.jit
def _work_item(pid, blk, WORK_R, Q_OFF, LENS, LIST_OFF, LIST, H, MQ, SLOTS, BLOCK_M: gl.constexpr):
    """Work item ``pid`` of a one-program-per-item launch (query block ``blk``, a used slot): its (batch, head)
    index bh, b, h, its query rows [q_start, q_end) and its key list (length L, first entry lst)."""
    r = gl.load(WORK_R + pid)
    bh = (pid // SLOTS).to(gl.int64)
    q_start = gl.load(Q_OFF + bh * (MQ + 1) + blk) + r * BLOCK_M
    q_end = gl.load(Q_OFF + bh * (MQ + 1) + blk + 1)
    L = gl.load(LENS + bh * MQ + blk)
    lst = LIST + gl.load(LIST_OFF + bh * MQ + blk)
    return bh, bh // H, bh % H, q_start, q_end, L, lst


@gluon.jit
def _gluon_sparse_attn_fwd_kernel(
    Q, K, V, O, Q_ROWS,
    Q_OFF, LENS, LIST_OFF, LIST, WORK_I, WORK_R,
    qk_scale, N, H, MQ, SLOTS,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, HAS_Q_ROWS: gl.constexpr,
):
    """Arguments as kernel ``triton``'s ``_sparse_attn_fwd_kernel``: list entries are key rows (original positions
    under the fused permutation), Q_ROWS (when HAS_Q_ROWS) maps each permuted query position to its row in q and
    the output, and every tensor is addressed through its (batch, head, row) strides with contiguous rows."""
    gl.static_assert(BLOCK_M == 128, "two warpgroups of 64 rows")
    gl.static_assert(gl.num_warps() == 8, "launch with num_warps=8")
    dtype: gl.constexpr = Q.dtype.element_ty

    # Accumulators in the wgmma register layout; P goes to the P·V product straight from registers: with the same
    # warp split, the score accumulator and the A-operand layout hold the same rows per thread (no shuffle).
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    # Gather layout: 8 contiguous elements (16 bytes, one cp.async) per thread, a row spread over a warp's lanes.
    TPR: gl.constexpr = HEAD_DIM // 8  # threads per row
    ld_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[32 // TPR, TPR],
                                               warps_per_cta=[8, 1], order=[1, 0])
    smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128 if HEAD_DIM * 2 >= 128 else HEAD_DIM * 2,
                                                     element_bitwidth=16, rank=2)

    pid = gl.program_id(0)
    blk = gl.load(WORK_I + pid)
    if blk >= 0:
        bh, b, h, q_start, q_end, L, lst = _work_item(pid, blk, WORK_R, Q_OFF, LENS, LIST_OFF, LIST, H, MQ, SLOTS,
                                                      BLOCK_M)
        Kh = K + b * skb + h * skh
        Vh = V + b * svb + h * svh

        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], smem_layout)
        k_smem = gl.allocate_shared_memory(dtype, [3, BLOCK_N, HEAD_DIM], smem_layout)
        v_smem = gl.allocate_shared_memory(dtype, [3, BLOCK_N, HEAD_DIM], smem_layout)

        offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, ld_layout))
        offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, ld_layout))
        rows = q_start + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ld_layout))
        live = rows < q_end
        if HAS_Q_ROWS:  # fused permutation: query rows are read (and the output written) through the query order
            rows = gl.load(Q_ROWS + bh * N + rows, mask=live, other=0)

        # Prologue: group g_{−1} = {Q, K_0}, group g_0 = {K_1, V_0}; wait for g_{−1}, then issue g_1 = {K_2, V_1}.
        _gather_rows(q_smem, Q + b * sqb + h * sqh, rows, live, sqn, offs_d)
        idx0, live0 = _row_index(lst, 0, L, offs_n)
        idx1, live1 = _row_index(lst, BLOCK_N, L, offs_n)
        idx2, live2 = _row_index(lst, 2 * BLOCK_N, L, offs_n)
        _gather_rows(k_smem.index(0), Kh, idx0, live0, skn, offs_d)
        async_copy.commit_group()
        _gather_rows(k_smem.index(1), Kh, idx1, live1, skn, offs_d)
        _gather_rows(v_smem.index(0), Vh, idx0, live0, svn, offs_d)
        async_copy.commit_group()
        idx3, _ = _row_index(lst, 3 * BLOCK_N, L, offs_n)  # first used in iteration 1
        async_copy.wait_group(1)
        fence_async_shared()
        gl.thread_barrier()
        _gather_rows(k_smem.index(2), Kh, idx2, live2, skn, offs_d)
        _gather_rows(v_smem.index(1), Vh, idx1, live1, svn, offs_d)
        async_copy.commit_group()

        # Tile 0 (masked: it may be the only, partial, or empty tile).
        s_tok = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)),
                              gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=[s_tok])
        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([BLOCK_M], gl.float32, gl.SliceLayout(1, s_layout))
        p, m_i, l_i, alpha = _softmax(s, m_i, l_i, qk_scale, 0, L, True, BLOCK_N, s_layout)
        p_cur = gl.convert_layout(p.to(dtype), p_layout)
        o = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

        n_tiles = (L + BLOCK_N - 1) // BLOCK_N
        n_full = L // BLOCK_N
        for j in range(1, n_full):  # full key tiles: no masking
            o, m_i, l_i, p_cur, idx2, idx3 = _step(
                j, q_smem, k_smem, v_smem, Kh, Vh, skn, svn, lst, L, o, m_i, l_i, p_cur, idx2, idx3, qk_scale,
                offs_n, offs_d, False, BLOCK_M, BLOCK_N, s_layout, o_layout, p_layout)
        if (n_full >= 1) & (n_full < n_tiles):  # a partial last tile after at least one full one
            o, m_i, l_i, p_cur, idx2, idx3 = _step(
                n_full, q_smem, k_smem, v_smem, Kh, Vh, skn, svn, lst, L, o, m_i, l_i, p_cur, idx2, idx3, qk_scale,
                offs_n, offs_d, True, BLOCK_M, BLOCK_N, s_layout, o_layout, p_layout)

        # Epilogue: O += P·V_{T−1} (for an empty list: P = 0 and V_0 zero-filled, so O stays 0).
        last = gl.maximum(n_tiles - 1, 0)
        async_copy.wait_group(0)
        fence_async_shared()
        gl.thread_barrier()
        o_tok = warpgroup_mma(p_cur, v_smem.index(last % 3), o, is_async=True)
        o, p_cur = warpgroup_mma_wait(0, deps=[o_tok, p_cur])

        l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
        l_safe = gl.where(l_o > 0.0, l_o, 1.0)
        out = (o / l_safe[:, None]).to(dtype)
        offs_m = q_start + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, o_layout))
        mrow = offs_m < q_end
        if HAS_Q_ROWS:
            offs_m = gl.load(Q_ROWS + bh * N + offs_m, mask=mrow, other=0)
        offs_do = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        o_ptr = O + b * sob + h * soh + offs_m[:, None].to(gl.int64) * son + offs_do[None, :]
        gl.store(o_ptr, out, mask=mrow[:, None])


# ----------------------------------------------------------------------------------------------------------------
# The SparseKernel
# ----------------------------------------------------------------------------------------------------------------
@register("kernel", "gluon")
@dataclass
class GluonBlockSparse(TritonBlockSparse):
    """Kernel ``triton``'s plan and tail pass with a Hopper main pass written in Gluon (see the module docstring).

    Only for CUDA tensors on a compute-capability-9.0 GPU (H100/H200), bf16 or fp16, head dim 64 or 128; the main
    pass uses 128-row tiles (``block_m`` must be 128) of ``block_n`` 64 or 128 keys and always 8 warps
    (``num_warps``/``num_stages`` only affect the Triton tail pass, which keeps its own defaults).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_m != 128:
            raise ValueError(f"kernel 'gluon' needs block_m = 128 (two warpgroups of 64 rows), got {self.block_m}")
        if self.block_n not in (64, 128):
            raise ValueError(f"kernel 'gluon' needs block_n = 64 or 128, got {self.block_n}")

    def why_unsupported(self, q: Tensor, k: Tensor, v: Tensor) -> list[str]:
        reasons = super().why_unsupported(q, k, v)
        if not all(isinstance(t, Tensor) for t in (q, k, v)):
            return reasons
        if interpreting() or interpreter_active():
            reasons.append("Gluon kernels do not run in Triton's interpreter (TRITON_INTERPRET=1)")
        if not q.is_cuda:
            reasons.append("needs CUDA tensors")
        elif torch.cuda.get_device_capability(q.device) != (9, 0):
            cc = ".".join(map(str, torch.cuda.get_device_capability(q.device)))
            reasons.append(f"needs a compute-capability-9.0 GPU (Hopper wgmma), got {cc}")
        if q.dtype not in (torch.float16, torch.bfloat16):
            reasons.append(f"dtype {str(q.dtype).replace('torch.', '')} is not supported (supported: float16, "
                           "bfloat16)")
        return list(dict.fromkeys(reasons))  # the parent may already have said some of these

    def run(self, plan: TritonPlan, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        reasons = self.why_unsupported(q, k, v)
        if reasons:
            raise ValueError("kernel 'gluon' cannot run these inputs: " + "; ".join(reasons))
        # The tail pass (and every check on the plan: shape, staleness) goes through the parent's own `run`, so it
        # follows that kernel's launch arguments whatever they become; its main pass is handed no work items (a
        # grid of 0 launches nothing) and the Gluon main pass then writes its own, disjoint, rows into the same
        # output.
        main = plan.passes[0]
        idle = replace(main, block=main.block[:0], row_tile=main.row_tile[:0])
        out = super().run(replace(plan, passes=[idle, *plan.passes[1:]]), q, k, v)
        b, h, n, d = q.shape
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))  # as the parent reads them
        q_rows = plan.q_rows
        _gluon_sparse_attn_fwd_kernel[(main.block.numel(),)](
            q, k, v, out, q_rows if q_rows is not None else main.block,
            plan.q_off, plan.lens, plan.list_off, plan.lists, main.block, main.row_tile,
            LOG2E / math.sqrt(d), n, h, plan.num_q_blocks, main.slots,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            BLOCK_M=main.block_m, BLOCK_N=main.block_n, HEAD_DIM=d, HAS_Q_ROWS=q_rows is not None,
            num_warps=NUM_WARPS,
        )
        return out


def compile_sm90(head_dim: int = 128, block_n: int = 128, dtype: str = "bf16", has_q_rows: bool = True):
    """Compile the main-pass kernel for sm_90 without a GPU (for inspection and the CPU test).

    Returns the ``triton.compile`` result: ``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata.shared`` (bytes). The
    pointer arguments are specialised as 16-byte aligned and the strides as multiples of 16, as the launcher does
    for contiguous-row torch tensors; ``has_q_rows``: the fused-permutation variant (query rows through Q_ROWS)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    ptr = f"*{dtype}"
    names = ["Q", "K", "V", "O", "Q_ROWS", "Q_OFF", "LENS", "LIST_OFF", "LIST", "WORK_I", "WORK_R", "qk_scale", "N",
             "H", "MQ", "SLOTS", "sqb", "sqh", "sqn", "skb", "skh", "skn", "svb", "svh", "svn", "sob", "soh", "son"]
    types = [ptr] * 4 + ["*i32", "*i32", "*i32", "*i64", "*i32", "*i32", "*i32", "fp32"] + ["i32"] * 16
    signature = dict(zip(names, types))
    signature.update(BLOCK_M="constexpr", BLOCK_N="constexpr", HEAD_DIM="constexpr", HAS_Q_ROWS="constexpr")
    # as the launcher specialises them: pointers 16-byte aligned, strides (multiples of D) divisible by 16
    aligned = [i for i, name in enumerate(names) if types[i].startswith("*") or name[0] == "s" and name != "SLOTS"]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = GluonASTSource(_gluon_sparse_attn_fwd_kernel, signature=signature, attrs=attrs,
                         constexprs={"BLOCK_M": 128, "BLOCK_N": block_n, "HEAD_DIM": head_dim,
                                     "HAS_Q_ROWS": has_q_rows})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": NUM_WARPS})
