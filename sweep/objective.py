"""One sweep trial: a candidate peak LR and warmup, trained by train_core, reported to Optuna step by step."""

import contextlib
import csv
import functools
import hashlib
import json
import math
import subprocess
import time
import warnings
from pathlib import Path

import optuna
import optuna_dashboard
from optuna.trial import FrozenTrial, TrialState
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from sweep.pruning import PRUNED, StabilityGuard, judge_step, pruning_start, recovery_window
from sweep.plan import TrialPlan
from sweep.record import RUN_ATTRS, TrialAttr
from sweep.storage import StorageFault
from sweep.view import SweepView
from sweep.workers import STORAGE_FAULT, Heartbeat, Interrupts, Liveness, enqueue_retry, resume_root, retries, trial_id
from train_core import (
    StepMetrics, TrainConfig, TrainResult, clear_run_folder, device_label, resolve_device, this_process, train,
)

CURVE_COLUMNS = ("step", "loss", "smoothed_loss", "lr", "grad_norm", "tokens_per_s", "noise_scale_tokens", "val_loss")


class StepReporter:
    """The trainer's per-step callback for one trial: guards stability, reports the smoothed loss to Optuna, asks the
    pruner, and keeps the curve. Returns True (stop) once the trial is to be pruned; `prune_reason` says why."""

    def __init__(
        self,
        trial: optuna.Trial,
        *,
        guard: StabilityGuard,
        view: SweepView,
        interrupts: Interrupts,
        prune_from: int,
        steps: int,
        pruner_name: str,
        branched: bool,
    ):
        self.trial = trial
        self.guard = guard
        self.view = view
        self.interrupts = interrupts
        self.prune_from = prune_from
        self.steps = steps
        self.pruner_name = pruner_name
        self.branched = branched
        self.curve: list[dict] = []
        self.prune_reason: str | None = None

    def __call__(self, metrics: StepMetrics) -> bool:
        self.interrupts.check()  # a Ctrl-C or SIGTERM stops the trial here, between steps
        if not self.curve and metrics.step > 0 and not self.branched:
            self.trial.set_user_attr(TrialAttr.RESUMED_AT_STEP, metrics.step)
        reason = judge_step(self.trial, metrics, guard=self.guard, prune_from=self.prune_from, steps=self.steps)
        smoothed = self.guard.smoothed_loss
        self.curve.append(_curve_row(metrics, smoothed))
        self.view.trial_step(self.trial.number, metrics, smoothed)
        if reason == PRUNED:
            reason = f"{self.pruner_name}: loss {smoothed:.3f} behind the other trials at step {metrics.step}"
        if reason is None:
            return False
        self.prune_reason = reason
        return True


class Objective:
    """Callable for `study.optimize`: suggests (lr, warmup, any further swept keys), trains, returns the final val loss.

    Unstable runs are pruned by the StabilityGuard and losers by the study's pruner; either way the reason lands in
    user_attrs["prune_reason"]. A crash is recorded in user_attrs["fail_reason"] and re-raised, so Optuna marks the
    trial FAIL and the sweep goes on.
    """

    def __init__(
        self,
        plan: TrialPlan,
        *,
        storage: optuna.storages.BaseStorage,
        view: SweepView,
        artifact_store: FileSystemArtifactStore,
        liveness: Liveness,
        interrupts: Interrupts,
    ):
        self.plan = plan
        self.storage = storage  # the study's, as opened: heartbeats write to it
        self.view = view
        self.artifact_store = artifact_store
        self.liveness = liveness
        self.prune_from = pruning_start(steps=plan.steps, warmup_steps=plan.warmups.longest)
        self.interrupts = interrupts
        self.trial_id: int | None = None  # the storage's id of the trial this objective ran last

    def __call__(self, trial: optuna.Trial) -> float:
        run = self.begin(trial)
        if not isinstance(run, TrialRun):
            return run
        with run.training():
            result = train(run.config, out_dir=run.out_dir, callback=run.reporter, callback_state=run.reporter.guard)
        return run.finish(result)

    def begin(self, trial: optuna.Trial) -> "TrialRun | float":
        """Suggest the trial's (lr, warmup) and ready its folder and reporter: what trains it, to open and close around
        its training. A finished twin's value instead, where one exists (TrialPruned where that one was pruned)."""
        self.trial_id = trial_id(self.storage, trial.study, trial.number)
        trial.set_user_attr(TrialAttr.WORKER, this_process())  # which of the processes sharing the study took it
        lr = trial.suggest_float("lr", self.plan.lr_min, self.plan.lr_max, log=True)
        warmup = self.plan.warmups.suggest(trial)
        values = {p.key: p.suggest(trial) for p in self.plan.params}
        # A retry of a dead or interrupted trial trains in the first trial's folder: it resumes from its checkpoint.
        out_dir = self.plan.study_dir / f"trial-{resume_root(trial.number, trial.user_attrs)}"
        if (twin := _finished_twin(trial)) is not None:
            clear_run_folder(out_dir)  # nothing trains here; a retry's folder holds dead checkpoints
            return _reuse(trial, twin)
        config = self.plan.trial_config(lr=lr, warmup_steps=warmup, values=values)
        branched_at = self._start_folder(trial, config, out_dir)
        reporter = StepReporter(
            trial,
            guard=StabilityGuard(
                initial_loss=math.log(config.model.vocab_size),
                warmup_steps=warmup,
                rules=self.plan.guard_rules,
                recovery_steps=recovery_window(steps=self.plan.steps),
            ),
            view=self.view,
            interrupts=self.interrupts,
            prune_from=self.prune_from,
            steps=self.plan.steps,
            pruner_name=self.plan.pruner_name,
            branched=branched_at is not None,
        )
        self.view.trial_started(trial.number, lr=lr, warmup=warmup)
        _record_provenance(trial, config, self.plan)
        return TrialRun(self, trial, config=config, out_dir=out_dir, reporter=reporter, values=values)

    def _start_folder(self, trial: optuna.Trial, config: TrainConfig, out_dir: Path) -> int | None:
        """Ready the trial's folder: a retry keeps it (and resumes); a fresh trial starts from an empty one, whatever an
        older study of the same name left there, or from a shorter WSD trial's stable phase. The step it starts at
        when it branches, else None."""
        if TrialAttr.RESUME_TRIAL in trial.user_attrs:
            return None
        clear_run_folder(out_dir)
        if self.plan.branches is None or (branched_at := self.plan.branches.take(config, out_dir)) is None:
            return None
        trial.set_user_attr(TrialAttr.BRANCHED_FROM_STEP, branched_at)
        return branched_at


