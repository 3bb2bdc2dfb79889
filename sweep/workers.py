"""Many workers on one study, and no lost trials.

Optuna's own heartbeat runs only on RDB storages and only inside `study.optimize`, and it cannot resume a trial. So the
sweep keeps its own, the same on every storage (SQLite, journal file, PostgreSQL, Redis):

- while a trial runs, its worker stamps the trial's system attr `sweep:heartbeat` every `interval` seconds;
- every worker, before each trial and while it waits, fails RUNNING trials whose stamp is older than `grace`
  seconds ("worker died: no heartbeat for 63s") and enqueues a retry with the same params;
- a retry records the trial it continues (`retry_of`) and trains in that trial's folder, so it resumes from the
  dead trial's last checkpoint instead of starting over.

Clocks of machines sharing a study must agree to well within `grace` (NTP does).
"""

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from sweep.record import SystemAttr, TrialAttr, fail_reason
from train_core import InputError

DIED = "worker died"  # how a reaped trial's fail_reason starts
STORAGE_FAULT = "storage fault"  # how the fail_reason starts of a trial that could not write to its storage
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
DEFAULT_MAX_RETRIES = 3  # a trial that kills its worker every time (out of memory, say) must not be retried forever


@dataclass(frozen=True, kw_only=True)
class Liveness:
    interval: float = 10.0  # seconds between heartbeats
    grace: float = 60.0  # a RUNNING trial silent this long belongs to a dead worker
    max_retries: int = DEFAULT_MAX_RETRIES  # retries of a trial that keeps dying (or losing its storage)

    def __post_init__(self):
        if not 0 < self.interval < self.grace:
            raise InputError(f"--heartbeat must be shorter than --grace (the interval < grace), got "
                             f"{self.interval:g} >= {self.grace:g}")


