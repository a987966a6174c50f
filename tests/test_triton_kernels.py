"""Triton kernels (attention ``triton``, flash k-means ``triton``, fused permutation) against the PyTorch references.

On a machine without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1) at small shapes; the
variable must be set before triton is first imported, so this module sets it before importing anything that imports
triton (tests/conftest.py may set it earlier for the whole session). If triton was already imported in compiled mode
without a GPU, the interpreter tests skip with that reason. With CUDA, the CUDA tests run at realistic sizes.

Layouts cover empty blocks, one-token blocks, one block holding every token, N not a multiple of any tile, query
blocks selecting one or every key block, fixed-size blocks in the natural order, and a text block (HunyuanVideo).
Every comparison reports ‖out − ref‖/‖ref‖.
"""
from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

triton = pytest.importorskip("triton")

from sparseattn.interfaces import BlockMask, Layout, gather_tokens, scatter_tokens  # noqa: E402
from sparseattn.kernels.reference import TorchBlockSparse  # noqa: E402
from sparseattn.kernels.triton_attention import TritonBlockSparse  # noqa: E402
from sparseattn.kernels.triton_permute import gather_qkv, mode_problem, scatter_rows  # noqa: E402
from sparseattn.clustering.triton_kmeans import TritonKMeans  # noqa: E402
from sparseattn.clustering import TorchKMeans, init_centroids  # noqa: E402
from block_cases import sizes as _sizes  # noqa: E402

CPU_PROBLEM = mode_problem(on_cuda=False)
needs_interpreter = pytest.mark.skipif(bool(CPU_PROBLEM), reason="; ".join(CPU_PROBLEM) or "ok")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or bool(mode_problem(True)), reason="needs CUDA")

TOL = {torch.float32: 2e-5, torch.bfloat16: 1.5e-2, torch.float16: 3e-3}


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def _layout(q_sizes: torch.Tensor, k_sizes: torch.Tensor, d: int, orders: bool, gen: torch.Generator) -> Layout:
    b, h, mq = q_sizes.shape
    mk = k_sizes.shape[-1]
    n = int(q_sizes[0, 0].sum())
    def order():
        return torch.stack([torch.randperm(n, generator=gen) for _ in range(b * h)]).reshape(b, h, n)

    q_order = order() if orders else None
    kv_order = order() if orders else None
    return Layout(q_order, kv_order, q_sizes, k_sizes, torch.randn(b, h, mq, d, generator=gen),
                  torch.randn(b, h, mk, d, generator=gen))


def _qkv(gen: torch.Generator, b: int, h: int, n: int, d: int, dtype=torch.float32, device="cpu"):
    return tuple((torch.randn(b, h, n, d, generator=gen) * 1.5).to(dtype=dtype, device=device) for _ in range(3))


