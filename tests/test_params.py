"""Further swept recipe keys (sweep/params.py): the spec, bad specs refused up front, and the values carried by every
trial, the anchor, the grid, confirm and promote. Real tiny sweeps on a journal file."""

import math

import pytest
import torch
from optuna.trial import TrialState

from sweep.cli import main
from sweep.params import SweptParam, apply_values, check_params, swept_values
from sweep.recipe import load_recipe
from sweep_fixtures import STEPS, load, run_lr, study_values, write_study
from train_core import InputError

WD = "optimizer.weight_decay"


# --- the spec -----------------------------------------------------------------------------------------------------


def test_a_range_a_log_range_and_choices_parse_from_the_flag_and_the_recipe_alike():
    assert SweptParam.from_flag(f"{WD}=0:0.2") == SweptParam.parse({"low": 0, "high": 0.2}, key=WD, where="x")
    log = SweptParam.from_flag("model.init_std=0.005:0.08:log")
    assert (log.low, log.high, log.log) == (0.005, 0.08, True)
    beta2 = SweptParam.from_flag("optimizer.beta2=0.99,0.95")
    assert beta2.choices == (0.95, 0.99) == SweptParam.parse([0.99, 0.95], key="optimizer.beta2", where="x").choices
    for p in (log, beta2):
        assert SweptParam.from_attr(p.to_attr()) == p


def test_a_grid_spaces_the_range_and_holds_the_recipes_value():
    log = SweptParam.from_flag("model.init_std=0.005:0.08:log")
    assert log.grid(5, anchor=0.02) == [0.005, 0.01, 0.02, 0.04, 0.08]
    linear = SweptParam.from_flag(f"{WD}=0:0.2")
    assert linear.grid(3, anchor=0.05) == [0.0, 0.05, 0.1, 0.2]


def test_values_set_the_recipe_keys_and_nothing_else(study):
    train = load_recipe(study).train
    changed = apply_values(train, {WD: 0.03, "optimizer.beta2": 0.99})
    assert (changed.optimizer.weight_decay, changed.optimizer.beta2) == (0.03, 0.99)
    assert changed.model == train.model and changed.optimizer.beta1 == train.optimizer.beta1
    assert swept_values({"lr": 1e-3, "warmup": 2, "seed": 3, WD: 0.03}) == {WD: 0.03}


@pytest.mark.parametrize(
    "flag, says",
    [
        ("model.n_embd=16:64", "'model.n_embd' is not a key a sweep can tune"),
        (f"{WD}=0.2:0.1", "low must be below high, got 0.2 >= 0.1"),
        ("model.init_std=0:0.1:log", "a log range must stay above 0"),
        ("model.mup_output_alpha=1:8:log", "is a μP multiplier and the model is SP"),
        (f"{WD}=0.2:0.4", "must hold the recipe's own optimizer.weight_decay = 0.1"),
        ("optimizer.beta2=0.95,1.5", "optimizer.beta2"),
        (f"{WD}=0.1:x", "'x' is not a finite number"),
        (f"{WD}", "expected KEY=LOW:HIGH[:log] or KEY=A,B,C"),
    ],
    ids=["unknown-key", "low-above-high", "log-through-0", "mup-key-under-sp", "misses-the-recipe", "invalid-bound",
         "not-a-number", "no-spec"],
)
def test_a_bad_param_flag_exits_2_with_one_line_and_writes_nothing(study, tmp_path, capsys, flag, says):
    code = run_lr(study, "sweep.log", "--param", flag)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert says in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweep.log").exists()


def test_a_bad_recipe_param_exits_2_naming_the_file_and_key(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_study(tmp_path / "tiny.yaml", study_values(data, params={"optimizer.beta3": [0.9]}))
    assert run_lr(path, "sweep.log") == 2
    err = capsys.readouterr().err
    assert str(path) in err and "search.params.optimizer.beta3" in err and err.count("\n") == 1, err
    assert not (tmp_path / "sweep.log").exists()


def test_a_key_given_twice_is_refused(study):
    train = load_recipe(study).train
    with pytest.raises(InputError, match="names optimizer.weight_decay twice"):
        check_params((SweptParam.from_flag(f"{WD}=0:0.2"), SweptParam.from_flag(f"{WD}=0.1,0.2")), train, source="--param")


# --- a sweep of them ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(data, tmp_path_factory):
    """A tiny sweep of lr, warmup and weight decay from the recipe's search.params, then confirm and a promote."""
    folder = tmp_path_factory.mktemp("params")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        path = write_study(folder / "tiny.yaml", study_values(data, params={WD: {"low": 0.0, "high": 0.3}}))
        codes = [run_lr(path, "s.log", "--sampler", "random", "--pruner", "none", "--trials", "4")]
        codes.append(main(["confirm", "--study", str(path), "--steps", str(STEPS), "--storage", "s.log", "--top", "1",
                           "--seeds", "2"]))
        codes.append(main(["promote", "best", "--study", str(path), "--steps", str(STEPS), "--storage", "s.log",
                           "--max-steps", "6"]))
    return codes, folder, load(str(folder / "s.log"))


def test_every_trial_tunes_the_key_and_the_anchor_runs_the_recipes_value(swept):
    codes, _, study = swept
    assert codes == [0, 0, 0]
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].params[WD] == 0.1, "the anchor trial runs the recipe as written"
    assert len({t.params[WD] for t in trials}) == len(trials), "the sampler draws the key"
    assert all(0.0 <= t.params[WD] <= 0.3 for t in trials)
    # The value reaches the training: every trial's config differs (the seed and the data are shared).
    assert len({t.user_attrs["config_hash"] for t in trials}) == len(trials)


