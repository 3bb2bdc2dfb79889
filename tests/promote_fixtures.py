"""Helpers for the promote and dashboard tests: a learnable token stream, a tiny recipe, a finished sweep to copy.

The model is one layer of width 16 over a 64-token vocabulary. Its tokens follow a noisy rule (the next id is
3 x id + 1 mod 64, or a uniform draw one time in five), so the loss falls from ln(64) = 4.16 to about 2.6 in 30
steps, and a 30-step full run takes about a second on one core. A step is 512 tokens: 4 micro-batches of 8 x 16 on
one process, 2 on each of two (torchrun).
"""

import contextlib
import csv
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from sweep.cli import main
from sweep_fixtures import tiny_recipe
from sweep.storage import open_storage
from train_core.checkpoint import STEP_FILE
from train_core.data import write_nanogpt_bin

VOCAB = 64
SWEEP_STEPS = 10  # steps per sweep trial: the study is tiny-10 (the `<study>-<steps>` rule)
STUDY = f"tiny-{SWEEP_STEPS}"
MAX_STEPS = 30  # the recipe's full run
EVAL_EVERY = 10
CKPT_EVERY = 5
MICRO, BLOCK = 8, 16
TOKENS_PER_STEP = 2 * MICRO * BLOCK * 2  # grad accumulation 4 on one process, 2 on each of two
STORAGE = "sqlite:///runs/sweep.db"  # the CLI's default, relative to the working directory
THREADS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same thread count in every run: bitwise equal losses


def write_tokens(folder: Path, *, tokens: int = 40_000, val_tokens: int = 4_000) -> tuple[Path, Path]:
    """train.bin and val.bin (nanoGPT format) of the noisy rule above."""
    rng = np.random.default_rng(0)
    noise, draws = rng.random(tokens) < 0.2, rng.integers(VOCAB, size=tokens)
    ids = np.empty(tokens, dtype=np.int64)
    ids[0] = 0
    for i in range(1, tokens):
        ids[i] = draws[i] if noise[i] else (3 * ids[i - 1] + 1) % VOCAB
    folder.mkdir(parents=True, exist_ok=True)
    train, val = folder / "train.bin", folder / "val.bin"
    write_nanogpt_bin(train, ids[:-val_tokens])
    write_nanogpt_bin(val, ids[-val_tokens:])
    return train, val


def recipe_values(data: tuple[Path, Path], **search) -> dict:
    """The tiny recipe (sweep_fixtures.tiny_recipe) with a 64-token vocab and a 30-step full run; `search` overrides
    keys of its search section."""
    return tiny_recipe(
        data,
        vocab=VOCAB,
        name="tiny",
        batch={"total_batch_size": TOKENS_PER_STEP, "micro_batch_size": MICRO},
        schedule={"max_steps": MAX_STEPS},
        eval={"interval": EVAL_EVERY},
        checkpoint={"interval": CKPT_EVERY, "keep_last": 2},
        seed=3,
        dtype="float32",
        device="cpu",
        search={"anchor_lr": 1e-2, "lr_min": 3e-3, "lr_max": 3e-2, "warmup": [0, 2], "trials": 3} | search,
    )


def write_recipe(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@contextlib.contextmanager
def working_dir(folder: Path):
    """chdir into folder for the block (runs/ and the default storage are relative to it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        yield


def run_sweep(*args: str) -> int:
    """`python -m sweep lr` on tiny.yaml in this process (random sampler, no pruner: every trial completes)."""
    return main(["lr", "--study", "tiny.yaml", "--steps", str(SWEEP_STEPS), "--sampler", "random", "--pruner", "none",
                 "-q", *args])


def promote_args(*args: str) -> list[str]:
    return ["promote", *args, "--study", "tiny.yaml", "--steps", str(SWEEP_STEPS)]


def promote_command(*args: str) -> list[str]:
    """`python -m sweep promote ...` as a subprocess command line, with this interpreter."""
    return [sys.executable, "-m", "sweep", *promote_args(*args)]


def subprocess_env() -> dict[str, str]:
    return os.environ | THREADS_ENV


def copy_sweep(source: Path, dest: Path) -> Path:
    """A copy of a finished sweep's folder (recipe, SQLite storage, artifacts): its own study to promote into."""
    shutil.copytree(source, dest, dirs_exist_ok=True)
    return dest


def load(folder: Path, name: str = STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{folder}/runs/sweep.db", create=False))


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def step_checkpoints(run_dir: Path) -> list[int]:
    """Steps of the complete step checkpoints in run_dir, oldest first."""
    if not run_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in run_dir.iterdir() if (m := STEP_FILE.match(p.name)))


def wait_until(condition, *, timeout: float, what: str, every: float = 0.02) -> None:
    """Poll condition() until it is true; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    poll = threading.Event()  # never set: its timed waits pace the polling
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        poll.wait(every)
