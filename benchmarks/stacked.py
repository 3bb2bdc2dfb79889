"""Stacked trials against one trial at a time: trials/hour of the same sweep, measured in one run on this machine.

    python benchmarks/stacked.py [--study default] [--stacks 1,4] [--trials 8] [--steps 20] [--threads 2]

Each stack size sweeps the same study (`sweep lr`, in this process, a fresh journal file each, pruning off so that
every trial runs all its steps, random sampler) with `--stack K`; the first size is the baseline every other is
compared with. trials/hour over the whole command (study creation and the plot included); the ratio is against the
baseline of this run. The embedded corpus is prepared before the clock starts. Other processes on the machine skew
every number: compare rows of the same run only.
"""

import argparse
import tempfile
import time
from pathlib import Path

import rich.box
import rich.console
import rich.table
import torch

from sweep.cli import main as sweep_main
from sweep.recipe import load_recipe
from train_core import open_data


def sweep_seconds(*, study: str, stack: int, trials: int, steps: int, threads: int, folder: Path) -> float:
    started = time.perf_counter()
    code = sweep_main(["lr", "--study", study, "--steps", str(steps), "--trials", str(trials), "--sampler", "random",
                       "--pruner", "none", "--storage", str(folder / f"stack-{stack}.log"), "--runs-dir",
                       str(folder / f"runs-{stack}"), "--threads", str(threads), "--stack", str(stack), "-q"])
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the sweep with --stack {stack} exited {code}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="default")
    parser.add_argument("--stacks", default="1,4", help="stack sizes, the first the baseline (default 1,4)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    stacks = [int(s) for s in args.stacks.split(",")]
    recipe = load_recipe(args.study)
    open_data(recipe.train.data, vocab_size=recipe.train.model.vocab_size)  # prepares the corpus off the clock
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stack in stacks:
            seconds = sweep_seconds(study=args.study, stack=stack, trials=args.trials, steps=args.steps,
                                    threads=args.threads, folder=Path(tmp))
            rows.append((stack, seconds, args.trials * 3600 / seconds))
    table = rich.table.Table(box=rich.box.SIMPLE, title=f"{args.study}: {args.trials} trials of {args.steps} steps, "
                             f"{args.threads} torch threads, {torch.get_num_threads()} now")
    for column in ("stack", "trials", "wall s", "trials/hour", f"x stack {stacks[0]}"):
        table.add_column(column, justify="right")
    for stack, seconds, per_hour in rows:
        table.add_row(str(stack), str(args.trials), f"{seconds:.1f}", f"{per_hour:,.0f}", f"{per_hour / rows[0][2]:.2f}")
    rich.console.Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
