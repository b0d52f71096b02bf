"""The driver's side of the feature cache: frozen members' features, computed before any trial.

For every member the spec may freeze, each split is cut into shards (``shard_ranges``: 64
to 2,048 rows, at least 16 a split where it has the rows; a text column in the order of its texts' lengths,
``padding_order``, so that a shard's batch pads little) and one Ray task per shard reads
its features from the cache under ``STORAGE/feature_cache`` or computes and stores them. The tasks of every member run at
once over all the cluster's cores (one CPU and one thread each), or one per GPU when
trials get GPUs; a worker process keeps the member it built for its next shard. Only
references (paths, texts) travel to the tasks and only file names come back, so the
driver never holds pixels or features. Because every request goes through the cache's
per-entry lock, a second search over the same data and member, even on another node,
reuses the files.

After its shards, each member's latency is timed in one more task, on a trial's resources (for
every batch size the spec fixes or lists): the candidates made after the trials read it rather
than time the member then (``trainables.cost``).
"""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayTaskError

from search.spec.schema import MemberSpec, Spec
from trainables import BEFORE_TRIALS, WORKER_ROLE
from trainables.composite import MemberDescription
from trainables.cost import raw_rows, time_member, timing_key
from trainables.registry import Choice, values_of
from trainables.data import Dataset
from trainables.feature_cache import CachedMember, EncodedShard, FeatureReport, MemberRecipe, Shard, encode_shard, shard_ranges
from trainables.preprocess import padding_order, take

CACHE_DIR = "feature_cache"
PROGRESS_EVERY_S = 15.0


def cacheable(members: list[MemberSpec]) -> list[str]:
    """Members whose training policy can be ``frozen``."""
    return [m.name for m in members if "frozen" in values_of(m.train)]


BEFORE_TRIALS_ENV = {"env_vars": {WORKER_ROLE: BEFORE_TRIALS}}
"""The runtime environment of the tasks that run before the trials. Ray never gives an actor a
worker process that ran a task, and keeps a pool of workers per runtime environment: in a pool
of their own, these tasks leave the workers Ray started with the instance (which imported a
trial's code as they started: ``trainables.warm``) idle for the first trials' actors."""


def warm_workers() -> None:
    """Have a Ray worker per CPU import the cache pass's code now, while the driver reads and
    checks the data, rather than when the first shard arrives (torch takes seconds to import)."""
    task = ray.remote(importlib.import_module).options(num_cpus=1, name="warm_up", runtime_env=BEFORE_TRIALS_ENV)
    for _ in range(max(1, int(ray.available_resources().get("CPU", 1)))):
        task.remote("trainables.feature_cache")


def recipes(members: list[MemberSpec], seed: int, data: Dataset) -> list[MemberRecipe]:
    """How to build each member the cache serves (each that can be frozen), seeded with ``seed``."""
    names = cacheable(members)
    return [
        MemberRecipe(m.name, m.kind, m.default_params, data.inputs[m.input], m.input, str(m.weights) if m.weights else None, seed)
        for m in members
        if m.name in names
    ]


class MemberFailed(RuntimeError):
    """A member the cache pass builds and runs failed to (``message`` says why)."""

    def __init__(self, member: str, message: str) -> None:
        super().__init__(f"{member}: {message}")
        self.member, self.message = member, message


@dataclass
class FeaturePass:
    """The cache pass under way: one task per shard and member; ``wait`` gathers the result."""

    plans: list[MemberRecipe]
    refs: dict[tuple[str, str], list[ray.ObjectRef]] = field(default_factory=dict)
    rows: dict[ray.ObjectRef, int] = field(default_factory=dict)  # each shard's rows, for the progress line
    places: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (member, split): each row's position in shards that hold the rows in another order
    timings: dict[str, tuple[str, ray.ObjectRef]] = field(default_factory=dict)  # by ``timing_key``: member, its latencies
    started: float = field(default_factory=time.monotonic)

    @property
    def members(self) -> frozenset[str]:
        """The members this pass builds and runs on every row."""
        return frozenset(recipe.name for recipe in self.plans)

    def cancel(self) -> None:
        for ref in [r for parts in self.refs.values() for r in parts] + [r for _, r in self.timings.values()]:
            ray.cancel(ref)

    def wait(self) -> tuple[dict[str, CachedMember], list[FeatureReport], dict[str, dict[str, float]]]:
        """Cached features of every member the spec may freeze, as shard files trials memory-map;
        what the pass learnt of each member's latency, by ``timing_key``."""
        shards = gather(self.refs, self.rows, self.started)
        latencies = {key: fetched(name, [ref])[0] for key, (name, ref) in self.timings.items()}
        features, reports = {}, []
        for recipe in self.plans:
            mine = {split: parts for (name, split), parts in shards.items() if name == recipe.name}
            encoded = [s for parts in mine.values() for s in parts]
            width = encoded[0].width
            splits = {split: tuple(Shard(s.path, s.rows) for s in parts) for split, parts in mine.items()}
            places = {split: place for (name, split), place in self.places.items() if name == recipe.name}
            features[recipe.name] = CachedMember(width, splits, places=places)
            computed = sum(s.rows for s in encoded if s.computed)
            reports.append(FeatureReport(recipe.name, width, computed, sum(s.rows for s in encoded)))
        return features, reports, latencies

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def start_features(spec: Spec, data: Dataset) -> FeaturePass:
    """Start the cache pass for every member the spec may freeze (nothing when ``feature_cache`` is
    off); the driver checks members and opens MLflow meanwhile."""
    plans = recipes(spec.members, spec.seed, data) if spec.feature_cache else []
    on_gpu = spec.resources.gpu > 0
    task = ray.remote(encode_shard).options(
        num_cpus=spec.resources.cpu if on_gpu else 1, num_gpus=1 if on_gpu else 0, name="feature_cache", runtime_env=BEFORE_TRIALS_ENV
    )
    threads = max(1, int(spec.resources.cpu)) if on_gpu else 1
    workers = threads - 1 if on_gpu else 0
    root = str(spec.storage / CACHE_DIR)
    started = FeaturePass(plans)
    for recipe in plans:
        for name, split in data.splits.items():
            column = split.inputs[recipe.input_key]
            order = padding_order(column)
            if order is not None:
                column = take(column, order)
                started.places[recipe.name, name] = np.argsort(order)
            parts = started.refs[recipe.name, name] = []
            for rows in shard_ranges(len(split)):
                parts.append(task.remote(recipe, take(column, rows), root, threads, workers))
                started.rows[parts[-1]] = len(rows)
    if spec.measure_cost is not False:
        time_members(started, spec, data)
    return started


