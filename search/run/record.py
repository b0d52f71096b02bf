"""MLflow bookkeeping of a search, done once, on the driver.

One parent run per search (the spec as an artifact, search-level params, the final
summary), one nested run per trial (its params, per-epoch metrics with the epoch
as step, final status), and the champion: a pyfunc model (composite JSON +
safetensors, or an ensemble of such composites; no pickle) registered under the
search's name with alias ``champion``. Trials never talk to MLflow: they report to Tune, and the
``TrialRunsCallback`` here turns Tune's events into runs, so a trial retried on
another node cannot duplicate its run.
"""

from __future__ import annotations

import io
import json
import math
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.types.schema import AnyType
from PIL import Image
from ray import tune
from ray.tune import Callback
from ray.tune.experiment import Trial

import trainables
from search.errors import SpecError
from search.locations import default_tracking_uri, redact
from search.spec.objectives import reported_key
from search.run.optuna_search import stopped_early
from search.run.progress import counted, trial_error_text, trial_number, trial_states
from search.spec.schema import Spec
from search.stores import first_use, new_mlflow_store
from search.look.store_reader import RETRY_S, WAIT_S, champion_point, trial_runs_of, unreachable
from search.names import (
    CHAMPION_ALIAS, CLASS_BALANCE, ERROR_TAG, KIND_TAG, MODEL_DEVELOPMENT, NODE_IDS_TAG, NODE_IP_TAG, OBJECTIVES_TAG, PARENT_TAG, ROLE,
    RUNGS_PARAM, SKIPPED_ROWS, SPEC_DIR_TAG, SPEC_FILE, STATE_TAG, STORAGE_TAG, STUDY_TAG, THRESHOLD, TRIAL_ID_TAG, TUNE_EXPERIMENT_TAG,
)
from trainables.adaptation import NONE
from trainables.composite import CompositeModel, save_composite
from trainables.metrics import COST_METRICS, OUTPUTS, THRESHOLD_KEY
from trainables.metrics import QUALITY_METRICS
from trainables.ensemble_model import Predictor, composites, save_ensemble
from trainables.data import Dataset, InputDescription, Split
from trainables.members import MEMBERS, member_facts
from trainables.preprocess import Table, as_pixels, take

# What a trial run records at each epoch: the epoch's metrics, the best epoch's, and the cost.
EPOCH_METRICS = (
    "train_loss", *QUALITY_METRICS, "train_time_s", "eval_time_s", "trial_time_s", "best_epoch", "backbone_rows",
    *(reported_key(name) for name in QUALITY_METRICS), *COST_METRICS, "cost_time_s",
)
PYFUNC_CODE = Path(trainables.__file__).parent / "pyfunc_model.py"
BATCH_METRICS = 1000  # the most metrics MLflow takes in one ``log_batch``


def open_experiment(spec: Spec) -> tuple[MlflowClient, str]:
    """The MLflow client and experiment id for ``spec`` (the store and the experiment created on
    first use, by one process at a time)."""
    mlflow.set_tracking_uri(spec.tracking_uri)
    with first_use(spec.tracking_uri):
        new_mlflow_store(spec.tracking_uri)
        client = MlflowClient(spec.tracking_uri)  # migrates an older store
        client.search_registered_models(max_results=1)  # the model registry's side of it
        experiment = client.get_experiment_by_name(spec.experiment_name)
        if experiment is None:
            location = None
            if spec.tracking_uri == default_tracking_uri(spec.storage):  # embedded default: artifacts beside the store
                location = (spec.storage / "artifacts").resolve().as_uri()
            try:
                return client, client.create_experiment(spec.experiment_name, artifact_location=location, tags={KIND_TAG: MODEL_DEVELOPMENT})
            except MlflowException as error:  # a server: another search created it a moment ago
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = client.get_experiment_by_name(spec.experiment_name)
    if experiment.lifecycle_stage == "deleted":
        raise SpecError(
            f"tracking.experiment: MLflow experiment {spec.experiment_name!r} was deleted; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or name another experiment"
        )
    if KIND_TAG not in experiment.tags:  # made by an earlier version, or by hand
        client.set_experiment_tag(experiment.experiment_id, KIND_TAG, MODEL_DEVELOPMENT)
    return client, experiment.experiment_id


