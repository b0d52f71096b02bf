"""The champion: the candidate the search's ``Objectives`` choose among everything the makers made.

The makers (``search.candidates.candidate.MAKERS``, run in the order they were registered: trials,
the ensemble, soups, merges, the checkpoint average, the student, and any registered later) each
add candidates to one list. Every candidate has a validation point (cost included); those that
meet the constraints compete, and ``Objectives.choose`` picks (by default: the best on the first
objective; ties go to the earlier candidate); none meeting them is an error, and nothing is
registered. Candidates that are table rows are compared on the test split from predictions made
once, with their latency and size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ray import tune

# The makers register themselves when imported, in this order (the order they run in).
import search.candidates.trials  # noqa: F401
import search.candidates.ensemble  # noqa: F401  (the ensemble, then the uniform average of the members alone)
import search.candidates.weight_fusion  # noqa: F401
import search.candidates.adabn  # noqa: F401
import search.candidates.distill  # noqa: F401
from search.candidates.candidate import MAKERS, TABLE_COSTS, Candidate, Costs, Pool
from search.candidates.trials import BEST_TRIAL, SAME_AS, alone_label, best_alone, best_unadapted, no_feasible, reported_trials
from search.spec.objectives import Goal, Objectives
from search.spec.schema import Spec
from search.names import domain_row
from trainables.data import Dataset, Domains
from trainables.feature_cache import CachedMember
from trainables.metrics import COST_METRICS, EPS, best_threshold, quality_metrics, metric_named


@dataclass(frozen=True)
class Choice:
    """What the rule saw and picked: every candidate in the order made, which are on the Pareto
    front and meet the constraints, the champion, and the JSON facts the makers left."""

    candidates: list[Candidate]
    feasible: list[bool]
    on_front: list[bool]
    index: int  # the champion's
    costs: dict[str, dict[str, float]]  # the cost of each table row, by label
    trials: tuple[str, ...] = ()  # every trial that reported, weighed by the rule (best first)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def champion(self) -> Candidate:
        return self.candidates[self.index]

    @property
    def best(self) -> Candidate:
        """The best trial (meeting the constraints) on the first objective."""
        return next(c for c in self.candidates if c.label == BEST_TRIAL)

    @property
    def rows(self) -> list[Candidate]:
        """The candidates that are rows of the test table."""
        return [c for c in self.candidates if c.row]

    def by_kind(self, kind: str) -> list[Candidate]:
        return [c for c in self.candidates if c.kind == kind]

    def marks(self) -> dict[str, str]:
        """Whether each table row could be picked: ``yes``, ``champion``, or the row it repeats."""
        marks = {c.label: "yes" if c.eligible else f"= {c.made_of.get(SAME_AS, 'one trial')}" for c in self.rows}
        marks[self.champion.label] = "champion"
        return {**marks, "champion": "champion"}

    def record(self, objectives: Objectives) -> dict[str, Any]:
        """Every candidate as JSON (``candidates.json``): what the look commands and pictures read."""
        rows = [
            {
                "candidate": c.label, "kind": c.kind, "fusion": c.fusion, "eligible": c.eligible, "row": c.row, "meets_constraints": feasible,
                "on_front": front, "champion": i == self.index, "trial": c.trial, **{k: c.point.get(k) for k in objectives.shown},
            }
            for i, (c, feasible, front) in enumerate(zip(self.candidates, self.feasible, self.on_front, strict=True))
        ]
        return {"objectives": json.loads(objectives.to_json()), "candidates": rows, "marks": self.marks(), "trials": list(self.trials)}


def make_candidates(pool: Pool, sections: Any) -> None:
    """Run every registered maker on ``pool``, each given the spec's section it reads."""
    for maker in MAKERS.values():
        pool.made += maker.make(pool, getattr(sections, maker.section) if maker.section else None)


