"""Optuna samplers chosen by name, each seeded anew for every trial (trial_seeded), and the LR grid."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from train_core import InputError

if TYPE_CHECKING:  # the CLI lists SAMPLERS in --help, which must not wait for Optuna to import
    import optuna

    from sweep.samplers.trial_seeded import TrialSeededSampler


def _tpe(*, seed: int, n_startup_trials: int, grid: dict | None) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)


def _gp(*, seed: int, n_startup_trials: int, grid: dict | None) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)


def _random(*, seed: int, n_startup_trials: int, grid: dict | None) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


# name -> the sampler for one trial, made from that trial's seed; a new sampler is one entry.
SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {"tpe": _tpe, "gp": _gp, "random": _random, "grid": None}


def lr_grid(*, lr_min: float, lr_max: float, points: int, anchor_lr: float) -> list[float]:
    """`points` log-spaced LRs over [lr_min, lr_max], plus the anchor so that trial 0 is a grid point."""
    grid = {float(f"{lr:.4g}") for lr in np.geomspace(lr_min, lr_max, points)} | {anchor_lr}
    return sorted(grid)


def make_sampler(
    name: str, *, seed: int, worker: int, n_startup_trials: int, grid: dict[str, list] | None = None
) -> TrialSeededSampler:
    """A sampler seeded anew for every trial from the study's seed, the trial's number and the worker's index (0
    unless --worker-index names one), so that a restarted sweep proposes for trial N what the uninterrupted sweep
    would have: neither a replay of its first proposals (optuna#3255) nor, as with a process id in the seed,
    something else."""
    if name not in SAMPLERS:
        raise InputError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")

    import optuna

    from sweep.samplers.trial_seeded import TrialSeededSampler

    def build(trial_seed: int) -> optuna.samplers.BaseSampler:
        if name == "grid":
            # The grid's seed shuffles the points that trials name by index: one order for every trial and every worker.
            return optuna.samplers.GridSampler(grid, seed=seed)
        return SAMPLERS[name](seed=trial_seed, n_startup_trials=n_startup_trials, grid=grid)

    return TrialSeededSampler(build, seed=(seed * 7_919 + worker) % 2**32)


def startup_trials(trials: int) -> int:
    """Random proposals before the model-based sampler takes over: a third of the budget, at least 2, at most 10."""
    return max(2, min(10, math.ceil(trials / 3)))
