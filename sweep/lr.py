"""The LR x warmup sweep: an Optuna study of short trials, continued until it holds `trials` finished trials."""

import json
import math
import signal
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import optuna
import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial, TrialState

from sweep.pruning import make_pruner
from sweep.samplers import lr_grid, make_sampler, startup_trials
from sweep.stacked import run_stack
from sweep.objective import Objective, name_metric
from sweep.plan import TrialPlan
from sweep.recipe import recipe_note, warmup_steps
from sweep.record import (
    StudyAttr,
    TrialAttr,
    anchor_trial,
    fail_reason,
    existing_study,
    search_space,
    write_sweep_record,
)
from sweep.runs import Runs
from sweep.settings import SweepSettings
from sweep.storage import kind_of, mask, open_storage, persistence_gap
from sweep.view import SweepView
from sweep.workers import (
    FINISHED,
    STORAGE_FAULT,
    Budget,
    Interrupts,
    Liveness,
    describe_workers,
    reap_dead_trials,
    run_worker_processes,
    threads_per_worker,
    visible_gpus,
    was_reaped,
    worker_gpus,
)
from train_core import FaultError, InputError, exclusive

SQLITE_ADVICE = ("SQLite takes one sweep at a time: wait for it, or use a journal file (--storage runs/sweep.log), "
                 "postgresql://... or redis://... for several processes")
MAX_CONSECUTIVE_FAILURES = 3  # failures do not count towards --trials; stop a sweep whose every trial crashes


@dataclass(frozen=True, kw_only=True)
class SweepOutcome:
    study: optuna.Study
    plot: Path | None
    stopped_by_failures: bool
    lost_workers: list[str]  # `--workers` children that neither finished nor stopped on failures, and how they ended
    workers: list[str]  # `--workers`: the devices they ran on, a line each (empty for a single process)
    dashboard: str | None  # the command that shows the study in optuna-dashboard

    def report_lines(self) -> list[str]:
        """What the sweep left and how it ended, a line each, for after the trials table."""
        lines = [f"loss vs peak lr: {self.plot}"] if self.plot else []
        lines += [f"inspect: {self.dashboard}"] if self.dashboard else []
        if self.stopped_by_failures:
            lines.append("stopped: the last trials all failed; see fail_reason in the table above")
        lines += self.workers
        lines += [f"{lost}; a trial it left running is retried from its checkpoint by the other workers or by the next "
                  "run of this command" for lost in self.lost_workers]
        return lines


def anchor_warmup(plan: TrialPlan) -> int:
    """The anchor trial's warmup: the study's anchor_warmup, else the choice nearest the recipe's warmup fraction."""
    search, sched = plan.recipe.search, plan.recipe.train.schedule
    if search.anchor_warmup is not None:
        target = warmup_steps(search.anchor_warmup, plan.steps)
    else:
        target = round(sched.warmup_steps / sched.max_steps * plan.steps)
    return plan.warmups.nearest(target)


def run_sweep(plan: TrialPlan, *, settings: SweepSettings, view: SweepView) -> SweepOutcome:
    """Run trials until the study holds the trials `settings` ask for. Several processes, here (--workers starts
    them with the same command line) or on other machines, may work on one study at once."""
    storage_url, runs = settings.storage_url, settings.runs
    study_name, trials = settings.study_name_for(plan.recipe, plan.steps), settings.trials_for(plan)
    storage = open_storage(storage_url)
    study = open_study(plan, storage=storage, storage_url=storage_url, study_name=study_name, trials=trials,
                       sampler=settings.sampler, grid_points=settings.grid_points, worker_index=settings.worker_index)
    artifact_store = FileSystemArtifactStore(_mkdir(runs.artifacts(storage_url)))
    view.sweep_started(study, trials=trials, steps=plan.steps)
    lost, devices, workers = [], [], settings.workers
    if workers > 1:
        gpus = worker_gpus(workers=workers, gpus=visible_gpus())
        codes = run_worker_processes(study, argv=list(settings.worker_argv), workers=workers, gpus=gpus, view=view,
                                     poll_every=1.0)
        stopped = 1 in codes  # a worker exits 1 when its trials kept failing
        lost = [f"worker {i} of {workers} {_how_it_ended(code)}" for i, code in enumerate(codes, 1) if code not in (0, 1)]
        devices = describe_workers(study, gpus=gpus, threads=threads_per_worker(workers))
    else:
        stopped = run_trials(study, plan, storage=storage, trials=trials, timeout=settings.timeout, view=view,
                             liveness=settings.liveness, artifact_store=artifact_store, storage_url=storage_url,
                             stack=settings.stack_for(plan, trials=trials))
    check_study_exists(storage, storage_url=storage_url, study_name=study_name)
    plot = save_lr_plot(study, path=runs.lr_plot(storage_url, study_name), artifact_store=artifact_store)
    return SweepOutcome(study=study, plot=plot, stopped_by_failures=stopped, lost_workers=lost, workers=devices,
                        dashboard=_dashboard_command(storage_url, runs))


