"""The docs stay true to the code: the generated component reference is current, the YAML reference names every key,
local links resolve, and every public class and function of the package has a docstring."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
import re

import pytest

import sparseattn
from sparseattn import config, docgen, registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as handle:
        return handle.read()


def test_components_md_is_generated_from_the_registry():
    assert read("docs", "components.md") == docgen.generate(), "run: python -m sparseattn.docgen"


def test_generated_reference_lists_every_component_and_parameter():
    text = docgen.generate()
    for kind, names in registry.available().items():
        for name in names:
            cls = registry.get(kind, name)
            if not cls.__module__.startswith("sparseattn"):
                continue
            assert f"### {kind} `{name}`" in text
            for field in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ():
                if field.init:
                    assert f"| `{field.name}` |" in text, (kind, name, field.name)


def test_docgen_check_mode(tmp_path, capsys):
    stale = tmp_path / "components.md"
    stale.write_text("old\n")
    assert docgen.main(["--check", "--out", str(stale)]) == 1
    assert docgen.main(["--out", str(stale)]) == 0
    assert docgen.main(["--check", "--out", str(stale)]) == 0


def test_yaml_reference_documents_every_key():
    text = read("docs", "yaml.md")
    for key in config.RECIPE_KEYS:
        assert f"`{key}`" in text, key
    for field in dataclasses.fields(sparseattn.DenseSchedule):
        assert f"`{field.name}`" in text, field.name


def _local_links(path: str) -> list[tuple[str, str]]:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(path))
    return [(path, link) for link in links if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize(
    "path",
    ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(DOCS)) if f.endswith(".md")]
    + [os.path.join("tutorials", f) for f in sorted(os.listdir(os.path.join(ROOT, "tutorials"))) if f.endswith(".md")],
)
def test_local_links_resolve(path):
    missing = [link for _, link in _local_links(path)
               if not os.path.exists(os.path.normpath(os.path.join(ROOT, os.path.dirname(path), link)))]
    assert not missing, f"{path} links to missing files: {missing}"


def _package_modules():
    names = []
    for package in ("sparseattn", "sparseattn.kernels", "sparseattn.clustering"):
        folder = importlib.import_module(package).__path__[:1]  # sparseattn's second entry is the checkout root
        names += [package] + [info.name for info in pkgutil.walk_packages(folder, package + ".")]
    return sorted(set(names))


def test_public_classes_and_functions_have_docstrings():
    undocumented = []
    for name in _package_modules():
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional extra (e.g. diffusers) is not installed here
            continue
        for attribute, obj in vars(module).items():
            if attribute.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not inspect.getdoc(obj):
                undocumented.append(f"{name}.{attribute}")
            if inspect.isclass(obj):
                for method, member in vars(obj).items():
                    function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if method.startswith("_") or not inspect.isfunction(function):
                        continue
                    if not inspect.getdoc(getattr(obj, method)):
                        undocumented.append(f"{name}.{attribute}.{method}")
    assert not undocumented, "public API without docstrings: " + ", ".join(undocumented)