def _brute_force(q, k, v, layout: Layout, mask: BlockMask) -> torch.Tensor:
    """Dense float64 attention under the token-level mask of (permuted) q, k, v; rows with no key give 0."""
    b, h, n, d = q.shape
    out = torch.zeros(b, h, n, d, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            qb = torch.repeat_interleave(torch.arange(layout.q_sizes.shape[-1]), layout.q_sizes[bi, hi].cpu())
            kb = torch.repeat_interleave(torch.arange(layout.k_sizes.shape[-1]), layout.k_sizes[bi, hi].cpu())
            allowed = mask.selected[bi, hi].cpu()[qb][:, kb]
            s = q[bi, hi].cpu().double() @ k[bi, hi].cpu().double().T / math.sqrt(d)
            p = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
            out[bi, hi] = p @ v[bi, hi].cpu().double()
    return out


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double().cpu()
    return float((out.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-30))


def _check_attention(q, k, v, layout, mask, kernel, dtype, case=""):
    """Ours vs the reference kernel (on the same low-precision inputs) and vs float64 brute force."""
    out = kernel.run(kernel.plan(layout, mask, q), q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert bool(torch.isfinite(out).all()), case
    ref = TorchBlockSparse().run(TorchBlockSparse().plan(layout, mask, q), q, k, v)
    exact = _brute_force(q, k, v, layout, mask)
    err_ref, err_exact = _rel(out, ref), _rel(out, exact)
    print(f"{case}: ‖out − ref‖/‖ref‖ = {err_ref:.2e} (reference kernel), {err_exact:.2e} (float64)")
    assert err_exact <= TOL[dtype], (case, err_exact)
    assert err_ref <= TOL[dtype], (case, err_ref)
    return out


# ----------------------------------------------------------------------------------------------------------------
# attention on the interpreter
# ----------------------------------------------------------------------------------------------------------------
CASES = {
    # name: (B, H, N, D, Mq, Mk, density, empty fraction)
    "clusters, some empty": (1, 2, 203, 64, 7, 13, 0.35, 0.25),
    "many tiny clusters": (1, 1, 150, 64, 40, 60, 0.3, 0.1),
    "head dim 128, batch 2": (2, 1, 97, 128, 3, 5, 0.5, 0.0),
}


@needs_interpreter
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_layouts(case, dtype):
    b, h, n, d, mq, mk, density, empty = CASES[case]
    gen = torch.Generator().manual_seed(hash(case) % 1000)
    q_sizes = torch.stack([_sizes(gen, n, mq, empty) for _ in range(b * h)]).reshape(b, h, mq)
    k_sizes = torch.stack([_sizes(gen, n, mk, empty) for _ in range(b * h)]).reshape(b, h, mk)
    layout = _layout(q_sizes, k_sizes, d, orders=False, gen=gen)
    selected = torch.rand(b, h, mq, mk, generator=gen) < density
    selected[..., 0, :] = True  # a query block selecting every key block
    selected[..., 1, :] = False
    selected[..., 1, mk // 2] = True  # one selecting exactly one
    q, k, v = _qkv(gen, b, h, n, d, dtype)
    kernel = TritonBlockSparse(block_m=32, block_n=16, tail_block_m=16, tail_block_n=32)
    _check_attention(q, k, v, layout, BlockMask(selected), kernel, dtype, case)


@needs_interpreter
def test_default_tiles_and_one_token_blocks():
    """Default tiles (128-row main, 64-row tails) and 32-row short tails: every pass runs here; one-token blocks; N
    not a multiple of any tile."""
    gen = torch.Generator().manual_seed(1)
    n, d = 141, 64
    q_sizes = torch.tensor([[[1, 40, 70, 0, 30]]])
    k_sizes = torch.tensor([[[1, 0, 1, 1, 65, 73]]])
    layout = _layout(q_sizes, k_sizes, d, orders=False, gen=gen)
    selected = torch.tensor([[[[1, 1, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 1],
                               [0, 1, 0, 0, 0, 1]]]], dtype=torch.bool)
    q, k, v = _qkv(gen, 1, 1, n, d)
    for kernel in (TritonBlockSparse(), TritonBlockSparse(short_tail_block_m=32)):
        _check_attention(q, k, v, layout, BlockMask(selected), kernel, torch.float32, "default tiles")


@needs_interpreter
def test_single_block_and_empty_selection():
    """One block holding every token (dense); a query block whose selected key blocks are all empty gives zeros."""
    gen = torch.Generator().manual_seed(2)
    n, d = 77, 64
    q, k, v = _qkv(gen, 1, 2, n, d)
    full = torch.tensor([0, n, 0]).expand(1, 2, 3)
    layout = _layout(full, full, d, orders=False, gen=gen)
    kernel = TritonBlockSparse(block_m=32, block_n=16)
    out = _check_attention(q, k, v, layout, BlockMask(torch.ones(1, 2, 3, 3, dtype=torch.bool)), kernel,
                           torch.float32, "one block = all tokens")
    dense = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(d), -1) @ v.double()
    assert _rel(out, dense) < 2e-5
    q_sizes = torch.tensor([[[40, 37]]]).expand(1, 2, 2)
    k_sizes = torch.tensor([[[0, 77]]]).expand(1, 2, 2)
    layout = _layout(q_sizes, k_sizes, d, orders=False, gen=gen)
    selected = torch.tensor([[True, False], [False, True]]).expand(1, 2, 2, 2)
    out = kernel.run(kernel.plan(layout, BlockMask(selected), q), q, k, v)
    assert torch.equal(out[:, :, :40], torch.zeros_like(out[:, :, :40]))
    _check_attention(q, k, v, layout, BlockMask(selected), kernel, torch.float32, "empty selection")


@needs_interpreter
def test_fixed_blocks_identity_layout():
    """Fixed-size blocks in the natural order (permuter 'blocks'): the same kernel, q_order/kv_order None."""
    from sparseattn.permuters import FixedBlockPermuter

    gen = torch.Generator().manual_seed(3)
    q, k, v = _qkv(gen, 1, 2, 130, 64)
    layout = FixedBlockPermuter(block_size=32, k_block_size=16).permute(q, k)
    mq, mk = layout.q_sizes.shape[-1], layout.k_sizes.shape[-1]
    selected = torch.rand(1, 2, mq, mk, generator=gen) < 0.4
    kernel = TritonBlockSparse(block_m=16, block_n=32)
    assert kernel.permute(q, k, v, layout)[0] is q
    _check_attention(q, k, v, layout, BlockMask(selected), kernel, torch.float32, "fixed blocks")


@needs_interpreter
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 90),
    mq=st.integers(1, 9),
    mk=st.integers(1, 12),
    density=st.floats(0.0, 1.0),
    empty=st.sampled_from([0.0, 0.3]),
)
def test_property_random_layouts(seed, n, mq, mk, density, empty):
    gen = torch.Generator().manual_seed(seed)
    q_sizes = _sizes(gen, n, mq, empty).reshape(1, 1, mq)
    k_sizes = _sizes(gen, n, mk, empty).reshape(1, 1, mk)
    layout = _layout(q_sizes, k_sizes, 64, orders=False, gen=gen)
    selected = torch.rand(1, 1, mq, mk, generator=gen) < density
    q, k, v = _qkv(gen, 1, 1, n, 64)
    _check_attention(q, k, v, layout, BlockMask(selected), TritonBlockSparse(block_m=16, block_n=16),
                     torch.float32, f"property n={n} mq={mq} mk={mk}")


