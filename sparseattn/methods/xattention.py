"""XAttention (arXiv 2503.16428): block importance from sums along strided antidiagonals.

Inside every stride×stride tile of the attention logits, XAttention sums one antidiagonal (each query row and each
key column of the tile contributes once), which it computes as one matmul of reshaped q and k. A softmax over those
sums per row of tiles approximates the attention mass; summing it per block pair scores the blocks, and the
cumulative threshold τ is the ``top_p`` budget with p = τ (XAttention keeps the fewest blocks whose scores reach τ
of the row total, the crossing block included).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.interfaces import Layout, TokenIdentifier
from sparseattn.registry import register


def antidiagonal_groups(x: Tensor, stride: int, reverse: bool) -> Tensor:
    """[B, H, N, D] → [B, H, ⌈N/stride⌉, stride·D]: consecutive groups of ``stride`` tokens concatenated, in reverse
    order within the group for queries, so that (query group)·(key group) sums one antidiagonal of their tile.
    The sequence is zero-padded to a multiple of the stride (padding adds nothing to a dot product)."""
    b, h, n, d = x.shape
    groups = math.ceil(n / stride)
    padded = torch.nn.functional.pad(x.float(), (0, 0, 0, groups * stride - n)).reshape(b, h, groups, stride, d)
    if reverse:
        padded = padded.flip(3)
    return padded.reshape(b, h, groups, stride * d)


def group_blocks(sizes: Tensor, stride: int, who: str) -> Tensor:
    """[B, H, G] block index of every group of ``stride`` tokens; block boundaries must fall on group boundaries."""
    starts = (sizes.cumsum(-1) - sizes)[..., 1:]
    if bool((starts % stride != 0).any()):
        raise ValueError(
            f"{who} needs every block boundary at a multiple of stride={stride}; use permuter 'blocks' with "
            f"block_size a multiple of {stride}"
        )
    n = int(sizes[(0,) * (sizes.dim() - 1)].sum())
    groups = math.ceil(n / stride)
    group_start = torch.arange(groups, device=sizes.device) * stride
    ends = sizes.cumsum(-1)
    return torch.searchsorted(ends.contiguous(), group_start.expand(*sizes.shape[:-1], groups).contiguous(), right=True)


@register("identifier", "antidiagonal")
@dataclass
class AntidiagonalIdentifier(TokenIdentifier):
    """XAttention's block scores: per block pair, the softmax of strided antidiagonal sums (divided by √D·stride),
    summed over the pair's tiles and averaged over the query block's groups of ``stride`` rows.

    Memory stays bounded: groups of query rows are processed ``max_scores`` scores at a time.
    """

    stride: int = 8
    max_scores: int = 1 << 24

    def __post_init__(self) -> None:
        if self.stride < 1 or self.max_scores < 1:
            raise ValueError(f"stride and max_scores must be ≥ 1, got {self.stride}, {self.max_scores}")

    def score(self, q: Tensor, k: Tensor, layout: Layout) -> Tensor:
        b, h, n, d = q.shape
        who = "identifier 'antidiagonal'"
        q_groups = antidiagonal_groups(q, self.stride, reverse=True)
        k_groups = antidiagonal_groups(k, self.stride, reverse=False)
        q_block = group_blocks(layout.q_sizes, self.stride, who)
        k_block = group_blocks(layout.k_sizes, self.stride, who)
        mq, mk = layout.q_sizes.shape[-1], layout.k_sizes.shape[-1]
        g = q_groups.shape[2]
        scores = torch.zeros(b, h, mq, mk, device=q.device)
        rows = max(1, self.max_scores // g)
        scale = 1.0 / (math.sqrt(d) * self.stride)
        for start in range(0, g, rows):
            stop = min(g, start + rows)
            probs = torch.softmax(q_groups[:, :, start:stop] @ k_groups.transpose(-1, -2) * scale, dim=-1)
            per_key_block = torch.zeros(b, h, stop - start, mk, device=q.device)
            per_key_block.scatter_add_(-1, k_block.unsqueeze(2).expand(b, h, stop - start, g), probs)
            index = q_block[:, :, start:stop].unsqueeze(-1).expand(b, h, stop - start, mk)
            scores.scatter_add_(2, index, per_key_block)
        groups_per_block = torch.zeros(b, h, mq, device=q.device).scatter_add_(
            2, q_block, torch.ones_like(q_block, dtype=torch.float32)
        )
        return scores / groups_per_block.clamp_min(1).unsqueeze(-1)
