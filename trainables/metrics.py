"""The metrics people report, with scikit-learn's definitions (tests/test_metrics.py checks each
against scikit-learn's own function), computed in NumPy: every epoch of every trial computes them
all, and scikit-learn's input checks cost a trial more than its epochs (and its import, 1-2 s, the
first trial): on a classifier's predicted probabilities (rows x classes), or on a regression's
predicted values (rows x 1: an output one wide is a value); and ``Direction``: what "better" means
for a metric.

Every metric is registered once (``METRIC_SET``) with its direction and task; each is usable as an
objective or a constraint as ``val_<name>``, is logged every epoch on validation and is a column of
the test table. The positive class's precision, recall and F1 exist for two classes only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

EPS = 1e-15
# What a trial measures of its deployed composite (trainables.cost): latencies, parameters, size.
LATENCIES = ("latency_ms_p50", "latency_ms_p95", "latency_ms_batch")
COST_METRICS = (*LATENCIES, "params_m", "size_mb")

Score = Callable[[np.ndarray, np.ndarray], float]  # (probabilities rows x classes, labels; or values rows x 1, targets) -> value
ClassScore = Callable[[np.ndarray, np.ndarray, int], float]  # (predicted classes, labels, number of classes) -> value


@dataclass(frozen=True)
class Metric:
    """A metric of class probabilities: its name, which way is better, how it is computed, and
    whether it is defined for two classes only (the positive class is the second). A metric of the
    predicted classes has ``of_classes``, which scores any prediction (one made at another decision
    threshold too); ``score`` then predicts the most probable class."""

    name: str
    mode: Literal["min", "max"]
    score: Score
    binary_only: bool = False
    of_classes: ClassScore | None = None
    regression: bool = False  # a metric of predicted values (rows x 1) and targets, not of probabilities


def class_metric(name: str, mode: Literal["min", "max"], of_classes: ClassScore, binary_only: bool = False) -> Metric:
    """A metric of the predicted classes; scoring probabilities predicts the most probable class."""
    return Metric(name, mode, lambda proba, labels: of_classes(proba.argmax(axis=1), labels, proba.shape[1]), binary_only, of_classes)


def confusion(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Rows: the true class; columns: the predicted one."""
    return np.bincount(labels.astype(np.int64) * classes + predicted.astype(np.int64), minlength=classes * classes).reshape(classes, classes)


def ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """``top / bottom``, 0 where ``bottom`` is 0 (scikit-learn's ``zero_division=0``)."""
    return np.divide(top, bottom, out=np.zeros(len(top)), where=bottom != 0)


def accuracy_of(predicted: np.ndarray, labels: np.ndarray, classes: int) -> float:
    return float(np.mean(predicted == labels))


