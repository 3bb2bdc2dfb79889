"""Optuna storages by URL, with passwords kept out of every message.

    sqlite:///runs/sweep.db            one machine, one writer at a time (the default: <--runs-dir>/sweep.db)
    runs/sweep.log                     Optuna's journal file: many processes on one machine or a shared disk
    postgresql://user:pw@host/db       many machines (also mysql://)
    redis://host:6379/0                Optuna's journal on Redis
"""

import abc
import importlib.util
import re
import sqlite3
import threading
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage

from sweep.journal import CheckedJournalBackend, CheckedRedisBackend, redis_client
from train_core.errors import FaultError, InputError

CONNECT_TIMEOUT_S = 10  # how long a storage server may take to answer (a connection; on Redis, any command)
RDB_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql")
# The password runs to the URL's last '@': a raw '@' inside it (unencoded) must not leave its tail in the clear.
_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)\S*@", re.IGNORECASE)


def mask(text: str) -> str:
    """Replace any password inside a URL in text with ***."""
    return _PASSWORD.sub(r"\g<head>***@", text)


def scheme(url: str) -> str | None:
    match = re.match(r"^([a-z][a-z0-9+.-]*)://", url, re.IGNORECASE)
    return match.group(1).lower() if match else None


def sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def check_url(url: str) -> None:
    """Reject a URL no storage can take, before anything is created."""
    kind = scheme(url)
    if kind is None:
        if url.endswith((".db", ".sqlite", ".sqlite3")):
            raise InputError(f"--storage {url} looks like a SQLite file: write it as sqlite:///{url}")
        return  # a journal file path
    if kind not in RDB_SCHEMES and kind != "redis":
        raise InputError(
            f"--storage {mask(url)}: unknown scheme {kind}:// "
            "(allowed: sqlite:///FILE, postgresql://..., mysql://..., redis://..., or a journal file path)"
        )


def open_storage(url: str, *, create: bool = True) -> optuna.storages.BaseStorage:
    """The Optuna storage behind url; an unreachable database is an InputError with the password masked.

    With create=False a SQLite or journal file that does not exist yet is an error instead of a new empty storage.
    """
    check_url(url)
    kind = scheme(url)
    path = sqlite_path(url) or (Path(url) if kind is None else None)
    if not create and path is not None and not path.exists():
        raise InputError(f"no storage at {path}: run `python -m sweep lr` first, or pass --storage")
    try:
        if kind is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(CheckedJournalBackend(url))
        if kind == "redis":
            return JournalStorage(
                CheckedRedisBackend(url, label=mask(url), timeout=CONNECT_TIMEOUT_S, retry=_redis_retry())
            )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            return RDBStorage(_with_driver(url, kind), engine_kwargs=_engine_kwargs(kind))
        return RetryingStorage(_open_rdb(_with_driver(url, kind), kind), label=mask(url))
    except (InputError, FaultError):
        raise
    except Exception as error:  # driver errors vary by backend; all mean "cannot use this storage"
        if isinstance(root := root_cause(error), sqlite3.DatabaseError):  # a damaged file, not a wrong URL
            raise FaultError(f"storage {mask(url)} is unusable: {describe(root)}") from None
        raise InputError(f"cannot open storage {mask(url)}: {describe(root)}") from None


def check_reachable(url: str) -> None:
    """Connect to a server storage (PostgreSQL, MySQL, Redis) now, before slow work such as tokenizing a corpus.
    A file storage is not created here: it is made once the rest of the input is known to be good."""
    if scheme(url) not in (None, "sqlite"):
        open_storage(url)


def persistence_gap(url: str) -> str | None:
    """What a restart of the Redis at url would take from a study, in a line for a warning; None when it keeps
    everything (appendonly yes), when url is not Redis, or when the server will not say (CONFIG is turned off on many
    managed services)."""
    if scheme(url) != "redis":
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


def _open_rdb(url: str, kind: str) -> RDBStorage:
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


