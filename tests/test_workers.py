"""Dead workers and interrupted trials: heartbeats, reaping, retries that resume from the dead trial's checkpoint.

The unit tests drive sweep.workers on a real journal file. The others run `python -m sweep lr` as real
subprocesses (one torch thread each, so that runs compare bit for bit), SIGKILL or SIGTERM them at points found by
polling the run folder and the storage, and read the study back with Optuna.
"""

import os
import random
import re
import signal
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from sweep_fixtures import run_lr, study_values, write_study, write_token_files
from worker_fixtures import (  # noqa: F401 (no_stray_workers: an autouse fixture)
    SUBPROCESS_ENV,
    checkpoints,
    delete_study,
    load_study,
    no_stray_workers,
    postgres_study,
    start,
    stop_all,
    sweep_command,
    tail,
    unique_name,
    wait_exit,
    wait_until,
)

from sweep.storage import open_storage
from sweep.workers import (
    FINISHED, Budget, Heartbeat, Liveness, reap_dead_trials, resume_root, trial_id, visible_gpus, worker_gpus,
)
from train_core.errors import InputError

DIED = re.compile(r"^worker died: no heartbeat for \d+s$")
GRACE = 0.5  # seconds, for the unit tests


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_token_files(tmp_path_factory.mktemp("tokens"))


@pytest.fixture
def study_file(data, tmp_path):
    return write_study(tmp_path / "tiny.yaml", study_values(data))


@pytest.fixture
def storage(tmp_path):
    """A journal file storage, as a worker process opens it."""
    return open_storage(str(tmp_path / "journal.log"))


@pytest.fixture
def journal(storage):
    """A fresh study in `storage`."""
    return optuna.create_study(study_name="unit", storage=storage)


def running_trial(study: optuna.Study, **attrs) -> optuna.Trial:
    """A RUNNING trial with params, as the objective leaves it before training; never stamped."""
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    trial.suggest_categorical("warmup", [0, 2])
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return trial


def reap_later(study: optuna.Study, storage, *, seconds: float = 2 * GRACE) -> list[int]:
    """reap_dead_trials with grace GRACE, run as if `seconds` had passed: time is the clock's, not a sleep's."""
    return reap_dead_trials(study, storage=storage, grace=GRACE, clock=lambda: time.time() + seconds)


def by_number(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.number: t for t in study.get_trials()}


# --- heartbeat and reaping, in-process ------------------------------------------------------------------------------


def test_silent_running_trial_is_failed_and_retried_with_its_params(journal, storage):
    trial = running_trial(journal, anchor=True)
    assert reap_later(journal, storage, seconds=0) == []  # not silent for GRACE yet

    assert reap_later(journal, storage) == [0]

    dead, retry = by_number(journal)[0], by_number(journal)[1]
    assert dead.state == TrialState.FAIL
    assert DIED.match(dead.user_attrs["fail_reason"]), dead.user_attrs
    assert retry.state == TrialState.WAITING
    assert retry.system_attrs["fixed_params"] == trial.params  # an enqueued trial's params, until it runs
    assert retry.user_attrs == {"retry_of": 0, "resume_trial": 0, "retries": 1, "anchor": True}  # still the anchor


def test_a_trial_that_died_max_retries_times_stays_failed_with_the_reason(journal, storage):
    running_trial(journal, retry_of=5, resume_trial=2, retries=3)  # the third retry of trial 2, dying again

    later = time.time() + 2 * GRACE
    assert reap_dead_trials(journal, storage=storage, grace=GRACE, max_retries=3, clock=lambda: later) == [0]

    (dead,) = journal.get_trials()  # and no retry queued
    assert dead.state == TrialState.FAIL
    assert re.fullmatch(r"worker died: no heartbeat for \d+s; not retried again: it was retried 3 times \(--max-retries\)",
                        dead.user_attrs["fail_reason"]), dead.user_attrs


