"""Distillation: one composite trained on the ensemble's predictions (the ``student``).

The teacher is the greedy ensemble (the best trial, when selection kept it alone: a born-again
network, Furlanello et al. 2018): its class probabilities on the training rows, softened by the
spec's ``temperature`` (``softmax(log p / T)``), mixed with the true labels (``label_weight`` of
them) are the student's targets (a list of temperatures or label weights trains a student for each
combination and keeps the best on validation). The student has a trial's structure (the best trial's, or that of
the best trial whose members are exactly ``distill.members``: a smaller composite), starts from the
same weights a trial starts from, trains as a trial does for the same epochs, and keeps its best
epoch on validation. It is one composite: one model's cost at inference.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from search.ensemble import Candidate
from search.objectives import Goal
from search.spec import Distill
from search.weight_fusion import Scorer, Variant, plan_of
from trainables.data import Dataset
from trainables.feature_cache import CachedMember
from trainables.metrics import EPS
from trainables.training import BestWeights, fit

STUDENT = "student"


def soft_targets(teacher: Tensor, labels: Tensor, temperature: float, label_weight: float) -> Tensor:
    """The teacher's probabilities softened by ``temperature``, mixed with the one-hot labels."""
    softened = F.softmax(torch.log(teacher.float().clamp_min(EPS)) / temperature, dim=1)
    return label_weight * F.one_hot(labels, teacher.shape[1]).float() + (1.0 - label_weight) * softened


def student_base(settings: Distill, candidates: list[Candidate]) -> tuple[Candidate, str]:
    """The trial whose structure the student takes, and a line saying which."""
    if settings.members is None:
        return candidates[0], f"the best trial's structure (trial {candidates[0].trial_id})"
    wanted = set(settings.members)
    for candidate in candidates:
        if {m.name for m in plan_of(candidate).composite.members} == wanted:
            return candidate, f"trial {candidate.trial_id}'s structure (members {'+'.join(settings.members)})"
    return candidates[0], (
        f"no candidate trial has exactly the members {'+'.join(settings.members)} (distill.members): "
        f"the best trial's structure (trial {candidates[0].trial_id})"
    )


def train_student(
    settings: Distill, candidates: list[Candidate], teacher_train: Tensor, teacher_trials: list[str],
    data: Dataset, features: dict[str, CachedMember], goal: Goal,
) -> Variant:
    """Train a student on the teacher's training-split probabilities ``teacher_train`` for each
    (temperature, label weight) the spec gives; the best on validation is the student."""
    base, which = student_base(settings, candidates)
    teacher = f"the ensemble of {len(teacher_trials)} trials" if len(teacher_trials) > 1 else f"the best trial ({teacher_trials[0]}; selection kept it alone)"
    print(f"distilling {teacher} into one composite: {which}", flush=True)
    plan = plan_of(base)
    scorer = Scorer(plan, data, features, goal)
    tried: list[tuple[float, BestWeights, float, float]] = []
    for temperature, label_weight in settings.settings():
        targets = soft_targets(teacher_train, data.splits["train"].labels, temperature, label_weight)
        best = BestWeights(goal.metric, goal.mode)
        fit(plan, data, on_epoch=lambda epoch, metrics, model, *_: best.update(epoch, metrics, model), features=features, targets=targets)
        tried.append((best.value, best, temperature, label_weight))
        print(f"  student at temperature {temperature:g}, label weight {label_weight:g}: {goal.metric} {best.value:.4f}", flush=True)
    _, best, temperature, label_weight = min(tried, key=lambda t: goal.direction.best_first(t[0]))
    details = {
        "teacher": teacher_trials, "temperature": temperature, "label_weight": label_weight, "best_epoch": best.epoch,
        "tried": [{"temperature": t, "label_weight": w, "val_score": v} for v, _, t, w in tried],
    }
    return scorer.variant(STUDENT, best.state, base.trial_id, details)
