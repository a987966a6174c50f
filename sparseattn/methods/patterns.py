"""Static position patterns (Sliding Tile Attention, Radial Attention, SVG1's band) and the budget that keeps them.

Each pattern is a pure function of shapes and parameters that returns a block mask; the identifiers below wrap them
as scores of 1 (in the pattern) or 0, and the ``pattern`` budget keeps exactly the scored pairs. A block pair is in a
pattern when *any* of its token pairs is (the smallest block mask that computes every pair the pattern asks for).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from sparseattn.interfaces import BlockMask, BudgetController, Layout, TokenIdentifier
from sparseattn.registry import register

from .tiles import Grid, parse_triple, require_tile_layout, tile_coordinates


@register("budget", "pattern")
@dataclass
class PatternBudget(BudgetController):
    """Keeps every block pair with a positive score (the pattern an identifier marked); every query block keeps at
    least its best-scored key block, so no query is left without keys."""

    def select(self, scores: Tensor, layout: Layout) -> BlockMask:
        selected = scores > 0
        return BlockMask(selected.scatter_(-1, scores.argmax(dim=-1, keepdim=True), True))


def broadcast_pattern(mask: Tensor, like: Tensor) -> Tensor:
    """A [Mq, Mk] pattern as float scores [B, H, Mq, Mk] for the batch and heads of ``like``."""
    b, h = like.shape[:2]
    return mask.to(device=like.device, dtype=torch.float32).expand(b, h, *mask.shape).clone()


# ------------------------------------------------------------------------------------------------------------------
# Sliding Tile Attention
# ------------------------------------------------------------------------------------------------------------------
def sliding_tile_mask(tile_grid: Grid, window: Grid) -> Tensor:
    """[M, M] bool over tiles in tile-major order: query tile i attends key tile j when j lies in the window of
    ``window`` tiles centred on i, the centre clamped so the window stays inside the grid (STA's rule: every query
    tile sees the same number of tiles). A window at least as large as an axis covers the whole axis."""
    coords = tile_coordinates(tile_grid)
    sizes = torch.tensor(tile_grid)
    half = torch.tensor(window) // 2
    whole_axis = torch.tensor(window) >= sizes
    center = torch.minimum(torch.maximum(coords, half), sizes - 1 - half)
    near = (center.unsqueeze(1) - coords.unsqueeze(0)).abs() <= half
    return (near | whole_axis).all(dim=-1)


@register("identifier", "sliding_tiles")
@dataclass
class SlidingTileIdentifier(TokenIdentifier):
    """Sliding Tile Attention (arXiv 2502.04507): each query tile attends the ``window`` = (frames, rows, columns)
    tiles around it (odd sizes; the window slides inside the grid at its edges). Needs permuter ``tiles``."""

    reads_tokens: ClassVar[bool] = False  # reads the layout only (q: shape and device)

    window: Any = (3, 3, 3)

    def __post_init__(self) -> None:
        self.window = parse_triple(self.window, "window")
        if any(w % 2 == 0 for w in self.window):
            raise ValueError(f"window sizes must be odd (a window centred on its query tile), got {self.window}")

    def score(self, q: Tensor, k: Tensor, layout: Layout) -> Tensor:
        tiles = require_tile_layout(layout, "identifier 'sliding_tiles'")
        return broadcast_pattern(sliding_tile_mask(tiles.tile_grid, self.window), q)


# ------------------------------------------------------------------------------------------------------------------
# Radial Attention
# ------------------------------------------------------------------------------------------------------------------
def radial_window(distance: int, frame_tokens: int, decay: float, min_window: int) -> tuple[float, bool]:
    """(spatial window in tokens, whether the frame pair is kept) for two frames ``distance`` apart.

    The same frame sees all of itself; at distance d ≥ 1 the window is decay·S / 2^⌊log2 d⌋ (S tokens per frame),
    so it halves each time the distance doubles. A window below ``min_window`` is raised to it, and then only every
    ⌊min_window / window⌋-th distance keeps the frame pair, which keeps the computed area decaying.
    """
    if distance == 0:
        return float(frame_tokens), True
    window = decay * frame_tokens / 2 ** (distance.bit_length() - 1)
    if window >= min_window:
        return window, True
    return float(min_window), distance % int(min_window // window) == 0


def radial_strip_mask(grid: Grid, strip_rows: int, decay: float, min_window: int, sink_frames: int) -> Tensor:
    """[M, M] bool over the strips of ``strip_rows`` full rows of each frame, in frame-major order.

    Token (f, p) (frame f, raster index p inside the frame) attends token (g, r) when g < ``sink_frames`` (attention
    sink), or when the frame pair at distance |f − g| is kept and |p − r| ≤ its `radial_window`. A strip pair is
    selected when any of its token pairs is.
    """
    frames, height, width = grid
    strips = math.ceil(height / strip_rows)
    frame = torch.arange(frames).repeat_interleave(strips)
    start = (torch.arange(strips) * strip_rows).repeat(frames) * width
    stop = torch.clamp((torch.arange(strips) + 1) * strip_rows, max=height).repeat(frames) * width
    gap = torch.clamp(torch.maximum(start.unsqueeze(0) - stop.unsqueeze(1), start.unsqueeze(1) - stop.unsqueeze(0)) + 1,
                      min=0)  # smallest |p − r| between the two strips' raster ranges
    distance = (frame.unsqueeze(1) - frame.unsqueeze(0)).abs()
    window = torch.zeros(frames)
    kept = torch.zeros(frames, dtype=torch.bool)
    for d in range(frames):
        window[d], kept[d] = radial_window(d, height * width, decay, min_window)
    inside = kept[distance] & (gap <= window[distance])
    return inside | (frame < sink_frames).unsqueeze(0)


@register("identifier", "radial")
@dataclass
class RadialIdentifier(TokenIdentifier):
    """Radial Attention (arXiv 2506.19852): a static mask whose spatial window halves as the temporal distance
    doubles (attention energy decays with distance), plus attention sinks on the first ``sink_frames`` frames.

    ``decay`` scales every window (the budget knob: smaller = sparser); ``min_window`` (tokens) is the smallest
    window (the published code uses its block size) below which frame pairs are thinned instead. Needs permuter
    ``tiles`` with strips of whole rows of one frame, ``tile_size: [1, rows, 0]``.
    """

    reads_tokens: ClassVar[bool] = False  # reads the layout only (q: shape and device)

    decay: float = 1.0
    min_window: int = 64
    sink_frames: int = 1

    def __post_init__(self) -> None:
        if not self.decay > 0:
            raise ValueError(f"decay must be > 0, got {self.decay}")
        if self.min_window < 1 or self.sink_frames < 0:
            raise ValueError(f"min_window must be ≥ 1 and sink_frames ≥ 0, got {self.min_window}, {self.sink_frames}")

    def score(self, q: Tensor, k: Tensor, layout: Layout) -> Tensor:
        tiles = require_tile_layout(layout, "identifier 'radial'")
        if tiles.tile[0] != 1 or tiles.tile[2] != tiles.grid[2]:
            raise ValueError(
                f"identifier 'radial' needs strips of whole rows inside one frame, got tiles {tiles.tile} on grid "
                f"{tiles.grid}; use permuter 'tiles' with tile_size [1, rows, 0]"
            )
        mask = radial_strip_mask(tiles.grid, tiles.tile[1], self.decay, self.min_window, self.sink_frames)
        return broadcast_pattern(mask, q)


# ------------------------------------------------------------------------------------------------------------------
# SVG1's band
# ------------------------------------------------------------------------------------------------------------------
def band_width(tokens: int, density: float) -> float:
    """Half-width w of the band |i − j| < w whose area is ``density`` of the N×N square: N·(1 − √(1 − density))
    (SVG1's conversion of a target density into a band width)."""
    return tokens * (1.0 - math.sqrt(1.0 - density))


def band_block_mask(q_sizes: Tensor, k_sizes: Tensor, width: float) -> Tensor:
    """[..., Mq, Mk] bool: blocks (consecutive in the permuted order) holding a token pair with |i − j| < width;
    empty blocks are never selected."""
    q_end = q_sizes.cumsum(-1)
    k_end = k_sizes.cumsum(-1)
    q_start, k_start = q_end - q_sizes, k_end - k_sizes
    gap = torch.maximum(k_start.unsqueeze(-2) - q_end.unsqueeze(-1), q_start.unsqueeze(-1) - k_end.unsqueeze(-2)) + 1
    nonempty = (q_sizes > 0).unsqueeze(-1) & (k_sizes > 0).unsqueeze(-2)
    return (gap.clamp_min(0) < width) & nonempty


@register("identifier", "band")
@dataclass
class BandIdentifier(TokenIdentifier):
    """A band |i − j| < w around the diagonal of the *permuted* order, sized to cover ``density`` of the N×N pairs.

    With permuter ``svg1`` this is SVG1's mask: in frame-major order the band is a window of nearby frames (spatial
    heads); in token-major order it is the same positions across all frames (temporal heads).
    """

    reads_tokens: ClassVar[bool] = False  # reads the layout only (q: shape and device)

    density: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")

    def score(self, q: Tensor, k: Tensor, layout: Layout) -> Tensor:
        width = band_width(layout.num_tokens, self.density)
        return band_block_mask(layout.q_sizes, layout.k_sizes, width).float()


__all__ = [
    "BandIdentifier",
    "PatternBudget",
    "RadialIdentifier",
    "SlidingTileIdentifier",
    "band_block_mask",
    "band_width",
    "radial_strip_mask",
    "radial_window",
    "sliding_tile_mask",
]
