"""GPU state of this node through gpustat; degrades to ``available: false`` without a GPU."""

from __future__ import annotations

from typing import Any


def gpu_status() -> dict[str, Any]:
    """``{"available": bool, "gpus": [...]}``; ``reason`` says why none when there are none."""
    try:
        import gpustat

        stats = gpustat.new_query()
    except Exception as exc:  # no NVML library / no driver / no device: a CPU machine
        return {"available": False, "gpus": [], "reason": f"{type(exc).__name__}: {exc}".strip()}
    gpus = [
        {
            "index": g.index,
            "name": g.name,
            "utilization_pct": g.utilization,
            "memory_used_mb": g.memory_used,
            "memory_total_mb": g.memory_total,
            "temperature_c": g.temperature,
        }
        for g in stats.gpus
    ]
    return {"available": bool(gpus), "gpus": gpus}
