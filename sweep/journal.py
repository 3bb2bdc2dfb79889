"""Optuna's journal file, checked before anything is appended to it, and repaired on request.

The journal is one JSON record per line. A crash mid-write or a full disk leaves a torn last record (or garbage)
at its end: Optuna's reader stops there without a word, and a record appended after it turns the tail into a bad line
in the middle, which every later read fails on (JSONDecodeError), for every study in the file. So a bad tail is
refused before the first append and before every append (FaultError, one line), and
`python -m sweep repair-journal FILE` cuts it off, keeping a backup.
"""

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from train_core.errors import FaultError, InputError

TAIL_BYTES = 1 << 16  # how much of the file's end the check before each append reads


@dataclass(frozen=True, kw_only=True)
class JournalDamage:
    """The bad end of a journal file: everything from `offset` on is not whole records."""

    path: Path
    offset: int  # first bad byte; the records before it are intact
    bad_bytes: int
    good_records: int | None  # records before the bad tail (None: not counted, see tail_damage)

    def describe(self) -> str:
        kept = f", after {self.good_records} good records" if self.good_records is not None else ""
        return f"the last {self.bad_bytes} bytes (from offset {self.offset}{kept})"

    def refusal(self) -> str:
        return (
            f"journal {self.path} is damaged: {self.describe()} are not a whole record (a crash mid-write or a full "
            f"disk); nothing was appended to it. Run `python -m sweep repair-journal {self.path}` (it keeps a backup) "
            "and retry"
        )


def find_damage(path: Path) -> JournalDamage | None:
    """The bad tail of the journal at path, reading it all; None when every line is a whole record."""
    size = path.stat().st_size
    offset = records = 0
    with open(path, "rb") as f:
        for line in f:
            if not _is_record(line):
                return JournalDamage(path=path, offset=offset, bad_bytes=size - offset, good_records=records)
            offset += len(line)
            records += 1
    return None


def tail_damage(path: Path) -> JournalDamage | None:
    """find_damage for the last record only: cheap enough to run before every append."""
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(max(0, size - TAIL_BYTES))
        tail = f.read()
    if tail.endswith(b"\n"):
        start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
        if start == 0 and size > len(tail):
            return None  # one record longer than TAIL_BYTES: whole, as far as this check can tell
        if _is_record(tail[start:]):
            return None
    else:
        start = tail.rfind(b"\n") + 1
        if start == 0 and size > len(tail):
            return find_damage(path)  # the torn record began before the window: find where
    offset = size - len(tail) + start
    return JournalDamage(path=path, offset=offset, bad_bytes=size - offset, good_records=None)


def _is_record(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        return False


class CheckedJournalBackend(JournalFileBackend):
    """Optuna's journal file backend that refuses to append after a bad tail.

    The lock is a plain lock file (JournalFileOpenLock) rather than Optuna's default symlink lock, which points at the
    journal path as given: relative to the lock's own folder, a path like runs/sweep.log dangles, so a lock left by a
    killed worker never ages out and stalls every worker for good. The plain one is broken after Optuna's 30 s grace.
    """

    def __init__(self, path: str):
        self.lock = JournalFileOpenLock(path)
        super().__init__(path, lock_obj=self.lock)
        self.path = Path(path)
        with _held(self.lock):  # a writer may be mid-append: judge the file between two appends
            damage = find_damage(self.path)
        if damage is not None:
            raise FaultError(damage.refusal())

    def append_logs(self, logs: list[dict]) -> None:
        # Optuna's own append, with the tail checked under the same lock.
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        with _held(self.lock):
            if (damage := tail_damage(self.path)) is not None:
                raise FaultError(damage.refusal())
            with open(self.path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())


class _held:
    """The journal's lock as a context manager."""

    def __init__(self, lock: JournalFileOpenLock):
        self.lock = lock

    def __enter__(self):
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()


def repair_journal(path: Path) -> str:
    """Cut a journal file's bad tail off, after copying the whole file to a backup; what was done, in one line."""
    if not path.is_file():
        raise InputError(f"repair-journal: no journal file at {path}")
    lock = JournalFileOpenLock(str(path))
    with _held(lock):
        damage = find_damage(path)
        if damage is None:
            records = sum(1 for _ in open(path, "rb"))
            return f"{path} is intact ({records} records); nothing to repair"
        backup = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
        shutil.copy2(path, backup)
        with open(path, "r+b") as f:
            f.truncate(damage.offset)
            f.flush()
            os.fsync(f.fileno())
    return f"{path}: cut off {damage.describe()}, which were not a whole record; backup of the whole file: {backup}"
