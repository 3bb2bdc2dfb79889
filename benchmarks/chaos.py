"""Chaos: a `--workers 2` sweep killed at random, on a journal file, PostgreSQL and Redis, against an uninterrupted run.

    python benchmarks/chaos.py [--kills 20] [--steps 300] [--grid-points 10] [--storages journal,postgresql,redis]
                               [--postgres URL] [--redis URL] [--seed 0] [--gap 4]

For each storage, a grid sweep (10 LRs x 2 warmups, pruning off, so that every trial's result is a pure function of
its point) runs once undisturbed: the reference. Then the same sweep runs while one of these happens at random
moments (0.5 s to --gap apart, once both workers run), until --kills of them have hit a running sweep:

- worker: SIGKILL to one of the two workers (an OOM kill); the other reaps its trial and resumes it;
- parent: SIGKILL to the `--workers` parent; its workers get SIGTERM (they die with it), mark their trials
  interrupted, and the command is started again, as a scheduler would, and resumes them;
- connections (PostgreSQL, Redis): every connection to the sweep's database is dropped (pg_terminate_backend, CLIENT
  KILL), as a server restart or an idle-connection killer does; the writes in flight are retried.

After the last kill the command is run until it exits 0. Then the checks: every grid point finished, none RUNNING,
no trial lost to a storage fault (each FAIL has a retry), and the best trial equal to the reference's (its point and
its val loss, bit for bit: resumes are exact). PostgreSQL uses a database of its own, dropped at the end; Redis the
first empty database from 15 down, emptied at the end.

Timings depend on the machine's load: the figures that matter are the counts and the checks.
"""

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from sweep.record import TrialAttr, fail_reason
from sweep.storage import mask, open_storage
from sweep.workers import STORAGE_FAULT
from train_core import write_nanogpt_bin

VOCAB = 512
SHOWN_ATTRS = (TrialAttr.RETRY_OF, TrialAttr.DUPLICATE_OF, TrialAttr.FAIL_REASON)  # of a trial, when a check fails
ENV = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_study(folder: Path, steps: int) -> Path:
    """A learnable stream (the next id is 3 x id + 1, or a random one in five), so that LRs rank differently."""
    rng = np.random.default_rng(0)
    noise, draws = rng.random(220_000) < 0.2, rng.integers(VOCAB, size=220_000)
    ids = np.empty(220_000, dtype=np.int64)
    ids[0] = 0
    for i in range(1, len(ids)):
        ids[i] = draws[i] if noise[i] else (3 * ids[i - 1] + 1) % VOCAB
    write_nanogpt_bin(folder / "train.bin", ids[:200_000])
    write_nanogpt_bin(folder / "val.bin", ids[200_000:])
    values = {
        "name": "chaos",
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": VOCAB},
        "data": {"train": str(folder / "train.bin"), "val": str(folder / "val.bin")},
        "batch": {"total_batch_size": 256, "micro_batch_size": 8},
        "schedule": {"max_lr": 1e-2, "warmup_steps": 2, "max_steps": steps},
        "eval": {"iters": 2},
        "dtype": "float32",
        "device": "cpu",
        "peak_flops": 1e11,
        "seed": 7,
        "search": {"anchor_lr": 1e-2, "lr_min": 3e-3, "lr_max": 3e-2, "warmup": [0, 2]},
    }
    path = folder / "chaos.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def command(study: Path, storage: str, name: str, steps: int, grid_points: int) -> list[str]:
    return [sys.executable, "-m", "sweep", "lr", "--study", str(study), "--steps", str(steps), "--storage", storage,
            "--study-name", name, "--sampler", "grid", "--grid-points", str(grid_points), "--pruner", "none",
            "--workers", "2", "--ckpt-every", "10", "--heartbeat", "0.5", "--grace", "3", "--max-retries", "50",
            "-q"]


