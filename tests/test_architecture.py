"""The house rules, checked on the source: arrows point down (train -> jaxmodels -> layers), a family never imports
another, nothing names a family outside its own package and the registry, no private JAX module is imported, and
configs/ holds experiment configs only. Read by ``ast`` (imports and string constants), so comments may say
anything."""

from __future__ import annotations

import ast
import glob
import os

import pytest

import jaxmodels
from jaxmodels import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = registry.model_types()


def _sources(*folders: str) -> list[str]:
    return sorted(p for f in folders for p in glob.glob(os.path.join(ROOT, f, "**", "*.py"), recursive=True))


def _imports(path: str) -> set[str]:
    tree = ast.parse(open(path).read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _strings(path: str) -> set[str]:
    """String constants that are not docstrings."""
    tree = ast.parse(open(path).read(), path)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body and \
                isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            docstrings.add(id(node.body[0].value))
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def test_no_private_jax_module_is_imported_anywhere():
    private = "jax." + "_src"
    offenders = [f"{_rel(p)}: {name}" for p in _sources("layers", "jaxmodels", "train", "tests", "benchmarks",
                                                        "configs")
                 for name in _imports(p) if name == private or name.startswith(private + ".")]
    assert not offenders, offenders


@pytest.mark.parametrize("folder,forbidden", [("layers", ("jaxmodels", "train")), ("jaxmodels", ("train",))])
def test_arrows_point_down(folder, forbidden):
    offenders = [f"{_rel(p)}: {name}" for p in _sources(folder) for name in _imports(p)
                 if name.split(".")[0] in forbidden]
    assert not offenders, offenders


def test_a_family_never_imports_another():
    offenders = []
    for family in FAMILIES:
        for path in _sources(os.path.join("jaxmodels", family)):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "jaxmodels" and len(parts) > 1 and parts[1] in FAMILIES and parts[1] != family:
                    offenders.append(f"{_rel(path)}: {name}")
    assert not offenders, offenders


def test_only_a_family_and_the_registry_name_it():
    """The doorway, the tokenizer doorway, generation and the whole trainer work from the registry's records."""
    shared = _sources("train") + [os.path.join(ROOT, "jaxmodels", f) for f in
                                  ("__init__.py", "generation.py", "hf_io.py", "tokenization.py", "configuration.py")]
    offenders = []
    for path in shared:
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "jaxmodels" and len(parts) > 1 and parts[1] in FAMILIES:
                offenders.append(f"{_rel(path)} imports {name}")
        offenders += [f"{_rel(path)} names {s!r}" for s in _strings(path) if s in FAMILIES]
    assert not offenders, offenders


def test_configs_hold_experiment_configs_only():
    paths = glob.glob(os.path.join(ROOT, "configs", "*.py"))
    assert paths and not os.path.exists(os.path.join(ROOT, "configs", "__init__.py"))
    for path in paths:
        tree = ast.parse(open(path).read(), path)
        functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert functions == ["get_config"], f"{_rel(path)}: defines {functions}; experiment files hold get_config()"
        assert not any(name.split(".")[0] == "configs" for name in _imports(path)), _rel(path)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_family_record_is_complete(model_type):
    family = jaxmodels.family(model_type)
    assert family.model_type == model_type and family.config_class.model_type == model_type
    assert family.default_architecture in family.architectures
    for name, cls in family.architectures.items():
        assert cls.__name__ == name
        for field in ("remat", "scan_residuals", "scan_unroll"):  # the stack's knobs, the same on every family
            assert field in cls.__dataclass_fields__, f"{name} lacks {field}"
        if family.sequence_parallel:
            assert "sequence_sharding" in cls.__dataclass_fields__, name
    assert family.tokenizer is None or callable(family.tokenizer)
    config = family.config_class()
    assert family.dummy_inputs(config, family.default_architecture)
    for name in family.presets:
        module = jaxmodels.from_config(registry.preset(name))
        assert jaxmodels.abstract_params(module)