@needs_interpreter
@pytest.mark.parametrize("tiles, passes, exact", [
    (dict(tail_block_m=0), 1, False),
    (dict(tail_block_m=16), 2, False),
    (dict(tail_block_m=16), 2, True),
    (dict(block_m=64, tail_block_m=32, short_tail_block_m=16), 3, False),
])
def test_plan_lists_and_work_items(tiles, passes, exact):
    """Key lists hold exactly the selected tokens in order; the row tiles of all passes cover every query row once
    and none is empty; the index buffer is reused. ``exact``: the buffer sized to the lists (max_index_bytes 0)."""
    gen = torch.Generator().manual_seed(4)
    b, h, n, d, mq, mk = 1, 2, 170, 64, 5, 9
    q_sizes = torch.stack([_sizes(gen, n, mq, 0.2) for _ in range(h)]).reshape(b, h, mq)
    k_sizes = torch.stack([_sizes(gen, n, mk, 0.2) for _ in range(h)]).reshape(b, h, mk)
    layout = _layout(q_sizes, k_sizes, d, orders=False, gen=gen)
    selected = torch.rand(b, h, mq, mk, generator=gen) < 0.5
    kernel = TritonBlockSparse(**{"block_m": 32, "block_n": 16, **tiles, **({"max_index_bytes": 0} if exact else {})})
    q = torch.randn(b, h, n, d)
    plan = kernel.plan(layout, BlockMask(selected), q)
    if exact:
        assert plan.lists.numel() == int(plan.lens.sum())
    assert len(plan.passes) == passes
    assert [work.block_m for work in plan.passes] == sorted({work.block_m for work in plan.passes}, reverse=True)
    k_off, q_off = layout.k_offsets, layout.q_offsets
    tile_pairs = real_row_pairs = 0  # computed pairs, tile by tile: with padding rows / with real rows only
    for hi in range(h):
        covered = torch.zeros(n, dtype=torch.long)
        for i in range(mq):
            expected = [t for j in range(mk) if selected[0, hi, i, j]
                        for t in range(int(k_off[0, hi, j]), int(k_off[0, hi, j + 1]))]
            start, length = int(plan.list_off[hi, i]), int(plan.lens[hi, i])
            assert plan.lists[start:start + length].tolist() == expected
        for work in plan.passes:
            items = work.block[hi * work.slots:(hi + 1) * work.slots]
            rows = work.row_tile[hi * work.slots:(hi + 1) * work.slots]
            for i, r in zip(items.tolist(), rows.tolist()):
                if i < 0:
                    continue
                lo = int(q_off[0, hi, i]) + r * work.block_m
                hi_row = min(lo + work.block_m, int(q_off[0, hi, i + 1]))
                assert hi_row > lo, "empty row tile"
                covered[lo:hi_row] += 1
                key_tiles = -(-int(plan.lens[hi, i]) // work.block_n)
                tile_pairs += work.block_m * key_tiles * work.block_n
                real_row_pairs += (hi_row - lo) * key_tiles * work.block_n
        assert torch.equal(covered, torch.ones(n, dtype=torch.long))
    useful = float((layout.q_sizes.reshape(h, mq, 1) * layout.k_sizes.reshape(h, 1, mk) * selected[0]).sum())
    assert kernel.computed_pairs(plan).tolist() == [tile_pairs, useful]
    assert kernel.computed_pairs(plan, real_rows=True).tolist() == [real_row_pairs, useful]
    assert useful <= real_row_pairs < tile_pairs
    out = kernel.run(plan, q, q, q)
    assert _rel(out, _brute_force(q, q, q, layout, BlockMask(selected))) < 2e-5
    first = plan.lists.data_ptr()
    again = kernel.plan(layout, BlockMask(~selected), q)
    if not exact:
        assert again.lists.data_ptr() == first  # the index buffer is cached per shape
    with pytest.raises(ValueError, match="stale"):
        kernel.run(plan, q, q, q)
    out = kernel.run(again, q, q, q)
    assert _rel(out, _brute_force(q, q, q, layout, BlockMask(~selected))) < 2e-5


@needs_interpreter
def test_permute_kernels():
    gen = torch.Generator().manual_seed(5)
    b, h, n, d = 2, 3, 45, 64
    q, k, v = _qkv(gen, b, h, n, d)
    qo = torch.stack([torch.randperm(n, generator=gen) for _ in range(b * h)]).reshape(b, h, n)
    ko = torch.stack([torch.randperm(n, generator=gen) for _ in range(b * h)]).reshape(b, h, n)
    qp, kp, vp = gather_qkv(q, k, v, qo, ko)
    assert torch.equal(qp, gather_tokens(q, qo))
    assert torch.equal(kp, gather_tokens(k, ko)) and torch.equal(vp, gather_tokens(v, ko))
    assert torch.equal(scatter_rows(qp, qo), q)
    # strided input: a [B, N, H, D] tensor seen as [B, H, N, D]
    x = torch.randn(b, n, h, d, generator=gen).transpose(1, 2)
    qp2, _, _ = gather_qkv(x, None, None, qo, None)
    assert torch.equal(qp2, gather_tokens(x, qo))
    qp3, kp3, _ = gather_qkv(q, k, v, None, ko)
    assert torch.equal(qp3, q) and torch.equal(kp3, gather_tokens(k, ko))
    none, kp4, vp4 = gather_qkv(None, k, v, qo, ko)  # k and v only
    assert none is None and torch.equal(kp4, kp) and torch.equal(vp4, vp)
    layout = Layout(qo, ko, torch.full((b, h, 1), n), torch.full((b, h, 1), n), torch.zeros(b, h, 1, d),
                    torch.zeros(b, h, 1, d))
    kernel = TritonBlockSparse(fuse_permutation="none")
    assert torch.equal(kernel.unpermute(kernel.permute(q, k, v, layout)[0], layout), q)
    assert torch.equal(kernel.unpermute(qp, layout), scatter_tokens(qp, qo))
    fused_q = TritonBlockSparse()  # default "q": queries and outputs through q_order, k and v gathered
    q1, k1, v1 = fused_q.permute(q, k, v, layout)
    assert q1 is q and torch.equal(k1, kp) and torch.equal(v1, vp) and fused_q.unpermute(qp, layout) is qp
    fused_all = TritonBlockSparse(fuse_permutation="qkv")  # everything through the orders: no copies
    assert all(a is b for a, b in zip(fused_all.permute(q, k, v, layout), (q, k, v)))
    assert fused_all.unpermute(qp, layout) is qp
    with pytest.raises(ValueError, match="fuse_permutation must be one of q, qkv, none"):
        TritonBlockSparse(fuse_permutation=True)


@needs_interpreter
@pytest.mark.parametrize("mode", ["q", "qkv"])
@pytest.mark.parametrize("strided", [False, True])
def test_fused_permutation_matches_gather_and_scatter(mode, strided):
    """Reading through the layout's orders equals gathering, the kernel on permuted tensors, and scattering back,
    also for [B, N, H, D] inputs seen as [B, H, N, D] (read in place, no copy)."""
    gen = torch.Generator().manual_seed(11)
    b, h, n, d, mq, mk = 2, 2, 77, 64, 5, 9
    q_sizes = torch.stack([_sizes(gen, n, mq, 0.2) for _ in range(b * h)]).reshape(b, h, mq)
    k_sizes = torch.stack([_sizes(gen, n, mk, 0.2) for _ in range(b * h)]).reshape(b, h, mk)
    layout = _layout(q_sizes, k_sizes, d, orders=True, gen=gen)
    selected = torch.rand(b, h, mq, mk, generator=gen) < 0.4
    selected[..., 0, :] = True
    mask = BlockMask(selected)
    if strided:
        q, k, v = (torch.randn(b, n, h, d, generator=gen).transpose(1, 2) for _ in range(3))
    else:
        q, k, v = _qkv(gen, b, h, n, d)
    tiles = dict(block_m=32, block_n=16, tail_block_m=16, tail_block_n=32)
    fused = TritonBlockSparse(fuse_permutation=mode, **tiles)
    qf, kf, vf = fused.permute(q, k, v, layout)
    out = fused.unpermute(fused.run(fused.plan(layout, mask, qf), qf, kf, vf), layout)
    copies = TritonBlockSparse(fuse_permutation="none", **tiles)
    qp, kp, vp = copies.permute(q, k, v, layout)
    expected = copies.unpermute(copies.run(copies.plan(layout, mask, qp), qp, kp, vp), layout)
    exact = scatter_tokens(_brute_force(*(gather_tokens(t, o) for t, o in
                                         ((q, layout.q_order), (k, layout.kv_order), (v, layout.kv_order))),
                                        layout, mask), layout.q_order)
    assert out.shape == q.shape
    assert _rel(out, expected) < 1e-6
    assert _rel(out, exact) < 2e-5


@needs_interpreter
def test_strategy_end_to_end():
    """SVG2 through Strategy with the Triton kernel and clusterer matches the same strategy on the references."""
    from sparseattn import load_strategy
    from sparseattn.workloads import synthetic_video

    work = synthetic_video(frames=3, height=6, width=8, heads=2, head_dim=64, text_tokens=9, seed=1)
    outs = {}
    for kernel, clusterer in (("triton", "triton"), ("torch", "torch")):
        strategy = load_strategy(
            "svg2",
            permuter={"name": "kmeans", "q_clusters": 6, "k_clusters": 10, "iters_first": 5, "iters_warm": 2,
                      "tol": 1e-4, "clusterer": clusterer},
            kernel=kernel,
        )
        if clusterer == "triton":
            strategy.permuter._clusterer = TritonKMeans(precision="ieee")
        ctx = work.context()
        ctx.num_steps, ctx.step = 10, 9
        outs[kernel] = strategy(work.q, work.k, work.v, ctx)
    err = _rel(outs["triton"], outs["torch"])
    print(f"strategy end to end: ‖out − ref‖/‖ref‖ = {err:.2e}")
    assert err < 1e-4


def test_why_unsupported():
    kernel = TritonBlockSparse()
    q = torch.randn(1, 1, 8, 96)
    assert any("head dim 96" in r for r in kernel.why_unsupported(q, q, q))
    q64 = torch.randn(1, 1, 8, 64, dtype=torch.float64)
    assert any("float64" in r for r in kernel.why_unsupported(q64, q64, q64))
    if CPU_PROBLEM:
        assert kernel.why_unsupported(torch.randn(1, 1, 8, 64), *[torch.randn(1, 1, 8, 64)] * 2)
    else:
        assert kernel.why_unsupported(*[torch.randn(1, 1, 8, 64)] * 3) == []
    for bad in ({"block_m": 48}, {"block_n": 8}, {"num_warps": 3}, {"num_stages": 0}, {"max_index_bytes": -1},
                {"tail_block_m": 24}, {"short_tail_block_m": 8}):
        with pytest.raises(ValueError):
            TritonBlockSparse(**bad)


def test_registered():
    from sparseattn.registry import available, get

    assert get("kernel", "triton") is TritonBlockSparse
    assert get("clusterer", "triton") is TritonKMeans
    assert "triton" in available("kernel")


# ----------------------------------------------------------------------------------------------------------------
# k-means on the interpreter
# ----------------------------------------------------------------------------------------------------------------
def _near_tie_only(x, labels, ref_labels, centroids_before) -> None:
    """Every label that differs from the reference is a near-tie between the two centroids."""
    diff = (labels != ref_labels).nonzero()
    for g, i in diff.tolist():
        p = x[g, i].double()
        a, b = centroids_before[g, labels[g, i]].double(), centroids_before[g, ref_labels[g, i]].double()
        da, db = ((p - a) ** 2).sum(), ((p - b) ** 2).sum()
        scale = (p**2).sum() + (a**2).sum() + (b**2).sum()
        assert abs(da - db) <= 1e-5 * scale, (g, i, float(da), float(db))


@needs_interpreter
@pytest.mark.parametrize("groups,n,dim,clusters,iters,copies", [(2, 300, 5, 7, 4, 0), (1, 600, 8, 4, 3, 0),
                                                                (1, 200, 64, 40, 3, 8), (3, 64, 3, 70, 2, 2)])
def test_kmeans_matches_torch(groups, n, dim, clusters, iters, copies):
    """``copies``: copies of the atomic sums (0: auto, which takes 1 for 43 points per cluster, 4 for 150)."""
    gen = torch.Generator().manual_seed(groups * n)
    x = torch.randn(groups, n, dim, generator=gen) * 2 + 0.5
    init = torch.randn(groups, clusters, dim, generator=gen) * 2  # arbitrary starts: some clusters stay empty
    ours = TritonKMeans(precision="ieee", sum_copies=copies).fit(x, init, iters)
    ref = TorchKMeans().fit(x, init, iters)
    assert ours.labels.dtype == torch.int64 and ours.sizes.dtype == torch.int64
    assert ours.centroids.dtype == torch.float32 and ours.centroids.shape == init.shape
    previous = TorchKMeans().fit(x, init, iters - 1).centroids if iters > 1 else init
    _near_tie_only(x, ours.labels, ref.labels, previous)
    counts = torch.stack([torch.bincount(r, minlength=clusters) for r in ours.labels])
    assert torch.equal(counts, ours.sizes)
    if torch.equal(ours.labels, ref.labels):
        torch.testing.assert_close(ours.centroids, ref.centroids, rtol=1e-5, atol=1e-5)
        assert torch.equal(ours.sizes, ref.sizes)


@needs_interpreter
def test_kmeans_bf16_precision_and_dtypes():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 256, 32, generator=gen)
    init = init_centroids(x, 12, seed=0)
    ref = TorchKMeans().fit(x, init, 1)
    ours = TritonKMeans().fit(x, init, 1)  # bf16 operands: only near-ties may flip
    assert float((ours.labels != ref.labels).float().mean()) < 0.02
    for dtype in (torch.bfloat16, torch.float16):
        r = TritonKMeans().fit(x.to(dtype), init, 3)
        assert r.labels.shape == (2, 256) and bool(torch.isfinite(r.centroids).all())
        assert torch.equal(r.sizes.sum(-1), torch.full((2,), 256))


