"""The sweep on every storage it accepts, against real servers: SQLite, journal file, PostgreSQL, Redis.

PostgreSQL and Redis tests skip, with the reason, when their server does not answer (see worker_fixtures). Each
test uses a study name of its own and deletes that study at the end (Redis: a whole claimed database, flushed).
"""

import functools
import signal
import socket
import subprocess
import sys
from contextlib import ExitStack, contextmanager, suppress

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sweep_fixtures import run_lr
from worker_fixtures import (  # noqa: F401 (no_stray_workers: an autouse fixture)
    delete_study,
    load_study,
    no_stray_workers,
    postgres_study,
    redis_db,
    start,
    stop_all,
    sweep_command,
    tail,
    unique_name,
    wait_exit,
    wait_until,
)

from sweep.cli import main
from sweep.storage import mask, open_storage
from sweep.workers import FINISHED

TINY_STEPS = 10




# --- one sweep on each storage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql", "redis"])
def test_tiny_sweep_completes_on_every_storage(kind, study, tmp_path):
    name = unique_name("storages-tiny")
    with ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path}/store/sweep.db"
        elif kind == "journal":
            url = str(tmp_path / "store" / "sweep.log")
        elif kind == "postgresql":
            url = stack.enter_context(postgres_study(name))
        else:
            url = stack.enter_context(redis_db())
        stack.callback(delete_study, url, name)

        code = run_lr(study, url, "--trials", "2", "--pruner", "none", "--study-name", name, steps=TINY_STEPS)

        assert code == 0
        trials = load_study(url, name).get_trials()  # read back through a new connection
        assert [t.number for t in trials] == [0, 1]
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs for t in trials]
        assert trials[0].user_attrs["anchor"] is True
        for trial in trials:
            assert trial.value == trial.user_attrs["val_loss"]
            assert trial.user_attrs["steps_done"] == TINY_STEPS
            assert sorted(trial.intermediate_values) == list(range(TINY_STEPS))  # one report per step
            assert "sweep:heartbeat" in trial.system_attrs  # stamped on every storage, not only RDB ones


# --- two worker processes on one PostgreSQL study -----------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_on_postgres_share_the_budget_and_run_each_trial_once(study, tmp_path):
    name, trials, workers = unique_name("storages-two"), 4, 2
    with postgres_study(name) as url:
        command = sweep_command(study, url, name, "--trials", str(trials), "--heartbeat", "1", "--grace", "60",
                                steps=20)
        logs = [tmp_path / f"worker-{i}.log" for i in range(1, workers + 1)]
        procs = [start([*command, "--worker-index", str(i)], tmp_path, log) for i, log in enumerate(logs, 1)]
        by_worker = {f"pid {p.pid} on {socket.gethostname()}": p for p in procs}  # as trials record their worker
        storage = open_storage(url)
        try:
            # However unevenly the two start up, both hold a trial at once: the worker that takes the first trial
            # is paused until the other takes one too (within the 60 s --grace: a paused worker sends no heartbeat).
            taken = wait_until(lambda: takers(storage, name), timeout=120, what="a first trial", every=0.2)
            first = by_worker[taken[0]]
            first.send_signal(signal.SIGSTOP)
            try:
                wait_until(lambda: len(takers(storage, name)) == workers, timeout=45,
                           what="a trial of the other worker", every=0.2)
            finally:
                first.send_signal(signal.SIGCONT)
            codes = [wait_exit(p, timeout=120, log=log) for p, log in zip(procs, logs)]
        finally:
            stop_all()  # before the study is deleted: a worker still running would create it again
        assert codes == [0, 0], "\n".join(tail(log) for log in logs)

        result = load_study(url, name)
        all_trials = result.get_trials()
        finished = [t for t in all_trials if t.state in FINISHED]
        # Each worker checks the budget (finished + running < trials) before it starts a trial, but the check and
        # the start are not atomic across workers: each other worker may start one trial on the same stale count.
        assert trials <= len(finished) <= trials + workers - 1, [(t.number, t.state) for t in all_trials]
        assert not [t.number for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        for trial in finished:
            # A trial run by two workers would carry two loss curves (each run uploads one) and a retry_of.
            assert len(get_all_artifact_meta(trial, storage=open_storage(url))) == 1, trial.number
            assert "retry_of" not in trial.user_attrs
            assert trial.state == TrialState.PRUNED or trial.user_attrs["steps_done"] == 20
        # Both workers really shared the study: each finished a trial (a second worker that silently did nothing
        # leaves one name here, or the wait above times out), and no other process ran one.
        assert {t.user_attrs["worker"] for t in finished} == set(by_worker), [
            (t.number, t.user_attrs["worker"]) for t in finished]


def takers(storage: optuna.storages.BaseStorage, name: str) -> list[str]:
    """The workers that took a trial of study `name` so far (none while no worker has created the study)."""
    with suppress(KeyError):
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        return sorted({t.user_attrs["worker"] for t in trials if "worker" in t.user_attrs})
    return []


# --- passwords and refused setups -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, masked",
    [
        ("postgresql://user:s3cret@db:5432/sweeps", "postgresql://user:***@db:5432/sweeps"),
        ("postgresql+psycopg2://u:p%40ss@db/x", "postgresql+psycopg2://u:***@db/x"),
        ("postgresql://u:p@ss@db/x", "postgresql://u:***@db/x"),  # a raw '@' in the password
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://default:s3cret@cache/1", "redis://default:***@cache/1"),
        ("MySQL://Root:S3cret@db/x", "MySQL://Root:***@db/x"),
        ("cannot open a://u:one@h and b://v:two@k", "cannot open a://u:***@h and b://v:***@k"),
        ("postgresql://user@db/sweeps", "postgresql://user@db/sweeps"),  # no password: unchanged
        ("postgresql://db:5432/sweeps", "postgresql://db:5432/sweeps"),  # a port is not a password
        ("runs/sweep.log", "runs/sweep.log"),
        ("sqlite:///runs/sweep.db", "sqlite:///runs/sweep.db"),
    ],
)
def test_mask_hides_every_password_and_only_passwords(text, masked):
    assert mask(text) == masked


