"""The Ray Tune function trainable: one trial of the search.

Builds the composite from the trial's plan (frozen members whose features the
feature cache holds are stand-ins: no backbone is loaded), trains it, evaluates on
the validation split after every epoch and reports the metrics with a
``tune.Checkpoint``. A checkpoint holds the latest trained weights and optimizer
state (to resume), the best trained weights so far (the trial's result) and that
best epoch's validation and test predictions (for ensemble selection), all as
safetensors or ``weights_only`` files. Frozen members' weights are never in a
checkpoint: they are the pretrained weights the plan names. The trial reports
``best_<metric>``, the best validation value reached so far: the number the
scheduler, Optuna and champion selection compare, and, when the search asks (``measure_cost``),
what the composite costs to deploy (``trainables.cost``), measured once after the first epoch, kept
in the checkpoint and reported with every epoch.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainables.checkpoint import restore_checkpoint, write_checkpoint
from trainables.composite import CompositeModel
from trainables.cost import measure_cost
from trainables.data import Dataset
from trainables.feature_cache import CachedMember
from trainables.training import BestWeights, EpochOutputs, TrialPlan, fit, frozen_features

def train_composite(config: dict[str, Any], data: Dataset, features: dict[str, CachedMember] | None = None) -> None:
    """Tune entry point. ``config``: ``plan`` (a ``TrialPlan`` dict), ``objective`` (metric, mode),
    ``measure_cost`` (whether to measure the composite's cost), ``threads`` (the model's), ``workers``
    (loader processes preparing batches).

    ``features``: frozen-member features from the cache, by member name.
    """
    started = time.perf_counter()
    plan = TrialPlan.from_dict(config["plan"])
    objective = config["objective"]
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    best = BestWeights(objective["metric"], objective["mode"])
    cached = frozen_features(plan, features)

    model, optimizer, start, cost, adapter = None, None, 1, {}, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as restored:
            model, optimizer, start, cost, adapter = restore_checkpoint(Path(restored), plan, best, {n: f.width for n, f in cached.items()})

    def report(epoch: int, metrics: dict[str, float], model: CompositeModel, optimizer: torch.optim.Optimizer, outputs: EpochOutputs) -> None:
        if best.update(epoch, metrics, model):
            predicting = time.perf_counter()
            best.predictions = {"val": outputs.val, "test": outputs.predict_test()}
            metrics = {**metrics, "eval_time_s": metrics["eval_time_s"] + time.perf_counter() - predicting}
        if config["measure_cost"] and not cost:
            measuring = time.perf_counter()
            cost.update(measure_cost(plan, model, data.splits["val"]), cost_time_s=time.perf_counter() - measuring)
        metrics = {
            **metrics,
            **cost,
            **{f"best_{name}": value for name, value in best.metrics.items()},
            "best_epoch": best.epoch,
            "planned_epochs": plan.epochs,
            "backbone_rows": model.backbone_rows,
            "trial_time_s": time.perf_counter() - started,
            "node_id": ray.get_runtime_context().get_node_id(),
        }
        with tempfile.TemporaryDirectory() as tmp:
            reported = {**metrics, "training_iteration": epoch, "config": config}
            write_checkpoint(Path(tmp), epoch, model, optimizer, best, cost, reported, outputs.adapter)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    workers = int(config.get("workers", 0))
    fit(plan, data, on_epoch=report, model=model, optimizer=optimizer, start_epoch=start, features=cached, workers=workers, adapter=adapter)
