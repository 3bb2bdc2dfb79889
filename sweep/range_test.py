"""The LR range test as the commands run it: its plot beside the storage's artifacts, and `lr --lr-range auto`'s
bounds taken from it."""

from pathlib import Path

from sweep.analysis import RangeTestResult
from sweep.recipe import Recipe
from sweep.runs import Runs
from sweep.settings import SweepSettings


def range_test(recipe: Recipe, *, steps: int, lr_start: float, lr_end: float, storage_url: str,
               runs: Runs) -> tuple[RangeTestResult, list[tuple[float, float]], Path]:
    """Run the LR range test; its plot goes to the runs folder and onto its trial."""
    from optuna.artifacts import FileSystemArtifactStore

    from sweep.storage import open_storage
    from sweep.trust import run_range_test

    artifacts = runs.artifacts(storage_url)
    artifacts.mkdir(parents=True, exist_ok=True)
    plot = runs.range_plot(recipe.name)
    result, curve = run_range_test(
        recipe, steps=steps, lr_start=lr_start, lr_end=lr_end, storage=open_storage(storage_url), plot=plot,
        artifact_store=FileSystemArtifactStore(artifacts),
    )
    return result, curve, plot


def plan_from_range_test(settings: SweepSettings, recipe: Recipe, *, steps: int, ramp_steps: int, lr_start: float,
                         lr_end: float):
    """`lr --lr-range auto`: the sweep's plan between the bounds a range test suggests, and what was done, in a line.
    A study that exists keeps the bounds it started with, and no range test runs."""
    from sweep.lr import stored_lr_bounds
    from sweep.storage import open_storage

    bounds = stored_lr_bounds(storage=open_storage(settings.storage_url), study_name=settings.study_name_for(recipe, steps))
    if bounds is not None:
        plan = settings.plan(recipe, steps=steps, lr_bounds=tuple(bounds))
        return plan, (f"lr range: the study exists; it continues between its own bounds {plan.lr_min:.3g} and "
                      f"{plan.lr_max:.3g} (no new range test)")
    result, _, _ = range_test(recipe, steps=ramp_steps, lr_start=lr_start, lr_end=lr_end,
                              storage_url=settings.storage_url, runs=settings.runs)
    plan = settings.plan(recipe, steps=steps, lr_bounds=result.bounds())
    diverged = f"{result.diverged_lr:.3g}" if result.diverged_lr is not None else "-"
    return plan, (f"lr range test: steepest at {result.steepest_lr:.3g}, diverged at {diverged}; sweeping "
                  f"{plan.lr_min:.3g} to {plan.lr_max:.3g}")