def pick(candidates: list[Candidate], objectives: Objectives) -> tuple[int, list[bool], list[bool]]:
    """The champion's index among the eligible candidates, with which meet the constraints and
    which are on the front (ineligible ones on neither)."""
    eligible = [i for i, c in enumerate(candidates) if c.eligible]
    points = [candidates[i].point for i in eligible]
    front = {eligible[i] for i in objectives.front(points)}
    chosen = objectives.choose(points)
    if chosen is None:
        raise ValueError("no eligible candidate meets the constraints")  # the best feasible trial always does
    feasible = [c.eligible and objectives.feasible(c.point) for c in candidates]
    return eligible[chosen], feasible, [i in front for i in range(len(candidates))]


def choose_champion(
    results: list[tune.Result], spec: Spec, data: Dataset, features: dict[str, CachedMember] | None = None, latencies: dict[str, dict[str, float]] | None = None
) -> Choice | None:
    """Make every candidate from the trials' ``results`` and pick the champion; None when no trial
    saved predictions. Raises ``SearchFailed`` when no trial meets the constraints. ``latencies``:
    members' latencies timed already (``Costs.members``)."""
    objectives = spec.objectives
    reported = reported_trials(results, objectives)
    if not reported:
        return None
    feasible = [t for t in reported if objectives.feasible(t.metrics)]
    if not feasible:
        raise no_feasible(reported, objectives)
    top = feasible[: spec.ensemble.top_k]
    alone = best_alone(feasible, [m.name for m in spec.members])
    in_top = {t.trial_id for t in top}
    unadapted = best_unadapted(feasible)  # the row adaptation's gain is measured against
    extra = {t.trial_id: t for t in [*alone.values(), *([unadapted] if unadapted is not None else [])]}
    chosen = top + [t for t in extra.values() if t.trial_id not in in_top]  # every member alone joins the pool
    read = {t.trial_id: t for t in (t.with_predictions() for t in chosen) if t is not None}
    trials = [read[t.trial_id] for t in chosen if t.trial_id in read]
    if not trials:
        return None
    alone = {m: read[t.trial_id] for m, t in alone.items() if t.trial_id in read}
    costs = Costs(data, spec.measure_cost is not False, latencies or {})
    members = [m.name for m in spec.members]
    pool = Pool(objectives, spec.seed, spec.resources, data, features or {}, reported, trials, alone, members, costs)
    make_candidates(pool, spec)
    index, meets, front = pick(pool.made, objectives)
    return Choice(pool.made, meets, front, index, row_costs(pool), tuple(t.trial_id for t in reported), pool.facts)


def row_costs(pool: Pool) -> dict[str, dict[str, float]]:
    """Each table row's cost: as it was reported, else measured once per structure; an ensemble's as it was made."""
    return {
        c.label: pool.costs.of(c.plans[0], c.point, c.build) if len(c.plans) == 1 else {k: c.point[k] for k in COST_METRICS if k in c.point}
        for c in pool.made if c.row
    }


def table_row(candidate: Candidate, pool_costs: dict[str, float], labels: torch.Tensor) -> dict[str, float]:
    """A row of the test table: test metrics, then the cost measures shown beside them."""
    assert candidate.test is not None
    metrics = quality_metrics(torch.from_numpy(np.asarray(candidate.test)), labels, "test")
    return {**metrics, **{name: pool_costs[name] for name in TABLE_COSTS if name in pool_costs}}


def domain_rows(label: str, proba: torch.Tensor, labels: torch.Tensor, domains: Domains | None, cut: float | None = None) -> dict[str, dict[str, float]]:
    """The test metrics of ``label``'s probabilities on the source test rows and on the target test
    rows apart (nothing for data without domains)."""
    if domains is None:
        return {}
    rows = {}
    for domain, mask in (("source", ~domains.test_target), ("target", domains.test_target)):
        if mask.any():
            index = torch.from_numpy(np.flatnonzero(mask))
            rows[domain_row(label, domain)] = quality_metrics(proba[index], labels[index], "test", cut)
    return rows


def describe(choice: Choice, metric: str) -> str:
    """One line: what was made after the trials (its validation values) and which became the champion."""
    key = f"best_{metric}"
    made = [f"{c.label} {c.point[key]:.4f}" for c in choice.rows if c.kind != "trial" and key in c.point]
    found = f"candidates made after the trials ({metric}): {', '.join(made)}; " if made else ""
    return f"{found}champion: {choice.champion.fusion}"