@needs_interpreter
def test_kmeans_tol_and_empty_clusters():
    gen = torch.Generator().manual_seed(8)
    centers = torch.randn(1, 4, 1, 3, generator=gen) * 10
    x = (centers + 0.05 * torch.randn(1, 4, 30, 3, generator=gen)).reshape(1, 120, 3)
    init = torch.cat([x[:, [0, 30, 60, 90]], torch.tensor([[[1e3, -1e3, 1e3]]])], dim=1)  # 5th never nearest
    km = TritonKMeans(precision="ieee")
    one = km.fit(x, init, 1)
    stopped = km.fit(x, init, 20, tol=1e9)  # converged after the first round: the others do nothing
    assert torch.equal(stopped.labels, one.labels) and torch.equal(stopped.centroids, one.centroids)
    assert torch.equal(stopped.sizes, one.sizes)
    assert int(one.sizes[0, 4]) == 0 and torch.equal(one.centroids[0, 4], init[0, 4])
    converged = km.fit(x, init, 30, tol=1e-6)
    again = km.fit(x, converged.centroids, 1)
    assert torch.equal(again.labels, converged.labels)


def test_kmeans_invalid_inputs():
    km = TritonKMeans()
    x = torch.randn(2, 10, 3)
    with pytest.raises(ValueError, match="iters"):
        km.fit(x, x[:, :4], 0)
    for xs, cs in ((x, x[:, :4, :2]), (x, x[:1, :4]), (x[0], x[0, :4]), (x[:, :0], x[:, :4])):
        with pytest.raises(ValueError):
            km.fit(xs, cs, 2)
    for bad in ({"precision": "fp8"}, {"block_points": 100}, {"num_warps": 5}, {"num_stages": 0}, {"sum_copies": 3}):
        with pytest.raises(ValueError):
            TritonKMeans(**bad)


