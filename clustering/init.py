"""Initial centroids for batched k-means: seeded, deterministic, identical on CPU and CUDA."""
from __future__ import annotations

import torch
from torch import Tensor

INIT_METHODS = ("random", "kmeans++")


def init_centroids(x: Tensor, num_clusters: int, method: str = "random", seed: int = 0) -> Tensor:
    """Pick initial centroids [G, C, D] (float32) for x [G, N, D].

    ``random``: C distinct data points per group (the published SVG2 choice). ``kmeans++``: D²-weighted seeding.
    Randomness comes from a CPU generator seeded with ``seed``, so the choice does not depend on the device.
    """
    if method not in INIT_METHODS:
        raise ValueError(f"unknown k-means init '{method}'; choose one of {', '.join(INIT_METHODS)}")
    groups, n, _ = x.shape
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters must be in [1, N={n}], got {num_clusters}")
    generator = torch.Generator().manual_seed(seed)
    if method == "random":
        picks = torch.rand(groups, n, generator=generator).argsort(dim=-1)[:, :num_clusters].to(x.device)
        return torch.gather(x, 1, picks.unsqueeze(-1).expand(-1, -1, x.shape[-1])).float()
    return _kmeans_plus_plus(x.float(), num_clusters, generator)


def _kmeans_plus_plus(x: Tensor, num_clusters: int, generator: torch.Generator) -> Tensor:
    groups, n, dim = x.shape
    rows = torch.arange(groups, device=x.device)
    first = torch.randint(n, (groups,), generator=generator).to(x.device)
    centroids = x.new_empty(groups, num_clusters, dim)
    centroids[:, 0] = x[rows, first]
    nearest = (x - centroids[:, :1]).pow(2).sum(-1)
    for c in range(1, num_clusters):
        # Gumbel-max sampling of an index with probability ∝ D² (chosen points have D² = 0 and are never re-picked
        # unless every point coincides with a centroid).
        gumbel = -torch.log(-torch.log(torch.rand(groups, n, generator=generator).clamp_min(1e-20))).to(x.device)
        pick = (nearest.clamp_min(1e-30).log() + gumbel).argmax(dim=-1)
        centroids[:, c] = x[rows, pick]
        nearest = torch.minimum(nearest, (x - centroids[:, c : c + 1]).pow(2).sum(-1))
    return centroids
