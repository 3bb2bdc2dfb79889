"""Promote a sweep trial into the study's full run: its peak LR and warmup, the schedule shape it was swept with, the
recipe's max_steps.

The run goes to <runs dir>/<study>/<run>/ (checkpoints, metrics.csv), <run> being promote-<trial>, with -<N>steps for
another --max-steps and -lr<x> for another LR, and resumes from there after a crash. Optuna does not let a finished
trial change, so the result is written back as
- the sweep study's user attr `<run>` (status, run dir, steps done, val losses, tokens, when it started), updated at
  every evaluation, and a section of the study's markdown note: one entry per run, so promoting a trial twice with
  different --max-steps keeps both;
- a trial of the study `<study>-promoted`, started when the run starts and told when it ends (the dashboard shows its
  real duration), with the full run's val-loss curve as intermediate values, its per-step curve as a CSV artifact,
  and a note. A run that a crash interrupted leaves its trial FAIL; the resumed run records a new one.
"""

import dataclasses
import os
import time
import warnings
from datetime import datetime
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from sweep.recipe import Recipe, parse_recipe_text, run_config
from sweep.record import (
    PROMOTE_PREFIX,
    TrialAttr,
    promote_runs,
    search_space,
    swept_model,
    swept_recipe,
    write_promote_run,
)
from sweep.params import describe_values, swept_values
from sweep.promoted import MetricsLog, finish_promoted_trial, run_status, start_promoted_trial, write_study_note
from sweep.report import fmt_loss
from sweep.runs import Runs
from train_core import (
    SHAPES, GPT, CheckpointManager, InputError, ScheduleConfig, StepMetrics, TrainConfig, check_resumable,
    check_same_parametrization, hold_run_folder, train,
)

@dataclass(frozen=True, kw_only=True)
class PromotePlan:
    study: optuna.Study
    trial: FrozenTrial
    config: TrainConfig
    run_dir: Path
    lr_reason: str = "the trial's lr"  # where the peak LR comes from
    notes: tuple[str, ...] = ()  # one line each, printed before the plan: what the run does differently from the trial

    @property
    def key(self) -> str:
        """The run's name: its folder, and its user attr in the sweep study."""
        return self.run_dir.name

    @property
    def tokens(self) -> int:
        return self.config.schedule.max_steps * self.config.batch.total_batch_size

    def describe(self) -> str:
        s = self.config.schedule
        speed, source = fastest_speed(self.study)
        m = self.config.model
        with torch.device("meta"):  # counts parameters without allocating a model that may not fit here
            model = GPT(m)
            params = model.num_params()
            swept = swept_model(self.study)
            if speed and swept and swept.n_embd != m.n_embd:  # --- μP --- a wider model runs slower per token
                speed *= GPT(swept).flops_per_token() / model.flops_per_token()
                source += f", scaled to width {m.n_embd} by FLOPs per token"
        eta = f", about {_duration(self.tokens / speed)} at {speed:,.0f} tokens/s ({source})" if speed else ""
        width = f"μP, base width {m.mup_base_width}" if m.parametrization == "mup" else "SP"
        return "\n".join(self.notes) + ("\n" if self.notes else "") + (
            f"promote trial {self.trial.number} of {self.study.study_name}: width {m.n_embd} ({m.n_layer} layers, "
            f"{m.n_head} heads, {width}), {params:,} parameters; peak lr {s.max_lr:.3g} ({self.lr_reason}), warmup "
            f"{s.warmup_steps} steps{describe_values(swept_values(self.trial.params), lead=', ')}, {_decay(s)}; "
            f"{s.max_steps:,} steps x {self.config.batch.total_batch_size:,} tokens = {self.tokens:,} tokens{eta}; "
            f"eval every {self.config.eval.interval} steps, checkpoints every {self.config.checkpoint.interval} "
            f"into {self.run_dir}"
        )


