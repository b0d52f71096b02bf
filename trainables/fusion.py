"""Fusion operators: turn a list of member features into class logits.

An operator knows nothing of where its features come from: it is built from the
members' feature widths and the number of classes, and registered by name with
the parameters Optuna may tune. ``forward`` returns a ``FusionOutput`` so an
operator can add its own training terms (per-member heads, regularisers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.registry import Choice, FloatRange, IntRange, Registry


@dataclass
class FusionOutput:
    """Fused logits, plus training-only terms the composite adds to its loss."""

    logits: Tensor
    member_logits: list[Tensor] = field(default_factory=list)
    extra_loss: Tensor | None = None


class FusionOperator(nn.Module):
    """Base class: ``forward(features) -> FusionOutput``."""

    def forward(self, features: list[Tensor]) -> FusionOutput:  # pragma: no cover - abstract
        raise NotImplementedError


OperatorFactory = Callable[..., FusionOperator]
OPERATORS: Registry[OperatorFactory] = Registry("fusion operator")
register_operator = OPERATORS.register


def normalise_weights(weights: list[float]) -> list[float]:
    """Project non-negative weights onto the simplex (they sum to one)."""
    if any(w < 0 or not math.isfinite(w) for w in weights):
        raise ValueError(f"fusion weights must be finite and non-negative, got {weights}")
    total = sum(weights)
    if total <= 0:
        raise ValueError("fusion weights must not all be zero")
    return [w / total for w in weights]


def member_head(width: int, num_classes: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))


@register_operator(
    "weighted",
    params={"pool": Choice(("linear", "log_linear"))},
    per_member={"weight": FloatRange(0.05, 1.0)},
)
class WeightedLateFusion(FusionOperator):
    """Weighted late fusion: each member has its own head; their predictions are pooled.

    ``linear`` pools probabilities (a mixture, what ensembles average), ``log_linear``
    pools log-probabilities (a product of experts). The weights are fixed per trial,
    chosen by the search, normalised on the simplex. Each head is also trained on its
    own loss so every member stays a good classifier on its own.
    """

    def __init__(
        self,
        widths: list[int],
        num_classes: int,
        dropout: float = 0.0,
        weight: list[float] | None = None,
        pool: str = "linear",
    ) -> None:
        super().__init__()
        if pool not in ("linear", "log_linear"):
            raise ValueError(f"pool must be 'linear' or 'log_linear', got {pool!r}")
        weights = normalise_weights(weight if weight is not None else [1.0] * len(widths))
        if len(weights) != len(widths):
            raise ValueError(f"{len(weights)} fusion weights for {len(widths)} members")
        self.pool = pool
        self.heads = nn.ModuleList(member_head(w, num_classes, dropout) for w in widths)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))

    def forward(self, features: list[Tensor]) -> FusionOutput:
        member_logits = [head(f) for head, f in zip(self.heads, features, strict=True)]
        log_probs = torch.stack([F.log_softmax(z, dim=-1) for z in member_logits])  # (M, B, C)
        w = self.weights.view(-1, 1, 1)
        if self.pool == "linear":
            fused = torch.logsumexp(log_probs + torch.log(w.clamp_min(1e-12)), dim=0)
        else:
            fused = (w * log_probs).sum(dim=0)
        return FusionOutput(fused, member_logits)


@register_operator("concat_mlp", params={"hidden": IntRange(32, 512, log=True)})
class ConcatMLP(FusionOperator):
    """Early fusion: normalise and concatenate the members' features, then an MLP."""

    def __init__(self, widths: list[int], num_classes: int, dropout: float = 0.0, hidden: int = 128) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(w) for w in widths)
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(sum(widths), hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: list[Tensor]) -> FusionOutput:
        joined = torch.cat([norm(f) for norm, f in zip(self.norms, features, strict=True)], dim=-1)
        return FusionOutput(self.mlp(joined))


def build_operator(kind: str, widths: list[int], num_classes: int, dropout: float, params: dict) -> FusionOperator:
    """Build the operator ``kind`` for members of ``widths``."""
    return OPERATORS.get(kind).factory(widths, num_classes, dropout=dropout, **params)
