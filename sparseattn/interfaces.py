"""The data flow of one sparse attention call, as small interfaces.

    q, k, v [B, H, N, D]
      │  Permuter.permute(q, k, state)            → Layout   (token orders, block sizes, block centroids)
      │  TokenIdentifier.score(q_p, k_p, layout)   → scores [B, H, Mq, Mk]  (estimated attention mass per block pair;
      │                                              q_p, k_p gathered by the layout's orders if it reads tokens)
      │  BudgetController.select(scores, layout)   → BlockMask (which key blocks each query block attends to)
      │  SparseKernel.permute(q, k, v, layout)     → q_p, k_p, v_p (gathered by the layout's orders, or unchanged
      │                                              for a kernel that reads through the orders itself)
      │  SparseKernel.plan(layout, mask, q_p) / run(plan, q_p, k_p, v_p) → out
      ▼  SparseKernel.unpermute(out, layout)       → out [B, H, N, D] in the original order

A `Clusterer` (k-means backend, in `sparseattn.clustering`) is what the semantic permuter uses to find blocks.
Every component is a dataclass whose fields are its parameters (validated in `__post_init__`) and is registered
with `sparseattn.registry.register(kind, name)`, so recipes can name it.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor


# ----------------------------------------------------------------------------------------------------------------
# Data passed between components
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Layout:
    """How the tokens of each (batch, head) are reordered and cut into blocks.

    q_order / kv_order: [B, H, N] int64; position i of the permuted sequence holds original token ``order[..., i]``.
        ``None`` means the natural order (no gather needed).
    q_sizes / k_sizes: [B, H, Mq] / [B, H, Mk] int64; block sizes in permuted order; they sum to N and may be 0
        (an empty cluster).
    q_centroids / k_centroids: [B, H, Mq, D] / [B, H, Mk, D] float32; mean of each block's tokens (for an empty
        block, any finite vector: it carries no tokens and no mass).
    """

    q_order: Optional[Tensor]
    kv_order: Optional[Tensor]
    q_sizes: Tensor
    k_sizes: Tensor
    q_centroids: Tensor
    k_centroids: Tensor

    @property
    def num_tokens(self) -> int:
        """N, the number of tokens each (batch, head) is cut into blocks."""
        return int(self.q_sizes[(0,) * (self.q_sizes.dim() - 1)].sum())

    @property
    def q_offsets(self) -> Tensor:
        """[B, H, Mq + 1] start of each query block in the permuted sequence (last entry = N)."""
        return _offsets(self.q_sizes)

    @property
    def k_offsets(self) -> Tensor:
        """[B, H, Mk + 1] start of each key block in the permuted sequence (last entry = N)."""
        return _offsets(self.k_sizes)

    def q_block_of_token(self) -> Tensor:
        """[B, H, N] int64: the query block of every token, in the *original* token order."""
        return _block_of_token(self.q_sizes, self.q_order)

    def k_block_of_token(self) -> Tensor:
        """[B, H, N] int64: the key block of every token, in the *original* token order."""
        return _block_of_token(self.k_sizes, self.kv_order)


@dataclass
class BlockMask:
    """Selected (query block, key block) pairs: ``selected[b, h, i, j]`` is True when query block i attends key block j.

    A boolean [B, H, Mq, Mk] tensor is small (Mq·Mk ≤ a few 10⁵ per head) and lets every budget and kernel share one
    representation; kernels turn it into their own block lists in ``SparseKernel.plan``.
    """

    selected: Tensor

    def density(self, layout: Layout) -> Tensor:
        """[B, H] fraction of the N×N (query, key) pairs that the selected blocks cover."""
        qs = layout.q_sizes.to(torch.float64)
        ks = layout.k_sizes.to(torch.float64)
        covered = torch.einsum("bhi,bhij,bhj->bh", qs, self.selected.to(torch.float64), ks)
        n = qs.sum(-1)
        return (covered / (n * n)).to(torch.float32)


def _offsets(sizes: Tensor) -> Tensor:
    zero = torch.zeros(*sizes.shape[:-1], 1, dtype=sizes.dtype, device=sizes.device)
    return torch.cat([zero, sizes.cumsum(-1)], dim=-1)


def _block_of_token(sizes: Tensor, order: Optional[Tensor]) -> Tensor:
    num_blocks = sizes.shape[-1]
    flat = sizes.reshape(-1, num_blocks)
    n = int(flat[0].sum())
    block_ids = torch.arange(num_blocks, device=sizes.device)
    permuted = torch.stack([torch.repeat_interleave(block_ids, row, output_size=n) for row in flat])
    permuted = permuted.reshape(*sizes.shape[:-1], n)
    if order is None:
        return permuted
    return torch.empty_like(permuted).scatter_(-1, order, permuted)


def gather_tokens(x: Tensor, order: Optional[Tensor]) -> Tensor:
    """x [B, H, N, D] reordered along N: result[..., i, :] = x[..., order[..., i], :]."""
    if order is None:
        return x
    return torch.gather(x, 2, order.unsqueeze(-1).expand(*order.shape, x.shape[-1]))


def scatter_tokens(x: Tensor, order: Optional[Tensor]) -> Tensor:
    """Inverse of `gather_tokens`: result[..., order[..., i], :] = x[..., i, :]."""
    if order is None:
        return x
    return torch.empty_like(x).scatter_(2, order.unsqueeze(-1).expand(*order.shape, x.shape[-1]), x)


@dataclass
class KMeansResult:
    """labels [G, N] int64, centroids [G, C, D] float32 (means of the final assignment), sizes [G, C] int64."""

    labels: Tensor
    centroids: Tensor
    sizes: Tensor


# ----------------------------------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------------------------------
class Component(abc.ABC):
    """Base of every registered component: a dataclass of parameters with a `params()` view for configs and docs."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""

    def params(self) -> dict[str, Any]:
        """The component's parameters (its dataclass init fields) by name, as a recipe would give them."""
        if not hasattr(self, "__dataclass_fields__"):
            return {}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