def causes(error: BaseException) -> list[BaseException]:
    """error, then each exception it was raised from or while handling, innermost last."""
    chain = [error]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) is not None and inner not in chain:
        chain.append(inner)
    return chain


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception error was raised from: the driver's own (`database disk image is malformed`) rather
    than the wrapper's (Optuna's "... e.g. exceeding max length")."""
    return causes(error)[-1]


def describe(error: BaseException) -> str:
    """An exception as one line with passwords masked."""
    text = str(error).strip()
    return mask(text.splitlines()[0]) if text else error.__class__.__name__


def storage_fault(error: BaseException) -> str | None:
    """One line for an error raised by a storage (or the disk) mid-run, None for any other error."""
    from sqlalchemy.exc import SQLAlchemyError

    # A fault anywhere in the chain is the cause: Optuna's trial post-processing, when the storage fails under it, raises
    # an UnboundLocalError of its own while handling the FaultError.
    if (fault := next((e for e in causes(error) if isinstance(e, FaultError)), None)) is not None:
        return str(fault)
    root = root_cause(error)
    if isinstance(error, (optuna.exceptions.StorageInternalError, SQLAlchemyError, sqlite3.Error)) or isinstance(
        root, sqlite3.Error
    ):
        return f"the storage failed: {describe(root)}"
    if isinstance(root, OSError):
        return f"{root.strerror or describe(root)}: {root.filename}" if root.filename else describe(root)
    if root.__class__.__module__.startswith("redis"):
        return f"the storage failed: {describe(root)}"
    return None


def _with_driver(url: str, kind: str) -> str:
    """url naming the PostgreSQL driver that is installed: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3,
    while the docs (and the dev extra) install psycopg2, which then failed with "Failed to import DB access module"."""
    if kind != "postgresql" or importlib.util.find_spec("psycopg") or not importlib.util.find_spec("psycopg2"):
        return url
    return "postgresql+psycopg2" + url[len(kind):]


class StorageFault(FaultError):
    """The storage failed under a running trial: a fault of the storage, not of the trial, which is queued again."""


# Waits before the retries of a storage call that lost its connection: about 45 s in all, which covers a server
# restart or a failover; a storage down for longer is a fault the run cannot survive.
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0)


def _redis_retry():
    """redis-py's retries of a command whose connection dropped: after RETRY_DELAYS_S, as for a database."""
    from redis.backoff import AbstractBackoff
    from redis.retry import Retry

    class Delays(AbstractBackoff):
        def compute(self, failures: int) -> float:
            return RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S)) - 1]

    return Retry(Delays(), len(RETRY_DELAYS_S))


def is_connection_loss(error: BaseException) -> bool:
    """Whether error is the storage's connection dropping (a server restart, a failover, an idle-connection killer),
    as opposed to a statement the database refused. The drop may be only the context of the error raised: SQLAlchemy's
    PendingRollbackError, met by the next statement of the transaction the drop cut, wrapped by Optuna."""
    from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

    # InterfaceError: "connection already closed", a connection the server dropped earlier
    return any(
        isinstance(cause, DisconnectionError) or (isinstance(cause, DBAPIError) and (
            cause.connection_invalidated or isinstance(cause, (OperationalError, InterfaceError))))
        for cause in causes(error)
    )


class RetryingStorage(BaseStorage):
    """A server database (PostgreSQL, MySQL) whose calls survive a dropped connection: a call that fails because its
    connection was lost is retried on a new one after RETRY_DELAYS_S, and fails with a FaultError after the last.

    A storage error inside a trial is a fault of the storage, not of the trial. Calls that create a row are retried
    too: a connection lost before the commit rolled the row back, so the retry makes it once. Only an acknowledgement
    lost after the commit (a far narrower window) makes it twice: a study's retry then meets its own row, which
    create_study(load_if_exists=True) loads, and a trial's leaves an extra RUNNING trial that no worker stamps, reaped
    after --grace like a dead worker's. Not retrying them instead ended the worker (an `ask` in flight when the
    connection dropped). It wraps the RDBStorage instead of subclassing it, since Optuna would wrap a subclass in its
    cache, which calls private methods of the RDBStorage that no public override can reach.
    """

    def __init__(self, inner: RDBStorage, *, label: str):
        self.inner = inner
        self.label = label


def _retrying(name: str):
    def call(self, *args, **kwargs):
        method = getattr(self.inner, name)
        for delay in (*RETRY_DELAYS_S, None):
            try:
                return method(*args, **kwargs)
            except Exception as error:
                if not is_connection_loss(error):
                    raise
                if delay is None:
                    raise StorageFault(
                        f"storage {self.label} lost its connection and did not come back within "
                        f"{sum(RETRY_DELAYS_S):.0f}s ({describe(root_cause(error))}); a trial left RUNNING is retried "
                        "from its checkpoint when the command runs again"
                    ) from error
                threading.Event().wait(delay)  # back off; nothing sets it

    call.__name__ = name
    return call


for _name in sorted(BaseStorage.__abstractmethods__) + ["remove_session"]:
    setattr(RetryingStorage, _name, _retrying(_name))
abc.update_abstractmethods(RetryingStorage)


def _engine_kwargs(kind: str) -> dict:
    if kind == "sqlite":
        # Wait for a writer instead of failing at once with "database is locked".
        return {"connect_args": {"timeout": 60}}
    # A server that accepts the connection and never answers (a hung server, a stuck proxy) would hold libpq forever.
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
