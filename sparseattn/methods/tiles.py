"""3D tiles of the video token grid: the layout of Sliding Tile Attention, VSA's cubes and Radial Attention's blocks.

Video tokens arrive frame-major (frame, row, column). The ``tiles`` permuter reorders them tile by tile so every
tile of ``tile_size`` = (t, h, w) tokens is contiguous; tiles at the far edges of the grid are smaller when the grid
is not a multiple of the tile (variable block sizes, no padding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from sparseattn.interfaces import Layout, Permuter
from sparseattn.registry import register

Grid = tuple[int, int, int]


@dataclass
class TileLayout(Layout):
    """A `Layout` whose blocks are the tiles of the video token grid, in tile-major order.

    grid: (frames, height, width) of the video tokens; tile: the (t, h, w) tile shape, each entry at most the grid's.
    Block i is the tile at ``tile_coordinates(tile_grid)[i]``. Position-based identifiers read these two fields.
    """

    grid: Grid = (1, 1, 1)
    tile: Grid = (1, 1, 1)

    @property
    def tile_grid(self) -> Grid:
        """Tiles along (frames, height, width)."""
        return tuple(math.ceil(g / t) for g, t in zip(self.grid, self.tile))


def grid_from_state(state: Optional[Mapping[str, Any]], tokens: int, who: str) -> Grid:
    """The video token grid the Strategy put in the permuter's state; a clear error when it is missing or wrong."""
    grid = state.get("grid") if state is not None else None
    if grid is None:
        raise ValueError(
            f"{who} needs the video token grid: call the strategy with an AttentionContext(grid=(frames, height, "
            "width)) (workloads carry their grid)"
        )
    if math.prod(grid) != tokens:
        raise ValueError(f"{who}: grid {tuple(grid)} has {math.prod(grid)} tokens but the video part has {tokens}")
    return tuple(int(g) for g in grid)


def parse_triple(value: Any, name: str, allow_zero: bool = False) -> Grid:
    """A (t, h, w) triple of positive ints from a list or tuple (0 = the whole axis, where allowed)."""
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{name} must be three ints (frames, height, width), got {value!r}")
    low = 0 if allow_zero else 1
    if min(value) < low:
        raise ValueError(f"{name} entries must be ≥ {low}{' (0 = whole axis)' if allow_zero else ''}, got {value!r}")
    return tuple(value)


def resolve_tile(tile: Grid, grid: Grid) -> Grid:
    """The tile shape on this grid: 0 means the whole axis, and no entry exceeds the grid."""
    return tuple(g if t == 0 else min(t, g) for t, g in zip(tile, grid))


def tile_order(grid: Grid, tile: Grid) -> tuple[Tensor, Tensor]:
    """(order, sizes) of the tile-major token order, as pure functions of the shapes.

    order [N]: position i of the tiled sequence holds frame-major token ``order[i]``; tiles are visited frame-tile,
    row-tile, column-tile, and inside a tile tokens keep their frame-major order. sizes [M]: tokens per tile.
    """
    frames, height, width = grid
    tt, th, tw = tile
    nt, nh, nw = (math.ceil(g / t) for g, t in zip(grid, tile))
    t, y, x = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    tile_id = ((t // tt) * nh + y // th) * nw + x // tw
    within = ((t % tt) * th + y % th) * tw + x % tw
    order = torch.argsort((tile_id * (tt * th * tw) + within).flatten())
    sizes = torch.bincount(tile_id.flatten(), minlength=nt * nh * nw)
    return order, sizes


def tile_coordinates(tile_grid: Grid) -> Tensor:
    """[M, 3] (frame-tile, row-tile, column-tile) of every tile in tile-major order."""
    nt, nh, nw = tile_grid
    t, y, x = torch.meshgrid(torch.arange(nt), torch.arange(nh), torch.arange(nw), indexing="ij")
    return torch.stack([t.flatten(), y.flatten(), x.flatten()], dim=-1)


def segment_means(x: Tensor, order: Optional[Tensor], sizes: Tensor) -> Tensor:
    """Float32 means [B, H, M, D] of consecutive segments of ``sizes`` tokens of x gathered by ``order``."""
    b, h, n, d = x.shape
    gathered = x.float() if order is None else x.float()[:, :, order]
    segment = torch.repeat_interleave(torch.arange(len(sizes), device=x.device), sizes.to(x.device), output_size=n)
    sums = torch.zeros(b, h, len(sizes), d, device=x.device).index_add_(2, segment, gathered)
    return sums / sizes.to(x.device).clamp_min(1).view(1, 1, -1, 1)


@register("permuter", "tiles")
@dataclass
class TilePermuter(Permuter):
    """Tokens reordered into 3D tiles of ``tile_size`` = (frames, rows, columns); blocks are tiles, centroids their
    means. ``0`` in ``tile_size`` spans the whole axis, so ``[1, 4, 0]`` cuts each frame into 4-row strips, which
    keeps the natural frame-major order (no gather at all). Needs the token grid (``AttentionContext.grid``).

    STA tiles the latent video (6×8×8 on HunyuanVideo); VSA's coarse stage mean-pools 4×4×4 cubes.
    """

    tile_size: Any = (4, 4, 4)

    def __post_init__(self) -> None:
        self.tile_size = parse_triple(self.tile_size, "tile_size", allow_zero=True)

    def permute(self, q: Tensor, k: Tensor, state: Optional[dict] = None) -> TileLayout:
        b, h, n, _ = q.shape
        grid = grid_from_state(state, n, "permuter 'tiles'")
        tile = resolve_tile(self.tile_size, grid)
        order, sizes = tile_order(grid, tile)
        natural = bool(torch.equal(order, torch.arange(n)))
        order = None if natural else order.to(q.device)
        sizes = sizes.to(q.device)
        full_order = None if order is None else order.expand(b, h, n).contiguous()
        block_sizes = sizes.expand(b, h, -1).clone()
        return TileLayout(
            full_order, full_order, block_sizes, block_sizes.clone(),
            segment_means(q, order, sizes), segment_means(k, order, sizes), grid=grid, tile=tile,
        )


def require_tile_layout(layout: Layout, who: str) -> TileLayout:
    """The layout as a `TileLayout`, or a clear error naming the permuter to use."""
    if not isinstance(layout, TileLayout):
        raise ValueError(f"{who} needs blocks that are tiles of the token grid: use permuter 'tiles'")
    return layout
