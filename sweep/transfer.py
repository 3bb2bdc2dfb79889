"""--- μP --- `python -m sweep transfer`: does the best peak LR hold as the model gets wider?

Every width sweeps the same LR grid (the `horizon` machinery: a grid sampler, the same LRs everywhere) for the same
steps of the same batch, so the same tokens per trial, in one study per width, `<recipe>-<parametrization>-w<width>-<steps>`
(the recipe's model made wider by sweep/width.py). The bottom of each width's loss-vs-LR curve is found as the horizon
fit finds it (a parabola in log LR around the lowest point, `trust.curve_bottom`); the drift of the best LR with width
is the slope of log(best LR) on log(width) with its standard error. Under μP the bottoms line up (slope ≈ 0); under SP
they move left as the width grows. The fit, the μTransfer figure (loss vs LR, a curve per width) and a note go to the
study `<recipe>-transfer-<parametrization>`; `promote --n-embd` reads the SP drift from there.

Beside the drift, whether width paid: each width's best loss against the next narrower width's, beyond a noise band
(WIDER_FLOOR, or the paired seeds' interval where `confirm` re-ran the winners), and, once both parametrizations ran
at the same steps, μP's best loss against SP's at the widest width both swept. μP only pays when its wide model is at
least as good as SP's (issue 20): a μP run where wider was not better ends in a warning naming what to tune.
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import optuna
import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from optuna.trial import FrozenTrial, TrialState

from sweep.analysis import PowerLaw, compare_paired, fit_power_law
from sweep.params import MUP_ONLY, describe_values, swept_values
from sweep.plots import draw_curves
from sweep.recipe import Recipe
from sweep.record import TransferAttr, TrialAttr, existing_study, stored_law, swept_model, write_version
from sweep.runs import confirm_study, transfer_study, width_recipe_name
from sweep.trust import CurveBottom, curve_bottom
from sweep.width import at_width
from train_core import InputError

TRANSFER_TOLERANCE = math.sqrt(2)  # a best LR within x/÷ √2 of the narrowest width's counts as transferred
# The noise band of "wider is better": a width must beat the next narrower one by at least this much val loss (nats),
# issue 20's bar L(wider) <= L(narrower) - 0.01. It is a floor, not a measure of the noise: one seed per width says
# nothing of it, so where `confirm` re-ran both winners on the same seeds the band is the larger of this and the 95%
# half-width of their paired difference (sweep.analysis.compare_paired).
WIDER_FLOOR = 0.01
MUP_VS_SP_BAR = 0.03  # μP's widest model within this of SP's best at that width is as good as SP's (issue 20's bar)
OTHER = {"mup": "sp", "sp": "mup"}


def width_recipe(recipe: Recipe, *, n_embd: int, parametrization: str) -> Recipe:
    """The recipe at another width and parametrization, named after both: its study, run folders and branch store are
    its own."""
    train = at_width(recipe.train, n_embd=n_embd, parametrization=parametrization, flag="--widths")
    return dataclasses.replace(recipe, name=width_recipe_name(recipe.name, parametrization, n_embd), train=train)


@dataclass(frozen=True)
class WiderStep:
    """A width against the next narrower one: was the wider model better beyond the noise band?"""

    narrower: int
    wider: int
    gain: float  # the narrower's best val loss minus the wider's (the mean over paired seeds, with re-runs): > 0 better
    band: float  # WIDER_FLOOR, or the paired seeds' 95% half-width when larger
    seeds: int  # the gain is the mean of this many paired seeds (1: the sweeps' own winners)

    @property
    def better(self) -> bool:
        return self.gain >= self.band

    def describe(self) -> str:
        seeds = "one seed" if self.seeds == 1 else f"mean of {self.seeds} paired seeds"
        return f"{self.narrower}→{self.wider} {-self.gain:+.4f} (band {self.band:.4f}, {seeds})"


@dataclass(frozen=True)
class MupVersusSp:
    """μP's best val loss against SP's at the widest width both swept, at the same steps: did μP pay?"""

    width: int
    steps: int
    mup_best_loss: float
    sp_best_loss: float
    bar: float = MUP_VS_SP_BAR

    @property
    def mup_minus_sp(self) -> float:
        return self.mup_best_loss - self.sp_best_loss

    @property
    def within(self) -> bool:
        """μP at most `bar` worse than SP: as good as SP's best at that width."""
        return self.mup_minus_sp <= self.bar

    def attr(self) -> dict:
        return dataclasses.asdict(self) | {"mup_minus_sp": self.mup_minus_sp, "within": self.within}

    def describe(self) -> str:
        verdict = (f"within {self.bar:g}: μP's wide model is as good as SP's best" if self.within else
                   f"NOT within {self.bar:g}: SP's best is better, μP did not pay at this width")
        return (f"μP vs SP at width {self.width}, {self.steps} steps: best val loss {self.mup_best_loss:.4f} vs "
                f"{self.sp_best_loss:.4f}, μP − SP {self.mup_minus_sp:+.4f}: {verdict}")


