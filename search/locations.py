"""Where a search keeps its state: the environment variables that name the places, the embedded
default, URI schemes, and how a location is shown (``redact``: never with its password).
Light on purpose: the CLI reads it before torch is imported."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

# Environment variables that fill spec fields the spec leaves empty (``Spec.with_environment``).
ENVIRONMENT = {
    "tracking.uri": "MLFLOW_TRACKING_URI",
    "ray_storage": "FUSION_SEARCH_RAY_STORAGE",
    "study_storage": "FUSION_SEARCH_STUDY_STORAGE",
}
# The URI schemes pyarrow (Tune's storage layer) opens from a ``storage_path``.
RAY_STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")


def uri_scheme(value: str) -> str | None:
    """``s3`` for ``s3://bucket/key``; None for a plain path."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", value)
    return match.group(1).lower() if match else None


def is_server(uri: str) -> bool:
    """Whether a tracking URI names a server (which is its own UI) rather than a local store."""
    return uri_scheme(uri) in ("http", "https")


def default_tracking_uri(storage: Path) -> str:
    """The embedded default: a SQLite MLflow store inside the storage directory."""
    return f"sqlite:///{(storage / 'mlflow.db').resolve()}"


def store_option(tracking_uri: str) -> str:
    """What the commands that read a search need to find its store, as the user would type it
    (nothing for the embedded default in ./fusion_runs)."""
    if tracking_uri == default_tracking_uri(Path("fusion_runs")):
        return ""
    return f" --tracking-uri {shlex.quote(redact(tracking_uri))}"


def ui_link(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """A link into MLflow's UI at ``base`` that opens the search's training runs (or one run).

    MLflow 3.17's UI takes an experiment's kind from its GenAI / Model training switch (kept in the
    browser, GenAI until changed), not from the experiment's ``mlflow.experimentKind`` tag; the
    link says ``workflowType=machine_learning`` so it lands on the runs, not on the traces overview."""
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


# user:password@ in a URI, and password-like query parameters (?password=..., &secret=...).
USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s'\"]*):[^@\s'\"]*@")
SECRET_PARAMETER = re.compile(r"(?i)(?P<head>[?&;](?:password|passwd|pwd|secret|token|[a-z_]*secret[a-z_]*|[a-z_]*key)=)[^&;\s'\"]+")
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with every URI password shown as ``***`` (``postgresql://fs:***@db/optuna``), and
    password, secret, token and key parameters too: for anything printed or logged."""
    return SECRET_PARAMETER.sub(rf"\g<head>{REDACTED}", USERINFO.sub(rf"\g<head>:{REDACTED}@", text))


def is_redacted(value: str) -> bool:
    """Whether ``value`` is a location ``redact`` has hidden a secret of (a logged copy lacks it)."""
    return f":{REDACTED}@" in value or f"={REDACTED}" in value
