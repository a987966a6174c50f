"""Tutorial 3 — inspect a sparse attention run in TensorBoard.

A stand-in for a video generation: ``--layers`` attention layers run at each of ``--steps`` denoising steps, on
synthetic video-like q, k, v whose noise shrinks as the steps advance (structure emerges as a video denoises).
SVG2 runs on every call through `sparseattn.inspect.attend`, and an `Inspector` logs the calls its `Selection`
picks. Afterwards the script reads the event file back with TensorBoard's own reader, prints a summary, and (with
``--png DIR``) saves the logged images as PNG files.

Run it, then open TensorBoard::

    python tutorials/03_inspect_tensorboard.py --logdir runs/tutorial3     # ~1 minute on a laptop CPU
    tensorboard --logdir runs/tutorial3                                      # open http://localhost:6006

What to look for (docs/inspect.md has screenshots):

- SCALARS ``density/…`` and ``recall/…`` per layer and head against the step: step 0 is dense (the schedule's
  warm-up: density 1, recall 1); later steps trade density for recall. ``rel_l2`` is the output error that trade
  costs. ``time_ms/…`` splits a call into cluster, score, select, permute, plan, kernel and unpermute.
- IMAGES ``attention/layer/head/original``: three panels — the true attention map (log scale), the selected blocks
  in cyan over it in grey, and the attention the mask misses. In the original (frame-major) order SVG2's clusters
  are scattered, so its selection looks like a sieve. ``…/permuted`` shows the same in cluster order: kept blocks
  become rectangles and the bright attention should sit inside them; bright pixels in the third panel are
  what the method loses.
- IMAGES ``clusters/layer/head/q`` and ``k``: frames coloured by cluster id — clusters that follow the moving
  objects across frames are the semantic grouping SVG2 relies on.
- HISTOGRAMS ``cluster_sizes/…``: many tiny or empty clusters mean too many clusters for this sequence length.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import sparseattn
from sparseattn.inspect import Inspector, Selection, attend
from sparseattn.workloads import synthetic_video

SVG2_LAPTOP = {
    "name": "svg2-laptop",
    "base": "svg2",
    "permuter": {"name": "kmeans", "q_clusters": 24, "k_clusters": 96, "iters_first": 20, "clusterer": "torch"},
}


def simulate_generation(strategy, inspector, layers: int, steps: int, size: tuple[int, int, int]) -> None:
    """Every layer at every step, as a transformer's attention processors would call the strategy."""
    cache = sparseattn.StateCache()  # one generation: centroids warm-start from the previous step of each layer
    for step in range(steps):
        noise = 0.3 + 1.2 * (1 - step / max(1, steps - 1))
        for layer in range(layers):
            work = synthetic_video(frames=size[0], height=size[1], width=size[2], heads=2, head_dim=32,
                                   noise=noise, seed=layer)
            ctx = sparseattn.AttentionContext(layer=layer, num_layers=layers, step=step, num_steps=steps,
                                              grid=work.grid, cache=cache)
            attend(strategy, work.q, work.k, work.v, ctx, inspector)


def summarize(logdir: str, png_dir: str | None) -> None:
    """Read the event file back as TensorBoard does; print what is there; optionally save the images."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logdir, size_guidance={"images": 0, "scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    print(f"\n{len(tags['scalars'])} scalar, {len(tags['images'])} image and {len(tags['histograms'])} histogram tags")
    for tag in ("density/layer1/mean", "recall/layer1/mean", "rel_l2/layer1/mean", "time_ms/layer1/cluster"):
        print(f"  {tag:<24} " + "  ".join(f"step {e.step}: {e.value:.4f}" for e in events.Scalars(tag)))
    if png_dir:
        os.makedirs(png_dir, exist_ok=True)
        for tag in tags["images"]:
            last = events.Images(tag)[-1]
            path = os.path.join(png_dir, tag.replace("/", "_") + f"_step{last.step}.png")
            with open(path, "wb") as handle:
                handle.write(last.encoded_image_string)
        print(f"saved the last image of each tag as PNG in {png_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", help="TensorBoard log folder (default: a temporary folder)")
    parser.add_argument("--png", metavar="DIR", help="also save the logged images as PNG files in DIR")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smaller run, for tests")
    args = parser.parse_args()
    logdir = args.logdir or tempfile.mkdtemp(prefix="sparseattn-tutorial3-")
    size = (4, 8, 8) if args.quick else (8, 16, 16)

    strategy = sparseattn.load_strategy(SVG2_LAPTOP)
    # Scalars for every layer and step, images for head 0 of every call. The default, Selection(), picks the middle
    # layer at the first, middle and last step: a sensible budget for a 40-layer, 50-step model.
    selection = Selection(layers="all", steps="all", heads=(0,))
    with Inspector(logdir, selection) as inspector:
        simulate_generation(strategy, inspector, args.layers, args.steps, size)
    print(f"logged {args.layers} layers × {args.steps} steps of {strategy.name} to {logdir}")
    summarize(logdir, args.png)
    print(f"\nNow run:  tensorboard --logdir {logdir}   and open http://localhost:6006")


if __name__ == "__main__":
    main()
