"""Classification metrics computed from predicted probabilities (as scikit-learn does), and
``Direction``: what "better" means for a metric."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

EPS = 1e-15
# The validation metrics every epoch computes, and which way is better.
QUALITY_METRICS = {"val_log_loss": "min", "val_accuracy": "max"}
# What a trial measures of its deployed composite (trainables.cost): latencies, parameters, size.
LATENCIES = ("latency_ms_p50", "latency_ms_p95", "latency_ms_batch")
COST_METRICS = (*LATENCIES, "params_m", "size_mb")


def log_loss(proba: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the true class, probabilities clipped at 1e-15."""
    picked = proba.gather(1, labels.view(-1, 1)).squeeze(1).double().clamp(EPS, 1.0)
    return float(-torch.log(picked).mean())


def accuracy(proba: Tensor, labels: Tensor) -> float:
    return float((proba.argmax(dim=1) == labels).double().mean())


def classification_metrics(proba: Tensor, labels: Tensor, prefix: str) -> dict[str, float]:
    """``{prefix}_accuracy`` and ``{prefix}_log_loss``."""
    return {f"{prefix}_accuracy": accuracy(proba, labels), f"{prefix}_log_loss": log_loss(proba, labels)}


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
