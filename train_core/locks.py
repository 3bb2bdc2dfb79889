"""Exclusive ownership of a folder or file by one process at a time.

    with exclusive(run_dir / ".lock", what=f"run folder {run_dir}"):
        ...  # checkpoints, metrics and records of this run are written by this process only

The lock is an flock on a lock file, so the kernel releases it when its process dies, however it dies (a kill -9
leaves no stale lock behind). The file holds the holder's pid and host, which a refused process names. flock is
advisory and per machine: on a shared filesystem it also holds across machines only where the filesystem supports
it (NFSv4, Lustre with flock mounted).
"""

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from train_core.errors import FaultError, InputError
from train_core.targets import describe_path

RUN_LOCK_FILE = ".lock"


def this_process() -> str:
    """This process as people name it across machines: 'pid 4242 on gpu-node-3'."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


@contextlib.contextmanager
def exclusive(lock_file: Path, *, what: str, advice: str = "wait for it to finish, or stop it"):
    """Hold lock_file for the block; FaultError naming the holder when another process holds it, InputError when
    lock_file is some other file of that name."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise FaultError(f"{what} is in use by {holder}; {advice}") from None
        check_lock_file(fd, lock_file)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{this_process()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_lock_file(fd: int, lock_file: Path) -> None:
    """Refuse to truncate a lock file that holds something other than this module's line (or nothing): a file of the
    same name that is not ours."""
    held = os.pread(fd, 200, 0)
    if held and not held.startswith(b"pid "):
        raise InputError(f"{lock_file} is {describe_path(lock_file)} that is not a lock of this tool (which holds 'pid N "
                         "on HOST'): move it away")


def hold_run_folder(folder: Path):
    """Own a run folder (checkpoints, metrics, DONE) for the block. Under torchrun only rank 0 takes it: the ranks of
    one run share their folder."""
    if int(os.environ.get("RANK", 0)) != 0:
        return contextlib.nullcontext()
    return exclusive(Path(folder) / RUN_LOCK_FILE, what=f"run folder {folder}",
                     advice="two runs in one folder would interleave their checkpoints and metrics; wait for it to "
                     "finish, or stop it")
