"""Is this path the sweep's? Every path a command writes over, cuts or deletes, recognised before it does.

What a mistyped flag would otherwise destroy is refused in one line naming the path, what it looks like and what was
expected (InputError: exit 2), before any other work. The sweep's kinds of target (train_core/targets.py holds run
folders, prepared data and the peak cache):

    an Optuna journal    its first line is a journal record ({"op_code": ...}), or the torn start of one; or empty
    a SQLite storage     a file that starts with SQLite's 16-byte header, or an empty one
    a storage's folder   one that exists, or one to make inside a folder that exists or inside --runs-dir
    the runs folder      a folder, or nothing yet
    a study folder       only run folders (its trials' and promoted runs')
    the branch store     only <config digest>/stable-N.pt
    the artifact store   only files named by Optuna's artifact ids (uuids)
    a plot               a PNG that matplotlib wrote; coord-check's JSON beside it, its own
"""

import json
import re
from pathlib import Path

from train_core import (
    PNG_SIGNATURE, RUN_FILES_SAID, SQLITE_HEADER, STABLE_NAME, TEMPORARY_NAME, InputError, check_folder_place,
    describe_path, foreign_entries, listing, run_folder_strays,
)

JOURNAL_START = b'{"op_code":'  # how Optuna's journal writes every record (compact JSON, op_code first)
FIRST_LINE_BYTES = 1 << 20  # more than any journal's first record (the study's creation)
ARTIFACT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # upload_artifact's uuid4
BRANCH_DIGEST = re.compile(r"[0-9a-f]{16}")  # branches.BranchStore._stored: a folder per shared config
BRANCH_FILE = re.compile(rf"{STABLE_NAME}|{TEMPORARY_NAME}")
ARTIFACT_WRITERS = ("lr", "horizon", "transfer", "batch", "range", "promote")  # commands that upload plots and curves
JOURNAL_SAID = 'an Optuna journal (whose first line is a record like {"op_code":0,...})'


def check_command_targets(args) -> None:
    """The runs folder, the storage and its artifact folder a command was given, checked before it does anything."""
    runs = getattr(args, "runs", None)
    if runs is not None:
        check_folder_place(runs.root, name=f"--runs-dir {runs.root}",
                           expected="a folder for trials, runs, plots and the default storage")
    if getattr(args, "storage", None):
        check_storage_file(args.storage)
        check_storage_folder(args.storage, runs_root=runs.root)
        if args.command in ARTIFACT_WRITERS:
            check_artifact_folder(runs.artifacts(args.storage))


def journal_problem(path: Path) -> str | None:
    """None when the file at path is an Optuna journal (or empty); else what it looks like."""
    with open(path, "rb") as f:
        first = f.readline(FIRST_LINE_BYTES)
    if not first:
        return None
    if first.endswith(b"\n"):
        try:
            record = json.loads(first)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("op_code"), int):
            return None
    elif first.startswith(JOURNAL_START):
        return None  # a journal whose first record was torn
    return describe_path(path)


def check_journal(path: Path, *, name: str) -> None:
    """Refuse to cut or append to a file that is not an Optuna journal (a SQLite database, a text or binary file)."""
    if (problem := journal_problem(path)) is not None:
        raise InputError(f"{name} is {problem}, not {JOURNAL_SAID}: nothing was changed")


def check_storage_file(url: str) -> None:
    """Refuse a file storage whose path holds something else: a folder, a file where its folder should be, a file
    that is not a SQLite database (sqlite:///) or not a journal (a plain path). A new or empty file is fine."""
    path = _storage_path(url)
    if path is None:
        return
    check_folder_place(path.parent, name=f"the folder of --storage {url}", expected="a folder")
    if not path.exists():
        return
    if path.is_dir():
        raise InputError(f"--storage {url} is {describe_path(path)}, expected a storage file")
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_HEADER))
    if url.startswith("sqlite:"):
        if head and head != SQLITE_HEADER:
            raise InputError(f"--storage {url}: {path} is {describe_path(path)}, not a SQLite database (which starts with "
                             "'SQLite format 3'): give a new file or a SQLite database")
    elif head == SQLITE_HEADER:
        raise InputError(f"--storage {url} is a SQLite database, not a journal file: give it as sqlite:///{url}")
    else:
        check_journal(path, name=f"--storage {url}")


