"""Study recipes: a YAML file with the training config and the search space around a published anchor LR.

    name: default                  # optional; the file's stem otherwise
    model: {...}                   # train_core.TrainConfig sections: model, data, batch, schedule, optimizer, ...
    search:
      anchor_lr: 1.0e-3            # the published peak LR the sweep starts from (trial 0) and is compared to
      anchor_source: Pythia 70M    # where that number comes from
      lr_min: 2.5e-4               # default anchor_lr / 4
      lr_max: 4.0e-3               # default anchor_lr * 4
      warmup: [0, 0.05, 0.1]       # a list of choices, or {min: 0, max: 0.2}; ints are steps, floats < 1 fractions
      trials: 8                    # the study's total of finished (complete + pruned) trials
      params:                      # further recipe keys to tune (sweep/params.py), e.g.
        model.mup_output_alpha: {low: 1, high: 16, log: true}
"""

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweep.params import SweptParam, apply_values, check_params
from sweep.width import at_width
from train_core import InputError, TrainConfig

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"  # the shipped recipes
SEARCH_KEYS = ("anchor_lr", "anchor_source", "lr_min", "lr_max", "warmup", "anchor_warmup", "trials", "params")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `6e-4` as a float (YAML 1.1 wants `6.0e-4`, and would return a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


@dataclass(frozen=True, kw_only=True)
class WarmupSpec:
    """Warmups as a recipe or --warmup gives them: a list of choices, or a {min, max} range (`is_range`); an int is a
    step count, a float below 1 a fraction of the run. `in_steps` turns them into one sweep's warmups."""

    values: tuple[float, ...]  # the choices; for a range, (min, max)
    is_range: bool = False

    @staticmethod
    def parse(value: Any, *, key: str) -> "WarmupSpec":
        if isinstance(value, dict):
            if set(value) != {"min", "max"}:
                raise InputError(f"{key} as a range must have exactly the keys min and max, got {sorted(value)}")
            low, high = (_warmup_value(value[k], key=f"{key}.{k}") for k in ("min", "max"))
            if warmup_steps(low, 1000) > warmup_steps(high, 1000):
                raise InputError(f"{key}.min must be <= {key}.max, got {low!r} > {high!r}")
            return WarmupSpec(values=(low, high), is_range=True)
        if isinstance(value, list) and value:
            return WarmupSpec(values=tuple(_warmup_value(v, key=key) for v in value))
        raise InputError(f"{key} must be a non-empty list of warmups or {{min: .., max: ..}}, got {value!r}")

    def in_steps(self, steps: int) -> "WarmupSteps":
        """The warmups of a sweep whose trials run `steps` steps."""
        if self.is_range:
            return WarmupSteps(values=tuple(warmup_steps(v, steps) for v in self.values), is_range=True)
        return WarmupSteps(values=tuple(sorted({warmup_steps(v, steps) for v in self.values})))


@dataclass(frozen=True, kw_only=True)
class WarmupSteps:
    """One sweep's warmups in optimizer steps: the sorted `values` to choose from, or, with `is_range`, every step
    count from values[0] to values[1]. The one form trials, grids, the anchor and the study's record use."""

    values: tuple[int, ...]
    is_range: bool = False

    @property
    def longest(self) -> int:
        return self.values[-1]

    def suggest(self, trial) -> int:
        """The trial's warmup, drawn by its sampler (an `optuna.Trial`)."""
        if self.is_range:
            return trial.suggest_int("warmup", self.values[0], self.values[1])
        return trial.suggest_categorical("warmup", list(self.values))

    def grid(self, points: int) -> list[int]:
        """The grid sampler's warmups: the choices, or `points` evenly spaced over the range."""
        if not self.is_range:
            return list(self.values)
        low, high = self.values
        return sorted({round(low + (high - low) * i / max(points - 1, 1)) for i in range(points)})

    def nearest(self, target: int) -> int:
        """The warmup closest to `target` (the shorter one on a tie)."""
        if self.is_range:
            return min(max(target, self.values[0]), self.values[1])
        return min(self.values, key=lambda w: (abs(w - target), w))


def _warmup_value(value: Any, *, key: str) -> float:
    ok_int = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    ok_fraction = isinstance(value, float) and 0 <= value < 1
    if not (ok_int or ok_fraction):
        raise InputError(f"{key} values must be steps (integers >= 0) or fractions of the run in [0, 1), got {value!r}")
    return value


def warmup_steps(value: float, steps: int) -> int:
    """A warmup as written (steps, or a fraction of the run) in steps of a `steps`-step run."""
    return int(value) if isinstance(value, int) else round(value * steps)


@dataclass(frozen=True, kw_only=True)
class SearchDefaults:
    """The recipe's `search` section: the published anchor LR, and the bounds, warmups and trial count a sweep takes
    unless its flags say otherwise."""

    anchor_lr: float
    anchor_source: str
    lr_min: float
    lr_max: float
    warmup: WarmupSpec
    anchor_warmup: float | None  # None: the warmup choice closest to the recipe's own warmup fraction
    trials: int
    params: tuple[SweptParam, ...] = ()  # further recipe keys to tune


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str
    path: Path
    text: str  # the YAML as written, stored with the study
    train: TrainConfig
    search: SearchDefaults

    @property
    def digest(self) -> str:
        """Short hash of the recipe text: trials and promoted runs record it to notice a recipe that changed."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]


def run_config(
    recipe: Recipe,
    *,
    lr: float,
    warmup_steps: int,
    steps: int,
    shape: str | None = None,
    min_lr_ratio: float | None = None,
    n_embd: int | None = None,
    seed: int | None = None,
    eval_interval: int | None = None,
    checkpoint_interval: int | None = None,
    values: dict[str, float] | None = None,
) -> TrainConfig:
    """The TrainConfig of one run of `recipe`: peak `lr`, `warmup_steps`, and the schedule (the recipe's `shape`
    unless given) compressed to `steps`, so that it reaches its floor at the run's last step. Every run the sweep
    starts (trial, confirm seed, range test, promote, train) gets its config here; None keeps the recipe's value.
    `n_embd` changes the model's width by `sweep.width.at_width` (--- μP --- the head count and base width stay);
    `values` sets the swept recipe keys (sweep/params.py) a trial ran with."""
    base = apply_values(recipe.train, values or {})
    base = base if n_embd is None else at_width(base, n_embd=n_embd)
    schedule = dataclasses.replace(
        base.schedule,
        max_lr=lr,
        warmup_steps=warmup_steps,
        max_steps=steps,
        decay_steps=None,
        shape=shape or base.schedule.shape,
        min_lr_ratio=base.schedule.min_lr_ratio if min_lr_ratio is None else min_lr_ratio,
    )
    return dataclasses.replace(
        base,
        schedule=schedule,
        eval=base.eval if eval_interval is None else dataclasses.replace(base.eval, interval=eval_interval),
        checkpoint=base.checkpoint if checkpoint_interval is None
        else dataclasses.replace(base.checkpoint, interval=checkpoint_interval),
        seed=base.seed if seed is None else seed,
    )


def study_file(name_or_path: str | Path) -> Path:
    """A study file path, or the name of a shipped study (studies/<name>.yaml)."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return path
    return STUDIES_DIR / f"{name_or_path}.yaml"


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Read and validate a study file (or a shipped study by name); every problem is an InputError that names the
    file and the key."""
    path = study_file(name_or_path)
    if not path.is_file():
        raise InputError(f"study file {path} does not exist (the shipped ones are in studies/: {_shipped()})")
    text = path.read_text()
    try:
        values = parse_recipe_text(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: must be a mapping of sections (model, data, batch, schedule, search, ...)")
    values = dict(values)
    name = values.pop("name", path.stem)
    search_values = values.pop("search", None)
    try:
        train = TrainConfig.from_dict(values)
        search = _parse_search(search_values, train)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    return Recipe(name=str(name), path=path, text=text, train=train, search=search)


def parse_recipe_text(text: str) -> Any:
    """A recipe's YAML as plain values, read as load_recipe reads it (`6e-4` is a float); a yaml.YAMLError if it is
    not YAML. The study keeps the text, and sweep.record reads it back through this."""
    return yaml.load(text, Loader=_Loader)


def _parse_search(values: Any, train: TrainConfig) -> SearchDefaults:
    if not isinstance(values, dict):
        raise InputError("the search section is required: at least search.anchor_lr, the published peak LR")
    unknown = sorted(set(values) - set(SEARCH_KEYS))
    if unknown:
        raise InputError(f"unknown key search.{unknown[0]} (allowed: {', '.join(SEARCH_KEYS)})")
    if "anchor_lr" not in values:
        raise InputError("search.anchor_lr is required: the published peak LR for a model of this size")
    anchor = _positive(values["anchor_lr"], "search.anchor_lr")
    lr_min = _positive(values.get("lr_min", anchor / 4), "search.lr_min")
    lr_max = _positive(values.get("lr_max", anchor * 4), "search.lr_max")
    if lr_min >= lr_max:
        raise InputError(f"search.lr_min must be < search.lr_max, got {lr_min:g} >= {lr_max:g}")
    warmup = WarmupSpec.parse(values.get("warmup", [0.0, 0.05, 0.1]), key="search.warmup")
    anchor_warmup = values.get("anchor_warmup")
    if anchor_warmup is not None:
        anchor_warmup = _warmup_value(anchor_warmup, key="search.anchor_warmup")
    trials = values.get("trials", 8)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise InputError(f"search.trials must be a positive integer, got {trials!r}")
    params = values.get("params", {})
    if not isinstance(params, dict):
        raise InputError(f"search.params must map recipe keys to a range or choices, got {params!r}")
    params = check_params(tuple(SweptParam.parse(v, key=k, where=f"search.params.{k}") for k, v in params.items()),
                          train, source="search.params")
    return SearchDefaults(
        anchor_lr=anchor,
        anchor_source=str(values.get("anchor_source", "")),
        lr_min=lr_min,
        lr_max=lr_max,
        warmup=warmup,
        anchor_warmup=anchor_warmup,
        trials=trials,
        params=params,
    )


def _positive(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{key} must be a number > 0, got {value!r}")
    return float(value)


def _shipped() -> str:
    return ", ".join(sorted(p.name for p in STUDIES_DIR.glob("*.yaml"))) or "none found"


def train_run_config(recipe: Recipe, *, lr: float | None, warmup: int | None, max_steps: int | None) -> TrainConfig:
    """`sweep train`'s run: the recipe's schedule, or the peak LR, warmup and length given; a warmup the recipe names
    is cut to a shorter run's length."""
    sched = recipe.train.schedule
    max_steps = max_steps or sched.max_steps
    warmup = warmup if warmup is not None else min(sched.warmup_steps, max_steps)
    if not 0 <= warmup <= max_steps:
        raise InputError(f"--warmup must be in [0, max steps={max_steps}], got {warmup}")
    return run_config(recipe, lr=lr or sched.max_lr, warmup_steps=warmup, steps=max_steps)


def recipe_note(text: str) -> str:
    """The recipe as a study's note shows it: a YAML block that reads as the file does (a user attr shows one line)."""
    return f"## Recipe\n\n```yaml\n{text.rstrip()}\n```"
