"""Budget controllers: choose which key blocks each query block attends to, from block scores."""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .interfaces import BlockMask, BudgetController, Layout
from .registry import register


@register("budget", "top_p")
@dataclass
class TopP(BudgetController):
    """Per query block, the fewest key blocks whose estimated mass reaches ``p`` (the block crossing p is kept, the
    best block always is), plus a floor: the best ⌊min_ratio·Mk⌋ key blocks are always kept (SVG2). Scores are
    estimated masses, ≥ 0, as every identifier here produces (the Triton backend relies on it and does not check:
    a check would synchronise with the host). ``backend``: ``torch`` (sort, any device), ``triton`` (one launch, no
    sort: kernels/triton_topp.py; rows of up to 8,192 blocks) or ``auto`` (triton for CUDA scores it can take)."""

    p: float = 0.9
    min_ratio: float = 0.0
    backend: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"p must be in (0, 1], got {self.p}")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {self.min_ratio}")
        if self.backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be auto, torch or triton, got {self.backend!r}")

    def select(self, scores: Tensor, layout: Layout) -> BlockMask:
        if self.p >= 1.0:  # reaching all the mass needs every block; avoids fp rounding of the cumulative sum
            return BlockMask(torch.ones_like(scores, dtype=torch.bool))
        floor = max(int(self.min_ratio * scores.shape[-1]), 1)
        kernel = _triton_kernel(self.backend, scores, "triton_topp", "top_p")
        if kernel is not None:
            return BlockMask(kernel.top_p_mask(scores, self.p, floor))
        return BlockMask(top_p_reference(scores, self.p, floor))


def _triton_kernel(backend: str, scores: Tensor, kernel: str, budget: str):
    """The Triton kernel module ``sparseattn.kernels.<kernel>`` when ``backend`` (auto | torch | triton) picks it
    for ``scores``, else None (the torch path). ``auto`` picks it for CUDA scores it can take; ``triton`` raises
    ValueError with the reasons when it cannot."""
    if backend == "torch" or (backend == "auto" and not scores.is_cuda):
        return None
    problems = _triton_problems(scores, kernel)
    if not problems:
        return importlib.import_module(f"sparseattn.kernels.{kernel}")
    if backend == "triton":
        raise ValueError(f"{budget} backend 'triton' cannot select here: " + "; ".join(problems))
    return None


def _triton_problems(scores: Tensor, kernel: str) -> list[str]:
    """Reasons the Triton kernel module ``sparseattn.kernels.<kernel>`` cannot take ``scores`` here (empty: it can).
    Both budget kernels hold whole rows in a program (``MAX_BLOCKS``); ``SCORE_DTYPES``, where a module has it, lists
    the score dtypes it reads."""
    try:
        module = importlib.import_module(f"sparseattn.kernels.{kernel}")
        from sparseattn.kernels.triton_permute import mode_problem
    except ImportError as exc:
        return [f"triton is not available ({exc})"]
    problems = mode_problem(scores.is_cuda)
    if scores.shape[-1] > module.MAX_BLOCKS:
        problems.append(f"rows of {scores.shape[-1]} key blocks exceed its {module.MAX_BLOCKS} (a program holds "
                        "whole rows)")
    dtypes = getattr(module, "SCORE_DTYPES", None)
    if dtypes is not None and scores.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        problems.append(f"{str(scores.dtype).replace('torch.', '')} scores (it takes {names})")
    return problems


def top_p_reference(scores: Tensor, p: float, floor: int) -> Tensor:
    """Per row of ``scores`` [..., Mk]: the fewest best blocks whose mass reaches ``p``, and at least the best
    ``floor``, by sorting each row."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    mass_before = sorted_scores.cumsum(-1) - sorted_scores
    ranks = torch.arange(scores.shape[-1], device=scores.device)
    keep = (mass_before < p * sorted_scores.sum(-1, keepdim=True)) | (ranks < floor)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, keep)


@register("budget", "top_k")
@dataclass
class TopK(BudgetController):
    """Per query block, the ``k`` best key blocks, or the best ⌈fraction·Mk⌉ (exactly one of the two is set)."""

    k: Optional[int] = None
    fraction: Optional[float] = None

    def __post_init__(self) -> None:
        if (self.k is None) == (self.fraction is None):
            raise ValueError("set exactly one of k (a count) or fraction (of the key blocks)")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")

    def select(self, scores: Tensor, layout: Layout) -> BlockMask:
        blocks = scores.shape[-1]
        count = self.k if self.k is not None else math.ceil(self.fraction * blocks - 1e-9)
        count = max(1, min(blocks, count))
        order = scores.topk(count, dim=-1).indices
        return BlockMask(torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, True))


@register("budget", "density")
@dataclass
class FixedDensity(BudgetController):
    """Per head, the block pairs with the most estimated mass per covered (query, key) pair, until the covered
    fraction of the N×N pairs reaches ``density`` (the pair crossing it is kept); every query block keeps its best
    key block. The estimated mass of pair (i, j) is |Q_i|·score[i, j], so blocks are ranked by score[i, j] / |K_j|
    (divided in the scores' dtype). ``backend``: ``torch`` (argsort, any device; ties in rank are kept in an
    unspecified order), ``triton`` (radix select, no sort, no host synchronisation: kernels/triton_density.py;
    float32/float16/bfloat16 scores, rows of up to 8,192 key blocks; ties kept in flat index order, and empty pairs
    are never kept unless they are a row's best block) or ``auto`` (triton for CUDA scores it can take)."""

    density: float = 0.25
    backend: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be auto, torch or triton, got {self.backend!r}")

    def select(self, scores: Tensor, layout: Layout) -> BlockMask:
        kernel = _triton_kernel(self.backend, scores, "triton_density", "density")
        if kernel is not None:
            return BlockMask(kernel.density_mask(scores, layout.q_sizes, layout.k_sizes, self.density))
        b, h, mq, mk = scores.shape
        # Areas are integers: an int64 running sum is exact (a float32 one near N² ~ 10¹⁰ is off by tens of pairs
        # and can stop short of the target density). One flat scan over all heads, then each head's start is
        # subtracted: a single long scan is far faster than per-head scans over long rows.
        q_sizes, k_sizes = layout.q_sizes, layout.k_sizes
        area = (q_sizes.unsqueeze(-1) * k_sizes.unsqueeze(-2)).reshape(b * h, -1)
        value = (scores / k_sizes.clamp_min(1).unsqueeze(-2).to(scores.dtype)).reshape(b * h, -1)
        value = value.masked_fill(area == 0, -1.0)  # empty pairs cost nothing and carry nothing: rank them last
        order = value.argsort(dim=-1, descending=True)
        area_sorted = area.gather(-1, order)
        before = (area_sorted.reshape(-1).cumsum(0) - area_sorted.reshape(-1)).reshape(b * h, -1)
        before = before - before[:, :1]
        n = q_sizes.sum(-1).reshape(b * h, 1).double()
        keep = before < torch.ceil(self.density * n * n).long()  # integer areas: < x ⇔ < ⌈x⌉
        selected = torch.zeros_like(value, dtype=torch.bool).scatter_(-1, order, keep).reshape(b, h, mq, mk)
        best = scores.argmax(dim=-1, keepdim=True)
        return BlockMask(selected.scatter_(-1, best, True))
