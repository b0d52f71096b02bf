"""The metrics people report, on fixed predictions: values worked out by hand, and each metric the
same as scikit-learn's own function called directly (tied scores, a class never predicted, two
classes and more); class weights as scikit-learn balances them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics as sk
import torch
from sklearn.utils.class_weight import compute_class_weight

from trainables.composite import class_weights
from trainables.metrics import QUALITY_METRICS, REGRESSION_METRICS, best_threshold, class_report, metric_named, quality_metrics

# Six rows, two classes (class 1 the positive one): predicted 1, 1, 0, 0, 1, 0 against 1, 0, 0, 0, 1, 1.
BINARY_PROBA = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1], [0.7, 0.3], [0.1, 0.9], [0.6, 0.4]])
BINARY_LABELS = np.array([1, 0, 0, 0, 1, 1])


def metrics_of(proba: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return quality_metrics(torch.from_numpy(proba), torch.from_numpy(labels), "val")


def test_binary_metrics_worked_out_by_hand():
    m = metrics_of(BINARY_PROBA, BINARY_LABELS)
    # true positives 2, false positives 1, false negatives 1, true negatives 2
    assert m["val_accuracy"] == pytest.approx(4 / 6)
    assert m["val_precision"] == pytest.approx(2 / 3)
    assert m["val_recall"] == pytest.approx(2 / 3)
    assert m["val_f1"] == pytest.approx(2 / 3)
    assert m["val_balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    # 9 positive/negative pairs; the positive ranks above the negative in 8 of them (0.4 < 0.6 is the miss)
    assert m["val_roc_auc"] == pytest.approx(8 / 9)
    brier = np.mean((BINARY_PROBA[:, 1] - BINARY_LABELS) ** 2)
    assert m["val_brier"] == pytest.approx(brier)
    log_loss = -np.mean(np.log(BINARY_PROBA[np.arange(6), BINARY_LABELS]))
    assert m["val_log_loss"] == pytest.approx(log_loss)
    assert set(m) == set(QUALITY_METRICS) - set(REGRESSION_METRICS), "every classification metric"


def scikit_learns(proba: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every classification metric by scikit-learn's own function, as this project defines it."""
    classes = proba.shape[1]
    predicted, k = proba.argmax(axis=1), np.arange(classes)
    rows = proba / proba.sum(axis=1, keepdims=True)  # scikit-learn's one-vs-rest AUC wants rows summing to one: as the project gives it
    average = "binary" if classes == 2 else "macro"
    expected = {
        "val_accuracy": sk.accuracy_score(labels, predicted),
        "val_balanced_accuracy": sk.balanced_accuracy_score(labels, predicted),
        "val_f1_macro": sk.f1_score(labels, predicted, average="macro", labels=k, zero_division=0),
        "val_f1_weighted": sk.f1_score(labels, predicted, average="weighted", labels=k, zero_division=0),
        "val_precision_macro": sk.precision_score(labels, predicted, average="macro", labels=k, zero_division=0),
        "val_recall_macro": sk.recall_score(labels, predicted, average="macro", labels=k, zero_division=0),
        "val_roc_auc": sk.roc_auc_score(labels, proba[:, 1]) if classes == 2 else sk.roc_auc_score(labels, rows, multi_class="ovr"),
        "val_average_precision": sk.average_precision_score(labels, proba[:, 1]) if classes == 2 else sk.average_precision_score(np.eye(classes)[labels], proba, average=average),
        "val_log_loss": sk.log_loss(labels, proba, labels=k),
        "val_brier": sk.brier_score_loss(labels, proba[:, 1]) if classes == 2 else sk.brier_score_loss(labels, proba, labels=k),
    }
    if classes == 2:
        for name, score in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
            expected[f"val_{name}"] = score(labels, predicted, average="binary", pos_label=1, labels=k, zero_division=0)
    return expected


def rounded_dirichlet(rng: np.random.Generator, labels: np.ndarray, classes: int, decimals: int) -> np.ndarray:
    """Probabilities leaning to the true class, rounded so that many rows tie (ranking metrics must
    count ties as scikit-learn does); a row sums to one."""
    proba = rng.dirichlet(np.ones(classes), size=len(labels))
    proba[np.arange(len(labels)), labels] += 0.5
    proba = np.round(proba / proba.sum(axis=1, keepdims=True), decimals)
    proba[:, 0] = 1.0 - proba[:, 1:].sum(axis=1)
    return np.clip(proba, 0.0, 1.0)


