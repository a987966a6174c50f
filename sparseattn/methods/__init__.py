"""Competing sparse-attention methods, assembled from registered components (see docs/strategies.md).

Importing this package registers: permuters ``tiles`` (3D tiles: STA, VSA, Radial's strips), ``svg1`` (SVG1's
per-head spatial/temporal layout) and ``token_keys`` (the oracle's layout); identifiers ``sliding_tiles`` (STA),
``radial``, ``band`` (SVG1), ``antidiagonal`` (XAttention) and ``exact`` (true attention mass); budget ``pattern``
(keep a static pattern). SpargeAttn and VSA's coarse stage need no new code: ``blocks``/``tiles`` + ``centroid``.
"""
from . import oracle, patterns, svg1, tiles, xattention
from .tiles import TileLayout

__all__ = ["TileLayout", "oracle", "patterns", "svg1", "tiles", "xattention"]
