"""Several workers on one machine, and what the storage costs each trial; measured in one run on this machine.

    python benchmarks/workers.py [--trials 8] [--steps 100] [--shapes tiny,small] [--postgres URL] [--redis URL]
    python benchmarks/workers.py --compare-workers 1,4 [--compare-stacks 1,4,8,16] [--study default] [--trials 8]
        [--steps 300]

1. Throughput. The same sweep (journal file, pruning off so that every trial runs all its steps) run as the
   baseline, 1 worker with 2 torch threads (`--threads 2`), and as `--workers 2` (2 processes, 1 thread each).
   trials/hour over the whole command (process start-up included) and over the span from the first trial's start to
   the last trial's end (steady state). Shapes: "tiny" is the tests' model (1 layer, width 16, 128 tokens a step);
   "small" is 4 layers of width 128, context 64, 1,024 tokens a step. Both use a 512-token vocabulary.
2. Storage time per trial. The storage calls of one 300-step sweep trial, timed on each storage: ask, 2 suggests,
   12 set_user_attr, 300 x (trial.report + trial.should_prune under the sweep's median pruner), 3 heartbeat stamps,
   tell; with 10 finished 300-step trials already in the study, which the pruner reads. Also the writes alone
   (without should_prune). Median of --repeats trials. Baseline: the journal file. PostgreSQL and Redis are skipped
   with the reason when they do not answer; their studies and keys are deleted afterwards.

3. --compare-workers 1,4 and/or --compare-stacks 1,4,8,16 (alone): a study (by default the default study,
   `device: auto`: on a GPU machine every worker shares its GPU, or gets its own on a node of several) swept as
   `--workers 1`, then `--workers 4`, ..., then on one worker as `--stack 1` (run once where it is the same
   layout as `--workers 1`), `--stack 4`, ... (journal file, pruning off, the study's sampler, the embedded corpus
   prepared before the clock starts): trials/hour as in 1, against the first layout's.

Other processes on the 2 cores skew every number: compare rows of the same run only.
"""

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import rich.box
import rich.console
import rich.table
import yaml

from sweep.pruning import make_pruner
from sweep.record import SystemAttr
from sweep.storage import mask, open_storage
from sweep.workers import FINISHED, trial_id
from train_core import write_nanogpt_bin

