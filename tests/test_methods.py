"""The competing methods (sparseattn.methods): every pattern against a brute-force definition on small grids, the
layouts against loops, and every built-in recipe end to end through the Strategy and the kernel interface."""
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sparseattn import AttentionContext, load_strategy
from sparseattn.config import ConfigError, builtin_recipes
from sparseattn.interfaces import gather_tokens
from sparseattn.methods.oracle import ExactIdentifier, TokenKeysPermuter
from sparseattn.methods.patterns import (
    BandIdentifier,
    PatternBudget,
    RadialIdentifier,
    SlidingTileIdentifier,
    band_block_mask,
    band_width,
    radial_strip_mask,
    sliding_tile_mask,
)
from sparseattn.methods.svg1 import SVG1Permuter, token_major_order
from sparseattn.methods.tiles import TileLayout, TilePermuter, tile_order
from sparseattn.methods.xattention import AntidiagonalIdentifier
from sparseattn.permuters import FixedBlockPermuter
from sparseattn.workloads import synthetic_video

GRIDS = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6))


def frame_major(grid):
    """(frame, row, column) of every token, in frame-major order."""
    frames, height, width = grid
    return [(t, y, x) for t in range(frames) for y in range(height) for x in range(width)]


# ----------------------------------------------------------------------------------------------------------------
# tiles
# ----------------------------------------------------------------------------------------------------------------
def tiles_by_loops(grid, tile):
    """Tokens of every tile (tile-major), each tile's tokens in frame-major order."""
    tt, th, tw = tile
    nt, nh, nw = (math.ceil(g / t) for g, t in zip(grid, tile))
    members = {}
    for index, (t, y, x) in enumerate(frame_major(grid)):
        members.setdefault((t // tt, y // th, x // tw), []).append(index)
    return [members.get((a, b, c), []) for a in range(nt) for b in range(nh) for c in range(nw)]


@settings(max_examples=40, deadline=None)
@given(grid=GRIDS, tile=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)))
def test_tile_order_matches_loops(grid, tile):
    order, sizes = tile_order(grid, tile)
    expected = tiles_by_loops(grid, tile)
    assert sizes.tolist() == [len(m) for m in expected]
    assert order.tolist() == [token for members in expected for token in members]


def test_tile_permuter_layout_and_natural_order():
    grid = (3, 5, 4)
    n = math.prod(grid)
    q, k = torch.randn(2, 2, n, 8), torch.randn(2, 2, n, 8)
    layout = TilePermuter([2, 2, 3]).permute(q, k, {"grid": grid})
    assert isinstance(layout, TileLayout) and layout.tile == (2, 2, 3) and layout.tile_grid == (2, 3, 2)
    for block, members in enumerate(tiles_by_loops(grid, (2, 2, 3))):
        torch.testing.assert_close(layout.q_centroids[:, :, block], q[:, :, members].mean(2))
        torch.testing.assert_close(layout.k_centroids[:, :, block], k[:, :, members].mean(2))
    strips = TilePermuter([1, 2, 0]).permute(q, k, {"grid": grid})  # whole rows of one frame: the natural order
    assert strips.q_order is None and strips.tile == (1, 2, 4) and strips.q_sizes[0, 0].tolist() == [8, 8, 4] * 3


def test_tile_permuter_needs_a_matching_grid():
    q = torch.randn(1, 1, 12, 4)
    with pytest.raises(ValueError, match="needs the video token grid"):
        TilePermuter().permute(q, q, None)
    with pytest.raises(ValueError, match="has 24 tokens but the video part has 12"):
        TilePermuter().permute(q, q, {"grid": (2, 3, 4)})
    for bad in ([4, 4], [-1, 1, 1], "444", [1.5, 1, 1]):
        with pytest.raises(ValueError, match="tile_size"):
            TilePermuter(bad)


