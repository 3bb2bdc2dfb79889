"""Recipe keys a sweep tunes beside the peak LR and warmup: μP's own multipliers, the init std, weight decay, the betas.

Each is a trial param named by its recipe key, over a float range (linear or log) or a list of choices, written in
a recipe's `search.params` or with --param (which replaces the recipe's list):

    search:
      params:
        model.mup_output_alpha: {low: 1, high: 16, log: true}   # --param model.mup_output_alpha=1:16:log
        optimizer.beta2: [0.95, 0.99]                          # --param optimizer.beta2=0.95,0.99

The range holds the recipe's own value: the anchor trial runs the recipe as written. Like lr and warmup, the values
are paired across trials (same seed, same batches), the grid sampler spaces each over `--grid-points`, and promote,
confirm and transfer run a trial with every value it was swept with.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from train_core import InputError

if TYPE_CHECKING:  # the CLI lists SWEEPABLE in --help, which must not wait for torch to import
    from train_core import TrainConfig

# key -> what it is; μP's multipliers (--- μP ---) mean nothing under SP, where the model ignores them.
SWEEPABLE = {
    "model.mup_output_alpha": "μP: logits multiplied by this / width multiplier",
    "model.mup_input_alpha": "μP: embedding output multiplied by this",
    "model.init_std": "init std of the weights (hidden ones / sqrt(width multiplier) under μP)",
    "optimizer.weight_decay": "AdamW weight decay on >=2-D weights",
    "optimizer.beta1": "AdamW beta1",
    "optimizer.beta2": "AdamW beta2",
}
MUP_ONLY = ("model.mup_output_alpha", "model.mup_input_alpha")
SEARCHED_BY_NAME = ("lr", "warmup")  # the trial params every sweep has; the rest are swept recipe keys


@dataclass(frozen=True, kw_only=True)
class SweptParam:
    """One swept recipe key: `choices`, or a range [low, high] (log-spaced when `log`)."""

    key: str
    low: float = math.nan
    high: float = math.nan
    log: bool = False
    choices: tuple[float, ...] = ()

    @staticmethod
    def parse(value: Any, *, key: str, where: str) -> "SweptParam":
        """From a recipe: {low, high[, log]} or a list of choices. `where` names the key in messages."""
        _check_key(key, where=where)
        if isinstance(value, list) and value:
            return SweptParam(key=key, choices=tuple(sorted({_number(v, where=where) for v in value})))
        if isinstance(value, dict) and {"low", "high"} <= set(value) <= {"low", "high", "log"}:
            log = value.get("log", False)
            if not isinstance(log, bool):
                raise InputError(f"{where}.log must be true or false, got {log!r}")
            return _range(key, _number(value["low"], where=f"{where}.low"), _number(value["high"], where=f"{where}.high"),
                          log=log, where=where)
        raise InputError(f"{where} must be {{low: .., high: ..[, log: true]}} or a non-empty list of choices, got {value!r}")

    @staticmethod
    def from_flag(text: str) -> "SweptParam":
        """From --param KEY=LOW:HIGH[:log] or KEY=A,B,C."""
        key, sep, spec = text.partition("=")
        where = f"--param {text}"
        if not sep or not spec:
            raise InputError(f"{where}: expected KEY=LOW:HIGH[:log] or KEY=A,B,C (keys: {', '.join(SWEEPABLE)})")
        _check_key(key, where="--param")
        if ":" in spec:
            low, high, *rest = spec.split(":")
            if rest not in ([], ["log"]):
                raise InputError(f"{where}: a range is LOW:HIGH or LOW:HIGH:log")
            return _range(key, _number(low, where=where), _number(high, where=where), log=bool(rest), where=where)
        return SweptParam(key=key, choices=tuple(sorted({_number(v, where=where) for v in spec.split(",")})))

    def suggest(self, trial) -> float:
        """The trial's value, drawn by its sampler (an `optuna.Trial`)."""
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def grid(self, points: int, *, anchor: float) -> list[float]:
        """The grid sampler's values: the choices, or `points` spaced over the range, with the anchor's value."""
        if self.choices:
            return list(self.choices)
        if self.log:
            ratio = (self.high / self.low) ** (1 / max(points - 1, 1))
            values = [self.low * ratio**i for i in range(points)]
        else:
            values = [self.low + (self.high - self.low) * i / max(points - 1, 1) for i in range(points)]
        return sorted({float(f"{v:.4g}") for v in values} | {anchor})

    def contains(self, value: float) -> bool:
        return value in self.choices if self.choices else self.low <= value <= self.high

    def describe(self) -> str:
        if self.choices:
            return f"{self.key} in {{{', '.join(f'{c:g}' for c in self.choices)}}}"
        return f"{self.key} in [{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"

    def to_attr(self) -> dict:
        if self.choices:
            return {"key": self.key, "choices": list(self.choices)}
        return {"key": self.key, "low": self.low, "high": self.high, "log": self.log}

    @staticmethod
    def from_attr(attr: dict) -> "SweptParam":
        if "choices" in attr:
            return SweptParam(key=attr["key"], choices=tuple(attr["choices"]))
        return SweptParam(key=attr["key"], low=attr["low"], high=attr["high"], log=attr["log"])


