"""The input pipeline: a split's rows streamed as batches the members read.

A split holds references (image paths or encoded bytes, texts, numbers), never decoded
pixels. ``SplitRows`` turns one batch of row indices into what the model reads: each
member's prepared tensors (decode, resize, crop, normalise, tokenise) with the member's
augmentation on training batches, cached features of frozen members gathered by row,
and the labels. ``Batches`` says which rows form each batch of an epoch: shuffled from
(seed, epoch) for training, in order otherwise. ``loader`` runs it in torch ``DataLoader``
worker processes with prefetch, and pinned memory when the model is on a GPU.

Why a torch ``DataLoader`` and not Ray Data's streaming iterator: a trial already owns its
CPUs (Ray reserves them for the trial), the rows it reads are a small table of references
that travel with the trial, and the loader's worker processes do the decoding beside the
training loop in the same process tree with no extra scheduling layer; Ray Data would add
an executor per trial that competes with Tune for the same reservation. Every random choice
is seeded from (seed, epoch, row), so batches do not depend on the number of workers and a
resumed trial sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from trainables.preprocess import Column, Preprocess, Table, take

LABELS = "labels"
EVAL_BATCH = 256


class FeatureRows(Protocol):
    """A frozen member's features for the rows of one split, gathered by row index."""

    def __len__(self) -> int: ...

    def take(self, rows: Sequence[int]) -> np.ndarray: ...


@dataclass(frozen=True)
class ArrayRows:
    """Features held in memory (computed inside the trial)."""

    array: np.ndarray

    def __len__(self) -> int:
        return len(self.array)

    def take(self, rows: Sequence[int]) -> np.ndarray:
        return self.array[np.asarray(rows, dtype=np.int64)]


@dataclass(frozen=True)
class MemberInput:
    """How one member's input reaches a batch: the input it reads, its preparation, its augmentation."""

    name: str
    input_key: str
    preprocess: Preprocess
    augment: str = "none"

    def prepare(self, column: Column, seeds: Sequence[int] | None) -> dict[str, Tensor]:
        """The member's tensors for ``column``; ``seeds`` (one per row) augment a training batch."""
        if seeds is None or self.augment == "none":
            prepared = self.preprocess(column)
        else:
            if self.augment not in getattr(self.preprocess, "augments", ()):
                raise ValueError(f"member {self.name!r}: augment {self.augment!r} does not apply to its input")
            prepared = self.preprocess.augmented(column, self.augment, seeds)
        return {f"{self.name}.{k}": v for k, v in prepared.items()}


def row_seed(seed: int, epoch: int, row: int) -> int:
    """The augmentation seed of one row in one epoch."""
    return ((seed * 1_000_003 + epoch) * 2_147_483_647 + row) % 2**63


class SplitRows(torch.utils.data.Dataset):
    """One split's rows as batches: indexed by ``(epoch, rows)``, it returns a batch dict.

    ``members`` are prepared from the raw columns (augmented when ``train``), ``features``
    (member name -> rows) are gathered as ``<member>.features``; ``labels`` may be None (prediction).
    """

    def __init__(
        self,
        inputs: dict[str, Column],
        labels: Tensor | None,
        members: list[MemberInput],
        features: dict[str, FeatureRows],
        seed: int = 0,
        train: bool = False,
    ) -> None:
        self.inputs = {m.input_key: inputs[m.input_key] for m in members}
        self.labels = labels
        self.members = members
        self.features = features
        self.seed = seed
        self.train = train
        self.length = len(labels) if labels is not None else len(next(iter({**inputs, **features}.values())))

    def __len__(self) -> int:
        return self.length

    @property
    def decodes(self) -> bool:
        """Whether batches need work worth a worker process (images or texts, not numbers or tables in memory)."""
        return any(not isinstance(self.inputs[m.input_key], (Tensor, Table)) for m in self.members)

    def __getitem__(self, item: tuple[int, list[int]]) -> dict[str, Tensor]:
        epoch, rows = item
        batch: dict[str, Tensor] = {}
        seeds = [row_seed(self.seed, epoch, r) for r in rows] if self.train else None
        for member in self.members:
            batch.update(member.prepare(take(self.inputs[member.input_key], rows), seeds))
        for name, features in self.features.items():
            batch[f"{name}.features"] = torch.from_numpy(np.ascontiguousarray(features.take(rows), dtype=np.float32))
        if self.labels is not None:
            batch[LABELS] = self.labels[torch.as_tensor(rows, dtype=torch.long)]
        return batch


class Batches(Sampler):
    """The batches of an epoch as ``(epoch, rows)``: shuffled from (seed, epoch) when ``shuffle``
    (a last batch of one row is dropped, as it breaks batch norm; it recurs next epoch), else in order."""

    def __init__(self, rows: int, batch_size: int, seed: int = 0, shuffle: bool = False) -> None:
        self.rows, self.batch_size, self.seed, self.shuffle = rows, batch_size, seed, shuffle
        self.epoch = 0

    def batches(self) -> list[list[int]]:
        if not self.shuffle:
            return [list(range(i, min(i + self.batch_size, self.rows))) for i in range(0, self.rows, self.batch_size)]
        order = torch.randperm(self.rows, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch)).tolist()
        out = [order[i : i + self.batch_size] for i in range(0, self.rows, self.batch_size)]
        return [b for i, b in enumerate(out) if len(b) >= 2 or i == 0]

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        return ((self.epoch, rows) for rows in self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def single_threaded(_worker: int) -> None:
    """A loader worker decodes one batch at a time on one core: the trial's threads stay with the model."""
    torch.set_num_threads(1)


def keep(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return batch


def loader(rows: SplitRows, batches: Batches, workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches of ``rows`` in ``workers`` processes (none when the split needs no decoding), prefetched."""
    workers = workers if rows.decodes else 0
    if workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers in forked workers
    return DataLoader(
        rows,
        sampler=batches,
        batch_size=None,
        collate_fn=keep,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        worker_init_fn=single_threaded if workers else None,
        generator=torch.Generator(),  # the loader's own seed draw leaves the global RNG (dropout) alone
    )