def batch_sizes(spec: Spec) -> list[int]:
    """The batch sizes the trials may use, when the spec fixes or lists them (none for a range)."""
    size = spec.hyperparameters.batch_size
    return [int(v) for v in values_of(size)] if isinstance(size, (int, Choice)) else []


def time_members(started: FeaturePass, spec: Spec, data: Dataset) -> None:
    """One task per member and batch size, run once the member's shards are done, that times the
    member as a trial would (its resources and threads) on raw validation rows."""
    task = ray.remote(time_member).options(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu, name="member_latency", runtime_env=BEFORE_TRIALS_ENV)
    threads = max(1, int(spec.resources.cpu))
    val = data.splits["val"]
    for recipe in started.plans:
        described = MemberDescription(recipe.name, recipe.kind, recipe.input_key, recipe.params, "frozen")
        one = raw_rows(val, 1, [recipe.input_key])
        shards = [ref for (name, _), parts in started.refs.items() if name == recipe.name for ref in parts]
        for size in batch_sizes(spec):
            ref = task.remote(recipe, one, raw_rows(val, size, [recipe.input_key]), threads, *shards)
            started.timings[timing_key(described, size)] = (recipe.name, ref)


def build_frozen_members(spec: Spec, data: Dataset) -> None:
    """Build, in this process, every member the cache pass serves, as the composites made after the
    search build them (``sharing_frozen_members`` must be active: they then find them built), and
    prepare a row of its input (the libraries its preparation imports load now: torchvision for
    resizing took 4 s of the demo's registration, when MLflow checks the champion on raw rows). The
    driver runs this on another thread while the trials train: loading a pretrained backbone and
    its library's modules takes seconds that the trials leave idle."""
    val = data.splits["val"]
    for recipe in recipes(spec.members, spec.seed, data):
        recipe.member().prepare(raw_rows(val, 1, [recipe.input_key]))


def progress_line(done: int, total: int, seconds: float) -> str:
    rate = f", {done / seconds:,.0f} rows/s" if done and seconds > 0 else ""
    return f"feature cache: {done:,} of {total:,} rows ({done / max(1, total):.0%}){rate}"


def gather(
    refs: dict[tuple[str, str], list[ray.ObjectRef]], rows: dict[ray.ObjectRef, int], started: float, every_s: float = PROGRESS_EVERY_S
) -> dict[tuple[str, str], list[EncodedShard]]:
    """Wait for every shard, with a line every ``every_s`` seconds on a long pass: rows done (read
    from the cache or computed) of all the members' rows, and the rate since the pass started."""
    pending = [r for parts in refs.values() for r in parts]
    total, last = sum(rows.values()), time.monotonic()
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=every_s)
        if pending and time.monotonic() - last >= every_s:
            done = total - sum(rows[r] for r in pending)
            print(progress_line(done, total, time.monotonic() - started), file=sys.stderr, flush=True)
            last = time.monotonic()
    return {(name, split): fetched(name, parts) for (name, split), parts in refs.items()}


def fetched(member: str, refs: list[ray.ObjectRef]) -> list[Any]:
    """What the tasks of ``refs`` returned; a task's failure is ``member``'s (``MemberFailed``)."""
    try:
        return ray.get(refs)
    except RayTaskError as error:
        raise MemberFailed(member, str(error.cause or error).strip() or type(error.cause).__name__) from None


def describe_reports(reports: list[FeatureReport]) -> str:
    """One line per member: how many rows its backbone ran, or that the cache had them all."""
    lines = []
    for r in reports:
        done = f"computed {r.rows_computed:,} of {r.rows:,} rows" if r.rows_computed else f"all {r.rows:,} rows from the cache"
        lines.append(f"feature cache: {r.member} (frozen, {r.width} wide): {done}")
    return "\n".join(lines)