def flat_params(prefix: str, value: Any) -> dict[str, str]:
    """Nested dicts flattened to ``a.b`` keys; lists and scalars as strings."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(flat_params(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: str(value)[:6000]}


def trial_params(config: dict[str, Any]) -> dict[str, str]:
    """What a trial run records: the plan's choices, readable at a glance."""
    plan = config["plan"]
    composite = plan["composite"]
    params = {
        "members": "+".join(m["name"] for m in composite["members"]),
        "operator": composite["operator"],
        "lr": plan["lr"],
        "weight_decay": plan["weight_decay"],
        "epochs": plan["epochs"],
        "batch_size": plan["batch_size"],
        "dropout": composite["dropout"],
        "class_weight": plan.get("class_weight", "none"),
        "seed": plan["seed"],
    }
    if composite.get("target") is not None:  # a regression's loss
        params["loss"] = plan["loss"]
    if plan.get("adaptation", NONE) != NONE:
        params.update(adaptation=plan["adaptation"], adaptation_weight=plan["adaptation_weight"])
    for member in composite["members"]:
        params[f"{member['name']}.train"] = member["policy"]
        if member["policy"] != "frozen":
            params[f"{member['name']}.lr_scale"] = member["lr_scale"]
            params.update({f"{member['name']}.{k}": member["params"][k] for k in MEMBERS.get(member["kind"]).params})
    names = [m["name"] for m in composite["members"]]
    for key, value in composite["operator_params"].items():
        if isinstance(value, list) and len(value) == len(names):
            params.update({f"{composite['operator']}.{key}.{n}": v for n, v in zip(names, value, strict=True)})
        else:
            params[f"{composite['operator']}.{key}"] = value
    return flat_params("", params)


def run_name(number: str, config: dict[str, Any]) -> str:
    """A trial run's name, readable in the UI's list: ``t07 cnn+resnet weighted`` (Tune's count of
    the trial, ``number``, and what it fuses)."""
    composite = config["plan"]["composite"]
    return f"{number} {'+'.join(m['name'] for m in composite['members'])} {composite['operator']}"


def create_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str, number: str, config: dict[str, Any]) -> str:
    """A trial's run under the search's parent run, named; returns its id. Its parameters are a write
    of their own (``log_params``), so that a write retried after an outage makes no second run."""
    run = client.create_run(experiment_id, run_name=run_name(number, config), tags={PARENT_TAG: parent_run_id, ROLE: "trial", TRIAL_ID_TAG: trial_id})
    return run.info.run_id


def epoch_metrics(result: dict[str, Any], now_ms: int) -> list[Metric]:
    """What a trial run records of one reported epoch, at the epoch's step."""
    step = int(result["training_iteration"])
    return [Metric(k, float(result[k]), now_ms, step) for k in EPOCH_METRICS if k in result]


def end_tags(result: dict[str, Any]) -> dict[str, str]:
    """A trial run's tags once its trial ended without error (``result``: its last): how, and where it ran."""
    tags = {STATE_TAG: "stopped_early" if stopped_early(result) else "completed"}
    if "node_ip" in result:
        tags[NODE_IP_TAG] = result["node_ip"]
    return tags


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


