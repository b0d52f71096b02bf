"""What a composite costs to deploy: inference latency, parameters and artifact size.

A trial measures its composite once, after its first epoch (the cost depends on the
composite's structure, not on its weights), so every trial carries it, those the
scheduler stops early included. What is measured is the *deployed* composite, the one the
pyfunc model serves: every member real (a frozen member whose features the trial read from
the cache is loaded from its pretrained weights), in fp32, on the trial's own device, called
through ``predict_raw`` on raw validation rows (preparation included), as the pyfunc does.

- ``latency_ms_p50``, ``latency_ms_p95``: one row at a time, after warm-up, over repeated calls;
- ``latency_ms_batch``: the median time of one batch of the spec's batch size;
- ``params_m``: millions of parameters, frozen members included;
- ``size_mb``: the saved artifact (composite JSON, safetensors, member assets), in 10^6 bytes.

An ensemble runs its composites one after another, so its latencies are the sums of its
trials'. It stores a member shared by several composites (the same frozen backbone) once, so
its parameters and size are counted on the ensemble itself, each distinct member once.
"""

from __future__ import annotations

import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from trainables.composite import CompositeModel, load_trained_state, save_composite, trained_state
from trainables.data import Split
from trainables.digest import state_digest
from trainables.ensemble_model import Predictor, WeightedEnsemble, composites, save_ensemble
from trainables.preprocess import take
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


def raw_rows(split: Split, count: int) -> dict[str, object]:
    """``count`` raw rows of ``split`` (its rows repeated when it has fewer), as the pyfunc model gets them."""
    rows = np.arange(count) % len(split)
    return {name: take(column, rows) for name, column in split.inputs.items()}


def latency(model: Predictor, split: Split, batch_size: int) -> dict[str, float]:
    """``LATENCIES`` of ``model`` on rows of ``split``: one row at a time, and batches of ``batch_size``."""
    one, batch = raw_rows(split, 1), raw_rows(split, batch_size)
    single = timings_ms(lambda: model.predict_raw(one), warmup=2, repeats=20, budget_s=0.75, least=10)
    batched = timings_ms(lambda: model.predict_raw(batch), warmup=1, repeats=3, budget_s=1.0, least=2)
    return {
        "latency_ms_p50": float(np.percentile(single, 50)),
        "latency_ms_p95": float(np.percentile(single, 95)),
        "latency_ms_batch": float(np.median(batched)),
    }


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
            digest = state_digest(member.state_dict())
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


def predictor_cost(model: Predictor, split: Split, batch_size: int) -> dict[str, float]:
    """``COST_METRICS`` of a deployable composite or ensemble (every member real), on the device it is on."""
    with preserved_rng(), torch.inference_mode():
        model.eval()
        cost = latency(model, split, batch_size)
        cost.update(params_m=parameters_m(model), size_mb=artifact_mb(model))
    return cost


def measure_cost(plan: TrialPlan, trained: CompositeModel, split: Split) -> dict[str, float]:
    """``COST_METRICS`` of the composite ``trained`` deploys as (see the module's docstring)."""
    with preserved_rng():
        deployed = build_model(plan)  # every member real, frozen ones from their pretrained weights
        load_trained_state(deployed, trained_state(trained))
    return predictor_cost(deployed.to(pick_device()), split, plan.batch_size)


def ensemble_cost(model: WeightedEnsemble, trial_costs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """An ensemble's cost: its trials' latencies added up (its composites run one after another),
    its parameters and size counted on the ensemble (shared members once)."""
    cost = {name: float(sum(c[name] for c in trial_costs)) for name in LATENCIES}
    cost.update(params_m=parameters_m(model), size_mb=artifact_mb(model))
    return cost
