"""--- μP --- `sweep transfer` and `promote --n-embd`, end to end on the tiny study: one grid study per width, each
width's best LR and the drift stored with the plot, and the wider promote taking the LR μP or the SP drift gives."""

import math

import optuna
import optuna_dashboard
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import create_trial

from sweep.cli import main
from sweep.plan import TrialPlan
from sweep.recipe import load_recipe
from sweep.transfer import WIDER_FLOOR, fit_transfer, report_lines, width_lr
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
    out = transfer_out = capsys.readouterr().out
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

    # Whether wider was better, said and stored; then SP beside it, compared at the widest width.
    mup = load("t.log", "tiny-transfer-mup")
    lowest = {w: _lowest_loss(load("t.log", f"tiny-mup-w{w}-10")) for w in (16, 32)}
    assert mup.user_attrs["best_loss"] == {"16": lowest[16], "32": lowest[32]}
    better = lowest[16] - lowest[32] >= WIDER_FLOOR
    assert mup.user_attrs["wider_better"] is better and mup.user_attrs["wider_steps"][0]["better"] is better
    verdict = "wider is better: " if better else "warning: μP's wider models are NOT better beyond the noise band ("
    note = optuna_dashboard.get_note(mup)
    assert verdict in transfer_out and verdict in note
    assert f"16→32 {lowest[32] - lowest[16]:+.4f} (band 0.0100, one seed)" in note
    assert mup.user_attrs["mup_vs_sp"] is None and "μP vs SP" not in transfer_out  # SP not run yet

    assert main(["transfer", "--study", str(study), "--widths", "16,32", "--storage", "t.log", "--parametrization",
                 "sp", *GRID]) == 0
    out = capsys.readouterr().out
    sp_best = _lowest_loss(load("t.log", "tiny-sp-w32-10"))
    versus = load("t.log", "tiny-transfer-sp").user_attrs["mup_vs_sp"]
    assert versus["width"] == 32 and versus["mup_minus_sp"] == pytest.approx(lowest[32] - sp_best)
    assert versus["within"] is (lowest[32] - sp_best <= 0.03)
    assert load("t.log", "tiny-transfer-mup").user_attrs["mup_vs_sp"] == versus  # on both summaries
    line = f"μP vs SP at width 32, 10 steps: best val loss {lowest[32]:.4f} vs {sp_best:.4f}"
    assert line in out and line in optuna_dashboard.get_note(load("t.log", "tiny-transfer-sp"))


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


# --- whether width paid: each width's best loss against the next narrower one's, and μP's against SP's ---

SWEPT = {"lr": FloatDistribution(1e-4, 1.0, log=True), "warmup": IntDistribution(0, 10)}
SPACE = SWEPT | {"seed": IntDistribution(0, 9999)}  # confirm's
LRS = (2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2)


def _width_study(storage, name: str, best: float, *, seed: int = 1337, bottom: float = 1e-2) -> optuna.Study:
    """A width's grid sweep as the storage keeps it: a bowl in log LR whose bottom, at lr `bottom` (one of LRS), is
    `best`."""
    study = optuna.create_study(study_name=name, storage=storage)
    for lr in LRS:
        study.add_trial(create_trial(params={"lr": lr, "warmup": 0}, distributions=SWEPT, user_attrs={"seed": seed},
                                     value=best + 0.1 * math.log2(lr / bottom) ** 2))
    return study


def _confirm(storage, name: str, losses: dict[int, float]) -> optuna.Study:
    """`confirm`'s re-runs of a width's winner (lr 1e-2, warmup 0) at other seeds, and one of another setting."""
    study = optuna.create_study(study_name=f"{name}-confirm", storage=storage)
    for seed, loss in losses.items():
        study.add_trial(create_trial(params={"lr": 1e-2, "warmup": 0, "seed": seed}, distributions=SPACE, value=loss))
        study.add_trial(create_trial(params={"lr": 2e-2, "warmup": 0, "seed": seed}, distributions=SPACE, value=0.0))
    return study


def _fit(best: dict[int, float], parametrization="mup", **kwargs):
    storage = optuna.storages.InMemoryStorage()
    studies = {w: _width_study(storage, f"tiny-{parametrization}-w{w}-10", loss) for w, loss in best.items()}
    return fit_transfer(studies, parametrization=parametrization, steps=10, **kwargs)


def test_wider_better_beyond_the_band_is_said_so():
    fit = _fit({64: 3.331, 128: 3.258, 256: 3.181, 512: 2.996})  # SP's best losses in docs/mup.md, here as μP's
    assert fit.best_loss == {64: 3.331, 128: 3.258, 256: 3.181, 512: 2.996}
    assert fit.wider_better() and [s.band for s in fit.wider] == [WIDER_FLOOR] * 3
    assert [round(s.gain, 3) for s in fit.wider] == [0.073, 0.077, 0.185]
    lines = report_lines(fit)
    assert lines[3].startswith("μP width 512: best lr 0.01 (x1.00 of width 64")
    assert lines[3].endswith("; best val loss 2.9960")
    assert "best val loss, widening: 64→128 -0.0730 (band 0.0100, one seed); 128→256 -0.0770 (band 0.0100, one " \
           "seed); 256→512 -0.1850 (band 0.0100, one seed)" in lines
    assert lines[-1].startswith("wider is better") and not any("warning" in line for line in lines)
    attrs = fit.attrs()
    assert attrs["wider_better"] is True
    assert attrs["best_loss"] == {"64": 3.331, "128": 3.258, "256": 3.181, "512": 2.996}
    assert attrs["wider_steps"][0] == {"narrower": 64, "wider": 128, "gain": pytest.approx(0.073), "band": WIDER_FLOOR,
                                       "seeds": 1, "better": True}
    assert attrs["mup_vs_sp"] is None  # no SP summary to compare with