def balanced_accuracy_of(predicted: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """The mean recall of the classes these rows have (a class absent from them has none)."""
    matrix = confusion(predicted, labels, classes)
    truth = matrix.sum(axis=1)
    return float(np.mean(np.diag(matrix)[truth > 0] / truth[truth > 0]))


def per_class(kind: Literal["precision", "recall", "f1"], average: Literal["macro", "weighted", "binary"]) -> ClassScore:
    """Precision, recall or F1 of each class (0 where undefined), averaged over every class
    (``macro``), weighted by each class's rows (``weighted``), or of the positive class (``binary``)."""

    def score(predicted: np.ndarray, labels: np.ndarray, classes: int) -> float:
        matrix = confusion(predicted, labels, classes)
        hits, truth, called = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
        values = {"precision": ratio(hits, called), "recall": ratio(hits, truth), "f1": ratio(2 * hits, truth + called)}[kind]
        if average == "binary":
            return float(values[1])
        return float(np.average(values, weights=truth) if average == "weighted" else values.mean())

    return score


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank from 1, tied values sharing their ranks' mean."""
    _, where, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return ((last - counts + 1 + last) / 2.0)[where]


def binary_roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """The probability that a positive row scores above a negative one, ties counting half (the area
    under the ROC curve)."""
    ranks = average_ranks(scores)
    positives = int(positive.sum())
    negatives = len(positive) - positives
    return float((ranks[positive].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def binary_average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """The precision at each distinct score (rows at or above it called positive), weighted by the
    recall it adds."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(positive[order])
    cuts = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    precision, recall = hits[cuts] / (cuts + 1), hits[cuts] / hits[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def ranking_metric(binary: Callable[[np.ndarray, np.ndarray], float], normalise: bool) -> Score:
    """``binary`` of the positive class for two classes, the mean over classes (each against the rest)
    for more; NaN when a class is absent from these rows (it is not defined then). ``normalise``: on
    rows that sum to one."""

    def score(proba: np.ndarray, labels: np.ndarray) -> float:
        classes = proba.shape[1]
        if len(np.unique(labels)) < classes:
            return math.nan
        if classes == 2:
            return binary(labels == 1, proba[:, 1])
        values = normalised(proba) if normalise else proba
        return float(np.mean([binary(labels == c, values[:, c]) for c in range(classes)]))

    return score


def log_loss_of(proba: np.ndarray, labels: np.ndarray) -> float:
    """The mean negative log of the true class's probability (rows normalised, clipped to float64's epsilon)."""
    eps = np.finfo(np.float64).eps
    values = np.clip(normalised(proba), eps, 1 - eps)
    return float(-np.mean(np.log(values[np.arange(len(labels)), labels])))


def brier_of(proba: np.ndarray, labels: np.ndarray) -> float:
    """The Brier score: for two classes of the positive class's probability, for more the mean over
    rows of the squared distance to the one-hot label (scikit-learn's multiclass definition)."""
    classes = proba.shape[1]
    if classes == 2:
        return float(np.mean((proba[:, 1] - labels) ** 2))
    return float(np.mean(np.sum((normalised(proba) - np.eye(classes)[labels]) ** 2, axis=1)))


def rmse_of(predicted: np.ndarray, targets: np.ndarray) -> float:
    return math.sqrt(float(np.mean((targets - predicted[:, 0]) ** 2)))


def mae_of(predicted: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.abs(targets - predicted[:, 0])))


def r2_of(predicted: np.ndarray, targets: np.ndarray) -> float:
    """1 - residual / total sum of squares; with constant targets 1 for an exact prediction, else 0."""
    residual, total = float(np.sum((targets - predicted[:, 0]) ** 2)), float(np.sum((targets - targets.mean()) ** 2))
    if total == 0.0:
        return 1.0 if residual == 0.0 else 0.0
    return 1.0 - residual / total


def normalised(proba: np.ndarray) -> np.ndarray:
    """Rows that sum to one in float64."""
    values = proba.astype(np.float64)
    return values / values.sum(axis=1, keepdims=True)


METRIC_SET: tuple[Metric, ...] = (
    Metric("log_loss", "min", log_loss_of),
    class_metric("accuracy", "max", accuracy_of),
    class_metric("balanced_accuracy", "max", balanced_accuracy_of),
    class_metric("f1_macro", "max", per_class("f1", "macro")),
    class_metric("f1_weighted", "max", per_class("f1", "weighted")),
    class_metric("precision_macro", "max", per_class("precision", "macro")),
    class_metric("recall_macro", "max", per_class("recall", "macro")),
    Metric("roc_auc", "max", ranking_metric(binary_roc_auc, normalise=True)),
    Metric("average_precision", "max", ranking_metric(binary_average_precision, normalise=False)),
    Metric("brier", "min", brier_of),
    class_metric("precision", "max", per_class("precision", "binary"), binary_only=True),
    class_metric("recall", "max", per_class("recall", "binary"), binary_only=True),
    class_metric("f1", "max", per_class("f1", "binary"), binary_only=True),
    Metric("rmse", "min", rmse_of, regression=True),
    Metric("mae", "min", mae_of, regression=True),
    Metric("r2", "max", r2_of, regression=True),
)
# The validation metrics every epoch computes (those that apply to the data's classes), and which way is better.
QUALITY_METRICS = {f"val_{m.name}": m.mode for m in METRIC_SET}
BINARY_ONLY = frozenset(f"val_{m.name}" for m in METRIC_SET if m.binary_only)
CLASS_METRICS = tuple(f"val_{m.name}" for m in METRIC_SET if m.of_classes is not None)  # of the predicted classes
REGRESSION_METRICS = tuple(f"val_{m.name}" for m in METRIC_SET if m.regression)


def metric_named(key: str) -> Metric:
    """The metric a validation key (``val_f1_macro``) or a bare name (``f1_macro``) names."""
    name = key.removeprefix("val_").removeprefix("test_")
    return next(m for m in METRIC_SET if m.name == name)


def metrics_for(outputs: int) -> tuple[Metric, ...]:
    """The metrics defined for a model's outputs: ``outputs`` classes, or one value (regression)."""
    if outputs == 1:
        return tuple(m for m in METRIC_SET if m.regression)
    return tuple(m for m in METRIC_SET if not m.regression and (outputs == 2 or not m.binary_only))


def quality_metrics(outputs: Tensor, labels: Tensor, prefix: str, threshold: float | None = None) -> dict[str, float]:
    """``{prefix}_<name>`` of every metric defined for the outputs (class probabilities, or one
    predicted value a row); the metrics of predicted classes at the decision ``threshold`` when one
    is given (two classes)."""
    values, truth = outputs.detach().cpu().double().numpy(), labels.cpu().numpy()
    if values.shape[1] == 1:
        return {f"{prefix}_{m.name}": m.score(values, truth) for m in metrics_for(1)}
    predicted = predicted_classes(values, threshold)
    return {
        f"{prefix}_{m.name}": m.score(values, truth) if m.of_classes is None else m.of_classes(predicted, truth, values.shape[1])
        for m in metrics_for(values.shape[1])
    }


def decision(proba: np.ndarray, threshold: float) -> np.ndarray:
    """The predicted class of two: the positive one (the second) where its probability exceeds
    ``threshold``; at 0.5, the most probable class."""
    return (proba[:, 1] > threshold).astype(np.int64)


def predicted_classes(proba: np.ndarray, threshold: float | None) -> np.ndarray:
    """Each row's predicted class: at the decision ``threshold`` (two classes) when there is one,
    else the most probable."""
    return proba.argmax(axis=1) if threshold is None else decision(proba, threshold)


OUTPUTS = ("probabilities", "classes")  # what the champion's pyfunc returns, by its ``output`` parameter
THRESHOLD_KEY = "decision_threshold"  # the champion's decision threshold in its pyfunc configuration


def best_threshold(proba: np.ndarray, labels: np.ndarray, metric: Metric, most: int = 512) -> tuple[float, float]:
    """The decision threshold on the positive class's probability that scores best on ``metric`` (a
    metric of predicted classes), and its value there: 0.5 unless a cut halfway between two of the
    rows' probabilities (at most ``most`` cuts, at quantiles) scores strictly better."""
    assert metric.of_classes is not None, f"{metric.name} scores probabilities, not predicted classes"
    points = np.unique(proba[:, 1])
    if len(points) > most + 1:
        points = np.unique(np.quantile(proba[:, 1], np.linspace(0.0, 1.0, most + 1)))
    direction = Direction(metric.mode)
    best = (0.5, metric.of_classes(decision(proba, 0.5), labels, 2))
    for cut in (points[:-1] + points[1:]) / 2:
        value = metric.of_classes(decision(proba, float(cut)), labels, 2)
        if direction.better(value, best[1]):
            best = (float(cut), value)
    return best


def class_report(predicted: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class (scikit-learn's ``classification_report``)."""
    from sklearn.metrics import classification_report

    return classification_report(
        labels, predicted, labels=np.arange(len(class_names)), target_names=class_names, output_dict=True, zero_division=0
    )


@dataclass(frozen=True)
class Direction:
    """Whether lower (``min``) or higher (``max``) values of a metric are better: the one place
    that compares them."""

    mode: Literal["min", "max"]

    def better(self, value: float, than: float) -> bool:
        return value < than if self.mode == "min" else value > than

    @property
    def worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def best_first(self, value: float | None) -> tuple[bool, float]:
        """A sort key: best values first, missing ones last."""
        return value is None, (value if self.mode == "min" else -value) if value is not None else 0.0

    @property
    def optuna(self) -> str:
        return "minimize" if self.mode == "min" else "maximize"
