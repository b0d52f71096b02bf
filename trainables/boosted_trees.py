"""The ``boosted_trees`` member: LightGBM gradient-boosted trees on a table's columns, whose class
log-probabilities (a regression: the standardised predicted value) are the member's features.

It is fitted once per search, before the first trial, on the training split (``fit_boosted``, which
the driver calls through the member kind's facts): once on every training row and once per fold
on the others. A training row's features come from the fold booster that did not see it
(out-of-fold), so a fusion learns how far to trust the trees from predictions like those it gets
on new rows; every other row (validation, test, a served one) gets the booster fitted on all. Each
fold's booster stops early on its held-out fold; the one fitted on all grows their mean number of trees.
The member knows its training rows by a digest of their values. Boosters are saved in LightGBM's
own text format and the folds as arrays: nothing is pickled. The member never trains by gradient
(its policy is ``frozen``), so the feature cache computes its features once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainables.members import Backbone, BuildContext, MemberFacts, needs_input, register_member
from trainables.preprocess import Column, Table, TablePrep, fit_table
from trainables.registry import FieldError

FOLDS_FILE = "folds.npz"
FIT_FILE = "fit.json"  # what was fitted, and how long it took
ALL = "all"
EARLY_STOP = 20  # rounds without improvement on the held-out fold before a fold's booster stops
MIN_PROBABILITY = 1e-6


def booster_file(name: str) -> str:
    return f"booster-{name}.txt"


def row_digests(table: Table) -> np.ndarray:
    """A 16-byte digest of each row's values (numbers and categories), as an ``S16`` array."""
    out = np.empty(len(table), dtype="S16")
    for i in range(len(table)):
        cells = json.dumps([None if c is None else str(c) for c in table.categories[i]]).encode()
        out[i] = hashlib.blake2b(table.numbers[i].tobytes() + cells, digest_size=16).digest()
    return out


def design_matrix(prepared: dict[str, Tensor]) -> np.ndarray:
    """What the boosters read: the prepared numbers (standardised, missing indicators) and the
    category indices, one float column each."""
    return torch.cat([prepared["numbers"], prepared["categories"].float()], dim=1).numpy()


class BoostedPrep:
    """A table prepared for the boosters, plus each row's fold: its out-of-fold booster for a training
    row, -1 (the booster fitted on all) for any other."""

    fields = ("numbers", "categories", "fold")

    def __init__(self, table: TablePrep, folds: dict[bytes, int]) -> None:
        self.table = table
        self.folds = folds

    def __call__(self, column: Column) -> dict[str, Tensor]:
        prepared = self.table(column)  # refuses anything but a table
        fold = [self.folds.get(bytes(d), -1) for d in row_digests(column)]
        return {**prepared, "fold": torch.tensor(fold, dtype=torch.long)}


class BoostedTrees(nn.Module):
    """Boosters as a module: each row's class log-probabilities (a regression: its standardised
    predicted value) from the booster its fold names."""

    def __init__(self, boosters: dict[int, Any], classes: int, target: list[float] | None) -> None:
        super().__init__()
        self.boosters = boosters  # -1: fitted on every training row; k: on all but fold k
        self.classes = classes
        self.target = target  # a regression's training targets' mean and standard deviation

    @property
    def width(self) -> int:
        return 1 if self.target is not None else self.classes

    def forward(self, numbers: Tensor, categories: Tensor, fold: Tensor) -> Tensor:
        matrix = design_matrix({"numbers": numbers.cpu(), "categories": categories.cpu()})
        folds = fold.cpu().numpy()
        out = np.zeros((len(matrix), self.width), dtype=np.float64)
        for k in np.unique(folds):
            rows = folds == k
            predicted = self.boosters[int(k) if int(k) in self.boosters else -1].predict(matrix[rows])
            if self.target is not None:
                out[rows, 0] = (predicted - self.target[0]) / self.target[1]
            else:
                out[rows] = np.stack([1.0 - predicted, predicted], axis=1) if predicted.ndim == 1 else predicted
        features = out if self.target is not None else np.log(np.clip(out, MIN_PROBABILITY, 1.0))
        return torch.from_numpy(features.astype(np.float32)).to(numbers.device)


def lightgbm_params(classes: int, num_leaves: int, learning_rate: float, min_leaf: int, seed: int) -> dict[str, Any]:
    """LightGBM's settings for ``classes`` classes (none: a regression)."""
    objectives = {0: {"objective": "regression"}, 2: {"objective": "binary"}}
    objective = objectives.get(classes, {"objective": "multiclass", "num_class": classes})
    return {
        **objective, "num_leaves": num_leaves, "learning_rate": learning_rate, "min_data_in_leaf": min_leaf,
        "min_data_per_group": min_leaf, "cat_smooth": 1.0, "max_cat_to_onehot": 8,  # categories on small tables too
        "seed": seed, "deterministic": True, "force_row_wise": True, "num_threads": 2, "verbose": -1,
    }


