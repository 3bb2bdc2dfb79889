"""Atomic file writes: the one way train_core (and the sweep) puts a file in place.

A writer fills a temporary file beside the target (a unique name, so two processes writing the same target never
share one), fsyncs it, renames it over the target and fsyncs the folder: a reader sees the old file or the whole new
one, also after a crash or a power loss, never half of it.
"""

import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable


def temporary_name(path: Path) -> Path:
    """A hidden, unique name beside `path` for the file that will replace it."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> int:
    """Put what `write(file)` writes at `path` atomically; the size written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            commit(f, tmp, path)
    except BaseException:  # a failed write (disk full, unpicklable state) must not leave a partial file behind
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def atomic_write_bytes(path: Path, *parts: bytes) -> int:
    """Put `parts`, one after another, at `path` atomically; the size written."""
    return atomic_write(path, lambda f: [f.write(part) for part in parts])


def commit(f: BinaryIO, tmp: Path, path: Path) -> None:
    """Make the open temporary file `f` (at `tmp`) durable and rename it over `path`, durably too."""
    f.flush()
    os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
