"""Run a search: data -> Tuner (OptunaSearch + ASHA) -> champion -> MLflow.

The spec's ``Objectives`` say what every part compares: ASHA prunes on the first objective,
Optuna optimises them all (its sampler injected, ``search.spec.samplers``), a trial whose cost
breaks a constraint is stopped after its first epoch (cost does not change with training),
and the champion is the candidate ``Objectives.choose`` picks.

``run_search`` is the one entry point the CLI and the tests call. Everything that
can be wrong with the inputs is checked before Ray starts; MLflow bookkeeping is
done here on the driver (the trainable only reports), so the parent run is closed
with the right status however the search ends.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import pyarrow.fs
import ray
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search import ConcurrencyLimiter

from cluster.connect import start, wait_for_warm_workers
from trainables import PRELOAD
from search.candidates.baselines import member_baselines
from search.candidates.candidate import TABLE_COSTS, Candidate
from search.candidates.champion import Choice, Threshold, against_members, choose_champion, decision_threshold, describe as describe_choice, disagreement, domain_rows, table_row
from search.candidates.distill import STUDENT
from search.candidates.ensemble import ENSEMBLE
from search.candidates.trials import BEST_TRIAL, alone_label
from search.errors import SearchFailed, SearchInterrupted
from search.locations import store_option
from search.look.painter import Painter
from search.names import (
    CANDIDATES_FILE, CHAMPION_ALIAS, CLASS_REPORT, CHAMPION_KIND_TAG, CHAMPION_TRIAL_TAG, CHAMPION_URI_TAG, CONFUSION, COVERAGE_FILE, FEATURE_CACHE, TEST_DISAGREES_TAG,
    DOMAIN_PROJECTION, PREDICTED, TEST_TABLE, THRESHOLD_METRIC, TUNE_TRIAL_ATTR,
)
from search.run.domains import domain_projections
from search.run.features import MemberFailed, build_frozen_members, describe_reports, pass_runner, start_features
from search.run.optuna_search import ConstraintSlack, PruneAwareOptunaSearch, fail_running, finished_after_snapshot, register_search, stopped_early
from search.run.preflight import FITTED_DIR, check_members, check_storage, data_summary, fit_members, load_data, member_failed
from search.run.scheduler import build_scheduler
from search.run.progress import Phases, ProgressPrinter, describe, hide_tune_resume_hint, quiet_libraries
from search.run.record import SearchRun, open_experiment, table_metrics, warm_model_logging
from search.run.space import alone_again, coverage, coverage_record, describe_coverage, queued, space_for, structures
from search.spec.objectives import Objectives, reported_key
from search.spec.samplers import SAMPLERS
from search.spec.schema import Budget, Resources, Spec
from search.stores import first_use
from search.text import describe_tried, error_summary
from trainables.checkpoint import result_from_checkpoints
from trainables.data import Dataset, Split
from trainables.feature_cache import CachedMember, FeatureReport
from trainables.metrics import COST_METRICS, QUALITY_METRICS, class_report, quality_metrics, predicted_classes
from trainables.members import sharing_frozen_members
from trainables.trainable import train_composite


@dataclass
class SearchOutcome:
    experiment_id: str
    parent_run_id: str
    champion_uri: str
    best_trial: str
    champion: str  # what the champion is: a trial, or an ensemble of weighted trials
    test_table: dict[str, dict[str, float]]
    objectives: Objectives  # what "better" meant (a regression's default is RMSE, whatever the spec's file says)
    trials: list[dict[str, Any]] = field(default_factory=list)
    front: list[dict[str, Any]] = field(default_factory=list)  # the Pareto front, when the search trades off
    marks: dict[str, str] = field(default_factory=dict)  # test-table row -> whether the champion rule could pick it


def build_sampler(spec: Spec, seed: int) -> optuna.samplers.BaseSampler:
    """The spec's sampler (``search.spec.samplers``), with the constraints when it has some."""
    objectives = spec.objectives
    constraints = ConstraintSlack(len(objectives.bounds)) if objectives.bounds else None
    return SAMPLERS[spec.sampler](seed, spec.budget.num_samples, constraints)


