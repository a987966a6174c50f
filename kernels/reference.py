"""Reference kernels in PyTorch: dense SDPA and a chunked block-sparse kernel that computes only selected pairs."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparseattn.config import build_component
from sparseattn.interfaces import BlockMask, Layout, SparseKernel
from sparseattn.registry import register
from sparseattn.strategy import dense_attention


@register("kernel", "sdpa")
@dataclass
class DenseSDPA(SparseKernel):
    """Dense attention; accepts only a mask that selects every block pair (it would silently ignore any other)."""

    def plan(self, layout: Layout, mask: BlockMask, q: Tensor) -> Any:
        if not bool(mask.selected.all()):
            raise ValueError("kernel 'sdpa' computes dense attention but the mask is sparse; use kernel 'torch' or 'auto'")
        return None

    def run(self, plan: Any, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return dense_attention(q, k, v)


@register("kernel", "torch")
@dataclass
class TorchBlockSparse(SparseKernel):
    """Block-sparse attention in PyTorch over permuted q, k, v; exact softmax over the selected keys of each query.

    The plan expands, per (batch, head) and query block, the selected key blocks into token indices. The run
    gathers those keys and processes query rows in chunks, so the peak extra memory is about
    ``max_scores`` fp32 scores (rows × selected keys, 4·max_scores bytes; 64 MiB by default) plus the gathered keys
    and values of one query block (2 × selected keys × D) — never N×N. A query block with no selected keys (all of
    its selected key blocks empty) outputs zeros.
    """

    max_scores: int = 1 << 24

    def __post_init__(self) -> None:
        if self.max_scores < 1:
            raise ValueError(f"max_scores must be positive, got {self.max_scores}")

    def plan(self, layout: Layout, mask: BlockMask, q: Tensor) -> list[list[tuple[int, int, Tensor]]]:
        b, h = layout.q_sizes.shape[:2]
        q_offsets = layout.q_offsets.cpu()
        k_sizes = layout.k_sizes
        selected = mask.selected
        plans = []
        for bi in range(b):
            for hi in range(h):
                key_block = torch.repeat_interleave(torch.arange(k_sizes.shape[-1], device=k_sizes.device), k_sizes[bi, hi])
                token_selected = selected[bi, hi][:, key_block]  # [Mq, N] bools: the selected keys per query block
                head = []
                for block in range(selected.shape[2]):
                    start, end = int(q_offsets[bi, hi, block]), int(q_offsets[bi, hi, block + 1])
                    if end > start:
                        head.append((start, end, token_selected[block].nonzero().squeeze(-1)))
                plans.append(head)
        return plans

    def run(self, plan: list, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, h, n, d = q.shape
        scale = 1.0 / math.sqrt(d)
        out = torch.zeros_like(q)
        for index, head in enumerate(plan):
            bi, hi = divmod(index, h)
            for start, end, keys in head:
                if keys.numel() == 0:
                    continue
                k_sel = k[bi, hi, keys].float()
                v_sel = v[bi, hi, keys].float()
                rows = max(1, self.max_scores // keys.numel())
                for row in range(start, end, rows):
                    stop = min(end, row + rows)
                    scores = (q[bi, hi, row:stop].float() @ k_sel.T) * scale
                    out[bi, hi, row:stop] = (torch.softmax(scores, dim=-1) @ v_sel).to(q.dtype)
        return out


@register("kernel", "auto")
@dataclass
class AutoKernel(SparseKernel):
    """Delegates to the first kernel of ``prefer`` whose `why_unsupported` is empty for the inputs."""

    prefer: list = field(default_factory=lambda: ["gluon_ws", "triton", "torch"])
    _kernels: list = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        if not self.prefer:
            raise ValueError("prefer must name at least one kernel")
        from sparseattn import registry

        self._kernels = [
            build_component("kernel", name, where="kernel 'auto'")
            for name in self.prefer
            if name in registry.available("kernel")
        ]
        if not self._kernels:
            raise ValueError(f"none of the preferred kernels {self.prefer} is registered")

    def choose(self, q: Tensor, k: Tensor, v: Tensor) -> SparseKernel:
        """The first preferred kernel that supports these inputs; ValueError with every kernel's reasons if none."""
        reasons = []
        for kernel in self._kernels:
            why = kernel.why_unsupported(q, k, v)
            if not why and q.device.type != "cuda" and kernel.name.startswith("triton"):
                # On CPU, Triton runs only in its interpreter (TRITON_INTERPRET=1, set by test suites): a debugging
                # aid orders of magnitude slower than the torch kernel.
                why = ["Triton on CPU runs only in its slow interpreter; name this kernel explicitly to use it"]
            if not why:
                return kernel
            reasons.append(f"{kernel.name}: {'; '.join(why)}")
        raise ValueError("no kernel supports these inputs: " + " | ".join(reasons))

    def why_unsupported(self, q: Tensor, k: Tensor, v: Tensor) -> list[str]:
        try:
            self.choose(q, k, v)
        except ValueError as exc:
            return [str(exc)]
        return []

    def plan(self, layout: Layout, mask: BlockMask, q: Tensor) -> Any:
        kernel = self.choose(q, q, q)
        return kernel, kernel.plan(layout, mask, q)

    def run(self, plan: Any, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        kernel, inner = plan
        return kernel.run(inner, q, k, v)

    def permute(self, q, k, v, layout):
        return self.choose(q, k, v).permute(q, k, v, layout)

    def unpermute(self, out, layout):
        return self.choose(out, out, out).unpermute(out, layout)
