"""The frozen-member feature cache: each frozen backbone runs once per sample per search.

A frozen member gives the same features for a row in every trial, so they are
computed once per (member fingerprint, input fingerprint, split) and kept on disk
under the search's storage folder (shared storage on a cluster), one safetensors
file per entry. The member fingerprint covers its kind, parameters, every weight
and its input preparation (tokenizer included); the input fingerprint covers every
raw value of the split's column. An entry is written to a temporary file and moved
into place, so a reader never sees half of one; an exclusive ``flock`` on the
entry's lock file makes concurrent requests from several processes or nodes wait
for the one that computes. An entry whose recorded key or checksum does not match
is recomputed, with a message saying why.

``compute_member_features`` is what a Ray task runs for each member that may be
frozen, before the first trial; trials get the result through Ray's object store
(numpy arrays are read in place there, not copied) as ``CachedMember``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from trainables.data import InputDescription
from trainables.digest import state_digest, tensor_digest, update
from trainables.members import BuildContext, Member, run_member, seeded_member
from trainables.preprocess import Column, Preprocess

FEATURES = "features"


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of a tokenizer's full definition (a fast tokenizer's JSON, else its class and vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{text}".encode()).hexdigest()


def preprocess_description(prep: Preprocess) -> dict[str, Any]:
    """A preparation's settings as JSON; a tokenizer by its digest."""
    fields = {f.name: getattr(prep, f.name) for f in dataclasses.fields(prep)} if dataclasses.is_dataclass(prep) else {}
    if "tokenizer" in fields:
        fields["tokenizer"] = tokenizer_digest(fields["tokenizer"])
    return {"type": type(prep).__name__, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


def member_fingerprint(member: Member, kind: str, params: dict[str, Any]) -> str:
    """What a frozen member's features depend on: kind, parameters, weights and input preparation."""
    described = {
        "kind": kind,
        "params": params,
        "preprocess": preprocess_description(member.preprocess),
        "weights": state_digest(member.backbone.state_dict()),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def column_fingerprint(column: Column) -> str:
    """sha256 over every raw value of a column (a tensor, images or texts), in row order."""
    digest = hashlib.sha256()
    if isinstance(column, Tensor):
        update(digest, column)
    else:
        for value in column:
            if isinstance(value, str):
                encoded = value.encode()
                digest.update(len(encoded).to_bytes(8, "little") + encoded)
            else:
                update(digest, value)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    member: str  # member fingerprint
    data: str  # input column fingerprint
    split: str

    @property
    def name(self) -> str:
        return hashlib.sha256(f"{self.member}/{self.data}/{self.split}".encode()).hexdigest()[:32]


class FeatureCache:
    """Feature tensors on disk, one file per ``CacheKey``, safe for concurrent processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: CacheKey) -> Path:
        return self.root / f"{key.name}.safetensors"

    def read(self, key: CacheKey) -> tuple[Tensor | None, str]:
        """The entry's tensor, or None and why it cannot be used ("" when there is none)."""
        path = self.path(key)
        if not path.exists():
            return None, ""
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensor = handle.get_tensor(FEATURES)
        except (SafetensorError, OSError, ValueError, KeyError) as error:
            return None, f"is corrupt ({error})"
        if metadata.get("key") != json.dumps(dataclasses.asdict(key), sort_keys=True):
            return None, "was written for different inputs"
        if metadata.get("sha256") != tensor_digest(tensor):
            return None, "is corrupt (checksum mismatch)"
        return tensor, ""

    def write(self, key: CacheKey, tensor: Tensor) -> None:
        """Write to a temporary file in the same folder, then move it into place atomically."""
        metadata = {"key": json.dumps(dataclasses.asdict(key), sort_keys=True), "sha256": tensor_digest(tensor)}
        with tempfile.NamedTemporaryFile(dir=self.root, suffix=".partial", delete=False) as tmp:
            partial = Path(tmp.name)
        try:
            save_file({FEATURES: tensor.contiguous()}, str(partial), metadata=metadata)
            os.replace(partial, self.path(key))
        finally:
            partial.unlink(missing_ok=True)

    def get_or_compute(self, key: CacheKey, compute: Callable[[], Tensor]) -> tuple[Tensor, bool]:
        """The cached tensor for ``key``, or ``compute()``'s, stored; and whether it was computed here.

        Holding the entry's lock while checking and computing means that of several
        processes asking at once, one computes and the others then read its file.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{key.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                tensor, problem = self.read(key)
                if tensor is not None:
                    return tensor, False
                if problem:
                    print(f"feature cache: {self.path(key)} {problem}; recomputing", file=sys.stderr, flush=True)
                tensor = compute()
                self.write(key, tensor)
                return tensor, True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class CachedMember:
    """A frozen member's features for each split: its width and the arrays (an object ref in Ray's store)."""

    width: int
    splits: Any  # ray.ObjectRef to {split: np.ndarray}, or that dict itself

    def arrays(self) -> dict[str, np.ndarray]:
        return ray.get(self.splits) if isinstance(self.splits, ray.ObjectRef) else self.splits


@dataclass(frozen=True)
class FeatureReport:
    """What computing one member's features did: rows run through its backbone (0 when all were cached)."""

    member: str
    width: int
    rows_computed: int
    rows: int


def compute_member_features(
    name: str,
    kind: str,
    params: dict[str, Any],
    source: InputDescription,
    input_key: str,
    weights: str | None,
    splits: dict[str, Column],
    cache_root: str,
    seed: int = 0,
) -> tuple[FeatureReport, dict[str, np.ndarray]]:
    """Features of the frozen member for every split: from the cache under ``cache_root``, or computed and stored.

    The member is built as a trial builds it (``seed`` fixes weights that are not pretrained).
    """
    context = BuildContext(source.kind, tuple(source.shape), pretrained=True)
    member = seeded_member(seed, name, kind, input_key, context, params, "frozen", Path(weights) if weights else None)
    member.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    fingerprint = member_fingerprint(member, kind, params)
    computed = 0
    arrays: dict[str, np.ndarray] = {}
    for split, column in splits.items():
        def compute(column: Column = column) -> Tensor:
            return run_member(member, member.prepare({input_key: column}))

        key = CacheKey(fingerprint, column_fingerprint(column), split)
        features, fresh = FeatureCache(Path(cache_root)).get_or_compute(key, compute)
        computed += len(features) if fresh else 0
        arrays[split] = features.float().numpy()
    rows = sum(len(a) for a in arrays.values())
    return FeatureReport(name, member.width, computed, rows), arrays
