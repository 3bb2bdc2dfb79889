"""Tables a person reads after a sweep: the best trial, its margin over the anchor, all trials by val loss."""

import math

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from sweep.params import describe_values, swept_values
from sweep.record import TrialAttr, anchor_trial, is_anchor, promote_runs
from sweep.view import STATE_STYLE, trial_reason

ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2, TrialState.RUNNING: 3, TrialState.WAITING: 4}


def trials_table(study: optuna.Study, *, title: str | None = None) -> Table:
    """Every trial, completed ones first by val loss, then pruned, failed, running."""
    table = Table(title=title, header_style="bold")
    trials = study.get_trials(deepcopy=False)
    # The noise scale is measured only where a step has two batch sizes: its column only when some trial has it.
    noise = any(TrialAttr.NOISE_SCALE_TOKENS in t.user_attrs for t in trials)
    keys = sorted({k for t in trials for k in swept_values(t.params)})  # further swept recipe keys: a column each
    # A pruned trial has no val loss; its last smoothed train loss is what the pruner judged, in a column of its own.
    columns = ("#", "peak lr", "warmup", *keys, "val loss", "train loss", "steps", "tok/s", *(("B_simple",) if noise else ()),
               "state", "why")
    for name in columns:
        table.add_column(name, justify="left" if name in ("state", "why") else "right")

    def key(t: FrozenTrial):
        return ORDER.get(t.state, 5), t.value if t.value is not None else math.inf, t.number

    for t in sorted(trials, key=key):
        anchor = " (anchor)" if is_anchor(t) else ""
        table.add_row(
            f"{t.number}{anchor}",
            f"{t.params['lr']:.3g}" if "lr" in t.params else "",
            str(t.params.get("warmup", "")),
            *(f"{t.params[k]:.3g}" if k in t.params else "" for k in keys),
            f"{t.value:.4f}" if t.value is not None and t.state == TrialState.COMPLETE else "",
            f"{t.intermediate_values[max(t.intermediate_values)]:.4f}" if t.intermediate_values else "",
            str(t.user_attrs.get(TrialAttr.STEPS_DONE, len(t.intermediate_values))),
            f"{t.user_attrs[TrialAttr.TOKENS_PER_S]:,.0f}" if TrialAttr.TOKENS_PER_S in t.user_attrs else "",
            *((f"{t.user_attrs[TrialAttr.NOISE_SCALE_TOKENS]:,.0f}" if TrialAttr.NOISE_SCALE_TOKENS in t.user_attrs
               else "",) if noise else ()),
            f"[{STATE_STYLE.get(t.state.name, '')}]{t.state.name}[/]",
            trial_reason(t),
        )
    return table


def best_summary(study: optuna.Study) -> str | None:
    """'best: lr 1.2e-03, warmup 15, val loss 5.4321 (0.0712 below the anchor lr 1e-03)', or None."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = min(complete, key=lambda t: t.value)
    text = (f"best: trial {best.number}, peak lr {best.params['lr']:.3g}, warmup {best.params['warmup']}"
            f"{describe_values(swept_values(best.params), lead=', ')}, val loss {best.value:.4f}")
    anchor = anchor_trial(study)
    if anchor is not None and anchor.state == TrialState.COMPLETE and anchor.number != best.number:
        text += f" ({anchor.value - best.value:.4f} below the anchor lr {anchor.params['lr']:.3g}: {anchor.value:.4f})"
    elif anchor is not None and anchor.number == best.number:
        text += " (the anchor lr itself won)"
    elif anchor is not None:
        text += f" (the anchor trial was {anchor.state.name.lower()}: {trial_reason(anchor)})"
    return text


def promoted_table(study: optuna.Study) -> Table | None:
    """The full runs promoted from this study's trials (the study's promote-<trial> user attrs)."""
    runs = sorted(promote_runs(study).items())
    if not runs:
        return None
    table = Table(title="promoted runs", header_style="bold")
    for name in ("run", "trial", "peak lr", "warmup", "steps", "final val", "best val", "status", "run folder"):
        table.add_column(name, justify="left" if name in ("run", "status", "run folder") else "right")
    for name, r in runs:
        table.add_row(
            name,
            str(r.trial),
            f"{r.lr:.3g}",
            str(r.warmup),
            f"{r.steps_done}/{r.max_steps}",
            fmt_loss(r.final_val_loss),
            fmt_loss(r.best_val_loss),
            r.status,
            r.run_dir,
        )
    return table


def studies_table(storage) -> Table:
    table = Table(title="studies", header_style="bold")
    for name in ("study", "trials", "complete", "pruned", "failed", "running", "best val", "best lr", "promoted"):
        table.add_column(name, justify="left" if name == "study" else "right")
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        count = {state: sum(t.state == state for t in trials) for state in TrialState}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = min(complete, key=lambda t: t.value) if complete else None
        table.add_row(
            summary.study_name,
            str(len(trials)),
            str(count[TrialState.COMPLETE]),
            str(count[TrialState.PRUNED]),
            str(count[TrialState.FAIL]),
            str(count[TrialState.RUNNING]),
            fmt_loss(best.value if best else None),
            f"{best.params['lr']:.3g}" if best and "lr" in best.params else "",
            str(len(promote_runs(summary))),
        )
    return table


def print_summary(console: Console, study: optuna.Study) -> None:
    console.print(trials_table(study, title=f"study {study.study_name}"))
    if (table := promoted_table(study)) is not None:
        console.print(table)
    console.print(best_summary(study) or "no trial completed", highlight=False)


def fmt_loss(value: float | None) -> str:
    """A loss as every table and note shows it: 4 decimals, '-' when there is none."""
    return "-" if value is None else f"{value:.4f}"