def against_members(choice: Choice, goal: Goal) -> str | None:
    """One line: the champion against each member alone on validation (``goal``), and whether it is
    at least as good as every one of them; None when no member was trained alone."""
    alone = [c for c in choice.rows if c.kind == "trial" and c.label == alone_label(c.plans[0].composite.single or "")]
    values = [(c.label, goal.value(c.point)) for c in alone]
    values = [(label, v) for label, v in values if v is not None]
    champion = goal.value(choice.champion.point)
    if not values or champion is None:
        return None
    worse = [label for label, v in values if goal.direction.better(v, champion)]
    verdict = f"worse than {', '.join(worse)}" if worse else "at least as good as every member alone"
    listed = ", ".join(f"{label} {v:.4f}" for label, v in values)
    return f"champion against the members alone (validation {goal.metric}): {champion:.4f} against {listed}: {verdict}"


# The metrics that are a mean over rows, with each row's share: the test split's noise on them is
# the standard error of that mean.
PER_ROW = {
    "val_log_loss": lambda proba, labels: -np.log(np.clip(proba[np.arange(len(labels)), labels], EPS, 1.0)),
    "val_accuracy": lambda proba, labels: (proba.argmax(axis=1) == labels).astype(np.float64),
    "val_mae": lambda values, targets: np.abs(values[:, 0] - targets).astype(np.float64),
}


def disagreement(choice: Choice, champion_test: np.ndarray, labels: np.ndarray, goal: Goal) -> str | None:
    """One line when a row the champion beat on validation beats it on the test split by more than
    the test split's noise (twice the standard error of the rows' paired differences), else None; only
    for a metric that is a mean over rows (log-loss, accuracy, mean absolute error)."""
    per_row = PER_ROW.get(goal.metric)
    if per_row is None:
        return None
    ours = per_row(champion_test, labels)
    worst: tuple[float, str] | None = None
    for other in choice.rows:
        if other is choice.champion or not other.eligible or goal.direction.better(other.point[goal.key], choice.champion.point[goal.key]):
            continue
        theirs = per_row(np.asarray(other.test), labels)
        difference = theirs - ours
        gap = -difference.mean() if goal.mode == "min" else difference.mean()  # > 0: they do better on test
        noise = 2 * difference.std(ddof=1) / np.sqrt(len(labels)) if len(labels) > 1 else 0.0
        if gap > noise and (worst is None or gap - noise > worst[0]):
            name = goal.metric.removeprefix("val_")
            worst = (gap - noise, f"{other.label} has {name} {theirs.mean():.4f} on test against the champion's {ours.mean():.4f}, beyond the split's noise ({noise:.4f}),")
    if worst is None:
        return None
    return (
        f"warning: the test split disagrees with validation: {worst[1]} though the champion was as good or better on "
        "validation; the test rows may come from another distribution than the validation rows"
    )


@dataclass(frozen=True)
class Threshold:
    """The champion's decision threshold on the positive class's probability, and how it was set."""

    value: float
    words: str


def decision_threshold(setting: float | str, first: Goal, champion: Candidate, data: Dataset, features: dict[str, CachedMember]) -> Threshold | None:
    """For two classes: the threshold ``setting`` fixes, or the one that scores best on validation
    on its metric (``auto``: the first objective's) when that is a metric of predicted classes,
    else 0.5; None for more classes."""
    if data.num_classes != 2:
        return None
    if isinstance(setting, float):
        return Threshold(setting, f"decision threshold {setting:g} (the spec's)")
    metric = metric_named(first.metric if setting == "auto" else setting)
    if metric.of_classes is None:
        return Threshold(0.5, f"decision threshold 0.5: {first.metric} scores probabilities (decision_threshold: a metric of predicted classes chooses one)")
    val = data.splits["val"]
    proba = champion.probabilities(data, "val", features).double().numpy()
    value, score = best_threshold(proba, val.labels.numpy(), metric)
    at_half = metric.score(proba, val.labels.numpy())
    return Threshold(
        value, f"decision threshold {value:.4g} on P({data.class_names[1]}), chosen on validation for val_{metric.name}: {score:.4f} (at 0.5: {at_half:.4f})"
    )