def test_trial_with_a_live_heartbeat_is_not_reaped_until_it_stops(journal, storage):
    """The heartbeat stamps by its clock; reaping reads the stamps by its own. Both clocks are set by the test, so
    nothing depends on how fast this machine runs."""
    trial = running_trial(journal)
    now = [1_000_000.0]  # wall time as the test sets it, far past the trial's start

    def stamped() -> float | None:
        return by_number(journal)[0].system_attrs.get("sweep:heartbeat")

    with Heartbeat(storage, trial_id(storage, journal, trial.number), interval=0.01, clock=lambda: now[0]):
        for _ in range(3):  # the trial lives on as long as its beats come
            wait_until(lambda: stamped() == now[0], timeout=10, what="a beat at the current time")
            at = now[0]
            assert reap_dead_trials(journal, storage=storage, grace=GRACE, clock=lambda: at + 0.9 * GRACE) == []
            now[0] += 10 * GRACE  # far past the grace of the last beat
        wait_until(lambda: stamped() == now[0], timeout=10, what="a beat at the current time")
        assert by_number(journal)[0].state == TrialState.RUNNING
    last = now[0]
    # Silent now: the same trial is reapable once GRACE passes after its last beat, so the checks above were not vacuous.
    assert reap_dead_trials(journal, storage=storage, grace=GRACE, clock=lambda: last + 1.1 * GRACE) == [0]


