"""Train one composite: the loop every trial, baseline and test shares.

``TrialPlan`` is what a trial needs beyond the data: the composite's description,
the hyperparameters and the seed. It is plain JSON so it travels in a Tune config
and is logged as it is. Training is deterministic on CPU: each epoch's shuffling
and dropout are seeded from (seed, epoch), so a trial resumed from a checkpoint
continues exactly as it would have.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from trainables.composite import CompositeDescription, CompositeModel, load_trained_state, trained_state
from trainables.data import Dataset, Split
from trainables.feature_cache import CachedMember
from trainables.metrics import classification_metrics


@dataclass
class TrialPlan:
    composite: CompositeDescription
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    seed: int
    member_weights: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrialPlan":
        return cls(**{**raw, "composite": CompositeDescription.from_dict(raw["composite"])})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    """CUDA when Ray gave this process a GPU (it sets CUDA_VISIBLE_DEVICES), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(plan: TrialPlan, precomputed: dict[str, int] | None = None) -> CompositeModel:
    """The composite of ``plan``, seeded; members named in ``precomputed`` (name -> width) as stand-ins."""
    seed_everything(plan.seed)
    weights = {name: Path(path) for name, path in plan.member_weights.items()}
    return CompositeModel(plan.composite, member_weights=weights, precomputed=precomputed, seed=plan.seed)


def frozen_features(plan: TrialPlan, features: dict[str, CachedMember] | None) -> dict[str, CachedMember]:
    """The cached features ``plan`` can use: those of members it keeps frozen."""
    frozen = {m.name for m in plan.composite.members if m.policy == "frozen"}
    return {name: f for name, f in (features or {}).items() if name in frozen}