@dataclass
class Chaos:
    kills: dict = field(default_factory=lambda: {"worker": 0, "parent": 0, "connections": 0})
    starts: int = 0
    orphans: int = 0  # workers still running 60 s after their parent was killed
    exit_codes: list = field(default_factory=list)
    wall: float = 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def drop_connections(url: str) -> int:
    if url.startswith("redis://"):
        import redis

        client = redis.Redis.from_url(url)
        me, db = client.client_id(), str(client.connection_pool.connection_kwargs.get("db", 0))
        ids = [c["id"] for c in client.client_list(_type="normal") if c["db"] == db and c["id"] != str(me)]
        return sum(client.client_kill_filter(_id=i) for i in ids)
    import psycopg2

    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return cur.fetchone()[0]


def run_chaos(cmd: list[str], cwd: Path, log: Path, *, kills: int, storage: str, rng: random.Random,
              gap: float) -> Chaos:
    actions = ["worker", "parent"] + (["connections"] if storage.startswith(("postgresql", "redis")) else [])
    chaos = Chaos()
    started = time.perf_counter()
    with open(log, "ab") as out:
        def start() -> subprocess.Popen:
            chaos.starts += 1
            return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT)

        parent = start()
        while sum(chaos.kills.values()) < kills:
            deadline = time.monotonic() + 120
            while len(children(parent.pid)) < 2 and parent.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)  # until both workers run: a kill of a parent still importing torch tests nothing
            time.sleep(rng.uniform(0.5, gap))  # a random moment: this is the benchmark's clock, not a synchronisation
            if parent.poll() is not None:
                chaos.exit_codes.append(parent.returncode)
                if parent.returncode == 0:
                    break  # the sweep finished before all kills landed: fewer kills, reported as they are
                parent = start()
                continue
            action = rng.choice(actions)
            workers = children(parent.pid)
            if action == "worker" and workers:
                os.kill(rng.choice(workers), signal.SIGKILL)
            elif action == "parent":
                parent.kill()
                parent.wait()
                chaos.exit_codes.append(parent.returncode)
                deadline = time.monotonic() + 60
                for pid in workers:  # they get SIGTERM as their parent dies; wait for them to leave
                    while Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) and time.monotonic() < deadline:
                        time.sleep(0.05)
                chaos.orphans += sum(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in workers)
                parent = start()
            elif action == "connections":
                drop_connections(storage)
            else:
                continue
            chaos.kills[action] += 1
        while parent.wait() != 0:  # after the last kill: run the command until the study is whole
            chaos.exit_codes.append(parent.returncode)
            parent = start()
        chaos.exit_codes.append(0)
    chaos.wall = time.perf_counter() - started
    return chaos


def error_lines(log: Path) -> dict[str, int]:
    """The sweep's `error: ...` lines (how each failed start ended), with the numbers in them masked, and counts."""
    import re

    text = log.read_text(errors="replace")
    lines = [re.sub(r"\d+", "N", line) for line in text.splitlines() if line.startswith("error:")]
    return {line: lines.count(line) for line in sorted(set(lines))}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (FileNotFoundError, IndexError):
        return "zombie"


def check(storage: str, name: str, reference: str, ref_name: str) -> dict:
    trials = optuna.load_study(study_name=name, storage=open_storage(storage, create=False)).get_trials()
    ref = optuna.load_study(study_name=ref_name, storage=open_storage(reference, create=False))
    points = {(t.params["lr"], t.params["warmup"]) for t in ref.get_trials(states=(TrialState.COMPLETE,))}
    done = {(t.params["lr"], t.params["warmup"]) for t in trials if t.state == TrialState.COMPLETE}
    failed = [t for t in trials if t.state == TrialState.FAIL]
    retried = {t.user_attrs.get(TrialAttr.RETRY_OF) for t in trials}
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    reasons: dict[str, int] = {}
    for t in failed:
        reason = (fail_reason(t) or "?").split(":")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "trials": len(trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "failed": reasons,
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "every point finished": done >= points,
        "every FAIL retried": all(t.number in retried for t in failed),
        "storage faults not retried": sum(fail_reason(t).startswith(STORAGE_FAULT) and t.number not in retried
                                          for t in failed),
        "resumed trials": sum(TrialAttr.RESUMED_AT_STEP in t.user_attrs for t in trials),
        "best equal": (best.params, best.value) == (ref.best_trial.params, ref.best_trial.value),
        "best": f"lr {best.params['lr']:.3g} warmup {best.params['warmup']} val {best.value:.6f}",
        "reference best": f"lr {ref.best_trial.params['lr']:.3g} warmup {ref.best_trial.params['warmup']} "
                          f"val {ref.best_trial.value:.6f}",
    }


