"""Is this path ours? What train_core writes, recognised before anything there is written over or deleted.

A command that overwrites or deletes a path a user named first checks that the path holds what this project writes
there; otherwise it refuses in one line naming the path, what it looks like and what was expected (InputError: exit
2), before any other work. train_core's own kinds of target:

    a run folder     only what a run writes: checkpoints, DONE, its lock, temporaries, and the sweep's logs of it
    a data folder    only what `prepare` writes: train.bin, val.bin, its own meta.json, sidecars, temporaries
    the peak cache   a JSON object of numbers (train_core/peak.py)

sweep/targets.py holds the sweep's (journals, storages, study folders, plots, artifacts).
"""

import contextlib
import json
import re
from pathlib import Path

from train_core.errors import InputError

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEAD_BYTES = 4096  # how much of a file `describe` reads to tell binary from text
STEP_NAME, STABLE_NAME = r"step-\d{8}\.pt", r"stable-\d{8}\.pt"  # checkpoint.py's STEP_FILE and STABLE_FILE
TEMPORARY_NAME = r"\..+\.[0-9a-f]{32}\.tmp"  # files.temporary_name: a write in progress, or one a crash left
# What checkpoint.py (step, stable, best, DONE), locks.py (.lock) and files.py write in a run folder, and the two logs
# the sweep keeps beside them: a promoted run's metrics.csv and a trial's curve.
RUN_FILE = re.compile(
    rf"{STEP_NAME}|{STABLE_NAME}|best\.pt|DONE|\.lock|{TEMPORARY_NAME}|metrics\.csv|trial-\d+-curve\.csv"
)
RUN_MARK = re.compile(rf"{STEP_NAME}|{STABLE_NAME}|best\.pt|DONE|\.lock")  # what an empty folder lacks
RUN_FILES_SAID = "step-*.pt, best.pt, stable-*.pt, DONE, .lock, metrics.csv"
# What data.prepare_documents writes, and the token-id sidecars data.max_token_id keeps beside its files.
PREPARED_FILE = re.compile(rf"train\.bin|val\.bin|meta\.json|\.(train|val)\.bin\.max-token-id\.json|{TEMPORARY_NAME}")


def describe_path(path: Path) -> str:
    """What is at path, in a few words: 'a SQLite database (192,512 bytes)', 'a folder holding a.txt, b/'."""
    if path.is_dir():
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        return f"a folder holding {listing(names)}" if names else "an empty folder"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if head.startswith(SQLITE_HEADER):
        kind = "a SQLite database"
    elif head.startswith(PNG_SIGNATURE):
        kind = "a PNG image"
    elif b"\x00" in head or not _utf8(head):
        kind = "a binary file"
    else:
        kind = "a text file"
    return f"{kind} ({size:,} bytes)"