def fastest_speed(study: optuna.Study) -> tuple[float | None, str]:
    """The best tokens/s measured for this study's model and batch (its trials and its promoted runs), and where it was
    measured. A run's average speed drops with the machine's load, so the fastest is the best guess of an unloaded
    run; an estimate from it is a lower bound on time under load."""
    measured = [(t.user_attrs[TrialAttr.TOKENS_PER_S], f"trial {t.number}") for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get(TrialAttr.TOKENS_PER_S)]
    measured += [(run.tokens_per_s, name) for name, run in promote_runs(study).items() if run.tokens_per_s]
    if not measured:
        return None, ""
    speed, where = max(measured)
    return speed, f"the fastest measured in this study, {where}; slower on a busy machine"


def _decay(s: ScheduleConfig) -> str:
    floor = f"{s.max_lr * s.min_lr_ratio:.3g} at step {s.decay_horizon}"
    return SHAPES[s.shape].plan.format(floor=floor, stable_end=s.stable_end)


def pick_trial(study: optuna.Study, which: str) -> FrozenTrial:
    """`best` or a trial number; the trial must be COMPLETE."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if which == "best":
        if not complete:
            raise InputError(f"study {study.study_name} has no completed trial to promote; run the sweep first")
        return min(complete, key=lambda t: t.value)
    if not which.isdigit():
        raise InputError(f"promote takes 'best' or a trial number, got {which!r}")
    number = int(which)
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None:
        raise InputError(f"study {study.study_name} has no trial {number} (it has {len(study.trials)} trials)")
    if trial.state != TrialState.COMPLETE:
        raise InputError(f"trial {number} of {study.study_name} is {trial.state.name}, not COMPLETE; promote a completed trial")
    return trial


def recipe_changes(study: optuna.Study, recipe: Recipe) -> list[str]:
    """Keys whose values differ between the recipe the study was swept with and the recipe file now."""
    swept = swept_recipe(study)
    if swept is None:
        return []
    before, after = _flatten(swept), _flatten(parse_recipe_text(recipe.text))
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


def peak_lr(*, storage: optuna.storages.BaseStorage, study: optuna.Study, trial: FrozenTrial, recipe: Recipe,
            lr_from: str, max_steps: int | None, n_embd: int | None,
            batch_tokens: int | None = None) -> tuple[float | None, str, list[str]]:
    """The full run's peak LR (None: the trial's own), why, and what was found on the way, a line each: the trial's
    LR, or the one `sweep horizon` extrapolated to the run's length; then (--- μP ---) carried to width n_embd; then
    to `batch_tokens` a step, along `sweep batch`'s fit (or the square-root rule, with a warning)."""
    import math

    from sweep.transfer import width_lr
    from sweep.trust import horizon_lr

    lr, reason, lines = None, "the trial's lr", []
    if lr_from == "horizon":
        steps = max_steps or recipe.train.schedule.max_steps
        lr, band = horizon_lr(storage=storage, recipe=recipe, steps=steps)
        lines.append(f"peak lr extrapolated by `sweep horizon` to {steps} steps: {lr:.3g}"
                     + (f" (x/÷ {band:.2f})" if math.isfinite(band) else ""))
        reason = "the lr extrapolated by `sweep horizon`"
    if n_embd is not None:
        lr, reason = width_lr(storage=storage, study=study, recipe=recipe, lr=lr or float(trial.params["lr"]),
                              source=reason, n_embd=n_embd)
    if batch_tokens is not None:
        from sweep.batch import batch_lr

        lr, reason, guesses = batch_lr(storage=storage, recipe=recipe, lr=lr or float(trial.params["lr"]), source=reason,
                                       swept_tokens=recipe.train.batch.total_batch_size, tokens=batch_tokens)
        for guess in guesses:
            warnings.warn(guess, stacklevel=1)
    return lr, reason, lines


