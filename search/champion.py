"""The champion: the candidate the search's ``Objectives`` choose among trials, the greedy
ensemble, and the composites made after the search in weight space and by distillation.

Every trial that reported is a candidate, described by what it reported at its best epoch
(``best_val_log_loss``, ``best_val_accuracy``) and by its cost (``latency_ms_p95``, ``params_m``...).
The top-K trials that meet the constraints go through greedy ensemble selection
(``search.ensemble``), which takes a trial in only while the ensemble's summed cost still meets the
cost constraints; the ensemble is a candidate when it mixes at least two trials. Then the
weight-space variants (``search.weight_fusion``: greedy and uniform soups, merges, the best trial's
checkpoint average) and the student (``search.distill``, when the spec asks) join them, each scored
on validation and costed as the one composite it is. Candidates are listed trials first, best first
on the first objective, then the ensemble, then the variants, so a later one wins only when it is
strictly better. ``Objectives.choose`` picks the champion (by default: the best on the first
objective among those meeting every constraint); no candidate meeting them is an error, and nothing
is registered. The test table compares the best trial, the ensemble and every variant on the test
split (from predictions made once), with their latency and size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from ray import tune
from safetensors.torch import load_file

from search.distill import train_student
from search.ensemble import Candidate, Selection, greedy_selection, read_candidate, weighted
from search.errors import SearchFailed
from search.objectives import Objectives, reported_key
from search.progress import describe
from search.spec import Spec
from search.weight_fusion import Variant, WeightSpace, weight_space
from trainables.composite import CompositeModel, load_trained_state
from trainables.cost import COST_METRICS, ensemble_cost, predictor_cost
from trainables.data import Dataset
from trainables.ensemble_model import Predictor, WeightedEnsemble
from trainables.feature_cache import CachedMember
from trainables.metrics import QUALITY_METRICS, classification_metrics
from trainables.trainable import BEST
from trainables.training import TrialPlan, build_model, predict_split

BEST_TRIAL = "best trial"
ENSEMBLE = "ensemble"
PARETO_TRIAL = "trial"  # a trial other than the best on the first objective, picked by ``select``
TABLE_COSTS = ("latency_ms_p95", "params_m", "size_mb")  # beside the test metrics in the table


@dataclass
class Option:
    """A candidate for champion: a trial, the ensemble or a variant, and its point (reported keys -> values)."""

    label: str  # "trial <id>", "ensemble", or a variant's label ("greedy soup", "ties merge", "student"...)
    point: dict[str, float]
    fusion: str  # what it is, in words
    feasible: bool = True
    on_front: bool = False
    variant: Variant | None = None


@dataclass
class Champion:
    model: Predictor
    kind: str  # BEST_TRIAL, ENSEMBLE, PARETO_TRIAL or a variant's label
    best: Candidate  # the best trial on the first objective among those meeting the constraints
    point: dict[str, float]  # the champion's validation metrics and cost, by reported key
    val: dict[str, float]  # first objective on validation, by row of the test table
    test_table: dict[str, dict[str, float]]  # best trial, ensemble and variants: test metrics and cost
    options: list[Option] = field(default_factory=list)  # every candidate: trials, the ensemble, variants
    selection: Selection | None = None
    candidates: list[Candidate] = field(default_factory=list)
    runner_up: Predictor | None = None  # the best trial or the ensemble, whichever is not the champion
    chosen: Candidate | None = None  # the trial, when the champion is one
    variant: Variant | None = None  # the champion, when it is a variant
    student: Variant | None = None
    weights: WeightSpace | None = None  # what weight-space fusion made

    @property
    def by_trial(self) -> dict[str, Candidate]:
        return {c.trial_id: c for c in self.candidates}

    def plans_of(self, trials: list[str]) -> list[TrialPlan]:
        """The plans of candidate trials, in the order given."""
        return [TrialPlan.from_dict(self.by_trial[t].config["plan"]) for t in trials]

    def what(self) -> str:
        """The champion in words: a trial, an ensemble of weighted trials, or a variant."""
        by_trial = self.by_trial
        if self.variant is not None:
            return variant_words(self.variant, by_trial)
        if not isinstance(self.model, WeightedEnsemble):
            trial = self.chosen or self.best
            return f"trial {trial.trial_id} ({describe(trial.config)})"
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
        made = [f"{label} {value:.4f}" for label, value in self.val.items() if label not in (BEST_TRIAL, ENSEMBLE)]
        if made:
            found += f"; made after the search ({metric}): " + ", ".join(made)
        return f"{found}; champion: " + (self.what() if self.kind == PARETO_TRIAL or self.variant is not None else f"the {self.kind}")

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

    @property
    def trial_id(self) -> str:
        """The trial the champion is, or whose structure it has."""
        return self.variant.base if self.variant is not None else (self.chosen or self.best).trial_id


def variant_words(variant: Variant, by_trial: dict[str, Candidate]) -> str:
    """A variant in words: what it is, of which trials, with whose structure."""
    return f"{variant.label} ({variant.made_of()}; one composite: {describe(by_trial[variant.base].config)})"


def trial_model(candidate: Candidate) -> CompositeModel:
    """A trial's composite with its best-epoch weights (frozen members from their pretrained weights)."""
    model = build_model(TrialPlan.from_dict(candidate.config["plan"]))
    with candidate.checkpoint.as_directory() as directory:
        load_trained_state(model, load_file(str(Path(directory) / BEST)))
    return model.eval()


