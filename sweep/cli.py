"""The command line: `python -m sweep <command>`.

    python -m sweep lr --steps 300              sweep peak LR x warmup on the default study
    python -m sweep train --study default       one training run, checkpointed, resumed when its folder has one
    python -m sweep prepare SRC... --out DIR    tokenize text into nanoGPT train.bin / val.bin
    python -m sweep sample [RUN_DIR | best]     text from a trained run's checkpoint

Bad input exits 2 with one line; a fault it cannot survive (a damaged or lost storage, a full disk) exits 1 with
one line; --debug shows the traceback instead.
"""

import argparse
import dataclasses
import json
import math
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from sweep.runs import DEFAULT_RUNS_DIR, Runs, sweep_study
from sweep.pruning import GUARD_RULES
from sweep.width import width_list
from train_core.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console

# `python -m sweep --help` does not import torch (seconds): each command imports what it uses.

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) instead of the usage block."""

    def error(self, message: str):
        raise InputError(f"{self.prog}: {message}")


def resolve_study(name_or_path: str) -> Path:
    """A study file path, or the name of a shipped study (studies/<name>.yaml)."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return path
    return STUDIES_DIR / f"{name_or_path}.yaml"


def _int_at_least(minimum: int, *, what: str):
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


_positive_int = _int_at_least(1, what="a positive integer")
_non_negative_int = _int_at_least(0, what="an integer >= 0")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _warmup_list(text: str) -> list:
    values = []
    for part in text.split(","):
        try:
            values.append(int(part) if part.strip().lstrip("-").isdigit() else float(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated steps or fractions like 0,50,100 or 0,0.05,0.1, got {text!r}"
            ) from None
    return values


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions of the run in [0, 1) like 0.25,0.67, got {text!r}")
    return values


def _steps_list(text: str) -> list[int]:
    """Comma-separated positive step counts, e.g. 100,300,1000."""
    return [_positive_int(part) for part in text.split(",")]


def _add_place_flags(parser: argparse.ArgumentParser) -> None:
    """Where studies and runs live: every command that reads or writes them takes these two."""
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR,
                        help=f"folder for trial, promoted and train runs, plots and the default storage (default {DEFAULT_RUNS_DIR}/)")
    parser.add_argument("--storage", help="Optuna storage URL or journal file (default sqlite:///<runs-dir>/sweep.db)")


def _add_range_flags(parser: argparse.ArgumentParser, *, prefix: str) -> None:
    """The LR range test's flags: `range` takes them as --steps/--lr-start/--lr-end, `lr --lr-range auto` with
    --range- in front."""
    parser.add_argument(f"{prefix}steps", dest="range_steps", type=_positive_int, default=100,
                        help="steps of the LR range test's ramp (default 100)")
    parser.add_argument(f"{prefix}lr-start", dest="range_lr_start", type=_positive_float, default=1e-6,
                        help="first LR of the range test (default 1e-6)")
    parser.add_argument(f"{prefix}lr-end", dest="range_lr_end", type=_positive_float, default=1.0,
                        help="last LR of the range test (default 1)")


def _range_test(args, recipe):
    """Run the LR range test the flags describe; its plot goes to the runs folder and onto its trial."""
    from optuna.artifacts import FileSystemArtifactStore

    from sweep.storage import open_storage
    from sweep.trust import run_range_test

    artifacts = args.runs.artifacts(args.storage)
    artifacts.mkdir(parents=True, exist_ok=True)
    plot = args.runs.range_plot(recipe.name)
    result, curve = run_range_test(
        recipe, steps=args.range_steps, lr_start=args.range_lr_start, lr_end=args.range_lr_end,
        storage=open_storage(args.storage), plot=plot, artifact_store=FileSystemArtifactStore(artifacts),
    )
    return result, curve, plot


def _check_range_flags(args, *, prefix: str) -> None:
    if args.range_lr_start >= args.range_lr_end:
        raise InputError(f"{prefix}lr-start must be below {prefix}lr-end, got {args.range_lr_start:g} >= "
                         f"{args.range_lr_end:g}")