def make_plan(
    study: optuna.Study,
    trial: FrozenTrial,
    recipe: Recipe,
    *,
    max_steps: int | None,
    force: bool,
    runs: Runs,
    lr: float | None = None,
    lr_reason: str = "the trial's lr",
    n_embd: int | None = None,
    batch_tokens: int | None = None,
) -> PromotePlan:
    """The full run of `trial`: its warmup, its peak LR unless `lr` (e.g. extrapolated to the horizon) is given, at
    the recipe's width or n_embd (--- μP ---), and at the recipe's batch or `batch_tokens` a step for the same tokens
    (so fewer steps) unless max_steps says otherwise."""
    changes = recipe_changes(study, recipe)
    if changes and not force:
        raise InputError(
            f"{recipe.path} changed since study {study.study_name} was swept ({'; '.join(changes)}); pass --force to promote anyway"
        )
    sched = recipe.train.schedule
    steps = max_steps or sched.max_steps
    notes = ()
    if batch_tokens is not None:
        from sweep.batch import batch_recipe

        swept_tokens = recipe.train.batch.total_batch_size
        recipe = batch_recipe(recipe, tokens=batch_tokens)
        if max_steps is None:  # the full run's tokens, in steps of the other batch
            steps = max(1, round(sched.max_steps * swept_tokens / batch_tokens))
        notes = (f"batch {batch_tokens:,} tokens a step instead of the recipe's {swept_tokens:,}: {steps:,} steps",)
    # Warmup keeps the trial's step count: it tames the first updates, whose trouble does not grow with the horizon.
    warmup = min(int(trial.params["warmup"]), steps)
    if warmup < int(trial.params["warmup"]):
        notes += (f"warmup shrinks from the trial's {trial.params['warmup']} steps to {warmup}: the run has only {steps} "
                 "steps",)
    # The schedule shape the trial was swept with (--schedule): a WSD winner runs WSD, not the recipe's cosine.
    space = search_space(study)
    fixed = space.fixed if space else {}  # values the study set on every trial (transfer --tuned-from)
    config = run_config(recipe, lr=lr or float(trial.params["lr"]), warmup_steps=warmup, steps=steps, n_embd=n_embd,
                        shape=space.schedule if space else None, values=fixed | swept_values(trial.params),
                        seed=int(trial.user_attrs.get(TrialAttr.SEED, recipe.train.seed)))
    if (swept := swept_model(study)) is not None:  # --- μP --- the model as the study trained it (transfer widens it)
        check_same_parametrization(dataclasses.asdict(swept), config.model, where=f"study {study.study_name}")
    # A shortened run, another LR or another width must not resume the plain full run's checkpoints.
    suffix = ("" if max_steps is None else f"-{steps}steps") + ("" if lr is None else f"-lr{lr:.3g}")
    suffix += ("" if n_embd is None else f"-w{n_embd}") + ("" if batch_tokens is None else f"-b{batch_tokens}")
    run_dir = runs.study(study.study_name) / f"{PROMOTE_PREFIX}{trial.number}{suffix}"
    return PromotePlan(study=study, trial=trial, config=config, run_dir=run_dir, lr_reason=lr_reason, notes=notes)


def run_promote(
    plan: PromotePlan, *, storage: optuna.storages.BaseStorage, console: Console, artifact_store: FileSystemArtifactStore
) -> int:
    # A second promote of the same trial would share the checkpoints, metrics.csv and the <study>-promoted record.
    with hold_run_folder(plan.run_dir):
        return _run_promote(plan, storage=storage, console=console, artifact_store=artifact_store)


