"""Greedy ensemble selection (Caruana et al. 2004) and the ensemble as a saved, reloadable model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search.candidates.ensemble import greedy_selection, weighted
from trainables.composite import CompositeDescription, MemberDescription
from trainables.data import load_dataset
from trainables.ensemble_model import WeightedEnsemble, load_predictor, save_ensemble
from trainables.metrics import QUALITY_METRICS, quality_metrics
from trainables.pipeline import EVAL_BATCH
from trainables.sources import SourceOptions
from trainables.training import TrialPlan, build_model


def score(proba: np.ndarray, labels: np.ndarray, metric: str) -> float:
    """The project's own validation metric of probabilities (N, C)."""
    return quality_metrics(torch.from_numpy(np.asarray(proba)), torch.from_numpy(labels), "val")[metric]


def noisy_candidates(k: int, n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k classifiers, each right about the true class with its own noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(k, n, c)) * rng.uniform(1.0, 3.0, size=(k, 1, 1))
    logits[:, np.arange(n), labels] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    return proba.astype(np.float32), labels


def naive_selection(proba: np.ndarray, labels: np.ndarray, rounds: int, metric: str) -> np.ndarray:
    """The textbook loop, one candidate ensemble at a time: the reference for the vectorised version."""
    chosen: list[int] = []
    best, best_chosen = np.inf, []
    for _ in range(rounds):
        losses = []
        for k in range(len(proba)):
            mixed = np.mean([proba[i] for i in chosen + [k]], axis=0)
            value = score(mixed, labels, metric)
            losses.append(value if QUALITY_METRICS[metric] == "min" else -value)
        choice = int(np.argmin(losses))
        chosen.append(choice)
        if losses[choice] < best - 1e-12:
            best, best_chosen = losses[choice], list(chosen)
    return np.bincount(best_chosen, minlength=len(proba)) / len(best_chosen)


@pytest.mark.parametrize("metric", ["val_log_loss", "val_accuracy", "val_f1_macro", "val_brier", "val_roc_auc"])
def test_matches_the_textbook_loop(metric):
    proba, labels = noisy_candidates(8, 300, 5, seed=1)
    selection = greedy_selection(proba, labels, rounds=15, metric=metric)
    np.testing.assert_allclose(selection.weights, naive_selection(proba, labels, 15, metric))
    assert selection.score == pytest.approx(score(weighted(list(proba), selection.weights), labels, metric), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_never_worse_than_the_best_single_candidate(seed):
    proba, labels = noisy_candidates(10, 500, 4, seed)
    singles = [score(p, labels, "val_log_loss") for p in proba]
    selection = greedy_selection(proba, labels, rounds=25)
    assert selection.trajectory[0] == pytest.approx(min(singles)), "round one picks the best single candidate"
    assert selection.score <= min(singles) + 1e-9
    assert selection.weights.sum() == pytest.approx(1.0) and (selection.weights >= 0).all()


def test_complementary_candidates_are_mixed():
    """Two classifiers, each blind on half the rows, average to better than either."""
    labels = np.arange(200) % 2
    sure = np.eye(2)[labels] * 0.9 + 0.05
    blind = np.full((200, 2), 0.5)
    left = np.where((np.arange(200) < 100)[:, None], sure, blind)
    right = np.where((np.arange(200) >= 100)[:, None], sure, blind)
    selection = greedy_selection(np.stack([left, right, blind]), labels, rounds=10)
    assert selection.size == 2 and selection.weights[2] == 0
    assert selection.score < score(left, labels, "val_log_loss")


def test_bad_arguments_are_one_line_errors():
    proba, labels = noisy_candidates(2, 10, 3, seed=0)
    with pytest.raises(ValueError, match="supports val_log_loss, val_accuracy"):
        greedy_selection(proba, labels, 5, metric="f1")
    with pytest.raises(ValueError, match="rounds >= 1"):
        greedy_selection(proba, labels, 0)


def test_ensemble_saves_and_reloads(tmp_path):
    data = load_dataset("digits", SourceOptions(), 0.2, 0.2, seed=0)
    composites = []
    for seed, kind, params in [(0, "mlp", {"hidden": 32, "layers": 1}), (1, "small_cnn", {"channels": 16})]:
        member = MemberDescription("m", kind, "flat" if kind == "mlp" else "image", params)
        description = CompositeDescription([member], "concat_mlp", {"hidden": 16}, 10, data.class_names, data.inputs)
        composites.append(build_model(TrialPlan(description, 0.01, 0.0, 1, 64, seed)).eval())
    ensemble = WeightedEnsemble(composites, [0.25, 0.75], ["t1", "t2"])
    test = data.splits["test"]
    expected = 0.25 * composites[0].predict_raw(test.inputs) + 0.75 * composites[1].predict_raw(test.inputs)
    torch.testing.assert_close(ensemble.predict_raw(test.inputs), expected)
    save_ensemble(ensemble, tmp_path / "e")
    loaded = load_predictor(tmp_path / "e")
    assert isinstance(loaded, WeightedEnsemble) and loaded.trials == ["t1", "t2"]
    assert {k: d.kind for k, d in loaded.served_inputs.items()} == {"flat": "tensor", "image": "tensor"}
    torch.testing.assert_close(loaded.predict_raw(test.inputs), expected)
    twice = WeightedEnsemble([composites[1], composites[1]], [0.5, 0.5], ["t2", "t2"])
    save_ensemble(twice, tmp_path / "twice")
    assert len(list((tmp_path / "twice" / "members").iterdir())) == 1, "a shared member is stored once"
    torch.testing.assert_close(load_predictor(tmp_path / "twice").predict_raw(test.inputs), composites[1].predict_raw(test.inputs))
    with pytest.raises(ValueError, match="sum to 1"):
        WeightedEnsemble(composites, [0.5, 0.6], ["a", "b"])


def test_a_member_the_composites_share_is_loaded_once(tmp_path):
    """Composites of one frozen backbone (same weights, kind, parameters and input) get one module
    back, as when the ensemble was made; the same weights under another description get their own."""
    data = load_dataset("digits", SourceOptions(), 0.2, 0.2, seed=0)
    built = []
    for operator, params, policy in [("concat_mlp", {"hidden": 16}, "frozen"), ("weighted", {}, "frozen"), ("concat_mlp", {"hidden": 8}, "full")]:
        member = MemberDescription("cnn", "small_cnn", "image", {"channels": 8}, policy)
        description = CompositeDescription([member], operator, params, 10, data.class_names, data.inputs)
        built.append(build_model(TrialPlan(description, 0.01, 0.0, 1, 64, 0)).eval())
    ensemble = WeightedEnsemble(built, [0.5, 0.25, 0.25], ["t1", "t2", "t3"])
    test = data.splits["test"].inputs
    save_ensemble(ensemble, tmp_path / "e")
    assert len(list((tmp_path / "e" / "members").iterdir())) == 1, "one weight file: the three start from the same weights"
    loaded = load_predictor(tmp_path / "e")
    first, second, third = (c.members[0] for c in loaded.composites)
    assert first is second, "one module for the frozen member two composites share"
    assert third is not first, "a member under another policy is its own module"
    calls = []
    first.register_forward_hook(lambda *_: calls.append(1))
    expected = sum(w * c.predict_raw(test) for w, c in zip(ensemble.weights, built, strict=True))
    calls.clear()
    torch.testing.assert_close(loaded.predict_raw(test), expected)
    assert len(calls) == -(-len(data.splits["test"]) // EVAL_BATCH), "the shared member runs once per batch of rows, not once per composite"