# ----------------------------------------------------------------------------------------------------------------
# Sliding Tile Attention
# ----------------------------------------------------------------------------------------------------------------
def sta_by_loops(tile_grid, window):
    """STA's definition per tile pair: the window centre is the query tile, clamped to stay inside the grid."""
    coords = [(a, b, c) for a in range(tile_grid[0]) for b in range(tile_grid[1]) for c in range(tile_grid[2])]

    def inside(qc, kc, n, w):
        if w >= n:
            return True
        center = min(max(qc, w // 2), n - 1 - w // 2)
        return abs(center - kc) <= w // 2

    return torch.tensor([[all(inside(qa, ka, n, w) for qa, ka, n, w in zip(qt, kt, tile_grid, window))
                          for kt in coords] for qt in coords])


@settings(max_examples=40, deadline=None)
@given(tile_grid=GRIDS, window=st.tuples(*[st.sampled_from([1, 3, 5, 7])] * 3))
def test_sliding_tile_mask_matches_definition(tile_grid, window):
    mask = sliding_tile_mask(tile_grid, window)
    assert torch.equal(mask, sta_by_loops(tile_grid, window))
    expected_per_row = math.prod(min(w, n) if w < n else n for w, n in zip(window, tile_grid))
    assert (mask.sum(-1) == expected_per_row).all()  # the clamped window always covers the same number of tiles


def test_sta_strategy_token_mask_matches_token_definition(ref):
    grid, tile, window = (4, 4, 6), (2, 2, 3), (1, 3, 1)
    workload = synthetic_video(*grid, heads=1, head_dim=8, seed=3)
    strategy = load_strategy({"name": "sta-small", "permuter": {"name": "tiles", "tile_size": list(tile)},
                              "identifier": {"name": "sliding_tiles", "window": list(window)}, "budget": "pattern"})
    plan = strategy.plan(workload.q, workload.k, workload.context())
    tile_grid = tuple(math.ceil(g / t) for g, t in zip(grid, tile))
    by_tile = sta_by_loops(tile_grid, window)
    tile_index = [(t // 2 * tile_grid[1] + y // 2) * tile_grid[2] + x // 3 for t, y, x in frame_major(grid)]
    expected = by_tile[tile_index][:, tile_index]
    assert torch.equal(ref.token_mask(plan.layout, plan.mask, 0, 0), expected)


def test_sliding_tiles_rejects_even_windows_and_other_layouts():
    with pytest.raises(ValueError, match="odd"):
        SlidingTileIdentifier([2, 3, 3])
    q = torch.randn(1, 1, 16, 4)
    layout = FixedBlockPermuter(4).permute(q, q)
    with pytest.raises(ValueError, match="use permuter 'tiles'"):
        SlidingTileIdentifier().score(q, q, layout)


# ----------------------------------------------------------------------------------------------------------------
# Radial Attention
# ----------------------------------------------------------------------------------------------------------------
def radial_token_allowed(f, p, g, r, frame_tokens, decay, min_window, sink_frames):
    """Radial's token rule, written out independently of the library."""
    if g < sink_frames:
        return True
    d = abs(f - g)
    if d == 0:
        return True
    window = decay * frame_tokens / 2 ** math.floor(math.log2(d))
    if window < min_window:
        if d % int(min_window // window) != 0:
            return False
        window = min_window
    return abs(p - r) <= window


@settings(max_examples=30, deadline=None)
@given(grid=st.tuples(st.integers(1, 9), st.integers(1, 4), st.integers(1, 4)), strip_rows=st.integers(1, 3),
       decay=st.sampled_from([0.1, 0.25, 0.5, 1.0, 2.0]), min_window=st.integers(1, 6), sink=st.integers(0, 2))
@example(grid=(2, 4, 2), strip_rows=1, decay=0.375, min_window=1, sink=0)  # a strip gap equal to the window
def test_radial_strip_mask_is_the_smallest_cover_of_the_token_rule(grid, strip_rows, decay, min_window, sink):
    frames, height, width = grid
    mask = radial_strip_mask(grid, strip_rows, decay, min_window, sink)
    strips = math.ceil(height / strip_rows)
    strip_of = [t * strips + y // strip_rows for t, y, x in frame_major(grid)]
    expected = torch.zeros(frames * strips, frames * strips, dtype=torch.bool)
    for i, (f, y, x) in enumerate(frame_major(grid)):
        for j, (g, y2, x2) in enumerate(frame_major(grid)):
            if radial_token_allowed(f, y * width + x, g, y2 * width + x2, height * width, decay, min_window, sink):
                expected[strip_of[i], strip_of[j]] = True
    assert torch.equal(mask, expected)


def test_radial_density_decays_with_distance_and_grows_with_decay():
    grid = (16, 8, 8)
    mask = radial_strip_mask(grid, 1, 0.5, 2, 0)
    per_distance = [mask[0:8, 8 * d: 8 * d + 8].float().mean() for d in range(16)]
    assert per_distance[0] == 1 and all(a >= b for a, b in zip(per_distance[1:], per_distance[2:]))
    densities = [float(radial_strip_mask(grid, 1, decay, 2, 1).float().mean()) for decay in (0.1, 0.3, 1.0)]
    assert densities == sorted(densities) and densities[0] < densities[-1]


def test_radial_needs_row_strips():
    q = torch.randn(1, 1, 32, 4)
    layout = TilePermuter([1, 2, 2]).permute(q, q, {"grid": (2, 4, 4)})
    with pytest.raises(ValueError, match=r"tile_size \[1, rows, 0\]"):
        RadialIdentifier().score(q, q, layout)
    with pytest.raises(ValueError):
        RadialIdentifier(decay=0)


# ----------------------------------------------------------------------------------------------------------------
# SVG1: band and per-head layout
# ----------------------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 24), mq=st.integers(1, 6), mk=st.integers(1, 6), seed=st.integers(0, 2**16),
       mode=st.sampled_from(["random", "one", "singletons"]), density=st.floats(0.01, 1.0))
def test_band_block_mask_is_the_smallest_cover_of_the_token_band(ref, n, mq, mk, seed, mode, density):
    gen = torch.Generator().manual_seed(seed)
    q_sizes, k_sizes = ref.random_sizes(n, mq, mode, gen).tolist(), ref.random_sizes(n, mk, mode, gen).tolist()
    width = band_width(n, density)
    mask = band_block_mask(torch.tensor(q_sizes), torch.tensor(k_sizes), width)
    q_block, k_block = ref.block_of_position(q_sizes), ref.block_of_position(k_sizes)
    expected = torch.zeros(len(q_sizes), len(k_sizes), dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            if abs(i - j) < width:
                expected[q_block[i], k_block[j]] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("n", [64, 300, 2048])
@pytest.mark.parametrize("density", [0.05, 0.25, 0.6])
def test_band_width_covers_the_requested_density(n, density):
    width = band_width(n, density)
    i = torch.arange(n)
    covered = float(((i[:, None] - i[None, :]).abs() < width).float().mean())
    assert covered == pytest.approx(density, abs=2.5 / n)


def test_token_major_order_matches_definition():
    grid = (3, 2, 4)
    order = token_major_order(grid).tolist()
    tokens = frame_major(grid)
    assert [tokens[i] for i in order] == [(t, y, x) for y in range(2) for x in range(4) for t in range(3)]


def spatial_and_temporal_heads(grid, d=32, sharp=8.0):
    """q = k for two heads: head 0 keyed on the frame (attends its own frame), head 1 on the spatial position
    (attends the same position in every frame)."""
    frames, height, width = grid
    gen = torch.Generator().manual_seed(0)
    frame_codes = torch.nn.functional.normalize(torch.randn(frames, d, generator=gen), dim=-1) * sharp
    position_codes = torch.nn.functional.normalize(torch.randn(height * width, d, generator=gen), dim=-1) * sharp
    tokens = frame_major(grid)
    spatial = torch.stack([frame_codes[t] for t, y, x in tokens])
    temporal = torch.stack([position_codes[y * width + x] for t, y, x in tokens])
    q = torch.stack([spatial, temporal]).unsqueeze(0)
    return q + 0.01 * torch.randn(q.shape, generator=gen)


def test_svg1_profiling_picks_spatial_and_temporal_heads(ref):
    grid = (6, 4, 4)
    q = spatial_and_temporal_heads(grid)
    permuter = SVG1Permuter(profile_density=0.2, sample_rows=16, block_size=8)
    assert permuter.temporal_heads(q, q, grid).tolist() == [[False, True]]
    layout = permuter.permute(q, q, {"grid": grid})
    n = q.shape[2]
    assert torch.equal(layout.q_order[0, 0], torch.arange(n))
    assert torch.equal(layout.q_order[0, 1], token_major_order(grid)) and torch.equal(layout.kv_order, layout.q_order)
    torch.testing.assert_close(layout.q_centroids[0, 1, 0], q[0, 1, token_major_order(grid)[:8]].mean(0))
    # the band in permuted order: |place(i) − place(j)| < w, with place = frame-major or token-major position
    strategy = load_strategy({"name": "svg1-small", "permuter": permuter,
                              "identifier": {"name": "band", "density": 0.2}, "budget": "pattern"})
    plan = strategy.plan(q, q, AttentionContext(grid=grid))
    width = band_width(n, 0.2)
    place = torch.empty(n, dtype=torch.long).scatter_(0, token_major_order(grid), torch.arange(n))
    for head, position in ((0, torch.arange(n)), (1, place)):
        band = (position[:, None] - position[None, :]).abs() < width
        tokens = ref.token_mask(plan.layout, plan.mask, 0, head)
        assert bool(tokens[band].all())  # every band pair is computed...
        slack = (position[:, None] - position[None, :]).abs() < width + 2 * (8 - 1)
        assert not bool(tokens[~slack].any())  # ...and nothing beyond one block on either side of it
    recall = (ref.dense_probs(q[0, 1], q[0, 1]) * ref.token_mask(plan.layout, plan.mask, 0, 1)).sum() / n
    assert recall > 0.99  # the temporal head's own band holds its attention


def test_band_identifier_and_pattern_budget():
    layout = FixedBlockPermuter(4).permute(torch.zeros(1, 1, 16, 2), torch.zeros(1, 1, 16, 2))
    scores = BandIdentifier(density=0.2).score(None, None, layout)
    assert scores.tolist() == [[[[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]]]
    selected = PatternBudget().select(torch.tensor([[[[0.0, 2.0, 1.0], [0.0, 0.0, 0.0]]]]), layout).selected
    assert selected.tolist() == [[[[False, True, True], [True, False, False]]]]  # an empty row keeps its argmax
    with pytest.raises(ValueError):
        BandIdentifier(density=0)


# ----------------------------------------------------------------------------------------------------------------
# XAttention
# ----------------------------------------------------------------------------------------------------------------
def antidiagonal_by_loops(q, k, q_sizes, k_sizes, stride):
    """XAttention's estimate written out: per stride×stride tile, the antidiagonal sum of the logits / (√D·S); a
    softmax over each row of tiles; per block pair the sum, averaged over the query block's rows of tiles."""
    n, d = q.shape
    groups = math.ceil(n / stride)
    qp = torch.nn.functional.pad(q.double(), (0, 0, 0, groups * stride - n))
    kp = torch.nn.functional.pad(k.double(), (0, 0, 0, groups * stride - n))
    logits = qp @ kp.T
    tiles = torch.zeros(groups, groups, dtype=torch.float64)
    for a in range(groups):
        for b in range(groups):
            tiles[a, b] = sum(logits[a * stride + i, b * stride + stride - 1 - i] for i in range(stride))
    probs = torch.softmax(tiles / (math.sqrt(d) * stride), dim=-1)
    q_block = [blk for blk, size in enumerate(q_sizes) for _ in range(size // stride)]
    k_block = [blk for blk, size in enumerate(k_sizes) for _ in range(math.ceil(size / stride))]
    q_block += [len(q_sizes) - 1] * (groups - len(q_block))
    scores = torch.zeros(len(q_sizes), len(k_sizes), dtype=torch.float64)
    for a in range(groups):
        for b in range(groups):
            scores[q_block[a], k_block[b]] += probs[a, b]
    counts = torch.bincount(torch.tensor(q_block), minlength=len(q_sizes)).double()
    return scores / counts.clamp_min(1).unsqueeze(-1)


@pytest.mark.parametrize("n, block, k_block, stride", [(32, 8, 8, 4), (30, 8, 16, 4), (24, 12, 6, 2), (16, 16, 4, 4)])
def test_antidiagonal_scores_match_definition(n, block, k_block, stride):
    gen = torch.Generator().manual_seed(n)
    q, k = torch.randn(1, 2, n, 8, generator=gen), torch.randn(1, 2, n, 8, generator=gen)
    layout = FixedBlockPermuter(block, k_block).permute(q, k)
    scores = AntidiagonalIdentifier(stride=stride, max_scores=7).score(q, k, layout)  # tiny chunks on purpose
    for head in range(2):
        expected = antidiagonal_by_loops(q[0, head], k[0, head], layout.q_sizes[0, 0].tolist(),
                                         layout.k_sizes[0, 0].tolist(), stride)
        torch.testing.assert_close(scores[0, head].double(), expected, rtol=1e-5, atol=1e-6)


def test_antidiagonal_rejects_blocks_off_the_stride():
    q = torch.randn(1, 1, 24, 4)
    layout = FixedBlockPermuter(6).permute(q, q)
    with pytest.raises(ValueError, match="multiple of stride=4"):
        AntidiagonalIdentifier(stride=4).score(q, q, layout)


# ----------------------------------------------------------------------------------------------------------------
# The oracle
# ----------------------------------------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 20), mq=st.integers(1, 5), mk=st.integers(1, 6), seed=st.integers(0, 2**16),
       mode=st.sampled_from(["random", "one", "singletons"]))
def test_exact_identifier_is_the_true_block_mass(ref, n, mq, mk, seed, mode):
    gen = torch.Generator().manual_seed(seed)
    layout = ref.random_layout(1, 2, n, mq, mk, mode, gen)
    q, k = torch.randn(1, 2, n, 4, generator=gen), torch.randn(1, 2, n, 4, generator=gen)
    q_p, k_p = gather_tokens(q, layout.q_order), gather_tokens(k, layout.kv_order)
    scores = ExactIdentifier(max_scores=5).score(q_p, k_p, layout)
    for head in range(2):
        probs = ref.dense_probs(q_p[0, head], k_p[0, head])
        q_block = ref.block_of_position(layout.q_sizes[0, head].tolist())
        k_block = ref.block_of_position(layout.k_sizes[0, head].tolist())
        expected = torch.zeros(mq, mk, dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                expected[q_block[i], k_block[j]] += probs[i, j]
        expected /= layout.q_sizes[0, head].clamp_min(1).double().unsqueeze(-1)
        torch.testing.assert_close(scores[0, head].double(), expected, rtol=1e-5, atol=1e-6)


def test_oracle_is_the_per_query_top_p(ref):
    workload = synthetic_video(frames=2, height=4, width=4, heads=2, head_dim=16, seed=4)
    plan = load_strategy("oracle").plan(workload.q, workload.k, workload.context())
    assert plan.layout.q_sizes.shape[-1] == plan.layout.k_sizes.shape[-1] == 32  # single queries, single keys
    for head in range(2):
        probs = ref.dense_probs(workload.q[0, head], workload.k[0, head])
        mask = ref.token_mask(plan.layout, plan.mask, 0, head)
        for row, kept in zip(probs, mask):
            ranked = row.sort(descending=True).values
            needed = int((ranked.cumsum(0) - ranked < 0.9).sum())  # the fewest keys reaching mass 0.9
            assert abs(int(kept.sum()) - needed) <= 1  # fp32 vs fp64 rounding at the boundary
            assert float(row[kept].sum()) >= 0.9 - 1e-5  # reaches p...
            assert float(row[kept].sum() - row[kept].min()) < 0.9 + 1e-5  # ...and no kept key is superfluous


def test_oracle_query_blocks_grow_only_when_the_pair_budget_needs_it():
    permuter = TokenKeysPermuter(max_pairs=1000)
    assert permuter.query_block_size(1, 1, 30) == 1
    for b, h, n in [(1, 2, 100), (2, 3, 77), (1, 1, 1000)]:
        size = permuter.query_block_size(b, h, n)
        assert b * h * math.ceil(n / size) * n <= 1000 or size == n
        assert size == 1 or b * h * math.ceil(n / (size - 1)) * n > 1000
    layout = permuter.permute(torch.randn(1, 2, 100, 4), torch.randn(1, 2, 100, 4))
    assert layout.q_sizes.shape[-1] * 100 * 2 <= 1000 and bool((layout.k_sizes == 1).all())


# ----------------------------------------------------------------------------------------------------------------
# Every built-in recipe, end to end through the kernel interface
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", builtin_recipes())
def test_builtin_recipe_runs_through_the_kernel(ref, name):
    workload = synthetic_video(frames=4, height=4, width=8, heads=2, head_dim=16, text_tokens=3, seed=7)
    strategy = load_strategy(name)
    ctx = workload.context()
    plan = strategy.plan(workload.q, workload.k, ctx)
    out = strategy(workload.q, workload.k, workload.v, ctx)
    density = plan.density
    assert bool(((density > 0) & (density <= 1)).all())
    for head in range(2):
        allowed = ref.token_mask(plan.layout, plan.mask, 0, head) if not plan.dense else torch.ones(131, 131).bool()
        expected = ref.masked_attention(workload.q[0, head], workload.k[0, head], workload.v[0, head], allowed)
        torch.testing.assert_close(out[0, head].double(), expected, rtol=1e-4, atol=1e-5)
        assert bool(allowed[-3:].all() and allowed[:, -3:].all())  # text tokens see and are seen by everything


def test_new_recipes_reuse_components():
    from sparseattn.config import load_recipe

    def name(spec):
        return spec if isinstance(spec, str) else spec["name"]

    recipes = {r: load_recipe(r)[0] for r in ("sparge", "vsa-free", "sta", "radial", "xattention", "svg2-turbo")}
    assert name(recipes["sparge"]["identifier"]) == name(recipes["vsa-free"]["identifier"]) == "centroid"
    assert name(recipes["sparge"]["permuter"]) == name(recipes["xattention"]["permuter"]) == "blocks"
    assert {name(recipes[r]["permuter"]) for r in ("vsa-free", "sta", "radial")} == {"tiles"}
    assert name(recipes["xattention"]["budget"]) == "top_p" and recipes["svg2-turbo"]["identifier"] == "centroid"


def test_position_methods_need_the_grid():
    workload = synthetic_video(frames=2, height=4, width=4, heads=1, head_dim=8)
    for name in ("sta", "radial", "svg1", "vsa-free"):
        with pytest.raises(ValueError, match="needs the video token grid"):
            load_strategy(name).plan(workload.q, workload.k)
    with pytest.raises(ConfigError, match="window"):
        load_strategy("sta", identifier={"name": "sliding_tiles", "window": [3, 3]})
