"""The composite model: members make features, one fusion operator fuses them.

A composite describes itself as JSON (``CompositeDescription``) and is rebuilt
from that JSON plus a safetensors file. Checkpoints, the champion artifact and the
pyfunc model all use this one path, so no pickled model object is ever loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.data import InputDescription
from trainables.fusion import FusionOutput, build_operator
from trainables.members import Member, precomputed_member, run_member, seeded_member
from trainables.pipeline import EVAL_BATCH, Batches, MemberInput, SplitRows
from trainables.preprocess import Column

DESCRIPTION_FILE = "composite.json"
WEIGHTS_FILE = "model.safetensors"
ASSETS_DIR = "assets"
FORMAT = "fusion-search/composite"
FORMAT_VERSION = 2


@dataclass
class MemberDescription:
    """One member: its registered ``kind``, the input it reads, its parameters, training policy,
    learning-rate multiplier and the augmentation of its training images."""

    name: str
    kind: str
    input: str
    params: dict[str, Any] = field(default_factory=dict)
    policy: str = "full"
    lr_scale: float = 1.0
    augment: str = "none"


def fusion_words(members: list[str], operator: str) -> str:
    """Members and operator in words: ``cnn+mlp via weighted``."""
    return f"{'+'.join(members)} via {operator}"


@dataclass
class CompositeDescription:
    """Everything needed to rebuild a composite's architecture (weights come separately)."""

    members: list[MemberDescription]
    operator: str
    operator_params: dict[str, Any]
    num_classes: int  # none for a regression
    class_names: list[str]
    inputs: dict[str, InputDescription]
    dropout: float = 0.0
    target: list[float] | None = None  # a regression: the training targets' mean and standard deviation

    @property
    def outputs(self) -> int:
        """The fused output's width: the classes, or one value (a regression, standardised by ``target``)."""
        return 1 if self.target is not None else self.num_classes

    @property
    def fusion(self) -> str:
        """What it fuses and how, in words: ``cnn+mlp via weighted``, or ``cnn alone`` (one member
        fused by ``weighted``, the identity)."""
        if self.single is not None and self.operator == "weighted":
            return f"{self.single} alone"
        return fusion_words([m.name for m in self.members], self.operator)

    @property
    def single(self) -> str | None:
        """The member, when the composite has one (a member alone, whatever head it has)."""
        return self.members[0].name if len(self.members) == 1 else None

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **asdict(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "CompositeDescription":
        raw = dict(raw)
        raw["members"] = [MemberDescription(**m) for m in raw["members"]]
        raw["inputs"] = {k: InputDescription(**v) for k, v in raw["inputs"].items()}
        return cls(**raw)

    @classmethod
    def from_json(cls, text: str) -> "CompositeDescription":
        raw = json.loads(text)
        if raw.pop("format", None) != FORMAT or raw.pop("version", None) != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} description")
        return cls.from_dict(raw)


