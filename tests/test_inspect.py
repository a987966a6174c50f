"""TensorBoard inspection: pooled maps against a brute-force N×N definition, and event files read back with
tensorboard's own reader (images, histograms and scalars with the right shapes and values)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sparseattn
from sparseattn import metrics
from sparseattn import inspect as sa_inspect
from sparseattn.cli import main as cli_main
from sparseattn.inspect import (
    CAPTION, GAP, Inspector, Selection, attend, attention_maps, render_cluster_frames, render_maps,
)
from sparseattn.interfaces import BlockMask
from sparseattn.permuters import FixedBlockPermuter
from sparseattn.strategy import AttentionPlan, dense_attention
from sparseattn.workloads import save_capture, synthetic_video

SMALL_SVG2 = {
    "name": "svg2-small",
    "permuter": {"name": "kmeans", "q_clusters": 6, "k_clusters": 10, "iters_first": 10, "seed": 1},
    "identifier": "centroid",
    "budget": {"name": "top_p", "p": 0.8},
    "kernel": "torch",
    "schedule": {"dense_steps": 0.34},
}


@pytest.fixture(scope="module")
def workload():
    return synthetic_video(frames=3, height=4, width=6, heads=3, head_dim=16, seed=3)


def read_events(logdir) -> EventAccumulator:
    keep_all = {"images": 0, "scalars": 0, "histograms": 0, "tensors": 0}
    accumulator = EventAccumulator(str(logdir), size_guidance=keep_all)
    accumulator.Reload()
    return accumulator


def decode(event) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def scalar(accumulator: EventAccumulator, tag: str, step: int) -> float:
    (value,) = [e.value for e in accumulator.Scalars(tag) if e.step == step]
    return value


# ------------------------------------------------------------------------------------------------------------------
def brute_force_maps(ref, q, k, plan, b, h, resolution, positions):
    """The definition: the full N×N softmax and token mask, averaged over the tokens whose positions (in the chosen
    order) fall in each cell — as one-hot cell matrices: pooled = Cq · X · Ckᵀ / (|cell_q| · |cell_k|)."""
    n = q.shape[2]
    r = min(resolution, n)
    probs = ref.dense_probs(q[b, h], k[b, h])
    mask = ref.token_mask(plan.layout, plan.mask, b, h).double()
    cell_q, cell_k = ((pos[None, :] * r // n == torch.arange(r)[:, None]).double() for pos in positions)
    area = cell_q.sum(1)[:, None] * cell_k.sum(1)[None, :]
    return [cell_q @ x @ cell_k.T / area for x in (probs, probs * (1 - mask), mask)]


@pytest.mark.parametrize("resolution", [7, 64])
def test_attention_maps_match_brute_force(ref, workload, resolution):
    strategy = sparseattn.load_strategy({**SMALL_SVG2, "schedule": {}})
    q, k = workload.q, workload.k
    plan = strategy.plan(q, k)
    n = q.shape[2]
    maps = attention_maps(q, k, plan, batch=0, head=1, resolution=resolution, max_scores=5 * n)  # 5-row chunks
    assert set(maps) == {"original", "permuted"}
    inverse = [torch.argsort(order[0, 1]) for order in (plan.layout.q_order, plan.layout.kv_order)]
    for order, positions in (("original", (torch.arange(n), torch.arange(n))), ("permuted", inverse)):
        expected = brute_force_maps(ref, q, k, plan, 0, 1, resolution, positions)
        for got, want in zip((maps[order].attention, maps[order].missed, maps[order].selected), expected):
            assert got.shape == (min(resolution, n),) * 2
            torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-5)
    # the missed mass, summed back over the cells, is what the recall metric says the mask drops
    r = min(resolution, n)
    cell_sizes = torch.bincount(torch.arange(n) * r // n, minlength=r).double()
    missed_total = float((maps["original"].missed.double() * cell_sizes[:, None] * cell_sizes[None, :]).sum()) / n
    assert missed_total == pytest.approx(1 - float(metrics.attention_recall(q, k, plan)[0, 1]), abs=1e-5)


def test_fixed_blocks_have_one_order(workload):
    strategy = sparseattn.load_strategy("blocks-topk", permuter={"name": "blocks", "block_size": 8})
    assert set(attention_maps(workload.q, workload.k, strategy.plan(workload.q, workload.k))) == {"original"}


# ------------------------------------------------------------------------------------------------------------------
def test_mask_panel_pixels_reflect_a_known_mask(tmp_path):
    """4×4 fixed blocks of 16 tokens; the mask keeps the diagonal and block (0, 3). In the middle panel every kept
    block is tinted cyan and every dropped block is pure grey; in the missed panel kept blocks are black."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 64, 8) for _ in range(3))
    layout = FixedBlockPermuter(block_size=16).permute(q, k)
    selected = torch.eye(4, dtype=torch.bool)
    selected[0, 3] = True
    plan = AttentionPlan(layout, BlockMask(selected[None, None]), dense=False)
    with Inspector(tmp_path, Selection(layers="all", steps="all")) as inspector:
        inspector.log_call(q, k, v, plan)
    (event,) = read_events(tmp_path).Images("attention/layer0/head0/original")
    image = decode(event).astype(int)
    panel = 128  # 64 cells enlarged twice to reach the 128-pixel minimum
    assert image.shape == (CAPTION + panel, 3 * panel + 2 * GAP, 3)
    image = image[CAPTION:]
    mask_panel = image[:, panel + GAP: 2 * panel + GAP]
    missed_panel = image[:, 2 * (panel + GAP):]
    for i in range(4):
        for j in range(4):
            block = (slice(32 * i + 2, 32 * i + 30), slice(32 * j + 2, 32 * j + 30))
            red, green, blue = (mask_panel[block][..., c] for c in range(3))
            if selected[i, j]:
                assert (blue - red >= 100).all() and (green - red >= 80).all(), (i, j)
                assert (missed_panel[block] == [0, 0, 4]).all(), (i, j)  # inferno's black: no missed mass
            else:
                assert (red == green).all() and (green == blue).all(), (i, j)
                assert (missed_panel[block].sum(-1) > 4).any(), (i, j)  # some attention is missed there