class OrderedWrites:
    """MLflow writes done in order on a thread of their own, so that Tune's loop does not wait for
    them: Tune holds a trial at each report until the driver has taken it, and the driver is the
    busiest process of a small search (a write to a SQLite store takes 10-25 ms).

    While the tracking server is unreachable the writes wait, in order, and are retried every
    ``retry_s``; trials go on. Any other error stops the writes and is raised in the driver at its
    next ``put`` or ``drain``."""

    def __init__(self, tracking_uri: str, retry_s: float) -> None:
        self.tracking_uri, self.retry_s = tracking_uri, retry_s
        self.pending: deque[Callable[[], None]] = deque()  # the next one is being written
        self.changed = threading.Condition()
        self.error: Exception | None = None
        self.failing = False  # the server was unreachable at the last try
        self.closed = False
        self.thread: threading.Thread | None = None

    def put(self, operation: Callable[[], None]) -> None:
        self.raise_error()
        with self.changed:
            self.pending.append(operation)
            self.changed.notify_all()
        if self.thread is None:
            self.thread = threading.Thread(target=self.write_all, name="MLflow trial runs", daemon=True)
            self.thread.start()

    def write_all(self) -> None:
        while True:
            with self.changed:
                while not self.pending and not self.closed:
                    self.changed.wait()
                if self.closed:
                    return
                operation = self.pending[0]
            try:
                operation()
            except Exception as error:  # noqa: BLE001 - raised in the driver unless the server is unreachable
                if not unreachable(error):
                    with self.changed:
                        self.error, self.closed = error, True
                        self.changed.notify_all()
                    return
                if not self.failing:
                    print(f"MLflow unreachable at {redact(self.tracking_uri)}; trials go on, their records wait", file=sys.stderr, flush=True)
                self.failing = True
                time.sleep(self.retry_s)
                continue
            with self.changed:
                self.pending.popleft()
                self.changed.notify_all()
                caught_up = self.failing and not self.pending
            if caught_up:
                print(f"MLflow reachable again at {redact(self.tracking_uri)}: records caught up", file=sys.stderr, flush=True)
                self.failing = False

    def drain(self, wait_s: float) -> int:
        """Wait for the writes put so far, at most ``wait_s``. Returns how many are left undone."""
        deadline = time.monotonic() + wait_s
        with self.changed:
            while self.pending and not self.closed and time.monotonic() < deadline:
                self.changed.wait(deadline - time.monotonic())  # woken by each write done
            left = len(self.pending)
        self.raise_error()
        return left

    def stop(self) -> None:
        """No more writes: the thread ends after the one it is doing."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


class TrialRunsCallback(Callback):
    """Tune events -> one nested MLflow run per trial, under the search's parent run.

    Writes are ``OrderedWrites``: done on a thread, in order, queued while the tracking server is
    unreachable. At the end of the experiment the search waits up to ``wait_s`` for them before it
    moves on (then the writes left are reported). A trial's runs are created and ended by these
    writes; a trial that ended but whose writes a killed driver lost is recorded by the resumed
    search (``SearchRun.record_finished``).

    A trial's epoch metrics are written at most every ``every_s`` (its first epoch at once, the
    epochs since in one batch, with their own steps and times; the rest when it ends, with its
    end tags), and so are the parent's counts of trial states.
    """

    def __init__(
        self, tracking_uri: str, experiment_id: str, parent_run_id: str, retry_s: float = RETRY_S, wait_s: float = WAIT_S, every_s: float = 1.0
    ) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.run_ids: dict[str, str] = {}  # written by the writes' thread
        self.nodes: dict[str, list[str]] = {}  # the Ray nodes each trial ran on
        self.retry_s, self.wait_s, self.every_s = retry_s, wait_s, every_s
        self._writes: OrderedWrites | None = None
        self.unwritten: dict[str, list[Metric]] = {}  # each trial's epoch metrics not yet written
        self.written_at: dict[str, float] = {}  # when each trial's epoch metrics were last written
        self.states_at = -math.inf  # when the parent's counts of trial states were last written
        self.existing: dict[str, str] | None = None  # trial id -> run id, the runs the parent had at start
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with its experiment state; a client holds live connections, and
        # the writes a thread and closures (those not done yet are lost with a killed driver).
        state = {**self.__dict__, "run_ids": dict(self.run_ids), "_client": None, "_writes": None}
        return {**state, "unwritten": {}, "written_at": {}, "states_at": -math.inf, "existing": None}

    def write(self, operation: Callable[[], None]) -> None:
        """An MLflow write, done after those put before it."""
        if self._writes is None:
            self._writes = OrderedWrites(self.tracking_uri, self.retry_s)
        self._writes.put(operation)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        for trial in trials:
            self.write_metrics(trial)
        self.count_states(trial_states(trials), due=True)
        left = self.settle(self.wait_s)
        if self._writes is not None:
            self._writes.stop()
            self._writes = None
        if left:
            print(f"MLflow still unreachable after {self.wait_s:.0f} s: {left} trial records lost", file=sys.stderr, flush=True)

    def settle(self, wait_s: float) -> int:
        """Wait up to ``wait_s`` for the writes put so far; returns how many are left undone."""
        return 0 if self._writes is None else self._writes.drain(wait_s)

    def run_id(self, trial: Trial) -> str:
        if trial.trial_id not in self.run_ids:
            if self.existing is None:
                runs = trial_runs_of(self.client, self.experiment_id, self.parent_run_id)
                self.existing = {r.data.tags[TRIAL_ID_TAG]: r.info.run_id for r in runs if TRIAL_ID_TAG in r.data.tags}
            if trial.trial_id in self.existing:  # a resumed search takes over the run its killed driver started
                self.run_ids[trial.trial_id] = self.existing[trial.trial_id]
                return self.run_ids[trial.trial_id]
            self.run_ids[trial.trial_id] = create_trial_run(self.client, self.experiment_id, self.parent_run_id, trial.trial_id, trial_number(trial), trial.config)
        return self.run_ids[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        # Two writes, each safe to do again: the run, then its parameters (MLflow takes a parameter
        # logged again with the same value; a resumed search's run taken over gets them again).
        self.write(lambda: self.run_id(trial))
        self.write(lambda: log_params(self.client, self.run_id(trial), trial_params(trial.config)))

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        unwritten = self.unwritten.setdefault(trial.trial_id, [])
        unwritten.extend(epoch_metrics(result, int(time.time() * 1000)))
        tags = {}
        node = result.get("node_id")
        if node and node not in self.nodes.setdefault(trial.trial_id, []):
            self.nodes[trial.trial_id].append(node)  # a trial retried elsewhere ran on several nodes
            tags[NODE_IDS_TAG] = ",".join(self.nodes[trial.trial_id])
        due = time.monotonic() - self.written_at.get(trial.trial_id, -math.inf) >= self.every_s
        if due or tags or len(unwritten) + len(EPOCH_METRICS) > BATCH_METRICS:
            self.write_metrics(trial, tags)

    def write_metrics(self, trial: Trial, tags: dict[str, str] | None = None) -> None:
        """Write the epoch metrics ``trial`` reported since its last write, and ``tags``, in one batch."""
        metrics = self.unwritten.pop(trial.trial_id, [])
        self.written_at[trial.trial_id] = time.monotonic()
        run_tags = [RunTag(key, value) for key, value in (tags or {}).items()]
        if metrics or run_tags:
            self.write(lambda: self.client.log_batch(self.run_id(trial), metrics=metrics, tags=run_tags))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.end_run(trial, end_tags(trial.last_result or {}), RunStatus.to_string(RunStatus.FINISHED))
        self.count_states(trial_states(trials, trial))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        tags = {STATE_TAG: "failed"}
        text = trial_error_text(trial)
        if text:
            tags[ERROR_TAG] = redact(text)[-4000:]
        self.end_run(trial, tags, RunStatus.to_string(RunStatus.FAILED))
        self.count_states(trial_states(trials, trial, failing=True))

    def end_run(self, trial: Trial, tags: dict[str, str], status: str) -> None:
        """The rest of ``trial``'s epochs and its end ``tags`` in one write, then its run ended as ``status``."""
        self.write_metrics(trial, tags)
        self.write(lambda: self.client.set_terminated(self.run_id(trial), status))

    def count_states(self, states: dict[str, int], due: bool = False) -> None:
        """The trials' states as the parent run's ``trials.*`` metrics (columns in the UI's run list),
        at most every ``every_s`` unless ``due``."""
        if not due and time.monotonic() - self.states_at < self.every_s:
            return
        self.states_at = time.monotonic()
        now = int(time.time() * 1000)
        metrics = [Metric(f"trials.{state}", count, now, 0) for state, count in states.items()]
        self.write(lambda: self.client.log_batch(self.parent_run_id, metrics=metrics))

    def get_state(self) -> dict[str, Any]:
        return {"run_ids": dict(self.run_ids), "nodes": self.nodes}

    def set_state(self, state: dict[str, Any]) -> None:
        self.run_ids, self.nodes = dict(state["run_ids"]), dict(state["nodes"])


