"""Training throughput of train_core against a plain nanoGPT-style step, measured in one run on this machine.

    python benchmarks/throughput.py [--steps 8] [--shapes A,B] [--compile]
    python benchmarks/throughput.py --device cuda [--shapes 124M,350M] [--compile] [--steps 20]

First the peak FLOP/s the MFU is over, read by the function every training run reads it with
(train_core/peak.py: a known GPU's published dense bf16 peak, else this machine's matmul peak in the dtype the loops
run, kept in $LR_SWEEP_CACHE or ~/.cache/lr-sweep and checked now), so that this MFU and a sweep's or a promoted
run's divide by the same figure. On CUDA also the GPU's matmul peak in that dtype, measured now with the same
matmuls, and each row's share of it ("of matmul"): what this GPU reaches, next to what its maker publishes. Then,
for each shape at its micro-batch of tokens per step (one micro-step per optimizer step) and the full GPT-2 vocab:

- train_core: real optimizer steps through `train_core.train` on random-token files, ms/step from its callback (the
  device's time from the end of the step before: the host reads each step one step late); its loss is the model's
  default `model.loss: auto`: chunked on an eager CPU, full logits on CUDA and compiled;
- plain: the same model, optimizer, batches and dtype, but nanoGPT's loss (full logits, then F.cross_entropy);
  on CUDA with nanoGPT's pinned, non_blocking batch copies. On CUDA both loops now compute the loss the same way.

With --compile each loop also runs compiled (`compile: true`; the plain step under torch.compile), after untimed
warm-up steps that include the compile, with torch.compile's caches off so that each loop compiles from cold, as on a
fresh machine: "compile s" is what the warm-up steps took above the median step (the compile and its autotuning),
"graph breaks" the breaks Dynamo counted while the loop ran. Each row is the median over --steps steps after warm-up.
Achieved FLOP/s = flops_per_token x tokens/s; MFU is its share of the peak, never over 100% (a faster rate raises the
peak, as in a run). Each row is also printed as it is measured, so that a run cut short keeps what it measured.
Run-to-run noise on a shared 2-core machine is large: compare rows of the same run only.
"""

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rich.box
import rich.console
import rich.table
import torch
import torch.nn.functional as F

from train_core import (
    GPT, VOCAB_SIZE, MachinePeak, TokenData, TrainConfig, device_label, make_optimizer, measure_peak_flops,
    resolve_device, resolve_dtype, to_device, train, write_nanogpt_bin,
)

WARMUP_STEPS = 3  # untimed: first-touch allocations, oneDNN kernel selection, torch.compile and autotuning
SHAPES = {  # batch: sequences per step, one micro-step each
    "A": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "batch": 16},
    "B": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "batch": 8},
    "124M": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "batch": 16},  # GPT-2 small, micro 16
    # GPT-2 medium at the 124M's tokens per step: about 23 GiB by train_core/memory.py's estimate, far inside 80 GB
    "350M": {"n_layer": 24, "n_head": 16, "n_embd": 1024, "block_size": 1024, "batch": 16},
}
DEFAULT_SHAPES = {"cpu": "A,B", "cuda": "124M,350M"}


def shape_config(shape: dict, data_dir: Path, steps: int, peak: float, *, device: torch.device,
                 compile: bool = False) -> TrainConfig:
    config = TrainConfig.from_dict({
        "model": {k: shape[k] for k in ("n_layer", "n_head", "n_embd", "block_size")} | {"vocab_size": VOCAB_SIZE},
        "data": {"train": str(data_dir / "train.bin"), "val": str(data_dir / "val.bin")},
        "batch": {"total_batch_size": shape["batch"] * shape["block_size"], "micro_batch_size": shape["batch"]},
        "schedule": {"max_lr": 6e-4, "warmup_steps": 0, "max_steps": WARMUP_STEPS + steps},
        "eval": {"interval": WARMUP_STEPS + steps, "iters": 1},  # train() evaluates once at the end; untimed
        "device": device.type,
        "compile": compile,
        "peak_flops": peak,  # skip train()'s own peak measurement
    })
    assert config.grad_accum_steps(world_size=1) == 1, "both loops time one micro-step per optimizer step"
    return config


