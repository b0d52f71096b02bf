"""A weighted ensemble of composites: the champion when greedy selection beats the best trial.

It saves as ``ensemble.json`` (format, each composite's folder, weight and trial id)
plus one composite folder per member (JSON + safetensors + assets), so, like a
composite, it is rebuilt without unpickling anything. Its prediction is the
weighted average of its composites' class probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from trainables.composite import DESCRIPTION_FILE, CompositeModel, load_composite, save_composite
from trainables.preprocess import Column

ENSEMBLE_FILE = "ensemble.json"
FORMAT = "fusion-search/ensemble"
FORMAT_VERSION = 1


class WeightedEnsemble(nn.Module):
    """Composites whose probabilities are averaged with ``weights`` (non-negative, summing to 1)."""

    def __init__(self, composites: list[CompositeModel], weights: list[float], trials: list[str]) -> None:
        super().__init__()
        if not composites or len(composites) != len(weights) or len(trials) != len(weights):
            raise ValueError("an ensemble needs one weight and one trial id per composite")
        if min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"ensemble weights must be non-negative and sum to 1, got {weights}")
        self.composites = nn.ModuleList(composites)
        self.weights = [float(w) for w in weights]
        self.trials = list(trials)

    @property
    def input_kinds(self) -> dict[str, str]:
        kinds: dict[str, str] = {}
        for composite in self.composites:
            kinds.update(composite.input_kinds)
        return kinds

    def predict_raw(self, raw: dict[str, Column]) -> Tensor:
        """Weighted average of the composites' class probabilities for raw inputs."""
        parts = [w * c.predict_raw(raw) for c, w in zip(self.composites, self.weights, strict=True)]
        return torch.stack(parts).sum(dim=0)


def save_ensemble(ensemble: WeightedEnsemble, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (composite, weight, trial) in enumerate(zip(ensemble.composites, ensemble.weights, ensemble.trials, strict=True)):
        save_composite(composite, directory / f"member_{i}")
        entries.append({"path": f"member_{i}", "weight": weight, "trial": trial})
    text = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "members": entries}, indent=2)
    (directory / ENSEMBLE_FILE).write_text(text)


def load_ensemble(directory: str | Path) -> WeightedEnsemble:
    directory = Path(directory)
    raw = json.loads((directory / ENSEMBLE_FILE).read_text())
    if raw.get("format") != FORMAT or raw.get("version") != FORMAT_VERSION:
        raise ValueError(f"{directory / ENSEMBLE_FILE}: not a {FORMAT} v{FORMAT_VERSION} description")
    entries = raw["members"]
    composites = [load_composite(directory / e["path"]) for e in entries]
    return WeightedEnsemble(composites, [e["weight"] for e in entries], [e["trial"] for e in entries])


def load_predictor(directory: str | Path) -> "Predictor":
    """A saved composite or ensemble, whichever ``directory`` holds."""
    directory = Path(directory)
    if (directory / ENSEMBLE_FILE).exists():
        return load_ensemble(directory)
    if (directory / DESCRIPTION_FILE).exists():
        return load_composite(directory)
    raise ValueError(f"{directory}: holds neither {DESCRIPTION_FILE} nor {ENSEMBLE_FILE}")


Predictor = CompositeModel | WeightedEnsemble


def composites(model: Predictor) -> list[CompositeModel]:
    """The composites a predictor is made of (itself, for a composite)."""
    return [model] if isinstance(model, CompositeModel) else list(model.composites)


def saved_predictor(model_folder: str | Path) -> Predictor:
    """The composite or ensemble inside a downloaded pyfunc model folder (``fusion-search best``)."""
    artifacts = Path(model_folder) / "artifacts"
    for name in ("composite", "ensemble"):
        if (artifacts / name).is_dir():
            return load_predictor(artifacts / name)
    raise ValueError(f"{model_folder}: no composite or ensemble artifact")