def _run_promote(
    plan: PromotePlan, *, storage: optuna.storages.BaseStorage, console: Console, artifact_store: FileSystemArtifactStore
) -> int:
    is_main = int(os.environ.get("RANK", 0)) == 0
    if _already_done(plan, console=console, is_main=is_main):
        return 0
    log = MetricsLog(plan.run_dir / "metrics.csv") if is_main else None
    started = time.perf_counter()
    total = plan.config.schedule.max_steps
    trial, record = _begin(plan, storage=storage, log=log, console=console) if is_main else (None, {})
    reported = set()

    def on_step(m: StepMetrics) -> None:
        log.write(m)
        if m.val_loss is not None or m.step % 50 == 0:
            val = f" val {m.val_loss:.4f}" if m.val_loss is not None else ""
            console.print(
                f"step {m.step + 1}/{total} loss {m.loss:.4f}{val} lr {m.lr:.3g} {m.tokens_per_s:,.0f} tok/s mfu {m.mfu:.1%}",
                highlight=False,
            )
        if m.val_loss is not None:
            trial.report(m.val_loss, m.step)
            reported.add(m.step)
            running = run_status(plan, log, status="running", steps_done=m.step + 1)
            write_promote_run(plan.study, plan.key, dataclasses.replace(running, **record))

    try:
        result = train(plan.config, out_dir=plan.run_dir, callback=on_step)
    except BaseException:
        if trial is not None:
            trial.study.tell(trial, state=TrialState.FAIL)  # the next run of the command resumes in a new trial
        raise
    if not is_main:
        return 0
    wall = time.perf_counter() - started
    status = dataclasses.replace(run_status(plan, log, status=result.status, steps_done=result.steps_done), **record,
                                 wall_s=round(wall, 1), tokens_per_s=round(result.tokens_per_s, 1))
    write_promote_run(plan.study, plan.key, status)
    write_study_note(plan.study)
    for step, value in log.val_curve():  # a resumed run's trial also gets the val losses of the steps before it
        if step not in reported:
            trial.report(value, step)
    finish_promoted_trial(trial, plan, log, status, artifact_store, completed=result.status == "completed")
    console.print(
        f"{result.status}: {result.steps_done} steps, final val loss {fmt_loss(result.final_val_loss)}, best "
        f"{fmt_loss(result.best_val_loss)}, {result.tokens_per_s:,.0f} tokens/s, {wall:.0f}s; run folder {plan.run_dir}",
        highlight=False,
    )
    console.print(f"mfu {result.mfu:.1%} of {result.peak}", highlight=False)
    return 0 if result.status == "completed" else 1


def _already_done(plan: PromotePlan, *, console: Console, is_main: bool) -> bool:
    """Whether the run finished in an earlier process (said once, by the main process)."""
    done = CheckpointManager(plan.run_dir, keep_last=plan.config.checkpoint.keep_last).done_summary()
    if done is None:
        return False
    # A run finished with another recipe (--force after an edit) is not this run: never report it as done.
    check_resumable(done["config"], plan.config, plan.run_dir)
    if is_main:
        result = done["result"]
        console.print(f"{plan.run_dir} already finished: {result['steps_done']} steps, val loss "
                      f"{result['final_val_loss']:.4f}", highlight=False)
    return True


def _begin(plan: PromotePlan, *, storage: optuna.storages.BaseStorage, log: MetricsLog,
           console: Console) -> tuple[optuna.Trial, dict]:
    """The plan printed, the run's trial in <study>-promoted started, and its record marked running; the trial, and
    what every later status update keeps (when the run started, its promoted trial)."""
    console.print(plan.describe(), highlight=False)
    previous = promote_runs(plan.study).get(plan.key)
    # Whether the run began in an earlier process:
    resumed = bool(log.rows) and previous is not None and previous.started_at is not None
    trial = start_promoted_trial(plan, storage, stale=previous.promoted_trial if previous else None)
    record = dict(
        started_at=previous.started_at if resumed else datetime.now().isoformat(timespec="seconds"),
        promoted_trial=trial.number,
    )
    running = run_status(plan, log, status="running", steps_done=0)
    write_promote_run(plan.study, plan.key, dataclasses.replace(running, **record))
    return trial, record


def _flatten(values, prefix: str = "") -> dict:
    if not isinstance(values, dict):
        return {prefix.rstrip("."): values}
    out = {}
    for k, v in values.items():
        out |= _flatten(v, f"{prefix}{k}.")
    return out


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
