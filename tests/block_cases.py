"""Random block layouts shared by the kernel tests (block sizes for tests/test_triton_kernels.py; layouts, the named
random cases and the GPU helpers for the Hopper kernel tests: tests/test_hopper_kernels.py, test_gluon_kernel.py,
test_gluon_ws_kernel.py); tests/conftest.py puts this folder on sys.path so they can import it."""
from __future__ import annotations

import os
import re

import pytest
import torch

from sparseattn.interfaces import Layout

TOL = {torch.bfloat16: 1.5e-2, torch.float16: 3e-3}  # ‖out − ref‖/‖ref‖ of the Hopper kernels

CASES = {
    # name: (B, H, N, D, Mq, Mk, density, empty fraction)
    "clusters, some empty, N % 128 ≠ 0": (1, 3, 3001, 128, 9, 17, 0.35, 0.25),
    "many tiny clusters": (1, 2, 1500, 128, 60, 90, 0.3, 0.1),
    "batch 2, long lists": (2, 2, 4099, 128, 4, 6, 0.7, 0.0),
    "head dim 64": (1, 2, 2001, 64, 7, 11, 0.4, 0.2),
    "token orders (fused permutation)": (1, 2, 2500, 128, 8, 12, 0.4, 0.2),
    "many work items (several per program)": (1, 8, 9000, 128, 40, 50, 0.2, 0.1),
}


def _hopper() -> bool:
    return (torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
            and torch.cuda.get_device_capability() == (9, 0))


needs_hopper = pytest.mark.skipif(not _hopper(), reason="needs a compute-capability-9.0 GPU, not the interpreter")


def sizes(gen: torch.Generator, n: int, m: int, empty: float = 0.0, one_token: bool = False) -> torch.Tensor:
    """m block sizes summing to n; about ``empty`` of them 0; optionally one block of a single token."""
    cuts = torch.sort(torch.randint(0, n + 1, (m - 1,), generator=gen)).values
    sizes = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]).diff()
    if empty > 0 and m > 2:
        drop = torch.rand(m, generator=gen) < empty
        drop[sizes.argmax()] = False
        moved = int(sizes[drop].sum())
        sizes[drop] = 0
        sizes[sizes.argmax()] += moved
    if one_token and m > 2:
        j = int(torch.randint(0, m, (1,), generator=gen))
        big = int(sizes.argmax())
        if j != big:
            sizes[big] += sizes[j] - 1
            sizes[j] = 1
    return sizes


def layout(q_sizes: torch.Tensor, k_sizes: torch.Tensor, d: int, gen=None) -> Layout:
    """Layout on the GPU; with ``gen``, random token orders (the kernel then reads through them or permutes)."""
    b, h, mq = q_sizes.shape
    mk = k_sizes.shape[-1]
    n = int(q_sizes[0, 0].sum())

    def order():
        return torch.stack([torch.randperm(n, generator=gen) for _ in range(b * h)]).reshape(b, h, n).cuda()

    q_order, kv_order = (order(), order()) if gen is not None else (None, None)
    return Layout(q_order, kv_order, q_sizes.cuda(), k_sizes.cuda(), torch.zeros(b, h, mq, d, device="cuda"),
                  torch.zeros(b, h, mk, d, device="cuda"))


def qkv(gen, b, h, n, d, dtype):
    return tuple((torch.randn(b, h, n, d, generator=gen) * 1.5).to(dtype=dtype, device="cuda") for _ in range(3))


def rel(out, ref) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def through(kernel, q, k, v, layout, mask):
    """A kernel's whole protocol: permute, plan, run, unpermute (output in the original token order)."""
    qp, kp, vp = kernel.permute(q, k, v, layout)
    return kernel.unpermute(kernel.run(kernel.plan(layout, mask, qp), qp, kp, vp), layout)


def random_case(case: str):
    """(generator, (B, H, N, D), q_sizes, k_sizes, selected) of a named case of CASES: one-token and empty blocks;
    query block 0 selects every key block, 1 exactly one non-empty key block, 2 (if any) none."""
    b, h, n, d, mq, mk, density, empty = CASES[case]
    gen = torch.Generator().manual_seed(sum(map(ord, case)))
    q_sizes = torch.stack([sizes(gen, n, mq, empty, one_token=True) for _ in range(b * h)]).reshape(b, h, mq)
    k_sizes = torch.stack([sizes(gen, n, mk, empty, one_token=True) for _ in range(b * h)]).reshape(b, h, mk)
    selected = torch.rand(b, h, mq, mk, generator=gen) < density
    selected[..., 0, :] = True
    selected[..., 1, :] = False
    selected[..., 1, int(k_sizes[0, 0].argmax())] = True
    if mq > 2:
        selected[..., 2, :] = False
    return gen, (b, h, n, d), q_sizes, k_sizes, selected


def check(kernel, q, k, v, layout, mask, dtype, case):
    """``kernel``'s whole path against the reference kernel's, within TOL; returns the output."""
    from sparseattn.kernels.reference import TorchBlockSparse

    out = through(kernel, q, k, v, layout, mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert bool(torch.isfinite(out).all()), case
    err = rel(out, through(TorchBlockSparse(), q, k, v, layout, mask))
    print(f"{kernel.name} {case}: ‖out − ref‖/‖ref‖ = {err:.2e}")
    assert err <= TOL[dtype], (case, err)
    return out


def check_hopper_ptx(ptx: str, shared_bytes: int) -> list[int]:
    """What the PTX of every Hopper attention kernel must show: asynchronous wgmma with a product left in flight (a
    non-zero wait count), 16-byte cp.async gathers, shared memory within the opt-in limit. Returns the wait counts."""
    waits = [int(w) for w in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)]
    assert "wgmma.mma_async" in ptx
    assert any(w > 0 for w in waits), f"every wgmma wait has 0 pending (no overlap): {waits}"
    assert re.search(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 0x10", ptx), "no 16-byte cp.async"
    assert shared_bytes <= 232448, shared_bytes  # H100/H200 opt-in limit per block
    return waits