class CompositeModel(nn.Module):
    """Members -> features -> fusion operator -> logits.

    ``pretrained=False`` builds the architecture only (``load_composite`` then loads every
    weight); ``assets`` is the folder of saved member assets (tokenizers) for such a rebuild.
    ``precomputed`` (member name -> feature width) names frozen members whose features the
    batches bring (from the feature cache): they are width-only stand-ins, with no backbone.
    ``seed`` fixes every initial weight: each member's from (seed, its name), so a frozen
    member without pretrained weights is the same module in every trial and in the cache.
    ``built`` (position -> member) gives members already built and loaded, used as they are.
    """

    def __init__(
        self,
        description: CompositeDescription,
        member_weights: dict[str, Path] | None = None,
        pretrained: bool = True,
        assets: Path | None = None,
        precomputed: dict[str, int] | None = None,
        seed: int = 0,
        built: dict[int, Member] | None = None,
    ) -> None:
        super().__init__()
        self.description = description
        self.backbone_rows = 0
        weights = member_weights or {}
        members = []
        for j, m in enumerate(description.members):
            if built and j in built:
                members.append(built[j])
                continue
            if precomputed and m.name in precomputed:
                members.append(precomputed_member(m.name, m.input, precomputed[m.name]))
                continue
            source = description.inputs[m.input]
            saved = assets / m.name if assets is not None and (assets / m.name).is_dir() else None
            context = source.context(pretrained, saved)
            members.append(seeded_member(seed, m.name, m.kind, m.input, context, m.params, m.policy, weights.get(m.name)))
        self.members = nn.ModuleList(members)
        torch.manual_seed(seed)  # the fusion's initial weights do not depend on which members were built
        self.fusion = build_operator(
            description.operator,
            [member.width for member in self.members],
            description.outputs,
            description.dropout,
            description.operator_params,
        )

    @property
    def served_inputs(self) -> dict[str, InputDescription]:
        """The inputs the members read (what a served model is given), described."""
        return {m.input: self.description.inputs[m.input] for m in self.description.members}

    def predict_raw(self, raw: dict[str, Column]) -> Tensor:
        """Class probabilities (or values) for raw inputs (what the pyfunc model serves), a batch at a time."""
        return mixed_prediction([self], [1.0], raw)

    @torch.no_grad()
    def predict_features(self, features: list[Tensor]) -> Tensor:
        """Class probabilities (or values) from the members' features of one batch (in member order),
        in evaluation mode, on the CPU."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        predicted = self.outputs(self.fusion([f.to(device) for f in features]).logits)
        self.train(was_training)
        return predicted

    def member_inputs(self, served: Any) -> list[MemberInput]:
        """How batches bring each member's input, for members whose features ``served`` does not name;
        a member that trains gets its augmentation (applied to training batches only)."""
        augments = {m.name: m.augment for m in self.description.members}
        return [
            MemberInput(m.name, m.input_key, m.preprocess, "none" if m.frozen else augments[m.name])
            for m in self.members
            if m.name not in served
        ]

    def forward(self, batch: dict[str, Tensor]) -> FusionOutput:
        return self.fusion([member(batch) for member in self.members])

    @torch.no_grad()
    def predict_batch(self, batch: dict[str, Tensor]) -> Tensor:
        """Class probabilities (a regression: values, rows x 1) for one prepared batch, in evaluation
        mode, on the CPU."""
        was_training = self.training
        self.eval()
        predicted = self.outputs(self(batch).logits)
        self.train(was_training)
        return predicted

    def outputs(self, logits: Tensor) -> Tensor:
        """What the fused logits predict, on the CPU: class probabilities, or a regression's values."""
        logits = logits.float()
        target = self.description.target
        return (F.softmax(logits, dim=-1) if target is None else logits * target[1] + target[0]).cpu()

    def training_targets(self, labels: Tensor) -> Tensor:
        """What the fused output is trained towards: class ids, or standardised regression targets."""
        target = self.description.target
        return labels if target is None else (labels.float() - target[0]) / target[1]

    def member_features(self, batch: dict[str, Tensor], members: list[Member]) -> list[Tensor]:
        """Features of ``members`` for one prepared batch, in evaluation mode, on the CPU."""
        return [run_member(member, batch).float() for member in members]

    def loss(self, out: FusionOutput, labels: Tensor, weight: Tensor | None = None, regression_loss: str = "mse") -> Tensor:
        """``fusion_loss`` towards ``labels`` (class ids or probabilities, or regression targets)."""
        return fusion_loss(out, self.training_targets(labels), weight, regression_loss)


def mixed_prediction(composites: list[CompositeModel], weights: list[float], raw: dict[str, Column]) -> Tensor:
    """The ``weights``-weighted sum of the composites' predictions for raw inputs, a batch of rows at
    a time; a member module several composites share (the same frozen backbone) is prepared and run
    once per batch, by the first composite that has it."""
    seen: set[int] = set()
    own: list[list[Member]] = []  # each composite's members that no composite before it has
    for composite in composites:
        own.append([m for m in composite.members if id(m) not in seen])
        seen.update(id(m) for m in composite.members)
    prepared = [
        SplitRows(raw, None, [i for i, m in zip(c.member_inputs(()), c.members, strict=True) if m in mine], {})
        for c, mine in zip(composites, own, strict=True)
    ]
    rows = len(next(iter(raw.values())))
    parts = []
    for _, batch in Batches(rows, EVAL_BATCH):
        computed: dict[int, Tensor] = {}
        mixed = torch.zeros(len(batch), composites[0].description.outputs)
        for composite, weight, mine, split_rows in zip(composites, weights, own, prepared, strict=True):
            device = next(composite.parameters()).device
            inputs = {k: v.to(device) for k, v in split_rows[0, batch].items()}
            computed.update({id(m): run_member(m, inputs) for m in mine})
            mixed += weight * composite.predict_features([computed[id(m)] for m in composite.members])
        parts.append(mixed)
    return torch.cat(parts) if parts else torch.empty(0, composites[0].description.outputs)


REGRESSION_LOSSES = ("mse", "huber")


