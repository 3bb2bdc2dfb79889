"""`sweep range`, `sweep confirm`, `sweep horizon` and `promote --lr-from horizon`, end to end on the tiny study."""

import re
from pathlib import Path

import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from sweep.analysis import PowerLaw
from sweep.cli import main
from sweep.storage import open_storage
from sweep_fixtures import load, run_lr, study_values, write_study, write_token_files


# Every LR of a 4-point grid from 3e-3 to 3 (and the anchor's 1e-2), so that each horizon's bottom lies inside it.
GRID = ["--sampler", "grid", "--grid-points", "4", "--lr-max", "3", "--pruner", "none", "-q"]


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_study(tmp_path / "tiny.yaml", study_values(write_token_files(tmp_path / "tokens")))


def test_range_test_reports_bounds_and_records_its_run(study, capsys):
    code = main(["range", "--study", str(study), "--steps", "60", "--lr-start", "1e-5", "--lr-end", "10",
                 "--storage", "range.log"])
    out = capsys.readouterr().out
    assert code == 0 and "suggested sweep bounds --lr-min" in out
    trial = load("range.log", "tiny-range").trials[0]
    low, high = trial.user_attrs["suggested_bounds"]
    assert 1e-5 < low < trial.user_attrs["steepest_lr"] < high < 10
    # An LR of 10 on this model diverges well inside the ramp, and the run stops there.
    assert trial.user_attrs["diverged_lr"] is not None and len(trial.intermediate_values) < 60
    # The LR-finder plot is written and attached to the range test's trial for the dashboard.
    assert "plot: runs/tiny-range.png" in out and (study.parent / "runs" / "tiny-range.png").stat().st_size > 10_000
    artifacts = get_all_artifact_meta(trial, storage=open_storage("range.log", create=False))
    assert [a.filename for a in artifacts] == ["tiny-range.png"]


