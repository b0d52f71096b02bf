"""The champion: the better, on validation, of the best trial and the greedy ensemble.

The top-K trials' saved validation predictions go through greedy ensemble
selection (``search.ensemble``). The ensemble becomes the champion only if it
mixes at least two trials and scores strictly better on validation than the best
trial. Either way both are compared on the test split from their saved test
predictions, and the champion is then rebuilt (members from their pretrained
weights, trained weights from the trials' checkpoints) and evaluated once on test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune
from safetensors.torch import load_file

from search.ensemble import Candidate, Selection, greedy_selection, read_candidates, weighted
from search.progress import describe
from search.spec import Spec
from trainables.composite import CompositeModel, load_trained_state
from trainables.data import Dataset
from trainables.ensemble_model import Predictor, WeightedEnsemble
from trainables.feature_cache import CachedMember
from trainables.metrics import classification_metrics
from trainables.trainable import BEST
from trainables.training import TrialPlan, build_model, predict_split

BEST_TRIAL = "best trial"
ENSEMBLE = "ensemble"


@dataclass
class Champion:
    model: Predictor
    kind: str  # BEST_TRIAL or ENSEMBLE
    best: Candidate  # the best single trial
    val: dict[str, float]  # validation metric of the best trial and (when selected) the ensemble
    test_table: dict[str, dict[str, float]]  # best trial and ensemble, from saved test predictions
    selection: Selection | None = None
    candidates: list[Candidate] = field(default_factory=list)
    runner_up: Predictor | None = None  # the other of the two, logged beside the champion

    def what(self) -> str:
        """The champion in words: a trial, or an ensemble of weighted trials."""
        if not isinstance(self.model, WeightedEnsemble):
            return f"trial {self.best.trial_id} ({describe(self.best.config)})"
        by_trial = {c.trial_id: c for c in self.candidates}
        parts = [f"{w:.2f} x trial {t} ({describe(by_trial[t].config)})" for t, w in zip(self.model.trials, self.model.weights, strict=True)]
        return f"ensemble of {len(parts)} trials: " + "; ".join(parts)

    def describe(self, metric: str) -> str:
        """One line: what selection found and which became the champion."""
        if self.selection is None:
            return "ensemble selection is off: the champion is the best trial"
        if ENSEMBLE not in self.val:
            return f"ensemble selection over {len(self.candidates)} trials kept the best trial alone: it is the champion"
        return (
            f"ensemble selection over {len(self.candidates)} trials: {self.selection.size} trials, {metric} "
            f"{self.val[ENSEMBLE]:.4f} against {self.val[BEST_TRIAL]:.4f} for the best trial; "
            f"champion: the {self.kind}"
        )

    def ensemble_summary(self) -> dict[str, Any]:
        """The selected ensemble as JSON: its trials, weights and the score after each round."""
        if self.selection is None:
            return {}
        members = [
            {"trial": c.trial_id, "weight": float(w)}
            for c, w in zip(self.candidates, self.selection.weights, strict=True)
            if w > 0
        ]
        return {"members": members, "val_score": self.selection.score, "trajectory": self.selection.trajectory}


def trial_model(candidate: Candidate) -> CompositeModel:
    """A trial's composite with its best-epoch weights (frozen members from their pretrained weights)."""
    model = build_model(TrialPlan.from_dict(candidate.config["plan"]))
    with candidate.checkpoint.as_directory() as directory:
        load_trained_state(model, load_file(str(Path(directory) / BEST)))
    return model.eval()


def test_probabilities(model: Predictor, plans: list[TrialPlan], data: Dataset, features: dict[str, CachedMember]) -> torch.Tensor:
    """The predictor's test probabilities; frozen members' features from the cache where it has them."""
    if isinstance(model, CompositeModel):
        return predict_split(model, plans[0], data, "test", features)
    parts = [w * predict_split(c, plan, data, "test", features) for c, w, plan in zip(model.composites, model.weights, plans, strict=True)]
    return torch.stack(parts).sum(dim=0)


def choose_champion(grid: tune.ResultGrid, spec: Spec, data: Dataset) -> Champion | None:
    """Select the ensemble and pick the champion; None when no trial saved predictions."""
    metric, key, direction = spec.objective.metric, spec.objective.reported, spec.objective.direction
    candidates = read_candidates(grid, key, direction, spec.ensemble.top_k)
    if not candidates:
        return None
    val_labels = data.splits["val"].labels
    test_labels = data.splits["test"].labels
    best = candidates[0]
    best_model = trial_model(best)
    val = {BEST_TRIAL: classification_metrics(torch.from_numpy(best.val), val_labels, "val")[metric]}
    table = {BEST_TRIAL: classification_metrics(torch.from_numpy(best.test), test_labels, "test")}
    champion = Champion(best_model, BEST_TRIAL, best, val, table, candidates=candidates)
    if spec.ensemble.rounds == 0:
        return champion
    selection = greedy_selection(np.stack([c.val for c in candidates]), val_labels.numpy(), spec.ensemble.rounds, metric)
    champion.selection = selection
    if selection.size < 2:
        return champion  # greedy selection kept the best trial alone
    val[ENSEMBLE] = selection.score
    ensemble_test = weighted([c.test for c in candidates], selection.weights)
    table[ENSEMBLE] = classification_metrics(torch.from_numpy(ensemble_test), test_labels, "test")
    chosen = [(c, float(w)) for c, w in zip(candidates, selection.weights, strict=True) if w > 0]
    models = [best_model if c is best else trial_model(c) for c, _ in chosen]
    ensemble = WeightedEnsemble(models, [w for _, w in chosen], [c.trial_id for c, _ in chosen])
    if direction.better(selection.score, val[BEST_TRIAL]):
        champion.model, champion.kind, champion.runner_up = ensemble, ENSEMBLE, best_model
    else:
        champion.runner_up = ensemble
    return champion


def champion_plans(champion: Champion) -> list[TrialPlan]:
    """The plans of the champion's composites, in the order of its composites."""
    if champion.kind == BEST_TRIAL:
        return [TrialPlan.from_dict(champion.best.config["plan"])]
    by_trial = {c.trial_id: c for c in champion.candidates}
    assert isinstance(champion.model, WeightedEnsemble)
    return [TrialPlan.from_dict(by_trial[t].config["plan"]) for t in champion.model.trials]
