"""See what a sparse strategy keeps and drops: TensorBoard images and scalars for chosen (layer, head, step) calls.

Use it inside any run::

    from sparseattn.inspect import Inspector, Selection, attend

    with Inspector("runs/svg2", Selection(layers=("middle",), heads=(0, 3), steps=(0, "middle", -1))) as inspector:
        out = attend(strategy, q, k, v, ctx, inspector)   # = strategy(q, k, v, ctx), plus logging for chosen calls

``attend(..., inspector=None)`` is exactly ``strategy(q, k, v, ctx)``: with no inspector, or for a call the selection
does not pick, nothing is computed, imported or written.

For every picked (layer, step) call the inspector logs, at TensorBoard step = denoising step:

- scalars ``density/layer{L}/head{H}``, ``recall/...``, ``rel_l2/...`` (each head, averaged over the batch; plus
  ``.../mean``), and ``time_ms/layer{L}/{stage}`` for the stages cluster, score, select, permute, plan, kernel,
  unpermute and total (measured when the inspector runs the strategy itself, in `Inspector.attend`);
- for each picked head: images ``attention/layer{L}/head{H}/original`` and ``.../permuted`` — three panels side by
  side: the block-averaged true attention map (log scale), the same map in grey with the selected blocks tinted
  cyan, and the attention mass the mask misses (same colour scale as the first panel); images
  ``clusters/layer{L}/head{H}/q`` and ``.../k`` — a grid of video frames coloured by cluster id; and histograms
  ``cluster_sizes/layer{L}/head{H}/q`` and ``.../k``.

Maps are pooled to at most ``resolution``² pixels by accumulating chunks of query rows, so no N×N tensor exists.
"""
from __future__ import annotations

import copy
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from . import metrics
from .context import AttentionContext, StateCache
from .strategy import AttentionPlan, Strategy, dense_attention
from .workloads import Workload

SelectionItems = Union[str, int, Sequence[Union[int, str]]]
STAGES = ("cluster", "score", "select", "permute", "plan", "kernel", "unpermute", "total")


