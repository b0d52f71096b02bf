"""Training a plan again after the search, as a trial does, on a Ray worker with a trial's resources:
the members alone for the baselines, more runs of the best trial's plan for its soup."""

from __future__ import annotations


import numpy as np
import ray
import torch

from search.spec.objectives import Goal
from search.spec.schema import Resources
from trainables.composite import trained_state
from trainables.data import Dataset
from trainables.feature_cache import CachedMember
from trainables.training import TrialPlan, fit_best, predict_split


@ray.remote
def refit(
    plan: TrialPlan, data: Dataset, goal: Goal, threads: int, features: dict[str, CachedMember], splits: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Train ``plan`` and keep its best epoch on ``goal``: its trained weights and its probabilities on ``splits``."""
    torch.set_num_threads(threads)
    model = fit_best(plan, data, goal.metric, goal.mode, features)
    return trained_state(model), {split: predict_split(model, plan, data, split, features).numpy() for split in splits}


def start_refits(
    resources: Resources, goal: Goal, plans: list[TrialPlan], data: Dataset, features: dict[str, CachedMember], splits: tuple[str, ...]
) -> list[ray.ObjectRef]:
    """``refit`` of each plan with a trial's ``resources``, keeping its best epoch on ``goal``,
    started at once (Ray runs as many side by side as the resources allow)."""
    task = refit.options(num_cpus=resources.cpu, num_gpus=resources.gpu)
    data_ref, threads = ray.put(data), max(1, int(resources.cpu))
    return [task.remote(plan, data_ref, goal, threads, features, splits) for plan in plans]
