"""The ``sparseattn`` command line: ``compare``, ``list`` and ``synthetic``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def run_compare(args: argparse.Namespace) -> int:
    from .compare import DEFAULT_STRATEGIES, compare, format_table
    from .strategy import load_strategy
    from .workloads import default_workload, load_capture

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available; use --device cpu")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if args.device == "cuda" else torch.float32)
    workloads = [load_capture(p) for p in args.workload] if args.workload else [default_workload()]
    workloads = [w.to(args.device, dtype) for w in workloads]
    strategies = [load_strategy(s) for s in (args.strategy or DEFAULT_STRATEGIES)]
    results = compare(strategies, workloads, repeat=args.repeat, progress=not args.no_progress)
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([r.as_dict() for r in results], handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from . import registry
    from .config import builtin_recipes

    for kind, names in registry.available().items():
        print(f"{kind + 's':<12} {', '.join(names)}")
    print(f"{'strategies':<12} {', '.join(builtin_recipes())}")
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    from .workloads import save_capture, synthetic_video

    workload = synthetic_video(
        frames=args.frames, height=args.height, width=args.width, heads=args.heads, head_dim=args.head_dim,
        text_tokens=args.text_tokens, seed=args.seed, dtype=DTYPES[args.dtype],
    )
    save_capture(args.out, workload)
    print(f"wrote {args.out}: q/k/v {tuple(workload.q.shape)}, grid {workload.grid}, text tokens {workload.text_tokens}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad recipes, tensors and files: a clear message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