# ----------------------------------------------------------------------------------------------------------------
# CUDA at realistic sizes
# ----------------------------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
def test_cuda_kmeans_layout_attention(dtype, d):
    gen = torch.Generator(device="cuda").manual_seed(0)
    b, h, n = 1, 2, 20000 + 37
    protos = torch.randn(h, 600, d, device="cuda", generator=gen)
    labels = torch.randint(0, 600, (h, n), device="cuda", generator=gen)
    base = torch.stack([protos[i][labels[i]] for i in range(h)]).unsqueeze(0)
    q = (base + 0.5 * torch.randn(b, h, n, d, device="cuda", generator=gen)).to(dtype)
    k = (base + 0.5 * torch.randn(b, h, n, d, device="cuda", generator=gen)).to(dtype)
    v = torch.randn(b, h, n, d, device="cuda", generator=gen).to(dtype)
    km = TritonKMeans()
    res = {}
    for name, x, c in (("q", q, 80), ("k", k, 300)):
        pts = x.reshape(b * h, n, d)
        r = km.fit(pts, init_centroids(pts.float(), c, seed=1), 10)
        res[name] = (torch.argsort(r.labels, dim=-1, stable=True).reshape(b, h, n), r.sizes.reshape(b, h, c),
                     r.centroids.reshape(b, h, c, d))
    layout = Layout(res["q"][0], res["k"][0], res["q"][1], res["k"][1], res["q"][2], res["k"][2])
    selected = torch.rand(b, h, 80, 300, device="cuda", generator=gen) < 0.15
    selected[..., 0, :] = True
    mask = BlockMask(selected)
    qg, kg, vg = gather_tokens(q, layout.q_order), gather_tokens(k, layout.kv_order), gather_tokens(v, layout.kv_order)
    ref = scatter_tokens(TorchBlockSparse().run(TorchBlockSparse().plan(layout, mask, qg), qg, kg, vg), layout.q_order)
    for mode in ("q", "qkv", "none"):  # every way of permuting gives the same output in the original order
        kernel = TritonBlockSparse(fuse_permutation=mode)
        qp, kp, vp = kernel.permute(q, k, v, layout)
        out = kernel.unpermute(kernel.run(kernel.plan(layout, mask, qp), qp, kp, vp), layout)
        err = _rel(out, ref)
        print(f"cuda {dtype} D={d} fuse_permutation={mode}: ‖out − ref‖/‖ref‖ = {err:.2e}")
        assert err < TOL[dtype]


