"""Optuna's journals, checked so that damage is said in one line instead of read as data or waited on forever.

A journal file is checked before anything is appended to it, and repaired on request; a Redis journal, for records
that were there and are gone.

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
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from optuna.exceptions import ExperimentalWarning
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalRedisBackend

from sweep.targets import check_journal
from train_core import FaultError, InputError

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
    """Optuna's journal file backend that refuses to append after a bad tail, and says so when the file it opened was
    deleted or replaced under it.

    Optuna's reader keeps byte offsets into the file it first read: a file deleted (Optuna's append creates a new one,
    holding records for studies that are not in it) or replaced (a reader past its end sees nothing new) leaves this
    process going on with a copy of studies that are no longer there. So every read and append checks that the path
    is still the file opened (device and inode): FaultError, one line.

    The lock is a plain lock file (JournalFileOpenLock) rather than Optuna's default symlink lock, which points at the
    journal path as given: relative to the lock's own folder, a path like runs/sweep.log dangles, so a lock left by a
    killed worker never ages out and stalls every worker for good. The plain one is broken after Optuna's 30 s grace.
    """

    def __init__(self, path: str):
        self.lock = JournalFileOpenLock(path)
        super().__init__(path, lock_obj=self.lock)
        self.path = Path(path)
        self.identity = _identity(self.path)
        with _held(self.lock):  # a writer may be mid-append: judge the file between two appends
            damage = find_damage(self.path)
        if damage is not None:
            raise FaultError(damage.refusal())

    def read_logs(self, log_number_from: int):
        self._check_same_file()
        yield from super().read_logs(log_number_from)

    def append_logs(self, logs: list[dict]) -> None:
        # Optuna's own append, with the file and its tail checked under the same lock.
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        with _held(self.lock):
            self._check_same_file()
            if (damage := tail_damage(self.path)) is not None:
                raise FaultError(damage.refusal())
            with open(self.path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())

    def _check_same_file(self) -> None:
        if _identity(self.path) != self.identity:
            raise FaultError(
                f"journal {self.path} was deleted or replaced by another file while this process used it; nothing was "
                "written to it. Run the command again: it reads the file that is there now"
            )


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file is at path (device, inode); None when there is none."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class _held:
    """The journal's lock as a context manager."""

    def __init__(self, lock: JournalFileOpenLock):
        self.lock = lock

    def __enter__(self):
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()


def repair_journal(path: Path) -> str:
    """Cut a journal file's bad tail off, after copying the whole file to a backup; what was done, in one line. A file
    that is not a journal (a SQLite database, a text file with no record) is refused and left as it is."""
    if not path.is_file():
        raise InputError(f"repair-journal: no journal file at {path}")
    check_journal(path, name=f"repair-journal {path}")  # before its lock file is made: another file is not touched
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


def redis_client(url: str, *, timeout: float, retry=None):
    """A client of the Redis at url whose connects and commands give up after `timeout` seconds; it sends a command
    again after a dropped connection as `retry` says (None: never, as from_url's clients do)."""
    import redis  # installed with the Redis journal it serves

    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=retry)


class CheckedRedisBackend(JournalRedisBackend):
    """Optuna's Redis journal that says so when records it has read are gone, instead of waiting for them forever.

    Records are numbered and written in one Lua script, so every record up to the last number is there. One that is
    missing, or a last number below what this process has read, means the journal was emptied (a FLUSHDB, or a restart
    of a Redis without persistence) and its numbering started again. Optuna's reader waits forever for a missing record
    (a flush between its read of the last number and of a record; a flush between the two commands of Optuna's append,
    which leaves no record 0), and a process that had read past the new numbering goes on with studies that are gone.
    So each read is checked, and each append is checked in the same script that writes it: FaultError, one line, and
    nothing written into the emptied database. The keys are Optuna's, so Optuna (and optuna-dashboard) read it as theirs.
    An append is written once even when redis-py sends it again after a dropped connection lost its reply (a record
    twice would make a trial twice, or fail this process's replay of a finished trial's second ending).
    """

    LAST = ":log_number"  # Optuna's keys (no prefix): the last record's number, and record N at RECORD + N
    RECORD = ":log:"
    SNAPSHOT = ":snapshot"
    BATCH = 1000  # records fetched per round trip (Optuna's reader makes one per record)
    WRITER = "lr-sweep:journal-writer:{}"  # ours: the token of this writer's last append, for a day
    # KEYS: LAST, this writer's WRITER key. ARGV: RECORD, the records this process has read, this append's token, the
    # records. A token already there is redis-py's retry of an append whose reply was lost: written once, not twice.
    APPEND = """
        local last = tonumber(redis.call('get', KEYS[1]) or '-1')
        if last + 1 < tonumber(ARGV[2]) then return {0, last} end
        if redis.call('get', KEYS[2]) == ARGV[3] then return {1, last} end
        for i = 4, #ARGV do
            last = last + 1
            redis.call('set', ARGV[1] .. last, ARGV[i])
        end
        redis.call('set', KEYS[1], last)
        redis.call('set', KEYS[2], ARGV[3], 'EX', 86400)
        return {1, last}
    """

    def __init__(self, url: str, *, label: str, timeout: float, retry):
        with warnings.catch_warnings():  # "experimental": a notice for whoever chose this class, which is us, not the user
            warnings.simplefilter("ignore", ExperimentalWarning)
            super().__init__(url)
        # A server that is down or wrong is said at once (the probe retries nothing); one that accepts and never
        # answers, after `timeout`, whatever redis-py's defaults.
        with redis_client(url, timeout=timeout) as probe:
            probe.ping()
        # From here on a command whose connection dropped is sent again, as `retry` says.
        self.client = redis_client(url, timeout=timeout, retry=retry)
        self.append = self.client.register_script(self.APPEND)
        self.writer = self.WRITER.format(uuid.uuid4().hex)
        self.label = label
        self.records_read = 0

    def read_logs(self, log_number_from: int):
        value = self.client.get(self.LAST)
        last = -1 if value is None else int(value)
        self._check(last, read=max(log_number_from, self.records_read))
        for start in range(log_number_from, last + 1, self.BATCH):
            numbers = range(start, min(start + self.BATCH, last + 1))
            for number, record in zip(numbers, self.client.mget([f"{self.RECORD}{n}" for n in numbers])):
                if record is None:
                    raise self._lost(f"record {number} of {last + 1} is missing")
                self.records_read = number + 1
                yield json.loads(record)

    def append_logs(self, logs: list[dict]) -> None:
        # One JournalStorage appends one batch at a time (under its lock), so a retry only ever repeats the last one.
        token = uuid.uuid4().hex
        written, last = self.append(
            keys=[self.LAST, self.writer], args=[self.RECORD, self.records_read, token, *map(json.dumps, logs)]
        )
        if not written:
            self._check(last, read=self.records_read)

    def save_snapshot(self, snapshot: bytes) -> None:
        self.client.set(self.SNAPSHOT, snapshot)

    def load_snapshot(self) -> bytes | None:
        return self.client.get(self.SNAPSHOT)

    def _check(self, last: int, *, read: int) -> None:
        if last + 1 < read:
            raise self._lost(f"it holds {last + 1} records, this process had read {read}")

    def _lost(self, what: str) -> FaultError:
        return FaultError(
            f"the Redis journal {self.label} was emptied mid-run ({what}): a FLUSHDB, or a restart of a Redis without "
            "persistence (see the README's storages); its studies are lost, run the command again to start over"
        )
