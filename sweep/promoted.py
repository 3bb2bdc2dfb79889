"""What a promoted run leaves in the storage: its metrics.csv, its `promote-<trial>...` record in the sweep study
(updated at every evaluation), a section of the study's note, and a trial of `<study>-promoted` started when the run
starts and told when it ends, with the val-loss curve, the metrics as an artifact and a note."""

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from sweep.objective import git_commit, name_metric
from sweep.recipe import recipe_note
from sweep.record import PromoteRun, PromotedAttr, StudyAttr, promote_runs
from sweep.report import fmt_loss
from sweep.runs import promoted_study
from train_core import StepMetrics

if TYPE_CHECKING:
    from sweep.promote import PromotePlan

METRIC_COLUMNS = ("step", "loss", "lr", "grad_norm", "tokens_seen", "tokens_per_s", "mfu", "noise_scale_tokens",
                  "val_loss")


class MetricsLog:
    """metrics.csv of the full run, one row per step; after a resume, rows the crashed process wrote past the
    checkpoint it resumed from are dropped, so the file matches the run's real history."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        if path.exists():
            with open(path, newline="") as f:
                self.rows = [dict(r) for r in csv.DictReader(f)]
        self.first = True

    def write(self, m: StepMetrics) -> None:
        if self.first:
            self.rows = [r for r in self.rows if int(r["step"]) < m.step]
            self._rewrite()
            self.first = False
        row = {
            "step": m.step, "loss": m.loss, "lr": m.lr, "grad_norm": m.grad_norm, "tokens_seen": m.tokens_seen,
            "tokens_per_s": round(m.tokens_per_s, 1), "mfu": round(m.mfu, 4),
            "noise_scale_tokens": "" if m.noise_scale_tokens is None else round(m.noise_scale_tokens, 1),
            "val_loss": "" if m.val_loss is None else m.val_loss,
        }
        self.rows.append({k: str(v) for k, v in row.items()})
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=METRIC_COLUMNS).writerow(row)

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)

    def val_curve(self) -> list[tuple[int, float]]:
        return [(int(r["step"]), float(r["val_loss"])) for r in self.rows if r["val_loss"]]


def run_status(plan: "PromotePlan", log: MetricsLog, *, status: str, steps_done: int) -> PromoteRun:
    vals = [v for _, v in log.val_curve()]
    return PromoteRun(
        status=status,
        run_dir=str(plan.run_dir),
        trial=plan.trial.number,
        lr=plan.config.schedule.max_lr,
        warmup=plan.config.schedule.warmup_steps,
        max_steps=plan.config.schedule.max_steps,
        steps_done=steps_done,
        tokens=steps_done * plan.config.batch.total_batch_size,
        final_val_loss=vals[-1] if vals else None,
        best_val_loss=min(vals) if vals else None,
    )


def start_promoted_trial(plan: "PromotePlan", storage: optuna.storages.BaseStorage, *, stale: int | None) -> optuna.Trial:
    """The run's trial in <study>-promoted, asked now so that its start is the run's; a trial an interrupted earlier
    process of this run left RUNNING is failed first."""
    promoted = optuna.create_study(
        study_name=promoted_study(plan.study.study_name),
        storage=storage,
        direction="minimize",
        load_if_exists=True,
    )
    name_metric(promoted)
    if stale is not None and any(t.number == stale for t in promoted.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        promoted.tell(stale, state=TrialState.FAIL)
    lr = plan.config.schedule.max_lr  # the trial's, or the one extrapolated by `sweep horizon`
    source = plan.trial.distributions["lr"]
    distributions = plan.trial.distributions | {
        "lr": FloatDistribution(min(lr, source.low), max(lr, source.high), log=source.log)
    }
    promoted.enqueue_trial(plan.trial.params | {"lr": lr})
    trial = promoted.ask(fixed_distributions=distributions)
    trial.set_user_attr(PromotedAttr.SOURCE_STUDY, plan.study.study_name)
    trial.set_user_attr(PromotedAttr.RUN, plan.key)
    if stale is not None:
        trial.set_user_attr(PromotedAttr.RESUMES_TRIAL, stale)
    return trial


def finish_promoted_trial(
    trial: optuna.Trial, plan: "PromotePlan", log: MetricsLog, status: PromoteRun, store: FileSystemArtifactStore, *,
    completed: bool,
) -> None:
    """COMPLETE with the final val loss when the run finished, FAIL otherwise; its note and metrics.csv either way."""
    for key, value in status.to_attr().items():
        trial.set_user_attr(key, value)
    if commit := git_commit():
        trial.set_user_attr(PromotedAttr.GIT_COMMIT, commit)
    optuna_dashboard.save_note(trial, _promoted_note(status))
    upload_artifact(artifact_store=store, file_path=str(log.path), study_or_trial=trial)
    if completed:
        trial.study.tell(trial, status.final_val_loss)
    else:
        trial.study.tell(trial, state=TrialState.FAIL)


def write_study_note(study: optuna.Study) -> None:
    """The study's note: its recipe, then one row per promoted run."""
    lines = ["## Promoted runs", "", "| run | trial | lr | warmup | steps | status | final val | best val |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in promote_runs(study).items():
        lines.append(
            f"| {name} | {run.trial} | {run.lr:.3g} | {run.warmup} | {run.steps_done}/{run.max_steps} | {run.status} "
            f"| {fmt_loss(run.final_val_loss)} | {fmt_loss(run.best_val_loss)} |"
        )
    text = study.user_attrs.get(StudyAttr.RECIPE)
    recipe = [recipe_note(text), ""] if text is not None else []
    optuna_dashboard.save_note(study, "\n".join([*recipe, *lines]))


def _promoted_note(status: PromoteRun) -> str:
    return (
        f"**full run of trial {status.trial}**: peak lr {status.lr:.3g}, warmup {status.warmup}, "
        f"{status.steps_done} steps, {status.tokens:,} tokens\n\n"
        f"**final val loss** {fmt_loss(status.final_val_loss)} · **best** {fmt_loss(status.best_val_loss)}\n\n"
        f"run folder `{status.run_dir}`"
    )
