"""The floors of the code: ``router/`` (routing, no Ray) < ``deployments/`` (Ray Serve) <
``training/`` (data, training, evaluation) and ``ops/`` (launcher, KubeRay manifests). Nothing
imports a floor above its own, anywhere in a module (function-level imports included), and the
router's serving modules import no torch. An expert kind is one module of ``deployments/experts/``
plus its line in ``EXPERT_KINDS``, and no other module names a kind."""

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


ECHO_KIND = '''"""Expert kind ``echo``: answers with the last user message (a kind made by a test)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field

from router.config import ExpertBase


class EchoExpert(ExpertBase):
    kind: Literal["echo"] = Field("echo", description="How it is served.")
    prefix: str = Field("", description="Put before the echo.")


def check(expert, config):
    return None


def application(expert, config):
    return None


def deployment(expert, config):
    return None


class _Method:
    def __init__(self, fn):
        self.remote = fn


class EchoClient:
    def __init__(self, expert: EchoExpert):
        self.chat = _Method(lambda request: self._answer(expert.prefix + request["messages"][-1]["content"]))
        self.check_health = _Method(lambda: asyncio.sleep(0))

    def options(self, **_: Any) -> EchoClient:
        return self

    async def _answer(self, text: str):
        yield {"choices": [{"message": {"role": "assistant", "content": text}}]}


def client(expert):
    return EchoClient(expert)
'''

USE_ECHO = """
import asyncio

from deployments.config import AppConfig
from deployments.experts import check, clients, deployment
from ops.config_reference import reference

config = AppConfig.parse({
    "experts": [
        {"name": "parrot", "model": "echo", "kind": "echo", "prefix": "you said: "},
        {"name": "far", "model": "m", "endpoint": {"base_url": "https://example.com/v1"}},
    ],
})
check(config)
assert [e.kind for e in config.experts] == ["echo", "remote"] and config.serving("parrot") is None
assert deployment(config.expert("parrot"), config) is None


async def ask():
    replies = clients(config)["parrot"].options(stream=True).chat.remote(
        {"messages": [{"role": "user", "content": "hi"}]}
    )
    return [reply async for reply in replies]


assert asyncio.run(ask())[0]["choices"][0]["message"]["content"] == "you said: hi"
assert "## `EchoExpert`" in reference()
assert "ray" not in __import__("sys").modules  # a config, of any kind, validates without Ray
print("ok")
"""


def test_a_new_expert_kind_is_one_module_and_one_registry_line(tmp_path):
    """Add a kind to a copy of the code as the docs say (docs/extending.md): its module and its
    model in EXPERT_KINDS. A config of it validates (without Ray), the router's client of it
    answers, the configuration reference documents it, and the layout tests pass on the copy."""
    import shutil
    import subprocess
    import sys

    for package in ("router", "deployments", "ops", "artifacts"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tests").mkdir()
    shutil.copy(Path(__file__), tmp_path / "tests" / "test_layout.py")
    (tmp_path / "deployments" / "experts" / "echo.py").write_text(ECHO_KIND)
    config = tmp_path / "deployments" / "config.py"
    registry = "EXPERT_KINDS: tuple[type[ExpertBase], ...] = ("
    assert config.read_text().count(registry) == 1
    config.write_text(
        config.read_text()
        .replace(registry, registry + "EchoExpert, ")
        .replace(
            "from deployments.experts.lora",
            "from deployments.experts.echo import EchoExpert\nfrom deployments.experts.lora",
        )
    )
    run = subprocess.run([sys.executable, "-c", USE_ECHO], cwd=tmp_path, capture_output=True, text=True)
    assert run.stdout.strip() == "ok", run.stderr[-3000:]
    layout = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_layout.py",
            "-k",
            "not new_expert_kind",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert layout.returncode == 0, layout.stdout[-3000:]
