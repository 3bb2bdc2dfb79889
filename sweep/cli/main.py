"""The command line: `python -m sweep <command>`, one module per command in this package.

    python -m sweep lr --steps 300              sweep peak LR x warmup on the default study
    python -m sweep promote best                run the winner to the recipe's max_steps, checkpointed
    python -m sweep train --study default       one training run, checkpointed, resumed when its folder has one
    python -m sweep prepare SRC... --out DIR    tokenize text into nanoGPT train.bin / val.bin

Each command module registers its parser (`register`) and a handler (`run`) that parses and prints; the work and its
rules live in the modules the handler calls. Bad input exits 2 with one line; a fault it cannot survive (a damaged or
lost storage, a full disk) exits 1 with one line; --debug shows the traceback instead.
"""

import argparse
import signal
import sys
import warnings

from sweep.cli import (
    audit,
    batch,
    confirm,
    coord_check,
    horizon,
    lr,
    prepare,
    lr_range,
    promote,
    repair_journal,
    sample,
    status,
    train,
    transfer,
)
from sweep.runs import Runs
from sweep.targets import check_command_targets
from train_core import InputError

# In the order `python -m sweep --help` lists them. Each imports what its handler uses only when it runs, so that
# `--help` does not import torch (seconds).
COMMANDS = {
    "lr": lr, "horizon": horizon, "transfer": transfer, "batch": batch, "range": lr_range, "confirm": confirm,
    "train": train, "promote": promote, "coord-check": coord_check, "sample": sample, "status": status, "audit": audit,
    "repair-journal": repair_journal, "prepare": prepare,
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) instead of the usage block."""

    def error(self, message: str):
        raise InputError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sweep", description="Find the peak LR and warmup for a GPT, then run the winner.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS.values():
        command.register(commands)
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
        check_command_targets(args)  # a path flag naming something else is refused before any work
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _warning_line
            return args.handler(args, console)
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
