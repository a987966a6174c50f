"""Top-p block selection in one Triton launch, without sorting: SVG2's budget on the GPU.

``top_p_mask(scores, p, floor)`` returns the same selection as ``sparseattn.budgets.top_p_reference``: per row of
non-negative scores (estimated masses), the fewest best blocks whose mass reaches p·(row total), the block crossing
it included, and at least the best ``floor`` blocks. Instead of sorting a row (the reference's torch sort, or a
bitonic sort in registers: both ≈ 0.75 ms for 40 × 300 rows of 1,000 on an H100), a program holds its row in
registers and finds two thresholds by bisection over the scores' bit patterns (for floats ≥ 0 the integer order is
the float order, so 31 halvings of [0, 2³¹) always end on a row value):

  * τ_p, the largest row value v with Σ_{s ≥ v} s ≥ p·total. The blocks above τ_p are all needed; of the blocks tied
    at τ_p, the reference keeps them while the mass before each is below p·total, i.e. ⌈(p·total − Σ_{s > τ_p}) / τ_p⌉
    of them (all of them when τ_p = 0). That gives the count K_p the reference keeps.
  * τ_K, the K-th largest value for K = max(K_p, floor): keep every block above τ_K and the first few blocks tied at
    τ_K (by index) until K are kept.

Each bisection step is one masked sum or count over the row. Sums are taken in a different order than the
reference's sorted cumulative sum, so a row whose cumulative mass lands within float rounding of p·total may keep one
block more or fewer; ties are broken by index (the reference's sort leaves their order unspecified).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_BLOCKS = 8192  # a program holds its row in registers: 32 values per thread at 8 warps


@triton.jit
def _top_p_kernel(S, KEEP, MK, p, floor, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK)
    live = j < MK
    s = tl.load(S + row * MK + j, mask=live, other=0.0).to(tl.float32)
    bits = tl.where(live, s.to(tl.int32, bitcast=True), -1)  # padding never reaches a threshold ≥ 0
    s = tl.where(live, s, 0.0)
    target = p * tl.sum(s, 0)
    top = tl.max(bits, 0) + 1

    # τ_p: the largest v (as bits) with Σ_{s ≥ v} s ≥ target. Invariant: lo satisfies it, hi does not.
    lo = top * 0
    hi = top
    for _ in range(31):
        mid = lo + (hi - lo) // 2
        ok = tl.sum(tl.where(bits >= mid, s, 0.0), 0) >= target
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid)
    tau_bits = tl.min(tl.where(bits >= lo, bits, 2147483647), 0)  # the row value at that threshold
    tau = tau_bits.to(tl.float32, bitcast=True)
    above = bits > tau_bits
    mass_above = tl.sum(tl.where(above, s, 0.0), 0)
    ties = tl.sum((bits == tau_bits).to(tl.int32), 0)
    # tied blocks kept while the mass before each is below target; all of them when they carry no mass
    needed = tl.math.ceil((target - mass_above) / tl.where(tau > 0.0, tau, 1.0))
    needed_ties = tl.where(tau > 0.0, tl.minimum(tl.maximum(needed, 1.0), ties.to(tl.float32)),
                           ties.to(tl.float32)).to(tl.int32)
    k_p = tl.where(target > 0.0, tl.sum(above.to(tl.int32), 0) + needed_ties, 0)
    k = tl.minimum(tl.maximum(k_p, floor), MK)

    # τ_K: the largest v with #{s ≥ v} ≥ k.
    lo = top * 0
    hi = top
    for _ in range(31):
        mid = lo + (hi - lo) // 2
        ok = tl.sum((bits >= mid).to(tl.int32), 0) >= k
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid)
    kth = tl.min(tl.where(bits >= lo, bits, 2147483647), 0)
    greater = bits > kth
    tied = bits == kth
    room = k - tl.sum(greater.to(tl.int32), 0)
    keep = greater | (tied & (tl.cumsum(tied.to(tl.int32), 0) <= room))
    tl.store(KEEP + row * MK + j, keep.to(tl.int8), mask=live)


def top_p_mask(scores: Tensor, p: float, floor: int) -> Tensor:
    """Boolean mask of the kept blocks, shaped like ``scores`` [..., Mk] (non-negative masses), in one launch."""
    mk = scores.shape[-1]
    if mk > MAX_BLOCKS:
        raise ValueError(f"top_p_mask holds a row in registers: at most {MAX_BLOCKS} blocks per row, got {mk}")
    rows = scores.numel() // max(mk, 1)
    flat = scores.reshape(rows, mk)
    if flat.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        flat = flat.float()
    flat = flat.contiguous()
    keep = torch.empty(rows, mk, dtype=torch.bool, device=scores.device)
    if rows and mk:
        block = max(16, triton.next_power_of_2(mk))
        _top_p_kernel[(rows,)](flat, keep.view(torch.int8), mk, float(p), int(floor), BLOCK=block,
                               num_warps=4 if block <= 2048 else 8)
    return keep.reshape(scores.shape)