def test_reaping_twice_enqueues_one_retry(journal, storage):
    running_trial(journal)
    assert reap_later(journal, storage) == [0]

    assert reap_later(journal, storage) == []
    assert [t.state for t in journal.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_two_workers_reaping_the_same_stale_view_enqueue_one_retry(journal, storage, tmp_path):
    """Worker B read the trial as RUNNING before worker A reaped it: B's reap must find it finished and back off."""
    other_storage = open_storage(str(tmp_path / "journal.log"))
    other = optuna.load_study(study_name="unit", storage=other_storage)
    running_trial(journal)
    stale = other.get_trials(states=(TrialState.RUNNING,))
    assert reap_later(journal, storage) == [0]

    other.get_trials = lambda **_: stale  # B's view from before A's reap
    assert reap_later(other, other_storage) == []

    states = [t.state for t in journal.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert DIED.match(by_number(journal)[0].user_attrs["fail_reason"])


def test_a_retry_that_died_before_suggesting_is_retried_with_the_same_params_and_folder(journal, storage):
    running_trial(journal)
    assert reap_later(journal, storage) == [0]
    retry = journal.ask()  # pops the queued retry, as the next worker's objective would
    assert retry.number == 1 and resume_root(retry.number, retry.user_attrs) == 0

    assert reap_later(journal, storage) == [1]

    second = by_number(journal)[2]
    assert second.user_attrs == {"retry_of": 1, "resume_trial": 0, "retries": 2}
    assert second.system_attrs["fixed_params"] == by_number(journal)[0].params


def test_heartbeat_stops_when_its_trial_was_reaped(journal, storage):
    trial = running_trial(journal)
    number = trial_id(storage, journal, trial.number)
    with Heartbeat(storage, number, interval=0.05) as beat:
        storage.set_trial_state_values(number, TrialState.FAIL)  # declared dead by another worker
        beat.thread.join(timeout=5)
        assert not beat.thread.is_alive()


@pytest.mark.parametrize(
    "finished, running, waiting, may_start",
    [
        (0, 0, 1, True),  # the anchor is queued
        (1, 1, 0, True),  # 2 < 3: room for one more
        (1, 2, 0, False),  # the running trials can fill the budget: wait for them
        (1, 2, 1, True),  # but a queued retry of a dead trial always runs
        (3, 0, 0, False),  # done
        (3, 0, 1, True),  # not before a queued retry ran: a killed trial's point is never left unfinished
    ],
)
def test_budget_counts_finished_and_running_trials_of_all_workers(finished, running, waiting, may_start):
    assert Budget(total=3, finished=finished, running=running, waiting=waiting).may_start is may_start


def test_liveness_needs_a_heartbeat_shorter_than_the_grace():
    with pytest.raises(ValueError, match="interval < grace"):
        Liveness(interval=5, grace=5)


# --- a killed worker's trial resumes from its checkpoint --------------------------------------------------------------

RESUME_STEPS = 60
CKPT_EVERY = 5


@pytest.mark.slow
def test_retry_of_a_killed_trial_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(study_file, tmp_path):
    args = ("--trials", "1", "--ckpt-every", str(CKPT_EVERY), "--heartbeat", "0.5", "--grace", "3")
    (tmp_path / "killed").mkdir()
    (tmp_path / "whole").mkdir()
    command = sweep_command(study_file, "store/sweep.log", "resume", *args, steps=RESUME_STEPS)
    whole = start(command, tmp_path / "whole", tmp_path / "whole.log")  # the reference, meanwhile
    log = tmp_path / "killed.log"
    victim = start(command, tmp_path / "killed", log)
    folder = tmp_path / "killed" / "runs" / "resume" / "trial-0"

    wait_until(lambda: checkpoints(folder) or victim.poll() is not None, timeout=60, what="trial 0's first checkpoint")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, f"the trial ended before it could be killed:\n{tail(log)}"
    url = str(tmp_path / "killed" / "store" / "sweep.log")
    assert load_study(url, "resume").get_trials()[0].state == TrialState.RUNNING  # nobody told the storage

    assert wait_exit(start(command, tmp_path / "killed", log), timeout=90, log=log) == 0
    assert wait_exit(whole, timeout=90, log=tmp_path / "whole.log") == 0

    dead, retry = load_study(url, "resume").get_trials()
    reference = load_study(str(tmp_path / "whole" / "store" / "sweep.log"), "resume").get_trials()[0]
    assert dead.state == TrialState.FAIL and DIED.match(dead.user_attrs["fail_reason"]), dead.user_attrs
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["resume_trial"] == 0
    assert retry.params == dead.params == reference.params
    resumed = retry.user_attrs["resumed_at_step"]
    assert resumed > 0 and resumed % CKPT_EVERY == 0
    assert resumed <= max(dead.intermediate_values) + 1  # from the dead trial's own last checkpoint
    assert retry.value == reference.value  # bit for bit: the kill cost time, not a different result
    # It reports what the uninterrupted trial reported (the smoothed loss carries on from the checkpoint), so the
    # pruner judges it as it would have judged that one.
    assert retry.intermediate_values == {s: v for s, v in reference.intermediate_values.items() if s >= resumed}
    assert not folder.exists()  # checkpoints are removed once the trial finished


# --- SIGTERM --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_fails_the_running_trial_as_interrupted_and_queues_its_retry(study_file, tmp_path):
    log = tmp_path / "worker.log"
    command = sweep_command(study_file, "store/sweep.log", "term", "--trials", "2", "--ckpt-every", "5", steps=60)
    worker = start(command, tmp_path, log)
    wait_until(lambda: checkpoints(tmp_path / "runs" / "term" / "trial-0") or worker.poll() is not None,
               timeout=60, what="trial 0's first checkpoint")

    worker.send_signal(signal.SIGTERM)

    code = wait_exit(worker, timeout=30, log=log)
    assert code != 0 and code != -signal.SIGTERM, f"exit {code}: the handler did not run\n{tail(log)}"
    assert "interrupted: run the same command again" in log.read_text()
    trials = load_study(str(tmp_path / "store" / "sweep.log"), "term").get_trials()  # the storage still loads
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING], tail(log)
    assert trials[0].user_attrs["fail_reason"] == "interrupted"
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].system_attrs["fixed_params"] == trials[0].params
    assert checkpoints(tmp_path / "runs" / "term" / "trial-0"), "the retry needs the checkpoint kept"


