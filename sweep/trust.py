"""Sweep results a user can trust at the full horizon: the seed-noise band of the top settings, and the best LR
extrapolated from several short horizons to the recipe's max_steps.

Each writes what it found into a study of the same storage, so `status` and optuna-dashboard show it:
`<study>-confirm` (one trial per setting and seed) and `<recipe>-horizon` (the fit in its user attrs, the plot as an
artifact).
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from sweep.analysis import (
    PowerLaw,
    best_lr,
    compare_paired,
    curve_noise,
    fit_power_law,
    seeds_needed,
)
from sweep.params import describe_values, swept_values
from sweep.plan import TrialPlan
from sweep.plots import save_figure
from sweep.recipe import Recipe
from sweep.record import ConfirmAttr, HorizonAttr, is_anchor, stored_law, write_version
from sweep.runs import confirm_study, horizon_study
from train_core import InputError, train


@dataclass(frozen=True)
class SeedResults:
    lr: float
    warmup: int
    values: dict[str, float]  # the further swept keys (sweep/params.py)
    anchor: bool
    losses: dict[int, float]  # seed -> final val loss

    @property
    def setting(self) -> str:
        return f"lr {self.lr:.3g}" + "".join(f", {k} {v:g}" for k, v in self.values.items())

    def mean_sd(self) -> tuple[float, float]:
        values = list(self.losses.values())
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def run_confirm(
    study: optuna.Study, plan: TrialPlan, *, top: int, seeds: int, storage: optuna.storages.BaseStorage, console: Console
) -> list[SeedResults]:
    """Re-run the `top` best settings and the anchor with `seeds` data orders and inits each (the sweep's own trial
    is seed 0 of its setting); runs already in `<study>-confirm` are reused, so an interrupted confirm continues."""
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    chosen: list[FrozenTrial] = []
    for t in complete:
        if all(t.params != c.params for c in chosen) and len(chosen) < top:
            chosen.append(t)
    anchor = next((t for t in complete if is_anchor(t)), None)
    if anchor is not None and all(anchor.params != c.params for c in chosen):
        chosen.append(anchor)
    confirm = optuna.create_study(study_name=confirm_study(study.study_name), storage=storage, load_if_exists=True)
    done = {(_setting(t.params), t.params["seed"]): t.value
            for t in confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    results = []
    for t in chosen:
        lr, warmup, values = t.params["lr"], int(t.params["warmup"]), swept_values(t.params)
        losses = {plan.seed: t.value}
        for seed in range(plan.seed + 1, plan.seed + seeds):
            if (key := (_setting(t.params), seed)) not in done:
                console.print(f"confirm: lr {lr:.3g} warmup {warmup}{describe_values(values, lead=', ')} seed {seed}",
                              highlight=False)
                value = train(plan.trial_config(lr=lr, warmup_steps=warmup, values=values, seed=seed)).final_val_loss
                fixed = {"lr": lr, **values}
                trial = confirm.ask({k: FloatDistribution(v, v) for k, v in fixed.items()}
                                    | {"warmup": IntDistribution(warmup, warmup), "seed": IntDistribution(seed, seed)})
                trial.set_user_attr(ConfirmAttr.SOURCE_TRIAL, t.number)
                confirm.tell(trial, value)
                done[key] = value
            losses[seed] = done[key]
        results.append(SeedResults(lr=lr, warmup=warmup, values=values, anchor=is_anchor(t), losses=losses))
    return results


def _setting(params: dict) -> tuple:
    """What a confirm run re-runs of a trial: its lr, warmup and further swept values."""
    return (params["lr"], int(params["warmup"]), *sorted(swept_values(params).items()))


def confirm_outlook(study: optuna.Study, *, seeds: int) -> list[str]:
    """Before confirm spends its runs: the differences it will test (the winner against the runner-up and the anchor,
    as the sweep measured them with one seed) and the paired seeds each needs, from the sweep's own noise: the
    scatter of its final losses around the loss-vs-LR curve."""
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    noise = curve_noise([(t.params["lr"], t.value) for t in complete])
    if len(complete) < 2:
        return []
    if noise is None:
        return [f"confirm: {len(complete)} completed trials are too few to read the sweep's noise from; {seeds} seeds"]
    sd_difference = math.sqrt(2) * noise  # independent runs; pairing (same seeds for both) can only shrink it
    winner, lines = complete[0], [f"confirm: the sweep's final losses scatter by sd {noise:.4f} around its "
                                  f"loss-vs-LR curve (one seed each)"]
    others = [("the runner-up", complete[1])]
    anchor = next((t for t in complete if is_anchor(t)), None)
    if anchor is not None and anchor is not winner and anchor is not complete[1]:
        others.append(("the anchor", anchor))
    for label, other in others:
        gap = other.value - winner.value
        need = seeds_needed(gap, sd_difference)
        verdict = (f"about {need} paired seeds to tell apart at 95%" if need is not None
                   else "more than 50 seeds: as good as equal")
        enough = "" if need is None or need <= seeds else f" (--seeds {seeds} will likely say NOT distinguishable)"
        lines.append(f"  lr {winner.params['lr']:.3g} vs {label} lr {other.params['lr']:.3g}: the sweep has the "
                     f"winner lower by {gap:.4f}; {verdict}{enough}")
    return lines


def confirm_report(results: list[SeedResults]) -> tuple[Table, list[str]]:
    """A table of mean ± sd per setting and sentences on whether the winner beats the runner-up and the anchor."""
    ranked = sorted(results, key=lambda r: r.mean_sd()[0])
    table = Table(title="val loss over seeds", header_style="bold")
    swept = any(r.values for r in ranked)  # further swept keys: a column of their values
    for name in ("peak lr", "warmup", *(("swept",) if swept else ()), "seeds", "mean", "sd", ""):
        table.add_column(name, justify="right")
    for r in ranked:
        mean, sd = r.mean_sd()
        table.add_row(f"{r.lr:.3g}", str(r.warmup), *((describe_values(r.values),) if swept else ()), str(len(r.losses)),
                      f"{mean:.4f}", f"{sd:.4f}", "anchor" if r.anchor else "")
    winner, lines = ranked[0], []
    others = [("the runner-up", ranked[1])] if len(ranked) > 1 else []
    anchor = next((r for r in ranked if r.anchor), None)
    if anchor is not None and anchor is not winner and (not others or anchor is not others[0][1]):
        others.append(("the anchor", anchor))
    elif anchor is not None and others and anchor is others[0][1]:
        others[0] = ("the runner-up (the anchor)", anchor)
    for label, other in others:
        seeds = sorted(set(winner.losses) & set(other.losses))
        c = compare_paired([winner.losses[s] for s in seeds], [other.losses[s] for s in seeds])
        verdict = "better beyond seed noise" if c.distinguishable else "NOT distinguishable from it within seed noise"
        side = "lower" if c.mean_difference >= 0 else "higher"
        lines.append(
            f"{winner.setting} vs {label} {other.setting}: winner {side} by {abs(c.mean_difference):.4f} ± "
            f"{c.half_width:.4f} (95%, {c.seeds} paired seeds): {verdict}"
        )
    return table, lines


@dataclass(frozen=True)
class HorizonFit:
    points: list[tuple[int, float]]  # (steps, best lr), the horizons the law is fitted to
    at_edge: list[tuple[int, float]]  # (steps, lowest-loss lr) where that lr was the lowest or highest tried: left out
    tokens_per_step: int
    target_steps: int
    law: PowerLaw  # best lr as a function of training tokens

    @property
    def lr(self) -> float:
        """Extrapolated to target_steps."""
        return self.law.predict(self.target_steps * self.tokens_per_step)

    @property
    def factor(self) -> float:
        """One standard error at target_steps, multiplicative."""
        return self.law.uncertainty_factor(self.target_steps * self.tokens_per_step)

    @property
    def exponent(self) -> float:
        return self.law.exponent


@dataclass(frozen=True)
class CurveBottom:
    lr: float  # the bottom of the study's loss-vs-LR curve; at_edge: the lowest-loss LR, only a bound
    at_edge: bool  # the lowest loss came at the lowest or highest LR tried: the bottom lies beyond the range
    warmup: int  # the winner's warmup, whose trials the curve is made of (when three or more)
    curve: list[tuple[float, float]]  # (lr, final val loss) of those trials, by LR


def curve_bottom(study: optuna.Study) -> CurveBottom:
    """Where a sweep's loss-vs-LR curve bottoms out: a parabola in log LR around its lowest point (`best_lr`), over the
    completed trials that share the winner's warmup and further swept values (when three or more do)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise InputError(f"study {study.study_name} has no completed trial to fit; run it again or widen its LR range")
    winner = min(complete, key=lambda t: t.value)
    tried = [t.params["lr"] for t in study.get_trials(deepcopy=False) if "lr" in t.params]
    same_setting = [t for t in complete if _setting(t.params)[1:] == _setting(winner.params)[1:]]  # all but the lr
    pool = same_setting if len(same_setting) >= 3 else complete
    curve = sorted({t.params["lr"]: t.value for t in pool}.items())
    at_edge = winner.params["lr"] in (min(tried), max(tried))
    return CurveBottom(lr=winner.params["lr"] if at_edge else best_lr(curve), at_edge=at_edge,
                       warmup=int(winner.params["warmup"]), curve=curve)


