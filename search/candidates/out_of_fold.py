"""Out-of-fold predictions of the training split, for fitting ensemble weights on rows no trial was
selected on (``ensemble.cv: k``).

Each trial's plan is trained again k times (Ray tasks with a trial's resources, all started at once),
each time on k - 1 folds of the training split, its best epoch on validation kept, and predicts the
fold it did not see; together the k folds give a prediction of every training row by a model that
did not train on it. The folds are stratified and fixed (``trainables.data.stratified_folds``); frozen
members read their cached features of the fold's rows.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import ray

from search.candidates.candidate import Pool
from search.candidates.refit import start_refits
from trainables.data import Dataset, stratified_folds
from trainables.feature_cache import CachedMember

HELD_OUT = "held_out"  # the split a fold's model predicts: the training rows it did not see


def fold_data(data: Dataset, features: dict[str, CachedMember], held: np.ndarray) -> tuple[Dataset, dict[str, CachedMember]]:
    """``data`` with the training split's ``held`` rows moved out of ``train`` into ``HELD_OUT``."""
    train = data.splits["train"]
    kept = np.setdiff1d(np.arange(len(train)), held)
    splits = {**data.splits, "train": train.picked(kept), HELD_OUT: train.picked(held)}
    picks = {"train": ("train", kept), HELD_OUT: ("train", held)}
    return replace(data, splits=splits), {name: replace(f, picks=picks) for name, f in features.items()}


def out_of_fold(pool: Pool, trials: list, folds: int) -> np.ndarray:
    """Each trial's out-of-fold probabilities of the training split: (trials, rows, classes)."""
    train = pool.data.splits["train"]
    fold = stratified_folds(train.labels, folds).numpy()
    print(f"ensemble weights on out-of-fold predictions: {len(trials)} trials x {folds} folds = {len(trials) * folds} trainings", flush=True)
    started = []
    for k in range(folds):
        held = np.flatnonzero(fold == k)
        data, features = fold_data(pool.data, pool.features, held)
        started.append((held, start_refits(pool.resources, pool.objectives.first, [t.plan for t in trials], data, features, (HELD_OUT,))))
    proba = np.zeros((len(trials), len(train), pool.data.outputs), dtype=np.float32)
    for held, futures in started:
        for i, future in enumerate(futures):
            proba[i, held] = ray.get(future)[1][HELD_OUT]
    return proba