@dataclass(frozen=True)
class TransferFit:
    parametrization: str
    steps: int
    bottoms: dict[int, CurveBottom]  # by width, narrowest first
    law: PowerLaw | None  # best lr as a power of width, over the widths whose bottom lies inside the range
    best_loss: dict[int, float]  # each width's lowest final val loss
    wider: list[WiderStep]  # each width against the next narrower one
    versus: MupVersusSp | None  # once the other parametrization's summary holds the same steps

    def wider_better(self) -> bool:
        """Every width better than the next narrower one beyond the noise band."""
        return all(step.better for step in self.wider)

    @property
    def proxy_width(self) -> int:
        return min(self.bottoms)

    def ratio(self, width: int) -> float:
        """The width's best LR over the narrowest width's."""
        return self.bottoms[width].lr / self.bottoms[self.proxy_width].lr

    def transferred(self) -> bool:
        """Every width's best LR inside the range and within x/÷ √2 of the narrowest width's."""
        return all(not b.at_edge for b in self.bottoms.values()) and all(
            abs(math.log(self.ratio(w))) <= math.log(TRANSFER_TOLERANCE) + 1e-12 for w in self.bottoms
        )

    def attrs(self) -> dict:
        """The fit as plain values: the summary study's user attrs."""
        return {
            TransferAttr.PARAMETRIZATION: self.parametrization,
            TransferAttr.STEPS: self.steps,
            TransferAttr.WIDTHS: sorted(self.bottoms),
            TransferAttr.BEST_LR: {str(w): b.lr for w, b in self.bottoms.items()},
            TransferAttr.AT_EDGE: [w for w, b in self.bottoms.items() if b.at_edge],
            TransferAttr.SLOPE: self.law.exponent if self.law else None,
            TransferAttr.SLOPE_STANDARD_ERROR: _finite_or_none(self.law.exponent_standard_error) if self.law else None,
            TransferAttr.LAW: dataclasses.asdict(self.law) if self.law else None,
            TransferAttr.TRANSFERRED: self.transferred(),
            TransferAttr.BEST_LOSS: {str(w): loss for w, loss in self.best_loss.items()},
            TransferAttr.WIDER_STEPS: [dataclasses.asdict(step) | {"better": step.better} for step in self.wider],
            TransferAttr.WIDER_BETTER: self.wider_better(),
            TransferAttr.MUP_VS_SP: self.versus.attr() if self.versus else None,
        }


def fit_transfer(studies: dict[int, optuna.Study], *, parametrization: str, steps: int,
                 confirms: dict[int, optuna.Study | None] | None = None, other: dict | None = None) -> TransferFit:
    """The bottom of every width's curve, log(best lr) fitted on log(width) over those inside the LR range, and
    whether width paid: each width's best loss against the next narrower's (paired over the seeds of `confirms`, each
    width's `<study>-confirm`, where they re-ran the winners), and against `other`, the other parametrization's
    summary attrs."""
    bottoms = {width: curve_bottom(study) for width, study in sorted(studies.items())}
    inside = [(w, b.lr) for w, b in bottoms.items() if not b.at_edge]
    law = fit_power_law([w for w, _ in inside], [lr for _, lr in inside]) if len(inside) >= 2 else None
    winners = {width: _winner(study) for width, study in sorted(studies.items())}
    best_loss = {width: winner.value for width, winner in winners.items()}
    seed_losses = {width: winner_losses(winner, (confirms or {}).get(width)) for width, winner in winners.items()}
    widths = sorted(studies)
    wider = [wider_step(n, w, best_loss=best_loss, seed_losses=seed_losses) for n, w in zip(widths, widths[1:])]
    return TransferFit(parametrization=parametrization, steps=steps, bottoms=bottoms, law=law, best_loss=best_loss,
                       wider=wider, versus=mup_versus_sp(best_loss, parametrization=parametrization, steps=steps,
                                                         other=other))


def _winner(study: optuna.Study) -> FrozenTrial:
    return min(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value)


def winner_losses(winner: FrozenTrial, confirm: optuna.Study | None) -> dict[int, float]:
    """The final val loss of the winner's setting by seed: its own, and those of `confirm`'s re-runs of it."""
    seed = winner.user_attrs.get(TrialAttr.SEED)
    losses = {} if seed is None else {int(seed): winner.value}
    setting = (winner.params["lr"], int(winner.params["warmup"]))
    for trial in confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if confirm else []:
        if (trial.params["lr"], int(trial.params["warmup"])) == setting:
            losses[int(trial.params["seed"])] = trial.value
    return losses


