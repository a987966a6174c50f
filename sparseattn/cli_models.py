"""``sparseattn generate`` and ``sparseattn capture``: a strategy inside a real diffusers video pipeline.

- ``generate`` runs the pipeline with the strategy and writes the video; with ``--compare-dense`` it also runs dense
  attention from the same seed and prints PSNR / SSIM (and LPIPS when available) between the two videos, the measured
  density per layer and step, and both wall times.
- ``capture`` runs the pipeline with dense attention and writes the self-attention q, k, v of chosen layers and steps
  as capture files (`sparseattn.workloads`), for ``sparseattn compare --workload``.

Both need the ``diffusers`` extra; it is imported when a command runs, not when the parser is built.
"""
from __future__ import annotations

import argparse
import inspect
import os
import time
from typing import Any, Optional

import torch

# The prompt embeddings each pipeline needs when it runs without its text encoders (--prompt-embeds).
REQUIRED_EMBEDDINGS = {
    "WanPipeline": ("prompt_embeds", "negative_prompt_embeds"),
    "HunyuanVideoPipeline": ("prompt_embeds", "pooled_prompt_embeds", "prompt_attention_mask"),
}
STEPS_PER_TABLE_BLOCK = 20


def add_model_commands(commands: Any) -> None:
    """Register ``generate`` and ``capture`` on the ``sparseattn`` sub-command parser."""
    from .cli import add_inspect_arguments

    generate = commands.add_parser("generate", help="generate a video with a strategy in a diffusers pipeline")
    _add_pipeline_arguments(generate)
    generate.add_argument("--strategy", required=True, metavar="NAME_OR_YAML",
                          help="built-in strategy name or YAML recipe")
    generate.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's, 50)")
    generate.add_argument("--out", required=True, help="the video to write (.mp4)")
    generate.add_argument("--compare-dense", action="store_true",
                          help="also run dense attention from the same seed (video written as OUT.dense.mp4) and "
                               "print PSNR, SSIM, LPIPS, density per layer and step, and both wall times")
    generate.add_argument("--fps", type=int, default=16, help="frame rate of the written video (default 16)")
    add_inspect_arguments(generate)
    generate.set_defaults(func=run_generate)

    capture = commands.add_parser("capture", help="write the self-attention q, k, v of chosen layers and steps")
    _add_pipeline_arguments(capture)
    capture.add_argument("--layers", required=True, metavar="L1,L2", help="layer indices to capture")
    capture.add_argument("--steps", required=True, metavar="S1,S2", help="denoising step indices to capture")
    capture.add_argument("--num-steps", type=int, help="denoising steps of the run (default: the pipeline's, 50)")
    capture.add_argument("--out", required=True, metavar="DIR", help="folder for the capture files")
    capture.set_defaults(func=run_capture)


