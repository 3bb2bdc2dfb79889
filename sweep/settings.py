"""What a sweep command (`lr`, `horizon`, `transfer`) was asked for, as plain values, and every check of it that must
hold before anything is tokenized, trained or created."""

from dataclasses import dataclass

from sweep.recipe import Recipe, WarmupSpec
from sweep.runs import Runs, sweep_study
from sweep.storage import kind_of
from sweep.workers import Liveness
from train_core import InputError


@dataclass(frozen=True, kw_only=True)
class SweepSettings:
    storage_url: str
    runs: Runs
    study_name: str | None  # None: <recipe>-<steps>
    sampler: str
    pruner: str
    guard_rules: str
    grid_points: int
    lr_min: float | None  # None: the recipe's (or the bounds a range test found)
    lr_max: float | None
    warmup: list | None  # None: the recipe's search.warmup
    params: list[str] | None  # --param KEY=LOW:HIGH[:log] or KEY=A,B,C each; None: the recipe's search.params
    schedule: str
    seed: int | None  # None: the recipe's
    checkpoint_every: int
    trials: int | None  # None: the recipe's, or the whole grid
    timeout: float | None
    workers: int
    stack: int | str  # trials this process trains at once as one stacked model; "auto": as many as fit
    threads: int | None
    worker_index: int | None
    worker_argv: tuple[str, ...]  # the command line each of several --workers processes runs
    liveness: Liveness
    quiet: bool

    def __post_init__(self):
        if self.workers > 1 and not kind_of(self.storage_url).several_writers:
            raise InputError(
                f"--workers {self.workers} with SQLite storage: SQLite locks under several writers; use a journal file "
                "(--storage runs/sweep.log), postgresql://... or redis://..."
            )

    def study_name_for(self, recipe: Recipe, steps: int) -> str:
        return self.study_name or sweep_study(recipe.name, steps)

    def plan(self, recipe: Recipe, *, steps: int, lr_bounds: tuple[float, float] | None = None,
             fixed: dict[str, float] | None = None):
        """The TrialPlan of `steps`-step trials of recipe, every trial setting the recipe keys `fixed`; every flag
        checked first."""
        from sweep.branches import BranchStore
        from sweep.params import SweptParam
        from sweep.plan import TrialPlan
        from sweep.pruning import make_pruner
        from sweep.samplers import make_sampler
        from sweep.stacked import check_stack
        from sweep.targets import check_trial_places
        from train_core import SHAPES

        lr_min, lr_max = lr_bounds or (None, None)
        plan = TrialPlan.from_flags(
            recipe=recipe,
            steps=steps,
            schedule=self.schedule,
            lr_min=lr_min if self.lr_min is None else self.lr_min,
            lr_max=lr_max if self.lr_max is None else self.lr_max,
            warmup=None if self.warmup is None else WarmupSpec.parse(self.warmup, key="--warmup"),
            seed=self.seed,
            pruner_name=self.pruner,
            study_dir=self.runs.study(self.study_name_for(recipe, steps)),
            checkpoint_every=self.checkpoint_every,
            branches=BranchStore(self.runs.branches(recipe.name)) if SHAPES[self.schedule].branch_point else None,
            guard_rules=self.guard_rules,
            params=None if self.params is None else tuple(SweptParam.from_flag(text) for text in self.params),
            fixed=fixed,
        )
        make_sampler(self.sampler, seed=0, worker=0, n_startup_trials=1, grid={"lr": [1.0]})  # checks the name
        make_pruner(self.pruner, steps=steps, warmup_steps=0)
        check_stack(self.stack, grid_points=self._grid_points(plan), swept=tuple(p.key for p in plan.params))
        check_trial_places(plan)  # the folders its trials delete from
        return plan

    def trials_for(self, plan) -> int:
        """The finished trials the study should hold: --trials, else the whole grid or the recipe's count."""
        from sweep.lr import grid_trials

        if self.trials:
            return self.trials
        return grid_trials(plan, grid_points=self.grid_points) if self.sampler == "grid" else plan.recipe.search.trials

    def _grid_points(self, plan) -> int | None:
        """The grid sampler's points (lr x warmup), None for the other samplers."""
        from sweep.lr import grid_trials

        return grid_trials(plan, grid_points=self.grid_points) - 1 if self.sampler == "grid" else None

    def stack_for(self, plan, *, trials: int) -> int:
        """The trials this process trains at once: --stack, or with auto as many as fit the device beside the other
        workers sharing it, no more than the study's trials (or the grid's points)."""
        from sweep.workers import workers_per_device
        from train_core import resolve_device, stack_that_fits

        if self.stack != "auto":
            return self.stack
        per_device = workers_per_device(workers=self.workers, device_type=resolve_device(plan.recipe.train.device).type)
        fits = stack_that_fits(plan.recipe.train, processes=per_device) or 1
        return max(1, min(fits, trials, self._grid_points(plan) or trials))

    def ready(self, recipe: Recipe) -> None:
        """Everything that can refuse the sweep, before a study is created: the model must fit this machine once per
        worker sharing a device, a storage server must answer before the corpus is tokenized, and the token files
        must be there (missing or bad: exit 2 now). Then this process's torch threads."""
        import torch

        from sweep.storage import check_reachable
        from sweep.workers import workers_per_device
        from train_core import check_fits, open_data, resolve_device

        device = resolve_device(recipe.train.device)
        check_fits(recipe.train, device=device, processes=workers_per_device(workers=self.workers, device_type=device.type),
                   stack=1 if self.stack == "auto" else self.stack)
        check_reachable(self.storage_url)
        open_data(recipe.train.data, vocab_size=recipe.train.model.vocab_size)
        if self.threads:
            torch.set_num_threads(self.threads)


def without_workers(argv: list[str]) -> tuple[str, ...]:
    """The command line for one worker: this one without --workers (and its value) and --debug."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers=") and arg != "--debug":
            out.append(arg)
    return tuple(out)

