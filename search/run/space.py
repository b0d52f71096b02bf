"""The Optuna define-by-run search space, built from the spec.

Per trial it samples, in order: which members take part (one categorical over the
allowed subsets), each chosen member's training policy and learning-rate multiplier
(the multiplier only for a member that trains), which fusion operator, that operator's own parameters (only
when it is chosen: a conditional space), per-member operator parameters such as
the fusion weights (one per member taking part), then the hyperparameters. It
returns the trial's ``TrialPlan`` so the trainable never re-derives anything.

``define_space`` is a module-level function bound to the spec with
``functools.partial``, so Ray can pickle it.
"""

from __future__ import annotations

from functools import partial
from itertools import combinations
from typing import Any, Callable

import optuna

from search.spec.schema import FusionSpec, MemberSpec, Spec
from trainables.composite import CompositeDescription, MemberDescription
from trainables.data import Dataset, InputDescription
from trainables.fusion import OPERATORS
from trainables.registry import Choice, FloatRange, IntRange
from trainables.training import TrialPlan

HYPERPARAMETERS = ("lr", "weight_decay", "epochs", "batch_size", "dropout")


def member_subsets(members: list[MemberSpec], fusion: FusionSpec) -> list[str]:
    """Allowed member subsets as ``a+b`` strings, in spec order, smallest first."""
    names = [m.name for m in members]
    most = fusion.max_members or len(names)
    return ["+".join(c) for k in range(fusion.min_members, most + 1) for c in combinations(names, k)]


def suggest(trial: optuna.Trial, name: str, value: Any) -> Any:
    """Sample a search space (a range or a choice, as the spec writes it or an operator declares
    it); a plain value is fixed."""
    if isinstance(value, IntRange):
        return trial.suggest_int(name, value.low, value.high, log=value.log)
    if isinstance(value, FloatRange):
        return trial.suggest_float(name, value.low, value.high, log=value.log)
    if isinstance(value, Choice):
        return trial.suggest_categorical(name, list(value.choices))
    return value


def describe_member(trial: optuna.Trial, member: MemberSpec) -> MemberDescription:
    """A chosen member with its training policy and (when it trains) learning-rate multiplier and
    augmentation sampled."""
    policy = str(suggest(trial, f"{member.name}.train", member.train))
    if policy == "frozen":
        return MemberDescription(member.name, member.kind, member.input, dict(member.params), policy)
    lr_scale = float(suggest(trial, f"{member.name}.lr_scale", member.lr_scale))
    augment = str(suggest(trial, f"{member.name}.augment", member.augment))
    return MemberDescription(member.name, member.kind, member.input, dict(member.params), policy, lr_scale, augment)


def define_space(
    trial: optuna.Trial, spec: Spec, inputs: dict[str, InputDescription], class_names: list[str]
) -> dict[str, Any]:
    """Sample one trial; return the config entries the trainable reads."""
    chosen = trial.suggest_categorical("members", member_subsets(spec.members, spec.fusion)).split("+")
    members = [m for m in spec.members if m.name in chosen]
    described = [describe_member(trial, m) for m in members]
    operator = trial.suggest_categorical("operator", sorted(spec.fusion.operators))
    entry = OPERATORS.get(operator)
    overrides = spec.fusion.operators[operator] or {}
    params: dict[str, Any] = {
        name: suggest(trial, f"{operator}.{name}", overrides.get(name, declared)) for name, declared in entry.params.items()
    }
    for name, declared in entry.per_member.items():
        params[name] = [suggest(trial, f"{operator}.{name}.{m.name}", overrides.get(name, declared)) for m in members]
    hp = {name: suggest(trial, name, getattr(spec.hyperparameters, name)) for name in HYPERPARAMETERS}
    composite = CompositeDescription(
        members=described,
        operator=operator,
        operator_params=params,
        num_classes=len(class_names),
        class_names=class_names,
        inputs=inputs,
        dropout=float(hp["dropout"]),
    )
    plan = TrialPlan(
        composite=composite,
        lr=float(hp["lr"]),
        weight_decay=float(hp["weight_decay"]),
        epochs=int(hp["epochs"]),
        batch_size=int(hp["batch_size"]),
        seed=spec.seed,
        member_weights={m.name: str(m.weights) for m in members if m.weights is not None},
        precision=spec.resources.precision,
    )
    return {
        "plan": plan.to_dict(),
        "objective": {"metric": spec.objectives.first.metric, "mode": spec.objectives.first.mode},
        "measure_cost": spec.measures_cost,
        "threads": max(1, int(spec.resources.cpu)),
        "workers": spec.resources.loader_workers,
    }


def space_for(spec: Spec, data: Dataset) -> Callable[[optuna.Trial], dict[str, Any]]:
    """The picklable define-by-run function for ``spec`` on ``data``."""
    return partial(define_space, spec=spec, inputs=data.inputs, class_names=data.class_names)
