"""`python -m sweep promote`: the winner of a real (tiny) sweep run to the recipe's max_steps, resumed after a kill,
data-parallel under torchrun, and refused on bad input.

A module fixture runs one small sweep in-process (3 trials of 10 steps); each test promotes into its own copy of that
sweep's folder (recipe, SQLite storage, artifacts), so the storages the tests write never meet. The kill and torchrun
tests run the real command line in subprocesses with one torch thread each.
"""

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import optuna_dashboard
import pytest
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from optuna.trial import TrialState

from promote_fixtures import (
    CKPT_EVERY,
    EVAL_EVERY,
    MAX_STEPS,
    STORAGE,
    STUDY,
    TOKENS_PER_STEP,
    copy_sweep,
    load,
    promote_args,
    promote_command,
    read_metrics,
    recipe_values,
    run_sweep,
    step_checkpoints,
    subprocess_env,
    wait_until,
    working_dir,
    write_recipe,
    write_tokens,
)
from sweep.cli import main
from sweep.storage import open_storage
from train_core.locks import RUN_LOCK_FILE, hold_run_folder
from sweep.workers import trial_id
from train_core.schedule import get_lr

EVAL_STEPS = [s for s in range(MAX_STEPS) if (s + 1) % EVAL_EVERY == 0]  # 0-based steps, as in metrics.csv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tokens(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def swept(data, tmp_path_factory):
    """A folder holding tiny.yaml and a finished 3-trial sweep in the default storage runs/sweep.db."""
    folder = tmp_path_factory.mktemp("swept")
    write_recipe(folder / "tiny.yaml", recipe_values(data))
    with working_dir(folder):
        assert run_sweep() == 0
    study = load(folder)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    return folder


@pytest.fixture
def sweep_copy(swept, tmp_path, monkeypatch):
    """A private copy of the finished sweep, and the working directory."""
    monkeypatch.chdir(tmp_path)
    return copy_sweep(swept, tmp_path)


@pytest.fixture(scope="module")
def promoted(swept, tmp_path_factory):
    """`promote best` run once, in-process, in a copy of the sweep: (folder, exit code, printed output)."""
    folder = copy_sweep(swept, tmp_path_factory.mktemp("promoted"))
    out = io.StringIO()
    with working_dir(folder), contextlib.redirect_stdout(out):
        code = main(promote_args("best"))
    return folder, code, out.getvalue()


def _best(folder):
    return load(folder).best_trial


def _schedule(trial, steps: int) -> list[float]:
    """The LR of every step of a full run of `trial` over `steps` steps."""
    return [get_lr(s, max_lr=trial.params["lr"], warmup_steps=trial.params["warmup"], decay_steps=steps)
            for s in range(steps)]


def _promote_folders(folder) -> list:
    return list((folder / "runs").glob("*/promote-*"))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# --- a full run ---------------------------------------------------------------------------------------------------


def test_promote_best_runs_to_max_steps_with_checkpoints_and_metrics(promoted):
    folder, code, out = promoted
    assert code == 0, out
    best = _best(folder)
    run_dir = folder / "runs" / STUDY / f"promote-{best.number}"
    assert f"peak lr {best.params['lr']:.3g}" in out and f"completed: {MAX_STEPS} steps" in out
    # Checkpoints every CKPT_EVERY steps, the newest keep_last (2) kept, a best copy and the DONE marker.
    assert step_checkpoints(run_dir) == [MAX_STEPS - CKPT_EVERY, MAX_STEPS]
    assert (run_dir / "best.pt").is_file()
    done = json.loads((run_dir / "DONE").read_text())["result"]
    assert (done["status"], done["steps_done"]) == ("completed", MAX_STEPS)
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows] == list(range(MAX_STEPS))
    assert [int(r["step"]) for r in rows if r["val_loss"]] == EVAL_STEPS
    # The trial's peak LR and warmup steps, and the cosine's horizon is max_steps.
    assert [float(r["lr"]) for r in rows] == _schedule(best, MAX_STEPS)
    assert int(rows[-1]["tokens_seen"]) == MAX_STEPS * TOKENS_PER_STEP
    # The model learned: the last val loss is well below an untrained model's ln(64) = 4.16.
    assert float(rows[-1]["val_loss"]) < math.log(64) - 1


