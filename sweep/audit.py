"""Pruning audit: would a pruner, behind the stability guard, have stopped the sweep's winner?

    python -m sweep lr --sampler grid --grid-points 9 --pruner none --guard nonfinite --warmup 30 --study-name grid
    python -m sweep audit --study-name grid

The audited study ran every trial to its end (no pruner; only a non-finite value stops a trial), so its storage and
artifacts hold every trial's complete curve. The audit replays each pruner with the stability guard in front of it,
as a sweep runs them, offline over those curves. Trials finish one by one, as in a one-worker sweep, in random orders
with the anchor first, so early decisions see few peers; every order is a fresh in-memory study with the real Optuna
pruner. Per pruner it reports which trials were stopped (in how many orders, from which step), the compute saved, and
whether the trial with the lowest final val loss, or one within the seed-noise band of it, was stopped.
"""

import csv
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from optuna.trial import TrialState
from rich import box
from rich.console import Console
from rich.table import Table

from sweep.pruning import PRUNE_FROM, PRUNED, PRUNERS, StabilityGuard, judge_step, make_pruner, pruning_start, recovery_window
from sweep.record import StudyAttr, TrialAttr, is_anchor, search_space, swept_recipe
from train_core import InputError, StepMetrics

SEED_NOISE = 0.05  # val loss spread between seeds of the default study at 300 steps (README, "The sweep")
GUARDS = ("one-step", "windowed")  # the guard before issue 15 (stops on the first bad step) and the current one


@dataclass(frozen=True, kw_only=True)
class Curve:
    """One trial of the audited study, complete."""

    number: int
    lr: float
    warmup: int
    anchor: bool
    val_loss: float | None  # None: a non-finite value ended it
    loss: list[float]  # raw train loss per step
    grad_norm: list[float]


@dataclass(frozen=True, kw_only=True)
class Stop:
    step: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class Replay:
    """One pruner and guard over one order of the trials."""

    order: list[int]
    stops: dict[int, Stop]  # trial number -> where and why it was stopped
    steps_run: int


@dataclass(frozen=True, kw_only=True)
class AuditRow:
    pruner: str
    guard: str
    prune_from: float  # the fraction of the run from which trials are compared
    replays: list[Replay]


@dataclass(frozen=True, kw_only=True)
class Audit:
    study_name: str
    steps: int
    curves: list[Curve]
    band: float
    rows: list[AuditRow]

    @property
    def best(self) -> Curve:
        return min((c for c in self.curves if c.val_loss is not None), key=lambda c: c.val_loss)

    @property
    def in_band(self) -> list[Curve]:
        """Trials within the seed-noise band of the best: as good as the best, as far as one seed can tell."""
        return [c for c in self.curves if c.val_loss is not None and c.val_loss <= self.best.val_loss + self.band]


