"""The flash k-means assignment step for Hopper (sm_90) in Gluon: the next centroid tile's product runs on the
tensor cores while the running minimum of the previous tile is updated.

Why a second assignment kernel: Triton 3.6 waits for every wgmma right after issuing it (``wgmma.wait_group 0``), so
inside a program the argmin epilogue (add ‖c‖², pack the index, min) never overlaps the products; on an H100
the Triton assignment spends ≈ 1,400 cycles per 128 × 64 tile where the product alone needs ≈ 500
(benchmarks/NOTES.md). Here, per program (``BLOCK_P`` points of one group, all of D):

    copy x and centroid tiles 0, 1, 2 (cp.async, a ring of 4 stages)
    S_0 = x·C_0ᵀ
    for t in 0 … T−2:
        wait for tile t+1's copy ; barrier ; copy tile t+3 into the stage tile t−1 used
        issue S_{t+1} = x·C_{t+1}ᵀ (async)
        best = min(best, rowmin(pack(S_t + ‖c‖², index)))   -- on the ALUs while S_{t+1} runs
        wait for S_{t+1}
    best = min(best, rowmin(pack(S_{T−1} + ‖c‖², index)))

(A product is issued only after the previous one retired: with one still in flight across the loop's back edge, or
while the next one's accumulator registers are written, ptxas serialises every wgmma — warnings C7514/C7515.)

Packed argmin: a distance's ``LOW_BITS`` low bits are replaced by its cluster index (``index_bits``: 10 bits for 1,000
clusters), so one float min keeps the smaller distance and, among distances equal after that truncation, the lower
index; the label is the low bits of a point's minimum. The truncation (≤ 2^(12−23) relative, ``MAX_INDEX_BITS``) is
far below the bf16 operands' rounding: labels agree with the float32 reference as often as before (99.985% at the
Wan shape). ``rowmin`` reduces each thread's own 16 columns of a point in registers (``_row_min``), so the running
minimum takes 4 registers a thread. Until the seventh session it was kept per (point, column slot), 64 registers,
with the tile number alone in 4 low bits; the program then held x (64 registers as the A operand), S_t, S_{t+1} and
the minimum (64 each) at the 255-register limit, and ptxas scheduled 57 of a tile's 64 min instructions before
issuing the next product instead of under it (SASS of the sm_90a build). Nsight Compute on an H100 showed the
consequence: tensor pipe active 44% of the cycles, the wgmma wait 20% of the loop's stall samples
(benchmarks/results/h100-2026-11-27-s7-run1-ncu.log). With the row minimum no min instruction precedes the product.
H100, Wan shape, four interleaved rounds against the previous kernel (…-s7-run2-kmeans-variants.log): 300 clusters
0.862–0.866 ms against 0.905–0.926 ms per assignment (every round faster, 6%), 1,000 clusters 1.908–1.952 against
1.894–2.004 ms (mean 1.931 against 1.949: within the rounds' scatter); runs s7 3–5 on two more machines: q 4–6% faster
in every round, k within 2% of the previous kernel's mean either way. Also tried in run s7 2, slower: two products per
loop trip with alternating accumulators (1.96–2.20 ms: ptxas spills), ‖c‖² loaded inside each step instead of one step
ahead (0.95 / 2.10 ms).

then the same labels and atomic centroid sums as the Triton kernel (``_assign_kernel`` in triton_kmeans.py, whose
semantics this kernel keeps for ``precision="bf16"`` up to the packing width: the operand copy holds −2c for bf16 and c
for float16, where the kernel folds ‖c‖²/2 − x·c, half the distance, with one add as well). ‖x‖² is left out of the
distance: it is the same for every centroid of a point. Stage reuse: tile t+3 overwrites the stage of tile t−1, whose
product every warp waited for in iteration t−1, before the barrier of iteration t. Shared memory: x 32 KB + 4 × 16 KB
at D 128, 64 centroids per tile: two programs per SM.

The points are the products' register operand (``A_REGS``, the default since the sixth session): loaded once per item
from shared memory, so each product reads only its centroid tile there. With both operands in shared memory a 128 × 64 ×
128 product reads 64 KB of it against 32 KB, as many cycles at 128 B/cycle as its arithmetic takes. H100, Wan shape,
interleaved rounds (benchmarks/results/h100-2026-11-27-s6-run{1,2}-kmeans-variants.log, where "persistent" is this
kernel with ``A_REGS`` off): assign 1.85 ms (rounds 1.846–1.851) against 1.92–2.08 ms for 1,000 clusters on one machine,
1.88–2.13 against 2.02–2.19 ms on another, 1.87–2.06 against 1.95–2.04 ms in eight rounds on a third
(…-s6-run6-kmeans-rounds.log); 0.904–0.925 against 0.931–0.950 ms for 300; labels identical. Also tried there, slower:
128 × 128 tiles with two warpgroups (2.49–2.68 ms), two warpgroups with register operands (2.36–2.44 ms; capped at 128
registers for two programs per SM: 2.53–2.69 ms), 64 × 128 tiles in a 3-stage ring (2.33–2.48 ms: each program streams
all centroids for half as many points), rings of 3 or 5 stages (no faster).

Persistent (``PERSISTENT``, the default launch): about two programs per SM, each looping over work items (group, point
tile) with a static stride, group-major (the items in flight at once are neighbours: one group's centroids, an L2
hit). After an item's last product the program loads its points from shared memory into registers, waits at a
barrier, issues the next item's copies (x and centroid tiles 0–2, into the same buffers), and only then reduces,
stores the labels and does the atomics, which run under those copies. Copy p mod COPIES of the sums, p the point
tile, as in the one-item-per-program grid, so labels and sizes are identical to it (sums up to summation order).
Index vectors of the copies, labels and atomics get an opaque zero (``_opaque_zero``): without it LLVM hoists their
per-thread offsets out of the item loop, they stay live across the product loop, and ptxas, out of registers, folds
part of each tile before issuing the next product (measured 15% slower than one item per program on an H100).
H100, Wan shape (benchmarks/results/h100-2026-11-27-s4-kmeans-persistent-run2.log): assign 0.96 → 0.94 ms per launch
for 300 clusters and 2.00 → 1.92 ms for 1,000; rereading x from L2 for the atomics instead of keeping it in registers
was slower (1.00, 2.08–2.15 ms).

``CSQ_SMEM`` (the default since the eighth session; ``TritonKMeans(_csq_smem=False)`` keeps the global loads):
‖c‖² travels with each centroid tile into a second 4-stage ring (``csq_smem``, 64 fp32 a stage, one 4-byte cp.async a
thread for half the threads: a group's ‖c‖² starts at g·C floats, so 16-byte alignment is unknown), in the tile's copy
group (tiles 0–2: all in the first group; one copy group each made the persistent kernel spill ~80 bytes). The next
tile's ‖c‖² is read (8 LDS.64) right after its product is issued and added as soon as that product retired, so the
loop carries distances; columns past C (zero-filled) get FAR in the last tile's fold. This replaces 16 masked global
loads a thread per tile, which shared one address register and showed as long-scoreboard stalls in Nsight Compute
(run s7 3). The product loop is shorter (sm_90a SASS: 331 against 411 instructions for bf16, 395 against 490 for
float16, 255 registers, no spills), and ptxas interleaves the fold with the product's 16 HGMMAs (all 64 FMNMX before
the last of them; with the global loads, none). H100, Wan shape, 8 interleaved rounds
(benchmarks/results/h100-2026-11-27-s8-run3-kmeans-csq-smem.log): 1,000 clusters 1.756–1.842 ms per assignment (mean
1.795) against 1.850–2.132 ms (mean 2.007) with the global loads, every round faster; 300 clusters 0.833–0.843 against
0.858–0.862 ms; labels identical.

Tried and removed (commit db24811, benchmarks/results/h100-2026-11-27-s4-kmeans-csq-mma-bench.log): ‖c‖² added by the
tensor cores (a chained K = 16 wgmma of [1, 1, 1, 0, …] against ‖c‖² split into three bf16 parts) instead of one add
per distance. The product loop fell from 437 to 304 instructions per tile and the labels were identical, but the
assignment was no faster (1,000 clusters 1.96 vs 2.01 ms, 300: 0.943 vs 0.951 ms on an H100): the loop is not bound
by instruction issue.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    async_copy,
    fence_async_shared,
    warpgroup_mma,
    warpgroup_mma_wait,
)

STAGES = gl.constexpr(4)  # centroid-tile ring; the schedule above needs exactly four
# Low bits of a distance that may carry the cluster index: the truncation (≤ 2^(12−23) relative) stays well under the
# bf16 operands' rounding (2^−9)
MAX_INDEX_BITS = 12
FAR = gl.constexpr(1.0e38)  # ‖c‖² of the columns past C: finite, since inf with index bits set would be a NaN


@gluon.jit
def _copy_tile(dst, c_base, t, crow, cols, C, BLOCK_C: gl.constexpr, BLOCK_D: gl.constexpr):
    """cp.async centroid tile t (rows t·BLOCK_C …) of the padded operand copy into dst; rows ≥ C are zero-filled."""
    cen = t * BLOCK_C + crow
    async_copy.async_copy_global_to_shared(dst, c_base + cen[:, None] * BLOCK_D + cols[None, :],
                                           mask=(cen < C)[:, None])


@gluon.jit
def _copy_csq(dst, csq_base, t, ccol, C, BLOCK_C: gl.constexpr):
    """cp.async ‖c‖² of centroid tile t (csq_base: the group's; ccol: ``csq_ld_layout``, 4 bytes a thread, since a
    group's ‖c‖² starts at g·C floats) into dst (``CSQ_SMEM``); zero-filled past C, where ``_products`` puts FAR."""
    cen = t * BLOCK_C + ccol
    async_copy.async_copy_global_to_shared(dst, csq_base + cen, mask=cen < C)


@gluon.jit
def _issue_item(x_smem, c_smem, csq_smem, X, CD, CSQ, g, p, N, C, sxg, sxn, z, ld_layout: gl.constexpr,
                csq_ld_layout: gl.constexpr, BLOCK_P: gl.constexpr, BLOCK_C: gl.constexpr, BLOCK_D: gl.constexpr,
                CSQ_SMEM: gl.constexpr):
    """cp.async the points of work item (group g, point tile p) and its centroid tiles 0, 1, 2 (with their ‖c‖²
    when CSQ_SMEM) into stages 0, 1, 2: copy groups {x, C_0}, {C_1}, {C_2}."""
    rows = p * BLOCK_P + gl.arange(0, BLOCK_P, layout=gl.SliceLayout(1, ld_layout)) + z
    cols = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, ld_layout))
    crow = gl.arange(0, BLOCK_C, layout=gl.SliceLayout(1, ld_layout)) + z
    if CSQ_SMEM:  # ‖c‖² of tiles 0-2, all in the first copy group (the persistent kernel spilled with one a group)
        ccol = gl.arange(0, BLOCK_C, layout=csq_ld_layout)
        for t0 in gl.static_range(3):
            _copy_csq(csq_smem.index(t0), CSQ + g * C, t0, ccol, C, BLOCK_C)
    x_ptr = X + g * sxg + rows[:, None].to(gl.int64) * sxn + cols[None, :]
    async_copy.async_copy_global_to_shared(x_smem, x_ptr, mask=(rows < N)[:, None])
    c_base = CD + g * C * BLOCK_D
    for t0 in gl.static_range(3):
        _copy_tile(c_smem.index(t0), c_base, t0, crow, cols, C, BLOCK_C, BLOCK_D)
        async_copy.commit_group()