@contextlib.contextmanager
def scratch_database(url: str):
    import psycopg2
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"chaos_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host=base.host, port=base.port or 5432, user=base.username, password=base.password,
                             dbname=base.database)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


@contextlib.contextmanager
def scratch_redis(url: str):
    """redis://.../<db>: the first empty database from 15 down, emptied afterwards (the journal's keys have no prefix)."""
    import redis

    base = url.rstrip("/")
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{db}")
        if client.dbsize() == 0:
            break
    else:
        raise SystemExit(f"no empty Redis database among 1..15 at {base}")
    try:
        yield f"{base}/{db}"
    finally:
        client.flushdb()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="kills per storage (default 20)")
    parser.add_argument("--steps", type=int, default=300, help="steps per trial (default 300)")
    parser.add_argument("--grid-points", type=int, default=10, help="LRs of the grid, x 2 warmups (default 10)")
    parser.add_argument("--storages", default="journal,postgresql,redis")
    parser.add_argument("--postgres", default=os.environ.get("SWEEP_TEST_POSTGRES",
                                                             "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis", default=os.environ.get("SWEEP_TEST_REDIS", "redis://127.0.0.1:6379"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--gap", type=float, default=4.0, help="longest wait between kills, seconds (default 4)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = {}
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        folder = Path(tmp)
        study = write_study(folder, args.steps)
        for kind in args.storages.split(","):
            with contextlib.ExitStack() as stack:
                if kind == "journal":
                    storage, reference = str(folder / "chaos.log"), str(folder / "reference.log")
                elif kind == "redis":
                    storage = reference = stack.enter_context(scratch_redis(args.redis))
                else:
                    storage = reference = stack.enter_context(scratch_database(args.postgres))
                started = time.perf_counter()
                subprocess.run(command(study, reference, "reference", args.steps, args.grid_points), cwd=folder, env=ENV, check=True,
                               stdout=subprocess.DEVNULL)
                ref_wall = time.perf_counter() - started
                log = folder / f"{kind}.log.txt"
                chaos = run_chaos(command(study, storage, "chaos", args.steps, args.grid_points), folder, log, kills=args.kills,
                                  storage=storage, rng=rng, gap=args.gap)
                results[kind] = {"reference wall s": round(ref_wall, 1), "chaos wall s": round(chaos.wall, 1),
                                 "kills": chaos.kills, "command starts": chaos.starts, "orphaned workers": chaos.orphans,
                                 "exit codes": chaos.exit_codes, "error lines": error_lines(log)}
                results[kind] |= check(storage, "chaos", reference, "reference")
                print(f"== {kind} ({mask(storage) if kind != 'journal' else 'journal file'})", flush=True)
                for key, value in results[kind].items():
                    print(f"   {key}: {value}", flush=True)
                if not (results[kind]["best equal"] and results[kind]["every point finished"]):
                    for t in optuna.load_study(study_name="chaos", storage=open_storage(storage)).get_trials():
                        print(f"   trial {t.number} {t.state.name} {t.params} {t.value} "
                              f"{ {k: v for k, v in t.user_attrs.items() if k in SHOWN_ATTRS} }")
                    kept = Path.cwd() / f"chaos-{kind}.log"
                    kept.write_text(log.read_text())
                    print(f"   the sweep's output: {kept}")
    ok = all(r["every point finished"] and r["every FAIL retried"] and not r["running"] and r["best equal"]
             for r in results.values())
    print("all checks passed" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