def test_render_maps_scale():
    ones = torch.ones(4, 4)
    maps = sa_inspect.AttentionMaps(attention=ones / 16, missed=ones * 1e-9, selected=torch.zeros(4, 4))
    image = render_maps(maps, min_side=4)
    assert image.shape == (CAPTION + 4, 12 + 2 * GAP, 3) and image.dtype == np.uint8
    assert (image[:CAPTION] < 255).any()  # the captions
    image = image[CAPTION:]
    assert (image[:, :4] == [252, 255, 164]).all()  # the maximum is the top of the colour map
    assert (image[:, 4 + GAP: 8 + GAP] == 255).all()  # grey at full brightness, no tint
    assert (image[:, 8 + 2 * GAP:] == [0, 0, 4]).all()  # 1e-9 is more than 4 decades below 1/16: black


def test_cluster_frames_colour_by_id():
    grid = (5, 2, 3)
    ids = torch.arange(30) % 4
    image = render_cluster_frames(ids, grid, max_frames=3, min_height=2)
    assert image.shape == (CAPTION + 2, 3 * 3 + 2 * GAP, 3)  # frames 0, 2, 4 in one row, each 2×3 pixels
    image = image[CAPTION:]
    frames = ids.reshape(grid).numpy()
    palette = {int(i): tuple(sa_inspect._palette(np.array([i]))[0]) for i in range(4)}
    assert len(set(palette.values())) == 4
    for column, t in enumerate((0, 2, 4)):
        tile = image[:, column * (3 + GAP): column * (3 + GAP) + 3]
        for y in range(2):
            for x in range(3):
                assert tuple(tile[y, x]) == palette[int(frames[t, y, x])]


