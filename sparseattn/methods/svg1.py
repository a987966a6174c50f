"""Sparse VideoGen (SVG1, arXiv 2502.01776): per head, a spatial or a temporal band chosen by online profiling.

A spatial head attends tokens of the same and nearby frames: a band around the diagonal of the frame-major order. A
temporal head attends the same spatial positions across frames: a strided pattern in frame-major order, which
becomes a band once tokens are transposed to token-major order (position, then frame). The ``svg1`` permuter picks
the order per head; the ``band`` identifier (in `patterns`) then marks the same band for every head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from sparseattn.interfaces import Layout, Permuter, gather_tokens
from sparseattn.permuters import block_means
from sparseattn.registry import register

from .patterns import band_width
from .tiles import Grid, grid_from_state


def token_major_order(grid: Grid) -> Tensor:
    """[N] order of the token-major sequence: position p·T + f holds frame-major token f·(H·W) + p."""
    frames, height, width = grid
    position = torch.arange(frames * height * width)
    return (position % frames) * (height * width) + position // frames


@register("permuter", "svg1")
@dataclass
class SVG1Permuter(Permuter):
    """SVG1's online profiling and layout transformation.

    Per (batch, head): take ``sample_rows`` query rows (seeded, the same rows for every head), compute their exact
    attention, and measure how much of it a spatial band (frame-major order) and a temporal band (token-major
    order) of ``profile_density`` would keep. Heads where the temporal band keeps more become token-major, the
    others stay frame-major; both are cut into blocks of ``block_size`` tokens. SVG1 compares the sampled rows'
    output MSE, which needs v; a permuter sees only q and k, so the error measured here is that of the sampled
    attention maps (L1 error = 2 × the attention mass outside the band). Needs the token grid.
    """

    profile_density: float = 0.25
    sample_rows: int = 64
    block_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.profile_density <= 1.0:
            raise ValueError(f"profile_density must be in (0, 1], got {self.profile_density}")
        if self.sample_rows < 1 or self.block_size < 1:
            raise ValueError(f"sample_rows and block_size must be ≥ 1, got {self.sample_rows}, {self.block_size}")

    def permute(self, q: Tensor, k: Tensor, state: Optional[dict] = None) -> Layout:
        b, h, n, _ = q.shape
        grid = grid_from_state(state, n, "permuter 'svg1'")
        temporal = self.temporal_heads(q, k, grid)
        if bool(temporal.any()):
            natural = torch.arange(n, device=q.device)
            order = torch.where(temporal.unsqueeze(-1), token_major_order(grid).to(q.device), natural)
        else:
            order = None
        q_sizes, q_centroids = block_means(gather_tokens(q, order), self.block_size)
        k_sizes, k_centroids = block_means(gather_tokens(k, order), self.block_size)
        return Layout(order, order, q_sizes, k_sizes, q_centroids, k_centroids)

    def temporal_heads(self, q: Tensor, k: Tensor, grid: Grid) -> Tensor:
        """[B, H] bool: heads whose sampled attention a temporal band keeps more of than a spatial band."""
        b, h, n, d = q.shape
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[: self.sample_rows].sort().values
        width = band_width(n, self.profile_density)
        keys = torch.arange(n)
        spatial = (rows.unsqueeze(1) - keys.unsqueeze(0)).abs() < width
        position = torch.empty(n, dtype=torch.long).scatter_(0, token_major_order(grid), keys)  # token → place
        temporal = (position[rows].unsqueeze(1) - position.unsqueeze(0)).abs() < width
        probs = torch.softmax(q[:, :, rows.to(q.device)].float() @ k.float().transpose(-1, -2) / math.sqrt(d), dim=-1)
        kept_spatial = (probs * spatial.to(q.device)).sum((-1, -2))
        kept_temporal = (probs * temporal.to(q.device)).sum((-1, -2))
        return kept_temporal > kept_spatial