@pytest.mark.parametrize(
    "argv",
    [
        ["lr", "--study", "STUDY", "--steps", "10"],
        ["status"],
        ["status", "--study-name", "x"],
        ["promote", "best", "--study", "STUDY", "--dry-run"],
        ["confirm", "--study", "STUDY"],
    ],
    ids=lambda argv: " ".join(a for a in argv if a not in ("--study", "STUDY")),
)
@pytest.mark.parametrize(
    "url", ["postgresql://user:s3cret@127.0.0.1:1/test", "redis://:s3cret@127.0.0.1:1/0"], ids=["postgresql", "redis"]
)
def test_unreachable_storage_exits_2_without_showing_the_password(argv, url, study, capsys):
    with connect_attempts() as attempts:
        code = main([*(str(study) if a == "STUDY" else a for a in argv), "--storage", url])

    out, err = capsys.readouterr()
    assert code == 2
    assert "s3cret" not in out + err
    assert "***" in err and "cannot open storage" in err, err
    assert attempts == [("127.0.0.1", 1)]  # refused at the first attempt: no reconnecting, no waits between tries


@contextmanager
def connect_attempts():
    """The (host, port) of every connection attempt made inside the block: SQLAlchemy's do_connect event sees
    PostgreSQL's (libpq connects in C, out of Python's sight), Python's socket.connect audit event sees Redis's."""
    attempts = []

    def on_do_connect(dialect, connection_record, cargs, cparams):
        attempts.append((cparams.get("host"), cparams.get("port")))

    _audit_socket_connects()
    _SOCKET_CONNECTS.append(attempts)
    event.listen(Engine, "do_connect", on_do_connect)
    try:
        yield attempts
    finally:
        event.remove(Engine, "do_connect", on_do_connect)
        _SOCKET_CONNECTS.remove(attempts)


_SOCKET_CONNECTS: list[list] = []  # the lists of the connect_attempts blocks now open


@functools.cache
def _audit_socket_connects() -> None:
    """An audit hook cannot be removed: one is added once, and records only inside connect_attempts blocks."""

    def hook(name, args):
        if name == "socket.connect":
            for attempts in _SOCKET_CONNECTS:
                attempts.append(args[1])

    sys.addaudithook(hook)


@pytest.mark.slow
def test_unreachable_storage_in_a_subprocess_keeps_the_password_out_of_stderr(study, tmp_path):
    command = sweep_command(study, "postgresql://user:s3cret@127.0.0.1:1/test", "x", steps=10)
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    assert "postgresql://user:***@127.0.0.1:1/test" in done.stderr


def test_several_workers_on_sqlite_are_refused_with_the_alternatives(study, tmp_path, capsys):
    code = main(["lr", "--study", str(study), "--steps", "10", "--workers", "2",
                       "--storage", f"sqlite:///{tmp_path}/sweep.db"])

    err = capsys.readouterr().err
    assert code == 2
    assert "--workers 2 with SQLite" in err
    assert "journal file" in err and "postgresql://" in err and "redis://" in err
    assert not (tmp_path / "sweep.db").exists()  # refused before anything was created
    assert not (tmp_path / "runs").exists()


def test_a_bare_postgresql_url_opens_with_the_installed_driver():
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; with only psycopg2 installed (the documented driver) the
    storage must still open instead of failing with "Failed to import DB access module"."""
    name = unique_name("storages-driver")
    with postgres_study(name) as url:
        assert url.startswith("postgresql://")
        optuna.create_study(study_name=name, storage=open_storage(url))
        assert load_study(url, name).study_name == name