@gluon.jit
def _opaque_zero(w):
    """0, computed from w through an inline-assembly move the compiler cannot see through. Added to the index
    vectors of a work item's copies, labels and atomics, it keeps LLVM from hoisting their per-thread offsets out of
    the persistent loop, where they would stay live across the product loop and crowd its registers (ptxas then
    folds half of a tile before issuing the next product, and the overlap is lost)."""
    return gl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [w], dtype=gl.int32, is_pure=False, pack=1) - w


@gluon.jit
def _dist(s, csq, FOLD: gl.constexpr):
    """The distances of a product s to centroids with ‖c‖² csq (up to ‖x‖², and halved for float16)."""
    if FOLD:  # the operand copy holds −2c: x·(−2c) + ‖c‖²
        return s + csq[None, :]
    else:  # float16 keeps c (−2c could overflow): ‖c‖²/2 − x·c, half the distance, one add per element as above
        return (0.5 * csq)[None, :] - s


@gluon.jit
def _pack_dist(dist, t, slots, LOW_BITS: gl.constexpr, BLOCK_C: gl.constexpr):
    """Distances of centroid tile t (``_dist``) with their LOW_BITS low bits replaced by the cluster index."""
    bits = dist.to(gl.int32, bitcast=True)
    return ((bits & ~((1 << LOW_BITS) - 1)) | (t * BLOCK_C + slots)[None, :]).to(gl.float32, bitcast=True)


