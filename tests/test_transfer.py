"""--- μP --- `sweep transfer` and `promote --n-embd`, end to end on the tiny study: one grid study per width, each
width's best LR and the drift stored with the plot, and the wider promote taking the LR μP or the SP drift gives."""

import math

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta

from sweep.cli import main
from sweep.plan import TrialPlan
from sweep.recipe import load_recipe
from sweep.transfer import width_lr
from sweep_fixtures import load, study_values, write_study, write_token_files

# 5 LRs x2 apart, the anchor's 1e-2 among them, at every width; one warmup, no pruning: whole curves.
GRID = ["--steps", "10", "--grid-points", "5", "--lr-min", "2.5e-3", "--lr-max", "4e-2", "--warmup", "0", "-q"]


@pytest.fixture
def data(tmp_path_factory):
    return write_token_files(tmp_path_factory.mktemp("tokens"))


def _study(tmp_path, data, name: str, **model):
    values = study_values(data)
    values["model"] |= model
    return write_study(tmp_path / name, values)


@pytest.mark.slow
def test_transfer_sweeps_the_same_grid_per_width_and_stores_the_fit(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path, data, "tiny.yaml", parametrization="mup")
    assert main(["transfer", "--study", str(study), "--widths", "16,32", "--storage", "t.log", *GRID]) == 0
    out = capsys.readouterr().out
    grids = {}
    for width in (16, 32):
        swept = load("t.log", f"tiny-mup-w{width}-10")
        assert swept.user_attrs["model"]["n_embd"] == width and swept.user_attrs["model"]["mup_base_width"] == 16
        grids[width] = sorted({t.params["lr"] for t in swept.trials})
        assert f"μP width {width}: best lr" in out
    assert grids[16] == grids[32] == [2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2]
    fit = load("t.log", "tiny-transfer-mup").user_attrs
    assert fit["widths"] == [16, 32] and fit["steps"] == 10 and fit["parametrization"] == "mup"
    assert all(2.5e-3 <= lr <= 4e-2 for lr in fit["best_lr"].values())
    inside = [w for w in (16, 32) if w not in fit["at_edge"]]
    assert (fit["slope"] is not None) == (len(inside) == 2)
    assert fit["slope_standard_error"] is None  # two widths leave no residual
    assert (tmp_path / "runs" / "tiny-transfer-mup.png").stat().st_size > 10_000
    summary = load("t.log", "tiny-transfer-mup")
    assert len(get_all_artifact_meta(summary)) == 1
    assert "plot: runs/tiny-transfer-mup.png; stored in study tiny-transfer-mup" in out

    # μP promotes the proxy's own LR at the wider width; --dry-run says so, with the width and its parameters.
    best = min(load("t.log", "tiny-mup-w16-10").get_trials(states=(optuna.trial.TrialState.COMPLETE,)),
               key=lambda t: t.value)
    assert main(["promote", "best", "--study", str(study), "--study-name", "tiny-mup-w16-10", "--storage", "t.log",
                 "--n-embd", "64", "--dry-run"]) == 0
    plan = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "width 64 (1 layers, 2 heads, μP, base width 16)" in plan
    assert f"peak lr {best.params['lr']:.3g} (the trial's lr at width 16, kept as is at width 64: μP)" in plan
    assert "promote-" in plan and "-w64" in plan
    assert "scaled to width 64 by FLOPs per token" in plan  # the time estimate is the wider model's

    # Re-runs of a width's trials (confirm's seeds) train that width, not the recipe's.
    plan = TrialPlan.from_study(load("t.log", "tiny-mup-w32-10"), recipe=load_recipe(study), study_dir=tmp_path / "x")
    model = plan.trial_config(lr=1e-2, warmup_steps=0, seed=8).model
    assert (model.n_embd, model.parametrization, model.mup_base_width) == (32, "mup", 16)


