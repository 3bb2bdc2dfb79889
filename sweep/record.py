"""What a study stores, in one place: the keys of the user attrs of studies and trials, their typed reads and writes,
and the record's version. No other module spells a key (tests/test_record.py checks).

A sweep study (`sweep lr`) keeps, as user attrs (StudyAttr):
    search_space          SearchSpace: what its trials share; a sweep refuses to continue the study with another
    recipe                the recipe's YAML as written (swept_recipe parses it), beside recipe_name and recipe_digest
    model                 the model its trials trained, a GPTConfig's fields (swept_model; transfer widens it)
    anchor_lr, anchor_source, pruner, guard_rules     as the sweep that made it ran
    plotted_trials        how many finished trials the last loss-vs-LR plot shows (an unchanged plot is not re-sent)
    promote-<trial>...    one PromoteRun per promoted run, under its folder's name
    record_version        RECORD_VERSION of the code that made it
Each of its trials keeps TrialAttr (how the trial ran, what it found) and SystemAttr. The studies beside it keep their
own: <study>-promoted (PromotedAttr and a PromoteRun's fields), <study>-confirm (ConfirmAttr), <recipe>-range
(RangeAttr), <recipe>-horizon (HorizonAttr) and <recipe>-transfer-<parametrization> (TransferAttr).

Versions: 0, studies made before the version was kept; 1, the same keys and values, and record_version. A study of a
version newer than RECORD_VERSION is refused in one line (check_version). Bump it when a key or a value's format
changes, and say here what changed and how an older study is read.
"""

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial

import train_core  # its names load on first use: torch only comes in when a model is read
from train_core import InputError

if TYPE_CHECKING:
    from sweep.recipe import Recipe
    from train_core import GPTConfig

RECORD_VERSION = 1


class StudyAttr:
    """A sweep study's user attrs."""

    SEARCH_SPACE = "search_space"
    RECIPE = "recipe"
    RECIPE_NAME = "recipe_name"
    RECIPE_DIGEST = "recipe_digest"
    MODEL = "model"
    ANCHOR_LR = "anchor_lr"
    ANCHOR_SOURCE = "anchor_source"
    PRUNER = "pruner"
    GUARD_RULES = "guard_rules"
    PLOTTED_TRIALS = "plotted_trials"
    RECORD_VERSION = "record_version"  # also on the horizon and transfer summaries


# A promoted run's attr, and its folder: promote-<trial>, with -<N>steps, -lr<x> or -w<width> for another length, LR
# or width (sweep.promote.make_plan).
PROMOTE_PREFIX = "promote-"


class TrialAttr:
    """A sweep trial's user attrs."""

    # How it ran
    ANCHOR = "anchor"  # True on the anchor trial, and on its retries
    RETRY_OF = "retry_of"  # the trial whose work this retry continues
    RESUME_TRIAL = "resume_trial"  # the first of a chain of retries: its folder holds their checkpoints
    RETRIES = "retries"  # retries counted against --max-retries
    RESUMED_AT_STEP = "resumed_at_step"
    BRANCHED_FROM_STEP = "branched_from_step"  # wsd: the step of the shorter trial's stable phase it started from
    DUPLICATE_OF = "duplicate_of"  # a finished trial with the same params, whose result this one took
    WORKER = "worker"  # the process that took it
    SEED = "seed"
    CONFIG_HASH = "config_hash"
    RECIPE_DIGEST = "recipe_digest"
    DEVICE = "device"
    GIT_COMMIT = "git_commit"
    # How it ended, and what it found
    PRUNE_REASON = "prune_reason"
    FAIL_REASON = "fail_reason"  # starts with sweep.workers.DIED or STORAGE_FAULT when the trial was not to blame
    WALL_S = "wall_s"
    TRAIN_S = "train_s"
    TOKENS_SEEN = "tokens_seen"
    FLOPS = "flops"
    TOKENS_PER_S = "tokens_per_s"
    MFU = "mfu"
    MFU_PEAK = "mfu_peak"  # what the mfu is over: FLOP/s and where the figure comes from
    NOISE_SCALE_TOKENS = "noise_scale_tokens"  # B_simple at the last step, in tokens (steps with two batch sizes)
    FINAL_TRAIN_LOSS = "final_train_loss"
    STEPS_DONE = "steps_done"
    VAL_LOSS = "val_loss"


# How a trial ran rather than what it found: a trial that takes a finished twin's result keeps its own.
RUN_ATTRS = (TrialAttr.ANCHOR, TrialAttr.RETRY_OF, TrialAttr.RESUME_TRIAL, TrialAttr.RESUMED_AT_STEP,
             TrialAttr.BRANCHED_FROM_STEP, TrialAttr.DUPLICATE_OF, TrialAttr.RETRIES, TrialAttr.WORKER)


class SystemAttr:
    """A sweep trial's system attrs."""

    HEARTBEAT = "sweep:heartbeat"  # wall time of its worker's last stamp (sweep.workers)
    FIXED_PARAMS = "fixed_params"  # Optuna's own: the params an enqueued trial was given


