"""Sweep the same LR grid at several batch sizes for the same tokens per trial: each batch's best LR, the fit of best
LR against batch, the loss at equal tokens (where a bigger batch stops paying) and the measured noise scale (stored in
<recipe>-batch for `promote --batch-tokens`)."""

from sweep.cli.flags import add_sweep_flags, int_list, positive_float, positive_int, run_sweep_in_view, sweep_settings

HELP = "sweep the same LR grid at several batch sizes; how does the best LR move?"
batch_list = int_list(what="batch sizes", example="1024,2048,4096")


def register(commands) -> None:
    parser = commands.add_parser("batch", help=HELP, description=__doc__)
    parser.add_argument("--batch-tokens", type=batch_list, required=True,
                        help="tokens per optimizer step, e.g. 1024,2048,4096,8192 (multiples of micro-batch x context)")
    parser.add_argument("--steps", type=positive_int, default=300,
                        help="a trial's length in steps of the recipe's batch: every batch sees these tokens (default 300)")
    parser.add_argument("--band", type=positive_float, default=0.05,
                        help="val loss within which two batches count as equally good (default 0.05, the seed noise)")
    add_sweep_flags(parser, sampler="grid", pruner="none")  # every batch's whole loss-vs-LR curve is the evidence
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from sweep.batch import batch_plans, fit_and_store
    from sweep.recipe import load_recipe

    recipe = load_recipe(args.study)
    settings = sweep_settings(args)
    plans = batch_plans(settings, recipe, batch_tokens=args.batch_tokens, steps=args.steps)
    settings.ready(plans[max(plans)].recipe)
    studies = {tokens: run_sweep_in_view(settings, console, plan).study for tokens, plan in plans.items()}
    trial_tokens = args.steps * recipe.train.batch.total_batch_size
    for line in fit_and_store(studies, settings=settings, recipe=recipe, trial_tokens=trial_tokens, band=args.band):
        console.print(line, highlight=False)
    return 0