@dataclass(frozen=True)
class LoopTiming:
    """One loop's steps: the median ms after warm-up; compiled, also what the warm-up steps took above that median (the
    compile and its autotuning) and the graph breaks Dynamo counted."""

    ms: float
    compile_s: float | None = None
    graph_breaks: int | None = None


def time_loop(loop: str, config: TrainConfig) -> LoopTiming:
    if config.compile:
        torch._dynamo.utils.counters.clear()  # Dynamo's tallies are the process's: from here on, this loop's
    times = train_core_times(config) if loop == "train_core" else plain_times(config)
    ms = statistics.median(times[WARMUP_STEPS:])
    if not config.compile:
        return LoopTiming(ms)
    return LoopTiming(ms, compile_s=sum(t - ms for t in times[:WARMUP_STEPS]) / 1000,
                      graph_breaks=sum(torch._dynamo.utils.counters["graph_break"].values()))


def train_core_times(config: TrainConfig) -> list[float]:
    """ms of each optimizer step of train_core.train, the warm-up steps first."""
    times = []
    train(config, callback=lambda m: times.append(m.ms_per_step))
    return times


def plain_times(config: TrainConfig) -> list[float]:
    """ms of each step of a nanoGPT-style step, the warm-up steps first: the same model and batches, full logits +
    F.cross_entropy."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    torch.manual_seed(config.seed)
    model = GPT(config.model).to(device)
    optimizer = make_optimizer(model, config, device)
    data = TokenData.open(config.data.train, vocab_size=config.model.vocab_size)
    B, T = config.batch.micro_batch_size, config.model.block_size

    def nanogpt_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            h = model.hidden_states(x)  # (B, T, C)
            logits = F.linear(h, model.transformer.wte.weight)  # (B, T, V): nanoGPT's tied lm_head
            return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))

    step_loss = torch.compile(nanogpt_loss) if config.compile else nanogpt_loss
    times = []
    for step in range(config.schedule.max_steps):
        start = time.perf_counter()
        x, y = data.get_batch(seed=config.seed, step=step, micro_step=0, rank=0, batch_size=B, block_size=T)
        x, y = to_device(x, y, device)  # on CUDA pinned and non_blocking, as nanoGPT's get_batch
        loss = step_loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # as nanoGPT's log line: a wait for the GPU, which times the step
        times.append((time.perf_counter() - start) * 1000)
    return times


def measured_cells(timing: LoopTiming, *, shape: dict, flops_per_token: int, peaks: dict[str, MachinePeak],
                   compile_columns: bool) -> dict[str, str]:
    """A loop's figures by column: ms/step, tok/s, GFLOP/s, its share of each peak, and where compiled columns are
    shown its compile seconds and graph breaks (blank for an eager loop)."""
    tokens_per_s = shape["batch"] * shape["block_size"] / (timing.ms / 1000)
    flops = flops_per_token * tokens_per_s
    cells = {"ms/step": f"{timing.ms:,.1f}", "tok/s": f"{tokens_per_s:,.0f}", "GFLOP/s": f"{flops / 1e9:,.1f}"}
    cells |= {column: f"{peak.mfu(flops):.1%}" for column, peak in peaks.items()}
    if compile_columns:
        compiled = timing.compile_s is not None
        cells |= {"compile s": f"{timing.compile_s:,.1f}" if compiled else "",
                  "graph breaks": str(timing.graph_breaks) if compiled else ""}
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per loop, after %d warm-up steps"
                        % WARMUP_STEPS)
    parser.add_argument("--shapes", help="comma-separated, from: " + ", ".join(SHAPES)
                        + " (default: " + "; ".join(f"{d}: {s}" for d, s in DEFAULT_SHAPES.items()) + ")")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time both loops compiled")
    args = parser.parse_args(argv)
    names = (args.shapes or DEFAULT_SHAPES[args.device]).split(",")
    unknown = [n for n in names if n not in SHAPES]
    if unknown or args.steps < 1:
        parser.error(f"--shapes takes names from {', '.join(SHAPES)} (got {args.shapes!r}); --steps must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    device = resolve_device(args.device)

    console = rich.console.Console()
    console.width = max(console.width, 150)  # piped output defaults to 80 columns and would squeeze the table
    dtype = resolve_dtype("auto", device)  # what train_core's default runs in, and so both loops here
    dtype_label = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    peaks = {"MFU": MachinePeak.load(device, dtype)}
    if device.type == "cuda":  # the published peak MFU is over is the maker's; this one is this GPU's, in this run
        peaks["of matmul"] = MachinePeak("measured now", measure_peak_flops(device, dtype),
                                         source=f"this GPU's {dtype_label} matmul peak, measured now")
    for column, peak in peaks.items():
        console.print(f"{column} over {peak.describe()}", highlight=False)
    table = rich.table.Table(box=rich.box.SIMPLE, title=f"training throughput on {device_label(device)}, "
                                                         f"median of {args.steps} steps after {WARMUP_STEPS} warm-up")
    columns = ["shape", "loop", "dtype", "tokens/step", "ms/step", "tok/s", "GFLOP/s", *peaks, "speedup"]
    columns += ["compile s", "graph breaks"] if args.compile else []
    for column in columns:
        table.add_column(column, justify="left" if column in ("shape", "loop", "dtype") else "right", no_wrap=True)
    loops = [("train_core", False), ("plain", False)] + ([("train_core", True), ("plain", True)] if args.compile else [])
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        rng = np.random.default_rng(0)
        write_nanogpt_bin(data_dir / "train.bin", rng.integers(VOCAB_SIZE, size=200_000))
        write_nanogpt_bin(data_dir / "val.bin", rng.integers(VOCAB_SIZE, size=20_000))
        for name in names:
            shape = SHAPES[name]
            model = GPT(shape_config(shape, data_dir, args.steps, 1.0, device=device).model)
            flops_per_token = model.flops_per_token()
            console.print(f"shape {name}: {shape['n_layer']}L/{shape['n_head']}H/{shape['n_embd']}, context "
                          f"{shape['block_size']}, batch {shape['batch']}, vocab {VOCAB_SIZE:,}: "
                          f"{model.num_params() / 1e6:.1f}M params, {flops_per_token / 1e6:.1f} MFLOP/token")
            del model
            timings = {}
            for loop, compiled in loops:
                label = loop + (" compiled" if compiled else "")
                config = shape_config(shape, data_dir, args.steps, peaks["MFU"].flops, device=device,
                                      compile=compiled)
                start = time.perf_counter()
                # A compiled loop compiles from cold, as on a fresh machine (no cache of the loop before).
                cold = torch.compiler.config.patch(force_disable_caches=True) if compiled else contextlib.nullcontext()
                with console.status(f"timing shape {name}: {label}"), cold:
                    try:
                        timings[label] = time_loop(loop, config)
                    except Exception as error:  # e.g. torch.compile without a working compiler: report, go on
                        failures.append(f"shape {name}, {label}: {type(error).__name__}: {str(error).strip()[:300]}")
                if label in timings:  # printed as it comes, so that a run cut short still shows what it measured
                    cells = measured_cells(timings[label], shape=shape, flops_per_token=flops_per_token, peaks=peaks,
                                           compile_columns=compiled)
                    console.print(f"  {label}: " + ", ".join(f"{column} {cell}" for column, cell in cells.items())
                                  + f"; {time.perf_counter() - start:.0f}s with warm-up", highlight=False)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            for label, timing in timings.items():
                baseline = "plain compiled" if label.endswith("compiled") else "plain"
                speedup = (f"{timings[baseline].ms / timing.ms:.2f}x"
                           if label.startswith("train_core") and baseline in timings else "")
                cells = measured_cells(timing, shape=shape, flops_per_token=flops_per_token, peaks=peaks,
                                       compile_columns=args.compile) | {"speedup": speedup}
                table.add_row(name if label == next(iter(timings)) else "", label, dtype_label,
                              f"{shape['batch'] * shape['block_size']:,}", *(cells[c] for c in columns[4:]))
    console.print(table)
    for failure in failures:
        console.print(f"failed: {failure}", highlight=False)
    if device.type == "cpu":
        # Other processes on the cores skew every number above; the load average says whether they were there.
        console.print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    console.print(f"MFU: achieved FLOP/s over {peaks['MFU'].describe()}; speedup: plain ms/step over train_core's "
                  "(compiled over compiled); dtype: what train_core's dtype 'auto' resolved to on this machine "
                  "(bfloat16 only where it runs natively); torch " + torch.__version__, highlight=False)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
