"""Train one composite: the loop every trial, baseline and test shares.

``TrialPlan`` is what a trial needs beyond the data: the composite's description,
the hyperparameters, the numeric precision and the seed. It is plain JSON so it
travels in a Tune config and is logged as it is. Batches stream from the split's rows
(``SplitFeed``, ``trainables.pipeline``): nothing holds a decoded split, only frozen
members' feature vectors. Training is deterministic on CPU: each epoch's order,
augmentation and dropout are seeded from (seed, epoch), so a trial resumed from a
checkpoint continues exactly as it would have.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from trainables.adaptation import NONE, Adapter
from trainables.composite import CompositeDescription, CompositeModel, class_weights, load_trained_state, trained_state
from trainables.data import ADAPT, Dataset, Split
from trainables.feature_cache import CachedMember
from trainables.fusion import MIXING_LR, FusionOutput
from trainables.metrics import QUALITY_METRICS, Direction, quality_metrics
from trainables.precision import autocast_dtype, pick_device
from trainables.pipeline import EVAL_BATCH, LABELS, ArrayRows, Batches, FeatureRows, SplitRows, loader



@dataclass
class TrialPlan:
    composite: CompositeDescription
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    seed: int
    member_weights: dict[str, str] = field(default_factory=dict)
    precision: str = "auto"
    class_weight: str = "none"  # or "balanced": each class's loss weighted by rows / (classes x its rows)
    loss: str = "mse"  # a regression's: mse or huber
    adaptation: str = NONE  # a domain adaptation term (``trainables.adaptation``) on the data's target rows
    adaptation_weight: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrialPlan":
        return cls(**{**raw, "composite": CompositeDescription.from_dict(raw["composite"])})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Runtime:
    """Where and how a composite computes: its device, the autocast dtype, and the loader's worker processes."""

    device: torch.device
    dtype: torch.dtype | None = None
    workers: int = 0

    @classmethod
    def for_plan(cls, plan: TrialPlan, workers: int = 0) -> "Runtime":
        device = pick_device()
        return cls(device, autocast_dtype(plan.precision, device), workers)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def place(self, model: CompositeModel) -> CompositeModel:
        """``model`` on the device; convolutions in channels-last layout on a GPU."""
        model.to(self.device)
        if self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        return model

    def batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """A batch on the device (non-blocking from pinned memory); images channels-last on a GPU."""
        if self.device.type != "cuda":
            return batch
        moved = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 and v.is_floating_point() else v for k, v in moved.items()}


def build_model(plan: TrialPlan, precomputed: dict[str, int] | None = None) -> CompositeModel:
    """The composite of ``plan``, seeded; members named in ``precomputed`` (name -> width) as stand-ins."""
    seed_everything(plan.seed)
    weights = {name: Path(path) for name, path in plan.member_weights.items()}
    return CompositeModel(plan.composite, member_weights=weights, precomputed=precomputed, seed=plan.seed)


def frozen_features(plan: TrialPlan, features: dict[str, CachedMember] | None) -> dict[str, CachedMember]:
    """The cached features ``plan`` can use: those of members it keeps frozen."""
    frozen = {m.name for m in plan.composite.members if m.policy == "frozen"}
    return {name: f for name, f in (features or {}).items() if name in frozen}


def build_adapter(model: CompositeModel, plan: TrialPlan) -> Adapter | None:
    """The plan's adaptation term for ``model``'s fused features, seeded; None without one."""
    if plan.adaptation == NONE:
        return None
    torch.manual_seed(plan.seed + 1)
    return Adapter(plan.adaptation, plan.adaptation_weight, model.fusion.fused_width)


