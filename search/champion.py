"""The champion: the candidate the search's ``Objectives`` choose among its trials and the greedy ensemble.

Every trial that reported is a candidate, described by what it reported at its best epoch
(``best_val_log_loss``, ``best_val_accuracy``) and by its cost (``latency_ms_p95``, ``params_m``...).
The top-K trials that meet the constraints go through greedy ensemble selection
(``search.ensemble``), which takes a trial in only while the ensemble's summed cost still meets the
cost constraints; the ensemble is a candidate when it mixes at least two trials. Candidates are
listed trials first, best first on the first objective, the ensemble last, so the ensemble wins only
when it is strictly better. ``Objectives.choose`` picks the champion (by default: the best on the
first objective among those meeting every constraint); no candidate meeting them is an error, and
nothing is registered. The best trial and the ensemble are compared on the test split from their
saved test predictions, and the champion is then rebuilt (members from their pretrained weights,
trained weights from the trials' checkpoints) and evaluated once on test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune
from safetensors.torch import load_file

from search.ensemble import Candidate, Selection, greedy_selection, read_candidate, weighted
from search.errors import SearchFailed
from search.objectives import Objectives, reported_key
from search.progress import describe
from search.spec import Spec
from trainables.composite import CompositeModel, load_trained_state
from trainables.cost import COST_METRICS, ensemble_cost
from trainables.data import Dataset
from trainables.ensemble_model import Predictor, WeightedEnsemble
from trainables.feature_cache import CachedMember
from trainables.metrics import QUALITY_METRICS, classification_metrics
from trainables.trainable import BEST
from trainables.training import TrialPlan, build_model, predict_split

BEST_TRIAL = "best trial"
ENSEMBLE = "ensemble"
PARETO_TRIAL = "trial"  # a trial other than the best on the first objective, picked by ``select``


@dataclass
class Option:
    """A candidate for champion: a trial or the ensemble, and its point (reported keys -> values)."""

    label: str  # "trial <id>" or "ensemble"
    point: dict[str, float]
    fusion: str  # what it is, in words
    feasible: bool = True
    on_front: bool = False


@dataclass
class Champion:
    model: Predictor
    kind: str  # BEST_TRIAL, ENSEMBLE or PARETO_TRIAL
    best: Candidate  # the best trial on the first objective among those meeting the constraints
    point: dict[str, float]  # the champion's validation metrics and cost, by reported key
    val: dict[str, float]  # first objective on validation: the best trial's and (when selected) the ensemble's
    test_table: dict[str, dict[str, float]]  # best trial and ensemble, from saved test predictions
    options: list[Option] = field(default_factory=list)  # every candidate, trials then the ensemble
    selection: Selection | None = None
    candidates: list[Candidate] = field(default_factory=list)
    runner_up: Predictor | None = None  # the best trial or the ensemble, whichever is not the champion
    chosen: Candidate | None = None  # the trial, when the champion is one

    def what(self) -> str:
        """The champion in words: a trial, or an ensemble of weighted trials."""
        if not isinstance(self.model, WeightedEnsemble):
            trial = self.chosen or self.best
            return f"trial {trial.trial_id} ({describe(trial.config)})"
        by_trial = {c.trial_id: c for c in self.candidates}
        parts = [f"{w:.2f} x trial {t} ({describe(by_trial[t].config)})" for t, w in zip(self.model.trials, self.model.weights, strict=True)]
        return f"ensemble of {len(parts)} trials: " + "; ".join(parts)

    def describe(self, metric: str) -> str:
        """One line: what selection found and which became the champion."""
        if self.selection is None:
            found = "ensemble selection is off"
        elif ENSEMBLE not in self.val:
            found = f"ensemble selection over {len(self.candidates)} trials kept the best trial alone"
        else:
            found = (
                f"ensemble selection over {len(self.candidates)} trials: {self.selection.size} trials, {metric} "
                f"{self.val[ENSEMBLE]:.4f} against {self.val[BEST_TRIAL]:.4f} for the best trial"
            )
        return f"{found}; champion: " + (self.what() if self.kind == PARETO_TRIAL else f"the {self.kind}")

    def ensemble_summary(self) -> dict[str, Any]:
        """The selected ensemble as JSON: its trials, weights and the score after each round."""
        if self.selection is None:
            return {}
        members = [
            {"trial": c.trial_id, "weight": float(w)}
            for c, w in zip(self.candidates, self.selection.weights, strict=True)
            if w > 0
        ]
        return {"members": members, "val_score": self.selection.score, "trajectory": self.selection.trajectory}

    def champion_metrics(self) -> dict[str, float]:
        """``champion.<metric>`` for each validation metric and cost measure of the champion."""
        names = [*QUALITY_METRICS, *COST_METRICS]
        return {f"champion.{name}": self.point[reported_key(name)] for name in names if reported_key(name) in self.point}


def trial_model(candidate: Candidate) -> CompositeModel:
    """A trial's composite with its best-epoch weights (frozen members from their pretrained weights)."""
    model = build_model(TrialPlan.from_dict(candidate.config["plan"]))
    with candidate.checkpoint.as_directory() as directory:
        load_trained_state(model, load_file(str(Path(directory) / BEST)))
    return model.eval()


def test_probabilities(model: Predictor, plans: list[TrialPlan], data: Dataset, features: dict[str, CachedMember]) -> torch.Tensor:
    """The predictor's test probabilities; frozen members' features from the cache where it has them."""
    if isinstance(model, CompositeModel):
        return predict_split(model, plans[0], data, "test", features)
    parts = [w * predict_split(c, plan, data, "test", features) for c, w, plan in zip(model.composites, model.weights, plans, strict=True)]
    return torch.stack(parts).sum(dim=0)


