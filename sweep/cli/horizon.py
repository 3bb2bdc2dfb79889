"""Sweep the same LR grid at several trial lengths, find the best LR at each, fit best lr ∝ tokens^b and extrapolate it
to the full run (stored in <recipe>-horizon for `promote --lr-from horizon`)."""

from sweep.cli.flags import add_sweep_flags, positive_int, run_sweep_in_view, steps_list, sweep_settings

HELP = "sweep at several horizons and extrapolate the best LR to max_steps"


def register(commands) -> None:
    parser = commands.add_parser("horizon", help=HELP, description=__doc__)
    parser.add_argument("--steps", type=steps_list, required=True, help="trial lengths, e.g. 100,300,1000")
    parser.add_argument("--max-steps", type=positive_int,
                        help="extrapolate to this run length (default: the recipe's max_steps)")
    add_sweep_flags(parser, sampler="grid", pruner="none")  # the same LRs at every horizon, each curve's bottom between neighbours
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from sweep.horizon import fit_and_store, horizon_plans
    from sweep.recipe import load_recipe

    recipe = load_recipe(args.study)
    settings = sweep_settings(args)
    plans, notes = horizon_plans(settings, recipe, steps=args.steps)
    settings.ready(recipe)
    for line in notes:
        console.print(line, highlight=False)
    studies = {plan.steps: run_sweep_in_view(settings, console, plan).study for plan in plans}
    for line in fit_and_store(studies, settings=settings, recipe=recipe, max_steps=args.max_steps):
        console.print(line, highlight=False)
    return 0