@gluon.jit
def _pack(s, csq, t, slots, FOLD: gl.constexpr, LOW_BITS: gl.constexpr, BLOCK_C: gl.constexpr):
    """The distances of centroid tile t with their LOW_BITS low bits replaced by the cluster index: the min of the
    packed values is the nearest cluster (the lowest index among distances equal after the truncation)."""
    return _pack_dist(_dist(s, csq, FOLD), t, slots, LOW_BITS, BLOCK_C)


@gluon.jit
def _row_min(packed, BLOCK_P: gl.constexpr, BLOCK_C: gl.constexpr):
    """The minimum of each thread's own columns of a point: the wgmma accumulator gives a thread columns
    8·j + 2·(lane % 4) + i, and the reshape puts j and i on axes of their own, so the reduction stays in registers
    (no shuffles) and a running minimum takes BLOCK_P/32 registers a thread instead of BLOCK_P·BLOCK_C/128."""
    return gl.min(gl.min(gl.reshape(packed, [BLOCK_P, BLOCK_C // 8, 4, 2]), 3), 1)


@gluon.jit
def _products(x_smem, c_smem, csq_smem, CD, CSQ, g, C, z, ld_layout: gl.constexpr, csq_ld_layout: gl.constexpr,
              acc_layout: gl.constexpr, FOLD: gl.constexpr, LOW_BITS: gl.constexpr, BLOCK_P: gl.constexpr,
              BLOCK_C: gl.constexpr, BLOCK_D: gl.constexpr, A_REGS: gl.constexpr, CSQ_SMEM: gl.constexpr):
    """The running packed minimum (``_row_min``) over all centroid tiles of group g, for the points in x_smem
    (copied by ``_issue_item``, three copy groups outstanding). Returns with every copy landed and every product
    retired (this warp's: a barrier makes the shared memory free for the next item)."""
    cols = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, ld_layout))
    crow = gl.arange(0, BLOCK_C, layout=gl.SliceLayout(1, ld_layout)) + z
    ccol = gl.arange(0, BLOCK_C, layout=csq_ld_layout) + z
    slots = gl.arange(0, BLOCK_C, layout=gl.SliceLayout(0, acc_layout)) + z
    zeros = gl.zeros([BLOCK_P, BLOCK_C], gl.float32, acc_layout)
    c_base = CD + g * C * BLOCK_D
    n_tiles = gl.cdiv(C, BLOCK_C)
    async_copy.wait_group(2)  # x and C_0 landed
    fence_async_shared()
    gl.thread_barrier()
    if A_REGS:  # the points as the register operand: the products read only the centroid tiles from shared memory
        xa = x_smem.load(gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2))
    else:
        xa = x_smem
    tok = warpgroup_mma(xa, c_smem.index(0).permute((1, 0)), zeros, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=[tok])
    best = _row_min(gl.full_like(zeros, float("inf")), BLOCK_P, BLOCK_C)
    if CSQ_SMEM:  # s carries the distances (``_dist``) from here on
        csq = csq_smem.index(0).load(gl.SliceLayout(0, acc_layout))
        s = _dist(s, csq, FOLD)
    else:
        csq = gl.load(CSQ + g * C + slots, mask=slots < C, other=FAR)
    for t in range(0, n_tiles - 1):
        best, s, csq = _step(t, best, s, csq, xa, c_smem, csq_smem, c_base, CSQ, g, C, crow, cols, ccol, slots,
                             zeros, FOLD, LOW_BITS, BLOCK_P, BLOCK_C, BLOCK_D, CSQ_SMEM)
    if CSQ_SMEM:  # the columns past C (zero-filled centroids and ‖c‖²) of the last tile, the only partial one
        packed = _pack_dist(gl.where(((n_tiles - 1) * BLOCK_C + slots < C)[None, :], s, FAR), n_tiles - 1, slots,
                            LOW_BITS, BLOCK_C)
    else:
        packed = _pack(s, csq, n_tiles - 1, slots, FOLD, LOW_BITS, BLOCK_C)
    best = gl.minimum(best, _row_min(packed, BLOCK_P, BLOCK_C))
    async_copy.wait_group(0)  # copies of tiles past the end (all masked) land before the stages are reused
    return best


@gluon.jit
def _step(t, best, s, csq, xa, c_smem, csq_smem, c_base, CSQ, g, C, crow, cols, ccol, slots, zeros,
          FOLD: gl.constexpr, LOW_BITS: gl.constexpr, BLOCK_P: gl.constexpr, BLOCK_C: gl.constexpr,
          BLOCK_D: gl.constexpr, CSQ_SMEM: gl.constexpr):
    """Product t+1 on the tensor cores while product t (s, with ‖c‖² csq) is folded into best; returns (best,
    product t+1, ‖c‖² of tile t+1). CSQ_SMEM: s holds tile t's distances (``_dist``) already, and so does the
    product returned: ‖c‖² of tile t+1 is read from csq_smem under the product and added once it retired."""
    async_copy.wait_group(1)  # tile t+1 landed (t+2 may still be in flight)
    fence_async_shared()
    gl.thread_barrier()  # also: every warp is past S_{t-1}, so its stage can take tile t+3
    _copy_tile(c_smem.index((t + 3) % STAGES), c_base, t + 3, crow, cols, C, BLOCK_C, BLOCK_D)
    if CSQ_SMEM:  # ‖c‖² of tile t+3 in the same copy group
        _copy_csq(csq_smem.index((t + 3) % STAGES), CSQ + g * C, t + 3, ccol, C, BLOCK_C)
    async_copy.commit_group()
    # issued only now that S_t has retired (C7514/C7515 in the module docstring); S_t is folded under it
    tok = warpgroup_mma(xa, c_smem.index((t + 1) % STAGES).permute((1, 0)), zeros, use_acc=False, is_async=True)
    if CSQ_SMEM:
        # tile t+1 landed (the wait above); its stage takes tile t+5 only after the next step's barrier
        csq_next = csq_smem.index((t + 1) % STAGES).load(slots.type.layout)
        best = gl.minimum(best, _row_min(_pack_dist(s, t, slots, LOW_BITS, BLOCK_C), BLOCK_P, BLOCK_C))
        return best, _dist(warpgroup_mma_wait(0, deps=[tok]), csq_next, FOLD), csq_next
    else:
        cen = (t + 1) * BLOCK_C + slots
        csq_next = gl.load(CSQ + g * C + cen, mask=cen < C, other=FAR)
        best = gl.minimum(best, _row_min(_pack(s, csq, t, slots, FOLD, LOW_BITS, BLOCK_C), BLOCK_P, BLOCK_C))
        return best, warpgroup_mma_wait(0, deps=[tok]), csq_next


@gluon.jit
def _labels(best, C, acc_layout: gl.constexpr, LOW_BITS: gl.constexpr):
    """Each point's cluster: the index in the low bits of its smallest packed distance (``_pack``)."""
    low = gl.convert_layout(gl.min(best, 1), gl.SliceLayout(1, acc_layout))
    best_idx = low.to(gl.int32, bitcast=True) & ((1 << LOW_BITS) - 1)
    return gl.where(best_idx < C, best_idx, 0)  # a row of NaN or huge distances: cluster 0


@gluon.jit
def _scatter(SUMS, COUNTS, x, best_idx, g, p, N, C, G, z, BLOCK_P: gl.constexpr, BLOCK_D: gl.constexpr,
             COPIES: gl.constexpr):
    """Add the points x (registers, ``row_layout`` of the kernel) of work item (g, p) into the sums and counts of
    their clusters, in copy p mod COPIES."""
    NW: gl.constexpr = gl.num_warps()
    # One warp instruction adds one whole point (a contiguous row of the sums, 16 bytes per lane) and the counts are
    # not replicated across lanes: with the copy layout (two rows per instruction, 16-byte gaps) the atomics ran
    # ~3× slower on an H100.
    row_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 4], threads_per_warp=[1, 32],
                                                warps_per_cta=[NW, 1], order=[1, 0])
    count_layout: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
    lab = gl.convert_layout(best_idx, gl.SliceLayout(1, row_layout)).to(gl.int64)
    acc_rows = p * BLOCK_P + gl.arange(0, BLOCK_P, layout=gl.SliceLayout(1, row_layout)) + z
    acc_cols = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, row_layout))
    copy = (p % COPIES) * G * C  # the copy's offset in (group, cluster) rows
    SUMS += copy * BLOCK_D
    COUNTS += copy
    gl.atomic_add(SUMS + (g * C + lab)[:, None] * BLOCK_D + acc_cols[None, :], x.to(gl.float32),
                  mask=(acc_rows < N)[:, None], sem="relaxed")
    count_rows = p * BLOCK_P + gl.arange(0, BLOCK_P, layout=count_layout) + z
    gl.atomic_add(COUNTS + g * C + gl.convert_layout(lab, count_layout),
                  gl.full([BLOCK_P], 1, gl.int32, count_layout), mask=count_rows < N, sem="relaxed")