class TrialRun:
    """One trial's training as Objective.begin readied it: `open` before its first step (a heartbeat), `failed` when
    its training raised, `close` however it ended (the trial keeps why, its wall time and its curve), then `finish`
    with the result. `training` does the first three around a block; a stack of trials (sweep/stacked.py) calls them
    as its members join and leave."""

    def __init__(self, objective: Objective, trial: optuna.Trial, *, config: TrainConfig, out_dir: Path,
                 reporter: StepReporter, values: dict[str, float]):
        self.objective, self.trial, self.config, self.out_dir, self.reporter = objective, trial, config, out_dir, reporter
        self.values = values  # the swept keys' values (the schedule's lr and warmup are in config)
        self.heartbeat = Heartbeat(objective.storage, objective.trial_id, interval=objective.liveness.interval)
        self.fail_reason: str | None = None
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def training(self):
        self.open()
        try:
            yield
        except BaseException as error:
            self.failed(error)
            raise
        finally:
            self.close()

    def open(self) -> None:
        self.started = time.perf_counter()
        self.heartbeat.__enter__()

    def failed(self, error: BaseException) -> None:
        """Why the training ended in `error`; an interrupt, or a storage that failed, queues the trial again to resume
        from its checkpoint (the storage's fault, like a dead worker's, counts towards --max-retries)."""
        trial = self.trial
        if isinstance(error, KeyboardInterrupt):
            self.fail_reason = "interrupted"
            enqueue_retry(trial.study, number=trial.number, params=trial.params, user_attrs=trial.user_attrs,
                          counts=False)
        elif isinstance(error, StorageFault):
            self.fail_reason = f"{STORAGE_FAULT}: {error}"
            if retries(trial.user_attrs) < self.objective.liveness.max_retries:
                enqueue_retry(trial.study, number=trial.number, params=trial.params, user_attrs=trial.user_attrs,
                              counts=True)
        elif isinstance(error, Exception):
            self.fail_reason = f"{error.__class__.__name__}: {error}"

    def close(self) -> None:
        self.heartbeat.__exit__(None, None, None)
        trial, reporter = self.trial, self.reporter
        if reporter.prune_reason is not None:
            trial.set_user_attr(TrialAttr.PRUNE_REASON, reporter.prune_reason)
        if self.fail_reason is not None:
            trial.set_user_attr(TrialAttr.FAIL_REASON, self.fail_reason)
        trial.set_user_attr(TrialAttr.WALL_S, round(time.perf_counter() - self.started, 2))
        self._save_curve()

    def finish(self, result: TrainResult) -> float:
        """The trial's value from its result (TrialPruned where it was pruned), its attrs and note written, its folder
        cleared."""
        trial, reporter = self.trial, self.reporter
        _record_result(trial, result)
        schedule = self.config.schedule
        optuna_dashboard.save_note(trial, _note(schedule.max_lr, schedule.warmup_steps, self.values, result,
                                                reporter.prune_reason))
        if self.objective.plan.branches is not None:
            self.objective.plan.branches.put(self.config, self.out_dir)
        clear_run_folder(self.out_dir)  # checkpoints only serve a trial that is still running
        if reporter.prune_reason is not None:
            raise optuna.TrialPruned(reporter.prune_reason)
        return result.final_val_loss

    def _save_curve(self) -> None:
        """The per-step curve as a CSV artifact, viewable in optuna-dashboard."""
        if not (curve := self.reporter.curve):
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"trial-{self.trial.number}-curve.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
            writer.writeheader()
            writer.writerows(curve)
        upload_artifact(artifact_store=self.objective.artifact_store, file_path=str(path), study_or_trial=self.trial)


