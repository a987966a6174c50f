"""K-means backends (torch, numba, faiss) against scipy's kmeans2 and against each other, plus init_centroids.

scipy's ``kmeans2(data, init, iter=n, minit='matrix', missing='warn')`` runs n rounds of (assign, update) and returns
(centroids after the last update, labels of the last assignment); an empty cluster keeps its previous centroid. That
is exactly `Clusterer.fit` with tol=0, so labels must be equal and centroids close. scipy is run in float64 on the
float32 data (exactly representable), so it is the "exact" reference; a label may differ only where a point is
equidistant from two centroids up to float32 rounding, which each comparison proves by computing both distances.
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.cluster.vq import kmeans2

from sparseattn.clustering import init_centroids
from sparseattn.registry import get

BACKENDS = ["torch", "numba", "faiss"]


def _backend(name: str, **params):
    if name in ("faiss", "numba"):
        pytest.importorskip(name)
    return get("clusterer", name)(**params)


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def _scipy_kmeans(x: np.ndarray, init: np.ndarray, iters: int):
    """kmeans2 per group in float64: (labels [G, N], centroids [G, C, D], centroids the labels were assigned to)."""
    labels, centroids, previous = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'One of the clusters is empty' (missing='warn')
        for g in range(x.shape[0]):
            data, start = x[g].astype(np.float64), init[g].astype(np.float64)
            c, lab = kmeans2(data, start, iter=iters, minit="matrix", missing="warn")
            prev = start if iters == 1 else kmeans2(data, start, iter=iters - 1, minit="matrix", missing="warn")[0]
            labels.append(lab)
            centroids.append(c)
            previous.append(prev)
    return np.stack(labels).astype(np.int64), np.stack(centroids), np.stack(previous)


def _check_result_form(result, x: torch.Tensor, num_clusters: int) -> None:
    groups, n, dim = x.shape
    assert result.labels.dtype == torch.int64 and result.labels.shape == (groups, n)
    assert result.centroids.dtype == torch.float32 and result.centroids.shape == (groups, num_clusters, dim)
    assert result.sizes.dtype == torch.int64 and result.sizes.shape == (groups, num_clusters)
    for t in (result.labels, result.centroids, result.sizes):
        assert t.device == x.device
    assert bool(torch.isfinite(result.centroids).all())
    labels = result.labels.cpu()
    assert int(labels.min()) >= 0 and int(labels.max()) < num_clusters
    counts = torch.stack([torch.bincount(row, minlength=num_clusters) for row in labels])
    assert torch.equal(counts, result.sizes.cpu())


def _assert_matches_scipy(result, x: torch.Tensor, init: torch.Tensor, iters: int, max_tie_fraction=0.01) -> None:
    """Labels equal scipy's except for proven near-ties; centroids of clusters untouched by a tie match closely."""
    x_np, init_np = x.cpu().numpy(), init.cpu().numpy()
    ref_labels, ref_centroids, ref_previous = _scipy_kmeans(x_np, init_np, iters)
    labels = result.labels.cpu().numpy()
    centroids = result.centroids.cpu().numpy()
    groups, n, _ = x_np.shape
    mismatched = np.argwhere(labels != ref_labels)
    assert len(mismatched) <= max_tie_fraction * groups * n, f"{len(mismatched)} of {groups * n} labels differ"
    touched = np.zeros(ref_centroids.shape[:2], dtype=bool)
    for g, i in mismatched:
        point = x_np[g, i].astype(np.float64)
        ours, theirs = ref_previous[g, labels[g, i]], ref_previous[g, ref_labels[g, i]]
        d_ours, d_theirs = ((point - ours) ** 2).sum(), ((point - theirs) ** 2).sum()
        scale = (point**2).sum() + (ours**2).sum() + (theirs**2).sum()
        assert abs(d_ours - d_theirs) <= 1e-5 * scale + 1e-12, (
            f"group {g} point {i}: label {labels[g, i]} (d²={d_ours}) vs scipy {ref_labels[g, i]} (d²={d_theirs}) "
            "is not a tie"
        )
        touched[g, labels[g, i]] = touched[g, ref_labels[g, i]] = True
    scale = max(1.0, float(np.abs(x_np).max()))
    np.testing.assert_allclose(centroids[~touched], ref_centroids[~touched], rtol=1e-4, atol=1e-5 * scale)


