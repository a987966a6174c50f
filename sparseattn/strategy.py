"""A strategy = permuter → identifier → budget → kernel, plus a dense warm-up schedule. Built from YAML recipes."""
from __future__ import annotations

import math
from collections import ChainMap
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from .config import (
    COMPONENT_KEYS,
    RECIPE_KEYS,
    ConfigError,
    RecipeSource,
    build_component,
    check_param_types,
    load_recipe,
)
from .context import AttentionContext
from .interfaces import BlockMask, BudgetController, Layout, Permuter, SparseKernel, TokenIdentifier, gather_tokens
from .validation import check_qkv


def dense_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Dense softmax attention through SDPA (flash/cuDNN on CUDA, the math path on CPU)."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


@dataclass
class DenseSchedule:
    """Attention stays dense for the first ⌊dense_steps·num_steps⌋ steps and ⌊dense_layers·num_layers⌋ layers.

    SVG2 on Wan 2.1 T2V: dense_steps 0.2, dense_layers 0.03 (layer 0 of 40). With ``cluster_during_dense`` the
    permuter still runs (its result unused) during dense steps so centroids are warm when sparsity starts
    (SVG2's "zero-step init").
    """

    dense_steps: float = 0.0
    dense_layers: float = 0.0
    cluster_during_dense: bool = False

    def __post_init__(self) -> None:
        for name in ("dense_steps", "dense_layers"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {getattr(self, name)}")

    def is_dense(self, ctx: Optional[AttentionContext]) -> bool:
        """Whether the call at ``ctx`` runs dense (no ctx: never)."""
        if ctx is None:
            return False
        return ctx.step < _floor_of(self.dense_steps, ctx.num_steps) or ctx.layer < _floor_of(
            self.dense_layers, ctx.num_layers
        )


def _floor_of(fraction: float, count: int) -> int:
    """⌊fraction·count⌋ as the decimal fraction means it: 0.29·100 is 28.999999999999996 in binary floating point."""
    return math.floor(fraction * count + 1e-9)


@dataclass
class AttentionPlan:
    """What a strategy decided for one call: the layout, the selected blocks, and the density per (batch, head)."""

    layout: Layout
    mask: BlockMask
    dense: bool

    @property
    def density(self) -> Tensor:
        """[B, H] fraction of the N×N (query, key) pairs the plan computes."""
        return self.mask.density(self.layout)


class Strategy:
    """A composed sparse-attention method: ``strategy(q, k, v, ctx)`` → output, ``strategy.plan(q, k, ctx)`` → plan.

    ``permuter=None`` means dense attention. ``identifier``/``budget`` None means every block pair is selected.
    Text tokens (``ctx.text_tokens``, after the video tokens) are never clustered: they form one extra block on both
    sides that every query attends to and that attends to every key.
    """

    def __init__(
        self,
        name: str,
        permuter: Optional[Permuter],
        identifier: Optional[TokenIdentifier],
        budget: Optional[BudgetController],
        kernel: SparseKernel,
        schedule: Optional[DenseSchedule] = None,
        description: str = "",
        check_inputs: bool = True,
    ) -> None:
        if (identifier is None) != (budget is None):
            raise ValueError(f"strategy '{name}': identifier and budget must be given together (or both omitted)")
        self.name = name
        self.permuter = permuter
        self.identifier = identifier
        self.budget = budget
        self.kernel = kernel
        self.schedule = schedule or DenseSchedule()
        self.description = description
        self.check_inputs = check_inputs

    def __repr__(self) -> str:
        parts = [f"{key}={getattr(self, key)!r}" for key in ("permuter", "identifier", "budget", "kernel", "schedule")]
        return f"Strategy({self.name!r}, " + ", ".join(parts) + ")"

    @property
    def is_dense(self) -> bool:
        """True for a dense strategy (no permuter): every call runs dense attention."""
        return self.permuter is None

    # -------------------------------------------------------------------------------------------------------------
    def plan(self, q: Tensor, k: Tensor, ctx: Optional[AttentionContext] = None) -> AttentionPlan:
        """Permute, identify and budget, without running attention."""
        if self.check_inputs:
            check_qkv(q, k, k)
        plan = self._plan(q, k, ctx)
        if plan is None:
            return AttentionPlan(single_block_layout(q, k), _full_mask(q, 1, 1), dense=True)
        return plan

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, ctx: Optional[AttentionContext] = None) -> Tensor:
        if self.check_inputs:
            check_qkv(q, k, v)
        plan = self._plan(q, k, ctx)
        if plan is None:
            return dense_attention(q, k, v)
        return self._attend(plan, q, k, v)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan) -> Tensor:
        """Attention for a plan that `plan` made on the same q, k (e.g. to time the kernel alone)."""
        if plan.dense:
            return dense_attention(q, k, v)
        return self._attend(plan, q, k, v)

    def _attend(self, plan: AttentionPlan, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        kernel = self.kernel
        q_p, k_p, v_p = kernel.permute(q, k, v, plan.layout)
        return kernel.unpermute(kernel.run(kernel.plan(plan.layout, plan.mask, q_p), q_p, k_p, v_p), plan.layout)

    def _plan(self, q: Tensor, k: Tensor, ctx: Optional[AttentionContext]) -> Optional[AttentionPlan]:
        """The plan, or None for a call that runs dense: `__call__` then needs no layout, and only `plan` builds
        the single-block one (its centroids are means over every token, too costly to compute and throw away)."""
        n = q.shape[2]
        text = 0
        if ctx is not None:
            ctx.check_tokens(n)
            text = ctx.text_tokens
        dense_now = self.is_dense or self.schedule.is_dense(ctx)
        if dense_now and (self.is_dense or not self.schedule.cluster_during_dense):
            return None
        video = n - text
        state = None
        if ctx is not None:
            # Position-based permuters (tiles, svg1) read state["grid"]; the ChainMap serves it per call and keeps it
            # out of the layer cache, which receives every write (k-means centroids).
            state = ChainMap(ctx.layer_state(), {"grid": ctx.grid})
        video_layout = self.permuter.permute(q[:, :, :video], k[:, :, :video], state)
        if dense_now:  # clustering only kept the centroids warm
            return None
        layout = append_text_layout(video_layout, q, k, text) if text else video_layout
        if self.identifier is None:
            mask = _full_mask(q, layout.q_sizes.shape[-1], layout.k_sizes.shape[-1])
        else:
            q_v, k_v = q[:, :, :video], k[:, :, :video]
            if self.identifier.reads_tokens:
                q_v, k_v = gather_tokens(q_v, video_layout.q_order), gather_tokens(k_v, video_layout.kv_order)
            scores = self.identifier.score(q_v, k_v, video_layout)
            mask = self.budget.select(scores, video_layout)
            if text:
                mask = BlockMask(torch.nn.functional.pad(mask.selected, (0, 1, 0, 1), value=True))
        return AttentionPlan(layout, mask, dense=False)


def single_block_layout(q: Tensor, k: Tensor) -> Layout:
    """Natural order, one block holding every token (the layout of dense attention)."""
    b, h, n, d = q.shape
    sizes = torch.full((b, h, 1), n, dtype=torch.long, device=q.device)
    return Layout(None, None, sizes, sizes.clone(), q.float().mean(2, keepdim=True), k.float().mean(2, keepdim=True))


def _full_mask(q: Tensor, q_blocks: int, k_blocks: int) -> BlockMask:
    return BlockMask(torch.ones(q.shape[0], q.shape[1], q_blocks, k_blocks, dtype=torch.bool, device=q.device))


def append_text_layout(layout: Layout, q: Tensor, k: Tensor, text: int) -> Layout:
    """Add the text tokens (the last ``text`` of q, k) as one final block on both sides, in their natural order."""
    b, h, n, _ = q.shape
    text_ids = torch.arange(n - text, n, device=q.device).expand(b, h, text)

    def order(video_order: Optional[Tensor]) -> Optional[Tensor]:
        return None if video_order is None else torch.cat([video_order, text_ids], dim=-1)

    def sizes(video_sizes: Tensor) -> Tensor:
        return torch.cat([video_sizes, video_sizes.new_full((b, h, 1), text)], dim=-1)

    return Layout(
        order(layout.q_order),
        order(layout.kv_order),
        sizes(layout.q_sizes),
        sizes(layout.k_sizes),
        torch.cat([layout.q_centroids, q[:, :, n - text :].float().mean(2, keepdim=True)], dim=2),
        torch.cat([layout.k_centroids, k[:, :, n - text :].float().mean(2, keepdim=True)], dim=2),
    )


# ------------------------------------------------------------------------------------------------------------------
def load_strategy(source: "RecipeSource | Strategy", **overrides: Any) -> Strategy:
    """A strategy from a built-in name (``svg2``), a YAML path, a dict recipe, or an existing Strategy.

    ``overrides`` replace top-level recipe sections (e.g. ``budget={"name": "top_k", "fraction": 0.1}``).
    """
    if isinstance(source, Strategy):
        return source
    recipe, where = load_recipe(source)
    allowed = [key for key in RECIPE_KEYS if key != "base"]  # the base chain is already resolved
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown override(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    recipe.update(overrides)
    return strategy_from_recipe(recipe, where)


def strategy_from_recipe(recipe: dict[str, Any], where: str) -> Strategy:
    """Build a `Strategy` from a resolved recipe (no ``base``); errors name ``where`` the recipe came from."""
    name = recipe.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: a recipe needs a 'name' (a non-empty string)")
    components = {
        key: (build_component(key, recipe[key], where) if recipe.get(key) is not None else None)
        for key in COMPONENT_KEYS
    }
    if components["kernel"] is None:
        components["kernel"] = build_component("kernel", "auto", where)
    schedule_spec = recipe.get("schedule") or {}
    if not isinstance(schedule_spec, dict):
        raise ConfigError(f"{where}: 'schedule' must be a mapping with keys dense_steps, dense_layers, cluster_during_dense")
    allowed = ("dense_steps", "dense_layers", "cluster_during_dense")
    unknown = sorted(set(schedule_spec) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} in 'schedule'; allowed: {', '.join(allowed)}")
    check_param_types(DenseSchedule, schedule_spec, f"{where}: schedule")
    try:
        schedule = DenseSchedule(**schedule_spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: schedule: {exc}") from exc
    try:
        return Strategy(name, schedule=schedule, description=str(recipe.get("description", "")), **components)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