@needs_cuda
def test_cuda_kmeans_matches_torch():
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(4, 30000, 128, device="cuda", generator=gen)
    init = init_centroids(x, 500, seed=2)
    ref = TorchKMeans().fit(x, init, 1)
    ours = TritonKMeans(precision="ieee").fit(x, init, 1)
    assert float((ours.labels != ref.labels).float().mean()) < 1e-3
    assert _rel(ours.centroids, ref.centroids) < 2e-3  # the atomic sums, not only the labels (measured 4.7e-4)
    assert float((ours.sizes - ref.sizes).abs().sum()) <= 2e-3 * x.shape[0] * x.shape[1]
    fast = TritonKMeans().fit(x.to(torch.bfloat16), init, 1)
    assert float((fast.labels != ref.labels).float().mean()) < 0.05
    assert _rel(fast.centroids, ref.centroids) < 0.1  # bf16 operands flip near-tie labels of this random data


# ----------------------------------------------------------------------------------------------------------------
# top-p selection without sorting
# ----------------------------------------------------------------------------------------------------------------
def _top_p_agrees(scores: torch.Tensor, p: float, floor: int, got: torch.Tensor) -> tuple[int, int]:
    """(rows, rows differing from the sort-based reference beyond rounding): a row differs only if the multisets
    of kept scores differ (ties may be broken differently) and its cumulative mass is not within rounding of p."""
    from sparseattn.budgets import top_p_reference

    ref = top_p_reference(scores, p, floor)
    flat_s, flat_r, flat_g = (t.reshape(-1, scores.shape[-1]).cpu() for t in (scores, ref, got))
    bad = 0
    for row, r, g in zip(flat_s, flat_r, flat_g):
        if sorted(row[r].tolist()) == sorted(row[g].tolist()):
            continue
        ranked = row.double().sort(descending=True).values
        margin = (ranked.cumsum(0) - p * ranked.sum()).abs().min()
        bad += bool(margin > 1e-5 * ranked.sum())
    return flat_s.shape[0], bad


