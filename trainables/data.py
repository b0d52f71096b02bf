"""Datasets as named raw input columns plus labels, split into train / val / test.

A dataset is a dict of raw inputs (``image``, ``text``, ``flat``, ...) that members
read by name (each prepares its input its own way), integer labels and class
names. Rows come from a registered source (``trainables.sources``); splits come
from the data when it has them, else they are stratified and seeded so every
trial and the final evaluation see the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainables.members import BuildContext
from trainables.preprocess import Column, Table, column_kind, fit_table, take
from trainables.sources import SOURCES, SourceOptions

SPLITS = ("train", "val", "test")


@dataclass
class InputDescription:
    """One input of the data: ``tensor`` (with the shape of a row), ``image`` (RGB files), ``text``, or
    ``table`` (shape: numeric and categorical column counts; ``table``: its statistics, fitted on the
    training split, which travel with every model that reads it)."""

    kind: str
    shape: list[int] = field(default_factory=list)
    table: dict[str, Any] | None = None

    def columns(self, name: str) -> list[str]:
        """The columns a served model is given for this input, named ``name``: a table's own
        numeric and categorical columns, else the input's name."""
        if self.table is None:
            return [name]
        return [*self.table["numeric"], *self.table["categorical"]]

    def context(self, pretrained: bool = True, assets: Path | None = None) -> BuildContext:
        """What a member factory reading this input is built with."""
        return BuildContext(self.kind, tuple(self.shape), pretrained, assets, self.table)


def describe_column(column: Column) -> InputDescription:
    """The description of a raw column (of the training split: a table's statistics are fitted on it)."""
    kind = column_kind(column)
    if isinstance(column, Table):
        return InputDescription(kind, [len(column.numeric), len(column.categorical)], fit_table(column))
    if isinstance(column, Tensor):
        return InputDescription(kind, list(column.shape[1:]))
    return InputDescription(kind, [3] if kind == "image" else [])


@dataclass
class Split:
    inputs: dict[str, Column]
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def picked(self, rows: np.ndarray) -> "Split":
        """The given rows of this split."""
        return Split({k: take(v, rows) for k, v in self.inputs.items()}, self.labels[torch.as_tensor(rows, dtype=torch.long)])


@dataclass
class Dataset:
    splits: dict[str, Split]
    class_names: list[str]  # none for regression
    skipped: list[str] = field(default_factory=list)  # bad rows left out, one message each
    task: str = "multiclass"  # binary, multiclass or regression

    @property
    def target(self) -> list[float] | None:
        """Regression: the training targets' mean and standard deviation (models predict in these
        units, standardised inside); None for classification."""
        if self.task != "regression":
            return None
        train = self.splits["train"].labels.double()
        return [float(train.mean()), float(train.std(unbiased=False)) or 1.0]

    @cached_property
    def inputs(self) -> dict[str, InputDescription]:
        """Each input described from the training split (a table's statistics fitted once, not at each look)."""
        return {k: describe_column(v) for k, v in self.splits["train"].inputs.items()}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def outputs(self) -> int:
        """A model's output width on this data: its classes, or one value (regression)."""
        return 1 if self.task == "regression" else self.num_classes

    @property
    def rows(self) -> int:
        return sum(len(s) for s in self.splits.values())


def stratified_folds(labels: Tensor, folds: int) -> Tensor:
    """A fold number per row: each class (a regression target's quantile bin) dealt round-robin over
    the folds, in a fixed shuffled order."""
    if labels.is_floating_point():
        labels = torch.from_numpy(strata(labels.numpy()))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(len(labels)))
    fold = torch.empty(len(labels), dtype=torch.long)
    for value in labels.unique():
        rows = order[labels[order] == value]
        fold[rows] = torch.arange(len(rows)) % folds
    return fold


STRATIFIED_MIN_ROWS = 3  # a class needs a row for each of train, val and test


TARGET_STRATA = 5  # regression splits are stratified by quantile of the target, in this many bins


def strata(targets: np.ndarray) -> np.ndarray:
    """Regression targets as the quantile bin each falls in (what its splits are stratified by)."""
    if np.unique(targets).size < 2:
        raise ValueError(f"every row has the target {float(targets[0]):g}: there is nothing to predict")
    edges = np.unique(np.quantile(targets, np.linspace(0.0, 1.0, TARGET_STRATA + 1))[1:-1])
    return np.digitize(targets, edges)


def split_rows(
    labels: np.ndarray, given: np.ndarray | None, val_fraction: float, test_fraction: float, seed: int, class_names: list[str]
) -> list[np.ndarray]:
    """Row indices of train, val and test: as the data gives them, or stratified by label (a
    regression target by its quantile bin, ``class_names`` empty) from ``seed``."""
    regression = not class_names
    if regression:
        labels, class_names = strata(labels), [f"target bin {i + 1}" for i in range(TARGET_STRATA)]
    present, counts = np.unique(labels, return_counts=True)
    if len(present) < 2:
        raise ValueError(f"every row has the label {class_names[present[0]]!r}: a classifier needs at least two classes")
    if given is not None:
        rows = [np.flatnonzero(given == name) for name in SPLITS]
        empty = [name for name, r in zip(SPLITS, rows, strict=True) if len(r) == 0]
        if empty:
            raise ValueError(f"the data's split column gives no {empty[0]} rows")
        for name, r in zip(SPLITS[:2] if not regression else (), rows, strict=False):
            absent = np.setdiff1d(present, labels[r])
            if len(absent):
                raise ValueError(f"the data's split column gives no {name} rows of class {class_names[absent[0]]!r}: every class needs train and val rows")
        return rows
    from sklearn.model_selection import train_test_split  # the driver's alone: trial processes start without sklearn

    if counts.min() < STRATIFIED_MIN_ROWS:
        rare = present[counts.argmin()]
        raise ValueError(
            f"class {class_names[rare]!r} has only {counts.min()} row(s); stratified train/val/test splits need "
            f"{STRATIFIED_MIN_ROWS} a class (add rows, drop the class, or give a split column)"
        )

    index = np.arange(labels.shape[0])
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1.0 - test_fraction), stratify=labels[rest], random_state=seed
    )
    return [train, val, test]


def load_dataset(source: str, options: SourceOptions, val_fraction: float, test_fraction: float, seed: int) -> Dataset:
    """Load ``source`` and split it."""
    raw = SOURCES.get(source).factory(options)
    rows = split_rows(raw.labels, raw.split, val_fraction, test_fraction, seed, raw.class_names)
    splits = {
        name: Split({k: take(v, r) for k, v in raw.inputs.items()}, torch.from_numpy(raw.labels[r]))
        for name, r in zip(SPLITS, rows, strict=True)
    }
    return Dataset(splits, raw.class_names, raw.skipped, raw.task)
