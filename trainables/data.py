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
ADAPT = "adapt"  # a data set with domains: the target rows without a label, read by domain adaptation only


@dataclass
class InputDescription:
    """One input of the data: ``tensor`` (with the shape of a row), ``image`` (RGB files), ``text``, ``audio`` (recordings), or
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


@dataclass(frozen=True)
class Domains:
    """How a data set with source and target domains was split. Training rows are the source's;
    labelled target rows are validation and test rows (validation is the target's when it has any,
    else the source's); unlabelled target rows are the ``adapt`` split. ``test_target``: per test
    row, whether it is a target row."""

    test_target: np.ndarray
    validation: str  # "target" or "source"
    counts: dict[str, int]  # source rows, labelled target rows, unlabelled target rows

    def words(self) -> str:
        """The first lines of a run with domains: the rows of each, and what validates."""
        counts = self.counts
        rows = f"domains: {counts['source']} source rows (labelled), {counts['target labelled']} target rows labelled and {counts['target unlabelled']} not"
        why = "labelled target rows" if self.validation == "target" else "no labelled target rows: the objective is computed on source validation rows"
        return f"{rows}\nvalidation: {self.validation} ({why})"


@dataclass
class Dataset:
    splits: dict[str, Split]
    class_names: list[str]  # none for regression
    skipped: list[str] = field(default_factory=list)  # bad rows left out, one message each
    task: str = "multiclass"  # binary, multiclass or regression
    domains: Domains | None = None  # with a domain column: how its domains were split

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
    def labelled(self) -> dict[str, Split]:
        """The splits whose rows have labels (all but ``adapt``)."""
        return {name: split for name, split in self.splits.items() if name != ADAPT}

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
    """Load ``source`` and split it (by domain, when it has a domain column: ``Domains``)."""
    raw = SOURCES.get(source).factory(options)
    if raw.target is not None and raw.labelled is not None:
        rows, domains = domain_rows(raw.labels, raw.split, raw.target, raw.labelled, val_fraction, test_fraction, seed, raw.class_names)
    else:
        rows, domains = dict(zip(SPLITS, split_rows(raw.labels, raw.split, val_fraction, test_fraction, seed, raw.class_names), strict=True)), None
    splits = {name: Split({k: take(v, r) for k, v in raw.inputs.items()}, torch.from_numpy(raw.labels[r])) for name, r in rows.items()}
    return Dataset(splits, raw.class_names, raw.skipped, raw.task, domains)


def domain_rows(
    labels: np.ndarray, given: np.ndarray | None, target: np.ndarray, labelled: np.ndarray,
    val_fraction: float, test_fraction: float, seed: int, class_names: list[str],
) -> tuple[dict[str, np.ndarray], Domains]:
    """Row indices of each split of a data set with domains (``Domains`` says which rows go where).
    Source rows are split as ``split_rows`` splits them; labelled target rows go half to validation,
    half to test (stratified when every class has two, seeded), or where the split column says
    (a target row it puts in train is read without its label, like an unlabelled one)."""
    source = np.flatnonzero(~target)
    train, val, test = (source[r] for r in split_rows(labels[source], None if given is None else given[source], val_fraction, test_fraction, seed, class_names))
    known = np.flatnonzero(target & labelled)
    if given is not None:
        target_val, target_test, read_unlabelled = (known[given[known] == name] for name in SPLITS[1:] + SPLITS[:1])
    elif len(known) >= 2:
        from sklearn.model_selection import train_test_split

        counts = np.unique(labels[known], return_counts=True)[1]
        stratify = labels[known] if class_names and counts.min() >= 2 and len(counts) <= len(known) // 2 else None
        target_val, target_test = train_test_split(known, test_size=0.5, stratify=stratify, random_state=seed)
        read_unlabelled = known[:0]
    else:
        target_val, target_test, read_unlabelled = known[:0], known, known[:0]
    rows = {
        "train": train,
        "val": np.sort(target_val) if len(target_val) else val,
        "test": np.concatenate([test, np.sort(target_test)]),
    }
    adapt = np.sort(np.concatenate([np.flatnonzero(target & ~labelled), read_unlabelled]))
    if len(adapt):
        rows[ADAPT] = adapt
    counts = {"source": len(source), "target labelled": len(known), "target unlabelled": int((target & ~labelled).sum())}
    test_target = np.concatenate([np.zeros(len(test), dtype=bool), np.ones(len(target_test), dtype=bool)])
    return rows, Domains(test_target, "target" if len(target_val) else "source", counts)