def finished_trials(client: MlflowClient, experiment_id: str, parent_run_id: str) -> int:
    """Trials of the search that ended (completed, stopped early or failed), from MLflow."""
    return sum(r.info.status in ("FINISHED", "FAILED") for r in trial_runs_of(client, experiment_id, parent_run_id))


def record_finished(client: MlflowClient, experiment_id: str, parent_run_id: str, results: list[tune.Result]) -> list[str]:
    """After a resume: a FINISHED run for every trial that ended without error, as the trial-run
    callback writes it. A killed driver loses the writes its thread had not done yet: the last
    epochs and the end of a trial that ended just before the kill, or the whole run of one that
    also began just before. The epochs a run lacks are written from the trial's checkpoints (each
    holds what the trial reported with it). Returns the Tune trial ids recorded here."""
    runs = {r.data.tags.get(TRIAL_ID_TAG): r for r in trial_runs_of(client, experiment_id, parent_run_id)}
    recorded = []
    for result in results:
        trial_id = result.metrics.get("trial_id")
        run = runs.get(trial_id)
        if result.error is not None or not result.config or (run is not None and run.info.status in ("FINISHED", "FAILED")):
            continue
        if run is None:
            number = counted(str(result.metrics.get("experiment_tag", "")), trial_id)
            run_id = create_trial_run(client, experiment_id, parent_run_id, trial_id, number, result.config)
            log_params(client, run_id, trial_params(result.config))
        else:
            run_id = run.info.run_id
        logged = max((m.step for m in client.get_metric_history(run_id, "trial_time_s")), default=0)
        reported = {int(m["training_iteration"]): m for _, m in result.best_checkpoints or []} or {int(result.metrics["training_iteration"]): result.metrics}
        now = int(time.time() * 1000)
        metrics = [metric for step in sorted(reported) if step > logged for metric in epoch_metrics(reported[step], now)]
        tags = [RunTag(k, v) for k, v in end_tags(result.metrics).items()]
        for i in range(0, max(len(metrics), 1), BATCH_METRICS):
            client.log_batch(run_id, metrics=metrics[i : i + BATCH_METRICS], tags=tags if i == 0 else [])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        recorded.append(trial_id)
    return recorded


