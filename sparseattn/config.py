"""YAML recipes → components. Every error names the file, the key, and what is allowed."""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from importlib import resources
from typing import Any, Mapping, Union

import yaml

from . import registry
from .interfaces import Component

RECIPE_KEYS = ("name", "description", "base", "permuter", "identifier", "budget", "kernel", "schedule")
COMPONENT_KEYS = ("permuter", "identifier", "budget", "kernel")
RecipeSource = Union[str, os.PathLike, Mapping[str, Any]]


class ConfigError(ValueError):
    """A recipe or component specification is invalid; the message says where and what is allowed."""


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped in ``sparseattn.strategies/recipes``."""
    folder = resources.files("sparseattn.strategies") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(source: RecipeSource) -> tuple[dict[str, Any], str]:
    """Read a recipe (built-in name, YAML path or dict), resolve its ``base`` chain, return (recipe, where)."""
    recipe, where = _read(source)
    seen = [where]
    while "base" in recipe:
        base_source = recipe.pop("base")
        try:
            base, base_where = _read(base_source, relative_to=seen[-1])  # relative to the file that names it
        except ConfigError as exc:
            raise ConfigError(f"{seen[-1]}: key 'base': {exc}") from None
        if base_where in seen:
            raise ConfigError(f"{where}: 'base' chain loops: {' → '.join(seen + [base_where])}")
        seen.append(base_where)
        merged = dict(base)
        merged.update(recipe)  # the derived recipe replaces whole sections of its base
        recipe = merged
    return recipe, where


def _read(source: RecipeSource, relative_to: str | None = None) -> tuple[dict[str, Any], str]:
    if isinstance(source, Mapping):
        data, where = dict(source), "<dict recipe>"
    else:
        text_source = os.fspath(source)
        path = text_source
        if relative_to and not os.path.isabs(path) and os.path.isfile(relative_to):
            candidate = os.path.join(os.path.dirname(relative_to), path)
            path = candidate if os.path.exists(candidate) else path
        if os.path.isfile(path):
            where = path
            with open(path, encoding="utf-8") as handle:
                try:
                    data = yaml.safe_load(handle)
                except yaml.YAMLError as exc:
                    raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        elif text_source in builtin_recipes():
            where = f"built-in recipe '{text_source}'"
            text = (resources.files("sparseattn.strategies") / "recipes" / f"{text_source}.yaml").read_text()
            data = yaml.safe_load(text)
        else:
            raise ConfigError(
                f"no strategy named '{text_source}' and no such file; built-in strategies: "
                f"{', '.join(builtin_recipes())}"
            )
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a recipe must be a mapping with keys {', '.join(RECIPE_KEYS)}")
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(RECIPE_KEYS)}")
    return data, where


def build_component(kind: str, spec: Any, where: str = "<python>") -> Component:
    """Instantiate a component from a name, a mapping ``{name: ..., <params>}`` or an existing instance."""
    if isinstance(spec, registry.KINDS[kind]):
        return spec
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{where}: '{kind}' needs a 'name' (registered {kind}s: {_names(kind)})")
    else:
        raise ConfigError(f"{where}: '{kind}' must be a name or a mapping with 'name' and parameters, got {spec!r}")
    try:
        cls = registry.get(kind, name)
    except KeyError as exc:
        raise ConfigError(f"{where}: key '{kind}': {exc.args[0]}") from None
    allowed = [f.name for f in dataclasses.fields(cls) if f.init] if dataclasses.is_dataclass(cls) else []
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown parameter(s) {', '.join(unknown)} for {kind} '{name}'; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )
    check_param_types(cls, params, f"{where}: {kind} '{name}'")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {kind} '{name}': {exc}") from exc


def check_param_types(cls: type, params: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError when a parameter annotated int, float, str or bool (or Optional of one) gets another type.

    YAML makes ``2.5`` or ``"8"`` easy to write where a count is meant; caught here, it is a clear error instead of a
    TypeError deep inside a call. Other annotations (Any, lists, components) are left to the component.
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an out-of-tree class whose annotations do not resolve: nothing to check against
        return
    for key, value in params.items():
        hint = hints.get(key)
        options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
        if not all(option in _SIMPLE_TYPES for option in options):
            continue
        if not any(_matches(value, option) for option in options):
            names = " or ".join("null" if option is type(None) else option.__name__ for option in options)
            raise ConfigError(f"{where}: parameter '{key}' must be {names}, got {value!r}")


_SIMPLE_TYPES = (int, float, str, bool, type(None))


def _matches(value: Any, option: type) -> bool:
    if option is type(None):
        return value is None
    if isinstance(value, bool):  # bool subclasses int, but `true` is no count
        return option is bool
    return isinstance(value, (int, float) if option is float else option)


def _names(kind: str) -> str:
    return ", ".join(registry.available(kind))
