"""Reference points for the champion on the test split.

Each member is trained alone (same hyperparameters and seed as the champion, its
best epoch on validation kept), and the uniform average of those members'
probabilities is the naive ensemble. A fusion search is worth running only if its
champion beats these; the table goes to the terminal and to MLflow.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import ray
import torch

from search.spec import Spec
from trainables.composite import CompositeDescription, MemberDescription
from trainables.data import Dataset
from trainables.metrics import classification_metrics
from trainables.training import TrialPlan, fit_best, predict


def alone(plan: TrialPlan, member: str) -> TrialPlan:
    """``plan`` with only ``member``, fused by the identity (weighted fusion of one)."""
    description = plan.composite
    members = [m for m in description.members if m.name == member]
    composite: CompositeDescription = replace(
        description, members=members, operator="weighted", operator_params={"pool": "linear", "weight": [1.0]}
    )
    weights = {k: v for k, v in plan.member_weights.items() if k == member}
    return replace(plan, composite=composite, member_weights=weights)


@ray.remote
def test_probabilities(plan: dict, data: Dataset, metric: str, mode: str, threads: int) -> np.ndarray:
    torch.set_num_threads(threads)
    model = fit_best(TrialPlan.from_dict(plan), data, metric, mode)
    return predict(model, data.splits["test"]).numpy()


def member_baselines(spec: Spec, data: Dataset, champion_plan: TrialPlan) -> dict[str, dict[str, float]]:
    """Test metrics of every spec member alone and of their uniform average."""
    members = [MemberDescription(m.name, m.kind, m.input, dict(m.params), m.frozen) for m in spec.members]
    full = replace(
        champion_plan,
        composite=replace(champion_plan.composite, members=members),
        member_weights={m.name: str(m.weights) for m in spec.members if m.weights is not None},
    )
    data_ref = ray.put(data)
    threads = max(1, int(spec.resources.cpu))
    task = test_probabilities.options(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu)
    futures = {
        m.name: task.remote(alone(full, m.name).to_dict(), data_ref, spec.objective.metric, spec.objective.mode, threads)
        for m in spec.members
    }
    probabilities = {name: np.array(ray.get(future)) for name, future in futures.items()}
    labels = data.splits["test"].labels
    table = {f"{name} alone": classification_metrics(torch.from_numpy(p), labels, "test") for name, p in probabilities.items()}
    uniform = torch.from_numpy(np.mean(list(probabilities.values()), axis=0))
    table["uniform average"] = classification_metrics(uniform, labels, "test")
    return table
