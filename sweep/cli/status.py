"""List the studies in a storage, or show one study's trials and promoted runs."""

from sweep.cli.flags import add_place_flags

HELP = "studies in a storage, or one study's trials and promoted runs"


def register(commands) -> None:
    parser = commands.add_parser("status", help=HELP, description=__doc__)
    add_place_flags(parser)
    parser.add_argument("--study-name", help="show this study's trials")
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from sweep.report import print_summary, studies_table
    from sweep.storage import open_storage, open_study

    if args.study_name:
        _, study = open_study(args.storage, args.study_name)
        print_summary(console, study)
    else:
        console.print(studies_table(open_storage(args.storage, create=False)))
    return 0
