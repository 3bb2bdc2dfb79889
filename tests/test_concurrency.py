"""Concurrent runs: a run folder or a SQLite storage is owned by one process at a time, the refused one names the
holder, the kernel frees a dead holder's lock, and the workers of a `--workers` parent die with it."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sweep_fixtures import run_lr
from optuna.trial import TrialState
from worker_fixtures import (  # noqa: F401 (no_stray_workers: an autouse fixture)
    SUBPROCESS_ENV,
    load_study,
    no_stray_workers,
    start,
    sweep_command,
    tail,
    wait_exit,
    wait_until,
)

from sweep.cli import main
from train_core.errors import FaultError
from train_core.locks import RUN_LOCK_FILE, exclusive, hold_run_folder

HOLDER = f"pid {os.getpid()} on {socket.gethostname()}"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_train_into_a_run_folder_another_process_owns_is_refused_naming_the_holder(study, tmp_path, capsys):
    out = tmp_path / "mine"
    with hold_run_folder(out):
        code = main(["train", "--study", str(study), "--max-steps", "4", "--out", str(out)])

    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert f"run folder {out} is in use by {HOLDER}" in line
    assert sorted(p.name for p in out.iterdir()) == [RUN_LOCK_FILE]  # nothing written beside the lock
    assert main(["train", "--study", str(study), "--max-steps", "4", "--out", str(out)]) == 0  # free again


def test_a_second_sweep_on_one_sqlite_file_is_refused_with_the_alternatives(study, tmp_path, capsys):
    db = tmp_path / "store" / "sweep.db"
    with exclusive(Path(f"{db}.lock"), what="x"):  # what a sweep running on that file holds
        code = run_lr(study, f"sqlite:///{db}", "--trials", "1", steps=5)

    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert f"storage sqlite:///{db} is in use by {HOLDER}" in line
    assert "journal file" in line and "postgresql://" in line
    assert not db.exists()  # refused before the database was created


def test_the_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    lock = tmp_path / "run" / RUN_LOCK_FILE
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from train_core.locks import exclusive\n"
         f"with exclusive(Path({str(lock)!r}), what='run'):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=SUBPROCESS_ENV,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FaultError, match=f"run is in use by pid {holder.pid} on {socket.gethostname()}"):
            with exclusive(lock, what="run"):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
    with exclusive(lock, what="run"):  # the kernel released it with the process
        pass


@pytest.mark.slow
def test_workers_die_with_their_parent_when_it_is_killed(study, tmp_path):
    log = tmp_path / "parent.log"
    command = sweep_command(study, "store/sweep.log", "orphans", "--trials", "6", "--pruner", "none", "--workers", "2",
                            steps=400)
    parent = start(command, tmp_path, log)
    runs = tmp_path / "runs" / "orphans"
    wait_until(lambda: len(list(runs.glob("trial-*"))) >= 2 or parent.poll() is not None, timeout=60,
               what="both workers' trials")
    children = [int(pid) for pid in Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()]
    assert len(children) == 2, tail(log)

    parent.send_signal(signal.SIGKILL)
    assert wait_exit(parent, timeout=10, log=log) == -signal.SIGKILL

    def all_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in children)

    wait_until(all_gone, timeout=60, what="the orphaned workers to exit")
    trials = load_study(str(tmp_path / "store" / "sweep.log"), "orphans").get_trials()
    # They stopped mid-study, as on Ctrl-C (an orphan would have finished all 6 trials, with no summary).
    assert "interrupted" in [t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL]
    assert sum(t.state == TrialState.COMPLETE for t in trials) < 6


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (FileNotFoundError, IndexError):
        return "zombie"
