"""What a person sees while a search runs: one line per finished trial, a heartbeat.

Replaces Ray Tune's full status table (shown only with ``--verbose``) with the
numbers that matter: trials done / running / total, and the best so far.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from ray.tune import Callback
from ray.tune.experiment import Trial

from search.run.optuna_search import finished_after_snapshot, stopped_early
from search.run.space import structure_of
from search.text import error_summary
from search.spec.objectives import Objectives


def quiet_libraries(verbose: bool) -> None:
    """Keep Ray Tune's tables, Optuna's and MLflow's info logs and progress bars off the terminal.

    Warnings and errors still show. With ``verbose`` nothing is changed.
    """
    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0
    # Every epoch checkpoints on purpose (resume, champion): not a bottleneck worth a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # two UI links per trial run a server closes
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


class TuneResumeHint(logging.Filter):
    """Drops Tune's "Resume experiment with: Tuner.restore(...)": an interrupted search is continued
    with ``fusion-search resume NAME``, which the driver prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


def hide_tune_resume_hint() -> None:
    logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, TuneResumeHint) for f in logger.filters):
        logger.addFilter(TuneResumeHint())


def trial_error_text(trial: Trial) -> str:
    """The traceback Tune saved for a failed trial ("" if there is none)."""
    path = Path(trial.error_file) if trial.error_file else None
    return path.read_text() if path is not None and path.is_file() else ""


def trial_number(trial: Trial) -> str:
    """``t07``: Tune's count of the trial, as its MLflow run is named (its id when Tune gave none)."""
    return counted(trial.experiment_tag, trial.trial_id)


def counted(experiment_tag: str, trial_id: str) -> str:
    """``t07`` from Tune's experiment tag of a trial (``7_...``); ``trial_id`` when it has no count."""
    count = experiment_tag.split("_", 1)[0]
    return f"t{int(count):02d}" if count.isdigit() else trial_id


def describe(config: dict[str, Any]) -> str:
    """A trial's fusion in words, from its Tune config: ``cnn+mlp via weighted``, ``cnn alone``."""
    return structure_of(config).words()


def trial_states(trials: list[Trial], ending: Trial | None = None, failing: bool = False) -> dict[str, int]:
    """How many trials are completed, stopped early, failed and running, from Tune's own trial states
    (``ending`` is finishing, or ``failing``, but not marked yet), so a resumed search counts the
    trials done before the crash once."""
    finishing = ending is not None and ending.status == Trial.RUNNING
    states = {"completed": 0, "stopped_early": 0, "failed": 0, "running": 0}
    for trial in trials:
        if trial.status == Trial.ERROR or (finishing and failing and trial is ending):
            states["failed"] += 1
        elif trial.status == Trial.TERMINATED or (finishing and trial is ending):
            states["stopped_early" if stopped_early(trial.last_result) else "completed"] += 1
        elif trial.status == Trial.RUNNING:
            states["running"] += 1
    return states


class ProgressPrinter(Callback):
    """Counts, and the best trial so far on the first objective among those meeting the constraints.
    Restored with a resumed search, it also counts the trials that finished after Tune's last
    snapshot (found in the Optuna study ``study`` = (URL, name), as the searcher finds them)."""

    def __init__(self, total: int, objectives: Objectives, structures: int, study: tuple[str, str], search_run: str, every_s: float = 30.0) -> None:
        # No stream is kept: Tune pickles callbacks with its experiment state.
        self.total, self.objectives, self.structures, self.every_s = total, objectives, structures, every_s
        self.study, self.search_run = study, search_run
        self.key = objectives.first.key
        self.best: tuple[float, str] | None = None
        self.last_beat = time.monotonic()
        self.elsewhere: int | None = 0  # finished trials Tune does not know; None: count them (restored)

    def better(self, value: float) -> bool:
        if self.best is None:
            return True
        return self.objectives.first.direction.better(value, self.best[0])

    def line(self, trials: list[Trial], finished: Trial | None = None) -> str:
        states = trial_states(trials, finished)
        if self.elsewhere is None:
            url, name = self.study
            study = optuna.load_study(study_name=name, storage=url)
            self.elsewhere = len(finished_after_snapshot(study, self.search_run, {t.trial_id for t in trials}))
        done = states["completed"] + states["stopped_early"] + states["failed"] + self.elsewhere
        running = states["running"]
        best = f"best {self.key}={self.best[0]:.4f} (trial {self.best[1]})" if self.best else "no result yet"
        tried = len({structure_of(t.config) for t in trials if t.config})
        return f"[{done}/{self.total} done, {running} running, {tried}/{self.structures} structures tried] {best}"

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        result = trial.last_result or {}
        value = result.get(self.key, math.nan)
        misses = self.objectives.violations(result)
        if not math.isnan(value) and not misses and self.better(value):
            self.best = (value, trial_number(trial))
        how = f"stopped early at epoch {result.get('epoch')}" if stopped_early(result) else "finished"
        others = "".join(f", {k}={result[k]:.4g}" for k in self.objectives.shown[1:] if k in result)
        fit = f"; misses {', '.join(misses)}" if misses else ""
        print(f"trial {trial_number(trial)} ({trial.trial_id}) {how}: {self.key}={value:.4f}{others} ({describe(trial.config)}){fit}")
        print(self.line(trials, trial), flush=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        print(f"trial {trial_number(trial)} ({trial.trial_id}) FAILED ({describe(trial.config)}): {error_summary(trial_error_text(trial))}", flush=True)

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best}

    def set_state(self, state: dict[str, Any]) -> None:
        self.best = state["best"] and tuple(state["best"])
        self.elsewhere = None

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if time.monotonic() - self.last_beat >= self.every_s:
            self.last_beat = time.monotonic()
            print(self.line(trials), flush=True)


class Phases:
    """The wall time of each phase of a search, in order, from when it was made: what the run prints
    in one line at its end and logs on the parent run as ``search.time.<phase>_s``."""

    def __init__(self, since: float | None = None) -> None:
        """Phases from ``since`` (a ``time.monotonic()`` value; default now)."""
        self.last = time.monotonic() if since is None else since
        self.seconds: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        """``phase`` ended now (it began when the one before it ended)."""
        now = time.monotonic()
        self.seconds[phase] = now - self.last
        self.last = now

    def metrics(self) -> dict[str, float]:
        return {f"search.time.{phase.replace(' ', '_')}_s": value for phase, value in self.seconds.items()}

    def line(self) -> str:
        total = sum(self.seconds.values())
        return "time: " + ", ".join(f"{phase} {value:.1f} s" for phase, value in self.seconds.items()) + f" (in all {total:.1f} s)"
