"""Kernel ``gluon`` (kernels/gluon_attention.py): a Hopper main pass in Gluon behind kernel ``triton``'s plan.

Without a GPU: the kernel compiles for sm_90 (Gluon and the wheel's ptxas need no GPU); the PTX must hold
asynchronous wgmma with a non-zero wait count (the softmax overlapping the P·V product is the point of the kernel),
16-byte cp.async gathers, and ptxas must report no spills. With an sm_90 GPU: the kernel against the PyTorch
reference on random layouts with empty blocks, one-token blocks, one block holding every token, N not a multiple of
128, query blocks selecting one / every / no key block; each comparison prints ‖out − ref‖/‖ref‖.
"""
from __future__ import annotations

import math
import os
import re

import pytest
import torch

triton = pytest.importorskip("triton")
pytest.importorskip("triton.experimental.gluon", reason="this Triton has no Gluon")

from sparseattn.interfaces import BlockMask  # noqa: E402
from sparseattn.kernels.gluon_attention import GluonBlockSparse  # noqa: E402
from sparseattn.kernels.reference import TorchBlockSparse  # noqa: E402
from sparseattn.registry import get  # noqa: E402
from block_cases import layout as _layout, qkv as _qkv, rel as _rel  # noqa: E402
from block_cases import sizes as _sizes, through as _through  # noqa: E402

TOL = {torch.bfloat16: 1.5e-2, torch.float16: 3e-3}


def _hopper() -> bool:
    return (torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
            and torch.cuda.get_device_capability() == (9, 0))


needs_hopper = pytest.mark.skipif(not _hopper(), reason="needs a compute-capability-9.0 GPU, not the interpreter")


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
    waits = [int(w) for w in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)]
    assert "wgmma.mma_async" in ptx
    assert any(w > 0 for w in waits), f"every wgmma wait has 0 pending (no overlap): {waits}"
    assert re.search(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 0x10", ptx), "no 16-byte cp.async"
    assert shared[name] <= 232448, shared[name]  # H100/H200 opt-in limit per block
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


# ----------------------------------------------------------------------------------------------------------------
# CUDA (sm_90) against the reference
# ----------------------------------------------------------------------------------------------------------------
def _check(q, k, v, layout, mask, dtype, case):
    out = _through(GluonBlockSparse(), q, k, v, layout, mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert bool(torch.isfinite(out).all()), case
    ref = _through(TorchBlockSparse(), q, k, v, layout, mask)
    err = _rel(out, ref)
    print(f"{case}: ‖out − ref‖/‖ref‖ = {err:.2e}")
    assert err <= TOL[dtype], (case, err)
    return out


CASES = {
    # name: (B, H, N, D, Mq, Mk, density, empty fraction)
    "clusters, some empty, N % 128 ≠ 0": (1, 3, 3001, 128, 9, 17, 0.35, 0.25),
    "many tiny clusters": (1, 2, 1500, 128, 60, 90, 0.3, 0.1),
    "batch 2, long lists": (2, 2, 4099, 128, 4, 6, 0.7, 0.0),
    "head dim 64": (1, 2, 2001, 64, 7, 11, 0.4, 0.2),
    "token orders (fused permutation)": (1, 2, 2500, 128, 8, 12, 0.4, 0.2),
}


@needs_hopper
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_random_layouts(case, dtype):
    b, h, n, d, mq, mk, density, empty = CASES[case]
    gen = torch.Generator().manual_seed(sum(map(ord, case)))
    q_sizes = torch.stack([_sizes(gen, n, mq, empty, one_token=True) for _ in range(b * h)]).reshape(b, h, mq)
    k_sizes = torch.stack([_sizes(gen, n, mk, empty, one_token=True) for _ in range(b * h)]).reshape(b, h, mk)
    selected = torch.rand(b, h, mq, mk, generator=gen) < density
    selected[..., 0, :] = True  # a query block selecting every key block
    selected[..., 1, :] = False
    selected[..., 1, int(k_sizes[0, 0].argmax())] = True  # one selecting exactly one (non-empty) key block
    if mq > 2:
        selected[..., 2, :] = False  # one selecting nothing: zeros
    q, k, v = _qkv(gen, b, h, n, d, dtype)
    layout = _layout(q_sizes, k_sizes, d, gen if "orders" in case else None)
    out = _check(q, k, v, layout, BlockMask(selected.cuda()), dtype, case)
    if mq > 2 and layout.q_order is None:
        start = int(q_sizes[0, 0, :2].sum())
        assert torch.equal(out[0, 0, start:start + int(q_sizes[0, 0, 2])].float().abs().sum().cpu(),
                           torch.tensor(0.0))


@needs_hopper
@pytest.mark.parametrize("n", [1, 77, 128, 129, 1000])
def test_one_block_holds_every_token(n):
    """Dense attention through one block (the only key tile partial unless n % 128 = 0), against softmax·V."""
    gen = torch.Generator().manual_seed(n)
    d = 128
    q, k, v = _qkv(gen, 1, 2, n, d, torch.bfloat16)
    full = torch.tensor([0, n, 0]).expand(1, 2, 3)
    out = _check(q, k, v, _layout(full, full, d), BlockMask(torch.ones(1, 2, 3, 3, dtype=torch.bool).cuda()),
                 torch.bfloat16, f"one block of {n} tokens")
    dense = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(d), -1) @ v.double()
    assert _rel(out, dense) < TOL[torch.bfloat16]


@needs_hopper
def test_tail_pass_and_single_token_query_blocks():
    """Query blocks of 1, 64, 65, 128, 129, 192, 200 rows: main-pass tiles, tail-pass tiles and both."""
    gen = torch.Generator().manual_seed(7)
    q_sizes = torch.tensor([[[1, 64, 65, 128, 129, 192, 200, 0]]])
    n = int(q_sizes.sum())
    k_sizes = torch.tensor([[[300, 1, 0, n - 301]]])
    selected = torch.rand(1, 1, 8, 4, generator=gen) < 0.6
    selected[..., 3, :] = True
    q, k, v = _qkv(gen, 1, 1, n, 128, torch.bfloat16)
    _check(q, k, v, _layout(q_sizes, k_sizes, 128), BlockMask(selected.cuda()), torch.bfloat16, "tail pass")


@needs_hopper
def test_strided_inputs_and_orders():
    """q, k, v as [B, N, H, D] tensors seen as [B, H, N, D] (rows contiguous, heads interleaved), with token orders."""
    gen = torch.Generator().manual_seed(11)
    b, h, n, d = 1, 3, 1700, 128
    q, k, v = ((torch.randn(b, n, h, d, generator=gen) * 1.5).to(torch.bfloat16).cuda().transpose(1, 2)
               for _ in range(3))
    q_sizes = torch.stack([_sizes(gen, n, 6, 0.2) for _ in range(b * h)]).reshape(b, h, 6)
    k_sizes = torch.stack([_sizes(gen, n, 9, 0.2) for _ in range(b * h)]).reshape(b, h, 9)
    selected = torch.rand(b, h, 6, 9, generator=gen) < 0.5
    selected[..., 0, :] = True
    _check(q, k, v, _layout(q_sizes, k_sizes, d, gen), BlockMask(selected.cuda()), torch.bfloat16, "strided")
