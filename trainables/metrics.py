"""The metrics people report, computed with scikit-learn's own implementations: on a classifier's
predicted probabilities (rows x classes), or on a regression's predicted values (rows x 1: an
output one wide is a value); and ``Direction``: what "better" means for a metric.

Every metric is registered once (``METRIC_SET``) with its direction and task; each is usable as an
objective or a constraint as ``val_<name>``, is logged every epoch on validation and is a column of
the test table. The positive class's precision, recall and F1 exist for two classes only.
"""

from __future__ import annotations

import importlib
import math
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
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


def class_metric(name: str, mode: Literal["min", "max"], function: str, binary_only: bool = False, **options: object) -> Metric:
    """scikit-learn's ``function`` of the predicted classes; ``options`` go to it (with every
    class's index and no warning for a class never predicted when it averages over classes)."""

    def of_classes(predicted: np.ndarray, labels: np.ndarray, classes: int) -> float:
        import sklearn.metrics

        score = getattr(sklearn.metrics, function)
        more = {"labels": np.arange(classes), "zero_division": 0} if "average" in options else {}
        with warnings.catch_warnings():  # balanced accuracy of rows missing a class: the mean over the rest
            warnings.simplefilter("ignore")
            return float(score(labels, predicted, **options, **more))

    return Metric(name, mode, lambda proba, labels: of_classes(proba.argmax(axis=1), labels, proba.shape[1]), binary_only, of_classes)


def roc_auc_of(proba: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of the positive class for two classes, one-vs-rest macro average for more; NaN when
    a class is absent from these rows (it is not defined then)."""
    from sklearn.metrics import roc_auc_score

    classes = proba.shape[1]
    if len(np.unique(labels)) < classes:
        return math.nan
    if classes == 2:
        return float(roc_auc_score(labels, proba[:, 1]))
    return float(roc_auc_score(labels, normalised(proba), multi_class="ovr", labels=np.arange(classes)))


def average_precision_of(proba: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of the positive class for two classes, macro over classes for more; NaN
    when a class is absent from these rows."""
    from sklearn.metrics import average_precision_score

    classes = proba.shape[1]
    if len(np.unique(labels)) < classes:
        return math.nan
    if classes == 2:
        return float(average_precision_score(labels, proba[:, 1]))
    return float(average_precision_score(np.eye(classes)[labels], proba, average="macro"))


def log_loss_of(proba: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    return float(log_loss(labels, normalised(proba), labels=np.arange(proba.shape[1])))


def brier_of(proba: np.ndarray, labels: np.ndarray) -> float:
    """The Brier score: for two classes of the positive class's probability, for more the mean over
    rows of the squared distance to the one-hot label (scikit-learn's multiclass definition)."""
    from sklearn.metrics import brier_score_loss

    classes = proba.shape[1]
    if classes == 2:
        return float(brier_score_loss(labels, proba[:, 1], pos_label=1))
    return float(brier_score_loss(labels, normalised(proba), labels=np.arange(classes)))


def regression_metric(name: str, mode: Literal["min", "max"], function: str, root: bool = False) -> Metric:
    """scikit-learn's ``function`` of predicted values (rows x 1) against the targets; ``root``: its square root."""

    def score(predicted: np.ndarray, targets: np.ndarray) -> float:
        import sklearn.metrics

        value = float(getattr(sklearn.metrics, function)(targets, predicted[:, 0]))
        return math.sqrt(value) if root else value

    return Metric(name, mode, score, regression=True)


def normalised(proba: np.ndarray) -> np.ndarray:
    """Rows that sum to one in float64 (float32 sums drift by about 1e-7, which scikit-learn warns of)."""
    values = proba.astype(np.float64)
    return values / values.sum(axis=1, keepdims=True)


METRIC_SET: tuple[Metric, ...] = (
    Metric("log_loss", "min", log_loss_of),
    class_metric("accuracy", "max", "accuracy_score"),
    class_metric("balanced_accuracy", "max", "balanced_accuracy_score"),
    class_metric("f1_macro", "max", "f1_score", average="macro"),
    class_metric("f1_weighted", "max", "f1_score", average="weighted"),
    class_metric("precision_macro", "max", "precision_score", average="macro"),
    class_metric("recall_macro", "max", "recall_score", average="macro"),
    Metric("roc_auc", "max", roc_auc_of),
    Metric("average_precision", "max", average_precision_of),
    Metric("brier", "min", brier_of),
    class_metric("precision", "max", "precision_score", binary_only=True, average="binary", pos_label=1),
    class_metric("recall", "max", "recall_score", binary_only=True, average="binary", pos_label=1),
    class_metric("f1", "max", "f1_score", binary_only=True, average="binary", pos_label=1),
    regression_metric("rmse", "min", "mean_squared_error", root=True),
    regression_metric("mae", "min", "mean_absolute_error"),
    regression_metric("r2", "max", "r2_score"),
)
# The validation metrics every epoch computes (those that apply to the data's classes), and which way is better.
QUALITY_METRICS = {f"val_{m.name}": m.mode for m in METRIC_SET}
BINARY_ONLY = frozenset(f"val_{m.name}" for m in METRIC_SET if m.binary_only)
CLASS_METRICS = tuple(f"val_{m.name}" for m in METRIC_SET if m.of_classes is not None)  # of the predicted classes
REGRESSION_METRICS = tuple(f"val_{m.name}" for m in METRIC_SET if m.regression)


def import_in_background() -> None:
    """Start importing scikit-learn's metrics (about 1 s) on another thread, so that a trial's first
    epoch trains meanwhile; the first metric computed waits for the import to finish."""
    if "sklearn.metrics" not in sys.modules:
        threading.Thread(target=importlib.import_module, args=("sklearn.metrics",), name="import sklearn.metrics", daemon=True).start()


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
