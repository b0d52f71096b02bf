"""Ray's OptunaSearch, told the truth about trials that ASHA stopped early.

Ray reports a trial stopped by the scheduler to Optuna as COMPLETE with its
truncated value. Mixed with finished trials, those values mislead TPE: a config
stopped after two epochs looks like a finished one that converged badly (or, for
a "higher is better" metric read at a lucky epoch, like a good one). Here such a
trial is told to Optuna as PRUNED; Optuna already has its per-epoch values (Ray
reports them as intermediate values), and TPE ranks pruned trials below completed
ones, deeper-reaching ones first: exactly Optuna's own pruning semantics.

After a resume, Tune's snapshot of the trials and of this searcher are a little
older than the study (they are saved every few seconds and uploaded in the
background), and may be from slightly different moments. So: a restored trial
this searcher never saw is not told to Optuna; one the study already finished
keeps what it had (the trial is replayed from an older checkpoint); trials of this
search that finished after the snapshot (``finished_after_snapshot``) count against the
budget, so that no new trial is trained in their place (the driver reads their results
from their checkpoints); and ``fail_running`` fails the study's trials that no restored
trial carried.

With several objectives Optuna keeps no intermediate values (ASHA still prunes on the first
objective); with constraints each finished trial's slack on them is stored with it, where the
sampler's ``constraints_func`` (``constraint_slack``) reads it.
"""

from __future__ import annotations

import math
from contextlib import suppress
from dataclasses import dataclass

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.spec.objectives import Objectives
from search.errors import SpecError
from search.names import ALONE_AGAIN_ATTR, ALONE_ATTR, OBJECTIVES_ATTR, RUN_ATTR, SEARCHES_ATTR, SLACK_ATTR, TUNE_TRIAL_ATTR
from search.run.space import AloneAgain



def stopped_early(result: dict | None) -> bool:
    """True when the trial's last report came before its planned last epoch."""
    if not result or "epoch" not in result or "planned_epochs" not in result:
        return False
    return int(result["epoch"]) < int(result["planned_epochs"])


@dataclass(frozen=True)
class ConstraintSlack:
    """Optuna's ``constraints_func``: a trial's slack on each of ``count`` constraints (<= 0: met),
    as ``PruneAwareOptunaSearch`` stored it; a trial without one (it reported nothing) meets none."""

    count: int

    def __call__(self, trial: FrozenTrial) -> list[float]:
        return trial.user_attrs.get(SLACK_ATTR, [math.inf] * self.count)


def finished_after_snapshot(study: optuna.Study, search_run: str, known: set[str]) -> list[FrozenTrial]:
    """The trials of ``search_run`` that Optuna has as finished (complete or pruned) and whose Tune
    trial is not among ``known`` (Tune's snapshot predates them)."""
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return [
        t for t in study.get_trials(deepcopy=False, states=states)
        if t.user_attrs.get(RUN_ATTR) == search_run and t.user_attrs.get(TUNE_TRIAL_ATTR) not in known
    ]


class PruneAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, objectives: Objectives, search_run: str, budget: int | None = None, alone_again: AloneAgain | None = None, **kwargs) -> None:  # noqa: ANN002, ANN003 - OptunaSearch's own arguments
        super().__init__(*args, metric=objectives.keys if objectives.multi else objectives.first.key, mode=objectives.modes if objectives.multi else objectives.first.mode, **kwargs)
        self._objectives = objectives
        self._search_run = search_run
        self._budget = budget
        self._last_step: dict[str, int] = {}
        self._alone_again = alone_again
        self._finished = 0
        self._tried_again = False
        self._forgotten = 0  # trials that finished after the snapshot this searcher was restored from

    def suggest(self, trial_id: str) -> dict | str | None:
        """Optuna's suggestion, its trial marked with this search's run (a study may hold several
        searches; the pictures of one take its own trials) and Tune's trial id; ``FINISHED`` once
        the budget is spent, trials that finished after a restored snapshot included."""
        if self._budget is not None and trial_id not in self._ot_trials and len(self._ot_trials) + self._forgotten >= self._budget:
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(RUN_ATTR, self._search_run)
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return config

    def restore(self, checkpoint_path: str) -> None:
        """This searcher as Tune's snapshot saved it, counting the trials that finished after it."""
        super().restore(checkpoint_path)
        forgotten = finished_after_snapshot(self._ot_study, self._search_run, set(self._ot_trials))
        self._forgotten, self._finished = len(forgotten), self._finished + len(forgotten)
        if forgotten:
            print(f"Optuna trials {', '.join(str(t.number) for t in forgotten)} finished after Tune's last snapshot: counted, not trained again", flush=True)

    def queue(self, trials: list[tuple[dict, dict]]) -> None:
        """Enqueue trials (parameters, user attributes): the study's next suggestions, in order."""
        for params, attrs in trials:
            self._ot_study.enqueue_trial(params, user_attrs=attrs)

    def fail_unfinished(self) -> list[int]:
        """After an interrupted search: fail the Optuna trials this searcher started and nothing
        finished (other searches of the study keep theirs). Returns their numbers."""
        return fail_running(self._ot_study, {trial.number for trial in self._ot_trials.values()})

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._ot_trials:
            return  # restored from a snapshot newer than this searcher's
        step = int(result["training_iteration"])
        if step <= self._last_step.get(trial_id, 0):
            return  # a trial restored from a checkpoint replays steps Optuna already has
        with suppress(UpdateFinishedTrialError):
            super().on_trial_result(trial_id, result)
        self._last_step[trial_id] = step

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._ot_trials:
            return
        last_step = self._last_step.pop(trial_id, None)
        with suppress(UpdateFinishedTrialError):
            if result and self._objectives.bounds:
                self._ot_trials[trial_id].set_user_attr(SLACK_ATTR, self._objectives.slacks(result))
            if not error and stopped_early(result):
                # Tune does not pass the result that made the scheduler stop the trial through
                # on_trial_result: record it, so Optuna ranks the pruned trial by how far it got.
                step = int(result["training_iteration"])
                if not self._objectives.multi and last_step != step and self.metric in result:
                    self._ot_trials[trial_id].report(result[self.metric], step)
                result = None  # OptunaSearch tells a result-less, error-free trial as PRUNED
            super().on_trial_complete(trial_id, result=result, error=error)
        self._finished += 1
        if self._alone_again is not None and not self._tried_again and self._finished >= self._alone_again.after:
            self._tried_again = True
            self.try_members_alone_again(self._alone_again)

    def try_members_alone_again(self, again: AloneAgain) -> None:
        """Queue each member alone with the settings of this search's best finished trial (first
        objective), once per search (a resumed search may pass the mark a second time)."""
        finished = [t for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get(RUN_ATTR) == self._search_run]
        marker = f"{ALONE_AGAIN_ATTR}.{self._search_run}"
        if not finished or marker in self._ot_study.user_attrs:
            return
        best = min(finished, key=lambda t: self._objectives.first.direction.best_first(t.values[0]))
        trials = again.queued(best.params)
        self._ot_study.set_user_attr(marker, best.number)
        self.queue(trials)
        if trials:
            members = ", ".join(attrs[ALONE_ATTR] for _, attrs in trials)
            print(f"trying {members} alone again, with the settings of the best trial so far (Optuna trial {best.number})", flush=True)




def register_search(storage: optuna.storages.BaseStorage, name: str, objectives: Objectives) -> int:
    """Count this search into study ``name`` (created if new); returns how many searches started on
    it before. The caller holds the study's database (``first_use``) so that two searches started
    together get different numbers, hence different sampler seeds, rather than the same trials.
    A study whose trials were scored on other objectives or constraints is refused: their values
    and constraint slacks would not fit this search's."""
    directions = [g.direction.optuna for g in objectives.goals]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, load_if_exists=True)
    held = study.user_attrs.get(OBJECTIVES_ATTR)
    held_directions = [d.name.lower() for d in study.directions]
    if held_directions != directions or held not in (None, objectives.describe()):
        raise SpecError(
            f"objective: the Optuna study {name!r} holds trials scored on {held or ', '.join(held_directions)}, "
            f"and this spec asks for {objectives.describe()}: give the search another name or another storage"
        )
    study.set_user_attr(OBJECTIVES_ATTR, objectives.describe())
    earlier = int(study.user_attrs.get(SEARCHES_ATTR, 0))
    study.set_user_attr(SEARCHES_ATTR, earlier + 1)
    return earlier


def fail_running(study: optuna.Study, among: set[int] | None = None) -> list[int]:
    """Fail the study's trials still RUNNING (those numbered ``among``, when given); returns their numbers.

    After a resumed search, all of them: the dead driver started them after Tune's last snapshot,
    no restored trial carries them, so nothing will finish them."""
    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if among is None or t.number in among]
    for number in running:
        study.tell(number, state=TrialState.FAIL)
    return running