@pytest.mark.parametrize("classes,decimals", [(4, 6), (4, 1), (2, 6), (2, 1), (3, 2)])
def test_each_metric_is_scikit_learns(classes, decimals):
    rng = np.random.default_rng(classes * 10 + decimals)
    labels = rng.permutation(np.repeat(np.arange(classes), 25))
    proba = rounded_dirichlet(rng, labels, classes, decimals)
    proba[:, -1] = np.minimum(proba[:, -1], 0.2)  # the last class is never the most probable: zero division
    proba /= proba.sum(axis=1, keepdims=True)
    expected = scikit_learns(proba, labels)
    m = metrics_of(proba, labels)
    assert set(m) == set(expected), "the positive class's metrics are for two classes only"
    for name, value in expected.items():
        assert m[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_the_decision_metrics_are_scikit_learns_at_any_threshold():
    rng = np.random.default_rng(5)
    labels = (rng.random(200) < 0.3).astype(np.int64)
    proba = rounded_dirichlet(rng, labels, 2, 2)
    for threshold in (0.05, 0.3, 0.5, 0.9, 0.999):
        predicted = (proba[:, 1] > threshold).astype(np.int64)
        m = quality_metrics(torch.from_numpy(proba), torch.from_numpy(labels), "val", threshold)
        assert m["val_f1"] == pytest.approx(sk.f1_score(labels, predicted, zero_division=0)), threshold
        assert m["val_precision"] == pytest.approx(sk.precision_score(labels, predicted, zero_division=0)), threshold
        assert m["val_balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, predicted)), threshold


def test_ranking_metrics_are_undefined_without_every_class():
    m = metrics_of(BINARY_PROBA[:3], np.zeros(3, dtype=np.int64))
    assert math.isnan(m["val_roc_auc"]) and math.isnan(m["val_average_precision"])
    assert m["val_recall"] == 0.0 and m["val_accuracy"] == pytest.approx(1 / 3)


def brute_force_best(proba: np.ndarray, labels: np.ndarray, score) -> float:
    """The best value of ``score`` over every way of calling the rows above a probability positive."""
    return max(score(labels, (proba[:, 1] >= p).astype(int)) for p in [*np.unique(proba[:, 1]), 2.0])


@pytest.mark.parametrize("name,score", [("f1", sk.f1_score), ("balanced_accuracy", sk.balanced_accuracy_score)])
def test_the_decision_threshold_is_the_best_cut_on_the_rows(name, score):
    rng = np.random.default_rng(3)
    labels = (rng.random(400) < 0.08).astype(np.int64)
    positive = 1 / (1 + np.exp(-(rng.normal(size=400) * 1.5 + labels * 2.0 - 2.5)))
    proba = np.stack([1 - positive, positive], axis=1)
    threshold, value = best_threshold(proba, labels, metric_named(name))
    assert value == pytest.approx(brute_force_best(proba, labels, score))
    assert value > metric_named(name).score(proba, labels), "a rare positive class: 0.5 is not the best cut"
    at = quality_metrics(torch.from_numpy(proba), torch.from_numpy(labels), "val", threshold)
    assert at[f"val_{name}"] == pytest.approx(value)
    assert at["val_log_loss"] == metrics_of(proba, labels)["val_log_loss"], "a threshold changes only the predicted classes"


def test_class_report_counts_each_class():
    report = class_report(BINARY_PROBA.argmax(axis=1), BINARY_LABELS, ["ok", "fraud"])
    assert report["fraud"]["support"] == 3 and report["fraud"]["precision"] == pytest.approx(2 / 3)
    assert report["ok"]["recall"] == pytest.approx(2 / 3)


def test_balanced_class_weights_are_scikit_learns():
    labels = torch.tensor([0] * 90 + [1] * 8 + [2] * 2)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy())
    np.testing.assert_allclose(class_weights("balanced", labels, 3).numpy(), expected, rtol=1e-6)
    assert class_weights("none", labels, 3) is None
