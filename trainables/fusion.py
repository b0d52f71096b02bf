"""Fusion operators: turn a list of member features into class logits, or a value.

An operator knows nothing of where its features come from: it is built from the
members' feature widths and the number of outputs (classes, or one: a regression's
value, standardised), and registered by name with the parameters Optuna may tune.
Member outputs pool as probabilities for classes and as values for a regression
(``member_scores``, ``pool``). ``forward`` returns a ``FusionOutput`` so an
operator can add its own training terms (per-member heads, regularisers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.data import stratified_folds
from trainables.registry import Choice, FloatRange, IntRange, Registry


@dataclass
class FusionOutput:
    """Fused logits, plus training-only terms the composite adds to its loss, and the fused features
    (what the operator's last layer reads; for late fusion, the members' features side by side):
    what domain adaptation aligns (``trainables.adaptation``)."""

    logits: Tensor
    member_logits: list[Tensor] = field(default_factory=list)
    extra_loss: Tensor | None = None
    hidden: Tensor | None = None  # the operator's last hidden layer, when it has one
    features: list[Tensor] = field(default_factory=list)  # the members' features (late fusion)

    @property
    def fused(self) -> Tensor:
        """The fused features: the hidden layer, else the members' features side by side (concatenated
        only when asked for, not in every forward)."""
        return self.hidden if self.hidden is not None else torch.cat(self.features, dim=-1)


class FusionOperator(nn.Module):
    """Base class: ``forward(features) -> FusionOutput``.

    An operator that learns part of itself outside gradient descent sets
    ``refits = True``: after every epoch it gets the members' features of the whole
    training split (``refit``), as stacking does to fit its meta-learner.
    """

    refits = False
    fused_width = 0  # the width of ``FusionOutput.fused``

    def forward(self, features: list[Tensor]) -> FusionOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def mixing_parameters(self) -> list[nn.Parameter]:
        """Parameters that weigh the members against each other: trained at ``MIXING_LR``, without
        weight decay, so a member that does not help is weighed down within a few epochs."""
        return []

    def refit(self, features: list[Tensor], labels: Tensor, class_weight: Tensor | None = None) -> None:
        """Fit what gradient descent does not train, from training-split features (each class's
        rows weighted by ``class_weight``, as in the loss)."""


MIXING_LR = 0.05  # Adam's step on mixing logits: a weight of 0.5 falls under 0.1 in about 50 steps
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


def member_scores(z: Tensor) -> Tensor:
    """What pools of a head's output: the log-probabilities of its classes, or (an output one wide,
    a regression) its value."""
    return z if z.shape[-1] == 1 else F.log_softmax(z, dim=-1)


def pool(scores: Tensor, log_weights: Tensor, dim: int) -> Tensor:
    """The weighted mixture over ``dim`` of ``member_scores``: the log of the weighted sum of
    probabilities for classes, the weighted mean of values for a regression."""
    if scores.shape[-1] == 1:
        return (log_weights.exp() * scores).sum(dim=dim)
    return torch.logsumexp(scores + log_weights, dim=dim)


def member_head(width: int, num_classes: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))


MIN_NORMED = 8  # a member's features narrower than this are not layer-normalised


def feature_norm(width: int) -> nn.Module:
    """LayerNorm over a member's features, except for a narrow member (boosted trees' class
    log-probabilities, a regression's one value): normalised over so few features, what it says would
    be lost (one value always normalises to 0, two to -1 and 1)."""
    return nn.LayerNorm(width) if width >= MIN_NORMED else nn.Identity()


def normalised_concat(norms: nn.ModuleList, features: list[Tensor]) -> Tensor:
    return torch.cat([norm(f) for norm, f in zip(norms, features, strict=True)], dim=-1)


@register_operator(
    "weighted",
    params={"pool": Choice(("linear", "log_linear"))},
    per_member={"weight": FloatRange(0.05, 1.0)},
)
class WeightedLateFusion(FusionOperator):
    """Weighted late fusion: each member has its own head; their predictions are pooled.

    ``linear`` pools probabilities (a mixture, what ensembles average), ``log_linear``
    pools log-probabilities (a product of experts); a regression's values are averaged either way. The weights are a softmax over one
    logit per member, learned with the rest (``mixing_parameters``) from the start the
    search samples, so a member whose predictions hurt is driven towards zero within the
    trial. Each head is also trained on its own loss so every member stays a good
    classifier on its own.
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
        self.fused_width = sum(widths)
        self.heads = nn.ModuleList(member_head(w, num_classes, dropout) for w in widths)
        self.logits = nn.Parameter(torch.log(torch.tensor(weights, dtype=torch.float32).clamp_min(1e-6)))

    @property
    def weights(self) -> Tensor:
        """The members' weights now, on the simplex."""
        return torch.softmax(self.logits, dim=0)

    def mixing_parameters(self) -> list[nn.Parameter]:
        return [self.logits]

    def forward(self, features: list[Tensor]) -> FusionOutput:
        member_logits = [head(f) for head, f in zip(self.heads, features, strict=True)]
        scores = torch.stack([member_scores(z) for z in member_logits])  # (M, B, C)
        log_w = torch.log_softmax(self.logits, dim=0).view(-1, 1, 1)
        if self.pool == "linear":
            fused = pool(scores, log_w, dim=0)
        else:
            fused = (log_w.exp() * scores).sum(dim=0)
        return FusionOutput(fused, member_logits, features=features)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        """Weights saved before they were learned (a ``weights`` buffer on the simplex) load as logits."""
        if prefix + "weights" in state_dict and prefix + "logits" not in state_dict:
            state_dict[prefix + "logits"] = torch.log(state_dict.pop(prefix + "weights").clamp_min(1e-6))
        super()._load_from_state_dict(state_dict, prefix, *args)


