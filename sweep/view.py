"""What a person sees while a sweep runs: a live rich view on a terminal, one-line records otherwise, or nothing."""

import math
import time

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sweep.record import TrialAttr
from train_core import StepMetrics

STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim"}


class SweepView:
    """The quiet view, and the interface of the others: every hook does nothing."""

    def __enter__(self) -> "SweepView":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def sweep_started(self, study: optuna.Study, *, trials: int, steps: int) -> None:
        pass

    def trial_started(self, number: int, *, lr: float, warmup: int) -> None:
        pass

    def trial_step(self, number: int, metrics: StepMetrics, smoothed_loss: float) -> None:
        pass

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        pass

    def poll(self, study: optuna.Study) -> None:
        """For a parent process that watches worker processes through the storage: report what changed."""
        first_poll = "_seen_states" not in self.__dict__
        seen = self.__dict__.setdefault("_seen_states", {})
        for trial in study.get_trials(deepcopy=False):
            if seen.get(trial.number) == trial.state:
                continue
            if trial.state == TrialState.RUNNING:
                self.trial_started(trial.number, lr=trial.params.get("lr", math.nan), warmup=trial.params.get("warmup", 0))
            elif trial.state.is_finished() and not first_poll:
                self.trial_finished(study, trial)
            seen[trial.number] = trial.state


def make_view(console: Console, *, quiet: bool) -> SweepView:
    if quiet:
        return SweepView()
    return LiveView(console) if console.is_terminal else PlainView(console)


def trial_reason(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get(TrialAttr.PRUNE_REASON) or trial.user_attrs.get(TrialAttr.FAIL_REASON) or "")