def _record_provenance(trial: optuna.Trial, config: TrainConfig, plan: TrialPlan) -> None:
    trial.set_user_attr(TrialAttr.SEED, plan.seed)
    trial.set_user_attr(TrialAttr.CONFIG_HASH, _config_hash(config))
    trial.set_user_attr(TrialAttr.RECIPE_DIGEST, plan.recipe.digest)
    trial.set_user_attr(TrialAttr.DEVICE, device_label(resolve_device(config.device)))
    if commit := git_commit():
        trial.set_user_attr(TrialAttr.GIT_COMMIT, commit)


def _record_result(trial: optuna.Trial, result: TrainResult) -> None:
    trial.set_user_attr(TrialAttr.TRAIN_S, round(result.train_seconds, 2))
    trial.set_user_attr(TrialAttr.TOKENS_SEEN, result.tokens_seen)
    trial.set_user_attr(TrialAttr.FLOPS, result.tokens_seen * result.flops_per_token)
    trial.set_user_attr(TrialAttr.TOKENS_PER_S, round(result.tokens_per_s, 1))
    trial.set_user_attr(TrialAttr.MFU, round(result.mfu, 4))
    trial.set_user_attr(TrialAttr.MFU_PEAK, result.peak)  # what the mfu is over
    trial.set_user_attr(TrialAttr.FINAL_TRAIN_LOSS, result.final_train_loss)
    trial.set_user_attr(TrialAttr.STEPS_DONE, result.steps_done)
    if result.final_val_loss is not None:
        trial.set_user_attr(TrialAttr.VAL_LOSS, result.final_val_loss)
    if result.noise_scale_tokens is not None:  # measured where a step has two batch sizes (train_core.noise)
        trial.set_user_attr(TrialAttr.NOISE_SCALE_TOKENS, round(result.noise_scale_tokens, 1))


def name_metric(study: optuna.Study) -> None:
    """The dashboard names the objective `val_loss` instead of "Objective 0"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_loss"])


def _finished_twin(trial: optuna.Trial) -> FrozenTrial | None:
    """A finished trial of the study with exactly these params. Trials share seed and data, so it is this trial's
    result already (a grid revisiting the anchor's point, a sampler repeating a categorical pair)."""
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if other.params == trial.params and TrialAttr.DUPLICATE_OF not in other.user_attrs:
            return other
    return None


def _reuse(trial: optuna.Trial, twin: FrozenTrial) -> float:
    trial.set_user_attr(TrialAttr.DUPLICATE_OF, twin.number)
    for key, value in twin.user_attrs.items():
        if key not in RUN_ATTRS:
            trial.set_user_attr(key, value)
    if twin.state == TrialState.PRUNED:
        raise optuna.TrialPruned(twin.user_attrs.get(TrialAttr.PRUNE_REASON, f"as trial {twin.number}"))
    return twin.value


def _curve_row(metrics: StepMetrics, smoothed: float) -> dict:
    return {
        "step": metrics.step,
        "loss": metrics.loss,
        "smoothed_loss": smoothed,
        "lr": metrics.lr,
        "grad_norm": metrics.grad_norm,
        "tokens_per_s": round(metrics.tokens_per_s, 1),
        "noise_scale_tokens": "" if metrics.noise_scale_tokens is None else round(metrics.noise_scale_tokens, 1),
        "val_loss": "" if metrics.val_loss is None else metrics.val_loss,
    }


def _note(lr: float, warmup: int, values: dict[str, float], result: TrainResult, prune_reason: str | None) -> str:
    val_loss = result.final_val_loss
    lines = [
        f"**peak lr** {lr:.3g} · **warmup** {warmup} steps" + "".join(f" · **{k}** {v:g}" for k, v in values.items()),
        f"**val loss** {val_loss:.4f}" if val_loss is not None else "**val loss** —",
        f"**tokens/s** {result.tokens_per_s:,.0f}",
    ]
    if result.noise_scale_tokens is not None:
        lines.append(f"**noise scale** B_simple {result.noise_scale_tokens:,.0f} tokens (a step is "
                     f"{result.tokens_seen // max(result.steps_done, 1):,})")
    if prune_reason is not None:
        lines.append(f"**pruned** {prune_reason}")
    return "\n\n".join(lines)


def _config_hash(config: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


@functools.cache
def git_commit() -> str | None:
    """The project's commit, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
