"""Where built models live, and building one exactly once across processes.

``$EXPERT_ROUTER_MODELS`` (default: ``.models/`` at the repository root) holds the builtin expert
models (``deployments/experts/model_store.py``) and the ONNX exports of encoders (``router/onnx_encoder.py``).
A build runs under a file lock and leaves a marker when it finished, so concurrent processes (a
driver validating the config and the replicas it starts) build once and never see half a folder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)
DONE_MARKER = ".expert-router-built"


def models_dir() -> Path:
    """Folder of built models: ``$EXPERT_ROUTER_MODELS`` or ``<repo>/.models``."""
    env = os.environ.get("EXPERT_ROUTER_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / ".models"


def build_once(name: str, builder: Callable[[Path], None]) -> Path:
    """``models_dir()/name``, calling ``builder(folder)`` first unless a finished build is there."""
    return build_at(models_dir() / name, builder)


def build_at(out: Path, builder: Callable[[Path], None]) -> Path:
    """Folder ``out``, calling ``builder(out)`` first unless a finished build is there."""
    if (out / DONE_MARKER).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / DONE_MARKER).exists():
            logger.warning("building %s", out)
            shutil.rmtree(out, ignore_errors=True)  # a build that died half-way
            out.mkdir()
            builder(out)
            (out / DONE_MARKER).touch()
    return out