def load_curves(study: optuna.Study, *, storage: optuna.storages.BaseStorage, artifact_dir: Path) -> list[Curve]:
    """Every trial's complete curve; refuses a study whose trials a pruner or the guard's spike rules cut short."""
    pruner, rules = study.user_attrs.get(StudyAttr.PRUNER), study.user_attrs.get(StudyAttr.GUARD_RULES)
    if (pruner, rules) != ("none", "nonfinite"):
        raise InputError(
            f"study {study.study_name} ran with --pruner {pruner or '?'} --guard {rules or '?'}: the audit needs every "
            "curve complete; sweep with --pruner none --guard nonfinite (e.g. --sampler grid --grid-points 9)"
        )
    store = FileSystemArtifactStore(artifact_dir)
    curves = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if TrialAttr.DUPLICATE_OF in trial.user_attrs:
            continue  # the same params as an earlier trial, which trained; its result is that trial's
        metas = [m for m in get_all_artifact_meta(trial, storage=storage) if m.filename.endswith("-curve.csv")]
        if not metas:
            raise InputError(f"trial {trial.number} of {study.study_name} has no curve artifact in {artifact_dir}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "curve.csv"
            download_artifact(artifact_store=store, file_path=str(path), artifact_id=metas[-1].artifact_id)
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        curves.append(Curve(
            number=trial.number,
            lr=trial.params["lr"],
            warmup=trial.params["warmup"],
            anchor=is_anchor(trial),
            val_loss=trial.value if trial.state == TrialState.COMPLETE else None,
            loss=[float(r["loss"]) for r in rows],
            grad_norm=[float(r["grad_norm"]) for r in rows],
        ))
    if sum(c.val_loss is not None for c in curves) < 3:
        raise InputError(f"study {study.study_name} has {len(curves)} finished trials; the audit needs 3 or more")
    return curves


def replay(
    curves: list[Curve],
    *,
    order: list[int],
    pruner: str,
    guard: str,
    steps: int,
    initial_loss: float,
    name: str,
    prune_from: float = PRUNE_FROM,
) -> Replay:
    """The sweep of `curves` as one worker runs it: trials in `order`, each reporting its smoothed loss every step, the
    step judged by the sweep's own rule (sweep.pruning.judge_step)."""
    by_number = {c.number: c for c in curves}
    max_warmup = max(c.warmup for c in curves)
    study = optuna.create_study(
        study_name=name,
        direction="minimize",
        pruner=make_pruner(pruner, steps=steps, warmup_steps=max_warmup, fraction=prune_from),
    )
    start = pruning_start(steps=steps, warmup_steps=max_warmup, fraction=prune_from)
    window = 0 if guard == "one-step" else recovery_window(steps=steps)
    stops, steps_run = {}, 0
    for number in order:
        curve = by_number[number]
        trial = study.ask()
        watch = StabilityGuard(initial_loss=initial_loss, warmup_steps=curve.warmup, recovery_steps=window)
        stop = None
        for step, (loss, norm) in enumerate(zip(curve.loss, curve.grad_norm)):
            steps_run += 1
            metrics = StepMetrics(step=step, loss=loss, lr=0.0, grad_norm=norm, tokens_seen=0, tokens_per_s=0.0,
                                  ms_per_step=0.0, mfu=0.0)
            reason = judge_step(trial, metrics, guard=watch, prune_from=start, steps=steps)
            if reason == PRUNED:
                reason = f"{pruner} at step {step}"
            if reason is not None:
                stop = Stop(step=step, reason=reason)
                break
        if stop is None and curve.val_loss is None:
            stop = Stop(step=len(curve.loss) - 1, reason="ended non-finite")
        if stop is not None:
            stops[number] = stop
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, curve.val_loss)
    return Replay(order=list(order), stops=stops, steps_run=steps_run)


def orders(curves: list[Curve], *, count: int, seed: int, trials: int | None = None) -> list[list[int]]:
    """`count` random orders of the trials, the anchor first as in every sweep; with `trials`, each order is a sweep
    of that many: the anchor and a random draw of the others."""
    rng = np.random.default_rng(seed)
    anchors = [c.number for c in curves if c.anchor]
    rest = [c.number for c in curves if not c.anchor]
    take = len(rest) if trials is None else max(0, min(len(rest), trials - len(anchors)))
    return [anchors + [int(n) for n in rng.permutation(rest)[:take]] for _ in range(count)]


def run_audit(
    study: optuna.Study,
    *,
    storage: optuna.storages.BaseStorage,
    artifact_dir: Path,
    order_count: int = 20,
    seed: int = 0,
    band: float = SEED_NOISE,
    pruners: tuple[str, ...] = tuple(PRUNERS),
    prune_from: tuple[float, ...] = (PRUNE_FROM,),
    trials: int | None = None,
) -> Audit:
    curves = load_curves(study, storage=storage, artifact_dir=artifact_dir)
    steps = search_space(study).steps
    initial_loss = math.log(swept_recipe(study)["model"]["vocab_size"])
    shuffles = orders(curves, count=order_count, seed=seed, trials=trials)
    rows = []
    for pruner in pruners:
        for guard in GUARDS:
            for fraction in prune_from if pruner != "none" else prune_from[:1]:
                replays = [
                    replay(curves, order=order, pruner=pruner, guard=guard, steps=steps, initial_loss=initial_loss,
                           name=f"audit-{i}", prune_from=fraction)
                    for i, order in enumerate(shuffles)
                ]
                rows.append(AuditRow(pruner=pruner, guard=guard, prune_from=fraction, replays=replays))
    return Audit(study_name=study.study_name, steps=steps, curves=curves, band=band, rows=rows)


