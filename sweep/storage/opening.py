"""Optuna storages by URL: opened by their kind (sweep.storage.kinds), refused in one line with the password masked."""

import importlib.util
import sqlite3
import threading

import optuna
from optuna.storages import JournalStorage, RDBStorage

from sweep.storage.faults import describe, is_connection_loss, root_cause
from sweep.storage.journal import CheckedJournalBackend, CheckedRedisBackend, redis_client
from sweep.storage.kinds import StorageKind, kind_of, mask, scheme
from sweep.storage.retrying import RETRY_DELAYS_S, RetryingStorage, redis_retry
from sweep.targets import check_storage_file
from train_core import FaultError, InputError

CONNECT_TIMEOUT_S = 10  # how long a storage server may take to answer (a connection; on Redis, any command)


def open_storage(url: str, *, create: bool = True) -> optuna.storages.BaseStorage:
    """The Optuna storage behind url; an unreachable database is an InputError with the password masked.

    With create=False a SQLite or journal file that does not exist yet is an error instead of a new empty storage.
    """
    kind = kind_of(url)
    check_storage_file(url)  # a file storage's path that holds some other file
    path = kind.file(url)
    if not create and path is not None and not path.exists():
        raise InputError(f"no storage at {path}: run `python -m sweep lr` first, or pass --storage")
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if kind.journal:
            backend = (CheckedRedisBackend(url, label=mask(url), timeout=CONNECT_TIMEOUT_S, retry=redis_retry())
                       if kind.server else CheckedJournalBackend(url))
            return JournalStorage(backend)
        if not kind.server:
            return RDBStorage(_with_driver(url), engine_kwargs=_engine_kwargs(kind))
        return RetryingStorage(_open_rdb(_with_driver(url), kind), label=mask(url))
    except (InputError, FaultError):
        raise
    except Exception as error:  # driver errors vary by backend; all mean "cannot use this storage"
        if isinstance(root := root_cause(error), sqlite3.DatabaseError):  # a damaged file, not a wrong URL
            raise FaultError(f"storage {mask(url)} is unusable: {describe(root)}") from None
        raise InputError(f"cannot open storage {mask(url)}: {describe(root)}") from None


def check_reachable(url: str) -> None:
    """Connect to a server storage (PostgreSQL, MySQL, Redis) now, before slow work such as tokenizing a corpus.
    A file storage is not created here: it is made once the rest of the input is known to be good."""
    if kind_of(url).server:
        open_storage(url)


def persistence_gap(url: str) -> str | None:
    """What a restart of the Redis at url would take from a study, in a line for a warning; None when it keeps
    everything (appendonly yes), when url is not Redis, or when the server will not say (CONFIG is turned off on many
    managed services)."""
    if kind_of(url).name != "redis":
        return None
    import redis

    client = redis_client(url, timeout=CONNECT_TIMEOUT_S)
    try:
        config = client.config_get("appendonly") | client.config_get("save")
    except redis.ResponseError:
        return None
    finally:
        client.close()
    if config.get("appendonly") == "yes":
        return None
    lost = (f"what this study wrote since the last snapshot (save {config['save']})" if config.get("save")
            else "this study (and save is off too)")
    return (f"Redis at {mask(url)} has appendonly no: a restart loses {lost}, and the sweep ends there; set "
            "appendonly yes to keep it (see the README's storages)")


def _open_rdb(url: str, kind: StorageKind) -> RDBStorage:
    """RDBStorage, once the server has answered. A server that refuses the connection or the login is refused at once
    (a wrong URL, or a server that is down: see the unreachable-storage tests); after that, a connection lost while the
    storage is set up (its tables checked or made) is retried after RETRY_DELAYS_S, like any later call."""
    import sqlalchemy

    probe = sqlalchemy.create_engine(url, **_engine_kwargs(kind))
    try:
        probe.connect().close()
    finally:
        probe.dispose()
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return RDBStorage(url, engine_kwargs=_engine_kwargs(kind))
        except Exception as error:
            if delay is None or not is_connection_loss(error):
                raise
            threading.Event().wait(delay)


def _with_driver(url: str) -> str:
    """url naming the PostgreSQL driver that is installed: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3,
    while the docs (and the dev extra) install psycopg2, which then failed with "Failed to import DB access module"."""
    if scheme(url) != "postgresql" or importlib.util.find_spec("psycopg") or not importlib.util.find_spec("psycopg2"):
        return url
    return "postgresql+psycopg2" + url[len("postgresql"):]


def _engine_kwargs(kind: StorageKind) -> dict:
    if not kind.server:
        # Wait for a writer instead of failing at once with "database is locked".
        return {"connect_args": {"timeout": 60}}
    # A server that accepts the connection and never answers (a hung server, a stuck proxy) would hold libpq forever.
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}


def open_study(url: str, study_name: str) -> tuple[optuna.storages.BaseStorage, optuna.Study]:
    """A study that must exist, and its storage; an InputError listing the storage's studies when it does not, or
    naming its record version when a newer version of this code wrote it."""
    from sweep.record import load_study_checked  # here: the record reads recipes, which the storage never needs

    storage = open_storage(url, create=False)
    try:
        return storage, load_study_checked(storage=storage, study_name=study_name)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
        raise InputError(
            f"no study {study_name} in {mask(url)} (it has: {names or 'none'}); run `python -m sweep lr` first "
            "or pass --study-name"
        ) from None
