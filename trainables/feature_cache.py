"""The frozen-member feature cache: each frozen backbone runs once per sample per search.

A frozen member gives the same features for a row in every trial, so they are
computed once and kept on disk under the search's storage folder (shared storage on
a cluster), in shards (``shard_ranges``): one safetensors file per (member
fingerprint, fingerprint of the shard's rows). The member fingerprint covers its kind,
parameters, every weight and its input preparation (tokenizer included); the rows'
fingerprint covers every raw value (an image by the digest of its encoded bytes). An
entry is written to a temporary file and moved into place, so a reader never sees half
of one; an exclusive ``flock`` on the entry's lock file makes concurrent requests from
several processes or nodes wait for the one that computes. An entry whose recorded key
or checksum does not match is recomputed, with a message saying why.

``encode_shard`` is what one Ray task (or one thread of the driver) runs for one shard of one
member, before the first trial (the driver's side is ``search.run.features``); its process keeps
the member it built for the next shard. Trials read the shards memory-mapped (``CachedMember.rows``):
no process reads a whole split's features into memory, and processes on one machine
share the pages.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from trainables.data import InputDescription
from trainables.digest import state_digest, tensor_digest, update
from trainables.members import BUILDING, Member, run_member, seeded_member
from trainables.pipeline import EVAL_BATCH, Batches, MemberInput, SplitRows, loader
from trainables.preprocess import Column, FileRef, Preprocess, Table

FEATURES = "features"
SHARD_ROWS = 2048  # the most rows of a shard
MIN_SHARD_ROWS = 64
SHARDS_PER_SPLIT = 16  # a small split is still cut this finely, so that every core of a small cluster has work
DECODER = 2  # how images are decoded (2: JPEGs at a reduced scale when the member resizes them down)


def shard_ranges(rows: int) -> list[range]:
    """How a split of ``rows`` rows is cut into shards: at least ``SHARDS_PER_SPLIT`` where shards
    keep ``MIN_SHARD_ROWS`` rows, at most ``SHARD_ROWS`` rows each. It depends on the split alone,
    never on the cluster, so a cached split is found again on any machine."""
    size = min(SHARD_ROWS, max(MIN_SHARD_ROWS, math.ceil(rows / SHARDS_PER_SPLIT)))
    return [range(start, min(start + size, rows)) for start in range(0, rows, size)]


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
        "decoder": DECODER,
        "weights": state_digest(member.backbone.state_dict()),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def column_fingerprint(column: Column) -> str:
    """sha256 over every raw value of a column (a tensor, images, texts or a table), in row order; an image
    reference by the digest of its encoded bytes."""
    digest = hashlib.sha256()
    if isinstance(column, Tensor):
        update(digest, column)
        return digest.hexdigest()
    if isinstance(column, Table):
        digest.update(json.dumps([column.numeric, column.categorical, column.categories.tolist()]).encode())
        digest.update(np.ascontiguousarray(column.numbers).tobytes())
        return digest.hexdigest()
    for value in column:
        if isinstance(value, str):
            encoded = value.encode()
            digest.update(len(encoded).to_bytes(8, "little") + encoded)
        elif isinstance(value, FileRef):
            digest.update(bytes.fromhex(value.digest))
        else:
            update(digest, value)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    member: str  # member fingerprint
    data: str  # fingerprint of the shard's rows

    @property
    def name(self) -> str:
        return hashlib.sha256(f"{self.member}/{self.data}".encode()).hexdigest()[:32]


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
        """The cached tensor for ``key`` (its checksum verified), or ``compute()``'s, stored; and
        whether it was computed here.

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


def memory_mapped(path: str | Path) -> np.ndarray:
    """The features tensor of a cache entry as a read-only memory map (float32, rows x width)."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    entry = header[FEATURES]
    if entry["dtype"] != "F32":
        raise ValueError(f"{path}: features are {entry['dtype']}, expected F32")
    begin, _ = entry["data_offsets"]
    return np.memmap(path, dtype=np.float32, mode="r", offset=8 + size + begin, shape=tuple(entry["shape"]))


@dataclass(frozen=True)
class Shard:
    path: str
    rows: int


class ShardedRows:
    """A split's features across its shards, gathered by row index from memory maps opened on first use."""

    def __init__(self, shards: Sequence[Shard]) -> None:
        self.shards = tuple(shards)
        self.starts = np.cumsum([0] + [s.rows for s in self.shards])
        self.maps: list[np.ndarray] = []

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict[str, Any]:  # memory maps are reopened where this lands
        return {"shards": self.shards}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["shards"])

    def take(self, rows: Sequence[int]) -> np.ndarray:
        if not self.maps:
            self.maps = [memory_mapped(s.path) for s in self.shards]
        rows = np.asarray(rows, dtype=np.int64)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), self.maps[0].shape[1]), dtype=np.float32)
        for shard in np.unique(which):
            mask = which == shard
            out[mask] = self.maps[shard][rows[mask] - self.starts[shard]]
        return out


