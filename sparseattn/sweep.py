"""Pareto sweeps: each strategy's budget knob over a grid → recall and error against density, and the density each
strategy needs to reach a target attention recall.

The knob of a strategy is found from its components (`KNOBS`): a pattern identifier's size (SVG1's band density,
Radial's decay, STA's window) or else the budget's parameter (top-p's p, top-k's fraction, a fixed density). When the
knob is in the budget, the permuter and identifier run once per strategy and workload and only the budget is
re-applied (same clustering for every point, and k-means is not re-run). Every point is a real plan from
`Strategy.plan`; its quality is measured against exact attention in one chunked pass (`plan_quality`): the output of
attention restricted to the plan's (query, key) pairs — what any exact sparse kernel returns — and the attention mass
those pairs cover.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from . import metrics
from .config import RecipeSource, load_recipe
from .interfaces import Layout, Permuter, TokenIdentifier
from .strategy import AttentionPlan, dense_attention, strategy_from_recipe
from .workloads import Workload

SWEEP_STRATEGIES = (
    "dense", "oracle", "svg2", "svg2-turbo", "svg1", "radial", "sta", "xattention", "sparge", "vsa-free",
    "blocks-topk",
)
PLOT_EXTRA = "the sweep plot needs matplotlib: pip install 'sparseattn[plot]' (or pass --no-plot)"


@dataclass(frozen=True)
class Knob:
    """One parameter of one recipe section that sets a strategy's budget, and the values a sweep tries (in order of
    growing density). ``clear`` names parameters reset to None with it (top_k's ``k`` when sweeping ``fraction``)."""

    section: str
    param: str
    values: tuple
    clear: tuple = ()


# (recipe section, component name) → knob; identifiers come first because a pattern's size is its budget.
KNOBS: dict[tuple[str, str], Knob] = {
    ("identifier", "band"): Knob("identifier", "density", (0.05, 0.1, 0.15, 0.25, 0.35, 0.5, 0.7)),
    ("identifier", "radial"): Knob("identifier", "decay", (0.125, 0.25, 0.35, 0.5, 0.7, 1.0)),
    ("identifier", "sliding_tiles"): Knob(
        "identifier", "window", ((1, 1, 1), (1, 1, 3), (1, 3, 3), (1, 3, 5), (3, 3, 3), (3, 3, 5), (3, 5, 5))
    ),
    ("budget", "top_p"): Knob("budget", "p", (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)),
    ("budget", "top_k"): Knob("budget", "fraction", (0.03, 0.06, 0.1, 0.15, 0.25, 0.4, 0.6, 0.8), clear=("k",)),
    ("budget", "density"): Knob("budget", "density", (0.05, 0.1, 0.15, 0.25, 0.35, 0.5, 0.7)),
}


def knob_for(recipe: dict) -> Optional[Knob]:
    """The knob a sweep varies for this recipe, or None (e.g. dense attention: a single point)."""
    for section in ("identifier", "budget"):
        name = _component_name(recipe.get(section))
        if (section, name) in KNOBS:
            return KNOBS[(section, name)]
    return None


def _component_name(spec: Any) -> Optional[str]:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        return spec.get("name")
    return getattr(spec, "name", None)


def with_knob(recipe: dict, knob: Knob, value: Any) -> dict:
    """A copy of the recipe with the knob set to ``value`` (a component given by name becomes a mapping)."""
    recipe = copy.deepcopy(recipe)
    spec = recipe[knob.section]
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    spec[knob.param] = list(value) if isinstance(value, tuple) else value
    spec.update({name: None for name in knob.clear})
    recipe[knob.section] = spec
    return recipe


# ------------------------------------------------------------------------------------------------------------------
# Quality of one plan
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class PlanQuality:
    """Density, attention recall, and the relative L2 error and cosine similarity of the sparse output."""

    density: float
    recall: float
    rel_l2: float
    cosine: float


def plan_quality(q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan, reference: Tensor,
                 max_scores: int = 1 << 24) -> PlanQuality:
    """Quality of a plan against exact attention, in one pass over chunks of query rows (never an N×N tensor beyond
    ``max_scores`` scores per (batch, head)).

    With P the exact softmax row of a query and M its selected keys, the recall is Σ_M P and the sparse output is
    Σ_M P·v / Σ_M P — exactly softmax restricted to M, the output of any exact block-sparse kernel on this plan
    (tests check it against the reference kernel). A query with no selected keys outputs zeros.
    """
    if plan.dense:
        return PlanQuality(density=1.0, recall=1.0, rel_l2=0.0, cosine=1.0)
    b, h, n, d = q.shape
    q_block = plan.layout.q_block_of_token()
    k_block = plan.layout.k_block_of_token()
    rows = max(1, max_scores // n)
    scale = 1.0 / math.sqrt(d)
    out = torch.zeros(b, h, n, v.shape[-1], dtype=torch.float32, device=q.device)
    covered_mass = 0.0
    for bi in range(b):
        for hi in range(h):
            keys, values = k[bi, hi].float(), v[bi, hi].float()
            selected = plan.mask.selected[bi, hi]
            for start in range(0, n, rows):
                probs = torch.softmax((q[bi, hi, start : start + rows].float() @ keys.T) * scale, dim=-1)
                kept = probs * selected[q_block[bi, hi, start : start + rows]][:, k_block[bi, hi]]
                mass = kept.sum(-1, keepdim=True)
                covered_mass += float(mass.sum(dtype=torch.float64))
                out[bi, hi, start : start + rows] = (kept @ values) / mass.clamp_min(torch.finfo(torch.float32).tiny)
    return PlanQuality(
        density=metrics.density(plan),
        recall=covered_mass / (b * h * n),
        rel_l2=metrics.relative_l2(out, reference),
        cosine=metrics.cosine(out, reference),
    )


# ------------------------------------------------------------------------------------------------------------------
# The sweep
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class SweepPoint:
    """One (strategy, knob value, workload) point."""

    strategy: str
    workload: str
    knob: str
    value: str
    density: float
    recall: float
    rel_l2: float
    cosine: float


@dataclass
class SweepSummary:
    """The density a strategy needs to reach ``target`` recall on a workload.

    ``status``: "interpolated" (linearly between the two swept points around the target, on the upper envelope of
    recall against density), "at_most" (the lowest swept density already reaches it: ``density`` is an upper bound),
    "not_reached" (no swept point reaches it: ``density`` is None), or "single" (a strategy without a knob, such as
    dense attention: its one point, which reaches the target).
    """

    strategy: str
    workload: str
    target: float
    density: Optional[float]
    status: str
    points: int

    def formatted(self) -> str:
        """The density for a table: "0.255", "≤ 0.130" (an upper bound) or "not reached"."""
        if self.status == "not_reached":
            return "not reached"
        return ("≤ " if self.status == "at_most" else "") + f"{self.density:.3f}"


@dataclass
class SweepResult:
    """All points, and one summary per (strategy, workload)."""

    target: float
    points: list[SweepPoint] = field(default_factory=list)
    summaries: list[SweepSummary] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready: the target, every point and every summary."""
        return {
            "target_recall": self.target,
            "points": [asdict(p) for p in self.points],
            "summary": [asdict(s) for s in self.summaries],
        }


def density_for_recall(points: Sequence[SweepPoint], target: float) -> tuple[Optional[float], str]:
    """(density, status) at which the upper envelope of recall against density first reaches ``target``; see
    `SweepSummary` for the statuses."""
    ordered = sorted(points, key=lambda p: (p.density, -p.recall))
    best_density, best_recall = None, -math.inf
    for point in ordered:
        if point.recall >= target:
            if best_density is None:
                return point.density, "at_most"
            fraction = (target - best_recall) / (point.recall - best_recall)
            return best_density + fraction * (point.density - best_density), "interpolated"
        if point.recall > best_recall:
            best_density, best_recall = point.density, point.recall
    return None, "not_reached"


def sweep(
    strategies: Sequence[RecipeSource],
    workloads: Sequence[Workload],
    target: float = 0.9,
    progress: bool = True,
) -> SweepResult:
    """Sweep every strategy's knob on every workload (workloads already on the target device and dtype)."""
    from tqdm import tqdm

    if not 0.0 < target <= 1.0:
        raise ValueError(f"target recall must be in (0, 1], got {target}")
    recipes = [load_recipe(source) for source in strategies]
    knobs = [knob_for(recipe) for recipe, _ in recipes]
    total = sum(len(knob.values) if knob else 1 for knob in knobs) * len(workloads)
    result = SweepResult(target)
    with tqdm(total=total, disable=not progress, desc="sweep", unit="point") as bar:
        for workload in workloads:
            reference = dense_attention(workload.q, workload.k, workload.v)
            for (recipe, where), knob in zip(recipes, knobs):
                points = list(_sweep_one(recipe, where, knob, workload, reference, bar))
                result.points += points
                density, status = density_for_recall(points, target)
                if knob is None and status == "at_most":
                    status = "single"
                result.summaries.append(SweepSummary(points[0].strategy, workload.name, target, density, status,
                                                     len(points)))
    return result


def _sweep_one(recipe: dict, where: str, knob: Optional[Knob], workload: Workload, reference: Tensor, bar):
    values = knob.values if knob else (None,)
    shared: Optional[tuple[Permuter, TokenIdentifier]] = None
    for value in values:
        strategy = strategy_from_recipe(with_knob(recipe, knob, value) if knob else recipe, where)
        if knob is not None and knob.section == "budget":
            # Only the budget changes: cluster and score once, reuse for every value.
            if shared is None:
                shared = (_FirstResultPermuter(strategy.permuter), _FirstResultIdentifier(strategy.identifier))
            strategy.permuter, strategy.identifier = shared
        label = "" if knob is None else _format_value(value)
        bar.set_postfix_str(" ".join(filter(None, (strategy.name, label, "on", workload.name))))
        plan = strategy.plan(workload.q, workload.k, workload.context())
        quality = plan_quality(workload.q, workload.k, workload.v, plan, reference)
        bar.update()
        yield SweepPoint(strategy.name, workload.name, f"{knob.section}.{knob.param}" if knob else "", label,
                         **asdict(quality))


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class _FirstResultPermuter(Permuter):
    """Wraps a permuter for one strategy on one workload: the first layout is returned for every later call."""

    inner: Permuter
    layout: Optional[Layout] = None

    def permute(self, q: Tensor, k: Tensor, state: Optional[dict] = None) -> Layout:
        if self.layout is None:
            self.layout = self.inner.permute(q, k, state)
        return self.layout


@dataclass
class _FirstResultIdentifier(TokenIdentifier):
    """Wraps an identifier for one strategy on one workload: the first scores are returned for every later call."""

    inner: TokenIdentifier
    scores: Optional[Tensor] = None

    def score(self, q: Tensor, k: Tensor, layout: Layout) -> Tensor:
        if self.scores is None:
            self.scores = self.inner.score(q, k, layout)
        return self.scores


# ------------------------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------------------------
def format_summary(result: SweepResult) -> str:
    """A text table: per strategy and workload, the density needed for the target recall."""
    head = f"density needed for {result.target:.0%} attention recall"
    header = f"{'strategy':<14} {'workload':<24} {'density':>12} {'points':>7}"
    lines = [head, header, "-" * len(header)]
    for s in result.summaries:
        lines.append(f"{s.strategy:<14} {s.workload:<24} {s.formatted():>12} {s.points:>7}")
    lines.append("≤: the lowest swept density already reaches the target; not reached: no swept point does")
    return "\n".join(lines)


def write_points_csv(result: SweepResult, path: str) -> None:
    """One row per sweep point."""
    names = list(SweepPoint.__dataclass_fields__)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for point in result.points:
            writer.writerow(asdict(point))


def require_matplotlib() -> None:
    """Raise ImportError with the install hint when matplotlib is missing (checked before a long sweep starts)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(PLOT_EXTRA) from None


def plot_sweep(result: SweepResult, path: str) -> None:
    """PNG: per workload, recall against density and relative L2 error against density, one line per strategy.

    The oracle is drawn black and dashed (the upper bound); dense attention is a black star at (1, 1) on the recall
    panel only, and points equal to dense attention (error below 1e-5) are left off the log-scale error panel. A
    cross on the target line marks each strategy's interpolated density.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    workloads = list(dict.fromkeys(p.workload for p in result.points))
    strategies = list(dict.fromkeys(p.strategy for p in result.points))
    others = [name for name in strategies if name not in ("oracle", "dense")]
    styles = {name: dict(color=f"C{i % 10}", linestyle="-" if i < 10 else "--") for i, name in enumerate(others)}
    styles["oracle"] = dict(color="black", linestyle="--")
    figure = Figure(figsize=(13, 4.6 * len(workloads)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(workloads), 2, squeeze=False)
    for (recall_ax, error_ax), workload in zip(axes, workloads):
        for strategy in strategies:
            pts = sorted((p for p in result.points if p.workload == workload and p.strategy == strategy),
                         key=lambda p: p.density)
            if strategy == "dense":
                recall_ax.plot([1.0], [1.0], "k*", markersize=10, label="dense")
                continue
            density = [p.density for p in pts]
            style = dict(styles[strategy], marker="o", markersize=3.5)
            recall_ax.plot(density, [p.recall for p in pts], label=strategy, **style)
            shown = [p for p in pts if p.rel_l2 > 1e-5]  # a window covering everything is dense: no log error
            error_ax.plot([p.density for p in shown], [p.rel_l2 for p in shown], label=strategy, **style)
        for summary in result.summaries:
            if summary.workload == workload and summary.status == "interpolated" and summary.strategy in styles:
                recall_ax.plot([summary.density], [result.target], "x", color=styles[summary.strategy]["color"])
        recall_ax.axhline(result.target, color="grey", linestyle=":", linewidth=1)
        recall_ax.set(xscale="log", xlabel="density (computed pairs / N²)", ylabel="attention recall",
                      title=f"{workload}: recall vs density", ylim=(0, 1.02))
        error_ax.set(xscale="log", yscale="log", xlabel="density (computed pairs / N²)",
                     ylabel="relative L2 error of the output", title=f"{workload}: output error vs density")
        recall_ax.grid(True, which="both", alpha=0.3)
        error_ax.grid(True, which="both", alpha=0.3)
        recall_ax.legend(loc="lower right", fontsize=8)
    figure.savefig(path, dpi=110)


def write_reports(result: SweepResult, out_dir: str, plot: bool = True) -> list[str]:
    """sweep_points.csv, sweep.json and (with ``plot``) sweep.png in ``out_dir``; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "sweep_points.csv"), os.path.join(out_dir, "sweep.json")]
    write_points_csv(result, paths[0])
    with open(paths[1], "w", encoding="utf-8") as handle:
        json.dump(result.as_dict(), handle, indent=2)
    if plot:
        paths.append(os.path.join(out_dir, "sweep.png"))
        plot_sweep(result, paths[-1])
    return paths


__all__ = [
    "KNOBS",
    "Knob",
    "PlanQuality",
    "SWEEP_STRATEGIES",
    "SweepPoint",
    "SweepResult",
    "SweepSummary",
    "density_for_recall",
    "format_summary",
    "knob_for",
    "plan_quality",
    "plot_sweep",
    "sweep",
    "with_knob",
    "write_reports",
]
