"""The Optuna define-by-run search space, built from the spec.

Per trial it samples, in order: which members take part (one categorical over the
allowed subsets; a trial enqueued for a member alone takes that member, fused by the
identity), each chosen member's training policy and learning-rate multiplier
(the multiplier, and the parameters its kind declares searchable, only for a member that trains), which fusion operator, that operator's own parameters (only
when it is chosen: a conditional space), per-member operator parameters such as
the fusion weights (one per member taking part), then the hyperparameters. It
returns the trial's ``TrialPlan`` so the trainable never re-derives anything.

``define_space`` is a module-level function bound to the spec with
``functools.partial``, so Ray can pickle it.

``coverage`` lists the structures a search tries first, before the sampler takes over: each
member alone (when ``min_members`` keeps single members out of the fused trials), then every
member subset once (smallest first) with the operators taken in turn, each with the spec's
default values (``queued``). ``AloneAgain`` tries each of those members alone once more, two thirds
of the way through the budget, with the settings of the best trial so far (its own small search: what the
best trial does not fix, the sampler picks).
"""

from __future__ import annotations

from functools import partial
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Callable

import optuna

from search.names import ALONE_ATTR
from search.text import listed
from search.spec.schema import FusionSpec, MemberSpec, Spec
from trainables.adaptation import NONE
from trainables.composite import CompositeDescription, MemberDescription, fusion_words
from trainables.data import Dataset, InputDescription
from trainables.fusion import OPERATORS
from trainables.registry import Choice, FloatRange, IntRange, default_of, is_searched
from trainables.training import TrialPlan

ALONE = {"pool": "linear", "weight": [1.0]}  # a member alone: weighted fusion of one, the identity

HYPERPARAMETERS = ("lr", "weight_decay", "epochs", "batch_size", "dropout", "class_weight", "loss")


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
        return MemberDescription(member.name, member.kind, member.input, member.default_params, policy)
    params = {key: suggest(trial, f"{member.name}.{key}", value) for key, value in member.param_space.items()}
    lr_scale = float(suggest(trial, f"{member.name}.lr_scale", member.lr_scale))
    augment = str(suggest(trial, f"{member.name}.augment", member.augment))
    return MemberDescription(member.name, member.kind, member.input, params, policy, lr_scale, augment)


def operator_params(trial: optuna.Trial, fusion: FusionSpec, operator: str, members: list[MemberSpec]) -> dict[str, Any]:
    """The operator's own parameters (the spec's overrides, else what it declares), per member where it says."""
    entry = OPERATORS.get(operator)
    overrides = fusion.operators[operator] or {}
    params: dict[str, Any] = {
        name: suggest(trial, f"{operator}.{name}", overrides.get(name, declared)) for name, declared in entry.params.items()
    }
    for name, declared in entry.per_member.items():
        params[name] = [suggest(trial, f"{operator}.{name}.{m.name}", overrides.get(name, declared)) for m in members]
    return params


