"""Storage reads on a big study: the check before each trial and each wait, and opening a Redis study.

    python benchmarks/storage_reads.py [--trials 200] [--reports 300] [--redis redis://127.0.0.1:6379]

- Journal file: a study of --trials trials with --reports reports each. The sweep checks that its study still exists
  before each trial and each wait, through its own storage, which has read the file already; the baseline is what
  that check did before, a new storage replaying the whole file.
- Redis: the same study in an empty Redis database (the first from 15 down, emptied afterwards), opened and read by
  the sweep's journal (1,000 records a round trip) and by Optuna's own (one record a round trip).

Each figure is the best of 3, and every ratio is against a baseline measured in the same run.
"""

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalRedisBackend

from sweep.lr import check_study_exists
from sweep.storage import open_storage


def fill(storage: optuna.storages.BaseStorage, *, trials: int, reports: int) -> None:
    study = optuna.create_study(study_name="s", storage=storage)
    for _ in range(trials):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        for step in range(reports):
            trial.report(1.0 / (step + 1), step)
        study.tell(trial, 1.0)


def best_of_3(call) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def journal_file(args) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "sweep.log")
        storage = open_storage(path)
        fill(storage, trials=args.trials, reports=args.reports)
        records = sum(1 for _ in open(path, "rb"))
        replay = best_of_3(lambda: optuna.get_all_study_names(storage=open_storage(path)))
        check = best_of_3(lambda: check_study_exists(storage, storage_url=path, study_name="s"))
        size = Path(path).stat().st_size / 1e6
    print(f"journal file, {records:,} records ({size:.1f} MB): study check before each trial and wait")
    print(f"  replaying the file (before):  {replay * 1e3:10.2f} ms")
    print(f"  the sweep's own storage:      {check * 1e3:10.2f} ms   ({replay / check:,.0f}x faster)")


def redis(args) -> None:
    import redis as redis_client

    base = args.redis.rstrip("/")
    db = next((n for n in range(15, 0, -1) if redis_client.Redis.from_url(f"{base}/{n}").dbsize() == 0), None)
    if db is None:
        print(f"redis: skipped, no empty database among 1..15 at {base}")
        return
    url = f"{base}/{db}"
    try:
        fill(open_storage(url), trials=args.trials, reports=args.reports)
        records = int(redis_client.Redis.from_url(url).get(":log_number")) + 1

        def read(storage) -> None:
            optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)

        theirs = best_of_3(lambda: read(JournalStorage(JournalRedisBackend(url))))
        ours = best_of_3(lambda: read(open_storage(url)))
    finally:
        redis_client.Redis.from_url(url).flushdb()
    print(f"redis, {records:,} records: open the study and read its trials")
    print(f"  Optuna's JournalRedisBackend: {theirs:10.3f} s")
    print(f"  the sweep's journal:          {ours:10.3f} s   ({theirs / ours:.1f}x faster)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--reports", type=int, default=300, help="reports per trial (the sweep reports every step)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the Redis baseline's notice
    journal_file(args)
    redis(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
