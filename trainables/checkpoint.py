"""A trial's checkpoint: the one module that writes and reads its files.

A checkpoint holds the latest trained weights and the optimizer's state (to resume), the best
trained weights so far (the trial's result) and that best epoch's validation and test predictions
(for ensemble selection), all as safetensors or ``weights_only`` files, and a small JSON state
with what the trial reported beside it (its metrics and Tune config), so that a trial whose
results Tune lost with a killed driver can be read back from its checkpoints alone
(``result_from_checkpoints``). Frozen members' weights are never in it: they are the pretrained
weights the plan names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs
import torch
from ray import tune
from safetensors.numpy import load_file as load_arrays
from safetensors.torch import load_file, save_file

from trainables.composite import CompositeModel, load_trained_state, trained_state
from trainables.adaptation import Adapter
from trainables.training import BestWeights, Runtime, TrialPlan, build_adapter, build_model, build_optimizer

LATEST = "latest.safetensors"
BEST = "best.safetensors"
PREDICTIONS = "predictions.safetensors"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
ADAPTER = "adapter.safetensors"  # the domain classifier of a trial that adapts with one


def write_checkpoint(
    directory: Path, epoch: int, model: CompositeModel, optimizer: torch.optim.Optimizer, best: BestWeights, cost: dict[str, float],
    reported: dict[str, Any] | None = None, adapter: Adapter | None = None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(trained_state(model), str(directory / LATEST))
    if adapter is not None and adapter.state_dict():
        save_file({k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}, str(directory / ADAPTER))
    save_file(best.state, str(directory / BEST))
    if best.predictions:
        save_file({k: v.contiguous() for k, v in best.predictions.items()}, str(directory / PREDICTIONS))
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    state = {"epoch": epoch, "best_value": best.value, "best_epoch": best.epoch, "best_metrics": best.metrics, "cost": cost, "reported": reported or {}}
    (directory / STATE_FILE).write_text(json.dumps(state))


def restore_checkpoint(
    directory: Path, plan: TrialPlan, best: BestWeights, precomputed: dict[str, int] | None = None
) -> tuple[CompositeModel, torch.optim.Optimizer, int, dict[str, float], Adapter | None]:
    """Model, optimizer, the next epoch, the measured cost and the adaptation term from a checkpoint
    written by ``write_checkpoint``."""
    state = json.loads((directory / STATE_FILE).read_text())
    model = build_model(plan, precomputed)
    load_trained_state(model, load_file(str(directory / LATEST)))
    Runtime.for_plan(plan).place(model)
    adapter = build_adapter(model, plan)
    if adapter is not None and (directory / ADAPTER).exists():
        adapter.load_state_dict(load_file(str(directory / ADAPTER)))
    optimizer = build_optimizer(model, plan, adapter)
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    best.value, best.epoch, best.metrics = state["best_value"], state["best_epoch"], state["best_metrics"]
    best.state = load_file(str(directory / BEST))
    if (directory / PREDICTIONS).exists():
        best.predictions = load_file(str(directory / PREDICTIONS))
    return model, optimizer, int(state["epoch"]) + 1, state["cost"], adapter


class TrialCheckpoint:
    """Reads a checkpoint ``write_checkpoint`` wrote, wherever Tune keeps it (a folder, cloud storage)."""

    def __init__(self, checkpoint: tune.Checkpoint) -> None:
        self.checkpoint = checkpoint

    def _read(self, name: str) -> dict[str, torch.Tensor]:
        with self.checkpoint.as_directory() as directory:
            return load_file(str(Path(directory) / name))

    def best_state(self) -> dict[str, torch.Tensor]:
        """The trained weights of the trial's best epoch so far."""
        return self._read(BEST)

    def latest_state(self) -> dict[str, torch.Tensor]:
        """The trained weights of the epoch the checkpoint was written at."""
        return self._read(LATEST)

    def predictions(self) -> dict[str, np.ndarray] | None:
        """The best epoch's ``val`` and ``test`` probabilities, or None when it saved none."""
        with self.checkpoint.as_directory() as directory:
            path = Path(directory) / PREDICTIONS
            return load_arrays(str(path)) if path.exists() else None

    def exists(self) -> bool:
        """Whether it is still there (a search tidies all but each trial's latest away when it ends)."""
        return self.checkpoint.filesystem.get_file_info(self.checkpoint.path).type != pyarrow.fs.FileType.NotFound

    @staticmethod
    def write_best(folder: Path, state: dict[str, torch.Tensor]) -> "TrialCheckpoint":
        """A checkpoint holding trained weights alone (a run of a plan made after the search)."""
        folder.mkdir(parents=True)
        save_file(state, str(folder / BEST))
        return TrialCheckpoint(tune.Checkpoint.from_directory(str(folder)))


def result_from_checkpoints(trial_path: str, trial_id: str) -> tune.Result | None:
    """A trial's result read from its checkpoints alone (each holds what the trial reported with it,
    its Tune config included), as Tune would have recorded it; None when it has none. For a trial
    that finished after the last snapshot of a killed driver: Tune's own record of it (result.json,
    written by the driver) may be lost, its checkpoints (uploaded by the trial) are not."""
    filesystem, path = pyarrow.fs.FileSystem.from_uri(trial_path)
    found = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    folders = sorted(i.path for i in found if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    checkpoints = []
    for folder in folders:
        with filesystem.open_input_stream(f"{folder}/{STATE_FILE}") as stream:
            reported = json.loads(stream.read()).get("reported") or {}
        checkpoints.append((tune.Checkpoint(folder, filesystem), {**reported, "trial_id": trial_id}))
    if not checkpoints or not checkpoints[-1][1].get("config"):
        return None
    # Result's constructor: what Result.from_path builds from Tune's files, here from the checkpoints'.
    return tune.Result(metrics=checkpoints[-1][1], checkpoint=checkpoints[-1][0], error=None, path=path, best_checkpoints=checkpoints, _storage_filesystem=filesystem)
