"""Top-p block selection in one Triton launch (used by budget ``top_p`` on CUDA).

One program per query block row: load the row's scores, sort them in registers (descending), and count the fewest
best blocks whose mass reaches ``p`` (at least the ``floor`` best ones). Instead of scattering kept flags back
through the sort order, the program takes the smallest kept score (the cut): blocks above it are kept, and of the
blocks tied at it (typically empty key blocks, score 0) the first ones in index order up to the count.

Compared with torch (sort, cumsum, comparisons, scatter: six launches over B·H·Mq·Mk floats) this reads the scores
once and writes one byte per pair.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_permute import interpreting

MAX_BLOCKS = 8192  # key blocks per row held in registers; wider rows use the torch path


@triton.jit
def _top_p_kernel(SCORES, SELECTED, MK, p, floor, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    live = offs < MK
    scores = tl.load(SCORES + row * MK + offs, mask=live, other=-1.0)  # padding sorts last
    ranked = tl.sort(scores, 0, descending=True)
    mass = tl.where(ranked > 0.0, ranked, 0.0)
    before = tl.cumsum(mass, 0) - mass
    total = tl.sum(mass, 0)
    keep = ((before < p * total) | (offs < floor)) & (offs < MK)
    count = tl.sum(keep.to(tl.int32), 0)
    cut = tl.min(tl.where(keep, ranked, float("inf")), 0)
    above = scores > cut
    tied = (scores == cut) & live
    tie_rank = tl.cumsum(tied.to(tl.int32), 0) - 1
    chosen = above | (tied & (tie_rank < count - tl.sum(above.to(tl.int32), 0)))
    tl.store(SELECTED + row * MK + offs, chosen.to(tl.int8), mask=live)


def top_p_select(scores: Tensor, p: float, floor: int) -> Tensor:
    """Boolean [..., Mk] mask: per row the fewest best blocks reaching mass ``p``, and at least the best ``floor``
    (≥ 1). ``scores`` [..., Mk] float32, ≥ 0, on CUDA (or CPU under ``TRITON_INTERPRET=1``)."""
    mk = scores.shape[-1]
    if mk > MAX_BLOCKS:
        raise ValueError(f"top_p_select handles at most {MAX_BLOCKS} key blocks per row, got {mk}")
    rows = scores.reshape(-1, mk).contiguous().float()
    selected = torch.empty(rows.shape, dtype=torch.int8, device=scores.device)
    block = max(16, triton.next_power_of_2(mk))
    warps = 4 if interpreting() else max(1, min(8, block // 256))
    _top_p_kernel[(rows.shape[0],)](rows, selected, mk, float(p), max(int(floor), 1), BLOCK=block, num_warps=warps)
    return selected.view(torch.bool).reshape(scores.shape)
