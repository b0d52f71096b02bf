"""Accuracy against cost, end to end: real searches through the CLI, read back from MLflow and Optuna.

- A two-objective search (validation accuracy, p95 latency) on the digits with a latency budget that
  the fast members meet and EfficientNet-Lite0 (frozen, read at 32 px: about 8 ms a row on one thread,
  against under 1 ms for the small CNN and the MLP) does not.
- A budget nothing meets: exit 1, one line, nothing registered.
- One objective: the same trials, epoch by epoch, as the record (``fixtures/one_objective_before.json``,
  first recorded at d44e052, before multi-objective search; recorded again when the search began
  covering each member alone and each subset first and ``weighted`` began learning its weights,
  and again when early stopping began sparing members alone: the fourth trial, the MLP alone, now runs
  both its epochs (the first three trials and the test table are unchanged); each trial's params
  gained ``class_weight: none``, the default, when class weighting became searchable; recorded
  again with the kernels pinned (``PORTABLE_KERNELS``); its history is the fixture's git log).
  Training a convolution gives other results on other CPUs even with the kernels pinned (on an AMD
  EPYC at 0baad66, the CNN + MLP trial's first-epoch log-loss was 2.2182 against 2.2017 recorded, the
  MLP trials' curves agreed to 1e-8): every configuration is compared, and the results of the trials
  and test rows that train no convolution (the MLP alone, which is also the best trial).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from search.locations import default_tracking_uri
from search.spec.objectives import Bound, Goal, Objectives
from search.run.preflight import load_data
from search.spec.schema import load_spec
from tests.conftest import TINY_SPEC
from tests.test_reproducible_e2e import run_once

pytestmark = pytest.mark.slow
FUSION_SEARCH = str(Path(sys.executable).parent / "fusion-search")
BUDGET_MS = 4.0
# A convolution's result depends on which kernels this CPU gets: the same trial of the small CNN
# scored 2.2449, 2.2334, 2.2405 and 2.2197 after its first epoch on one AVX-512 machine with torch's
# and oneDNN's instruction sets capped in turn (and 2.2269 on the machine that first recorded it).
# With these, torch's kernels, oneDNN's and MKL's are the same on any x86-64 CPU (SSE4.1 or newer).
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}
EFFNET = {"name": "effnet", "kind": "efficientnet_lite0", "input": "image", "params": {"image_size": 32}, "train": "frozen"}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # Not the $MLFLOW_TRACKING_URI an earlier test's search left in this process (a module fixture
    # runs before the autouse fixture that clears it): the spec's own store.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([FUSION_SEARCH, *args], capture_output=True, text=True, timeout=900, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    root = tmp_path_factory.mktemp("pareto")
    spec = {
        **TINY_SPEC,
        "name": "pareto",
        "members": [*TINY_SPEC["members"], EFFNET],
        "objective": [{"metric": "val_accuracy", "mode": "max"}, {"metric": "latency_ms_p95", "mode": "min"}],
        "constraints": {"latency_ms_p95": {"max": BUDGET_MS}},
        "budget": {"num_samples": 8, "max_concurrent": 1},
        "storage": str(root / "store"),
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = run_cli("run", str(path), cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = load_spec(path)
    client = MlflowClient(loaded.tracking_uri)
    experiment = client.get_experiment_by_name("pareto").experiment_id
    runs = client.search_runs([experiment], max_results=100)
    parent = next(r for r in runs if r.data.tags["fusion_search.role"] == "search")
    trials = [r for r in runs if r.data.tags["fusion_search.role"] == "trial"]
    return loaded, client, parent, trials, done.stdout, root


def test_every_trial_measures_its_cost_and_slow_ones_stop_after_one_epoch(budgeted):
    spec, _, _, trials, stdout, _ = budgeted
    assert len(trials) == spec.budget.num_samples
    for run in trials:
        metrics = run.data.metrics
        assert {"latency_ms_p50", "latency_ms_p95", "latency_ms_batch", "params_m", "size_mb"} <= set(metrics)
        assert 0 < metrics["latency_ms_p50"] <= metrics["latency_ms_p95"] and metrics["size_mb"] > 0
        with_effnet = "effnet" in run.data.params["members"].split("+")
        assert (metrics["params_m"] > 3.0) == with_effnet, "the frozen backbone counts: the deployed model runs it"
        if metrics["latency_ms_p95"] > BUDGET_MS:
            assert metrics["best_epoch"] == 1 and run.data.tags["fusion_search.state"] == "stopped_early", "over budget: stopped"
    slow = [r for r in trials if r.data.metrics["latency_ms_p95"] > BUDGET_MS]
    fast = [r for r in trials if r.data.metrics["latency_ms_p95"] <= BUDGET_MS]
    assert slow and fast, "the budget splits the trials (EfficientNet's from the others)"
    assert all("effnet" in r.data.params["members"] for r in slow)
    assert "misses latency_ms_p95" in stdout and "Pareto front (val_accuracy (max), latency_ms_p95 (min)" in stdout


def test_the_champion_fits_the_budget_is_on_the_front_and_best_among_those_that_fit(budgeted):
    spec, client, parent, trials, _, _ = budgeted
    champion = parent.data.metrics
    assert champion["champion.latency_ms_p95"] <= BUDGET_MS
    assert {"champion.params_m", "champion.size_mb", "champion.latency_ms_batch"} <= set(champion)
    fitting = [r.data.metrics for r in trials if r.data.metrics["latency_ms_p95"] <= BUDGET_MS]
    assert champion["champion.val_accuracy"] >= max(m["best_val_accuracy"] for m in fitting) - 1e-12
    objectives = spec.objectives
    point = {"best_val_accuracy": champion["champion.val_accuracy"], "latency_ms_p95": champion["champion.latency_ms_p95"]}
    values = objectives.values(point)
    assert not any(objectives.dominates(objectives.values(m), values) for m in fitting), "on the front"
    version = client.get_model_version_by_alias(spec.name, "champion")
    assert version.run_id == parent.info.run_id


def test_the_registered_champion_runs_within_its_measured_latency(budgeted):
    spec, client, parent, _, _, _ = budgeted
    mlflow.set_tracking_uri(spec.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{spec.name}@champion")
    val = load_data(spec).splits["val"]
    row = {name: column[:1].numpy() for name, column in val.inputs.items()}
    torch.set_num_threads(int(spec.resources.cpu))  # as the trials ran
    for _ in range(5):
        model.predict(row)
    times = []
    for _ in range(50):
        started = time.perf_counter()
        model.predict(row)
        times.append((time.perf_counter() - started) * 1000)
    measured = parent.data.metrics["champion.latency_ms_p95"]
    p50 = float(np.percentile(times, 50))
    # The pyfunc adds its input conversion to what the trial timed; machines are noisy: a wide band.
    assert measured / 4 <= p50 <= measured * 4 + 1.0, (p50, measured)
    assert p50 <= BUDGET_MS, "the loaded champion meets the budget"


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)


def test_pareto_artifacts_and_the_front_on_the_command_line(budgeted):
    spec, client, parent, trials, _, root = budgeted
    folder = Path(client.download_artifacts(parent.info.run_id, "pareto", str(root / "pareto_artifacts")))
    assert (folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (folder / "pareto.html").read_text(encoding="utf-8")
    parser = Tags()
    parser.feed(page)
    assert {"html", "body", "script", "div"} <= set(parser.tags) and "Plotly.newPlot" in page
    assert f"latency_ms_p95 \\u003c= {BUDGET_MS:g}" in page, "the constraint line (JSON inside the page escapes <)"
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "candidates.json", str(root / "pareto_artifacts"))).read_text())
    assert sum(c["champion"] for c in summary["candidates"]) == 1
    front = {c["candidate"] for c in summary["candidates"] if c["on_front"]}
    assert all(c["meets_constraints"] for c in summary["candidates"] if c["on_front"])
    listed = run_cli("trials", spec.name, "--pareto", "--storage", str(spec.storage), cwd=root)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == (
        f"Pareto front of val_accuracy (max), latency_ms_p95 (min); subject to latency_ms_p95 <= {BUDGET_MS:g} "
        "(trials, the ensemble, soups, merges, the student):"
    )
    printed = {max((label for label in front if line.startswith(label + " ")), key=len) for line in lines[3:]}
    assert printed == front and sum(line.rstrip().endswith("yes") for line in lines[3:]) == 1, "the champion marked"
    objectives = spec.objectives
    fitting = [r.data.metrics for r in trials if objectives.feasible(r.data.metrics)]
    for candidate in summary["candidates"]:
        if candidate["on_front"] and candidate["candidate"] != "ensemble":
            values = objectives.values(candidate)
            assert not any(objectives.dominates(objectives.values(m), values) for m in fitting), candidate


def test_a_budget_nothing_meets_registers_nothing(tmp_path):
    spec = {**TINY_SPEC, "name": "impossible", "budget": {"num_samples": 2, "max_concurrent": 1}, "storage": str(tmp_path / "store")}
    spec["constraints"] = {"latency_ms_p95": {"max": 0.001}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = run_cli("run", str(tmp_path / "spec.yaml"), cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no trial meets the constraints (latency_ms_p95 <= 0.001)" in errors[0], done.stderr[-2000:]
    client = MlflowClient(default_tracking_uri(tmp_path / "store"))
    assert client.search_registered_models() == []
    assert "Trials (best first)" not in done.stdout


def test_one_objective_gives_the_trials_it_gave_before(tmp_path):
    """The record has no rows of soups, merges or the checkpoint average (turned off here) and no cost columns."""
    trials, table = run_once(tmp_path / "now", PORTABLE_KERNELS, weight_fusion={"soups": False, "merges": [], "checkpoint_average": 0})
    before = json.loads((Path(__file__).parent / "fixtures" / "one_objective_before.json").read_text())
    assert [p for p, _ in trials] == [t["params"] for t in before["trials"]], "the same configurations, in order"
    portable = [(curve, recorded) for (params, curve), recorded in zip(trials, before["trials"], strict=True) if "cnn" not in params["members"].split("+")]
    assert len(portable) == 2, "both MLP trials are compared"
    for curve, recorded in portable:
        assert curve == pytest.approx(recorded["val_log_loss"], rel=1e-6), "the same results, epoch by epoch"
    assert table.keys() == before["test_table"].keys()
    for row in ("mlp alone", "best trial"):
        recorded = before["test_table"][row]
        assert {key: table[row][key] for key in recorded} == pytest.approx(recorded, rel=1e-6), row


def test_a_study_refuses_a_search_on_other_objectives(tmp_path):
    """The Optuna study remembers what its trials were scored on: a spec with other objectives
    under the same name and storage is one line before any trial, not a study of mixed values."""
    from search.run.optuna_search import register_search
    from search.errors import SpecError

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    one = Objectives((Goal("val_log_loss", "min"),))
    two = Objectives((Goal("val_log_loss", "min"), Goal("latency_ms_p95", "min")))
    budget = Objectives(one.goals, (Bound("latency_ms_p95", high=5.0),))
    assert register_search(storage, "s", one) == 0
    for other in (two, budget):
        with pytest.raises(SpecError, match="holds trials scored on val_log_loss \\(min\\)"):
            register_search(storage, "s", other)
    assert register_search(storage, "s", one) == 1


def test_another_select_rule_picks_another_point_of_the_front(budgeted):
    """The same finished search, its champion picked again with ``select: latency_ms_p95``: the
    fastest point of the front that fits, rebuilt from its trial's checkpoint."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    from search.candidates.champion import choose_champion
    from search.candidates.ensemble import ENSEMBLE
    from trainables.composite import CompositeModel

    spec, _, parent, _, _, _ = budgeted
    grid = ResultGrid(ExperimentAnalysis(parent.data.tags["fusion_search.tune_experiment"]))
    fastest = spec.model_copy(update={"select": "latency_ms_p95"})
    choice = choose_champion(grid, fastest, load_data(spec))
    front = [c for c, on in zip(choice.candidates, choice.on_front, strict=True) if on]
    assert front and all(fastest.objectives.feasible(c.point) and c.eligible for c in front)
    champion = choice.champion
    assert champion is min(front, key=lambda c: c.point["latency_ms_p95"])
    model = champion.build()
    assert champion.kind != ENSEMBLE and isinstance(model, CompositeModel), "one composite is faster than any ensemble"
    assert len(champion.plans) == 1 and model.description == champion.plans[0].composite
    if champion.kind == "trial":
        assert champion.point["trial_id"] == champion.trial and champion.trial in champion.fusion
    else:  # a soup or merge of the fastest structure's trials, or the student
        assert champion.made_of["structure_of"] == champion.trial
