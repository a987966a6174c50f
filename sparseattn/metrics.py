"""Quality metrics of a sparse plan against exact attention, computed in chunks (never an N×N tensor)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .interfaces import Layout
from .strategy import AttentionPlan


def density(plan: AttentionPlan) -> float:
    """Computed (query, key) pairs over N², averaged over batch and heads (SVG2's definition)."""
    return float(plan.density.mean())


def attention_recall(q: Tensor, k: Tensor, plan: AttentionPlan, max_scores: int = 1 << 24) -> Tensor:
    """[B, H] exact softmax mass that the selected (query, key) pairs cover, averaged over queries.

    Rows of queries are processed in chunks of at most ``max_scores`` scores (rows × N) per (batch, head).
    """
    if plan.dense:
        return torch.ones(q.shape[:2])
    b, h, n, d = q.shape
    layout = plan.layout
    q_block = layout.q_block_of_token()
    k_block = layout.k_block_of_token()
    rows = max(1, max_scores // n)
    scale = 1.0 / math.sqrt(d)
    recall = torch.zeros(b, h, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            keys = k[bi, hi].float()
            selected = plan.mask.selected[bi, hi]
            total = 0.0
            for start in range(0, n, rows):
                probs = torch.softmax((q[bi, hi, start : start + rows].float() @ keys.T) * scale, dim=-1)
                covered = selected[q_block[bi, hi, start : start + rows]][:, k_block[bi, hi]]
                total += float((probs * covered).sum(dtype=torch.float64))
            recall[bi, hi] = total / n
    return recall.float()


def relative_l2(out: Tensor, ref: Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ over the whole tensor, in float64."""
    ref64 = ref.double()
    return float((out.double() - ref64).norm() / ref64.norm().clamp_min(1e-30))


def cosine(out: Tensor, ref: Tensor) -> float:
    """Cosine similarity of the flattened outputs, in float64."""
    return float(torch.nn.functional.cosine_similarity(out.double().flatten(), ref.double().flatten(), dim=0))


def block_mask_to_token_mask(layout: Layout, selected: Tensor, bi: int, hi: int) -> Tensor:
    """[N, N] token-level mask in the original order for one (batch, head). Small N only: for tests and pictures."""
    q_block = layout.q_block_of_token()[bi, hi]
    k_block = layout.k_block_of_token()[bi, hi]
    return selected[bi, hi][q_block][:, k_block]