def test_promote_writes_the_result_back_to_the_sweep_study(promoted):
    folder, _, _ = promoted
    study = load(folder)
    best = study.best_trial
    rows = read_metrics(folder / "runs" / STUDY / f"promote-{best.number}")
    vals = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    attr = study.user_attrs[f"promote-{best.number}"]
    assert attr["status"] == "completed"
    assert (attr["steps_done"], attr["max_steps"]) == (MAX_STEPS, MAX_STEPS)
    assert (attr["trial"], attr["lr"], attr["warmup"]) == (best.number, best.params["lr"], best.params["warmup"])
    assert attr["tokens"] == MAX_STEPS * TOKENS_PER_STEP
    assert (attr["final_val_loss"], attr["best_val_loss"]) == (vals[-1], min(vals))
    assert attr["run_dir"] == f"runs/{STUDY}/promote-{best.number}"
    note = optuna_dashboard.get_note(study)
    assert "Promoted runs" in note and f"| {best.number} |" in note and "completed" in note


def test_promote_records_a_complete_trial_in_the_promoted_study(promoted):
    folder, _, _ = promoted
    best = _best(folder)
    run_dir = folder / "runs" / STUDY / f"promote-{best.number}"
    rows = read_metrics(run_dir)
    curve = {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]}

    storage = open_storage(f"sqlite:///{folder}/runs/sweep.db", create=False)
    promoted_study = optuna.load_study(study_name=f"{STUDY}-promoted", storage=storage)
    (trial,) = promoted_study.trials
    assert trial.state == TrialState.COMPLETE
    assert trial.params == best.params
    assert trial.intermediate_values == curve  # the full run's val-loss curve, at the eval steps
    assert trial.value == curve[max(curve)]
    assert trial.user_attrs["source_study"] == STUDY
    assert trial.user_attrs["steps_done"] == MAX_STEPS
    # Asked when the run started and told when it ended: the dashboard's duration is the run's.
    duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
    assert duration >= 0.5 * trial.user_attrs["wall_s"] > 0
    assert promoted_study.metric_names == ["val_loss"]
    assert f"full run of trial {best.number}" in optuna_dashboard.get_note(
        optuna.trial.Trial(promoted_study, trial_id(storage, promoted_study, trial.number))
    )
    (meta,) = get_all_artifact_meta(trial, storage=storage)
    assert meta.filename == "metrics.csv"
    copy = folder / "downloaded.csv"
    download_artifact(artifact_store=FileSystemArtifactStore(folder / "runs" / "artifacts"), file_path=str(copy),
                      artifact_id=meta.artifact_id)
    assert copy.read_text() == (run_dir / "metrics.csv").read_text()


def test_promoting_a_finished_run_again_says_so_and_does_nothing(promoted, capsys, monkeypatch):
    folder, _, _ = promoted
    monkeypatch.chdir(folder)
    run_dir = folder / "runs" / STUDY / f"promote-{_best(folder).number}"
    before = _run_files(run_dir)
    assert main(promote_args("best")) == 0
    assert "already finished" in capsys.readouterr().out
    assert _run_files(run_dir) == before
    assert len(load(folder, f"{STUDY}-promoted").trials) == 1


def _run_files(run_dir: Path) -> dict[str, int]:
    """The run's files and their mtimes; the lock file names whoever held the folder last, so it is left out."""
    return {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.name != RUN_LOCK_FILE}


