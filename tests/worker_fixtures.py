"""Helpers for the tests of several workers and real storages: services, subprocess sweeps, polling.

PostgreSQL and Redis are real servers (default 127.0.0.1, trust auth); point the tests elsewhere with
SWEEP_TEST_POSTGRES=postgresql://... and SWEEP_TEST_REDIS=redis://host:port. A test whose server does not answer a
real connection within CONNECT_TIMEOUT_S is skipped with the reason.
"""

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from sweep.storage import mask, open_storage

POSTGRES_URL = os.environ.get("SWEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SWEEP_TEST_REDIS", "redis://127.0.0.1:6379").rstrip("/")
CONNECT_TIMEOUT_S = 2
REDIS_CLAIM_KEY = "lr-sweep-tests:claim"  # marks a Redis db as taken by one test; no journal key looks like it
# One torch thread in every sweep subprocess, so that runs compare bit for bit and 2 workers fit 2 cores.
# PYTHONFAULTHANDLER: a subprocess that hangs prints every thread's stack on SIGABRT (wait_exit), into its log.
SUBPROCESS_ENV = os.environ | {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1",
}


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@functools.cache
def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used here, or None when a real connection succeeds."""
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL)
    try:
        psycopg2.connect(
            host=url.host, port=url.port or 5432, user=url.username, password=url.password, dbname=url.database,
            connect_timeout=CONNECT_TIMEOUT_S,
        ).close()
    except Exception as error:
        return f"PostgreSQL at {mask(POSTGRES_URL)} unreachable: {mask(str(error).strip().splitlines()[0])}"
    return None


@functools.cache
def redis_unreachable() -> str | None:
    try:
        import redis
    except ImportError:
        return "the redis package is not installed (pip install redis)"
    try:
        redis.Redis.from_url(f"{REDIS_URL}/0", socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=5).ping()
    except Exception as error:
        return f"Redis at {mask(REDIS_URL)} unreachable: {mask(str(error))}"
    return None


def require_postgres() -> str:
    if reason := postgres_unreachable():
        pytest.skip(reason)
    return POSTGRES_URL


@contextlib.contextmanager
def postgres_study(name: str):
    """PostgreSQL's URL for a study called `name`; deletes the study afterwards, whatever the test did."""
    url = require_postgres()
    try:
        yield url
    finally:
        delete_study(url, name)


@contextlib.contextmanager
def redis_db():
    """redis://.../<db> of an empty Redis database claimed for this test, flushed afterwards.

    The sweep's journal keys carry no prefix, so a test takes a whole database: the first empty one (from 15 down),
    claimed with SET NX so that two tests running at once never share one.
    """
    if reason := redis_unreachable():
        pytest.skip(reason)
    import redis

    token = uuid.uuid4().hex
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_URL}/{db}", socket_connect_timeout=CONNECT_TIMEOUT_S)
        if not client.set(REDIS_CLAIM_KEY, token, nx=True, ex=3600):
            continue
        if client.dbsize() == 1:
            break
        client.delete(REDIS_CLAIM_KEY)  # someone else's data is there
    else:
        pytest.skip(f"no empty Redis database among 1..15 at {mask(REDIS_URL)}")
    try:
        yield f"{REDIS_URL}/{db}"
    finally:
        if client.get(REDIS_CLAIM_KEY) == token.encode():
            client.flushdb()


# FLUSHDB and the claim set again, in one step: no other test can claim the database in between.
_FLUSH_KEEPING_CLAIM = """
    local claim = redis.call('get', KEYS[1])
    redis.call('flushdb')
    if claim then redis.call('set', KEYS[1], claim, 'EX', 3600) end
"""


def flush_redis(url: str) -> None:
    """Empty a test's Redis database (url from redis_db) as a FLUSHDB or a restart without persistence would."""
    import redis

    redis.Redis.from_url(url).eval(_FLUSH_KEEPING_CLAIM, 1, REDIS_CLAIM_KEY)


def redis_keys(url: str) -> list[bytes]:
    """The keys in a test's Redis database other than its claim."""
    import redis

    return [key for key in redis.Redis.from_url(url).keys() if key != REDIS_CLAIM_KEY.encode()]


def delete_study(storage_url: str, name: str) -> None:
    storage = open_storage(storage_url)
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=storage)
    rdb = getattr(storage, "inner", storage)  # a server database is wrapped in sweep.storage.retrying.RetryingStorage
    if hasattr(rdb, "engine"):
        rdb.engine.dispose()  # no idle connections left open on the server


def load_study(storage_url: str, name: str) -> optuna.Study:
    """The study as a fresh process would see it (a new storage object, nothing cached)."""
    return optuna.load_study(study_name=name, storage=open_storage(storage_url, create=False))


def sweep_command(study: Path, storage: str, name: str, *args: str, steps: int, quiet: bool = True) -> list[str]:
    """`python -m sweep lr` for one worker: one torch thread; quiet, or printing a line per trial start and end."""
    return [
        sys.executable, "-m", "sweep", "lr", "--study", str(study), "--steps", str(steps), "--storage", storage,
        "--study-name", name, "--threads", "1", *(["-q"] if quiet else []), *args,
    ]


STARTED: list[subprocess.Popen] = []  # every sweep subprocess of this test session, for stop_all


def start(command: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """A sweep subprocess writing stdout and stderr to `log` (shown by `tail` when a test fails)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=SUBPROCESS_ENV, stdout=out, stderr=subprocess.STDOUT)
    STARTED.append(proc)
    return proc


def stop_all() -> None:
    """SIGKILL the sweep subprocesses still running (a test that failed midway), so that none outlives its test:
    one left running would go on writing, and re-create a study the test deleted."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def no_stray_workers():
    yield
    stop_all()


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def wait_until(condition, *, timeout: float, what: str, every: float = 0.02):
    """Poll condition() until it returns something truthy (returned), or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def wait_exit(proc: subprocess.Popen, *, timeout: float, log: Path) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler writes where each thread is stuck into the log
        proc.wait()
        pytest.fail(f"worker {proc.pid} still running after {timeout:.0f}s; its log:\n{tail(log, lines=80)}")


def checkpoints(folder: Path) -> list[Path]:
    """A trial folder's step checkpoints (written atomically: a listed file is whole)."""
    return sorted(folder.glob("step-*.pt")) if folder.is_dir() else []