def wider_step(narrower: int, wider: int, *, best_loss: dict[int, float],
               seed_losses: dict[int, dict[int, float]]) -> WiderStep:
    """The wider width against the narrower: over their paired seeds where two or more are shared, else their best
    losses against the WIDER_FLOOR alone."""
    seeds = sorted(set(seed_losses[narrower]) & set(seed_losses[wider]))
    if len(seeds) < 2:
        return WiderStep(narrower=narrower, wider=wider, gain=best_loss[narrower] - best_loss[wider], band=WIDER_FLOOR,
                         seeds=1)
    paired = compare_paired([seed_losses[wider][s] for s in seeds], [seed_losses[narrower][s] for s in seeds])
    return WiderStep(narrower=narrower, wider=wider, gain=paired.mean_difference,
                     band=max(WIDER_FLOOR, paired.half_width), seeds=paired.seeds)


def mup_versus_sp(best_loss: dict[int, float], *, parametrization: str, steps: int,
                  other: dict | None) -> MupVersusSp | None:
    """μP against SP at the widest width both swept; None unless `other` (the other parametrization's summary attrs)
    holds best losses at the same steps."""
    if other is None or other.get(TransferAttr.STEPS) != steps or not other.get(TransferAttr.BEST_LOSS):
        return None
    theirs = {int(w): loss for w, loss in other[TransferAttr.BEST_LOSS].items()}
    if not (common := set(theirs) & set(best_loss)):
        return None
    width = max(common)
    mup, sp = (best_loss[width], theirs[width]) if parametrization == "mup" else (theirs[width], best_loss[width])
    return MupVersusSp(width=width, steps=steps, mup_best_loss=mup, sp_best_loss=sp)


def store_transfer(
    fit: TransferFit, *, storage: optuna.storages.BaseStorage, recipe_name: str, plot: Path, artifact_dir: Path
) -> optuna.Study:
    """The fit in the user attrs of `<recipe>-transfer-<parametrization>`, its plot as an artifact, a note."""
    summary = optuna.create_study(study_name=transfer_study(recipe_name, fit.parametrization), storage=storage,
                                  load_if_exists=True)
    for key, value in fit.attrs().items():
        summary.set_user_attr(key, value)
    write_version(summary)
    other = existing_study(storage=storage, study_name=transfer_study(recipe_name, OTHER[fit.parametrization]))
    if other is not None:  # one comparison on both summaries: a stale one is cleared
        other.set_user_attr(TransferAttr.MUP_VS_SP, fit.versus.attr() if fit.versus else None)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    upload_artifact(artifact_store=FileSystemArtifactStore(artifact_dir), file_path=str(plot), study_or_trial=summary)
    optuna_dashboard.save_note(summary, "\n".join(["## LR transfer across width", "", *report_lines(fit)]))
    return summary


def report_lines(fit: TransferFit) -> list[str]:
    name = "μP" if fit.parametrization == "mup" else "SP"
    lines = []
    for width, bottom in fit.bottoms.items():
        edge = ", at an end of the LR range: only a bound, left out of the drift" if bottom.at_edge else ""
        lines.append(f"{name} width {width}: best lr {bottom.lr:.3g} (x{fit.ratio(width):.2f} of width "
                     f"{fit.proxy_width}'s, log2 {math.log2(fit.ratio(width)):+.2f}){edge}; best val loss "
                     f"{fit.best_loss[width]:.4f}")
    if fit.law is None:
        lines.append("drift: fewer than two widths have their bottom inside the LR range; widen --lr-min/--lr-max")
    else:
        lines.append(f"drift: {fit.law.describe('width')} over {fit.steps} steps per trial")
    held = "holds" if fit.transferred() else "does NOT hold"
    lines.append(f"transfer {held}: every width's best lr within x/÷ √2 of width {fit.proxy_width}'s, inside the range")
    lines.append("best val loss, widening: " + "; ".join(step.describe() for step in fit.wider))
    lines.append(wider_verdict(fit))
    return [*lines, fit.versus.describe()] if fit.versus else lines


def wider_verdict(fit: TransferFit) -> str:
    """Whether width paid, in one line; under μP, when it did not, a warning naming what to tune."""
    edge = [w for w, b in fit.bottoms.items() if b.at_edge]  # a width whose best LR is a bound: so is its best loss
    bound = f" (width {', '.join(map(str, edge))}: best loss at an end of the LR range, only a bound)" if edge else ""
    if fit.wider_better():
        return f"wider is better: every width's best val loss is below the next narrower's by the band or more{bound}"
    worse = ", ".join(f"{s.wider} vs {s.narrower}" for s in fit.wider if not s.better)
    if fit.parametrization == "sp":
        return f"wider is NOT better beyond the noise band at {fit.steps} steps ({worse}){bound}"
    return (f"warning: μP's wider models are NOT better beyond the noise band ({worse}){bound}: μP carries the "
            "proxy's training to every width, so tune the proxy's own multipliers, model.mup_output_alpha, "
            "model.mup_input_alpha and the init std: sweep them on the proxy with the search space's extra params "
            "(docs/mup.md)")


