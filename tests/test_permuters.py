"""The kmeans (SVG2) and blocks permuters: valid layouts, cluster-consistent blocks, warm start, determinism."""
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sparseattn.clustering import TorchKMeans
from sparseattn.config import ConfigError, build_component
from sparseattn.permuters import FixedBlockPermuter, KMeansPermuter


@dataclass
class RecordingKMeans(TorchKMeans):
    """The torch backend, recording every call's starting centroids, iteration budget and result."""

    calls: list = field(default_factory=list)

    def fit(self, x, centroids, iters, tol=0.0):
        result = super().fit(x, centroids, iters, tol)
        self.calls.append(dict(start=centroids.clone(), iters=iters, result=result))
        return result


def check_side(x, order, sizes, centroids, labels):
    """One (batch, head) side of a layout against the clusterer's labels for the same points."""
    n = x.shape[0]
    assert sorted(order.tolist()) == list(range(n))
    assert int(sizes.sum()) == n
    start = 0
    for block, size in enumerate(sizes.tolist()):
        tokens = order[start : start + size]
        assert set(tokens.tolist()) == set((labels == block).nonzero().flatten().tolist())
        if size:
            torch.testing.assert_close(centroids[block], x[tokens].double().mean(0).float(), atol=1e-5, rtol=1e-5)
        else:
            assert bool(torch.isfinite(centroids[block]).all())
        start += size


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 2), h=st.integers(1, 2), n=st.integers(1, 40), d=st.integers(1, 6),
    q_clusters=st.integers(1, 12), k_clusters=st.integers(1, 12), init=st.sampled_from(["random", "kmeans++"]),
    seed=st.integers(0, 1000),
)
@example(b=1, h=2, n=3, d=2, q_clusters=12, k_clusters=5, init="kmeans++", seed=1)  # N below both cluster counts
def test_kmeans_layout_matches_the_clusters(ref, b, h, n, d, q_clusters, k_clusters, init, seed):
    q, k, _ = ref.random_qkv(b, h, n, d, seed)
    if seed % 3 == 0:  # duplicated points make empty clusters likely
        q, k = q.round(), k.round()
    clusterer = RecordingKMeans()
    permuter = KMeansPermuter(q_clusters, k_clusters, iters_first=5, init=init, seed=seed, clusterer=clusterer)
    layout = permuter.permute(q, k)
    mq, mk = min(q_clusters, n), min(k_clusters, n)  # cluster counts above N are clamped
    assert layout.q_sizes.shape == (b, h, mq) and layout.k_sizes.shape == (b, h, mk)
    assert layout.q_centroids.shape == (b, h, mq, d) and layout.k_centroids.shape == (b, h, mk, d)
    assert layout.q_centroids.dtype == torch.float32
    q_labels, k_labels = (call["result"].labels.reshape(b, h, n) for call in clusterer.calls)
    for bi in range(b):
        for hi in range(h):
            check_side(q[bi, hi], layout.q_order[bi, hi], layout.q_sizes[bi, hi], layout.q_centroids[bi, hi],
                       q_labels[bi, hi])
            check_side(k[bi, hi], layout.kv_order[bi, hi], layout.k_sizes[bi, hi], layout.k_centroids[bi, hi],
                       k_labels[bi, hi])


def test_kmeans_empty_clusters_stay_finite():
    q = torch.zeros(1, 1, 6, 3)  # every point identical: all but one cluster end empty
    layout = KMeansPermuter(q_clusters=4, k_clusters=4, iters_first=3).permute(q, q)
    assert sorted(layout.q_sizes.flatten().tolist()) == [0, 0, 0, 6]
    assert bool(torch.isfinite(layout.q_centroids).all()) and bool(torch.isfinite(layout.k_centroids).all())


