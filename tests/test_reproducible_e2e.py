"""What the README promises about reproducibility, checked: one spec run twice, each time into a new
storage folder, with trials one at a time (``max_concurrent: 1``), gives the same trials (the same
configurations, in the same order, with the same results) and the same test-split table.

With several trials at once Tune hands results to Optuna in the order trials finish, which varies
from run to run, and TPE's later suggestions follow that order; that case is not promised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.locations import default_tracking_uri
from tests.conftest import TINY_SPEC
from trainables.metrics import LATENCIES

pytestmark = pytest.mark.slow
FUSION_SEARCH = str(Path(sys.executable).parent / "fusion-search")


def run_once(folder: Path, env: dict[str, str] | None = None, **changes: object) -> tuple[list[tuple[dict, list[float]]], dict]:
    """Run the spec (with ``changes``) into ``folder``, with ``env`` added to this process's
    environment; its trials in the order they started (configuration and validation log-loss per
    epoch) and the test table the search logged."""
    folder.mkdir()
    spec = {**TINY_SPEC, "name": "twice", "budget": {"num_samples": 4, "max_concurrent": 1}, "storage": str(folder / "store"), **changes}
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [FUSION_SEARCH, "run", str(folder / "spec.yaml")], capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(default_tracking_uri(folder / "store"))
    runs = client.search_runs([client.get_experiment_by_name("twice").experiment_id], order_by=["attributes.start_time ASC"])
    parent = next(r for r in runs if r.data.tags["fusion_search.role"] == "search")
    trials = [
        (run.data.params, [m.value for m in client.get_metric_history(run.info.run_id, "val_log_loss")])
        for run in runs
        if run.data.tags["fusion_search.role"] == "trial"
    ]
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "test_table.json", str(folder))).read_text())
    return trials, table


def test_the_same_spec_gives_the_same_trials_and_table(tmp_path):
    first_trials, first_table = run_once(tmp_path / "first")
    second_trials, second_table = run_once(tmp_path / "second")
    assert len(first_trials) == 4
    assert [params for params, _ in first_trials] == [params for params, _ in second_trials], "the same configurations, in order"
    assert [curve for _, curve in first_trials] == [curve for _, curve in second_trials], "the same results, epoch by epoch"
    assert without_timings(first_table) == without_timings(second_table), "the same models, the same test metrics, sizes"


def without_timings(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The table without its latencies: they are timings of this machine, not results."""
    return {label: {k: v for k, v in row.items() if k not in LATENCIES} for label, row in table.items()}
