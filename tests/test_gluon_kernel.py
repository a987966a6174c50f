"""Kernel ``gluon`` (kernels/gluon_attention.py): a Hopper main pass in Gluon behind kernel ``triton``'s plan.

Without a GPU: the kernel compiles for sm_90 (Gluon and the wheel's ptxas need no GPU); the PTX must hold
asynchronous wgmma with a non-zero wait count (the softmax overlapping the P·V product is the point of the kernel),
16-byte cp.async gathers, and ptxas must report no spills. Its tests on an sm_90 GPU against the reference are in
tests/test_hopper_kernels.py (shared with kernel ``gluon_ws``).
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
pytest.importorskip("triton.experimental.gluon", reason="this Triton has no Gluon")

from sparseattn.kernels.gluon_attention import GluonBlockSparse  # noqa: E402
from sparseattn.registry import get  # noqa: E402
from block_cases import check_hopper_ptx  # noqa: E402


# ----------------------------------------------------------------------------------------------------------------
# compile checks (CPU)
# ----------------------------------------------------------------------------------------------------------------
VARIANTS = [(128, 128, "bf16", True), (128, 128, "fp16", False), (64, 128, "bf16", True)]

def _name(head_dim, block_n, dtype, q_rows) -> str:
    return f"{head_dim}_{block_n}_{dtype}_{int(q_rows)}"


@pytest.fixture(scope="module")
def compiled(compile_sm90):
    return compile_sm90("sparseattn.kernels.gluon_attention", {
        _name(*v): dict(head_dim=v[0], block_n=v[1], dtype=v[2], has_q_rows=v[3]) for v in VARIANTS})


@pytest.mark.parametrize("head_dim,block_n,dtype,q_rows", VARIANTS)
def test_compiles_for_sm90_with_async_wgmma_and_no_spills(compiled, ptxas, head_dim, block_n, dtype, q_rows):
    folder, shared = compiled
    name = _name(head_dim, block_n, dtype, q_rows)
    ptx = (folder / f"{name}.ptx").read_text()
    waits = check_hopper_ptx(ptx, shared[name])
    info = ptxas(folder / f"{name}.ptx")
    print(f"{name}: wgmma waits {sorted(set(waits))}, shared {shared[name]} B, {info.registers} registers, "
          f"{info.spill_stores} bytes spilled")
    assert info.spill_stores == 0 and info.spill_loads == 0, info.report


def test_registered_and_reasons_off_hopper():
    assert get("kernel", "gluon") is GluonBlockSparse
    with pytest.raises(ValueError):
        GluonBlockSparse(block_m=64)
    q = torch.zeros(1, 1, 8, 128, dtype=torch.float32)
    reasons = GluonBlockSparse().why_unsupported(q, q, q)
    assert any("CUDA" in r for r in reasons) or any("interpreter" in r for r in reasons), reasons
    assert any("float32" in r for r in reasons), reasons
    q = torch.zeros(1, 1, 8, 96, dtype=torch.bfloat16)
    assert any("head dim 96" in r for r in GluonBlockSparse().why_unsupported(q, q, q))
