"""What a composite costs to deploy: inference latency, parameters and artifact size.

A trial measures its composite once, after its first epoch (the cost depends on the
composite's structure, not on its weights), so every trial carries it, those the
scheduler stops early included. What is measured is the *deployed* composite, the one the
pyfunc model serves: every member real (a frozen member whose features the trial read from
the cache is loaded from its pretrained weights), in fp32, on the trial's own device, on raw
validation rows (preparation included), as the pyfunc gets them.

- ``latency_ms_p50``, ``latency_ms_p95``: one row at a time, after warm-up, over repeated calls;
- ``latency_ms_batch``: the median time of one batch of the spec's batch size;
- ``params_m``: millions of parameters, frozen members included;
- ``size_mb``: the saved artifact (composite JSON, safetensors, member assets), in 10^6 bytes.

A composite runs its members one after another, then fuses their features, so its latencies
are its members' plus its fusion head's: each member is timed alone (its input prepared from
raw rows, then run), once per search for all the structures it is part of (a frozen member in
the feature cache pass, on a trial's resources: ``time_member``), and the head on features of
those widths. An ensemble runs each member module once for all its composites that
share it (the same frozen backbone), then every composite's head: its latencies are those of
its distinct members and of its heads, added. Its parameters and size are counted on the
ensemble itself, each distinct member once.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from trainables.composite import CompositeModel, MemberDescription, load_trained_state, save_composite, trained_state
from trainables.data import Split
from trainables.digest import module_digest
from trainables.ensemble_model import Predictor, WeightedEnsemble, composites, save_ensemble
from trainables.feature_cache import MemberRecipe
from trainables.members import Member, run_member
from trainables.pipeline import EVAL_BATCH, Batches, MemberInput, SplitRows
from trainables.preprocess import Column, take
from trainables.metrics import LATENCIES
from trainables.precision import pick_device
from trainables.training import TrialPlan, build_model



@contextmanager
def preserved_rng() -> Iterator[None]:
    """Leave Python's, NumPy's and torch's random state as it was (building a model reseeds them)."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python)
    np.random.set_state(numpy)


def timings_ms(call: Callable[[], object], warmup: int, repeats: int, budget_s: float, least: int) -> np.ndarray:
    """Milliseconds per ``call`` after ``warmup`` calls: ``repeats`` calls, or fewer (but at least
    ``least``) when they take longer than ``budget_s`` in all."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (len(times) < least or time.perf_counter() - started < budget_s):
        begin = time.perf_counter()
        call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - begin) * 1000.0)
    return np.asarray(times)


def raw_rows(split: Split, count: int, keys: Sequence[str] | None = None) -> dict[str, Column]:
    """``count`` raw rows of ``split`` (its rows repeated when it has fewer), as the pyfunc model gets
    them: every input, or those named in ``keys``."""
    rows = np.arange(count) % len(split)
    return {name: take(column, rows) for name, column in split.inputs.items() if keys is None or name in keys}


def latencies(one: Callable[[], object], batch: Callable[[], object]) -> dict[str, float]:
    """``LATENCIES`` of a call on one row (``one``) and on one batch (``batch``; warmed by the single
    rows: a slower first batch is outweighed by the median)."""
    single = timings_ms(one, warmup=2, repeats=20, budget_s=0.5, least=10)
    batched = timings_ms(batch, warmup=0, repeats=3, budget_s=0.5, least=2)
    return {
        "latency_ms_p50": float(np.percentile(single, 50)),
        "latency_ms_p95": float(np.percentile(single, 95)),
        "latency_ms_batch": float(np.median(batched)),
    }


def added(parts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The latencies of parts that run one after another."""
    return {name: float(sum(p[name] for p in parts)) for name in LATENCIES}


def member_latency(member: Member, one: dict[str, Column], batch: dict[str, Column]) -> dict[str, float]:
    """What ``member`` adds to a composite's latency: its input prepared from the raw rows ``one`` (a
    row) and ``batch`` (a batch; ``raw_rows``), and run."""
    inputs = [MemberInput(member.name, member.input_key, member.preprocess)]

    def run(raw: dict[str, Column]) -> None:
        rows = SplitRows(raw, None, inputs, {})
        for _, part in Batches(len(rows), EVAL_BATCH):
            run_member(member, rows[0, part])

    return latencies(lambda: run(one), lambda: run(batch))


