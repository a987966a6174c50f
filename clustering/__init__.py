"""K-means backends for the semantic permuter (installed as ``sparseattn.clustering``).

Every backend implements `sparseattn.interfaces.Clusterer`: ``fit(x [G, N, D], centroids [G, C, D], iters, tol)``
from the same initial centroids, so backends are interchangeable in YAML (``clusterer: auto | torch | triton | numba | faiss``).
"""
from .init import init_centroids
from .torch_kmeans import TorchKMeans, assign_labels, update_centroids

__all__ = ["init_centroids", "TorchKMeans", "assign_labels", "update_centroids"]

# Optional backends register themselves on import; their heavy dependencies load only when they are used.
from . import faiss_kmeans as _faiss_kmeans  # noqa: E402,F401
from . import numba_kmeans as _numba_kmeans  # noqa: E402,F401
from . import auto as _auto  # noqa: E402,F401

try:  # the flash k-means needs triton; without it `auto` falls back to the torch backend
    from . import triton_kmeans as _triton_kmeans  # noqa: F401
except ImportError:
    pass
