"""Where a call sits in a generation (layer, step, token grid) and the per-layer state the caller owns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


class StateCache:
    """Per-layer state of a strategy (cached k-means centroids), keyed by layer index.

    Owned by the caller and passed in through `AttentionContext`; call `reset()` between generations so one video's
    clusters never warm-start the next one.
    """

    def __init__(self) -> None:
        self._layers: dict[int, dict] = {}

    def for_layer(self, layer: int) -> dict:
        """The mutable state dict of ``layer`` (created empty on first use)."""
        return self._layers.setdefault(layer, {})

    def reset(self) -> None:
        """Forget every layer's state (call between generations)."""
        self._layers.clear()

    def __len__(self) -> int:
        return len(self._layers)


@dataclass
class AttentionContext:
    """Position of one attention call in a generation, plus the state cache.

    grid: the video token grid (frames, height, width) of the first ``T·H·W`` tokens (frame-major order);
    text_tokens: extra tokens after the video tokens (HunyuanVideo's text), never clustered.
    """

    layer: int = 0
    num_layers: int = 1
    step: int = 0
    num_steps: int = 1
    grid: Optional[tuple[int, int, int]] = None
    text_tokens: int = 0
    cache: StateCache = field(default_factory=StateCache)

    def __post_init__(self) -> None:
        if not 0 <= self.layer < self.num_layers:
            raise ValueError(f"layer must be in [0, num_layers={self.num_layers}), got {self.layer}")
        if not 0 <= self.step < self.num_steps:
            raise ValueError(f"step must be in [0, num_steps={self.num_steps}), got {self.step}")
        if self.text_tokens < 0:
            raise ValueError(f"text_tokens must be ≥ 0, got {self.text_tokens}")
        if self.grid is not None:
            self.grid = tuple(int(g) for g in self.grid)
            if len(self.grid) != 3 or min(self.grid) < 1:
                raise ValueError(f"grid must be three positive ints (frames, height, width), got {self.grid}")

    def layer_state(self) -> dict:
        """The state dict of this call's layer in the cache."""
        return self.cache.for_layer(self.layer)

    def check_tokens(self, n: int) -> None:
        """Raise ValueError unless N matches the grid and text tokens."""
        if self.text_tokens >= n:
            raise ValueError(f"text_tokens ({self.text_tokens}) must be smaller than the sequence length ({n})")
        if self.grid is not None:
            video = self.grid[0] * self.grid[1] * self.grid[2]
            if video + self.text_tokens != n:
                raise ValueError(
                    f"grid {self.grid} has {video} video tokens, plus {self.text_tokens} text tokens = "
                    f"{video + self.text_tokens}, but the sequence has {n} tokens"
                )