@register_operator("concat_mlp", params={"hidden": IntRange(32, 512, log=True)})
class ConcatMLP(FusionOperator):
    """Early fusion: normalise and concatenate the members' features, then an MLP."""

    def __init__(self, widths: list[int], num_classes: int, dropout: float = 0.0, hidden: int = 128) -> None:
        super().__init__()
        self.norms = nn.ModuleList(feature_norm(w) for w in widths)
        self.fused_width = hidden
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(sum(widths), hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: list[Tensor]) -> FusionOutput:
        hidden = self.mlp[:-2](normalised_concat(self.norms, features))
        return FusionOutput(self.mlp[-2:](hidden), hidden=hidden)


@register_operator("gmu", params={"hidden": IntRange(32, 256, log=True)})
class GatedMultimodalUnit(FusionOperator):
    """Gated multimodal unit (Arevalo et al. 2017), for any number of members.

    Each member's features become ``h_i = tanh(W_i x_i)``; gates ``z_i = sigmoid(W_z,i [x_1..x_M])``
    computed from all members decide, per sample and per unit, how much each contributes:
    ``h = sum_i z_i * h_i`` (with two members and tied gates this is the paper's ``z h_1 + (1 - z) h_2``).
    """

    def __init__(self, widths: list[int], num_classes: int, dropout: float = 0.0, hidden: int = 64) -> None:
        super().__init__()
        self.norms = nn.ModuleList(feature_norm(w) for w in widths)
        self.transforms = nn.ModuleList(nn.Linear(w, hidden) for w in widths)
        self.gates = nn.Linear(sum(widths), hidden * len(widths))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        self.hidden = self.fused_width = hidden

    def forward(self, features: list[Tensor]) -> FusionOutput:
        normed = [norm(f) for norm, f in zip(self.norms, features, strict=True)]
        h = torch.stack([torch.tanh(t(x)) for t, x in zip(self.transforms, normed, strict=True)], dim=1)  # (B, M, H)
        z = torch.sigmoid(self.gates(torch.cat(normed, dim=-1))).view(h.shape)
        fused = (z * h).sum(dim=1)
        return FusionOutput(self.head(fused), hidden=fused)


