"""Argument types and the flag groups several commands share; SweepSettings made from the sweep flags.

Light on purpose: `python -m sweep --help` builds every parser and must not import torch or Optuna.
"""

import argparse
import math
from pathlib import Path

from sweep.pruning import GUARD_RULES, PRUNERS
from sweep.params import SWEEPABLE
from sweep.runs import DEFAULT_RUNS_DIR
from sweep.samplers import SAMPLERS
from train_core import SHAPES, InputError, sweep_shapes


def int_at_least(minimum: int, *, what: str):
    """An argparse type: an integer >= minimum, refused with a message naming what is allowed."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    return parse


positive_int = int_at_least(1, what="a positive integer")
non_negative_int = int_at_least(0, what="an integer >= 0")


def stack_count(text: str) -> int | str:
    """--stack: a positive count, or auto."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of trials or auto, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def warmup_list(text: str) -> list:
    values = []
    for part in text.split(","):
        try:
            values.append(int(part) if part.strip().lstrip("-").isdigit() else float(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated steps or fractions like 0,50,100 or 0,0.05,0.1, got {text!r}"
            ) from None
    return values


def fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions of the run in [0, 1) like 0.25,0.67, got {text!r}")
    return values


def steps_list(text: str) -> list[int]:
    """Comma-separated positive step counts, e.g. 100,300,1000."""
    return [positive_int(part) for part in text.split(",")]


def int_list(*, what: str, example: str):
    """An argparse type: two or more distinct positive integers, comma-separated (sorted), e.g. widths or batch sizes."""

    def parse(text: str) -> list[int]:
        try:
            values = sorted({int(part) for part in text.split(",")})
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be comma-separated {what} like {example}, got {text!r}") from None
        if len(values) < 2 or values[0] < 1:
            raise argparse.ArgumentTypeError(f"must be two or more positive {what} like {example}, got {text!r}")
        return values

    return parse


width_list = int_list(what="widths", example="64,128,256")


def add_study_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", default="default", help="study file, or a name from studies/ (default: default)")


def add_runs_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR,
                        help=f"folder for trial, promoted and train runs, plots and the default storage (default {DEFAULT_RUNS_DIR}/)")


def add_place_flags(parser: argparse.ArgumentParser) -> None:
    """Where studies and runs live: every command that reads or writes them takes these two."""
    add_runs_dir_flag(parser)
    parser.add_argument("--storage", help="Optuna storage URL or journal file (default sqlite:///<runs-dir>/sweep.db)")


def add_study_name_flags(parser: argparse.ArgumentParser) -> None:
    """The sweep study a command reads: --study-name, or <study>-<steps>."""
    parser.add_argument("--steps", type=positive_int, default=300, help="the sweep's steps per trial, for the default study name")
    add_place_flags(parser)
    parser.add_argument("--study-name", help="default: <study>-<steps>")


def add_range_flags(parser: argparse.ArgumentParser, *, prefix: str) -> None:
    """The LR range test's flags: `range` takes them as --steps/--lr-start/--lr-end, `lr --lr-range auto` with
    --range- in front."""
    parser.add_argument(f"{prefix}steps", dest="range_steps", type=positive_int, default=100,
                        help="steps of the LR range test's ramp (default 100)")
    parser.add_argument(f"{prefix}lr-start", dest="range_lr_start", type=positive_float, default=1e-6,
                        help="first LR of the range test (default 1e-6)")
    parser.add_argument(f"{prefix}lr-end", dest="range_lr_end", type=positive_float, default=1.0,
                        help="last LR of the range test (default 1)")


def check_range_flags(args, *, prefix: str) -> None:
    if args.range_lr_start >= args.range_lr_end:
        raise InputError(f"{prefix}lr-start must be below {prefix}lr-end, got {args.range_lr_start:g} >= "
                         f"{args.range_lr_end:g}")


