"""Experiment (not a registered kernel): gluon_ws's one-item-per-program main pass with THREE consumer warpgroups
(192 query rows) and 64-key tiles; ping-pong off. Written in the eighth session, timed on an H100 in the ninth
(runs s9 1-2, `ws3_bench.py`): no faster than gluon_ws (−4.4 to +2.2% on k-means layouts), so not promoted;
docs/performance.md, "What limits the kernel". `python gluon_ws3.py` prints a ptxas table (no GPU needed)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    async_copy,
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from sparseattn.kernels.gluon_attention import _softmax, _work_item
from sparseattn.kernels.gluon_ws_attention import _gather_kv

WG_ROWS = gl.constexpr(64)
N_WG = gl.constexpr(3)
PRODUCER_WARPS = gl.constexpr(4)


# ---------------------------------------------------------------------------------------------------- producer
@gluon.jit
def _gather_q3(q_smem, q_full, Qh, Q_ROWS, q_start, q_end, row_base, sqn, offs_d, HAS_Q_ROWS: gl.constexpr,
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
def _gather_tile64(t, g, k_smem, v_smem, full, empty, Kh, Vh, lst, L, skn, svn, offs_d, BLOCK_N: gl.constexpr,
                   NSTAGES: gl.constexpr, CHUNKS: gl.constexpr, ld: gl.constexpr):
    """As _gather_tile, a 64-key tile in CHUNKS row chunks (2: 32 rows each, 2 rows per thread at D 128 — the same
    per-chunk footprint as the 128-key tile's 4 chunks)."""
    CH: gl.constexpr = BLOCK_N // CHUNKS
    gl.static_assert((CHUNKS == 1) | (CHUNKS == 2) | (CHUNKS == 4), "1, 2 or 4 chunks")
    offs_c = gl.arange(0, CH, layout=gl.SliceLayout(1, ld))
    p0 = t * BLOCK_N + offs_c
    i0 = gl.load(lst + p0, mask=p0 < L, other=0)
    if CHUNKS >= 2:
        i1 = gl.load(lst + p0 + CH, mask=p0 + CH < L, other=0)
    if CHUNKS == 4:
        i2 = gl.load(lst + p0 + 2 * CH, mask=p0 + 2 * CH < L, other=0)
        i3 = gl.load(lst + p0 + 3 * CH, mask=p0 + 3 * CH < L, other=0)
    s = g % NSTAGES
    mbarrier.wait(empty.index(s), ((g // NSTAGES) & 1) ^ 1)
    ks = k_smem.index(s)
    vs = v_smem.index(s)
    _gather_kv(ks.slice(0, CH), vs.slice(0, CH), Kh, Vh, i0, p0 < L, skn, svn, offs_d)
    if CHUNKS >= 2:
        _gather_kv(ks.slice(CH, CH), vs.slice(CH, CH), Kh, Vh, i1, p0 + CH < L, skn, svn, offs_d)
    if CHUNKS == 4:
        _gather_kv(ks.slice(2 * CH, CH), vs.slice(2 * CH, CH), Kh, Vh, i2, p0 + 2 * CH < L, skn, svn, offs_d)
        _gather_kv(ks.slice(3 * CH, CH), vs.slice(3 * CH, CH), Kh, Vh, i3, p0 + 3 * CH < L, skn, svn, offs_d)
    async_copy.mbarrier_arrive(full.index(s), increment_count=False)


@gluon.jit
def _producer3(q_smem, k_smem, v_smem, q_full, full, empty,
               Qh, Kh, Vh, Q_ROWS, lst, q_start, q_end, L, row_base, sqn, skn, svn,
               HAS_Q_ROWS: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, ROW_THREADS: gl.constexpr,
               NSTAGES: gl.constexpr, CHUNKS: gl.constexpr):
    TPR: gl.constexpr = ROW_THREADS
    ld: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[32 // TPR, TPR],
                                        warps_per_cta=[gl.num_warps(), 1], order=[1, 0])
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, ld))
    _gather_q3(q_smem, q_full, Qh, Q_ROWS, q_start, q_end, row_base, sqn, offs_d, HAS_Q_ROWS, ld)
    n_tiles = gl.maximum((L + BLOCK_N - 1) // BLOCK_N, 1)
    for t in range(n_tiles):
        _gather_tile64(t, t, k_smem, v_smem, full, empty, Kh, Vh, lst, L, skn, svn, offs_d, BLOCK_N, NSTAGES,
                       CHUNKS, ld)


# ---------------------------------------------------------------------------------------------------- consumers
@gluon.jit
def _wait_stage3(full, j, NSTAGES: gl.constexpr):
    mbarrier.wait(full.index(j % NSTAGES), (j // NSTAGES) & 1)
    fence_async_shared()


@gluon.jit
def _step3(j, g, q, k_smem, v_smem, full, empty, L, o, m_i, l_i, p_cur, alpha_o, qk_scale,
           MASKED: gl.constexpr, EARLY_RESCALE: gl.constexpr, BLOCK_N: gl.constexpr, NSTAGES: gl.constexpr,
           s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr):
    """As gluon_ws's _step with PINGPONG=False and STAGES a parameter."""
    _wait_stage3(full, g, NSTAGES)
    s_tok = warpgroup_mma(q, k_smem.index(g % NSTAGES).permute((1, 0)),
                          gl.zeros([WG_ROWS, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
    if EARLY_RESCALE:
        o = o * alpha_o[:, None]
    o_tok = warpgroup_mma(p_cur, v_smem.index((g - 1) % NSTAGES), o, is_async=True)
    s = warpgroup_mma_wait(1, deps=[s_tok])
    p, m_i, l_i, alpha = _softmax(s, m_i, l_i, qk_scale, j * BLOCK_N, L, MASKED, BLOCK_N, s_layout)
    p_next = gl.convert_layout(p.to(p_cur.dtype), p_layout)
    o, p_cur = warpgroup_mma_wait(0, deps=[o_tok, p_cur])
    mbarrier.arrive(empty.index((g - 1) % NSTAGES))
    alpha_o = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
    if not EARLY_RESCALE:
        o = o * alpha_o[:, None]
    return o, m_i, l_i, p_next, alpha_o


@gluon.jit
def _consumer3(WG: gl.constexpr, q_smem, k_smem, v_smem, q_full, full, empty,
               Oh, Q_ROWS, q_start, q_end, L, row_base, son, qk_scale,
               HAS_Q_ROWS: gl.constexpr, EARLY_RESCALE: gl.constexpr, BLOCK_N: gl.constexpr,
               HEAD_DIM: gl.constexpr, NSTAGES: gl.constexpr):
    """gluon_ws's _attend for one item (g = it = 0, no q_empty), ping-pong off, warpgroup WG of three; a warpgroup
    past the item's rows only waits for each tile and releases it."""
    mbarrier.wait(q_full, 0)
    if q_start + WG * WG_ROWS >= q_end:  # no rows of this item for this warpgroup: only keep the ring's counts
        for j in range(gl.maximum((L + BLOCK_N - 1) // BLOCK_N, 1)):
            mbarrier.wait(full.index(j % NSTAGES), (j // NSTAGES) & 1)
            mbarrier.arrive(empty.index(j % NSTAGES))
    else:
        _attend3(WG, q_smem, k_smem, v_smem, full, empty, Oh, Q_ROWS, q_start, q_end, L, row_base, son, qk_scale,
                 HAS_Q_ROWS, EARLY_RESCALE, BLOCK_N, HEAD_DIM, NSTAGES)


@gluon.jit
def _attend3(WG: gl.constexpr, q_smem, k_smem, v_smem, full, empty, Oh, Q_ROWS, q_start, q_end, L, row_base, son,
             qk_scale, HAS_Q_ROWS: gl.constexpr, EARLY_RESCALE: gl.constexpr, BLOCK_N: gl.constexpr,
             HEAD_DIM: gl.constexpr, NSTAGES: gl.constexpr):
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    q = q_smem.index(WG)
    g = 0
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


# ---------------------------------------------------------------------------------------------------- kernel
@gluon.jit
def _gluon_ws3_fwd_kernel(
    Q, K, V, O, Q_ROWS,
    Q_OFF, LENS, LIST_OFF, LIST, WORK_I, WORK_R,
    qk_scale, N, H, MQ, SLOTS,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, HAS_Q_ROWS: gl.constexpr,
    EARLY_RESCALE: gl.constexpr, NSTAGES: gl.constexpr, CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr,
    CHUNKS: gl.constexpr = 2, ROW_THREADS: gl.constexpr = 8,
):
    gl.static_assert(BLOCK_M == N_WG * WG_ROWS, "three consumer warpgroups of 64 rows")
    gl.static_assert(gl.num_warps() == 4, "launch with num_warps=4")
    dtype: gl.constexpr = Q.dtype.element_ty
    smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128 if HEAD_DIM * 2 >= 128 else HEAD_DIM * 2,
                                                     element_bitwidth=16, rank=2)
    pid = gl.program_id(0)
    blk = gl.load(WORK_I + pid)
    if blk >= 0:
        bh, b, h, q_start, q_end, L, lst = _work_item(pid, blk, WORK_R, Q_OFF, LENS, LIST_OFF, LIST, H, MQ, SLOTS,
                                                      BLOCK_M)
        row_base = bh * N
        q_smem = gl.allocate_shared_memory(dtype, [N_WG, WG_ROWS, HEAD_DIM], smem_layout)
        k_smem = gl.allocate_shared_memory(dtype, [NSTAGES, BLOCK_N, HEAD_DIM], smem_layout)
        v_smem = gl.allocate_shared_memory(dtype, [NSTAGES, BLOCK_N, HEAD_DIM], smem_layout)
        q_full = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        full = gl.allocate_shared_memory(gl.int64, [NSTAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [NSTAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_full, count=PRODUCER_WARPS * 32)
        for s in gl.static_range(NSTAGES):
            mbarrier.init(full.index(s), count=PRODUCER_WARPS * 32)
            mbarrier.init(empty.index(s), count=N_WG)

        Oh = O + b * sob + h * soh
        gl.warp_specialize(
            [(_consumer3, (0, q_smem, k_smem, v_smem, q_full, full, empty, Oh, Q_ROWS, q_start, q_end, L,
                           row_base, son, qk_scale, HAS_Q_ROWS, EARLY_RESCALE, BLOCK_N, HEAD_DIM, NSTAGES)),
             (_consumer3, (1, q_smem, k_smem, v_smem, q_full, full, empty, Oh, Q_ROWS, q_start, q_end, L,
                           row_base, son, qk_scale, HAS_Q_ROWS, EARLY_RESCALE, BLOCK_N, HEAD_DIM, NSTAGES)),
             (_consumer3, (2, q_smem, k_smem, v_smem, q_full, full, empty, Oh, Q_ROWS, q_start, q_end, L,
                           row_base, son, qk_scale, HAS_Q_ROWS, EARLY_RESCALE, BLOCK_N, HEAD_DIM, NSTAGES)),
             (_producer3, (q_smem, k_smem, v_smem, q_full, full, empty, Q + b * sqb + h * sqh,
                           K + b * skb + h * skh, V + b * svb + h * svh, Q_ROWS, lst, q_start, q_end, L, row_base,
                           sqn, skn, svn, HAS_Q_ROWS, BLOCK_N, HEAD_DIM, ROW_THREADS, NSTAGES, CHUNKS))],
            [4, 4, PRODUCER_WARPS],
            [CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS],
        )


def compile_sm90(consumer_regs: int = 152, producer_regs: int = 56, stages: int = 4, block_n: int = 64,
                 head_dim: int = 128, dtype: str = "bf16", has_q_rows: bool = True, early_rescale: bool = True,
                 chunks: int = 2):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    ptr = f"*{dtype}"
    names = ["Q", "K", "V", "O", "Q_ROWS", "Q_OFF", "LENS", "LIST_OFF", "LIST", "WORK_I", "WORK_R",
             "qk_scale", "N", "H", "MQ", "SLOTS",
             "sqb", "sqh", "sqn", "skb", "skh", "skn", "svb", "svh", "svn", "sob", "soh", "son"]
    types = [ptr] * 4 + ["*i32", "*i32", "*i32", "*i64", "*i32", "*i32", "*i32"] + ["fp32"]
    types += ["i32"] * (len(names) - len(types))
    signature = dict(zip(names, types))
    constexprs = {"BLOCK_M": 192, "BLOCK_N": block_n, "HEAD_DIM": head_dim, "HAS_Q_ROWS": has_q_rows,
                  "EARLY_RESCALE": early_rescale, "NSTAGES": stages, "CONSUMER_REGS": consumer_regs,
                  "PRODUCER_REGS": producer_regs, "CHUNKS": chunks, "ROW_THREADS": 8}
    for k in constexprs:
        signature[k] = "constexpr"
    aligned = [i for i, name in enumerate(names) if types[i].startswith("*") or name[0] == "s" and name != "SLOTS"]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = GluonASTSource(_gluon_ws3_fwd_kernel, signature=signature, attrs=attrs, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def ptxas_report(ptx: str, tag: str, folder: str) -> dict:
    import triton

    binary = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    path = os.path.join(folder, f"{tag}.ptx")
    open(path, "w").write(ptx)
    res = subprocess.run([binary, "-arch=sm_90a", "-v", path, "-o", path + ".cubin"], capture_output=True, text=True)
    report = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    warns = sorted(set(re.findall(r"C75\d\d", report)))
    dec = sorted({int(r) for r in re.findall(r"setmaxnreg\.dec\.sync\.aligned\.u32\s+(\d+)", ptx)})
    inc = sorted({int(r) for r in re.findall(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+(\d+)", ptx)})
    maxnreg = re.findall(r"\.maxnreg\s+(\d+)", ptx)
    return {"rc": res.returncode, "regs": int(regs.group(1)) if regs else None,
            "spill_st": int(spills.group(1)) if spills else None, "spill_ld": int(spills.group(2)) if spills else None,
            "warn": warns, "dec": dec, "inc": inc, "maxnreg": maxnreg,
            "report": report if (res.returncode or warns) else report[-600:]}


if __name__ == "__main__":
    folder = os.environ.get("WS3_OUT") or tempfile.mkdtemp(prefix="ws3_")
    variants = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    for tag, kw in variants.items():
        try:
            if tag.startswith("baseline"):
                from sparseattn.kernels.gluon_ws_attention import compile_sm90 as base

                c = base(**kw)
            else:
                c = compile_sm90(**kw)
        except Exception as e:  # noqa: BLE001
            print(json.dumps({"tag": tag, "error": f"{type(e).__name__}: {str(e)[-1500:]}"}), flush=True)
            continue
        r = ptxas_report(c.asm["ptx"], tag, folder)
        r.update(tag=tag, shared=c.metadata.shared)
        print(json.dumps(r), flush=True)