@register_operator(
    "attention",
    params={"d_model": Choice((32, 64, 128)), "heads": Choice((1, 2, 4)), "layers": IntRange(1, 2)},
)
class TokenTransformer(FusionOperator):
    """A small transformer over the members' tokens (one token per member, projected to ``d_model``).

    A learned fusion token attends to every member token (and they to each other) through
    ``layers`` encoder layers; its output is classified. Member embeddings tell the tokens
    apart, so the layers can learn which member to trust for which sample.
    """

    def __init__(
        self, widths: list[int], num_classes: int, dropout: float = 0.0, d_model: int = 64, heads: int = 2, layers: int = 1
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of heads ({heads})")
        self.projections = nn.ModuleList(nn.Sequential(feature_norm(w), nn.Linear(w, d_model)) for w in widths)
        self.member_embedding = nn.Parameter(torch.randn(len(widths), d_model) * 0.02)
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, num_classes))
        self.fused_width = d_model

    def forward(self, features: list[Tensor]) -> FusionOutput:
        tokens = torch.stack([p(f) for p, f in zip(self.projections, features, strict=True)], dim=1)
        tokens = tokens + self.member_embedding
        tokens = torch.cat([self.fusion_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        fused = self.encoder(tokens)[:, 0]
        return FusionOutput(self.head(fused), hidden=fused)


@register_operator("moe", params={"balance": FloatRange(1e-3, 1e-1, log=True)})
class MixtureOfExperts(FusionOperator):
    """Mixture of experts: each member's head is an expert; a gate gives per-sample weights over them.

    The fused prediction is the gate-weighted mixture of the experts' probabilities (values). A
    load-balancing term (Switch Transformer's ``M * sum_i f_i P_i``: ``f_i`` the share of
    samples whose top expert is ``i``, ``P_i`` its mean gate weight), scaled by ``balance``,
    keeps the gate from collapsing onto one member early in training.
    """

    def __init__(self, widths: list[int], num_classes: int, dropout: float = 0.0, balance: float = 0.01) -> None:
        super().__init__()
        self.heads = nn.ModuleList(member_head(w, num_classes, dropout) for w in widths)
        self.norms = nn.ModuleList(feature_norm(w) for w in widths)
        self.gate = nn.Linear(sum(widths), len(widths))
        self.balance = balance
        self.fused_width = sum(widths)

    def forward(self, features: list[Tensor]) -> FusionOutput:
        member_logits = [head(f) for head, f in zip(self.heads, features, strict=True)]
        gate = F.softmax(self.gate(normalised_concat(self.norms, features)), dim=-1)  # (B, M)
        scores = torch.stack([member_scores(z) for z in member_logits], dim=1)  # (B, M, C)
        fused = pool(scores, torch.log(gate.clamp_min(1e-12)).unsqueeze(-1), dim=1)
        experts = gate.shape[1]
        share = F.one_hot(gate.argmax(dim=1), experts).float().mean(0)
        balance_loss = self.balance * experts * (share * gate.mean(0)).sum()
        return FusionOutput(fused, extra_loss=balance_loss, features=features)


def fit_linear(x: Tensor, y: Tensor, outputs: int, l2: float, class_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The linear head stacking fits: ridge regression for one output (a value), else multinomial
    logistic regression. Weight (outputs, D) and bias (outputs,)."""
    return fit_ridge(x, y, l2) if outputs == 1 else fit_logistic(x, y, outputs, l2, class_weight)


def fit_ridge(x: Tensor, y: Tensor, l2: float) -> tuple[Tensor, Tensor]:
    """Least squares with an L2 penalty of ``l2`` per row on the weights (not the bias), solved exactly:
    weight (1, D) and bias (1,)."""
    x, y = x.detach().double(), y.detach().double()
    mean_x, mean_y = x.mean(0), y.mean()
    centred = x - mean_x
    gram = centred.T @ centred + l2 * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
    weight = torch.linalg.solve(gram, centred.T @ (y - mean_y))
    return weight.float().view(1, -1), (mean_y - mean_x @ weight).float().view(1)


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, l2: float, class_weight: Tensor | None = None, steps: int = 100) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression (L-BFGS, L2 on the weights, each class's rows weighted by
    ``class_weight``): weight (C, D) and bias (C,)."""
    x = x.detach().float()
    weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y, weight=class_weight) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


@register_operator("stacking", params={"folds": Choice((3, 5)), "l2": FloatRange(1e-4, 1e-1, log=True)})
class Stacking(FusionOperator):
    """Stacking: a logistic-regression meta-learner (ridge, for a regression) on the members'
    out-of-fold predictions.

    As scikit-learn's ``StackingClassifier``, with a logistic-regression head per member:
    after every epoch, each member's head is fitted on the whole training split's features,
    and the meta-learner on out-of-fold log-probabilities (each row predicted by heads fitted
    on the other ``folds``), so it learns how far to trust each member on data its head did
    not see. Between refits the heads also train by gradient with their members (fine-tuned
    members learn through them); the meta-learner is never trained by gradient. Out-of-fold
    is exact for frozen members; a fine-tuned backbone has seen every training row.
    """

    refits = True

    def __init__(
        self, widths: list[int], num_classes: int, dropout: float = 0.0, folds: int = 5, l2: float = 1e-3
    ) -> None:
        super().__init__()
        self.heads = nn.ModuleList(member_head(w, num_classes, dropout) for w in widths)
        self.meta = nn.Linear(len(widths) * num_classes, num_classes)
        with torch.no_grad():  # before the first refit: the mean of the members' log-probabilities
            self.meta.weight.copy_(torch.cat([torch.eye(num_classes)] * len(widths), dim=1) / len(widths))
            self.meta.bias.zero_()
        self.meta.requires_grad_(False)
        self.num_classes, self.folds, self.l2 = num_classes, folds, l2
        self.fused_width = sum(widths)

    def forward(self, features: list[Tensor]) -> FusionOutput:
        member_logits = [head(f) for head, f in zip(self.heads, features, strict=True)]
        stacked = torch.cat([member_scores(z.detach()) for z in member_logits], dim=-1)
        return FusionOutput(self.meta(stacked), member_logits, features=features)

    def refit(self, features: list[Tensor], labels: Tensor, class_weight: Tensor | None = None) -> None:
        fold = stratified_folds(labels, self.folds)
        out_of_fold = torch.zeros(len(labels), len(features) * self.num_classes)
        for k in range(self.folds):
            fit_rows, held = fold != k, fold == k
            for i, x in enumerate(features):
                weight, bias = fit_linear(x[fit_rows], labels[fit_rows], self.num_classes, self.l2, class_weight)
                columns = slice(i * self.num_classes, (i + 1) * self.num_classes)
                out_of_fold[held, columns] = member_scores(x[held] @ weight.T + bias)
        with torch.no_grad():
            for head, x in zip(self.heads, features, strict=True):
                weight, bias = fit_linear(x, labels, self.num_classes, self.l2, class_weight)
                head[-1].weight.copy_(weight)
                head[-1].bias.copy_(bias)
            weight, bias = fit_linear(out_of_fold, labels, self.num_classes, self.l2, class_weight)
            self.meta.weight.copy_(weight)
            self.meta.bias.copy_(bias)


def build_operator(kind: str, widths: list[int], num_classes: int, dropout: float, params: dict) -> FusionOperator:
    """Build the operator ``kind`` for members of ``widths``."""
    return OPERATORS.get(kind).factory(widths, num_classes, dropout=dropout, **params)