def add_sweep_flags(parser: argparse.ArgumentParser, *, sampler: str, pruner: str = "median") -> None:
    """The flags every sweep command takes. The commands that fit a curve to a grid (horizon, transfer, batch) prune
    nothing by default: a pruned trial has no final loss, and a grid of 5 with 3 pruned leaves its curve's bottom at a
    grid point (the parabola needs the winner's neighbours)."""
    from sweep.workers import DEFAULT_MAX_RETRIES

    add_study_flag(parser)
    parser.add_argument("--trials", type=positive_int,
                        help="finished trials the study should hold (default: the study's; with --sampler grid, the grid)")
    parser.add_argument("--timeout", type=positive_float, help="stop starting new trials after this many seconds")
    add_place_flags(parser)
    parser.add_argument("--sampler", default=sampler, help=f"one of {', '.join(SAMPLERS)} (default {sampler})")
    parser.add_argument("--pruner", default=pruner, help=f"one of {', '.join(PRUNERS)} (default {pruner}; the stability "
                        "guard stops unstable trials under any)")
    parser.add_argument("--guard", choices=GUARD_RULES, default="all",
                        help="stability rules that stop a trial: all (default), or nonfinite only, which keeps "
                        "every curve complete for `sweep audit`")
    parser.add_argument("--grid-points", type=positive_int, default=5, help="LR points of the grid sampler (default 5)")
    parser.add_argument("--lr-min", type=positive_float,
                        help="lowest peak LR (default: the recipe's search.lr_min; anchor/4 when it names none)")
    parser.add_argument("--lr-max", type=positive_float,
                        help="highest peak LR (default: the recipe's search.lr_max, anchor*16 in the default study; "
                        "anchor*4 when it names none)")
    parser.add_argument("--warmup", type=warmup_list, help="warmup choices: steps (0,50,100) or fractions (0,0.05,0.1)")
    parser.add_argument("--param", action="append", metavar="KEY=LOW:HIGH[:log]|KEY=A,B,..",
                        help="a further recipe key to tune, repeatable, replacing the recipe's search.params: "
                        f"{', '.join(SWEEPABLE)} (e.g. model.mup_output_alpha=1:16:log, optimizer.beta2=0.95,0.99)")
    parser.add_argument("--schedule", choices=sweep_shapes(), default=sweep_shapes()[0],
                        help="; ".join(f"{name}: {SHAPES[name].description}" for name in sweep_shapes())
                        + f" (default {sweep_shapes()[0]})")
    parser.add_argument("--seed", type=int, help="data order and init shared by all trials (default: the study's)")
    parser.add_argument("--ckpt-every", type=positive_int, default=100, help="trial checkpoint interval in steps")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="worker processes on this machine, splitting its cores (needs a journal, PostgreSQL or Redis storage)")
    parser.add_argument("--stack", type=stack_count, default=1,
                        help="trials each worker trains at once as one stacked model (same batches, one pass for all): "
                        "a count, or auto: as many as fit the device's memory (default 1)")
    parser.add_argument("--threads", type=positive_int, help="torch threads of this process (default: torch's choice)")
    parser.add_argument("--worker-index", type=int,
                        help="this worker's number among several sharing a study (e.g. $SLURM_ARRAY_TASK_ID): varies its proposals")
    parser.add_argument("--heartbeat", type=positive_float, default=10.0, help="seconds between a running trial's heartbeats")
    parser.add_argument("--grace", type=positive_float, default=60.0,
                        help="seconds without a heartbeat after which a trial's worker counts as dead and the trial is retried")
    parser.add_argument("--max-retries", type=non_negative_int, default=DEFAULT_MAX_RETRIES,
                        help="retries of a trial whose worker died or whose storage failed, before it stays FAIL "
                        f"(default {DEFAULT_MAX_RETRIES})")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary")


def sweep_settings(args):
    """The sweep flags as SweepSettings (which checks how they go together)."""
    from sweep.settings import SweepSettings, without_workers
    from sweep.workers import Liveness

    return SweepSettings(
        storage_url=args.storage, runs=args.runs, study_name=getattr(args, "study_name", None), sampler=args.sampler,
        pruner=args.pruner, guard_rules=args.guard, grid_points=args.grid_points, lr_min=args.lr_min,
        lr_max=args.lr_max, warmup=args.warmup, params=args.param, schedule=args.schedule, seed=args.seed,
        checkpoint_every=args.ckpt_every, trials=args.trials, timeout=args.timeout, workers=args.workers,
        stack=args.stack, threads=args.threads, worker_index=args.worker_index, worker_argv=without_workers(args.argv),
        liveness=Liveness(interval=args.heartbeat, grace=args.grace, max_retries=args.max_retries), quiet=args.quiet,
    )


def run_sweep_in_view(settings, console, plan):
    """One sweep of `plan`, shown live (or plainly with --quiet); SQLite takes one sweep at a time."""
    from sweep.lr import run_sweep, sole_sqlite_writer
    from sweep.view import make_view

    with sole_sqlite_writer(settings.storage_url), make_view(console, quiet=settings.quiet) as view:
        return run_sweep(plan, settings=settings, view=view)