def _add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli import DTYPES

    parser.add_argument("--model", required=True, metavar="ID_OR_PATH",
                        help="a diffusers pipeline: Hugging Face id (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers) or folder")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="the text prompt (encoded by the pipeline's text encoders)")
    prompt.add_argument("--prompt-embeds", metavar="FILE",
                        help="precomputed prompt embeddings (safetensors holding the pipeline's prompt_embeds etc.); "
                             "the text encoders are then not loaded")
    parser.add_argument("--frames", type=int, help="number of video frames (default: the pipeline's)")
    parser.add_argument("--height", type=int, help="video height in pixels (default: the pipeline's)")
    parser.add_argument("--width", type=int, help="video width in pixels (default: the pipeline's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (default: the pipeline's)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="transformer dtype (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the denoising progress bar")


# ------------------------------------------------------------------------------------------------------------------
# Loading and calling a pipeline
# ------------------------------------------------------------------------------------------------------------------
def _device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    from .cli import DTYPES

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available; use --device cpu")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype


def load_pipeline(model: str, device: torch.device, dtype: torch.dtype, with_text_encoders: bool = True) -> Any:
    """A diffusers pipeline from a Hub id or folder, on ``device``; without its text encoders when asked (their
    place is taken by precomputed embeddings). Wan's VAE stays in float32, as its model card recommends;
    HunyuanVideo's VAE decodes in tiles, as diffusers' HunyuanVideo examples do (docs/models.md: memory)."""
    from diffusers import DiffusionPipeline

    try:
        components = DiffusionPipeline.load_config(model)
        skipped = {} if with_text_encoders else {
            name: None for name in components if name.startswith(("text_encoder", "tokenizer"))
        }
        dtypes = {"default": dtype, "vae": torch.float32} if components.get("_class_name") == "WanPipeline" else dtype
        pipe = DiffusionPipeline.from_pretrained(model, dtype=dtypes, **skipped)
    except OSError as exc:  # no such folder, or a Hub id that cannot be fetched
        raise ValueError(f"cannot load a diffusers pipeline from '{model}': {exc}") from None
    if type(pipe).__name__ == "HunyuanVideoPipeline":
        pipe.vae.enable_tiling()
    return pipe.to(device)


def _prompt_arguments(args: argparse.Namespace, pipe: Any, device: torch.device) -> dict[str, Any]:
    """The pipeline's prompt arguments: ``prompt``, or the tensors of ``--prompt-embeds`` (checked)."""
    if args.prompt is not None:
        if getattr(pipe, "text_encoder", None) is None:
            raise ValueError(f"{args.model} has no text encoder; pass --prompt-embeds instead of --prompt")
        return {"prompt": args.prompt}
    from safetensors.torch import load_file

    if not os.path.isfile(args.prompt_embeds):
        raise ValueError(f"--prompt-embeds file not found: {args.prompt_embeds}")
    tensors = load_file(args.prompt_embeds)
    pipeline = type(pipe).__name__
    required = REQUIRED_EMBEDDINGS.get(pipeline, ("prompt_embeds",))
    unknown = sorted(set(tensors) - set(inspect.signature(pipe.__call__).parameters))
    missing = [name for name in required if name not in tensors]
    if unknown or missing:
        raise ValueError(
            f"{args.prompt_embeds}: {pipeline} needs tensors {', '.join(required)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; not arguments of {pipeline}: {', '.join(unknown)}" if unknown else "")
        )
    dtype = pipe.transformer.dtype
    return {name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype) for name, t in tensors.items()}


def _call_arguments(args: argparse.Namespace, pipe: Any, device: torch.device, num_steps: Optional[int],
                    output_type: str) -> dict[str, Any]:
    call = {"num_inference_steps": num_steps, "num_frames": args.frames, "height": args.height, "width": args.width,
            "guidance_scale": args.guidance_scale}
    call = {name: value for name, value in call.items() if value is not None}
    call.update(_prompt_arguments(args, pipe, device), output_type=output_type)
    return call