def test_a_retry_that_reuses_a_finished_twin_removes_the_dead_trials_checkpoints(study_file, tmp_path, monkeypatch):
    """A restarted worker's seeded sampler may propose the params its dead predecessor was running; when that trial
    finishes first, the dead one's retry takes its result and its checkpoint folder must go too."""
    monkeypatch.chdir(tmp_path)
    args = ("--pruner", "none", "--study-name", "twin")
    assert run_lr(study_file, "store/sweep.log", *args, "--trials", "1", steps=10) == 0
    study = load_study("store/sweep.log", "twin")
    done = study.get_trials()[0]
    study.enqueue_trial(done.params, user_attrs={"retry_of": 7, "resume_trial": 7})  # trial 7 died with these params
    folder = tmp_path / "runs" / "twin" / "trial-7"
    folder.mkdir(parents=True)
    (folder / "step-00000005.pt").write_bytes(b"checkpoint")

    assert run_lr(study_file, "store/sweep.log", *args, "--trials", "2", steps=10) == 0

    retry = load_study("store/sweep.log", "twin").get_trials()[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["duplicate_of"] == 0
    assert not folder.exists()


# --- --workers: the parent process ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_to_the_workers_parent_interrupts_its_workers_and_a_rerun_resumes_them(study_file, tmp_path):
    """`--workers 2` runs its workers as children; a SIGTERM sent to the parent alone must stop them too, the way
    Ctrl-C does, and the same command run again continues their trials from their checkpoints."""
    # Trials long enough that both workers are still inside one when their checkpoints show up: a finished trial
    # deletes its folder, and a parent whose workers ran the whole budget first would exit 0 before the signal.
    steps, log = 400, tmp_path / "parent.log"
    command = sweep_command(study_file, "store/sweep.log", "par", "--trials", "3", "--ckpt-every", str(CKPT_EVERY),
                            "--pruner", "none", "--workers", "2", steps=steps)
    parent = start(command, tmp_path, log)
    runs = tmp_path / "runs" / "par"
    wait_until(lambda: len({p.parent for p in runs.glob("trial-*/step-*.pt")}) >= 2 or parent.poll() is not None,
               timeout=60, what="a checkpoint in both workers' trials")

    parent.send_signal(signal.SIGTERM)

    assert wait_exit(parent, timeout=30, log=log) == 130  # promptly, not after the workers ran the whole budget
    trials = load_study(str(tmp_path / "store" / "sweep.log"), "par").get_trials()
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted and all(t.user_attrs["fail_reason"] == "interrupted" for t in interrupted), trials
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["retry_of"] for t in queued) == [t.number for t in interrupted]
    assert not [t for t in trials if t.state == TrialState.RUNNING]

    assert wait_exit(start(command, tmp_path, log), timeout=90, log=log) == 0
    trials = load_study(str(tmp_path / "store" / "sweep.log"), "par").get_trials()
    assert 3 <= sum(t.state in FINISHED for t in trials) <= 4
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    assert all(t.state == TrialState.COMPLETE for t in retries)
    resumed = [check_resumed(t, [trials[t.user_attrs["retry_of"]]], steps=steps, report=trials) for t in retries]
    assert any(resumed), "no retry resumed from its trial's checkpoint"


@pytest.mark.slow
def test_a_worker_killed_under_the_workers_parent_is_named_and_the_parent_exits_1(study_file, tmp_path):
    """The OOM killer takes one of the workers: the other reaps its trial and retries it from its checkpoint, and the
    parent, whose study still ends whole, says which worker died and how, and exits 1."""
    steps, log = 400, tmp_path / "parent.log"
    command = sweep_command(study_file, "store/sweep.log", "lost", "--trials", "3", "--ckpt-every", str(CKPT_EVERY),
                            "--pruner", "none", "--workers", "2", "--heartbeat", "0.5", "--grace", "3", steps=steps)
    parent = start(command, tmp_path, log)
    runs = tmp_path / "runs" / "lost"
    wait_until(lambda: len({p.parent for p in runs.glob("trial-*/step-*.pt")}) >= 2 or parent.poll() is not None,
               timeout=60, what="a checkpoint in both workers' trials")
    children = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
    assert len(children) == 2, children
    os.kill(int(children[0]), signal.SIGKILL)

    assert wait_exit(parent, timeout=120, log=log) == 1
    assert re.search(r"worker [12] of 2 was killed by SIGKILL", tail(log)), tail(log)
    trials = load_study(str(tmp_path / "store" / "sweep.log"), "lost").get_trials()
    dead = [t for t in trials if t.state == TrialState.FAIL]
    assert len(dead) == 1 and DIED.match(dead[0].user_attrs["fail_reason"]), trials
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == dead[0].number]
    assert retry.state == TrialState.COMPLETE


