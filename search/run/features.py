"""The driver's side of the feature cache: frozen members' features, computed before any trial.

For every member the spec may freeze, each split is cut into shards (``shard_ranges``: 64
to 2,048 rows, at least 16 a split where it has the rows; a text column in the order of its texts' lengths,
``padding_order``, so that a shard's batch pads little) and one piece of work per shard reads
its features from the cache under ``STORAGE/feature_cache`` or computes and stores them. Where
that work runs is the runner's choice (``pass_runner``): on a cluster, one Ray task per shard,
the tasks of every member at once over all the cluster's cores (one CPU and one thread each),
or one per GPU when trials get GPUs, a worker process keeping the member it built for its next
shard; on the embedded instance (this machine's cores alone, trials without a GPU), threads of
the driver itself, one per core, which build each member once, in the process that makes the
candidates after the trials (``sharing_frozen_members``), rather than once in each of Ray's
worker processes after they start and import torch. Only references (paths, texts) reach the
work and only file names come back, so the driver never holds a split's pixels or features.
Because every request goes through the cache's per-entry lock, a second search over the same
data and member, even on another node, reuses the files.

After its shards, each member's latency is timed once more, on a trial's resources (for
every batch size the spec fixes or lists): the candidates made after the trials read it rather
than time the member then (``trainables.cost``).
"""

from __future__ import annotations

import importlib
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import ray
from ray.exceptions import RayTaskError

from search.spec.schema import MemberSpec, Resources, Spec
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


class PassRunner(Protocol):
    """Where the cache pass's work runs: each call starts one piece and returns its handle."""

    def shard(self, recipe: MemberRecipe, column: Any, root: str) -> Any:
        """``encode_shard`` for ``column``'s rows of ``recipe``'s member, under the cache ``root``."""

    def timing(self, recipe: MemberRecipe, one: dict[str, Any], batch: dict[str, Any], after: list[Any]) -> Any:
        """``time_member`` on a trial's resources, once the handles ``after`` (the member's shards) are done."""

    def wait(self, pending: list[Any], timeout: float) -> list[Any]:
        """Wait until ``pending`` is done or ``timeout`` seconds passed; what is still pending."""

    def results(self, member: str, handles: list[Any]) -> list[Any]:
        """What the pieces of ``handles`` returned; a piece's failure is ``member``'s (``MemberFailed``)."""

    def cancel(self, handles: list[Any]) -> None:
        """Stop the pieces of ``handles`` that have not started (the pass is abandoned)."""


class RayTasks:
    """The pass as Ray tasks over the whole cluster, in a worker pool of their own (``BEFORE_TRIALS_ENV``),
    whose workers start (``warm_workers``) as this runner is made."""

    def __init__(self, resources: Resources) -> None:
        on_gpu = resources.gpu > 0
        self.threads = max(1, int(resources.cpu)) if on_gpu else 1
        self.workers = self.threads - 1 if on_gpu else 0
        self.shard_task = ray.remote(encode_shard).options(
            num_cpus=resources.cpu if on_gpu else 1, num_gpus=1 if on_gpu else 0, name="feature_cache", runtime_env=BEFORE_TRIALS_ENV
        )
        self.timing_task = ray.remote(time_member).options(
            num_cpus=resources.cpu, num_gpus=resources.gpu, name="member_latency", runtime_env=BEFORE_TRIALS_ENV
        )
        self.timing_threads = max(1, int(resources.cpu))
        warm_workers()

    def shard(self, recipe: MemberRecipe, column: Any, root: str) -> ray.ObjectRef:
        return self.shard_task.remote(recipe, column, root, self.threads, self.workers)

    def timing(self, recipe: MemberRecipe, one: dict[str, Any], batch: dict[str, Any], after: list[Any]) -> ray.ObjectRef:
        return self.timing_task.remote(recipe, one, batch, self.timing_threads, *after)

    def wait(self, pending: list[Any], timeout: float) -> list[Any]:
        return ray.wait(pending, num_returns=len(pending), timeout=timeout)[1]

    def results(self, member: str, handles: list[Any]) -> list[Any]:
        try:
            return ray.get(handles)
        except RayTaskError as error:
            raise MemberFailed(member, str(error.cause or error).strip() or type(error.cause).__name__) from None

    def cancel(self, handles: list[Any]) -> None:
        for handle in handles:
            ray.cancel(handle)


