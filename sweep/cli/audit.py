"""Replay every pruner and the stability guard over a study run with --pruner none --guard nonfinite: what each would
have saved, and whether it would have stopped the best trial."""

from sweep.cli.flags import add_place_flags, fractions, positive_float, positive_int

HELP = "replay every pruner over a study run with --pruner none --guard nonfinite"


def register(commands) -> None:
    parser = commands.add_parser("audit", help=HELP, description=__doc__)
    parser.add_argument("--study-name", required=True, help="the audited study")
    add_place_flags(parser)
    parser.add_argument("--orders", type=positive_int, default=20, help="random trial orders replayed (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the orders (default 0)")
    parser.add_argument("--band", type=positive_float, default=0.05,
                        help="seed-noise band in val loss: trials this close to the best count as the best (default 0.05)")
    parser.add_argument("--prune-from", type=fractions, default=None,
                        help="fractions of the run from which pruners compare trials, e.g. 0.25,0.67 (default: the sweep's)")
    parser.add_argument("--trials", type=positive_int, default=None,
                        help="replay sweeps of this many trials (the anchor and a random draw of the others); default all")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from sweep.audit import print_audit, run_audit
    from sweep.storage import open_study

    storage, study = open_study(args.storage, args.study_name)
    audit = run_audit(study, storage=storage, artifact_dir=args.runs.artifacts(args.storage), order_count=args.orders,
                      seed=args.seed, band=args.band, trials=args.trials,
                      **({"prune_from": args.prune_from} if args.prune_from else {}))
    print_audit(console, audit, markdown=args.markdown)
    return 0