def _dashboard_command(storage_url: str, runs: Runs) -> str | None:
    """How to look at a SQLite storage in optuna-dashboard, with its artifacts."""
    kind = kind_of(storage_url)
    if kind.name != "sqlite" or (path := kind.file(storage_url)) is None:
        return None
    return f"optuna-dashboard sqlite:///{path} --host 127.0.0.1 --artifact-dir {runs.artifacts(storage_url)}"


def sole_sqlite_writer(storage_url: str):
    """Context manager: this process is the only sweep on a SQLite storage for the block (nothing for other storages).
    SQLite takes one writer: a second sweep on the same file is refused instead of racing it (at creation, alembic's
    "UNIQUE constraint failed"; later, "database is locked", or two sweeps' trials interleaved in one study)."""
    kind = kind_of(storage_url)
    if kind.several_writers or (db := kind.file(storage_url)) is None:
        return nullcontext()
    return exclusive(Path(f"{db}.lock"), what=f"storage sqlite:///{db}", advice=SQLITE_ADVICE)


def _how_it_ended(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def open_study(
    plan: TrialPlan,
    *,
    storage: optuna.storages.BaseStorage,
    storage_url: str,
    study_name: str,
    trials: int,
    sampler: str,
    grid_points: int,
    worker_index: int | None = None,
) -> optuna.Study:
    """Create the study in `storage` (opened from `storage_url`) with the plan, the recipe and the anchor trial
    enqueued, or load it, refusing another plan."""
    space = plan.search_space()
    grid = trial_grid(plan, grid_points=grid_points) if sampler == "grid" else None
    existing = existing_study(storage=storage, study_name=study_name)
    if existing is not None:
        saved = existing.user_attrs.get(StudyAttr.SEARCH_SPACE)
        if saved is not None and saved != json.loads(json.dumps(space.to_attr())):
            raise InputError(
                f"study {study_name} in {mask(storage_url)} was run with another search space "
                f"({_diff(saved, space.to_attr())}); pass another --study-name to start a new study"
            )
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="minimize",
        load_if_exists=True,
        sampler=make_sampler(sampler, seed=plan.seed, worker=worker_index or 0, n_startup_trials=startup_trials(trials),
                             grid=grid),
        pruner=make_pruner(plan.pruner_name, steps=plan.steps, warmup_steps=plan.warmups.longest),
    )
    if existing is None:
        if (gap := persistence_gap(storage_url)) is not None:
            warnings.warn(gap, stacklevel=1)  # once, by the process that makes the study (not by every worker)
        write_sweep_record(study, space=space, recipe=plan.recipe, pruner=plan.pruner_name,
                           guard_rules=plan.guard_rules)
        name_metric(study)
        optuna_dashboard.save_note(study, recipe_note(plan.recipe.text))
        study.enqueue_trial(
            {"lr": plan.recipe.search.anchor_lr, "warmup": anchor_warmup(plan)} | plan.anchor_values(),
            user_attrs={TrialAttr.ANCHOR: True},
            skip_if_exists=True,  # two workers starting together enqueue it once
        )
    return study


def run_trials(
    study: optuna.Study,
    plan: TrialPlan,
    *,
    storage: optuna.storages.BaseStorage,
    trials: int,
    timeout: float | None,
    view: SweepView,
    liveness: Liveness,
    artifact_store: FileSystemArtifactStore,
    storage_url: str,
    stack: int = 1,
) -> bool:
    """This process's worker loop, a trial or a stack of them at a time; True when it stopped on failing trials."""
    interrupts = Interrupts()  # Ctrl-C / SIGTERM end the loop between steps, never inside a storage call
    objective = Objective(
        plan, storage=storage, view=view, artifact_store=artifact_store, liveness=liveness, interrupts=interrupts
    )
    failures = _FailureStreak()
    deadline = None if timeout is None else time.monotonic() + timeout
    with interrupts:
        while not failures.stopped and (deadline is None or time.monotonic() < deadline):
            interrupts.check()
            check_study_exists(storage, storage_url=storage_url, study_name=study.study_name)
            reap_dead_trials(study, storage=storage, grace=liveness.grace, max_retries=liveness.max_retries)
            budget = Budget.of(study, total=trials)
            if budget.done:
                break
            # GridSampler stops a study whose grid is exhausted, but that stop only ends the current optimize() call.
            if budget.waiting == 0 and study.sampler.is_exhausted(study):  # a FAIL counts as a visited grid point
                break
            if not budget.may_start:
                interrupts.wait(liveness.interval)  # other workers' trials fill the budget; wait for them to end or die
                continue
            if stack > 1:
                run_stack(study, objective, stack=stack, trials=trials, view=view, failures=failures, deadline=deadline)
                continue
            try:
                study.optimize(
                    objective,
                    n_trials=1,
                    catch=(Exception,),
                    callbacks=[lambda s, t: view.trial_finished(s, t), failures],
                )
            except ValueError:
                # "Cannot tell a FAIL trial": another worker declared this one's trial dead (its heartbeat came later
                # than --grace: a stalled storage, a paused machine) and queued a retry, which continues the work.
                if objective.trial_id is None or not was_reaped(storage, objective.trial_id):
                    raise
    return failures.stopped


