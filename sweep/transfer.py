"""--- μP --- `python -m sweep transfer`: does the best peak LR hold as the model gets wider?

Every width sweeps the same LR grid (the `horizon` machinery: a grid sampler, the same LRs everywhere) for the same
steps of the same batch, so the same tokens per trial, in one study per width, `<recipe>-<parametrization>-w<width>-<steps>`
(the recipe's model made wider by sweep/width.py). The bottom of each width's loss-vs-LR curve is found as the horizon
fit finds it (a parabola in log LR around the lowest point, `trust.curve_bottom`); the drift of the best LR with width
is the slope of log(best LR) on log(width) with its standard error. Under μP the bottoms line up (slope ≈ 0); under SP
they move left as the width grows. The fit, the μTransfer figure (loss vs LR, a curve per width) and a note go to the
study `<recipe>-transfer-<parametrization>`; `promote --n-embd` reads the SP drift from there.
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import optuna
import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from sweep.analysis import PowerLaw, fit_power_law
from sweep.params import MUP_ONLY, describe_values, swept_values
from sweep.plots import draw_curves
from sweep.recipe import Recipe
from sweep.record import TransferAttr, stored_law, swept_model, write_version
from sweep.runs import transfer_study, width_recipe_name
from sweep.trust import CurveBottom, curve_bottom
from sweep.width import at_width
from train_core import InputError

TRANSFER_TOLERANCE = math.sqrt(2)  # a best LR within x/÷ √2 of the narrowest width's counts as transferred


def width_recipe(recipe: Recipe, *, n_embd: int, parametrization: str) -> Recipe:
    """The recipe at another width and parametrization, named after both: its study, run folders and branch store are
    its own."""
    train = at_width(recipe.train, n_embd=n_embd, parametrization=parametrization, flag="--widths")
    return dataclasses.replace(recipe, name=width_recipe_name(recipe.name, parametrization, n_embd), train=train)


@dataclass(frozen=True)
class TransferFit:
    parametrization: str
    steps: int
    bottoms: dict[int, CurveBottom]  # by width, narrowest first
    law: PowerLaw | None  # best lr as a power of width, over the widths whose bottom lies inside the range

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
        }


def fit_transfer(studies: dict[int, optuna.Study], *, parametrization: str, steps: int) -> TransferFit:
    """The bottom of every width's curve, and log(best lr) fitted on log(width) over those inside the LR range."""
    bottoms = {width: curve_bottom(study) for width, study in sorted(studies.items())}
    inside = [(w, b.lr) for w, b in bottoms.items() if not b.at_edge]
    law = fit_power_law([w for w, _ in inside], [lr for _, lr in inside]) if len(inside) >= 2 else None
    return TransferFit(parametrization=parametrization, steps=steps, bottoms=bottoms, law=law)


def store_transfer(
    fit: TransferFit, *, storage: optuna.storages.BaseStorage, recipe_name: str, plot: Path, artifact_dir: Path
) -> optuna.Study:
    """The fit in the user attrs of `<recipe>-transfer-<parametrization>`, its plot as an artifact, a note."""
    summary = optuna.create_study(study_name=transfer_study(recipe_name, fit.parametrization), storage=storage,
                                  load_if_exists=True)
    for key, value in fit.attrs().items():
        summary.set_user_attr(key, value)
    write_version(summary)
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
                     f"{fit.proxy_width}'s, log2 {math.log2(fit.ratio(width)):+.2f}){edge}")
    if fit.law is None:
        lines.append("drift: fewer than two widths have their bottom inside the LR range; widen --lr-min/--lr-max")
    else:
        lines.append(f"drift: {fit.law.describe('width')} over {fit.steps} steps per trial")
    held = "holds" if fit.transferred() else "does NOT hold"
    lines.append(f"transfer {held}: every width's best lr within x/÷ √2 of width {fit.proxy_width}'s, inside the range")
    return lines


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
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
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

    fit = fit_transfer(studies, parametrization=parametrization, steps=steps)
    name = "μP" if parametrization == "mup" else "SP"
    plot = save_transfer_plot(fit, settings.runs.transfer_plot(recipe.name, parametrization),
                              title=f"{recipe.name}, {name}, {steps} steps")
    summary = store_transfer(fit, storage=open_storage(settings.storage_url), recipe_name=recipe.name, plot=plot,
                             artifact_dir=settings.runs.artifacts(settings.storage_url))
    return [*report_lines(fit), f"plot: {plot}; stored in study {summary.study_name}"]
