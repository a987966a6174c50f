"""Layout helpers and BlockMask.density against Python loops over tokens."""
import subprocess
import sys

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.interfaces import BlockMask, Layout, gather_tokens, scatter_tokens

SHAPES = dict(
    b=st.integers(1, 2), h=st.integers(1, 2), n=st.integers(1, 20), mq=st.integers(1, 6), mk=st.integers(1, 6),
    mode=st.sampled_from(["random", "one", "singletons"]), seed=st.integers(0, 2**16),
)


@settings(max_examples=40, deadline=None)
@given(**SHAPES)
def test_offsets_and_block_of_token_match_a_loop(ref, b, h, n, mq, mk, mode, seed):
    layout = ref.random_layout(b, h, n, mq, mk, mode, torch.Generator().manual_seed(seed))
    assert layout.num_tokens == n
    for bi in range(b):
        for hi in range(h):
            for sizes, offsets in ((layout.q_sizes, layout.q_offsets), (layout.k_sizes, layout.k_offsets)):
                running, expected = 0, [0]
                for size in sizes[bi, hi].tolist():
                    running += size
                    expected.append(running)
                assert offsets[bi, hi].tolist() == expected
            q_order, kv_order = layout.q_order[bi, hi].tolist(), layout.kv_order[bi, hi].tolist()
            assert layout.q_block_of_token()[bi, hi].tolist() == ref.block_of_token(layout.q_sizes[bi, hi], q_order)
            assert layout.k_block_of_token()[bi, hi].tolist() == ref.block_of_token(layout.k_sizes[bi, hi], kv_order)


def test_block_of_token_in_natural_order():
    sizes = torch.tensor([[[2, 0, 3, 1]]])
    layout = Layout(None, None, sizes, sizes, torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))
    assert layout.q_block_of_token().tolist() == [[[0, 0, 2, 2, 2, 3]]]
    assert layout.q_offsets.tolist() == [[[0, 2, 2, 5, 6]]]


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 16), d=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_gather_and_scatter_are_inverses(b, h, n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, n, d, generator=gen)
    order = torch.stack([torch.randperm(n, generator=gen) for _ in range(b * h)]).reshape(b, h, n)
    gathered = gather_tokens(x, order)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                assert torch.equal(gathered[bi, hi, i], x[bi, hi, order[bi, hi, i]])
    assert torch.equal(scatter_tokens(gathered, order), x)
    assert torch.equal(gather_tokens(scatter_tokens(x, order), order), x)
    assert gather_tokens(x, None) is x and scatter_tokens(x, None) is x


@settings(max_examples=40, deadline=None)
@given(**SHAPES)
def test_density_counts_token_pairs(ref, b, h, n, mq, mk, mode, seed):
    gen = torch.Generator().manual_seed(seed)
    layout = ref.random_layout(b, h, n, mq, mk, mode, gen)
    mask = BlockMask(torch.rand(b, h, mq, mk, generator=gen) < 0.4)
    density = mask.density(layout)
    assert density.shape == (b, h)
    for bi in range(b):
        for hi in range(h):
            pairs = int(ref.token_mask(layout, mask, bi, hi).sum())
            assert abs(float(density[bi, hi]) - pairs / n**2) < 1e-6


def test_importing_torch_does_not_import_triton():
    # conftest sets TRITON_INTERPRET after `import torch`; that is only safe while torch leaves triton unimported.
    code = "import sys, torch; torch.cuda.is_available(); print('triton' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
