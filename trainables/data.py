"""Datasets as named input tensors plus labels, split into train / val / test.

A dataset is a dict of inputs (``image``: (N, C, H, W), ``flat``: (N, D), ...) that
members read by name, integer labels and class names. Sources are registered by
name; splits are stratified and seeded so every trial and the final evaluation
see the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from trainables.registry import Registry

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    inputs: dict[str, Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def numpy_inputs(self) -> dict[str, np.ndarray]:
        """The inputs as float32 numpy arrays, the form the pyfunc model takes."""
        return {k: v.numpy() for k, v in self.inputs.items()}


@dataclass
class Dataset:
    splits: dict[str, Split]
    class_names: list[str]

    @property
    def input_shapes(self) -> dict[str, list[int]]:
        return {k: list(v.shape[1:]) for k, v in self.splits["train"].inputs.items()}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


RawArrays = tuple[dict[str, np.ndarray], np.ndarray, list[str]]
SOURCES: Registry[Callable[..., RawArrays]] = Registry("data source")


@SOURCES.register("digits")
def digits(path: Path | None = None) -> RawArrays:
    """scikit-learn's 8x8 handwritten digits: ``image`` (1, 8, 8) and ``flat`` (64,), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    inputs = {"image": images[:, None, :, :], "flat": images.reshape(len(images), -1)}
    return inputs, bunch.target.astype(np.int64), [str(c) for c in bunch.target_names]


@SOURCES.register("npz")
def npz(path: Path | None = None) -> RawArrays:
    """Your own arrays: an ``.npz`` with ``label`` (N,), optional ``class_names``, and one array per input."""
    if path is None:
        raise ValueError("the npz source needs data.path")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    if "label" not in arrays:
        raise ValueError(f"{path}: no 'label' array (found: {', '.join(sorted(arrays))})")
    labels = arrays.pop("label")
    names = arrays.pop("class_names", None)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'label' must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    if labels.min() < 0:
        raise ValueError(f"{path}: 'label' has negative values")
    if not arrays:
        raise ValueError(f"{path}: no input arrays besides 'label'")
    for key, value in arrays.items():
        if value.shape[0] != labels.shape[0]:
            raise ValueError(f"{path}: input {key!r} has {value.shape[0]} rows but 'label' has {labels.shape[0]}")
    num_classes = int(labels.max()) + 1
    class_names = [str(n) for n in names] if names is not None else [str(i) for i in range(num_classes)]
    if len(class_names) < num_classes:
        raise ValueError(f"{path}: {len(class_names)} class_names for labels up to {num_classes - 1}")
    return {k: v.astype(np.float32) for k, v in arrays.items()}, labels.astype(np.int64), class_names


def load_dataset(source: str, path: Path | None, val_fraction: float, test_fraction: float, seed: int) -> Dataset:
    """Load ``source`` and split it, stratified by label, reproducibly from ``seed``."""
    inputs, labels, class_names = SOURCES.get(source).factory(path)
    index = np.arange(labels.shape[0])
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1.0 - test_fraction), stratify=labels[rest], random_state=seed
    )
    splits = {
        name: Split({k: torch.from_numpy(v[rows]) for k, v in inputs.items()}, torch.from_numpy(labels[rows]))
        for name, rows in zip(SPLITS, (train, val, test), strict=True)
    }
    return Dataset(splits, class_names)
