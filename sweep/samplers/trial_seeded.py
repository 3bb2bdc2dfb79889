"""A sampler whose proposal for a trial depends on the trial, not on the process that asks."""

from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Optuna's sampler `build(seed)` made afresh for each trial with a seed mixed from `seed` and the trial's number.

    Optuna's samplers keep one random stream for the life of the process, so what trial N gets depends on how many
    proposals this process made before it; here it depends on the trial alone (and on the study's history, which the
    model-based samplers read from the storage).
    """

    def __init__(self, build: Callable[[int], optuna.samplers.BaseSampler], *, seed: int):
        self.build = build
        self.seed = seed
        self.inner = build(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner = self.build((self.seed * 1_000_003 + trial.number) % 2**32)
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()

    def is_exhausted(self, study: optuna.Study) -> bool:
        """Whether a grid sampler has run every point of its grid (never, for the others)."""
        return isinstance(self.inner, optuna.samplers.GridSampler) and self.inner.is_exhausted(study)
