"""Sweep the peak LR and warmup of a recipe with short trials (an Optuna study), pruning unstable and losing trials;
the same command continues the study until it holds --trials finished trials."""

from sweep.cli.flags import add_range_flags, add_sweep_flags, check_range_flags, positive_int, run_sweep_in_view, sweep_settings

HELP = "sweep peak LR x warmup with short trials"


def register(commands) -> None:
    parser = commands.add_parser("lr", help=HELP, description=__doc__)
    parser.add_argument("--steps", type=positive_int, default=300, help="optimizer steps per trial (default 300)")
    parser.add_argument("--lr-range", choices=("study", "auto"), default="study",
                        help="LR bounds from the study (default) or from an LR range test run first (auto; a study that "
                        "exists continues between the bounds it was given)")
    add_range_flags(parser, prefix="--range-")
    add_sweep_flags(parser, sampler="tpe")
    parser.add_argument("--study-name", help="default: <study>-<steps>")
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from sweep.recipe import load_recipe
    from sweep.report import print_summary
    from sweep.range_test import plan_from_range_test

    recipe = load_recipe(args.study)
    settings = sweep_settings(args)
    plan = settings.plan(recipe, steps=args.steps)  # checks the flags before the range test spends time
    check_range_flags(args, prefix="--range-")
    settings.ready(recipe)
    if args.lr_range == "auto":
        plan, line = plan_from_range_test(settings, recipe, steps=args.steps, ramp_steps=args.range_steps,
                                          lr_start=args.range_lr_start, lr_end=args.range_lr_end)
        console.print(line, highlight=False)
    outcome = run_sweep_in_view(settings, console, plan)
    print_summary(console, outcome.study)
    for line in outcome.report_lines():
        console.print(line, highlight=False)
    return 1 if outcome.stopped_by_failures or outcome.lost_workers else 0