@pytest.mark.slow
def test_sp_promote_moves_the_lr_along_the_fitted_drift(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path, data, "tiny.yaml")
    assert main(["transfer", "--study", str(study), "--widths", "16,32,64", "--storage", "s.log", *GRID]) == 0
    fit = load("s.log", "tiny-transfer-sp").user_attrs
    capsys.readouterr()
    assert main(["promote", "best", "--study", str(study), "--study-name", "tiny-sp-w16-10", "--storage", "s.log",
                 "--n-embd", "128", "--dry-run"]) == 0
    plan = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    best = min(load("s.log", "tiny-sp-w16-10").get_trials(states=(optuna.trial.TrialState.COMPLETE,)),
               key=lambda t: t.value)
    assert fit["slope"] is not None  # at least two widths have their bottom inside the range
    expected = best.params["lr"] * 8 ** fit["slope"]
    assert f"peak lr {expected:.3g} (the trial's lr {best.params['lr']:.3g} at width 16 x (128/16)^" in plan
    assert "the SP drift `transfer` fitted" in plan

    # The SP study promoted with a μP recipe is refused by name, even with --force.
    mup = _study(tmp_path, data, "tiny-mup.yaml", parametrization="mup")
    assert main(["promote", "best", "--study", str(mup), "--study-name", "tiny-sp-w16-10", "--storage", "s.log",
                 "--n-embd", "128", "--force", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "study tiny-sp-w16-10 was trained under SP, but this run is μP with base width 16" in err
    assert err.count("\n") == 1


def test_sp_without_a_transfer_fit_keeps_the_lr_and_says_why(data, tmp_path):
    recipe = load_recipe(_study(tmp_path, data, "tiny.yaml"))
    storage = optuna.storages.InMemoryStorage()
    swept = optuna.create_study(study_name="tiny-20", storage=storage)
    swept.set_user_attr("model", {"n_embd": 16, "parametrization": "sp"})
    lr, why = width_lr(storage=storage, study=swept, recipe=recipe, lr=1e-2, source="the trial's lr", n_embd=64)
    assert lr == 1e-2 and why.startswith("the trial's lr at width 16, unchanged: SP without a drift fit (tiny-transfer-sp")
    mup = optuna.create_study(study_name="tiny-mup-20", storage=storage)
    mup.set_user_attr("model", {"n_embd": 16, "parametrization": "mup", "mup_base_width": 16})
    assert width_lr(storage=storage, study=mup, recipe=recipe, lr=1e-2, source="the trial's lr", n_embd=64) == (
        1e-2, "the trial's lr at width 16, kept as is at width 64: μP")


@pytest.mark.parametrize("widths, named", [("16,33", "--widths 33 must be a multiple of model.n_head=2"),
                                           ("16", "--widths: must be two or more positive widths")])
def test_bad_widths_exit_2_before_any_trial(data, tmp_path, monkeypatch, capsys, widths, named):
    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path, data, "tiny.yaml")
    assert main(["transfer", "--study", str(study), "--widths", widths, "--storage", "b.log", *GRID]) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1
    assert not (tmp_path / "b.log").exists()


@pytest.mark.slow
def test_promote_at_a_width_the_heads_do_not_divide_exits_2(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path, data, "tiny.yaml", parametrization="mup")
    assert main(["transfer", "--study", str(study), "--widths", "16,32", "--storage", "t.log", *GRID]) == 0
    capsys.readouterr()
    assert main(["promote", "best", "--study", str(study), "--study-name", "tiny-mup-w16-10", "--storage", "t.log",
                 "--n-embd", "33", "--dry-run"]) == 2
    assert "--n-embd 33 must be a multiple of model.n_head=2" in capsys.readouterr().err
    assert math.isfinite(load("t.log", "tiny-transfer-mup").user_attrs["best_lr"]["16"])


def test_promote_at_a_wider_width_composes_with_the_horizon_fit(data, tmp_path, monkeypatch, capsys):
    """--lr-from horizon carries the proxy's LR to the run's length; --n-embd then carries it across width (μP: as is)."""
    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path, data, "tiny.yaml", parametrization="mup")
    assert main(["horizon", "--study", str(study), "--steps", "10,20", "--storage", "h.log", "--grid-points", "4",
                 "--lr-max", "3", "--pruner", "none", "--warmup", "0", "-q"]) == 0
    fit = load("h.log", "tiny-horizon").user_attrs
    capsys.readouterr()
    assert main(["promote", "best", "--study", str(study), "--steps", "20", "--storage", "h.log", "--lr-from", "horizon",
                 "--n-embd", "64", "--dry-run"]) == 0
    plan = " ".join(capsys.readouterr().out.split())
    assert f"peak lr {fit['extrapolated_lr']:.3g} (the lr extrapolated by `sweep horizon` at width 16, kept as is at " \
           "width 64: μP)" in plan
