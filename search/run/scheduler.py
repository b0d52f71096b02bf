"""When Tune stops a trial early: ASHA on the first objective, except that a member alone runs all its
epochs (``AloneRunsFull``), or no early stopping (FIFO)."""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from search.run.space import structure_of
from search.spec.objectives import Goal
from search.spec.schema import Scheduler


class AloneRunsFull(AsyncHyperBandScheduler):
    """ASHA, except for a member alone (one member fused by the identity): it runs all its epochs and
    its results stay out of the rungs. It is a candidate for champion and what the fused trials are
    held to, so it is not judged by its first epochs, where a member trained from scratch lags."""

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if structure_of(trial.config).operator is None:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        if structure_of(trial.config).operator is None:
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)


def build_scheduler(scheduler: Scheduler, goal: Goal, max_epochs: int) -> TrialScheduler | None:
    """ASHA on ``goal`` (the first objective) over at most ``max_epochs``, members alone run in full; or none (FIFO)."""
    if scheduler.type == "fifo":
        return None
    return AloneRunsFull(
        metric=goal.key,
        mode=goal.mode,
        time_attr="training_iteration",
        max_t=max_epochs,
        grace_period=scheduler.grace_period,
        reduction_factor=scheduler.reduction_factor,
    )