def save_transfer_plot(fit: TransferFit, path: Path, *, title: str) -> Path:
    """The μTransfer figure: final val loss vs peak LR (log axis), a curve per width, each width's best LR marked."""
    slope = f", best lr ∝ width^{fit.law.exponent:.2f}" if fit.law else ""
    return draw_curves({f"width {w}": b for w, b in fit.bottoms.items()}, path=path, title=f"{title}{slope}",
                       ylabel=f"final val loss after {fit.steps} steps")


def width_lr(*, storage: optuna.storages.BaseStorage, study: optuna.Study, recipe: Recipe, lr: float,
             source: str, n_embd: int) -> tuple[float, str]:
    """The peak LR for the swept model made n_embd wide, from `lr` at the swept width (`source` says whose: the trial's,
    or the horizon fit's), and why: μP keeps it (what μP is for); SP moves it along the drift `transfer` fitted, or
    keeps it with a warning when there is none."""
    swept = swept_model(study) or recipe.train.model  # as the study trained it
    width = swept.n_embd
    if swept.parametrization == "mup":
        return lr, f"{source} at width {width}, kept as is at width {n_embd}: μP"
    name = transfer_study(recipe.name, "sp")
    if (law := stored_law(storage=storage, study_name=name)) is None:
        return lr, (f"{source} at width {width}, unchanged: SP without a drift fit ({name}; run `sweep transfer "
                    "--parametrization sp` first), though SP's best lr moves with width")
    slope = law["exponent"]
    return lr * (n_embd / width) ** slope, (
        f"{source} {lr:.3g} at width {width} x ({n_embd}/{width})^{slope:.3f}, the SP drift `transfer` fitted")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def width_plans(settings, recipe: Recipe, *, widths: list[int], parametrization: str, steps: int,
                tuned: dict[str, float]) -> dict:
    """One TrialPlan per width: the recipe's model made that wide under `parametrization`, the same LR grid, every
    trial setting the proxy's `tuned` values."""
    return {w: settings.plan(width_recipe(recipe, n_embd=w, parametrization=parametrization), steps=steps, fixed=tuned)
            for w in widths}


def tuned_values(*, storage_url: str, study_name: str, parametrization: str) -> tuple[dict[str, float], str]:
    """The further swept recipe keys of the best trial of `study_name` (the proxy's `sweep lr` study), which every
    width then trains with, and a line saying which. μP's multipliers mean nothing under SP and are left out there."""
    from sweep.storage import open_study

    _, study = open_study(storage_url, study_name)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    values = swept_values(min(complete, key=lambda t: t.value).params) if complete else {}
    if not values:
        raise InputError(f"--tuned-from {study_name}: the study has no completed trial that swept a recipe key "
                         "(run `sweep lr` with --param or search.params on the proxy first)")
    kept = {k: v for k, v in values.items() if parametrization == "mup" or k not in MUP_ONLY}
    dropped = sorted(set(values) - set(kept))
    return kept, (f"every width trains with {describe_values(kept) or 'the recipe as written'}, tuned in study "
                  f"{study_name}" + (f" ({', '.join(dropped)} left out: μP only)" if dropped else ""))


def fit_and_store(studies: dict[int, optuna.Study], *, settings, recipe: Recipe, parametrization: str,
                  steps: int) -> list[str]:
    """The drift of the best LR with width, its figure, and the study that keeps both; what was found, a line each."""
    from sweep.storage import open_storage

    storage = open_storage(settings.storage_url)
    other = existing_study(storage=storage, study_name=transfer_study(recipe.name, OTHER[parametrization]))
    confirms = {w: existing_study(storage=storage, study_name=confirm_study(s.study_name)) for w, s in studies.items()}
    fit = fit_transfer(studies, parametrization=parametrization, steps=steps, confirms=confirms,
                       other=other.user_attrs if other else None)
    name = "μP" if parametrization == "mup" else "SP"
    plot = save_transfer_plot(fit, settings.runs.transfer_plot(recipe.name, parametrization),
                              title=f"{recipe.name}, {name}, {steps} steps")
    summary = store_transfer(fit, storage=storage, recipe_name=recipe.name, plot=plot,
                             artifact_dir=settings.runs.artifacts(settings.storage_url))
    return [*report_lines(fit), f"plot: {plot}; stored in study {summary.study_name}"]
