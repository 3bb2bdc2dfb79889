"""Training throughput of train_core against a plain nanoGPT-style step, measured in one run on this machine.

    python benchmarks/throughput.py [--steps 8] [--shapes A,B]

First the machine's matmul peak: fp32 at 2048x2048, and bf16 at the largest size whose timing fits a ~2 s budget
(on a CPU without native bf16 it is emulated and hundreds of times slower, so a 2048^2 bf16 matmul alone could
take a minute). Then, for each shape at 2,048 tokens per step and the full GPT-2 vocab:

- train_core: real optimizer steps through `train_core.train` on random-token files, ms/step from its callback;
- plain: the same model, optimizer, batches and dtype, but nanoGPT's loss (full logits, then F.cross_entropy).

Each is the median over --steps steps after warm-up. Achieved GFLOP/s = flops_per_token x tokens/s, shown as a
share of both peaks. Run-to-run noise on a shared 2-core machine is large: compare rows of the same run only.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import rich.box
import rich.console
import rich.table
import torch
import torch.nn.functional as F

from train_core.config import TrainConfig
from train_core.data import TokenData, write_nanogpt_bin
from train_core.model import GPT
from train_core.tokenizer import VOCAB_SIZE
from train_core.trainer import make_optimizer, resolve_dtype, train

TOKENS_PER_STEP = 2048
WARMUP_STEPS = 2  # untimed: first-touch allocations and oneDNN kernel selection
SHAPES = {
    "A": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "batch": 16},
    "B": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "batch": 8},
}
PEAK_SIZE = 2048
BF16_BUDGET_S = 2.0
CPU = torch.device("cpu")


def matmul_gflops(dtype: torch.dtype, n: int, *, budget_s: float) -> float:
    """GFLOP/s of an n x n matmul in dtype: one warm-up, then the fastest of at least 2 reps within budget_s
    (a peak: the fastest rep is the one least disturbed by other processes on a shared machine)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times, start = [], time.perf_counter()
    while len(times) < 2 or time.perf_counter() - start < budget_s:
        rep_start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - rep_start)
    return 2 * n**3 / min(times) / 1e9


def bf16_size(budget_s: float) -> int:
    """The largest power-of-two size up to PEAK_SIZE whose 4 bf16 matmuls (warm-up + 3) fit in budget_s."""
    probe = 256
    gflops = matmul_gflops(torch.bfloat16, probe, budget_s=0.0)
    n = probe
    while n < PEAK_SIZE and 4 * 2 * (2 * n) ** 3 / (gflops * 1e9) <= budget_s:
        n *= 2
    return n


def shape_config(shape: dict, data_dir: Path, steps: int, fp32_peak: float) -> TrainConfig:
    config = TrainConfig.from_dict({
        "model": {k: shape[k] for k in ("n_layer", "n_head", "n_embd", "block_size")} | {"vocab_size": VOCAB_SIZE},
        "data": {"train": str(data_dir / "train.bin"), "val": str(data_dir / "val.bin")},
        "batch": {"total_batch_size": TOKENS_PER_STEP, "micro_batch_size": shape["batch"]},
        "schedule": {"max_lr": 6e-4, "warmup_steps": 0, "max_steps": WARMUP_STEPS + steps},
        "eval": {"interval": WARMUP_STEPS + steps, "iters": 1},  # train() evaluates once at the end; untimed
        "device": "cpu",
        "peak_flops": fp32_peak,  # skip train()'s own peak measurement
    })
    assert config.grad_accum_steps(world_size=1) == 1, "both loops time one micro-step per optimizer step"
    return config


def train_core_ms(config: TrainConfig) -> float:
    """Median ms per optimizer step of train_core.train after the warm-up steps."""
    times = []
    train(config, callback=lambda m: times.append(m.ms_per_step))
    return statistics.median(times[WARMUP_STEPS:])


