"""A trial whose worker process is killed resumes from its last checkpoint, exactly.

Real Ray Tune: the trial's worker gets SIGKILL after its second epoch; Tune retries
it (``max_failures``) and the trainable resumes from ``tune.get_checkpoint()``. The
resumed trial must continue at the next epoch and end with the same validation
numbers as the same plan trained without interruption.
"""

from __future__ import annotations

import os
import signal

import pytest
import ray
import torch
from ray import tune

from search.run.driver import build_searcher, build_tuner
from search.run.preflight import load_data
from search.spec.schema import parse_spec
from trainables.training import TrialPlan, fit

pytestmark = pytest.mark.slow


class KillOnce(tune.Callback):
    """Kill the trial's worker process at its first result from epoch 2 on; record every result."""

    def __init__(self) -> None:
        self.results: list[tuple[int, int]] = []  # (epoch, pid)
        self.killed = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.append((int(result["epoch"]), int(result["pid"])))
        if not self.killed and result["epoch"] >= 2:
            self.killed = True
            os.kill(int(result["pid"]), signal.SIGKILL)


def test_killed_trial_resumes_from_checkpoint(spec_dict, tmp_path):
    spec_dict.update(
        name="resume-test",
        members=[{"name": "cnn", "kind": "small_cnn", "input": "image", "params": {"channels": 16}}],
        fusion={"operators": {"weighted": {}}},
        hyperparameters={"lr": 0.005, "weight_decay": 0.0001, "dropout": 0.1, "epochs": 12, "batch_size": 64},
        budget={"num_samples": 1, "max_concurrent": 1},
        scheduler={"type": "fifo"},
        max_failures=1,
        storage=str(tmp_path / "store"),
    )
    spec = parse_spec(spec_dict, tmp_path)
    data = load_data(spec)
    killer = KillOnce()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        grid = build_tuner(spec, data, "resume", [killer], False, build_searcher(spec, data, "a-run")).fit()
    finally:
        ray.shutdown()

    assert killer.killed
    result = grid[0]
    assert result.error is None and result.metrics["epoch"] == 12
    pids = [pid for _, pid in killer.results]
    assert len(set(pids)) == 2, "the trial ran in a second worker after the kill"
    resumed = [epoch for epoch, pid in killer.results if pid == pids[-1]]
    before = [epoch for epoch, pid in killer.results if pid == pids[0]]
    assert resumed[0] <= max(before) + 1 and resumed[-1] == 12, "resumed from a checkpoint, not from epoch 1"
    assert resumed[0] > 1

    torch.set_num_threads(1)  # as the trial ran
    straight: list[dict] = []
    fit(TrialPlan.from_dict(result.config["plan"]), data, on_epoch=lambda e, m, *_: straight.append(m))
    assert result.metrics["val_log_loss"] == pytest.approx(straight[-1]["val_log_loss"], abs=1e-6)
    assert result.metrics["best_val_log_loss"] == pytest.approx(min(m["val_log_loss"] for m in straight), abs=1e-6)