class DriverThreads:
    """The pass on threads of the driver, for the embedded instance: one thread per trial's worth of
    cores (``threads`` each, a trial's), members on the CPU. Pieces start in the order they come, so a
    timing, made after its member's shards, never waits on a shard that has no thread."""

    def __init__(self, cores: int, threads: int) -> None:
        self.threads = threads
        self.pool = ThreadPoolExecutor(max(1, cores // threads), thread_name_prefix="feature cache")

    def shard(self, recipe: MemberRecipe, column: Any, root: str) -> Future:
        return self.pool.submit(encode_shard, recipe, column, root, self.threads, 0, "cpu")

    def timing(self, recipe: MemberRecipe, one: dict[str, Any], batch: dict[str, Any], after: list[Any]) -> Future:
        def timed() -> dict[str, float]:
            wait_futures(after)
            return time_member(recipe, one, batch, self.threads, device="cpu")

        return self.pool.submit(timed)

    def wait(self, pending: list[Any], timeout: float) -> list[Any]:
        left = wait_futures(pending, timeout=timeout).not_done
        return [f for f in pending if f in left]

    def results(self, member: str, handles: list[Any]) -> list[Any]:
        for handle in handles:
            failed = handle.exception()
            if failed is not None:
                raise MemberFailed(member, str(failed).strip() or type(failed).__name__)
        return [f.result() for f in handles]

    def cancel(self, handles: list[Any]) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def pass_runner(resources: Resources, embedded: bool) -> PassRunner:
    """Threads of the driver on the embedded instance when trials take no GPU (the same cores Ray's
    workers would use, without their start), Ray tasks otherwise."""
    if embedded and resources.gpu == 0:
        return DriverThreads(int(ray.cluster_resources().get("CPU", 1)), max(1, int(resources.cpu)))
    return RayTasks(resources)


@dataclass
class FeaturePass:
    """The cache pass under way: one piece of work per shard and member, run by ``runner``; ``wait``
    gathers the result."""

    plans: list[MemberRecipe]
    runner: PassRunner
    refs: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    rows: dict[Any, int] = field(default_factory=dict)  # each shard's rows, for the progress line
    places: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (member, split): each row's position in shards that hold the rows in another order
    timings: dict[str, tuple[str, Any]] = field(default_factory=dict)  # by ``timing_key``: member, its latencies
    started: float = field(default_factory=time.monotonic)

    @property
    def members(self) -> frozenset[str]:
        """The members this pass builds and runs on every row."""
        return frozenset(recipe.name for recipe in self.plans)

    def cancel(self) -> None:
        self.runner.cancel([r for parts in self.refs.values() for r in parts] + [r for _, r in self.timings.values()])

    def wait(self) -> tuple[dict[str, CachedMember], list[FeatureReport], dict[str, dict[str, float]]]:
        """Cached features of every member the spec may freeze, as shard files trials memory-map;
        what the pass learnt of each member's latency, by ``timing_key``."""
        shards = gather(self.runner, self.refs, self.rows, self.started)
        latencies = {key: self.runner.results(name, [ref])[0] for key, (name, ref) in self.timings.items()}
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


def start_features(spec: Spec, data: Dataset, runner: PassRunner) -> FeaturePass:
    """Start the cache pass for every member the spec may freeze (nothing when ``feature_cache`` is
    off) on ``runner``; the driver checks members and opens MLflow meanwhile."""
    plans = recipes(spec.members, spec.seed, data) if spec.feature_cache else []
    root = str(spec.storage / CACHE_DIR)
    started = FeaturePass(plans, runner)
    for recipe in plans:
        for name, split in data.splits.items():
            column = split.inputs[recipe.input_key]
            order = padding_order(column)
            if order is not None:
                column = take(column, order)
                started.places[recipe.name, name] = np.argsort(order)
            parts = started.refs[recipe.name, name] = []
            for rows in shard_ranges(len(split)):
                parts.append(runner.shard(recipe, take(column, rows), root))
                started.rows[parts[-1]] = len(rows)
    if spec.measure_cost is not False:
        time_members(started, spec, data)
    return started


def batch_sizes(spec: Spec) -> list[int]:
    """The batch sizes the trials may use, when the spec fixes or lists them (none for a range)."""
    size = spec.hyperparameters.batch_size
    return [int(v) for v in values_of(size)] if isinstance(size, (int, Choice)) else []


def time_members(started: FeaturePass, spec: Spec, data: Dataset) -> None:
    """One timing per member and batch size, run once the member's shards are done, that times the
    member as a trial would (its resources and threads) on raw validation rows."""
    val = data.splits["val"]
    for recipe in started.plans:
        described = MemberDescription(recipe.name, recipe.kind, recipe.input_key, recipe.params, "frozen")
        one = raw_rows(val, 1, [recipe.input_key])
        shards = [ref for (name, _), parts in started.refs.items() if name == recipe.name for ref in parts]
        for size in batch_sizes(spec):
            ref = started.runner.timing(recipe, one, raw_rows(val, size, [recipe.input_key]), shards)
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
    runner: PassRunner, refs: dict[tuple[str, str], list[Any]], rows: dict[Any, int], started: float, every_s: float = PROGRESS_EVERY_S
) -> dict[tuple[str, str], list[EncodedShard]]:
    """Wait for every shard, with a line every ``every_s`` seconds on a long pass: rows done (read
    from the cache or computed) of all the members' rows, and the rate since the pass started."""
    pending = [r for parts in refs.values() for r in parts]
    total, last = sum(rows.values()), time.monotonic()
    while pending:
        pending = runner.wait(pending, every_s)
        if pending and time.monotonic() - last >= every_s:
            done = total - sum(rows[r] for r in pending)
            print(progress_line(done, total, time.monotonic() - started), file=sys.stderr, flush=True)
            last = time.monotonic()
    return {(name, split): runner.results(name, parts) for (name, split), parts in refs.items()}


def describe_reports(reports: list[FeatureReport]) -> str:
    """One line per member: how many rows its backbone ran, or that the cache had them all."""
    lines = []
    for r in reports:
        done = f"computed {r.rows_computed:,} of {r.rows:,} rows" if r.rows_computed else f"all {r.rows:,} rows from the cache"
        lines.append(f"feature cache: {r.member} (frozen, {r.width} wide): {done}")
    return "\n".join(lines)