def build_searcher(spec: Spec, data: Dataset, search_run: str, sampler: optuna.samplers.BaseSampler | None = None) -> ConcurrencyLimiter:
    """Optuna on the spec's objectives in a persistent study (``spec.study_url``, one study per
    search name; its trials marked with the search's parent run ``search_run``), sampling with
    ``sampler`` (default: the spec's, seeded) once the structures the budget covers first
    (``search.run.space.coverage``) are queued."""
    spec.storage.mkdir(parents=True, exist_ok=True)
    with first_use(spec.study_url):
        storage = optuna.storages.RDBStorage(spec.study_url)
        earlier = register_search(storage, spec.name, spec.objectives)
    searcher = PruneAwareOptunaSearch(
        space=space_for(spec, data),
        objectives=spec.objectives,
        search_run=search_run,
        budget=spec.budget.num_samples,
        alone_again=alone_again(spec),
        # The study's first search: the spec's seed; a later or concurrent one: its own.
        sampler=sampler or build_sampler(spec, spec.seed + earlier),
        study_name=spec.name,
        storage=storage,
    )
    first = coverage(spec.members, spec.fusion)
    searcher.queue(queued(spec, first[: spec.budget.num_samples]))
    print(describe_coverage(first, len(structures(spec.members, spec.fusion)), spec.budget.num_samples), flush=True)
    return ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent)


class OverBudget(tune.Stopper):
    """Stops a trial whose cost breaks a constraint, at its first report: cost does not change with
    training, so more epochs could not make it fit."""

    def __init__(self, objectives: Objectives) -> None:
        self.bounds = [b for b in objectives.bounds if b.metric in COST_METRICS]

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return any(b.slack(result) > 0 for b in self.bounds)

    def stop_all(self) -> bool:
        return False


TRIAL_FOLDER = "trial_"  # a trial's folder: this and its Tune trial id
PREDICTED_ROWS = 2000  # a regression champion's test predictions kept for its picture


def trial_dirname(trial: tune.experiment.Trial) -> str:
    """Short trial folder names (Tune's default spells out the whole config)."""
    return f"{TRIAL_FOLDER}{trial.trial_id}"


def trainable_for(resources: Resources, data: Dataset, features: dict[str, CachedMember]) -> Any:
    """The trainable with ``data`` and cached ``features`` bound (through Ray's object store) and its resources."""
    return tune.with_resources(
        tune.with_parameters(train_composite, data=data, features=features),
        {"cpu": resources.cpu, "gpu": resources.gpu},
    )


def build_tuner(
    spec: Spec,
    data: Dataset,
    experiment: str,
    callbacks: list[tune.Callback],
    verbose: bool,
    searcher: ConcurrencyLimiter,
    features: dict[str, CachedMember] | None = None,
) -> tune.Tuner:
    """The Tuner for ``spec``, sampling with ``searcher``; ``data`` and cached ``features`` reach
    trials through Ray's object store."""
    return tune.Tuner(
        trainable_for(spec.resources, data, features or {}),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=build_scheduler(spec.asha, spec.objectives.first, spec.hyperparameters.max_epochs()),
            num_samples=spec.budget.num_samples,
            time_budget_s=spec.budget.time_limit_s,
            trial_dirname_creator=trial_dirname,
            reuse_actors=spec.resources.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=experiment,
            storage_path=spec.tune_storage,
            # Tune's JSON and CSV records of each trial, not its TensorBoard one (see prepare).
            callbacks=[*callbacks, JsonLoggerCallback(), CSVLoggerCallback()],
            # All of them while the search runs (see keep_latest_checkpoints).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            verbose=1 if verbose else 0,
            stop=OverBudget(spec.objectives) if spec.objectives.bounds else None,
        ),
    )


