"""Attention workloads: the capture file format, its validating loader, and a synthetic video-like generator.

Capture format (safetensors): tensors ``q``, ``k``, ``v`` of shape [B, H, N, D] — video tokens frame-major (frame,
then row, then column), text tokens after them — and string metadata ``grid`` = "T,H,W", ``text_tokens`` = count,
``layer`` = layer index (or "synthetic"), ``source`` = where it came from. Other metadata keys are kept.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from .context import AttentionContext
from .validation import check_qkv

REQUIRED_METADATA = ("grid", "text_tokens", "layer", "source")


@dataclass
class Workload:
    """q, k, v [B, H, N, D] with the token grid they came from."""

    name: str
    q: Tensor
    k: Tensor
    v: Tensor
    grid: tuple[int, int, int]
    text_tokens: int = 0
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_qkv(self.q, self.k, self.v)
        self.context().check_tokens(self.q.shape[2])

    def context(self) -> AttentionContext:
        """A fresh context (empty cache) describing this workload's tokens."""
        return AttentionContext(grid=self.grid, text_tokens=self.text_tokens)

    def to(self, device: str | torch.device, dtype: Optional[torch.dtype] = None) -> "Workload":
        """A copy with q, k, v on ``device`` (and in ``dtype`` when given)."""
        move = lambda t: t.to(device=device, dtype=dtype or t.dtype)  # noqa: E731
        return Workload(self.name, move(self.q), move(self.k), move(self.v), self.grid, self.text_tokens, self.metadata)


def save_capture(path: str | os.PathLike, workload: Workload) -> None:
    """Write a workload in the capture format."""
    from safetensors.torch import save_file

    metadata = dict(workload.metadata)
    metadata.update(
        grid=",".join(str(g) for g in workload.grid),
        text_tokens=str(workload.text_tokens),
        layer=str(metadata.get("layer", "unknown")),
        source=str(metadata.get("source", workload.name)),
    )
    tensors = {name: getattr(workload, name).contiguous().cpu() for name in ("q", "k", "v")}
    save_file(tensors, os.fspath(path), metadata=metadata)


def load_capture(path: str | os.PathLike) -> Workload:
    """Read and validate a capture file; every problem is a ValueError naming the file and the field."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"workload file not found: {path}")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            missing = [name for name in ("q", "k", "v") if name not in handle.keys()]
            if missing:
                raise ValueError(f"{path}: missing tensor(s) {', '.join(missing)}; a capture holds q, k, v [B, H, N, D]")
            q, k, v = (handle.get_tensor(name) for name in ("q", "k", "v"))
    except ValueError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors capture file: {exc}") from exc
    absent = [key for key in REQUIRED_METADATA if key not in metadata]
    if absent:
        raise ValueError(f"{path}: missing metadata {', '.join(absent)} (required: {', '.join(REQUIRED_METADATA)})")
    try:
        grid = tuple(int(part) for part in metadata["grid"].split(","))
        text_tokens = int(metadata["text_tokens"])
    except ValueError as exc:
        raise ValueError(f"{path}: metadata grid must be 'T,H,W' and text_tokens an integer: {exc}") from None
    if len(grid) != 3:
        raise ValueError(f"{path}: metadata grid must have three entries 'T,H,W', got '{metadata['grid']}'")
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        return Workload(name, q, k, v, grid, text_tokens, metadata)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def synthetic_video(
    frames: int = 8,
    height: int = 16,
    width: int = 16,
    heads: int = 4,
    head_dim: int = 64,
    objects: int = 12,
    text_tokens: int = 0,
    batch: int = 1,
    noise: float = 0.35,
    sharpness: float = 1.6,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Workload:
    """A video-like attention workload with semantic structure that is not contiguous in token order.

    Each of ``objects`` ellipses moves on a straight line across the frames (plus a background); every token carries
    its object's feature prototype, a smooth positional code of (frame, row, column), and noise. Per head, q and k
    are random projections of those features, scaled by ``sharpness`` so attention concentrates on the same object
    and on nearby positions — what makes semantic clustering beat fixed blocks.
    """
    gen = torch.Generator().manual_seed(seed)
    features = 2 * head_dim
    t, y, x = torch.meshgrid(
        torch.linspace(0, 1, frames), torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij"
    )
    prototypes = torch.randn(objects + 1, features, generator=gen)
    start = torch.rand(objects, 2, generator=gen)
    velocity = (torch.rand(objects, 2, generator=gen) - 0.5) * 0.6
    radius = 0.08 + 0.17 * torch.rand(objects, 2, generator=gen)
    label = torch.zeros(frames, height, width, dtype=torch.long)  # 0 = background
    for obj in range(objects):  # later objects are drawn in front of earlier ones
        cy = start[obj, 0] + velocity[obj, 0] * t
        cx = start[obj, 1] + velocity[obj, 1] * t
        inside = ((y - cy) / radius[obj, 0]) ** 2 + ((x - cx) / radius[obj, 1]) ** 2 <= 1.0
        label[inside] = obj + 1
    freqs = torch.randn(3, features // 2, generator=gen) * 3.0
    angle = torch.stack([t, y, x], dim=-1) @ freqs
    position = torch.cat([angle.sin(), angle.cos()], dim=-1) * 0.6
    tokens = prototypes[label] + position
    tokens = tokens.reshape(-1, features)
    n_video = tokens.shape[0]
    if text_tokens:
        tokens = torch.cat([tokens, torch.randn(text_tokens, features, generator=gen)], dim=0)
    n = tokens.shape[0]
    tokens = tokens.expand(batch, n, features) + noise * torch.randn(batch, n, features, generator=gen)
    scale = sharpness * head_dim**0.25 / math.sqrt(features)
    proj_q = torch.randn(heads, features, head_dim, generator=gen) * scale
    proj_k = proj_q + 0.5 * scale * torch.randn(heads, features, head_dim, generator=gen)
    proj_v = torch.randn(heads, features, head_dim, generator=gen) / math.sqrt(features)
    q = torch.einsum("bnf,hfd->bhnd", tokens, proj_q)
    k = torch.einsum("bnf,hfd->bhnd", tokens, proj_k)
    v = torch.einsum("bnf,hfd->bhnd", tokens, proj_v)
    metadata = {
        "source": f"sparseattn.workloads.synthetic_video(seed={seed}, objects={objects})",
        "layer": "synthetic",
        "video_tokens": str(n_video),
    }
    return Workload(
        f"synthetic-{frames}x{height}x{width}", q.to(dtype), k.to(dtype), v.to(dtype), (frames, height, width),
        text_tokens, metadata,
    )


DEFAULT_WORKLOAD = "default.safetensors"


def default_workload() -> Workload:
    """The workload shipped inside the package (``sparseattn/data``), used by ``sparseattn compare``."""
    from importlib import resources

    path = resources.files("sparseattn") / "data" / DEFAULT_WORKLOAD
    with resources.as_file(path) as real_path:
        return load_capture(real_path)