def fit_horizon(studies: dict[int, optuna.Study], *, tokens_per_step: int, target_steps: int) -> HorizonFit:
    """Best LR at each horizon (the bottom of its loss-vs-LR curve, at the winning warmup), then a power law in
    tokens, extrapolated to target_steps.

    A horizon whose lowest loss came at the lowest or highest LR it tried has its bottom beyond the searched range:
    that LR is a bound, not a best LR, and the fit leaves it out.
    """
    points, at_edge = [], []
    for steps, study in sorted(studies.items()):
        bottom = curve_bottom(study)
        (at_edge if bottom.at_edge else points).append((steps, bottom.lr))
    if len(points) < 2:
        edges = ", ".join(f"{lr:.3g} at {steps} steps" for steps, lr in at_edge)
        raise InputError(f"the best LR lies at the edge of the searched range ({edges}), leaving fewer than two horizons "
                         "to fit: widen --lr-min/--lr-max")
    law = fit_power_law([s * tokens_per_step for s, _ in points], [lr for _, lr in points])
    return HorizonFit(points=points, at_edge=at_edge, tokens_per_step=tokens_per_step, target_steps=target_steps, law=law)


def store_horizon_fit(
    fit: HorizonFit, *, storage: optuna.storages.BaseStorage, recipe_name: str, plot: Path, artifact_dir: Path
) -> optuna.Study:
    """The fit in the user attrs of the study <recipe>-horizon (its plot attached), where `horizon_lr` reads it."""
    summary = optuna.create_study(study_name=horizon_study(recipe_name), storage=storage, load_if_exists=True)
    for key, value in {HorizonAttr.POINTS: fit.points, HorizonAttr.EXPONENT: fit.exponent,
                       HorizonAttr.TARGET_STEPS: fit.target_steps, HorizonAttr.EXTRAPOLATED_LR: fit.lr,
                       HorizonAttr.UNCERTAINTY_FACTOR: fit.factor, HorizonAttr.TOKENS_PER_STEP: fit.tokens_per_step,
                       HorizonAttr.LAW: dataclasses.asdict(fit.law), HorizonAttr.AT_EDGE: fit.at_edge}.items():
        summary.set_user_attr(key, value)
    write_version(summary)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    upload_artifact(artifact_store=FileSystemArtifactStore(artifact_dir), file_path=str(plot), study_or_trial=summary)
    return summary