def test_max_steps_shortens_the_run_into_its_own_folder(sweep_copy, capsys):
    best = _best(sweep_copy)
    assert main(promote_args(str(best.number), "--max-steps", "12")) == 0
    run_dir = sweep_copy / "runs" / STUDY / f"promote-{best.number}-12steps"
    rows = read_metrics(run_dir)
    assert len(rows) == 12 and (run_dir / "DONE").is_file()
    assert [float(r["lr"]) for r in rows] == _schedule(best, 12)  # the cosine's horizon follows
    assert not (sweep_copy / "runs" / STUDY / f"promote-{best.number}").exists()
    assert load(sweep_copy).user_attrs[f"promote-{best.number}-12steps"]["max_steps"] == 12


def test_promoting_a_trial_twice_with_other_max_steps_keeps_both_runs(sweep_copy, capsys):
    best = _best(sweep_copy)
    assert main(promote_args(str(best.number), "--max-steps", "12")) == 0
    assert main(promote_args(str(best.number), "--max-steps", "14")) == 0
    attrs = load(sweep_copy).user_attrs
    assert attrs[f"promote-{best.number}-12steps"]["max_steps"] == 12
    assert attrs[f"promote-{best.number}-14steps"]["max_steps"] == 14
    capsys.readouterr()
    assert main(["status", "--study-name", STUDY]) == 0
    out = capsys.readouterr().out
    assert f"promote-{best.number}-12steps" in out and f"promote-{best.number}-14steps" in out
    promoted = load(sweep_copy, f"{STUDY}-promoted").trials
    assert [t.user_attrs["run"] for t in promoted] == [f"promote-{best.number}-12steps", f"promote-{best.number}-14steps"]


