"""The Python API: a search run from a dict (as in a notebook), its outcome returned as values."""

from __future__ import annotations

import mlflow
import pytest
import ray

from search import api
from search.errors import SpecError
from search.locations import default_tracking_uri
from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.slow


def test_a_search_from_a_dict_returns_its_outcome_as_values(tmp_path, monkeypatch):
    spec = {**TINY_SPEC, "name": "api-search", "budget": {"num_samples": 2, "max_concurrent": 2}, "storage": str(tmp_path / "store")}
    try:
        outcome = api.run(spec, base=tmp_path)
    finally:
        ray.shutdown()
    assert outcome.champion_uri == "models:/api-search@champion"
    assert {"best trial", "champion"} <= set(outcome.test_table)
    assert len(outcome.trials) == 2 and all(row["state"] in ("completed", "stopped early") for row in outcome.trials)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", default_tracking_uri(tmp_path / "store"))  # teardown removes it
    mlflow.set_tracking_uri(default_tracking_uri(tmp_path / "store"))
    model = mlflow.pyfunc.load_model(outcome.champion_uri)
    assert model.metadata.metadata["spec_name"] == "api-search"


def test_a_bad_dict_is_one_line_before_anything_starts(tmp_path):
    with pytest.raises(SpecError, match=r"^budget\.num_samples: "):
        api.run({**TINY_SPEC, "budget": {"num_samples": 0, "max_concurrent": 1}}, base=tmp_path)
    assert not ray.is_initialized()
