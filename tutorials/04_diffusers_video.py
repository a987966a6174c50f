"""Tutorial 4 — a sparse strategy inside a diffusers video pipeline, inspected in TensorBoard.

`sparseattn.apply(pipe, strategy)` replaces the self-attention processors of a Wan 2.1 or HunyuanVideo transformer so
every attention call goes through the strategy, with the layer, the denoising step and the latent token grid filled
in from the pipeline (docs/models.md). This tutorial builds a *tiny random* Wan 2.1 pipeline (3 layers, 2 heads, no
text encoder: random prompt embeddings stand in for encoded text), so it runs on a laptop CPU in under a minute with
no download, then:

1. generates a 9-frame video with an SVG2 recipe sized for the tiny model, logging every layer and step to
   TensorBoard with an `Inspector`, and prints the density of every (layer, step);
2. saves the pipeline and the embeddings, and shows (and with ``--cli`` runs) the same generation from the command
   line, ``sparseattn generate``;
3. prints the command for a real model.

Random weights attend almost uniformly, so top-p needs most key clusters (density near 0.9): the point here is the
plumbing. On real Wan 2.1 and HunyuanVideo models the SVG2 paper reports 25–31% density at the same settings.

Needs the diffusers extra: ``pip install "sparseattn[diffusers]"``. Run it::

    python tutorials/04_diffusers_video.py --out runs/tutorial4           # add --cli to also run the CLI version
    tensorboard --logdir runs/tutorial4/logs
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

import torch
import yaml

import sparseattn
from sparseattn.inspect import Inspector, Selection

# SVG2 with cluster counts for the tiny model's 3 × 8 × 8 = 192 latent tokens (Wan 2.1 720p has 75,600).
RECIPE = {
    "name": "svg2-tiny",
    "description": "SVG2 with cluster counts for a tiny latent video",
    "base": "svg2",
    "permuter": {"name": "kmeans", "q_clusters": 8, "k_clusters": 16, "iters_first": 10, "clusterer": "torch"},
}
# Latent grid: (9 − 1) / 4 + 1 = 3 frames of 16 × 16 latents, i.e. 8 × 8 patches of 2 × 2.
VIDEO = {"num_frames": 9, "height": 128, "width": 128}


def tiny_wan_pipeline(layers: int):
    """A randomly initialised Wan 2.1 pipeline small enough for a CPU (no text encoder: pass prompt embeddings)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=64, ffn_dim=64, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    return WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the pipeline, video and logs (default: a temporary folder)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--cli", action="store_true", help="also run the sparseattn generate command")
    parser.add_argument("--quick", action="store_true", help="fewer layers and steps, for tests")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="sparseattn-tutorial4-")
    steps, layers = (3, 2) if args.quick else (args.steps, 3)

    pipe = tiny_wan_pipeline(layers)
    embeds = {"prompt_embeds": torch.randn(1, 8, 32), "negative_prompt_embeds": torch.randn(1, 8, 32)}

    # 1. Python: apply the strategy for the duration of the `with` block; the inspector logs the calls it picks
    #    (here every layer and step; the default Selection() picks the middle layer at the first, middle, last step).
    logdir = os.path.join(out, "logs", "python")
    with Inspector(logdir, Selection(layers="all", steps="all", heads=(0,))) as inspector:
        with sparseattn.apply(pipe, RECIPE, inspector=inspector) as patch:
            video = pipe(**embeds, **VIDEO, num_inference_steps=steps, output_type="np",
                         generator=torch.Generator().manual_seed(0)).frames[0]
    print(f"video {video.shape} (frames, height, width, rgb); latent token grid {patch.grid}; "
          f"{patch.num_layers} layers, sparse layers {patch.sparse_layers}")
    warmup = int(0.2 * steps + 1e-9)
    print(f"density per (layer, step); the first {warmup} step(s) are svg2's dense warm-up (0.2 × {steps} steps):")
    for (layer, step), value in sorted(patch.density_table().items()):
        print(f"  layer {layer} step {step}: {value:.3f}")
    print(f"TensorBoard logs: {logdir}  (tensorboard --logdir {os.path.join(out, 'logs')})")

    # 2. The command line: the same generation from a saved pipeline and embeddings file.
    from safetensors.torch import save_file

    model_dir = os.path.join(out, "tiny-wan")
    pipe.save_pretrained(model_dir)
    embeds_file = os.path.join(out, "embeds.safetensors")
    save_file(embeds, embeds_file)
    recipe_file = os.path.join(out, "svg2-tiny.yaml")
    with open(recipe_file, "w", encoding="utf-8") as handle:
        yaml.safe_dump(RECIPE, handle, sort_keys=False)
    command = ["sparseattn", "generate", "--model", model_dir, "--prompt-embeds", embeds_file, "--strategy",
               recipe_file, "--steps", str(steps), "--frames", str(VIDEO["num_frames"]), "--height",
               str(VIDEO["height"]), "--width", str(VIDEO["width"]), "--out", os.path.join(out, "video.mp4"),
               "--logdir", os.path.join(out, "logs", "cli"), "--log-select", "layers=all;steps=all"]
    print("\nthe same from the command line:\n  " + shlex.join(command))
    if args.cli:
        cli = [sys.executable, "-m", "sparseattn.cli", *command[1:], "--compare-dense"]
        subprocess.run(cli, check=True)

    # 3. A real model, on a GPU (docs/models.md lists the supported models and settings):
    print("\nwith a real model:\n  sparseattn generate --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers "
          "--prompt \"a red fox running through snow\" --strategy svg2 --frames 81 --height 480 --width 832 "
          "--out fox.mp4 --compare-dense --logdir runs/wan")


if __name__ == "__main__":
    main()
