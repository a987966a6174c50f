"""Random block layouts shared by the kernel tests (block sizes for tests/test_triton_kernels.py; layouts and the
GPU helpers for tests/test_gluon_kernel.py and tests/test_gluon_ws_kernel.py); tests/conftest.py puts this folder on
sys.path so they can import it."""
from __future__ import annotations

import torch

from sparseattn.interfaces import Layout


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
