"""Candidates for champion, and the makers that make them.

A **candidate** is a value: its label (its row in the test table), the kind of maker that made it,
its validation point (the reported keys the objectives read, cost included), how to build its model
and with which plans, what it was made of, and its test-split probabilities when it is a table row.

A **maker** is a function registered by name with ``register_maker`` (as samplers and operators
are), given the ``Pool`` (the trials, the data, what earlier makers made) and the spec's section it
reads; it returns the candidates it made. Makers run in the order they were registered, so a later
one may use what an earlier one made (the student is taught by the ensemble); ties in the champion
rule go to the earlier candidate. Adding a kind of candidate is one registered function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from search.spec.objectives import Objectives, reported_key
from trainables.composite import CompositeModel, load_trained_state
from trainables.cost import predictor_cost
from trainables.data import Dataset
from trainables.ensemble_model import Predictor, WeightedEnsemble
from trainables.feature_cache import CachedMember
from trainables.metrics import COST_METRICS, quality_metrics
from trainables.training import TrialPlan, build_model, predict_split

TABLE_COSTS = ("latency_ms_p95", "params_m", "size_mb")  # beside the test metrics in the table


@dataclass(frozen=True)
class Candidate:
    """One model the champion rule may pick."""

    label: str  # its row in the test table: "best trial", "trial 3", "ensemble", "greedy soup", "student"
    kind: str  # the name of the maker that made it
    point: dict[str, float]  # validation metrics and cost, by reported key (``best_val_log_loss``, ``latency_ms_p95``)
    fusion: str  # what it is, in words
    plans: tuple[TrialPlan, ...]  # each composite's plan, in the order of the model's composites
    build: Callable[[], Predictor]  # its model, every member real (frozen ones from their pretrained weights)
    trial: str  # the trial it is, or whose structure it has
    made_of: dict[str, Any] = field(default_factory=dict)  # how it was made, as JSON
    test: np.ndarray | None = None  # test-split probabilities: a table row when given
    eligible: bool = True  # False: the same weights as a trial (a soup of one), shown in the table only

    @property
    def row(self) -> bool:
        return self.test is not None

    def probabilities(self, data: Dataset, split: str, features: dict[str, CachedMember]) -> torch.Tensor:
        """Its model's probabilities on ``split``; frozen members' features from the cache where it has them."""
        return split_probabilities(self.build(), self.plans, data, split, features)


def split_probabilities(model: Predictor, plans: tuple[TrialPlan, ...], data: Dataset, split: str, features: dict[str, CachedMember]) -> torch.Tensor:
    """A composite's or an ensemble's probabilities on ``split``."""
    if isinstance(model, CompositeModel):
        return predict_split(model, plans[0], data, split, features)
    parts = [w * predict_split(c, plan, data, split, features) for c, w, plan in zip(model.composites, model.weights, plans, strict=True)]
    return torch.stack(parts).sum(dim=0)


def composite_of(plan: TrialPlan, state: dict[str, torch.Tensor]) -> CompositeModel:
    """The composite of ``plan`` with trained weights ``state`` (frozen members from their pretrained weights)."""
    model = build_model(plan)
    load_trained_state(model, state)
    return model.eval()


def structure_key(plan: TrialPlan) -> str:
    """What a composite's cost is measured once for: its members as built and its operator (trials of one
    structure whose fusion heads differ in width share it: the members dominate what a composite costs)."""
    c = plan.composite
    return json.dumps([[m.name, m.kind, m.input, m.params] for m in c.members] + [c.operator, plan.batch_size], sort_keys=True, default=str)


class Costs:
    """Cost measures: a trial's as it reported them, else measured here once per structure
    (``structure_key``), each member timed once for all; an ensemble's on what it runs; none when
    the search does not measure cost."""

    def __init__(self, data: Dataset, enabled: bool, members: dict[str, dict[str, float]]) -> None:
        self.split, self.enabled = data.splits["val"], enabled
        self.known: dict[str, dict[str, float]] = {}  # by ``structure_key``
        self.members = dict(members)  # each member's latencies, by ``timing_key`` (from the cache pass, else timed here)

    def of(self, plan: TrialPlan, reported: dict[str, Any], build: Callable[[], Predictor]) -> dict[str, float]:
        """The cost of the composite ``build()`` makes of ``plan`` (``reported`` when it has every measure)."""
        if not self.enabled:
            return {}
        measured = {name: float(reported[name]) for name in COST_METRICS if name in reported}
        if len(measured) == len(COST_METRICS):
            return measured
        key = structure_key(plan)
        if key not in self.known:
            self.known[key] = predictor_cost(build(), self.split, plan.batch_size, self.members)
        return self.known[key]

    def of_ensemble(self, build: Callable[[], WeightedEnsemble], batch_size: int) -> dict[str, float]:
        """The cost of the ensemble ``build()`` makes (``predictor_cost``: a member its composites
        share counted once), its members' latencies timed once per search."""
        if not self.enabled:
            return {}
        return predictor_cost(build(), self.split, batch_size, self.members)


@dataclass
class Pool:
    """What makers read: the search's objectives, seed and trial resources, the data and cached
    features, the trials (``search.candidates.trials``) and the candidates made so far."""

    objectives: Objectives
    seed: int
    resources: Any  # the spec's ``resources`` section (refits run with a trial's)
    data: Dataset
    features: dict[str, CachedMember]
    reported: list[Any]  # every trial that reported, best first (``search.candidates.trials.Trial``)
    trials: list[Any]  # the top trials meeting the constraints and each member's best alone, with their predictions
    alone: dict[str, Any]  # member -> its best trial alone (meeting the constraints), in spec order
    members: list[str]  # the spec's members, in its order
    costs: Costs
    made: list[Candidate] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # JSON the makers leave for the record, by artifact name
    shared: dict[str, Any] = field(default_factory=dict)  # work makers share (one scorer per structure...)

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` the first time ``key`` is asked for; the same value after."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]

    def model_of(self, trial: Any) -> CompositeModel:
        """A trial's composite, built once."""
        return self.once(f"model of {trial.trial_id}", trial.model)

    def val_point(self, proba: np.ndarray) -> dict[str, float]:
        """Validation metrics under the keys a trial reports them."""
        metrics = quality_metrics(torch.from_numpy(proba), self.data.splits["val"].labels, "val")
        return {reported_key(name): value for name, value in metrics.items()}

    def made_by(self, kind: str) -> list[Candidate]:
        return [c for c in self.made if c.kind == kind]


@dataclass(frozen=True)
class Maker:
    name: str
    make: Callable[[Pool, Any], list[Candidate]]
    section: str | None  # the spec's section it is given (None: nothing)


MAKERS: dict[str, Maker] = {}


def register_maker(name: str, section: str | None = None) -> Callable[[Callable[[Pool, Any], list[Candidate]]], Callable[[Pool, Any], list[Candidate]]]:
    """Register ``make(pool, settings)`` under ``name``; ``settings`` is the spec's ``section``."""

    def register(make: Callable[[Pool, Any], list[Candidate]]) -> Callable[[Pool, Any], list[Candidate]]:
        if name in MAKERS:
            raise ValueError(f"a candidate maker named {name!r} is already registered")
        MAKERS[name] = Maker(name, make, section)
        return make

    return register


def unregister_maker(name: str) -> None:
    """Remove a maker (a test's own)."""
    del MAKERS[name]