@needs_interpreter
@pytest.mark.parametrize("mk,ties", [(1, False), (37, False), (64, True), (300, True)])
def test_top_p_kernel_matches_reference(mk, ties):
    from sparseattn.kernels.triton_topp import top_p_mask

    gen = torch.Generator().manual_seed(mk)
    scores = torch.rand(2, 3, 5, mk, generator=gen) ** 3
    if ties:
        scores[..., ::3] = 0.0  # empty key blocks: ties at 0, reached by a large floor
        scores[..., 1::5] = scores[..., 1:2]  # ties at a positive value
    for p, floor in ((0.9, 1), (0.5, max(1, mk // 10)), (0.3, mk), (0.99, max(1, mk // 2))):
        rows, bad = _top_p_agrees(scores, p, floor, top_p_mask(scores, p, floor))
        assert bad == 0, f"{bad} of {rows} rows differ at p={p}, floor={floor}"


@needs_interpreter
def test_top_p_budget_backends_agree():
    from sparseattn.budgets import TopP

    gen = torch.Generator().manual_seed(0)
    scores = torch.softmax(torch.randn(1, 2, 4, 50, generator=gen) * 3, -1)
    layout = Layout(None, None, torch.ones(1, 2, 4, dtype=torch.long), torch.ones(1, 2, 50, dtype=torch.long),
                    torch.zeros(1, 2, 4, 1), torch.zeros(1, 2, 50, 1))
    a = TopP(0.9, 0.1, backend="torch").select(scores, layout).selected
    b = TopP(0.9, 0.1, backend="triton").select(scores, layout).selected
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="backend"):
        TopP(backend="cuda")


@needs_cuda
def test_cuda_top_p_at_wan_shape():
    from sparseattn.kernels.triton_topp import top_p_mask

    gen = torch.Generator(device="cuda").manual_seed(0)
    scores = torch.softmax(4 * torch.randn(1, 40, 300, 1000, device="cuda", generator=gen), -1)
    rows, bad = _top_p_agrees(scores, 0.9, 100, top_p_mask(scores, 0.9, 100))
    print(f"top-p kernel at the Wan shape: {bad} of {rows} rows differ from the sort beyond rounding")
    assert bad == 0


def test_top_p_backend_choice_and_limits():
    from sparseattn.budgets import TopP
    from sparseattn.kernels.triton_topp import MAX_BLOCKS, top_p_mask

    wide = torch.rand(1, 1, 1, MAX_BLOCKS + 1)
    layout = Layout(None, None, torch.ones(1, 1, 1, dtype=torch.long),
                    torch.ones(1, 1, MAX_BLOCKS + 1, dtype=torch.long), torch.zeros(1, 1, 1, 1),
                    torch.zeros(1, 1, MAX_BLOCKS + 1, 1))
    # auto falls back to the sort for rows the kernel cannot hold; an explicit triton backend says why
    assert TopP(0.5, backend="auto").select(wide, layout).selected.sum() >= 1
    with pytest.raises(ValueError, match="exceed"):
        TopP(0.5, backend="triton").select(wide, layout)
    with pytest.raises(ValueError, match="blocks per row"):
        top_p_mask(wide, 0.5, 1)
