"""Opening a billion-token shard set, and how soon a sweep on it trains; measured in one run on this machine.

    python benchmarks/data_scale.py [--tokens 1e9] [--shard-tokens 1e8] [--code DIR]

Writes a synthetic GPT-2 shard set to a temporary folder (llm.c uint16 shards of --shard-tokens random ids below
50257, FineWeb's layout: `bench_train_NNNNNN.bin` and one `bench_val_000000.bin` of a tenth of a shard), then runs,
each in a fresh process with the code in --code (default: this checkout; pass an older checkout to compare):

1. first open: `TokenData.open` of the train glob right after writing it (no check recorded yet);
2. second open: the same again in a new process;
3. `python -m sweep lr` on the shards (a tiny GPT, one trial of 2 steps): seconds from its start to the first
   trial step (its first progress line), and to its exit.

Each row gives the process's peak RSS. The shards were just written, so they are in the page cache: these are warm
opens; a cold first open also waits for the disk. The folder is deleted at the end. Other processes on the machine
skew the timings: compare rows of one run, or runs made back to back.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rich.console
import rich.table
import yaml

from train_core import VOCAB_SIZE, write_llmc_shard

ROOT = Path(__file__).resolve().parent.parent
OPEN_SCRIPT = """
import sys, time
from train_core import TokenData
start = time.perf_counter()  # after the imports (torch: seconds), which every process pays whatever the data
data = TokenData.open(sys.argv[1], vocab_size=int(sys.argv[2]))
print(f"{time.perf_counter() - start:.4f} {data.num_tokens}")
"""
# Runs a command and writes its peak RSS (kB) to a file. A process forked from this one would start its peak RSS at
# this one's size (Linux carries it across fork and exec), so the measured process is forked from this small one.
RSS_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""
FIRST_STEP = re.compile(r"trial \d+ step 1/")


def write_shards(folder: Path, *, tokens: int, shard_tokens: int) -> str:
    """The train glob of a synthetic llm.c shard set of `tokens` train tokens (plus a val shard) in folder."""
    rng = np.random.default_rng(0)
    written, index = 0, 0
    while written < tokens:
        count = min(shard_tokens, tokens - written)
        write_llmc_shard(folder / f"bench_train_{index:06d}.bin", rng.integers(VOCAB_SIZE, size=count, dtype=np.uint16),
                         version=1)
        written, index = written + count, index + 1
    write_llmc_shard(folder / "bench_val_000000.bin",
                     rng.integers(VOCAB_SIZE, size=max(shard_tokens // 10, 10_000), dtype=np.uint16), version=1)
    return str(folder / "bench_train_*.bin")


def measured(command: list[str], folder: Path, *, code: Path) -> tuple[subprocess.Popen, Path]:
    """Start command in folder (not this checkout: `python -c` imports from its working folder first) with `code`
    on its path; the process, and the file its peak RSS lands in when it exits."""
    rss_file = folder / f"rss-{time.time_ns()}"
    env = os.environ | {"PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", RSS_LAUNCHER, str(rss_file), *command], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, rss_file


def _finish(proc: subprocess.Popen, rss_file: Path, output: str) -> float:
    """The peak RSS in MB of a measured process that has exited 0."""
    if proc.wait() != 0:
        raise SystemExit(f"{proc.args[4:]} exited {proc.returncode}:\n{output[-3000:]}")
    return int(rss_file.read_text()) / 1024


def time_open(pattern: str, folder: Path, *, code: Path) -> dict:
    proc, rss_file = measured([sys.executable, "-c", OPEN_SCRIPT, pattern, str(VOCAB_SIZE)], folder, code=code)
    output = proc.stdout.read()
    rss_mb = _finish(proc, rss_file, output)
    seconds, num_tokens = output.split()[-2:]
    return {"seconds": float(seconds), "tokens": int(num_tokens), "rss_mb": rss_mb}


def write_study(folder: Path, train: str) -> Path:
    values = {
        "name": "datascale",
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64, "vocab_size": VOCAB_SIZE},
        "data": {"train": train, "val": str(folder / "bench_val_*.bin")},
        "batch": {"total_batch_size": 256, "micro_batch_size": 4},
        "schedule": {"max_lr": 1e-3, "warmup_steps": 0, "max_steps": 2},
        "eval": {"iters": 1},
        "dtype": "float32",
        "device": "cpu",
        "peak_flops": 1e11,
        "seed": 0,
        "search": {"anchor_lr": 1e-3, "lr_min": 5e-4, "lr_max": 2e-3, "warmup": [0], "trials": 1},
    }
    path = folder / "datascale.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def time_sweep(study: Path, folder: Path, *, code: Path) -> dict:
    """`sweep lr` as a subprocess: seconds to its first trial step and to its exit, and its peak RSS."""
    command = [sys.executable, "-m", "sweep", "lr", "--study", str(study), "--steps", "2", "--trials", "1",
               "--storage", str(folder / "sweep.log"), "--study-name", f"datascale-{time.time_ns()}"]
    start = time.perf_counter()
    proc, rss_file = measured(command, folder, code=code)
    first_step, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if first_step is None and FIRST_STEP.search(line):
            first_step = time.perf_counter() - start
    rss_mb = _finish(proc, rss_file, "".join(lines))
    if first_step is None:
        raise SystemExit(f"sweep lr printed no first trial step:\n{''.join(lines[-20:])}")
    return {"seconds": first_step, "total": time.perf_counter() - start, "rss_mb": rss_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=float, default=1e9, help="train tokens in the shard set (default 1e9, 2 GB)")
    parser.add_argument("--shard-tokens", type=float, default=1e8, help="tokens per shard (default 1e8, FineWeb's)")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose train_core/sweep to time (default: this)")
    args = parser.parse_args()
    console = rich.console.Console()
    folder = Path(tempfile.mkdtemp(prefix="data-scale-"))
    try:
        start = time.perf_counter()
        train = write_shards(folder, tokens=int(args.tokens), shard_tokens=int(args.shard_tokens))
        size = sum(p.stat().st_size for p in folder.glob("bench_*.bin"))
        console.print(f"wrote {int(args.tokens):,} train tokens ({size / 1e9:.2f} GB with val) to {folder} in "
                      f"{time.perf_counter() - start:.1f}s; timing the code in {args.code}", highlight=False)
        first = time_open(train, folder, code=args.code)
        second = time_open(train, folder, code=args.code)
        sweep = time_sweep(write_study(folder, train), folder, code=args.code)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    table = rich.table.Table(title=f"{first['tokens']:,} tokens, code in {args.code}")
    for column in ("measure", "seconds", "peak RSS (MB)"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    table.add_row("first open (new process)", f"{first['seconds']:.3f}", f"{first['rss_mb']:,.0f}")
    table.add_row("second open (new process)", f"{second['seconds']:.3f}", f"{second['rss_mb']:,.0f}")
    table.add_row("sweep lr: start to first trial step", f"{sweep['seconds']:.2f}", f"{sweep['rss_mb']:,.0f}")
    table.add_row("sweep lr: start to exit (1 trial, 2 steps)", f"{sweep['total']:.2f}", "")
    console.print(table)


if __name__ == "__main__":
    main()