def test_kmeans_warm_start_uses_cached_centroids_and_iters_warm(ref):
    q, k, _ = ref.random_qkv(2, 2, 32, 4, seed=1)
    clusterer = RecordingKMeans()
    permuter = KMeansPermuter(q_clusters=4, k_clusters=6, iters_first=7, iters_warm=2, clusterer=clusterer)
    state = {}
    permuter.permute(q, k, state)
    assert [call["iters"] for call in clusterer.calls] == [7, 7]
    assert state["q_centroids"].shape == (4, 4, 4) and state["k_centroids"].shape == (4, 6, 4)
    cached = {key: value.clone() for key, value in state.items()}
    permuter.permute(q + 0.01, k - 0.01, state)
    assert [call["iters"] for call in clusterer.calls[2:]] == [2, 2]
    assert torch.equal(clusterer.calls[2]["start"], cached["q_centroids"])
    assert torch.equal(clusterer.calls[3]["start"], cached["k_centroids"])
    # a cache of another shape (e.g. another resolution) is not reused: cold start again
    permuter.permute(q[:, :, :3], k[:, :, :3], state)
    assert [call["iters"] for call in clusterer.calls[4:]] == [7, 7]
    # without a state there is no warm start
    permuter.permute(q, k, None)
    assert [call["iters"] for call in clusterer.calls[6:]] == [7, 7]


def test_kmeans_is_deterministic_with_a_seed(ref):
    q, k, _ = ref.random_qkv(1, 2, 48, 4, seed=3)
    for init in ("random", "kmeans++"):
        first = KMeansPermuter(q_clusters=5, k_clusters=7, iters_first=3, init=init, seed=11).permute(q, k)
        second = KMeansPermuter(q_clusters=5, k_clusters=7, iters_first=3, init=init, seed=11).permute(q, k)
        for name in ("q_order", "kv_order", "q_sizes", "k_sizes", "q_centroids", "k_centroids"):
            assert torch.equal(getattr(first, name), getattr(second, name)), (init, name)


def test_kmeans_init_starts_from_data_points(ref):
    q, k, _ = ref.random_qkv(1, 1, 20, 3, seed=4)
    for init in ("random", "kmeans++"):
        clusterer = RecordingKMeans()
        KMeansPermuter(q_clusters=5, k_clusters=5, init=init, clusterer=clusterer).permute(q, k)
        start = clusterer.calls[0]["start"][0]
        assert len({tuple(row) for row in start.tolist()}) == 5  # distinct points
        for row in start:
            assert bool((q[0, 0] == row).all(-1).any())


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(q_clusters=0), "q_clusters"),
        (dict(iters_warm=0), "iters_warm"),
        (dict(init="farthest"), "init"),
        (dict(tol=-1.0), "tol"),
        (dict(clusterer="nope"), "registered clusterers: "),
    ],
)
def test_kmeans_rejects_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        KMeansPermuter(**params)


@pytest.mark.parametrize("n, block_size, k_block_size", [(10, 4, None), (10, 4, 3), (3, 8, None), (12, 4, 12)])
def test_blocks_permuter(ref, n, block_size, k_block_size):
    q, k, _ = ref.random_qkv(2, 1, n, 3, seed=n)
    layout = FixedBlockPermuter(block_size, k_block_size).permute(q, k)
    assert layout.q_order is None and layout.kv_order is None
    for x, sizes, centroids, size in (
        (q, layout.q_sizes, layout.q_centroids, block_size),
        (k, layout.k_sizes, layout.k_centroids, k_block_size or block_size),
    ):
        expected = [size] * (n // size) + ([n % size] if n % size else [])
        assert sizes.tolist() == [[expected]] * 2
        for block, start in enumerate(range(0, n, size)):
            torch.testing.assert_close(centroids[:, :, block], x[:, :, start : start + size].mean(2))


def test_blocks_permuter_is_buildable_by_name():
    permuter = build_component("permuter", {"name": "blocks", "block_size": 16})
    assert isinstance(permuter, FixedBlockPermuter) and permuter.block_size == 16
    with pytest.raises(ConfigError, match="block sizes must be positive"):
        build_component("permuter", {"name": "blocks", "block_size": 0})
