"""`--stack K`: this process trains K trials of the study at once, as one stacked model (train_core's
train_stacked). Each member is still one Optuna trial: asked for (study.ask) when a slot is free, readied, reported to
and pruned step by step, and told how it ended, by the same Objective pieces a single trial uses, so the dashboard,
audit, retries and every storage see trials as they always were."""

from __future__ import annotations

import time
import warnings
from typing import Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.objective import Objective, TrialRun
from sweep.view import SweepView
from sweep.record import TrialAttr
from sweep.workers import Budget
from train_core import MEMBER_SECTIONS, InputError, StackMember, TrainResult, train_stacked

AUTO = "auto"


def check_stack(stack: int | str, *, grid_points: int | None, swept: tuple[str, ...]) -> None:
    """`--stack` must be a positive count or auto, and no more trials than the sampler can propose at once: a grid
    sampler (grid_points: its points; None for the others) proposes each point once. The members of a stack differ
    only in MEMBER_SECTIONS: a sweep of further recipe keys (`swept`) has trials that cannot share one."""
    if stack != AUTO and (not isinstance(stack, int) or stack < 1):
        raise InputError(f"--stack must be a positive number of trials or {AUTO}, got {stack!r}")
    if isinstance(stack, int) and grid_points is not None and stack > grid_points:
        raise InputError(f"--stack {stack} needs {stack} different trials at once, but the grid sampler has "
                         f"{grid_points} points; give --stack {grid_points} or less, or more --grid-points")
    if stack != 1 and (unstackable := [key for key in swept if key.split(".")[0] not in MEMBER_SECTIONS]):
        raise InputError(f"--stack {stack} trains trials that differ only in {', '.join(MEMBER_SECTIONS)}, but this "
                         f"sweep varies {', '.join(unstackable)} from trial to trial; leave --stack out for it")


class StackedTrials:
    """One pass of a stack over a study: a trial is asked for whenever a slot is free and one may start, until the
    stack is empty and none may. `may_start` says whether one may, given the study's budget (the worker loop's checks:
    the budget, a deadline, a failure streak); `on_finished` gets each trial as told."""

    def __init__(self, study: optuna.Study, objective: Objective, *, stack: int, trials: int,
                 may_start: Callable[[Budget], bool], on_finished: Callable[[optuna.Study, FrozenTrial], None]):
        self.study, self.objective, self.stack, self.trials = study, objective, stack, trials
        self.may_start, self.on_finished = may_start, on_finished
        self.running: dict[int, TrialRun] = {}  # id(member) -> its trial's run

    def run(self) -> None:
        try:
            for member, result in train_stacked(self._members(), stack=self.stack):
                self._finish(self.running.pop(id(member)), result)
        except BaseException as error:
            self._fail_running(error)
            raise

    def _finish(self, run: TrialRun, result: TrainResult) -> None:
        run.close()
        try:
            value = run.finish(result)
        except optuna.TrialPruned:
            self._tell(run.trial, state=TrialState.PRUNED)
        except Exception as error:  # this trial failed, the stack goes on
            self._fail(run.trial, error)
        else:
            self._tell(run.trial, values=value)

    def _fail_running(self, error: BaseException) -> None:
        """The stack's step raised `error`: every member fails with it, each with its reason (an interrupt queues each
        again, to resume from its checkpoint). An interrupt ends the process as it ends study.optimize: the trials are
        told, and on_finished is not called."""
        for run in self.running.values():
            run.failed(error)
            run.close()
            frozen = self.study.tell(run.trial, state=TrialState.FAIL, skip_if_finished=True)
            if isinstance(error, Exception):
                self.on_finished(self.study, frozen)
        self.running.clear()

    def _members(self) -> Iterator[StackMember | None]:
        """A member for each free slot where a trial may start (a new trial, or a retry, which resumes from its
        checkpoint), else None. A trial that reuses a finished twin's result is told at once."""
        while True:
            if not self.may_start(Budget.of(self.study, total=self.trials)):
                yield None  # none now: asked again when the next slot frees
                continue
            trial = self.study.ask()
            try:
                run = self.objective.begin(trial)
            except optuna.TrialPruned:
                self._tell(trial, state=TrialState.PRUNED)
                continue
            except Exception as error:  # this trial failed, the stack goes on
                self._fail(trial, error)
                continue
            if not isinstance(run, TrialRun):
                self._tell(trial, values=run)
                continue
            member = StackMember(config=run.config, out_dir=run.out_dir, callback=run.reporter,
                                 callback_state=run.reporter.guard)
            run.open()
            self.running[id(member)] = run
            yield member

    def _fail(self, trial: optuna.Trial, error: Exception) -> None:
        trial.set_user_attr(TrialAttr.FAIL_REASON, f"{error.__class__.__name__}: {error}")
        self._tell(trial, state=TrialState.FAIL)

    def _tell(self, trial: optuna.Trial, *, values: float | None = None, state: TrialState | None = None) -> None:
        # A trial another worker declared dead (its heartbeat stalled) stays FAIL: its retry continues the work.
        frozen = self.study.tell(trial, values, state=state, skip_if_finished=True)
        self.on_finished(self.study, frozen)


def run_stack(study: optuna.Study, objective: Objective, *, stack: int, trials: int, view: SweepView,
              failures, deadline: float | None) -> None:
    """A pass of a stack of trials under the worker loop's rules for starting one (sweep/lr.py's run_trials), each
    trial told to the view and to the failure streak. A stack that fails fails its trials, and the loop goes on, as
    study.optimize's catch does for one trial. `failures`: run_trials' failure streak, told each trial as it ends,
    `stopped` once the last trials all failed."""

    def may_start(budget: Budget) -> bool:
        objective.interrupts.check()
        return (budget.may_start and not failures.stopped
                and (deadline is None or time.monotonic() < deadline)
                and (budget.waiting > 0 or not study.sampler.is_exhausted(study)))

    def finished(study: optuna.Study, trial: FrozenTrial) -> None:
        view.trial_finished(study, trial)
        failures(study, trial)

    try:
        StackedTrials(study, objective, stack=stack, trials=trials, may_start=may_start, on_finished=finished).run()
    except Exception as error:
        warnings.warn(f"a stack of trials failed: {error.__class__.__name__}: {error}", stacklevel=1)