def _data(seed: int, groups: int, n: int, dim: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.standard_normal((groups, n, dim)) * scale + offset).astype(np.float32))


def _blobs(seed: int, groups: int, per_blob: int, num_blobs: int, dim: int, spread: float = 0.05) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((groups, num_blobs, 1, dim)) * 10.0
    points = centers + spread * rng.standard_normal((groups, num_blobs, per_blob, dim))
    points = points.reshape(groups, num_blobs * per_blob, dim)
    order = rng.permutation(num_blobs * per_blob)
    return torch.from_numpy(points[:, order].astype(np.float32))


# ----------------------------------------------------------------------------------------------------------------
# against scipy
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("groups,n,dim,clusters,iters", [(2, 400, 5, 7, 8), (3, 1200, 16, 24, 5), (1, 50, 1, 4, 3)])
def test_matches_scipy(name, groups, n, dim, clusters, iters):
    x = _data(groups * n + dim, groups, n, dim, scale=2.0, offset=0.5)
    init = init_centroids(x, clusters, "random", seed=1)
    result = _backend(name).fit(x, init, iters)
    _check_result_form(result, x, clusters)
    _assert_matches_scipy(result, x, init, iters)


@pytest.mark.parametrize("name", BACKENDS)
def test_matches_scipy_with_large_offset(name):
    # Points far from the origin relative to their spread (e.g. keys with a large shared bias).
    x = _data(3, 1, 3000, 32, scale=1.0, offset=1000.0)
    init = init_centroids(x, 64, "random", seed=1)
    result = _backend(name).fit(x, init, 3)
    _check_result_form(result, x, 64)
    _assert_matches_scipy(result, x, init, 3)


@pytest.mark.parametrize("name", BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31 - 1),
    groups=st.integers(1, 3),
    n=st.integers(1, 60),
    dim=st.integers(1, 6),
    clusters=st.integers(1, 9),
    iters=st.integers(1, 6),
    init_from_data=st.booleans(),
    scale=st.sampled_from([1e-2, 1.0, 30.0]),
)
def test_matches_scipy_property(name, seed, groups, n, dim, clusters, iters, init_from_data, scale):
    x = _data(seed, groups, n, dim, scale=scale)
    if init_from_data and clusters <= n:
        init = init_centroids(x, clusters, "random", seed=seed)
    else:  # arbitrary starting points: some clusters may start (or stay) empty
        init = _data(seed + 1, groups, clusters, dim, scale=scale)
    result = _backend(name).fit(x, init, iters)
    _check_result_form(result, x, clusters)
    _assert_matches_scipy(result, x, init, iters, max_tie_fraction=0.05)


