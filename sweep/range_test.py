"""The LR range test (Smith's LR finder): one run with a geometrically growing LR, kept as a trial of `<recipe>-range`
with its plot; and `lr --lr-range auto`'s bounds taken from it."""

import math
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.distributions import FloatDistribution

from sweep.analysis import RangeTestResult, analyse_range_test, range_test_diverged
from sweep.plots import draw_range_plot
from sweep.recipe import Recipe, run_config
from sweep.record import RangeAttr
from sweep.runs import Runs, range_study
from sweep.settings import SweepSettings
from sweep.storage import open_storage
from train_core import StepMetrics, train


def range_test(recipe: Recipe, *, steps: int, lr_start: float, lr_end: float, storage_url: str,
               runs: Runs) -> tuple[RangeTestResult, list[tuple[float, float]], Path]:
    """One run whose LR grows geometrically from lr_start to lr_end over `steps`, stopped once it diverges; its curve
    as a trial of `<recipe>-range`, its LR-finder plot in the runs folder and on that trial."""
    config = run_config(recipe, lr=lr_end, min_lr_ratio=lr_start / lr_end, warmup_steps=0, steps=steps,
                        shape="exponential", eval_interval=steps)
    curve: list[tuple[float, float]] = []

    def on_step(m: StepMetrics) -> bool:
        lowest = min((loss for _, loss in curve), default=math.inf)
        curve.append((m.lr, m.loss))
        return range_test_diverged(m.loss, lowest)  # past divergence the rest of the ramp says nothing

    train(config, callback=on_step)
    result = analyse_range_test([lr for lr, _ in curve], [loss for _, loss in curve])
    study = optuna.create_study(study_name=range_study(recipe.name), storage=open_storage(storage_url),
                                load_if_exists=True)
    trial = study.ask({"lr_start": FloatDistribution(lr_start, lr_start), "lr_end": FloatDistribution(lr_end, lr_end)})
    for step, (_, loss) in enumerate(curve):
        if math.isfinite(loss):
            trial.report(loss, step)
    trial.set_user_attr(RangeAttr.STEEPEST_LR, result.steepest_lr)
    trial.set_user_attr(RangeAttr.DIVERGED_LR, result.diverged_lr)
    trial.set_user_attr(RangeAttr.MIN_LOSS_LR, result.min_loss_lr)
    trial.set_user_attr(RangeAttr.SUGGESTED_BOUNDS, list(result.bounds()))
    plot = runs.range_plot(recipe.name)
    draw_range_plot([lr for lr, _ in curve], [loss for _, loss in curve], steepest=result.steepest_lr,
                    lowest=result.min_loss_lr, diverged=result.diverged_lr, bounds=result.bounds(),
                    title=f"LR range test of {recipe.name}, {len(curve)} steps", path=plot)
    artifacts = runs.artifacts(storage_url)
    artifacts.mkdir(parents=True, exist_ok=True)
    upload_artifact(artifact_store=FileSystemArtifactStore(artifacts), file_path=str(plot), study_or_trial=trial)
    study.tell(trial, result.steepest_lr)
    return result, curve, plot


def plan_from_range_test(settings: SweepSettings, recipe: Recipe, *, steps: int, ramp_steps: int, lr_start: float,
                         lr_end: float):
    """`lr --lr-range auto`: the sweep's plan between the bounds a range test suggests, and what was done, in a line.
    A study that exists keeps the bounds it started with, and no range test runs."""
    from sweep.lr import stored_lr_bounds

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