def split_probabilities(model: Predictor, plans: list[TrialPlan], data: Dataset, split: str, features: dict[str, CachedMember]) -> torch.Tensor:
    """The predictor's probabilities on ``split``; frozen members' features from the cache where it has them."""
    if isinstance(model, CompositeModel):
        return predict_split(model, plans[0], data, split, features)
    parts = [w * predict_split(c, plan, data, split, features) for c, w, plan in zip(model.composites, model.weights, plans, strict=True)]
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


def val_point(proba: np.ndarray, labels: torch.Tensor) -> dict[str, float]:
    """Validation metrics under the keys a trial reports them."""
    metrics = classification_metrics(torch.from_numpy(proba), labels, "val")
    return {reported_key(name): metrics[name] for name in QUALITY_METRICS}


class Costs:
    """Cost measures of the table's rows: a trial's as it reported them, else measured here once per
    structure (a variant costs what the trial whose structure it has costs); none with ``measure_cost: false``."""

    def __init__(self, data: Dataset, enabled: bool) -> None:
        self.split, self.enabled = data.splits["val"], enabled
        self.known: dict[str, dict[str, float]] = {}

    def of(self, key: str, reported: dict[str, Any], build: Callable[[], Predictor], batch_size: int) -> dict[str, float]:
        if not self.enabled:
            return {}
        if key not in self.known:
            measured = {name: float(reported[name]) for name in COST_METRICS if name in reported}
            self.known[key] = measured if len(measured) == len(COST_METRICS) else predictor_cost(build(), self.split, batch_size)
        return self.known[key]


def table_row(proba: np.ndarray, labels: torch.Tensor, cost: dict[str, float]) -> dict[str, float]:
    """A row of the test table: test metrics, then the cost measures shown beside them."""
    return {**classification_metrics(torch.from_numpy(proba), labels, "test"), **{name: cost[name] for name in TABLE_COSTS if name in cost}}