def test_confirm_reruns_top_settings_and_the_anchor_with_more_seeds(study, capsys):
    assert run_lr(study, "s.log", "--sampler", "random", "--pruner", "none", "--trials", "3") == 0
    code = main(["confirm", "--study", str(study), "--steps", "20", "--storage", "s.log", "--top", "2", "--seeds", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "paired seeds" in out
    # Up front, what the sweep's own noise allows (3 trials are too few to read it); after, who is ahead in words.
    assert "confirm: 3 completed trials are too few to read the sweep's noise from; 3 seeds\n" in out
    assert "winner lower by " in out and "+0." not in out
    confirm = load("s.log", "tiny-20-confirm")
    runs = confirm.get_trials(states=(TrialState.COMPLETE,))
    settings = {(t.params["lr"], t.params["warmup"]) for t in runs}
    assert len(settings) in (2, 3)  # the top 2, plus the anchor when it is not among them
    assert len(runs) == 2 * len(settings)  # seeds 8 and 9; seed 7 is each setting's sweep trial
    assert {t.params["seed"] for t in runs} == {8, 9}
    # Running it again reuses every finished run.
    assert main(["confirm", "--study", str(study), "--steps", "20", "--storage", "s.log", "--top", "2", "--seeds", "3"]) == 0
    assert len(load("s.log", "tiny-20-confirm").trials) == len(runs)


def test_horizon_fits_the_best_lr_across_horizons_and_promote_uses_it(study, capsys):
    code = main(["horizon", "--study", str(study), "--steps", "10,20", "--storage", "h.log", *GRID, "--warmup", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "extrapolated to 100 steps" in out
    assert "warmup choices are fractions" not in out  # --warmup 0 is in steps: the same at every horizon
    fit = load("h.log", "tiny-horizon").user_attrs
    assert [steps for steps, _ in fit["points"]] == [10, 20]
    assert all(3e-3 < lr < 3 for _, lr in fit["points"])
    assert fit["extrapolated_lr"] > 0 and fit["target_steps"] == 100
    code = main(["promote", "best", "--study", str(study), "--steps", "20", "--storage", "h.log",
                 "--lr-from", "horizon", "--dry-run"])
    assert code == 0 and f"peak lr {fit['extrapolated_lr']:.3g}" in capsys.readouterr().out
    # A shorter full run gets the law's LR at its own length, not the one at the recipe's max_steps.
    at_50 = PowerLaw(**fit["law"]).predict(50 * fit["tokens_per_step"])
    code = main(["promote", "best", "--study", str(study), "--steps", "20", "--storage", "h.log",
                 "--lr-from", "horizon", "--max-steps", "50", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and f"peak lr {at_50:.3g}" in out and f"to 50 steps: {at_50:.3g}" in out
    assert f"{at_50:.3g}" != f"{fit['extrapolated_lr']:.3g}"


def test_promote_lr_from_horizon_without_a_fit_exits_2(study, capsys):
    assert run_lr(study, "p.log", "--sampler", "random", "--pruner", "none", "--trials", "2") == 0
    code = main(["promote", "best", "--study", str(study), "--steps", "20", "--storage", "p.log", "--lr-from", "horizon"])
    assert code == 2 and "sweep horizon" in capsys.readouterr().err


# LRs far from every threshold on any CPU: 0.1 trains (0.3 sits on the stability guard's edge), the anchor's 1e-2 is the
# bottom at 20 and 40 steps by over 0.1 nats, and 1e-3 is far behind. The test checks the branching, not where a float
# lands against a threshold.
SAFE_GRID = ["--sampler", "grid", "--grid-points", "3", "--lr-min", "1e-3", "--lr-max", "0.1", "--pruner", "none", "-q"]


@pytest.mark.slow
def test_wsd_horizons_branch_from_the_shorter_horizon_and_end_where_full_trials_end(study, tmp_path, monkeypatch, capsys):
    """With --schedule wsd, each 40-step trial starts from the 20-step trial of the same LR at its cool-down start
    (step 16) and trains 24 steps; it ends bitwise where a 40-step WSD trial trained from step 0 ends."""
    wsd = [*SAFE_GRID, "--warmup", "2", "--schedule", "wsd"]
    assert main(["horizon", "--study", str(study), "--steps", "20,40", "--storage", "h.log", *wsd]) == 0
    out = capsys.readouterr().out
    trials = [t for t in load("h.log", "tiny-40").trials if "duplicate_of" not in t.user_attrs]
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(t.user_attrs["branched_from_step"] == 16 for t in trials)
    assert "shared prefix: 3 trials" in out
    # The store keeps one state per LR, the furthest: the 40-step trials' own cool-down starts.
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny-branches").glob("*/*")) == ["stable-00000032.pt"] * 3

    scratch = tmp_path / "from-zero"
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    assert main(["lr", "--study", str(study), "--steps", "40", "--storage", "z.log", *wsd]) == 0
    from_zero = {t.params["lr"]: t for t in load("z.log", "tiny-40").trials if "duplicate_of" not in t.user_attrs}
    assert sorted(from_zero) == sorted(t.params["lr"] for t in trials)
    assert all("branched_from_step" not in t.user_attrs for t in from_zero.values())
    assert all(t.value == from_zero[t.params["lr"]].value for t in trials)  # bitwise


@pytest.mark.slow
def test_horizon_sweeps_a_grid_by_default_and_says_when_fractional_warmups_differ(study, capsys):
    no_sampler = [arg for arg in GRID if arg not in ("--sampler", "grid")]
    assert main(["horizon", "--study", str(study), "--steps", "10,20", "--storage", "f.log", *no_sampler,
                 "--warmup", "0.2"]) == 0
    assert "note: the warmup choices are fractions" in capsys.readouterr().out
    # GridSampler's own mark on every trial it proposed: all but the enqueued anchor.
    assert sum("grid_id" in t.system_attrs for t in load("f.log", "tiny-10").trials) == 5
    assert {t.params["warmup"] for t in load("f.log", "tiny-10").trials} == {2}
    assert {t.params["warmup"] for t in load("f.log", "tiny-20").trials} == {4}


def test_confirm_says_up_front_how_many_seeds_each_difference_needs():
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import create_trial

    from sweep.trust import confirm_outlook

    study = optuna.create_study(study_name="s")
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "warmup": IntDistribution(0, 30)}
    # A basin with some scatter: the runner-up is 0.01 behind (many seeds to tell), the anchor 0.2 behind (few).
    for lr, loss, anchor in [(1e-3, 3.85, True), (2e-3, 3.73, False), (4e-3, 3.68, False), (8e-3, 3.65, False),
                             (1.6e-2, 3.66, False), (3.2e-2, 3.75, False)]:
        study.add_trial(create_trial(value=loss, params={"lr": lr, "warmup": 30}, distributions=dists,
                                     user_attrs={"anchor": anchor}))
    lines = confirm_outlook(study, seeds=2)
    assert lines[0].startswith("confirm: the sweep's final losses scatter by sd 0.0")
    assert lines[1].startswith("  lr 0.008 vs the runner-up lr 0.016: the sweep has the winner lower by 0.0100; about ")
    assert lines[1].endswith(" paired seeds to tell apart at 95% (--seeds 2 will likely say NOT distinguishable)")
    assert lines[2].startswith("  lr 0.008 vs the anchor lr 0.001: the sweep has the winner lower by 0.2000; about ")


def test_lr_range_auto_runs_the_range_test_its_flags_describe_once_and_sweeps_between_its_bounds(study, capsys):
    auto = ["--lr-range", "auto", "--range-steps", "30", "--range-lr-start", "1e-4", "--range-lr-end", "10",
            "--sampler", "random", "--pruner", "none", "--trials", "2"]
    assert run_lr(study, "a.log", *auto) == 0
    out = capsys.readouterr().out
    (range_trial,) = load("a.log", "tiny-range").trials
    assert range_trial.params == {"lr_start": 1e-4, "lr_end": 10}
    assert len(range_trial.intermediate_values) <= 30
    low, high = range_trial.user_attrs["suggested_bounds"]
    assert load("a.log").user_attrs["search_space"]["lr"] == [low, high]
    # Numbers as people read them: three significant digits, not 0.061359072734131756.
    line = next(line for line in out.splitlines() if line.startswith("lr range test:"))
    assert re.fullmatch(r"lr range test: steepest at \S{1,9}, diverged at \S{1,9}; sweeping \S{1,9} to \S{1,9}", line)

    # Run again, the study continues between the bounds it has: no second range test, no "another search space".
    assert run_lr(study, "a.log", *auto[:-1], "3") == 0
    assert "continues between its own bounds" in capsys.readouterr().out
    assert len(load("a.log", "tiny-range").trials) == 1
    assert len(load("a.log").trials) == 3


def test_lr_range_auto_refuses_a_reversed_range_before_anything_runs(study, capsys):
    code = run_lr(study, "r.log", "--lr-range", "auto", "--range-lr-start", "1", "--range-lr-end", "0.1")
    assert code == 2 and "--range-lr-start must be below --range-lr-end" in capsys.readouterr().err
    assert not Path("r.log").exists()