def close_unfinished(client: MlflowClient, experiment_id: str, parent_run_id: str, status: str) -> None:
    """Mark the runs of trials the search never finished (interrupted) as ``status``."""
    for run in trial_runs_of(client, experiment_id, parent_run_id):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status)


def start_parent_run(client: MlflowClient, experiment_id: str, spec: Spec, spec_text: str, data: Dataset) -> str:
    """The search's parent run, with the spec (and any skipped data rows) as artifacts and search-level params."""
    tags = {ROLE: "search", OBJECTIVES_TAG: spec.objectives.to_json(), STUDY_TAG: redact(spec.study_url)}
    run = client.create_run(experiment_id, run_name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags)
    run_id = run.info.run_id
    client.log_text(run_id, redact(spec_text), SPEC_FILE)  # resume takes hidden secrets from the environment
    client.log_dict(run_id, class_balance(data), CLASS_BALANCE)
    if data.skipped:
        client.log_text(run_id, "\n".join(data.skipped) + "\n", SKIPPED_ROWS)
    log_params(
        client,
        run_id,
        flat_params(
            "",
            {
                "members": ",".join(m.name for m in spec.members),
                "operators": ",".join(sorted(spec.fusion.operators)),
                "objective": spec.objectives.describe(),
                "sampler": spec.sampler,
                "num_samples": spec.budget.num_samples,
                "max_concurrent": spec.budget.max_concurrent,
                "scheduler": spec.scheduler.type,
                RUNGS_PARAM: ",".join(map(str, spec.asha.rungs(spec.hyperparameters.max_epochs()))),
                "seed": spec.seed,
                "data.source": spec.data.source,
                "data.rows": data.rows,
                "data.skipped_rows": len(data.skipped),
                **{f"data.{name}_rows": len(split) for name, split in data.splits.items()},
            },
        ),
    )
    return run_id


TARGET_BINS = 12  # a regression's targets are counted per split in this many bins


