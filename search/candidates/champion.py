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
import search.candidates.ensemble  # noqa: F401
import search.candidates.weight_fusion  # noqa: F401
import search.candidates.distill  # noqa: F401
from search.candidates.candidate import MAKERS, TABLE_COSTS, Candidate, Costs, Pool
from search.candidates.trials import BEST_TRIAL, no_feasible, reported_trials
from search.spec.objectives import Objectives
from search.spec.schema import Spec
from trainables.data import Dataset
from trainables.feature_cache import CachedMember
from trainables.metrics import classification_metrics


@dataclass(frozen=True)
class Choice:
    """What the rule saw and picked: every candidate in the order made, which are on the Pareto
    front and meet the constraints, the champion, and the JSON facts the makers left."""

    candidates: list[Candidate]
    feasible: list[bool]
    on_front: list[bool]
    index: int  # the champion's
    costs: dict[str, dict[str, float]]  # the cost of each table row, by label
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

    def record(self, objectives: Objectives) -> dict[str, Any]:
        """Every candidate as JSON (``candidates.json``): what the look commands and pictures read."""
        rows = [
            {
                "candidate": c.label, "kind": c.kind, "fusion": c.fusion, "eligible": c.eligible, "meets_constraints": feasible,
                "on_front": front, "champion": i == self.index, "trial": c.trial, **{k: c.point.get(k) for k in objectives.shown},
            }
            for i, (c, feasible, front) in enumerate(zip(self.candidates, self.feasible, self.on_front, strict=True))
        ]
        return {"objectives": json.loads(objectives.to_json()), "candidates": rows}


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


def choose_champion(grid: tune.ResultGrid, spec: Spec, data: Dataset, features: dict[str, CachedMember] | None = None) -> Choice | None:
    """Make every candidate and pick the champion; None when no trial saved predictions. Raises
    ``SearchFailed`` when no trial meets the constraints."""
    objectives = spec.objectives
    reported = reported_trials(grid, objectives)
    if not reported:
        return None
    feasible = [t for t in reported if objectives.feasible(t.metrics)]
    if not feasible:
        raise no_feasible(reported, objectives)
    trials = [t for t in (t.with_predictions() for t in feasible[: spec.ensemble.top_k]) if t is not None]
    if not trials:
        return None
    pool = Pool(objectives, spec.seed, spec.resources, data, features or {}, reported, trials, Costs(data, spec.measure_cost is not False), spec.measures_cost)
    make_candidates(pool, spec)
    index, meets, front = pick(pool.made, objectives)
    return Choice(pool.made, meets, front, index, row_costs(pool), pool.facts)


def row_costs(pool: Pool) -> dict[str, dict[str, float]]:
    """Each table row's cost: as it was reported, else measured once per structure (per ensemble)."""
    return {
        c.label: pool.costs.of(c.trial if len(c.plans) == 1 else c.label, c.point, c.build, c.plans[0].batch_size)
        for c in pool.made if c.row
    }


def table_row(candidate: Candidate, pool_costs: dict[str, float], labels: torch.Tensor) -> dict[str, float]:
    """A row of the test table: test metrics, then the cost measures shown beside them."""
    assert candidate.test is not None
    metrics = classification_metrics(torch.from_numpy(np.asarray(candidate.test)), labels, "test")
    return {**metrics, **{name: pool_costs[name] for name in TABLE_COSTS if name in pool_costs}}


def describe(choice: Choice, metric: str) -> str:
    """One line: what was made after the trials (its validation values) and which became the champion."""
    made = [f"{c.label} {c.point[key]:.4f}" for c in choice.rows if c.kind != "trial" for key in [f"best_{metric}"] if key in c.point]
    found = f"candidates made after the trials ({metric}): {', '.join(made)}; " if made else ""
    return f"{found}champion: {choice.champion.fusion}"
