"""YAML recipe errors (each names the file and the key), the registry, and out-of-tree components loaded by
``module:ClassName`` and by entry point."""
import re
import sys
import textwrap
from dataclasses import fields
from importlib import metadata

import pytest
import torch

from sparseattn import registry
from sparseattn.config import RECIPE_KEYS, ConfigError, build_component, builtin_recipes
from sparseattn.identifiers import CentroidIdentifier
from sparseattn.interfaces import TokenIdentifier
from sparseattn.permuters import FixedBlockPermuter
from sparseattn.strategy import load_strategy

BUDGETS = f"registered budgets: {', '.join(registry.available('budget'))}"
KERNELS = f"registered kernels: {', '.join(registry.available('kernel'))}"
BLOCKS_PARAMS = f"allowed: {', '.join(f.name for f in fields(FixedBlockPermuter))}"
VALID = {
    "name": "name: mine",
    "permuter": "permuter: {name: blocks, block_size: 4}",
    "identifier": "identifier: centroid",
    "budget": "budget: {name: top_p, p: 0.9}",
}


def recipe_file(tmp_path, **replace):
    """A valid recipe file with some lines replaced (None drops the line)."""
    lines = {**VALID, **replace}
    path = tmp_path / "recipe.yaml"
    path.write_text("\n".join(line for line in lines.values() if line is not None) + "\n")
    return path


@pytest.mark.parametrize(
    "replace, expected",
    [
        (dict(extra="nme: oops"), ["unknown key(s) nme", f"allowed keys: {', '.join(RECIPE_KEYS)}"]),
        (dict(budget="budget: {name: top_q}"), ["key 'budget'", "unknown budget 'top_q'", BUDGETS]),
        (dict(permuter="permuter: {name: blocks, blocksize: 4}"),
         ["unknown parameter(s) blocksize", "permuter 'blocks'", BLOCKS_PARAMS]),
        (dict(budget="budget: {name: top_p, p: 2}"), ["budget 'top_p'", "p must be in (0, 1], got 2"]),
        (dict(budget="budget: {name: top_p, p: high}"), ["budget 'top_p'", "parameter 'p' must be float, got 'high'"]),
        (dict(permuter="permuter: {name: kmeans, q_clusters: 2.5}"),
         ["permuter 'kmeans'", "parameter 'q_clusters' must be int, got 2.5"]),
        (dict(name=None), ["a recipe needs a 'name'"]),
        (dict(budget="budget: {p: 0.9}"), ["'budget' needs a 'name'", BUDGETS]),
        (dict(budget="budget: 5"), ["'budget' must be a name or a mapping"]),
        (dict(identifier=None), ["identifier and budget must be given together"]),
        (dict(extra="schedule: {dense_step: 0.2}"),
         ["unknown key(s) dense_step in 'schedule'", "allowed: dense_steps"]),
        (dict(extra="schedule: {dense_steps: 2}"), ["schedule", "dense_steps must be a fraction in [0, 1]"]),
        (dict(extra="schedule: {cluster_during_dense: 'yes'}"), ["parameter 'cluster_during_dense' must be bool"]),
        (dict(extra="schedule: 0.2"), ["'schedule' must be a mapping"]),
        (dict(extra="kernel: {name: cuda-magic}"), ["key 'kernel'", "unknown kernel 'cuda-magic'", KERNELS]),
        (dict(permuter="permuter: {name: kmeans, clusterer: kmeanz}"),
         ["key 'clusterer'", "unknown clusterer 'kmeanz'", "registered clusterers: "]),
        (dict(extra="base: no-such-recipe"),
         ["key 'base'", "no strategy named 'no-such-recipe'", "built-in strategies: "]),
    ],
)
def test_recipe_errors_name_the_file_and_the_key(tmp_path, replace, expected):
    path = recipe_file(tmp_path, **replace)
    with pytest.raises(ConfigError) as error:
        load_strategy(path)
    message = str(error.value)
    assert str(path) in message
    for part in expected:
        assert part in message, message


def test_parameter_types_follow_the_annotations():
    assert build_component("budget", {"name": "top_p", "p": 1}).p == 1  # an int is a fine float
    assert build_component("permuter", {"name": "blocks", "k_block_size": None}).k_block_size is None
    assert build_component("budget", {"name": "top_k", "k": 3}).k == 3
    for spec, message in [
        ({"name": "top_k", "k": 2.5}, "parameter 'k' must be int or null, got 2.5"),
        ({"name": "top_k", "k": True}, "parameter 'k' must be int or null, got True"),
        ({"name": "top_k", "fraction": "0.5"}, "parameter 'fraction' must be float or null, got '0.5'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(f"<python>: budget 'top_k': {message}")):
            build_component("budget", spec)


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\npermuter: blocks\n")
    with pytest.raises(ConfigError, match=f"(?s){re.escape(str(path))}: not valid YAML.*line 1"):
        load_strategy(path)


def test_recipe_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- name: a\n")
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))}: a recipe must be a mapping"):
        load_strategy(path)


def test_unknown_strategy_lists_the_builtins():
    assert {"dense", "svg2", "blocks-topk"} <= set(builtin_recipes())
    with pytest.raises(ConfigError, match=re.escape(f"no strategy named 'svg3' and no such file; built-in strategies: "
                                                    f"{', '.join(builtin_recipes())}")):
        load_strategy("svg3")


