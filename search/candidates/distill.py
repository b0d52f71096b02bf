"""Distillation: one composite trained on the ensemble's predictions (the ``student``).

The teacher is the greedy ensemble (the best trial, when selection kept it alone: a born-again
network, Furlanello et al. 2018): its class probabilities on the training rows, softened by the
spec's ``temperature`` (``softmax(log p / T)``), mixed with the true labels (``label_weight`` of
them) are the student's targets (a regression's teacher values, mixed with the targets alike; a list of temperatures or label weights trains a student for each
combination and keeps the best on validation). The student has a trial's structure (the best trial's, or that of
the best trial whose members are exactly ``distill.members``: a smaller composite), starts from the
same weights a trial starts from, trains as a trial does for the same epochs, and keeps its best
epoch on validation. It is one composite: one model's cost at inference.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from search.candidates.candidate import Candidate, Pool, register_maker
from search.candidates.ensemble import ENSEMBLE
from search.candidates.trials import Trial
from search.candidates.weight_fusion import scorer_of, variant_candidate
from search.spec.schema import Distill
from trainables.metrics import EPS
from trainables.training import BestWeights, fit

STUDENT = "student"


def soft_targets(teacher: Tensor, labels: Tensor, temperature: float, label_weight: float) -> Tensor:
    """The teacher's probabilities softened by ``temperature``, mixed with the one-hot labels; for a
    regression (one output), its values mixed with the targets."""
    if teacher.shape[1] == 1:
        return label_weight * labels.float() + (1.0 - label_weight) * teacher[:, 0].float()
    softened = F.softmax(torch.log(teacher.float().clamp_min(EPS)) / temperature, dim=1)
    return label_weight * F.one_hot(labels, teacher.shape[1]).float() + (1.0 - label_weight) * softened


def student_base(settings: Distill, trials: list[Trial]) -> tuple[Trial, str]:
    """The trial whose structure the student takes, and a line saying which."""
    if settings.members is None:
        return trials[0], f"the best trial's structure (trial {trials[0].trial_id})"
    wanted = set(settings.members)
    for trial in trials:
        if {m.name for m in trial.plan.composite.members} == wanted:
            return trial, f"trial {trial.trial_id}'s structure (members {'+'.join(settings.members)})"
    return trials[0], (
        f"no candidate trial has exactly the members {'+'.join(settings.members)} (distill.members): "
        f"the best trial's structure (trial {trials[0].trial_id})"
    )


@register_maker(STUDENT, section="distill")
def make_student(pool: Pool, settings: Distill | None) -> list[Candidate]:
    """Train a student on the teacher's training-split probabilities for each (temperature, label
    weight) the spec gives; the best on validation is the student. The teacher is the ensemble
    when one was made, else the best trial."""
    if settings is None:
        return []
    ensembles = pool.made_by(ENSEMBLE)
    best = pool.trials[0]
    teacher_candidate = ensembles[0] if ensembles else next(c for c in pool.made if c.trial == best.trial_id and c.kind == "trial")
    teacher_trials = [m["trial"] for m in ensembles[0].made_of["members"]] if ensembles else [best.trial_id]
    teacher_train = teacher_candidate.probabilities(pool.data, "train", pool.features)
    base, which = student_base(settings, pool.trials)
    teacher = f"the ensemble of {len(teacher_trials)} trials" if len(teacher_trials) > 1 else f"the best trial ({teacher_trials[0]}; selection kept it alone)"
    print(f"distilling {teacher} into one composite: {which}", flush=True)
    goal, data = pool.objectives.first, pool.data
    tried: list[tuple[float, BestWeights, float, float]] = []
    for temperature, label_weight in settings.settings():
        targets = soft_targets(teacher_train, data.splits["train"].labels, temperature, label_weight)
        best_weights = BestWeights(goal.metric, goal.mode)
        fit(base.plan, data, on_epoch=lambda epoch, metrics, model, *_: best_weights.update(epoch, metrics, model), features=pool.features, targets=targets)
        tried.append((best_weights.value, best_weights, temperature, label_weight))
        print(f"  student at temperature {temperature:g}, label weight {label_weight:g}: {goal.metric} {best_weights.value:.4f}", flush=True)
    _, chosen, temperature, label_weight = min(tried, key=lambda t: goal.direction.best_first(t[0]))
    details = {
        "teacher": teacher_trials, "temperature": temperature, "label_weight": label_weight, "best_epoch": chosen.epoch,
        "tried": [{"temperature": t, "label_weight": w, "val_score": v} for v, _, t, w in tried],
    }
    variant = scorer_of(pool, base).variant(STUDENT, STUDENT, chosen.state, base.trial_id, details)
    return [variant_candidate(pool, variant, base)]