def keep_latest_checkpoints(results: list[tune.Result]) -> None:
    """Delete every trial's checkpoints but its latest, once the search is over.

    While it runs Tune keeps them all: its snapshot of the experiment (what ``resume`` restores) is
    uploaded in the background and can name an older checkpoint than a trial's newest; had that
    one been deleted, the trial could not be restored. A failure here costs space, not results."""
    for result in results:
        if result.checkpoint is None:
            continue
        filesystem, latest = result.checkpoint.filesystem, result.checkpoint.path
        folder, name = latest.rsplit("/", 1)
        try:
            for info in filesystem.get_file_info(pyarrow.fs.FileSelector(folder)):
                if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_") and info.base_name != name:
                    filesystem.delete_dir(info.path)
        except OSError as error:
            print(f"warning: could not delete old checkpoints in {folder}: {error_summary(str(error))}", file=sys.stderr, flush=True)


def trial_rows(results: list[tune.Result], objectives: Objectives) -> list[dict[str, Any]]:
    """A row per trial: what it was, how it ended, and its value of each objective and constraint."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        state = "failed" if result.error else ("stopped early" if stopped_early(metrics) else "completed")
        if state == "stopped early" and objectives.violations(metrics):
            state = "over budget"  # stopped after its first epoch by OverBudget
        row = {"trial": metrics.get("trial_id", ""), "fusion": describe(result.config), "state": state, "epochs": metrics.get("epoch")}
        rows.append({**row, **{key: metrics.get(key) for key in objectives.shown}})
    return rows


def front_rows(choice: Choice, objectives: Objectives) -> list[dict[str, Any]]:
    """The Pareto front (every eligible candidate no other beats), best first on the first objective."""
    rows = [{"candidate": c.label, "fusion": c.fusion, **{k: c.point.get(k) for k in objectives.shown}} for c, on in zip(choice.candidates, choice.on_front, strict=True) if on]
    return sorted(rows, key=objectives.sort_key)


def no_result(results: list[tune.Result], name: str) -> SearchFailed:
    errors = [error_summary(str(r.error)) for r in results if r.error]
    detail = f": first error: {errors[0]}" if errors else ""
    return SearchFailed(f"no trial of {name!r} reported a result{detail}")


def backbone_rows(results: list[tune.Result], cache_rows: int) -> int:
    """Rows run through frozen backbones in the whole search: by the cache tasks and inside trials."""
    return cache_rows + sum(int((r.metrics or {}).get("backbone_rows", 0)) for r in results)


def with_forgotten(results: list[tune.Result], study: optuna.Study, parent: str, experiment: str) -> list[tune.Result]:
    """The results of a resumed search: Tune's, and those of its trials that finished after Tune's
    last snapshot (Optuna has them finished), read from their checkpoints."""
    known = {r.path.rstrip("/").rsplit("/", 1)[-1].removeprefix(TRIAL_FOLDER) for r in results}
    found = [result_from_checkpoints(f"{experiment}/{TRIAL_FOLDER}{t.user_attrs[TUNE_TRIAL_ATTR]}", t.user_attrs[TUNE_TRIAL_ATTR]) for t in finished_after_snapshot(study, parent, known)]
    return results + [r for r in found if r is not None]


def champion_metrics(point: dict[str, float]) -> dict[str, float]:
    """``champion.<metric>`` for each validation metric and cost measure of the champion."""
    names = [*QUALITY_METRICS, *COST_METRICS]
    return {f"champion.{name}": point[key] for name in names for key in [reported_key(name)] if key in point}


@dataclass(frozen=True)
class Evaluated:
    """The champion on test: the comparison table, its own test metrics, and (two classes) its
    decision threshold, which its row's metrics of predicted classes are at; the parent run's
    metrics of the candidates (``<candidate>.<first objective>``) and of the champion
    (``champion.<metric>``), logged after the models with the test table's (``log_predictor`` says why)."""

    table: dict[str, dict[str, float]]
    metrics: dict[str, float]
    threshold: Threshold | None
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float]