@gluon.jit
def _gluon_assign_kernel(
    X, CD, CSQ, LABELS, SUMS, COUNTS, SHIFT,
    it, tol, N, C, G, sxg, sxn,
    BLOCK_P: gl.constexpr, BLOCK_C: gl.constexpr, BLOCK_D: gl.constexpr, MAX_IT: gl.constexpr,
    USE_TOL: gl.constexpr, LOW_BITS: gl.constexpr, FOLD: gl.constexpr, ACCUMULATE: gl.constexpr,
    COPIES: gl.constexpr = 1, PERSISTENT: gl.constexpr = False, A_REGS: gl.constexpr = True,
    CSQ_SMEM: gl.constexpr = True,
):
    """Arguments as ``_assign_kernel`` (triton_kmeans.py) with D = BLOCK_D (rows of 16-byte copies, so no column
    mask) and G the number of groups; X and CD share the operand dtype (bf16 or float16). PERSISTENT: a 1-D grid of
    programs striding over the work items (group-major); else grid (cdiv(N, BLOCK_P), G), one item per program."""
    gl.static_assert(BLOCK_C <= (1 << LOW_BITS), "LOW_BITS holds a cluster index (packed argmin only)")
    NW: gl.constexpr = gl.num_warps()
    dtype: gl.constexpr = CD.dtype.element_ty
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1],
                                                         instr_shape=[16, BLOCK_C, 16])
    TPR: gl.constexpr = BLOCK_D // 8  # threads per row: one 16-byte cp.async each
    ld_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[32 // TPR, TPR],
                                               warps_per_cta=[NW, 1], order=[1, 0])
    # the atomics' layout (``_scatter``): one point per warp instruction
    row_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 4], threads_per_warp=[1, 32],
                                                warps_per_cta=[NW, 1], order=[1, 0])
    # the copies of ‖c‖² (CSQ_SMEM, ``_copy_csq``)
    csq_ld_layout: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
    smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128 if BLOCK_D * 2 >= 128 else BLOCK_D * 2,
                                                     element_bitwidth=16, rank=2)

    skip = False
    if USE_TOL:  # the device-side stop test: an earlier round's largest shift was below tol
        offs = gl.arange(0, MAX_IT, layout=gl.BlockedLayout([1], [32], [NW], [0]))
        shifts = gl.load(SHIFT + offs, mask=offs < it, other=float("inf"))
        skip = gl.min(shifts, 0) < tol
    if not skip:
        x_smem = gl.allocate_shared_memory(dtype, [BLOCK_P, BLOCK_D], smem_layout)
        c_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_C, BLOCK_D], smem_layout)
        if CSQ_SMEM:  # ‖c‖² of each stage's tile, copied with it
            csq_smem = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_C], gl.SwizzledSharedLayout(
                vec=1, per_phase=1, max_phase=1, order=[0]))
        else:
            csq_smem = c_smem  # a placeholder: nothing reads or writes it
        if PERSISTENT:
            # Work item w: group w // tiles, point tile w % tiles; program i takes items i, i + programs, … Items
            # that run at the same time are neighbours, so mostly one group's centroids are read (an L2 hit).
            tiles = gl.cdiv(N, BLOCK_P)
            items = tiles * G
            step = gl.num_programs(0)
            first = gl.program_id(0)
            if first < items:
                _issue_item(x_smem, c_smem, csq_smem, X, CD, CSQ, (first // tiles).to(gl.int64), first % tiles, N,
                            C, sxg, sxn, 0, ld_layout, csq_ld_layout, BLOCK_P, BLOCK_C, BLOCK_D, CSQ_SMEM)
            for w in range(first, items, step):
                g = (w // tiles).to(gl.int64)
                p = w % tiles
                z = _opaque_zero(w)  # keeps the item's index arithmetic inside the loop (see _opaque_zero)
                best = _products(x_smem, c_smem, csq_smem, CD, CSQ, g, C, z, ld_layout, csq_ld_layout, acc_layout,
                                 FOLD, LOW_BITS, BLOCK_P, BLOCK_C, BLOCK_D, A_REGS, CSQ_SMEM)
                if ACCUMULATE:  # the points for the atomics, before the next item's copy lands
                    x = x_smem.load(row_layout)
                gl.thread_barrier()  # every warp is past its last product (and its read of x)
                nxt = w + step
                if nxt < items:  # the next item's copies run under this one's reduction, labels and atomics
                    _issue_item(x_smem, c_smem, csq_smem, X, CD, CSQ, (nxt // tiles).to(gl.int64), nxt % tiles, N,
                                C, sxg, sxn, z, ld_layout, csq_ld_layout, BLOCK_P, BLOCK_C, BLOCK_D, CSQ_SMEM)
                best_idx = _labels(best, C, acc_layout, LOW_BITS)
                rows = p * BLOCK_P + gl.arange(0, BLOCK_P, layout=gl.SliceLayout(1, acc_layout)) + z
                gl.store(LABELS + g * N + rows, best_idx.to(gl.int64), mask=rows < N)
                if ACCUMULATE:
                    _scatter(SUMS, COUNTS, x, best_idx, g, p, N, C, G, z, BLOCK_P, BLOCK_D, COPIES)
        else:
            p = gl.program_id(0)
            g = gl.program_id(1).to(gl.int64)
            _issue_item(x_smem, c_smem, csq_smem, X, CD, CSQ, g, p, N, C, sxg, sxn, 0, ld_layout, csq_ld_layout,
                        BLOCK_P, BLOCK_C, BLOCK_D, CSQ_SMEM)
            best = _products(x_smem, c_smem, csq_smem, CD, CSQ, g, C, 0, ld_layout, csq_ld_layout, acc_layout, FOLD,
                             LOW_BITS, BLOCK_P, BLOCK_C, BLOCK_D, A_REGS, CSQ_SMEM)
            best_idx = _labels(best, C, acc_layout, LOW_BITS)
            rows = p * BLOCK_P + gl.arange(0, BLOCK_P, layout=gl.SliceLayout(1, acc_layout))
            gl.store(LABELS + g * N + rows, best_idx.to(gl.int64), mask=rows < N)
            if ACCUMULATE:  # the centroid update's scatter: the points are still in shared memory
                _scatter(SUMS, COUNTS, x_smem.load(row_layout), best_idx, g, p, N, C, G, 0, BLOCK_P, BLOCK_D,
                         COPIES)


def index_bits(clusters: int, block_c: int) -> int:
    """Low bits of a packed distance that hold the cluster index (padded to whole centroid tiles)."""
    return max(1, (-(-clusters // block_c) * block_c - 1).bit_length())


def compile_sm90(block_p: int = 128, block_c: int = 64, num_warps: int = 4, maxnreg: int = 0, dtype: str = "bf16",
                 accumulate: bool = True, clusters: int = 1000, copies: int = 1, persistent: bool = True,
                 a_regs: bool = True, csq_smem: bool = True):
    """Compile the kernel for sm_90 without a GPU (for inspection and the CPU test); the defaults are the launch
    options ``TritonKMeans`` uses. Returns ``triton.compile``'s result (``.asm["ptx"]``, ``.metadata.shared``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    names = ["X", "CD", "CSQ", "LABELS", "SUMS", "COUNTS", "SHIFT", "it", "tol", "N", "C", "G", "sxg", "sxn"]
    types = [f"*{dtype}", f"*{dtype}", "*fp32", "*i64", "*fp32", "*i32", "*fp32", "i32", "fp32"] + ["i32"] * 5
    signature = dict(zip(names, types))
    signature.update({k: "constexpr" for k in ("BLOCK_P", "BLOCK_C", "BLOCK_D", "MAX_IT", "USE_TOL", "LOW_BITS",
                                               "FOLD", "ACCUMULATE", "COPIES", "PERSISTENT", "A_REGS",
                                               "CSQ_SMEM")})
    aligned = [i for i, name in enumerate(names) if types[i].startswith("*") or name in ("sxg", "sxn")]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = GluonASTSource(_gluon_assign_kernel, signature=signature, attrs=attrs,
                         constexprs=dict(BLOCK_P=block_p, BLOCK_C=block_c, BLOCK_D=128, MAX_IT=2, USE_TOL=False,
                                         LOW_BITS=index_bits(clusters, block_c), FOLD=dtype == "bf16",
                                         ACCUMULATE=accumulate, COPIES=copies, PERSISTENT=bool(persistent),
                                         A_REGS=bool(a_regs), CSQ_SMEM=bool(csq_smem)))
    options = {"num_warps": num_warps, **({"maxnreg": maxnreg} if maxnreg else {})}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
