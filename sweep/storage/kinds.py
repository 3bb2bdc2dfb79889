"""The storage kinds, one description each: every place that treats one kind unlike another reads it here.

    sqlite:///runs/sweep.db            one machine, one writer at a time (the default: <--runs-dir>/sweep.db)
    runs/sweep.log                     Optuna's journal file: many processes on one machine or a shared disk
    postgresql://user:pw@host/db       many machines (also mysql://)
    redis://host:6379/0                Optuna's journal on Redis

Plain values: the runs folder and the command line read it.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from train_core import (

    InputError,

)

# The password runs to the URL's last '@': a raw '@' inside it (unencoded) must not leave its tail in the clear.
_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)\S*@", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class StorageKind:
    name: str
    schemes: tuple[str, ...]  # URL schemes; () for a journal file, which is a plain path
    several_writers: bool  # whether several processes may write at once (--workers, a second sweep)
    server: bool  # reached over the network: checked for reachability first, its dropped connections retried
    journal: bool  # Optuna's JournalStorage over it, else its RDBStorage

    def file(self, url: str) -> Path | None:
        """The file that holds the storage, None for a server."""
        if self.server:
            return None
        if not self.schemes:
            return Path(url)
        return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None  # sqlite:// is in memory

    def artifact_root(self, url: str, *, runs_root: Path) -> Path:
        """Where the storage's artifacts and plots go: beside its file, or in the runs folder for a server."""
        file = self.file(url)
        return file.parent if file is not None else runs_root


KINDS = (
    StorageKind(name="sqlite", schemes=("sqlite",), several_writers=False, server=False, journal=False),
    StorageKind(name="journal", schemes=(), several_writers=True, server=False, journal=True),
    StorageKind(name="postgresql", schemes=("postgresql", "postgresql+psycopg2"), several_writers=True, server=True,
                journal=False),
    StorageKind(name="mysql", schemes=("mysql", "mysql+pymysql"), several_writers=True, server=True, journal=False),
    StorageKind(name="redis", schemes=("redis",), several_writers=True, server=True, journal=True),
)


def mask(text: str) -> str:
    """Replace any password inside a URL in text with ***."""
    return _PASSWORD.sub(r"\g<head>***@", text)


def scheme(url: str) -> str | None:
    match = re.match(r"^([a-z][a-z0-9+.-]*)://", url, re.IGNORECASE)
    return match.group(1).lower() if match else None


def kind_of(url: str) -> StorageKind:
    """The kind of storage url names; an InputError for a URL no storage can take, before anything is created."""
    found = scheme(url)
    if found is None and url.endswith((".db", ".sqlite", ".sqlite3")):
        raise InputError(f"--storage {url} looks like a SQLite file: write it as sqlite:///{url}")
    for kind in KINDS:
        if (found in kind.schemes) if found else not kind.schemes:
            return kind
    raise InputError(
        f"--storage {mask(url)}: unknown scheme {found}:// "
        "(allowed: sqlite:///FILE, postgresql://..., mysql://..., redis://..., or a journal file path)"
    )