class Heartbeat:
    """Context manager: a thread that stamps one trial with `clock` (wall time) every `interval` seconds until the
    block ends."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        trial_id: int,
        *,
        interval: float,
        clock: Callable[[], float] = time.time,
    ):
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self.clock = clock
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._beat()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self._beat()
            except UpdateFinishedTrialError:
                return  # the trial ended (or another worker declared it dead): nothing left to keep alive
            except Exception:  # a storage hiccup (a dropped connection): beat again next time; only `grace` kills
                continue

    def _beat(self) -> None:
        self.storage.set_trial_system_attr(self.trial_id, SystemAttr.HEARTBEAT, self.clock())


class Interrupts:
    """Context manager: Ctrl-C and SIGTERM become a request that the worker acts on at safe points (between training
    steps, while it waits) instead of a KeyboardInterrupt raised wherever the main thread happens to be. Raised
    inside a storage call, that one can leave the journal file's lock behind (this worker and every other then stall
    until Optuna force-releases it 30 s later) or a write half done. More signals change nothing: a worker may get
    one from the terminal and one from its parent (see run_worker_processes)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = threading.Event()
        self._previous: dict = {}

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():  # the only thread that may set handlers
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.requested.set()

    def check(self) -> None:
        """KeyboardInterrupt here if a signal came."""
        if self.requested.is_set():
            raise KeyboardInterrupt

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`; a signal ends the sleep with KeyboardInterrupt."""
        if self.requested.wait(seconds):
            raise KeyboardInterrupt


def last_beat(trial: FrozenTrial) -> float:
    stamp = trial.system_attrs.get(SystemAttr.HEARTBEAT)
    return float(stamp) if stamp is not None else trial.datetime_start.timestamp()


def trial_id(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial `number` of `study`, through public storage calls (Optuna keeps `_trial_id` private)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def reap_dead_trials(
    study: optuna.Study,
    *,
    storage: optuna.storages.BaseStorage,
    grace: float,
    max_retries: int = DEFAULT_MAX_RETRIES,
    clock: Callable[[], float] = time.time,
) -> list[int]:
    """Fail the RUNNING trials nobody has stamped for `grace` seconds (by `clock`, wall time) and enqueue their
    retries, unless a trial was retried max_retries times already: then it stays FAIL, with the reason. The numbers
    of the trials reaped. `storage` is the study's, as opened."""
    now = clock()
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        silent = now - last_beat(trial)
        if silent < grace:
            continue
        dead = trial_id(storage, study, trial.number)
        retry = retries(trial.user_attrs) < max_retries
        reason = f"{DIED}: no heartbeat for {silent:.0f}s" + ("" if retry else _given_up(trial.user_attrs))
        try:
            storage.set_trial_user_attr(dead, TrialAttr.FAIL_REASON, reason)
            storage.set_trial_state_values(dead, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # finished meanwhile, or another worker reaped it first
        if retry:
            # A retry that died before its objective suggested anything holds its params only as the enqueued ones.
            params = trial.system_attrs.get(SystemAttr.FIXED_PARAMS, {}) | trial.params
            enqueue_retry(study, number=trial.number, params=params, user_attrs=trial.user_attrs, counts=True)
        reaped.append(trial.number)
    return reaped


def retries(user_attrs: dict) -> int:
    """How often this trial's work was retried after its worker died or its storage failed (interrupts not counted)."""
    return int(user_attrs.get(TrialAttr.RETRIES, 0))


def _given_up(user_attrs: dict) -> str:
    return f"; not retried again: it was retried {retries(user_attrs)} times (--max-retries)"


def was_reaped(storage: optuna.storages.BaseStorage, trial_id: int) -> bool:
    """Whether another worker declared this trial dead (see reap_dead_trials)."""
    trial = storage.get_trial(trial_id)
    return trial.state == TrialState.FAIL and fail_reason(trial).startswith(DIED)


def enqueue_retry(study: optuna.Study, *, number: int, params: dict, user_attrs: dict, counts: bool) -> None:
    """A new trial with trial `number`'s params that continues it from its checkpoint folder. counts: whether this
    retry counts towards --max-retries (a dead worker, a failed storage: yes; an interrupt asked for: no)."""
    attrs = {TrialAttr.RETRY_OF: number, TrialAttr.RESUME_TRIAL: resume_root(number, user_attrs),
             TrialAttr.RETRIES: retries(user_attrs) + counts}
    if user_attrs.get(TrialAttr.ANCHOR):
        attrs[TrialAttr.ANCHOR] = True
    study.enqueue_trial(params, user_attrs=attrs)


def resume_root(number: int, user_attrs: dict) -> int:
    """The trial whose folder holds this trial's checkpoints: the first of a chain of retries."""
    return int(user_attrs.get(TrialAttr.RESUME_TRIAL, number))


@dataclass(frozen=True)
class Budget:
    """Where a study stands against its total of finished trials, across all workers."""

    total: int
    finished: int  # complete + pruned
    running: int
    waiting: int  # enqueued: the anchor, retries of dead trials

    @staticmethod
    def of(study: optuna.Study, *, total: int) -> "Budget":
        states = [t.state for t in study.get_trials(deepcopy=False)]
        return Budget(
            total=total,
            finished=sum(s in FINISHED for s in states),
            running=states.count(TrialState.RUNNING),
            waiting=states.count(TrialState.WAITING),
        )

    @property
    def done(self) -> bool:
        """The total is reached and no retry waits: a killed or interrupted trial's work is finished even when other
        trials (a grid sampler's repeats of its point, say) filled the total meanwhile."""
        return self.finished >= self.total and self.waiting == 0

    @property
    def may_start(self) -> bool:
        """A queued trial always may; a new one only while the running ones cannot fill the budget."""
        return not self.done and (self.waiting > 0 or self.finished + self.running < self.total)


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal this process gets when its parent dies


def _die_with(parent: int):
    """preexec_fn for a worker: SIGTERM when `parent` dies, however it dies (a kill -9 runs none of its cleanup), so
    that no orphan goes on to finish the study without a summary. The worker then ends as on Ctrl-C: its trial is
    marked interrupted and queued to resume. Linux only (elsewhere a worker outlives a killed parent)."""
    if not sys.platform.startswith("linux"):
        return None

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def visible_gpus() -> list[str]:
    """The GPUs this process may hand to its workers: the entries of CUDA_VISIBLE_DEVICES when it is set, else one
    per device torch counts (none without CUDA)."""
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def threads_per_worker(workers: int) -> int:
    """Each of `workers` processes on this machine gets an equal share of its cores."""
    return max(1, (os.cpu_count() or 1) // workers)


def worker_gpus(*, workers: int, gpus: list[str]) -> list[str | None]:
    """Worker i's GPU (i from 0): gpus[i mod len(gpus)], so 16 workers on 8 GPUs put two on each; None without GPUs."""
    return [gpus[index % len(gpus)] if gpus else None for index in range(workers)]


def workers_per_device(*, workers: int, device_type: str) -> int:
    """How many of this machine's `workers` processes train on one device at once: all of them on the CPU, else the
    most that worker_gpus puts on one GPU."""
    if device_type == "cpu":
        return workers
    gpus = worker_gpus(workers=workers, gpus=visible_gpus())
    return max(gpus.count(gpu) for gpu in gpus)


def describe_workers(study: optuna.Study, *, gpus: list[str | None], threads: int) -> list[str]:
    """A line per device for the summary: which workers it had and what their trials ran on (the `device` attr)."""
    if not any(gpus):
        return [f"workers: {len(gpus)} on the CPU, {threads} torch thread(s) each"]
    trials = study.get_trials(deepcopy=False)
    lines = []
    for gpu in dict.fromkeys(gpus):
        numbers = ", ".join(str(index) for index, assigned in enumerate(gpus, 1) if assigned == gpu)
        ran = sorted({t.user_attrs[TrialAttr.DEVICE] for t in trials
                      if t.user_attrs.get(TrialAttr.DEVICE, "").endswith(f"CUDA_VISIBLE_DEVICES={gpu})")})
        lines.append(f"GPU {gpu}: worker {numbers} (CUDA_VISIBLE_DEVICES={gpu})"
                     + (f"; trials ran on {', '.join(ran)}" if ran else ""))
    return lines


def run_worker_processes(study: optuna.Study, *, argv: list[str], workers: int, gpus: list[str | None], view,
                         poll_every: float) -> list[int]:
    """Start `workers` copies of this sweep (argv: `python -m sweep lr ...` for one worker), each with an equal share
    of the cores and, where `gpus` (one per worker, from worker_gpus) names one, that GPU alone: CUDA_VISIBLE_DEVICES
    is set before the worker imports torch, so its `device: auto` is that GPU, as cuda:0. Shows their combined
    progress from the storage until all exit; their exit codes, in order (negative: killed by that signal)."""
    command = [sys.executable, "-m", "sweep", *argv, "--threads", str(threads_per_worker(workers)), "--quiet"]
    procs = [
        subprocess.Popen([*command, "--worker-index", str(index)], stdout=subprocess.DEVNULL,
                         preexec_fn=_die_with(os.getpid()),
                         env=os.environ | ({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
        for index, gpu in enumerate(gpus, 1)
    ]
    exited = threading.Event()  # never set: waits on it are timed polls of the storage
    try:
        while any(p.poll() is None for p in procs):
            view.poll(study)
            exited.wait(poll_every)
    except KeyboardInterrupt:
        # Ctrl-C reached the workers too, but a SIGTERM sent to this process alone (kill, systemd) did not: pass it
        # on, or they would run the whole budget while this one waits. A worker counts signals once, whatever came.
        for p in procs:
            if p.poll() is None:
                p.terminate()
        raise
    finally:
        for p in procs:  # let them mark their trials interrupted and exit
            p.wait()
    view.poll(study)
    return [p.returncode for p in procs]
