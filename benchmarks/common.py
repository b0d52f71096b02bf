"""Shared by the benchmarks: run a search from a spec dict, as a user does, and read back what
MLflow recorded.

Each search is a fresh ``fusion-search run`` process (its own Ray, nothing warm from an earlier
search), timed from launch to exit: what a user waits for, start-up, checks, the cache pass and
champion logging included. Every other figure comes from the search's own records: the trial
runs' start and end (what the driver saw of each trial, Ray's scheduling and process start
included), their per-epoch ``train_time_s`` / ``eval_time_s``, and the parent run's metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from search.spec.schema import load_spec

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # reading records back prints no bars


@dataclass
class Trial:
    wall_s: float  # from the trial's start to its end, as the driver saw it
    work_s: float  # training + evaluation, summed over its epochs
    start_s: float
    end_s: float
    backbone_rows: float


@dataclass
class Measured:
    wall_s: float  # the whole `fusion-search run` process, launch to exit
    trials: list[Trial]
    metrics: dict[str, float]  # the parent run's
    test_table: dict[str, dict[str, float]]
    slots: int  # trials run at once (budget.max_concurrent)

    @property
    def trials_span_s(self) -> float:
        """From the first trial's start to the last trial's end."""
        return max(t.end_s for t in self.trials) - min(t.start_s for t in self.trials)

    @property
    def overhead_share(self) -> float:
        """Share of the trial slots' time (first start to last end, times the slots) not spent
        training or evaluating: Ray scheduling, process start, set-up, checkpoints, reporting,
        the searcher and MLflow logging between and inside trials."""
        return 1.0 - sum(t.work_s for t in self.trials) / (self.trials_span_s * self.slots)

    @property
    def in_trial_overhead_share(self) -> float:
        """The same, counting only from each trial's start to its end as the driver saw them."""
        return 1.0 - sum(t.work_s for t in self.trials) / sum(t.wall_s for t in self.trials)

    @property
    def mean_trial_s(self) -> float:
        return sum(t.wall_s for t in self.trials) / len(self.trials)

    @property
    def trials_per_hour(self) -> float:
        return len(self.trials) / self.trials_span_s * 3600.0

    @property
    def wall_per_trial_s(self) -> float:
        """What a user waits for per trial: the whole search's wall time over its trials."""
        return self.wall_s / len(self.trials)


def history_sum(client: MlflowClient, run_id: str, key: str) -> float:
    return sum(m.value for m in client.get_metric_history(run_id, key))


def run_spec(spec: dict[str, Any], root: Path) -> Measured:
    """Write ``spec`` under ``root``, run the search in a new process, and read its records back from MLflow."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump({"storage": str(root / "store"), **spec}))
    loaded = load_spec(path)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "search.cli", "run", str(path)], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{spec['name']}: the search failed:\n{done.stderr[-3000:]}")
    client = MlflowClient(loaded.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(loaded.name).experiment_id], max_results=5000, order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if r.data.tags.get("fusion_search.role") == "search")  # this search's: the newest
    trial_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = [
        Trial(
            wall_s=(r.info.end_time - r.info.start_time) / 1000.0,
            work_s=history_sum(client, r.info.run_id, "train_time_s") + history_sum(client, r.info.run_id, "eval_time_s"),
            start_s=r.info.start_time / 1000.0,
            end_s=r.info.end_time / 1000.0,
            backbone_rows=r.data.metrics.get("backbone_rows", 0.0),
        )
        for r in trial_runs
    ]
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "test_table.json", str(root))).read_text())
    return Measured(wall, trials, parent.data.metrics, table, loaded.budget.max_concurrent)


def parent_json(root: Path, name: str, artifact: str) -> Any:
    """A JSON artifact of the newest search ``name`` run by ``run_spec`` under ``root``."""
    client = MlflowClient(f"sqlite:///{root / 'store' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name).experiment_id
    parent = next(r for r in client.search_runs([experiment], order_by=["attributes.start_time DESC"]) if r.data.tags.get("fusion_search.role") == "search")
    return json.loads(Path(client.download_artifacts(parent.info.run_id, artifact, str(root))).read_text())


def text_data() -> Path:
    """The multimodal example's manifest (built on first use)."""
    manifest = ROOT / "examples" / "multimodal" / "data" / "manifest.csv"
    if not manifest.exists():
        from examples.multimodal.make_data import build

        build(manifest.parent, 0)
    return manifest


def head_only_spec(name: str, manifest: Path, num_samples: int, epochs: int) -> dict[str, Any]:
    """A search over fusion heads on a frozen MiniLM (the text of the multimodal example)."""
    return {
        "name": name,
        "seed": 0,
        "data": {"source": "manifest", "path": str(manifest), "columns": {"image": None, "text": "text", "label": "label"}},
        "members": [{"name": "minilm", "kind": "minilm", "input": "text", "params": {"max_length": 32}, "train": "frozen"}],
        "fusion": {"min_members": 1, "operators": {"concat_mlp": {}, "weighted": {}}},
        "hyperparameters": {"lr": {"low": 0.001, "high": 0.01, "log": True}, "epochs": epochs, "batch_size": 64},
        "budget": {"num_samples": num_samples, "max_concurrent": 2},
        "scheduler": {"type": "fifo"},
        "report": {"baselines": False},
    }