def _run(pipe: Any, call: dict[str, Any], seed: int, device: torch.device, **extra: Any) -> tuple[Any, float]:
    """(frames of the first video, wall seconds) of one pipeline call from a CPU generator seeded with ``seed``
    (CPU noise, so the same seed gives the same video on every device)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    frames = pipe(**call, **extra, generator=torch.Generator("cpu").manual_seed(seed)).frames[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return frames, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------------------------------
def run_generate(args: argparse.Namespace) -> int:
    """``sparseattn generate``."""
    from diffusers.utils import export_to_video

    from .integrations.diffusers import apply
    from .strategy import load_strategy
    from .video_metrics import compare_videos

    strategy = load_strategy(args.strategy)  # a bad recipe fails before the model loads
    device, dtype = _device_and_dtype(args)
    pipe = load_pipeline(args.model, device, dtype, with_text_encoders=args.prompt_embeds is None)
    call = _call_arguments(args, pipe, device, args.steps, output_type="np")
    inspector = _inspector(args, pipe)

    pipe.set_progress_bar_config(desc=strategy.name, disable=args.no_progress)
    try:
        with apply(pipe, strategy, inspector=inspector) as patch:
            frames, sparse_seconds = _run(pipe, call, args.seed, device)
        densities = patch.density_table()
    finally:
        if inspector is not None:
            inspector.close()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    export_to_video(list(frames), args.out, fps=args.fps)
    print(f"wrote {args.out}: {frames.shape[0]} frames of {frames.shape[2]}×{frames.shape[1]}, strategy "
          f"'{strategy.name}', {sparse_seconds:.2f} s")
    if not args.compare_dense:
        return 0

    pipe.set_progress_bar_config(desc="dense", disable=args.no_progress)
    dense_frames, dense_seconds = _run(pipe, call, args.seed, device)
    dense_out = os.path.splitext(args.out)[0] + ".dense.mp4"
    export_to_video(list(dense_frames), dense_out, fps=args.fps)
    print(f"wrote {dense_out}: dense attention, same seed")
    quality = compare_videos(frames, dense_frames, device=device)
    print(format_comparison(quality, sparse_seconds, dense_seconds, densities, patch.num_layers, strategy.name,
                            logged=inspector is not None))
    if args.logdir:
        log_comparison(args.logdir, quality, sparse_seconds, dense_seconds, densities)
    return 0


def _inspector(args: argparse.Namespace, pipe: Any):
    """The `Inspector` of ``--logdir`` (its selection checked against the model's head count), else None."""
    if not args.logdir:
        return None
    from .inspect import Inspector, Selection

    selection = Selection.parse(args.log_select)
    heads = pipe.transformer.config.num_attention_heads
    selection.image_heads(torch.empty(1, heads, 0, 0))  # a head index the model lacks fails before the run
    return Inspector(os.path.join(args.logdir, "sparse"), selection)


def format_comparison(quality: Any, sparse_seconds: float, dense_seconds: float,
                      densities: dict[tuple[int, int], float], num_layers: int, name: str,
                      logged: bool = False) -> str:
    """The ``--compare-dense`` report: quality against dense, both wall times, density per layer and step.
    ``logged``: the strategy's run also wrote TensorBoard logs (its time includes them)."""
    lpips_text = f"{quality.lpips:.4f}" if quality.lpips is not None else f"n/a ({quality.lpips_note})"
    lines = [
        f"quality vs dense: PSNR {quality.psnr:.2f} dB   SSIM {quality.ssim:.4f}   LPIPS {lpips_text}",
        f"wall time: {name} {sparse_seconds:.2f} s   dense {dense_seconds:.2f} s   "
        f"speedup {dense_seconds / sparse_seconds:.2f}× (whole pipeline call incl. VAE decode; the {name} run came "
        "first and includes one-time warm-up such as kernel compilation"
        + (", and the --logdir logging)" if logged else ")"),
    ]
    return "\n".join(lines + format_density_table(densities, num_layers))


def log_comparison(logdir: str, quality: Any, sparse_seconds: float, dense_seconds: float,
                   densities: dict[tuple[int, int], float]) -> None:
    """TensorBoard scalars of the ``--compare-dense`` report, in ``logdir/comparison``."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(os.path.join(logdir, "comparison")) as writer:
        for tag, value in (("quality/psnr", quality.psnr), ("quality/ssim", quality.ssim),
                           ("quality/lpips", quality.lpips), ("time_s/sparse", sparse_seconds),
                           ("time_s/dense", dense_seconds)):
            if value is not None and value != float("inf"):
                writer.add_scalar(tag, value, 0)
        for (layer, step), value in densities.items():
            writer.add_scalar(f"density_by_step/layer{layer}", value, step)


def format_density_table(densities: dict[tuple[int, int], float], num_layers: int) -> list[str]:
    """Density in percent, one row per layer and one column per step (blocks of at most 20 steps); layers that
    kept their original dense processor show as 'dense'."""
    if not densities:
        return ["density: every layer kept its dense processor"]
    steps = sorted({step for _, step in densities})
    sparse_values = [value for value in densities.values() if value < 1.0]
    mean = sum(densities.values()) / len(densities)
    lines = [f"density per layer (rows) and step (columns), % of query-key pairs computed; mean {mean:.1%} over "
             f"patched layers and steps" + (f", {sum(sparse_values) / len(sparse_values):.1%} over sparse calls"
                                           if sparse_values else "")]
    for first in range(0, len(steps), STEPS_PER_TABLE_BLOCK):
        block = steps[first:first + STEPS_PER_TABLE_BLOCK]
        lines.append("layer " + "".join(f"{step:>5}" for step in block))
        for layer in range(num_layers):
            cells = [densities.get((layer, step)) for step in block]
            if all(cell is None for cell in cells):
                lines.append(f"{layer:>5}  dense (original processor)")
            else:
                lines.append(f"{layer:>5} " + "".join("    -" if c is None else f"{100 * c:>5.0f}" for c in cells))
    return lines


# ------------------------------------------------------------------------------------------------------------------
# capture
# ------------------------------------------------------------------------------------------------------------------
def _indices(text: str, option: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got '{text}'") from None
    if not values or values[0] < 0:
        raise ValueError(f"{option} must list indices ≥ 0, got '{text}'")
    return values


def run_capture(args: argparse.Namespace) -> int:
    """``sparseattn capture``."""
    from .integrations.diffusers import apply
    from .workloads import Workload, save_capture

    layers, steps = _indices(args.layers, "--layers"), _indices(args.steps, "--steps")
    device, dtype = _device_and_dtype(args)
    pipe = load_pipeline(args.model, device, dtype, with_text_encoders=args.prompt_embeds is None)
    num_steps = args.num_steps or inspect.signature(pipe.__call__).parameters["num_inference_steps"].default
    if steps[-1] >= num_steps:
        raise ValueError(f"--steps {args.steps} asks for step {steps[-1]}, but the run has {num_steps} steps "
                         f"(indices 0..{num_steps - 1}; see --num-steps)")
    call = _call_arguments(args, pipe, device, num_steps, output_type="latent")
    os.makedirs(args.out, exist_ok=True)
    written: list[str] = []
    calls_seen: dict[tuple[int, int], int] = {}

    def observe(q, k, v, ctx) -> None:
        if ctx.layer not in layers or ctx.step not in steps:
            return
        index = calls_seen[(ctx.layer, ctx.step)] = calls_seen.get((ctx.layer, ctx.step), -1) + 1
        name = f"layer{ctx.layer:02d}_step{ctx.step:03d}_call{index}"
        metadata = {"layer": str(ctx.layer), "step": str(ctx.step), "num_steps": str(ctx.num_steps),
                    "call": str(index), "model": args.model, "prompt": args.prompt or args.prompt_embeds,
                    "source": f"sparseattn capture of {args.model}, layer {ctx.layer}, step {ctx.step}, call {index}"}
        path = os.path.join(args.out, name + ".safetensors")
        save_capture(path, Workload(name, q, k, v, ctx.grid, ctx.text_tokens, metadata))
        written.append(path)

    def stop_after_last_step(pipeline, step, timestep, callback_kwargs):
        if step >= steps[-1]:
            pipeline._interrupt = True  # diffusers' documented way to end the denoising loop early
        return callback_kwargs

    pipe.set_progress_bar_config(desc="capture", disable=args.no_progress)
    with apply(pipe, "dense", observer=observe) as patch:
        if layers[-1] >= patch.num_layers:
            raise ValueError(f"--layers {args.layers} asks for layer {layers[-1]}, but the model has "
                             f"{patch.num_layers} self-attention layers (0..{patch.num_layers - 1})")
        _run(pipe, call, args.seed, device, callback_on_step_end=stop_after_last_step)
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} capture files in {args.out} (call 0 is the conditional pass, call 1 the unconditional "
          "one when guidance runs it); compare strategies on them with sparseattn compare --workload FILE")
    return 0