@pytest.mark.parametrize("best", [{64: 3.331, 128: 3.392, 256: 3.339, 512: 3.375},  # μP's, docs/mup.md
                                  {64: 3.331, 128: 3.325}])  # lower, but by less than the 0.01 floor
def test_wider_not_better_warns_once_and_names_what_to_tune(best):
    fit = _fit(best)
    assert not fit.wider_better() and fit.attrs()["wider_better"] is False
    warnings = [line for line in report_lines(fit) if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "μP's wider models are NOT better beyond the noise band (128 vs 64" in warnings[0]
    assert all(name in warnings[0] for name in ("model.mup_output_alpha", "model.mup_input_alpha", "the init std",
                                                 "the search space's extra params", "docs/mup.md"))
    sp = _fit(best, parametrization="sp")  # SP's wider models not paying is a finding, not a μP setting to tune
    assert report_lines(sp)[-1].startswith("wider is NOT better beyond the noise band at 10 steps (128 vs 64")
    assert not any(line.startswith("warning:") for line in report_lines(sp))


def test_a_best_loss_at_an_end_of_the_lr_range_is_named_a_bound():
    storage = optuna.storages.InMemoryStorage()
    studies = {16: _width_study(storage, "tiny-mup-w16-10", 4.0), 32: _width_study(storage, "tiny-mup-w32-10", 4.0,
                                                                                    bottom=LRS[-1])}
    verdict = report_lines(fit_transfer(studies, parametrization="mup", steps=10))[-1]
    assert verdict.startswith("warning: μP's wider models are NOT better beyond the noise band (32 vs 16) (width 32: "
                              "best loss at an end of the LR range, only a bound): ")


def test_paired_seeds_from_confirm_widen_the_band_when_noisier_than_the_floor():
    storage = optuna.storages.InMemoryStorage()
    studies = {16: _width_study(storage, "tiny-mup-w16-10", 4.00), 32: _width_study(storage, "tiny-mup-w32-10", 3.98)}
    # Width 32 lower by 0.02 with the sweep's seed, but the re-runs scatter: 0.02, -0.03, +0.07 (mean 0.02, wide CI).
    noisy = {16: _confirm(storage, "tiny-mup-w16-10", {1338: 4.00, 1339: 4.00}),
             32: _confirm(storage, "tiny-mup-w32-10", {1338: 4.03, 1339: 3.93})}
    step = fit_transfer(studies, parametrization="mup", steps=10, confirms=noisy).wider[0]
    assert step.seeds == 3 and step.gain == pytest.approx(0.02)
    assert step.band > 0.1 and not step.better  # t(2) x sd 0.05 / sqrt 3
    assert "16→32 -0.0200 (band" in step.describe() and "mean of 3 paired seeds" in step.describe()
    steady = {16: noisy[16], 32: _confirm(storage, "tiny-mup-w32-steady", {1338: 3.979, 1339: 3.981})}
    step = fit_transfer(studies, parametrization="mup", steps=10, confirms=steady).wider[0]
    assert step.seeds == 3 and step.better and step.band == WIDER_FLOOR  # paired CI narrower than the floor


def test_mup_is_compared_with_sp_at_the_widest_width_both_swept_at_the_same_steps():
    sp = _fit({64: 3.331, 128: 3.258, 256: 3.181, 512: 2.996}, parametrization="sp").attrs()
    mup = _fit({64: 3.331, 128: 3.392, 256: 3.339, 512: 3.375}, other=sp)
    assert mup.versus.width == 512 and mup.versus.mup_minus_sp == pytest.approx(0.379) and not mup.versus.within
    assert [s.better for s in mup.wider] == [False, True, False]  # as docs/mup.md reads them
    assert report_lines(mup)[-1] == ("μP vs SP at width 512, 10 steps: best val loss 3.3750 vs 2.9960, μP − SP "
                                     "+0.3790: NOT within 0.03: SP's best is better, μP did not pay at this width")
    assert mup.attrs()["mup_vs_sp"] == {"width": 512, "steps": 10, "mup_best_loss": 3.375, "sp_best_loss": 2.996,
                                        "bar": 0.03, "mup_minus_sp": pytest.approx(0.379), "within": False}
    # Run the other way round (SP second), over fewer widths: the widest both swept, μP still the first term.
    sp_second = _fit({64: 3.331, 128: 3.258, 256: 3.36}, parametrization="sp", other=mup.attrs())
    assert sp_second.versus.width == 256 and sp_second.versus.mup_minus_sp == pytest.approx(3.339 - 3.36)
    assert sp_second.versus.within
    assert "within 0.03: μP's wide model is as good as SP's best" in report_lines(sp_second)[-1]
    assert _fit({64: 3.3, 128: 3.2}, other=sp | {"steps": 300}).versus is None  # not the same steps
    assert _fit({64: 3.3, 128: 3.2}, other=sp | {"best_loss": None}).versus is None  # a summary from before the verdict


def _lowest_loss(study: optuna.Study) -> float:
    return min(t.value for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
