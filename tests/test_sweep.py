"""`python -m sweep lr` end to end: real Optuna storages, real (tiny) GPT training, real files.

Every sweep runs in-process through `sweep.cli.main` inside a temporary folder (runs/ is relative to the working
directory); the study is then read back with Optuna itself. A trial is 20 steps of a 1-layer model (~0.2 s).
"""

import csv
import math

import pytest
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from optuna.trial import TrialState

from sweep.cli import main
from sweep.recipe import load_recipe
from sweep.storage import open_storage
from sweep_fixtures import ANCHOR_LR, STEPS, VOCAB, load, run_lr, study_values, write_study
from train_core.model import GPT

UNSTABLE_PREFIXES = ("nan", "diverged", "loss spike", "grad norm")
TRIAL_ATTRS = ("tokens_seen", "flops", "wall_s", "tokens_per_s", "mfu", "mfu_peak", "final_train_loss", "val_loss",
               "seed", "config_hash")




@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """One whole small sweep (random sampler, no pruner, 4 trials) on SQLite, shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("sweep")
    storage = f"sqlite:///{folder}/store/sweep.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        path = write_study(folder / "tiny.yaml", study_values(data))
        code = run_lr(path, storage, "--sampler", "random", "--pruner", "none", "--trials", "4")
    return code, folder, storage, load(storage)


# --- a whole sweep ------------------------------------------------------------------------------------------------


def test_small_sweep_completes_every_trial_and_picks_the_lowest_val_loss(finished):
    code, _, _, study = finished
    assert code == 0
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state, t.user_attrs) for t in trials]
    assert study.best_trial.number == min(trials, key=lambda t: t.user_attrs["val_loss"]).number
    assert study.best_value == study.best_trial.user_attrs["val_loss"]
    # The tiny model learns: every trial ends below the loss of an untrained model.
    assert all(t.value < math.log(VOCAB) - 0.5 for t in trials)


def test_trials_record_their_cost_and_provenance(finished):
    _, folder, _, study = finished
    model = GPT(load_recipe(folder / "tiny.yaml").train.model)
    hashes = set()
    for trial in study.get_trials():
        missing = [key for key in TRIAL_ATTRS if key not in trial.user_attrs]
        assert not missing, f"trial {trial.number} lacks {missing}"
        attrs = trial.user_attrs
        assert attrs["tokens_seen"] == STEPS * 128
        assert attrs["flops"] == attrs["tokens_seen"] * model.flops_per_token()
        assert attrs["wall_s"] > 0 and attrs["tokens_per_s"] > 0 and attrs["mfu"] > 0
        assert math.isfinite(attrs["final_train_loss"])
        assert attrs["val_loss"] == trial.value
        assert attrs["seed"] == 7
        hashes.add(attrs["config_hash"])
    assert len(hashes) == 4, "different (lr, warmup) must hash differently"


def test_study_keeps_the_recipe_and_search_space(finished):
    _, folder, _, study = finished
    attrs = study.user_attrs
    assert attrs["recipe"] == (folder / "tiny.yaml").read_text()
    assert attrs["search_space"]["lr"] == [3e-3, 3e-2]
    assert attrs["search_space"]["warmup"] == [0, 2]
    assert attrs["search_space"]["steps"] == STEPS
    assert attrs["anchor_lr"] == ANCHOR_LR


def test_sweep_saves_the_plot_and_one_curve_per_trial(finished):
    _, folder, storage, study = finished
    plot = folder / "store" / f"{study.study_name}-lr.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [m.filename for m in get_all_artifact_meta(study)] == [plot.name]
    store = FileSystemArtifactStore(folder / "store" / "artifacts")
    for trial in study.get_trials():
        metas = get_all_artifact_meta(trial, storage=open_storage(storage))
        assert [m.filename for m in metas] == [f"trial-{trial.number}-curve.csv"]
        out = folder / f"downloaded-{trial.number}.csv"
        download_artifact(artifact_store=store, artifact_id=metas[0].artifact_id, file_path=str(out))
        rows = list(csv.DictReader(out.open()))
        assert [int(r["step"]) for r in rows] == list(range(STEPS))
        assert float(rows[-1]["val_loss"]) == pytest.approx(trial.value)
    # Checkpoints only serve a running trial: finished trials leave no folder behind.
    assert not any((folder / "runs" / study.study_name).glob("trial-*"))


def test_trial_0_is_the_anchor(finished):
    _, _, _, study = finished
    first, *others = study.get_trials()
    assert first.params["lr"] == ANCHOR_LR
    assert first.user_attrs["anchor"] is True
    assert not any(t.user_attrs.get("anchor") for t in others)
    assert all(3e-3 <= t.params["lr"] <= 3e-2 for t in others)


GRID = {(lr, warmup) for lr in (3e-3, ANCHOR_LR, 3e-2) for warmup in (0, 2)}  # --grid-points 2 plus the anchor


@pytest.fixture(scope="module")
def grid_sweep(data, tmp_path_factory):
    """One grid sweep with --trials 20, far more than the grid's points, shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("grid")
    storage = str(folder / "sweep.log")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        path = write_study(folder / "tiny.yaml", study_values(data))
        code = run_lr(path, storage, "--sampler", "grid", "--grid-points", "2", "--pruner", "none", "--trials", "20")
    return code, load(storage).get_trials()