def _add_sweep_flags(parser: argparse.ArgumentParser, *, sampler: str) -> None:
    from sweep.pruning import PRUNERS
    from sweep.samplers import SAMPLERS
    from sweep.workers import DEFAULT_MAX_RETRIES

    parser.add_argument("--study", default="default", help="study file, or a name from studies/ (default: default)")
    parser.add_argument("--trials", type=_positive_int,
                        help="finished trials the study should hold (default: the study's; with --sampler grid, the grid)")
    parser.add_argument("--timeout", type=_positive_float, help="stop starting new trials after this many seconds")
    _add_place_flags(parser)
    parser.add_argument("--sampler", default=sampler, help=f"one of {', '.join(SAMPLERS)} (default {sampler})")
    parser.add_argument("--pruner", default="median", help=f"one of {', '.join(PRUNERS)} (default median)")
    parser.add_argument("--guard", choices=GUARD_RULES, default="all",
                        help="stability rules that stop a trial: all (default), or nonfinite only, which keeps "
                        "every curve complete for `sweep audit`")
    parser.add_argument("--grid-points", type=_positive_int, default=5, help="LR points of the grid sampler (default 5)")
    parser.add_argument("--lr-min", type=_positive_float,
                        help="lowest peak LR (default: the recipe's search.lr_min; anchor/4 when it names none)")
    parser.add_argument("--lr-max", type=_positive_float,
                        help="highest peak LR (default: the recipe's search.lr_max, anchor*16 in the default study; "
                        "anchor*4 when it names none)")
    parser.add_argument("--warmup", type=_warmup_list, help="warmup choices: steps (0,50,100) or fractions (0,0.05,0.1)")
    parser.add_argument("--schedule", choices=("cosine", "constant", "wsd"), default="cosine",
                        help="cosine: each trial decays to lr/10 at its last step (default); constant: warmup then flat; "
                        "wsd: flat, then a linear cool-down over the recipe's schedule.cooldown_fraction (default 20%%); a longer "
                        "trial starts from a shorter one's state at the same LR and warmup steps")
    parser.add_argument("--seed", type=int, help="data order and init shared by all trials (default: the study's)")
    parser.add_argument("--ckpt-every", type=_positive_int, default=100, help="trial checkpoint interval in steps")
    parser.add_argument("--workers", type=_positive_int, default=1,
                        help="worker processes on this machine, splitting its cores (needs a journal, PostgreSQL or Redis storage)")
    parser.add_argument("--threads", type=_positive_int, help="torch threads of this process (default: torch's choice)")
    parser.add_argument("--worker-index", type=int,
                        help="this worker's number among several sharing a study (e.g. $SLURM_ARRAY_TASK_ID): varies its proposals")
    parser.add_argument("--heartbeat", type=_positive_float, default=10.0, help="seconds between a running trial's heartbeats")
    parser.add_argument("--grace", type=_positive_float, default=60.0,
                        help="seconds without a heartbeat after which a trial's worker counts as dead and the trial is retried")
    parser.add_argument("--max-retries", type=_non_negative_int, default=DEFAULT_MAX_RETRIES,
                        help="retries of a trial whose worker died or whose storage failed, before it stays FAIL "
                        f"(default {DEFAULT_MAX_RETRIES})")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary")


