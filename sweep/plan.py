"""What every trial of one sweep shares besides its LR, warmup and other swept values: the recipe compressed to the
trial, the search space the study keeps, the seed, the pruner, the folders."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import optuna

from sweep.branches import BranchStore
from sweep.params import SweptParam, apply_values, check_params, recipe_value
from sweep.recipe import Recipe, WarmupSpec, WarmupSteps, run_config
from sweep.record import SearchSpace, StudyAttr, search_space, swept_model
from sweep.width import at_width
from train_core import InputError, TrainConfig


@dataclass(frozen=True, kw_only=True)
class TrialPlan:
    """Everything a trial needs besides its two hyperparameters. Made from the sweep's flags by `from_flags`, and
    from the study it describes by `from_study` (its inverse)."""

    recipe: Recipe
    steps: int
    schedule: str  # a name in train_core.sweep_shapes()
    lr_min: float
    lr_max: float
    warmups: WarmupSteps
    seed: int
    pruner_name: str
    study_dir: Path  # trial folders go to study_dir/trial-N (checkpoints while running, the loss curve after)
    checkpoint_every: int
    branches: BranchStore | None = None  # a shape with a branch point (wsd): trials start from a shorter trial's stable phase when one is stored
    guard_rules: Literal["all", "nonfinite"] = "all"  # nonfinite: complete curves for `sweep audit`
    params: tuple[SweptParam, ...] = ()  # further recipe keys the trials tune (sweep/params.py)
    fixed: dict[str, float] = field(default_factory=dict)  # recipe keys every trial sets (a proxy's tuned values)

    @staticmethod
    def from_flags(
        *,
        recipe: Recipe,
        steps: int,
        schedule: str,
        lr_min: float | None,
        lr_max: float | None,
        warmup: WarmupSpec | None,
        seed: int | None,
        pruner_name: str,
        study_dir: Path,
        checkpoint_every: int,
        branches: BranchStore | None = None,
        guard_rules: Literal["all", "nonfinite"] = "all",
        params: tuple[SweptParam, ...] | None = None,
        fixed: dict[str, float] | None = None,
    ) -> "TrialPlan":
        """The plan the sweep flags describe; None takes the recipe's value. Bad values are InputErrors naming the flag."""
        search = recipe.search
        lr_min = search.lr_min if lr_min is None else lr_min
        lr_max = search.lr_max if lr_max is None else lr_max
        if lr_min >= lr_max:
            raise InputError(f"--lr-min must be below --lr-max, got {lr_min:g} >= {lr_max:g}")
        warmups = (search.warmup if warmup is None else warmup).in_steps(steps)
        if warmups.longest >= steps:
            source = "--warmup" if warmup is not None else f"search.warmup in {recipe.path}"
            raise InputError(f"{source} has {warmups.longest} steps, which must be below --steps {steps} "
                             "(give fewer steps or fractions)")
        params = search.params if params is None else check_params(params, recipe.train, source="--param")
        params = tuple(p for p in params if p.key not in (fixed or {}))  # a key set on every trial is not swept
        return TrialPlan(
            recipe=recipe, steps=steps, schedule=schedule, lr_min=lr_min, lr_max=lr_max, warmups=warmups,
            seed=recipe.train.seed if seed is None else seed, pruner_name=pruner_name, study_dir=study_dir,
            checkpoint_every=checkpoint_every, branches=branches, guard_rules=guard_rules, params=params,
            fixed=fixed or {},
        )

    @staticmethod
    def from_study(study: optuna.Study, *, recipe: Recipe, study_dir: Path) -> "TrialPlan":
        """The plan a study was swept with (to re-run its trials: no pruner, one checkpoint at the end)."""
        space = search_space(study)
        if space is None:
            raise InputError(
                f"study {study.study_name} was not made by `sweep lr` (it has no {StudyAttr.SEARCH_SPACE} attr)")
        if (model := swept_model(study)) is not None:  # --- μP --- a transfer study's width
            train = at_width(recipe.train, n_embd=model.n_embd, parametrization=model.parametrization)
            recipe = dataclasses.replace(recipe, train=train)
        return TrialPlan(
            recipe=recipe, steps=space.steps, schedule=space.schedule, lr_min=space.lr[0], lr_max=space.lr[1],
            warmups=WarmupSteps(values=space.warmup, is_range=space.warmup_is_range),
            seed=space.seed, pruner_name="none", study_dir=study_dir, checkpoint_every=space.steps,
            params=tuple(SweptParam.from_attr(p) for p in space.params), fixed=space.fixed,
        )

    def anchor_values(self) -> dict[str, float]:
        """The swept keys as the recipe writes them: the anchor trial's."""
        train = apply_values(self.recipe.train, self.fixed)
        return {p.key: recipe_value(train, p.key) for p in self.params}

    def search_space(self) -> SearchSpace:
        """What the trials of a study share: the study keeps it and refuses to continue with another."""
        return SearchSpace(lr=(self.lr_min, self.lr_max), warmup=self.warmups.values,
                           warmup_is_range=self.warmups.is_range, steps=self.steps, schedule=self.schedule, seed=self.seed,
                           params=tuple(p.to_attr() for p in self.params), fixed=self.fixed)

    def trial_config(self, *, lr: float, warmup_steps: int, values: dict[str, float] | None = None,
                     seed: int | None = None) -> TrainConfig:
        """The recipe compressed to the trial, with its swept `values`: the whole schedule (warmup, cosine to min_lr)
        fits in `steps`, so every trial ends annealed, and it is evaluated once, at the end. `seed` replaces the
        study's (confirm's re-runs)."""
        return run_config(
            self.recipe,
            values=self.fixed | (values or {}),
            lr=lr,
            warmup_steps=warmup_steps,
            steps=self.steps,
            shape=self.schedule,
            seed=self.seed if seed is None else seed,
            eval_interval=self.steps,
            checkpoint_interval=self.checkpoint_every,
        )