def test_grid_sweep_runs_every_point_and_stops_when_the_grid_is_exhausted(grid_sweep):
    code, trials = grid_sweep
    assert code == 0
    assert {(t.params["lr"], t.params["warmup"]) for t in trials} == GRID
    assert len(trials) <= len(GRID) + 1, "the sweep went on re-running grid points up to --trials"


def test_grid_sweep_does_not_train_the_anchor_point_twice(grid_sweep):
    """GridSampler does not count the enqueued anchor as its grid point and proposes it again; that trial reuses the
    anchor's result (same params, seed and data give the same run) instead of training again."""
    _, trials = grid_sweep
    assert len(trials) == len(GRID) + 1
    twins = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(twins) == 1
    anchor = trials[twins[0].user_attrs["duplicate_of"]]
    assert anchor.user_attrs.get("anchor") and anchor.params == twins[0].params
    assert twins[0].value == anchor.value and "wall_s" in anchor.user_attrs


def test_grid_sweep_without_trials_covers_the_grid_and_names_the_trial_it_reused(study, tmp_path, capsys):
    storage = str(tmp_path / "sweep.log")
    code = main(["lr", "--study", str(study), "--steps", str(STEPS), "--storage", storage, "--sampler", "grid",
                 "--grid-points", "2", "--pruner", "none"])
    assert code == 0
    trials = load(storage).get_trials()
    assert len(trials) == len(GRID) + 1  # 7: the study's own `trials: 4` would have cut the grid short
    (twin,) = [t for t in trials if "duplicate_of" in t.user_attrs]
    out = capsys.readouterr().out
    line = f"trial {twin.number} COMPLETE val loss {twin.value:.4f}, the result of trial {twin.user_attrs['duplicate_of']}"
    assert line in out and "-0s" not in out


def test_gp_sampler_runs_past_its_random_start(study, tmp_path):
    """GPSampler's model-based proposals (after the random start-up trials) need scipy, a dependency."""
    code = run_lr(study, "sweep.log", "--sampler", "gp", "--pruner", "none", "--trials", "4")
    assert code == 0
    assert [t.state for t in load("sweep.log").get_trials()] == [TrialState.COMPLETE] * 4