def check_storage_folder(url: str, *, runs_root: Path) -> None:
    """Refuse a file storage in a folder that is not there and would take more than one new folder to make, outside
    --runs-dir: a mistyped path would otherwise start an empty study there, unseen by the sweep it was meant for."""
    path = _storage_path(url)
    if path is None or path.parent.exists() or path.parent.parent.exists():
        return
    if path.parent.resolve().is_relative_to(runs_root.resolve()):
        return  # the runs folder is this tool's to make
    raise InputError(f"--storage {url}: neither its folder {path.parent} nor {path.parent.parent} exists: check the "
                     "path, or make the folder first (a storage's folder is made only inside one that exists, or "
                     f"inside --runs-dir {runs_root})")


def check_artifact_folder(folder: Path) -> None:
    """Refuse an artifact folder that holds anything Optuna's artifact store did not write (a storage path like
    ~/sweep.log puts it at ~/artifacts)."""
    check_folder_place(folder, name=f"artifact folder {folder}", expected="a folder for Optuna's artifacts")
    if strays := foreign_entries(folder, ARTIFACT_ID):
        raise InputError(f"artifact folder {folder} (beside the storage) holds {listing(strays)}, which Optuna's "
                         "artifact store does not write (it names files by uuid): give the storage a folder of its own")


def check_trial_places(plan) -> None:
    """The folders the trials of `plan` (a TrialPlan) write into and delete from: the study's folder, and the branch
    store with wsd."""
    check_study_folder(plan.study_dir)
    if plan.branches is not None:
        check_branch_store(plan.branches.folder)


def check_study_folder(folder: Path) -> None:
    """Refuse a study folder that holds anything but run folders: a sweep deletes its trials' folders when they end."""
    check_folder_place(folder, name=f"study folder {folder}", expected="a folder of its trials' run folders")
    if not folder.is_dir():
        return
    strays = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            if inside := run_folder_strays(entry):
                strays.append(f"{entry.name}/{inside[0]}")
        elif entry.exists():  # not a trial folder another worker deleted meanwhile
            strays.append(entry.name)
    if strays:
        raise InputError(f"study folder {folder} holds {listing(strays)}, which a sweep does not write (only run "
                         f"folders with {RUN_FILES_SAID}): pick another --study-name or --runs-dir, or move them away")


def check_branch_store(folder: Path) -> None:
    """Refuse a branch store that holds anything but its digest folders of stable-phase checkpoints: a longer trial
    deletes the shorter one's state there."""
    check_folder_place(folder, name=f"branch store {folder}", expected="a folder of stable-phase checkpoints")
    if not folder.is_dir():
        return
    strays = []
    for entry in sorted(folder.iterdir()):
        if not (entry.is_dir() and BRANCH_DIGEST.fullmatch(entry.name)):
            strays.append(entry.name + ("/" if entry.is_dir() else ""))
        else:
            strays += [f"{entry.name}/{p.name}" for p in sorted(entry.iterdir())
                       if p.is_dir() or not BRANCH_FILE.fullmatch(p.name)]
    if strays:
        raise InputError(f"branch store {folder} holds {listing(strays)}, which a sweep does not write (only "
                         "<digest>/stable-N.pt): pick another --runs-dir, or move them away")


def check_plot(path: Path, *, name: str) -> None:
    """Refuse to write a plot over anything but a plot: a file there must be a PNG that matplotlib wrote, or empty (all
    that an earlier version's writer left when it was killed mid-write: nothing to lose)."""
    check_folder_place(path.parent, name=f"the folder of {name}", expected="a folder")
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(256)
        if head.startswith(PNG_SIGNATURE) and b"Matplotlib" in head:  # its Software field, before the image data
            return
    raise InputError(f"{name} is {describe_path(path)}, not a plot this tool wrote (a PNG from matplotlib): give another "
                     "path, or move it away")


def check_coord_check_out(plot: Path, *, name: str) -> None:
    """coord-check's plot and the JSON of its scales beside it (the plot's name, .json)."""
    if plot.suffix != ".png":
        raise InputError(f"{name}: expected a .png file, got {plot.suffix or 'no suffix'}")
    check_plot(plot, name=name)
    scales = plot.with_suffix(".json")
    if scales.exists() and not _coord_check_json(scales):
        raise InputError(f"{name}: {scales}, where its scales go, is {describe_path(scales)}, not the JSON of a coord-check "
                         "(widths, steps, scales): give another path, or move it away")


def _coord_check_json(path: Path) -> bool:
    try:
        values = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and {"widths", "steps", "scales"} <= values.keys()


def _storage_path(url: str) -> Path | None:
    """The file of a SQLite or journal storage; None for a server, and for SQLite's in-memory and URI forms."""
    from sweep.storage.kinds import kind_of

    path = kind_of(url).file(url)
    if path is None or str(path).startswith(("file:", ":memory:")):
        return None
    return path
