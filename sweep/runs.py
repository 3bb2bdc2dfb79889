"""Study names and the folders runs write to, in one place.

    runs/                          --runs-dir (default runs/, relative to the working directory)
      <study>/trial-N/             a sweep trial's checkpoints while it runs, its loss curve after
      <study>/promote-N/           the full run of trial N (checkpoints, metrics.csv)
      <recipe>/train/              `sweep train`
      <recipe>-branches/           WSD stable-phase states shared between horizons
      <recipe>-horizon.png         the horizon fit's plot
      <recipe>-range.png           the LR range test's plot
      <recipe>-coord-check.png     μP's coordinate check
      <recipe>-batch.png           the best LR against the batch size (studies <recipe>-b<tokens>-<steps>)
      <recipe>-transfer-<p>.png    μP: the LR-transfer figure of parametrization p (studies <recipe>-<p>-w<width>-<steps>)
      sweep.db                     the default storage
      artifacts/, <study>-lr.png   artifacts and plots of a storage that is a server (PostgreSQL, Redis); next to a
                                   SQLite or journal file otherwise

A study name is data (it may come from --study-name or a storage someone else filled): it names a folder only
through `folder_name`, which keeps plain names as they are and maps any other name to a safe one inside the runs
folder. The study itself keeps the real name.
"""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sweep.storage.kinds import kind_of

DEFAULT_RUNS_DIR = Path("runs")
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sweep_study(recipe_name: str, steps: int) -> str:
    """The default name of a sweep of `steps`-step trials of a recipe."""
    return f"{recipe_name}-{steps}"


def horizon_study(recipe_name: str) -> str:
    """The study that holds a recipe's horizon fit."""
    return f"{recipe_name}-horizon"


def range_study(recipe_name: str) -> str:
    """The study that holds a recipe's LR range tests, one trial each."""
    return f"{recipe_name}-range"


def confirm_study(study_name: str) -> str:
    """The study that holds the seed re-runs of a sweep's top settings."""
    return f"{study_name}-confirm"


def promoted_study(study_name: str) -> str:
    """The study that holds a sweep's promoted full runs, one trial each."""
    return f"{study_name}-promoted"


def transfer_study(recipe_name: str, parametrization: str) -> str:
    """--- μP --- The study that holds a recipe's LR-transfer fit across widths under one parametrization."""
    return f"{recipe_name}-transfer-{parametrization}"


def width_recipe_name(recipe_name: str, parametrization: str, n_embd: int) -> str:
    """--- μP --- The recipe at another width, as `transfer` sweeps it: its studies are <this>-<steps>."""
    return f"{recipe_name}-{parametrization}-w{n_embd}"


def batch_study(recipe_name: str) -> str:
    """The study that holds a recipe's fit of the best LR against the batch size."""
    return f"{recipe_name}-batch"


def batch_recipe_name(recipe_name: str, tokens: int) -> str:
    """The recipe at another batch, as `batch` sweeps it: its studies are <this>-<steps>."""
    return f"{recipe_name}-b{tokens}"


def folder_name(name: str) -> str:
    """A name that is safe as one folder: `name` itself when it is plain (letters, digits, '.', '_', '-', at most 64,
    not starting with a dot), else its plain characters cut to 40 and a hash of the whole name, so that two names
    never share a folder and none can reach outside its parent (`../x`, `/abs`, 300 characters)."""
    if _PLAIN.fullmatch(name):
        return name
    slug = _UNSAFE.sub("-", name).strip("-._")[:40].rstrip("-._")
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{slug or 'study'}-{digest}"


@dataclass(frozen=True)
class Runs:
    """The runs folder (--runs-dir) and the path of everything inside it."""

    root: Path = DEFAULT_RUNS_DIR

    def study(self, study_name: str) -> Path:
        """A study's folder: its trials' and promoted runs' folders."""
        return self.root / folder_name(study_name)

    def branches(self, recipe_name: str) -> Path:
        return self.root / folder_name(f"{recipe_name}-branches")

    def train(self, recipe_name: str) -> Path:
        return self.root / folder_name(recipe_name) / "train"

    def horizon_plot(self, recipe_name: str) -> Path:
        return self.root / f"{folder_name(horizon_study(recipe_name))}.png"

    def range_plot(self, recipe_name: str) -> Path:
        return self.root / f"{folder_name(range_study(recipe_name))}.png"

    def coord_check_plot(self, recipe_name: str) -> Path:
        return self.root / f"{folder_name(recipe_name)}-coord-check.png"

    def transfer_plot(self, recipe_name: str, parametrization: str) -> Path:
        return self.root / f"{folder_name(transfer_study(recipe_name, parametrization))}.png"

    def batch_plot(self, recipe_name: str) -> Path:
        return self.root / f"{folder_name(batch_study(recipe_name))}.png"

    def default_storage(self) -> str:
        return f"sqlite:///{self.root / 'sweep.db'}"

    def artifacts(self, storage_url: str) -> Path:
        """Artifacts (curves, plots) of the studies in a storage, for optuna-dashboard's --artifact-dir."""
        return self._beside(storage_url) / "artifacts"

    def lr_plot(self, storage_url: str, study_name: str) -> Path:
        return self._beside(storage_url) / f"{folder_name(study_name)}-lr.png"

    def _beside(self, storage_url: str) -> Path:
        """The folder of a SQLite or journal file storage; the runs folder for a server."""
        return kind_of(storage_url).artifact_root(storage_url, runs_root=self.root)
