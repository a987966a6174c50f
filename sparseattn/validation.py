"""Input checks that turn bad tensors into clear errors instead of silent wrong results."""
from __future__ import annotations

import torch
from torch import Tensor

ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 512


def check_qkv(q: Tensor, k: Tensor, v: Tensor, check_finite: bool = True) -> None:
    """Raise ValueError unless q, k, v are finite [B, H, N, D] tensors of one shape, dtype and device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have shape [batch, heads, tokens, head_dim] (4 dims), got {tuple(t.shape)}; "
                "for [batch, tokens, heads, head_dim] inputs pass x.transpose(1, 2)"
            )
        if t.dtype not in ATTENTION_DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k, v must have the same shape [B, H, N, D] for self-attention, got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    b, h, n, d = q.shape
    if min(b, h, n, d) == 0:
        raise ValueError(f"q, k, v must not be empty, got shape {tuple(q.shape)}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {d} is not supported (at most {MAX_HEAD_DIM}); is the layout [B, H, N, D]?")
    if check_finite:
        # One fp32 sum per tensor is a single pass and NaN/Inf always propagate into it, so finite sums prove finite
        # inputs with one host sync; only a non-finite sum (or an fp32 overflow of it) pays for the exact check.
        sums = torch.stack([t.sum(dtype=torch.float32) for t in (q, k, v)])
        if not bool(torch.isfinite(sums).all()):
            for name, t in (("q", q), ("k", k), ("v", v)):
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(f"{name} contains NaN or Inf values; check the model's activations upstream")


def check_kmeans_inputs(x: Tensor, centroids: Tensor, iters: int, check_finite: bool = True) -> None:
    """Raise ValueError unless x [G, N, D] and centroids [G, C, D] fit together and iters ≥ 1.

    ``check_finite`` also rejects NaN/Inf, at the cost of a host synchronisation.
    """
    if x.dim() != 3 or centroids.dim() != 3:
        raise ValueError(
            f"k-means expects x [groups, points, dim] and centroids [groups, clusters, dim], "
            f"got {tuple(x.shape)} and {tuple(centroids.shape)}"
        )
    if x.shape[0] != centroids.shape[0] or x.shape[2] != centroids.shape[2]:
        raise ValueError(
            f"x {tuple(x.shape)} and centroids {tuple(centroids.shape)} must agree on groups and dim"
        )
    if x.shape[1] == 0 or centroids.shape[1] == 0:
        raise ValueError("k-means needs at least one point and one centroid per group")
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    if check_finite and (not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(centroids).all())):
        raise ValueError("k-means input contains NaN or Inf values")