def build_optimizer(model: CompositeModel, plan: TrialPlan) -> torch.optim.Optimizer:
    """AdamW with one parameter group per member that trains (its ``lr_scale`` applied) and one for the fusion."""
    groups = []
    for member, description in zip(model.members, plan.composite.members, strict=True):
        params = [p for p in member.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": plan.lr * description.lr_scale})
    groups.append({"params": [p for p in model.fusion.parameters() if p.requires_grad], "lr": plan.lr})
    return torch.optim.AdamW(groups, lr=plan.lr, weight_decay=plan.weight_decay)


def to_device(inputs: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


def train_epoch(
    model: CompositeModel, optimizer: torch.optim.Optimizer, split: Split, plan: TrialPlan, epoch: int
) -> float:
    """One pass over ``split`` in an order fixed by (seed, epoch); returns the mean loss."""
    device = next(model.parameters()).device
    torch.manual_seed(plan.seed * 1_000_003 + epoch)  # dropout
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(plan.seed * 7919 + epoch))
    model.train()
    total, seen = 0.0, 0
    for start in range(0, len(split), plan.batch_size):
        rows = order[start : start + plan.batch_size]
        if len(rows) < 2 and seen:  # a batch of one breaks batch norm; its row recurs next epoch
            continue
        inputs = to_device({k: v[rows] for k, v in split.inputs.items()}, device)
        targets = split.labels[rows].to(device)
        loss = model.loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(rows)
        seen += len(rows)
    return total / max(seen, 1)


def prepare_split(model: CompositeModel, split: Split, features: dict[str, Tensor] | None = None) -> Split:
    """``split`` as the members read it: every member's prepared input, frozen members' features
    taken from ``features`` (``<member>.features`` keys, from the cache) or computed once here."""
    given = features or {}
    inputs: dict[str, Tensor] = dict(given)
    for member in model.members:
        if member.features_key not in given:
            inputs.update(member.prepare(split.inputs))
    return Split(model.precompute_frozen(inputs), split.labels)


def split_features(cached: dict[str, CachedMember], split: str) -> dict[str, Tensor]:
    """One split's cached features as batch entries (``<member>.features``), read in place."""
    with warnings.catch_warnings():  # arrays from Ray's object store are read-only; nothing writes them
        warnings.simplefilter("ignore", UserWarning)
        return {f"{name}.features": torch.from_numpy(member.arrays()[split]) for name, member in cached.items()}


def predict_prepared(model: CompositeModel, prepared: Split) -> Tensor:
    """Class probabilities on an already prepared split, on the CPU."""
    device = next(model.parameters()).device
    return model.predict_proba(to_device(prepared.inputs, device)).cpu()


def predict(model: CompositeModel, split: Split, features: dict[str, Tensor] | None = None) -> Tensor:
    """Class probabilities on a raw ``split`` (frozen members' ``features`` given or computed), on the CPU."""
    return predict_prepared(model, prepare_split(model, split, features))


def predict_split(model: CompositeModel, plan: TrialPlan, data: Dataset, split: str, features: dict[str, CachedMember] | None) -> Tensor:
    """Class probabilities on ``data``'s ``split``; the features of members ``plan`` keeps frozen come
    from the cache when ``features`` has them."""
    return predict(model, data.splits[split], split_features(frozen_features(plan, features), split))


class BestWeights:
    """The best value of the objective so far, the trained weights that reached it and their predictions."""

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.mode = metric, mode
        self.value = math.inf if mode == "min" else -math.inf
        self.epoch = 0
        self.state: dict[str, torch.Tensor] = {}
        self.predictions: dict[str, Tensor] = {}

    def update(self, epoch: int, metrics: dict[str, float], model: CompositeModel) -> bool:
        """Keep ``model``'s weights if ``metrics`` beat the best so far; returns whether they did."""
        value = metrics[self.metric]
        if not ((value < self.value) if self.mode == "min" else (value > self.value)):
            return False
        self.value, self.epoch = value, epoch
        self.state = trained_state(model)
        return True


@dataclass
class EpochOutputs:
    """An epoch's predictions: validation probabilities, and test probabilities on demand."""

    val: Tensor
    predict_test: Callable[[], Tensor]


EpochCallback = Callable[[int, dict[str, float], CompositeModel, torch.optim.Optimizer, EpochOutputs], None]


def fit(
    plan: TrialPlan,
    data: Dataset,
    on_epoch: EpochCallback | None = None,
    model: CompositeModel | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    start_epoch: int = 1,
    features: dict[str, CachedMember] | None = None,
) -> CompositeModel:
    """Train ``plan`` for epochs ``start_epoch..plan.epochs``, evaluating on val after each.

    ``on_epoch(epoch, metrics, model, optimizer, outputs)`` sees every epoch's metrics and
    predictions (it reports and checkpoints in a trial). Pass ``model`` and ``optimizer`` to
    resume. ``features`` are cached frozen-member features (a model built without ``model``
    then has stand-ins for those members).
    """
    cached = frozen_features(plan, features)
    device = pick_device()
    model = (model or build_model(plan, {name: f.width for name, f in cached.items()})).to(device)
    optimizer = optimizer or build_optimizer(model, plan)
    train, val = (prepare_split(model, data.splits[name], split_features(cached, name)) for name in ("train", "val"))
    test: list[Split] = []  # prepared on first use

    def predict_test() -> Tensor:
        if not test:
            test.append(prepare_split(model, data.splits["test"], split_features(cached, "test")))
        return predict_prepared(model, test[0])

    for epoch in range(start_epoch, plan.epochs + 1):
        started = time.perf_counter()
        train_loss = train_epoch(model, optimizer, train, plan, epoch)
        model.refit(train.inputs, train.labels)
        trained = time.perf_counter()
        val_proba = predict_prepared(model, val)
        metrics = {"epoch": epoch, "train_loss": train_loss, **classification_metrics(val_proba, val.labels, "val")}
        metrics.update(train_time_s=trained - started, eval_time_s=time.perf_counter() - trained)
        if on_epoch is not None:
            on_epoch(epoch, metrics, model, optimizer, EpochOutputs(val_proba, predict_test))
    return model


def fit_best(
    plan: TrialPlan, data: Dataset, metric: str = "val_log_loss", mode: str = "min", features: dict[str, CachedMember] | None = None
) -> CompositeModel:
    """Train ``plan`` and return the model with the weights of its best epoch on ``metric``."""
    best = BestWeights(metric, mode)
    model = fit(plan, data, on_epoch=lambda epoch, metrics, m, *_: best.update(epoch, metrics, m), features=features)
    load_trained_state(model, best.state)
    return model.eval()
