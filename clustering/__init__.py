"""K-means backends for the semantic permuter (installed as ``sparseattn.clustering``).

Every backend implements `sparseattn.interfaces.Clusterer`: ``fit(x [G, N, D], centroids [G, C, D], iters, tol)``
from the same initial centroids, so backends are interchangeable in YAML (``clusterer: torch | numba | faiss``).
"""
from .init import init_centroids
from .torch_kmeans import TorchKMeans, assign_labels, update_centroids

__all__ = ["init_centroids", "TorchKMeans", "assign_labels", "update_centroids"]

# Optional backends register themselves on import; their heavy dependencies load only when they are used.
from . import faiss_kmeans as _faiss_kmeans  # noqa: E402,F401
from . import numba_kmeans as _numba_kmeans  # noqa: E402,F401
