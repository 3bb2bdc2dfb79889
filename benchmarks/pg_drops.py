"""Storage calls under a connection killer: every connection to a scratch PostgreSQL database is terminated every
--every seconds while one process opens the storage and runs trials through it (ask, a report per step, tell).

    python benchmarks/pg_drops.py [--seconds 60] [--every 0.2] [--postgres URL]

Each call the sweep's storage let through with an error is counted by its message: a drop that escaped the retries.
The database is made for the run and dropped at the end. It finds what the chaos benchmark (benchmarks/chaos.py) hits
only now and then: a kill landing between two statements of one call, or while the storage is opened.
"""

import argparse
import collections
import contextlib
import sys
import threading
import time

import optuna
import psycopg2
from chaos import scratch_database  # the sibling benchmark's (this folder is on the path of a script run from it)

from sweep.storage import describe, open_storage


def kill_connections(url: str, *, every: float, stop: threading.Event, kills: list[int]) -> None:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        while not stop.wait(every):
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            kills.append(cur.fetchone()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=0.2, help="seconds between two kills of every connection")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    escaped: collections.Counter = collections.Counter()
    calls = 0
    with scratch_database(args.postgres) as url:
        open_storage(url)  # Optuna's tables, before the killing starts
        stop, kills = threading.Event(), []
        killer = threading.Thread(target=kill_connections, args=(url,), daemon=True,
                                  kwargs={"every": args.every, "stop": stop, "kills": kills})
        killer.start()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            try:
                study = optuna.create_study(study_name="s", storage=open_storage(url), load_if_exists=True)
                for _ in range(10):
                    trial = study.ask()
                    for step in range(10):
                        trial.report(1.0 / (step + 1), step)
                    study.tell(trial, 1.0)
                    calls += 12
            except Exception as error:
                escaped[f"{type(error).__name__}: {describe(error)}"] += 1
        stop.set()
        killer.join()
    print(f"{args.seconds:.0f} s, every connection killed every {args.every} s: {sum(kills)} connections killed, "
          f"{calls:,} storage calls completed, {sum(escaped.values())} errors let through")
    for message, count in escaped.most_common():
        print(f"  {count} x {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