# --- pruning ------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Fixed parameter lr:UserWarning")  # the anchor lies outside --lr-min..--lr-max
def test_huge_lr_is_pruned_as_unstable_and_the_sweep_goes_on(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = study_values(data)
    values["optimizer"] = {"grad_clip": 0}
    path = write_study(tmp_path / "tiny.yaml", values)
    storage = str(tmp_path / "sweep.log")
    code = run_lr(path, storage, "--lr-min", "5", "--lr-max", "20", "--sampler", "random", "--pruner", "none",
                  "--trials", "3")
    assert code == 0
    anchor, *huge = load(storage).get_trials()
    assert anchor.state == TrialState.COMPLETE
    for trial in huge:
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs["prune_reason"].startswith(UNSTABLE_PREFIXES), trial.user_attrs["prune_reason"]
        assert trial.user_attrs["steps_done"] < STEPS


def test_median_pruner_prunes_a_clearly_worse_trial(study, tmp_path):
    storage = str(tmp_path / "sweep.log")
    common = ("--pruner", "median", "--lr-min", "1e-7", "--sampler", "random")
    assert run_lr(study, storage, *common, "--trials", "1") == 0  # the anchor
    queued = load(storage)
    queued.enqueue_trial({"lr": 2 * ANCHOR_LR, "warmup": 2})
    queued.enqueue_trial({"lr": 1e-7, "warmup": 0})  # learns nothing in 20 steps
    assert run_lr(study, storage, *common, "--trials", "3") == 0
    good_0, good_1, tiny = load(storage).get_trials()
    assert (good_0.state, good_1.state) == (TrialState.COMPLETE, TrialState.COMPLETE)
    assert tiny.params["lr"] == 1e-7
    assert tiny.state == TrialState.PRUNED
    assert "median" in tiny.user_attrs["prune_reason"]
    assert tiny.user_attrs["steps_done"] < STEPS


# --- continuing a study -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage_name", ["sqlite:///store/x.db", "store/x.log"], ids=["sqlite", "journal"])
def test_study_continues_to_trials_and_never_past_them(study, storage_name):
    assert run_lr(study, storage_name, "--trials", "2") == 0
    assert [t.number for t in load(storage_name).get_trials()] == [0, 1]

    assert run_lr(study, storage_name, "--trials", "2") == 0  # already there: nothing to do
    assert len(load(storage_name).get_trials()) == 2

    assert run_lr(study, storage_name, "--trials", "4") == 0
    trials = load(storage_name).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert [t.number for t in trials if t.user_attrs.get("anchor")] == [0], "the anchor is enqueued once"
    assert len({(t.params["lr"], t.params["warmup"]) for t in trials}) == 4, "a continued study repeats no proposal"

    assert run_lr(study, storage_name, "--trials", "4") == 0
    assert len(load(storage_name).get_trials()) == 4


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_study_continued_by_a_new_process_proposes_what_the_uninterrupted_one_did(study, tmp_path, sampler):
    whole, restarted = str(tmp_path / "whole.log"), str(tmp_path / "restarted.log")
    args = ("--sampler", sampler, "--pruner", "none")
    assert run_lr(study, whole, "--trials", "4", *args) == 0
    assert run_lr(study, restarted, "--trials", "2", *args) == 0  # the first session stops (or is killed) here
    assert run_lr(study, restarted, "--trials", "4", *args) == 0

    assert [t.params for t in load(restarted).get_trials()] == [t.params for t in load(whole).get_trials()]


def test_trials_are_paired_same_data_and_init(study, tmp_path):
    """Two trials of one study with the same LR and warmup see the same batches from the same initial weights, so
    they end at exactly the same loss: differences between trials come from the hyperparameters alone."""
    storage = str(tmp_path / "sweep.log")
    assert run_lr(study, storage, "--pruner", "none", "--trials", "1") == 0
    anchor = load(storage).get_trials()[0]
    load(storage).enqueue_trial(anchor.params)
    assert run_lr(study, storage, "--pruner", "none", "--trials", "2") == 0
    first, again = load(storage).get_trials()
    assert again.params == first.params
    assert again.value == first.value
    assert again.user_attrs["final_train_loss"] == first.user_attrs["final_train_loss"]


# --- bad input ----------------------------------------------------------------------------------------------------


def _assert_refused(capsys, tmp_path, code: int, *, says: str, storage_file: str | None = "sweep.log") -> str:
    """Exit 2, one line on stderr that names the problem, no traceback, and nothing written."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert says in err, err
    assert not (tmp_path / "runs").exists()
    if storage_file:
        assert not (tmp_path / storage_file).exists()
    return err


@pytest.mark.parametrize(
    "args, says",
    [
        (["--storage", "foo://x"], "unknown scheme foo://"),
        (["--lr-min", "1e-2", "--lr-max", "1e-3"], "--lr-min must be below --lr-max"),
        (["--steps", "0"], "--steps"),
        (["--warmup", "50"], "--warmup has 50 steps, which must be below --steps 20"),
        (["--sampler", "nope"], "--sampler must be one of"),
        (["--pruner", "nope"], "--pruner must be one of"),
        (["--trials", "-1"], "--trials"),
        (["--warmup", "0,x"], "--warmup"),
    ],
    ids=["storage", "lr-range", "steps-0", "warmup-too-long", "sampler", "pruner", "trials", "warmup-syntax"],
)
def test_bad_flags_exit_2_with_one_line_and_write_nothing(study, tmp_path, capsys, args, says):
    code = run_lr(study, "sweep.log", *args)
    _assert_refused(capsys, tmp_path, code, says=says)


def test_unknown_study_file_exits_2(study, tmp_path, capsys):
    code = run_lr(tmp_path / "nope.yaml", "sweep.log")
    _assert_refused(capsys, tmp_path, code, says="nope.yaml does not exist")


def test_sqlite_storage_is_not_created_on_bad_input(study, tmp_path, capsys):
    code = run_lr(study, "sqlite:///store/x.db", "--sampler", "nope")
    _assert_refused(capsys, tmp_path, code, says="--sampler", storage_file="store")


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda text: text.replace("n_layer:", "n_layers:"), "model.n_layers"),
        (lambda text: text.replace(f"max_lr: {ANCHOR_LR}", "max_lr: -1"), "schedule.max_lr"),
        (lambda text: text.replace("search:\n  anchor_lr", "search:\n  anchor_lr: 1\n   lr_min"), "line"),
        (lambda text: text.replace("lr_max:", "lr_maxx:"), "search.lr_maxx"),
    ],
    ids=["unknown-key", "negative-max-lr", "indentation", "unknown-search-key"],
)
def test_bad_study_file_exits_2_naming_the_key(study, tmp_path, capsys, edit, says):
    text = study.read_text()
    study.write_text(edit(text))
    assert study.read_text() != text, "the edit must change the file"
    code = run_lr(study, "sweep.log")
    err = _assert_refused(capsys, tmp_path, code, says=says)
    assert str(study) in err


def test_missing_token_file_exits_2_before_the_study_is_created(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    values = study_values(data)
    values["data"]["train"] = str(tmp_path / "missing.bin")
    path = write_study(tmp_path / "tiny.yaml", values)
    code = run_lr(path, "sweep.log")
    _assert_refused(capsys, tmp_path, code, says="missing.bin")


def test_existing_study_with_another_search_space_is_refused(study, tmp_path, capsys):
    storage = str(tmp_path / "sweep.log")
    assert run_lr(study, storage, "--trials", "1") == 0
    capsys.readouterr()
    code = run_lr(study, storage, "--trials", "2", "--lr-max", "1e-1")
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "--study-name" in err and "lr" in err
    assert len(load(storage).get_trials()) == 1, "the refused run added no trial"
    # Under another name the same storage takes the new space.
    assert run_lr(study, storage, "--trials", "1", "--lr-max", "1e-1", "--study-name", "wide") == 0
    assert len(load(storage, "wide").get_trials()) == 1


# --- warmup ranges ------------------------------------------------------------------------------------------------


def test_a_warmup_range_is_searched_as_integers_and_the_plan_reads_back_from_the_study(data, tmp_path, monkeypatch):
    from optuna.distributions import IntDistribution

    from sweep.plan import TrialPlan

    monkeypatch.chdir(tmp_path)
    path = write_study(tmp_path / "tiny.yaml", study_values(data, warmup={"min": 0, "max": 0.2}))
    assert run_lr(path, "sweep.log", "--sampler", "random", "--pruner", "none", "--trials", "3") == 0
    study = load("sweep.log")
    assert study.user_attrs["search_space"]["warmup"] == [0, 4] and study.user_attrs["search_space"]["warmup_is_range"]
    for trial in study.get_trials():
        assert trial.distributions["warmup"] == IntDistribution(0, 4)
        assert isinstance(trial.params["warmup"], int) and 0 <= trial.params["warmup"] <= 4
    # `confirm` re-runs the study's trials from the plan it reads back: the same plan, the range kept a range.
    plan = TrialPlan.from_study(study, recipe=load_recipe(path), study_dir=tmp_path / "runs" / study.study_name)
    assert plan.search_space().to_attr() == study.user_attrs["search_space"]


def test_a_grid_over_a_warmup_range_takes_evenly_spaced_warmups(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_study(tmp_path / "tiny.yaml", study_values(data, warmup={"min": 0, "max": 4}))
    assert run_lr(path, "sweep.log", "--sampler", "grid", "--grid-points", "3", "--lr-min", "3e-3", "--lr-max", "1e-2",
                  "--pruner", "none", steps=8) == 0
    assert {t.params["warmup"] for t in load("sweep.log", "tiny-8").get_trials()} == {0, 2, 4}


def test_trials_with_two_micro_steps_record_the_noise_scale(data, tmp_path, monkeypatch, capsys):
    """B_simple (train_core.noise) per step in the curve, its last value as a user attr, a column in the summary."""
    monkeypatch.chdir(tmp_path)
    values = study_values(data, trials=2)
    values["batch"] = {"total_batch_size": 256, "micro_batch_size": 8}  # two micro-batches of 8 x 16 tokens a step
    path = write_study(tmp_path / "tiny.yaml", values)
    assert main(["lr", "--study", str(path), "--steps", str(STEPS), "--storage", "sweep.log", "--pruner", "none"]) == 0
    out = capsys.readouterr().out
    study = load("sweep.log")
    store = FileSystemArtifactStore(tmp_path / "artifacts")
    for trial in study.get_trials():
        meta, = get_all_artifact_meta(trial, storage=open_storage("sweep.log"))
        out_csv = tmp_path / f"curve-{trial.number}.csv"
        download_artifact(artifact_store=store, artifact_id=meta.artifact_id, file_path=str(out_csv))
        rows = list(csv.DictReader(out_csv.open()))
        curve = [float(r["noise_scale_tokens"]) for r in rows if r["noise_scale_tokens"]]
        assert curve and all(math.isfinite(v) and v > 0 for v in curve), rows[-1]
        assert trial.user_attrs["noise_scale_tokens"] == pytest.approx(curve[-1], abs=0.1)
    assert "B_simple" in out


def test_trials_with_one_micro_step_leave_the_noise_scale_out(finished, capsys):
    _, _, storage, study = finished
    assert not any("noise_scale_tokens" in t.user_attrs for t in study.get_trials())
    assert main(["status", "--storage", storage, "--study-name", study.study_name]) == 0
    assert "B_simple" not in capsys.readouterr().out
