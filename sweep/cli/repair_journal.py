"""Cut a journal file storage's torn or garbage tail off, keeping a backup of the original."""

from pathlib import Path

HELP = "cut a journal file's torn or garbage tail off, keeping a backup"


def register(commands) -> None:
    parser = commands.add_parser("repair-journal", help=HELP, description=__doc__)
    parser.add_argument("file", type=Path, help="the journal file (the --storage path)")
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from sweep.storage import repair_journal

    console.print(repair_journal(args.file), highlight=False)
    return 0