def reported_results(grid: tune.ResultGrid, objectives: Objectives) -> list[tune.Result]:
    """The trials that reported the first objective and saved a checkpoint, best first on it."""
    results = [r for r in grid if not r.error and r.checkpoint is not None and objectives.first.key in (r.metrics or {})]
    return sorted(results, key=lambda r: objectives.sort_key(r.metrics))


def no_feasible(results: list[tune.Result], objectives: Objectives) -> SearchFailed:
    """The one-line error of a search none of whose trials meets the constraints."""
    nearest = min(results, key=lambda r: max(objectives.slacks(r.metrics)))
    misses = "; ".join(objectives.violations(nearest.metrics))
    return SearchFailed(
        f"no trial meets the constraints ({', '.join(b.describe() for b in objectives.bounds)}): "
        f"the nearest, trial {nearest.metrics['trial_id']}, has {misses}; no champion registered"
    )


def cost_limits(objectives: Objectives) -> tuple[list[str], np.ndarray] | None:
    """The cost constraints with an upper bound, which ensemble selection keeps summed costs under."""
    bounds = [b for b in objectives.bounds if b.metric in COST_METRICS and b.high is not None]
    return ([b.key for b in bounds], np.array([b.high for b in bounds])) if bounds else None


def ensemble_point(selection: Selection, proba: np.ndarray, labels: torch.Tensor, metric: str, cost: dict[str, float]) -> dict[str, float]:
    """The ensemble's point: its validation metrics (as a trial reports them; the one selection
    optimised as selection scored it) and its cost."""
    metrics = classification_metrics(torch.from_numpy(proba), labels, "val")
    return {**{reported_key(name): metrics[name] for name in QUALITY_METRICS}, reported_key(metric): selection.score, **cost}


def choose_champion(grid: tune.ResultGrid, spec: Spec, data: Dataset) -> Champion | None:
    """Select the ensemble and pick the champion; None when no trial saved predictions. Raises
    ``SearchFailed`` when no candidate meets the constraints."""
    objectives = spec.objectives
    metric = objectives.first.metric
    results = reported_results(grid, objectives)
    if not results:
        return None
    feasible = [r for r in results if objectives.feasible(r.metrics)]
    if not feasible:
        raise no_feasible(results, objectives)
    candidates = [c for c in (read_candidate(r) for r in feasible[: spec.ensemble.top_k]) if c is not None]
    if not candidates:
        return None
    val_labels = data.splits["val"].labels
    test_labels = data.splits["test"].labels
    best = candidates[0]
    best_model = trial_model(best)
    options = [Option(f"trial {r.metrics['trial_id']}", dict(r.metrics), describe(r.config), objectives.feasible(r.metrics)) for r in results]
    val = {BEST_TRIAL: best.metrics[objectives.first.key]}
    table = {BEST_TRIAL: classification_metrics(torch.from_numpy(best.test), test_labels, "test")}
    champion = Champion(best_model, BEST_TRIAL, best, dict(best.metrics), val, table, options, candidates=candidates)
    ensemble = None
    if spec.ensemble.rounds > 0:
        limits = cost_limits(objectives)
        costs = None if limits is None else np.array([[c.metrics[k] for k in limits[0]] for c in candidates])
        selection = greedy_selection(
            np.stack([c.val for c in candidates]), val_labels.numpy(), spec.ensemble.rounds, metric,
            costs=costs, budget=None if limits is None else limits[1],
        )
        champion.selection = selection
        if selection.size >= 2:
            chosen = [(c, float(w)) for c, w in zip(candidates, selection.weights, strict=True) if w > 0]
            models = [best_model if c is best else trial_model(c) for c, _ in chosen]
            ensemble = WeightedEnsemble(models, [w for _, w in chosen], [c.trial_id for c, _ in chosen])
            proba = weighted([c.val for c in candidates], selection.weights)
            cost = ensemble_cost(ensemble, [c.metrics for c, _ in chosen]) if spec.measures_cost else {}
            point = ensemble_point(selection, proba, val_labels, metric, cost)
            options.append(Option(ENSEMBLE, point, f"{selection.size} trials", objectives.feasible(point)))
            val[ENSEMBLE] = point[objectives.first.key]
            ensemble_test = weighted([c.test for c in candidates], selection.weights)
            table[ENSEMBLE] = classification_metrics(torch.from_numpy(ensemble_test), test_labels, "test")
    points = [o.point for o in options]
    for i in objectives.front(points):
        options[i].on_front = True
    picked = options[objectives.choose(points)]  # not None: the best feasible trial is a candidate
    champion.point = picked.point
    if picked.label == ENSEMBLE:
        champion.model, champion.kind, champion.runner_up = ensemble, ENSEMBLE, best_model
    elif picked.point["trial_id"] == best.trial_id:
        champion.runner_up = ensemble
    else:
        trial = read_candidate(next(r for r in results if r.metrics["trial_id"] == picked.point["trial_id"]))
        assert trial is not None, "a trial that reported has its predictions"
        champion.model, champion.kind, champion.chosen, champion.runner_up = trial_model(trial), PARETO_TRIAL, trial, best_model
    return champion


def champion_plans(champion: Champion) -> list[TrialPlan]:
    """The plans of the champion's composites, in the order of its composites."""
    if not isinstance(champion.model, WeightedEnsemble):
        return [TrialPlan.from_dict((champion.chosen or champion.best).config["plan"])]
    by_trial = {c.trial_id: c for c in champion.candidates}
    return [TrialPlan.from_dict(by_trial[t].config["plan"]) for t in champion.model.trials]
