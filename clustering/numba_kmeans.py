"""Batched Lloyd k-means on CPU threads with numba: for large N when there is no GPU.

numba is imported (and the kernels compiled) on the first ``fit``, so importing this module stays cheap and works
without numba installed.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from sparseattn.interfaces import Clusterer, KMeansResult
from sparseattn.registry import register
from sparseattn.validation import check_kmeans_inputs

_KERNELS: Optional[dict[str, Any]] = None
_KERNELS_LOCK = threading.Lock()


def _import_numba() -> Any:
    try:
        import numba
    except ImportError as exc:
        raise ImportError(
            "the 'numba' k-means backend needs numba, a core dependency of sparseattn that is missing here: "
            "pip install numba (or choose clusterer: torch)"
        ) from exc
    return numba


def _kernels() -> dict[str, Any]:
    """The jitted kernels, compiled once per process (lazily, on first use)."""
    global _KERNELS
    numba = _import_numba()  # checked on every call, so a missing numba is always reported the same way
    if _KERNELS is not None:
        return _KERNELS
    with _KERNELS_LOCK:
        if _KERNELS is None:
            _KERNELS = _build_kernels(numba)
    return _KERNELS


def _build_kernels(numba: Any) -> dict[str, Any]:
    njit = numba.njit
    prange = numba.prange

    @njit(parallel=True, cache=False)
    def assign(x, centroids_t, labels, chunk):  # pragma: no cover - compiled
        """labels[g, i] = argmin_k ‖x[g, i] − c[g, k]‖², c given transposed as centroids_t [G, D, C] float64.

        Distances are summed exactly per centroid (no ‖x‖² + ‖c‖² − 2x·c expansion) in float64; the innermost loop
        runs over centroids, so it vectorizes without reassociating any sum. Ties go to the lowest index.
        """
        groups, n, dim = x.shape
        num_clusters = centroids_t.shape[2]
        chunks = (n + chunk - 1) // chunk
        for task in prange(groups * chunks):
            g = task // chunks
            start = (task % chunks) * chunk
            stop = min(start + chunk, n)
            dist = np.empty(num_clusters, dtype=np.float64)
            for i in range(start, stop):
                dist[:] = 0.0
                for j in range(dim):
                    xv = np.float64(x[g, i, j])
                    for k in range(num_clusters):
                        diff = xv - centroids_t[g, j, k]
                        dist[k] += diff * diff
                best = 0
                best_dist = dist[0]
                for k in range(1, num_clusters):
                    if dist[k] < best_dist:
                        best_dist = dist[k]
                        best = k
                labels[g, i] = best

    @njit(parallel=True, cache=False)
    def partial_sums(x, labels, sums, counts):  # pragma: no cover - compiled
        """Per-(group, part) sums [G, P, C, D] float64 and counts [G, P, C] of the points of every cluster."""
        groups, n, dim = x.shape
        parts = sums.shape[1]
        per_part = (n + parts - 1) // parts
        for task in prange(groups * parts):
            g = task // parts
            p = task % parts
            sums[g, p] = 0.0
            counts[g, p] = 0
            for i in range(p * per_part, min((p + 1) * per_part, n)):
                c = labels[g, i]
                counts[g, p, c] += 1
                for j in range(dim):
                    sums[g, p, c, j] += x[g, i, j]

    @njit(parallel=True, cache=False)
    def finish_update(sums, counts, previous, centroids, sizes, shift):  # pragma: no cover - compiled
        """Means of the partial sums (an empty cluster keeps its previous centroid) and each centroid's shift."""
        groups, parts, num_clusters, dim = sums.shape
        for task in prange(groups * num_clusters):
            g = task // num_clusters
            c = task % num_clusters
            size = 0
            for p in range(parts):
                size += counts[g, p, c]
            sizes[g, c] = size
            moved = 0.0
            for j in range(dim):
                if size > 0:
                    total = 0.0
                    for p in range(parts):
                        total += sums[g, p, c, j]
                    value = np.float32(total / size)
                else:
                    value = previous[g, c, j]
                centroids[g, c, j] = value
                delta = np.float64(value) - np.float64(previous[g, c, j])
                moved += delta * delta
            shift[g, c] = np.sqrt(moved)

    return {"assign": assign, "partial_sums": partial_sums, "finish_update": finish_update}


@register("clusterer", "numba")
@dataclass
class NumbaKMeans(Clusterer):
    """Batched k-means on CPU threads with numba; same results as the ``torch`` backend, up to distance ties.

    The assignment runs in parallel over chunks of ``chunk_size`` points (of every group) and computes exact squared
    distances ‖x − c‖² in float64; the update sums each cluster's points per thread in float64 and stores float32
    means. CUDA inputs are copied to the CPU and the result is moved back to the input's device.

    num_threads: threads to use (None = numba's default, i.e. ``NUMBA_NUM_THREADS``); capped at numba's pool size.
    chunk_size: points per parallel assignment task.
    """

    num_threads: Optional[int] = None
    chunk_size: int = 256

    def __post_init__(self) -> None:
        if self.num_threads is not None and (isinstance(self.num_threads, bool) or self.num_threads < 1):
            raise ValueError(f"num_threads must be a positive integer or None, got {self.num_threads!r}")
        if isinstance(self.chunk_size, bool) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {self.chunk_size!r}")

    def fit(self, x: Tensor, centroids: Tensor, iters: int, tol: float = 0.0) -> KMeansResult:
        check_kmeans_inputs(x, centroids, iters)
        kernels = _kernels()
        import numba

        device = x.device
        x_np = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        c_np = np.array(centroids.detach().to("cpu", torch.float32).numpy(), dtype=np.float32, order="C")
        groups, n, dim = x_np.shape
        num_clusters = c_np.shape[1]

        previous_threads = numba.get_num_threads()
        threads = previous_threads
        if self.num_threads is not None:
            threads = min(self.num_threads, numba.config.NUMBA_NUM_THREADS)
        numba.set_num_threads(threads)
        try:
            parts = max(1, min(n, -(-threads // groups)))  # enough (group, part) tasks to keep every thread busy
            sums = np.empty((groups, parts, num_clusters, dim), dtype=np.float64)
            counts = np.empty((groups, parts, num_clusters), dtype=np.int64)
            labels = np.empty((groups, n), dtype=np.int64)
            sizes = np.empty((groups, num_clusters), dtype=np.int64)
            shift = np.empty((groups, num_clusters), dtype=np.float64)
            for _ in range(iters):
                centroids_t = np.ascontiguousarray(c_np.transpose(0, 2, 1), dtype=np.float64)
                kernels["assign"](x_np, centroids_t, labels, self.chunk_size)
                kernels["partial_sums"](x_np, labels, sums, counts)
                new_centroids = np.empty_like(c_np)
                kernels["finish_update"](sums, counts, c_np, new_centroids, sizes, shift)
                c_np = new_centroids
                if tol > 0 and float(shift.max()) < tol:
                    break
        finally:
            numba.set_num_threads(previous_threads)

        return KMeansResult(
            labels=torch.from_numpy(labels).to(device),
            centroids=torch.from_numpy(c_np).to(device),
            sizes=torch.from_numpy(sizes).to(device),
        )
