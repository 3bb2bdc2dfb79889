"""Text written by a trained run from its newest checkpoint (the promoted best trial by default)."""

from pathlib import Path

from sweep.cli.flags import add_study_flag, add_study_name_flags, positive_float, positive_int

HELP = "text written by a trained run (the promoted best trial by default)"


def register(commands) -> None:
    parser = commands.add_parser("sample", help=HELP, description=__doc__)
    parser.add_argument("run", nargs="?", default="best",
                        help="a run folder, or 'best': the promoted run of the study's best trial (default)")
    add_study_flag(parser)
    add_study_name_flags(parser)
    parser.add_argument("--prompt", default="\n", help="text the samples continue (default: a newline, as nanoGPT)")
    parser.add_argument("--tokens", type=positive_int, default=200, help="new tokens per sample (default 200)")
    parser.add_argument("--samples", type=positive_int, default=1, help="samples to write, seeds --seed, --seed + 1, ...")
    parser.add_argument("--temperature", type=positive_float, default=0.8,
                        help="below 1 sharpens, above 1 flattens (default 0.8)")
    parser.add_argument("--top-k", type=positive_int, default=200, help="draw among the k most likely tokens (default 200)")
    parser.add_argument("--seed", type=int, default=1337, help="the same seed writes the same text (default 1337)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="default: auto")
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from sweep.sample import Sampling, best_promoted_run, sample_text

    run_dir = Path(args.run) if args.run != "best" else best_promoted_run(
        study=args.study, study_name=args.study_name, steps=args.steps, storage_url=args.storage)
    for index in range(args.samples):
        sampling = Sampling(tokens=args.tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed + index)
        text, state = sample_text(run_dir, prompt=args.prompt, sampling=sampling, device_name=args.device)
        console.print(f"--- {run_dir}, step {state['step']}, seed {sampling.seed}", highlight=False)
        console.out(text, highlight=False)
    return 0
