"""Re-run the best settings of a sweep, and its anchor, with more seeds (paired: the same seeds for every setting) and
say which differences stand out of the seed noise."""

from sweep.cli.flags import add_study_flag, add_study_name_flags, positive_int

HELP = "re-run the best settings with more seeds: the noise band"


def register(commands) -> None:
    parser = commands.add_parser("confirm", help=HELP, description=__doc__)
    add_study_flag(parser)
    add_study_name_flags(parser)
    parser.add_argument("--top", type=positive_int, default=3,
                        help="settings to re-run, best first (default 3), plus the anchor")
    parser.add_argument("--seeds", type=positive_int, default=3,
                        help="seeds per setting, the sweep's own included (default 3)")
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from sweep.plan import TrialPlan
    from sweep.recipe import load_recipe
    from sweep.runs import sweep_study
    from sweep.storage import open_study
    from sweep.trust import confirm_outlook, confirm_report, run_confirm

    recipe = load_recipe(args.study)
    storage, study = open_study(args.storage, args.study_name or sweep_study(recipe.name, args.steps))
    plan = TrialPlan.from_study(study, recipe=recipe, study_dir=args.runs.study(study.study_name))
    for line in confirm_outlook(study, seeds=args.seeds):
        console.print(line, highlight=False)
    results = run_confirm(study, plan, top=args.top, seeds=args.seeds, storage=storage, console=console)
    table, verdicts = confirm_report(results)
    console.print(table)
    for line in verdicts:
        console.print(line, highlight=False)
    return 0
