"""Sweep overhead: wall time of a whole `sweep lr` against the time its trials spent training.

    python benchmarks/sweep_overhead.py [--steps 60] [--trials 4] [--storage sqlite|journal]

Runs a real sweep of the default study (pruning off, so every trial runs the same steps) in a temporary folder and
prints three times:
    sweep wall        the whole command: study set-up, sampler, trials, plot, summary
    trial wall        sum over trials of the train() call (model build, steps, eval, checkpoints, reporting)
    training steps    sum over trials of the optimizer steps alone (train_core's train_seconds)
Overhead of the orchestrator = 1 - trial wall / sweep wall; of everything around the steps = 1 - steps / sweep wall.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import optuna

from sweep.cli import main
from sweep.record import TrialAttr

ROOT = Path(__file__).resolve().parent.parent


def run(steps: int, trials: int, storage: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        data = ROOT / "data"
        if data.is_dir():  # reuse the prepared corpus instead of timing its tokenization
            shutil.copytree(data, Path(tmp) / "data")
        url = "sqlite:///runs/bench.db" if storage == "sqlite" else "runs/bench.log"
        start = time.perf_counter()
        code = main(["lr", "--steps", str(steps), "--trials", str(trials), "--pruner", "none", "--storage", url, "-q"])
        wall = time.perf_counter() - start
        assert code == 0, f"sweep failed with exit code {code}"
        study = optuna.load_study(study_name=f"default-{steps}", storage=url if storage == "sqlite" else
                                  optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url)))
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        trial_wall = sum(t.user_attrs[TrialAttr.WALL_S] for t in done)
        step_time = sum(t.user_attrs[TrialAttr.TRAIN_S] for t in done)
        print(f"storage {storage}: {len(done)} trials x {steps} steps")
        print(f"  sweep wall      {wall:8.1f} s")
        print(f"  trial wall      {trial_wall:8.1f} s   orchestrator overhead {1 - trial_wall / wall:6.2%}")
        print(f"  training steps  {step_time:8.1f} s   all overhead around the steps {1 - step_time / wall:6.2%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--storage", choices=("sqlite", "journal"), default="sqlite")
    args = parser.parse_args()
    run(args.steps, args.trials, args.storage)
