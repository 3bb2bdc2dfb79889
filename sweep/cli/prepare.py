"""Tokenize text files or folders with GPT-2's BPE into nanoGPT train.bin / val.bin, splitting documents by a hash of
their path."""

from pathlib import Path

HELP = "tokenize text files or folders into train.bin / val.bin"


def register(commands) -> None:
    parser = commands.add_parser("prepare", help=HELP, description=__doc__)
    parser.add_argument("sources", nargs="+", type=Path, help="text files or folders")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share of documents for validation")
    parser.set_defaults(handler=run)


def run(args, console) -> int:
    from train_core import InputError, prepare

    if not 0 < args.val_fraction < 1:
        raise InputError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    meta = prepare(args.sources, args.out, val_fraction=args.val_fraction)
    console.print(
        f"wrote {meta['train_tokens']:,} train tokens to {args.out / 'train.bin'} and "
        f"{meta['val_tokens']:,} val tokens to {args.out / 'val.bin'}",
        highlight=False,
    )
    return 0