def plain_ms(config: TrainConfig) -> float:
    """Median ms per step of a nanoGPT-style step: the same model and batches, full logits + F.cross_entropy."""
    dtype = resolve_dtype(config.dtype, CPU)
    torch.manual_seed(config.seed)
    model = GPT(config.model)
    optimizer = make_optimizer(model, config, CPU)
    data = TokenData.open(config.data.train, vocab_size=config.model.vocab_size)
    B, T = config.batch.micro_batch_size, config.model.block_size
    times = []
    for step in range(config.schedule.max_steps):
        start = time.perf_counter()
        x, y = data.get_batch(seed=config.seed, step=step, micro_step=0, rank=0, batch_size=B, block_size=T)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            h = model.hidden_states(x)  # (B, T, C)
            logits = F.linear(h, model.transformer.wte.weight)  # (B, T, V): nanoGPT's tied lm_head
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # train() reads the loss every step too
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[WARMUP_STEPS:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per loop, after %d warm-up steps"
                        % WARMUP_STEPS)
    parser.add_argument("--shapes", default="A,B", help="comma-separated, from: " + ", ".join(SHAPES))
    args = parser.parse_args(argv)
    names = args.shapes.split(",")
    unknown = [n for n in names if n not in SHAPES]
    if unknown or args.steps < 1:
        parser.error(f"--shapes takes names from {', '.join(SHAPES)} (got {args.shapes!r}); --steps must be >= 1")

    console = rich.console.Console()
    console.width = max(console.width, 100)  # piped output defaults to 80 columns and would squeeze the table
    threads = torch.get_num_threads()
    fp32_peak = matmul_gflops(torch.float32, PEAK_SIZE, budget_s=1.0)
    n16 = bf16_size(BF16_BUDGET_S)
    bf16_peak = matmul_gflops(torch.bfloat16, n16, budget_s=BF16_BUDGET_S)
    console.print(f"matmul peak on {threads} threads: fp32 {fp32_peak:,.1f} GFLOP/s ({PEAK_SIZE}^2), "
                  f"bf16 {bf16_peak:,.1f} GFLOP/s ({n16}^2, capped to ~{BF16_BUDGET_S:.0f} s"
                  + (": emulated bf16 is that slow here)" if n16 < PEAK_SIZE else ")"))

    table = rich.table.Table(box=rich.box.SIMPLE, title=f"training throughput, {TOKENS_PER_STEP:,} tokens/step, "
                                   f"median of {args.steps} steps after {WARMUP_STEPS} warm-up")
    for column in ("shape", "loop", "dtype", "ms/step", "tok/s", "GFLOP/s", "%fp32", "%bf16", "speedup"):
        table.add_column(column, justify="left" if column in ("shape", "loop", "dtype") else "right", no_wrap=True)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        rng = np.random.default_rng(0)
        write_nanogpt_bin(data_dir / "train.bin", rng.integers(VOCAB_SIZE, size=200_000))
        write_nanogpt_bin(data_dir / "val.bin", rng.integers(VOCAB_SIZE, size=20_000))
        for name in names:
            shape = SHAPES[name]
            config = shape_config(shape, data_dir, args.steps, fp32_peak * 1e9)
            model = GPT(config.model)
            flops_per_token = model.flops_per_token()
            dtype = {torch.float32: "fp32", torch.bfloat16: "bf16"}[resolve_dtype(config.dtype, CPU)]
            console.print(f"shape {name}: {shape['n_layer']}L/{shape['n_head']}H/{shape['n_embd']}, context "
                          f"{shape['block_size']}, batch {shape['batch']}, vocab {VOCAB_SIZE:,}: "
                          f"{model.num_params() / 1e6:.1f}M params, {flops_per_token / 1e6:.1f} MFLOP/token")
            with console.status(f"timing shape {name}"):
                ms = {"train_core": train_core_ms(config), "plain": plain_ms(config)}
            for loop, step_ms in ms.items():
                tokens_per_s = TOKENS_PER_STEP / (step_ms / 1000)
                gflops = flops_per_token * tokens_per_s / 1e9
                speedup = f"{ms['plain'] / step_ms:.2f}x" if loop == "train_core" else ""
                table.add_row(name if loop == "train_core" else "", loop, dtype, f"{step_ms:,.0f}",
                              f"{tokens_per_s:,.0f}", f"{gflops:,.1f}",
                              f"{100 * gflops / fp32_peak:.0f}%", f"{100 * gflops / bf16_peak:,.0f}%", speedup)
    console.print(table)
    # Other processes on the cores skew every number above; the load average says whether they were there.
    console.print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    console.print("%fp32 / %bf16: achieved GFLOP/s over this run's matmul peak in that dtype; speedup: plain "
                  "ms/step over train_core's; dtype: what train_core's dtype 'auto' resolved to on this machine "
                  "(bfloat16 only where it runs natively)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
