"""Where a search keeps its state: the environment variables that name the places, the embedded
default, and URI schemes. Light on purpose: the CLI reads it before torch is imported."""

from __future__ import annotations

import re
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


def default_tracking_uri(storage: Path) -> str:
    """The embedded default: a SQLite MLflow store inside the storage directory."""
    return f"sqlite:///{(storage / 'mlflow.db').resolve()}"