def listing(names: list[str], *, shown: int = 3) -> str:
    """'a, b, c and 4 more'."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def blocking_file(path: Path) -> Path | None:
    """The file at path or at the nearest of its parents that exists, when that is not a folder: it keeps path from
    being a folder or from being made one. None when there is no such file."""
    for place in (path, *path.parents):
        if place.exists():
            return None if place.is_dir() else place
    return None


def check_folder_place(path: Path, *, name: str, expected: str) -> None:
    """Refuse a path that is a file, or lies below one, where a folder is wanted; `name` is how the user gave it
    ('--runs-dir results.txt')."""
    if (blocker := blocking_file(path)) is None:
        return
    if blocker == path:
        raise InputError(f"{name} is {describe_path(path)}, expected {expected}")
    raise InputError(f"{name} lies below {blocker}, which is {describe_path(blocker)}, not a folder: expected {expected}")


def foreign_entries(folder: Path, allowed: re.Pattern) -> list[str]:
    """The entries of folder that this tool does not write there: sub-folders, and files whose names `allowed` does
    not match; sorted, folders marked with '/'. [] for an empty or missing folder."""
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):  # none, or deleted meanwhile (another worker's trial ended)
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in entries if p.is_dir() or not allowed.fullmatch(p.name))


def run_folder_strays(folder: Path) -> list[str]:
    """The entries of folder that a run does not write (sub-folders included); [] for an empty or missing folder."""
    return foreign_entries(folder, RUN_FILE)


def is_run_folder(folder: Path) -> bool:
    """Whether folder is a run's: only what a run writes, with its checkpoints, DONE or lock among it (an empty
    folder is no run's yet; one that also holds other files is someone else's, a best.pt among them or not)."""
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:  # none, not a folder, or a parent this user may not list
        return False
    return any(RUN_MARK.fullmatch(n) for n in names) and not run_folder_strays(folder)


def check_run_folder(folder: Path, *, name: str) -> None:
    """Refuse, before a run writes checkpoints into folder (and deletes its old ones), a folder that is not a run's:
    a file, a folder holding anything a run does not write, or a folder inside another run's folder."""
    check_folder_place(folder, name=name, expected="a folder for a run's checkpoints")
    if strays := run_folder_strays(folder):
        raise InputError(f"{name} holds {listing(strays)}, which a run does not write: expected a new or empty folder, "
                         f"or a run folder (only {RUN_FILES_SAID}); give another folder")
    check_outside_run_folders(folder, name=name)


def check_outside_run_folders(path: Path, *, name: str) -> None:
    """Refuse a path below a run folder: that folder is the run's alone (a sweep deletes a trial's when it ends)."""
    if (run := next((p for p in path.parents if is_run_folder(p)), None)) is not None:
        raise InputError(f"{name} is inside the run folder {run}: expected a folder of its own, outside any run's")


def clear_run_folder(folder: Path) -> None:
    """Delete what a run wrote in folder (checkpoints, logs, lock), then the folder once it is empty; anything else is
    left where it is, and so is the folder that holds it."""
    # Errors are ignored: cleaning up after a trial must never fail the trial.
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            if RUN_FILE.fullmatch(path.name) and not path.is_dir():
                path.unlink(missing_ok=True)
        folder.rmdir()  # fails when something not the run's is left in it: then the folder stays too


def check_data_folder(out: Path, *, name: str) -> None:
    """Refuse an output folder for `prepare` that holds anything it did not write: a file, a folder with other files,
    or a meta.json of another tool; a new folder, an empty one or an earlier `prepare`'s is fine."""
    check_folder_place(out, name=name, expected="a folder for train.bin, val.bin and meta.json")
    if out.is_dir():
        if strays := foreign_entries(out, PREPARED_FILE):
            raise InputError(f"{name} holds {listing(strays)}, which prepare does not write: expected a new or empty "
                             "folder, or one an earlier prepare wrote (train.bin, val.bin, meta.json); give another folder")
        meta = out / "meta.json"
        if meta.exists() and not _prepared_meta(meta):
            raise InputError(f"{name} holds a meta.json that prepare did not write ({describe_path(meta)}; prepare's says "
                             '"format": "nanogpt"): give another folder')
    check_outside_run_folders(out, name=name)


def peak_cache_problem(path: Path) -> str | None:
    """What is at the peak cache's path when it is not a table of peaks (a JSON object of numbers); None when it is
    one, or when there is nothing there yet."""
    if not path.exists():
        return None
    try:
        table = json.loads(path.read_bytes())
        if isinstance(table, dict) and all(isinstance(v, (int, float)) for v in table.values()):
            return None
    except (OSError, ValueError):  # a folder, an unreadable file, not JSON or not UTF-8
        pass
    return describe_path(path)


def _prepared_meta(path: Path) -> bool:
    try:
        meta = json.loads(path.read_bytes())
    except ValueError:
        return False
    return isinstance(meta, dict) and meta.get("format") == "nanogpt"


def _utf8(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(head) - 3  # only a character cut by the end of the head
    return True
