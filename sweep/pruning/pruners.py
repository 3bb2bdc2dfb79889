"""Optuna pruners chosen by name, comparing trials only once every trial's warmup is over."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from train_core import InputError

if TYPE_CHECKING:  # the CLI lists PRUNERS in --help, which must not wait for Optuna to import
    import optuna

# The first step at which trials are compared, as a fraction of the run. Mid-run, a higher LR is still far from its
# annealed loss under a cosine compressed to the trial; `sweep audit` of a 9-point grid of the default study found
# the runner-up (0.05 behind the best, within seed noise) stopped at step 75 in half the orders from 0.25, and the best
# and its noise band kept from 0.5 (README, "Auditing the pruner").
PRUNE_FROM = 0.5


def pruning_start(*, steps: int, warmup_steps: int, fraction: float = PRUNE_FROM) -> int:
    """The first step at which trials are compared: after the longest warmup, and not before `fraction` of the run."""
    return min(max(warmup_steps, int(steps * fraction)), steps - 1)


def make_pruner(name: str, *, steps: int, warmup_steps: int, fraction: float = PRUNE_FROM) -> optuna.pruners.BasePruner:
    """A rank-based pruner that compares trials at equal steps, and only after every trial's warmup is over.

    Pruning earlier would compare trials in the middle of different warmups, which says little about where they end.
    """
    if name not in PRUNERS:
        raise InputError(f"--pruner must be one of {', '.join(PRUNERS)}, got {name!r}")
    return PRUNERS[name](steps=steps, grace=pruning_start(steps=steps, warmup_steps=warmup_steps, fraction=fraction))


def _median(*, steps: int, grace: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=grace, interval_steps=1)


def _asha(*, steps: int, grace: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(grace, 1), reduction_factor=3)


def _hyperband(*, steps: int, grace: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=max(grace, 1), max_resource=steps, reduction_factor=3)


def _none(*, steps: int, grace: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


# name -> the pruner of a study of `steps`-step trials compared from step `grace`; a new pruner is one entry.
PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": _median, "asha": _asha, "hyperband": _hyperband, "none": _none,
}