def test_the_study_keeps_the_key_in_its_search_space(swept):
    _, _, study = swept
    assert study.user_attrs["search_space"]["params"] == [{"key": WD, "low": 0.0, "high": 0.3, "log": False}]


def test_confirm_reruns_the_best_trial_with_its_value(swept):
    _, folder, study = swept
    confirm = load(str(folder / "s.log"), f"{study.study_name}-confirm")
    reruns = confirm.get_trials(states=(TrialState.COMPLETE,))
    best, anchor = study.best_trial, study.get_trials()[0]
    assert {(t.params["lr"], t.params[WD]) for t in reruns} == {(t.params["lr"], t.params[WD]) for t in (best, anchor)}
    assert all(t.params["seed"] == 8 for t in reruns), "seed 7 is the sweep's own trial"


def test_promote_runs_the_best_trials_value(swept):
    _, folder, study = swept
    promoted = load(str(folder / "s.log"), f"{study.study_name}-promoted")
    (run,) = promoted.get_trials()
    assert run.state == TrialState.COMPLETE
    assert run.params[WD] == study.best_trial.params[WD] and run.params["lr"] == study.best_trial.params["lr"]
    (checkpoint,) = (folder / "runs" / study.study_name).glob(f"promote-{study.best_trial.number}*/best.pt")
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["config"]["optimizer"]["weight_decay"] == study.best_trial.params[WD]


def test_a_grid_covers_every_choice_of_the_key_with_the_lr_and_warmup(study, tmp_path):
    code = run_lr(study, "g.log", "--sampler", "grid", "--grid-points", "2", "--warmup", "0", "--pruner", "none",
                  "--param", "optimizer.beta2=0.95,0.99")
    assert code == 0
    trials = load("g.log").get_trials()
    # 2 LRs + the anchor's = 3, x 1 warmup x 2 beta2s, and the anchor's point proposed again (reused).
    points = {(t.params["lr"], t.params["optimizer.beta2"]) for t in trials}
    assert len(points) == 6 and len(trials) == 7
    assert all(t.state == TrialState.COMPLETE and math.isfinite(t.value) for t in trials)


def test_a_study_refuses_to_continue_with_another_param_range(study, capsys):
    assert run_lr(study, "c.log", "--trials", "1", "--param", f"{WD}=0:0.2") == 0
    capsys.readouterr()
    assert run_lr(study, "c.log", "--trials", "2", "--param", f"{WD}=0:0.3") == 2
    assert "another search space" in capsys.readouterr().err
    assert len(load("c.log").get_trials()) == 1



# --- transfer with a proxy's tuned values ---------------------------------------------------------------------------


@pytest.mark.slow
def test_transfer_trains_every_width_with_the_proxys_tuned_values(data, tmp_path, monkeypatch, capsys):
    from sweep.plan import TrialPlan
    from sweep.promote import make_plan
    from sweep.runs import Runs

    monkeypatch.chdir(tmp_path)
    values = study_values(data)
    values["model"] |= {"parametrization": "mup"}
    path = write_study(tmp_path / "tiny.yaml", values)
    alpha = "model.mup_output_alpha"
    assert run_lr(path, "t.log", "--trials", "3", "--sampler", "random", "--param", f"{alpha}=0.25:4:log") == 0
    tuned = load("t.log").best_trial.params[alpha]
    capsys.readouterr()
    grid = ["--steps", "10", "--grid-points", "2", "--warmup", "0", "-q"]
    assert main(["transfer", "--study", str(path), "--widths", "16,32", "--storage", "t.log", "--tuned-from",
                 f"tiny-{STEPS}", *grid]) == 0
    assert f"every width trains with {alpha} {tuned:g}, tuned in study tiny-{STEPS}" in capsys.readouterr().out
    wide = load("t.log", "tiny-mup-w32-10")
    assert wide.user_attrs["search_space"]["fixed"] == {alpha: tuned}
    assert all(alpha not in t.params for t in wide.trials), "a tuned key is set, not swept again"
    # Re-runs (confirm) and the promoted run of a width's trial train with it too.
    plan = TrialPlan.from_study(wide, recipe=load_recipe(path), study_dir=tmp_path / "x")
    assert plan.trial_config(lr=1e-2, warmup_steps=0, values={}).model.mup_output_alpha == tuned
    promoted = make_plan(wide, wide.best_trial, load_recipe(path), max_steps=5, force=False, runs=Runs(tmp_path / "runs"),
                         n_embd=32)
    assert promoted.config.model.mup_output_alpha == tuned
    # Under SP the μP multipliers mean nothing: left out, and said so.
    assert main(["transfer", "--study", str(path), "--widths", "16,32", "--storage", "t.log", "--tuned-from",
                 f"tiny-{STEPS}", "--parametrization", "sp", *grid]) == 0
    assert f"({alpha} left out: μP only)" in capsys.readouterr().out


def test_transfer_tuned_from_a_study_that_swept_no_key_exits_2(study, tmp_path, capsys):
    assert run_lr(study, "n.log", "--trials", "1") == 0
    capsys.readouterr()
    code = main(["transfer", "--study", str(study), "--widths", "16,32", "--storage", "n.log", "--tuned-from",
                 f"tiny-{STEPS}", "--steps", "10", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"--tuned-from tiny-{STEPS}: the study has no completed trial that swept a recipe key" in err
    assert not (tmp_path / "runs" / "tiny-sp-w16-10").exists()