def record_choice(spec: Spec, run: SearchRun, choice: Choice, data: Dataset, features: dict[str, CachedMember]) -> Evaluated:
    """Set the champion's decision threshold (two classes), evaluate it once on test (its confusion
    matrix and per-class report, or a regression's predictions beside the targets), build the
    comparison table (every candidate that is a row, the members alone, the champion) and log it
    with what the makers made. Everything the pictures draw is stored once this returns."""
    test = data.splits["test"]
    champion, objectives = choice.champion, spec.objectives
    threshold = decision_threshold(spec.decision_threshold, objectives.first, champion, data, features)
    if threshold is not None:
        print(threshold.words, flush=True)
    proba = champion.probabilities(data, "test", features)
    cut = None if threshold is None else threshold.value
    test_metrics = quality_metrics(proba, test.labels, "test", cut)
    if data.task == "regression":
        shown = slice(0, PREDICTED_ROWS)
        run.json(PREDICTED, {"true": test.labels[shown].tolist(), "predicted": proba[shown, 0].tolist()})
    else:
        predicted = predicted_classes(proba.numpy(), cut)
        run.json(CONFUSION, confusion_matrix(predicted, test.labels.numpy(), data.class_names))
        run.json(CLASS_REPORT, class_report(predicted, test.labels.numpy(), data.class_names))
    rows: dict[str, dict[str, float]] = {}
    for c in choice.rows:
        rows[c.label] = table_row(c, choice.costs[c.label], test.labels)
        rows.update(domain_rows(c.label, torch.from_numpy(np.asarray(c.test)), test.labels, data.domains))
    table: dict[str, dict[str, float]] = {}
    missing = [m.name for m in spec.members if alone_label(m.name) not in rows]
    if missing:
        why = "fusion.members_alone is false" if not spec.fusion.members_alone else f"no trial of {', '.join(missing)} alone met the constraints in this budget"
        print(f"members alone are not all candidates: {why}", flush=True)
        if spec.report.baselines:
            print("training each member alone for the comparison table (not candidates) ...", flush=True)
            table.update(member_baselines(spec.members, spec.resources, objectives.first, data, choice.best.plans[0], features))
    table.update(rows)
    costs = {**{k: v for k, v in champion.point.items() if k in TABLE_COSTS}, **rows.get(champion.label, {})}
    table["champion"] = {**test_metrics, **{k: costs[k] for k in TABLE_COSTS if k in costs}}
    table.update(domain_rows("champion", proba, test.labels, data.domains, cut))
    run.json(TEST_TABLE, table)
    if data.domains is not None:
        run.json(DOMAIN_PROJECTION, domain_projections(choice, data, features, spec.seed))
    warning = disagreement(choice, proba.numpy(), test.labels.numpy(), objectives.first)
    if warning is not None:
        print(warning, flush=True)
        run.tag(TEST_DISAGREES_TAG, warning)
    run.json(CANDIDATES_FILE, choice.record(objectives))
    for artifact, fact in choice.facts.items():
        run.json(artifact, fact)
    run.tag(CHAMPION_KIND_TAG, champion.label)
    run.tag(CHAMPION_TRIAL_TAG, champion.trial)
    candidate_metrics = {f"{c.label.replace(' ', '_')}.{objectives.first.metric}": c.point[objectives.first.key] for c in choice.rows}
    chosen = {**champion_metrics(champion.point), **({} if threshold is None else {THRESHOLD_METRIC: threshold.value})}
    return Evaluated(table, test_metrics, threshold, candidate_metrics, chosen)


