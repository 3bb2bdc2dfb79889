"""μP: sweep the same LR grid at several widths, one study per width, and say whether the best LR holds across widths
(stored in <recipe>-transfer-<parametrization>)."""

from sweep.cli.flags import add_sweep_flags, positive_int, run_sweep_in_view, sweep_settings, width_list

HELP = "μP: sweep the same LR grid at several widths; does the best LR hold?"


def register(commands) -> None:
    parser = commands.add_parser("transfer", help=HELP, description=__doc__)
    parser.add_argument("--widths", type=width_list, required=True, help="model widths (n_embd), e.g. 64,128,256")
    parser.add_argument("--steps", type=positive_int, default=300,
                        help="optimizer steps per trial, every width (default 300)")
    parser.add_argument("--parametrization", choices=("mup", "sp"), help="default: the recipe's model.parametrization")
    parser.add_argument("--tuned-from", metavar="STUDY",
                        help="a `sweep lr` study of the proxy that swept further recipe keys (--param): every width "
                        "trains with its best trial's values")
    add_sweep_flags(parser, sampler="grid", pruner="none")  # every width's whole loss-vs-LR curve is the evidence
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from sweep.recipe import load_recipe
    from sweep.transfer import fit_and_store, tuned_values, width_plans

    recipe = load_recipe(args.study)
    parametrization = args.parametrization or recipe.train.model.parametrization
    settings = sweep_settings(args)
    tuned = {}
    if args.tuned_from:
        tuned, line = tuned_values(storage_url=settings.storage_url, study_name=args.tuned_from,
                                   parametrization=parametrization)
        console.print(line, highlight=False)
    plans = width_plans(settings, recipe, widths=args.widths, parametrization=parametrization, steps=args.steps,
                        tuned=tuned)
    settings.ready(plans[max(plans)].recipe)  # the widest model must fit
    studies = {width: run_sweep_in_view(settings, console, plan).study for width, plan in plans.items()}
    for line in fit_and_store(studies, settings=settings, recipe=recipe, parametrization=parametrization,
                              steps=args.steps):
        console.print(line, highlight=False)
    return 0
