"""What stops a trial early: Optuna's pruners chosen by name (pruners), the stability guard that needs no peers
(guard), and the one rule of a step that puts the guard before the pruner (step)."""

from sweep.pruning.guard import GUARD_RULES, RECOVERY_STEPS, StabilityGuard, recovery_window
from sweep.pruning.pruners import PRUNE_FROM, PRUNERS, make_pruner, pruning_start
from sweep.pruning.step import PRUNED, judge_step

__all__ = [
    "GUARD_RULES", "PRUNED", "PRUNERS", "PRUNE_FROM", "RECOVERY_STEPS", "StabilityGuard", "judge_step", "make_pruner",
    "pruning_start", "recovery_window",
]
