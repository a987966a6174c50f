"""Metrics against brute-force definitions: recall = dense softmax mass on the selected token pairs."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn import AttentionContext, load_strategy, metrics
from sparseattn.interfaces import BlockMask
from sparseattn.strategy import AttentionPlan


def brute_recall(ref, q, k, plan):
    """[B, H] float64: mean over queries of the exact softmax mass on allowed keys."""
    b, h = q.shape[:2]
    return torch.tensor([
        [float((ref.dense_probs(q[bi, hi], k[bi, hi]) * ref.token_mask(plan.layout, plan.mask, bi, hi)).sum(-1).mean())
         for hi in range(h)]
        for bi in range(b)
    ], dtype=torch.float64)


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 2), h=st.integers(1, 2), n=st.integers(1, 20), d=st.integers(1, 6), mq=st.integers(1, 5),
    mk=st.integers(1, 5), mode=st.sampled_from(["random", "one", "singletons"]), seed=st.integers(0, 2**16),
    max_scores=st.sampled_from([1, 5, 1 << 24]),
)
def test_recall_matches_brute_force_on_random_plans(ref, b, h, n, d, mq, mk, mode, seed, max_scores):
    gen = torch.Generator().manual_seed(seed)
    plan = AttentionPlan(ref.random_layout(b, h, n, mq, mk, mode, gen), ref.random_mask(b, h, mq, mk, gen), False)
    q, k, _ = ref.random_qkv(b, h, n, d, seed)
    q = 2 * q  # sharper attention, so recall differs clearly from the density
    recall = metrics.attention_recall(q, k, plan, max_scores=max_scores)
    assert recall.shape == (b, h) and recall.dtype == torch.float32
    torch.testing.assert_close(recall.double(), brute_recall(ref, q, k, plan), atol=1e-5, rtol=0)


@pytest.mark.parametrize("text_tokens", [0, 4])
def test_recall_of_a_strategy_plan_with_text_tokens(ref, text_tokens):
    q, k, _ = ref.random_qkv(1, 2, 24 + text_tokens, 8, seed=9)
    strategy = load_strategy("svg2", permuter={"name": "kmeans", "q_clusters": 4, "k_clusters": 6},
                             budget={"name": "top_k", "k": 1})
    plan = strategy.plan(q, k, AttentionContext(grid=(2, 3, 4), text_tokens=text_tokens))
    expected = brute_recall(ref, q, k, plan)
    assert bool((expected < 0.999).all())  # sparse enough that a wrong mask would show
    for max_scores in (7, 1 << 24):
        torch.testing.assert_close(metrics.attention_recall(q, k, plan, max_scores).double(), expected, atol=1e-5,
                                   rtol=0)


def test_recall_is_one_for_a_full_mask_and_for_dense_plans(ref):
    q, k, _ = ref.random_qkv(2, 2, 30, 8, seed=1)
    layout = ref.random_layout(2, 2, 30, 3, 4, "random", torch.Generator().manual_seed(0))
    full = AttentionPlan(layout, BlockMask(torch.ones(2, 2, 3, 4, dtype=torch.bool)), dense=False)
    torch.testing.assert_close(metrics.attention_recall(q, k, full), torch.ones(2, 2))
    dense = load_strategy("dense").plan(q, k)
    assert torch.equal(metrics.attention_recall(q, k, dense), torch.ones(2, 2))
    assert metrics.density(dense) == 1.0


def test_density_metric_averages_the_plan(ref):
    q, k, _ = ref.random_qkv(2, 3, 20, 4, seed=2)
    gen = torch.Generator().manual_seed(3)
    plan = AttentionPlan(ref.random_layout(2, 3, 20, 3, 3, "random", gen), ref.random_mask(2, 3, 3, 3, gen), False)
    pairs = [int(ref.token_mask(plan.layout, plan.mask, bi, hi).sum()) for bi in range(2) for hi in range(3)]
    assert metrics.density(plan) == pytest.approx(sum(pairs) / (6 * 20 * 20), abs=1e-6)


def test_block_mask_to_token_mask_matches_the_loop(ref):
    gen = torch.Generator().manual_seed(4)
    layout = ref.random_layout(1, 2, 12, 3, 4, "random", gen)
    mask = ref.random_mask(1, 2, 3, 4, gen)
    for hi in range(2):
        expected = ref.token_mask(layout, mask, 0, hi)
        assert torch.equal(metrics.block_mask_to_token_mask(layout, mask.selected, 0, hi), expected)


def test_relative_l2_and_cosine():
    gen = torch.Generator().manual_seed(5)
    ref_out = torch.randn(2, 3, 10, 4, generator=gen)
    other = torch.randn(2, 3, 10, 4, generator=gen)
    assert metrics.relative_l2(ref_out, ref_out) == 0.0
    assert metrics.cosine(ref_out, ref_out) == pytest.approx(1.0)
    assert metrics.relative_l2(2 * ref_out, ref_out) == pytest.approx(1.0)
    assert metrics.cosine(2 * ref_out, ref_out) == pytest.approx(1.0)
    assert metrics.relative_l2(-ref_out, ref_out) == pytest.approx(2.0)
    assert metrics.cosine(-ref_out, ref_out) == pytest.approx(-1.0)
    a, b = ref_out.flatten().tolist(), other.flatten().tolist()
    dot = sum(x * y for x, y in zip(a, b))
    expected_cosine = dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    expected_l2 = math.sqrt(sum((x - y) ** 2 for x, y in zip(b, a)) / sum(x * x for x in a))
    assert metrics.cosine(other, ref_out) == pytest.approx(expected_cosine, rel=1e-9)
    assert metrics.relative_l2(other, ref_out) == pytest.approx(expected_l2, rel=1e-9)
    assert metrics.relative_l2(other.half(), ref_out) == pytest.approx(expected_l2, rel=1e-2)  # mixed dtypes
