"""Attention kernels behind the `SparseKernel` interface (installed as ``sparseattn.kernels``).

``torch``: block-sparse reference in PyTorch (any device); ``sdpa``: dense attention; ``auto``: the first kernel in
its preference list that supports the inputs (gluon_ws on Hopper, Triton on other CUDA GPUs, the reference elsewhere); ``triton``: the Triton kernel;
``gluon``: the same with a Hopper (sm_90) main pass in Gluon, when triton.experimental.gluon is there; ``gluon_ws``:
the warp-specialised Hopper main pass (a producer partition gathers K/V, two consumer warpgroups compute), which
``auto`` prefers on sm_90.
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
    else:
        try:  # the Hopper kernel needs triton.experimental.gluon (Triton ≥ 3.5); older Tritons still get 'triton'
            from . import gluon_attention as _gluon_attention  # noqa: F401
            from . import gluon_ws_attention as _gluon_ws_attention  # noqa: F401
        except ImportError:
            pass
