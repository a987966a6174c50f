"""Token identifiers: estimate the attention mass of each (query block, key block) pair."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .interfaces import Layout, TokenIdentifier
from .registry import register


@register("identifier", "centroid")
@dataclass
class CentroidIdentifier(TokenIdentifier):
    """SVG2's estimate: softmax over key blocks of qc·kc/√D, each key block weighted by its size, in fp32.

    Adding log|K_j| before the softmax equals weighting exp(score) by the block size; empty key blocks get weight 0.
    On fixed tiles (permuter ``blocks``) this is SpargeAttn-style mean pooling. ``temperature`` scales the logits
    (1 = the published estimate).
    """

    reads_tokens: ClassVar[bool] = False  # reads the layout only (q, k: shape and device)

    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def score(self, q: Tensor, k: Tensor, layout: Layout) -> Tensor:
        scale = 1.0 / (math.sqrt(layout.q_centroids.shape[-1]) * self.temperature)
        logits = torch.matmul(layout.q_centroids.float(), layout.k_centroids.float().transpose(-1, -2)) * scale
        logits = logits + layout.k_sizes.float().log().unsqueeze(-2)  # log 0 = -inf: empty blocks get no mass
        return torch.softmax(logits, dim=-1)
