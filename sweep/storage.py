"""Optuna storages by URL, with passwords kept out of every message.

    sqlite:///runs/sweep.db            one machine, one writer at a time (the default: <--runs-dir>/sweep.db)
    runs/sweep.log                     Optuna's journal file: many processes on one machine or a shared disk
    postgresql://user:pw@host/db       many machines (also mysql://)
    redis://host:6379/0                Optuna's journal on Redis
"""

import importlib.util
import re
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalRedisBackend

from train_core.errors import InputError

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
            # Optuna's default symlink lock points at `url` as given: relative to the lock's own folder, a path like
            # runs/sweep.log dangles, so a lock left by a killed worker never ages out and stalls every worker for
            # good. A plain lock file (fine on NFSv3+) is broken after Optuna's 30 s grace.
            return JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))
        if kind == "redis":
            return JournalStorage(JournalRedisBackend(url))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        return RDBStorage(_with_driver(url, kind), engine_kwargs=_engine_kwargs(kind))
    except InputError:
        raise
    except Exception as error:  # driver errors vary by backend; all mean "cannot use this storage"
        reason = mask(str(error).strip().splitlines()[0]) if str(error).strip() else error.__class__.__name__
        raise InputError(f"cannot open storage {mask(url)}: {reason}") from None


def _with_driver(url: str, kind: str) -> str:
    """url naming the PostgreSQL driver that is installed: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3,
    while the docs (and the dev extra) install psycopg2, which then failed with "Failed to import DB access module"."""
    if kind != "postgresql" or importlib.util.find_spec("psycopg") or not importlib.util.find_spec("psycopg2"):
        return url
    return "postgresql+psycopg2" + url[len(kind):]


def _engine_kwargs(kind: str) -> dict:
    if kind == "sqlite":
        # Wait for a writer instead of failing at once with "database is locked".
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}
