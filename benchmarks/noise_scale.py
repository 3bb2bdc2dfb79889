"""What measuring the gradient noise scale costs a trial: ms/step with and without it, in the same run.

    python benchmarks/noise_scale.py [--steps 20] [--device cpu|cuda] [--study default]

The study's model and tokens per step (studies/default.yaml: 4L/4H/64, context 128, 1,024 tokens per step as one
micro-batch of 8) on random-token files, in four recipes:

- one micro-step, noise_scale off: the study as it is (a step of one pass has no second batch size: not measured);
- one micro-step, noise_scale split: the micro-batch run as two halves to measure it;
- two micro-steps, noise_scale off: the same tokens per step, with gradient accumulation;
- two micro-steps, noise_scale on: measured from the first micro-batch and the step.

Each comparison is two fresh runs built by the trainer's setup_run, stepped by its train_step and finish_step (what
train() calls; here each step is read before the next is queued): a recipe and its baseline take their steps in turn,
in the order AB BA AB ..., so that a slow spell of a shared machine hits both alike. After WARMUP_STEPS untimed steps a row shows the median ms/step of --steps steps and the
median of the step-by-step ratios to its baseline. The end-to-end difference of "on" is below this machine's noise,
so the read itself (the first pass's squared gradient norm and the averages' update) is also timed alone.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sweep.recipe import load_recipe
from train_core.config import TrainConfig
from train_core.data import write_nanogpt_bin
from train_core.trainer import (Run, device_label, finish_step, resolve_device, resolve_dtype, setup_run,
                                squared_grad_norm, train_step)

WARMUP_STEPS = 2  # untimed: first-touch allocations, oneDNN kernel selection
READ_REPEATS = 50
RECIPES = {  # name: (micro-steps per step, noise_scale)
    "1 micro-step, off": (1, "off"),
    "1 micro-step, split": (1, "split"),
    "2 micro-steps, off": (2, "off"),
    "2 micro-steps, on": (2, "on"),
}
COMPARISONS = [  # (recipe, baseline)
    ("1 micro-step, split", "1 micro-step, off"),  # measuring the default study by splitting its micro-batch
    ("2 micro-steps, off", "1 micro-step, off"),  # what accumulation itself costs
    ("2 micro-steps, on", "2 micro-steps, off"),  # measuring it where it is free
]


def fresh_run(study: TrainConfig, name: str, *, data_dir: Path, device: str) -> Run:
    """Recipe `name` of RECIPES: the study's model and tokens per step, on the benchmark's token files."""
    micro_steps, noise_scale = RECIPES[name]
    values = study.to_dict()
    tokens = study.batch.total_batch_size
    values.update(
        data={"train": str(data_dir / "train.bin"), "val": str(data_dir / "val.bin"), "corpus": None},
        batch={"total_batch_size": tokens, "micro_batch_size": tokens // study.model.block_size // micro_steps},
        noise_scale=noise_scale,
        device=device,
        peak_flops=1e12,  # skip the machine peak's measurement; MFU is not shown
    )
    config = TrainConfig.from_dict(values)
    assert config.grad_accum_steps(world_size=1) == micro_steps
    return setup_run(config, checkpoints=None, rank=0, world_size=1)


def read_ms(run: Run) -> float:
    """Median ms of the trainer's read after a first pass: squared_grad_norm, waited for, and the averages' update."""
    x, y = run.batches.get(step=0, micro_step=0)
    with run.autocast():
        loss = run.model(x, y) / run.grad_accum
    loss.backward()
    times = []
    for _ in range(READ_REPEATS):
        start = time.perf_counter()
        small_sq_norm = squared_grad_norm(run.raw_model).item()  # waited for, to time it (a step reads it later)
        run.noise_scale.update(small_sq_norm=small_sq_norm * 4, big_sq_norm=small_sq_norm)  # timed, not read
        times.append((time.perf_counter() - start) * 1000)
    run.optimizer.zero_grad(set_to_none=True)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help=f"timed steps per recipe, after {WARMUP_STEPS} warm-up")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--study", default="default", help="a shipped study's name or a study file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    study = load_recipe(args.study)
    device = resolve_device(args.device)
    model = study.train.model
    print(f"{study.name}: {model.n_layer}L/{model.n_head}H/{model.n_embd}, context {model.block_size}, vocab "
          f"{model.vocab_size:,}, {study.train.batch.total_batch_size:,} tokens per step; {device_label(device)}, "
          f"{resolve_dtype(study.train.dtype, device)}, {torch.get_num_threads()} threads", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        rng = np.random.default_rng(0)
        write_nanogpt_bin(data_dir / "train.bin", rng.integers(model.vocab_size, size=200_000))
        write_nanogpt_bin(data_dir / "val.bin", rng.integers(model.vocab_size, size=20_000))
        rows = []
        for recipe, baseline in COMPARISONS:
            runs = {name: fresh_run(study.train, name, data_dir=data_dir, device=args.device)
                    for name in (recipe, baseline)}
            ms: dict[str, list[float]] = {recipe: [], baseline: []}
            for step in range(WARMUP_STEPS + args.steps):
                for name in (runs if step % 2 == 0 else reversed(runs)):
                    taken = finish_step(runs[name], train_step(runs[name], step))  # read at once: timed alone
                    if step >= WARMUP_STEPS:
                        ms[name].append(taken.seconds * 1000)
            ratio = statistics.median(a / b for a, b in zip(ms[recipe], ms[baseline]))
            rows.append((recipe, statistics.median(ms[recipe]), baseline, statistics.median(ms[baseline]), ratio))
            print(f"{recipe} against {baseline}: {ratio:.3f}", flush=True)
        read = read_ms(fresh_run(study.train, "2 micro-steps, on", data_dir=data_dir, device=args.device))

    tokens = study.train.batch.total_batch_size
    print(f"\nmedian of {args.steps} steps per run, after {WARMUP_STEPS} warm-up steps")
    print(f"{'recipe':<21} {'ms/step':>8} {'baseline':<20} {'ms/step':>8}  ratio (median of step-by-step ratios)")
    for recipe, recipe_ms, baseline, baseline_ms, ratio in rows:
        print(f"{recipe:<21} {recipe_ms:>8,.1f} {baseline:<20} {baseline_ms:>8,.1f}  {ratio:.3f}")
    step_ms = next(recipe_ms for recipe, recipe_ms, *_ in rows if recipe == "2 micro-steps, on")
    print(f"the read alone (squared_grad_norm + the averages' update, median of {READ_REPEATS}): {read:.3f} ms, "
          f"{read / step_ms:.2%} of a 2-micro-step step ({step_ms:,.1f} ms); {tokens:,} tokens per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