class PromotedAttr:
    """A <study>-promoted trial's user attrs, besides the fields of its PromoteRun."""

    SOURCE_STUDY = "source_study"
    RUN = "run"  # the run's attr in the source study
    RESUMES_TRIAL = "resumes_trial"  # the trial of this run that a crash left behind
    GIT_COMMIT = "git_commit"


class ConfirmAttr:
    """A <study>-confirm trial's user attrs."""

    SOURCE_TRIAL = "source_trial"  # the sweep trial whose setting it re-runs with another seed


class RangeAttr:
    """A <recipe>-range trial's user attrs: the range test's result (sweep.analysis.RangeTestResult)."""

    STEEPEST_LR = "steepest_lr"
    DIVERGED_LR = "diverged_lr"
    MIN_LOSS_LR = "min_loss_lr"
    SUGGESTED_BOUNDS = "suggested_bounds"


class LawAttr:
    """The user attr every fit study keeps its power law under (read by `stored_law`)."""

    LAW = "law"  # sweep.analysis.PowerLaw's fields, or None


class HorizonAttr(LawAttr):
    """The user attrs of <recipe>-horizon: the horizon fit (sweep.trust.HorizonFit)."""

    POINTS = "points"
    EXPONENT = "exponent"
    TARGET_STEPS = "target_steps"
    EXTRAPOLATED_LR = "extrapolated_lr"
    UNCERTAINTY_FACTOR = "uncertainty_factor"
    TOKENS_PER_STEP = "tokens_per_step"
    AT_EDGE = "at_edge"


class CurvesFitAttr(LawAttr):
    """The user attrs every fit over a family of sweeps keeps (a sweep per width, per batch): each one's best LR, which
    lay at an end of the range, and the power law of best LR against the family's variable."""

    STEPS = "steps"
    BEST_LR = "best_lr"
    BEST_LOSS = "best_loss"  # each one's lowest final val loss
    AT_EDGE = "at_edge"


class TransferAttr(CurvesFitAttr):
    """The user attrs of <recipe>-transfer-<parametrization>: the drift fit (sweep.transfer.TransferFit)."""

    PARAMETRIZATION = "parametrization"
    WIDTHS = "widths"
    SLOPE = "slope"
    SLOPE_STANDARD_ERROR = "slope_standard_error"
    TRANSFERRED = "transferred"
    WIDER_STEPS = "wider_steps"  # each width against the next narrower one: WiderStep's fields
    WIDER_BETTER = "wider_better"  # every wider width better beyond the noise band
    MUP_VS_SP = "mup_vs_sp"  # MupVersusSp's fields, on both summaries once both parametrizations ran; else None


class BatchAttr(CurvesFitAttr):
    """The user attrs of <recipe>-batch: the best LR against the batch size (sweep.batch.BatchFit); STEPS by batch."""

    TRIAL_TOKENS = "trial_tokens"
    BATCH_TOKENS = "batch_tokens"
    NOISE_SCALE = "noise_scale_tokens"
    EXPONENT = "exponent"
    EXPONENT_STANDARD_ERROR = "exponent_standard_error"
    BAND = "band"
    CRITICAL_BATCH = "critical_batch"


def check_version(study: optuna.Study | optuna.study.StudySummary) -> int:
    """The record version the study was written with (0: before versions were kept, read as 1); an InputError in
    one line when a newer version of this project wrote it."""
    version = study.user_attrs.get(StudyAttr.RECORD_VERSION, 0)
    if version > RECORD_VERSION:
        raise InputError(f"study {study.study_name} was written with record version {version}, but this code reads "
                         f"versions up to {RECORD_VERSION}: update it (git pull) to read the study")
    return version