def build_optimizer(model: CompositeModel, plan: TrialPlan, adapter: Adapter | None = None) -> torch.optim.Optimizer:
    """AdamW with one parameter group per member that trains (its ``lr_scale`` applied), one for the
    fusion, one for the fusion's mixing logits (``MIXING_LR``, no weight decay) and, when the
    ``adapter`` has any (a domain classifier), one for its parameters."""
    groups = []
    for member, description in zip(model.members, plan.composite.members, strict=True):
        params = [p for p in member.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": plan.lr * description.lr_scale})
    mixing = {id(p) for p in model.fusion.mixing_parameters()}
    groups.append({"params": [p for p in model.fusion.parameters() if p.requires_grad and id(p) not in mixing], "lr": plan.lr})
    if mixing:
        groups.append({"params": model.fusion.mixing_parameters(), "lr": MIXING_LR, "weight_decay": 0.0})
    if adapter is not None and any(True for _ in adapter.parameters()):
        groups.append({"params": list(adapter.parameters()), "lr": plan.lr})
    return torch.optim.AdamW(groups, lr=plan.lr, weight_decay=plan.weight_decay)


def complete_features(model: CompositeModel, split: Split, cached: dict[str, FeatureRows], runtime: Runtime) -> dict[str, FeatureRows]:
    """Every frozen member's features for ``split``: from the cache, or (with no cache) each frozen
    backbone run once over the split here, its features kept in memory."""
    features = dict(cached)
    frozen = [m for m in model.members if m.frozen and m.name not in features]
    if frozen:
        names = {m.name for m in frozen}
        inputs = [i for i in model.member_inputs(features) if i.name in names]
        ordered = loader(SplitRows(split.inputs, None, inputs, {}), Batches(len(split), EVAL_BATCH), runtime.workers)
        computed = features_of(model, frozen, ordered, runtime)
        features.update({m.name: ArrayRows(f.numpy()) for m, f in zip(frozen, computed, strict=True)})
        model.backbone_rows += len(split) * len(frozen)
    return features


class SplitFeed:
    """One split as a model reads it, streamed: frozen members' ``features`` gathered by row, every
    other member's input prepared per batch; training batches are shuffled and augmented from (seed, epoch).
    ``targets`` (rows x classes probabilities) go in the batches in place of the labels (distillation)."""

    def __init__(
        self, model: CompositeModel, split: Split, features: dict[str, FeatureRows], runtime: Runtime,
        batch_size: int = EVAL_BATCH, seed: int = 0, train: bool = False, targets: Tensor | None = None,
    ) -> None:
        self.runtime = runtime
        self.labels = split.labels
        self.batches = Batches(len(split), batch_size, seed, shuffle=train)
        batch_targets = split.labels if targets is None else targets
        rows = SplitRows(split.inputs, batch_targets, model.member_inputs(features), features, seed, train)
        self.loader = loader(rows, self.batches, runtime.workers, pin_memory=runtime.device.type == "cuda")

    def epoch(self, epoch: int = 0) -> Iterator[dict[str, Tensor]]:
        """The batches of ``epoch``, on the model's device."""
        self.batches.epoch = epoch
        return (self.runtime.batch(batch) for batch in self.loader)


def features_of(model: CompositeModel, members: list[Any], batches: Iterable[dict[str, Tensor]], runtime: Runtime) -> list[Tensor]:
    """Features of ``members`` for every batch of ``batches``, in order, on the CPU."""
    parts: list[list[Tensor]] = [[] for _ in members]
    for batch in batches:
        batch = runtime.batch(batch)
        with runtime.autocast():
            for part, features in zip(parts, model.member_features(batch, members), strict=True):
                part.append(features.float().cpu())
    return [torch.cat(p) for p in parts]


@dataclass
class Adaptation:
    """What a trial adapts with: the term (``Adapter``) and the feed of unlabelled target rows."""

    adapter: Adapter
    target: SplitFeed

    def term(self, model: CompositeModel, source: FusionOutput, target_batches: Iterator[dict[str, Tensor]]) -> Tensor:
        """The weighted term between a source batch's fused features and the next target batch's."""
        return self.adapter(source.fused, model(next(target_batches)).fused)

    def batches(self, epoch: int) -> Iterator[dict[str, Tensor]]:
        """Target batches without end for ``epoch``: the target rows in an order fixed by (seed,
        epoch), again in a new order each time they run out."""
        for rerun in itertools.count():
            for batch in self.target.epoch(epoch * 1_000 + rerun):
                batch.pop(LABELS)
                yield batch


def train_epoch(
    model: CompositeModel, optimizer: torch.optim.Optimizer, feed: SplitFeed, plan: TrialPlan, epoch: int,
    scaler: torch.amp.GradScaler, weight: Tensor | None = None, adaptation: Adaptation | None = None,
) -> float:
    """One pass over the training feed in an order fixed by (seed, epoch); returns the mean loss.
    With ``adaptation``, each source batch is paired with a target batch and the term between their
    fused features is added to the loss."""
    torch.manual_seed(plan.seed * 1_000_003 + epoch)  # dropout
    model.train()
    total, seen = 0.0, 0
    target_batches = adaptation.batches(epoch) if adaptation is not None else None
    for batch in feed.epoch(epoch):
        targets = batch.pop(LABELS)
        with feed.runtime.autocast():
            out = model(batch)
            loss = model.loss(out, targets, weight, plan.loss)
            if adaptation is not None:
                loss = loss + adaptation.term(model, out, target_batches)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.detach()) * len(targets)
        seen += len(targets)
    return total / max(seen, 1)