def check_params(params: tuple[SweptParam, ...], train: TrainConfig, *, source: str) -> tuple[SweptParam, ...]:
    """The params as a sweep of `train` can run them: one entry per key, μP's multipliers under μP only, the recipe's
    own value inside (the anchor trial), and every bound a valid config. `source` names where they were written."""
    keys = [p.key for p in params]
    if (twice := next((k for k in keys if keys.count(k) > 1), None)) is not None:
        raise InputError(f"{source} names {twice} twice; give each key once")
    for p in params:
        if p.key in MUP_ONLY and train.model.parametrization != "mup":
            raise InputError(f"{source}: {p.key} is a μP multiplier and the model is SP (model.parametrization: "
                             f"{train.model.parametrization}); sweep it on a μP recipe")
        own = recipe_value(train, p.key)
        if not p.contains(own):
            raise InputError(f"{source}: {p.describe()} must hold the recipe's own {p.key} = {own:g} (the anchor "
                             "trial runs the recipe as written)")
        for bound in p.choices or (p.low, p.high):
            apply_values(train, {p.key: bound})  # an InputError names the key and what it allows
    return tuple(params)


def recipe_value(train: TrainConfig, key: str) -> float:
    section, name = key.split(".")
    return float(getattr(getattr(train, section), name))


def apply_values(train: TrainConfig, values: Mapping[str, float]) -> TrainConfig:
    """`train` with the swept keys set to `values` (the sections' own checks run again)."""
    for key, value in values.items():
        section, name = key.split(".")
        part = dataclasses.replace(getattr(train, section), **{name: float(value)})
        train = dataclasses.replace(train, **{section: part})
    return train


def swept_values(params: Mapping[str, Any]) -> dict[str, float]:
    """A trial's swept recipe keys: its params without lr and warmup (and a confirm run's seed)."""
    return {k: float(v) for k, v in params.items() if k in SWEEPABLE}


def describe_values(values: Mapping[str, float], *, lead: str = "") -> str:
    """'model.mup_output_alpha 4, optimizer.beta2 0.99' after `lead`; empty when nothing else was swept."""
    return lead + ", ".join(f"{k} {v:g}" for k, v in values.items()) if values else ""


def _range(key: str, low: float, high: float, *, log: bool, where: str) -> SweptParam:
    if low >= high:
        raise InputError(f"{where}: low must be below high, got {low:g} >= {high:g}")
    if log and low <= 0:
        raise InputError(f"{where}: a log range must stay above 0, got low {low:g}")
    return SweptParam(key=key, low=low, high=high, log=log)


def _check_key(key: str, *, where: str) -> None:
    if key not in SWEEPABLE:
        raise InputError(f"{where}: {key!r} is not a key a sweep can tune (allowed: {', '.join(SWEEPABLE)})")


def _number(value: Any, *, where: str) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise InputError(f"{where}: {value!r} is not a finite number")
    return number
