"""The chunked loss's chunk size: forward and backward of `chunked_cross_entropy` at several row counts per chunk,
against the full-logits loss (nanoGPT's `F.cross_entropy(h @ W.T)`) measured in the same run.

    python benchmarks/chunked_loss.py [--widths 64,128,256,384,768] [--rows 2048] [--reps 6]

For each width C (hidden size) and dtype (bf16 autocast where the CPU runs it natively, and fp32): random hidden
states (rows, C), a (50,304, C) tied weight and targets; each variant's median ms over --reps repetitions, taken in
turn (A B C ... A B C ...) so that a slow spell of a shared machine hits all alike, and its ratio to the full-logits
loss. A star marks `default_chunk_rows(C)`, the size the model uses.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from train_core import resolve_dtype
from train_core.model import GPTConfig, chunked_cross_entropy, default_chunk_rows

VOCAB = GPTConfig().padded_vocab_size  # GPT-2's 50,257 tokens, padded as the model pads its embedding
CHUNK_ROWS = (128, 256, 512, 1024)


def time_losses(*, width: int, rows: int, dtype: torch.dtype, reps: int) -> dict[str, float]:
    """Median ms of each variant's forward and backward, variants interleaved."""
    g = torch.Generator().manual_seed(width)
    hidden = torch.randn(rows, width, generator=g, requires_grad=True)
    weight = (0.02 * torch.randn(VOCAB, width, generator=g)).requires_grad_()
    targets = torch.randint(VOCAB, (rows,), generator=g)
    variants = {"full": lambda: F.cross_entropy((hidden @ weight.T).float(), targets)}
    variants |= {str(n): (lambda n=n: chunked_cross_entropy(hidden, weight, targets, chunk_rows=n)) for n in CHUNK_ROWS}
    times = {name: [] for name in variants}
    for rep in range(reps + 1):  # the first round is untimed: first-touch allocations, oneDNN kernel selection
        for name, loss in variants.items():
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                value = loss()
            torch.autograd.grad(value, (hidden, weight))
            if rep:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(ms) for name, ms in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="64,128,256,384,768")
    parser.add_argument("--rows", type=int, default=2048, help="rows of the loss: tokens per micro-batch")
    parser.add_argument("--reps", type=int, default=6)
    args = parser.parse_args(argv)
    dtypes = [torch.float32] + ([torch.bfloat16] if resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16 else [])
    print(f"ms of forward + backward, {args.rows} rows x {VOCAB} vocab, median of {args.reps}; "
          f"(x: over the full-logits loss); chunk rows {', '.join(map(str, CHUNK_ROWS))}; * the default")
    for width in map(int, args.widths.split(",")):
        for dtype in dtypes:
            ms = time_losses(width=width, rows=args.rows, dtype=dtype, reps=args.reps)
            default = default_chunk_rows(width)
            cells = [f"{n}{'*' if n == default else ''}: {ms[str(n)]:,.0f} (x{ms[str(n)] / ms['full']:.2f})"
                     for n in CHUNK_ROWS]
            print(f"C={width:<4} {str(dtype).removeprefix('torch.'):<8} full {ms['full']:,.0f}  " + "  ".join(cells),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