# ------------------------------------------------------------------------------------------------------------------
def test_events_hold_images_histograms_and_scalars(tmp_path, workload):
    strategy = sparseattn.load_strategy(SMALL_SVG2)
    q, k, v = workload.q, workload.k, workload.v
    cache = sparseattn.StateCache()
    reference_cache = sparseattn.StateCache()
    expected = {}
    with Inspector(tmp_path, Selection(layers="all", steps=(0, 2), heads=(0, 2)), resolution=32) as inspector:
        for step in range(3):
            ctx = sparseattn.AttentionContext(step=step, num_steps=3, grid=workload.grid, cache=cache)
            out = inspector.attend(strategy, q, k, v, ctx)
            # the same call without the inspector: the output is identical and so is the plan
            ref_ctx = sparseattn.AttentionContext(step=step, num_steps=3, grid=workload.grid, cache=reference_cache)
            plan = strategy.plan(q, k, ref_ctx)
            assert torch.equal(out, strategy.attend(q, k, v, plan))
            expected[step] = (plan, out)
    events = read_events(tmp_path)
    tags = events.Tags()
    heads, n = q.shape[1], q.shape[2]

    for step in (0, 2):  # step 1 is not selected
        plan, out = expected[step]
        recall = metrics.attention_recall(q, k, plan)[0]
        reference = dense_attention(q, k, v)
        for h in range(heads):
            assert scalar(events, f"density/layer0/head{h}", step) == pytest.approx(float(plan.density[0, h]))
            assert scalar(events, f"recall/layer0/head{h}", step) == pytest.approx(float(recall[h]))
            assert scalar(events, f"rel_l2/layer0/head{h}", step) == pytest.approx(
                metrics.relative_l2(out[:, h], reference[:, h]), rel=1e-5)
        assert scalar(events, "density/layer0/mean", step) == pytest.approx(float(plan.density.mean()))
    assert {e.step for e in events.Scalars("density/layer0/head0")} == {0, 2}
    # step 0 is dense (dense_steps 0.34 of 3 steps): density 1, recall 1, no error; step 2 is sparse
    assert scalar(events, "density/layer0/mean", 0) == 1.0 and scalar(events, "rel_l2/layer0/mean", 0) == 0.0
    assert scalar(events, "density/layer0/mean", 2) < 0.9

    stages = {t.rsplit("/", 1)[1] for t in tags["scalars"] if t.startswith("time_ms/")}
    assert stages == set(sa_inspect.STAGES)
    sparse_total = scalar(events, "time_ms/layer0/total", 2)
    parts = sum(scalar(events, f"time_ms/layer0/{s}", 2) for s in sa_inspect.STAGES if s != "total")
    assert 0 < parts <= sparse_total * 1.01

    panel = 128  # 32-cell maps enlarged 4× to reach 128 pixels
    for h in (0, 2):
        for order in ("original", "permuted"):
            (image,) = [e for e in events.Images(f"attention/layer0/head{h}/{order}") if e.step == 2]
            assert (image.height, image.width) == (CAPTION + panel, 3 * panel + 2 * GAP)
        for side, sizes in (("q", plan.layout.q_sizes), ("k", plan.layout.k_sizes)):
            (frames,) = events.Images(f"clusters/layer0/head{h}/{side}")  # the dense step has no clusters
            assert (frames.height, frames.width) == (CAPTION + 4 * 16, 3 * 6 * 16 + 2 * GAP)  # 3 frames, 4×6, 16×
            (histogram,) = events.Histograms(f"cluster_sizes/layer0/head{h}/{side}")
            assert histogram.step == 2
            assert histogram.histogram_value.num == sizes.shape[-1]
            assert histogram.histogram_value.sum == n
    assert not any("head1" in t for t in tags["images"])
    assert "strategy/text_summary" in tags["tensors"]


def test_maps_show_svg2_missing_less_than_fixed_blocks():
    """What a researcher should see: after SVG2's permutation the attention mass concentrates in blocks on and near
    the block structure, so the mask covers more of it than fixed blocks do at a similar density."""
    work = synthetic_video(frames=4, height=8, width=8, heads=1, head_dim=32, seed=0)
    svg2 = sparseattn.load_strategy("svg2", permuter={"name": "kmeans", "q_clusters": 8, "k_clusters": 32})
    blocks = sparseattn.load_strategy("blocks-topk", permuter={"name": "blocks", "block_size": 32})
    recalls = {}
    for strategy in (svg2, blocks):
        plan = strategy.plan(work.q, work.k)
        maps = attention_maps(work.q, work.k, plan, resolution=32)["original"]
        recalls[strategy.name] = 1 - float(maps.missed.sum() / maps.attention.sum())
    assert recalls["svg2"] > recalls["blocks-topk"]


