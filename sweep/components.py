"""Samplers and pruners, chosen by name."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from train_core.errors import InputError

if TYPE_CHECKING:  # the CLI lists SAMPLERS and PRUNERS in --help, which must not wait for Optuna to import
    import optuna

SAMPLERS = ("tpe", "gp", "random", "grid")
PRUNERS = ("median", "asha", "hyperband", "none")


def lr_grid(*, lr_min: float, lr_max: float, points: int, anchor_lr: float) -> list[float]:
    """`points` log-spaced LRs over [lr_min, lr_max], plus the anchor so that trial 0 is a grid point."""
    grid = {float(f"{lr:.4g}") for lr in np.geomspace(lr_min, lr_max, points)} | {anchor_lr}
    return sorted(grid)


def make_sampler(
    name: str, *, seed: int, n_finished: int, worker: int, n_startup_trials: int, grid: dict[str, list] | None = None
) -> optuna.samplers.BaseSampler:
    """A seeded sampler. The seed is mixed with the number of finished trials, so that a continued study does not
    replay the proposals of its first session (optuna#3255), and with the worker, so that workers sharing a study
    do not propose the same trials."""
    import optuna

    seed = ((seed * 1_000_003 + n_finished) * 7_919 + worker) % 2**32
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid, seed=seed)
    raise InputError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


PRUNE_FROM = 0.25  # of the run: the first step at which trials are compared (see `sweep audit`)


def pruning_start(*, steps: int, warmup_steps: int, fraction: float = PRUNE_FROM) -> int:
    """The first step at which trials are compared: after the longest warmup, and not before `fraction` of the run."""
    return min(max(warmup_steps, int(steps * fraction)), steps - 1)


def make_pruner(name: str, *, steps: int, warmup_steps: int, fraction: float = PRUNE_FROM) -> optuna.pruners.BasePruner:
    """A rank-based pruner that compares trials at equal steps, and only after every trial's warmup is over.

    Pruning earlier would compare trials in the middle of different warmups, which says little about where they end.
    """
    import optuna

    grace = pruning_start(steps=steps, warmup_steps=warmup_steps, fraction=fraction)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=grace, interval_steps=1)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(grace, 1), reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(grace, 1), max_resource=steps, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise InputError(f"--pruner must be one of {', '.join(PRUNERS)}, got {name!r}")


def startup_trials(trials: int) -> int:
    """Random proposals before the model-based sampler takes over: a third of the budget, at least 2, at most 10."""
    return max(2, min(10, math.ceil(trials / 3)))