def fusion_loss(out: FusionOutput, targets: Tensor, weight: Tensor | None = None, regression_loss: str = "mse") -> Tensor:
    """Cross-entropy of the fused logits (each class's rows weighted by ``weight``), or for one output
    (a regression) the squared error of the standardised value (``huber``: Huber's loss, quadratic
    within one standard deviation of the target, linear beyond), plus the operator's own training terms."""

    def term(z: Tensor) -> Tensor:
        if z.shape[1] > 1:
            return F.cross_entropy(z, targets, weight=weight)
        value, target = z[:, 0].float(), targets.float()
        return F.huber_loss(value, target, delta=1.0) if regression_loss == "huber" else F.mse_loss(value, target)

    loss = term(out.logits)
    if out.member_logits:
        loss = loss + torch.stack([term(z) for z in out.member_logits]).mean()
    if out.extra_loss is not None:
        loss = loss + out.extra_loss
    return loss


CLASS_WEIGHTS = ("none", "balanced")


def class_weights(policy: str, labels: Tensor, classes: int) -> Tensor | None:
    """The loss's class weights: none, or ``balanced`` (scikit-learn's: rows / (classes x the
    class's rows), from the training labels)."""
    if policy == "none":
        return None
    counts = torch.bincount(labels, minlength=classes).clamp(min=1).float()
    return len(labels) / (classes * counts)


def fixed_keys(model: CompositeModel) -> set[str]:
    """State keys training never changes: every weight of a frozen member and the parameters of
    the blocks a ``last_N`` member keeps fixed. They are the pretrained weights (or, for a member
    built from scratch, fixed by the seed), so the model rebuilds them from its description."""
    keys = set()
    for i, member in enumerate(model.members):
        prefix = f"members.{i}."
        if member.frozen:
            keys.update(prefix + k for k in member.state_dict())
        else:
            keys.update(prefix + k for k, p in member.named_parameters() if not p.requires_grad)
    return keys


def trained_state(model: CompositeModel) -> dict[str, Tensor]:
    """A copy of the weights training can change (all but ``fixed_keys``): what checkpoints keep,
    so a frozen MiniLM adds nothing to a checkpoint and one tuned on its last layer adds that layer."""
    fixed = fixed_keys(model)
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k not in fixed}


def load_trained_state(model: CompositeModel, state: dict[str, Tensor]) -> None:
    """Load weights saved by ``trained_state``; only ``fixed_keys`` may be absent."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensors of the wrong shape
        raise ValueError(f"trained weights do not fit the composite: {str(error).splitlines()[-1].strip()}") from None
    fixed = fixed_keys(model)
    missing = [k for k in missing if k not in fixed]
    if missing or unexpected:
        raise ValueError(f"trained weights do not fit the composite: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")


def save_composite(model: CompositeModel, directory: Path, state: dict[str, Tensor] | None = None) -> None:
    """Write ``composite.json``, ``model.safetensors`` and member assets (tokenizers) into ``directory``.

    ``state`` writes only those weights (an ensemble keeps its members' weights elsewhere, once).
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DESCRIPTION_FILE).write_text(model.description.to_json())
    if state is None:
        save_model(model, str(directory / WEIGHTS_FILE))
    else:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(directory / WEIGHTS_FILE))
    for member in model.members:
        if member.save_assets is not None:
            member.save_assets(directory / ASSETS_DIR / member.name)


def read_description(directory: Path) -> CompositeDescription:
    return CompositeDescription.from_json((directory / DESCRIPTION_FILE).read_text())


def load_composite(directory: str | Path, extra: dict[str, Tensor] | None = None, built: dict[int, Member] | None = None) -> CompositeModel:
    """Rebuild a composite saved by ``save_composite`` (the champion artifact too); ``extra``
    supplies the weights that were saved elsewhere; ``built``, members already loaded (by position),
    used as they are."""
    directory = Path(directory)
    model = CompositeModel(read_description(directory), pretrained=False, assets=directory / ASSETS_DIR, built=built)
    state = {**load_file(str(directory / WEIGHTS_FILE)), **(extra or {})}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensors of the wrong shape
        raise ValueError(f"{directory / WEIGHTS_FILE} does not match {DESCRIPTION_FILE}: {error}") from None
    given = tuple(f"members.{j}." for j in built or {})
    missing = [k for k in missing if not k.startswith(given)]
    if missing or unexpected:
        raise ValueError(
            f"{directory / WEIGHTS_FILE} does not match {DESCRIPTION_FILE}: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    model.eval()
    return model
