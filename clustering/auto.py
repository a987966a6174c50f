"""Clusterer ``auto``: the Triton flash k-means for CUDA tensors, the torch reference everywhere else."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from sparseattn.interfaces import Clusterer, KMeansResult
from sparseattn.registry import available, get, register


@register("clusterer", "auto")
@dataclass
class AutoClusterer(Clusterer):
    """Runs ``gpu`` on CUDA inputs when it is registered (Triton installed), else ``cpu``.

    Triton on CPU tensors would only run in its interpreter, far slower than the torch backend, so it is never
    chosen there; name ``triton`` explicitly to debug it.
    """

    gpu: str = "triton"
    cpu: str = "torch"
    _backends: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        for role in ("gpu", "cpu"):
            name = getattr(self, role)
            if name == "auto":
                raise ValueError(f"{role} must name a concrete clusterer, not 'auto'")
            if role == "cpu" or name in available("clusterer"):
                self._backends[role] = get("clusterer", name)()

    def choose(self, x: Tensor) -> Clusterer:
        """The backend that clusters ``x``."""
        return self._backends.get("gpu", self._backends["cpu"]) if x.is_cuda else self._backends["cpu"]

    def fit(self, x: Tensor, centroids: Tensor, iters: int, tol: float = 0.0) -> KMeansResult:
        return self.choose(x).fit(x, centroids, iters, tol)