# --- a worker paused past the grace -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_paused_worker_whose_trial_was_reaped_drops_it_and_goes_on(study_file, tmp_path):
    """A stalled storage or a suspended machine delays the heartbeat past --grace while the worker lives on."""
    log = tmp_path / "worker.log"
    command = sweep_command(study_file, "store/sweep.log", "pause", "--trials", "1", "--ckpt-every", "5",
                            "--heartbeat", "0.5", "--grace", "2", steps=60)
    worker = start(command, tmp_path, log)
    wait_until(lambda: checkpoints(tmp_path / "runs" / "pause" / "trial-0") or worker.poll() is not None,
               timeout=60, what="trial 0's first checkpoint")
    pause_outside_storage_writes(worker, lock=tmp_path / "store" / "sweep.log.lock")
    try:
        storage = open_storage(str(tmp_path / "store" / "sweep.log"), create=False)
        study = optuna.load_study(study_name="pause", storage=storage)
        assert wait_until(lambda: reap_dead_trials(study, storage=storage, grace=2), timeout=30,
                          what="the paused trial reaped") == [0]
    finally:
        worker.send_signal(signal.SIGCONT)

    assert wait_exit(worker, timeout=60, log=log) == 0  # no "Cannot tell a FAIL trial" crash
    dead, retry = load_study(str(tmp_path / "store" / "sweep.log"), "pause").get_trials()
    assert dead.state == TrialState.FAIL and DIED.match(dead.user_attrs["fail_reason"])
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0  # the same worker ran it
    assert retry.user_attrs["resumed_at_step"] > 0


def pause_outside_storage_writes(worker, *, lock) -> None:
    """SIGSTOP the worker at a moment it does not hold the journal's lock (nobody else writes meanwhile)."""
    for _ in range(200):
        worker.send_signal(signal.SIGSTOP)
        if not lock.exists():
            return
        worker.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    pytest.fail("the worker held the journal lock at every try")


def test_journal_lock_left_by_a_killed_worker_can_age_out(tmp_path, monkeypatch):
    """Optuna breaks a journal lock whose age it can stat (after 30 s); a dangling lock would stall workers forever.

    The lock is looked at while the storage holds it for a write: what a worker killed inside a write leaves behind.
    The path is relative with a folder, as `--storage runs/sweep.log` is.
    """
    monkeypatch.chdir(tmp_path)
    lock = Path("runs/sweep.log.lock")  # where Optuna's journal file locks put it
    held, fsync = [], os.fsync

    def look_then_fsync(fd):  # each append is fsynced under the lock
        held.append(lock.exists())  # exists() follows the link a symlink lock is: False where it dangles
        fsync(fd)

    storage = open_storage("runs/sweep.log")
    monkeypatch.setattr(os, "fsync", look_then_fsync)
    optuna.create_study(study_name="lock", storage=storage)

    assert held and all(held), held


def test_heartbeat_survives_a_storage_hiccup(journal, storage):
    trial = running_trial(journal)
    calls = []

    class Flaky:
        def set_trial_system_attr(self, *args):
            calls.append(time.monotonic())
            if len(calls) == 2:
                raise ConnectionError("server closed the connection unexpectedly")
            storage.set_trial_system_attr(*args)

    with Heartbeat(Flaky(), trial_id(storage, journal, trial.number), interval=0.02) as beat:
        wait_until(lambda: len(calls) >= 5, timeout=10, what="beats after the failed one")
        assert beat.thread.is_alive()


# --- chaos: workers killed and restarted at random while they share a study ------------------------------------------

CHAOS_TRIALS = 6
CHAOS_STEPS = 30
CHAOS_KILLS = 3
CHAOS_WORKERS = 2
STARTED = re.compile(r"^trial (\d+) started", re.MULTILINE)
ENDED = re.compile(r"^trial (\d+) (?:COMPLETE|PRUNED|FAIL)", re.MULTILINE)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_random_kills_of_workers_lose_no_trial(kind, study_file, tmp_path):
    name = unique_name("chaos")
    with postgres_study(name) if kind == "postgresql" else nullcontext(str(tmp_path / "store" / "sweep.log")) as url:
        try:
            run_chaos(url, name, study_file, tmp_path)
        finally:
            stop_all()  # before the study is deleted: a worker still running would create it again
            delete_study(url, name)