def class_balance(data: Dataset) -> dict[str, Any]:
    """Rows of each class in each split; a regression's, in bins of the target shared by the splits."""
    if data.task == "regression":
        everything = np.concatenate([split.labels.numpy() for split in data.labelled.values()])
        edges = np.histogram_bin_edges(everything, TARGET_BINS)
        names = [f"{low:.3g}-{high:.3g}" for low, high in zip(edges[:-1], edges[1:], strict=True)]
        counts = {name: np.histogram(split.labels.numpy(), edges)[0].tolist() for name, split in data.labelled.items()}
        return {"class_names": names, "splits": counts, "target": True}
    counts = {name: np.bincount(split.labels.numpy(), minlength=data.num_classes).tolist() for name, split in data.labelled.items()}
    return {"class_names": data.class_names, "splits": counts}


def table_metrics(table: dict[str, dict[str, float]]) -> dict[str, float]:
    """The test table as metrics, per row: ``champion.test_log_loss``, ``mlp_alone.test_accuracy``..."""
    return {f"{label.replace(' ', '_')}.{key}": float(value) for label, row in table.items() for key, value in row.items()}


def png_bytes(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


EXAMPLE_ROWS = 3  # MLflow checks each logged model by predicting its input example


def model_input_example(inputs: dict[str, InputDescription], split: Split, rows: int = EXAMPLE_ROWS) -> dict[str, Any] | pd.DataFrame:
    """The first rows of ``split`` as the pyfunc model takes them: named float arrays, or a
    DataFrame with text, encoded-image and table columns (numeric inputs then as per-row arrays)."""
    needed = sorted(inputs)
    if all(inputs[k].kind == "tensor" for k in needed):
        return {k: split.inputs[k][:rows].numpy() for k in needed}
    columns: dict[str, list[Any]] = {}
    for k in needed:
        values = take(split.inputs[k], range(rows))
        if isinstance(values, Table):
            columns.update({c: values.numbers[:, j].tolist() for j, c in enumerate(values.numeric)})
            columns.update({c: values.categories[:, j].tolist() for j, c in enumerate(values.categorical)})
        else:
            columns[k] = served_cells(inputs[k].kind, values)
    return pd.DataFrame(columns)


def served_cells(kind: str, values: list[Any]) -> list[Any]:
    """Rows of an input as a served model is given them: images as PNG bytes, recordings as their
    files' bytes, texts as they are."""
    if kind == "image":
        return [png_bytes(as_pixels(v)) for v in values]
    if kind == "audio":
        return [v.encoded() for v in values]
    return list(values)


# What ``predict`` returns: ``params={"output": "classes"}`` asks for class names instead of probabilities.
OUTPUT_PARAMS = ParamSchema([ParamSpec("output", DataType.string, OUTPUTS[0])])


def column_specs(name: str, description: InputDescription) -> list[ColSpec]:
    """The DataFrame columns an image, text or table input is served from. A table's columns are
    named, may hold missing values and are of any type: MLflow would refuse int64 cells for a double
    column and numbers for a string one, and the model reads both (``raw_inputs`` names a cell it
    cannot read)."""
    if description.table is not None:
        return [ColSpec(AnyType(), c, required=False) for c in (*description.table["numeric"], *description.table["categorical"])]
    return [ColSpec({"image": DataType.binary, "audio": DataType.binary, "text": DataType.string}[description.kind], name)]


def signature_for(inputs: dict[str, InputDescription], num_classes: int, example: dict[str, Any] | pd.DataFrame) -> ModelSignature:
    """Named float tensors in, or text (string), image (binary, encoded) and table columns;
    probabilities out (or class names, by the ``output`` parameter; a regression's values, ``num_classes`` 0).

    A model that mixes numeric inputs with texts or images has no input schema MLflow can
    state, so its signature states the output and the parameter only.
    """
    regression = num_classes == 0
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, 1 if regression else num_classes), "prediction" if regression else "probabilities")])
    if isinstance(example, dict):
        schema = Schema([TensorSpec(np.dtype(np.float32), (-1, *v.shape[1:]), k) for k, v in example.items()])
        return ModelSignature(inputs=schema, outputs=outputs, params=OUTPUT_PARAMS)
    if any(d.kind == "tensor" for d in inputs.values()):
        return ModelSignature(outputs=outputs, params=OUTPUT_PARAMS)
    specs = [spec for name in sorted(inputs) for spec in column_specs(name, inputs[name])]
    return ModelSignature(inputs=Schema(specs), outputs=outputs, params=OUTPUT_PARAMS)


