"""Reference points for the champion on the test split.

Each member is trained alone (same hyperparameters, seed and, where the champion
has it, training policy as the champion; its best epoch on validation kept), and the uniform average of those members'
probabilities is the naive ensemble. A fusion search is worth running only if its
champion beats these; the table goes to the terminal and to MLflow.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import ray
import torch

from search.candidates.refit import start_refits
from search.spec.objectives import Goal
from search.spec.schema import MemberSpec, Resources
from trainables.registry import is_searched, values_of
from trainables.composite import CompositeDescription, MemberDescription
from trainables.data import Dataset
from trainables.metrics import quality_metrics
from trainables.feature_cache import CachedMember
from trainables.training import TrialPlan


def alone(plan: TrialPlan, member: str) -> TrialPlan:
    """``plan`` with only ``member``, fused by the identity (weighted fusion of one)."""
    description = plan.composite
    members = [m for m in description.members if m.name == member]
    composite: CompositeDescription = replace(
        description, members=members, operator="weighted", operator_params={"pool": "linear", "weight": [1.0]}
    )
    weights = {k: v for k, v in plan.member_weights.items() if k == member}
    return replace(plan, composite=composite, member_weights=weights)


def default_description(member: MemberSpec) -> MemberDescription:
    """A member the champion left out, with its first training policy and augmentation and a fixed
    (or neutral) lr scale."""
    policy = str(values_of(member.train)[0])
    lr_scale = 1.0 if is_searched(member.lr_scale) else float(member.lr_scale)
    augment = "none" if policy == "frozen" else str(values_of(member.augment)[0])
    return MemberDescription(member.name, member.kind, member.input, dict(member.params), policy, lr_scale, augment)


def member_baselines(
    members: list[MemberSpec], resources: Resources, goal: Goal, data: Dataset, champion_plan: TrialPlan, features: dict[str, CachedMember]
) -> dict[str, dict[str, float]]:
    """Test metrics of every spec member alone (trained with a trial's ``resources``, its best epoch
    on ``goal`` kept) and of their uniform average."""
    chosen = {m.name: m for m in champion_plan.composite.members}
    described = [chosen.get(m.name) or default_description(m) for m in members]
    full = replace(
        champion_plan,
        composite=replace(champion_plan.composite, members=described),
        member_weights={m.name: str(m.weights) for m in members if m.weights is not None},
    )
    futures = start_refits(resources, goal, [alone(full, m.name) for m in members], data, features, ("test",))
    probabilities = {m.name: ray.get(future)[1]["test"] for m, future in zip(members, futures, strict=True)}
    labels = data.splits["test"].labels
    table = {f"{name} alone": quality_metrics(torch.from_numpy(p.copy()), labels, "test") for name, p in probabilities.items()}
    uniform = torch.from_numpy(np.mean(list(probabilities.values()), axis=0))
    table["uniform average"] = quality_metrics(uniform, labels, "test")
    return table
