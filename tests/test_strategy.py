"""Composed strategies: equivalence with dense attention, text tokens, the dense schedule, the state cache, input
checks, and load_strategy from names, files and dicts."""
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn import AttentionContext, DenseSchedule, Strategy, load_strategy
from sparseattn.clustering import TorchKMeans
from sparseattn.config import ConfigError
from sparseattn.permuters import FixedBlockPermuter, KMeansPermuter

SMALL_KMEANS = {"name": "kmeans", "q_clusters": 6, "k_clusters": 8, "iters_first": 5, "iters_warm": 2}


def sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


@dataclass
class CountingKMeans(TorchKMeans):
    """The torch backend, recording the iteration budget of every call."""

    iters: list = field(default_factory=list)

    def fit(self, x, centroids, iters, tol=0.0):
        self.iters.append(iters)
        return super().fit(x, centroids, iters, tol)


def counting_svg2(**overrides):
    clusterer = CountingKMeans()
    strategy = load_strategy("svg2", permuter=dict(SMALL_KMEANS, clusterer=clusterer), **overrides)
    return strategy, clusterer


# ----------------------------------------------------------------------------------------------------------------
# equivalence and text tokens
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text_tokens, dtype", [(0, torch.float32), (5, torch.float32), (5, torch.bfloat16)])
def test_svg2_with_top_p_one_equals_dense(ref, text_tokens, dtype):
    q, k, v = ref.random_qkv(2, 2, 24 + text_tokens, 8, seed=3, dtype=dtype)
    strategy = load_strategy("svg2", permuter=SMALL_KMEANS, budget={"name": "top_p", "p": 1.0})
    ctx = AttentionContext(grid=(2, 3, 4), text_tokens=text_tokens)
    plan = strategy.plan(q, k, ctx)
    assert not plan.dense and plan.layout.q_order is not None  # the sparse path ran, with a real permutation
    torch.testing.assert_close(plan.density, torch.ones(2, 2))
    out = strategy(q, k, v, ctx)  # a warm-started call
    assert out.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bfloat16: the output is rounded to 8 bits
    torch.testing.assert_close(out.float(), sdpa(q.float(), k.float(), v.float()), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("recipe", ["svg2", "blocks-topk"])
def test_text_block_attends_and_is_attended_by_everything(ref, recipe):
    video, text = 24, 5
    q, k, v = ref.random_qkv(1, 2, video + text, 8, seed=4)
    permuter = SMALL_KMEANS if recipe == "svg2" else {"name": "blocks", "block_size": 4}
    strategy = load_strategy(recipe, permuter=permuter, budget={"name": "top_k", "k": 1})

    def context():
        return AttentionContext(grid=(2, 3, 4), text_tokens=text)

    plan = strategy.plan(q, k, context())
    layout, selected = plan.layout, plan.mask.selected
    assert (layout.q_sizes[..., -1] == text).all() and (layout.k_sizes[..., -1] == text).all()
    if layout.q_order is not None:
        assert (layout.q_order[..., video:] == torch.arange(video, video + text)).all()
        assert (layout.kv_order[..., video:] == torch.arange(video, video + text)).all()
        assert (layout.q_order[..., :video].sort(-1).values == torch.arange(video)).all()
    assert selected[..., -1, :].all() and selected[..., :, -1].all()
    assert not selected[..., :-1, :-1].all()  # the video part is really sparse, so the test means something
    out = strategy(q, k, v, context())  # a fresh context: the same (cold) plan as above
    for hi in range(2):
        allowed = ref.token_mask(layout, plan.mask, 0, hi)
        assert allowed[video:].all() and allowed[:, video:].all()
        expected = ref.masked_attention(q[0, hi], k[0, hi], v[0, hi], allowed)
        torch.testing.assert_close(out[0, hi].double(), expected, atol=2e-6, rtol=1e-5)


def test_text_tokens_must_fit_the_grid(ref):
    q, k, v = ref.random_qkv(1, 1, 30, 8)
    strategy = load_strategy("svg2", permuter=SMALL_KMEANS)
    with pytest.raises(ValueError, match=r"grid \(2, 3, 4\) has 24 video tokens, plus 5 text tokens = 29"):
        strategy(q, k, v, AttentionContext(grid=(2, 3, 4), text_tokens=5))
    with pytest.raises(ValueError, match="text_tokens"):
        strategy(q, k, v, AttentionContext(text_tokens=30))


@settings(max_examples=20, deadline=None)
@given(
    recipe=st.sampled_from(["svg2", "blocks-topk", "density", "dense"]), n=st.integers(1, 40),
    text=st.integers(0, 4), seed=st.integers(0, 1000),
)
def test_plan_density_is_a_fraction(ref, recipe, n, text, seed):
    q, k, _ = ref.random_qkv(1, 2, n + text, 4, seed)
    if recipe == "svg2":
        strategy = load_strategy("svg2", permuter=SMALL_KMEANS)
    elif recipe == "density":
        strategy = load_strategy("blocks-topk", budget={"name": "density", "density": 0.3},
                                 permuter={"name": "blocks", "block_size": 4})
    else:
        strategy = load_strategy(recipe)
    density = strategy.plan(q, k, AttentionContext(text_tokens=text)).density
    assert density.shape == (1, 2)
    assert bool(((density >= 0) & (density <= 1)).all())
    if recipe == "dense":
        assert bool((density == 1).all())


# ----------------------------------------------------------------------------------------------------------------
# dense schedule
# ----------------------------------------------------------------------------------------------------------------
def test_dense_schedule_floors_the_fractions():
    # every percentage against every count up to 120: the first ⌊fraction·count⌋ steps (layers) are dense, exactly,
    # including products that binary floating point puts just below an integer (0.29·100 = 28.999999999999996)
    for pct in range(101):
        fraction = pct / 100
        steps_only, layers_only = DenseSchedule(dense_steps=fraction), DenseSchedule(dense_layers=fraction)
        for count in range(1, 121):
            dense = int(Fraction(pct, 100) * count)
            for index in (dense - 1, dense):
                if 0 <= index < count:
                    at_step = AttentionContext(step=index, num_steps=count, layer=0, num_layers=1)
                    at_layer = AttentionContext(layer=index, num_layers=count, step=0, num_steps=1)
                    assert steps_only.is_dense(at_step) == (index < dense), (pct, count, index)
                    assert layers_only.is_dense(at_layer) == (index < dense), (pct, count, index)


@settings(max_examples=40, deadline=None)
@given(
    steps_pct=st.integers(0, 100), layers_pct=st.integers(0, 100), num_steps=st.integers(1, 60),
    num_layers=st.integers(1, 60), data=st.data(),
)
def test_dense_schedule_is_dense_in_either_range(steps_pct, layers_pct, num_steps, num_layers, data):
    step = data.draw(st.integers(0, num_steps - 1))
    layer = data.draw(st.integers(0, num_layers - 1))
    schedule = DenseSchedule(dense_steps=steps_pct / 100, dense_layers=layers_pct / 100)
    ctx = AttentionContext(layer=layer, num_layers=num_layers, step=step, num_steps=num_steps)
    expected = step < int(Fraction(steps_pct, 100) * num_steps) or layer < int(Fraction(layers_pct, 100) * num_layers)
    assert schedule.is_dense(ctx) == expected


def test_dense_schedule_svg2_defaults():
    schedule = load_strategy("svg2").schedule
    wan = dict(num_layers=40, num_steps=50)
    assert [schedule.is_dense(AttentionContext(step=s, **wan, layer=5)) for s in (0, 9, 10, 49)] == [
        True, True, False, False]
    assert [schedule.is_dense(AttentionContext(layer=layer, **wan, step=30)) for layer in (0, 1)] == [True, False]
    assert not schedule.is_dense(None)  # without a context there is no schedule to follow
    with pytest.raises(ValueError, match="dense_steps"):
        DenseSchedule(dense_steps=1.5)


def test_dense_steps_run_dense_attention_and_skip_clustering(ref):
    q, k, v = ref.random_qkv(1, 2, 24, 8, seed=5)
    strategy, clusterer = counting_svg2()
    ctx = AttentionContext(step=0, num_steps=10, layer=3, num_layers=10)
    plan = strategy.plan(q, k, ctx)
    assert plan.dense and bool((plan.density == 1).all())
    torch.testing.assert_close(strategy(q, k, v, ctx), sdpa(q, k, v))
    assert clusterer.iters == [] and len(ctx.cache) == 0


def test_cluster_during_dense_warms_the_cache(ref):
    q, k, v = ref.random_qkv(1, 2, 24, 8, seed=6)
    strategy, clusterer = counting_svg2(
        schedule={"dense_steps": 0.5, "dense_layers": 0.0, "cluster_during_dense": True}
    )
    ctx = AttentionContext(step=0, num_steps=4, layer=0, num_layers=2)
    torch.testing.assert_close(strategy(q, k, v, ctx), sdpa(q, k, v))  # dense output...
    assert clusterer.iters == [5, 5]  # ...but q and k were clustered (cold)
    assert set(ctx.layer_state()) == {"q_centroids", "k_centroids"}
    ctx.step = 2
    assert not strategy.plan(q, k, ctx).dense
    assert clusterer.iters == [5, 5, 2, 2]  # the first sparse step starts warm


# ----------------------------------------------------------------------------------------------------------------
# state cache
# ----------------------------------------------------------------------------------------------------------------
def test_state_cache_warm_starts_per_layer_and_resets(ref):
    q, k, v = ref.random_qkv(1, 2, 24, 8, seed=7)
    strategy, clusterer = counting_svg2()
    ctx = AttentionContext(layer=1, num_layers=3)
    strategy(q, k, v, ctx)
    strategy(q, k, v, ctx)
    assert clusterer.iters == [5, 5, 2, 2]
    ctx.layer = 2  # another layer has its own centroids
    strategy(q, k, v, ctx)
    assert clusterer.iters[4:] == [5, 5] and len(ctx.cache) == 2
    ctx.cache.reset()
    assert len(ctx.cache) == 0
    strategy(q, k, v, ctx)
    assert clusterer.iters[6:] == [5, 5]
    strategy(q, k, v, None)  # no context: no cache, no warm start
    assert clusterer.iters[8:] == [5, 5]


# ----------------------------------------------------------------------------------------------------------------
# bad tensors
# ----------------------------------------------------------------------------------------------------------------
def good():
    return [torch.randn(1, 2, 16, 8) for _ in range(3)]


def with_nan():
    q, k, v = good()
    k[0, 1, 3, 2] = float("nan")
    return q, k, v


def with_inf():
    q, k, v = good()
    v[0, 0, 0, 0] = float("inf")
    return q, k, v


BAD_INPUTS = {
    "rank": (lambda: [t[0] for t in good()], "4 dims"),
    "shapes": (lambda: [good()[0], torch.randn(1, 2, 15, 8), torch.randn(1, 2, 15, 8)], "same shape"),
    "dtypes": (lambda: [good()[0], good()[1].half(), good()[2]], "share one dtype"),
    "int dtype": (lambda: [torch.ones(1, 2, 16, 8, dtype=torch.int32)] * 3, "dtype torch.int32"),
    "float64": (lambda: [t.double() for t in good()], "supported: float16, bfloat16, float32"),
    "devices": (lambda: [good()[0], torch.empty(1, 2, 16, 8, device="meta"), good()[2]], "one device"),
    "nan": (with_nan, "k contains NaN or Inf"),
    "inf": (with_inf, "v contains NaN or Inf"),
    "head dim": (lambda: [torch.randn(1, 1, 2, 1024)] * 3, "head_dim 1024 is not supported"),
    "empty": (lambda: [torch.randn(1, 2, 0, 8)] * 3, "must not be empty"),
    "not a tensor": (lambda: [good()[0].numpy()] * 3, "must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("recipe", ["svg2", "dense"])
def test_bad_tensors_raise_clear_errors(case, recipe):
    make, message = BAD_INPUTS[case]
    strategy = load_strategy(recipe)
    q, k, v = make()
    with pytest.raises(ValueError, match=message):
        strategy(q, k, v)
    if case != "inf":  # plan() sees only q and k
        with pytest.raises(ValueError, match=message):
            strategy.plan(q, k)


def test_huge_finite_inputs_are_accepted():
    # Their fp32 sums overflow to inf, which only sends the finiteness check down its exact path.
    q, k, v = good()
    q[0, 0, :, 0] = 3e38
    q[0, 0, :, 1] = -3e38
    assert torch.isinf(q.sum()) or torch.isnan(q.sum())
    load_strategy("dense")(q, k, v)


def test_bad_context_raises():
    with pytest.raises(ValueError, match="layer"):
        AttentionContext(layer=3, num_layers=2)
    with pytest.raises(ValueError, match="step"):
        AttentionContext(step=-1)
    with pytest.raises(ValueError, match="grid"):
        AttentionContext(grid=(2, 0, 3))


# ----------------------------------------------------------------------------------------------------------------
# load_strategy
# ----------------------------------------------------------------------------------------------------------------
def test_load_builtin_strategies():
    svg2 = load_strategy("svg2")
    assert isinstance(svg2.permuter, KMeansPermuter)
    assert (svg2.permuter.q_clusters, svg2.permuter.k_clusters, svg2.budget.p, svg2.budget.min_ratio) == (
        300, 1000, 0.9, 0.1)
    assert (svg2.schedule.dense_steps, svg2.schedule.dense_layers) == (0.2, 0.03)
    assert load_strategy("dense").is_dense
    assert isinstance(load_strategy("blocks-topk").permuter, FixedBlockPermuter)
    assert load_strategy(svg2) is svg2


def test_load_strategy_from_yaml_and_dict(tmp_path):
    text = "name: mine\npermuter: {name: blocks, block_size: 8}\nidentifier: centroid\nbudget: {name: top_k, k: 2}\n"
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    for source in (path, str(path), {"name": "mine", "permuter": {"name": "blocks", "block_size": 8},
                                     "identifier": "centroid", "budget": {"name": "top_k", "k": 2}}):
        strategy = load_strategy(source)
        assert strategy.name == "mine" and strategy.permuter.block_size == 8 and strategy.budget.k == 2
        assert strategy.kernel.name == "auto"  # the default kernel


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("name: root\npermuter: {name: blocks, block_size: 8}\nidentifier: centroid\n"
                                        "budget: {name: top_k, k: 1}\nschedule: {dense_steps: 0.5}\n")
    (tmp_path / "sub" / "middle.yaml").write_text("base: ../root.yaml\nbudget: {name: top_p, p: 0.7}\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("base: middle.yaml\nname: leaf\n")  # each base is relative to its file
    leaf = load_strategy(tmp_path / "sub" / "leaf.yaml")
    assert leaf.name == "leaf" and leaf.permuter.block_size == 8 and leaf.budget.p == 0.7
    assert leaf.schedule.dense_steps == 0.5
    derived = load_strategy({"base": "svg2", "name": "svg2-fast", "budget": {"name": "top_p", "p": 0.5}})
    assert derived.permuter.q_clusters == 300 and derived.budget.p == 0.5 and derived.schedule.dense_steps == 0.2
    overridden = load_strategy("svg2", name="svg2-k", budget={"name": "top_k", "fraction": 0.2}, schedule=None)
    assert overridden.name == "svg2-k" and overridden.budget.fraction == 0.2
    assert overridden.schedule == DenseSchedule()
    with pytest.raises(ConfigError, match="unknown override.*bogus.*allowed: name, description"):
        load_strategy("svg2", bogus=1)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\nname: loop\n")
    with pytest.raises(ConfigError, match="loops"):
        load_strategy(tmp_path / "loop.yaml")


def test_identifier_and_budget_go_together():
    with pytest.raises(ValueError, match="identifier and budget"):
        load_strategy({"name": "half", "permuter": "blocks", "identifier": "centroid"})
    whole = Strategy("all-pairs", FixedBlockPermuter(4), None, None, load_strategy("svg2").kernel)
    assert bool((whole.plan(torch.randn(1, 1, 10, 4), torch.randn(1, 1, 10, 4)).density == 1).all())
