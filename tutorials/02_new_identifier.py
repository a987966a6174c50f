"""Tutorial 2 — prototype a new sparse method by subclassing one interface.

SVG2 estimates the attention mass of a (query cluster, key cluster) pair from the two centroids alone. A natural
question: is a few real queries per cluster a better estimate? Here that idea is a new `TokenIdentifier` of about
30 lines: pick ``samples`` query tokens from each query block, compute their exact softmax over all keys, and sum
it per key block. It is registered under the name ``sampled``, used from a YAML recipe that reuses everything else
of SVG2 (permuter, budget, kernel, schedule), and compared against SVG2 on the same workload.

Run it::

    python tutorials/02_new_identifier.py            # ~1 minute on a laptop CPU
    python tutorials/02_new_identifier.py --quick    # a smaller workload (what the test suite runs)

To ship such a component in your own package, put the class in a module and name it in YAML as
``identifier: {name: "mypkg.scores:SampledQueries", samples: 4}``, or declare an entry point
``identifier.sampled = mypkg.scores:SampledQueries`` in the group ``sparseattn.components``
(docs/adding-a-component.md).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
from torch import Tensor

import sparseattn
from sparseattn.compare import compare, format_table
from sparseattn.interfaces import Layout, TokenIdentifier, gather_tokens
from sparseattn.workloads import synthetic_video


# --- the new component: a dataclass of parameters, validated, with one main method ------------------------------
@sparseattn.register("identifier", "sampled")
@dataclass
class SampledQueries(TokenIdentifier):
    """Block mass from ``samples`` random queries of each query block: their exact softmax over every key, summed per
    key block and averaged over the samples. Memory: B·H·Mq·samples·N fp32 scores — fine for a prototype, too much
    at 75k tokens."""

    samples: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")

    def score(self, q: Tensor, k: Tensor, layout: Layout) -> Tensor:
        b, h, n, d = q.shape
        sizes, starts = layout.q_sizes, layout.q_offsets[..., :-1]
        generator = torch.Generator().manual_seed(self.seed)
        fraction = torch.rand(*sizes.shape, self.samples, generator=generator).to(q.device)
        # q is in permuted order, so block i holds positions [start_i, start_i + size_i); an empty block samples
        # any position (it has no tokens, so its scores are never used).
        picks = (starts.unsqueeze(-1) + (fraction * sizes.unsqueeze(-1)).long()).clamp_max(n - 1)
        sampled = gather_tokens(q, picks.reshape(b, h, -1)).float()
        probs = torch.softmax(sampled @ k.float().transpose(-1, -2) / math.sqrt(d), dim=-1)
        positions = torch.arange(n, device=q.device).expand(b, h, n).contiguous()
        key_block = torch.searchsorted(layout.k_offsets[..., 1:].contiguous(), positions, right=True)
        mass = probs.new_zeros(b, h, probs.shape[2], layout.k_sizes.shape[-1])
        mass.scatter_add_(-1, key_block.unsqueeze(2).expand_as(probs), probs)
        return mass.reshape(b, h, sizes.shape[-1], self.samples, -1).mean(3)


def exact_block_mass(q: Tensor, k: Tensor, layout: Layout) -> Tensor:
    """[B, H, Mq, Mk] the true mean attention mass of every block pair (permuted q, k). Builds N×N: small N only."""
    b, h, n, d = q.shape
    probs = torch.softmax(q.float() @ k.float().transpose(-1, -2) / math.sqrt(d), dim=-1)
    positions = torch.arange(n).expand(b, h, n).contiguous()
    q_block = torch.searchsorted(layout.q_offsets[..., 1:].contiguous(), positions, right=True)
    k_block = torch.searchsorted(layout.k_offsets[..., 1:].contiguous(), positions, right=True)
    per_query = probs.new_zeros(b, h, n, layout.k_sizes.shape[-1])
    per_query.scatter_add_(-1, k_block.unsqueeze(2).expand_as(probs), probs)
    per_block = per_query.new_zeros(b, h, layout.q_sizes.shape[-1], per_query.shape[-1])
    per_block.scatter_add_(2, q_block.unsqueeze(-1).expand_as(per_query), per_query)
    return per_block / layout.q_sizes.clamp_min(1).unsqueeze(-1)


# --- the method as data: SVG2 with the identifier swapped ----------------------------------------------------------
SVG2_LAPTOP = {
    "name": "svg2-laptop",
    "base": "svg2",
    "permuter": {"name": "kmeans", "q_clusters": 32, "k_clusters": 128, "iters_first": 20, "clusterer": "torch"},
}
SAMPLED = {**SVG2_LAPTOP, "name": "svg2-sampled", "identifier": {"name": "sampled", "samples": 4}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller workload, for tests")
    args = parser.parse_args()

    print(f"registered identifiers: {', '.join(sparseattn.available('identifier'))}")
    frames, size = (4, 12) if args.quick else (8, 16)
    workload = synthetic_video(frames=frames, height=size, width=size, heads=2, head_dim=64, seed=1)
    print(f"workload {workload.name}: q/k/v {tuple(workload.q.shape)}")

    svg2, sampled = sparseattn.load_strategy(SVG2_LAPTOP), sparseattn.load_strategy(SAMPLED)
    print(f"{sampled.name}: identifier {sampled.identifier}")

    # Before comparing end to end, check the estimate itself on one layout against the exact block mass.
    layout = svg2.plan(workload.q, workload.k).layout
    q_p, k_p = gather_tokens(workload.q, layout.q_order), gather_tokens(workload.k, layout.kv_order)
    truth = exact_block_mass(q_p, k_p, layout)
    for identifier in (svg2.identifier, sampled.identifier):
        error = (identifier.score(q_p, k_p, layout) - truth).abs().sum(-1)  # per query block, in [0, 2]
        print(f"  {identifier.name:>8} estimate: mean |estimate − exact| over key blocks = "
              f"{float(error[layout.q_sizes > 0].mean()):.4f}")

    results = compare([svg2, sampled], [workload], repeat=1 if args.quick else 3, progress=False)
    print("\n" + format_table(results))
    base, new = results
    verdict = "higher" if new.recall > base.recall else "lower"
    print(f"\nThe sampled estimate reaches {verdict} recall ({new.recall:.4f} vs {base.recall:.4f}) at density "
          f"{new.density:.4f} vs {base.density:.4f}: top-p keeps key clusters until their *estimated* mass reaches p, "
          "so a better estimate changes both numbers. Its cost is in time_ms: exact scores for "
          f"{sampled.identifier.samples} queries per cluster against every key.")


if __name__ == "__main__":
    main()