# ------------------------------------------------------------------------------------------------------------------
# Which calls to log
# ------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """Which calls and heads an `Inspector` logs.

    ``layers`` and ``steps`` pick the calls that get scalars (every head) and images (the picked ``heads`` only);
    each is ``"all"`` or a sequence of items, where an item is an index (negative counts from the end) or
    ``"middle"`` (``count // 2``). ``heads`` is ``"all"`` or a sequence of head indices (may be empty: scalars only).
    ``batch`` is the batch entry drawn in images. Defaults: the middle layer, the first, middle and last steps, head 0.
    """

    layers: SelectionItems = ("middle",)
    steps: SelectionItems = (0, "middle", -1)
    heads: SelectionItems = (0,)
    batch: int = 0

    def __post_init__(self) -> None:
        for name in ("layers", "steps", "heads"):
            value = getattr(self, name)
            if value != "all":
                value = (value,) if isinstance(value, (int, str)) else tuple(value)
                words = () if name == "heads" else ("middle",)
                for item in value:
                    if not (isinstance(item, int) and not isinstance(item, bool) or item in words):
                        allowed = "head indices" if name == "heads" else "indices or 'middle'"
                        raise ValueError(f"Selection.{name}: {item!r} is not allowed; use 'all' or a list of {allowed}")
            object.__setattr__(self, name, value)
        if self.batch < 0:
            raise ValueError(f"Selection.batch must be ≥ 0, got {self.batch}")

    @classmethod
    def parse(cls, spec: str) -> "Selection":
        """Parse ``"layers=all;heads=0,1;steps=0,middle,-1;batch=0"`` (any subset of the keys; defaults elsewhere)."""
        fields: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in ("layers", "steps", "heads", "batch"):
                raise ValueError(
                    f"bad selection '{part}' in '{spec}'; write key=value pairs separated by ';' with keys "
                    "layers, steps, heads, batch (e.g. 'layers=all;heads=0,1;steps=0,-1')"
                )
            value = value.strip()
            try:
                if key == "batch":
                    fields[key] = int(value)
                elif value == "all":
                    fields[key] = "all"
                else:
                    fields[key] = tuple(item if item == "middle" else int(item) for item in
                                        (v.strip() for v in value.split(",")) if item)
            except ValueError:
                raise ValueError(f"bad value '{value}' for '{key}' in selection '{spec}': use integers, 'middle' "
                                 "or 'all'") from None
        return cls(**fields)

    def picks(self, layer: int, num_layers: int, step: int, num_steps: int) -> bool:
        """Whether the call at (layer, step) is logged."""
        return layer in _resolve(self.layers, num_layers, "layers") and step in _resolve(self.steps, num_steps, "steps")

    def image_heads(self, q: Tensor) -> list[int]:
        """The heads drawn in images for attention inputs q [B, H, N, D]; checks that ``batch`` and ``heads`` fit."""
        if self.batch >= q.shape[0]:
            raise ValueError(f"Selection.batch is {self.batch} but the attention batch has {q.shape[0]} entries")
        return sorted(_resolve(self.heads, q.shape[1], "heads"))


def _resolve(items, count: int, name: str) -> set[int]:
    if items == "all":
        return set(range(count))
    picked = set()
    for item in items:
        index = count // 2 if item == "middle" else item
        if not -count <= index < count:
            raise ValueError(f"Selection.{name} picks {item}, but there are only {count} {name} (indices 0..{count - 1}"
                             f" or -{count}..-1)")
        picked.add(index % count)
    return picked


# ------------------------------------------------------------------------------------------------------------------
# The inspector
# ------------------------------------------------------------------------------------------------------------------
class Inspector:
    """Writes TensorBoard summaries of the calls its `Selection` picks (see the module docstring for the tags).

    The event writer (and the tensorboard import) is created on the first logged call, so an inspector that never
    logs costs nothing. Only the first call of each (layer, step) is logged: with classifier-free guidance run as two
    passes, the second pass of a step is skipped. ``resolution`` is the largest side of an attention map in pixels;
    ``max_frames`` the most video frames drawn per cluster image; ``max_scores`` the most attention scores per chunk
    of query rows while computing maps and recall (fp32; the maps hold about four such buffers: 256 MiB by default).
    """

    def __init__(self, logdir: Union[str, os.PathLike], select: Optional[Selection] = None, resolution: int = 128,
                 max_frames: int = 8, max_scores: int = 1 << 24) -> None:
        if resolution < 2 or max_frames < 1 or max_scores < 1:
            raise ValueError(f"resolution must be ≥ 2, max_frames and max_scores ≥ 1; got {resolution}, "
                             f"{max_frames}, {max_scores}")
        self.logdir = os.fspath(logdir)
        self.select = select or Selection()
        self.resolution = resolution
        self.max_frames = max_frames
        self.max_scores = max_scores
        self._writer = None
        self._logged: set[tuple[int, int]] = set()
        self._described: set[str] = set()

    # ---------------------------------------------------------------------------------------------------------------
    def wants(self, ctx: Optional[AttentionContext]) -> bool:
        """Whether a call at ``ctx`` will be logged (no ctx = layer 0 of 1, step 0 of 1)."""
        ctx = ctx or AttentionContext()
        return (ctx.layer, ctx.step) not in self._logged and self.select.picks(
            ctx.layer, ctx.num_layers, ctx.step, ctx.num_steps
        )

    def attend(self, strategy: Strategy, q: Tensor, k: Tensor, v: Tensor, ctx: Optional[AttentionContext] = None,
               reference: Optional[Tensor] = None) -> Tensor:
        """``strategy(q, k, v, ctx)``, timing each stage and logging the call when the selection picks it.

        ``reference`` is the dense attention output when the caller already has it (computed here otherwise).
        """
        if not self.wants(ctx):
            return strategy(q, k, v, ctx)
        stage_ms: dict[str, float] = {}
        timed = _timed_strategy(strategy, stage_ms, q.device)
        with _timer(stage_ms, "total", q.device):
            plan = timed.plan(q, k, ctx)
            if plan.dense:
                with _timer(stage_ms, "kernel", q.device):
                    out = dense_attention(q, k, v)
            else:
                out = timed.attend(q, k, v, plan)
        if strategy.name not in self._described:
            self._described.add(strategy.name)
            self.writer().add_text("strategy", f"`{strategy.name}`: {strategy.description}\n\n    {strategy!r}")
        self.log_call(q, k, v, plan, ctx, out=out, reference=reference, stage_ms=stage_ms)
        return out

    def log_call(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan, ctx: Optional[AttentionContext] = None,
                 out: Optional[Tensor] = None, reference: Optional[Tensor] = None,
                 stage_ms: Optional[dict[str, float]] = None) -> None:
        """Log a plan made on q, k (original order) if the selection picks ``ctx``.

        ``out`` (the strategy's output) enables the relative-error scalars; ``stage_ms`` adds stage times.
        """
        if not self.wants(ctx):
            return
        ctx = ctx or AttentionContext()
        image_heads = self.select.image_heads(q)
        self._logged.add((ctx.layer, ctx.step))
        writer, layer, step = self.writer(), ctx.layer, ctx.step
        heads = q.shape[1]
        per_head = {
            "density": plan.density.mean(0),
            "recall": metrics.attention_recall(q, k, plan, self.max_scores).mean(0),
        }
        if out is not None:
            reference = dense_attention(q, k, v) if reference is None else reference
            per_head["rel_l2"] = torch.tensor([metrics.relative_l2(out[:, h], reference[:, h]) for h in range(heads)])
        for metric, values in per_head.items():
            for head in range(heads):
                writer.add_scalar(f"{metric}/layer{layer}/head{head}", float(values[head]), step)
            writer.add_scalar(f"{metric}/layer{layer}/mean", float(values.mean()), step)
        for stage, ms in (stage_ms or {}).items():
            writer.add_scalar(f"time_ms/layer{layer}/{stage}", ms, step)

        batch, layout = self.select.batch, plan.layout
        blocks = {"q": layout.q_block_of_token(), "k": layout.k_block_of_token()} if image_heads else {}
        for head in image_heads:
            where = f"layer{layer}/head{head}"
            maps = attention_maps(q, k, plan, batch, head, self.resolution, self.max_scores)
            for order, order_maps in maps.items():
                writer.add_image(f"attention/{where}/{order}", render_maps(order_maps), step, dataformats="HWC")
            if plan.dense:  # one block holding every token: nothing to show about clusters
                continue
            for side, sizes in (("q", layout.q_sizes), ("k", layout.k_sizes)):
                writer.add_histogram(f"cluster_sizes/{where}/{side}", sizes[batch, head].cpu().numpy(), step)
            if ctx.grid is not None:
                video = ctx.grid[0] * ctx.grid[1] * ctx.grid[2]
                for side, ids in blocks.items():
                    frames = render_cluster_frames(ids[batch, head, :video], ctx.grid, self.max_frames)
                    writer.add_image(f"clusters/{where}/{side}", frames, step, dataformats="HWC")

    # ---------------------------------------------------------------------------------------------------------------
    def writer(self):
        """The TensorBoard `SummaryWriter` of ``logdir`` (created on first use)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.logdir)
        return self._writer

    def close(self) -> None:
        """Flush and close the event file (a later logged call opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "Inspector":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def attend(strategy: Strategy, q: Tensor, k: Tensor, v: Tensor, ctx: Optional[AttentionContext] = None,
           inspector: Optional[Inspector] = None) -> Tensor:
    """``strategy(q, k, v, ctx)``, logged by ``inspector`` when it picks this call; the hook for model integrations."""
    if inspector is None or not inspector.wants(ctx):
        return strategy(q, k, v, ctx)
    return inspector.attend(strategy, q, k, v, ctx)


def log_comparison(logdir: Union[str, os.PathLike], strategies: Sequence[Strategy], workloads: Sequence[Workload],
                   select: Optional[Selection] = None, progress: bool = True) -> list[str]:
    """What ``sparseattn compare --logdir`` logs: per workload and strategy, one TensorBoard run
    ``logdir/<workload>/<strategy>`` holding two calls on a fresh cache: step 0 (cold, as in the comparison table)
    and step 1 (warm-started from step 0's centroids, as the next denoising step would be). Returns the run folders.
    """
    from tqdm import tqdm

    runs = []
    with tqdm(total=len(strategies) * len(workloads), disable=not progress, desc="inspect", unit="run") as bar:
        for workload in workloads:
            reference = dense_attention(workload.q, workload.k, workload.v)
            for strategy in strategies:
                bar.set_postfix_str(f"{strategy.name} on {workload.name}")
                run = os.path.join(os.fspath(logdir), _safe_name(workload.name), _safe_name(strategy.name))
                cache = StateCache()
                with Inspector(run, select) as inspector:
                    for step in (0, 1):
                        ctx = AttentionContext(step=step, num_steps=2, grid=workload.grid,
                                               text_tokens=workload.text_tokens, cache=cache)
                        inspector.attend(strategy, workload.q, workload.k, workload.v, ctx, reference=reference)
                runs.append(run)
                bar.update()
    return runs


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


# ------------------------------------------------------------------------------------------------------------------
# Stage timing: a shallow copy of the strategy whose components time their main methods
# ------------------------------------------------------------------------------------------------------------------
class _Timed:
    """Stands in for a component and adds the time of the listed methods to ``stage_ms[stage]``."""

    def __init__(self, component: Any, stages: dict[str, str], stage_ms: dict[str, float], device: torch.device):
        self._component, self._stages, self._stage_ms, self._device = component, stages, stage_ms, device

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._component, name)
        if name not in self._stages:
            return attribute

        def timed(*args, **kwargs):
            with _timer(self._stage_ms, self._stages[name], self._device):
                return attribute(*args, **kwargs)

        return timed


def _timed_strategy(strategy: Strategy, stage_ms: dict[str, float], device: torch.device) -> Strategy:
    timed = copy.copy(strategy)  # the caller's strategy is left untouched
    for attribute, stages in (("permuter", {"permute": "cluster"}), ("identifier", {"score": "score"}),
                              ("budget", {"select": "select"}),
                              ("kernel", {"permute": "permute", "plan": "plan", "run": "kernel",
                                          "unpermute": "unpermute"})):
        component = getattr(strategy, attribute)
        if component is not None:
            setattr(timed, attribute, _Timed(component, stages, stage_ms, device))
    return timed


@contextmanager
def _timer(stage_ms: dict[str, float], stage: str, device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stage_ms[stage] = stage_ms.get(stage, 0.0) + (time.perf_counter() - start) * 1e3


# ------------------------------------------------------------------------------------------------------------------
# Attention maps, pooled without an N×N tensor
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class AttentionMaps:
    """One (batch, head)'s attention pooled to an R×R grid of token ranges (rows = queries, columns = keys).

    attention: mean softmax probability of the (query, key) pairs in each cell; missed: the same mean over only
    the pairs the mask does not select (attention · (1 − mask)); selected: fraction of each cell's pairs the mask
    selects. All float32 [R, R] on the CPU.
    """

    attention: Tensor
    missed: Tensor
    selected: Tensor


def attention_maps(q: Tensor, k: Tensor, plan: AttentionPlan, batch: int = 0, head: int = 0, resolution: int = 128,
                   max_scores: int = 1 << 24) -> dict[str, AttentionMaps]:
    """Maps of one (batch, head) in the original token order, and (when the layout reorders tokens) the permuted one.

    q, k: [B, H, N, D] in the original order. R = min(resolution, N); cell r covers the tokens at positions
    [r·N/R, (r+1)·N/R) of the order. Computed on q's device, query rows in chunks of at most ``max_scores`` scores,
    so memory is O(max_scores + R² + N), never N×N.
    """
    n, dim, device = q.shape[2], q.shape[3], q.device
    r = min(resolution, n)
    layout = plan.layout
    q_block = layout.q_block_of_token()[batch, head].to(device)
    k_block = layout.k_block_of_token()[batch, head].to(device)
    selected = plan.mask.selected[batch, head].to(device)
    tokens = torch.arange(n, device=device)
    positions = {"original": (tokens, tokens)}
    if layout.q_order is not None or layout.kv_order is not None:
        positions["permuted"] = tuple(_positions(o, batch, head, tokens) for o in (layout.q_order, layout.kv_order))
    cells = {order: (qp * r // n, kp * r // n) for order, (qp, kp) in positions.items()}
    sums = {order: torch.zeros(2, r, r, dtype=torch.float64, device=device) for order in cells}  # attention, missed
    keys = k[batch, head].float()
    scale = 1.0 / math.sqrt(dim)
    rows = max(1, max_scores // n)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        probs = torch.softmax((q[batch, head, start:stop].float() @ keys.T) * scale, dim=-1)
        both = torch.stack([probs, probs.masked_fill(selected[q_block[start:stop]][:, k_block], 0.0)])
        for order, (row_cell, col_cell) in cells.items():
            pooled = torch.zeros(2, stop - start, r, device=device).index_add_(2, col_cell, both)
            sums[order].index_add_(1, row_cell[start:stop], pooled.double())
    maps = {}
    for order, (row_cell, col_cell) in cells.items():
        area = torch.outer(torch.bincount(row_cell, minlength=r), torch.bincount(col_cell, minlength=r)).double()
        # overlap[m, c] = tokens of block m in cell c, so a cell's selected pairs are overlap_qᵀ · mask · overlap_k
        overlap_q, overlap_k = (
            torch.zeros(blocks, r, dtype=torch.float64, device=device).index_put_(
                (block, cell), torch.ones(n, dtype=torch.float64, device=device), accumulate=True)
            for blocks, block, cell in ((selected.shape[0], q_block, row_cell), (selected.shape[1], k_block, col_cell))
        )
        covered = overlap_q.T @ selected.double() @ overlap_k
        attention, missed = (sums[order] / area).float().cpu()
        maps[order] = AttentionMaps(attention, missed, (covered / area).float().cpu())
    return maps


def _positions(order: Optional[Tensor], batch: int, head: int, tokens: Tensor) -> Tensor:
    """Position of every original token in the permuted order (``tokens`` = arange(N) on the device)."""
    if order is None:
        return tokens
    return torch.empty_like(tokens).scatter_(0, order[batch, head].to(tokens.device), tokens)


# ------------------------------------------------------------------------------------------------------------------
# Rendering to uint8 RGB images [H, W, 3]
# ------------------------------------------------------------------------------------------------------------------
_INFERNO = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                     [250, 193, 39], [252, 255, 164]], dtype=np.float64)
SELECTED_TINT = np.array([0.0, 200.0, 255.0])  # cyan: selected blocks in the mask panel
TINT_OPACITY = 0.45
GAP = 2  # white pixels between panels and frames
CAPTION = 14  # height of the white caption strip above each panel and frame
PANEL_CAPTIONS = ("attention (log10)", "selected blocks", "missed attention")


def render_maps(maps: AttentionMaps, decades: float = 4.0, min_side: int = 128) -> np.ndarray:
    """Three captioned panels side by side: attention, attention in grey with selected cells tinted cyan, and
    missed attention.

    Brightness is log10 of the cell's mean probability, spanning ``decades`` below the attention map's maximum; the
    missed panel uses the same scale, so a bright cell there is attention that the mask drops. Small maps are
    enlarged by an integer factor to at least ``min_side`` pixels; each panel has a ``CAPTION``-pixel strip on top.
    """
    attention = maps.attention.double().numpy()
    top = np.log10(max(attention.max(), 1e-30))

    def brightness(values: np.ndarray) -> np.ndarray:
        return np.clip((np.log10(np.maximum(values, 1e-30)) - (top - decades)) / decades, 0.0, 1.0)

    level = brightness(attention)
    grey = np.repeat(level[..., None] * 255.0, 3, axis=-1)
    alpha = TINT_OPACITY * maps.selected.double().numpy()[..., None]
    panels = [_colormap(level), grey * (1 - alpha) + SELECTED_TINT * alpha,
              _colormap(brightness(maps.missed.double().numpy()))]
    factor = max(1, -(-min_side // attention.shape[0]))
    panels = [_captioned(_enlarge(p.round().astype(np.uint8), factor), text) for p, text in zip(panels, PANEL_CAPTIONS)]
    return _tile(panels, columns=3)


def render_cluster_frames(blocks: Tensor, grid: tuple[int, int, int], max_frames: int = 8,
                          min_height: int = 64) -> np.ndarray:
    """Video frames with every token coloured by its cluster (block) id: up to ``max_frames`` evenly spaced frames,
    four per row, each captioned with its frame index. ``blocks``: [T·H·W] block id of each video token in the
    original (frame-major) order."""
    frames, height, width = grid
    ids = blocks.cpu().numpy().reshape(frames, height, width)
    picked = np.unique(np.linspace(0, frames - 1, min(frames, max_frames)).round().astype(int))
    factor = max(1, -(-min_height // height))
    images = [_captioned(_enlarge(_palette(ids[t]), factor), f"t={t}") for t in picked]
    return _tile(images, columns=min(4, len(images)))


def _colormap(level: np.ndarray) -> np.ndarray:
    position = level * (len(_INFERNO) - 1)
    low = np.floor(position).astype(int).clip(0, len(_INFERNO) - 2)
    frac = (position - low)[..., None]
    return _INFERNO[low] * (1 - frac) + _INFERNO[low + 1] * frac


def _palette(ids: np.ndarray) -> np.ndarray:
    """A distinct, stable colour per id: hues spaced by the golden ratio, three lightness levels."""
    hue = (ids * 0.618033988749895) % 1.0
    value = 0.6 + 0.2 * ((ids // 3) % 3)
    saturation = 0.85 - 0.25 * (ids % 3) / 2
    sector = np.floor(hue * 6).astype(int) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, qv, t = value * (1 - saturation), value * (1 - f * saturation), value * (1 - (1 - f) * saturation)
    choices = [(value, t, p), (qv, value, p), (p, value, t), (p, qv, value), (t, p, value), (value, p, qv)]
    rgb = np.zeros(ids.shape + (3,))
    for s, channels in enumerate(choices):
        rgb[sector == s] = np.stack(channels, axis=-1)[sector == s]
    return (rgb * 255).round().astype(np.uint8)


def _captioned(image: np.ndarray, text: str) -> np.ndarray:
    """The image below a white strip with ``text`` (clipped to the image width)."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (image.shape[1], CAPTION), "white")
    ImageDraw.Draw(strip).text((1, 1), text, fill=(60, 60, 60), font=ImageFont.load_default())
    return np.concatenate([np.asarray(strip), image], axis=0)


def _enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def _tile(images: list[np.ndarray], columns: int) -> np.ndarray:
    """Images of equal size on a white canvas, ``columns`` per row, GAP pixels apart."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    canvas = np.full((rows * h + (rows - 1) * GAP, columns * w + (columns - 1) * GAP, 3), 255, dtype=np.uint8)
    for index, image in enumerate(images):
        row, col = divmod(index, columns)
        canvas[row * (h + GAP): row * (h + GAP) + h, col * (w + GAP): col * (w + GAP) + w] = image
    return canvas