def test_a_max_steps_shorter_than_the_warmup_says_the_warmup_shrinks(sweep_copy, capsys):
    study = load(sweep_copy)
    trial = next(t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.params["warmup"] == 2)
    assert main(promote_args(str(trial.number), "--max-steps", "1", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "warmup shrinks from the trial's 2 steps to 1: the run has only 1 steps\n" in out
    assert main(promote_args(str(trial.number), "--max-steps", "5", "--dry-run")) == 0
    assert "shrinks" not in capsys.readouterr().out


def test_dry_run_prints_the_plan_and_creates_nothing(sweep_copy, capsys):
    best = _best(sweep_copy)
    assert main(promote_args("best", "--dry-run")) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert f"promote trial {best.number} of {STUDY}" in out
    assert f"peak lr {best.params['lr']:.3g}" in out
    assert f"warmup {best.params['warmup']} steps" in out
    assert f"{MAX_STEPS:,} steps x {TOKENS_PER_STEP:,} tokens = {MAX_STEPS * TOKENS_PER_STEP:,} tokens" in out
    assert f"runs/{STUDY}/promote-{best.number}" in out
    # The time is estimated at the fastest speed any trial of the study measured, and says so.
    fastest = max(study_trials := load(sweep_copy).trials, key=lambda t: t.user_attrs.get("tokens_per_s", 0))
    assert f"at {fastest.user_attrs['tokens_per_s']:,.0f} tokens/s (the fastest measured in this study, trial " \
           f"{fastest.number}; slower on a busy machine)" in out
    assert len(study_trials) == 3
    assert not _promote_folders(sweep_copy)
    study = load(sweep_copy)
    assert not [k for k in study.user_attrs if k.startswith("promote-")]
    storage = open_storage(f"sqlite:///{sweep_copy}/runs/sweep.db", create=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    assert names == [STUDY]


# --- kill and resume ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_promote_resumes_to_the_uninterrupted_losses_bitwise(swept, tmp_path):
    """SIGKILL a real promote once it has a checkpoint past step 10; the re-run resumes from the newest checkpoint
    and its metrics.csv equals that of an uninterrupted run in another folder, float string for float string."""
    steps = 60  # the kill lands about 50 steps (seconds) before the end
    killed, reference = copy_sweep(swept, tmp_path / "killed"), copy_sweep(swept, tmp_path / "reference")
    number = _best(killed).number
    run_dir = killed / "runs" / STUDY / f"promote-{number}-{steps}steps"
    command = promote_command("best", "--max-steps", str(steps))
    env = subprocess_env()
    uninterrupted = subprocess.Popen(command, cwd=reference, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    victim = subprocess.Popen(command, cwd=killed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: victim.poll() is not None or max(step_checkpoints(run_dir), default=0) >= 10,
                   timeout=120, what="a checkpoint past step 10")
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL, "the promote finished before it could be killed"
    finally:
        if victim.poll() is None:
            victim.kill()
    resumed_from = max(step_checkpoints(run_dir))
    assert 10 <= resumed_from < steps and not (run_dir / "DONE").exists()
    before_kill = read_metrics(run_dir)
    assert len(before_kill) >= resumed_from

    again = subprocess.run(command, cwd=killed, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    out, _ = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, out

    rows = read_metrics(run_dir)
    expected = read_metrics(reference / "runs" / STUDY / f"promote-{number}-{steps}steps")
    assert [int(r["step"]) for r in rows] == list(range(steps))
    for column in ("loss", "lr", "grad_norm", "val_loss"):
        assert [r[column] for r in rows] == [r[column] for r in expected], column
    # The steps before the checkpoint were not run again: their rows (timings included) are the killed run's.
    assert rows[:resumed_from] == before_kill[:resumed_from]
    record = load(killed).user_attrs[f"promote-{number}-{steps}steps"]
    assert record["status"] == "completed"
    interrupted, trial = load(killed, f"{STUDY}-promoted").trials  # the killed process's trial, failed on resume
    assert (interrupted.state, trial.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert trial.user_attrs["resumes_trial"] == interrupted.number
    assert trial.user_attrs["started_at"] == record["started_at"] <= trial.datetime_start.isoformat()
    assert trial.intermediate_values == {int(r["step"]): float(r["val_loss"]) for r in expected if r["val_loss"]}


# --- torchrun -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_match_the_single_process_run(promoted, swept, tmp_path):
    """Two gloo processes split each step's 4 micro-batches 2 + 2: the same global batch, the same loss curve."""
    single_folder, code, _ = promoted
    assert code == 0
    folder = copy_sweep(swept, tmp_path / "ddp")
    number = _best(folder).number
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sweep", *promote_args("best")]
    result = subprocess.run(command, cwd=folder, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("completed: ") == 1, output  # rank 1 reports nothing

    run_dir = folder / "runs" / STUDY / f"promote-{number}"
    rows = read_metrics(run_dir)
    single = read_metrics(single_folder / "runs" / STUDY / f"promote-{number}")
    assert [r["step"] for r in rows] == [r["step"] for r in single]  # every step written once, by rank 0
    for column in ("loss", "val_loss", "grad_norm"):
        got = [float(r[column]) for r in rows if r[column]]
        want = [float(r[column]) for r in single if r[column]]
        assert got == pytest.approx(want, rel=1e-5), column
    assert list((folder / "runs").rglob("DONE")) == [run_dir / "DONE"]
    assert len(load(folder, f"{STUDY}-promoted").trials) == 1
    assert load(folder).user_attrs[f"promote-{number}"]["status"] == "completed"


# --- bad input ------------------------------------------------------------------------------------------------------


def test_no_storage_or_no_such_study_exits_2(sweep_copy, tmp_path, capsys):
    assert main(promote_args("best", "--storage", f"sqlite:///{tmp_path}/nothing.db")) == 2
    assert "no storage at" in _one_line_error(capsys)
    assert not (tmp_path / "nothing.db").exists()
    # The study name follows `<study>-<steps>`: a sweep of 11 steps was never run.
    assert main(["promote", "best", "--study", "tiny.yaml", "--steps", "11"]) == 2
    assert f"no study tiny-11 in {STORAGE}" in _one_line_error(capsys)
    assert main(promote_args("best", "--study-name", "other")) == 2
    assert "no study other" in _one_line_error(capsys)


def test_nonexistent_trial_number_exits_2(sweep_copy, capsys):
    assert main(promote_args("99")) == 2
    assert "has no trial 99" in _one_line_error(capsys)
    assert main(promote_args("first")) == 2
    assert "'best' or a trial number" in _one_line_error(capsys)


def test_study_without_a_completed_trial_exits_2(data, tmp_path, monkeypatch, capsys):
    """A study of the recipe's name whose trials were pruned and failed: nothing to promote."""
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "tiny.yaml", recipe_values(data))
    (tmp_path / "runs").mkdir()
    study = optuna.create_study(study_name=STUDY, storage=STORAGE)
    for state in (TrialState.PRUNED, TrialState.FAIL):
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        trial.suggest_categorical("warmup", [0, 2])
        study.tell(trial, state=state)

    assert main(promote_args("best")) == 2
    assert "has no completed trial" in _one_line_error(capsys)
    assert main(promote_args("0")) == 2
    assert "trial 0 of tiny-10 is PRUNED, not COMPLETE" in _one_line_error(capsys)
    assert main(promote_args("1")) == 2
    assert "trial 1 of tiny-10 is FAIL, not COMPLETE" in _one_line_error(capsys)
    assert not _promote_folders(tmp_path)


def test_changed_recipe_is_refused_unless_forced(sweep_copy, capsys):
    recipe = sweep_copy / "tiny.yaml"
    recipe.write_text(recipe.read_text().replace(f"max_steps: {MAX_STEPS}", "max_steps: 40"))
    assert main(promote_args("best")) == 2
    error = _one_line_error(capsys)
    assert "changed since study tiny-10 was swept" in error
    assert f"schedule.max_steps: {MAX_STEPS} -> 40" in error and "--force" in error
    assert not _promote_folders(sweep_copy)

    assert main(promote_args("best", "--force", "--dry-run")) == 0
    assert "at step 40" in " ".join(capsys.readouterr().out.split())


def test_forced_promote_of_an_edited_recipe_does_not_pass_off_the_old_finished_run(sweep_copy, capsys):
    """--force after an edit that lands in the same run folder: the run finished there is another run, so the
    command refuses (as it does for an unfinished one) instead of saying "already finished"."""
    assert main(promote_args("best")) == 0
    recipe = sweep_copy / "tiny.yaml"
    recipe.write_text(recipe.read_text().replace(f"max_steps: {MAX_STEPS}", "max_steps: 40"))
    capsys.readouterr()
    assert main(promote_args("best", "--force")) == 2
    error = _one_line_error(capsys)
    assert f"checkpoint in runs/{STUDY}/promote-{_best(sweep_copy).number} was written with a different schedule" in error
    assert len(load(sweep_copy, f"{STUDY}-promoted").trials) == 1


def test_a_second_promote_of_the_same_trial_is_refused_while_the_first_runs(sweep_copy, capsys):
    best = _best(sweep_copy)
    run_dir = Path("runs") / STUDY / f"promote-{best.number}"  # relative to the working directory, as promote names it
    with hold_run_folder(run_dir):  # what the first `promote best` holds while it runs
        code = main(promote_args("best"))

    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.count("\n") == 0 and f"run folder {run_dir} is in use by pid {os.getpid()}" in err
    assert not (run_dir / "metrics.csv").exists() and not step_checkpoints(run_dir)
    storage = open_storage(f"sqlite:///{sweep_copy}/runs/sweep.db", create=False)
    assert f"{STUDY}-promoted" not in optuna.get_all_study_names(storage=storage)  # no record of a run that did not run


def test_promote_runs_the_schedule_shape_the_trial_was_swept_with(data, tmp_path, monkeypatch, capsys):
    """A --schedule wsd winner runs WSD to max_steps (flat, then a linear cool-down), not the recipe's cosine."""
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "tiny.yaml", recipe_values(data))
    assert run_sweep("--schedule", "wsd", "--trials", "1") == 0
    capsys.readouterr()
    assert main(promote_args("best", "--dry-run")) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"flat to step {int(MAX_STEPS * 0.8)}, then linear to" in out and "cosine" not in out
