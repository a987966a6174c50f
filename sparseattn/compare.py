"""Compare strategies on workloads: density, recall, error against dense attention, and time."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import torch

from . import metrics
from .strategy import Strategy, dense_attention, load_strategy
from .workloads import Workload

DEFAULT_STRATEGIES = ("dense", "svg2", "blocks-topk")
RESULT_KEYS = ("strategy", "workload", "density", "recall", "rel_l2", "cosine", "time_ms")


@dataclass
class Result:
    """One row of a comparison. ``time_ms`` is the median of warm calls (centroids cached from a first call)."""

    strategy: str
    workload: str
    density: float
    recall: float
    rel_l2: float
    cosine: float
    time_ms: float

    def as_dict(self) -> dict:
        """The row as a dict with the keys of `RESULT_KEYS` (the ``--json`` format)."""
        return asdict(self)


def evaluate(strategy: Strategy, workload: Workload, reference: torch.Tensor, repeat: int = 3) -> Result:
    """Quality of the first (cold) call of ``strategy`` on ``workload``, and the median time of ``repeat`` warm calls.

    The warm calls reuse the first call's state cache, as a later denoising step would.
    """
    q, k, v = workload.q, workload.k, workload.v
    ctx = workload.context()
    plan = strategy.plan(q, k, ctx)
    out = strategy.attend(q, k, v, plan)
    times = []
    for _ in range(max(1, repeat)):
        _sync(q.device)
        start = time.perf_counter()
        strategy(q, k, v, ctx)
        _sync(q.device)
        times.append((time.perf_counter() - start) * 1e3)
    return Result(
        strategy=strategy.name,
        workload=workload.name,
        density=metrics.density(plan),
        recall=float(metrics.attention_recall(q, k, plan).mean()),
        rel_l2=metrics.relative_l2(out, reference),
        cosine=metrics.cosine(out, reference),
        time_ms=statistics.median(times),
    )


def compare(
    strategies: Sequence[str | Strategy],
    workloads: Sequence[Workload],
    repeat: int = 3,
    progress: bool = True,
) -> list[Result]:
    """Evaluate every strategy on every workload (workloads already on the target device and dtype)."""
    from tqdm import tqdm

    loaded = [load_strategy(s) for s in strategies]
    results = []
    with tqdm(total=len(loaded) * len(workloads), disable=not progress, desc="compare", unit="run") as bar:
        for workload in workloads:
            reference = dense_attention(workload.q, workload.k, workload.v)
            for strategy in loaded:
                bar.set_postfix_str(f"{strategy.name} on {workload.name}")
                results.append(evaluate(strategy, workload, reference, repeat))
                bar.update()
    return results


def format_table(results: Iterable[Result]) -> str:
    """A fixed-width text table of results."""
    header = f"{'strategy':<16} {'workload':<28} {'density':>8} {'recall':>8} {'rel_l2':>8} {'cosine':>8} {'time_ms':>9}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.strategy:<16} {r.workload:<28} {r.density:>8.4f} {r.recall:>8.4f} {r.rel_l2:>8.4f} "
            f"{r.cosine:>8.4f} {r.time_ms:>9.2f}"
        )
    return "\n".join(lines)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