def fit_boosted(params: dict[str, Any], column: Column, labels: Tensor, classes: int, seed: int, folder: Path) -> dict[str, Any]:
    """Fit the member's boosters on the training split (``column``, ``labels``) into a folder under
    ``folder`` named by what they were fitted on (found again, not refitted, by a resumed or repeated
    search); returns the parameters that point the member at them."""
    import lightgbm
    from sklearn.model_selection import StratifiedKFold

    from trainables.data import strata  # here: trainables.data imports the member registry, which imports this module

    if not isinstance(column, Table):
        raise ValueError("boosted_trees reads a table input")
    settings = {k: params[k] for k in ("rounds", "num_leaves", "learning_rate", "min_leaf", "folds")}
    prepared = TablePrep.fitted(fit_table(column))(column)
    matrix, y = design_matrix(prepared), labels.numpy()
    key = hashlib.sha256(matrix.tobytes() + y.tobytes() + json.dumps([settings, classes, seed, lightgbm.__version__]).encode())
    target = folder / key.hexdigest()[:24]
    if (target / FIT_FILE).is_file():
        return {"fitted": str(target)}
    started = time.monotonic()
    fold = np.empty(len(y), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=settings["folds"], shuffle=True, random_state=seed)
    for k, (_, held_out) in enumerate(splitter.split(matrix, strata(y) if classes == 0 else y)):
        fold[held_out] = k
    categorical = list(range(prepared["numbers"].shape[1], matrix.shape[1]))
    train_params = lightgbm_params(classes, settings["num_leaves"], settings["learning_rate"], settings["min_leaf"], seed)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    best = []
    for k in range(settings["folds"]):  # each fold's booster stops where its held-out fold stops improving
        train = lightgbm.Dataset(matrix[fold != k], y[fold != k], categorical_feature=categorical)
        held_out = lightgbm.Dataset(matrix[fold == k], y[fold == k], categorical_feature=categorical, reference=train)
        booster = lightgbm.train(
            train_params, train, settings["rounds"], valid_sets=[held_out], callbacks=[lightgbm.early_stopping(EARLY_STOP, verbose=False)]
        )
        best.append(booster.best_iteration or settings["rounds"])
        booster.save_model(str(partial / booster_file(str(k))), num_iteration=best[-1])
    rounds = max(1, round(float(np.mean(best))))  # the booster on every row: as many trees as the folds kept
    everything = lightgbm.Dataset(matrix, y, categorical_feature=categorical)
    lightgbm.train(train_params, everything, rounds).save_model(str(partial / booster_file(ALL)))
    np.savez(partial / FOLDS_FILE, digests=row_digests(column), folds=fold)
    fitted = {"rows": len(y), "folds": settings["folds"], "classes": classes, "rounds": rounds, "seconds": round(time.monotonic() - started, 2)}
    if classes == 0:
        fitted["target"] = [float(y.mean()), float(y.std()) or 1.0]
    (partial / FIT_FILE).write_text(json.dumps(fitted))
    partial.rename(target)
    return {"fitted": str(target)}


def check_boosted(params: dict[str, Any], weights: Path | None) -> None:
    if "fitted" in params:
        raise FieldError("params.fitted", "is set by the search when it fits the boosters; leave it out")
    if int(params.get("folds", 5)) < 2:
        raise FieldError("params.folds", "needs at least 2 folds (out-of-fold features)")


@register_member(
    "boosted_trees",
    facts=MemberFacts(check=check_boosted, requirements=("lightgbm",), fit=fit_boosted, policies=("frozen",)),
)
def boosted_trees(
    context: BuildContext,
    fitted: str | None = None,
    rounds: int = 200,
    num_leaves: int = 15,
    learning_rate: float = 0.05,
    min_leaf: int = 10,
    folds: int = 5,
) -> Backbone:
    """LightGBM boosted trees on the ``table`` input, fitted before the search on the training split
    (up to ``rounds`` trees of ``num_leaves`` leaves, as many as the held-out folds want; ``folds``
    out-of-fold boosters); features: class log-probabilities."""
    import lightgbm

    needs_input(context, "boosted_trees", "table")
    folder = context.assets or (Path(fitted) if fitted else None)
    if folder is None or not (folder / FIT_FILE).is_file() or context.table is None:
        raise ValueError("boosted_trees is fitted on the training split when a search starts; these boosters were never fitted")
    fit = json.loads((folder / FIT_FILE).read_text())
    boosters = {-1: lightgbm.Booster(model_file=str(folder / booster_file(ALL)))}
    boosters.update({k: lightgbm.Booster(model_file=str(folder / booster_file(str(k)))) for k in range(folds)})
    with np.load(folder / FOLDS_FILE, allow_pickle=False) as saved:
        row_folds = {bytes(d): int(f) for d, f in zip(saved["digests"], saved["folds"], strict=True)}

    def save_assets(directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for file in folder.iterdir():
            shutil.copy2(file, directory / file.name)

    prep = BoostedPrep(TablePrep.fitted(context.table), row_folds)
    module = BoostedTrees(boosters, int(fit["classes"]), fit.get("target"))
    return Backbone(module, module.width, prep, save_assets=save_assets)
