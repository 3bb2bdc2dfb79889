"""`sweep horizon` as a whole: the same LR grid at several trial lengths, the best LR at each, and the fit that
extrapolates it to the full run, stored for `promote --lr-from horizon`."""

import math

from sweep.recipe import Recipe
from sweep.settings import SweepSettings
from train_core import SHAPES, InputError

WARMUP_NOTE = ("note: the warmup choices are fractions of the run, so every horizon warms up for another number of "
               "steps, and a short warmup alone can lower (or destabilise) a horizon's best LR; --warmup in steps "
               "(e.g. --warmup 30) holds it fixed")


def horizon_plans(settings: SweepSettings, recipe: Recipe, *, steps: list[int]) -> tuple[list, list[str]]:
    """One TrialPlan per horizon, shortest first (a WSD horizon starts from the shorter one's state), and notes."""
    if len(set(steps)) < 2:
        raise InputError(f"--steps needs two or more horizons like 100,300,1000, got {steps}")
    plans = [settings.plan(recipe, steps=n) for n in sorted(set(steps))]
    return plans, [WARMUP_NOTE] if len({plan.warmups for plan in plans}) > 1 else []


def fit_and_store(studies: dict, *, settings: SweepSettings, recipe: Recipe, max_steps: int | None) -> list[str]:
    """Fit best lr ∝ tokens^b over the horizons' studies, extrapolate it to max_steps (the recipe's by default),
    plot it and store it in <recipe>-horizon; what was found, a line each."""
    from sweep.branches import shared_prefix_summary
    from sweep.storage import open_storage
    from sweep.trust import fit_horizon, save_horizon_plot, store_horizon_fit

    fit = fit_horizon(studies, tokens_per_step=recipe.train.batch.total_batch_size,
                      target_steps=max_steps or recipe.train.schedule.max_steps)
    plot = save_horizon_plot(fit, settings.runs.horizon_plot(recipe.name))
    store_horizon_fit(fit, storage=open_storage(settings.storage_url), recipe_name=recipe.name, plot=plot,
                      artifact_dir=settings.runs.artifacts(settings.storage_url))
    lines = [f"best lr at {steps} steps: {lr:.3g}" for steps, lr in fit.points]
    lines += [f"best lr at {steps} steps: {lr:.3g}, an end of the searched range (the bottom lies beyond it): left out "
              "of the fit; widen --lr-min/--lr-max to include it" for steps, lr in fit.at_edge]
    band = f" (x/÷ {fit.factor:.2f}, one standard error)" if math.isfinite(fit.factor) else ""
    lines.append(f"lr ∝ tokens^{fit.exponent:.3f}; extrapolated to {fit.target_steps} steps: {fit.lr:.3g}{band}; "
                 f"plot: {plot}; `promote best --lr-from horizon` uses it")
    if SHAPES[settings.schedule].branch_point is not None:  # the horizons shared their stable phase
        lines.append(shared_prefix_summary(studies.values()))
    return lines