# ------------------------------------------------------------------------------------------------------------------
def test_off_costs_nothing(tmp_path, workload, monkeypatch):
    strategy = sparseattn.load_strategy(SMALL_SVG2)

    def forbidden(*args, **kwargs):
        raise AssertionError("logging work ran for a call that is not logged")

    monkeypatch.setattr(sa_inspect, "attention_maps", forbidden)
    monkeypatch.setattr(sa_inspect.metrics, "attention_recall", forbidden)
    monkeypatch.setattr(sa_inspect, "_timed_strategy", forbidden)
    q, k, v = workload.q, workload.k, workload.v
    ctx = sparseattn.AttentionContext(layer=1, num_layers=4, step=2, num_steps=3, grid=workload.grid)
    expected = strategy(q, k, v, sparseattn.AttentionContext(layer=1, num_layers=4, step=2, num_steps=3))
    assert torch.equal(attend(strategy, q, k, v, ctx, inspector=None), expected)
    unpicked = Inspector(tmp_path / "never", Selection(layers=(0,)))
    ctx.cache.reset()
    assert torch.equal(attend(strategy, q, k, v, ctx, inspector=unpicked), expected)
    unpicked.close()
    assert not (tmp_path / "never").exists()


def test_each_layer_and_step_is_logged_once(tmp_path, workload):
    strategy = sparseattn.load_strategy("dense")
    with Inspector(tmp_path, Selection(heads=())) as inspector:
        ctx = sparseattn.AttentionContext(layer=0, num_layers=1, grid=workload.grid)
        assert inspector.wants(ctx)
        inspector.attend(strategy, workload.q, workload.k, workload.v, ctx)
        assert not inspector.wants(ctx)  # e.g. the unconditional pass of classifier-free guidance
        inspector.attend(strategy, workload.q, workload.k, workload.v, ctx)
    events = read_events(tmp_path)
    assert len(events.Scalars("density/layer0/head0")) == 1
    assert events.Tags()["images"] == []


def test_selection_defaults_and_parsing():
    default = Selection()
    assert default.picks(layer=20, num_layers=40, step=25, num_steps=50)
    assert default.picks(layer=20, num_layers=40, step=49, num_steps=50)
    assert not default.picks(layer=19, num_layers=40, step=0, num_steps=50)
    assert not default.picks(layer=20, num_layers=40, step=1, num_steps=50)
    assert default.image_heads(torch.zeros(1, 8, 2, 2)) == [0]
    parsed = Selection.parse("layers=all; heads=0,-1; steps=middle,-1; batch=1")
    assert parsed == Selection(layers="all", heads=(0, -1), steps=("middle", -1), batch=1)
    assert parsed.image_heads(torch.zeros(2, 8, 2, 2)) == [0, 7]
    assert Selection.parse("") == Selection()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Selection.parse("layer=3"), "keys layers, steps, heads, batch"),
        (lambda: Selection.parse("heads=first"), "bad value 'first'"),
        (lambda: Selection(heads=("middle",)), "Selection.heads"),
        (lambda: Selection(layers=(1.5,)), "Selection.layers"),
        (lambda: Selection(heads=(4,)).image_heads(torch.zeros(1, 4, 2, 2)), "only 4 heads"),
        (lambda: Selection(batch=2).image_heads(torch.zeros(2, 4, 2, 2)), "batch has 2 entries"),
        (lambda: Selection(layers=(7,)).picks(0, 4, 0, 1), "only 4 layers"),
    ],
)
def test_selection_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ------------------------------------------------------------------------------------------------------------------
def test_compare_logdir_end_to_end(tmp_path, workload, capsys):
    import yaml

    capture = tmp_path / "tiny.safetensors"
    save_capture(capture, workload)
    recipe = tmp_path / "svg2-small.yaml"
    recipe.write_text(yaml.safe_dump({**SMALL_SVG2, "schedule": {}}))
    logdir = tmp_path / "logs"
    code = cli_main(["compare", "--workload", str(capture), "--strategy", "dense", "--strategy", str(recipe),
                     "--repeat", "1", "--no-progress", "--logdir", str(logdir), "--log-select", "heads=1"])
    assert code == 0
    assert f"tensorboard --logdir {logdir}" in capsys.readouterr().out
    sparse = read_events(logdir / "tiny" / "svg2-small")
    assert {e.step for e in sparse.Scalars("recall/layer0/head2")} == {0, 1}  # cold and warm-started calls
    assert "attention/layer0/head1/permuted" in sparse.Tags()["images"]
    assert scalar(read_events(logdir / "tiny" / "dense"), "recall/layer0/mean", 0) == 1.0
    assert cli_main(["compare", "--workload", str(capture), "--logdir", str(logdir), "--log-select", "heads=5"]) == 2
    assert "only 3 heads" in capsys.readouterr().err