def predict_feed(model: CompositeModel, feed: SplitFeed) -> Tensor:
    """Class probabilities (a regression: values) for every row of ``feed``, on the CPU."""
    parts = []
    for batch in feed.epoch():
        batch.pop(LABELS, None)
        with feed.runtime.autocast():
            parts.append(model.predict_batch(batch))
    return torch.cat(parts) if parts else torch.empty(0, model.description.outputs)


def cached_rows(cached: dict[str, CachedMember], split: str) -> dict[str, FeatureRows]:
    """One split's cached features, by member name (memory-mapped, not read into memory)."""
    return {name: member.rows(split) for name, member in cached.items()}


def split_feed(
    model: CompositeModel, plan: TrialPlan, data: Dataset, split: str, features: dict[str, CachedMember] | None, workers: int = 0
) -> SplitFeed:
    """``data``'s ``split`` in order as ``model`` (placed on its device) reads it; the features of
    members ``plan`` keeps frozen come from the cache when ``features`` has them."""
    runtime = Runtime.for_plan(plan, workers)
    runtime.place(model)
    rows = data.splits[split]
    return SplitFeed(model, rows, complete_features(model, rows, cached_rows(frozen_features(plan, features), split), runtime), runtime)


def predict_split(
    model: CompositeModel, plan: TrialPlan, data: Dataset, split: str, features: dict[str, CachedMember] | None, workers: int = 0
) -> Tensor:
    """Class probabilities on ``data``'s ``split`` (``split_feed``)."""
    return predict_feed(model, split_feed(model, plan, data, split, features, workers))


@torch.no_grad()
def fused_split(model: CompositeModel, plan: TrialPlan, data: Dataset, split: str, features: dict[str, CachedMember] | None) -> Tensor:
    """The fused features (``FusionOutput.fused``) of every row of ``data``'s ``split``, in evaluation mode, on the CPU."""
    feed = split_feed(model, plan, data, split, features)
    model.eval()
    parts = []
    for batch in feed.epoch():
        batch.pop(LABELS, None)
        with feed.runtime.autocast():
            parts.append(model(batch).fused.float().cpu())
    return torch.cat(parts)


class BestWeights:
    """The best value of the objective so far, the trained weights that reached it, their predictions
    and every validation metric at that epoch."""

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.direction = metric, Direction(mode)
        self.value = self.direction.worst
        self.epoch = 0
        self.metrics: dict[str, float] = {}
        self.state: dict[str, torch.Tensor] = {}
        self.predictions: dict[str, Tensor] = {}

    def update(self, epoch: int, metrics: dict[str, float], model: CompositeModel) -> bool:
        """Keep ``model``'s weights if ``metrics`` beat the best so far; returns whether they did."""
        value = metrics[self.metric]
        if not self.direction.better(value, self.value):
            return False
        self.value, self.epoch = value, epoch
        self.metrics = {name: metrics[name] for name in QUALITY_METRICS if name in metrics}
        self.state = trained_state(model)
        return True