def check_study_exists(storage: optuna.storages.BaseStorage, *, storage_url: str, study_name: str) -> None:
    """FaultError when the study was deleted mid-sweep (`optuna delete-study`, the dashboard, another tool): this
    process would go on adding trials to a study no longer listed. A journal that lost its records, or its file, says
    so itself on every read (sweep.storage.journal)."""
    try:
        storage.get_study_id_from_name(study_name)  # one indexed query, or the journal's new records
    except KeyError:
        raise FaultError(
            f"study {study_name} was deleted from {mask(storage_url)} mid-sweep; its results are lost, run the command "
            "again to start over"
        ) from None


class _FailureStreak:
    """Stops the worker loop after MAX_CONSECUTIVE_FAILURES failed trials in a row: the cause is not the
    hyperparameters. Told each trial as it ends (an Optuna callback; a stack calls it outside study.optimize, where
    study.stop() raises: the loop checks `stopped` before each trial or stack instead)."""

    def __init__(self):
        self.streak = 0
        self.stopped = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if fail_reason(trial).startswith(STORAGE_FAULT):
            return  # queued again: says nothing about the trials
        self.streak = self.streak + 1 if trial.state == TrialState.FAIL else 0
        if self.streak >= MAX_CONSECUTIVE_FAILURES:
            self.stopped = True


def stored_lr_bounds(*, storage: optuna.storages.BaseStorage, study_name: str) -> list[float] | None:
    """The LR bounds a study of `lr` was made with, or None when there is no such study yet."""
    existing = existing_study(storage=storage, study_name=study_name)
    space = None if existing is None else search_space(existing)
    return None if space is None else list(space.lr)


def trial_grid(plan: TrialPlan, *, grid_points: int) -> dict[str, list]:
    """The grid sampler's points: log-spaced LRs (the anchor's among them) x the warmup choices x each further swept
    key's values (the recipe's among them)."""
    anchor = plan.anchor_values()
    return {
        "lr": lr_grid(lr_min=plan.lr_min, lr_max=plan.lr_max, points=grid_points, anchor_lr=plan.recipe.search.anchor_lr),
        "warmup": plan.warmups.grid(grid_points),
    } | {p.key: p.grid(grid_points, anchor=anchor[p.key]) for p in plan.params}


def grid_trials(plan: TrialPlan, *, grid_points: int) -> int:
    """Trials that cover the grid: one per point, and one more because the grid proposes the anchor's point again
    (a trial that reuses the anchor's result)."""
    return math.prod(len(values) for values in trial_grid(plan, grid_points=grid_points).values()) + 1


def _diff(saved: dict, space: dict) -> str:
    keys = [k for k in sorted(set(saved) | set(space)) if saved.get(k) != space.get(k)]
    return "; ".join(f"{k}: was {saved.get(k)}, now {space.get(k)}" for k in keys)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_lr_plot(study: optuna.Study, *, path: Path, artifact_store: FileSystemArtifactStore) -> Path | None:
    """Final val loss against peak LR (log axis), one colour per warmup; pruned trials at their last train loss, drawn
    apart; the best and the anchor marked (sweep/plots.py).

    Saved at `path` and attached to the study as an artifact for the dashboard.
    """
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    if not trials:
        return None
    _mkdir(path.parent)
    if study.user_attrs.get(StudyAttr.PLOTTED_TRIALS) == len(trials) and path.exists():
        return path  # nothing new since the last plot: no second copy in the dashboard
    from sweep.plots import LrPoint, draw_lr_plot

    anchor = anchor_trial(study)
    points = [
        LrPoint(lr=t.params["lr"], warmup=t.params["warmup"], pruned=t.state == TrialState.PRUNED,
                loss=t.value if t.state == TrialState.COMPLETE else _last_value(t),
                anchor=anchor is not None and t.number == anchor.number)
        for t in trials
        if TrialAttr.DUPLICATE_OF not in t.user_attrs  # the same point as the trial it reused
    ]
    draw_lr_plot(points, title=study.study_name, path=path)
    upload_artifact(artifact_store=artifact_store, file_path=str(path), study_or_trial=study)
    study.set_user_attr(StudyAttr.PLOTTED_TRIALS, len(trials))
    return path


def _last_value(trial: FrozenTrial) -> float:
    values = [v for v in trial.intermediate_values.values() if v == v and abs(v) != float("inf")]
    return values[-1] if values else float("nan")