def requirements(member_kinds: set[str]) -> list[str]:
    """What loading the model needs; a ``checkpoint`` member's own package must be added by its user."""
    packages = ["mlflow", "torch", "torchvision", "transformers", "safetensors", "numpy", "pandas", "Pillow"]
    packages += sorted({p for kind in member_kinds for p in member_facts(kind).requirements})
    return [f"{p}=={version(p)}" for p in packages]


def warm_model_logging(member_kinds: set[str]) -> None:
    """Check the logged models' requirements against the installed packages once now: MLflow does
    so for each model it logs, and the first check reads every installed distribution's metadata
    (about 1 s), then kept for the process. The driver runs this while the trials train."""
    from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

    warn_dependency_requirement_mismatches(requirements(member_kinds))


@dataclass(frozen=True)
class Logged:
    """A logged model: the URI a user loads it by (``models:/NAME/VERSION`` when registered) and its MLflow model id."""

    uri: str
    model_id: str


def log_predictor(
    spec: Spec, parent_run_id: str, model: Predictor, test: Split, metrics: dict[str, float], name: str, register: bool,
    threshold: float | None = None, checked: bool = True,
) -> Logged:
    """Log a composite or an ensemble as a pyfunc model named ``name`` under the parent run;
    with ``register``, register it as a new version of the search's name (``move_champion_alias``
    decides whether the alias follows). Its decision ``threshold`` (two classes), when it has one,
    is in the model's metadata and on the version (``decision_threshold``). ``checked``: with an
    input example, which MLflow checks by loading the logged model and predicting it (about 1 s);
    the runner-up, never registered, is logged without.

    MLflow links a model logged in a run to the metrics the run has then: the parent's metrics are
    logged after its models (``SearchRun.metrics``), or each model would be linked to all of them.
    """
    parts = composites(model)
    inputs = model.served_inputs
    example = model_input_example(inputs, test)
    signature = signature_for(inputs, parts[0].description.num_classes, example)
    artifact = "composite" if isinstance(model, CompositeModel) else "ensemble"
    register = register and spec.tracking.register_model
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=parent_run_id):
        folder = Path(tmp) / artifact
        if isinstance(model, CompositeModel):
            save_composite(model, folder)
        else:
            save_ensemble(model, folder)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(PYFUNC_CODE),
            artifacts={artifact: str(folder)},
            code_paths=[str(Path(trainables.__file__).parent)],
            signature=signature,
            input_example=example if checked else None,
            pip_requirements=requirements({m.kind for c in parts for m in c.description.members}),
            registered_model_name=spec.name if register else None,
            metadata={"test_metrics": metrics, "spec_name": spec.name, "kind": artifact, **({} if threshold is None else {THRESHOLD: threshold})},
            model_config=None if threshold is None else {THRESHOLD_KEY: threshold},
        )
    if not register:
        return Logged(info.model_uri, info.model_id)
    client = MlflowClient(spec.tracking_uri)
    client.set_model_version_tag(spec.name, str(info.registered_model_version), "test_metrics", json.dumps(metrics))
    if threshold is not None:
        client.set_model_version_tag(spec.name, str(info.registered_model_version), THRESHOLD, str(threshold))
    return Logged(f"models:/{spec.name}/{info.registered_model_version}", info.model_id)


def move_champion_alias(client: MlflowClient, spec: Spec, version: str, point: dict[str, float]) -> tuple[bool, str]:
    """Point ``NAME@champion`` at ``version`` (whose champion reached ``point`` on validation, cost
    included) unless the version it points at is better on the first objective and meets this
    search's constraints; returns whether it moved, and a line saying so.
    Under the store's lock, so that of two searches finishing together the better one wins."""
    objectives = spec.objectives
    first = objectives.first
    value = point[first.key]
    with first_use(spec.tracking_uri):
        try:
            holder = client.get_model_version_by_alias(spec.name, CHAMPION_ALIAS)
        except MlflowException:
            holder = None
        held = champion_point(client.get_run(holder.run_id)) if holder is not None else {}
        keeps = first.key in held and objectives.feasible(held) and not first.direction.better(value, held[first.key])
        if holder is not None and str(holder.version) != version and keeps:
            return False, (
                f"alias {CHAMPION_ALIAS!r} stays on version {holder.version} ({first.metric} {held[first.key]:.4f}, "
                f"this search's {value:.4f}); this search's champion is version {version} "
                f"(fusion-search promote {spec.name} {version} moves it)"
            )
        client.set_registered_model_alias(spec.name, CHAMPION_ALIAS, version)
    return True, f"alias {CHAMPION_ALIAS!r} on version {version} ({first.metric} {value:.4f})"


