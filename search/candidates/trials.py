"""The search's trials as the candidates see them, read once from Tune's results, and the ``trial``
maker: every trial that reported is a candidate, best first on the first objective; the best one
among those that meet the constraints is the test table's ``best trial`` row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import tune

from search.candidates.candidate import Candidate, Pool, composite_of, register_maker
from search.errors import SearchFailed
from search.spec.objectives import Objectives
from trainables.adaptation import NONE
from trainables.checkpoint import TrialCheckpoint
from trainables.composite import CompositeModel
from trainables.training import TrialPlan

BEST_TRIAL = "best trial"
UNADAPTED = "best trial without adaptation"  # a search that adapts to target domains: the gain is against this row
SAME_AS = "same_as"  # in a row's made_of: the candidate it repeats (a member alone that is the best trial)


@dataclass(frozen=True)
class Trial:
    """A trial that reported: its plan (parsed once), what it reported last (its best epoch's metrics,
    its cost), its checkpoint, and the best epoch's predictions when they were read."""

    trial_id: str
    plan: TrialPlan
    metrics: dict[str, Any]
    checkpoint: TrialCheckpoint
    history: tuple[tuple[TrialCheckpoint, dict[str, Any]], ...] = ()  # every checkpoint Tune kept, with its metrics
    val: np.ndarray | None = None  # (N, C) validation probabilities of its best epoch
    test: np.ndarray | None = None

    @property
    def fusion(self) -> str:
        return self.plan.composite.fusion

    def model(self) -> CompositeModel:
        """Its composite with its best epoch's weights."""
        return composite_of(self.plan, self.checkpoint.best_state())

    def with_predictions(self) -> "Trial | None":
        """The same trial with its best epoch's predictions read, or None when it saved none."""
        saved = self.checkpoint.predictions()
        if saved is None:
            return None
        return Trial(self.trial_id, self.plan, self.metrics, self.checkpoint, self.history, saved["val"], saved["test"])


def reported_trials(results: list[tune.Result], objectives: Objectives) -> list[Trial]:
    """The trials that reported the first objective and saved a checkpoint, best first on it."""
    results = [r for r in results if not r.error and r.checkpoint is not None and objectives.first.key in (r.metrics or {})]
    results.sort(key=lambda r: objectives.sort_key(r.metrics))
    return [
        Trial(
            r.metrics["trial_id"], TrialPlan.from_dict(r.config["plan"]), dict(r.metrics), TrialCheckpoint(r.checkpoint),
            tuple((TrialCheckpoint(c), m) for c, m in r.best_checkpoints),
        )
        for r in results
    ]


def no_feasible(trials: list[Trial], objectives: Objectives) -> SearchFailed:
    """The one-line error of a search none of whose trials meets the constraints."""
    nearest = min(trials, key=lambda t: max(objectives.slacks(t.metrics)))
    misses = "; ".join(objectives.violations(nearest.metrics))
    return SearchFailed(
        f"no trial meets the constraints ({', '.join(b.describe() for b in objectives.bounds)}): "
        f"the nearest, trial {nearest.trial_id}, has {misses}; no champion registered"
    )


def alone_label(member: str) -> str:
    return f"{member} alone"


def best_alone(trials: list[Trial], members: list[str]) -> dict[str, Trial]:
    """Each member's best trial alone among ``trials`` (best first), in the order of ``members``."""
    found = {}
    for trial in trials:
        member = trial.plan.composite.single
        if member is not None and member not in found:
            found[member] = trial
    return {m: found[m] for m in members if m in found}


def best_unadapted(trials: list[Trial]) -> Trial | None:
    """The first of ``trials`` (best first) that trained without domain adaptation, when the first
    one adapted; None otherwise."""
    if not trials or trials[0].plan.adaptation == NONE:
        return None
    return next((t for t in trials if t.plan.adaptation == NONE), None)


def trial_candidate(trial: Trial, label: str, test: np.ndarray | None = None, same_as: str | None = None) -> Candidate:
    """A trial as a candidate; ``same_as`` names the row it repeats (then it is a row, not a second candidate)."""
    made_of = {"trial": trial.trial_id, **({SAME_AS: same_as} if same_as else {})}
    return Candidate(
        label, "trial", dict(trial.metrics), f"trial {trial.trial_id} ({trial.fusion})", (trial.plan,), trial.model,
        trial.trial_id, made_of, test, eligible=same_as is None,
    )


@register_maker("trial")
def make_trials(pool: Pool, _: Any) -> list[Candidate]:
    """Every trial that reported, best first: the best feasible one is the ``best trial`` row, each
    member's best trial alone the ``<member> alone`` row (a row repeating the best trial when it
    is one: not a second candidate); when the best trial adapted to target domains, the best that
    did not is the ``best trial without adaptation`` row."""
    best = pool.trials[0]
    rows = {t.trial_id: (m, t) for m, t in pool.alone.items()}
    unadapted = best_unadapted(pool.trials)
    made = []
    for trial in pool.reported:
        if trial.trial_id == best.trial_id:
            made.append(trial_candidate(trial, BEST_TRIAL, best.test))
            if trial.trial_id in rows:
                made.append(trial_candidate(trial, alone_label(rows[trial.trial_id][0]), best.test, same_as=BEST_TRIAL))
        elif trial.trial_id in rows:
            member, with_predictions = rows[trial.trial_id]
            made.append(trial_candidate(trial, alone_label(member), with_predictions.test))
            if unadapted is not None and trial.trial_id == unadapted.trial_id:
                made.append(trial_candidate(trial, UNADAPTED, unadapted.test, same_as=alone_label(member)))
        elif unadapted is not None and trial.trial_id == unadapted.trial_id:
            made.append(trial_candidate(trial, UNADAPTED, unadapted.test))
        else:
            made.append(trial_candidate(trial, f"trial {trial.trial_id}"))
    return made
