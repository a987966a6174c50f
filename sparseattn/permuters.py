"""Permuters: the SVG2 semantic (k-means) permutation and fixed-size blocks in the natural order."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from .config import build_component
from .interfaces import Layout, Permuter
from .registry import register


@register("permuter", "kmeans")
@dataclass
class KMeansPermuter(Permuter):
    """SVG2's semantic-aware permutation: per (batch, head), k-means on q and on k separately.

    Tokens are sorted by cluster id so each cluster is a contiguous block; block centroids are the cluster means.
    The first call of a layer runs ``iters_first`` iterations from ``init``; later calls warm-start from the layer's
    cached centroids and run ``iters_warm``. Cluster counts above N are clamped to N.
    """

    q_clusters: int = 300
    k_clusters: int = 1000
    iters_first: int = 50
    iters_warm: int = 2
    init: str = "random"
    tol: float = 1e-4
    seed: int = 0
    clusterer: Any = "auto"
    _clusterer: Any = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        for name in ("q_clusters", "k_clusters", "iters_first", "iters_warm"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.init not in ("random", "kmeans++"):
            raise ValueError(f"init must be 'random' or 'kmeans++', got '{self.init}'")
        if self.tol < 0:
            raise ValueError(f"tol must be ≥ 0, got {self.tol}")
        self._clusterer = build_component("clusterer", self.clusterer, where="permuter 'kmeans'")

    def permute(self, q: Tensor, k: Tensor, state: Optional[dict] = None) -> Layout:
        q_order, q_sizes, q_centroids = self._cluster(q, self.q_clusters, "q_centroids", state)
        kv_order, k_sizes, k_centroids = self._cluster(k, self.k_clusters, "k_centroids", state)
        return Layout(q_order, kv_order, q_sizes, k_sizes, q_centroids, k_centroids)

    def _cluster(self, x: Tensor, clusters: int, key: str, state: Optional[dict]):
        from sparseattn.clustering import init_centroids

        b, h, n, d = x.shape
        # In the model's dtype: each clusterer converts as it needs (the Triton one reads bf16 directly; a float32
        # copy of q and k would cost more memory traffic than the k-means iterations themselves).
        points = x.reshape(b * h, n, d)
        clusters = min(clusters, n)
        cached = state.get(key) if state is not None else None
        if cached is not None and cached.shape == (b * h, clusters, d) and cached.device == points.device:
            start, iters = cached, self.iters_warm
        else:
            start, iters = init_centroids(points, clusters, self.init, self.seed), self.iters_first
        result = self._clusterer.fit(points, start, iters, self.tol)
        if state is not None:
            state[key] = result.centroids
        # Narrow keys make the radix sort cheaper (int16: 2 passes instead of 8 for int64).
        key_dtype = torch.int16 if clusters <= torch.iinfo(torch.int16).max else torch.int32
        order = torch.argsort(result.labels.to(key_dtype), dim=-1, stable=True)
        return (
            order.reshape(b, h, n),
            result.sizes.reshape(b, h, clusters),
            result.centroids.reshape(b, h, clusters, d),
        )


@register("permuter", "blocks")
@dataclass
class FixedBlockPermuter(Permuter):
    """Natural token order cut into fixed-size blocks (the last may be shorter); centroids are block means.

    This is the layout of block-sparse methods (SpargeAttn, XAttention, FlexAttention masks).
    """

    block_size: int = 64
    k_block_size: Optional[int] = None

    def __post_init__(self) -> None:
        if self.block_size < 1 or (self.k_block_size is not None and self.k_block_size < 1):
            raise ValueError(f"block sizes must be positive, got {self.block_size}, {self.k_block_size}")

    def permute(self, q: Tensor, k: Tensor, state: Optional[dict] = None) -> Layout:
        q_sizes, q_centroids = block_means(q, self.block_size)
        k_sizes, k_centroids = block_means(k, self.k_block_size or self.block_size)
        return Layout(None, None, q_sizes, k_sizes, q_centroids, k_centroids)


def block_means(x: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Sizes [B, H, M] and mean vectors [B, H, M, D] (float32) of consecutive blocks of ``block_size`` tokens."""
    b, h, n, d = x.shape
    blocks = -(-n // block_size)
    sizes = torch.full((blocks,), block_size, dtype=torch.long, device=x.device)
    sizes[-1] = n - block_size * (blocks - 1)
    padded = torch.nn.functional.pad(x.float(), (0, 0, 0, blocks * block_size - n))
    sums = padded.reshape(b, h, blocks, block_size, d).sum(3)
    return sizes.expand(b, h, blocks).clone(), sums / sizes.view(1, 1, blocks, 1)