@dataclass
class EpochOutputs:
    """An epoch's predictions: validation probabilities, and test probabilities on demand; and the
    adaptation term training used (a checkpoint keeps its domain classifier)."""

    val: Tensor
    predict_test: Callable[[], Tensor]
    adapter: Adapter | None = None


EpochCallback = Callable[[int, dict[str, float], CompositeModel, torch.optim.Optimizer, EpochOutputs], None]


def fit(
    plan: TrialPlan,
    data: Dataset,
    on_epoch: EpochCallback | None = None,
    model: CompositeModel | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    start_epoch: int = 1,
    features: dict[str, CachedMember] | None = None,
    workers: int = 0,
    targets: Tensor | None = None,
    adapter: Adapter | None = None,
) -> CompositeModel:
    """Train ``plan`` for epochs ``start_epoch..plan.epochs``, evaluating on val after each.

    ``on_epoch(epoch, metrics, model, optimizer, outputs)`` sees every epoch's metrics and
    predictions (it reports and checkpoints in a trial). Pass ``model`` and ``optimizer`` to
    resume. ``features`` are cached frozen-member features (a model built without ``model``
    then has stand-ins for those members). ``workers``: loader processes that prepare batches.
    ``targets``: soft targets of the training rows (rows x classes) to train on instead of the labels.
    ``adapter``: the plan's adaptation term with its state, to resume (else built from the plan).
    """
    cached = frozen_features(plan, features)
    runtime = Runtime.for_plan(plan, workers)
    model = runtime.place(model or build_model(plan, {name: f.width for name, f in cached.items()}))
    adapter = adapter or build_adapter(model, plan)
    if adapter is not None:
        adapter.to(runtime.device)
    optimizer = optimizer or build_optimizer(model, plan, adapter)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.dtype == torch.float16)

    features: dict[str, dict[str, FeatureRows]] = {}  # by split, computed on first use

    def feed(split: str, **options: Any) -> SplitFeed:
        rows = data.splits[split]
        if split not in features:
            features[split] = complete_features(model, rows, cached_rows(cached, split), runtime)
        return SplitFeed(model, rows, features[split], runtime, **options)

    train = feed("train", batch_size=plan.batch_size, seed=plan.seed, train=True, targets=targets)
    balance = None if plan.composite.target is not None else class_weights(plan.class_weight, data.splits["train"].labels, plan.composite.num_classes)  # on the CPU, for refits
    weight = None if balance is None else balance.to(runtime.device)
    val = feed("val")
    adaptation = None if adapter is None else Adaptation(adapter, feed(ADAPT, batch_size=plan.batch_size, seed=plan.seed + 1, train=True))
    lazy: dict[str, SplitFeed] = {}  # the test split, and the training split in order (to refit), on first use

    def predict_test() -> Tensor:
        return predict_feed(model, lazy.setdefault("test", feed("test")))

    for epoch in range(start_epoch, plan.epochs + 1):
        started = time.perf_counter()
        train_loss = train_epoch(model, optimizer, train, plan, epoch, scaler, weight, adaptation)
        if model.fusion.refits:
            ordered = lazy.setdefault("train", feed("train"))
            labels = model.training_targets(data.splits["train"].labels)
            model.fusion.refit(features_of(model, list(model.members), ordered.epoch(), runtime), labels, balance)
        trained = time.perf_counter()
        val_proba = predict_feed(model, val)
        metrics = {"epoch": epoch, "train_loss": train_loss, **quality_metrics(val_proba, val.labels, "val")}
        metrics.update(train_time_s=trained - started, eval_time_s=time.perf_counter() - trained)
        if on_epoch is not None:
            on_epoch(epoch, metrics, model, optimizer, EpochOutputs(val_proba, predict_test, adapter))
    return model


def fit_best(
    plan: TrialPlan, data: Dataset, metric: str = "val_log_loss", mode: str = "min", features: dict[str, CachedMember] | None = None
) -> CompositeModel:
    """Train ``plan`` and return the model with the weights of its best epoch on ``metric``."""
    best = BestWeights(metric, mode)
    model = fit(plan, data, on_epoch=lambda epoch, metrics, m, *_: best.update(epoch, metrics, m), features=features)
    load_trained_state(model, best.state)
    return model.eval()
