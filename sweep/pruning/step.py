"""The one rule for a trial's step, which the sweep's trials and `sweep audit`'s replays both follow: the stability
guard first; a stable step reports its smoothed loss, and the pruner is asked from its first comparing step to the one
before the last (the last decides nothing: the trial is over)."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from sweep.pruning.guard import StabilityGuard
    from train_core import StepMetrics

PRUNED = "pruned"  # the pruner stopped the trial; the guard's reasons are sentences of their own


def judge_step(trial: "optuna.Trial", metrics: "StepMetrics", *, guard: "StabilityGuard", prune_from: int,
               steps: int) -> str | None:
    """Why the trial stops at this step (the guard's reason, or PRUNED), None when it goes on."""
    reason = guard.check(metrics)
    if reason is not None:
        return reason
    trial.report(guard.smoothed_loss, metrics.step)
    # should_prune reads every trial from the storage (about 10 ms on SQLite or PostgreSQL): ask it only from the step
    # the pruner starts comparing at.
    if prune_from <= metrics.step < steps - 1 and trial.should_prune():
        return PRUNED
    return None
