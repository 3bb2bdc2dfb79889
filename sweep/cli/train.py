"""One training run of a recipe, with checkpoints; running it again resumes from the folder's newest good checkpoint."""

from pathlib import Path

from sweep.cli.flags import add_runs_dir_flag, add_study_flag, positive_float, positive_int

HELP = "one training run with checkpoints; resumes from its folder"


def register(commands) -> None:
    parser = commands.add_parser("train", help=HELP, description=__doc__)
    add_study_flag(parser)
    parser.add_argument("--lr", type=positive_float, help="peak LR (default: the recipe's)")
    parser.add_argument("--warmup", type=int, help="warmup steps (default: the recipe's)")
    parser.add_argument("--max-steps", type=positive_int,
                        help="steps to run, the cosine horizon too (default: the recipe's)")
    parser.add_argument("--out", type=Path, help="run folder (default <runs-dir>/<study>/train)")
    add_runs_dir_flag(parser)
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from sweep.recipe import load_recipe, train_run_config
    from train_core import check_run_folder, hold_run_folder, train

    recipe = load_recipe(args.study)
    config = train_run_config(recipe, lr=args.lr, warmup=args.warmup, max_steps=args.max_steps)
    out = args.out or args.runs.train(recipe.name)
    check_run_folder(out, name=f"--out {out}" if args.out else f"run folder {out}")
    max_steps = config.schedule.max_steps

    def log(m) -> None:
        if m.val_loss is not None or m.step % 10 == 0:
            val = f" val {m.val_loss:.4f}" if m.val_loss is not None else ""
            console.print(
                f"step {m.step + 1}/{max_steps} loss {m.loss:.4f}{val} lr {m.lr:.3g} norm {m.grad_norm:.2f} "
                f"{m.tokens_per_s:,.0f} tok/s {m.ms_per_step:.0f} ms mfu {m.mfu:.1%}",
                highlight=False,
            )

    with hold_run_folder(out):
        result = train(config, out_dir=out, callback=log)
    val = f"{result.final_val_loss:.4f}" if result.final_val_loss is not None else "-"
    console.print(f"{result.status}: {result.steps_done} steps, val loss {val}, checkpoints in {out}", highlight=False)
    console.print(f"mfu {result.mfu:.1%} of {result.peak}", highlight=False)
    return 0 if result.status == "completed" else 1