def define_space(
    trial: optuna.Trial, spec: Spec, inputs: dict[str, InputDescription], class_names: list[str], target: list[float] | None = None
) -> dict[str, Any]:
    """Sample one trial; return the config entries the trainable reads."""
    alone = trial.user_attrs.get(ALONE_ATTR)
    chosen = [alone] if alone else trial.suggest_categorical("members", member_subsets(spec.members, spec.fusion)).split("+")
    members = [m for m in spec.members if m.name in chosen]
    described = [describe_member(trial, m) for m in members]
    if alone:
        operator, params = "weighted", dict(ALONE)
    else:
        operator = trial.suggest_categorical("operator", sorted(spec.fusion.operators))
        params = operator_params(trial, spec.fusion, operator, members)
    hp = {name: suggest(trial, name, getattr(spec.hyperparameters, name)) for name in HYPERPARAMETERS}
    adaptation = str(suggest(trial, "adaptation", spec.hyperparameters.adaptation))
    adaptation_weight = 0.0 if adaptation == NONE else float(suggest(trial, "adaptation_weight", spec.hyperparameters.adaptation_weight))
    composite = CompositeDescription(
        members=described,
        operator=operator,
        operator_params=params,
        num_classes=len(class_names),
        class_names=class_names,
        inputs=inputs,
        dropout=float(hp["dropout"]),
        target=target,
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
        class_weight=str(hp["class_weight"]),
        loss=str(hp["loss"]),
        adaptation=adaptation,
        adaptation_weight=adaptation_weight,
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
    return partial(define_space, spec=spec, inputs=data.inputs, class_names=data.class_names, target=data.target)


@dataclass(frozen=True)
class Structure:
    """What a trial fuses: a member subset and an operator (None: a member alone)."""

    members: tuple[str, ...]
    operator: str | None

    def words(self) -> str:
        return f"{self.members[0]} alone" if self.operator is None else fusion_words(list(self.members), self.operator)

    @classmethod
    def of(cls, members: tuple[str, ...], operator: str) -> "Structure":
        """One member fused by ``weighted`` is that member alone (the weight of one is the identity)."""
        return cls(members, None if len(members) == 1 and operator == "weighted" else operator)


def structures(members: list[MemberSpec], fusion: FusionSpec) -> list[Structure]:
    """Every structure a search may try: each member alone (when single members are kept out of the
    fused trials), then every (member subset, operator) pair, smallest subsets first."""
    subsets = [tuple(s.split("+")) for s in member_subsets(members, fusion)]
    return alone_structures(members, fusion) + list(dict.fromkeys(Structure.of(s, o) for s in subsets for o in sorted(fusion.operators)))


def alone_structures(members: list[MemberSpec], fusion: FusionSpec) -> list[Structure]:
    """Each member alone, when ``min_members`` keeps single members out of the fused trials (and the spec does not)."""
    return [Structure((m.name,), None) for m in members] if fusion.members_alone and fusion.min_members > 1 else []


def coverage(members: list[MemberSpec], fusion: FusionSpec) -> list[Structure]:
    """The structures a search tries first, in order: each member alone, then every member subset
    once (smallest first: the cheapest and most telling) with the operators taken in turn, so that
    every subset and every operator is tried before the sampler takes over."""
    subsets = [tuple(s.split("+")) for s in member_subsets(members, fusion)]
    operators = sorted(fusion.operators)
    return alone_structures(members, fusion) + [Structure.of(s, operators[i % len(operators)]) for i, s in enumerate(subsets)]


def structure_of(config: dict[str, Any]) -> Structure:
    """A trial's structure, from its Tune config."""
    composite = config["plan"]["composite"]
    return Structure.of(tuple(m["name"] for m in composite["members"]), composite["operator"])


def default_params(spec: Spec, structure: Structure) -> dict[str, Any]:
    """The Optuna parameters of ``structure`` at the spec's default values (``default_of``)."""
    members = [m for m in spec.members if m.name in structure.members]
    params: dict[str, Any] = {name: default_of(getattr(spec.hyperparameters, name)) for name in HYPERPARAMETERS}
    for m in members:
        params.update({f"{m.name}.train": default_of(m.train), f"{m.name}.lr_scale": default_of(m.lr_scale), f"{m.name}.augment": default_of(m.augment)})
        params.update({f"{m.name}.{k}": default_of(v) for k, v in m.param_space.items() if is_searched(v)})
    if structure.operator is not None:
        params.update(members="+".join(structure.members), operator=structure.operator)
        entry, overrides = OPERATORS.get(structure.operator), spec.fusion.operators[structure.operator] or {}
        params.update({f"{structure.operator}.{n}": default_of(overrides.get(n, d)) for n, d in entry.params.items()})
        for name, declared in entry.per_member.items():
            params.update({f"{structure.operator}.{name}.{m.name}": default_of(overrides.get(name, declared)) for m in members})
    return params


def queued(spec: Spec, structures: list[Structure]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The Optuna trials (parameters, user attributes) that try ``structures`` at the spec's defaults."""
    return [
        (default_params(spec, s), {ALONE_ATTR: s.members[0]} if s.operator is None else {})
        for s in structures
    ]


def member_settings(params: dict[str, Any], member: str) -> dict[str, Any]:
    """Of a trial's Optuna parameters, those a trial of ``member`` alone also samples: the
    hyperparameters and that member's own (``member.train``, ``member.lr_scale``, ``member.augment``
    and its kind's searched parameters, ``member.hidden``; an operator's are ``operator.name[.member]``)."""
    return {k: v for k, v in params.items() if k in HYPERPARAMETERS or (k.startswith(f"{member}.") and k.count(".") == 1)}


@dataclass(frozen=True)
class AloneAgain:
    """Each member alone once more, with the best finished trial's settings, once ``after`` trials have
    finished; a member whose settings would be those its first trial alone had is not tried again."""

    after: int
    first: dict[str, dict[str, Any]]  # each member's settings in its first trial alone (the spec's defaults)

    def queued(self, best: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The trials (parameters, user attributes) that try each member alone with ``best``'s settings."""
        settings = {m: member_settings(best, m) for m in self.first}
        return [(p, {ALONE_ATTR: m}) for m, p in settings.items() if p != {k: self.first[m].get(k) for k in p}]


def alone_again(spec: Spec) -> AloneAgain | None:
    """When a search tries its members alone again (``AloneAgain``): after the trials that cover the
    structures and one the sampler picked, or two thirds of the budget if later, and only when the
    budget has room for each member again."""
    alone = alone_structures(spec.members, spec.fusion)
    after = max(len(coverage(spec.members, spec.fusion)) + 1, 2 * spec.budget.num_samples // 3)
    if not alone or spec.budget.num_samples - after < len(alone):
        return None
    return AloneAgain(after, {s.members[0]: member_settings(default_params(spec, s), s.members[0]) for s in alone})


def describe_coverage(first: list[Structure], total: int, budget: int) -> str:
    """One line: what the first trials try, of how many structures, and what the budget leaves out."""
    alone = sum(s.operator is None for s in first)
    what = "each member alone, then each member subset once" if alone else "each member subset once"
    line = f"structure coverage: the first {min(budget, len(first))} trials try {what} (operators in turn): {len(first)} of {total} structures"
    if budget < len(first):
        line += f"; not tried, for a budget of {budget}: {listed([s.words() for s in first[budget:]])}"
    else:
        line += "; the sampler picks the rest"
    return line


def coverage_record(members: list[MemberSpec], fusion: FusionSpec, configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Which structures the trials (their Tune configs) tried, of all there are (``coverage.json``)."""
    everything = structures(members, fusion)
    tried = {structure_of(c) for c in configs}
    return {
        "structures": [s.words() for s in everything],
        "tried": [s.words() for s in everything if s in tried],
        "not_tried": [s.words() for s in everything if s not in tried],
    }

