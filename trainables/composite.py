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
from safetensors.torch import load_model, save_model
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.fusion import FusionOutput, build_operator
from trainables.members import build_member

DESCRIPTION_FILE = "composite.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "fusion-search/composite"
FORMAT_VERSION = 1


@dataclass
class MemberDescription:
    """One member: its registered ``kind``, the input it reads and its parameters."""

    name: str
    kind: str
    input: str
    params: dict[str, Any] = field(default_factory=dict)
    frozen: bool = False


@dataclass
class CompositeDescription:
    """Everything needed to rebuild a composite's architecture (weights come separately)."""

    members: list[MemberDescription]
    operator: str
    operator_params: dict[str, Any]
    num_classes: int
    class_names: list[str]
    input_shapes: dict[str, list[int]]
    dropout: float = 0.0

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **asdict(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CompositeDescription":
        raw = json.loads(text)
        if raw.pop("format", None) != FORMAT or raw.pop("version", None) != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} description")
        raw["members"] = [MemberDescription(**m) for m in raw["members"]]
        return cls(**raw)


class CompositeModel(nn.Module):
    """Members -> features -> fusion operator -> logits."""

    def __init__(self, description: CompositeDescription, member_weights: dict[str, Path] | None = None) -> None:
        super().__init__()
        self.description = description
        weights = member_weights or {}
        self.members = nn.ModuleList(
            build_member(
                m.name,
                m.kind,
                m.input,
                tuple(description.input_shapes[m.input]),
                m.params,
                frozen=m.frozen,
                weights=weights.get(m.name),
            )
            for m in description.members
        )
        self.fusion = build_operator(
            description.operator,
            [member.width for member in self.members],
            description.num_classes,
            description.dropout,
            description.operator_params,
        )

    def forward(self, batch: dict[str, Tensor]) -> FusionOutput:
        return self.fusion([member(batch) for member in self.members])

    @staticmethod
    def loss(out: FusionOutput, targets: Tensor) -> Tensor:
        """Cross-entropy of the fused logits, plus the operator's own training terms."""
        loss = F.cross_entropy(out.logits, targets)
        if out.member_logits:
            loss = loss + torch.stack([F.cross_entropy(z, targets) for z in out.member_logits]).mean()
        if out.extra_loss is not None:
            loss = loss + out.extra_loss
        return loss

    @torch.no_grad()
    def predict_proba(self, inputs: dict[str, Tensor], batch_size: int = 512) -> Tensor:
        """Class probabilities for every row of ``inputs``, in evaluation mode."""
        was_training = self.training
        self.eval()
        n = next(iter(inputs.values())).shape[0]
        parts = [
            F.softmax(self({k: v[i : i + batch_size] for k, v in inputs.items()}).logits, dim=-1)
            for i in range(0, n, batch_size)
        ]
        self.train(was_training)
        return torch.cat(parts) if parts else torch.empty(0, self.description.num_classes)


def save_composite(model: CompositeModel, directory: Path) -> None:
    """Write ``composite.json`` and ``model.safetensors`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DESCRIPTION_FILE).write_text(model.description.to_json())
    save_model(model, str(directory / WEIGHTS_FILE))


def load_composite(directory: str | Path) -> CompositeModel:
    """Rebuild a composite saved by ``save_composite`` (the champion artifact too)."""
    directory = Path(directory)
    description = CompositeDescription.from_json((directory / DESCRIPTION_FILE).read_text())
    model = CompositeModel(description)
    try:
        missing, unexpected = load_model(model, str(directory / WEIGHTS_FILE), strict=False)
    except RuntimeError as error:  # tensors of the wrong shape
        raise ValueError(f"{directory / WEIGHTS_FILE} does not match {DESCRIPTION_FILE}: {error}") from None
    if missing or unexpected:
        raise ValueError(
            f"{directory / WEIGHTS_FILE} does not match {DESCRIPTION_FILE}: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    model.eval()
    return model