def log_champion(spec: Spec, run: SearchRun, choice: Choice, test: Split, evaluated: Evaluated) -> str:
    """Log and register the champion (the alias follows it when the rule says so), log the
    runner-up, and the student; returns the champion's model URI."""
    champion, table = choice.champion, evaluated.table
    threshold = None if evaluated.threshold is None else evaluated.threshold.value
    logged = run.model(champion.build(), test, evaluated.metrics, "champion", register=True, threshold=threshold)
    uri, version = logged.uri, logged.uri.rsplit("/", 1)[-1]
    runner_up = runner_up_of(choice)
    if runner_up is not None:
        run.model(runner_up.build(), test, table[runner_up.label], runner_up.label.replace(" ", "_"), register=False, checked=False)
    rows = {label: row for label, row in table.items() if label != "champion"}
    run.metrics({**evaluated.candidate_metrics, **table_metrics(rows)})
    run.metrics({**evaluated.champion_metrics, **table_metrics({"champion": table["champion"]})}, logged.model_id)
    if spec.tracking.register_model:
        moved, line = run.champion_alias(version, champion.point)
        print(line, flush=True)
        uri = f"models:/{spec.name}@{CHAMPION_ALIAS}" if moved else uri
    for student in choice.by_kind(STUDENT):
        register_student(run, student, version if student is champion else None, table[STUDENT], test, spec.tracking.register_model)
    run.tag(CHAMPION_URI_TAG, uri)
    return uri


def runner_up_of(choice: Choice) -> Candidate | None:
    """The best trial or the ensemble, whichever is not the champion (the ensemble only when made)."""
    if choice.champion.label != BEST_TRIAL:
        return choice.best
    return next(iter(choice.by_kind(ENSEMBLE)), None)


