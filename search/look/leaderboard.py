"""Read a search back from MLflow: the trial leaderboard, the champion, and what ``resume`` needs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import mlflow
import yaml
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.errors import SpecError
from search.locations import ENVIRONMENT, is_redacted, redact
from search.spec.schema import Spec, parse_spec
from search.look.store_reader import StoreReader, open_store
from search.names import CANDIDATES_FILE, SPEC_FILE, TRIAL_ID_TAG
from search.look.store_reader import logged_objectives, trial_runs_of
from search.names import CHAMPION_ALIAS, ROLE, SPEC_DIR_TAG, STATE_TAG, STORAGE_TAG, TUNE_EXPERIMENT_TAG


class UnknownSearch(LookupError):
    """No search of that name in the tracking store."""


def latest_parent(client: MlflowClient, name: str) -> tuple[str, str]:
    """(experiment id, parent run id) of the newest run of search ``name``."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments() if e.name != "Default")) or "none"
        raise UnknownSearch(f"no search named {name!r} in this tracking store (searches: {names})")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{ROLE}` = 'search'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        raise UnknownSearch(f"search {name!r} has no runs yet")
    return experiment.experiment_id, runs[0].info.run_id


def trial_id(run: Run) -> str:
    return run.data.tags.get(TRIAL_ID_TAG, run.info.run_id)


def fusion_of(run: Run) -> str:
    """What a trial run fused, in words (``cnn+mlp via weighted``)."""
    return f"{run.data.params.get('members')} via {run.data.params.get('operator')}"


def leaderboard(reader: StoreReader, name: str) -> tuple[list[str], list[list]]:
    """Trials of the newest run of ``name``, best first on its first objective, with their value of
    each objective and constraint."""
    client = reader.client
    experiment_id, parent = latest_parent(client, name)
    objectives = logged_objectives(client.get_run(parent))
    rows = []
    for run in trial_runs_of(client, experiment_id, parent):
        metrics = run.data.metrics
        row = [
            trial_id(run),
            fusion_of(run),
            run.data.tags.get(STATE_TAG, run.info.status.lower()),
            int(metrics.get("best_epoch", 0)) or None,
            *(metrics.get(key) for key in objectives.shown),
        ]
        rows.append(row + (["yes" if objectives.feasible(metrics) else "no"] if objectives.bounds else []))
    rows.sort(key=lambda r: objectives.first.direction.best_first(r[4]))
    headers = ["trial", "fusion", "state", "best epoch", *objectives.shown] + (["meets constraints"] if objectives.bounds else [])
    return headers, rows


def pareto_front(reader: StoreReader, name: str) -> tuple[list[str], list[list], str]:
    """The Pareto front of the newest run of ``name`` (best first on the first objective), and a line
    saying where it comes from: a finished search's ``candidates.json`` (every candidate for
    champion, the champion marked), else the trials that reported so far."""
    client = reader.client
    experiment_id, parent = latest_parent(client, name)
    run = client.get_run(parent)
    objectives = logged_objectives(run)
    headers = ["candidate", "fusion", *objectives.shown, "champion"]
    summary = reader.json(run, CANDIDATES_FILE)
    if summary is not None:
        front = [c for c in summary["candidates"] if c["on_front"]]
        rows = [[c["candidate"], c["fusion"], *(c.get(k) for k in objectives.shown), "yes" if c["champion"] else ""] for c in front]
        where = f"Pareto front of {objectives.describe()} (trials, the ensemble, soups, merges, the student):"
    else:
        runs = trial_runs_of(client, experiment_id, parent)
        points = [r.data.metrics for r in runs]
        rows = [[f"trial {trial_id(runs[i])}", fusion_of(runs[i]), *(points[i].get(k) for k in objectives.shown), ""] for i in objectives.front(points)]
        where = f"Pareto front of {objectives.describe()} (the trials reported so far: the search has not finished):"
    rows.sort(key=lambda r: objectives.first.direction.best_first(r[2]))
    return headers, rows, where


def promote(tracking_uri: str, name: str, version: str) -> None:
    """Point ``NAME@champion`` at ``version``: the user's explicit choice (a search moves it only
    when its champion is better)."""
    client = open_store(tracking_uri)
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise UnknownSearch(f"no version {version!r} of registered model {name!r} in this tracking store") from None
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)


def download_champion(tracking_uri: str, name: str, out: Path) -> Path:
    """Copy ``models:/NAME@champion`` into ``out`` and return the model folder."""
    client = open_store(tracking_uri)
    try:
        client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        raise UnknownSearch(redact(f"no registered model {name!r} with alias {CHAMPION_ALIAS!r} in {tracking_uri}")) from None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@{CHAMPION_ALIAS}", dst_path=str(out)))
    except PermissionError as error:
        raise SpecError(f"--out: cannot write to {out}: {error.strerror}") from None


def hidden(name: str, field: str, environ: Mapping[str, str]) -> str:
    """A secret-bearing location MLflow keeps redacted, as the environment gives it again."""
    variable = ENVIRONMENT[field]
    if not environ.get(variable):
        raise SpecError(f"search {name!r}: its {field} holds a password that MLflow keeps hidden; set ${variable} to resume it")
    return environ[variable]


def resumable(tracking_uri: str, name: str, environ: Mapping[str, str]) -> tuple[Spec, str, str]:
    """The spec, parent run id and Tune experiment (folder or URI) of search ``name``'s newest run,
    which must not have finished. The spec is the one the run logged, its relative paths read from
    the folder the spec file was in and its storage where the run kept it; the secrets the logged
    copy hides (database and storage passwords) come from ``environ`` as on the first run."""
    from ray import tune

    reader = StoreReader(tracking_uri, environ)
    _, parent = latest_parent(reader.client, name)
    run = reader.client.get_run(parent)
    if run.info.status == "FINISHED":
        raise SpecError(f"search {name!r}: its newest run {parent} finished; nothing to resume (run the spec again for more trials)")
    experiment = run.data.tags[TUNE_EXPERIMENT_TAG]
    if is_redacted(experiment):
        experiment = f"{hidden(name, 'ray_storage', environ).rstrip('/')}/{experiment.rsplit('/', 1)[-1]}"
    if not tune.Tuner.can_restore(experiment):
        raise SpecError(f"search {name!r}: its Tune experiment {redact(experiment)} is gone; it cannot be resumed")
    logged = reader.read(run, SPEC_FILE)
    if logged is None:
        raise SpecError(f"search {name!r}: its run {parent} has no {SPEC_FILE}; it cannot be resumed")
    raw = yaml.safe_load(logged)
    if is_redacted(str(raw.get("study_storage") or "")):
        raw["study_storage"] = hidden(name, "study_storage", environ)
    if is_redacted(str((raw.get("tracking") or {}).get("uri") or "")):
        raw["tracking"]["uri"] = tracking_uri  # the store this command reached
    raw["storage"] = run.data.tags[STORAGE_TAG]
    raw["ray_storage"] = experiment.rsplit("/", 1)[0]
    return parse_spec(raw, Path(run.data.tags.get(SPEC_DIR_TAG, "."))), parent, experiment
