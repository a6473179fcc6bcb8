"""Start the app on a local Ray cluster from Python (tests, benchmarks) and wait until it serves."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

APP_NAME = "expert-router"
QUIET_RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def wait_until_ready(base_url: str, timeout_s: float = 600.0) -> None:
    """Poll ``/ready`` until 200: the ingress serves and every expert passes its health check
    (Serve's proxy may answer 404 right after start, and the ingress is up before the experts)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/ready", timeout=15).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} not ready after {timeout_s:.0f}s")


def start_local_ray(attempts: int = 3, **options: Any) -> None:
    """``ray.init(address="local", include_dashboard=False, log_to_driver=False, **options)``, tried
    up to ``attempts`` times. A process that starts a cluster a second after shutting its previous
    one down sometimes fails on 2 cores ("The current node timed out during startup", or a session
    with no logs at all; seen in 3 test-suite runs); a few seconds later it starts."""
    import ray

    options = {"address": "local", "include_dashboard": False, "log_to_driver": False, **options}
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**options)
            return
        except Exception as exc:
            if attempt == attempts:
                raise
            logging.getLogger(__name__).warning("Ray did not start (%s); trying again", exc)
            ray.shutdown()
            time.sleep(3 * attempt)


def run_local(config: str | Path | dict, port: int, num_cpus: int = 4, timeout_s: float = 600.0) -> str:
    """Start Ray + Serve in this process with the app of a serve config file (or app ``args``);
    return its base URL.

    ``num_cpus`` is *logical* CPUs: more than the machine's cores leaves room to schedule every
    deployment on a 2-core machine (see PLATFORM notes). Stop with :func:`stop_local`.
    """
    for key, value in QUIET_RAY_ENV.items():
        os.environ.setdefault(key, value)
    from ray import serve

    from deployments.app import build_app

    if isinstance(config, dict):
        args = config
    else:
        args = next(a for a in yaml.safe_load(Path(config).read_text())["applications"])["args"]
    start_local_ray(num_cpus=num_cpus)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
    base_url = f"http://127.0.0.1:{port}"
    wait_until_ready(base_url, timeout_s)
    return base_url


def stop_local() -> None:
    """Stop what :func:`run_local` started (only this process's cluster)."""
    import ray

    ray.shutdown()


def serve_until_stopped(config_path: str) -> int:
    """``serve run CONFIG`` in a child process; print when it answers; stop it on Ctrl-C/SIGTERM."""
    import signal
    import subprocess
    import sys

    from deployments.app import check_config
    from router.config import ConfigError, serve_config_args

    try:  # a clear error naming the field now, not a traceback from `serve run` later
        check_config(serve_config_args(config_path))
    except ConfigError as exc:
        print(f"{config_path}: {exc}", file=sys.stderr, flush=True)
        return 2
    doc = yaml.safe_load(Path(config_path).read_text())
    options = doc.get("http_options")
    port = options.get("port", 8000) if isinstance(options, dict) else 8000
    serve_bin = Path(sys.executable).with_name("serve")
    env = {**QUIET_RAY_ENV, **os.environ}
    child = subprocess.Popen([str(serve_bin), "run", config_path], env=env, start_new_session=True)

    def stop(*_: object) -> None:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)  # `serve run` ignores SIGINT in the background

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", timeout_s=900)
    except TimeoutError as exc:
        print(f"expert-router did not become ready: {exc}", file=sys.stderr, flush=True)
        stop()
    else:
        print(
            f"\nexpert-router is READY on http://0.0.0.0:{port} ({time.monotonic() - started:.0f}s). Try:\n"
            f"  curl -XPOST http://0.0.0.0:{port}/predict -H 'Content-Type: application/json' "
            """-d '{"messages":[{"role":"user","content":"Test"}]}'\n"""
            "Ctrl-C stops it.\n",
            flush=True,
        )
    return child.wait()


if __name__ == "__main__":
    import sys

    raise SystemExit(serve_until_stopped(sys.argv[1] if len(sys.argv) > 1 else "serve_config.yaml"))
