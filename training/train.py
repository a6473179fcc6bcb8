"""Train a router from a labelled table: locally, or as a Ray Train job (TorchTrainer).

The Ray path reads the table with Ray Data, computes soft labels per query, shards them over the
workers (CPU here, GPU by ``use_gpu``), wraps the model with DistributedDataParallel, reports the
loss per epoch and checkpoints the weights; the driver then rebuilds the router from the last
checkpoint and saves the artifact. kNN has nothing to fit by gradient: it embeds the training
queries (locally) and is saved the same way.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from router import kinds
from router.trained import RoutingModel
from training.soft_labels import soft_labels
from training.table import Matrices, conform, read_table, to_matrices

logger = logging.getLogger(__name__)


def training_queries(table: pd.DataFrame, quality_column: str = "quality", split: str = "train") -> Matrices:
    """The table's ``split`` queries as matrices (all queries if the table has none of that split)."""
    m = to_matrices(table, quality_column)
    return m.split(split) if (m.splits == split).any() else m


def fit_local(
    kind: str, m: Matrices, temperature: float = 0.1, config: dict[str, Any] | None = None
) -> RoutingModel:
    """Train ``kind`` in this process on matrices ``m`` (also what cross-validation uses);
    ``config``: settings of the kind (ValueError naming any it does not have)."""
    spec = kinds.load(kind)
    targets = m.quality if spec.targets == "quality" else soft_labels(m.quality, temperature)
    settings = spec.configure({**(config or {}), "temperature": temperature})
    return fit(spec, m.queries, targets, m.experts, m.cost, settings)


def fit(
    spec: kinds.Kind,
    texts: list[str],
    targets: np.ndarray,
    experts: list[str],
    costs: np.ndarray,
    settings: kinds.Settings,
) -> RoutingModel:
    """Fit a kind in this process: its own ``fit``, or, for a kind trained by gradient, its model
    by :func:`training.neural.fit_epochs`."""
    if spec.fit is not None:
        return spec.fit(texts, targets, experts, costs, settings)
    from training.neural import fit_epochs

    prepared = spec.prepare(texts, settings) if spec.prepare else {}
    model = spec.build_model(len(experts), settings, **prepared)
    return spec.from_model(experts, costs, settings, fit_epochs(model, texts, targets, settings), **prepared)


def _loop_per_worker(cfg: dict[str, Any]) -> None:
    """Ray Train worker: DDP-train the neural router on this worker's shard of the queries."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.torch import prepare_model

    from training.neural import adamw, train_epoch

    params = cfg["params"]
    model = kinds.load(cfg["kind"]).build_model(cfg["n_experts"], params, **cfg["prepared"])
    resumed = ray.train.get_checkpoint()  # set when a failed run restarts: go on from its last epoch
    state = None
    if resumed:
        with resumed.as_directory() as folder:
            model.load_state_dict(torch.load(Path(folder) / "model.pt"))
            state = torch.load(Path(folder) / "train_state.pt")
    model = prepare_model(model)
    optimizer = adamw(model, params.lr)
    if state:
        optimizer.load_state_dict(state["optimizer"])
    shard = ray.train.get_dataset_shard("train")
    losses: list[float] = state["losses"] if state else []  # per epoch, carried across restarts
    for epoch in range(len(losses), params.epochs):
        batches = (
            (list(b["text"]), np.stack(b["target"]))
            for b in shard.iter_batches(
                batch_size=params.batch_size,
                batch_format="numpy",
                local_shuffle_buffer_size=1000,
                local_shuffle_seed=params.seed + epoch,
            )
        )
        losses.append(train_epoch(model, optimizer, batches))
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                torch.save(getattr(model, "module", model).state_dict(), Path(tmp) / "model.pt")
                state = {"losses": losses, "optimizer": optimizer.state_dict()}
                torch.save(state, Path(tmp) / "train_state.pt")
                checkpoint = Checkpoint.from_directory(tmp)
            metrics = {"epoch": epoch, "loss": losses[-1], "losses": losses, "resumed": bool(resumed)}
            ray.train.report(metrics, checkpoint=checkpoint)


def fit_ray(
    kind: str,
    table_path: str | Path,
    quality_column: str = "quality",
    temperature: float = 0.1,
    config: dict[str, Any] | None = None,
    num_workers: int = 2,
    use_gpu: bool = False,
    storage_path: str | Path | None = None,
    max_failures: int = 3,
) -> RoutingModel:
    """Train a neural router (mlp, bert) as a Ray Train job over ``num_workers`` workers; a run whose
    worker dies (node lost, OOM) restarts up to ``max_failures`` times from its last epoch's
    checkpoint (model and optimizer state)."""
    import ray
    import ray.data
    import torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not kinds.is_neural(kind):
        neural = [k for k in kinds.names() if kinds.is_neural(k)]
        raise ValueError(f"Ray Train fits neural routers ({', '.join(neural)}), not '{kind}'")
    spec = kinds.load(kind)
    params = spec.configure({**(config or {}), "temperature": temperature})
    if not ray.is_initialized():
        ray.init(num_cpus=max(4, num_workers + 2), include_dashboard=False, log_to_driver=False)
    table = conform(ray.data.read_parquet(str(table_path)).to_pandas())  # numpy dtypes, NaN not NA
    m = training_queries(table, quality_column)
    targets = soft_labels(m.quality, temperature)
    dataset = ray.data.from_pandas(
        pd.DataFrame({"text": m.queries, "target": list(targets.astype(np.float32))})
    )
    prepared = spec.prepare(m.queries, params)
    loop_cfg = {"kind": kind, "params": params, "n_experts": len(m.experts), "prepared": prepared}
    trainer = TorchTrainer(
        _loop_per_worker,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}
        ),
        datasets={"train": dataset},
        run_config=RunConfig(
            name=f"expert-router-{kind}",
            storage_path=str(Path(storage_path or tempfile.mkdtemp(prefix="er-train-")).resolve()),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    model = spec.build_model(len(m.experts), params, **prepared)
    with result.checkpoint.as_directory() as folder:
        model.load_state_dict(torch.load(Path(folder) / "model.pt"))
    costs = np.nanmean(m.cost, axis=0)
    router = spec.from_model(m.experts, costs, params, model, **prepared)
    router.metrics = {
        "epochs": [{"epoch": i, "loss": loss} for i, loss in enumerate(result.metrics["losses"])],
        "resumed": bool(result.metrics["resumed"]),
    }
    return router


def train(
    table_path: str | Path,
    kind: str,
    out: str | Path,
    quality_column: str = "quality",
    temperature: float = 0.1,
    config: dict[str, Any] | None = None,
    use_ray: bool = True,
    num_workers: int = 2,
    use_gpu: bool = False,
    storage_path: str | Path | None = None,
    max_failures: int = 3,
) -> RoutingModel:
    """Train router ``kind`` on the table's train split and save the artifact to ``out``
    (Ray Train's run folder with its checkpoints goes to ``storage_path``, default a temp folder)."""
    if use_ray and kinds.is_neural(kind):
        router = fit_ray(
            kind,
            table_path,
            quality_column,
            temperature,
            config,
            num_workers,
            use_gpu,
            storage_path,
            max_failures,
        )
    else:
        router = fit_local(
            kind, training_queries(read_table(table_path), quality_column), temperature, config
        )
    router.config = router.config.model_copy(update={"quality_column": quality_column})
    router.save(out)
    logger.info("saved %s router to %s", kind, out)
    return router