# What each command does, for its --help (the one-line `help` is what `python -m sweep --help` lists).
_DESCRIPTIONS = {
    "lr": (
        "Sweep the peak LR and warmup of a recipe with short trials (an Optuna study), pruning unstable and "
        "losing trials; the same command continues the study until it holds --trials finished trials."
    ),
    "horizon": (
        "Sweep the same LR grid at several trial lengths, find the best LR at each, fit best lr ∝ tokens^b "
        "and extrapolate it to the full run (stored in <recipe>-horizon for `promote --lr-from horizon`)."
    ),
    "transfer": (
        "μP: sweep the same LR grid at several widths, one study per width, and say whether the best LR holds "
        "across widths (stored in <recipe>-transfer-<parametrization>)."
    ),
    "range": (
        "LR range test (Smith's LR finder): one run whose LR grows geometrically from --lr-start to --lr-end, "
        "stopped once the loss blows up; suggests sweep bounds."
    ),
    "confirm": (
        "Re-run the best settings of a sweep, and its anchor, with more seeds (paired: the same seeds for "
        "every setting) and say which differences stand out of the seed noise."
    ),
    "train": (
        "One training run of a recipe, with checkpoints; running it again resumes from the folder's newest "
        "good checkpoint."
    ),
    "promote": (
        "Run a sweep trial's peak LR, warmup and schedule shape to the recipe's max_steps (or --max-steps), "
        "checkpointed and resumable, and write the result back to the study."
    ),
    "coord-check": (
        "μP's coordinate check: mean |activation| per block vs width over the first steps, under SP and μP "
        "(flat under μP)."
    ),
    "sample": "Text written by a trained run from its newest checkpoint (the promoted best trial by default).",
    "status": "List the studies in a storage, or show one study's trials and promoted runs.",
    "audit": (
        "Replay every pruner and the stability guard over a study run with --pruner none --guard nonfinite: "
        "what each would have saved, and whether it would have stopped the best trial."
    ),
    "repair-journal": "Cut a journal file storage's torn or garbage tail off, keeping a backup of the original.",
    "prepare": (
        "Tokenize text files or folders with GPT-2's BPE into nanoGPT train.bin / val.bin, splitting "
        "documents by a hash of their path."
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sweep", description="Find the peak LR and warmup for a GPT, then run the winner.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    lr = commands.add_parser("lr", help="sweep peak LR x warmup with short trials", description=_DESCRIPTIONS["lr"])
    lr.add_argument("--steps", type=_positive_int, default=300, help="optimizer steps per trial (default 300)")
    lr.add_argument("--lr-range", choices=("study", "auto"), default="study",
                    help="LR bounds from the study (default) or from an LR range test run first (auto; a study that "
                    "exists continues between the bounds it was given)")
    _add_range_flags(lr, prefix="--range-")
    _add_sweep_flags(lr, sampler="tpe")
    lr.add_argument("--study-name", help="default: <study>-<steps>")
    hz = commands.add_parser("horizon", help="sweep at several horizons and extrapolate the best LR to max_steps", description=_DESCRIPTIONS["horizon"])
    hz.add_argument("--steps", type=_steps_list, required=True, help="trial lengths, e.g. 100,300,1000")
    hz.add_argument("--max-steps", type=_positive_int, help="extrapolate to this run length (default: the recipe's max_steps)")
    _add_sweep_flags(hz, sampler="grid")  # the same LRs at every horizon, each curve's bottom between neighbours

    tf = commands.add_parser("transfer", help="μP: sweep the same LR grid at several widths; does the best LR hold?", description=_DESCRIPTIONS["transfer"])
    tf.add_argument("--widths", type=width_list, required=True, help="model widths (n_embd), e.g. 64,128,256")
    tf.add_argument("--steps", type=_positive_int, default=300, help="optimizer steps per trial, every width (default 300)")
    tf.add_argument("--parametrization", choices=("mup", "sp"), help="default: the recipe's model.parametrization")
    _add_sweep_flags(tf, sampler="grid")
    tf.set_defaults(pruner="none")  # every width's whole loss-vs-LR curve is the evidence

    rg = commands.add_parser("range", help="LR range test: one run with an exponentially growing LR", description=_DESCRIPTIONS["range"])
    rg.add_argument("--study", default="default", help="study file, or a name from studies/")
    _add_range_flags(rg, prefix="--")
    _add_place_flags(rg)

    cf = commands.add_parser("confirm", help="re-run the best settings with more seeds: the noise band", description=_DESCRIPTIONS["confirm"])
    cf.add_argument("--study", default="default", help="study file, or a name from studies/")
    cf.add_argument("--steps", type=_positive_int, default=300, help="the sweep's steps per trial, for the default study name")
    _add_place_flags(cf)
    cf.add_argument("--study-name", help="default: <study>-<steps>")
    cf.add_argument("--top", type=_positive_int, default=3, help="settings to re-run, best first (default 3), plus the anchor")
    cf.add_argument("--seeds", type=_positive_int, default=3, help="seeds per setting, the sweep's own included (default 3)")

    tr = commands.add_parser("train", help="one training run with checkpoints; resumes from its folder", description=_DESCRIPTIONS["train"])
    tr.add_argument("--study", default="default", help="study file, or a name from studies/")
    tr.add_argument("--lr", type=_positive_float, help="peak LR (default: the recipe's)")
    tr.add_argument("--warmup", type=int, help="warmup steps (default: the recipe's)")
    tr.add_argument("--max-steps", type=_positive_int, help="steps to run, the cosine horizon too (default: the recipe's)")
    tr.add_argument("--out", type=Path, help="run folder (default <runs-dir>/<study>/train)")
    tr.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help=f"default {DEFAULT_RUNS_DIR}/")

    pr = commands.add_parser("promote", help="run a sweep trial's LR and warmup to the recipe's max_steps", description=_DESCRIPTIONS["promote"])
    pr.add_argument("trial", help="'best' or a trial number")
    pr.add_argument("--study", default="default", help="study file, or a name from studies/ (default: default)")
    pr.add_argument("--steps", type=_positive_int, default=300, help="the sweep's steps per trial, for the default study name")
    _add_place_flags(pr)
    pr.add_argument("--study-name", help="default: <study>-<steps>")
    pr.add_argument("--max-steps", type=_positive_int, help="shorter (or longer) full run; the cosine horizon follows")
    pr.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    pr.add_argument("--force", action="store_true", help="promote even if the recipe changed since the sweep")
    pr.add_argument("--n-embd", type=_positive_int,
                    help="μP: promote at this width (head count fixed); SP moves the LR by the drift `transfer` fitted")
    pr.add_argument("--lr-from", choices=("trial", "horizon"), default="trial",
                    help="peak LR of the trial (default) or extrapolated to max_steps by `sweep horizon`")

    cc = commands.add_parser("coord-check", help="μP's coordinate check: activation scales vs width under SP and μP", description=_DESCRIPTIONS["coord-check"])
    cc.add_argument("--study", default="default", help="study file, or a name from studies/ (default: default)")
    cc.add_argument("--widths", type=width_list, default=[64, 128, 256, 512], help="widths to train (default 64,128,256,512)")
    cc.add_argument("--steps", type=_positive_int, default=10, help="steps at the recipe's peak LR (default 10)")
    cc.add_argument("--out", type=Path, help="plot file (default <runs-dir>/<study>-coord-check.png)")
    cc.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help=f"default {DEFAULT_RUNS_DIR}/")

    sa = commands.add_parser("sample", help="text written by a trained run (the promoted best trial by default)", description=_DESCRIPTIONS["sample"])
    sa.add_argument("run", nargs="?", default="best",
                    help="a run folder, or 'best': the promoted run of the study's best trial (default)")
    sa.add_argument("--study", default="default", help="study file, or a name from studies/ (default: default)")
    sa.add_argument("--steps", type=_positive_int, default=300, help="the sweep's steps per trial, for the default study name")
    _add_place_flags(sa)
    sa.add_argument("--study-name", help="default: <study>-<steps>")
    sa.add_argument("--prompt", default="\n", help="text the samples continue (default: a newline, as nanoGPT)")
    sa.add_argument("--tokens", type=_positive_int, default=200, help="new tokens per sample (default 200)")
    sa.add_argument("--samples", type=_positive_int, default=1, help="samples to write, seeds --seed, --seed + 1, ...")
    sa.add_argument("--temperature", type=_positive_float, default=0.8, help="below 1 sharpens, above 1 flattens (default 0.8)")
    sa.add_argument("--top-k", type=_positive_int, default=200, help="draw among the k most likely tokens (default 200)")
    sa.add_argument("--seed", type=int, default=1337, help="the same seed writes the same text (default 1337)")
    sa.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="default: auto")

    st = commands.add_parser("status", help="studies in a storage, or one study's trials and promoted runs", description=_DESCRIPTIONS["status"])
    _add_place_flags(st)
    st.add_argument("--study-name", help="show this study's trials")

    au = commands.add_parser("audit", help="replay every pruner over a study run with --pruner none --guard nonfinite", description=_DESCRIPTIONS["audit"])
    au.add_argument("--study-name", required=True, help="the audited study")
    _add_place_flags(au)
    au.add_argument("--orders", type=_positive_int, default=20, help="random trial orders replayed (default 20)")
    au.add_argument("--seed", type=int, default=0, help="seed of the orders (default 0)")
    au.add_argument("--band", type=_positive_float, default=0.05,
                    help="seed-noise band in val loss: trials this close to the best count as the best (default 0.05)")
    au.add_argument("--prune-from", type=_fractions, default=None,
                    help="fractions of the run from which pruners compare trials, e.g. 0.25,0.67 (default: the sweep's)")
    au.add_argument("--trials", type=_positive_int, default=None,
                    help="replay sweeps of this many trials (the anchor and a random draw of the others); default all")
    au.add_argument("--markdown", action="store_true", help="print the tables as Markdown")

    rj = commands.add_parser("repair-journal", help="cut a journal file's torn or garbage tail off, keeping a backup", description=_DESCRIPTIONS["repair-journal"])
    rj.add_argument("file", type=Path, help="the journal file (the --storage path)")

    prep = commands.add_parser("prepare", help="tokenize text files or folders into train.bin / val.bin", description=_DESCRIPTIONS["prepare"])
    prep.add_argument("sources", nargs="+", type=Path, help="text files or folders")
    prep.add_argument("--out", type=Path, required=True, help="output folder")
    prep.add_argument("--val-fraction", type=float, default=0.05, help="share of documents for validation")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's SIGTERM ends trials as cleanly as Ctrl-C
    try:
        args = build_parser().parse_args(argv)
        import optuna
        from rich.console import Console

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the view reports trials; Optuna's INFO lines repeat it
        # Logs and CI are not terminals; give their tables room instead of rich's 80-column default.
        console = Console() if sys.stdout.isatty() else Console(width=160)
        args.argv = argv
        if hasattr(args, "runs_dir"):
            args.runs = Runs(args.runs_dir)
        if getattr(args, "storage", "") is None:
            args.storage = args.runs.default_storage()
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _warning_line
            return COMMANDS[args.command](args, console)
    except InputError as error:
        if debug:
            raise
        from sweep.storage import mask

        print(f"error: {mask(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 130
    except Exception as error:
        from sweep.storage import storage_fault

        if debug or (line := storage_fault(error)) is None:
            raise
        print(f"error: {line} (--debug shows the traceback)", file=sys.stderr)
        return 1


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning is one line on stderr, as an error is (a fallback to best.pt, a library's notice); --debug keeps
    Python's form with the source line."""
    from sweep.storage import mask

    print(f"warning: {mask(str(message))}", file=sys.stderr)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _without_workers(argv: list[str]) -> list[str]:
    """The command line for one worker: this one without --workers (and its value) and --debug."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers=") and arg != "--debug":
            out.append(arg)
    return out


def _sweep_plan(args, recipe, *, steps: int, lr_bounds: tuple[float, float] | None = None):
    """The TrialPlan that the sweep flags describe for trials of `steps` steps; checks every flag first."""
    from sweep.branches import BranchStore
    from sweep.pruning import make_pruner
    from sweep.samplers import make_sampler
    from sweep.objective import TrialPlan
    from sweep.recipe import WarmupSpec
    from sweep.storage import kind_of

    lr_min, lr_max = lr_bounds or (None, None)
    plan = TrialPlan.from_flags(
        recipe=recipe,
        steps=steps,
        schedule=args.schedule,
        lr_min=lr_min if args.lr_min is None else args.lr_min,
        lr_max=lr_max if args.lr_max is None else args.lr_max,
        warmup=None if args.warmup is None else WarmupSpec.parse(args.warmup, key="--warmup"),
        seed=args.seed,
        pruner_name=args.pruner,
        study_dir=args.runs.study(_study_name(args, recipe, steps)),
        checkpoint_every=args.ckpt_every,
        branches=BranchStore(args.runs.branches(recipe.name)) if args.schedule == "wsd" else None,
        guard_rules=args.guard,
    )
    make_sampler(args.sampler, seed=0, worker=0, n_startup_trials=1, grid={"lr": [1.0]})  # checks the name
    make_pruner(args.pruner, steps=steps, warmup_steps=0)
    if args.workers > 1 and not kind_of(args.storage).several_writers:
        raise InputError(
            f"--workers {args.workers} with SQLite storage: SQLite locks under several writers; use a journal file "
            "(--storage runs/sweep.log), postgresql://... or redis://..."
        )
    if args.heartbeat >= args.grace:
        raise InputError(f"--heartbeat must be shorter than --grace, got {args.heartbeat:g} >= {args.grace:g}")
    return plan


def _study_name(args, recipe, steps: int) -> str:
    return getattr(args, "study_name", None) or sweep_study(recipe.name, steps)


def _run_sweep(args, console: "Console", plan):
    from sweep.lr import grid_trials, run_sweep, sole_sqlite_writer
    from sweep.view import make_view
    from sweep.workers import Liveness

    trials = args.trials or (
        grid_trials(plan, grid_points=args.grid_points) if args.sampler == "grid" else plan.recipe.search.trials
    )
    with sole_sqlite_writer(args.storage), make_view(console, quiet=args.quiet) as view:
        return run_sweep(
            plan,
            storage_url=args.storage,
            study_name=_study_name(args, plan.recipe, plan.steps),
            trials=trials,
            timeout=args.timeout,
            sampler=args.sampler,
            grid_points=args.grid_points,
            view=view,
            runs=args.runs,
            liveness=Liveness(interval=args.heartbeat, grace=args.grace, max_retries=args.max_retries),
            workers=args.workers,
            worker_argv=_without_workers(args.argv),
            worker_index=args.worker_index,
        )


def _check_fits(args, recipe) -> None:
    """InputError unless the recipe's model fits this machine once per worker sharing a device."""
    from sweep.workers import workers_per_device
    from train_core.memory import check_fits
    from train_core.trainer import resolve_device

    device = resolve_device(recipe.train.device)
    check_fits(recipe.train, device=device, processes=workers_per_device(workers=args.workers, device_type=device.type))


def cmd_lr(args, console: "Console") -> int:
    import torch
    from train_core.trainer import open_data
    from sweep.recipe import load_recipe
    from sweep.report import print_summary
    from sweep.storage import check_reachable, kind_of, open_storage

    recipe = load_recipe(resolve_study(args.study))
    plan = _sweep_plan(args, recipe, steps=args.steps)  # checks the flags before the range test spends time
    _check_range_flags(args, prefix="--range-")
    _check_fits(args, recipe)  # before a study is created
    check_reachable(args.storage)  # before the corpus is tokenized
    open_data(recipe.train.data, vocab_size=recipe.train.model.vocab_size)  # missing or bad token files: exit 2 now
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lr_range == "auto":
        from sweep.lr import stored_lr_bounds

        bounds = stored_lr_bounds(storage=open_storage(args.storage), study_name=_study_name(args, recipe, args.steps))
        if bounds is not None:
            # Checked before any range test runs: the study keeps the bounds it started with.
            plan = _sweep_plan(args, recipe, steps=args.steps, lr_bounds=tuple(bounds))
            console.print(f"lr range: the study exists; it continues between its own bounds {plan.lr_min:.3g} and "
                          f"{plan.lr_max:.3g} (no new range test)", highlight=False)
        else:
            result, _, _ = _range_test(args, recipe)
            plan = _sweep_plan(args, recipe, steps=args.steps, lr_bounds=result.bounds())
            diverged = f"{result.diverged_lr:.3g}" if result.diverged_lr is not None else "-"
            console.print(f"lr range test: steepest at {result.steepest_lr:.3g}, diverged at {diverged}; "
                          f"sweeping {plan.lr_min:.3g} to {plan.lr_max:.3g}", highlight=False)
    outcome = _run_sweep(args, console, plan)
    print_summary(console, outcome.study)
    if outcome.plot:
        console.print(f"loss vs peak lr: {outcome.plot}", highlight=False)
    if kind_of(args.storage).name == "sqlite" and (path := kind_of(args.storage).file(args.storage)) is not None:
        console.print(f"inspect: optuna-dashboard sqlite:///{path} --host 127.0.0.1 --artifact-dir {path.parent / 'artifacts'}",
                      highlight=False)
    if outcome.stopped_by_failures:
        console.print("stopped: the last trials all failed; see fail_reason in the table above", highlight=False)
    for line in outcome.workers:
        console.print(line, highlight=False)
    for lost in outcome.lost_workers:
        console.print(f"{lost}; a trial it left running is retried from its checkpoint by the other workers or by the "
                      "next run of this command", highlight=False)
    return 1 if outcome.stopped_by_failures or outcome.lost_workers else 0


def cmd_horizon(args, console: "Console") -> int:
    import torch

    from sweep.branches import shared_prefix_summary
    from sweep.recipe import load_recipe
    from sweep.storage import check_reachable, open_storage
    from sweep.trust import fit_horizon, save_horizon_plot, store_horizon_fit
    from train_core.trainer import open_data

    recipe = load_recipe(resolve_study(args.study))
    if len(set(args.steps)) < 2:
        raise InputError(f"--steps needs two or more horizons like 100,300,1000, got {args.steps}")
    plans = [_sweep_plan(args, recipe, steps=steps) for steps in sorted(set(args.steps))]
    _check_fits(args, recipe)  # before a study is created
    check_reachable(args.storage)  # before the corpus is tokenized
    open_data(recipe.train.data, vocab_size=recipe.train.model.vocab_size)
    if len({plan.warmups for plan in plans}) > 1:
        console.print("note: the warmup choices are fractions of the run, so every horizon warms up for another number "
                      "of steps, and a short warmup alone can lower (or destabilise) a horizon's best LR; --warmup in "
                      "steps (e.g. --warmup 30) holds it fixed", highlight=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    studies = {plan.steps: _run_sweep(args, console, plan).study for plan in plans}
    target = args.max_steps or recipe.train.schedule.max_steps
    fit = fit_horizon(studies, tokens_per_step=recipe.train.batch.total_batch_size, target_steps=target)
    plot = save_horizon_plot(fit, args.runs.horizon_plot(recipe.name))
    store_horizon_fit(fit, storage=open_storage(args.storage), recipe_name=recipe.name, plot=plot,
                      artifact_dir=args.runs.artifacts(args.storage))
    for steps, lr in fit.points:
        console.print(f"best lr at {steps} steps: {lr:.3g}", highlight=False)
    for steps, lr in fit.at_edge:
        console.print(f"best lr at {steps} steps: {lr:.3g}, an end of the searched range (the bottom lies beyond it): "
                      "left out of the fit; widen --lr-min/--lr-max to include it", highlight=False)
    band = f" (x/÷ {fit.factor:.2f}, one standard error)" if math.isfinite(fit.factor) else ""
    console.print(f"lr ∝ tokens^{fit.exponent:.3f}; extrapolated to {fit.target_steps} steps: {fit.lr:.3g}{band}; "
                  f"plot: {plot}; `promote best --lr-from horizon` uses it", highlight=False)
    if plans[0].branches is not None:
        console.print(shared_prefix_summary(studies.values()), highlight=False)
    return 0


def cmd_transfer(args, console: "Console") -> int:
    import torch
    from train_core.trainer import open_data
    from sweep.recipe import load_recipe
    from sweep.storage import open_storage
    from sweep.transfer import fit_transfer, report_lines, save_transfer_plot, store_transfer, width_recipe

    recipe = load_recipe(resolve_study(args.study))
    parametrization = args.parametrization or recipe.train.model.parametrization
    plans = {w: _sweep_plan(args, width_recipe(recipe, n_embd=w, parametrization=parametrization), steps=args.steps)
             for w in args.widths}
    open_data(recipe.train.data, vocab_size=recipe.train.model.vocab_size)
    if args.threads:
        torch.set_num_threads(args.threads)
    studies = {w: _run_sweep(args, console, plan).study for w, plan in plans.items()}
    fit = fit_transfer(studies, parametrization=parametrization, steps=args.steps)
    name = "μP" if parametrization == "mup" else "SP"
    plot = save_transfer_plot(fit, args.runs.transfer_plot(recipe.name, parametrization),
                              title=f"{recipe.name}, {name}, {args.steps} steps")
    summary = store_transfer(fit, storage=open_storage(args.storage), recipe_name=recipe.name, plot=plot,
                             artifact_dir=args.runs.artifacts(args.storage))
    for line in report_lines(fit):
        console.print(line, highlight=False)
    console.print(f"plot: {plot}; stored in study {summary.study_name}", highlight=False)
    return 0


def cmd_range(args, console: "Console") -> int:
    from sweep.recipe import load_recipe

    recipe = load_recipe(resolve_study(args.study))
    _check_range_flags(args, prefix="--")
    result, curve, plot = _range_test(args, recipe)
    low, high = result.bounds()
    diverged = f"{result.diverged_lr:.3g}" if result.diverged_lr is not None else "not within the range"
    console.print(
        f"lr range test over {len(curve)} steps: loss falls fastest at lr {result.steepest_lr:.3g}, lowest at "
        f"{result.min_loss_lr:.3g}, diverges at {diverged}; suggested sweep bounds --lr-min {low:.3g} --lr-max {high:.3g}",
        highlight=False,
    )
    console.print(f"plot: {plot}", highlight=False)
    return 0


def cmd_confirm(args, console: "Console") -> int:
    from sweep.objective import TrialPlan
    from sweep.recipe import load_recipe
    from sweep.trust import confirm_outlook, confirm_report, run_confirm

    recipe = load_recipe(resolve_study(args.study))
    storage, study = _existing_study(args.storage, _study_name(args, recipe, args.steps))
    plan = TrialPlan.from_study(study, recipe=recipe, study_dir=args.runs.study(study.study_name))
    for line in confirm_outlook(study, seeds=args.seeds):
        console.print(line, highlight=False)
    results = run_confirm(study, plan, top=args.top, seeds=args.seeds, storage=storage, console=console)
    table, verdicts = confirm_report(results)
    console.print(table)
    for line in verdicts:
        console.print(line, highlight=False)
    return 0


def cmd_train(args, console: "Console") -> int:
    from sweep.recipe import load_recipe, run_config
    from train_core.locks import hold_run_folder
    from train_core.trainer import train

    recipe = load_recipe(resolve_study(args.study))
    sched = recipe.train.schedule
    max_steps = args.max_steps or sched.max_steps
    warmup = args.warmup if args.warmup is not None else min(sched.warmup_steps, max_steps)
    if not 0 <= warmup <= max_steps:
        raise InputError(f"--warmup must be in [0, max steps={max_steps}], got {warmup}")
    config = run_config(recipe, lr=args.lr or sched.max_lr, warmup_steps=warmup, steps=max_steps)
    out = args.out or args.runs.train(recipe.name)

    def log(m) -> None:
        if m.val_loss is not None or m.step % 10 == 0:
            val = f" val {m.val_loss:.4f}" if m.val_loss is not None else ""
            console.print(
                f"step {m.step + 1}/{max_steps} loss {m.loss:.4f}{val} lr {m.lr:.3g} norm {m.grad_norm:.2f} "
                f"{m.tokens_per_s:,.0f} tok/s {m.ms_per_step:.0f} ms mfu {m.mfu:.1%}",
                highlight=False,
            )

    with hold_run_folder(out):
        result = train(config, out_dir=out, callback=log)
    val = f"{result.final_val_loss:.4f}" if result.final_val_loss is not None else "-"
    console.print(f"{result.status}: {result.steps_done} steps, val loss {val}, checkpoints in {out}", highlight=False)
    return 0 if result.status == "completed" else 1


def cmd_repair_journal(args, console: "Console") -> int:
    from sweep.storage import repair_journal

    console.print(repair_journal(args.file), highlight=False)
    return 0


def cmd_prepare(args, console: "Console") -> int:
    from train_core.data import prepare

    if not 0 < args.val_fraction < 1:
        raise InputError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    meta = prepare(args.sources, args.out, val_fraction=args.val_fraction)
    console.print(
        f"wrote {meta['train_tokens']:,} train tokens to {args.out / 'train.bin'} and "
        f"{meta['val_tokens']:,} val tokens to {args.out / 'val.bin'}",
        highlight=False,
    )
    return 0


def _existing_study(storage_url: str, study_name: str):
    import optuna
    from sweep.storage import mask, open_storage

    storage = open_storage(storage_url, create=False)
    try:
        return storage, optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
        raise InputError(
            f"no study {study_name} in {mask(storage_url)} (it has: {names or 'none'}); run `python -m sweep lr` first "
            "or pass --study-name"
        ) from None


def cmd_promote(args, console: "Console") -> int:
    from optuna.artifacts import FileSystemArtifactStore

    from sweep.promote import make_plan, pick_trial, run_promote
    from sweep.recipe import load_recipe
    from sweep.trust import horizon_lr

    recipe = load_recipe(resolve_study(args.study))
    storage, study = _existing_study(args.storage, _study_name(args, recipe, args.steps))
    trial = pick_trial(study, args.trial)
    lr = None
    if args.lr_from == "horizon":
        steps = args.max_steps or recipe.train.schedule.max_steps
        lr, band = horizon_lr(storage=storage, recipe=recipe, steps=steps)
        console.print(f"peak lr extrapolated by `sweep horizon` to {steps} steps: {lr:.3g}"
                      + (f" (x/÷ {band:.2f})" if math.isfinite(band) else ""), highlight=False)
    lr_reason = "the lr extrapolated by `sweep horizon`" if lr else "the trial's lr"
    if args.n_embd is not None:  # --- μP ---
        from sweep.transfer import width_lr

        lr, lr_reason = width_lr(storage=storage, study=study, recipe=recipe, lr=lr or float(trial.params["lr"]),
                                 source=lr_reason, n_embd=args.n_embd)
    plan = make_plan(study, trial, recipe, max_steps=args.max_steps, force=args.force, runs=args.runs, lr=lr,
                     lr_reason=lr_reason, n_embd=args.n_embd)
    if args.dry_run:
        console.print(plan.describe(), highlight=False)
        return 0
    folder = args.runs.artifacts(args.storage)
    folder.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(folder)
    return run_promote(plan, storage=storage, console=console, artifact_store=store)


def cmd_coord_check(args, console: "Console") -> int:
    from sweep.coordcheck import coord_table, run_coord_check, save_coord_plot
    from sweep.recipe import load_recipe

    recipe = load_recipe(resolve_study(args.study))
    check = run_coord_check(
        recipe.train, widths=args.widths, steps=args.steps,
        on_run=lambda p, w: console.print(f"coord-check: {p} width {w}, {args.steps} steps", highlight=False),
    )
    plot = save_coord_plot(check, args.out or args.runs.coord_check_plot(recipe.name),
                           title=f"{recipe.name}: mean |activation| vs width, lr {recipe.train.schedule.max_lr:g}")
    plot.with_suffix(".json").write_text(json.dumps(dataclasses.asdict(check)))
    console.print(coord_table(check))
    console.print(f"plot: {plot}; the scales: {plot.with_suffix('.json')}", highlight=False)
    return 0


def cmd_sample(args, console: "Console") -> int:
    from sweep.promote import pick_trial
    from sweep.recipe import load_recipe
    from sweep.sample import Sampling, promoted_run, sample_text

    if args.run == "best":
        recipe = load_recipe(resolve_study(args.study))
        _, study = _existing_study(args.storage, _study_name(args, recipe, args.steps))
        run_dir = promoted_run(study, pick_trial(study, "best"))
    else:
        run_dir = Path(args.run)
    for index in range(args.samples):
        sampling = Sampling(tokens=args.tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed + index)
        text, state = sample_text(run_dir, prompt=args.prompt, sampling=sampling, device_name=args.device)
        console.print(f"--- {run_dir}, step {state['step']}, seed {sampling.seed}", highlight=False)
        console.out(text, highlight=False)
    return 0


def cmd_status(args, console: "Console") -> int:
    from sweep.report import print_summary, studies_table

    if args.study_name:
        storage, study = _existing_study(args.storage, args.study_name)
        print_summary(console, study)
        return 0
    from sweep.storage import open_storage

    console.print(studies_table(open_storage(args.storage, create=False)))
    return 0


def cmd_audit(args, console: "Console") -> int:
    from sweep.audit import print_audit, run_audit

    storage, study = _existing_study(args.storage, args.study_name)
    audit = run_audit(study, storage=storage, artifact_dir=args.runs.artifacts(args.storage), order_count=args.orders,
                      seed=args.seed, band=args.band, trials=args.trials, **({"prune_from": args.prune_from} if args.prune_from else {}))
    print_audit(console, audit, markdown=args.markdown)
    return 0


COMMANDS = {
    "lr": cmd_lr,
    "horizon": cmd_horizon,
    "transfer": cmd_transfer,
    "range": cmd_range,
    "confirm": cmd_confirm,
    "train": cmd_train,
    "promote": cmd_promote,
    "coord-check": cmd_coord_check,
    "sample": cmd_sample,
    "status": cmd_status,
    "audit": cmd_audit,
    "prepare": cmd_prepare,
    "repair-journal": cmd_repair_journal,
}
