"""Read a search back from MLflow: the trial leaderboard, the champion, and what ``resume`` needs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from search.errors import SpecError
from search.spec import Spec, parse_spec
from search.tracking import CHAMPION_ALIAS, PARENT_TAG, ROLE, SPEC_DIR_TAG, STATE_TAG, STORAGE_TAG, TUNE_EXPERIMENT_TAG


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


def leaderboard(tracking_uri: str, name: str) -> tuple[list[str], list[list]]:
    """Trials of the newest run of ``name``, best first by the search's objective."""
    client = MlflowClient(tracking_uri)
    experiment_id, parent = latest_parent(client, name)
    metric, mode = client.get_run(parent).data.params["objective"].split(" (")
    key = f"best_{metric}"
    trials = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'", max_results=10_000)
    rows = []
    for run in trials:
        value = run.data.metrics.get(key)
        params = run.data.params
        rows.append(
            [
                run.data.tags.get("fusion_search.trial_id", run.info.run_id),
                f"{params.get('members')} via {params.get('operator')}",
                run.data.tags.get(STATE_TAG, run.info.status.lower()),
                int(run.data.metrics.get("best_epoch", 0)) or None,
                value,
            ]
        )
    sign = 1 if mode.startswith("min") else -1
    rows.sort(key=lambda r: (r[4] is None, sign * (r[4] or 0)))
    return ["trial", "fusion", "state", "best epoch", key], rows


def download_champion(tracking_uri: str, name: str, out: Path) -> Path:
    """Copy ``models:/NAME@champion`` into ``out`` and return the model folder."""
    client = MlflowClient(tracking_uri)
    try:
        client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except mlflow.exceptions.MlflowException:
        raise UnknownSearch(f"no registered model {name!r} with alias {CHAMPION_ALIAS!r} in {tracking_uri}") from None
    mlflow.set_tracking_uri(tracking_uri)
    out.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@{CHAMPION_ALIAS}", dst_path=str(out)))


def resumable(tracking_uri: str, name: str) -> tuple[Spec, str, str]:
    """The spec, parent run id and Tune experiment (folder or URI) of search ``name``'s newest run,
    which must not have finished. The spec is the one the run logged, its relative paths read from
    the folder the spec file was in and its storage where the run kept it."""
    from ray import tune

    client = MlflowClient(tracking_uri)
    _, parent = latest_parent(client, name)
    run = client.get_run(parent)
    if run.info.status == "FINISHED":
        raise SpecError(f"search {name!r}: its newest run {parent} finished; nothing to resume (run the spec again for more trials)")
    experiment = run.data.tags[TUNE_EXPERIMENT_TAG]
    if not tune.Tuner.can_restore(experiment):
        raise SpecError(f"search {name!r}: its Tune experiment {experiment} is gone; it cannot be resumed")
    with tempfile.TemporaryDirectory() as tmp:  # through the client: a served store needs its tracking URI
        raw = yaml.safe_load(Path(client.download_artifacts(parent, "spec.yaml", tmp)).read_text())
    raw["storage"] = run.data.tags[STORAGE_TAG]
    raw["ray_storage"] = experiment.rsplit("/", 1)[0]
    return parse_spec(raw, Path(run.data.tags.get(SPEC_DIR_TAG, "."))), parent, experiment
