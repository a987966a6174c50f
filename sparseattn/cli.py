"""The ``sparseattn`` command line: ``compare``, ``list`` and ``synthetic``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    """The ``sparseattn`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="sparseattn", description="Sparse attention for video diffusion transformers")
    commands = parser.add_subparsers(dest="command", required=True)

    compare = commands.add_parser("compare", help="compare strategies on attention workloads")
    compare.add_argument("--workload", action="append", metavar="PATH",
                         help="capture file (safetensors); repeatable; default: the workload shipped in the package")
    compare.add_argument("--strategy", action="append", metavar="NAME_OR_YAML",
                         help="built-in strategy name or YAML recipe; repeatable; default: dense, svg2, blocks-topk")
    compare.add_argument("--json", metavar="OUT", help="write the results as a JSON list to OUT")
    compare.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    compare.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                         help="compute dtype (default: float32 on cpu, bfloat16 on cuda)")
    compare.add_argument("--repeat", type=int, default=3, help="timed warm calls per strategy (median reported)")
    compare.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    compare.add_argument("--sweep", action="store_true",
                         help="sweep each strategy's budget knob over a grid: recall and error against density, the "
                              "density needed for --target-recall, CSV/JSON/PNG in --out-dir (default strategies: "
                              "all built-in ones)")
    compare.add_argument("--target-recall", type=float, default=0.9, help="recall target of --sweep (default 0.9)")
    compare.add_argument("--out-dir", default="sweep-results", help="where --sweep writes its files")
    compare.add_argument("--no-plot", action="store_true", help="with --sweep: skip the PNG (no matplotlib needed)")
    add_inspect_arguments(compare)
    compare.set_defaults(func=run_compare)

    listing = commands.add_parser("list", help="list registered components and built-in strategies")
    listing.set_defaults(func=run_list)

    synthetic = commands.add_parser("synthetic", help="write a synthetic video-like workload as a capture file")
    synthetic.add_argument("--out", required=True)
    synthetic.add_argument("--frames", type=int, default=8)
    synthetic.add_argument("--height", type=int, default=16)
    synthetic.add_argument("--width", type=int, default=16)
    synthetic.add_argument("--heads", type=int, default=4)
    synthetic.add_argument("--head-dim", type=int, default=64)
    synthetic.add_argument("--text-tokens", type=int, default=0)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--dtype", choices=tuple(DTYPES), default="float16")
    synthetic.set_defaults(func=run_synthetic)

    from .cli_models import add_model_commands  # generate, capture (diffusers is imported only when they run)

    add_model_commands(commands)
    return parser


def run_compare(args: argparse.Namespace) -> int:
    """``sparseattn compare``: the results table, optionally JSON and TensorBoard logs."""
    from .compare import DEFAULT_STRATEGIES, compare, format_table
    from .strategy import load_strategy
    from .workloads import default_workload, load_capture

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available; use --device cpu")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if args.device == "cuda" else torch.float32)
    workloads = [load_capture(p) for p in args.workload] if args.workload else [default_workload()]
    log_select = _log_selection(args, workloads)  # a bad selection fails before the comparison runs
    workloads = [w.to(args.device, dtype) for w in workloads]
    if args.sweep:
        return _run_sweep(args, workloads)
    strategies = [load_strategy(s) for s in (args.strategy or DEFAULT_STRATEGIES)]
    results = compare(strategies, workloads, repeat=args.repeat, progress=not args.no_progress)
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([r.as_dict() for r in results], handle, indent=2)
        print(f"wrote {args.json}")
    if args.logdir:
        from .inspect import log_comparison

        log_comparison(args.logdir, strategies, workloads, log_select, not args.no_progress)
        print(f"wrote TensorBoard logs to {args.logdir}; view them with: tensorboard --logdir {args.logdir}")
    return 0


def _run_sweep(args: argparse.Namespace, workloads: Sequence) -> int:
    """``sparseattn compare --sweep``: the density each strategy needs for the target recall, and the report files."""
    from .sweep import SWEEP_STRATEGIES, format_summary, require_matplotlib, sweep, write_reports

    if args.logdir:
        raise ValueError("--logdir does not combine with --sweep; run the TensorBoard inspection without --sweep")
    if not args.no_plot:
        try:
            require_matplotlib()  # fail before the sweep, not after it
        except ImportError as exc:
            raise ValueError(str(exc)) from None
    result = sweep(args.strategy or SWEEP_STRATEGIES, workloads, args.target_recall, progress=not args.no_progress)
    print(format_summary(result))
    for path in write_reports(result, args.out_dir, plot=not args.no_plot):
        print(f"wrote {path}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result.as_dict(), handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    """``--logdir`` and ``--log-select``: TensorBoard inspection (`sparseattn.inspect`) for a command."""
    parser.add_argument("--logdir", metavar="DIR",
                        help="write TensorBoard attention maps, cluster images and scalars to DIR")
    parser.add_argument("--log-select", metavar="SPEC", default="",
                        help="which calls and heads to log, e.g. 'layers=all;steps=0,-1;heads=0,1' "
                             "(default: layers=middle;steps=0,middle,-1;heads=0)")


def _log_selection(args: argparse.Namespace, workloads: Sequence):
    """The `sparseattn.inspect.Selection` of ``--log-select`` when ``--logdir`` is given (checked against the
    workloads' head counts), else None."""
    if not args.logdir:
        return None
    from .inspect import Selection

    selection = Selection.parse(args.log_select)
    for workload in workloads:
        selection.image_heads(workload.q)
    return selection


def run_list(args: argparse.Namespace) -> int:
    """``sparseattn list``: registered components by kind, and the built-in strategies."""
    from . import registry
    from .config import builtin_recipes

    for kind, names in registry.available().items():
        print(f"{kind + 's':<12} {', '.join(names)}")
    print(f"{'strategies':<12} {', '.join(builtin_recipes())}")
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    """``sparseattn synthetic``: write a synthetic video-like workload as a capture file."""
    from .workloads import save_capture, synthetic_video

    workload = synthetic_video(
        frames=args.frames, height=args.height, width=args.width, heads=args.heads, head_dim=args.head_dim,
        text_tokens=args.text_tokens, seed=args.seed, dtype=DTYPES[args.dtype],
    )
    save_capture(args.out, workload)
    print(f"wrote {args.out}: q/k/v {tuple(workload.q.shape)}, grid {workload.grid}, text tokens {workload.text_tokens}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``sparseattn`` command; returns the exit status (2 for bad input, with a message)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad recipes, tensors and files: a clear message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
