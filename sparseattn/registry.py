"""Component registries: ``@register(kind, name)`` on a class makes it nameable from YAML.

Names resolve in this order: built-in registrations, then ``module:ClassName`` (any importable class that subclasses
the kind's interface), then the ``sparseattn.components`` entry-point group, whose entry names are ``kind.name``
(e.g. ``identifier.my_score = mypkg.scores:MyScore``).
"""
from __future__ import annotations

import importlib
from importlib import metadata
from typing import Callable, TypeVar

from .interfaces import BudgetController, Clusterer, Permuter, SparseKernel, TokenIdentifier

KINDS: dict[str, type] = {
    "permuter": Permuter,
    "identifier": TokenIdentifier,
    "budget": BudgetController,
    "kernel": SparseKernel,
    "clusterer": Clusterer,
}
ENTRY_POINT_GROUP = "sparseattn.components"

_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_BUILTINS_LOADED = False

C = TypeVar("C", bound=type)


def register(kind: str, name: str) -> Callable[[C], C]:
    """Class decorator: register a component class under ``kind`` and ``name``."""
    _check_kind(kind)

    def decorate(cls: C) -> C:
        if not issubclass(cls, KINDS[kind]):
            raise TypeError(f"{cls.__name__} is registered as a {kind} but does not subclass {KINDS[kind].__name__}")
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{kind} '{name}' is already registered by {existing.__module__}.{existing.__name__}")
        cls.name = name
        _REGISTRY[kind][name] = cls
        return cls

    return decorate


def available(kind: str | None = None) -> dict[str, list[str]] | list[str]:
    """Registered names of one kind (sorted), or of every kind as a dict."""
    _load_builtins()
    if kind is not None:
        _check_kind(kind)
        return sorted(_REGISTRY[kind])
    return {k: sorted(v) for k, v in _REGISTRY.items()}


def get(kind: str, name: str) -> type:
    """The component class registered as ``name`` (or importable as ``module:ClassName``) for ``kind``."""
    _check_kind(kind)
    _load_builtins()
    if name in _REGISTRY[kind]:
        return _REGISTRY[kind][name]
    if ":" in name:
        return _import_class(kind, name)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == f"{kind}.{name}":
            cls = entry.load()
            _check_subclass(kind, cls, f"entry point {entry.name} = {entry.value}")
            return cls
    raise KeyError(
        f"unknown {kind} '{name}'; registered {kind}s: {', '.join(sorted(_REGISTRY[kind]))}; "
        f"or give 'module:ClassName', or register an entry point '{kind}.{name}' in group '{ENTRY_POINT_GROUP}'"
    )


def _import_class(kind: str, spec: str) -> type:
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise KeyError(f"cannot import module '{module_name}' for {kind} '{spec}': {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise KeyError(f"module '{module_name}' has no class '{class_name}' (from {kind} '{spec}')")
    _check_subclass(kind, cls, spec)
    return cls


def _check_subclass(kind: str, cls: object, origin: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, KINDS[kind])):
        raise KeyError(f"{origin} is not a subclass of {KINDS[kind].__name__}, so it cannot be used as a {kind}")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise KeyError(f"unknown component kind '{kind}'; kinds: {', '.join(KINDS)}")


def _load_builtins() -> None:
    # Importing the built-in modules runs their @register decorators; done lazily to avoid import cycles.
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


BUILTIN_MODULES = (
    "sparseattn.permuters",
    "sparseattn.identifiers",
    "sparseattn.budgets",
    "sparseattn.kernels",
    "sparseattn.clustering",
    "sparseattn.methods",
)