def choose_champion(grid: tune.ResultGrid, spec: Spec, data: Dataset, features: dict[str, CachedMember] | None = None) -> Champion | None:
    """Select the ensemble, make the weight-space variants and the student, and pick the champion;
    None when no trial saved predictions. Raises ``SearchFailed`` when no candidate meets the constraints."""
    features = features or {}
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
    costs = Costs(data, spec.measure_cost is not False)
    best = candidates[0]
    best_model = trial_model(best)
    batch_size = int(best.config["plan"]["batch_size"])
    options = [Option(f"trial {r.metrics['trial_id']}", dict(r.metrics), describe(r.config), objectives.feasible(r.metrics)) for r in results]
    val = {BEST_TRIAL: best.metrics[objectives.first.key]}
    table = {BEST_TRIAL: table_row(best.test, test_labels, costs.of(best.trial_id, best.metrics, lambda: best_model, batch_size))}
    champion = Champion(best_model, BEST_TRIAL, best, dict(best.metrics), val, table, options, candidates=candidates)
    ensemble = None
    if spec.ensemble.rounds > 0:
        limits = cost_limits(objectives)
        trial_costs = None if limits is None else np.array([[c.metrics[k] for k in limits[0]] for c in candidates])
        selection = greedy_selection(
            np.stack([c.val for c in candidates]), val_labels.numpy(), spec.ensemble.rounds, metric,
            costs=trial_costs, budget=None if limits is None else limits[1],
        )
        champion.selection = selection
        if selection.size >= 2:
            chosen = [(c, float(w)) for c, w in zip(candidates, selection.weights, strict=True) if w > 0]
            models = [best_model if c is best else trial_model(c) for c, _ in chosen]
            ensemble = WeightedEnsemble(models, [w for _, w in chosen], [c.trial_id for c, _ in chosen])
            proba = weighted([c.val for c in candidates], selection.weights)
            cost = ensemble_cost(ensemble, [c.metrics for c, _ in chosen]) if spec.measures_cost else costs.of(ENSEMBLE, {}, lambda: ensemble, batch_size)
            point = {**val_point(proba, val_labels), reported_key(metric): selection.score, **cost}
            options.append(Option(ENSEMBLE, point, f"{selection.size} trials", objectives.feasible(point)))
            val[ENSEMBLE] = point[objectives.first.key]
            table[ENSEMBLE] = table_row(weighted([c.test for c in candidates], selection.weights), test_labels, cost)
    variants = made_after(spec, grid, champion, ensemble, data, features)
    by_trial = champion.by_trial
    for variant in variants:
        cost = costs.of(variant.base, by_trial[variant.base].metrics, variant.model, variant.plan.batch_size)  # a trial's structure
        point = {**val_point(variant.val, val_labels), **cost}
        val[variant.label] = point[objectives.first.key]
        table[variant.label] = table_row(variant.test, test_labels, cost)
        if not variant.is_a_trial:
            options.append(Option(variant.label, point, variant_words(variant, by_trial), objectives.feasible(point), variant=variant))
    pick(champion, options, objectives, results, ensemble)
    return champion


def made_after(
    spec: Spec, grid: tune.ResultGrid, champion: Champion, ensemble: WeightedEnsemble | None, data: Dataset,
    features: dict[str, CachedMember],
) -> list[Variant]:
    """The weight-space variants and the student the spec asks for."""
    goal = spec.objectives.first
    best_result = next(r for r in grid if (r.metrics or {}).get("trial_id") == champion.best.trial_id)
    champion.weights = weight_space(spec, champion.candidates, best_result, data, features)
    variants = list(champion.weights.variants)
    if spec.distill is not None:
        teacher: Predictor = ensemble if ensemble is not None else champion.model  # the best trial, when selection kept it alone
        trials = ensemble.trials if ensemble is not None else [champion.best.trial_id]
        proba = split_probabilities(teacher, champion.plans_of(trials), data, "train", features)
        champion.student = train_student(spec.distill, champion.candidates, proba, trials, data, features, goal)
        variants.append(champion.student)
    return variants


def pick(champion: Champion, options: list[Option], objectives: Objectives, results: list[tune.Result], ensemble: WeightedEnsemble | None) -> None:
    """Mark the front, and make the candidate ``Objectives.choose`` picks the champion."""
    points = [o.point for o in options]
    for i in objectives.front(points):
        options[i].on_front = True
    picked = options[objectives.choose(points)]  # not None: the best feasible trial is a candidate
    champion.point = picked.point
    best_model = champion.model
    if picked.variant is not None:
        champion.model, champion.kind, champion.variant, champion.runner_up = picked.variant.model(), picked.label, picked.variant, best_model
    elif picked.label == ENSEMBLE:
        champion.model, champion.kind, champion.runner_up = ensemble, ENSEMBLE, best_model
    elif picked.point["trial_id"] == champion.best.trial_id:
        champion.runner_up = ensemble
    else:
        trial = read_candidate(next(r for r in results if r.metrics["trial_id"] == picked.point["trial_id"]))
        assert trial is not None, "a trial that reported has its predictions"
        champion.model, champion.kind, champion.chosen, champion.runner_up = trial_model(trial), PARETO_TRIAL, trial, best_model


def champion_plans(champion: Champion) -> list[TrialPlan]:
    """The plans of the champion's composites, in the order of its composites."""
    if champion.variant is not None:
        return [champion.variant.plan]
    if not isinstance(champion.model, WeightedEnsemble):
        return [TrialPlan.from_dict((champion.chosen or champion.best).config["plan"])]
    return champion.plans_of(champion.model.trials)
