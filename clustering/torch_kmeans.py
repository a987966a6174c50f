"""Batched Lloyd k-means in PyTorch (CPU or CUDA): the reference backend."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.interfaces import Clusterer, KMeansResult
from sparseattn.registry import register
from sparseattn.validation import check_kmeans_inputs


def assign_labels(x: Tensor, centroids: Tensor, max_elements: int = 1 << 25) -> Tensor:
    """Nearest centroid (squared Euclidean) of every point: x [G, N, D], centroids [G, C, D] → labels [G, N].

    Works on chunks of points so the distance block stays under ``max_elements`` floats.
    """
    groups, n, _ = x.shape
    num_clusters = centroids.shape[1]
    chunk = max(1, max_elements // max(1, groups * num_clusters))
    c_sq = centroids.pow(2).sum(-1).unsqueeze(1)  # ‖x‖² is the same for every centroid, so it is left out
    labels = torch.empty(groups, n, dtype=torch.long, device=x.device)
    for start in range(0, n, chunk):
        part = x[:, start : start + chunk]
        dist = torch.baddbmm(c_sq, part, centroids.transpose(1, 2), alpha=-2.0)
        labels[:, start : start + chunk] = dist.argmin(dim=-1)
    return labels


def update_centroids(x: Tensor, labels: Tensor, previous: Tensor) -> tuple[Tensor, Tensor]:
    """Means of the points of each cluster; an empty cluster keeps its previous centroid. Returns (centroids, sizes)."""
    groups, num_clusters, dim = previous.shape
    sums = torch.zeros_like(previous).scatter_add_(1, labels.unsqueeze(-1).expand(-1, -1, dim), x)
    sizes = torch.zeros(groups, num_clusters, dtype=torch.long, device=x.device)
    sizes.scatter_add_(1, labels, torch.ones_like(labels))
    means = sums / sizes.clamp_min(1).unsqueeze(-1).to(sums.dtype)
    return torch.where((sizes > 0).unsqueeze(-1), means, previous), sizes


@register("clusterer", "torch")
@dataclass
class TorchKMeans(Clusterer):
    """Batched k-means with torch ops; the distance matrix is built in chunks of at most ``max_elements`` floats."""

    max_elements: int = 1 << 25

    def __post_init__(self) -> None:
        if self.max_elements < 1:
            raise ValueError(f"max_elements must be positive, got {self.max_elements}")

    def fit(self, x: Tensor, centroids: Tensor, iters: int, tol: float = 0.0) -> KMeansResult:
        check_kmeans_inputs(x, centroids, iters)
        # Distances come from ‖c‖² − 2x·c in fp32, which loses the differences between them when all points share
        # an offset much larger than their spread (keys with a common bias); centring each group removes it.
        x = x.float()
        offset = x.mean(dim=1, keepdim=True)
        x = x - offset
        centroids = centroids.float() - offset
        for _ in range(iters):
            labels = assign_labels(x, centroids, self.max_elements)
            new_centroids, sizes = update_centroids(x, labels, centroids)
            converged = tol > 0 and bool((new_centroids - centroids).norm(dim=-1).max() < tol)
            centroids = new_centroids
            if converged:
                break
        return KMeansResult(labels=labels, centroids=centroids + offset, sizes=sizes)
