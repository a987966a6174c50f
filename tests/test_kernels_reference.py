"""The reference kernels (torch block-sparse, sdpa, auto) against dense masked attention in float64."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn import registry
from sparseattn.interfaces import BlockMask
from sparseattn.kernels import AutoKernel, DenseSDPA, TorchBlockSparse
from sparseattn.strategy import single_block_layout

SHAPES = dict(
    b=st.integers(1, 2), h=st.integers(1, 2), n=st.integers(1, 24), d=st.integers(1, 8), mq=st.integers(1, 6),
    mk=st.integers(1, 6), mode=st.sampled_from(["random", "one", "singletons"]), seed=st.integers(0, 2**16),
)


@settings(max_examples=50, deadline=None)
@given(**SHAPES, max_scores=st.sampled_from([1, 7, 1 << 24]))
def test_torch_kernel_matches_masked_attention(ref, b, h, n, d, mq, mk, mode, seed, max_scores):
    gen = torch.Generator().manual_seed(seed)
    layout = ref.random_layout(b, h, n, mq, mk, mode, gen)
    mask = ref.random_mask(b, h, mq, mk, gen)
    q, k, v = ref.random_qkv(b, h, n, d, seed)  # already "permuted": the kernel sees positions, not tokens
    out = TorchBlockSparse(max_scores=max_scores)(q, k, v, layout, mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    for bi in range(b):
        for hi in range(h):
            allowed = ref.token_mask(layout, mask, bi, hi, permuted=True)
            expected = ref.masked_attention(q[bi, hi], k[bi, hi], v[bi, hi], allowed)
            torch.testing.assert_close(out[bi, hi].double(), expected, atol=2e-6, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(**SHAPES)
def test_permute_run_unpermute_matches_masked_attention_in_original_order(ref, b, h, n, d, mq, mk, mode, seed):
    gen = torch.Generator().manual_seed(seed)
    layout = ref.random_layout(b, h, n, mq, mk, mode, gen)
    mask = ref.random_mask(b, h, mq, mk, gen)
    q, k, v = ref.random_qkv(b, h, n, d, seed)
    kernel = TorchBlockSparse()
    q_p, k_p, v_p = kernel.permute(q, k, v, layout)
    out = kernel.unpermute(kernel(q_p, k_p, v_p, layout, mask), layout)
    for bi in range(b):
        for hi in range(h):
            allowed = ref.token_mask(layout, mask, bi, hi)
            expected = ref.masked_attention(q[bi, hi], k[bi, hi], v[bi, hi], allowed)
            torch.testing.assert_close(out[bi, hi].double(), expected, atol=2e-6, rtol=1e-5)


def test_query_block_without_keys_outputs_zeros(ref):
    q, k, v = ref.random_qkv(1, 1, 6, 4)
    sizes_q = torch.tensor([[[3, 3]]])
    sizes_k = torch.tensor([[[0, 6]]])  # key block 0 is empty
    layout = ref.random_layout(1, 1, 6, 2, 2, "random", torch.Generator().manual_seed(0))
    layout.q_sizes, layout.k_sizes = sizes_q, sizes_k
    mask = BlockMask(torch.tensor([[[[True, False], [False, True]]]]))
    out = TorchBlockSparse()(q, k, v, layout, mask)
    assert torch.equal(out[0, 0, :3], torch.zeros(3, 4))
    torch.testing.assert_close(out[0, 0, 3:], torch.nn.functional.scaled_dot_product_attention(q, k, v)[0, 0, 3:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_full_mask_equals_sdpa(ref, dtype):
    q, k, v = ref.random_qkv(2, 3, 40, 16, seed=5, dtype=dtype)
    layout = ref.random_layout(2, 3, 40, 4, 5, "random", torch.Generator().manual_seed(1))
    mask = BlockMask(torch.ones(2, 3, 4, 5, dtype=torch.bool))
    out = TorchBlockSparse()(q, k, v, layout, mask)
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)
    assert out.dtype == dtype


def test_sdpa_kernel_accepts_only_a_full_mask(ref):
    q, k, v = ref.random_qkv(1, 2, 12, 8)
    layout = single_block_layout(q, k)
    full = BlockMask(torch.ones(1, 2, 1, 1, dtype=torch.bool))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(DenseSDPA()(q, k, v, layout, full), expected)
    sparse_layout = ref.random_layout(1, 2, 12, 3, 3, "random", torch.Generator().manual_seed(0))
    sparse = BlockMask(torch.eye(3, dtype=torch.bool).expand(1, 2, 3, 3))
    with pytest.raises(ValueError, match="mask is sparse"):
        DenseSDPA()(q, k, v, sparse_layout, sparse)


def test_auto_kernel_picks_torch_on_cpu(ref):
    q, k, v = ref.random_qkv(1, 2, 20, 64)  # a head dim the Triton kernel supports
    auto = AutoKernel()
    assert auto.choose(q, k, v).name == "torch"
    assert auto.why_unsupported(q, k, v) == []
    gen = torch.Generator().manual_seed(2)
    layout = ref.random_layout(1, 2, 20, 3, 4, "random", gen)
    mask = ref.random_mask(1, 2, 3, 4, gen)
    assert torch.equal(auto(q, k, v, layout, mask), TorchBlockSparse()(q, k, v, layout, mask))
    if "triton" in registry.available("kernel"):
        # even under TRITON_INTERPRET=1 (conftest, without a GPU), where Triton could run on CPU as a slow emulation
        with pytest.raises(ValueError, match="no kernel supports these inputs: triton: "):
            AutoKernel(prefer=["triton"]).choose(q, k, v)


def test_kernel_parameters_are_validated():
    with pytest.raises(ValueError, match="max_scores"):
        TorchBlockSparse(max_scores=0)
    with pytest.raises(ValueError, match="prefer"):
        AutoKernel(prefer=[])
    with pytest.raises(ValueError, match="none of the preferred kernels"):
        AutoKernel(prefer=["no-such-kernel"])
