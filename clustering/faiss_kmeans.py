"""Batched Lloyd k-means whose assignment step is a faiss nearest-neighbour search (CPU or GPU).

faiss's own ``faiss.Kmeans`` re-seeds empty clusters by splitting large ones and samples its training set, so it
would not give the same result as the other backends from the same initial centroids. This backend therefore runs
our Lloyd loop itself: faiss finds the nearest centroid of every point (an exact ``IndexFlatL2`` search), and the
update is `clustering.torch_kmeans.update_centroids` (empty cluster keeps its previous centroid, size 0).

faiss is imported on the first ``fit``, so importing this module works without faiss installed.
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

from .torch_kmeans import update_centroids

_GPU_RESOURCES: dict[int, Any] = {}  # one StandardGpuResources per GPU, shared by every FaissKMeans
_GPU_RESOURCES_LOCK = threading.Lock()


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "the 'faiss' k-means backend needs faiss: pip install 'sparseattn[faiss]' (faiss-cpu) or "
            "'sparseattn[faiss-gpu]' (or choose clusterer: torch)"
        ) from exc
    return faiss


def _gpu_resources(faiss: Any, device: int) -> Any:
    with _GPU_RESOURCES_LOCK:
        if device not in _GPU_RESOURCES:
            _GPU_RESOURCES[device] = faiss.StandardGpuResources()
        return _GPU_RESOURCES[device]


@register("clusterer", "faiss")
@dataclass
class FaissKMeans(Clusterer):
    """Batched k-means with faiss exact L2 search for the assignment and torch for the update.

    Same semantics as the ``torch`` backend (from the given initial centroids, no re-seeding of empty clusters);
    labels may differ only where a point is (nearly) equidistant from two centroids, since faiss computes
    ‖x‖² + ‖c‖² − 2x·c with BLAS for larger batches. The search runs on points and centroids minus each group's mean,
    which keeps that formula accurate when all points share a large offset.

    use_gpu: search on a GPU with ``faiss.GpuIndexFlatL2``; None = when faiss reports a GPU (faiss-gpu installed
        and a device visible), True = require one, False = always on the CPU.
    gpu_device: GPU index for the search; None = the input's CUDA device if it is on one, else GPU 0.
    The centroid update runs on the input's device, and the result is returned there.
    """

    use_gpu: Optional[bool] = None
    gpu_device: Optional[int] = None

    def __post_init__(self) -> None:
        if self.use_gpu is not None and not isinstance(self.use_gpu, bool):
            raise ValueError(f"use_gpu must be True, False or None (auto), got {self.use_gpu!r}")
        if self.gpu_device is not None and (
            isinstance(self.gpu_device, bool) or not isinstance(self.gpu_device, int) or self.gpu_device < 0
        ):
            raise ValueError(f"gpu_device must be a non-negative integer or None, got {self.gpu_device!r}")

    def _make_index(self, faiss: Any, dim: int, x: Tensor) -> Any:
        num_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        gpu_ok = num_gpus > 0 and hasattr(faiss, "GpuIndexFlatL2")
        if self.use_gpu and not gpu_ok:
            raise RuntimeError(
                "FaissKMeans(use_gpu=True) but faiss sees no GPU (is faiss-cpu installed instead of "
                "'sparseattn[faiss-gpu]', or is no CUDA device visible?); use use_gpu=None or False"
            )
        if not gpu_ok or self.use_gpu is False:
            return faiss.IndexFlatL2(dim)
        device = self.gpu_device
        if device is None:
            device = (x.device.index or 0) if x.device.type == "cuda" else 0
        if device >= num_gpus:
            raise ValueError(f"gpu_device {device} is out of range: faiss sees {num_gpus} GPU(s)")
        config = faiss.GpuIndexFlatConfig()
        config.device = device
        return faiss.GpuIndexFlatL2(_gpu_resources(faiss, device), dim, config)

    def fit(self, x: Tensor, centroids: Tensor, iters: int, tol: float = 0.0) -> KMeansResult:
        check_kmeans_inputs(x, centroids, iters)
        faiss = _import_faiss()
        x = x.detach().float()
        centroids = centroids.detach().float().to(x.device)
        groups, n, dim = x.shape
        index = self._make_index(faiss, dim, x)
        # faiss takes host arrays (a GPU index copies them over). Distances are translation invariant, and faiss's
        # ‖x‖² + ‖c‖² − 2x·c loses every digit when the points share a large offset, so search around each group's mean.
        x_host = x.cpu().numpy().astype(np.float64)
        center = x_host.mean(axis=1, keepdims=True)
        x_np = np.ascontiguousarray(x_host - center, dtype=np.float32)
        del x_host
        labels_np = np.empty((groups, n), dtype=np.int64)
        for _ in range(iters):
            c_np = np.ascontiguousarray(centroids.cpu().numpy().astype(np.float64) - center, dtype=np.float32)
            for g in range(groups):
                index.reset()
                index.add(c_np[g])
                _, nearest = index.search(x_np[g], 1)
                labels_np[g] = nearest[:, 0]
            if (labels_np < 0).any():  # faiss returns -1 when no distance is finite (float32 overflow)
                raise ValueError("faiss found no finite distance for some points; is the input scaled sensibly?")
            labels = torch.from_numpy(labels_np.copy()).to(x.device)
            new_centroids, sizes = update_centroids(x, labels, centroids)
            converged = tol > 0 and bool((new_centroids - centroids).norm(dim=-1).max() < tol)
            centroids = new_centroids
            if converged:
                break
        return KMeansResult(labels=labels, centroids=centroids, sizes=sizes)