def summary(audit: Audit, row: AuditRow) -> dict:
    """The figures of one pruner and guard over all orders. Each order's best (and noise band) is that of the trials
    it ran, and so is what the pruned sweep found: the cost of pruning, not of the trials drawn."""
    by_number = {c.number: c for c in audit.curves}
    saved = [1 - r.steps_run / (audit.steps * len(r.order)) for r in row.replays]
    best_stopped = band_stopped = 0
    regrets, ratios = [], []
    for r in row.replays:
        ran = [by_number[n] for n in r.order if by_number[n].val_loss is not None]
        best = min(ran, key=lambda c: c.val_loss)
        best_stopped += best.number in r.stops
        band_stopped += any(c.number in r.stops for c in ran if c.val_loss <= best.val_loss + audit.band)
        finished = [by_number[n] for n in r.order if n not in r.stops and by_number[n].val_loss is not None]
        if finished:  # what pruning cost this sweep: its winner against the best of the trials it ran
            found = min(finished, key=lambda c: c.val_loss)
            regrets.append(found.val_loss - best.val_loss)
            ratios.append(max(found.lr / best.lr, best.lr / found.lr))
    return {
        "saved_mean": float(np.mean(saved)),
        "saved_min": min(saved),
        "saved_max": max(saved),
        "best_stopped": best_stopped,
        "band_stopped": band_stopped,
        "regret_max": max(regrets) if regrets else math.nan,
        "lr_ratio_max": max(ratios) if ratios else math.nan,
        "orders": len(row.replays),
    }


def print_audit(console: Console, audit: Audit, *, markdown: bool = False) -> None:
    style = {"box": box.MARKDOWN} if markdown else {}
    best = audit.best
    console.print(
        f"audit of {audit.study_name}: {len(audit.curves)} trials of {audit.steps} steps; best: trial {best.number}, "
        f"lr {best.lr:.3g}, val loss {best.val_loss:.4f}; within the noise band (+{audit.band:g}): "
        f"{', '.join(f'{c.lr:.3g}' for c in audit.in_band)}; {len(audit.rows[0].replays)} orders, anchor first"
        + (f", {len(audit.rows[0].replays[0].order)} trials each" if audit.rows[0].replays[0].order else ""),
        highlight=False,
    )
    table = Table(title="per pruner, over all orders", header_style="bold", **style)
    for name in ("pruner", "guard", "from", "compute saved", "best stopped", "noise band stopped",
                 "winner found: worst val +", "worst lr ratio"):
        table.add_column(name, justify="left" if name in ("pruner", "guard") else "right")
    # ("from": the fraction of the run from which the pruner compares trials)
    for row in audit.rows:
        s = summary(audit, row)
        table.add_row(
            row.pruner, row.guard, "" if row.pruner == "none" else f"{row.prune_from:.0%}",
            f"{s['saved_mean']:.0%} ({s['saved_min']:.0%}–{s['saved_max']:.0%})",
            f"{s['best_stopped']}/{s['orders']}",
            f"{s['band_stopped']}/{s['orders']}",
            f"{s['regret_max']:.4f}",
            f"{s['lr_ratio_max']:.2f}x",
        )
    console.print(table)
    # Per trial: each pruner behind today's guard, and each guard alone.
    shown = [r for r in audit.rows if r.guard == "windowed" or r.pruner == "none"]
    several = len({r.prune_from for r in shown}) > 1
    trials = Table(title="stopped in how many of the orders it ran in, at which steps", header_style="bold", **style)
    trials.add_column("peak lr", justify="right")
    trials.add_column("val loss", justify="right")
    for row in shown:
        label = row.pruner + (f" from {row.prune_from:.0%}" if several else "")
        trials.add_column(f"{row.guard} guard" if row.pruner == "none" else label, justify="right")
    for curve in sorted(audit.curves, key=lambda c: c.lr):
        cells = []
        for row in shown:
            hits = [r.stops[curve.number].step for r in row.replays if curve.number in r.stops]
            ran = sum(curve.number in r.order for r in row.replays)
            cells.append(f"{len(hits)}/{ran} @{min(hits)}–{max(hits)}" if hits else "–")
        marks = " (best)" if curve is best else " (anchor)" if curve.anchor else ""
        val = f"{curve.val_loss:.4f}" if curve.val_loss is not None else "non-finite"
        trials.add_row(f"{curve.lr:.3g}{marks}", val, *cells)
    console.print(trials)