def load_study_checked(*, storage: optuna.storages.BaseStorage, study_name: str) -> optuna.Study:
    """optuna.load_study that refuses a study a newer version wrote (check_version); KeyError when there is none."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    check_version(study)
    return study


def existing_study(*, storage: optuna.storages.BaseStorage, study_name: str) -> optuna.Study | None:
    """The study (its version checked), None when the storage holds none of that name."""
    try:
        return load_study_checked(storage=storage, study_name=study_name)
    except KeyError:
        return None


def stored_law(*, storage: optuna.storages.BaseStorage, study_name: str) -> dict | None:
    """The power law a fit study keeps (PowerLaw's fields), None when there is no such study or it has no law."""
    study = existing_study(storage=storage, study_name=study_name)
    return None if study is None else study.user_attrs.get(LawAttr.LAW)


def write_version(study: optuna.Study) -> None:
    study.set_user_attr(StudyAttr.RECORD_VERSION, RECORD_VERSION)


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """What every trial of a sweep shares, as its study keeps it (sweep.objective.TrialPlan writes and reads it)."""

    lr: tuple[float, float]  # (lr_min, lr_max)
    warmup: tuple[int, ...]  # the choices in steps, or (min, max) when warmup_is_range
    warmup_is_range: bool
    steps: int
    schedule: str
    seed: int
    params: tuple[dict, ...] = ()  # the further swept recipe keys, as sweep.params.SweptParam.to_attr writes them
    fixed: dict = dataclasses.field(default_factory=dict)  # recipe keys every trial set (sweep transfer --tuned-from)

    def to_attr(self) -> dict:
        attr = {"lr": list(self.lr), "warmup": list(self.warmup), "warmup_is_range": self.warmup_is_range,
                "steps": self.steps, "schedule": self.schedule, "seed": self.seed}
        # A study of lr and warmup alone keeps what it kept before.
        return attr | ({"params": list(self.params)} if self.params else {}) | ({"fixed": self.fixed} if self.fixed else {})

    @staticmethod
    def from_attr(attr: dict) -> "SearchSpace":
        return SearchSpace(lr=tuple(attr["lr"]), warmup=tuple(attr["warmup"]),
                           warmup_is_range=attr.get("warmup_is_range", False), steps=attr["steps"],
                           schedule=attr["schedule"], seed=attr["seed"], params=tuple(attr.get("params", ())),
                           fixed=attr.get("fixed", {}))


def write_sweep_record(study: optuna.Study, *, space: SearchSpace, recipe: "Recipe", pruner: str,
                       guard_rules: str) -> None:
    """What a new sweep study keeps of the sweep that made it."""
    write_version(study)
    study.set_user_attr(StudyAttr.SEARCH_SPACE, space.to_attr())
    study.set_user_attr(StudyAttr.RECIPE, recipe.text)
    study.set_user_attr(StudyAttr.RECIPE_NAME, recipe.name)
    study.set_user_attr(StudyAttr.RECIPE_DIGEST, recipe.digest)
    study.set_user_attr(StudyAttr.MODEL, dataclasses.asdict(recipe.train.model))  # as trained: transfer widens it
    study.set_user_attr(StudyAttr.ANCHOR_LR, recipe.search.anchor_lr)
    study.set_user_attr(StudyAttr.ANCHOR_SOURCE, recipe.search.anchor_source)
    study.set_user_attr(StudyAttr.PRUNER, pruner)
    study.set_user_attr(StudyAttr.GUARD_RULES, guard_rules)


def search_space(study: optuna.Study) -> SearchSpace | None:
    """None for a study not made by `sweep lr`."""
    attr = study.user_attrs.get(StudyAttr.SEARCH_SPACE)
    return None if attr is None else SearchSpace.from_attr(attr)


def swept_recipe(study: optuna.Study) -> dict | None:
    """The recipe the study was swept with, as the values of its YAML (None for a study not made by `sweep lr`)."""
    from sweep.recipe import parse_recipe_text  # with the recipe's config comes torch: not for `--help`

    text = study.user_attrs.get(StudyAttr.RECIPE)
    return None if text is None else parse_recipe_text(text)


def swept_model(study: optuna.Study) -> "GPTConfig | None":
    """The model the study's trials trained (a transfer study's is wider than its recipe's); None for a study made
    before it was kept, which trained its recipe's."""
    model = study.user_attrs.get(StudyAttr.MODEL)
    return None if model is None else train_core.GPTConfig(**model)


def is_anchor(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(TrialAttr.ANCHOR))


def anchor_trial(study: optuna.Study) -> FrozenTrial | None:
    """The first trial of the study that ran the anchor's point (a retry of it is an anchor too)."""
    return next((t for t in study.get_trials(deepcopy=False) if is_anchor(t)), None)


def fail_reason(trial: FrozenTrial) -> str:
    """Why the trial failed, '' when it did not."""
    return str(trial.user_attrs.get(TrialAttr.FAIL_REASON, ""))


@dataclass(frozen=True, kw_only=True)
class PromoteRun:
    """A promoted run as its sweep study keeps it (the attr promote-<trial>..., updated at every evaluation), and as
    its trial in <study>-promoted does, one attr per field."""

    status: str  # running, or how train() ended it
    run_dir: str
    trial: int  # the sweep trial it promotes
    lr: float
    warmup: int
    max_steps: int
    steps_done: int
    tokens: int
    final_val_loss: float | None
    best_val_loss: float | None
    # Kept from the run's start (older runs lack them):
    started_at: str | None = None  # ISO time of its first start, kept across resumes
    promoted_trial: int | None = None  # its trial in <study>-promoted
    # Once it ended:
    wall_s: float | None = None  # of the last process
    tokens_per_s: float | None = None

    def to_attr(self) -> dict:
        """As stored: the fields with a default only once they are known."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.default is dataclasses.MISSING or getattr(self, f.name) is not None}

    @staticmethod
    def from_attr(attr: dict) -> "PromoteRun":
        return PromoteRun(**{f.name: attr[f.name] for f in dataclasses.fields(PromoteRun) if f.name in attr})


def promote_runs(study: optuna.Study | optuna.study.StudySummary) -> dict[str, PromoteRun]:
    """The runs promoted from the study's trials, by name, in the order the storage keeps them."""
    return {key: PromoteRun.from_attr(value) for key, value in study.user_attrs.items()
            if key.startswith(PROMOTE_PREFIX) and isinstance(value, dict)}


def write_promote_run(study: optuna.Study, name: str, run: PromoteRun) -> None:
    study.set_user_attr(name, run.to_attr())
