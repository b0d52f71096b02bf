"""Reading a search back from the store it wrote, for the commands that only read (``trials``,
``report``, ``dashboard``...), even when that store was copied to another folder.

The embedded default keeps a search's files in one folder (``mlflow.db``, ``optuna.db``,
``artifacts/``), and MLflow records absolute artifact locations; a folder copied elsewhere (to
send a search to a colleague) is read from where it is now: a run's local artifacts and the study
are looked for beside the MLflow database when their recorded place is gone.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import sqlalchemy
import yaml
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.errors import SpecError, StoreUnreachable
from search.spec.objectives import METRICS, Goal, Objectives, reported_key
from trainables.metrics import COST_METRICS, QUALITY_METRICS
from search.locations import ENVIRONMENT, is_redacted, redact, uri_scheme
from search.text import first_line
from search.stores import sqlite_file
from search.names import OBJECTIVES_TAG, PARENT_TAG, SPEC_FILE, STUDY_FILE, STUDY_TAG


# While the tracking server is unreachable, a search retries its records (the trial runs', the
# pictures) every RETRY_S seconds, for at most WAIT_S.
RETRY_S, WAIT_S = 5.0, 600.0


def unreachable(error: Exception) -> bool:
    """Whether an MLflow error means the tracking server could not be reached (worth retrying later)."""
    return isinstance(error, (OSError, StoreUnreachable)) or (isinstance(error, MlflowException) and "API request to" in str(error))


def open_store(tracking_uri: str) -> MlflowClient:
    """A client of the MLflow store a search wrote, for commands that only read: they create no
    store and no folder, and a store that is missing, unreadable or unreachable is one line (a
    server after two quick tries, not minutes of retries)."""
    if uri_scheme(tracking_uri) is None:
        raise SpecError(f"--tracking-uri: {tracking_uri!r} is a path, not a URI (a local store: sqlite:////path/to/mlflow.db; a server: http://host:5000)")
    database = sqlite_file(tracking_uri)
    if database is not None and not database.is_file():
        raise SpecError(f"no MLflow store at {database} (run a search first, or give --storage or --tracking-uri)")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # small files
    try:
        client = MlflowClient(tracking_uri)  # opens a SQLite store at once
        client.search_experiments(max_results=1)
    except (MlflowException, OSError, sqlalchemy.exc.SQLAlchemyError) as error:
        if unreachable(error):
            raise StoreUnreachable(redact(f"MLflow store {tracking_uri} is unreachable: {first_line(error)}")) from None
        raise SpecError(redact(f"MLflow store {tracking_uri} is unreadable: {first_line(error)}")) from None
    return client


def local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


class StoreReader:
    """A read-only view of one MLflow store (and the studies its searches name)."""

    def __init__(self, tracking_uri: str, environ: Mapping[str, str] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = open_store(tracking_uri)
        self.database = sqlite_file(tracking_uri)
        self.environ = os.environ if environ is None else environ

    def moved_artifacts(self, run: Run) -> Path | None:
        """Where a local store copied elsewhere keeps ``run``'s artifacts now (None: where recorded)."""
        recorded = local_path(run.info.artifact_uri)
        if recorded is None or recorded.exists() or self.database is None:
            return None
        return self.database.parent / "artifacts" / run.info.run_id / "artifacts"

    def read(self, run: Run, path: str) -> bytes | None:
        """The artifact ``path`` of ``run``, or None when it has none."""
        moved = self.moved_artifacts(run)
        if moved is not None:
            file = moved / path
            return file.read_bytes() if file.is_file() else None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return Path(self.client.download_artifacts(run.info.run_id, path, tmp)).read_bytes()
            except (MlflowException, OSError):
                return None

    def json(self, run: Run, path: str) -> Any:
        data = self.read(run, path)
        return None if data is None else json.loads(data)

    def search_name(self, parent: Run) -> str:
        """The search's name (its Optuna study's and registered model's), from the spec it logged."""
        spec = yaml.safe_load(self.read(parent, SPEC_FILE) or b"{}")
        return str(spec.get("name") or self.client.get_experiment(parent.info.experiment_id).name)

    def study_url(self, parent: Run) -> str | None:
        """The storage of the search's Optuna study: as the run recorded it (a hidden password from
        ``$FUSION_SEARCH_STUDY_STORAGE``), else the ``optuna.db`` beside this store's database."""
        url = parent.data.tags.get(STUDY_TAG)
        if url is not None and is_redacted(url):
            return self.environ.get(ENVIRONMENT["study_storage"])
        recorded = sqlite_file(url) if url else None
        if url and (recorded is None or recorded.is_file()):
            return url
        beside = self.database.parent / STUDY_FILE if self.database is not None else None  # a copied store
        return f"sqlite:///{beside}" if beside is not None and beside.is_file() else None


def trial_runs_of(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=10000)


def logged_objectives(run: Any) -> Objectives:
    """The objectives a search's parent run was made with (a run older than multi-objective search
    logged only its one metric, as the ``objective`` parameter)."""
    if OBJECTIVES_TAG in run.data.tags:
        return Objectives.from_json(run.data.tags[OBJECTIVES_TAG])
    metric = run.data.params["objective"].split(" ")[0]
    return Objectives((Goal(metric, METRICS[metric]),))


def champion_point(run: Any) -> dict[str, float]:
    """A search's champion as a point (reported keys -> values), from its parent run's ``champion.*`` metrics."""
    metrics = run.data.metrics
    return {reported_key(name): metrics[f"champion.{name}"] for name in (*QUALITY_METRICS, *COST_METRICS) if f"champion.{name}" in metrics}