class SearchRun:
    """The MLflow record of one search as it is written: the client, the experiment and the parent
    run, with the methods that write them. The driver writes through it alone (trial runs are the
    ``TrialRunsCallback``'s, which it hands to Tune)."""

    def __init__(self, spec: Spec, client: MlflowClient, experiment_id: str, parent: str) -> None:
        self.spec, self.client, self.experiment_id, self.parent = spec, client, experiment_id, parent

    @classmethod
    def start(cls, spec: Spec, client: MlflowClient, experiment_id: str, spec_text: str, data: Dataset, experiment: Callable[[str], str], source: Path | None) -> "SearchRun":
        """A new parent run: the spec, the data's facts, where Tune keeps the experiment
        (``experiment(parent)``), the storage and the spec's folder, for resume."""
        run = cls(spec, client, experiment_id, start_parent_run(client, experiment_id, spec, spec_text, data))
        run.tag(TUNE_EXPERIMENT_TAG, redact(experiment(run.parent)))  # resume takes a hidden secret from the environment
        run.tag(STORAGE_TAG, str(spec.storage))
        if source is not None:
            run.tag(SPEC_DIR_TAG, str(source.resolve().parent))
        return run

    def trial_runs(self) -> TrialRunsCallback:
        return TrialRunsCallback(self.spec.tracking_uri, self.experiment_id, self.parent)

    def record_finished(self, results: list[tune.Result]) -> list[str]:
        return record_finished(self.client, self.experiment_id, self.parent, results)

    def tag(self, name: str, value: str) -> None:
        self.client.set_tag(self.parent, name, value)

    def metric(self, name: str, value: float) -> None:
        self.client.log_metric(self.parent, name, value)

    def metrics(self, values: dict[str, float], model_id: str | None = None) -> None:
        """``values`` on the parent run in one write, linked to the logged model ``model_id`` when given."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent, metrics=[Metric(k, float(v), now, 0, model_id=model_id) for k, v in values.items()])

    def json(self, artifact: str, value: Any) -> None:
        self.client.log_dict(self.parent, value, artifact)

    def model(
        self, model: Predictor, test: Split, metrics: dict[str, float], name: str, register: bool, threshold: float | None = None, checked: bool = True
    ) -> Logged:
        return log_predictor(self.spec, self.parent, model, test, metrics, name, register, threshold, checked)

    def alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.spec.name, alias, version)

    def champion_alias(self, version: str, point: dict[str, float]) -> tuple[bool, str]:
        return move_champion_alias(self.client, self.spec, version, point)

    def finished_trials(self) -> int:
        return finished_trials(self.client, self.experiment_id, self.parent)

    def forget_earlier_champion(self) -> None:
        """Before a resumed search redoes the work after the trials: remove what an earlier attempt
        logged of it (the models under the parent run, the versions registered from it), so that one
        champion version remains and the alias is weighed again."""
        for model in self.client.search_logged_models([self.experiment_id], filter_string=f"source_run_id = '{self.parent}'"):
            self.client.delete_logged_model(model.model_id)
        for version in self.client.search_model_versions(f"name = '{self.spec.name}' and run_id = '{self.parent}'"):
            self.client.delete_model_version(self.spec.name, version.version)

    def end(self, status: str) -> None:
        """Close the trial runs the search never finished as KILLED, and the parent run as ``status``."""
        close_unfinished(self.client, self.experiment_id, self.parent, RunStatus.to_string(RunStatus.KILLED))
        self.client.set_terminated(self.parent, status)
