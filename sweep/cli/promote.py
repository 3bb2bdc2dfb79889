"""Run a sweep trial's peak LR, warmup and schedule shape to the recipe's max_steps (or --max-steps), checkpointed and
resumable, and write the result back to the study."""

from sweep.cli.flags import add_study_flag, add_study_name_flags, positive_int

HELP = "run a sweep trial's LR and warmup to the recipe's max_steps"


def register(commands) -> None:
    parser = commands.add_parser("promote", help=HELP, description=__doc__)
    parser.add_argument("trial", help="'best' or a trial number")
    add_study_flag(parser)
    add_study_name_flags(parser)
    parser.add_argument("--max-steps", type=positive_int, help="shorter (or longer) full run; the cosine horizon follows")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--force", action="store_true", help="promote even if the recipe changed since the sweep")
    parser.add_argument("--n-embd", type=positive_int,
                        help="μP: promote at this width (head count fixed); SP moves the LR by the drift `transfer` fitted")
    parser.add_argument("--batch-tokens", type=positive_int,
                        help="run at this many tokens a step, for the full run's tokens; the LR moves along `sweep batch`'s "
                        "fit, or by the square-root rule when there is none")
    parser.add_argument("--lr-from", choices=("trial", "horizon"), default="trial",
                        help="peak LR of the trial (default) or extrapolated to max_steps by `sweep horizon`")
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from optuna.artifacts import FileSystemArtifactStore

    from sweep.promote import make_plan, peak_lr, pick_trial, run_promote
    from sweep.recipe import load_recipe
    from sweep.runs import sweep_study
    from sweep.storage import open_study
    from train_core import check_run_folder

    recipe = load_recipe(args.study)
    storage, study = open_study(args.storage, args.study_name or sweep_study(recipe.name, args.steps))
    trial = pick_trial(study, args.trial)
    lr, lr_reason, lines = peak_lr(storage=storage, study=study, trial=trial, recipe=recipe, lr_from=args.lr_from,
                                   max_steps=args.max_steps, n_embd=args.n_embd, batch_tokens=args.batch_tokens)
    for line in lines:
        console.print(line, highlight=False)
    plan = make_plan(study, trial, recipe, max_steps=args.max_steps, force=args.force, runs=args.runs, lr=lr,
                     lr_reason=lr_reason, n_embd=args.n_embd, batch_tokens=args.batch_tokens)
    check_run_folder(plan.run_dir, name=f"run folder {plan.run_dir}")
    if args.dry_run:
        console.print(plan.describe(), highlight=False)
        return 0
    folder = args.runs.artifacts(args.storage)
    folder.mkdir(parents=True, exist_ok=True)
    return run_promote(plan, storage=storage, console=console, artifact_store=FileSystemArtifactStore(folder))
