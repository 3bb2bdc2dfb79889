"""`python -m sweep batch`: how the best peak LR moves with the batch size, and where a bigger batch stops paying.

Every batch size sweeps the same LR grid (a grid sampler, the same LRs everywhere) for the same tokens per trial, so a
batch k times larger takes k times fewer steps, in one study per batch, `<recipe>-b<tokens>-<steps>`. The bottom of each
batch's loss-vs-LR curve is found as `transfer` finds it (`trust.curve_bottom`); the best LR is fitted as a power of
the batch (log-log, with its standard error). At equal tokens, the best loss of each batch says where doubling the
batch stops paying: the empirical critical batch is the largest whose best loss is within the seed-noise band of the
lowest. Beside it, each batch's measured noise scale B_simple (train_core.noise: on every step of two or more
micro-batches). The fit, the figure and a note go to the study `<recipe>-batch`; `promote --batch-tokens` reads the
fit from there.
"""

import dataclasses
import math
from dataclasses import dataclass

import optuna
import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState

from sweep.analysis import PowerLaw, fit_power_law
from sweep.audit import SEED_NOISE
from sweep.plots import draw_curves
from sweep.recipe import Recipe
from sweep.record import BatchAttr, TrialAttr, existing_study, write_version
from sweep.runs import batch_recipe_name, batch_study
from sweep.trust import CurveBottom, curve_bottom
from train_core import InputError


def batch_recipe(recipe: Recipe, *, tokens: int) -> Recipe:
    """The recipe at `tokens` tokens a step (more micro-steps of the same micro-batch), named after it."""
    batch = recipe.train.batch
    micro = batch.micro_batch_size * recipe.train.model.block_size
    if tokens < 1 or tokens % micro:
        raise InputError(f"--batch-tokens {tokens} must be a positive multiple of micro_batch_size x block_size = "
                         f"{batch.micro_batch_size} x {recipe.train.model.block_size} = {micro} tokens")
    train = dataclasses.replace(recipe.train, batch=dataclasses.replace(batch, total_batch_size=tokens))
    return dataclasses.replace(recipe, name=batch_recipe_name(recipe.name, tokens), train=train)