def time_member(
    recipe: MemberRecipe, one: dict[str, Column], batch: dict[str, Column], threads: int, *after: object, device: str | None = None
) -> dict[str, float]:
    """A frozen member's ``member_latency``, in the feature cache pass (on the device and ``threads``
    cores a trial gets), for the candidates made after the trials (``timing_key``). ``after``: the
    member's shards, as Ray task results: Ray runs this task once they are done (on a worker that
    has built the member, and not beside its first shards). A frozen member in eval mode draws no
    random number: the driver may run this on a thread beside others."""
    torch.set_num_threads(threads)
    member, _ = recipe.build(device)
    with torch.inference_mode():
        return member_latency(member.eval(), one, batch)


def head_latency(model: CompositeModel, batch_size: int) -> dict[str, float]:
    """What the fusion operator adds: fusing the members' features of one row, and of a batch."""
    device = next(model.parameters(), torch.empty(0)).device
    one, batch = ([torch.zeros(rows, m.width, device=device) for m in model.members] for rows in (1, batch_size))
    return latencies(lambda: model.fusion(one), lambda: model.fusion(batch))


def timing_key(member: MemberDescription, batch_size: int) -> str:
    """What a member's latency depends on: its kind, parameters and input, and the batch timed."""
    return json.dumps([member.name, member.kind, member.input, member.params, batch_size], sort_keys=True, default=str)


def latency_parts(model: CompositeModel, split: Split, batch_size: int, known: dict[str, dict[str, float]], counted: set[int]) -> list[dict[str, float]]:
    """The latencies ``model`` adds: its fusion head's, and each member's not in ``counted`` (member
    modules counted already; this one's are added there), timed alone unless ``known`` has them by
    ``timing_key`` (kept there)."""
    parts = [head_latency(model, batch_size)]
    for member, described in zip(model.members, model.description.members, strict=True):
        if id(member) in counted:
            continue
        counted.add(id(member))
        key = timing_key(described, batch_size)
        if key not in known:
            known[key] = member_latency(member, raw_rows(split, 1), raw_rows(split, batch_size))
        parts.append(known[key])
    return parts


def parameters_m(model: Predictor) -> float:
    """Millions of parameters; a member whose weights several composites share counts once."""
    seen: set[str] = set()
    built: set[int] = set()  # members several composites share as one module (``sharing_frozen_members``)
    total = 0
    for composite in composites(model):
        for member in composite.members:
            if id(member) in built:
                continue
            built.add(id(member))
            digest = module_digest(member)
            if digest not in seen:
                seen.add(digest)
                total += sum(p.numel() for p in member.parameters())
        total += sum(p.numel() for p in composite.fusion.parameters())
    return total / 1e6


def artifact_mb(model: Predictor) -> float:
    """The size of ``model`` saved as the champion artifact is, in 10^6 bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        if isinstance(model, WeightedEnsemble):
            save_ensemble(model, folder)
        else:
            save_composite(model, folder)
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def predictor_cost(model: Predictor, split: Split, batch_size: int, known: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """``COST_METRICS`` of a deployable composite or ensemble (every member real), on the device it
    is on: the latencies of each distinct member module once (an ensemble runs a member its
    composites share once; from ``known`` where they were timed already) and of each fusion head,
    added; parameters and size counted on the model (shared members once)."""
    known = {} if known is None else known
    counted: set[int] = set()
    with preserved_rng(), torch.inference_mode():
        model.eval()
        cost = added([part for c in composites(model) for part in latency_parts(c, split, batch_size, known, counted)])
        cost.update(params_m=parameters_m(model), size_mb=artifact_mb(model))
    return cost


def measure_cost(plan: TrialPlan, trained: CompositeModel, split: Split) -> dict[str, float]:
    """``COST_METRICS`` of the composite ``trained`` deploys as (see the module's docstring)."""
    with preserved_rng():
        deployed = build_model(plan)  # every member real, frozen ones from their pretrained weights
        load_trained_state(deployed, trained_state(trained))
    return predictor_cost(deployed.to(pick_device()), split, plan.batch_size)
