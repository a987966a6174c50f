"""Variable-block sparse attention forward for Hopper (sm_90), warp-specialised, in Gluon (kernel ``gluon_ws``).

Same plan, semantics and tail pass as kernel ``gluon`` (kernels/gluon_attention.py, itself kernel ``triton``'s plan):
per query block a token-packed list of key indices, work items (query block, 128-row tile) head-major, q, k, v read
and the output written through the plan's query rows and the tensors' strides. Only the main pass changes.

Why: in kernel ``gluon`` the compute warps also issue the K/V gathers and both warpgroups run in lockstep between
CTA barriers, so the score product is never overlapped and the gather issue sits on the critical path (it stops near
0.73× cuDNN on one dense block). This kernel splits each program (one work item: 128 query rows) into three
partitions with ``gl.warp_specialize``, FlashAttention-3 style:

  * producer (4 warps, few registers: setmaxnreg down): loads the key indices of tile t from the list, gathers K_t
    and V_t (rows by index, 16-byte cp.async, rows past the list end zero-filled; 8 lanes a row at D 128, so each
    thread copies two chunks 128 bytes apart from one row address, see below) into stage t % STAGES of two
    rings, and signals the stage's "full" mbarrier with ``cp.async.mbarrier.arrive.noinc`` (the arrival fires when
    the thread's copies have landed; the barrier expects one arrival per producer thread). Before reusing a stage it
    waits on the stage's "empty" mbarrier. It also gathers the Q tile (through the query order when fused).
  * two consumer warpgroups (4 warps each, rows 0–63 and 64–127, setmaxnreg up): per key tile S = Q·Kᵀ and O += P·V
    with async wgmma, the next score product issued together with the previous P·V (intra-warpgroup overlap, as in
    kernel ``gluon``), O rescaled between the two issues so the multiply runs under the score product
    (FlashAttention-3's order, ``early_rescale``), online softmax in fp32 with exp2 and the scale folded into one
    FMA. The two warpgroups issue their products in strict alternation (``pingpong``, FlashAttention-3's inter-warpgroup
    schedule), so one warpgroup's softmax runs under the other's products. The turns are handed over through two
    hardware named barriers, as FlashAttention-3's warp-scheduler barriers: warpgroup w waits with
    ``bar.sync 8 + w, 256`` right before issuing its products and, right after issuing them, counts itself on the
    other's barrier with ``bar.arrive 9 − w, 256`` (Gluon has no API for them: inline asm with side effects, one element
    per thread; ids 8 and 9, which Triton does not use: it takes 0, 1 and one per worker partition, 2 and 3). Warpgroup
    1 arrives once on warpgroup 0's barrier before its first turn (warpgroup 0 goes first), each warpgroup takes one
    turn per key tile (tile 0's score product; then each tile's score product with the previous P·V, the rescale between
    them; the item's last P·V is outside the turns, as in FlashAttention-3), and warpgroup 0 consumes warpgroup 1's last
    hand-over before the program ends. Both warpgroups run the same items with the same tile counts, so in the
    persistent kernel the alternation runs on across items. ``pingpong=False`` lets the warpgroups issue as soon as
    their data is there.

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

Persistent (``persistent``, default): about one program per SM, each running work items until none are left, so a
program's prologue (launch, barrier set-up, Q and the first K/V tiles) is paid once per SM rather than once per item and
overlaps the previous item. The K/V ring and its full/empty mbarriers run on across items (a tile's stage and phase come
from its position g in the program's ring sequence, not its index in the list), so the producer gathers the next item's
K_0/V_0 while the consumers finish the current item's last tiles. Q keeps one buffer (a second would exceed the 227 KB
per block): q_full (producer → consumers, one cp.async arrival per producer thread) and q_empty (consumers → producer,
one arrival per consumer warpgroup once its last score product of the item has retired, before the epilogue's P·V and
store) hand it back and forth; the producer gathers K_0/V_0 of the next item first, then waits q_empty and gathers its
Q. Work items are claimed with an atomic increment of a zeroed int32 counter (``dynamic``, default: the producer claims,
skipping unused slots, and hands the slot index to both consumer warpgroups through two shared-memory slots with
item_full mbarriers; the slot of item i + 2 is rewritten only after q_empty of item i, which follows the consumers'
read) or by a static stride (program p runs slots p, p + nprog, …). The order stays head-major (the work list's), which
keeps the K/V being gathered in L2; no host synchronisation (CUDA-graph capturable). Outputs equal the one-program-per-
item kernel's bit for bit (each item runs the same instructions).

Registers (ptxas, sm_90a, no spills): launched at 168 per thread (12 warps); the producer drops to 64, consumer
warpgroup 0 (the default partition) rises to 224 and warpgroup 1 to 216. The producer spilled at 40–56.

Producer layout (seventh session): a K/V row of D 128 used to be spread over 16 lanes, one 16-byte copy each, so every
thread computed a 64-bit address (and loaded an index, and tested a mask) for 16 rows per key tile: 416 instructions a
tile per producer thread, 29% of all the instructions the kernel issued (Nsight Compute source counters, run s7 1,
where the consumers' loop stalls mostly on fixed-latency dependencies and dispatch). With 8 lanes a row
(``ROW_THREADS``; each lane copies chunks c and c + 8 of its row, 128 bytes apart, so a warp instruction still reads
whole 128-byte lines) each thread handles 8 rows: 260 instructions a tile. H100, Wan shape, interleaved rounds against
the previous layout (``GluonWSBlockSparse(_row_threads=16)``, bit-identical outputs;
benchmarks/results/h100-2026-11-27-s7-run8-producer-8-lanes.log): one block 210.9 against 216.6 ms, k-means layouts at
15 / 10 / 30% 39.30 / 26.95 / 75.92 against 41.74 / 29.04 / 81.28 ms (0.763 / 0.748 / 0.783× cuDNN's effective
throughput against 0.718 / 0.694 / 0.731× in that run). Two adjacent 16-byte chunks per thread instead (16 elements a
thread, 8 lanes a row) cut the instructions as much but left each warp instruction reading every other chunk of its
lines, and was 3–10% slower than the old layout (…-s7-run7-producer-rowvec16.log).

Measured (H100 SXM, Wan 2.1 720p B1 H40 N75600 D128 bf16, benchmarks/gluon_ws_dev.py, cuDNN SDPA in the same process,
benchmarks/results/h100-2026-11-27-s3-gluonws-run2.log): one block holding every token 233.9 ms = 500 TFLOP/s,
0.83× cuDNN (195.3 ms), against 269.8 ms (triton) and 275.5 ms (gluon); k-means layouts at 10/15/30% 30.3/43.0/86.0 ms
(triton 31.7/45.7/90.8, gluon 33.7/48.3/96.6), 0.66–0.69× cuDNN in effective TFLOP/s with 11–12% tile waste. With
a ping-pong handing the turns over through two mbarriers one block took 251.2 ms (0.78×): the hand-over (a warpgroup
barrier, an arrive, a try_wait poll) sits on every iteration's critical path, while the unsynchronised warpgroups
already interleave on the tensor cores; FlashAttention-3 hands over with named barriers (bar.sync/bar.arrive), which
Gluon does not expose (the named-barrier version below; the mbarrier one was removed in the sixth session).
``early_rescale=False`` took 236.8 ms. The sparse cases gain less than the dense one: there the Triton tail pass,
each program's prologue (Q and the first tile, not overlapped: one work item per program) and the uneven list
lengths remain.

Persistent, measured in one process (H100 SXM, same shape, benchmarks/gluon_ws_dev.py, cuDNN 198.4 ms,
benchmarks/results/h100-2026-11-27-s3-gluonws-persistent.log; best of two interleaved rounds): one block 224.5 ms
(0.88× cuDNN) against 235.8 ms one program per item (0.84×); k-means layouts at 10/15/30% 29.2/42.2/81.2 ms
(0.69/0.71/0.74× cuDNN effective) against 30.9/44.6/86.4 ms (0.66/0.68/0.69×): 5–6% faster. The static stride
gained on the dense block (228.5 ms) but not on the k-means layouts (30.0/44.6/87.0 ms): list lengths vary, so
fixed shares of items leave SMs idle at the end, where the atomic counter balances greedily. The Triton tail pass
(≤ 64-row tiles) still runs as its own launch.

Tail tiles inside the persistent kernel were built and measured, and were slower (commit 3fe85f6 holds the code;
benchmarks/results/h100-2026-11-27-s4-gluonws-tail-run1/2.log, H100, Wan shape, one process): with consumer
warpgroup 0 computing a tail tile as its half of a 128-row item (warpgroup 1 only keeping the barriers' counts),
42.41 / 29.19 / 82.40 ms at 15 / 10 / 30% against 41.14 / 29.19 / 81.61 ms with the Triton tail launch; with both
warpgroups splitting a tail's key tiles and merging (O, m, l) through shared memory, 42.8–43.4 / 29.7–29.9 /
83.1–83.9 ms (and ptxas spills). A tail tile gathers as many K/V bytes per key tile as a 128-row tile, so inside the
kernel the producer's gathers bound it; the Triton launch's several small programs per SM hide that latency better.
Timed alone, the Triton tail launch takes 6.45 ms and the persistent pass 35.76 ms at 15% (tail tiles are about 15%
of the time).

Named-barrier ping-pong (persistent kernel, H100 SXM, Wan shape, benchmarks/gluon_ws_dev.py --set pingpong, one
process, interleaved rounds, best round; benchmarks/results/h100-2026-11-27-s4-gluonws-named-pingpong-run1/2.log):
one block 215.6 / 216.5 ms against 222.1 / 221.4 ms free-running (cuDNN 197.6 / 199.3 ms: 0.92× against 0.89–0.90×;
every named round faster than every free-running one); k-means 15% 41.75 / 41.70 against 41.91 / 42.03 ms, 10% 28.70
against 28.89 ms, 30% 80.60 against 80.49 ms (0.70–0.74× cuDNN effective either way). Outputs bit-identical. So
it is the default: 2–3% on the dense block, where the main pass is all the time, and within about 1% (±) on the
k-means layouts, where the Triton tail launch and uneven lists weigh as much as the main pass's inner loop. Unlike the
mbarrier hand-over (7% slower), bar.sync waits in hardware without a poll loop and bar.arrive does not wait at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from sparseattn.registry import register

from .gluon_attention import GluonBlockSparse, _softmax, _work_item
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
# Named-barrier ids of the two turns (warpgroup w waits on TURN_BAR + w). Triton uses 0 (the default partition's
# warps), 1 (the whole CTA, around warp_specialize) and 2, 3 (one per worker partition); 16 exist per CTA.
TURN_BAR = gl.constexpr(8)


# ----------------------------------------------------------------------------------------------------------------
# Producer partition
# ----------------------------------------------------------------------------------------------------------------
@gluon.jit
def _producer(q_smem, k_smem, v_smem, q_full, full, empty,
              Qh, Kh, Vh, Q_ROWS, lst, q_start, q_end, L, row_base, sqn, skn, svn,
              HAS_Q_ROWS: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, ROW_THREADS: gl.constexpr):
    """Gathers Q once, then K_t and V_t of every key tile t into stage t % STAGES (see the module docstring)."""
    # one 16-byte cp.async per thread and row chunk; ROW_THREADS lanes a row (8 at D 128: each thread copies two
    # chunks 128 bytes apart from one row address, every warp instruction still reads whole 128-byte lines)
    ld: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[32 // ROW_THREADS, ROW_THREADS],
                                        warps_per_cta=[gl.num_warps(), 1], order=[1, 0])
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, ld))
    _gather_q(q_smem, q_full, Qh, Q_ROWS, q_start, q_end, row_base, sqn, offs_d, HAS_Q_ROWS, ld)

    n_tiles = gl.maximum((L + BLOCK_N - 1) // BLOCK_N, 1)  # an empty list still runs one (all-masked) tile
    for t in range(n_tiles):
        _gather_tile(t, t, k_smem, v_smem, full, empty, Kh, Vh, lst, L, skn, svn, offs_d, BLOCK_N, ld)


@gluon.jit
def _gather_q(q_smem, q_full, Qh, Q_ROWS, q_start, q_end, row_base, sqn, offs_d, HAS_Q_ROWS: gl.constexpr,
              ld: gl.constexpr):
    """Q, as two 64-row halves (one per consumer warpgroup), through the query order when the permutation is fused;
    q_full completes when every producer thread's copies have landed."""
    for w in gl.static_range(2):
        q_pos = q_start + w * WG_ROWS + gl.arange(0, WG_ROWS, layout=gl.SliceLayout(1, ld))
        q_live = q_pos < q_end
        if HAS_Q_ROWS:
            q_pos = gl.load(Q_ROWS + row_base + q_pos, mask=q_live, other=0)
        q_ptr = Qh + q_pos[:, None].to(gl.int64) * sqn + offs_d[None, :]
        async_copy.async_copy_global_to_shared(q_smem.index(w), q_ptr, mask=q_live[:, None])
    async_copy.mbarrier_arrive(q_full, increment_count=False)


