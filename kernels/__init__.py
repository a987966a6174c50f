"""Attention kernels behind the `SparseKernel` interface (installed as ``sparseattn.kernels``).

``torch``: block-sparse reference in PyTorch (any device); ``sdpa``: dense attention; ``auto``: the first kernel in
its preference list that supports the inputs (Triton on CUDA, the reference elsewhere).
"""
# With the checkout root on sys.path this folder is also importable as a top-level `kernels`, a name transformers
# imports to probe for Hugging Face's `kernels` package; registering the kernels under both names would fail.
if __name__ == "sparseattn.kernels":
    from .reference import AutoKernel, DenseSDPA, TorchBlockSparse, dense_attention

    __all__ = ["AutoKernel", "DenseSDPA", "TorchBlockSparse", "dense_attention"]

    try:  # the Triton kernels need triton; without it the reference kernels still work
        from . import triton_attention as _triton_attention  # noqa: F401
    except ImportError:
        pass
