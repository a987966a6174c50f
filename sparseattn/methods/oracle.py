"""The oracle: exact top-p over the true attention — the upper bound on identification, for reference only.

Representation (bounded and exact): keys are single tokens (one block each); queries are grouped into blocks of as
few consecutive tokens as ``max_pairs`` allows — single queries whenever B·H·N² ≤ max_pairs (the shipped workload:
6·2048² ≈ 25 M ≤ 67 M), else the smallest block that keeps the [B, H, Mq, N] score tensor within ``max_pairs``.
Scores are the exact attention mass each key gets from the block's queries (averaged), computed in chunks of query
rows, never as an N×N matrix; with ``top_p`` the kept keys of every query block reach mass p exactly. With single
queries this is the per-query oracle; with larger blocks it is the best any method sharing one key set per query
block can do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from sparseattn.interfaces import Layout, Permuter, TokenIdentifier
from sparseattn.permuters import block_means
from sparseattn.registry import register


@register("permuter", "token_keys")
@dataclass
class TokenKeysPermuter(Permuter):
    """Natural order; every key is its own block; query blocks are single tokens when B·H·N² ≤ ``max_pairs``, else
    the fewest consecutive tokens that keep B·H·Mq·N within it (the oracle's layout)."""

    max_pairs: int = 1 << 26

    def __post_init__(self) -> None:
        if self.max_pairs < 1:
            raise ValueError(f"max_pairs must be ≥ 1, got {self.max_pairs}")

    def query_block_size(self, b: int, h: int, n: int) -> int:
        """Smallest query block size s with B·H·⌈N/s⌉·N ≤ max_pairs (at most N)."""
        size = max(1, math.ceil(b * h * n * n / self.max_pairs))
        while size < n and b * h * math.ceil(n / size) * n > self.max_pairs:
            size += 1
        return min(size, n)

    def permute(self, q: Tensor, k: Tensor, state: Optional[dict] = None) -> Layout:
        b, h, n, _ = q.shape
        q_sizes, q_centroids = block_means(q, self.query_block_size(b, h, n))
        k_sizes = torch.ones(b, h, n, dtype=torch.long, device=k.device)
        return Layout(None, None, q_sizes, k_sizes, q_centroids, k.float())


@register("identifier", "exact")
@dataclass
class ExactIdentifier(TokenIdentifier):
    """The true attention mass of every block pair: mean over the query block's tokens of the softmax probability
    summed over the key block's tokens (fp32, ``max_scores`` scores per chunk of query rows). Works with any layout;
    it costs a dense attention pass, so it is a reference, not a method."""

    max_scores: int = 1 << 24

    def __post_init__(self) -> None:
        if self.max_scores < 1:
            raise ValueError(f"max_scores must be ≥ 1, got {self.max_scores}")

    def score(self, q: Tensor, k: Tensor, layout: Layout) -> Tensor:
        b, h, n, d = q.shape
        mq, mk = layout.q_sizes.shape[-1], layout.k_sizes.shape[-1]
        scores = torch.zeros(b, h, mq, mk, device=q.device)
        rows = max(1, self.max_scores // n)
        block_ids_q = torch.arange(mq, device=q.device)
        block_ids_k = torch.arange(mk, device=q.device)
        for bi in range(b):
            for hi in range(h):
                q_block = torch.repeat_interleave(block_ids_q, layout.q_sizes[bi, hi], output_size=n)
                k_block = torch.repeat_interleave(block_ids_k, layout.k_sizes[bi, hi], output_size=n)
                keys = k[bi, hi].float().T / math.sqrt(d)
                one_token_keys = bool((layout.k_sizes[bi, hi] == 1).all())  # the oracle: no summing over keys
                for start in range(0, n, rows):
                    probs = torch.softmax(q[bi, hi, start : start + rows].float() @ keys, dim=-1)
                    if not one_token_keys:
                        probs = torch.zeros(len(probs), mk, device=q.device).index_add_(1, k_block, probs)
                    scores[bi, hi].index_add_(0, q_block[start : start + rows], probs)
        return scores / layout.q_sizes.clamp_min(1).unsqueeze(-1)
