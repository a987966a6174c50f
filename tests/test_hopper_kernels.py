"""The two Hopper kernels, ``gluon`` and ``gluon_ws``, on an sm_90 GPU against the PyTorch reference kernel: random
layouts with empty blocks, one-token blocks and N not a multiple of the tile (tests/block_cases.py's CASES), query
blocks selecting every / one / no key block, bf16 and fp16, head dim 64 and 128, key tiles of 128 and 64, every
permutation mode, one block holding every token, main-pass and tail-pass row tiles, strided [B, N, H, D] inputs. Each
comparison prints ‖out − ref‖/‖ref‖. Their compile checks (CPU) and the tests of one kernel's own options are in
tests/test_gluon_kernel.py and tests/test_gluon_ws_kernel.py."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("triton.experimental.gluon", reason="this Triton has no Gluon")

from sparseattn.interfaces import BlockMask  # noqa: E402
from sparseattn.kernels.gluon_attention import GluonBlockSparse  # noqa: E402
from sparseattn.kernels.gluon_ws_attention import GluonWSBlockSparse  # noqa: E402
from block_cases import CASES, TOL, check, layout, needs_hopper, qkv, random_case, rel, sizes  # noqa: E402

KERNELS = {"gluon": GluonBlockSparse, "gluon_ws": GluonWSBlockSparse}
pytestmark = [needs_hopper, pytest.mark.parametrize("kernel", list(KERNELS))]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_random_layouts(kernel, case, dtype):
    gen, (b, h, n, d), q_sizes, k_sizes, selected = random_case(case)
    q, k, v = qkv(gen, b, h, n, d, dtype)
    lay = layout(q_sizes, k_sizes, d, gen if "orders" in case else None)
    out = check(KERNELS[kernel](), q, k, v, lay, BlockMask(selected.cuda()), dtype, case)
    if q_sizes.shape[-1] > 2 and lay.q_order is None:  # query block 2 selects nothing: zeros
        start = int(q_sizes[0, 0, :2].sum())
        assert torch.equal(out[0, 0, start:start + int(q_sizes[0, 0, 2])].float().abs().sum().cpu(),
                           torch.tensor(0.0))


@pytest.mark.parametrize("fuse", ["q", "qkv", "none"])
@pytest.mark.parametrize("block_n", [128, 64])
def test_permutation_modes_and_key_tiles(kernel, fuse, block_n):
    """Every fuse_permutation mode (query rows through the order, key rows through it too, or neither) with token
    orders, for key tiles of 128 and 64."""
    case = "token orders (fused permutation)"
    gen, (b, h, n, d), q_sizes, k_sizes, selected = random_case(case)
    q, k, v = qkv(gen, b, h, n, d, torch.bfloat16)
    check(KERNELS[kernel](fuse_permutation=fuse, block_n=block_n), q, k, v, layout(q_sizes, k_sizes, d, gen),
          BlockMask(selected.cuda()), torch.bfloat16, f"{case}, fuse {fuse}, block_n {block_n}")


@pytest.mark.parametrize("n", [1, 77, 128, 129, 1000, 4500])
def test_one_block_holds_every_token(kernel, n):
    """Dense attention through one block (the only key tile partial unless n % 128 = 0), against softmax·V."""
    gen = torch.Generator().manual_seed(n)
    d = 128
    q, k, v = qkv(gen, 1, 2, n, d, torch.bfloat16)
    full = torch.tensor([0, n, 0]).expand(1, 2, 3)
    out = check(KERNELS[kernel](), q, k, v, layout(full, full, d),
                BlockMask(torch.ones(1, 2, 3, 3, dtype=torch.bool).cuda()), torch.bfloat16, f"one block of {n} tokens")
    dense = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(d), -1) @ v.double()
    assert rel(out, dense) < TOL[torch.bfloat16]


def test_tail_pass_and_single_token_query_blocks(kernel):
    """Query blocks of 1, 64, 65, 128, 129, 192, 200 rows: main-pass tiles, tail-pass tiles and both."""
    gen = torch.Generator().manual_seed(7)
    q_sizes = torch.tensor([[[1, 64, 65, 128, 129, 192, 200, 0]]])
    n = int(q_sizes.sum())
    k_sizes = torch.tensor([[[300, 1, 0, n - 301]]])
    selected = torch.rand(1, 1, 8, 4, generator=gen) < 0.6
    selected[..., 3, :] = True
    q, k, v = qkv(gen, 1, 1, n, 128, torch.bfloat16)
    check(KERNELS[kernel](), q, k, v, layout(q_sizes, k_sizes, 128), BlockMask(selected.cuda()), torch.bfloat16,
          "tail pass")


@pytest.mark.parametrize("d", [128, 64])
def test_strided_inputs_and_orders(kernel, d):
    """q, k, v as [B, N, H, D] tensors seen as [B, H, N, D] (rows contiguous, heads interleaved), with token orders."""
    gen = torch.Generator().manual_seed(11)
    b, h, n = 1, 3, 1700
    q, k, v = ((torch.randn(b, n, h, d, generator=gen) * 1.5).to(torch.bfloat16).cuda().transpose(1, 2)
               for _ in range(3))
    q_sizes = torch.stack([sizes(gen, n, 6, 0.2) for _ in range(b * h)]).reshape(b, h, 6)
    k_sizes = torch.stack([sizes(gen, n, 9, 0.2) for _ in range(b * h)]).reshape(b, h, 9)
    selected = torch.rand(b, h, 6, 9, generator=gen) < 0.5
    selected[..., 0, :] = True
    check(KERNELS[kernel](), q, k, v, layout(q_sizes, k_sizes, d, gen), BlockMask(selected.cuda()), torch.bfloat16,
          f"strided d{d}")
