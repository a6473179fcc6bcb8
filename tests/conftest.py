"""Shared fixtures. End-to-end fixtures start real Ray + Serve + vLLM (CPU) and speak HTTP."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Keep Ray quiet, offline and out of the way of other clusters on this machine.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_server():
    """The tiny-model app (configs/tiny_cpu.yaml: experts alpha and beta) on a fresh local cluster."""
    from deployments.launch import run_local, stop_local

    base_url = run_local(REPO / "configs/tiny_cpu.yaml", port=free_port())
    yield base_url
    stop_local()