VOCAB = 512
SHAPES = {
    "tiny": {"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}, "batch": 128, "micro": 8},
    "small": {"model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}, "batch": 1024, "micro": 16},
}
TRIAL_STEPS = 300  # reports per trial in the storage benchmark
TRIAL_ATTRS = 12  # user attrs the objective sets per trial
PRIOR_TRIALS = 10  # finished trials in the study before the timed ones


# --- 1. trials/hour --------------------------------------------------------------------------------------------------


def write_study(folder: Path, shape: dict, steps: int) -> Path:
    rng = np.random.default_rng(0)
    write_nanogpt_bin(folder / "train.bin", rng.integers(VOCAB, size=400_000))
    write_nanogpt_bin(folder / "val.bin", rng.integers(VOCAB, size=40_000))
    values = {
        "name": "bench",
        "model": shape["model"] | {"vocab_size": VOCAB},
        "data": {"train": str(folder / "train.bin"), "val": str(folder / "val.bin")},
        "batch": {"total_batch_size": shape["batch"], "micro_batch_size": shape["micro"]},
        "schedule": {"max_lr": 1e-2, "warmup_steps": 2, "max_steps": steps},
        "eval": {"iters": 2},
        "dtype": "float32",
        "device": "cpu",
        "peak_flops": 1e11,
        "seed": 7,
        "search": {"anchor_lr": 1e-2, "lr_min": 3e-3, "lr_max": 3e-2, "warmup": [0, 2], "trials": 4},
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def sweep_rate(study_file: Path, folder: Path, *, name: str, trials: int, steps: int, parallel: list[str]) -> dict:
    """Run one sweep as a subprocess; its wall seconds and trials/hour (whole command and steady state)."""
    storage = str(folder / f"{name}.log")
    command = [sys.executable, "-m", "sweep", "lr", "--study", str(study_file), "--steps", str(steps),
               "--trials", str(trials), "--pruner", "none", "--storage", storage, "--study-name", name, "-q",
               *parallel]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"sweep {name} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    finished = optuna.load_study(study_name=name, storage=open_storage(storage, create=False)).get_trials(
        states=FINISHED)  # the stability guard may still prune a trial that blows up
    span = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
    return {"trials": len(finished), "wall": wall, "per_hour": len(finished) / wall * 3600,
            "steady_per_hour": len(finished) / span * 3600}


def compare_layouts(console, study: str, layouts: list[tuple[int, int]], *, trials: int, steps: int) -> None:
    """Part 3: the study swept as each (workers, stack) layout in turn; trials/hour against the first layout."""
    from sweep.recipe import load_recipe, study_file
    from train_core import ensure_corpus

    recipe_path = study_file(study).resolve()
    recipe = load_recipe(recipe_path)
    data = recipe.train.data
    table = rich.table.Table(box=rich.box.SIMPLE, title=f"{recipe.name} study: {trials} trials x {steps} steps, "
                                                        "journal file, pruning off")
    for column in ("workers", "stack", "trials", "wall s", "trials/h", "vs first", "steady trials/h", "vs first"):
        table.add_column(column, justify="right", no_wrap=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if data.corpus is not None:  # prepared once here (data/ under the runs' folder), not inside a timed run
            ensure_corpus(data.corpus, data_root=folder / "data", progress=False)
        rows = {}
        for workers, stack in layouts:
            flags = f"--workers {workers} --stack {stack}"
            with console.status(flags):
                rows[workers, stack] = sweep_rate(recipe_path, folder, name=f"workers{workers}-stack{stack}",
                                                  trials=trials, steps=steps, parallel=flags.split())
            row, base = rows[workers, stack], rows[layouts[0]]
            console.print(f"  {flags}: {row['trials']} trials in {row['wall']:.1f}s, {row['per_hour']:,.0f} "
                          f"trials/h ({row['per_hour'] / base['per_hour']:.2f}x), {row['steady_per_hour']:,.0f} "
                          f"steady ({row['steady_per_hour'] / base['steady_per_hour']:.2f}x)",
                          highlight=False)  # as it comes, so that a run cut short keeps what it measured
            table.add_row(str(workers), str(stack), str(row["trials"]), f"{row['wall']:.1f}", f"{row['per_hour']:,.0f}",
                          f"{row['per_hour'] / base['per_hour']:.2f}x", f"{row['steady_per_hour']:,.0f}",
                          f"{row['steady_per_hour'] / base['steady_per_hour']:.2f}x")
    console.print(table)


def throughput(console, shapes: list[str], *, trials: int, steps: int) -> None:
    table = rich.table.Table(box=rich.box.SIMPLE, title=f"sweep throughput: {trials} trials x {steps} steps, "
                                                        "journal file, pruning off")
    for column in ("shape", "layout", "trials", "wall s", "trials/h", "vs base", "steady trials/h", "vs base"):
        table.add_column(column, justify="left" if column in ("shape", "layout") else "right", no_wrap=True)
    layouts = {"1 worker x 2 threads (base)": ["--threads", "2"], "2 workers x 1 thread": ["--workers", "2"]}
    for shape_name in shapes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            study_file = write_study(folder, SHAPES[shape_name], steps)
            rows = {}
            for index, (layout, flags) in enumerate(layouts.items()):
                with console.status(f"{shape_name}: {layout}"):
                    rows[layout] = sweep_rate(study_file, folder, name=f"bench{index}", trials=trials, steps=steps,
                                              parallel=flags)
            base = rows[next(iter(layouts))]
            for layout, row in rows.items():
                table.add_row(shape_name if row is base else "", layout, str(row["trials"]), f"{row['wall']:.1f}",
                              f"{row['per_hour']:,.0f}", f"{row['per_hour'] / base['per_hour']:.2f}x",
                              f"{row['steady_per_hour']:,.0f}",
                              f"{row['steady_per_hour'] / base['steady_per_hour']:.2f}x")
    console.print(table)


# --- 2. storage seconds per trial ------------------------------------------------------------------------------------


@contextlib.contextmanager
def journal_file():
    with tempfile.TemporaryDirectory() as tmp:
        yield open_storage(str(Path(tmp) / "bench.log")), None


@contextlib.contextmanager
def sqlite_file():
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{tmp}/bench.db")
        yield storage, None
        storage.engine.dispose()


@contextlib.contextmanager
def postgres(url: str):
    storage = open_storage(url)  # an InputError (exit 2, password masked) if it does not answer
    name = f"bench-{uuid.uuid4().hex[:10]}"
    try:
        yield storage, name
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
        storage.engine.dispose()


@contextlib.contextmanager
def redis_journal(url: str):
    """Optuna's Redis journal under a key prefix of its own (the sweep itself uses none), deleted afterwards."""
    import redis
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalRedisBackend

    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    client.ping()
    try:
        yield JournalStorage(JournalRedisBackend(url, prefix=prefix)), None
    finally:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)


def one_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, *, prune: bool) -> float:
    """Seconds of the storage calls of one sweep trial (the training itself left out)."""
    start = time.perf_counter()
    trial = study.ask()
    beat_id = trial_id(storage, study, trial.number)
    trial.suggest_float("lr", 3e-3, 3e-2, log=True)
    trial.suggest_categorical("warmup", [0, 2])
    for index in range(TRIAL_ATTRS):
        trial.set_user_attr(f"attr_{index}", index * 1.5)
    for step in range(TRIAL_STEPS):
        trial.report(6.0 - step / TRIAL_STEPS, step)
        if prune:
            trial.should_prune()
        if step % 100 == 0:
            storage.set_trial_system_attr(beat_id, SystemAttr.HEARTBEAT, time.time())
    study.tell(trial, 5.0)
    return time.perf_counter() - start


def storage_costs(console, backends: dict, *, repeats: int) -> None:
    table = rich.table.Table(box=rich.box.SIMPLE, title=f"storage seconds per trial: {TRIAL_STEPS} reports, "
                                                        f"{TRIAL_ATTRS} attrs, {PRIOR_TRIALS} finished trials before")
    for column in ("storage", "objective's calls s", "vs journal", "ms/step", "writes only s", "vs journal"):
        table.add_column(column, justify="left" if column == "storage" else "right", no_wrap=True)
    base = None
    for label, backend in backends.items():
        try:
            with backend() as (storage, name):
                study = optuna.create_study(
                    study_name=name or "bench", storage=storage, direction="minimize",
                    pruner=make_pruner("median", steps=TRIAL_STEPS, warmup_steps=2),
                    sampler=optuna.samplers.RandomSampler(seed=0),
                )
                with console.status(f"{label}: {PRIOR_TRIALS} trials to start from"):
                    for _ in range(PRIOR_TRIALS):
                        one_trial(study, storage, prune=False)
                with console.status(f"{label}: timing"):
                    full = statistics.median(one_trial(study, storage, prune=True) for _ in range(repeats))
                    writes = statistics.median(one_trial(study, storage, prune=False) for _ in range(repeats))
        except Exception as error:  # an unreachable server: say so and go on with the others
            table.add_row(label, f"skipped: {mask(str(error).strip().splitlines()[0])[:70]}", "", "", "", "")
            continue
        base = base or (full, writes)
        table.add_row(label, f"{full:.3f}", f"{full / base[0]:.1f}x", f"{1000 * full / TRIAL_STEPS:.2f}",
                      f"{writes:.3f}", f"{writes / base[1]:.1f}x")
    console.print(table)


def positive_counts(parser: argparse.ArgumentParser, flag: str, text: str | None) -> list[int]:
    """`flag`'s comma-separated positive counts ("1,4"); none where the flag is not given."""
    try:
        counts = [int(c) for c in text.split(",")] if text else []
    except ValueError:
        counts = [0]
    if counts and min(counts) < 1:
        parser.error(f"{flag} takes positive counts like 1,4, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trials per sweep in the throughput runs")
    parser.add_argument("--steps", type=int, default=100, help="steps per trial in the throughput runs")
    parser.add_argument("--shapes", default="tiny,small", help="comma-separated, from: " + ", ".join(SHAPES))
    parser.add_argument("--repeats", type=int, default=3, help="timed trials per storage (median)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--compare-workers", help="comma-separated worker counts, e.g. 1,4: part 3 alone")
    parser.add_argument("--compare-stacks", help="comma-separated --stack sizes, e.g. 1,4,8,16, each on one worker: "
                        "part 3 alone, after the worker counts")
    parser.add_argument("--study", default="default", help="the study part 3 sweeps (default: default)")
    args = parser.parse_args(argv)
    shapes = args.shapes.split(",")
    if [s for s in shapes if s not in SHAPES] or min(args.trials, args.steps, args.repeats) < 1:
        parser.error(f"--shapes takes names from {', '.join(SHAPES)}; --trials, --steps, --repeats must be >= 1")

    console = rich.console.Console()
    console.width = max(console.width, 110)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.compare_workers or args.compare_stacks:
        counts = {flag: positive_counts(parser, flag, text) for flag, text in
                  (("--compare-workers", args.compare_workers), ("--compare-stacks", args.compare_stacks))}
        layouts = [(workers, 1) for workers in counts["--compare-workers"]]
        layouts += [(1, stack) for stack in counts["--compare-stacks"]]
        compare_layouts(console, args.study, list(dict.fromkeys(layouts)), trials=args.trials, steps=args.steps)
        return 0
    if not args.skip_throughput:
        throughput(console, shapes, trials=args.trials, steps=args.steps)
    storage_costs(console, {
        "journal file (base)": journal_file,
        "sqlite": sqlite_file,
        "postgresql": lambda: postgres(args.postgres),
        "redis journal": lambda: redis_journal(args.redis),
    }, repeats=args.repeats)
    console.print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
                  "(other processes skew the numbers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