# ----------------------------------------------------------------------------------------------------------------
# backends against each other
# ----------------------------------------------------------------------------------------------------------------
def test_backends_agree():
    x = _data(7, 4, 2000, 24)
    init = init_centroids(x, 40, "kmeans++", seed=3)
    results = {name: _backend(name).fit(x, init, 10) for name in BACKENDS}
    results["numba-1-thread"] = _backend("numba", num_threads=1, chunk_size=7).fit(x, init, 10)
    reference = results.pop("torch")
    for name, result in results.items():
        differ = (result.labels != reference.labels).float().mean().item()
        assert differ <= 1e-3, f"{name}: {differ:.2%} labels differ from torch"
        if differ == 0:
            assert torch.equal(result.sizes, reference.sizes), name
            torch.testing.assert_close(result.centroids, reference.centroids, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("name", BACKENDS)
def test_accepts_other_dtypes(name):
    x = _data(11, 2, 100, 4)
    init = init_centroids(x, 5, seed=0)
    expected = _backend(name).fit(x, init, 4)
    for dtype in (torch.float64, torch.float16):
        result = _backend(name).fit(x.to(dtype), init.to(dtype), 4)
        _check_result_form(result, x, 5)
        if dtype == torch.float64:
            assert torch.equal(result.labels, expected.labels)


# ----------------------------------------------------------------------------------------------------------------
# empty clusters, early stop
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_empty_cluster_keeps_centroid(name):
    x = _data(3, 2, 200, 3)
    init = init_centroids(x, 6, seed=0)
    far = torch.tensor([1e3, -1e3, 1e3])
    init[:, 2] = far  # no point is ever nearest to it
    result = _backend(name).fit(x, init, 5)
    _check_result_form(result, x, 6)
    assert (result.sizes[:, 2] == 0).all()
    assert torch.equal(result.centroids[:, 2], far.expand(2, 3))
    assert not (result.labels == 2).any()
    assert bool((result.sizes[:, [0, 1, 3, 4, 5]] > 0).all())
    _assert_matches_scipy(result, x, init, 5)


@pytest.mark.parametrize("name", BACKENDS)
def test_more_clusters_than_points(name):
    x = _data(5, 1, 3, 2)
    init = torch.cat([x, x[:, :1] + 100.0, x[:, :1] - 100.0], dim=1)  # 5 centroids for 3 points
    result = _backend(name).fit(x, init, 3)
    _check_result_form(result, x, 5)
    assert result.sizes.tolist() == [[1, 1, 1, 0, 0]]
    assert torch.equal(result.centroids, init)


@pytest.mark.parametrize("name", BACKENDS)
def test_tol_early_stop(name):
    x = _blobs(0, 2, 40, 4, 3)
    init = init_centroids(x, 4, "random", seed=2)
    backend = _backend(name)
    one = backend.fit(x, init, 1)
    stopped = backend.fit(x, init, 50, tol=1e9)  # every shift is below 1e9: stops after the first iteration
    assert torch.equal(stopped.labels, one.labels)
    assert torch.equal(stopped.centroids, one.centroids)
    assert torch.equal(stopped.sizes, one.sizes)
    # A tiny tol only stops at a fixed point, so it changes nothing.
    for iters in (1, 3, 30):
        plain = backend.fit(x, init, iters)
        tiny = backend.fit(x, init, iters, tol=1e-30)
        assert torch.equal(plain.labels, tiny.labels) and torch.equal(plain.centroids, tiny.centroids)
    # Converged with tol: one more Lloyd round from the result changes neither labels nor centroids (beyond tol).
    converged = backend.fit(x, init, 200, tol=1e-6)
    again = backend.fit(x, converged.centroids, 1)
    assert torch.equal(again.labels, converged.labels)
    torch.testing.assert_close(again.centroids, converged.centroids, rtol=0, atol=1e-5)


def test_tol_early_stop_counts_iterations(monkeypatch):
    import sparseattn.clustering.torch_kmeans as torch_kmeans

    calls = []
    original = torch_kmeans.assign_labels
    monkeypatch.setattr(torch_kmeans, "assign_labels", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = _blobs(1, 1, 30, 3, 2)
    init = init_centroids(x, 3, "kmeans++", seed=0)
    torch_kmeans.TorchKMeans().fit(x, init, 100, tol=1e-6)
    assert 1 < len(calls) < 100
    calls.clear()
    torch_kmeans.TorchKMeans().fit(x, init, 7)
    assert len(calls) == 7


# ----------------------------------------------------------------------------------------------------------------
# input and parameter validation
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_invalid_inputs(name):
    backend = _backend(name)
    x = _data(0, 2, 10, 3)
    init = x[:, :4].clone()
    for iters in (0, -1):
        with pytest.raises(ValueError, match="iters"):
            backend.fit(x, init, iters)
    bad_shapes = [
        (x, init[:, :, :2]),  # dim mismatch
        (x, init[:1]),  # group mismatch
        (x[0], init[0]),  # not batched
        (x[:, :0], init),  # no points
        (x, init[:, :0]),  # no centroids
    ]
    for xs, cs in bad_shapes:
        with pytest.raises(ValueError):
            backend.fit(xs, cs, 2)
    x_nan = x.clone()
    x_nan[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        backend.fit(x_nan, init, 2)
    init_inf = init.clone()
    init_inf[0, 0, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        backend.fit(x, init_inf, 2)


@pytest.mark.parametrize(
    "name,params",
    [
        ("torch", {"max_elements": 0}),
        ("numba", {"num_threads": 0}),
        ("numba", {"chunk_size": 0}),
        ("faiss", {"use_gpu": "yes"}),
        ("faiss", {"gpu_device": -1}),
    ],
)
def test_invalid_params(name, params):
    cls = get("clusterer", name)
    with pytest.raises(ValueError):
        cls(**params)


def test_faiss_use_gpu_without_gpu():
    faiss = pytest.importorskip("faiss")
    if faiss.get_num_gpus() > 0:
        pytest.skip("faiss sees a GPU")
    x = _data(0, 1, 10, 2)
    with pytest.raises(RuntimeError, match="faiss-gpu"):
        _backend("faiss", use_gpu=True).fit(x, x[:, :2], 1)


def test_registered_names():
    from sparseattn.registry import available

    assert set(BACKENDS) <= set(available("clusterer"))
    for name in BACKENDS:
        cls = get("clusterer", name)
        assert cls.name == name and cls.__doc__
        assert set(cls().params()) == set(cls.__dataclass_fields__)


# ----------------------------------------------------------------------------------------------------------------
# missing optional dependencies
# ----------------------------------------------------------------------------------------------------------------
def test_missing_faiss_message(monkeypatch):
    from sparseattn.clustering.faiss_kmeans import FaissKMeans

    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    x = _data(0, 1, 10, 2)
    with pytest.raises(ImportError, match=r"sparseattn\[faiss\]") as info:
        FaissKMeans().fit(x, x[:, :2], 1)
    assert "sparseattn[faiss-gpu]" in str(info.value)


def test_missing_numba_message(monkeypatch):
    from sparseattn.clustering.numba_kmeans import NumbaKMeans

    monkeypatch.setitem(sys.modules, "numba", None)
    x = _data(0, 1, 10, 2)
    with pytest.raises(ImportError, match="pip install numba"):
        NumbaKMeans().fit(x, x[:, :2], 1)


def test_backend_modules_import_without_their_dependencies():
    code = (
        "import sys; sys.modules['faiss'] = None; sys.modules['numba'] = None\n"
        "import sparseattn.clustering.faiss_kmeans, sparseattn.clustering.numba_kmeans\n"
        "from sparseattn.registry import get; get('clusterer', 'faiss'); get('clusterer', 'numba')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------------------------------------------
# init_centroids
# ----------------------------------------------------------------------------------------------------------------
def _row_index(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """[G, C] index of the data row equal to each centroid (-1 if none)."""
    equal = (x.unsqueeze(1) == centroids.unsqueeze(2)).all(-1)  # [G, C, N]
    return torch.where(equal.any(-1), equal.float().argmax(-1), torch.full(equal.shape[:2], -1))


@pytest.mark.parametrize("method", ["random", "kmeans++"])
def test_init_deterministic(method):
    x = _data(0, 3, 100, 4)
    a = init_centroids(x, 10, method, seed=5)
    b = init_centroids(x, 10, method, seed=5)
    c = init_centroids(x, 10, method, seed=6)
    assert a.shape == (3, 10, 4) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    rows = _row_index(x, a)
    assert (rows >= 0).all(), "every initial centroid is a data point"
    if method == "random":
        assert all(len(set(r.tolist())) == 10 for r in rows), "random picks distinct points"


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40), groups=st.integers(1, 3), frac=st.floats(0, 1))
def test_init_random_distinct_property(seed, n, groups, frac):
    x = _data(seed, groups, n, 3)
    clusters = max(1, round(frac * n))
    centroids = init_centroids(x, clusters, "random", seed=seed)
    rows = _row_index(x, centroids)
    assert (rows >= 0).all()
    assert all(len(set(r.tolist())) == clusters for r in rows)
    pp = init_centroids(x, clusters, "kmeans++", seed=seed)
    assert (_row_index(x, pp) >= 0).all()


def test_init_kmeans_plus_plus_one_per_blob():
    num_blobs, per_blob = 6, 25
    x = _blobs(4, 8, per_blob, num_blobs, 3, spread=0.01)
    hits = 0
    trials = 0
    for seed in range(5):
        centroids = init_centroids(x, num_blobs, "kmeans++", seed=seed)
        assert (_row_index(x, centroids) >= 0).all()
        d = torch.cdist(centroids, centroids)
        # distinct blobs: every pair of picked centroids is far apart (blob spread 0.01, centers ~10 apart)
        off_diag = d + torch.eye(num_blobs) * 1e9
        hits += int((off_diag.amin(dim=(1, 2)) > 1.0).sum())
        trials += x.shape[0]
    assert hits >= 0.95 * trials, f"kmeans++ found one point per blob in {hits} of {trials} groups"
    random_hits = 0
    for seed in range(5):
        centroids = init_centroids(x, num_blobs, "random", seed=seed)
        off_diag = torch.cdist(centroids, centroids) + torch.eye(num_blobs) * 1e9
        random_hits += int((off_diag.amin(dim=(1, 2)) > 1.0).sum())
    assert random_hits < hits  # uniform picks often land twice in one blob (6!/6^6 ≈ 1.5% all distinct)


def test_init_rejects_bad_arguments():
    x = _data(0, 2, 5, 3)
    for clusters in (0, 6):
        with pytest.raises(ValueError, match="num_clusters"):
            init_centroids(x, clusters)
    with pytest.raises(ValueError, match="kmeans\\+\\+"):
        init_centroids(x, 2, "farthest")
    assert init_centroids(x, 5, "kmeans++").shape == (2, 5, 3)


# ----------------------------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", BACKENDS)
def test_cuda_matches_cpu(name):
    x = _data(9, 3, 3000, 32)
    init = init_centroids(x, 50, "kmeans++", seed=0)
    assert torch.equal(init_centroids(x.cuda(), 50, "kmeans++", seed=0).cpu(), init)
    cpu = _backend(name).fit(x, init, 8)
    gpu = _backend(name).fit(x.cuda(), init.cuda(), 8)
    _check_result_form(gpu, x.cuda(), 50)
    differ = (gpu.labels.cpu() != cpu.labels).float().mean().item()
    assert differ <= 1e-3
    if differ == 0:
        torch.testing.assert_close(gpu.centroids.cpu(), cpu.centroids, rtol=1e-4, atol=1e-5)
        assert torch.equal(gpu.sizes.cpu(), cpu.sizes)


def test_auto_clusterer_uses_torch_on_cpu_and_triton_is_registered():
    from sparseattn.registry import available, get

    auto = get("clusterer", "auto")()
    x = _data(5, 2, 64, 8)
    assert type(auto.choose(x)).__name__ == "TorchKMeans"  # never the slow Triton interpreter on CPU
    assert "triton" in available("clusterer")
    init = init_centroids(x, 6, "random", seed=0)
    expected = get("clusterer", "torch")().fit(x, init, 3)
    got = auto.fit(x, init, 3)
    assert torch.equal(got.labels, expected.labels) and torch.allclose(got.centroids, expected.centroids)
    with pytest.raises(ValueError, match="concrete"):
        get("clusterer", "auto")(gpu="auto")