@gluon.jit
def _gather_tile(t, g, k_smem, v_smem, full, empty, Kh, Vh, lst, L, skn, svn, offs_d, BLOCK_N: gl.constexpr,
                 ld: gl.constexpr):
    """K_t and V_t (key tile t of the list) into ring stage g % STAGES (g: the tile's position in the ring's
    sequence), after the consumers have freed that stage; full completes when the copies have landed."""
    # A tile is gathered in four row chunks: the 64-bit source addresses of a whole tile (16 rows per thread at D 128)
    # do not fit the producer's register budget (ptxas spilled), a chunk's do.
    CH: gl.constexpr = BLOCK_N // 4
    offs_c = gl.arange(0, CH, layout=gl.SliceLayout(1, ld))
    # Key indices of tile t, loaded before the stage wait so their L2 latency hides behind it. They are not
    # prefetched a tile ahead in registers (as kernel 'gluon' does): the producer runs up to two tiles ahead of
    # the consumers, which hides this latency, and two tiles of indices do not fit its register budget.
    p0 = t * BLOCK_N + offs_c
    i0 = gl.load(lst + p0, mask=p0 < L, other=0)
    i1 = gl.load(lst + p0 + CH, mask=p0 + CH < L, other=0)
    i2 = gl.load(lst + p0 + 2 * CH, mask=p0 + 2 * CH < L, other=0)
    i3 = gl.load(lst + p0 + 3 * CH, mask=p0 + 3 * CH < L, other=0)
    s = g % STAGES
    # a fresh barrier counts as having completed the phase before its first, so round 0 passes at once
    mbarrier.wait(empty.index(s), ((g // STAGES) & 1) ^ 1)
    ks = k_smem.index(s)
    vs = v_smem.index(s)
    _gather_kv(ks.slice(0, CH), vs.slice(0, CH), Kh, Vh, i0, p0 < L, skn, svn, offs_d)
    _gather_kv(ks.slice(CH, CH), vs.slice(CH, CH), Kh, Vh, i1, p0 + CH < L, skn, svn, offs_d)
    _gather_kv(ks.slice(2 * CH, CH), vs.slice(2 * CH, CH), Kh, Vh, i2, p0 + 2 * CH < L, skn, svn, offs_d)
    _gather_kv(ks.slice(3 * CH, CH), vs.slice(3 * CH, CH), Kh, Vh, i3, p0 + 3 * CH < L, skn, svn, offs_d)
    async_copy.mbarrier_arrive(full.index(s), increment_count=False)


@gluon.jit
def _producer_persistent(q_smem, k_smem, v_smem, q_full, q_empty, full, empty, item_smem, item_full, Q, K, V,
                         Q_ROWS, Q_OFF, LENS, LIST_OFF, LIST, WORK_I, WORK_R, COUNTER, N, H, MQ, SLOTS, N_ITEMS,
                         sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
                         BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                         HAS_Q_ROWS: gl.constexpr, DYNAMIC: gl.constexpr, ROW_THREADS: gl.constexpr):
    """The persistent kernel's producer. Static schedule: work items pid, pid + nprog, … (unused slots skipped).
    Dynamic schedule: the next item is claimed with an atomic increment of COUNTER (unused slots skipped) and published
    to the consumers through item_smem/item_full (N_ITEMS: no more items). Per item K_0/V_0 first (the ring runs on
    across items, so it is gathered while the consumers finish the previous item), then Q once both consumer warpgroups
    have retired their last score product of the previous item (q_empty), then the remaining tiles."""
    ld: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[32 // ROW_THREADS, ROW_THREADS],
                                        warps_per_cta=[gl.num_warps(), 1], order=[1, 0])
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, ld))
    g = 0  # tiles gathered so far (the ring's sequence)
    it = 0  # work items gathered so far (q_full / q_empty / item_full phases)
    if DYNAMIC:
        w = _claim(COUNTER, WORK_I, N_ITEMS)
        while w < N_ITEMS:
            _publish(item_smem, item_full, it, w)
            g = _produce_item(w, g, it, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, Q, K, V, Q_ROWS,
                              Q_OFF, LENS, LIST_OFF, LIST, WORK_I, WORK_R, N, H, MQ, SLOTS, sqb, sqh, sqn, skb, skh,
                              skn, svb, svh, svn, offs_d, BLOCK_M, BLOCK_N, HAS_Q_ROWS, ld)
            it += 1
            # claimed after the item's last gather: the producer runs up to two tiles ahead of the consumers, which
            # hides the atomic's latency (claimed during the item, the claim did not fit its 64 registers: spills)
            w = _claim(COUNTER, WORK_I, N_ITEMS)
        _publish(item_smem, item_full, it, N_ITEMS)  # no more items
    else:
        for w in range(gl.program_id(0), N_ITEMS, gl.num_programs(0)):
            blk = gl.load(WORK_I + w)
            if blk >= 0:
                g = _produce_item(w, g, it, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, Q, K, V, Q_ROWS,
                                  Q_OFF, LENS, LIST_OFF, LIST, WORK_I, WORK_R, N, H, MQ, SLOTS, sqb, sqh, sqn, skb,
                                  skh, skn, svb, svh, svn, offs_d, BLOCK_M, BLOCK_N, HAS_Q_ROWS, ld)
                it += 1


@gluon.jit
def _claim(COUNTER, WORK_I, N_ITEMS):
    """The next used work-item slot (atomic increment of COUNTER, unused slots skipped); ≥ N_ITEMS: none left."""
    w = gl.atomic_add(COUNTER, 1)
    blk = gl.load(WORK_I + w, mask=w < N_ITEMS, other=0)
    while blk < 0:
        w = gl.atomic_add(COUNTER, 1)
        blk = gl.load(WORK_I + w, mask=w < N_ITEMS, other=0)
    return w


@gluon.jit
def _publish(item_smem, item_full, it, w):
    """Write work item w into slot it % 2 and signal its barrier. The consumers read slot it % 2 at the start of item
    it, before their q_empty arrival for it, which the producer has waited for (gathering item it + 1's Q) before it
    writes the slot again for item it + 2."""
    lay: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    item_smem.index(it % 2).store(gl.full([1], w, gl.int32, lay))
    mbarrier.arrive(item_full.index(it % 2))  # after a barrier of the partition's warps: release to the consumers


@gluon.jit
def _read_item(item_smem, item_full, it):
    lay: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    mbarrier.wait(item_full.index(it % 2), (it // 2) & 1)
    return gl.max(item_smem.index(it % 2).load(lay), 0)


@gluon.jit
def _produce_item(w, g, it, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, Q, K, V, Q_ROWS,
                  Q_OFF, LENS, LIST_OFF, LIST, WORK_I, WORK_R, N, H, MQ, SLOTS, sqb, sqh, sqn, skb, skh, skn, svb,
                  svh, svn, offs_d, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HAS_Q_ROWS: gl.constexpr,
                  ld: gl.constexpr):
    """Gathers work item w (a used slot): K_0/V_0, Q (after q_empty of the previous item), K_t/V_t for t ≥ 1.
    Returns the ring position after its tiles."""
    blk = gl.load(WORK_I + w)
    r = gl.load(WORK_R + w)
    # head indices in 32 bits (the plan's per-head tables are small), 64 bits from the tensor offsets on: fewer
    # 64-bit values live across the loop (the dynamic schedule's producer spilled two sign extensions otherwise)
    bh = w // SLOTS
    b = (bh // H).to(gl.int64)
    h = (bh % H).to(gl.int64)
    q_start = gl.load(Q_OFF + bh * (MQ + 1) + blk) + r * BLOCK_M
    q_end = gl.load(Q_OFF + bh * (MQ + 1) + blk + 1)
    L = gl.load(LENS + bh * MQ + blk)
    lst = LIST + gl.load(LIST_OFF + bh * MQ + blk)
    Kh = K + b * skb + h * skh
    Vh = V + b * svb + h * svh
    n_tiles = gl.maximum((L + BLOCK_N - 1) // BLOCK_N, 1)
    _gather_tile(0, g, k_smem, v_smem, full, empty, Kh, Vh, lst, L, skn, svn, offs_d, BLOCK_N, ld)
    mbarrier.wait(q_empty, (it & 1) ^ 1)  # a fresh barrier passes round 0 at once
    _gather_q(q_smem, q_full, Q + b * sqb + h * sqh, Q_ROWS, q_start, q_end, bh.to(gl.int64) * N, sqn, offs_d,
              HAS_Q_ROWS, ld)
    for t in range(1, n_tiles):
        _gather_tile(t, g + t, k_smem, v_smem, full, empty, Kh, Vh, lst, L, skn, svn, offs_d, BLOCK_N, ld)
    return g + n_tiles


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
def _named_barrier(SYNC: gl.constexpr, ID: gl.constexpr):
    """``bar.sync ID, 256`` (SYNC: wait until 256 threads, ours and the other warpgroup's, have reached the barrier)
    or ``bar.arrive ID, 256`` (count our 128 threads, do not wait), once per thread of this 4-warp partition: an
    inline-asm element per thread, with side effects so that it is neither removed nor moved across the wgmma issues
    (themselves volatile inline asm)."""
    gl.static_assert(gl.num_warps() == 4, "one consumer warpgroup")
    lay: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    x = gl.full([32 * gl.num_warps()], 0, gl.int32, lay)
    gl.static_assert((ID == TURN_BAR) | (ID == TURN_BAR + 1), "only the turn barriers")
    if SYNC:
        if ID == TURN_BAR:
            gl.inline_asm_elementwise("bar.sync 8, 256;\n\tmov.u32 $0, $1;", "=r,r", [x], gl.int32, False, 1)
        else:
            gl.inline_asm_elementwise("bar.sync 9, 256;\n\tmov.u32 $0, $1;", "=r,r", [x], gl.int32, False, 1)
    else:
        if ID == TURN_BAR:
            gl.inline_asm_elementwise("bar.arrive 8, 256;\n\tmov.u32 $0, $1;", "=r,r", [x], gl.int32, False, 1)
        else:
            gl.inline_asm_elementwise("bar.arrive 9, 256;\n\tmov.u32 $0, $1;", "=r,r", [x], gl.int32, False, 1)


@gluon.jit
def _turn_wait(WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Ping-pong: wait for warpgroup WG's turn to issue its products."""
    if PINGPONG:
        _named_barrier(True, TURN_BAR + WG)


@gluon.jit
def _turn_pass(WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Ping-pong: products issued, hand the tensor cores to the other warpgroup."""
    if PINGPONG:
        _named_barrier(False, TURN_BAR + 1 - WG)


@gluon.jit
def _pingpong_start(WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Ping-pong, once per program before the first turn: warpgroup 1 arrives on warpgroup 0's barrier so that
    warpgroup 0 goes first (FlashAttention-3's mma_init)."""
    if PINGPONG:
        if WG == 1:
            _named_barrier(False, TURN_BAR)


@gluon.jit
def _pingpong_end(WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Ping-pong, once per program after the last turn: warpgroup 0 consumes warpgroup 1's last hand-over, so that no
    barrier is left half-arrived when the program exits."""
    if PINGPONG:
        if WG == 0:
            _named_barrier(True, TURN_BAR)


@gluon.jit
def _wait_stage(full, j):
    """Wait until tile j's K and V have landed, then order those generic-proxy writes before our wgmma reads."""
    mbarrier.wait(full.index(j % STAGES), (j // STAGES) & 1)
    fence_async_shared()


@gluon.jit
def _step(j, g, WG: gl.constexpr, q, k_smem, v_smem, full, empty, L, o, m_i, l_i, p_cur, alpha_o, qk_scale,
          MASKED: gl.constexpr, PINGPONG: gl.constexpr, EARLY_RESCALE: gl.constexpr, BLOCK_N: gl.constexpr,
          s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr):
    """Key tile j ≥ 1: S_j = Q·K_jᵀ and O += P_{j−1}·V_{j−1} in flight together, softmax(S_j) under the P·V and
    under the other warpgroup's products.

    alpha_o: the rescale factor of O from softmax(S_{j−1}). With EARLY_RESCALE (FlashAttention-3's order) O is
    rescaled between issuing the score product and the P·V product, so the multiply runs under the score product;
    otherwise O is rescaled by softmax(S_j)'s factor after the P·V product retired, on the critical path.

    g: tile j's position in the K/V ring's sequence (j in a one-item program; the persistent kernel's ring runs on
    across work items), which picks the stage and the mbarrier phase."""
    _wait_stage(full, g)
    # ping-pong: issue only in our turn, then hand the tensor cores to the other warpgroup
    _turn_wait(WG, PINGPONG)
    s_tok = warpgroup_mma(q, k_smem.index(g % STAGES).permute((1, 0)),
                          gl.zeros([WG_ROWS, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
    if EARLY_RESCALE:
        o = o * alpha_o[:, None]
    o_tok = warpgroup_mma(p_cur, v_smem.index((g - 1) % STAGES), o, is_async=True)
    _turn_pass(WG, PINGPONG)

    s = warpgroup_mma_wait(1, deps=[s_tok])  # the score product retired; P·V keeps running
    p, m_i, l_i, alpha = _softmax(s, m_i, l_i, qk_scale, j * BLOCK_N, L, MASKED, BLOCK_N, s_layout)
    p_next = gl.convert_layout(p.to(p_cur.dtype), p_layout)

    o, p_cur = warpgroup_mma_wait(0, deps=[o_tok, p_cur])  # p_cur stays live until its product retires
    mbarrier.arrive(empty.index((g - 1) % STAGES))  # K_{j−1} and V_{j−1} are no longer read
    alpha_o = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
    if not EARLY_RESCALE:
        o = o * alpha_o[:, None]
    return o, m_i, l_i, p_next, alpha_o


@gluon.jit
def _consumer(WG: gl.constexpr, q_smem, k_smem, v_smem, q_full, full, empty,
              Oh, Q_ROWS, q_start, q_end, L, row_base, son, qk_scale,
              HAS_Q_ROWS: gl.constexpr, PINGPONG: gl.constexpr, EARLY_RESCALE: gl.constexpr, BLOCK_N: gl.constexpr,
              HEAD_DIM: gl.constexpr):
    """Rows WG·64 … WG·64 + 63 of the work item's tile: the attention loop and the output store."""
    _pingpong_start(WG, PINGPONG)
    _attend(WG, 0, 0, q_smem, k_smem, v_smem, q_full, q_full, full, empty, Oh, Q_ROWS, q_start, q_end, L,
            row_base, son, qk_scale, HAS_Q_ROWS, PINGPONG, EARLY_RESCALE, False, BLOCK_N, HEAD_DIM)
    _pingpong_end(WG, PINGPONG)


@gluon.jit
def _attend(WG: gl.constexpr, g, it, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, Oh, Q_ROWS, q_start, q_end,
            L, row_base, son, qk_scale,
            HAS_Q_ROWS: gl.constexpr, PINGPONG: gl.constexpr, EARLY_RESCALE: gl.constexpr, SIGNAL_Q: gl.constexpr,
            BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr):
    """One work item for consumer warpgroup WG: g is its first key tile's position in the ring's sequence, it the
    item's position in the program's sequence (the q_full phase); with SIGNAL_Q, q_empty is arrived on once the
    item's last score product has retired (the producer may then gather the next item's Q)."""
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    # P feeds the P·V product from registers: the score accumulator and the A-operand layout hold the same rows
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    q = q_smem.index(WG)

    mbarrier.wait(q_full, it & 1)
    _wait_stage(full, g)
    # Tile 0 (masked: it may be the only, partial, or empty tile). Its score product is a turn of the ping-pong (as
    # in FlashAttention-3).
    _turn_wait(WG, PINGPONG)
    s_tok = warpgroup_mma(q, k_smem.index(g % STAGES).permute((1, 0)),
                          gl.zeros([WG_ROWS, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
    _turn_pass(WG, PINGPONG)
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
        o, m_i, l_i, p_cur, alpha_o = _step(j, g + j, WG, q, k_smem, v_smem, full, empty, L, o, m_i, l_i,
                                            p_cur, alpha_o, qk_scale, False, PINGPONG, EARLY_RESCALE, BLOCK_N,
                                            s_layout, o_layout, p_layout)
    if (n_full >= 1) & (n_full < n_tiles):  # a partial last tile after at least one full one
        o, m_i, l_i, p_cur, alpha_o = _step(n_full, g + n_full, WG, q, k_smem, v_smem, full, empty, L, o,
                                            m_i, l_i, p_cur, alpha_o, qk_scale, True, PINGPONG, EARLY_RESCALE,
                                            BLOCK_N, s_layout, o_layout, p_layout)
    if SIGNAL_Q:
        mbarrier.arrive(q_empty)  # every score product of this item has retired: Q may be overwritten

    # Epilogue: O += P·V_{T−1} (its stage was waited for with K_{T−1}; for an empty list P = 0 and V_0 is zeros),
    # outside the ping-pong's turns (as FlashAttention-3's last P·V).
    last = g + n_tiles - 1
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
    return g + n_tiles


@gluon.jit
def _consumer_persistent(WG: gl.constexpr, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, item_smem,
                         item_full, O, Q_ROWS, Q_OFF, LENS, WORK_I, WORK_R, qk_scale, N, H, MQ, SLOTS, N_ITEMS,
                         sob, soh, son, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                         HAS_Q_ROWS: gl.constexpr, PINGPONG: gl.constexpr, EARLY_RESCALE: gl.constexpr,
                         DYNAMIC: gl.constexpr):
    """The persistent kernel's consumer warpgroup WG: the producer's sequence of work items (static: the same
    stride; dynamic: as published in item_smem), one _attend each. With the ping-pong the turns run on across items:
    both warpgroups take one turn per key tile of the same items, so they stay in alternation."""
    g = 0  # tiles consumed so far (the ring's sequence)
    it = 0  # work items done so far (q_full / item_full phases)
    _pingpong_start(WG, PINGPONG)
    if DYNAMIC:
        w = _read_item(item_smem, item_full, it)
        while w < N_ITEMS:
            g = _consume_item(WG, w, g, it, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, O, Q_ROWS,
                              Q_OFF, LENS, WORK_I, WORK_R, qk_scale, N, H, MQ, SLOTS, sob, soh, son, BLOCK_M,
                              BLOCK_N, HEAD_DIM, HAS_Q_ROWS, PINGPONG, EARLY_RESCALE)
            it += 1
            w = _read_item(item_smem, item_full, it)
    else:
        for w in range(gl.program_id(0), N_ITEMS, gl.num_programs(0)):
            blk = gl.load(WORK_I + w)
            if blk >= 0:
                g = _consume_item(WG, w, g, it, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, O,
                                  Q_ROWS, Q_OFF, LENS, WORK_I, WORK_R, qk_scale, N, H, MQ, SLOTS, sob, soh, son,
                                  BLOCK_M, BLOCK_N, HEAD_DIM, HAS_Q_ROWS, PINGPONG, EARLY_RESCALE)
                it += 1
    _pingpong_end(WG, PINGPONG)


@gluon.jit
def _consume_item(WG: gl.constexpr, w, g, it, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, O, Q_ROWS,
                  Q_OFF, LENS, WORK_I, WORK_R, qk_scale, N, H, MQ, SLOTS, sob, soh, son, BLOCK_M: gl.constexpr,
                  BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, HAS_Q_ROWS: gl.constexpr, PINGPONG: gl.constexpr,
                  EARLY_RESCALE: gl.constexpr):
    blk = gl.load(WORK_I + w)
    r = gl.load(WORK_R + w)
    bh = w // SLOTS  # as in _produce_item
    b = (bh // H).to(gl.int64)
    h = (bh % H).to(gl.int64)
    q_start = gl.load(Q_OFF + bh * (MQ + 1) + blk) + r * BLOCK_M
    q_end = gl.load(Q_OFF + bh * (MQ + 1) + blk + 1)
    L = gl.load(LENS + bh * MQ + blk)
    return _attend(WG, g, it, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, O + b * sob + h * soh,
                   Q_ROWS, q_start, q_end, L, bh.to(gl.int64) * N, son, qk_scale, HAS_Q_ROWS, PINGPONG, EARLY_RESCALE,
                   True, BLOCK_N, HEAD_DIM)


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
    PINGPONG: gl.constexpr, EARLY_RESCALE: gl.constexpr, ROW_THREADS: gl.constexpr = 8,
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
        bh, b, h, q_start, q_end, L, lst = _work_item(pid, blk, WORK_R, Q_OFF, LENS, LIST_OFF, LIST, H, MQ, SLOTS,
                                                      BLOCK_M)
        row_base = bh * N

        q_smem = gl.allocate_shared_memory(dtype, [2, WG_ROWS, HEAD_DIM], smem_layout)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], smem_layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], smem_layout)
        q_full = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        # full/q_full: one cp.async arrival per producer thread; empty: one arrival per consumer warpgroup (Triton
        # lowers mbarrier.arrive to a barrier of the partition's warps and one elected thread's arrive)
        mbarrier.init(q_full, count=PRODUCER_WARPS * 32)
        for s in gl.static_range(STAGES):
            mbarrier.init(full.index(s), count=PRODUCER_WARPS * 32)
            mbarrier.init(empty.index(s), count=2)

        Oh = O + b * sob + h * soh
        gl.warp_specialize(
            [(_consumer, (0, q_smem, k_smem, v_smem, q_full, full, empty, Oh, Q_ROWS, q_start, q_end, L,
                          row_base, son, qk_scale, HAS_Q_ROWS, PINGPONG, EARLY_RESCALE, BLOCK_N, HEAD_DIM)),
             (_consumer, (1, q_smem, k_smem, v_smem, q_full, full, empty, Oh, Q_ROWS, q_start, q_end, L,
                          row_base, son, qk_scale, HAS_Q_ROWS, PINGPONG, EARLY_RESCALE, BLOCK_N, HEAD_DIM)),
             (_producer, (q_smem, k_smem, v_smem, q_full, full, empty, Q + b * sqb + h * sqh, K + b * skb + h * skh,
                          V + b * svb + h * svh, Q_ROWS, lst, q_start, q_end, L, row_base, sqn, skn, svn,
                          HAS_Q_ROWS, BLOCK_N, HEAD_DIM, ROW_THREADS))],
            [4, PRODUCER_WARPS],
            [CONSUMER_REGS, PRODUCER_REGS],
        )


@gluon.jit
def _gluon_ws_persistent_kernel(
    Q, K, V, O, Q_ROWS,
    Q_OFF, LENS, LIST_OFF, LIST, WORK_I, WORK_R, COUNTER,
    qk_scale, N, H, MQ, SLOTS, N_ITEMS,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, HAS_Q_ROWS: gl.constexpr,
    EARLY_RESCALE: gl.constexpr, DYNAMIC: gl.constexpr, PINGPONG: gl.constexpr = True, ROW_THREADS: gl.constexpr = 8,
):
    """The persistent main pass: about one program per SM, program p runs work items p, p + nprog, … of the
    N_ITEMS (= BH · SLOTS) slots, skipping unused ones (DYNAMIC: each program's producer claims the next slot with an
    atomic increment of COUNTER, a zeroed int32, and hands it to its consumers through shared memory). The K/V ring and
    its mbarriers run on across items, so the producer gathers the next item's first tiles while the consumers finish
    the current one; Q has one buffer guarded by q_full (producer → consumers) and q_empty (consumers → producer, after
    their last score product). Arguments otherwise as ``_gluon_ws_sparse_attn_fwd_kernel``'s; with PINGPONG the turns
    run on across items."""
    gl.static_assert(BLOCK_M == 2 * WG_ROWS, "two consumer warpgroups of 64 rows")
    gl.static_assert(gl.num_warps() == 4, "launch with num_warps=4")
    dtype: gl.constexpr = Q.dtype.element_ty
    smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128 if HEAD_DIM * 2 >= 128 else HEAD_DIM * 2,
                                                     element_bitwidth=16, rank=2)
    q_smem = gl.allocate_shared_memory(dtype, [2, WG_ROWS, HEAD_DIM], smem_layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], smem_layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], smem_layout)
    q_full = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    item_smem = gl.allocate_shared_memory(gl.int32, [2, 1], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    item_full = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(item_full.index(0), count=1)
    mbarrier.init(item_full.index(1), count=1)
    mbarrier.init(q_full, count=PRODUCER_WARPS * 32)
    mbarrier.init(q_empty, count=2)
    for s in gl.static_range(STAGES):
        mbarrier.init(full.index(s), count=PRODUCER_WARPS * 32)
        mbarrier.init(empty.index(s), count=2)

    gl.warp_specialize(
        [(_consumer_persistent, (0, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, item_smem, item_full,
                                 O, Q_ROWS, Q_OFF, LENS, WORK_I, WORK_R, qk_scale, N, H, MQ, SLOTS, N_ITEMS, sob, soh,
                                 son, BLOCK_M, BLOCK_N, HEAD_DIM, HAS_Q_ROWS, PINGPONG, EARLY_RESCALE,
                                 DYNAMIC)),
         (_consumer_persistent, (1, q_smem, k_smem, v_smem, q_full, q_empty, full, empty, item_smem, item_full,
                                 O, Q_ROWS, Q_OFF, LENS, WORK_I, WORK_R, qk_scale, N, H, MQ, SLOTS, N_ITEMS, sob, soh,
                                 son, BLOCK_M, BLOCK_N, HEAD_DIM, HAS_Q_ROWS, PINGPONG, EARLY_RESCALE,
                                 DYNAMIC)),
         (_producer_persistent, (q_smem, k_smem, v_smem, q_full, q_empty, full, empty, item_smem, item_full, Q, K, V,
                                 Q_ROWS, Q_OFF, LENS, LIST_OFF, LIST, WORK_I, WORK_R, COUNTER, N, H, MQ, SLOTS,
                                 N_ITEMS, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, BLOCK_M, BLOCK_N, HEAD_DIM,
                                 HAS_Q_ROWS, DYNAMIC, ROW_THREADS))],
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
    warpgroups issue their products in strict alternation (see below); ``early_rescale``: O is rescaled under the
    score product (FlashAttention-3's order, default) instead of after the P·V product; ``persistent``: about one
    program per SM looping over work items, the producer running ahead into the next item (default; measured 5–6%
    faster, see the module docstring), otherwise one program per work item; ``dynamic``: the persistent programs
    claim work items through an atomic counter (default) instead of a static stride. ``pingpong`` (default) hands the
    turns over through hardware named barriers (bar.sync / bar.arrive, FlashAttention-3's warp-scheduler barriers), in
    either kernel (measured 2–3% faster than free-running on one dense block, within ±1% on k-means layouts);
    ``pingpong=False``: the warpgroups issue as soon as their data is there. ``fuse_permutation`` defaults to ``"qkv"``
    here: the producer gathers K/V rows by index anyway, so reading them through kv_order (scattered 256-byte rows) cost
    the kernel 0–1.6% on an H100 but saves the ≈ 1.1 ms copy of k and v into the key order: the whole call at the Wan
    shape was 0.8–1.3 ms faster (docs/performance.md). ``"q"`` keeps the copy."""

    fuse_permutation: str = "qkv"
    pingpong: bool = True
    early_rescale: bool = True
    persistent: bool = True
    dynamic: bool = True
    _row_threads: int = field(default=8, repr=False)  # producer: lanes a K/V row (16 before s7; a diagnostic)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.pingpong, bool):
            raise ValueError(f"pingpong must be True (the warpgroups' products alternate, through named barriers) or "
                             f"False, got {self.pingpong!r}")
        if self._row_threads not in (8, 16):
            raise ValueError(f"_row_threads (lanes per K/V row in the producer) must be 8 or 16, got "
                             f"{self._row_threads!r}")

    def why_unsupported(self, q: Tensor, k: Tensor, v: Tensor) -> list[str]:
        reasons = super().why_unsupported(q, k, v)
        if isinstance(q, Tensor) and q.dim() == 4 and self._row_threads * 8 > q.shape[-1]:
            reasons.append(f"_row_threads={self._row_threads} needs head dim ≥ {self._row_threads * 8} (a 16-byte "
                           f"copy per lane), got {q.shape[-1]}: use 8")
        return reasons

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
        items = main.block.numel()
        if items == 0:
            return out
        if self.persistent:
            _gluon_ws_persistent_kernel[(min(items, _sm_count(q.device)),)](
                q, k, v, out, q_rows if q_rows is not None else main.block,
                plan.q_off, plan.lens, plan.list_off, plan.lists, main.block, main.row_tile,
                torch.zeros(1, dtype=torch.int32, device=q.device) if self.dynamic else main.block,
                LOG2E / math.sqrt(d), n, h, plan.num_q_blocks, main.slots, items,
                *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
                BLOCK_M=main.block_m, BLOCK_N=main.block_n, HEAD_DIM=d, HAS_Q_ROWS=q_rows is not None,
                EARLY_RESCALE=self.early_rescale, DYNAMIC=self.dynamic, PINGPONG=self.pingpong,
                ROW_THREADS=self._row_threads, num_warps=4,
            )
            return out
        _gluon_ws_sparse_attn_fwd_kernel[(items,)](
            q, k, v, out, q_rows if q_rows is not None else main.block,
            plan.q_off, plan.lens, plan.list_off, plan.lists, main.block, main.row_tile,
            LOG2E / math.sqrt(d), n, h, plan.num_q_blocks, main.slots,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            BLOCK_M=main.block_m, BLOCK_N=main.block_n, HEAD_DIM=d, HAS_Q_ROWS=q_rows is not None,
            PINGPONG=self.pingpong, EARLY_RESCALE=self.early_rescale, ROW_THREADS=self._row_threads, num_warps=4,
        )
        return out


def compile_sm90(head_dim: int = 128, block_n: int = 128, dtype: str = "bf16", has_q_rows: bool = True,
                 pingpong: bool = False, early_rescale: bool = True, persistent: bool = False,
                 dynamic: bool = True, row_threads: int = 8):
    """Compile the main-pass kernel for sm_90 without a GPU (for inspection and the CPU test); as kernel
    ``gluon``'s ``compile_sm90``: ``.asm["ptx"]``, ``.asm["cubin"]``, ``.metadata.shared``. ``pingpong``: as the
    class's option; ``persistent``: the persistent kernel, ``dynamic``: its atomic-counter schedule."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    ptr = f"*{dtype}"
    names = ["Q", "K", "V", "O", "Q_ROWS", "Q_OFF", "LENS", "LIST_OFF", "LIST", "WORK_I", "WORK_R",
             *(["COUNTER"] if persistent else []), "qk_scale", "N", "H", "MQ", "SLOTS",
             *(["N_ITEMS"] if persistent else []),
             "sqb", "sqh", "sqn", "skb", "skh", "skn", "svb", "svh", "svn", "sob", "soh", "son"]
    types = [ptr] * 4 + ["*i32", "*i32", "*i32", "*i64", "*i32", "*i32", "*i32"] + ["*i32"] * persistent + ["fp32"]
    types += ["i32"] * (len(names) - len(types))
    signature = dict(zip(names, types))
    signature.update(BLOCK_M="constexpr", BLOCK_N="constexpr", HEAD_DIM="constexpr", HAS_Q_ROWS="constexpr",
                     EARLY_RESCALE="constexpr")
    constexprs = {"BLOCK_M": 128, "BLOCK_N": block_n, "HEAD_DIM": head_dim, "HAS_Q_ROWS": has_q_rows,
                  "EARLY_RESCALE": early_rescale}
    if persistent:
        kernel = _gluon_ws_persistent_kernel
        signature["DYNAMIC"] = "constexpr"
        constexprs["DYNAMIC"] = dynamic
    else:
        kernel = _gluon_ws_sparse_attn_fwd_kernel
    signature["PINGPONG"] = "constexpr"
    constexprs["PINGPONG"] = bool(pingpong)
    signature["ROW_THREADS"] = "constexpr"
    constexprs["ROW_THREADS"] = row_threads
    # as the launcher specialises them: pointers 16-byte aligned, strides (multiples of D) divisible by 16
    aligned = [i for i, name in enumerate(names) if types[i].startswith("*") or name[0] == "s" and name != "SLOTS"]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = GluonASTSource(kernel, signature=signature, attrs=attrs, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def _sm_count(device) -> int:
    """Streaming multiprocessors of ``device``: the persistent grid (torch caches the properties; no host sync)."""
    import torch

    return torch.cuda.get_device_properties(device).multi_processor_count