@dataclass(frozen=True)
class PickedRows:
    """Some of a split's cached rows (a fold of the training split), in the order ``index`` gives."""

    rows: ShardedRows
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows: Sequence[int]) -> np.ndarray:
        return self.rows.take(self.index[np.asarray(rows, dtype=np.int64)])


@dataclass(frozen=True)
class CachedMember:
    """A frozen member's cached features: its width and each split's shards (files under the cache);
    ``places`` gives, for a split whose shards hold its rows in another order (``padding_order``),
    each row's position in them; ``picks`` names splits made of some rows of another (split -> its
    source split and those rows)."""

    width: int
    splits: dict[str, tuple[Shard, ...]]
    picks: dict[str, tuple[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    places: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def rows(self, split: str) -> ShardedRows | PickedRows:
        source, index = self.picks.get(split, (split, None))
        place = self.places.get(source)
        if place is not None:
            index = place if index is None else place[index]
        sharded = ShardedRows(self.splits[source])
        return sharded if index is None else PickedRows(sharded, index)


@dataclass(frozen=True)
class FeatureReport:
    """What computing one member's features did: rows run through its backbone (0 when all were cached)."""

    member: str
    width: int
    rows_computed: int
    rows: int


@dataclass(frozen=True)
class MemberRecipe:
    """How to build a frozen member as a trial builds it (``seed`` fixes weights that are not pretrained)."""

    name: str
    kind: str
    params: dict[str, Any]
    source: InputDescription
    input_key: str
    weights: str | None = None
    seed: int = 0

    def member(self) -> Member:
        """The member, built here (frozen; shared while ``sharing_frozen_members`` is active)."""
        weights = Path(self.weights) if self.weights else None
        return seeded_member(self.seed, self.name, self.kind, self.input_key, self.source.context(), self.params, "frozen", weights)

    def build(self, device: str | None = None) -> tuple[Member, str]:
        """The member on ``device`` (None: this process's accelerator, when it sees one), and its
        fingerprint; built once per process and device."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        key = json.dumps([dataclasses.asdict(self), device], sort_keys=True, default=str)
        with BUILDING:
            if key not in BUILT:
                member = self.member()
                member.to(torch.device(device))
                BUILT[key] = (member, member_fingerprint(member, self.kind, self.params))
        return BUILT[key]


BUILT: dict[str, tuple[Member, str]] = {}  # members this process built for the cache, by recipe and device


@dataclass(frozen=True)
class EncodedShard:
    """One shard's entry: where it is, its rows, the member's width and whether it was computed here."""

    path: str
    rows: int
    width: int
    computed: bool


def encode_shard(
    recipe: MemberRecipe, column: Column, cache_root: str, threads: int = 1, workers: int = 0, device: str | None = None
) -> EncodedShard:
    """The frozen member's features for the rows of ``column`` (one shard): from the cache under
    ``cache_root``, or computed (streamed a batch at a time, on ``threads`` cores of this thread,
    on ``device``: ``MemberRecipe.build``) and stored. ``workers``: loader processes that decode
    while the backbone runs (on a GPU)."""
    torch.set_num_threads(threads)
    member, fingerprint = recipe.build(device)
    key = CacheKey(fingerprint, column_fingerprint(column))

    def compute() -> Tensor:
        rows = SplitRows({recipe.input_key: column}, None, [MemberInput(member.name, recipe.input_key, member.preprocess)], {})
        batches = loader(rows, Batches(len(rows), EVAL_BATCH), workers)
        features = torch.cat([run_member(member, batch) for batch in batches]).float()
        if features.shape[1:] != (member.width,):
            raise ValueError(f"gives features of shape {list(features.shape)}, expected [{len(features)}, {member.width}]")
        return features

    cache = FeatureCache(Path(cache_root))
    features, fresh = cache.get_or_compute(key, compute)
    return EncodedShard(str(cache.path(key)), len(features), member.width, fresh)
