"""Post-hoc ensemble selection over the search's trials (Caruana et al. 2004).

Greedy forward selection *with replacement*, as AutoGluon and auto-sklearn use it:
start from nothing; each round add the trial whose inclusion makes the running
average of validation probabilities score best; the weights are how often each
trial was picked, so they lie on the simplex. The round with the best validation
score is kept. Round one picks the best single trial, so the kept ensemble is
never worse than it on validation. Given each trial's cost and a budget, a round
considers only the trials already in the ensemble and those whose cost, added to
the ensemble's, stays within the budget (an ensemble runs all its composites).

Each trial's checkpoint holds its best epoch's validation and test probabilities;
selection reads only the validation ones, and the test ones give the comparison table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from safetensors.numpy import load_file

from trainables.metrics import EPS
from trainables.trainable import PREDICTIONS

METRICS = ("val_log_loss", "val_accuracy")


@dataclass
class Candidate:
    """One trial's saved predictions (its best epoch) and what it was."""

    trial_id: str
    config: dict[str, Any]
    checkpoint: tune.Checkpoint
    val: np.ndarray  # (N, C) probabilities
    test: np.ndarray  # (M, C)
    metrics: dict[str, Any]  # what the trial last reported: its best epoch's metrics, its cost


@dataclass
class Selection:
    weights: np.ndarray  # (K,), on the simplex, aligned with the candidates
    score: float  # validation metric of the weighted ensemble
    trajectory: list[float]  # the ensemble's score after each round

    @property
    def size(self) -> int:
        return int(np.count_nonzero(self.weights))


def greedy_selection(
    proba: np.ndarray,
    labels: np.ndarray,
    rounds: int,
    metric: str = "val_log_loss",
    costs: np.ndarray | None = None,
    budget: np.ndarray | None = None,
) -> Selection:
    """Weights over ``proba`` (K candidates, N rows, C classes) by greedy selection with replacement,
    keeping the summed ``costs`` (K, M) of the trials taken within ``budget`` (M,) when given.

    Log-loss needs only each candidate's probability of the true class, so a round costs
    O(K * N); accuracy needs the whole average, O(K * N * C).
    """
    if metric not in METRICS:
        raise ValueError(f"ensemble selection supports {', '.join(METRICS)}, not {metric!r}")
    if rounds < 1 or proba.ndim != 3 or proba.shape[0] == 0:
        raise ValueError("ensemble selection needs rounds >= 1 and probabilities shaped (candidates, rows, classes)")
    k, n, _ = proba.shape
    log_loss = metric == "val_log_loss"
    values = proba[:, np.arange(n), labels].astype(np.float64) if log_loss else proba.astype(np.float32)
    total = np.zeros(values.shape[1:], dtype=values.dtype)
    counts = np.zeros(k, dtype=np.int64)
    best, best_counts, trajectory = np.inf, counts, []
    for picked in range(rounds):
        mixed = (total[None] + values) / (picked + 1)
        if log_loss:
            losses = -np.log(np.clip(mixed, EPS, 1.0)).mean(axis=1)
        else:  # minimise the error rate
            losses = 1.0 - (mixed.argmax(axis=2) == labels[None]).mean(axis=1)
        if costs is not None and budget is not None:
            taken = counts > 0
            fits = np.all(costs[taken].sum(axis=0) + costs * ~taken[:, None] <= budget, axis=1)
            losses = np.where(fits | taken, losses, np.inf)
        choice = int(np.argmin(losses))  # ties: the better-ranked candidate
        counts[choice] += 1
        total += values[choice]
        trajectory.append(float(losses[choice]) if log_loss else 1.0 - float(losses[choice]))
        if losses[choice] < best - 1e-12:
            best, best_counts = float(losses[choice]), counts.copy()
    weights = best_counts / best_counts.sum()
    return Selection(weights, best if log_loss else 1.0 - best, trajectory)


def read_candidate(result: tune.Result) -> Candidate | None:
    """A trial's saved predictions (its best epoch's), or None when it saved none."""
    with result.checkpoint.as_directory() as directory:
        path = Path(directory) / PREDICTIONS
        if not path.exists():
            return None
        saved = load_file(str(path))
    return Candidate(result.metrics["trial_id"], result.config, result.checkpoint, saved["val"], saved["test"], dict(result.metrics))


def weighted(parts: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The weighted average of probability arrays."""
    return np.tensordot(weights, np.stack(parts), axes=1)
