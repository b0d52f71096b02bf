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
The ``ensemble`` maker makes the selected ensemble a candidate when it mixes at least two trials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from search.candidates.candidate import Candidate, Pool, register_maker
from search.candidates.out_of_fold import out_of_fold
from search.candidates.trials import Trial
from search.spec.objectives import Objectives, reported_key
from search.names import ENSEMBLE_FILE
from search.spec.schema import Ensemble
from trainables.ensemble_model import WeightedEnsemble
from trainables.metrics import COST_METRICS, EPS, QUALITY_METRICS, metric_named


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
    O(K * N); accuracy needs the whole average, O(K * N * C); any other metric is scikit-learn's,
    once per candidate and round.
    """
    if metric not in QUALITY_METRICS:
        raise ValueError(f"ensemble selection supports {', '.join(QUALITY_METRICS)}, not {metric!r}")
    if rounds < 1 or proba.ndim != 3 or proba.shape[0] == 0:
        raise ValueError("ensemble selection needs rounds >= 1 and probabilities shaped (candidates, rows, classes)")
    k, n, _ = proba.shape
    sign = 1.0 if QUALITY_METRICS[metric] == "min" else -1.0  # selection minimises sign * metric
    log_loss = metric == "val_log_loss"
    values = proba[:, np.arange(n), labels].astype(np.float64) if log_loss else proba.astype(np.float32)
    total = np.zeros(values.shape[1:], dtype=values.dtype)
    counts = np.zeros(k, dtype=np.int64)
    best, best_counts, trajectory = np.inf, counts, []
    for picked in range(rounds):
        mixed = (total[None] + values) / (picked + 1)
        losses = signed_scores(mixed, labels, metric, sign)
        if costs is not None and budget is not None:
            taken = counts > 0
            fits = np.all(costs[taken].sum(axis=0) + costs * ~taken[:, None] <= budget, axis=1)
            losses = np.where(fits | taken, losses, np.inf)
        choice = int(np.argmin(losses))  # ties: the better-ranked candidate
        counts[choice] += 1
        total += values[choice]
        trajectory.append(sign * float(losses[choice]))
        if losses[choice] < best - 1e-12:
            best, best_counts = float(losses[choice]), counts.copy()
    weights = best_counts / best_counts.sum()
    return Selection(weights, sign * best, trajectory)


def signed_scores(mixed: np.ndarray, labels: np.ndarray, metric: str, sign: float) -> np.ndarray:
    """``sign`` times ``metric`` of each candidate mixture (K, N) true-class probabilities for
    log-loss, else (K, N, C) probabilities (a regression's (K, N, 1) values); NaN (undefined) counts as the worst."""
    if metric == "val_log_loss":
        return -np.log(np.clip(mixed, EPS, 1.0)).mean(axis=1)
    if metric == "val_accuracy":
        return -(mixed.argmax(axis=2) == labels[None]).mean(axis=1)
    if metric in ("val_rmse", "val_mae"):  # a regression's mixtures (K, N, 1) of values
        errors = mixed[..., 0].astype(np.float64) - labels[None]
        return np.sqrt((errors**2).mean(axis=1)) if metric == "val_rmse" else np.abs(errors).mean(axis=1)
    score = metric_named(metric).score
    return np.nan_to_num(np.array([sign * score(m, labels) for m in mixed]), nan=np.inf)


def weighted(parts: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The weighted average of probability arrays."""
    return np.tensordot(weights, np.stack(parts), axes=1)


ENSEMBLE = "ensemble"


def cost_limits(objectives: Objectives) -> tuple[list[str], np.ndarray] | None:
    """The cost constraints with an upper bound, which ensemble selection keeps summed costs under."""
    bounds = [b for b in objectives.bounds if b.metric in COST_METRICS and b.high is not None]
    return ([b.key for b in bounds], np.array([b.high for b in bounds])) if bounds else None


def ensemble_words(chosen: list[tuple[Trial, float]]) -> str:
    parts = [f"{w:.2f} x trial {t.trial_id} ({t.fusion})" for t, w in chosen]
    return f"ensemble of {len(parts)} trials: " + "; ".join(parts)


def ensemble_candidate(pool: Pool, label: str, chosen: list[tuple[Trial, float]], point: dict[str, float]) -> Candidate:
    """Trials mixed with weights as a candidate: built once, costed as what it runs (a member its
    composites share runs and counts once), ``point`` its validation values."""

    def build() -> WeightedEnsemble:
        return pool.once(label, lambda: WeightedEnsemble([pool.model_of(t) for t, _ in chosen], [w for _, w in chosen], [t.trial_id for t, _ in chosen]))

    cost = pool.costs.of_ensemble(build, chosen[0][0].plan.batch_size)
    members = [{"trial": t.trial_id, "weight": w} for t, w in chosen]
    test = weighted([t.test for t, _ in chosen], np.array([w for _, w in chosen]))
    return Candidate(label, label, {**point, **cost}, ensemble_words(chosen), tuple(t.plan for t, _ in chosen), build, chosen[0][0].trial_id, {"members": members}, test)


@register_maker(ENSEMBLE, section="ensemble")
def make_ensemble(pool: Pool, settings: Ensemble) -> list[Candidate]:
    """Greedy selection over the trials with predictions (each member alone among them), on their
    validation predictions or, with ``cv``, on out-of-fold predictions of the training split (then
    validation stays unseen by the weights); a candidate when it mixes two or more."""
    if settings.rounds < 1:
        return []
    trials, objectives = pool.trials, pool.objectives
    metric = objectives.first.metric
    limits = cost_limits(objectives)
    trial_costs = None if limits is None else np.array([[t.metrics[k] for k in limits[0]] for t in trials])
    split = "train" if settings.cv else "val"
    proba = out_of_fold(pool, trials, settings.cv) if settings.cv else np.stack([t.val for t in trials])
    selection = greedy_selection(
        proba, pool.data.splits[split].labels.numpy(), settings.rounds, metric, costs=trial_costs, budget=None if limits is None else limits[1],
    )
    members = [{"trial": t.trial_id, "weight": float(w)} for t, w in zip(trials, selection.weights, strict=True) if w > 0]
    fitted_on = f"out-of-fold predictions of train, {settings.cv} folds" if settings.cv else "validation predictions"
    pool.facts[ENSEMBLE_FILE] = {"members": members, "fitted_on": fitted_on, "score": selection.score, "trajectory": selection.trajectory}
    if selection.size < 2:
        print(f"ensemble selection over {len(trials)} trials, on {fitted_on}, kept one trial alone", flush=True)
        return []
    chosen = [(t, float(w)) for t, w in zip(trials, selection.weights, strict=True) if w > 0]
    point = pool.val_point(weighted([t.val for t in trials], selection.weights))
    if not settings.cv:
        point[reported_key(metric)] = selection.score  # the same value, as selection computed it
    print(
        f"ensemble selection over {len(trials)} trials, on {fitted_on}: {selection.size} trials, validation {metric} "
        f"{point[reported_key(metric)]:.4f} against {trials[0].metrics[objectives.first.key]:.4f} for the best trial", flush=True,
    )
    return [ensemble_candidate(pool, ENSEMBLE, chosen, point)]


UNIFORM_AVERAGE = "uniform average"


@register_maker(UNIFORM_AVERAGE)
def make_uniform_average(pool: Pool, _: Any) -> list[Candidate]:
    """The members alone, averaged with equal weights: the naive ensemble (when every member has a trial alone)."""
    if len(pool.alone) < 2 or list(pool.alone) != pool.members:
        return []
    chosen = [(t, 1.0 / len(pool.alone)) for t in pool.alone.values()]
    return [ensemble_candidate(pool, UNIFORM_AVERAGE, chosen, pool.val_point(np.mean([t.val for t, _ in chosen], axis=0)))]