class Permuter(Component):
    """Reorders tokens so each block is contiguous. ``state`` is this layer's cache (may be None: no warm start)."""

    kind = "permuter"

    @abc.abstractmethod
    def permute(self, q: Tensor, k: Tensor, state: Optional[dict] = None) -> Layout:
        """Return the `Layout` of q, k [B, H, N, D] (original order): token orders, block sizes and centroids.

        ``state`` is this layer's mutable cache (e.g. centroids for a warm start); None means start cold.
        """


class TokenIdentifier(Component):
    """Estimates the attention mass of every (query block, key block) pair from the permuted q and k."""

    kind = "identifier"
    #: False for identifiers that use q, k only for their shape, dtype and device (e.g. centroid scores): the
    #: strategy then skips gathering them into the permuted order and passes them as they are.
    reads_tokens: ClassVar[bool] = True

    @abc.abstractmethod
    def score(self, q: Tensor, k: Tensor, layout: Layout) -> Tensor:
        """Return scores [B, H, Mq, Mk] (float32, ≥ 0; larger = more attention mass). q, k are in permuted order."""


class BudgetController(Component):
    """Turns block scores into the selected block pairs."""

    kind = "budget"

    @abc.abstractmethod
    def select(self, scores: Tensor, layout: Layout) -> BlockMask:
        """Return the `BlockMask` [B, H, Mq, Mk] for scores [B, H, Mq, Mk] (from a `TokenIdentifier`) on ``layout``."""


class SparseKernel(Component):
    """Attention restricted to the selected block pairs.

    ``permute`` puts q, k, v in the form ``run`` reads: by default gathered into the layout's order (and
    ``unpermute`` scatters the output back); a kernel that reads through the layout's orders itself returns them
    unchanged and writes its output in the original order, saving the copies. Plan once per layout and mask
    (block lists, buffers), run many times. ``run`` must not allocate O(N²) memory.
    """

    kind = "kernel"

    def why_unsupported(self, q: Tensor, k: Tensor, v: Tensor) -> list[str]:
        """Reasons this kernel cannot run on these inputs (empty list = supported)."""
        return []

    def plan(self, layout: Layout, mask: BlockMask, q: Tensor) -> Any:
        """Turn a layout and mask into whatever `run` needs (block lists, buffers); q is `permute`'s query."""
        return (layout, mask)

    def permute(self, q: Tensor, k: Tensor, v: Tensor, layout: Layout) -> tuple[Tensor, Tensor, Tensor]:
        """Gather q by ``layout.q_order`` and k, v by ``layout.kv_order`` (a kernel may fuse this into one launch,
        or return q, k, v unchanged if its ``run`` reads through the orders)."""
        return gather_tokens(q, layout.q_order), gather_tokens(k, layout.kv_order), gather_tokens(v, layout.kv_order)

    def unpermute(self, out: Tensor, layout: Layout) -> Tensor:
        """Scatter `run`'s output back to the original query order (unchanged if it is already in that order)."""
        return scatter_tokens(out, layout.q_order)

    @abc.abstractmethod
    def run(self, plan: Any, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Return the attention output [B, H, N, D] for `permute`'s q, k, v (in the order `unpermute` expects)."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, layout: Layout, mask: BlockMask) -> Tensor:
        return self.run(self.plan(layout, mask, q), q, k, v)


class Clusterer(Component):
    """Batched k-means over G independent groups (one group per (batch, head))."""

    kind = "clusterer"

    @abc.abstractmethod
    def fit(self, x: Tensor, centroids: Tensor, iters: int, tol: float = 0.0) -> KMeansResult:
        """Run up to ``iters`` Lloyd iterations on x [G, N, D] from the initial centroids [G, C, D].

        Squared Euclidean distance; an empty cluster keeps its previous centroid and has size 0; stops early when the
        largest centroid shift is below ``tol`` (0 disables the check). The returned labels are the final assignment
        and the centroids are the means of those labels.
        """
