"""The density budget in a few Triton launches, without sorting and without synchronising with the host.

``density_mask(scores, q_sizes, k_sizes, density)`` returns the selection of ``sparseattn.budgets.FixedDensity``: per
(batch, head), block pairs (i, j) ranked by value = score[i, j] / |K_j| (divided in the scores' dtype, as torch
does), kept in decreasing value while the area |Q_i|·|K_j| covered before a pair is below T = ⌈density·N²⌉ (the pair
crossing T is kept), and every query block's best key block (``scores.argmax(-1)``, first index among equals).
Pairs of area 0 are never kept unless they are a row's best block. Ties in value are broken by the flat index
i·Mk + j, smallest first (the torch reference's argsort leaves their order unspecified).

Why not sort: the reference argsorts 12M values per call at the Wan shape (40 heads × 300 × 1,000 pairs), gathers
and scans them (1.9 ms per call on an H100, against 0.63 ms for this select: docs/performance.md), yet only one
number per head matters: the value τ of the pair that crosses T. Every pair above τ is kept and every pair below it
is not, so the selection needs τ and the area still missing at τ, not an order. τ is found exactly by a radix select
over the values' bit patterns: a float's bits, with negative floats' magnitude bits flipped (-0 merged into +0),
order like the floats as integers, so three histogram levels of 11 + 11 + 10 bits, each weighted by area and each
restricted to the pairs whose higher bits match the digits found so far, pin τ down: per level a "find" program
walks the histogram from the top and takes the bucket where the area above it stops being short of the remaining
target. What is left of T at τ, T_rem > 0, is then spent on the pairs tied at τ in index order, which needs the tied
area of every earlier chunk of pairs: one pass writes each chunk's tied area, and the mask pass sums its
predecessors' (a few hundred numbers per head, no scan launch).

Launches per call: one zero-fill of the histograms (torch), three histogram + three find launches, one tied-area
launch, one mask launch (it also takes the row argmax): 9 in all, none with a data-dependent shape and no host
read, so a call can be captured in a CUDA graph. Each histogram, tie and mask launch reads the scores once (5 reads
in all), recomputing the values rather than storing them (a value array would cost as much to write and read back
as the scores). Areas and their sums are int64 and T is computed in float64 exactly as the torch path does (a float
running sum near N² ≈ 10¹⁰ is off by tens of pairs and could stop short of the target).

The first level takes an atomic add per non-empty pair, to buckets that many pairs share (same exponent, same two
leading mantissa bits): Triton has no weighted histogram to pre-aggregate with, so each head's first histogram has
``COPIES`` copies and a pair adds to copy (flat index mod COPIES): neighbouring lanes of a warp hit different
addresses. Later levels only add the pairs of one bucket.

Exactness of the values: float32 scores are divided with ``tl.math.div_rn`` (IEEE division, no flush to zero, as
torch); half-precision scores as torch does, the size rounded to the dtype, the quotient taken in float32 and rounded
to the dtype (float32 has more than 2p + 2 bits for p = 11 or 8, so this double rounding is the correctly rounded
half quotient). bfloat16 rounding is done on the bits (ties to even, as c10::BFloat16): the interpreter's cast
truncates. NaN values rank unspecified; scores may be negative (the keys order signed floats).
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_BLOCKS = 8192  # key blocks per row: a program holds whole rows (the row argmax and the tie order need them)
TILE = 4096  # pairs per program (whole rows of next_power_of_2(Mk) lanes, several rows when Mk is small)
COPIES = 32  # first-level histogram copies (H100, Wan shape: 4 copies 0.91 ms per select, 16: 0.68, 32: 0.63)
# radix levels over the 32-bit keys: (shift, bits)
LEVELS = ((21, 11), (10, 11), (0, 10))
SCORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _round_to(x, DT: tl.constexpr):
    """float32 ``x`` rounded to the nearest DT (ties to even), as float32."""
    if DT == tl.bfloat16:
        # by hand, as torch's c10::BFloat16 does (the interpreter's bfloat16 cast truncates)
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    elif DT == tl.float16:
        return x.to(tl.float16).to(tl.float32)
    else:
        return x


@triton.jit
def _tile(S, QS, KS, bh, chunk, H, MQ, MK, ssb, ssh, ssq, ROWS: tl.constexpr, BK: tl.constexpr):
    """Keys, areas and scores of the tile of rows [chunk·ROWS, +ROWS) of head bh: key order = value order."""
    rows = chunk * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BK)
    rmask = rows < MQ
    cmask = cols < MK
    live = rmask[:, None] & cmask[None, :]
    b = bh // H
    h = bh % H
    sc = tl.load(S + b * ssb + h * ssh + rows[:, None].to(tl.int64) * ssq + cols[None, :], mask=live, other=0.0)
    qs = tl.load(QS + bh * MQ + rows, mask=rmask, other=0)
    ks = tl.load(KS + bh * MK + cols, mask=cmask, other=0)
    area = qs[:, None] * ks[None, :]  # int64; 0 on padding
    # value exactly as torch computes scores / k_sizes.clamp_min(1).to(scores.dtype): in the scores' dtype (for
    # half types: an fp32 quotient rounded once more, which equals the correctly rounded half quotient)
    kf = _round_to(tl.maximum(ks, 1).to(tl.float32), sc.dtype)
    value = _round_to(tl.math.div_rn(sc.to(tl.float32), kf[None, :]), sc.dtype)
    bits = value.to(tl.int32, bitcast=True)
    bits = tl.where(bits == -2147483648, 0, bits)  # -0.0 ties with +0.0, as in torch
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # signed int order = float order
    return key, area, sc, rows, cols, rmask, live


@triton.jit
def _hist_kernel(S, QS, KS, STATE, H, MQ, MK, ssb, ssh, ssq,
                 OFFSET: tl.constexpr, SHIFT: tl.constexpr, BITS: tl.constexpr, HIGH: tl.constexpr,
                 NCOPY: tl.constexpr, STATE_STRIDE: tl.constexpr, PREFIX: tl.constexpr, ROWS: tl.constexpr,
                 BK: tl.constexpr):
    chunk = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    key, area, sc, rows, cols, rmask, live = _tile(S, QS, KS, bh, chunk, H, MQ, MK, ssb, ssh, ssq, ROWS, BK)
    base = STATE + bh * STATE_STRIDE
    u = key ^ -2147483648  # unsigned order as bit pattern
    take = area > 0
    if HIGH != 0:
        prefix = tl.load(base + PREFIX).to(tl.int32)
        take = take & (((u ^ prefix) & HIGH) == 0)
    digit = (u >> SHIFT) & ((1 << BITS) - 1)
    slot = digit * NCOPY
    if NCOPY > 1:
        slot += (rows[:, None] * MK + cols[None, :]) % NCOPY
    tl.atomic_add(base + OFFSET + slot, area, mask=take, sem="relaxed")


@triton.jit
def _find_kernel(STATE, QS, MQ, density_bits,
                 OFFSET: tl.constexpr, SHIFT: tl.constexpr, BITS: tl.constexpr, NCOPY: tl.constexpr,
                 FIRST: tl.constexpr, STATE_STRIDE: tl.constexpr, PREFIX: tl.constexpr, QBLOCK: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    base = STATE + bh * STATE_STRIDE
    if FIRST:
        # T = ⌈density·N·N⌉ in float64, as the torch reference computes it
        n = tl.zeros([QBLOCK], tl.int64)
        for q0 in range(0, MQ, QBLOCK):
            i = q0 + tl.arange(0, QBLOCK)
            n += tl.load(QS + bh * MQ + i, mask=i < MQ, other=0)
        nf = tl.sum(n, 0).to(tl.float64)
        density = density_bits.to(tl.int64).to(tl.float64, bitcast=True)
        target = tl.math.ceil(density * nf * nf).to(tl.int64)
        prefix = tl.zeros([], tl.int32)
    else:
        target = tl.load(base + PREFIX + 1)
        prefix = tl.load(base + PREFIX).to(tl.int32)
    bins = tl.arange(0, 1 << BITS)
    hist = tl.load(base + OFFSET + bins * NCOPY)
    for c in tl.static_range(1, NCOPY):
        hist += tl.load(base + OFFSET + bins * NCOPY + c)
    # the crossing bucket: the highest one whose area from it upwards reaches the target (bucket 0 when none does:
    # less area than the target, all of it kept; the remaining target then stays above every tied area)
    at_or_above = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist
    best = tl.max(tl.where(at_or_above >= target, bins, 0), 0)
    above = tl.sum(tl.where(bins > best, hist, 0), 0)
    tl.store(base + PREFIX, (prefix | (best << SHIFT)).to(tl.int64))
    tl.store(base + PREFIX + 1, target - above)


@triton.jit
def _ties_kernel(S, QS, KS, STATE, TIES, H, MQ, MK, ssb, ssh, ssq, CHUNKS,
                 STATE_STRIDE: tl.constexpr, PREFIX: tl.constexpr, ROWS: tl.constexpr, BK: tl.constexpr):
    chunk = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    key, area, sc, rows, cols, rmask, live = _tile(S, QS, KS, bh, chunk, H, MQ, MK, ssb, ssh, ssq, ROWS, BK)
    tau = tl.load(STATE + bh * STATE_STRIDE + PREFIX).to(tl.int32) ^ -2147483648
    tied = tl.sum(tl.sum(tl.where(key == tau, area, 0), 1), 0)
    tl.store(TIES + bh * CHUNKS + chunk, tied)


@triton.jit
def _mask_kernel(S, QS, KS, STATE, TIES, KEEP, H, MQ, MK, ssb, ssh, ssq, CHUNKS,
                 STATE_STRIDE: tl.constexpr, PREFIX: tl.constexpr, ROWS: tl.constexpr, BK: tl.constexpr,
                 CBLOCK: tl.constexpr):
    chunk = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    key, area, sc, rows, cols, rmask, live = _tile(S, QS, KS, bh, chunk, H, MQ, MK, ssb, ssh, ssq, ROWS, BK)
    state = STATE + bh * STATE_STRIDE + PREFIX
    tau = tl.load(state).to(tl.int32) ^ -2147483648
    remaining = tl.load(state + 1)
    # tied area before this chunk, then before each pair of it in row-major (flat index) order
    earlier = tl.zeros([CBLOCK], tl.int64)
    for c0 in range(0, chunk, CBLOCK):
        c = c0 + tl.arange(0, CBLOCK)
        earlier += tl.load(TIES + bh * CHUNKS + c, mask=c < chunk, other=0)
    tied = (key == tau) & (area > 0)
    keep = (area > 0) & (key > tau)
    if tl.max(tied.to(tl.int32)) != 0:  # the cumulative sums are costly and most tiles hold no tied pair
        tied_area = tl.where(tied, area, 0)
        row_tied = tl.sum(tied_area, 1)
        before = (tl.sum(earlier, 0) + (tl.cumsum(row_tied, 0) - row_tied)[:, None]
                  + tl.cumsum(tied_area, 1) - tied_area)
        keep = keep | (tied & (before < remaining))
    best = tl.argmax(tl.where(live, sc.to(tl.float32), float("-inf")), 1, tie_break_left=True)
    keep = keep | (rmask[:, None] & (cols[None, :] == best[:, None]))
    ptrs = KEEP + bh * MQ * MK + rows[:, None].to(tl.int64) * MK + cols[None, :]
    tl.store(ptrs, keep.to(tl.int8), mask=live)


def density_mask(scores: Tensor, q_sizes: Tensor, k_sizes: Tensor, density: float, tile: int = TILE,
                 copies: int = COPIES) -> Tensor:
    """Boolean [B, H, Mq, Mk] mask of the density budget, row argmaxes included (see the module docstring).

    ``scores`` [B, H, Mq, Mk] float32, float16 or bfloat16 (values are divided in that dtype, as torch does);
    ``q_sizes`` [B, H, Mq], ``k_sizes`` [B, H, Mk] integer block sizes; ``0 < density ≤ 1``. ``tile``: pairs per
    program (a power of two; smaller tiles only matter to tests, which want several chunks per head); ``copies``:
    copies of the first level's histogram (≥ 1)."""
    if scores.dim() != 4:
        raise ValueError(f"scores must be [B, H, Mq, Mk], got shape {tuple(scores.shape)}")
    b, h, mq, mk = scores.shape
    if mk > MAX_BLOCKS:
        raise ValueError(f"density_mask holds whole rows: at most {MAX_BLOCKS} key blocks per row, got {mk}")
    if scores.dtype not in SCORE_DTYPES:
        raise ValueError(f"density_mask takes float32, float16 or bfloat16 scores, got {scores.dtype}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if tile & (tile - 1) or tile < 1:
        raise ValueError(f"tile must be a power of two, got {tile}")
    if copies < 1:
        raise ValueError(f"copies must be ≥ 1, got {copies}")
    keep = torch.empty(b, h, mq, mk, dtype=torch.bool, device=scores.device)
    bh = b * h
    if keep.numel() == 0:
        return keep
    if scores.stride(-1) != 1:
        scores = scores.contiguous()
    qs = q_sizes.expand(b, h, mq).to(torch.int64).contiguous()
    ks = k_sizes.expand(b, h, mk).to(torch.int64).contiguous()
    block_k = max(16, triton.next_power_of_2(mk))
    rows = max(1, min(tile // block_k, triton.next_power_of_2(mq)))
    chunks = triton.cdiv(mq, rows)
    hist_sizes = [(1 << bits) * (copies if level == 0 else 1) for level, (_, bits) in enumerate(LEVELS)]
    prefix_at = sum(hist_sizes)  # per head: the three histograms, then [prefix, remaining target]
    stride = prefix_at + 2
    state = torch.zeros(bh, stride, dtype=torch.int64, device=scores.device)
    ties = torch.empty(bh, chunks, dtype=torch.int64, device=scores.device)
    grid = (chunks, bh)
    tile_args = (h, mq, mk, scores.stride(0), scores.stride(1), scores.stride(2))
    warps = max(4, min(16, rows * block_k // 256))  # 8 pairs a thread at TILE (ptxas, sm_90: ≤ 128 registers)
    density_bits = struct.unpack("<q", struct.pack("<d", float(density)))[0]
    offset = 0
    for level, (shift, bits) in enumerate(LEVELS):
        ncopy = copies if level == 0 else 1
        high = -(1 << (shift + bits)) if shift + bits < 32 else 0  # bits above this level's digit
        _hist_kernel[grid](scores, qs, ks, state, *tile_args, OFFSET=offset, SHIFT=shift, BITS=bits, HIGH=high,
                           NCOPY=ncopy, STATE_STRIDE=stride, PREFIX=prefix_at, ROWS=rows, BK=block_k, num_warps=warps)
        _find_kernel[(bh,)](state, qs, mq, density_bits, OFFSET=offset, SHIFT=shift, BITS=bits, NCOPY=ncopy,
                            FIRST=level == 0, STATE_STRIDE=stride, PREFIX=prefix_at, QBLOCK=1024, num_warps=8)
        offset += hist_sizes[level]
    _ties_kernel[grid](scores, qs, ks, state, ties, *tile_args, chunks, STATE_STRIDE=stride, PREFIX=prefix_at,
                       ROWS=rows, BK=block_k, num_warps=warps)
    _mask_kernel[grid](scores, qs, ks, state, ties, keep.view(torch.int8), *tile_args, chunks, STATE_STRIDE=stride,
                       PREFIX=prefix_at, ROWS=rows, BK=block_k, CBLOCK=128, num_warps=warps)
    return keep