def run_chaos(url: str, name: str, study_file, tmp_path) -> None:
    """Two workers; three times, SIGKILL one picked at random among those inside a trial that has a checkpoint, as
    soon as a checkpoint appears, and start it again. Then let them (and if need be a last one) finish the budget."""
    rng = random.Random(20260925)
    command = sweep_command(study_file, url, name, "--trials", str(CHAOS_TRIALS), "--ckpt-every", str(CKPT_EVERY),
                            "--heartbeat", "0.5", "--grace", "3", "--pruner", "none", steps=CHAOS_STEPS, quiet=False)
    watcher = Watcher(url, name, tmp_path / "runs" / name)
    workers, logs = {}, {}

    def launch(index: int) -> None:
        logs[index] = tmp_path / f"worker-{index}-{sum(1 for k in logs_seen if k[0] == index)}.log"
        logs_seen.append((index, logs[index]))
        workers[index] = start([*command, "--worker-index", str(index)], tmp_path, logs[index])

    logs_seen: list = []
    for index in range(1, CHAOS_WORKERS + 1):
        launch(index)
    kills = []
    deadline = time.monotonic() + 90
    while len(kills) < CHAOS_KILLS and time.monotonic() < deadline:
        busy = poll_for(lambda: watcher.busy_with_new_checkpoint(logs), deadline)
        if busy is None:
            break  # the budget ran out first
        victim = rng.choice(sorted(busy))
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait()
        kills.append((victim, busy[victim]))
        launch(victim)
    assert len(kills) == CHAOS_KILLS, f"only {kills}: the budget ran out before the workers could be killed"

    codes = {i: wait_exit(p, timeout=120, log=logs[i]) for i, p in workers.items()}
    assert all(code == 0 for code in codes.values()), {i: tail(logs[i]) for i in logs}
    if not Budget.of(load_study(url, name), total=CHAOS_TRIALS).done:  # a last worker finishes what is left
        final = start(command, tmp_path, tmp_path / "final.log")
        assert wait_exit(final, timeout=120, log=tmp_path / "final.log") == 0

    trials = load_study(url, name).get_trials()
    table = [(t.number, t.state.name, t.user_attrs.get("retry_of"), t.user_attrs.get("resumed_at_step"),
              t.user_attrs.get("fail_reason"), max(t.intermediate_values, default=None)) for t in trials]
    report = f"kills (worker, (trial, checkpoint)): {kills}\ntrials: {table}"
    finished = [t for t in trials if t.state in FINISHED]
    assert CHAOS_TRIALS <= len(finished) <= CHAOS_TRIALS + CHAOS_WORKERS - 1, report
    assert all(t.state in FINISHED or t.state == TrialState.FAIL for t in trials), report  # none RUNNING or WAITING
    dead = [t for t in trials if t.state == TrialState.FAIL]
    # Every kill hit a trial (rarely, one that ended in the moment before). A kill inside a journal write also leaves
    # the file's lock behind, stalling the other worker until Optuna breaks the lock (30 s), past the 3 s grace:
    # then its live trial is reaped as well, and retried like the others.
    assert dead, report
    assert all(DIED.match(t.user_attrs.get("fail_reason", "")) for t in dead), report
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == [t.number for t in dead], report  # one each
    resumed = 0
    for retry in retries:
        dead_one = trials[retry.user_attrs["retry_of"]]
        root = resume_root(dead_one.number, dead_one.user_attrs)
        assert retry.user_attrs["resume_trial"] == root and retry.params == dead_one.params, report
        if retry.state in FINISHED and "duplicate_of" not in retry.user_attrs:
            # (else it was killed too and its own retry is checked, or it took the result of a finished trial with
            # the same params: a restarted worker's seeded sampler may propose what it proposed before)
            chain = [t for t in trials if resume_root(t.number, t.user_attrs) == root and t.number < retry.number]
            resumed += check_resumed(retry, chain, steps=CHAOS_STEPS, report=report)
    assert resumed >= 1, f"no retry resumed from a checkpoint\n{report}"
    assert not list(watcher.runs.glob("trial-*/step-*.pt")), "finished trials leave no checkpoints behind"


