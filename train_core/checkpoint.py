"""Checkpoints that survive crashes: atomic writes, keep-last-K, a best copy, and a DONE marker.

On disk, in one folder:
    step-00000200.pt   one per save; the newest keep_last are kept
    best.pt            the state with the lowest validation loss so far
    stable-00001600.pt a WSD run's state where its cool-down starts, which longer runs can start from
    DONE               JSON summary, written when the run finished
A save goes to a temporary name, is fsync'ed, then renamed into place, so a reader sees a whole file or none.
A file that still fails to load (a torn disk, a copy cut short) is skipped with a warning for the one before it, and
best.pt when no step file loads; with none loadable, resuming stops with a FaultError instead of starting over.
"""

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import torch

from train_core.errors import FaultError
from train_core.files import atomic_write, atomic_write_bytes

STEP_FILE = re.compile(r"^step-(\d{8})\.pt$")
STABLE_FILE = re.compile(r"^stable-(\d{8})\.pt$")
BEST_FILE = "best.pt"
DONE_FILE = "DONE"
REQUIRED_KEYS = ("model", "optimizer", "config", "step")


class CheckpointManager:
    """Saves and loads training state dicts in `folder`."""

    def __init__(self, folder: Path, *, keep_last: int = 1):
        # One is enough to resume: saves are atomic (a reader sees a whole file or none), and a newest file that
        # does not load (a disk fault) falls back to best.pt.
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = keep_last

    def save(self, state: dict[str, Any], *, step: int) -> Path:
        """Write state as step-<step>.pt and drop step files beyond the newest keep_last."""
        path = self.folder / f"step-{step:08d}.pt"
        _atomic_save(state, path)
        for old in self.step_files()[: -self.keep_last]:
            old.unlink()
        return path

    def save_best(self, state: dict[str, Any]) -> Path:
        path = self.folder / BEST_FILE
        _atomic_save(state, path)
        return path

    def save_stable(self, state: dict[str, Any], *, step: int) -> Path:
        """The state at a WSD run's cool-down start; kept apart from keep_last, since longer runs branch from it."""
        path = self.folder / f"stable-{step:08d}.pt"
        _atomic_save(state, path)
        return path

    def stable_files(self) -> dict[int, Path]:
        """Stable-phase checkpoints by step."""
        if not self.folder.is_dir():
            return {}
        return {int(m[1]): p for p in self.folder.iterdir() if (m := STABLE_FILE.match(p.name))}

    def adopt(self, source: Path, *, step: int) -> Path:
        """Start this folder from another run's checkpoint taken after `step` steps: the next train() resumes from it
        if the two runs agree on everything up to that step (see trainer.check_resumable)."""
        path = self.folder / f"step-{step:08d}.pt"

        def copy(f: BinaryIO) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 24)

        atomic_write(path, copy)
        return path

    def step_files(self) -> list[Path]:
        """Step checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if STEP_FILE.match(p.name))

    def load_latest(self, *, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest step checkpoint that loads, else best.pt (a whole state too, only older); None when the folder
        holds neither.

        A run that falls back to best.pt because its step checkpoints are unreadable is warned that it does; with
        nothing readable at all, a FaultError: progress is never thrown away without a word by starting from step 0.
        """
        unreadable = []  # (path, error) of the step files that would not load, newest first
        for path in reversed(self.step_files()):
            try:
                state, source = _load_state(path, map_location), path.name
                break
            except Exception as error:  # any unreadable file means: fall back to the previous one
                unreadable.append((path, error))
        else:
            best = self.folder / BEST_FILE
            if not unreadable and not best.exists():
                return None
            try:
                state, source = _load_state(best, map_location), BEST_FILE
            except Exception as error:
                raise FaultError(
                    f"every checkpoint in {self.folder} is unreadable ({_names(unreadable)}; {BEST_FILE}: "
                    f"{'missing' if not best.exists() else error.__class__.__name__}): nothing to resume from; move "
                    "the folder away to start over from step 0"
                ) from None
        if unreadable:  # one warning for the whole fallback: the CLI shows it as one line
            what = (f"every step checkpoint in {self.folder} is unreadable ({_names(unreadable)})" if source == BEST_FILE
                    else "; ".join(f"checkpoint {p} is unreadable ({e.__class__.__name__}: {e})" for p, e in unreadable))
            warnings.warn(f"{what}: resuming from {source} at step {state['step']}", stacklevel=2)
        return state

    def load_best(self, *, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        path = self.folder / BEST_FILE
        return torch.load(path, map_location=map_location, weights_only=True) if path.exists() else None

    def mark_done(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.folder / DONE_FILE, json.dumps(summary, indent=2).encode())

    def done_summary(self) -> dict[str, Any] | None:
        """The DONE marker's summary if the run finished, else None."""
        path = self.folder / DONE_FILE
        return json.loads(path.read_text()) if path.exists() else None


def _names(unreadable: list[tuple[Path, Exception]]) -> str:
    return "; ".join(f"{path.name}: {error.__class__.__name__}" for path, error in unreadable)


def _load_state(path: Path, map_location) -> dict[str, Any]:
    state = torch.load(path, map_location=map_location, weights_only=True)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"missing keys {missing}")
    return state


def _atomic_save(state: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda f: torch.save(state, f))