def batch_plans(settings, recipe: Recipe, *, batch_tokens: list[int], steps: int) -> dict:
    """One TrialPlan per batch size, smallest first, each trial seeing `steps` steps of the recipe's batch in tokens."""
    if len(set(batch_tokens)) < 2:
        raise InputError(f"--batch-tokens needs two or more batch sizes like 1024,2048,4096, got {batch_tokens}")
    trial_tokens = steps * recipe.train.batch.total_batch_size
    plans = {}
    for tokens in sorted(set(batch_tokens)):
        batched = batch_recipe(recipe, tokens=tokens)
        if trial_tokens % tokens:
            raise InputError(f"--batch-tokens {tokens}: a trial's {trial_tokens:,} tokens ({steps} steps of "
                             f"{recipe.train.batch.total_batch_size}) are not a whole number of {tokens}-token steps; "
                             "pick --steps so that they are")
        plans[tokens] = settings.plan(batched, steps=trial_tokens // tokens)
    return plans


@dataclass(frozen=True)
class BatchFit:
    trial_tokens: int
    bottoms: dict[int, CurveBottom]  # by tokens a step, smallest first
    best_loss: dict[int, float]  # the lowest final val loss of each batch, at equal tokens
    noise_scale: dict[int, float | None]  # B_simple (tokens) of each batch's best trial; None where not measured
    law: PowerLaw | None  # best lr as a power of the batch, over the batches whose bottom lies inside the range
    band: float  # val loss within which two batches count as equally good

    def critical_batch(self) -> int:
        """The largest batch whose best loss is within the band of the lowest: past it, a bigger batch costs loss."""
        lowest = min(self.best_loss.values())
        return max(tokens for tokens, loss in self.best_loss.items() if loss <= lowest + self.band)

    def attrs(self) -> dict:
        """The fit as plain values: the summary study's user attrs."""
        se = self.law.exponent_standard_error if self.law else math.nan
        return {
            BatchAttr.TRIAL_TOKENS: self.trial_tokens,
            BatchAttr.BATCH_TOKENS: sorted(self.bottoms),
            BatchAttr.STEPS: {str(b): self.trial_tokens // b for b in self.bottoms},
            BatchAttr.BEST_LR: {str(b): bottom.lr for b, bottom in self.bottoms.items()},
            BatchAttr.AT_EDGE: [b for b, bottom in self.bottoms.items() if bottom.at_edge],
            BatchAttr.BEST_LOSS: {str(b): loss for b, loss in self.best_loss.items()},
            BatchAttr.NOISE_SCALE: {str(b): value for b, value in self.noise_scale.items()},
            BatchAttr.EXPONENT: self.law.exponent if self.law else None,
            BatchAttr.EXPONENT_STANDARD_ERROR: se if math.isfinite(se) else None,
            BatchAttr.LAW: dataclasses.asdict(self.law) if self.law else None,
            BatchAttr.BAND: self.band,
            BatchAttr.CRITICAL_BATCH: self.critical_batch(),
        }


def fit_batch(studies: dict[int, optuna.Study], *, trial_tokens: int, band: float = SEED_NOISE) -> BatchFit:
    """Each batch's curve bottom, best loss and noise scale, and log(best lr) fitted on log(batch)."""
    bottoms = {tokens: curve_bottom(study) for tokens, study in sorted(studies.items())}
    winners = {tokens: min(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value)
               for tokens, study in sorted(studies.items())}
    inside = [(b, bottom.lr) for b, bottom in bottoms.items() if not bottom.at_edge]
    law = fit_power_law([b for b, _ in inside], [lr for _, lr in inside]) if len(inside) >= 2 else None
    return BatchFit(trial_tokens=trial_tokens, bottoms=bottoms, best_loss={b: t.value for b, t in winners.items()},
                    noise_scale={b: t.user_attrs.get(TrialAttr.NOISE_SCALE_TOKENS) for b, t in winners.items()},
                    law=law, band=band)


def report_lines(fit: BatchFit) -> list[str]:
    smallest = min(fit.bottoms)
    lines = []
    for tokens, bottom in fit.bottoms.items():
        edge = ", at an end of the LR range: only a bound, left out of the fit" if bottom.at_edge else ""
        noise = fit.noise_scale[tokens]
        measured = f"B_simple {noise:,.0f} tokens" if noise is not None else "B_simple not measured (one micro-step)"
        lines.append(f"batch {tokens:,} tokens ({fit.trial_tokens // tokens} steps): best lr {bottom.lr:.3g} "
                     f"(x{bottom.lr / fit.bottoms[smallest].lr:.2f} of batch {smallest:,}'s){edge}; best val loss "
                     f"{fit.best_loss[tokens]:.4f}; {measured}")
    if fit.law is None:
        lines.append("fit: fewer than two batches have their bottom inside the LR range; widen --lr-min/--lr-max")
    else:
        lines.append(f"fit: {fit.law.describe('batch')} (the square-root rule says 0.5)")
    lines.append(f"at equal tokens, the largest batch within {fit.band:g} of the lowest loss: {fit.critical_batch():,} "
                 "tokens (the empirical critical batch, within this grid)")
    return lines


def fit_and_store(studies: dict[int, optuna.Study], *, settings, recipe: Recipe, trial_tokens: int,
                  band: float) -> list[str]:
    """The fit, its figure, and the study `<recipe>-batch` that keeps both; what was found, a line each."""
    from sweep.storage import open_storage

    fit = fit_batch(studies, trial_tokens=trial_tokens, band=band)
    slope = f", best lr ∝ batch^{fit.law.exponent:.2f}" if fit.law else ""
    plot = draw_curves({f"{b:,} tokens": bottom for b, bottom in fit.bottoms.items()},
                       path=settings.runs.batch_plot(recipe.name), title=f"{recipe.name}, {trial_tokens:,} tokens a "
                       f"trial{slope}", ylabel="final val loss at equal tokens")
    storage = open_storage(settings.storage_url)
    summary = optuna.create_study(study_name=batch_study(recipe.name), storage=storage, load_if_exists=True)
    for key, value in fit.attrs().items():
        summary.set_user_attr(key, value)
    write_version(summary)
    artifacts = settings.runs.artifacts(settings.storage_url)
    artifacts.mkdir(parents=True, exist_ok=True)
    upload_artifact(artifact_store=FileSystemArtifactStore(artifacts), file_path=str(plot), study_or_trial=summary)
    lines = report_lines(fit)
    optuna_dashboard.save_note(summary, "\n".join(["## Best LR against the batch size", "", *lines]))
    return [*lines, f"plot: {plot}; stored in study {summary.study_name}"]


def batch_lr(*, storage: optuna.storages.BaseStorage, recipe: Recipe, lr: float, source: str, swept_tokens: int,
             tokens: int) -> tuple[float, str, list[str]]:
    """The peak LR at `tokens` a step from `lr` at the swept batch, why, and a warning line when it is a guess: moved
    along the fit `sweep batch` stored, or by the square-root rule when there is none."""
    fit = existing_study(storage=storage, study_name=batch_study(recipe.name))
    law = fit.user_attrs.get(BatchAttr.LAW) if fit is not None else None
    ratio = tokens / swept_tokens
    if law is None:
        why = ("no batch fit for {name} in this storage (run `python -m sweep batch` first)" if fit is None else
               "the batch fit of {name} has no law (fewer than two batches had their best lr inside the LR range)")
        return lr * math.sqrt(ratio), f"{source} {lr:.3g} x ({tokens}/{swept_tokens})^0.5, the square-root rule", [
            why.format(name=recipe.name) + ": the peak lr moves by the square-root rule, which holds only well below "
            "the critical batch"]
    exponent = PowerLaw(**law).exponent
    return lr * ratio**exponent, (f"{source} {lr:.3g} x ({tokens}/{swept_tokens})^{exponent:.3f}, the fit `sweep "
                                  "batch` stored"), []
