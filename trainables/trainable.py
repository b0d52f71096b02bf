"""The Ray Tune function trainable: one trial of the search.

Builds the composite from the trial's plan, trains it, evaluates on the
validation split after every epoch and reports the metrics with a
``tune.Checkpoint``. A checkpoint holds the latest weights and optimizer state
(to resume) and the best weights so far (the trial's result), each as
JSON + safetensors. The trial reports ``best_<metric>``, the best validation value
reached so far: the number the scheduler, Optuna and champion selection compare.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from trainables.composite import CompositeModel, load_composite, save_composite
from trainables.data import Dataset
from trainables.training import BestWeights, TrialPlan, build_optimizer, fit, pick_device

LATEST = "latest"
BEST = "best"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"


def write_checkpoint(directory: Path, epoch: int, model: CompositeModel, optimizer: torch.optim.Optimizer, best: BestWeights) -> None:
    save_composite(model, directory / LATEST)
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    save_composite(model, directory / BEST, state=best.state)
    state = {"epoch": epoch, "best_value": best.value, "best_epoch": best.epoch}
    (directory / STATE_FILE).write_text(json.dumps(state))


def restore_checkpoint(directory: Path, plan: TrialPlan, best: BestWeights) -> tuple[CompositeModel, torch.optim.Optimizer, int]:
    """Model, optimizer and the next epoch from a checkpoint written by ``write_checkpoint``."""
    state = json.loads((directory / STATE_FILE).read_text())
    model = load_composite(directory / LATEST).to(pick_device())
    optimizer = build_optimizer(model, plan)
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    best.value, best.epoch = state["best_value"], state["best_epoch"]
    best.state = load_composite(directory / BEST).state_dict()
    return model, optimizer, int(state["epoch"]) + 1


def train_composite(config: dict[str, Any], data: Dataset) -> None:
    """Tune entry point. ``config``: ``plan`` (a ``TrialPlan`` dict), ``objective`` (metric, mode), ``threads``."""
    plan = TrialPlan.from_dict(config["plan"])
    objective = config["objective"]
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    best = BestWeights(objective["metric"], objective["mode"])

    model, optimizer, start = None, None, 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as restored:
            model, optimizer, start = restore_checkpoint(Path(restored), plan, best)

    def report(epoch: int, metrics: dict[str, float], model: CompositeModel, optimizer: torch.optim.Optimizer) -> None:
        best.update(epoch, metrics, model)
        metrics = {**metrics, f"best_{best.metric}": best.value, "best_epoch": best.epoch, "planned_epochs": plan.epochs}
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(Path(tmp), epoch, model, optimizer, best)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    fit(plan, data, on_epoch=report, model=model, optimizer=optimizer, start_epoch=start)