class PlainView(SweepView):
    """One line per event, for logs and CI; a step line every tenth of a trial."""

    def __init__(self, console: Console):
        self.console = console
        self.steps = 1
        self.started: dict[int, float] = {}

    def sweep_started(self, study: optuna.Study, *, trials: int, steps: int) -> None:
        self.steps = steps
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
        self.console.print(f"study {study.study_name}: {done}/{trials} trials finished, {steps} steps each", highlight=False)

    def trial_started(self, number: int, *, lr: float, warmup: int) -> None:
        self.started[number] = time.perf_counter()
        self.console.print(f"trial {number} started: lr {lr:.3g} warmup {warmup}", highlight=False)

    def trial_step(self, number: int, metrics: StepMetrics, smoothed_loss: float) -> None:
        if (metrics.step + 1) % max(1, self.steps // 10) == 0:
            self.console.print(
                f"trial {number} step {metrics.step + 1}/{self.steps} loss {smoothed_loss:.4f} "
                f"lr {metrics.lr:.3g} tok/s {metrics.tokens_per_s:,.0f}",
                highlight=False,
            )

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        started = self.started.pop(trial.number, None)
        value = f" val loss {trial.value:.4f}" if trial.state == TrialState.COMPLETE else ""  # a pruned value is train loss
        reason = f" ({trial_reason(trial)})" if trial_reason(trial) else ""
        if TrialAttr.DUPLICATE_OF in trial.user_attrs:
            took = f", the result of trial {trial.user_attrs[TrialAttr.DUPLICATE_OF]}"  # nothing trained
        else:
            took = f" in {time.perf_counter() - started:.0f}s" if started is not None else ""
        self.console.print(f"trial {trial.number} {trial.state.name}{value}{reason}{took}", highlight=False)


def steps_run(trial: FrozenTrial) -> int:
    """Optimizer steps a finished trial trained (a pruned one stopped early)."""
    return int(trial.user_attrs.get(TrialAttr.STEPS_DONE, len(trial.intermediate_values)))


def eta_basis(finished_steps: list[int], *, steps: int) -> tuple[float, str]:
    """Steps a trial that has not finished yet is expected to take, and what that expectation rests on: the mean of
    the study's finished trials (pruned ones stop early), or every step while none has finished."""
    if not finished_steps:
        return float(steps), f"(an upper bound: every trial runs all {steps} steps)"
    mean = sum(finished_steps) / len(finished_steps)
    return mean, f"(finished trials ran {mean:.0f} of {steps} steps on average)"


class LiveView(SweepView):
    """Overall progress with ETA, the running trial's progress, and a table of trials, redrawn in place.

    The progress counts steps, so the ETA follows the work at the measured pace; trials yet to finish count the mean
    steps of the finished ones, so the steps that pruning will save are not in it, and the bar says so."""

    MAX_ROWS = 20

    def __init__(self, console: Console):
        self.console = console
        self.overall = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[trials]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("[dim]{task.fields[basis]}"),
            console=console,
        )
        self.rows: dict[int, dict] = {}
        self.best: float | None = None
        self.steps = 1
        self.trials = 0
        self.finished_steps: dict[int, int] = {}  # trial number -> steps it ran
        self.live = Live(console=console, refresh_per_second=4, get_renderable=self._render)
        self.task = None

    def __enter__(self) -> "LiveView":
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def sweep_started(self, study: optuna.Study, *, trials: int, steps: int) -> None:
        self.steps, self.trials = steps, trials
        for trial in study.trials:
            self._record(trial)
        done = sum(self.finished_steps.values())
        self.task = self.overall.add_task(f"{study.study_name}", total=None, completed=done, trials="", basis="")
        self._update_total()

    def trial_started(self, number: int, *, lr: float, warmup: int) -> None:
        self.rows[number] = {"lr": lr, "warmup": warmup, "step": 0, "loss": math.nan, "tok_s": 0.0,
                             "state": "RUNNING", "value": None, "reason": ""}

    def trial_step(self, number: int, metrics: StepMetrics, smoothed_loss: float) -> None:
        row = self.rows[number]
        row.update(step=metrics.step + 1, loss=smoothed_loss, tok_s=metrics.tokens_per_s)
        self.overall.advance(self.task, 1)
        self._update_total()

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._record(trial)
        self._update_total()

    def poll(self, study: optuna.Study) -> None:
        super().poll(study)
        running = 0
        for trial in study.get_trials(deepcopy=False):
            if trial.state == TrialState.RUNNING and trial.intermediate_values:
                step = max(trial.intermediate_values)
                self.rows[trial.number].update(step=step + 1, loss=trial.intermediate_values[step])
                running += step + 1
        self.overall.update(self.task, completed=sum(self.finished_steps.values()) + running)
        self._update_total()

    def _update_total(self) -> None:
        """Total = steps the finished trials ran + the expected steps of the rest (running ones at least as far as
        they got)."""
        expected, basis = eta_basis(list(self.finished_steps.values()), steps=self.steps)
        finished = len(self.finished_steps)
        running = [r["step"] for r in self.rows.values() if r["state"] == "RUNNING"]
        waiting = max(0, self.trials - finished - len(running))
        total = sum(self.finished_steps.values()) + sum(max(expected, s) for s in running) + waiting * expected
        self.overall.update(self.task, total=total, trials=f"{finished}/{self.trials} trials", basis=basis)

    def _record(self, trial: FrozenTrial) -> None:
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self.finished_steps[trial.number] = steps_run(trial)
        if trial.value is not None and trial.state == TrialState.COMPLETE:
            self.best = trial.value if self.best is None else min(self.best, trial.value)
        last_step = max(trial.intermediate_values, default=-1) + 1
        row = self.rows.get(trial.number, {})
        self.rows[trial.number] = {
            "lr": trial.params.get("lr", math.nan),
            "warmup": trial.params.get("warmup", ""),
            "step": max(row.get("step", 0), last_step),
            "loss": row.get("loss", trial.intermediate_values.get(last_step - 1, math.nan)),
            "tok_s": trial.user_attrs.get(TrialAttr.TOKENS_PER_S, row.get("tok_s", 0.0)),
            "state": trial.state.name,
            "value": trial.value,
            "reason": trial_reason(trial),
        }

    def _render(self) -> Group:
        table = Table(expand=False, header_style="bold")
        # The running loss is the smoothed train loss; val loss exists only at a completed trial's end.
        for name in ("#", "peak lr", "warmup", "step", "train loss", "val loss", "tok/s", "state", "why"):
            table.add_column(name, justify="right" if name not in ("state", "why") else "left")
        for number in sorted(self.rows)[-self.MAX_ROWS :]:
            r = self.rows[number]
            style = STATE_STYLE.get(r["state"], "")
            table.add_row(
                str(number),
                f"{r['lr']:.3g}",
                str(r["warmup"]),
                f"{r['step']}/{self.steps}",
                "" if math.isnan(r["loss"]) else f"{r['loss']:.4f}",
                f"{r['value']:.4f}" if r["value"] is not None and r["state"] == "COMPLETE" else "",
                f"{r['tok_s']:,.0f}",
                f"[{style}]{r['state']}[/]",
                r["reason"],
            )
        best = f"best val loss {self.best:.4f}" if self.best is not None else "no trial finished yet"
        return Group(self.overall, table, best)