def horizon_lr(*, storage: optuna.storages.BaseStorage, recipe: Recipe, steps: int) -> tuple[float, float]:
    """The peak LR the stored horizon fit gives a run of `steps` steps, and its one-standard-error factor."""
    if (law := stored_law(storage=storage, study_name=horizon_study(recipe.name))) is None:
        raise InputError(f"no horizon fit for {recipe.name} in this storage: run `python -m sweep horizon --steps "
                         "100,300` first")
    law = PowerLaw(**law)
    tokens = steps * recipe.train.batch.total_batch_size
    return law.predict(tokens), law.uncertainty_factor(tokens)


def save_horizon_plot(fit: HorizonFit, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    tokens = [s * fit.tokens_per_step for s, _ in fit.points]
    ax.scatter(tokens, [lr for _, lr in fit.points], label="best lr per sweep horizon")
    if fit.at_edge:
        ax.scatter([s * fit.tokens_per_step for s, _ in fit.at_edge], [lr for _, lr in fit.at_edge], marker="x",
                   color="grey", label="at the edge of the range (not fitted)")
    target = fit.target_steps * fit.tokens_per_step
    line = np.geomspace(min(tokens), target, 50)
    ax.plot(line, fit.law.predict(line), "--", label=f"fit: lr ∝ tokens^{fit.exponent:.2f}")
    ax.errorbar([target], [fit.lr], yerr=[[fit.lr - fit.lr / fit.factor], [fit.lr * fit.factor - fit.lr]]
                if math.isfinite(fit.factor) else None, fmt="s", color="red", label=f"{fit.target_steps} steps: {fit.lr:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("best peak lr")
    ax.legend(fontsize="small")
    return save_figure(fig, path)
