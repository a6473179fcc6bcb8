"""Start the app on a local Ray cluster from Python (tests, benchmarks) and wait until it serves."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import yaml

APP_NAME = "expert-router"
QUIET_RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def wait_until_ready(base_url: str, timeout_s: float = 600.0) -> None:
    """Poll ``/health`` until 200 (Serve's proxy may answer 404 right after start)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} not ready after {timeout_s:.0f}s")


def run_local(config_path: str | Path, port: int, num_cpus: int = 4, timeout_s: float = 600.0) -> str:
    """Start Ray + Serve in this process with the app of a serve config file; return its base URL.

    ``num_cpus`` is *logical* CPUs: more than the machine's cores leaves room to schedule every
    deployment on a 2-core machine (see PLATFORM notes). Stop with :func:`stop_local`.
    """
    for key, value in QUIET_RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray import serve

    from deployments.app import build_app

    doc = yaml.safe_load(Path(config_path).read_text())
    args = next(a for a in doc["applications"])["args"]
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
    base_url = f"http://127.0.0.1:{port}"
    wait_until_ready(base_url, timeout_s)
    return base_url


def stop_local() -> None:
    """Stop what :func:`run_local` started (only this process's cluster)."""
    import ray

    ray.shutdown()
