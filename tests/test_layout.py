"""The floors of the code: ``router/`` (routing, no Ray) < ``deployments/`` (Ray Serve) <
``training/`` (data, training, evaluation) and ``ops/`` (launcher, KubeRay manifests). Nothing
imports a floor above its own, anywhere in a module (function-level imports included), and the
router's serving modules import no torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ABOVE = {
    "router": {"deployments", "training", "ops", "ray", "vllm"},
    "deployments": {"training", "ops"},
    "training": {"ops"},
    "ops": {"training"},
}
"""Packages each floor must not import: the floors above it (and, for router/, Ray and vLLM)."""
TORCH_ALLOWED = {
    "router/bert_model.py",  # BERT-Router's torch module (training, export)
    "router/pooling.py",
    "router/onnx_encoder.py",  # the ONNX export
    "router/encoder.py",  # the torch fallback when no ONNX export is there
    "router/kinds/_bow_mlp.py",  # MLP-Router's torch module (training; serving scores in numpy)
    "router/kinds/bert.py",
}
"""router/ modules that may import torch; every other one is torch-free (the shipped policy's path)."""


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_module_imports_a_floor_above_its_own(package):
    upward = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in modules(package)
        for line, name in imports(path)
        if name.split(".")[0] in ABOVE[package]
    ]
    assert not upward, "\n".join(upward)


def test_the_routers_serving_modules_import_no_torch():
    found = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in modules("router")
        if str(path.relative_to(REPO)) not in TORCH_ALLOWED
        for line, name in imports(path)
        if name.split(".")[0] == "torch"
    ]
    assert not found, "\n".join(found)


SERVING_HOOKS = ("check", "application", "deployment", "client")
"""What an expert kind's module exports besides its config model (deployments/experts/__init__.py)."""


def test_each_expert_kind_is_one_module_that_nothing_else_names():
    """A kind's config model and its serving live in one module of deployments/experts/; the rest of
    the code sees experts through the hooks, never by comparing a kind's name."""
    import importlib

    from deployments.config import EXPERT_KINDS

    kinds = {model.model_fields["kind"].default: model for model in EXPERT_KINDS}
    for name, model in kinds.items():
        module = importlib.import_module(model.__module__)
        assert module.__name__ == f"deployments.experts.{name}", name
        missing = [hook for hook in SERVING_HOOKS if not callable(getattr(module, hook, None))]
        assert not missing, f"{name}: {missing}"
    named = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for package in ABOVE
        for path in modules(package)
        if path.parent != REPO / "deployments" / "experts"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in kinds
    ]
    assert not named, "names an expert kind outside its module:\n" + "\n".join(named)
