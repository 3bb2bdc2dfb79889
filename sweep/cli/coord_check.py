"""μP's coordinate check: mean |activation| per block vs width over the first steps, under SP and μP (flat under μP)."""

from pathlib import Path

from sweep.cli.flags import add_runs_dir_flag, add_study_flag, positive_int, width_list

HELP = "μP's coordinate check: activation scales vs width under SP and μP"


def register(commands) -> None:
    parser = commands.add_parser("coord-check", help=HELP, description=__doc__)
    add_study_flag(parser)
    parser.add_argument("--widths", type=width_list, default=[64, 128, 256, 512],
                        help="widths to train (default 64,128,256,512)")
    parser.add_argument("--steps", type=positive_int, default=10, help="steps at the recipe's peak LR (default 10)")
    parser.add_argument("--out", type=Path, help="plot file (default <runs-dir>/<study>-coord-check.png)")
    add_runs_dir_flag(parser)
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from sweep.coordcheck import coord_table, run_and_save
    from sweep.recipe import load_recipe
    from sweep.targets import check_coord_check_out

    recipe = load_recipe(args.study)
    out = args.out or args.runs.coord_check_plot(recipe.name)
    check_coord_check_out(out, name=f"--out {out}" if args.out else f"plot {out}")
    check, plot, scales = run_and_save(
        recipe, widths=args.widths, steps=args.steps, out=out,
        on_run=lambda p, w: console.print(f"coord-check: {p} width {w}, {args.steps} steps", highlight=False),
    )
    console.print(coord_table(check))
    console.print(f"plot: {plot}; the scales: {scales}", highlight=False)
    return 0