def test_dict_recipe_errors_say_where():
    with pytest.raises(ConfigError, match="<dict recipe>: unknown key"):
        load_strategy({"name": "x", "budgets": "top_p"})


# ----------------------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------------------
def test_registry_lists_builtin_components():
    names = registry.available()
    assert {"kmeans", "blocks"} <= set(names["permuter"])
    assert "centroid" in names["identifier"]
    assert {"top_p", "top_k", "density"} <= set(names["budget"])
    assert {"torch", "sdpa", "auto"} <= set(names["kernel"])
    assert "torch" in names["clusterer"]
    assert registry.get("identifier", "centroid") is CentroidIdentifier
    with pytest.raises(KeyError, match="unknown component kind 'scorer'; kinds: permuter, identifier"):
        registry.available("scorer")


def test_register_refuses_conflicts_and_wrong_interfaces():
    class Impostor(TokenIdentifier):
        def score(self, q, k, layout):
            return None

    with pytest.raises(ValueError, match="identifier 'centroid' is already registered"):
        registry.register("identifier", "centroid")(Impostor)
    with pytest.raises(TypeError, match="does not subclass BudgetController"):
        registry.register("budget", "impostor")(Impostor)
    assert registry.get("identifier", "centroid") is CentroidIdentifier


# ----------------------------------------------------------------------------------------------------------------
# out-of-tree components
# ----------------------------------------------------------------------------------------------------------------
PLUGIN = textwrap.dedent(
    '''
    """An out-of-tree identifier: each key block's share of the tokens, raised to ``power``."""
    from dataclasses import dataclass

    from sparseattn import TokenIdentifier


    @dataclass
    class SizeScore(TokenIdentifier):
        power: float = 1.0

        def __post_init__(self):
            if self.power <= 0:
                raise ValueError(f"power must be > 0, got {self.power}")

        def score(self, q, k, layout):
            weight = layout.k_sizes.float() ** self.power
            share = weight / weight.sum(-1, keepdim=True)
            return share.unsqueeze(-2).expand(*layout.q_sizes.shape, -1).contiguous()


    class NotAComponent:
        pass
    '''
)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A tiny importable module in tmp_path; removed from sys.modules afterwards."""
    name = "sparseattn_test_plugin"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def check_size_score_strategy(identifier_spec):
    strategy = load_strategy({
        "name": "plugin", "permuter": {"name": "blocks", "block_size": 4}, "identifier": identifier_spec,
        "budget": {"name": "top_k", "k": 1},
    })
    assert type(strategy.identifier).__name__ == "SizeScore" and strategy.identifier.power == 2.0
    q = torch.randn(1, 1, 10, 4)  # blocks of 4, 4, 2 tokens: the identifier prefers the first full block
    plan = strategy.plan(q, q)
    assert plan.mask.selected[0, 0].tolist() == [[True, False, False]] * 3


def test_module_colon_class_loads_an_out_of_tree_component(plugin_module):
    check_size_score_strategy({"name": f"{plugin_module}:SizeScore", "power": 2.0})
    with pytest.raises(ConfigError, match=f"{plugin_module}:SizeScore.*power must be > 0"):
        build_component("identifier", {"name": f"{plugin_module}:SizeScore", "power": -1.0})
    with pytest.raises(ConfigError, match="unknown parameter.*alpha.*allowed: power"):
        build_component("identifier", {"name": f"{plugin_module}:SizeScore", "alpha": 1})
    with pytest.raises(ConfigError, match="is not a subclass of TokenIdentifier"):
        build_component("identifier", f"{plugin_module}:NotAComponent")
    with pytest.raises(ConfigError, match="has no class 'Missing'"):
        build_component("identifier", f"{plugin_module}:Missing")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):
        build_component("identifier", "no_such_module_xyz:Score")


def test_entry_point_loads_an_out_of_tree_component(plugin_module, monkeypatch):
    group = registry.ENTRY_POINT_GROUP
    assert group == "sparseattn.components"
    entries = [
        metadata.EntryPoint(name="identifier.size_score", value=f"{plugin_module}:SizeScore", group=group),
        metadata.EntryPoint(name="identifier.bogus", value=f"{plugin_module}:NotAComponent", group=group),
    ]
    asked = []

    def fake_entry_points(**params):
        asked.append(params)
        return [entry for entry in entries if params.get("group") == group]

    monkeypatch.setattr(registry.metadata, "entry_points", fake_entry_points)
    check_size_score_strategy({"name": "size_score", "power": 2.0})
    assert asked and all(params == {"group": group} for params in asked)
    with pytest.raises(ConfigError, match="entry point identifier.bogus .* is not a subclass of TokenIdentifier"):
        build_component("identifier", "bogus")
    with pytest.raises(ConfigError, match="unknown identifier 'other'.*entry point 'identifier.other'"):
        build_component("identifier", "other")
    # the entry name carries the kind: a budget named size_score is not this identifier
    with pytest.raises(ConfigError, match="unknown budget 'size_score'"):
        build_component("budget", "size_score")