def register_student(run: SearchRun, student: Candidate, version: str | None, metrics: dict[str, float], test: Any, register: bool) -> None:
    """Log the student (unless it is the champion, logged as ``version``) and point ``NAME@student`` at it."""
    if version is None:
        version = run.model(student.build(), test, metrics, STUDENT, register=True).uri.rsplit("/", 1)[-1]
    if register:
        run.alias(STUDENT, version)
        print(f"alias {STUDENT!r} on version {version} (the distilled composite)", flush=True)


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Rows: the true class; columns: the predicted one."""
    k = len(class_names)
    counts = np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
    return {"class_names": class_names, "matrix": counts.tolist()}


def check_not_interrupted(budget: Budget, name: str, finished: int, elapsed_s: float, parent: str) -> None:
    """Tune ends ``fit`` normally on Ctrl+C; search ``name`` short of its ``budget`` (and of its time
    limit) was interrupted, and must not register a champion picked from part of it."""
    out_of_time = budget.time_limit_s is not None and elapsed_s >= budget.time_limit_s * 0.99
    if finished < budget.num_samples and not out_of_time:
        raise SearchInterrupted(
            f"search {name!r} interrupted after {finished} of {budget.num_samples} trials; "
            f"MLflow run {parent} and unfinished trial runs marked KILLED; no champion registered; "
            f"continue it with: fusion-search resume {name}"
        )


@dataclass
class Prepared:
    """What a search starts from: the data's table, the MLflow experiment, the cached features of
    the frozen members (with what the cache pass did, and how long it took), and the time each
    phase took so far."""

    spec: Spec  # with the parameters of members fitted before the search
    data: Dataset
    client: MlflowClient
    experiment_id: str
    features: dict[str, CachedMember]
    reports: list[FeatureReport]
    latencies: dict[str, dict[str, float]]  # frozen members' latencies, timed in the cache pass (by ``timing_key``)
    cache_s: float
    phases: Phases


def prepare(spec: Spec, address: str | None, verbose: bool, since: float | None = None) -> Prepared:
    """Everything done before the first trial: local resources, then (with Ray up, so the rows
    are checked in parallel over the cluster) data, members and storage while the feature cache
    pass runs (it builds and runs the members it serves: their failures are one line too), the
    MLflow experiment, and the end of the cache pass. Nothing is recorded in a run before all of
    it passed."""
    phases = Phases(since)  # the first phase, ray, from ``since``: Ray may have been started before
    quiet_libraries(verbose)
    hide_tune_resume_hint()
    start(spec.resources.cpu, spec.resources.gpu, address, verbose, PRELOAD)
    runner = pass_runner(spec.resources, embedded=address is None)
    phases.mark("ray")
    data = load_data(spec)
    print(data_summary(data, spec), flush=True)
    spec = fit_members(spec.for_task(data.task), data, spec.storage / FITTED_DIR)
    phases.mark("data")
    cache_pass = start_features(spec, data, runner)  # runs while the members and MLflow are checked
    try:
        check_members(spec.members, data, run_elsewhere=cache_pass.members)
        check_storage(spec)
        # A tracking server that is down must not stall Tune for minutes on each write (MLflow's
        # default retries back off for about four): the trial-run callback queues and retries instead.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        # Tune adds a TensorBoard record of every result wherever tensorboardX is installed (ray[tune]
        # installs it), a twentieth of the driver's work per result; the search records to MLflow.
        # Off, for restored searches too (their callbacks are the first run's); "0" brings it back.
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        client, experiment_id = open_experiment(spec)
        phases.mark("checks")
        features, reports, latencies = cache_pass.wait()
    except MemberFailed as failed:
        raise member_failed(spec.members, data, failed.member, failed.message) from None
    except BaseException:
        cache_pass.cancel()
        raise
    if reports:
        print(describe_reports(reports), flush=True)
    phases.mark("feature cache")
    wait_for_warm_workers(trials_at_once(spec))
    phases.mark("trial workers")
    return Prepared(spec, data, client, experiment_id, features, reports, latencies, cache_pass.seconds, phases)


def trials_at_once(spec: Spec) -> int:
    """How many trials run at once: the budget's, as far as the instance's CPUs go."""
    return max(1, min(spec.budget.max_concurrent, int(ray.cluster_resources().get("CPU", 1) // spec.resources.cpu)))


def run_search(
    spec: Spec, spec_text: str, painter: Painter, address: str | None = None, verbose: bool = False, source: Path | None = None, since: float | None = None
) -> SearchOutcome:
    """Run the whole search for ``spec`` (read from the file ``source``, when there is one, so that
    ``resume`` can read it again), its pictures drawn by ``painter``; returns where the champion is
    and how it compares."""
    with sharing_frozen_members():
        prepared = prepare(spec, address, verbose, since)
        spec = prepared.spec
        run = SearchRun.start(
            spec, prepared.client, prepared.experiment_id, spec_text, prepared.data, lambda parent: f"{spec.tune_storage}/{spec.name}-{parent[:8]}", source
        )
        return drive(spec, prepared, run, f"{spec.tune_storage}/{spec.name}-{run.parent[:8]}", verbose, restore=False, painter=painter)


def resume_search(spec: Spec, parent: str, experiment: str, painter: Painter, address: str | None = None, verbose: bool = False) -> SearchOutcome:
    """Continue the search whose driver stopped (killed, crashed): the same Tune experiment, Optuna
    study, MLflow parent run and trial runs; trials that were running restart from their checkpoints."""
    with sharing_frozen_members():
        prepared = prepare(spec, address, verbose)
        run = SearchRun(prepared.spec, prepared.client, prepared.experiment_id, parent)
        return drive(prepared.spec, prepared, run, experiment, verbose, restore=True, painter=painter)


def drive(spec: Spec, prepared: Prepared, run: SearchRun, experiment: str, verbose: bool, restore: bool, painter: Painter) -> SearchOutcome:
    """Run (or restore) the Tuner, then make the candidates, pick, evaluate and log the champion;
    the parent run's status says how it ended."""
    data, parent, phases = prepared.data, run.parent, prepared.phases
    objectives = spec.objectives
    status = RunStatus.to_string(RunStatus.FAILED)
    searcher = None
    features, reports = prepared.features, prepared.reports
    try:
        if reports:
            run.metric("search.feature_cache_s", prepared.cache_s)
            run.json(FEATURE_CACHE, [asdict(r) for r in reports])
        painter.search_started(spec.tracking_uri, parent)
        verb = "resuming" if restore else "search"
        print(f"{verb} {spec.name!r}: {spec.budget.num_samples} trials, up to {spec.budget.max_concurrent} at once; MLflow run {parent}", flush=True)
        print(f"live view: fusion-search dashboard {shlex.quote(spec.name)}{store_option(spec.tracking_uri)}  (optuna-dashboard on http://127.0.0.1:8080)", flush=True)
        rungs = spec.asha.rungs(spec.hyperparameters.max_epochs())
        print(f"early stopping: {'ASHA compares trials at epochs ' + ', '.join(map(str, rungs)) if rungs else 'none (every trial runs all its epochs)'}", flush=True)
        started = time.monotonic()
        # Every candidate and logged model built after the trials reads the same frozen backbones
        # (``sharing_frozen_members``, entered by the caller): those the cache pass built here, or
        # built on another thread while the trials train; MLflow's requirement check warms there too.
        with ThreadPoolExecutor(1, thread_name_prefix="while the trials train") as builder:
            warming = [builder.submit(build_frozen_members, spec, data), builder.submit(warm_model_logging, {m.kind for m in spec.members})]
            if restore:
                tuner = tune.Tuner.restore(experiment, trainable=trainable_for(spec.resources, data, features), resume_unfinished=True)
            else:
                callbacks = [run.trial_runs(), ProgressPrinter(spec.budget.num_samples, objectives, len(structures(spec.members, spec.fusion)), (spec.study_url, spec.name), parent)]
                searcher = build_searcher(spec, data, parent)
                tuner = build_tuner(spec, data, experiment.rsplit("/", 1)[-1], callbacks, verbose, searcher, features)
            results = list(tuner.fit())
            phases.mark("trials")
            if restore:
                study = optuna.load_study(study_name=spec.name, storage=spec.study_url)
                lost = fail_running(study)
                if lost:
                    print(f"Optuna trials {', '.join(map(str, lost))} were lost with the driver (started after Tune's last snapshot): marked FAIL", flush=True)
                results = with_forgotten(results, study, parent, experiment)
                recorded = run.record_finished(results)
                if recorded:
                    print(f"trial runs of {', '.join(recorded)} completed from their checkpoints (their last writes were lost with the driver)", flush=True)
                run.forget_earlier_champion()
            check_not_interrupted(spec.budget, spec.name, run.finished_trials(), time.monotonic() - started, parent)
            run.metric("search.backbone_rows", backbone_rows(results, sum(r.rows_computed for r in reports)))
            covered = coverage_record(spec.members, spec.fusion, [r.config for r in results if r.config])
            run.json(COVERAGE_FILE, covered)
            print(describe_tried(covered), flush=True)
            painter.trials_ended()

            for warmed in warming:
                warmed.result()
            choice = choose_champion(results, spec, data, features, prepared.latencies)
            if choice is None:
                raise no_result(results, spec.name)
            print(describe_choice(choice, objectives.first.metric), flush=True)
            verdict = against_members(choice, objectives.first)
            if verdict is not None:
                print(verdict, flush=True)
            if objectives.tradeoff:
                print(f"champion rule: {objectives.rule()}: the {choice.champion.label}", flush=True)
            phases.mark("candidates")
            evaluated = record_choice(spec, run, choice, data, features)
            painter.champion_recorded(objectives.tradeoff)
            uri = log_champion(spec, run, choice, data.splits["test"], evaluated)
            keep_latest_checkpoints(results)
            phases.mark("registration")
            painter.wait()
        phases.mark("pictures")
        run.metrics(phases.metrics())
        print(phases.line(), flush=True)
        status = RunStatus.to_string(RunStatus.FINISHED)
        front = front_rows(choice, objectives) if objectives.tradeoff else []
        return SearchOutcome(run.experiment_id, parent, uri, choice.best.trial, choice.champion.fusion, evaluated.table, objectives, trial_rows(results, objectives), front, choice.marks())
    except (KeyboardInterrupt, SearchInterrupted):
        status = RunStatus.to_string(RunStatus.KILLED)
        if searcher is not None:
            failed = searcher.searcher.fail_unfinished()
            if failed:
                print(f"Optuna trials {', '.join(map(str, failed))} were running: marked FAIL", file=sys.stderr, flush=True)
        raise
    finally:
        run.end(status)
