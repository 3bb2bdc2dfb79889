"""LR range test (Smith's LR finder): one run whose LR grows geometrically from --lr-start to --lr-end, stopped once
the loss blows up; suggests sweep bounds."""

from sweep.cli.flags import add_place_flags, add_range_flags, add_study_flag, check_range_flags

HELP = "LR range test: one run with an exponentially growing LR"


def register(commands) -> None:
    parser = commands.add_parser("range", help=HELP, description=__doc__)
    add_study_flag(parser)
    add_range_flags(parser, prefix="--")
    add_place_flags(parser)
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from sweep.range_test import range_test
    from sweep.recipe import load_recipe

    recipe = load_recipe(args.study)
    check_range_flags(args, prefix="--")
    result, curve, plot = range_test(recipe, steps=args.range_steps, lr_start=args.range_lr_start,
                                     lr_end=args.range_lr_end, storage_url=args.storage, runs=args.runs)
    low, high = result.bounds()
    diverged = f"{result.diverged_lr:.3g}" if result.diverged_lr is not None else "not within the range"
    console.print(
        f"lr range test over {len(curve)} steps: loss falls fastest at lr {result.steepest_lr:.3g}, lowest at "
        f"{result.min_loss_lr:.3g}, diverges at {diverged}; suggested sweep bounds --lr-min {low:.3g} --lr-max {high:.3g}",
        highlight=False,
    )
    console.print(f"plot: {plot}", highlight=False)
    return 0
