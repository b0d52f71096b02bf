"""A weighted ensemble of composites: the champion when greedy selection beats the best trial.

It saves as ``ensemble.json`` (format, each composite's folder, weight, trial id and
members' weight files) plus one folder per composite (JSON, fusion weights, assets)
and each distinct member's weights once, so, like a composite, it is rebuilt
without unpickling anything, and trials sharing a frozen backbone store it once (and load it
as one module). Its prediction is the weighted average of its composites' class probabilities;
a member module they share runs once per batch of rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from trainables.composite import DESCRIPTION_FILE, CompositeDescription, CompositeModel, load_composite, mixed_prediction, read_description, save_composite
from trainables.data import InputDescription
from trainables.digest import module_digest
from trainables.preprocess import Column

ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"
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
    def served_inputs(self) -> dict[str, InputDescription]:
        inputs: dict[str, InputDescription] = {}
        for composite in self.composites:
            inputs.update(composite.served_inputs)
        return inputs

    def predict_raw(self, raw: dict[str, Column]) -> Tensor:
        """Weighted average of the composites' class probabilities for raw inputs; a member several
        composites share (one module: the same frozen backbone) runs once."""
        return mixed_prediction(list(self.composites), self.weights, raw)


def save_ensemble(ensemble: WeightedEnsemble, directory: Path) -> None:
    """One folder per composite (description, assets, fusion weights) and each distinct member's
    weights once, under ``members/<sha256>.safetensors``: trials that share a frozen backbone
    share its file."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MEMBERS_DIR).mkdir(exist_ok=True)
    entries = []
    written: dict[int, str] = {}  # each member module written, by id: composites may share one
    for i, (composite, weight, trial) in enumerate(zip(ensemble.composites, ensemble.weights, ensemble.trials, strict=True)):
        members = {}
        for j, member in enumerate(composite.members):
            if id(member) not in written:
                written[id(member)] = module_digest(member)
                path = directory / MEMBERS_DIR / f"{written[id(member)]}.safetensors"
                if not path.exists():
                    save_file({k: v.detach().cpu().contiguous().clone() for k, v in member.state_dict().items()}, str(path))
            members[str(j)] = written[id(member)]
        rest = {k: v for k, v in composite.state_dict().items() if not k.startswith("members.")}
        save_composite(composite, directory / f"composite_{i}", state=rest)
        entries.append({"path": f"composite_{i}", "weight": weight, "trial": trial, "members": members})
    text = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "composites": entries}, indent=2)
    (directory / ENSEMBLE_FILE).write_text(text)


def member_key(digest: str, description: CompositeDescription, position: int) -> str:
    """What makes two composites' members one module: the same weights, kind, parameters and input."""
    member = description.members[position]
    return json.dumps([digest, asdict(member), asdict(description.inputs[member.input])], sort_keys=True, default=str)


def load_ensemble(directory: str | Path) -> WeightedEnsemble:
    """Rebuild a saved ensemble; a member several composites share (the same frozen backbone) is
    built and loaded once, and one module serves them all, as when the ensemble was made."""
    directory = Path(directory)
    raw = json.loads((directory / ENSEMBLE_FILE).read_text())
    if raw.get("format") != FORMAT or raw.get("version") != FORMAT_VERSION:
        raise ValueError(f"{directory / ENSEMBLE_FILE}: not a {FORMAT} v{FORMAT_VERSION} description")
    composites = []
    loaded: dict[str, nn.Module] = {}  # each member module loaded so far, by ``member_key``
    for entry in raw["composites"]:
        description = read_description(directory / entry["path"])
        digests = {int(j): digest for j, digest in entry["members"].items()}
        keys = {j: member_key(digest, description, j) for j, digest in digests.items()}
        built = {j: loaded[key] for j, key in keys.items() if key in loaded}
        weights: dict[str, Tensor] = {}
        for j, digest in digests.items():
            if j not in built:
                weights.update({f"members.{j}.{k}": v for k, v in load_file(str(directory / MEMBERS_DIR / f"{digest}.safetensors")).items()})
        composite = load_composite(directory / entry["path"], extra=weights, built=built)
        loaded.update({key: composite.members[j] for j, key in keys.items()})
        composites.append(composite)
    entries = raw["composites"]
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