def check_resumed(retry, chain, *, steps: int, report) -> bool:
    """The retry started from the newest checkpoint that the trials before it in its folder wrote; whether it resumed.

    The trainer saves step k's checkpoint right after step k-1's callback, which reports step k-1: a chain that
    reported step s had saved every multiple of CKPT_EVERY up to s, and perhaps s + 1.
    """
    last = max((max(t.intermediate_values) for t in chain if t.intermediate_values), default=-1)
    surely = CKPT_EVERY * (last // CKPT_EVERY) if last >= 0 else 0
    at = retry.user_attrs.get("resumed_at_step")
    if at is None:  # trained from step 0, or resumed from the final checkpoint with no step left to run
        assert surely == 0 or last + 1 >= steps, (retry.number, report)
        return surely > 0
    assert at % CKPT_EVERY == 0 and surely <= at <= last + 1, (retry.number, report)
    return True


def poll_for(condition, deadline: float, every: float = 0.02):
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    return None


class Watcher:
    """Which worker runs which trial (from its log) and the trials' checkpoints, seen from the test process."""

    def __init__(self, url: str, name: str, runs):
        self.url, self.name, self.runs = url, name, runs
        self.seen: set = set()  # checkpoints that already triggered a kill or were there at one
        self.study = None

    def busy_with_new_checkpoint(self, logs: dict) -> dict | None:
        """{worker: (trial, checkpoint)} for the workers inside a trial whose folder holds a checkpoint, once one of
        them holds one not seen before; None while none does, or once the budget is done."""
        if self.study is None:
            try:
                self.study = load_study(self.url, self.name)
            except (KeyError, InputError):
                return None  # not created yet
        busy = {}
        for index, log in logs.items():
            text = log.read_text(errors="replace") if log.exists() else ""
            started, ended = STARTED.findall(text), set(ENDED.findall(text))
            if not started or started[-1] in ended:
                continue
            trial = self.study.get_trials(deepcopy=False)[int(started[-1])]
            if trial.state != TrialState.RUNNING:
                continue  # reaped while its worker was stalled; the worker drops it
            files = checkpoints(self.runs / f"trial-{resume_root(trial.number, trial.user_attrs)}")
            if files:
                busy[index] = (trial.number, files[-1].name)
        fresh = [key for key in busy.values() if key not in self.seen]
        if not fresh:
            return None
        self.seen.update(busy.values())
        return busy


# --- one worker per GPU -------------------------------------------------------------------------------------------


def test_each_worker_gets_gpu_i_mod_the_gpu_count():
    gpus = [str(i) for i in range(8)]
    assert worker_gpus(workers=8, gpus=gpus) == gpus
    packed = worker_gpus(workers=16, gpus=gpus)
    assert packed == gpus + gpus  # two workers on each GPU
    assert worker_gpus(workers=3, gpus=["2", "5"]) == ["2", "5", "2"]
    assert worker_gpus(workers=2, gpus=[]) == [None, None]  # no GPU: the workers split the cores


def test_the_gpus_to_hand_out_are_the_visible_ones(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5,")
    assert visible_gpus() == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == [str(i) for i in range(torch.cuda.device_count())]


@pytest.mark.slow
def test_workers_on_a_node_of_two_gpus_each_see_their_own_and_the_summary_says_which(study_file, tmp_path):
    """CUDA_VISIBLE_DEVICES=5,7 stands for a node with two GPUs (no GPU is needed: the workers then train on the
    CPU): 3 workers get GPUs 5, 7 and 5, each set before the worker imports torch, and the summary says so."""
    log = tmp_path / "parent.log"
    command = sweep_command(study_file, "store/sweep.log", "gpus", "--trials", "3", "--pruner", "none",
                            "--workers", "3", steps=4)
    with open(log, "wb") as out:
        parent = subprocess.Popen(command, cwd=tmp_path, env=SUBPROCESS_ENV | {"CUDA_VISIBLE_DEVICES": "5,7"},
                                  stdout=out, stderr=subprocess.STDOUT)
    assert wait_exit(parent, timeout=180, log=log) == 0, tail(log)
    output = log.read_text()
    assert "GPU 5: worker 1, 3 (CUDA_VISIBLE_DEVICES=5)" in output, output
    assert "GPU 7: worker 2 (CUDA_VISIBLE_DEVICES=7)" in output, output
    devices = {t.user_attrs["device"] for t in load_study(str(tmp_path / "store" / "sweep.log"), "gpus").get_trials()}
    assert devices <= {"cpu (CUDA_VISIBLE_DEVICES=5)", "cpu (CUDA_VISIBLE_DEVICES=7)"} and devices, devices
